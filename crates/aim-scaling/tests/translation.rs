//! The translation on the seed manifests and on aim's extensions.

use std::path::PathBuf;

use aim_api::AIMService;
use aim_policy::hpa::{PolicyKind, SelectPolicy};
use aim_policy::keda::MetricType;
use aim_scaling::{KServeAutoscaler, Owner, Scaling, ServiceScaling, keda_spec, plan};

fn service(yaml: &str) -> AIMService {
    serde_yaml::from_str(yaml).expect("an AIMService")
}

fn scaling(svc: &AIMService, paused: bool) -> Result<Scaling, aim_scaling::ScalingError> {
    plan(&ServiceScaling {
        spec: &svc.spec,
        namespace: "ml",
        isvc_name: "chat",
        paused,
        kserve: &KServeAutoscaler::default(),
        routed: false,
    })
}

fn seeds() -> Vec<(String, AIMService)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/seeds");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_yaml::Value::deserialize(doc).unwrap();
            if value.get("kind").and_then(|k| k.as_str()) == Some("AIMService") {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                out.push((name, serde_yaml::from_value(value).unwrap()));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

use serde::Deserialize;

const BASE: &str = r#"
apiVersion: aim.eai.amd.com/v1alpha1
kind: AIMService
metadata: {name: chat}
spec:
  model: {name: qwen}
  minReplicas: 1
  maxReplicas: 6
  autoScaling:
    metrics:
      - type: PodMetric
        podmetric:
          metric:
            backend: opentelemetry
            metricNames: [vllm:num_requests_waiting]
            query: vllm:num_requests_waiting
            operationOverTime: avg
          target: {type: Value, value: "2"}
"#;

#[test]
fn every_seed_is_deployed_through_kserve_unchanged() {
    let seeds = seeds();
    assert!(seeds.len() >= 10, "found {} seed services", seeds.len());
    let mut autoscaled = 0;
    for (name, svc) in &seeds {
        match scaling(svc, false).unwrap_or_else(|e| panic!("{name}: {e}")) {
            Scaling::Fixed { replicas } => assert!(replicas >= 1, "{name}"),
            Scaling::Autoscaled(a) => {
                autoscaled += 1;
                assert_eq!(a.owner, Owner::KServe, "{name}");
                assert_eq!(a.autoscaler_class(), "keda", "{name}");
                let so = &a.scaled_object;
                assert!(!so.spec.triggers.is_empty(), "{name}: no trigger");
                for t in &so.spec.triggers {
                    assert!(!t.metadata.contains_key("policy"), "{name}");
                    let q = &t.metadata["metricQuery"];
                    assert!(
                        q.starts_with("sum(")
                            && q.ends_with("{namespace=\"ml\", deployment=\"chat-predictor\"})"),
                        "{name}: {q}"
                    );
                }
                let spec = keda_spec(so).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(spec.min_replica_count as i32, a.min, "{name}");
                assert_eq!(spec.max_replica_count as i32, a.max, "{name}");
                // KServe's shipped windows: up 0 s, down 300 s.
                assert_eq!(spec.behavior.scale_down.stabilization_window_seconds, 300);
                assert_eq!(spec.behavior.scale_up.stabilization_window_seconds, 0);
            }
        }
    }
    assert!(autoscaled >= 3, "only {autoscaled} autoscaled seeds");
}

#[test]
fn one_bound_is_enough_to_autoscale() {
    let only_min = service(&BASE.replace("  maxReplicas: 6\n", ""));
    assert_eq!(scaling(&only_min, false).unwrap().bounds(), (1, 1));
    assert!(scaling(&only_min, false).unwrap().autoscaled().is_some());
    let only_max = service(&BASE.replace("  minReplicas: 1\n", ""));
    assert_eq!(scaling(&only_max, false).unwrap().bounds(), (1, 6));
    let fixed = service(
        "apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMService\nmetadata: {name: s}\nspec: {model: {name: m}, replicas: 3}\n",
    );
    assert_eq!(
        scaling(&fixed, false).unwrap(),
        Scaling::Fixed { replicas: 3 }
    );
}

#[test]
fn a_policy_moves_the_scaled_object_to_the_operator_with_the_same_trigger() {
    let plain = scaling(&service(BASE), false).unwrap();
    let with_policy = service(&format!(
        "{BASE}    policy:\n      name: predictive\n      params: {{season: 1d, capacity: \"3\"}}\n"
    ));
    let planned = scaling(&with_policy, false).unwrap();
    let (plain, planned) = (plain.autoscaled().unwrap(), planned.autoscaled().unwrap());
    assert_eq!(planned.owner, Owner::Operator);
    assert_eq!(planned.autoscaler_class(), "external");
    let (a, b) = (
        &plain.scaled_object.spec.triggers[0],
        &planned.scaled_object.spec.triggers[0],
    );
    for key in [
        "metricQuery",
        "targetValue",
        "scalerAddress",
        "operationOverTime",
    ] {
        assert_eq!(a.metadata[key], b.metadata[key], "{key}");
    }
    assert_eq!(b.metadata["policy"], "predictive");
    assert_eq!(b.metadata["season"], "1d");
    assert_eq!(b.metadata["capacity"], "3");
    let target = &planned.scaled_object.spec.scale_target_ref;
    assert_eq!(
        (target.kind.as_deref(), target.name.as_str()),
        (Some("Deployment"), "chat-predictor")
    );
    // The InferenceService keeps the metrics: KServe's sidecar follows them.
    assert_eq!(planned.isvc_autoscaling, plain.isvc_autoscaling);
    assert!(planned.isvc_autoscaling.policy.is_none());
}

#[test]
fn behavior_is_deployed_per_service_and_keeps_kserves_other_direction() {
    let svc = service(&format!(
        "{BASE}    behavior:\n      scaleUp:\n        stabilizationWindowSeconds: 30\n        selectPolicy: Min\n        policies:\n          - {{type: Pods, value: 1, periodSeconds: 60}}\n"
    ));
    let planned = scaling(&svc, false).unwrap();
    let a = planned.autoscaled().unwrap();
    assert_eq!(a.owner, Owner::Operator);
    let spec = keda_spec(&a.scaled_object).unwrap();
    let up = &spec.behavior.scale_up;
    assert_eq!(up.stabilization_window_seconds, 30);
    assert_eq!(up.select, SelectPolicy::Min);
    assert_eq!(up.policies.len(), 1);
    assert_eq!(
        (
            up.policies[0].kind,
            up.policies[0].value,
            up.policies[0].period_seconds
        ),
        (PolicyKind::Pods, 1, 60)
    );
    // Scale-down was not asked about: KServe's cluster window stays.
    assert_eq!(spec.behavior.scale_down.stabilization_window_seconds, 300);
    // No policy: the triggers are KServe's, without a policy key.
    assert!(
        !a.scaled_object.spec.triggers[0]
            .metadata
            .contains_key("policy")
    );
    assert_eq!(spec.triggers[0].metric_type, MetricType::AverageValue);
}

#[test]
fn pausing_writes_kedas_switch_on_either_owner() {
    for yaml in [
        BASE.to_string(),
        format!("{BASE}    policy: {{name: queue}}\n"),
    ] {
        let planned = scaling(&service(&yaml), true).unwrap();
        let so = &planned.autoscaled().unwrap().scaled_object;
        assert_eq!(
            so.metadata.annotations["autoscaling.keda.sh/paused"],
            "true"
        );
        assert!(keda_spec(so).unwrap().annotations.paused);
        let running = scaling(&service(&yaml), false).unwrap();
        assert!(
            !keda_spec(&running.autoscaled().unwrap().scaled_object)
                .unwrap()
                .annotations
                .paused
        );
    }
}

#[test]
fn a_bad_policy_parameter_names_its_field_and_the_fix() {
    let cases = [
        (
            "{name: predictive, params: {headrom: \"0.2\"}}",
            "spec.autoScaling.policy.params.headrom",
            "headroom",
        ),
        (
            "{name: queue, params: {perReplica: lots}}",
            "spec.autoScaling.policy.params.perReplica",
            "lots",
        ),
        (
            "{name: slo, params: {quantile: \"90\"}}",
            "spec.autoScaling.policy.params.quantile",
            "between 0 and 1",
        ),
        (
            "{name: cost, params: {window: soon}}",
            "spec.autoScaling.policy.params.window",
            "duration",
        ),
        (
            "{name: cost, params: {targetValue: \"3\"}}",
            "spec.autoScaling.policy.params.targetValue",
            "podmetric.target.value",
        ),
        (
            "{name: stable-panic, params: {activationThreshold: x}}",
            "spec.autoScaling.policy.params.activationThreshold",
            "decimal",
        ),
    ];
    for (policy, field, hint) in cases {
        let svc = service(&format!("{BASE}    policy: {policy}\n"));
        let e = scaling(&svc, false).unwrap_err();
        assert_eq!(e.field, field, "{policy}: {e}");
        assert!(e.to_string().contains(hint), "{policy}: {e}");
    }
    let no_target = service(&format!(
        "{}    policy: {{name: queue}}\n",
        BASE.replace(
            "target: {type: Value, value: \"2\"}",
            "target: {type: Value}"
        )
    ));
    let e = scaling(&no_target, false).unwrap_err();
    assert_eq!(
        e.field,
        "spec.autoScaling.metrics[0].podmetric.target.value"
    );
}

#[test]
fn a_policy_may_set_the_scalers_own_keys() {
    let svc = service(&format!(
        "{}    policy: {{name: passthrough, params: {{quantile: \"0.9\", window: 30s}}}}\n",
        BASE.replace(
            "vllm:num_requests_waiting",
            "vllm:time_to_first_token_seconds"
        )
        .replace("operationOverTime: avg", "operationOverTime: rate")
    ));
    let planned = scaling(&svc, false).unwrap();
    let t = &planned.autoscaled().unwrap().scaled_object.spec.triggers[0];
    assert_eq!(t.metadata["quantile"], "0.9");
    assert_eq!(t.metadata["window"], "30s");
    assert_eq!(t.metadata["policy"], "passthrough");
    assert_eq!(t.metadata["operationOverTime"], "rate");
}

#[test]
fn the_policy_docs_name_every_parameter_each_policy_reads() {
    let doc = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/policies.md"),
    )
    .unwrap();
    for policy in aim_policy::registered() {
        let row = doc
            .lines()
            .find(|l| l.starts_with(&format!("| `{}` |", policy.name())))
            .unwrap_or_else(|| panic!("docs/policies.md has no row for {}", policy.name()));
        for key in policy.parameters() {
            assert!(
                row.contains(&format!("`{key}`")),
                "docs/policies.md: {} row misses `{key}`",
                policy.name()
            );
        }
    }
    for key in aim_scaling::SCALER_TRIGGER_KEYS {
        assert!(
            doc.contains(&format!("`{key}`")),
            "docs/policies.md misses `{key}`"
        );
    }
}

const PROMETHEUS: &str = r#"
apiVersion: aim.eai.amd.com/v1alpha1
kind: AIMService
metadata: {name: chat}
spec:
  model: {name: qwen}
  minReplicas: 1
  maxReplicas: 5
  autoScaling:
    metrics:
      - type: External
        external:
          metric:
            backend: prometheus
            serverAddress: http://prometheus-operated.monitoring.svc:9090
            query: sum(vllm:num_requests_waiting{namespace="ml"})
          target: {type: Value, value: "5"}
"#;

#[test]
fn a_prometheus_metric_becomes_kserves_prometheus_trigger() {
    let svc = service(PROMETHEUS);
    let planned = scaling(&svc, false).unwrap();
    let a = planned.autoscaled().unwrap();
    // No extension beyond the backend: KServe builds the object.
    assert_eq!(a.owner, Owner::KServe);
    assert_eq!(a.autoscaler_class(), "keda");
    let metric = &a.isvc_autoscaling.metrics[0];
    let isvc = serde_json::to_value(metric).unwrap();
    assert_eq!(isvc["type"], "External");
    assert_eq!(isvc["external"]["metric"]["backend"], "prometheus");
    assert!(isvc.get("podmetric").is_none(), "{isvc}");
    let so = &a.scaled_object;
    assert_eq!(so.spec.triggers.len(), 1);
    let t = &so.spec.triggers[0];
    assert_eq!(t.type_, "prometheus");
    assert_eq!(
        t.metadata["serverAddress"],
        "http://prometheus-operated.monitoring.svc:9090"
    );
    assert_eq!(
        t.metadata["query"],
        "sum(vllm:num_requests_waiting{namespace=\"ml\"})"
    );
    assert_eq!(t.metadata["threshold"], "5");
    assert!(!t.metadata.contains_key("namespace"));
    // KServe writes no metric type: KEDA's default, per replica.
    assert_eq!(t.metric_type, None);
    let spec = keda_spec(so).unwrap();
    assert_eq!(spec.triggers[0].metric_type, MetricType::AverageValue);

    // A target given only as averageValue is carried as the threshold,
    // and the tenant namespace reaches KEDA.
    let svc = service(
        &PROMETHEUS
            .replace(
                "{type: Value, value: \"5\"}",
                "{type: AverageValue, averageValue: \"3\"}",
            )
            .replace("query: sum", "namespace: tenant-a\n            query: sum"),
    );
    let planned = scaling(&svc, false).unwrap();
    let t = &planned.autoscaled().unwrap().scaled_object.spec.triggers[0];
    assert_eq!(t.metadata["threshold"], "3");
    assert_eq!(t.metadata["namespace"], "tenant-a");
}

#[test]
fn a_prometheus_metric_keeps_its_trigger_under_an_operator_owned_behaviour() {
    let svc = service(&format!(
        "{PROMETHEUS}    behavior:\n      scaleDown: {{stabilizationWindowSeconds: 60}}\n"
    ));
    let planned = scaling(&svc, true).unwrap();
    let a = planned.autoscaled().unwrap();
    assert_eq!(a.owner, Owner::Operator);
    let so = &a.scaled_object;
    assert_eq!(so.metadata.annotations[aim_scaling::KEDA_PAUSED], "true");
    let t = &so.spec.triggers[0];
    assert_eq!(t.type_, "prometheus");
    assert_eq!(t.metadata["threshold"], "5");
    assert!(!t.metadata.contains_key("policy"));
    let behavior = so
        .spec
        .advanced
        .as_ref()
        .and_then(|a| a.horizontal_pod_autoscaler_config.as_ref())
        .and_then(|h| h.behavior.as_ref())
        .unwrap();
    assert_eq!(
        behavior
            .scale_down
            .as_ref()
            .unwrap()
            .stabilization_window_seconds,
        Some(60)
    );
}

#[test]
fn bad_prometheus_metrics_name_the_field_and_deploy_nothing() {
    let cases = [
        (
            PROMETHEUS.replace(
                "http://prometheus-operated.monitoring.svc:9090",
                "prometheus:9090",
            ),
            "spec.autoScaling.metrics[0].external.metric.serverAddress",
            "scheme",
        ),
        (
            PROMETHEUS.replace(
                "            serverAddress: http://prometheus-operated.monitoring.svc:9090\n",
                "",
            ),
            "spec.autoScaling.metrics[0].external.metric.serverAddress",
            "not a Prometheus URL",
        ),
        (
            PROMETHEUS.replace(
                "query: sum(vllm:num_requests_waiting{namespace=\"ml\"})",
                "query: \" \"",
            ),
            "spec.autoScaling.metrics[0].external.metric.query",
            "one series",
        ),
        (
            PROMETHEUS.replace("value: \"5\"", "value: \"0\""),
            "spec.autoScaling.metrics[0].external.target.value",
            "above 0",
        ),
        (
            PROMETHEUS.replace("type: External", "type: PodMetric"),
            "spec.autoScaling.metrics[0].external",
            "type: External",
        ),
        (
            PROMETHEUS.replace(
                "        external:\n",
                "        podmetric: {metric: {query: x}}\n        external:\n",
            ),
            "spec.autoScaling.metrics[0].podmetric",
            "one metric per entry",
        ),
        (
            format!("{PROMETHEUS}    policy: {{name: queue}}\n"),
            "spec.autoScaling.policy",
            "remove the policy",
        ),
    ];
    for (yaml, field, hint) in cases {
        let svc = service(&yaml);
        let e = scaling(&svc, false).unwrap_err();
        assert_eq!(e.field, field, "{e}");
        assert!(e.to_string().contains(hint), "{field}: {e}");
    }
    let missing = service(&PROMETHEUS.replace(
        "        external:\n          metric:\n            backend: prometheus\n            serverAddress: http://prometheus-operated.monitoring.svc:9090\n            query: sum(vllm:num_requests_waiting{namespace=\"ml\"})\n          target: {type: Value, value: \"5\"}\n",
        "",
    ));
    let e = scaling(&missing, false).unwrap_err();
    assert_eq!(e.field, "spec.autoScaling.metrics[0].external");
}

fn routed(svc: &AIMService, routed: bool) -> Result<Scaling, aim_scaling::ScalingError> {
    plan(&ServiceScaling {
        spec: &svc.spec,
        namespace: "ml",
        isvc_name: "chat",
        paused: false,
        kserve: &KServeAutoscaler::default(),
        routed,
    })
}

#[test]
fn scale_from_zero_wakes_on_the_gateways_queue_and_idles_after_its_cooldown() {
    let svc = service(&format!(
        "{}    cooldownPeriod: 45\n",
        BASE.replace("minReplicas: 1", "minReplicas: 0")
    ));
    let Scaling::Autoscaled(a) = routed(&svc, true).unwrap() else {
        panic!("not autoscaled")
    };
    // KServe's ScaledObject could not wake the service: the operator owns it.
    assert_eq!(a.owner, Owner::Operator);
    assert_eq!((a.min, a.max), (0, 6));
    let so = &a.scaled_object;
    assert_eq!(so.spec.min_replica_count, Some(0));
    assert_eq!(so.spec.cooldown_period, Some(45));
    assert_eq!(so.spec.triggers.len(), 2, "{:?}", so.spec.triggers);
    // The service's own metric keeps its query and target, and reads 0
    // while no pod reports (KEDA never scales to zero on a trigger error).
    let pod = &so.spec.triggers[0];
    assert_eq!(pod.type_, "external");
    assert_eq!(pod.metadata["targetValue"], "2");
    assert_eq!(pod.metadata["valueIfMissing"], "0");
    // The gateway's held requests for the route's backend wake it, pushed
    // by the scaler as soon as one is held.
    let wake = &so.spec.triggers[1];
    assert_eq!(wake.type_, "external-push");
    assert_eq!(
        wake.metadata["metricQuery"],
        "sum(aim_gateway_queue_depth{service=\"ml/chat-predictor:80\"})"
    );
    assert_eq!(wake.metadata["activationThreshold"], "0");
    assert_eq!(wake.metadata["targetValue"], "5");
    assert_eq!(
        wake.metadata["scalerAddress"],
        KServeAutoscaler::default().default_scaler_address
    );
    assert!(!wake.metadata.contains_key("valueIfMissing"));

    // Bounds alone are enough: the default metric plus the wake trigger,
    // and KEDA's own cooldown.
    let bare = service(
        "apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMService\nmetadata: {name: chat}\nspec: {model: {name: m}, minReplicas: 0}\n",
    );
    let Scaling::Autoscaled(a) = routed(&bare, true).unwrap() else {
        panic!("not autoscaled")
    };
    assert_eq!((a.min, a.max), (0, 1));
    assert_eq!(a.scaled_object.spec.cooldown_period, None);
    assert_eq!(a.scaled_object.spec.triggers.len(), 2);

    // A policy runs on the service's metric, never on the wake trigger.
    let with_policy = service(&format!(
        "{}    policy: {{name: queue, params: {{valueIfMissing: \"1\"}}}}\n",
        BASE.replace("minReplicas: 1", "minReplicas: 0")
    ));
    let Scaling::Autoscaled(a) = routed(&with_policy, true).unwrap() else {
        panic!("not autoscaled")
    };
    let triggers = &a.scaled_object.spec.triggers;
    assert_eq!(triggers[0].metadata["policy"], "queue");
    assert_eq!(triggers[0].metadata["valueIfMissing"], "1", "params win");
    assert!(!triggers[1].metadata.contains_key("policy"));
}

#[test]
fn scale_from_zero_without_a_gateway_or_a_stray_cooldown_names_the_field() {
    let zero = service(&BASE.replace("minReplicas: 1", "minReplicas: 0"));
    let e = routed(&zero, false).unwrap_err();
    assert_eq!(e.field, "spec.minReplicas");
    assert!(e.message.contains("spec.routing.enabled"), "{e}");
    // Manifests written for AIM Engine (minReplicas ≥ 1) are unaffected
    // by routing.
    assert_eq!(
        routed(&service(BASE), true).unwrap(),
        routed(&service(BASE), false).unwrap()
    );
    let stray = service(&format!("{BASE}    cooldownPeriod: 60\n"));
    let e = routed(&stray, true).unwrap_err();
    assert_eq!(e.field, "spec.autoScaling.cooldownPeriod");
    assert!(e.message.contains("minReplicas: 0"), "{e}");
    let negative = service(&format!(
        "{}    cooldownPeriod: -1\n",
        BASE.replace("minReplicas: 1", "minReplicas: 0")
    ));
    let e = routed(&negative, true).unwrap_err();
    assert_eq!(e.field, "spec.autoScaling.cooldownPeriod");
}
