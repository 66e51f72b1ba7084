//! Rendering of the objects a service owns: the KServe InferenceService and
//! the Gateway API HTTPRoute. KServe and
//! Gateway API objects are plain JSON here: we write a handful of fields and
//! depend on neither project's Go types.

use std::collections::BTreeMap;

use aim_api::AIMService;
use aim_api::runtime_config::{ParentReference, RuntimeConfigSpec};
use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::ResourceExt;
use serde_json::{Value, json};

use super::view::{ModelView, TemplateView};

pub const KSERVE_API_VERSION: &str = "serving.kserve.io/v1beta1";
pub const GATEWAY_API_VERSION: &str = "gateway.networking.k8s.io/v1";
pub const CONTAINER_NAME: &str = "kserve-container";
pub const HTTP_PORT: i32 = 8000;
/// Where cached model weights are mounted and where AIM images look for them.
pub const CACHE_BASE_PATH: &str = "/workspace/cache";

/// How replicas are decided.
#[derive(Clone, Debug, PartialEq)]
pub struct Replicas {
    pub min: i32,
    pub max: i32,
    pub autoscaling: bool,
}

/// Autoscaling mode is on when any of `autoScaling`, `minReplicas`,
/// `maxReplicas` is set; otherwise the fixed `replicas` count applies.
/// The rule is the shared translation's.
pub fn replicas(svc: &AIMService) -> Replicas {
    match aim_scaling::autoscaling_bounds(&svc.spec) {
        Some((min, max)) => Replicas {
            min,
            max,
            autoscaling: true,
        },
        None => {
            let n = svc.spec.replicas.unwrap_or(1);
            Replicas {
                min: n,
                max: n,
                autoscaling: false,
            }
        }
    }
}

/// Everything the InferenceService is rendered from.
pub struct IsvcInputs<'a> {
    pub service: &'a AIMService,
    pub isvc_name: &'a str,
    pub model: &'a ModelView,
    pub template: &'a TemplateView,
    pub runtime_config: &'a RuntimeConfigSpec,
    /// Labels the service's children inherit (label propagation).
    pub propagated_labels: BTreeMap<String, String>,
    /// The service's scaling, as the shared translation planned it.
    pub scaling: &'a aim_scaling::Scaling,
    /// `serving.kserve.io/autoscalerClass` for an autoscaled service: see
    /// [`super::scaling::handover`].
    pub autoscaler_class: &'a str,
    /// Volumes of the model cache: (volume name, claim name, mount path).
    pub cache_volumes: Vec<(String, String, String)>,
    pub env: Vec<EnvVar>,
    /// Write KEDA's pause switch: KServe copies it onto the ScaledObject it
    /// creates.
    pub autoscaling_paused: bool,
}

pub fn inference_service(inputs: &IsvcInputs<'_>) -> Value {
    let svc = inputs.service;
    let template = inputs.template;
    let profile_meta = template
        .status
        .as_ref()
        .and_then(|s| s.profile.as_ref())
        .and_then(|p| p.metadata.as_ref());

    let mut labels = inputs.propagated_labels.clone();
    labels.insert("app.kubernetes.io/component".into(), "inference".into());
    labels.insert("app.kubernetes.io/managed-by".into(), "aim-engine".into());
    labels.insert(
        "aim.eai.amd.com/template".into(),
        aim_rules::naming::sanitize(&template.name),
    );
    labels.insert(
        "aim.eai.amd.com/service".into(),
        aim_rules::naming::sanitize(&svc.name_any()),
    );
    labels.insert(
        "aim.eai.amd.com/model".into(),
        aim_rules::naming::sanitize(&template.spec.model_name),
    );
    if let Some(metric) = profile_meta.and_then(|m| m.metric).or(template.spec.metric) {
        labels.insert("aim.eai.amd.com/metric".into(), metric.as_str().into());
    }
    if let Some(precision) = profile_meta
        .and_then(|m| m.precision)
        .or(template.spec.precision)
    {
        labels.insert(
            "aim.eai.amd.com/precision".into(),
            precision.as_str().into(),
        );
    }

    let (min, max) = inputs.scaling.bounds();
    let mut annotations = BTreeMap::new();
    let mut predictor = serde_json::Map::new();
    predictor.insert("minReplicas".into(), json!(min));
    predictor.insert("maxReplicas".into(), json!(max));
    if let Some(autoscaled) = inputs.scaling.autoscaled() {
        annotations.insert(
            "serving.kserve.io/autoscalerClass".to_string(),
            inputs.autoscaler_class.to_string(),
        );
        // KServe creates the OpenTelemetryCollector only for pod metrics; a
        // service that scales on Prometheus alone would name a collector
        // that never exists, and the injection webhook would refuse it.
        if autoscaled
            .isvc_autoscaling
            .metrics
            .iter()
            .any(|m| m.type_ == aim_api::service::ScalingMetricType::PodMetric)
        {
            annotations.insert(
                "sidecar.opentelemetry.io/inject".to_string(),
                format!("{}-predictor", inputs.isvc_name),
            );
        }
        annotations.insert(
            "prometheus.kserve.io/port".to_string(),
            HTTP_PORT.to_string(),
        );
        if inputs.autoscaling_paused {
            annotations.insert(
                aim_rules::labels::KEDA_PAUSED.to_string(),
                "true".to_string(),
            );
        }
        predictor.insert(
            "autoScaling".into(),
            serde_json::to_value(&autoscaled.isvc_autoscaling).expect("metrics serialise"),
        );
    } else {
        annotations.insert(
            "serving.kserve.io/autoscalerClass".to_string(),
            "none".to_string(),
        );
    }

    if !svc.spec.image_pull_secrets.is_empty() {
        predictor.insert(
            "imagePullSecrets".into(),
            json!(svc.spec.image_pull_secrets),
        );
    }
    if let Some(sa) = &svc.spec.service_account_name {
        predictor.insert("serviceAccountName".into(), json!(sa));
    }

    let mut mounts = vec![json!({"name": "dshm", "mountPath": "/dev/shm"})];
    let mut volumes =
        vec![json!({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}})];
    for (volume, claim, path) in &inputs.cache_volumes {
        mounts.push(json!({"name": volume, "mountPath": path}));
        volumes.push(json!({"name": volume, "persistentVolumeClaim": {"claimName": claim}}));
    }
    let mut container = json!({
        "name": CONTAINER_NAME,
        "image": inputs.model.spec.image,
        "ports": [{"containerPort": HTTP_PORT, "name": "http", "protocol": "TCP"}],
        "volumeMounts": mounts,
    });
    if !inputs.env.is_empty() {
        container["env"] = json!(inputs.env);
    }
    let resources = resources(template, svc.spec.resources.as_ref());
    if resources != ResourceRequirements::default() {
        container["resources"] = json!(resources);
    }
    predictor.insert("containers".into(), json!([container]));
    predictor.insert("volumes".into(), json!(volumes));
    if let Some(affinity) = template
        .status
        .as_ref()
        .and_then(|s| s.resolved_node_affinity.as_ref())
    {
        predictor.insert("affinity".into(), json!({"nodeAffinity": affinity}));
    }

    json!({
        "apiVersion": KSERVE_API_VERSION,
        "kind": "InferenceService",
        "metadata": {
            "name": inputs.isvc_name,
            "namespace": svc.namespace(),
            "labels": labels,
            "annotations": annotations,
        },
        "spec": {"predictor": Value::Object(predictor)},
    })
}

pub use aim_scaling::DEFAULT_SCALING_METRIC;

/// Default requests and limits per GPU (4 CPUs, 32Gi requested and 48Gi
/// limit per GPU), then the template's and the service's overrides per key.
pub fn resources(
    template: &TemplateView,
    service: Option<&ResourceRequirements>,
) -> ResourceRequirements {
    let gpu = template
        .status
        .as_ref()
        .and_then(|s| s.resolved_hardware.as_ref())
        .and_then(|h| h.gpu.as_ref())
        .or(template.spec.hardware.as_ref().and_then(|h| h.gpu.as_ref()));
    let count = gpu.and_then(|g| g.requests).unwrap_or(0);
    let resource = gpu
        .and_then(|g| g.resource_name.clone())
        .unwrap_or_else(|| "amd.com/gpu".into());
    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    if count > 0 {
        requests.insert("cpu".to_string(), Quantity((4 * count).to_string()));
        requests.insert("memory".to_string(), Quantity(format!("{}Gi", 32 * count)));
        requests.insert(resource.clone(), Quantity(count.to_string()));
        limits.insert("memory".to_string(), Quantity(format!("{}Gi", 48 * count)));
        limits.insert(resource, Quantity(count.to_string()));
    }
    for overrides in [template.spec.resources.as_ref(), service]
        .into_iter()
        .flatten()
    {
        if let Some(r) = &overrides.requests {
            requests.extend(r.clone());
        }
        if let Some(l) = &overrides.limits {
            limits.extend(l.clone());
        }
    }
    ResourceRequirements {
        requests: (!requests.is_empty()).then_some(requests),
        limits: (!limits.is_empty()).then_some(limits),
        ..Default::default()
    }
}

/// The HTTPRoute: one PathPrefix rule rewritten to `/`, backed by the
/// predictor Service on port 80.
pub struct RouteInputs<'a> {
    pub service: &'a AIMService,
    pub route_name: &'a str,
    pub isvc_name: &'a str,
    pub gateway: &'a ParentReference,
    pub path: &'a str,
    pub request_timeout: Option<&'a str>,
    pub annotations: &'a BTreeMap<String, String>,
    pub propagated_labels: &'a BTreeMap<String, String>,
}

pub fn http_route(inputs: &RouteInputs<'_>) -> Value {
    let RouteInputs {
        service,
        route_name,
        isvc_name,
        gateway,
        path,
        request_timeout,
        annotations,
        propagated_labels,
    } = *inputs;
    let mut labels = propagated_labels.clone();
    labels.insert("app.kubernetes.io/component".into(), "routing".into());
    labels.insert("app.kubernetes.io/managed-by".into(), "aim-engine".into());
    labels.insert(
        "aim.eai.amd.com/service".into(),
        aim_rules::naming::sanitize(&service.name_any()),
    );
    let mut rule = json!({
        "matches": [{"path": {"type": "PathPrefix", "value": path}}],
        "filters": [{"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}}],
        "backendRefs": [{"group": "", "kind": "Service", "name": format!("{isvc_name}-predictor"), "namespace": service.namespace(), "port": aim_scaling::PREDICTOR_SERVICE_PORT}],
    });
    if let Some(timeout) = request_timeout {
        rule["timeouts"] = json!({"request": timeout});
    }
    let mut metadata = json!({
        "name": route_name,
        "namespace": service.namespace(),
        "labels": labels,
    });
    if !annotations.is_empty() {
        metadata["annotations"] = json!(annotations);
    }
    json!({
        "apiVersion": GATEWAY_API_VERSION,
        "kind": "HTTPRoute",
        "metadata": metadata,
        "spec": {"parentRefs": [gateway], "rules": [rule]},
    })
}
