//! `aim lab run -f isvc.yaml`: a KServe InferenceService with
//! `autoscalerClass: keda`, scored as KServe deploys it.
//!
//! KServe v0.16 builds one KEDA trigger per metric of the predictor's
//! `autoScaling`, in order: an `External` metric becomes a trigger of its
//! backend's type (`prometheus`) whose query is the metric's query as
//! written, with no label added; a `PodMetric` becomes the OpenTelemetry
//! `external` trigger. Both come from the model of KServe the operator's
//! translation uses ([`aim_scaling::kserve::scaled_object`]); the metrics
//! have the same shape as an AIMService's. Bounds and the HPA's
//! stabilisation windows follow KServe: `minReplicas` 1 when unset,
//! `maxReplicas` raised to the minimum, each window the predictor's
//! `autoScaling.behavior` else KServe's config map.

use std::collections::BTreeMap;

use aim_api::service::{AutoScaling, ScalingMetric};
use aim_scaling::{KServeAutoscaler, ScaledObject, kserve};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscalerBehavior;
use serde::Deserialize;

use crate::manifest::ManifestError;

#[derive(Debug, Deserialize)]
struct InferenceService {
    #[serde(default)]
    metadata: Metadata,
    #[serde(default)]
    spec: Spec,
}

#[derive(Debug, Default, Deserialize)]
struct Metadata {
    #[serde(default)]
    name: String,
    namespace: Option<String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
struct Spec {
    #[serde(default)]
    predictor: Predictor,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Predictor {
    min_replicas: Option<i32>,
    #[serde(default)]
    max_replicas: i32,
    auto_scaling: Option<AutoScalingSpec>,
}

#[derive(Debug, Default, Deserialize)]
struct AutoScalingSpec {
    #[serde(default)]
    metrics: Vec<serde_yaml::Value>,
    behavior: Option<HorizontalPodAutoscalerBehavior>,
}

fn field(path: String, reason: impl Into<String>) -> ManifestError {
    ManifestError::Field {
        path,
        reason: reason.into(),
    }
}

/// KServe keeps a quantity as written, and YAML may write it as a number:
/// aim's types take the text.
fn quantities_as_text(metric: &mut serde_yaml::Value) {
    for block in ["external", "podmetric"] {
        let Some(target) = metric.get_mut(block).and_then(|b| b.get_mut("target")) else {
            continue;
        };
        for key in ["value", "averageValue"] {
            if let Some(v) = target.get_mut(key)
                && let serde_yaml::Value::Number(n) = v
            {
                *v = serde_yaml::Value::String(n.to_string());
            }
        }
    }
}

/// The KServe annotation that chooses the autoscaler.
const AUTOSCALER_CLASS: &str = "serving.kserve.io/autoscalerClass";

/// The ScaledObject KServe builds for an InferenceService manifest.
pub fn scaled_object(
    doc: serde_yaml::Value,
    kserve_config: &KServeAutoscaler,
) -> Result<ScaledObject, ManifestError> {
    let isvc: InferenceService =
        serde_yaml::from_value(doc).map_err(|e| ManifestError::Yaml(e.to_string()))?;
    let class = isvc
        .metadata
        .annotations
        .get(AUTOSCALER_CLASS)
        .map(|c| c.trim());
    if class != Some("keda") {
        return Err(field(
            format!("metadata.annotations[{AUTOSCALER_CLASS}]"),
            format!(
                "{}: the lab scores KServe's KEDA autoscaling; set \"keda\" (External and PodMetric metrics need it)",
                class.map_or_else(
                    || "unset (KServe's default, hpa)".to_owned(),
                    |c| format!("{c:?}")
                )
            ),
        ));
    }
    let predictor = &isvc.spec.predictor;
    let autoscaling = predictor.auto_scaling.as_ref();
    let metrics = autoscaling.map_or(&[][..], |a| &a.metrics[..]);
    if metrics.is_empty() {
        return Err(field(
            "spec.predictor.autoScaling.metrics".into(),
            "no metric to scale on: KServe's KEDA autoscaling needs at least one External or PodMetric metric",
        ));
    }
    let namespace = isvc.metadata.namespace.as_deref().unwrap_or("default");
    // The predictor's own windows win over the config map's, each alone.
    let windows = autoscaling.and_then(|a| a.behavior.as_ref());
    let config = KServeAutoscaler {
        scale_up_stabilization_s: windows
            .and_then(|b| b.scale_up.as_ref()?.stabilization_window_seconds)
            .or(kserve_config.scale_up_stabilization_s),
        scale_down_stabilization_s: windows
            .and_then(|b| b.scale_down.as_ref()?.stabilization_window_seconds)
            .or(kserve_config.scale_down_stabilization_s),
        default_scaler_address: kserve_config.default_scaler_address.clone(),
    };
    let build = |autoscaling: &AutoScaling| {
        kserve::scaled_object(&kserve::Predictor {
            namespace,
            isvc_name: &isvc.metadata.name,
            annotations: &isvc.metadata.annotations,
            min_replicas: predictor.min_replicas,
            max_replicas: predictor.max_replicas,
            autoscaling,
            config: &config,
        })
    };
    let mut parsed = Vec::new();
    for (i, metric) in metrics.iter().enumerate() {
        let path = format!("spec.predictor.autoScaling.metrics[{i}]");
        let kind = metric
            .get("type")
            .and_then(serde_yaml::Value::as_str)
            .unwrap_or("");
        match kind {
            "External" => {
                let source = metric.get("external").and_then(|e| e.get("metric"));
                let text = |key: &str| {
                    source
                        .and_then(|m| m.get(key))
                        .and_then(serde_yaml::Value::as_str)
                        .map(str::trim)
                        .unwrap_or("")
                };
                // KServe makes the trigger's type of the backend; with none
                // KEDA has no scaler to run.
                if text("backend") != "prometheus" {
                    return Err(field(
                        format!("{path}.external.metric.backend"),
                        format!(
                            "{:?}: the lab models the prometheus backend (KServe also knows graphite)",
                            text("backend")
                        ),
                    ));
                }
                // KServe's admission refuses these two.
                if text("query").is_empty() {
                    return Err(field(
                        format!("{path}.external.metric.query"),
                        "the query should not be empty",
                    ));
                }
                let value = metric
                    .get("external")
                    .and_then(|e| e.get("target"))
                    .and_then(|t| t.get("value"));
                if value.is_none_or(|v| !(v.is_string() || v.is_number())) {
                    return Err(field(
                        format!("{path}.external.target.value"),
                        "the target threshold value should not be empty",
                    ));
                }
            }
            "PodMetric" => {}
            other => {
                return Err(field(
                    format!("{path}.type"),
                    format!(
                        "{other:?}: the lab scores External (prometheus) and PodMetric (opentelemetry) metrics, not CPU or memory"
                    ),
                ));
            }
        }
        let mut metric = metric.clone();
        quantities_as_text(&mut metric);
        let m: ScalingMetric =
            serde_yaml::from_value(metric).map_err(|e| field(path.clone(), e.to_string()))?;
        parsed.push(m);
    }
    let so = build(&AutoScaling {
        metrics: parsed,
        ..Default::default()
    });
    Ok(so)
}

/// Names the InferenceService field behind a ScaledObject field: trigger
/// `i` is metric `i`; a prometheus trigger's `query` and `threshold` are
/// the metric's query and target value.
pub fn isvc_path(path: &str) -> String {
    let Some(rest) = path.strip_prefix("spec.triggers[") else {
        return path.to_owned();
    };
    let Some((i, key)) = rest.split_once("].metadata.") else {
        return path.to_owned();
    };
    let metric = format!("spec.predictor.autoScaling.metrics[{i}]");
    match key {
        "query" => format!("{metric}.external.metric.query"),
        "threshold" => format!("{metric}.external.target.value"),
        "serverAddress" => format!("{metric}.external.metric.serverAddress"),
        "metricQuery" => format!("{metric}.podmetric.metric.query"),
        "targetValue" => format!("{metric}.podmetric.target.value"),
        "operationOverTime" => format!("{metric}.podmetric.metric.operationOverTime"),
        _ => format!("{metric} ({path})"),
    }
}
