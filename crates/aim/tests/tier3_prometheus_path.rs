//! The Prometheus path on the real bed: KEDA's own `prometheus` scaler
//! reading a real Prometheus that prometheus-operator configures from
//! ServiceMonitors and PodMonitors, scraping simulator pods at their
//! loopback addresses.
//!
//! * Seed 003's runbook, step by step: pods expose vLLM metrics, a
//!   ServiceMonitor feeds Prometheus, the runbook's ScaledObject ships
//!   paused, resume → 1 → N under load, pause → KEDA leaves the replicas
//!   alone, resume → back to the minimum.
//! * An AIMService on the Prometheus backend (aim extension): it scales
//!   through KServe's prometheus trigger, and its `MetricsReady` condition
//!   names what KEDA would only log — several series, a query that is not
//!   PromQL (nothing deployed), an unreachable server, no series with a
//!   PodMonitor that selects nothing.
//!
//! KEDA and the operator run as local processes here and cannot resolve
//! cluster DNS names, so every `serverAddress` is the bed's Prometheus URL
//! in place of `prometheus-operated.monitoring.svc:9090`; that is the one
//! change to the runbook's objects, besides its namespace.

mod common;

use std::time::{Duration, Instant};

use aim_devcluster::PrometheusOptions;
use aim_testkit::apply_yaml;
use common::bed::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::{Value, json};

/// The runbook's ScaledObject asks for `cooldownPeriod: 60` and leaves the
/// HPA's scale-down window at its 300 s default.
const SIM_ARGS: &[&str] = &["--max-num-seqs=1"];

async fn prometheus() -> (Client, String) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let info =
        aim_testkit::cluster_with_prometheus(PrometheusOptions::new(env!("CARGO_BIN_EXE_aim")))
            .await;
    let url = info
        .prometheus_url
        .clone()
        .expect("the cluster runs Prometheus");
    (info.client().await.unwrap(), url)
}

/// An instant query, as KEDA sends it.
async fn instant(url: &str, query: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{url}/api/v1/query"))
        .query(&[("query", query)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn series(url: &str, query: &str) -> usize {
    instant(url, query).await["data"]["result"]
        .as_array()
        .map_or(0, Vec::len)
}

async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn so_condition(so: &Value, ty: &str) -> Option<String> {
    so.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == ty)
        .and_then(|c| c["status"].as_str())
        .map(str::to_string)
}

async fn replicas(deployments: &Api<Deployment>, name: &str) -> i32 {
    deployments
        .get(name)
        .await
        .unwrap()
        .spec
        .and_then(|s| s.replicas)
        .unwrap_or(0)
}

const RUNBOOK_WORKLOAD: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: vllm-sim}
spec:
  replicas: 1
  selector: {matchLabels: {app: vllm-sim}}
  template:
    metadata:
      labels: {app: vllm-sim, aim.eai.amd.com/simulate: "true"}
    spec:
      containers:
      - name: vllm-sim
        image: ghcr.io/llm-d/llm-d-inference-sim:v0.5.0
        ports: [{name: http, containerPort: 8000}]
---
apiVersion: v1
kind: Service
metadata: {name: vllm-sim, labels: {app: vllm-sim}}
spec:
  selector: {app: vllm-sim}
  ports: [{name: http, port: 8000, targetPort: http}]
"#;

const RUNBOOK_SERVICE_MONITOR: &str = r#"apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  name: vllm-sim
spec:
  selector:
    matchLabels:
      app: vllm-sim
  endpoints:
    - port: http
      path: /metrics
      interval: 15s
"#;

/// The runbook's ScaledObject (`examples/seeds/keda-vllm-sim-scaledobject.yaml`)
/// in `ns`, pointed at the bed's Prometheus, shipped paused as the runbook
/// commits it.
fn runbook_scaled_object(ns: &str, prometheus: &str) -> String {
    let text = std::fs::read_to_string(aim_testkit::repo_path(
        "examples/seeds/keda-vllm-sim-scaledobject.yaml",
    ))
    .unwrap();
    let text = text
        .replace("namespace: inference", &format!("namespace: {ns}"))
        .replace(
            "namespace=\\\"inference\\\"",
            &format!("namespace=\\\"{ns}\\\""),
        )
        .replace("namespace=\"inference\"", &format!("namespace=\"{ns}\""))
        .replace("http://prometheus-operated.monitoring.svc:9090", prometheus)
        .replace(
            "  name: vllm-sim\n",
            "  name: vllm-sim\n  annotations:\n    autoscaling.keda.sh/paused: \"true\"\n",
        );
    assert!(text.contains(prometheus) && text.contains(ns), "{text}");
    text
}

async fn set_paused(so: &Api<kube::api::DynamicObject>, paused: bool) {
    let value = if paused { json!("true") } else { Value::Null };
    so.patch(
        "vllm-sim",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"autoscaling.keda.sh/paused": value}}})),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn seed_003_runbook_scales_a_simulator_deployment_through_prometheus() {
    let (client, url) = prometheus().await;
    let ns = aim_testkit::namespace(&client, "inference").await;
    let runner = tokio::spawn(aim_pods::runner::run(
        client.clone(),
        aim_pods::runner::RunnerConfig {
            cold_start: Duration::from_secs(2),
            aim_binary: env!("CARGO_BIN_EXE_aim").into(),
            sim_args: SIM_ARGS.iter().map(|a| a.to_string()).collect(),
            exporter_override: None,
            namespace: Some(ns.clone()),
        },
    ));
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns);
    let scaled_objects = dynamic(&client, &ns, "keda.sh", "v1alpha1", "ScaledObject");

    // "Sim backends must be running": one replica, Ready.
    apply_yaml(&client, &ns, RUNBOOK_WORKLOAD).await.unwrap();
    let mut ip = String::new();
    wait_until("the simulator pod Ready", WAIT, || {
        let pods = pods.clone();
        let ip = &mut ip;
        async move {
            let list = pods
                .list(&ListParams::default().labels("app=vllm-sim"))
                .await
                .unwrap();
            match list.items.iter().find(|p| is_ready(p)) {
                Some(p) => {
                    *ip = p.status.as_ref().unwrap().pod_ip.clone().unwrap();
                    true
                }
                None => false,
            }
        }
    })
    .await;
    // The runbook's check: `curl -s localhost:8000/metrics | grep -E
    // 'num_requests_waiting|cache_usage'`, V1's names.
    let exposition = reqwest::get(format!("http://{ip}:8000/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(exposition.contains("vllm:num_requests_waiting"));
    assert!(exposition.contains("vllm:kv_cache_usage_perc"));

    // "Land sim metrics in cluster Prometheus": the ServiceMonitor, then
    // the series in Prometheus.
    apply_yaml(&client, &ns, RUNBOOK_SERVICE_MONITOR)
        .await
        .unwrap();
    let waiting = format!("vllm:num_requests_waiting{{namespace=\"{ns}\"}}");
    wait_until("Prometheus to scrape the simulator", WAIT, || {
        let (url, waiting) = (url.clone(), waiting.clone());
        async move { series(&url, &waiting).await == 1 }
    })
    .await;

    // The ScaledObject ships paused: KEDA confirms and builds no HPA.
    apply_yaml(&client, &ns, &runbook_scaled_object(&ns, &url))
        .await
        .unwrap();
    wait_until("KEDA to report the ScaledObject paused", WAIT, || {
        let so = scaled_objects.clone();
        async move {
            let so = so.get("vllm-sim").await.unwrap();
            so_condition(&serde_json::to_value(&so).unwrap(), "Paused").as_deref() == Some("True")
        }
    })
    .await;
    assert!(
        hpas.get_opt("keda-hpa-vllm-sim").await.unwrap().is_none(),
        "a paused ScaledObject has no HPA"
    );

    // `make keda-demo-up`: resume. READY=True, the HPA reads the query.
    set_paused(&scaled_objects, false).await;
    wait_until("the HPA reading Prometheus", WAIT, || {
        let (so, hpas) = (scaled_objects.clone(), hpas.clone());
        async move {
            let so = serde_json::to_value(so.get("vllm-sim").await.unwrap()).unwrap();
            let reads = hpas
                .get_opt("keda-hpa-vllm-sim")
                .await
                .unwrap()
                .and_then(|h| h.status?.current_metrics)
                .is_some_and(|m| !m.is_empty());
            so_condition(&so, "Ready").as_deref() == Some("True") && reads
        }
    })
    .await;
    assert_eq!(replicas(&deployments, "vllm-sim").await, 1);

    // Drive queue depth: 12 clients at simulators that run one sequence
    // each; waiting = 12 - replicas, threshold 5 per replica.
    let load = start_load_on(
        client.clone(),
        ns.clone(),
        "app=vllm-sim".into(),
        Load::Closed {
            clients: 12,
            prompt: "Tell me a story.".into(),
            max_tokens: 60,
        },
    );
    wait_until("1 → N on queue depth", WAIT, || {
        let d = deployments.clone();
        async move { replicas(&d, "vllm-sim").await >= 2 }
    })
    .await;
    // `kubectl describe scaledobject`: ACTIVE flips on load.
    let so = serde_json::to_value(scaled_objects.get("vllm-sim").await.unwrap()).unwrap();
    assert_eq!(so_condition(&so, "Active").as_deref(), Some("True"), "{so}");

    // `make keda-demo-down` at N: KEDA removes its HPA and leaves the
    // replica count alone, load or no load.
    set_paused(&scaled_objects, true).await;
    wait_until("KEDA to pause and drop its HPA", WAIT, || {
        let (so, hpas) = (scaled_objects.clone(), hpas.clone());
        async move {
            let so = serde_json::to_value(so.get("vllm-sim").await.unwrap()).unwrap();
            so_condition(&so, "Paused").as_deref() == Some("True")
                && hpas.get_opt("keda-hpa-vllm-sim").await.unwrap().is_none()
        }
    })
    .await;
    let held = replicas(&deployments, "vllm-sim").await;
    stop(load);
    // Longer than the cooldown (60 s) and several polling intervals: an
    // unpaused object would have started scaling down.
    tokio::time::sleep(Duration::from_secs(75)).await;
    assert_eq!(
        replicas(&deployments, "vllm-sim").await,
        held,
        "paused, KEDA must leave the replicas alone"
    );

    // Resume with no load: back to the minimum once the HPA's default
    // scale-down window (300 s) has passed.
    set_paused(&scaled_objects, false).await;
    wait_until(
        "back to min after resuming",
        Duration::from_secs(480),
        || {
            let d = deployments.clone();
            async move { replicas(&d, "vllm-sim").await == 1 }
        },
    )
    .await;

    // The runbook's cleanup.
    scaled_objects
        .delete("vllm-sim", &Default::default())
        .await
        .unwrap();
    dynamic(
        &client,
        &ns,
        "monitoring.coreos.com",
        "v1",
        "ServiceMonitor",
    )
    .delete("vllm-sim", &Default::default())
    .await
    .unwrap();
    runner.abort();
    aim_testkit::delete_namespace(&client, &ns).await;
}

/// The AIMService (`SERVICE`) on the Prometheus backend.
fn prometheus_service(url: &str, query: &str) -> String {
    format!(
        r#"apiVersion: aim.eai.amd.com/v1alpha1
kind: AIMService
metadata: {{name: {SERVICE}}}
spec:
  model: {{name: qwen-qwen3-32b}}
  template: {{name: qwen3-32b-latency}}
  minReplicas: 1
  maxReplicas: 3
  autoScaling:
    metrics:
    - type: External
      external:
        metric:
          backend: prometheus
          serverAddress: "{url}"
          query: '{query}'
        target: {{type: Value, value: "4"}}
"#
    )
}

/// The predictor pods' vLLM metrics, as a user of the Prometheus backend
/// would scrape them.
fn pod_monitor(isvc_selector: &str) -> String {
    format!(
        r#"apiVersion: monitoring.coreos.com/v1
kind: PodMonitor
metadata: {{name: predictors}}
spec:
  selector:
    matchExpressions:
    - {{key: serving.kserve.io/inferenceservice, operator: {isvc_selector}}}
  podMetricsEndpoints:
  - targetPort: 8000
    path: /metrics
    interval: 5s
"#
    )
}

async fn metrics_condition(bed: &Bed) -> Option<(String, String, String)> {
    let svc = bed.services.get(SERVICE).await.ok()?;
    let c = svc
        .status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == "MetricsReady")?;
    Some((c.status, c.reason, c.message))
}

async fn await_metrics(bed: &Bed, reason: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let seen = metrics_condition(bed).await;
        if let Some((_, r, m)) = &seen
            && r == reason
        {
            return m.clone();
        }
        assert!(
            Instant::now() < deadline,
            "MetricsReady never became {reason}; last {seen:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn set_service(bed: &Bed, yaml: &str) {
    apply_yaml(&bed.admin, &bed.ns, yaml).await.unwrap();
}

/// Only this test's PodMonitor has this name, so `job` (prometheus-operator
/// writes `<namespace>/<podmonitor>`) picks this test's pods alone.
const MONITOR: &str = "predictors-prom";

#[tokio::test(flavor = "multi_thread")]
async fn an_aimservice_scales_on_prometheus_and_its_condition_names_what_keda_would_hide() {
    let (_, url) = prometheus().await;
    let selector = format!("job=~\".*/{MONITOR}\"");
    let summed = format!("sum(vllm:num_requests_waiting{{{selector}}})");
    let bed = Bed::start_with(BedConfig {
        service_yaml: prometheus_service(&url, &summed),
        idle: false,
        prometheus: true,
        sim_args: SIM_ARGS.iter().map(|a| a.to_string()).collect(),
        ..BedConfig::seed("prom-backend")
    })
    .await;
    // KServe's trigger, as for seed 002's Prometheus example.
    let so = bed.scaled_object().await;
    let trigger = &so.data["spec"]["triggers"][0]["metadata"];
    assert_eq!(trigger["serverAddress"], url.as_str());
    assert_eq!(trigger["query"], summed.as_str());
    assert_eq!(trigger["threshold"], "4");
    apply_yaml(
        &bed.admin,
        &bed.ns,
        &pod_monitor("Exists").replace("name: predictors", &format!("name: {MONITOR}")),
    )
    .await
    .unwrap();

    // One series once Prometheus scrapes the pod.
    let m = await_metrics(&bed, "QueryReturnsOneSeries", WAIT).await;
    assert!(m.contains(&summed), "{m}");

    // 1 → N on waiting requests (12 clients, one sequence per simulator,
    // 4 waiting per replica).
    let load = bed.drive(Load::Closed {
        clients: 12,
        prompt: "Tell me a story.".into(),
        max_tokens: 60,
    });
    bed.await_scale(2, "1 → N through KEDA's prometheus scaler")
        .await;

    // Seed 002's bare query, with two pods: KEDA's scaler refuses several
    // series; the condition names the field and the sum that fixes it.
    let bare = format!("vllm:num_requests_waiting{{{selector}}}");
    set_service(&bed, &prometheus_service(&url, &bare)).await;
    let m = await_metrics(&bed, "QueryReturnsSeveralSeries", Duration::from_secs(90)).await;
    assert!(
        m.contains("spec.autoScaling.metrics[0].external.metric.query"),
        "{m}"
    );
    assert!(m.contains(&format!("sum({bare})")), "{m}");
    stop(load);

    // Not PromQL: Prometheus refuses it, and nothing of the change is
    // deployed (KEDA keeps the last good query).
    let broken = format!("sum({bare}");
    set_service(&bed, &prometheus_service(&url, &broken)).await;
    let m = await_metrics(&bed, "InvalidQuery", Duration::from_secs(90)).await;
    assert!(m.contains("parse error"), "{m}");
    let so = bed.scaled_object().await;
    assert_eq!(
        so.data["spec"]["triggers"][0]["metadata"]["query"],
        bare.as_str()
    );
    let svc = bed.services.get(SERVICE).await.unwrap();
    assert_eq!(
        svc.status.unwrap().status,
        Some(aim_api::service::ServicePhase::Failed)
    );

    // Unreachable: a port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    set_service(
        &bed,
        &prometheus_service(&format!("http://{closed}"), &summed),
    )
    .await;
    let m = await_metrics(&bed, "PrometheusUnreachable", Duration::from_secs(90)).await;
    assert!(m.contains(&closed.to_string()), "{m}");

    // No series, from a PodMonitor that selects nothing: named, once the
    // first-metrics grace has passed (the service has been Ready for
    // minutes by now).
    apply_yaml(
        &bed.admin,
        &bed.ns,
        &pod_monitor("DoesNotExist").replace("name: predictors", "name: selects-nothing"),
    )
    .await
    .unwrap();
    let nothing = "sum(vllm:num_requests_waiting{job=~\".*/selects-nothing\"})";
    set_service(&bed, &prometheus_service(&url, nothing)).await;
    let expected = format!("PodMonitor {}/selects-nothing", bed.ns);
    let deadline = Instant::now() + WAIT;
    loop {
        let m = await_metrics(&bed, "QueryReturnsNoSeries", WAIT).await;
        // The operator's config reaches Prometheus through the operator
        // and a reload: the pool shows up a few seconds after the apply.
        if m.contains(&expected) {
            break;
        }
        assert!(Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    bed.finish().await;
}
