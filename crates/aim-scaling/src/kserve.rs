//! How KServe v0.16 builds a predictor's KEDA ScaledObject in raw
//! deployment mode (its KEDA reconciler), for the pod metrics an
//! AIMService can name. A tier-3 test holds this model to the real
//! controller's output for every seed manifest.
//!
//! What KServe does, in short:
//! * the object is named after the predictor, `<isvc>-predictor`, in the
//!   InferenceService's namespace, and carries the predictor's
//!   annotations (so KEDA's pause switch set on the InferenceService
//!   reaches it);
//! * `scaleTargetRef` names only the Deployment (`name`), leaving KEDA's
//!   defaults for its kind and API version;
//! * `minReplicaCount` is the predictor's `minReplicas` (1 when unset),
//!   `maxReplicaCount` is `maxReplicas` raised to the minimum;
//! * each OpenTelemetry pod metric becomes an `external` trigger whose
//!   `metricQuery` is `sum(<query>{namespace="<ns>", deployment="<predictor>"})`,
//!   with `targetValue` the target's `value` as written ("0" when absent),
//!   `scalerAddress`, and `operationOverTime` when set. No `metricType` is
//!   written, so KEDA's default, `AverageValue`, applies whatever the
//!   metric's target type says;
//! * each external metric becomes a trigger of its backend's type
//!   (`prometheus`) with `serverAddress`, `query` and `threshold` (the
//!   target's `value`, "0" when absent) as written, plus `namespace` when
//!   set; again no `metricType`, so the threshold is per replica;
//! * `advanced.horizontalPodAutoscalerConfig.behavior` carries only the
//!   stabilisation windows: the predictor's own, else the cluster config
//!   map's.

use std::collections::BTreeMap;

use aim_api::service::{
    AutoScaling, ExternalBackend, ExternalMetric, MetricsBackend, PodMetric, ScalingMetricType,
};
use k8s_openapi::api::autoscaling::v2::{HPAScalingRules, HorizontalPodAutoscalerBehavior};

use crate::plan::KServeAutoscaler;
use crate::scaled_object::{
    self, Advanced, HpaConfig, Metadata, ScaleTarget, ScaledObject, ScaledObjectSpec, Trigger,
};

/// The predictor component KServe builds from.
pub struct Predictor<'a> {
    pub namespace: &'a str,
    pub isvc_name: &'a str,
    pub annotations: &'a BTreeMap<String, String>,
    pub min_replicas: Option<i32>,
    pub max_replicas: i32,
    pub autoscaling: &'a AutoScaling,
    pub config: &'a KServeAutoscaler,
}

/// KServe's name for the predictor's Deployment, Service and ScaledObject.
pub fn predictor_name(isvc_name: &str) -> String {
    format!("{isvc_name}-predictor")
}

pub fn scaled_object(p: &Predictor<'_>) -> ScaledObject {
    let name = predictor_name(p.isvc_name);
    let min = p.min_replicas.unwrap_or(1);
    let max = p.max_replicas.max(min);
    let triggers = p
        .autoscaling
        .metrics
        .iter()
        .filter_map(|m| match m.type_ {
            ScalingMetricType::PodMetric => pod_metric_trigger(p, &name, m.podmetric.as_ref()?),
            ScalingMetricType::External => external_trigger(m.external.as_ref()?),
        })
        .collect();
    let window = |w: Option<i32>| {
        w.map(|s| HPAScalingRules {
            stabilization_window_seconds: Some(s),
            ..Default::default()
        })
    };
    let up = window(p.config.scale_up_stabilization_s);
    let down = window(p.config.scale_down_stabilization_s);
    let advanced = (up.is_some() || down.is_some()).then_some(Advanced {
        horizontal_pod_autoscaler_config: Some(HpaConfig {
            behavior: Some(HorizontalPodAutoscalerBehavior {
                scale_up: up,
                scale_down: down,
            }),
        }),
    });
    ScaledObject {
        api_version: scaled_object::API_VERSION.into(),
        kind: scaled_object::KIND.into(),
        metadata: Metadata {
            name: name.clone(),
            namespace: p.namespace.into(),
            labels: BTreeMap::new(),
            annotations: p.annotations.clone(),
        },
        spec: ScaledObjectSpec {
            scale_target_ref: ScaleTarget {
                api_version: None,
                kind: None,
                name,
            },
            polling_interval: None,
            cooldown_period: None,
            min_replica_count: Some(min),
            max_replica_count: Some(max),
            advanced,
            triggers,
        },
    }
}

/// An OpenTelemetry pod metric: KServe's `external` trigger on aim's
/// scaler (or the metric's own `serverAddress`).
fn pod_metric_trigger(p: &Predictor<'_>, name: &str, pm: &PodMetric) -> Option<Trigger> {
    let source = pm.metric.as_ref()?;
    // The AIMService schema admits only the OpenTelemetry backend.
    let _: MetricsBackend = source.backend.unwrap_or_default();
    let query = source.query.as_deref().unwrap_or("");
    let mut metadata = BTreeMap::new();
    metadata.insert(
        "metricQuery".to_string(),
        format!(
            "sum({query}{{namespace=\"{}\", deployment=\"{name}\"}})",
            p.namespace
        ),
    );
    metadata.insert(
        "targetValue".to_string(),
        pm.target
            .as_ref()
            .and_then(|t| t.value.clone())
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "0".into()),
    );
    metadata.insert(
        "scalerAddress".to_string(),
        source
            .server_address
            .clone()
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| p.config.default_scaler_address.clone()),
    );
    if let Some(op) = source
        .operation_over_time
        .as_ref()
        .filter(|o| !o.is_empty())
    {
        metadata.insert("operationOverTime".to_string(), op.clone());
    }
    Some(Trigger {
        type_: "external".into(),
        metadata,
        metric_type: None,
    })
}

/// An external metric: a trigger of the backend's own type, which KEDA
/// serves itself.
fn external_trigger(external: &ExternalMetric) -> Option<Trigger> {
    let source = external.metric.as_ref()?;
    let backend: ExternalBackend = source.backend.unwrap_or_default();
    let type_ = match backend {
        ExternalBackend::Prometheus => "prometheus",
    };
    let mut metadata = BTreeMap::new();
    metadata.insert(
        "serverAddress".to_string(),
        source.server_address.clone().unwrap_or_default(),
    );
    metadata.insert(
        "query".to_string(),
        source.query.clone().unwrap_or_default(),
    );
    metadata.insert(
        "threshold".to_string(),
        external
            .target
            .as_ref()
            .and_then(|t| t.value.clone())
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "0".into()),
    );
    if let Some(ns) = source.namespace.as_ref().filter(|n| !n.is_empty()) {
        metadata.insert("namespace".to_string(), ns.clone());
    }
    Some(Trigger {
        type_: type_.into(),
        metadata,
        metric_type: None,
    })
}
