//! `aim lab run -f service.yaml`: score the autoscaling config of an
//! AIMService manifest before deploying it. Reads `minReplicas`,
//! `maxReplicas`, `autoScaling.metrics` and the KEDA pause annotations;
//! everything else in the manifest is ignored.
//!
//! The metrics are scored as KServe v0.16 turns them into KEDA triggers,
//! which is not what their words say: for pod and external metrics KServe
//! copies `target.value` into the trigger's `targetValue` (or
//! `threshold`) and sets no `metricType`, so KEDA's default `AverageValue`
//! applies and the HPA wants ceil(sum / value) replicas whatever
//! `target.type` says. The lab-vs-live comparison of the demo found this:
//! scored as a `Value` target, the seed configuration multiplied the
//! summed metric by the ready pods and predicted a replica too many.

use aim_policy::keda::{MetricType, ScaledObjectSpec, TriggerSpec};
use aim_policy::lookup;
use serde_yaml::Value;

use crate::control::{KedaLoop, Trigger};
use crate::metrics::{Operation, Signal};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot parse the manifest as YAML: {0}")]
    Yaml(String),
    #[error("{path}: {reason}")]
    Field { path: String, reason: String },
}

fn field(path: &str, reason: impl Into<String>) -> ManifestError {
    ManifestError::Field {
        path: path.into(),
        reason: reason.into(),
    }
}

fn signal_of(query: &str, path: &str) -> Result<Signal, ManifestError> {
    for (needle, signal) in [
        ("num_requests_running", Signal::Running),
        ("num_requests_waiting", Signal::Waiting),
        ("kv_cache_usage", Signal::KvUsage),
        ("gpu_cache_usage", Signal::KvUsage),
        ("gpu_gfx_activity", Signal::GpuUtil),
        ("DCGM_FI_DEV_GPU_UTIL", Signal::GpuUtil),
    ] {
        if query.contains(needle) {
            return Ok(signal);
        }
    }
    Err(field(
        path,
        format!(
            "query {query:?} reads no metric the lab models; use vllm:num_requests_running, vllm:num_requests_waiting, vllm:kv_cache_usage_perc or gpu_gfx_activity"
        ),
    ))
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The KEDA loop an AIMService's autoscaling would run, with the scaler's
/// default query window.
pub fn parse(text: &str, default_window_s: f64) -> Result<KedaLoop, ManifestError> {
    let doc: Value = serde_yaml::from_str(text).map_err(|e| ManifestError::Yaml(e.to_string()))?;
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("");
    if kind != "AIMService" {
        return Err(field(
            "kind",
            format!("expected AIMService, found {kind:?}"),
        ));
    }
    let spec = doc.get("spec").ok_or_else(|| field("spec", "missing"))?;
    let min = spec
        .get("minReplicas")
        .map(|v| number(v).ok_or_else(|| field("spec.minReplicas", "expected a whole number")))
        .transpose()?;
    let max = spec
        .get("maxReplicas")
        .map(|v| number(v).ok_or_else(|| field("spec.maxReplicas", "expected a whole number")))
        .transpose()?;
    let (Some(min), Some(max)) = (min, max) else {
        return Err(field(
            "spec.minReplicas",
            "the service has no autoscaling: set minReplicas and maxReplicas (spec.replicas alone is a static pool)",
        ));
    };
    if min > max || min < 0.0 {
        return Err(field(
            "spec.minReplicas",
            format!("{min} must be between 0 and maxReplicas ({max})"),
        ));
    }
    let mut triggers = Vec::new();
    let metrics = spec
        .get("autoScaling")
        .and_then(|a| a.get("metrics"))
        .and_then(Value::as_sequence);
    for (i, m) in metrics.into_iter().flatten().enumerate() {
        let path = format!("spec.autoScaling.metrics[{i}]");
        let body = m
            .get("podmetric")
            .or_else(|| m.get("external"))
            .ok_or_else(|| field(&path, "expected a podmetric or external block"))?;
        let metric = body
            .get("metric")
            .ok_or_else(|| field(&format!("{path}.metric"), "missing"))?;
        let query = metric
            .get("query")
            .and_then(Value::as_str)
            .ok_or_else(|| field(&format!("{path}.metric.query"), "missing"))?;
        let operation = match metric
            .get("operationOverTime")
            .and_then(Value::as_str)
            .unwrap_or("last_one")
        {
            "avg" => Operation::Avg,
            "max" => Operation::Max,
            "last_one" => Operation::LastOne,
            other => {
                return Err(field(
                    &format!("{path}.metric.operationOverTime"),
                    format!("{other:?}: the lab models last_one, avg and max"),
                ));
            }
        };
        let target = body
            .get("target")
            .ok_or_else(|| field(&format!("{path}.target"), "missing"))?;
        match target.get("type").and_then(Value::as_str) {
            Some("Value" | "AverageValue") => {}
            other => {
                return Err(field(
                    &format!("{path}.target.type"),
                    format!("{other:?}: use Value or AverageValue"),
                ));
            }
        }
        // aim's operator copies an averageValue-only target into `value`,
        // the one field KServe reads (AIM Engine does not, and KServe then
        // deploys a target of 0).
        let key = if target.get("value").is_none() && target.get("averageValue").is_some() {
            "averageValue"
        } else {
            "value"
        };
        let value = target
            .get(key)
            .and_then(number)
            .filter(|v| *v > 0.0)
            .ok_or_else(|| field(&format!("{path}.target.{key}"), "expected a number above 0"))?;
        triggers.push(Trigger {
            signal: signal_of(query, &format!("{path}.metric.query"))?,
            operation,
            window_s: default_window_s,
            policy: lookup("passthrough").map_err(|e| field(&path, e.to_string()))?,
            metadata: Default::default(),
            // KServe sets no metricType: KEDA's default.
            spec: TriggerSpec {
                metric_type: MetricType::AverageValue,
                target: value,
                activation: 0.0,
            },
        });
    }
    if triggers.is_empty() {
        // aim's default metric: running requests averaged over the window,
        // target 1, which KServe deploys as an AverageValue trigger.
        triggers.push(Trigger {
            signal: Signal::Running,
            operation: Operation::Avg,
            window_s: default_window_s,
            policy: lookup("passthrough").map_err(|e| field("spec", e.to_string()))?,
            metadata: Default::default(),
            spec: TriggerSpec {
                metric_type: MetricType::AverageValue,
                target: 1.0,
                activation: 0.0,
            },
        });
    }
    let mut so = ScaledObjectSpec {
        min_replica_count: min as u32,
        max_replica_count: max as u32,
        ..Default::default()
    };
    let annotations = doc.get("metadata").and_then(|m| m.get("annotations"));
    let ann = |k: &str| {
        annotations
            .and_then(|a| a.get(k))
            .and_then(Value::as_str)
            .map(str::trim)
    };
    so.annotations.paused = ann("autoscaling.keda.sh/paused") == Some("true");
    so.annotations.paused_scale_in = ann("autoscaling.keda.sh/paused-scale-in") == Some("true");
    so.annotations.paused_scale_out = ann("autoscaling.keda.sh/paused-scale-out") == Some("true");
    if let Some(n) = ann("autoscaling.keda.sh/paused-replicas") {
        so.annotations.paused_replicas = Some(n.parse().map_err(|_| {
            field(
                "metadata.annotations[autoscaling.keda.sh/paused-replicas]",
                format!("{n:?} is not a whole number"),
            )
        })?);
    }
    KedaLoop::new(so, triggers).map_err(|e| field("spec.autoScaling", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED_000: &str = r#"
apiVersion: aim.eai.amd.com/v1alpha1
kind: AIMService
metadata:
  name: qwen-chat
spec:
  model:
    image: amdenterpriseai/aim-qwen-qwen3-32b:0.8.5
  minReplicas: 1
  maxReplicas: 8
  autoScaling:
    metrics:
      - type: PodMetric
        podmetric:
          metric:
            backend: opentelemetry
            metricNames:
              - vllm:num_requests_running
            query: "vllm:num_requests_running"
            operationOverTime: "avg"
          target:
            type: Value
            value: "1"
"#;

    #[test]
    fn seed_manifest_becomes_the_keda_loop() {
        let k = parse(SEED_000, 120.0).unwrap();
        assert_eq!(k.keda.spec.min_replica_count, 1);
        assert_eq!(k.keda.spec.max_replica_count, 8);
        // Without metrics: aim's default, deployed the same way.
        let default = parse(&SEED_000[..SEED_000.find("  autoScaling").unwrap()], 120.0).unwrap();
        for loop_ in [&k, &default] {
            let t = &loop_.triggers[0];
            assert_eq!(
                (t.signal, t.operation, t.spec.metric_type, t.spec.target),
                (
                    Signal::Running,
                    Operation::Avg,
                    MetricType::AverageValue,
                    1.0
                )
            );
        }
    }

    #[test]
    fn a_gpu_utilisation_trigger_reads_the_gpu_signal_in_either_exporters_name() {
        for name in ["gpu_gfx_activity", "DCGM_FI_DEV_GPU_UTIL"] {
            let k = parse(&SEED_000.replace("vllm:num_requests_running", name), 120.0).unwrap();
            assert_eq!(k.triggers[0].signal, Signal::GpuUtil, "{name}");
        }
    }

    #[test]
    fn an_average_value_target_is_deployed_as_aims_operator_writes_it() {
        // Only averageValue: the operator copies it into value for KServe.
        let k = parse(
            &SEED_000
                .replace("type: Value", "type: AverageValue")
                .replace("value: \"1\"", "averageValue: \"4\""),
            120.0,
        )
        .unwrap();
        let t = &k.triggers[0].spec;
        assert_eq!((t.metric_type, t.target), (MetricType::AverageValue, 4.0));
        // Either type with a value is deployed as an average per replica.
        let k = parse(
            &SEED_000.replace("type: Value", "type: AverageValue"),
            120.0,
        )
        .unwrap();
        assert_eq!(k.triggers[0].spec.metric_type, MetricType::AverageValue);
        let e = parse(
            &SEED_000
                .replace("type: Value", "type: AverageValue")
                .replace("value: \"1\"", "averageValue: \"none\""),
            120.0,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("spec.autoScaling.metrics[0].target.averageValue"),
            "{e}"
        );
    }

    #[test]
    fn bad_manifests_name_the_field() {
        let e = parse(&SEED_000.replace("type: Value", "type: Median"), 120.0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("spec.autoScaling.metrics[0].target.type"), "{e}");
        let e = parse(&SEED_000.replace("maxReplicas: 8", "replicas: 3"), 120.0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("minReplicas and maxReplicas"), "{e}");
        let e = parse(
            &SEED_000.replace("\"vllm:num_requests_running\"", "\"dcgm_gpu_util\""),
            120.0,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("metric.query"), "{e}");
    }
}
