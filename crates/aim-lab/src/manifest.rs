//! `aim lab run -f service.yaml`: score the autoscaling of an AIMService
//! manifest before deploying it — or of the KEDA ScaledObject or KServe
//! InferenceService it would become, as written by hand (seed 003's
//! runbook object, seed 002's InferenceServices).
//!
//! The manifest goes through the operator's own translation
//! ([`aim_scaling`]): the ScaledObject the lab runs is the one the operator
//! would deploy, or the one KServe would build from the operator's
//! InferenceService, field for field. Only the last step is the lab's: a
//! trigger's query is matched to the signal the simulation measures.
//!
//! KServe v0.16 copies a pod metric's `target.value` into the trigger's
//! `targetValue` and sets no `metricType`, so KEDA's default
//! `AverageValue` applies and the HPA wants ceil(sum / value) replicas
//! whatever `target.type` says. The lab-vs-live comparison of the demo
//! found this: scored as a `Value` target, the seed configuration
//! multiplied the summed metric by the ready pods and predicted a replica
//! too many.

use aim_api::AIMService;
use aim_policy::lookup;
use aim_scaling::{KServeAutoscaler, Scaling, ServiceScaling, keda_spec, scaled_object::Trigger};

use crate::control::{KedaLoop, Trigger as LabTrigger};
use crate::metrics::{Operation, Signal};
use crate::prom::{PromSetup, PromTrigger};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot parse the manifest as an AIMService: {0}")]
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

impl From<aim_scaling::ScalingError> for ManifestError {
    fn from(e: aim_scaling::ScalingError) -> Self {
        field(&e.field, e.message)
    }
}

/// The name the lab gives the service's InferenceService: only the
/// selectors in its queries carry it, and the lab ignores them.
const LAB_ISVC: &str = "lab";

/// Reads an AIMService manifest.
pub fn service(text: &str) -> Result<AIMService, ManifestError> {
    let doc: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| ManifestError::Yaml(e.to_string()))?;
    let kind = doc
        .get("kind")
        .and_then(serde_yaml::Value::as_str)
        .unwrap_or("");
    if kind != "AIMService" {
        return Err(field(
            "kind",
            format!("expected AIMService, found {kind:?}"),
        ));
    }
    serde_yaml::from_value(doc).map_err(|e| ManifestError::Yaml(e.to_string()))
}

/// The ScaledObject an AIMService manifest runs on, as deployed.
pub fn scaled_object(
    svc: &AIMService,
    kserve: &KServeAutoscaler,
) -> Result<aim_scaling::ScaledObject, ManifestError> {
    let paused = aim_api_paused(svc)?;
    if svc.spec.min_replicas == Some(0) {
        return Err(field(
            "spec.minReplicas",
            "0 (scale from zero behind aim gateway) is not modelled by the lab yet: its KEDA \
             loop has no wake trigger on the gateway's queue; score the service with \
             minReplicas: 1",
        ));
    }
    let planned = aim_scaling::plan(&ServiceScaling {
        spec: &svc.spec,
        namespace: svc.metadata.namespace.as_deref().unwrap_or("default"),
        isvc_name: LAB_ISVC,
        paused,
        kserve,
        // The lab's KEDA model has no gateway trigger, so a manifest that
        // scales from zero is refused rather than scored as something else.
        routed: false,
    })?;
    match planned {
        Scaling::Fixed { replicas } => Err(field(
            "spec.replicas",
            format!(
                "the service runs a fixed pool of {replicas} and has nothing to score; set minReplicas or maxReplicas to autoscale (or use `aim lab run --policy static`)"
            ),
        )),
        Scaling::Autoscaled(a) => Ok(a.scaled_object),
    }
}

/// aim's pause annotation on the service (the runtime config's default is
/// not in a manifest).
fn aim_api_paused(svc: &AIMService) -> Result<bool, ManifestError> {
    let key = "aim.eai.amd.com/autoscaling-paused";
    match svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(|v| v.trim())
    {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(field(
            &format!("metadata.annotations[{key}]"),
            format!("{other:?} must be \"true\" or \"false\""),
        )),
    }
}

/// The signal the lab measures for a trigger's query.
fn signal_of(trigger: &Trigger, path: &str) -> Result<(Signal, Operation), ManifestError> {
    let query = trigger
        .metadata
        .get("metricQuery")
        .map_or("", String::as_str);
    let op = trigger
        .metadata
        .get("operationOverTime")
        .map_or("last_one", |s| s.trim());
    let quantile = trigger.metadata.get("quantile").map(|q| q.trim());
    let has = |name: &str| query.contains(name);
    let operation = |signal: Signal| -> Result<(Signal, Operation), ManifestError> {
        let operation = match op {
            "" | "last_one" => Operation::LastOne,
            "avg" => Operation::Avg,
            "max" => Operation::Max,
            other => {
                return Err(field(
                    &format!("{path}.metadata.operationOverTime"),
                    format!("{other:?}: for {signal:?} the lab models last_one, avg and max"),
                ));
            }
        };
        Ok((signal, operation))
    };
    // Counters and histograms: the lab measures the rate, or the p90 over
    // the rate, that the scaler computes from them.
    let rate_of = |signal: Signal| -> Result<(Signal, Operation), ManifestError> {
        if op != "rate" {
            return Err(field(
                &format!("{path}.metadata.operationOverTime"),
                format!("{query:?} is a counter: scale on its rate (operationOverTime: rate)"),
            ));
        }
        Ok((signal, Operation::LastOne))
    };
    let p90 = |signal: Signal| -> Result<(Signal, Operation), ManifestError> {
        let q = quantile.or(query.contains("histogram_quantile(0.9").then_some("0.9"));
        if q.and_then(|q| q.parse::<f64>().ok()) != Some(0.9) {
            return Err(field(
                &format!("{path}.metadata.quantile"),
                format!("{query:?} is a histogram: the lab models its p90 (quantile: \"0.9\")"),
            ));
        }
        rate_of(signal)
    };
    if has("num_requests_running") && has("num_requests_waiting") {
        operation(Signal::InFlight)
    } else if has("num_requests_running") {
        operation(Signal::Running)
    } else if has("num_requests_waiting") {
        operation(Signal::Waiting)
    } else if has("kv_cache_usage") || has("gpu_cache_usage") {
        operation(Signal::KvUsage)
    } else if has("gpu_gfx_activity") || has("DCGM_FI_DEV_GPU_UTIL") {
        operation(Signal::GpuUtil)
    } else if has("request_success_total") {
        rate_of(Signal::SuccessRate)
    } else if has("time_to_first_token_seconds") {
        p90(Signal::TtftP90)
    } else if has("time_per_output_token_seconds") {
        p90(Signal::TpotP90)
    } else {
        Err(field(
            &format!("{path}.metadata.metricQuery"),
            format!(
                "query {query:?} reads no metric the lab models; use vllm:num_requests_running, vllm:num_requests_waiting, vllm:kv_cache_usage_perc, gpu_gfx_activity (or DCGM_FI_DEV_GPU_UTIL), vllm:request_success_total (rate) or a p90 of vllm:time_to_first_token_seconds"
            ),
        ))
    }
}

/// The KEDA loop a ScaledObject runs, with the scaler's default query
/// window where a trigger sets none. A `type: prometheus` trigger is
/// KEDA's own prometheus scaler querying the lab's Prometheus; an
/// `external` trigger is `aim scaler`.
pub fn keda_loop(
    so: &aim_scaling::ScaledObject,
    default_window_s: f64,
) -> Result<KedaLoop, ManifestError> {
    // A prometheus trigger's own keys first: KEDA names `threshold`, not
    // the external scaler's `targetValue`, when it is missing.
    let mut prometheus = Vec::new();
    for (i, t) in so.spec.triggers.iter().enumerate() {
        let path = format!("spec.triggers[{i}]");
        prometheus.push(match t.type_.as_str() {
            "prometheus" => Some(Box::new(
                PromTrigger::from_metadata(&t.metadata, &path)
                    .map_err(|(path, reason)| field(&path, reason))?,
            )),
            "external" => None,
            other => {
                return Err(field(
                    &format!("{path}.type"),
                    format!(
                        "{other:?}: the lab models KEDA's prometheus trigger and the external trigger of aim scaler (OpenTelemetry)"
                    ),
                ));
            }
        });
    }
    let spec = keda_spec(so)?;
    let mut triggers = Vec::new();
    for (i, (t, trigger_spec)) in so.spec.triggers.iter().zip(&spec.triggers).enumerate() {
        let path = format!("spec.triggers[{i}]");
        if let Some(p) = prometheus[i].take() {
            triggers.push(LabTrigger {
                // Not read for a Prometheus trigger.
                signal: Signal::Running,
                operation: Operation::LastOne,
                window_s: 0.0,
                policy: lookup("passthrough")
                    .map_err(|e| field(&format!("{path}.type"), e.to_string()))?,
                metadata: t.metadata.clone(),
                spec: trigger_spec.clone(),
                prometheus: Some(p),
            });
            continue;
        }
        let (signal, operation) = signal_of(t, &path)?;
        let window_s = match t.metadata.get("window") {
            None => default_window_s,
            Some(w) => aim_policy::parse_seconds(w)
                .filter(|s| *s > 0.0)
                .ok_or_else(|| {
                    field(
                        &format!("{path}.metadata.window"),
                        format!("{w:?} is not a duration"),
                    )
                })?,
        };
        let policy = lookup(
            t.metadata
                .get("policy")
                .map_or(aim_policy::DEFAULT_POLICY, |p| p.trim()),
        )
        .map_err(|e| field(&format!("{path}.metadata.policy"), e.to_string()))?;
        triggers.push(LabTrigger {
            signal,
            operation,
            window_s,
            policy,
            metadata: t.metadata.clone(),
            spec: trigger_spec.clone(),
            prometheus: None,
        });
    }
    let queries_prometheus = triggers.iter().any(|t| t.prometheus.is_some());
    let mut k = KedaLoop::new(spec, triggers).map_err(|e| field("spec.triggers", e.to_string()))?;
    if queries_prometheus {
        let target = so.spec.scale_target_ref.name.trim();
        k.prometheus = Some(PromSetup {
            scrape_interval_s: None,
            namespace: Some(so.metadata.namespace.as_str())
                .filter(|n| !n.is_empty())
                .unwrap_or("default")
                .to_owned(),
            // KServe names a predictor's Deployment `<isvc>-predictor`.
            isvc: target
                .strip_suffix("-predictor")
                .filter(|i| !i.is_empty())
                .map(str::to_owned),
            pod_prefix: if target.is_empty() { "lab" } else { target }.to_owned(),
        });
    }
    Ok(k)
}

/// The KEDA loop an AIMService's autoscaling would run, with KServe's
/// shipped autoscaler settings and the scaler's default query window.
pub fn parse(text: &str, default_window_s: f64) -> Result<KedaLoop, ManifestError> {
    parse_with(text, default_window_s, &KServeAutoscaler::default())
}

/// The KEDA loop of any manifest `aim lab run -f` takes: an AIMService
/// (through the operator's translation), a KEDA ScaledObject as written,
/// or a KServe InferenceService (as KServe builds its ScaledObject).
/// Errors name the field of the manifest given.
pub fn parse_any(
    text: &str,
    default_window_s: f64,
    kserve: &KServeAutoscaler,
) -> Result<KedaLoop, ManifestError> {
    let doc: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| ManifestError::Yaml(e.to_string()))?;
    let kind = doc
        .get("kind")
        .and_then(serde_yaml::Value::as_str)
        .unwrap_or("")
        .to_owned();
    match kind.as_str() {
        "AIMService" => parse_with(text, default_window_s, kserve),
        "ScaledObject" => {
            let so: aim_scaling::ScaledObject =
                serde_yaml::from_value(doc).map_err(|e| ManifestError::Yaml(e.to_string()))?;
            keda_loop(&so, default_window_s)
        }
        "InferenceService" => {
            let so = crate::isvc::scaled_object(doc, kserve)?;
            keda_loop(&so, default_window_s).map_err(|e| match e {
                ManifestError::Field { path, reason } => ManifestError::Field {
                    path: crate::isvc::isvc_path(&path),
                    reason,
                },
                other => other,
            })
        }
        other => Err(field(
            "kind",
            format!("expected AIMService, ScaledObject or InferenceService, found {other:?}"),
        )),
    }
}

/// [`parse`] with the cluster's KServe autoscaler settings.
pub fn parse_with(
    text: &str,
    default_window_s: f64,
    kserve: &KServeAutoscaler,
) -> Result<KedaLoop, ManifestError> {
    let svc = service(text)?;
    let mut k =
        keda_loop(&scaled_object(&svc, kserve)?, default_window_s).map_err(manifest_path)?;
    // The pods' labels as the operator names the InferenceService (the
    // translation above ran with a placeholder name).
    if let Some(setup) = k.prometheus.as_mut() {
        let namespace = svc.metadata.namespace.as_deref().unwrap_or("default");
        let name = svc.metadata.name.as_deref().unwrap_or("lab");
        let isvc = aim_rules::naming::isvc_name(name, namespace)
            .map_err(|e| field("metadata.namespace", e.to_string()))?;
        setup.pod_prefix = aim_scaling::kserve::predictor_name(&isvc);
        setup.isvc = Some(isvc);
    }
    Ok(k)
}

/// Names the manifest's field behind a ScaledObject field: trigger `i` is
/// the service's metric `i`, its extra keys are the policy's `params`.
fn manifest_path(e: ManifestError) -> ManifestError {
    let ManifestError::Field { path, reason } = e else {
        return e;
    };
    let Some(rest) = path.strip_prefix("spec.triggers[") else {
        return ManifestError::Field { path, reason };
    };
    let Some((i, key)) = rest.split_once("].metadata.") else {
        return ManifestError::Field { path, reason };
    };
    let base = format!("spec.autoScaling.metrics[{i}]");
    let metric = format!("{base}.podmetric");
    let path = match key {
        "targetValue" => format!("{metric}.target.value"),
        "metricQuery" => format!("{metric}.metric.query"),
        "operationOverTime" => format!("{metric}.metric.operationOverTime"),
        // A Prometheus-backend (External) metric's trigger keys.
        "query" => format!("{base}.external.metric.query"),
        "threshold" => format!("{base}.external.target.value"),
        "serverAddress" => format!("{base}.external.metric.serverAddress"),
        other => format!("spec.autoScaling.policy.params.{other}"),
    };
    ManifestError::Field { path, reason }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aim_policy::keda::MetricType;

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
    fn scale_from_zero_is_refused_rather_than_scored_as_something_else() {
        let zero = SEED_000.replace("minReplicas: 1", "minReplicas: 0");
        assert_ne!(zero, SEED_000);
        let e = parse(&zero, 120.0).unwrap_err().to_string();
        assert!(e.contains("spec.minReplicas"), "{e}");
        assert!(e.contains("not modelled by the lab"), "{e}");
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
            e.contains("spec.autoScaling.metrics[0].podmetric.target.value"),
            "{e}"
        );
    }

    #[test]
    fn one_bound_autoscales_as_the_operator_deploys_it() {
        // The operator autoscales on either bound; so does the lab.
        let k = parse(&SEED_000.replace("  maxReplicas: 8\n", ""), 120.0).unwrap();
        assert_eq!(
            (k.keda.spec.min_replica_count, k.keda.spec.max_replica_count),
            (1, 1)
        );
        let fixed =
            SEED_000[..SEED_000.find("  minReplicas").unwrap()].to_string() + "  replicas: 3\n";
        let e = parse(&fixed, 120.0).unwrap_err().to_string();
        assert!(e.contains("spec.replicas"), "{e}");
    }

    #[test]
    fn a_policy_in_the_manifest_is_the_policy_the_lab_runs() {
        let with_policy = format!(
            "{SEED_000}    policy: {{name: queue, params: {{headroom: \"0.3\", window: 30s}}}}\n    behavior:\n      scaleDown: {{stabilizationWindowSeconds: 45}}\n"
        );
        let k = parse(&with_policy, 120.0).unwrap();
        let t = &k.triggers[0];
        assert_eq!(t.policy.name(), "queue");
        assert_eq!(t.metadata["headroom"], "0.3");
        assert_eq!(t.window_s, 30.0);
        assert_eq!(
            k.keda.spec.behavior.scale_down.stabilization_window_seconds,
            45
        );
        // A parameter the policy does not have is the operator's error too.
        let e = parse(&with_policy.replace("headroom", "headrom"), 120.0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("spec.autoScaling.policy.params.headrom"), "{e}");
    }

    #[test]
    fn latency_and_rate_signals_need_their_quantile_and_rate() {
        let ttft = SEED_000
            .replace(
                "vllm:num_requests_running",
                "vllm:time_to_first_token_seconds",
            )
            .replace("\"avg\"", "rate");
        let e = parse(&ttft, 120.0).unwrap_err().to_string();
        assert!(e.contains("spec.autoScaling.policy.params.quantile"), "{e}");
        let k = parse(
            &format!("{ttft}    policy: {{name: passthrough, params: {{quantile: \"0.9\"}}}}\n"),
            120.0,
        )
        .unwrap();
        assert_eq!(k.triggers[0].signal, Signal::TtftP90);
        let success = SEED_000.replace("vllm:num_requests_running", "vllm:request_success_total");
        let e = parse(&success, 120.0).unwrap_err().to_string();
        assert!(e.contains("operationOverTime: rate"), "{e}");
        assert!(
            e.contains("spec.autoScaling.metrics[0].podmetric.metric.operationOverTime"),
            "{e}"
        );
        let k = parse(&success.replace("\"avg\"", "rate"), 120.0).unwrap();
        assert_eq!(k.triggers[0].signal, Signal::SuccessRate);
    }

    #[test]
    fn bad_manifests_name_the_field() {
        let e = parse(&SEED_000.replace("type: Value", "type: Median"), 120.0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("Median"), "{e}");
        let e = parse(
            &SEED_000.replace("\"vllm:num_requests_running\"", "\"dcgm_gpu_util\""),
            120.0,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("spec.autoScaling.metrics[0].podmetric.metric.query"),
            "{e}"
        );
        let e = parse(&SEED_000.replace("kind: AIMService", "kind: Pod"), 120.0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("kind"), "{e}");
    }

    const SEED_003_SCALED_OBJECT: &str =
        include_str!("../../../examples/seeds/keda-vllm-sim-scaledobject.yaml");
    const SEED_002_PROMETHEUS: &str =
        include_str!("../../../examples/seeds/kserve-keda-prometheus.yaml");
    const SEED_002_OPENTELEMETRY: &str =
        include_str!("../../../examples/seeds/kserve-keda-opentelemetry.yaml");

    fn any(text: &str) -> Result<KedaLoop, ManifestError> {
        parse_any(text, 120.0, &KServeAutoscaler::default())
    }

    #[test]
    fn seed_003s_scaled_object_is_kedas_prometheus_trigger_as_written() {
        let k = any(SEED_003_SCALED_OBJECT).unwrap();
        let spec = &k.keda.spec;
        assert_eq!(
            (
                spec.polling_interval_seconds,
                spec.cooldown_period_seconds,
                spec.min_replica_count,
                spec.max_replica_count
            ),
            (15.0, 60.0, 1, 5)
        );
        let t = &k.triggers[0];
        let p = t.prometheus.as_ref().expect("a prometheus trigger");
        assert_eq!(
            p.query.text,
            r#"sum(vllm:num_requests_waiting{namespace="inference"})"#
        );
        assert!(p.ignore_null_values);
        assert_eq!(
            (t.spec.metric_type, t.spec.target, t.spec.activation),
            (MetricType::AverageValue, 5.0, 0.0)
        );
        let setup = k.prometheus.as_ref().unwrap();
        assert_eq!(
            (
                setup.namespace.as_str(),
                setup.pod_prefix.as_str(),
                setup.scrape_interval_s
            ),
            ("inference", "vllm-sim", None)
        );
        // The HPA keeps its defaults: no behaviour in the object.
        assert_eq!(spec.behavior.scale_down.stabilization_window_seconds, 300);
        // Activation, behaviour and a Value target, as written.
        let tuned = SEED_003_SCALED_OBJECT
            .replace(
                "threshold: \"5\"",
                "threshold: \"5\"\n        activationThreshold: \"2\"\n        ignoreNullValues: \"false\"\n      metricType: Value",
            )
            .replace(
                "  triggers:",
                "  advanced:\n    horizontalPodAutoscalerConfig:\n      behavior:\n        scaleDown:\n          stabilizationWindowSeconds: 30\n  triggers:",
            );
        let k = any(&tuned).unwrap();
        let t = &k.triggers[0];
        assert_eq!(
            (t.spec.metric_type, t.spec.activation),
            (MetricType::Value, 2.0)
        );
        assert!(!t.prometheus.as_ref().unwrap().ignore_null_values);
        assert_eq!(
            k.keda.spec.behavior.scale_down.stabilization_window_seconds,
            30
        );
    }

    #[test]
    fn seed_002s_prometheus_inference_service_is_kserves_trigger() {
        let k = any(SEED_002_PROMETHEUS).unwrap();
        assert_eq!(
            (k.keda.spec.min_replica_count, k.keda.spec.max_replica_count),
            (1, 5)
        );
        let t = &k.triggers[0];
        // KServe passes the bare query through: one series per pod.
        assert_eq!(
            t.prometheus.as_ref().unwrap().query.text,
            "vllm:num_requests_running"
        );
        // No metricType from KServe: AverageValue whatever target.type says.
        assert_eq!(
            (t.spec.metric_type, t.spec.target),
            (MetricType::AverageValue, 2.0)
        );
        // KServe's config map windows.
        assert_eq!(
            k.keda.spec.behavior.scale_down.stabilization_window_seconds,
            300
        );
        let setup = k.prometheus.as_ref().unwrap();
        assert_eq!(
            (
                setup.namespace.as_str(),
                setup.isvc.as_deref(),
                setup.pod_prefix.as_str()
            ),
            (
                "default",
                Some("huggingface-fbopt"),
                "huggingface-fbopt-predictor"
            )
        );
        // The predictor's own window wins over the config map's.
        let own = SEED_002_PROMETHEUS.replace(
            "    autoScaling:\n",
            "    autoScaling:\n      behavior:\n        scaleDown:\n          stabilizationWindowSeconds: 45\n",
        );
        assert_eq!(
            any(&own)
                .unwrap()
                .keda
                .spec
                .behavior
                .scale_down
                .stabilization_window_seconds,
            45
        );
        // Seed 002's OpenTelemetry InferenceService: aim scaler's trigger.
        let k = any(SEED_002_OPENTELEMETRY).unwrap();
        let t = &k.triggers[0];
        assert!(t.prometheus.is_none() && k.prometheus.is_none());
        assert_eq!((t.signal, t.spec.target), (Signal::Running, 4.0));
    }

    /// The AIMService Prometheus backend (docs/prometheus-backend.md): the
    /// operator's translation writes KServe's prometheus trigger, and the
    /// lab runs that ScaledObject.
    const PROMETHEUS_SERVICE: &str = r#"
apiVersion: aim.eai.amd.com/v1alpha1
kind: AIMService
metadata: {name: qwen-chat, namespace: ml-team}
spec:
  model: {image: amdenterpriseai/aim-qwen-qwen3-32b:0.8.5}
  minReplicas: 1
  maxReplicas: 8
  autoScaling:
    metrics:
    - type: External
      external:
        metric:
          backend: prometheus
          serverAddress: http://prometheus-operated.monitoring.svc:9090
          query: sum(vllm:num_requests_waiting{namespace="ml-team"})
        target: {type: Value, value: "5"}
"#;

    #[test]
    fn an_aimservice_on_the_prometheus_backend_runs_its_translated_trigger() {
        let k = any(PROMETHEUS_SERVICE).unwrap();
        let t = &k.triggers[0];
        assert_eq!(
            t.prometheus.as_ref().unwrap().query.text,
            r#"sum(vllm:num_requests_waiting{namespace="ml-team"})"#
        );
        assert_eq!(
            (t.spec.metric_type, t.spec.target),
            (MetricType::AverageValue, 5.0)
        );
        assert_eq!(
            (k.keda.spec.min_replica_count, k.keda.spec.max_replica_count),
            (1, 8)
        );
        let setup = k.prometheus.as_ref().unwrap();
        let isvc = aim_rules::naming::isvc_name("qwen-chat", "ml-team").unwrap();
        assert_eq!(setup.namespace, "ml-team");
        assert_eq!(setup.isvc.as_deref(), Some(isvc.as_str()));
        assert_eq!(setup.pod_prefix, format!("{isvc}-predictor"));
        // A query outside the subset names the service's field.
        let e =
            any(&PROMETHEUS_SERVICE
                .replace("query: sum(vllm", "query: histogram_quantile(0.9, vllm"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("spec.autoScaling.metrics[0].external.metric.query: "),
            "{e}"
        );
    }

    #[test]
    fn a_query_outside_the_subset_names_the_field_of_the_manifest_given() {
        let e = any(&SEED_003_SCALED_OBJECT.replace(
            r#"sum(vllm:num_requests_waiting{namespace="inference"})"#,
            r#"sum by (pod) (vllm:num_requests_waiting{namespace="inference"})"#,
        ))
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("spec.triggers[0].metadata.query: "), "{e}");
        assert!(
            e.contains("grouping") && e.contains("sum, avg, min, max and count"),
            "{e}"
        );
        let e = any(&SEED_003_SCALED_OBJECT.replace("sum(vllm", "sum(rate(vllm"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("spec.triggers[0].metadata.query"), "{e}");
        assert!(e.contains("not valid PromQL"), "{e}");
        let e = any(&SEED_003_SCALED_OBJECT.replace("        threshold: \"5\"\n", ""))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("spec.triggers[0].metadata.threshold: "),
            "{e}"
        );
        let e = any(&SEED_003_SCALED_OBJECT.replace("type: prometheus", "type: cpu"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("spec.triggers[0].type: "), "{e}");
        // On an InferenceService: its metric's field.
        let e = any(&SEED_002_PROMETHEUS.replace(
            "query: vllm:num_requests_running",
            "query: topk(1, vllm:num_requests_running)",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("spec.predictor.autoScaling.metrics[0].external.metric.query: "),
            "{e}"
        );
        let e = any(&SEED_002_PROMETHEUS.replace("\"keda\"", "\"hpa\""))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("metadata.annotations[serving.kserve.io/autoscalerClass]"),
            "{e}"
        );
        let e =
            any(&SEED_002_PROMETHEUS.replace("backend: \"prometheus\"", "backend: \"graphite\""))
                .unwrap_err()
                .to_string();
        assert!(
            e.starts_with("spec.predictor.autoScaling.metrics[0].external.metric.backend: "),
            "{e}"
        );
        let e = any(&SEED_002_PROMETHEUS.replace("value: \"2\"", "averageValue: \"2\""))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("spec.predictor.autoScaling.metrics[0].external.target.value: "),
            "{e}"
        );
        let e = any("kind: Deployment\n").unwrap_err().to_string();
        assert!(
            e.contains("AIMService, ScaledObject or InferenceService"),
            "{e}"
        );
    }
}
