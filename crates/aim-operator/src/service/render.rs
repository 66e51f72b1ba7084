//! Rendering of the objects a service owns: the KServe InferenceService and
//! the Gateway API HTTPRoute. KServe and
//! Gateway API objects are plain JSON here: we write a handful of fields and
//! depend on neither project's Go types.

use std::collections::BTreeMap;

use aim_api::AIMService;
use aim_api::runtime_config::{ParentReference, RuntimeConfigSpec};
use aim_api::service::{AutoScaling, MetricTarget};
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
pub fn replicas(svc: &AIMService) -> Replicas {
    let spec = &svc.spec;
    if spec.auto_scaling.is_some() || spec.min_replicas.is_some() || spec.max_replicas.is_some() {
        let min = spec.min_replicas.unwrap_or(1);
        let max = spec
            .max_replicas
            .or(spec.min_replicas)
            .unwrap_or(1)
            .max(min);
        Replicas {
            min,
            max,
            autoscaling: true,
        }
    } else {
        let n = spec.replicas.unwrap_or(1);
        Replicas {
            min: n,
            max: n,
            autoscaling: false,
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
    /// The scaler address written when a metric names none.
    pub default_scaler_address: &'a str,
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

    let replicas = replicas(svc);
    let mut annotations = BTreeMap::new();
    let mut predictor = serde_json::Map::new();
    predictor.insert("minReplicas".into(), json!(replicas.min));
    predictor.insert("maxReplicas".into(), json!(replicas.max));
    if replicas.autoscaling {
        annotations.insert(
            "serving.kserve.io/autoscalerClass".to_string(),
            "keda".to_string(),
        );
        annotations.insert(
            "sidecar.opentelemetry.io/inject".to_string(),
            format!("{}-predictor", inputs.isvc_name),
        );
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
        let scaling = svc
            .spec
            .auto_scaling
            .clone()
            .filter(|s| !s.metrics.is_empty())
            .unwrap_or_else(default_autoscaling);
        predictor.insert(
            "autoScaling".into(),
            autoscaling_json(&scaling, inputs.default_scaler_address),
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

/// The metric a service scales on when it gives bounds but no metrics:
/// running requests per replica, averaged over the scrape window, target 1,
/// as in the docs' autoscaling example. AIM Engine writes no
/// metric here, and KServe then makes a ScaledObject with no triggers, which
/// KEDA cannot run: `minReplicas: 1, maxReplicas: 4` alone never scaled.
pub fn default_autoscaling() -> AutoScaling {
    use aim_api::service::{
        MetricTargetType, MetricsBackend, PodMetric, PodMetricSource, ScalingMetric,
        ScalingMetricType,
    };
    AutoScaling {
        metrics: vec![ScalingMetric {
            type_: ScalingMetricType::PodMetric,
            podmetric: Some(PodMetric {
                metric: Some(PodMetricSource {
                    backend: Some(MetricsBackend::Opentelemetry),
                    server_address: None,
                    metric_names: vec![DEFAULT_SCALING_METRIC.into()],
                    query: Some(DEFAULT_SCALING_METRIC.into()),
                    operation_over_time: Some("avg".into()),
                }),
                target: Some(MetricTarget {
                    type_: MetricTargetType::Value,
                    value: Some("1".into()),
                    average_value: None,
                    average_utilization: None,
                }),
            }),
        }],
    }
}

pub const DEFAULT_SCALING_METRIC: &str = "vllm:num_requests_running";

/// Copies the service's metrics field by field, filling in the scaler
/// address AIM Engine leaves empty: an empty address would send
/// KEDA to KServe's own default rather than to aim's scaler.
fn autoscaling_json(scaling: &AutoScaling, default_scaler: &str) -> Value {
    let metrics: Vec<Value> = scaling
        .metrics
        .iter()
        .map(|m| {
            let mut out = json!({"type": m.type_});
            if let Some(pm) = &m.podmetric {
                let mut podmetric = serde_json::Map::new();
                if let Some(source) = &pm.metric {
                    let mut source = json!(source);
                    if source
                        .get("serverAddress")
                        .is_none_or(|a| a.as_str() == Some(""))
                    {
                        source["serverAddress"] = json!(default_scaler);
                    }
                    podmetric.insert("metric".into(), source);
                }
                if let Some(target) = &pm.target {
                    podmetric.insert("target".into(), target_json(target));
                }
                out["podmetric"] = Value::Object(podmetric);
            }
            out
        })
        .collect();
    json!({"metrics": metrics})
}

/// A pod metric's target, copied field by field, plus one fix over AIM
/// Engine: KServe v0.16 reads only `target.value` for pod metrics (it
/// becomes the KEDA trigger's `targetValue`, under KEDA's default
/// `AverageValue` type), so a target given only as `averageValue` would be
/// deployed as 0. Copying it into `value` deploys what was asked: that
/// average per replica.
fn target_json(target: &MetricTarget) -> Value {
    let mut out = json!({"type": target.type_});
    if let Some(v) = target.value.as_ref().or(target.average_value.as_ref()) {
        out["value"] = json!(v);
    }
    if let Some(v) = &target.average_value {
        out["averageValue"] = json!(v);
    }
    if let Some(v) = target.average_utilization {
        out["averageUtilization"] = json!(v);
    }
    out
}

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
        "backendRefs": [{"group": "", "kind": "Service", "name": format!("{isvc_name}-predictor"), "namespace": service.namespace(), "port": 80}],
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
