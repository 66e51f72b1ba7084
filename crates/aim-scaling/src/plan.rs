//! AIMService → replicas, InferenceService autoscaling, ScaledObject.

use std::collections::BTreeMap;

use aim_api::service::{
    AIMServiceSpec, AutoScaling, MetricTarget, MetricTargetType, MetricsBackend, PodMetric,
    PodMetricSource, RatePolicyType, ScalingBehavior, ScalingMetric, ScalingMetricType,
    ScalingRules, SelectPolicy,
};
use k8s_openapi::api::autoscaling::v2::{
    HPAScalingPolicy, HPAScalingRules, HorizontalPodAutoscalerBehavior,
};

use crate::kserve;
use crate::scaled_object::{self, Advanced, HpaConfig, Metadata, ScaleTarget, ScaledObject};

/// The metric a service scales on when it gives bounds but no metrics.
pub const DEFAULT_SCALING_METRIC: &str = "vllm:num_requests_running";

/// KEDA's switch that stops it scaling a ScaledObject.
pub const KEDA_PAUSED: &str = "autoscaling.keda.sh/paused";

/// Trigger keys of `aim scaler` that a policy's `params` may set beside the
/// policy's own knobs: KServe has no field for any of them.
pub const SCALER_TRIGGER_KEYS: &[&str] = &[
    "quantile",
    "window",
    "activationThreshold",
    "valueIfMissing",
    "clampMin",
    "clampMax",
];

/// Trigger keys the translation writes from other fields; a `params` entry
/// may not overwrite them.
const WRITTEN_KEYS: &[(&str, &str)] = &[
    (
        "metricQuery",
        "set the metric's query in spec.autoScaling.metrics[].podmetric.metric.query",
    ),
    (
        "targetValue",
        "set the metric's target in spec.autoScaling.metrics[].podmetric.target.value",
    ),
    (
        "scalerAddress",
        "set spec.autoScaling.metrics[].podmetric.metric.serverAddress",
    ),
    (
        "operationOverTime",
        "set spec.autoScaling.metrics[].podmetric.metric.operationOverTime",
    ),
    ("policy", "set spec.autoScaling.policy.name"),
];

/// KServe's cluster-wide autoscaler settings (its `inferenceservice-config`
/// config map, key `autoscaler`) and the scaler address a metric that
/// names none is sent to.
#[derive(Clone, Debug, PartialEq)]
pub struct KServeAutoscaler {
    pub scale_up_stabilization_s: Option<i32>,
    pub scale_down_stabilization_s: Option<i32>,
    pub default_scaler_address: String,
}

impl Default for KServeAutoscaler {
    /// KServe's shipped config map: up 0 s, down 300 s.
    fn default() -> Self {
        KServeAutoscaler {
            scale_up_stabilization_s: Some(0),
            scale_down_stabilization_s: Some(300),
            default_scaler_address: "keda-otel-scaler.keda.svc:4318".into(),
        }
    }
}

/// Everything the translation reads.
pub struct ServiceScaling<'a> {
    pub spec: &'a AIMServiceSpec,
    pub namespace: &'a str,
    pub isvc_name: &'a str,
    /// Whether autoscaling is paused (the service's annotation or the
    /// runtime config's default, resolved by the caller).
    pub paused: bool,
    pub kserve: &'a KServeAutoscaler,
    /// Whether the service's requests come through a gateway route
    /// (routing enabled with a Gateway, from the service or its runtime
    /// config): only then can it scale from zero, since something must
    /// hold the requests that arrive while no replica runs.
    pub routed: bool,
}

/// Who writes the ScaledObject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    KServe,
    Operator,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Scaling {
    /// `spec.replicas`: KServe's `autoscalerClass: none`.
    Fixed {
        replicas: i32,
    },
    Autoscaled(Box<Autoscaled>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Autoscaled {
    pub min: i32,
    pub max: i32,
    pub owner: Owner,
    /// The predictor's `autoScaling` as the InferenceService carries it.
    pub isvc_autoscaling: AutoScaling,
    /// The ScaledObject that will run the service: KServe's (as KServe
    /// builds it) or the operator's own.
    pub scaled_object: ScaledObject,
}

impl Autoscaled {
    /// The InferenceService's `serving.kserve.io/autoscalerClass`.
    pub fn autoscaler_class(&self) -> &'static str {
        match self.owner {
            Owner::KServe => "keda",
            Owner::Operator => "external",
        }
    }
}

impl Scaling {
    pub fn autoscaled(&self) -> Option<&Autoscaled> {
        match self {
            Scaling::Autoscaled(a) => Some(a),
            Scaling::Fixed { .. } => None,
        }
    }

    /// (min, max) replicas.
    pub fn bounds(&self) -> (i32, i32) {
        match self {
            Scaling::Fixed { replicas } => (*replicas, *replicas),
            Scaling::Autoscaled(a) => (a.min, a.max),
        }
    }
}

/// A field of the AIMService that cannot be deployed, and why.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ScalingError {
    pub field: String,
    pub message: String,
}

fn error(field: impl Into<String>, message: impl Into<String>) -> ScalingError {
    ScalingError {
        field: field.into(),
        message: message.into(),
    }
}

/// Replica bounds: `Some((min, max))` when the service autoscales (any of
/// `autoScaling`, `minReplicas`, `maxReplicas` is set; a missing bound
/// follows the other), `None` for a fixed `replicas` count.
pub fn autoscaling_bounds(spec: &AIMServiceSpec) -> Option<(i32, i32)> {
    if spec.auto_scaling.is_none() && spec.min_replicas.is_none() && spec.max_replicas.is_none() {
        return None;
    }
    let min = spec.min_replicas.unwrap_or(1);
    // A service that scales from zero still needs room for one replica.
    let max = spec
        .max_replicas
        .or(spec.min_replicas)
        .unwrap_or(1)
        .max(min)
        .max(1);
    Some((min, max))
}

/// The gateway's count of requests it holds for a backend, exported by
/// `aim gateway --otlp-endpoint` to the scaler: the signal that wakes a
/// service from zero.
pub const GATEWAY_QUEUE_METRIC: &str = "aim_gateway_queue_depth";

/// Held requests per replica the gateway trigger asks for once the
/// service runs: the Inference Extension's saturation threshold (5 waiting
/// requests), so requests held at the gateway add replicas the way
/// requests waiting in vLLM would.
pub const GATEWAY_QUEUE_TARGET: &str = "5";

/// The port of KServe's predictor Service, which the operator's HTTPRoute
/// names as its backend.
pub const PREDICTOR_SERVICE_PORT: u16 = 80;

/// How `aim gateway` names a backend in its metrics: `NAMESPACE/NAME:PORT`
/// of the Service a route sends to.
pub fn gateway_backend(namespace: &str, isvc_name: &str) -> String {
    format!(
        "{namespace}/{}:{PREDICTOR_SERVICE_PORT}",
        kserve::predictor_name(isvc_name)
    )
}

/// The translation. An error names the field to fix; nothing of the
/// service should be deployed from a plan that failed.
pub fn plan(input: &ServiceScaling<'_>) -> Result<Scaling, ScalingError> {
    let spec = input.spec;
    let scaling = spec.auto_scaling.as_ref();
    let Some((min, max)) = autoscaling_bounds(spec) else {
        return Ok(Scaling::Fixed {
            replicas: spec.replicas.unwrap_or(1),
        });
    };
    let metrics = match scaling.filter(|s| !s.metrics.is_empty()) {
        Some(s) => s.metrics.clone(),
        None => default_autoscaling().metrics,
    };
    for (i, metric) in metrics.iter().enumerate() {
        check_metric_kind(i, metric)?;
    }
    if min == 0 && !input.routed {
        return Err(error(
            "spec.minReplicas",
            "0 (scale from zero) needs a gateway that holds requests while no replica runs: \
             route the service through aim gateway (spec.routing.enabled: true with a \
             gatewayRef, or routing in its runtime config), or set minReplicas to 1 or more",
        ));
    }
    let cooldown = scaling.and_then(|s| s.cooldown_period);
    if cooldown.is_some() && min > 0 {
        return Err(error(
            "spec.autoScaling.cooldownPeriod",
            format!(
                "applies only to a service that scales to zero, and minReplicas is {min}; \
                 remove cooldownPeriod, or set minReplicas: 0 (with routing through aim gateway)"
            ),
        ));
    }
    if let Some(c) = cooldown.filter(|c| *c < 0) {
        return Err(error(
            "spec.autoScaling.cooldownPeriod",
            format!("{c} is negative; give the idle seconds before scaling to zero, e.g. 300"),
        ));
    }
    let isvc_autoscaling = AutoScaling {
        metrics: metrics
            .iter()
            .map(|m| isvc_metric(m, &input.kserve.default_scaler_address))
            .collect(),
        policy: None,
        behavior: None,
        cooldown_period: None,
    };
    // KServe's ScaledObject has no trigger that could wake a service from
    // zero, so a service that scales to zero gets the operator's.
    let owner = if min == 0 || scaling.is_some_and(AutoScaling::uses_extensions) {
        Owner::Operator
    } else {
        Owner::KServe
    };
    let mut isvc_annotations = BTreeMap::new();
    if input.paused {
        isvc_annotations.insert(KEDA_PAUSED.to_string(), "true".to_string());
    }
    let scaled_object = match owner {
        Owner::KServe => kserve::scaled_object(&kserve::Predictor {
            namespace: input.namespace,
            isvc_name: input.isvc_name,
            annotations: &isvc_annotations,
            min_replicas: Some(min),
            max_replicas: max,
            autoscaling: &isvc_autoscaling,
            config: input.kserve,
        }),
        Owner::Operator => {
            let scaling = scaling.cloned().unwrap_or_default();
            operator_scaled_object(input, min, max, &isvc_autoscaling, &scaling)?
        }
    };
    Ok(Scaling::Autoscaled(Box::new(Autoscaled {
        min,
        max,
        owner,
        isvc_autoscaling,
        scaled_object,
    })))
}

/// The metric a service scales on when it gives bounds but no metrics:
/// running requests per replica, averaged over the scrape window, target 1,
/// as in the AIM docs' autoscaling example. AIM Engine writes no metric
/// here, and KServe then makes a ScaledObject with no triggers, which KEDA
/// cannot run: `minReplicas: 1, maxReplicas: 4` alone never scaled.
pub fn default_autoscaling() -> AutoScaling {
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
            external: None,
        }],
        policy: None,
        behavior: None,
        cooldown_period: None,
    }
}

/// A metric as the InferenceService carries it: the scaler address AIM
/// Engine leaves empty is filled in (empty, KServe would send KEDA to its
/// own default rather than to aim's scaler), and a target given only as
/// `averageValue` is copied into `value`, the one field KServe v0.16
/// reads for pod metrics (it becomes the trigger's `targetValue` under
/// KEDA's default `AverageValue` type, so a target without `value` would
/// be deployed as 0).
fn isvc_metric(metric: &ScalingMetric, default_scaler: &str) -> ScalingMetric {
    let mut out = metric.clone();
    // KServe reads only `value` of an external target too (as KEDA's
    // `threshold`).
    if let Some(target) = out.external.as_mut().and_then(|e| e.target.as_mut())
        && target.value.is_none()
    {
        target.value = target.average_value.clone();
    }
    if let Some(pm) = out.podmetric.as_mut() {
        if let Some(source) = pm.metric.as_mut()
            && source.server_address.as_deref().is_none_or(str::is_empty)
        {
            source.server_address = Some(default_scaler.to_string());
        }
        if let Some(target) = pm.target.as_mut()
            && target.value.is_none()
        {
            target.value = target.average_value.clone();
        }
    }
    out
}

fn operator_scaled_object(
    input: &ServiceScaling<'_>,
    min: i32,
    max: i32,
    isvc_autoscaling: &AutoScaling,
    scaling: &AutoScaling,
) -> Result<ScaledObject, ScalingError> {
    let predictor = kserve::predictor_name(input.isvc_name);
    // Start from exactly the triggers KServe would write, so a service
    // that adds a policy keeps its query, target and scaler.
    let kserve_view = kserve::scaled_object(&kserve::Predictor {
        namespace: input.namespace,
        isvc_name: input.isvc_name,
        annotations: &BTreeMap::new(),
        min_replicas: Some(min),
        max_replicas: max,
        autoscaling: isvc_autoscaling,
        config: input.kserve,
    });
    if let Some(policy) = &scaling.policy {
        if let Some(i) = isvc_autoscaling
            .metrics
            .iter()
            .position(|m| m.type_ == ScalingMetricType::External)
        {
            return Err(error(
                "spec.autoScaling.policy",
                format!(
                    "a policy runs in aim's scaler, which reads the OpenTelemetry pod metrics, \
                     but spec.autoScaling.metrics[{i}] is a Prometheus metric that KEDA queries \
                     itself; remove the policy (spec.autoScaling.behavior still applies) or \
                     scale on a podmetric"
                ),
            ));
        }
        check_params(policy.name.as_str(), &policy.params)?;
    }
    let mut triggers = kserve_view.spec.triggers;
    for (i, (trigger, metric)) in triggers
        .iter_mut()
        .zip(&isvc_autoscaling.metrics)
        .enumerate()
    {
        check_metric(i, metric)?;
        if let Some(policy) = &scaling.policy {
            trigger
                .metadata
                .insert("policy".into(), policy.name.as_str().into());
            trigger.metadata.extend(policy.params.clone());
        }
    }
    if min == 0 {
        wake_from_zero(input, &mut triggers);
    }
    let behavior = behavior(scaling.behavior.as_ref(), input.kserve);
    let mut annotations = BTreeMap::new();
    if input.paused {
        annotations.insert(KEDA_PAUSED.to_string(), "true".to_string());
    }
    Ok(ScaledObject {
        api_version: scaled_object::API_VERSION.into(),
        kind: scaled_object::KIND.into(),
        metadata: Metadata {
            name: predictor.clone(),
            namespace: input.namespace.into(),
            labels: BTreeMap::new(),
            annotations,
        },
        spec: scaled_object::ScaledObjectSpec {
            scale_target_ref: ScaleTarget {
                api_version: Some("apps/v1".into()),
                kind: Some("Deployment".into()),
                name: predictor,
            },
            polling_interval: None,
            cooldown_period: scaling.cooldown_period,
            min_replica_count: Some(min),
            max_replica_count: Some(max),
            advanced: behavior.map(|b| Advanced {
                horizontal_pod_autoscaler_config: Some(HpaConfig { behavior: Some(b) }),
            }),
            triggers,
        },
    })
}

/// The triggers of a service that scales from zero.
///
/// KEDA brings a Deployment from 0 to 1 when a trigger is active and
/// leaves the rest to the HPA. With no replica, no pod reports a metric,
/// so the wake-up must come from the gateway's held requests: an
/// `external-push` trigger on the gateway's queue depth for the service's
/// backend, which the scaler pushes to KEDA the moment a request is held
/// (active above 0) rather than at KEDA's next poll. The same trigger
/// asks for a replica per five requests held once the service runs.
///
/// The pod metrics are given `valueIfMissing: 0` (unless the policy's
/// params set it): at zero replicas no pod reports, which means no load,
/// and KEDA treats a trigger error as a reason never to scale to zero.
fn wake_from_zero(input: &ServiceScaling<'_>, triggers: &mut Vec<scaled_object::Trigger>) {
    for trigger in triggers.iter_mut().filter(|t| t.type_ == "external") {
        trigger
            .metadata
            .entry("valueIfMissing".into())
            .or_insert_with(|| "0".into());
    }
    let metadata = BTreeMap::from([
        (
            "scalerAddress".to_string(),
            input.kserve.default_scaler_address.clone(),
        ),
        (
            "metricQuery".to_string(),
            format!(
                "sum({GATEWAY_QUEUE_METRIC}{{service=\"{}\"}})",
                gateway_backend(input.namespace, input.isvc_name)
            ),
        ),
        ("targetValue".to_string(), GATEWAY_QUEUE_TARGET.to_string()),
        ("activationThreshold".to_string(), "0".to_string()),
    ]);
    triggers.push(scaled_object::Trigger {
        type_: "external-push".into(),
        metadata,
        metric_type: None,
    });
}

/// What the operator-owned route needs of a metric that KServe would let
/// through: a query and a positive target.
fn check_metric(i: usize, metric: &ScalingMetric) -> Result<(), ScalingError> {
    if metric.type_ == ScalingMetricType::External {
        // Checked for every owner by `check_metric_kind`.
        return Ok(());
    }
    let base = format!("spec.autoScaling.metrics[{i}].podmetric");
    let Some(pm) = &metric.podmetric else {
        return Err(error(
            base,
            "missing: a policy scales on pod metrics; add a podmetric with a query and a target",
        ));
    };
    if pm
        .metric
        .as_ref()
        .and_then(|m| m.query.as_deref())
        .is_none_or(|q| q.trim().is_empty())
    {
        return Err(error(
            format!("{base}.metric.query"),
            "missing: name the metric to scale on, e.g. vllm:num_requests_waiting",
        ));
    }
    let target = pm.target.as_ref().and_then(|t| t.value.as_deref());
    match target.map(|t| t.trim().parse::<f64>()) {
        Some(Ok(v)) if v.is_finite() && v > 0.0 => Ok(()),
        _ => Err(error(
            format!("{base}.target.value"),
            format!(
                "{:?} is not a number above 0; set the metric value one replica should carry, e.g. \"4\"",
                target.unwrap_or("")
            ),
        )),
    }
}

/// A metric's type and its block must agree, and a Prometheus metric
/// needs a server, a query and a target before anything is deployed:
/// KServe would pass an empty address or query through to KEDA, whose
/// error then shows only on the HPA.
fn check_metric_kind(i: usize, metric: &ScalingMetric) -> Result<(), ScalingError> {
    let base = format!("spec.autoScaling.metrics[{i}]");
    match metric.type_ {
        ScalingMetricType::PodMetric if metric.external.is_some() => Err(error(
            format!("{base}.external"),
            "is set but the metric's type is PodMetric; set `type: External` to scale on \
             Prometheus, or move the metric under `podmetric`",
        )),
        ScalingMetricType::PodMetric => Ok(()),
        ScalingMetricType::External => {
            if metric.podmetric.is_some() {
                return Err(error(
                    format!("{base}.podmetric"),
                    "is set but the metric's type is External; give one metric per entry: \
                     `type: PodMetric` with `podmetric`, or `type: External` with `external`",
                ));
            }
            let Some(external) = &metric.external else {
                return Err(error(
                    format!("{base}.external"),
                    "missing: `type: External` needs `external.metric` (backend prometheus, \
                     serverAddress, query) and `external.target.value`",
                ));
            };
            let source = external.metric.as_ref();
            let address = source
                .and_then(|m| m.server_address.as_deref())
                .unwrap_or("");
            check_prometheus_address(&format!("{base}.external.metric.serverAddress"), address)?;
            if source
                .and_then(|m| m.query.as_deref())
                .is_none_or(|q| q.trim().is_empty())
            {
                return Err(error(
                    format!("{base}.external.metric.query"),
                    "missing: give a PromQL query that returns one series, e.g. \
                     sum(vllm:num_requests_waiting{namespace=\"my-namespace\"})",
                ));
            }
            let target = external
                .target
                .as_ref()
                .and_then(|t| t.value.as_deref().or(t.average_value.as_deref()));
            match target.map(|t| t.trim().parse::<f64>()) {
                Some(Ok(v)) if v.is_finite() && v > 0.0 => Ok(()),
                _ => Err(error(
                    format!("{base}.external.target.value"),
                    format!(
                        "{:?} is not a number above 0; set the query's value one replica \
                         should carry (KEDA's threshold), e.g. \"5\"",
                        target.unwrap_or("")
                    ),
                )),
            }
        }
    }
}

/// KEDA's prometheus scaler appends `/api/v1/query` to the address, so
/// it must be an absolute http(s) URL with a host.
fn check_prometheus_address(field: &str, address: &str) -> Result<(), ScalingError> {
    let address = address.trim();
    let rest = address
        .strip_prefix("http://")
        .or_else(|| address.strip_prefix("https://"));
    match rest {
        Some(rest)
            if !rest.is_empty()
                && !rest.starts_with('/')
                && !rest.contains(char::is_whitespace) =>
        {
            Ok(())
        }
        _ => Err(error(
            field,
            format!(
                "{address:?} is not a Prometheus URL; give the server's base URL with its \
                 scheme, e.g. http://prometheus-operated.monitoring.svc:9090"
            ),
        )),
    }
}

fn check_params(policy_name: &str, params: &BTreeMap<String, String>) -> Result<(), ScalingError> {
    for (key, hint) in WRITTEN_KEYS {
        if params.contains_key(*key) {
            return Err(error(
                format!("spec.autoScaling.policy.params.{key}"),
                format!("is written by aim from another field; {hint}"),
            ));
        }
    }
    let policy = aim_policy::lookup(policy_name)
        .map_err(|e| error("spec.autoScaling.policy.name", e.to_string()))?;
    if let Err(e) = aim_policy::check_parameters(policy, params, SCALER_TRIGGER_KEYS) {
        let key = match &e {
            aim_policy::PolicyError::InvalidParameter { key, .. }
            | aim_policy::PolicyError::UnknownParameter { key, .. } => key.clone(),
            _ => String::new(),
        };
        let field = if key.is_empty() {
            "spec.autoScaling.policy.params".to_string()
        } else {
            format!("spec.autoScaling.policy.params.{key}")
        };
        return Err(error(field, e.to_string()));
    }
    for (key, value) in params {
        check_scaler_key(key, value)?;
    }
    Ok(())
}

/// The scaler's own keys, checked as the scaler will read them.
fn check_scaler_key(key: &str, value: &str) -> Result<(), ScalingError> {
    let field = || format!("spec.autoScaling.policy.params.{key}");
    let number = || value.trim().parse::<f64>().ok().filter(|v| v.is_finite());
    match key {
        "quantile" => match number() {
            Some(q) if (0.0..=1.0).contains(&q) => Ok(()),
            _ => Err(error(
                field(),
                format!("{value:?} must be a number between 0 and 1, e.g. \"0.9\""),
            )),
        },
        "window" => match aim_policy::parse_seconds(value) {
            Some(s) if s >= 0.001 => Ok(()),
            _ => Err(error(
                field(),
                format!("{value:?} must be a positive duration such as \"30s\" or \"2m\""),
            )),
        },
        "activationThreshold" | "valueIfMissing" | "clampMin" | "clampMax" => match number() {
            Some(_) => Ok(()),
            None => Err(error(
                field(),
                format!("{value:?} must be a decimal number such as \"0\" or \"2.5\""),
            )),
        },
        _ => Ok(()),
    }
}

/// The HPA behaviour of an operator-owned ScaledObject: what the service
/// asks for, and KServe's cluster-wide stabilisation windows where it asks
/// nothing, so adding a scale-up rule leaves scale-down as it was.
fn behavior(
    asked: Option<&ScalingBehavior>,
    kserve: &KServeAutoscaler,
) -> Option<HorizontalPodAutoscalerBehavior> {
    let rules = |asked: Option<&ScalingRules>, window: Option<i32>| -> Option<HPAScalingRules> {
        let window = asked
            .and_then(|r| r.stabilization_window_seconds)
            .or(window);
        let select = asked.and_then(|r| r.select_policy).map(|s| {
            match s {
                SelectPolicy::Max => "Max",
                SelectPolicy::Min => "Min",
                SelectPolicy::Disabled => "Disabled",
            }
            .to_string()
        });
        let policies: Vec<HPAScalingPolicy> = asked
            .map(|r| r.policies.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|p| HPAScalingPolicy {
                type_: match p.type_ {
                    RatePolicyType::Pods => "Pods",
                    RatePolicyType::Percent => "Percent",
                }
                .into(),
                value: p.value,
                period_seconds: p.period_seconds,
            })
            .collect();
        if window.is_none() && select.is_none() && policies.is_empty() {
            return None;
        }
        Some(HPAScalingRules {
            stabilization_window_seconds: window,
            select_policy: select,
            policies: (!policies.is_empty()).then_some(policies),
            tolerance: None,
        })
    };
    let up = rules(
        asked.and_then(|b| b.scale_up.as_ref()),
        kserve.scale_up_stabilization_s,
    );
    let down = rules(
        asked.and_then(|b| b.scale_down.as_ref()),
        kserve.scale_down_stabilization_s,
    );
    (up.is_some() || down.is_some()).then_some(HorizontalPodAutoscalerBehavior {
        scale_up: up,
        scale_down: down,
    })
}
