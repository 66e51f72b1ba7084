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
//! The seeds' objects keep their cluster addresses: KEDA runs as a local
//! process with `HTTP_PROXY` at the bed's Service proxy, which resolves
//! `prometheus-operated.monitoring.svc:9090` (and seed 002's
//! `prometheus.istio-system.svc.cluster.local:9090`, an ExternalName
//! Service here) from Services and EndpointSlices, as cluster DNS and
//! kube-proxy would. The runbook's objects change only in their namespace.
//! The AIMServices' `serverAddress` (aim's extension) is the bed's
//! Prometheus URL, since the operator under test runs in this process.

mod common;

use std::time::{Duration, Instant};

use aim_devcluster::PrometheusOptions;
use aim_scaler::proto::externalscaler::external_scaler_client::ExternalScalerClient;
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

/// The runbook's Prometheus, by its in-cluster name.
const RUNBOOK_PROMETHEUS: &str = "http://prometheus-operated.monitoring.svc:9090";

/// The runbook's ScaledObject (`examples/seeds/keda-vllm-sim-scaledobject.yaml`)
/// in `ns`, its server address unchanged, shipped paused as the runbook
/// commits it.
fn runbook_scaled_object(ns: &str) -> String {
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
        .replace(
            "metadata:\n  name: vllm-sim\n",
            "metadata:\n  name: vllm-sim\n  annotations:\n    autoscaling.keda.sh/paused: \"true\"\n",
        );
    assert!(
        text.contains(&format!("serverAddress: {RUNBOOK_PROMETHEUS}"))
            && text.contains(ns)
            && text.contains("paused: \"true\""),
        "{text}"
    );
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
    // Its pods are vLLM pods the server scrapes: seed 002's bare query must
    // not meet them, so this test holds the bed's turn like the others.
    let _turn = take_turn().await;
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
    let deadline = Instant::now() + WAIT;
    let ip = loop {
        let list = pods
            .list(&ListParams::default().labels("app=vllm-sim"))
            .await
            .unwrap();
        if let Some(ip) = list
            .items
            .iter()
            .find(|p| is_ready(p))
            .and_then(|p| p.status.as_ref()?.pod_ip.clone())
        {
            break ip;
        }
        assert!(
            Instant::now() < deadline,
            "the simulator pod never got Ready"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
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
    apply_yaml(&client, &ns, &runbook_scaled_object(&ns))
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
    // 11 waiting at one replica: ceil(11 / 4) = 3, the maximum.
    bed.await_scale(3, "1 → N through KEDA's prometheus scaler")
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

/// The alerts Prometheus reports in `state` ("pending" or "firing").
async fn alerts_in(url: &str, state: &str, ns: &str) -> Vec<String> {
    let answer: Value = reqwest::get(format!("{url}/api/v1/alerts"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["data"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["state"] == state)
        // Cluster-wide alerts carry no namespace.
        .filter(|a| a["labels"]["namespace"].as_str().is_none_or(|n| n == ns))
        .filter_map(|a| a["labels"]["alertname"].as_str().map(str::to_string))
        .collect()
}

async fn await_alert(url: &str, ns: &str, alert: &str, firing: bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = alerts_in(url, "firing", ns).await;
        if now.iter().any(|a| a == alert) == firing {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{alert} never {}; firing: {now:?}",
            if firing { "fired" } else { "resolved" }
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The chart's alert rules and dashboard on the live bed: the chart's
/// ServiceMonitors scrape the operator and the scaler (at the chart pods'
/// addresses), its PodMonitor the predictors, its PrometheusRule is what
/// Prometheus evaluates. "At max replicas with a queue" and "the scaler
/// receives nothing" fire for real and resolve; every dashboard query
/// returns data.
#[tokio::test(flavor = "multi_thread")]
async fn the_charts_alerts_fire_and_resolve_and_every_dashboard_query_has_data() {
    let (_, url) = prometheus().await;
    // A service on the Prometheus backend: no sidecar pushes to the scaler.
    let query = "sum(vllm:num_requests_waiting{namespace=\"$NAMESPACE\"})";
    let bed = Bed::start_with(BedConfig {
        service_yaml: prometheus_service(&url, query).replace("maxReplicas: 3", "maxReplicas: 2"),
        idle: false,
        prometheus: true,
        admin_at_chart_pods: true,
        sim_args: SIM_ARGS.iter().map(|a| a.to_string()).collect(),
        ..BedConfig::seed("alerts")
    })
    .await;
    let ns = bed.ns.clone();

    // Unpaused autoscaled services, and nothing ingested.
    await_alert(&url, &ns, "AIMScalerReceivesNothing", true).await;

    // Twelve clients at two single-sequence simulators: at max, 10 waiting.
    let load = bed.drive(Load::Closed {
        clients: 12,
        prompt: "Tell me a story.".into(),
        max_tokens: 60,
    });
    bed.await_scale(2, "to max on waiting requests").await;
    await_alert(&url, &ns, "AIMAtMaxReplicasWithQueue", true).await;

    // Every query of the dashboard, with its variables set to this
    // service, returns at least one series while the load runs.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(aim_testkit::repo_path("deploy/chart/files/dashboard.json"))
            .unwrap(),
    )
    .unwrap();
    let mut empty = Vec::new();
    let mut asked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let Some(expr) = target["expr"].as_str() else {
                continue;
            };
            let expr = expr
                .replace("$namespace", &ns)
                .replace("$service", SERVICE)
                .replace("$isvc", ".+");
            asked += 1;
            if series(&url, &expr).await == 0 {
                empty.push(format!("{}: {expr}", panel["title"]));
            }
        }
    }
    assert!(asked >= 10, "the dashboard has {asked} queries");
    assert!(
        empty.is_empty(),
        "dashboard queries without data:\n{}",
        empty.join("\n")
    );

    // No more queue: resolved.
    stop(load);
    await_alert(&url, &ns, "AIMAtMaxReplicasWithQueue", false).await;

    // The service moves to the OpenTelemetry path (aim's default metric):
    // sidecars push to the scaler, and the scaler alert resolves.
    apply_yaml(
        &bed.admin,
        &bed.ns,
        &seed_service_yaml().replace("maxReplicas: 4", "maxReplicas: 2"),
    )
    .await
    .unwrap();
    await_alert(&url, &ns, "AIMScalerReceivesNothing", false).await;
    bed.finish().await;
}

/// The metric KEDA's HPA currently reads (its first metric's value), if any.
fn hpa_reads(h: &HorizontalPodAutoscaler) -> Option<f64> {
    let m = h.status.as_ref()?.current_metrics.as_ref()?.first()?;
    let q = m.external.as_ref()?.current.average_value.as_ref()?;
    // Quantities as the HPA writes them: "1500m", "2", "2500u".
    let text = q.0.as_str();
    let (number, scale) = match text.char_indices().last() {
        Some((i, 'm')) => (&text[..i], 1e-3),
        Some((i, 'u')) => (&text[..i], 1e-6),
        Some((i, 'k')) => (&text[..i], 1e3),
        _ => (text, 1.0),
    };
    number.parse::<f64>().ok().map(|v| v * scale)
}

/// When each hop first saw the load step, per path.
#[derive(Default)]
struct Hops {
    pod: Option<Duration>,
    source: Option<Duration>,
    hpa_reads: Option<Duration>,
    decided: Option<Duration>,
    created: Option<Duration>,
}

/// Seed 002's two InferenceServices, as written, through real KServe (its
/// own huggingface runtime), KEDA and the HPA, unchanged: Istio's
/// Prometheus address is an ExternalName Service for the bed's, and the bare
/// query reads this test's pods alone (no other vLLM pod is scraped while it
/// holds the bed's turn). The same load step reaches
/// both at once, and each hop's first sight of it is timed: the pod's own
/// gauge, the metric's source (aim's scaler for OpenTelemetry, Prometheus
/// for the other), the HPA reading it, the HPA deciding, the pod created.
/// Then the Prometheus example's bare query meets its second pod, and
/// KEDA's scaler refuses the two series, as it would in any cluster.
#[tokio::test(flavor = "multi_thread")]
async fn seed_002_inferenceservices_scale_and_each_hop_of_both_paths_is_timed() {
    let (client, url) = prometheus().await;
    let info =
        aim_testkit::cluster_with_prometheus(PrometheusOptions::new(env!("CARGO_BIN_EXE_aim")))
            .await;
    // The scaler at the address KServe's config names for OpenTelemetry
    // triggers and sidecars: the bed's turn.
    let turn = take_turn().await;
    let mut args = aim_scaler::ScalerArgs::defaults();
    args.listen = vec![info.scaler_address];
    args.admin_listen = "127.0.0.1:0".parse().unwrap();
    let scaler = start_scaler(&args).await;

    let seed = |file: &str| {
        std::fs::read_to_string(aim_testkit::repo_path(&format!("examples/seeds/{file}"))).unwrap()
    };
    // Seed 002 names Istio's Prometheus. Here that name is an ExternalName
    // Service for the bed's Prometheus, so the seed's address stays as
    // written and KEDA reaches it through the bed's Service proxy.
    apply_yaml(
        &client,
        "istio-system",
        r#"apiVersion: v1
kind: Namespace
metadata: {name: istio-system}
---
apiVersion: v1
kind: Service
metadata: {name: prometheus, namespace: istio-system}
spec:
  type: ExternalName
  externalName: prometheus-operated.monitoring.svc.cluster.local
  ports:
  - {name: web, port: 9090}
"#,
    )
    .await
    .unwrap();
    // The seed's bare query reads every vLLM pod the server scrapes. The
    // other tests of this bed delete their monitors when they pass; while
    // this test holds the turn no other vLLM pod may be scraped, or the
    // bare query would meet them before its own second pod.
    wait_until(
        "no vLLM pod scraped before seed 002's services start",
        Duration::from_secs(120),
        || {
            let url = url.clone();
            async move { series(&url, "vllm:num_requests_running").await == 0 }
        },
    )
    .await;
    let mut paths = Vec::new();
    for (label, file) in [
        ("OpenTelemetry", "kserve-keda-opentelemetry.yaml"),
        ("Prometheus", "kserve-keda-prometheus.yaml"),
    ] {
        let ns =
            aim_testkit::namespace(&client, &format!("seed002-{}", &label[..4].to_lowercase()))
                .await;
        // The seed's InferenceServices, unchanged.
        let yaml = seed(file);
        if label == "Prometheus" {
            assert!(
                yaml.contains(
                    "serverAddress: \"http://prometheus.istio-system.svc.cluster.local:9090\""
                ) && yaml.contains("query: vllm:num_requests_running\n"),
                "{yaml}"
            );
        }
        let runner = tokio::spawn(aim_pods::runner::run(
            client.clone(),
            aim_pods::runner::RunnerConfig {
                cold_start: Duration::from_secs(2),
                aim_binary: env!("CARGO_BIN_EXE_aim").into(),
                sim_args: Vec::new(),
                exporter_override: None,
                namespace: Some(ns.clone()),
            },
        ));
        apply_yaml(&client, &ns, &yaml).await.unwrap();
        paths.push((label, ns, runner));
    }
    // Prometheus scrapes the huggingface pods at the runtime's port (8080,
    // /metrics), every 15 s as in seed 003's runbook. KServe's runtime
    // declares no container port, and a PodMonitor's `port` or
    // `targetPort` only keeps declared ones, so the address is written by
    // relabelling, as a user of that runtime has to.
    let prom_ns = paths[1].1.clone();
    apply_yaml(
        &client,
        &prom_ns,
        r#"apiVersion: monitoring.coreos.com/v1
kind: PodMonitor
metadata: {name: huggingface}
spec:
  selector:
    matchLabels: {serving.kserve.io/inferenceservice: huggingface-fbopt}
  podMetricsEndpoints:
  - path: /metrics
    interval: 15s
    relabelings:
    - sourceLabels: [__meta_kubernetes_pod_ip]
      targetLabel: __address__
      replacement: "$1:8080"
"#,
    )
    .await
    .unwrap();

    let name = "huggingface-fbopt-predictor";
    let hpa_name = format!("keda-hpa-{name}");
    // Both idle loops up: one Ready pod, the HPA reading a metric.
    for (label, ns, _) in &paths {
        let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), ns);
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        let scaled_objects = dynamic(&client, ns, "keda.sh", "v1alpha1", "ScaledObject");
        wait_until(
            &format!("{label}: one Ready pod, the HPA reading"),
            WAIT,
            || {
                let (hpas, pods, hpa_name) = (hpas.clone(), pods.clone(), hpa_name.clone());
                let scaled_objects = scaled_objects.clone();
                async move {
                    // KEDA keeps one gRPC connection per scaler address: a
                    // previous test's scaler at this address left it in
                    // reconnect backoff, and an HPA built meanwhile gets
                    // KEDA's CPU fallback ("got empty metric spec"), never
                    // rebuilt. KServe recreates a deleted ScaledObject; by
                    // then the connection is back.
                    if let Some(h) = hpas.get_opt(&hpa_name).await.unwrap()
                        && h.spec
                            .as_ref()
                            .and_then(|s| s.metrics.as_ref())
                            .is_some_and(|m| m.iter().any(|m| m.type_ == "Resource"))
                    {
                        let _ = scaled_objects.delete(name, &Default::default()).await;
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        return false;
                    }
                    let ready = predictor_pods(&pods, "huggingface-fbopt")
                        .await
                        .iter()
                        .filter(|p| is_ready(p))
                        .count();
                    let reads = hpas
                        .get_opt(&hpa_name)
                        .await
                        .unwrap()
                        .is_some_and(|h| hpa_reads(&h).is_some());
                    ready == 1 && reads
                }
            },
        )
        .await;
    }

    // The step: ten long completions in flight at each service.
    let step = Instant::now();
    let mut loads = Vec::new();
    for (_, ns, _) in &paths {
        loads.push(start_load_at(
            client.clone(),
            ns.clone(),
            "serving.kserve.io/inferenceservice=huggingface-fbopt".into(),
            8080,
            Load::Closed {
                clients: 10,
                prompt: "Tell me a story.".into(),
                max_tokens: 400,
            },
        ));
    }
    let mut grpc = ExternalScalerClient::connect(format!("http://{}", info.scaler_address))
        .await
        .unwrap();
    let mut hops = [Hops::default(), Hops::default()];
    loop {
        let at = step.elapsed();
        for (i, (_, ns, _)) in paths.iter().enumerate() {
            let h = &mut hops[i];
            let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
            let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), ns);
            let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
            if h.pod.is_none() {
                let ips: Vec<String> = predictor_pods(&pods, "huggingface-fbopt")
                    .await
                    .into_iter()
                    .filter_map(|p| p.status?.pod_ip)
                    .collect();
                for ip in ips {
                    let text = reqwest::get(format!("http://{ip}:8080/metrics")).await.ok();
                    let text = match text {
                        Some(r) => r.text().await.unwrap_or_default(),
                        None => String::new(),
                    };
                    let running = text
                        .lines()
                        .filter(|l| l.starts_with("vllm:num_requests_running"))
                        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                        .sum::<f64>();
                    if running >= 1.0 {
                        h.pod = Some(at);
                    }
                }
            }
            if h.source.is_none() {
                let seen = if i == 0 {
                    let so = dynamic(&client, ns, "keda.sh", "v1alpha1", "ScaledObject")
                        .get(name)
                        .await
                        .unwrap();
                    scaler_value(&mut grpc, &so).await.unwrap_or(0.0)
                } else {
                    let answer = instant(
                        &url,
                        &format!("sum(vllm:num_requests_running{{namespace=\"{ns}\"}})"),
                    )
                    .await;
                    answer["data"]["result"][0]["value"][1]
                        .as_str()
                        .and_then(|v| v.parse::<f64>().ok())
                        .unwrap_or(0.0)
                };
                if seen >= 1.0 {
                    h.source = Some(at);
                }
            }
            if let Some(hpa) = hpas.get_opt(&hpa_name).await.unwrap() {
                if h.hpa_reads.is_none() && hpa_reads(&hpa).is_some_and(|v| v >= 1.0) {
                    h.hpa_reads = Some(at);
                }
                if h.decided.is_none() && desired(&hpa) > 1 {
                    h.decided = Some(at);
                }
            }
            if h.created.is_none() && replicas(&deployments, name).await > 1 {
                h.created = Some(at);
            }
        }
        // The HPA scales the Deployment before it writes its own status, so
        // a poll can see the second pod before the decision: wait for both.
        if hops
            .iter()
            .all(|h| h.created.is_some() && h.decided.is_some())
        {
            break;
        }
        assert!(
            step.elapsed() < WAIT,
            "not both scaled (pod, source, HPA reads, decided): OpenTelemetry {:?}, Prometheus {:?}",
            (
                hops[0].pod,
                hops[0].source,
                hops[0].hpa_reads,
                hops[0].decided
            ),
            (
                hops[1].pod,
                hops[1].source,
                hops[1].hpa_reads,
                hops[1].decided
            ),
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let cell =
        |d: Option<Duration>| d.map_or("-".to_string(), |d| format!("{:.1} s", d.as_secs_f64()));
    println!("\nseed 002, load step (10 in flight) → first sight, per hop:");
    println!(
        "| hop | OpenTelemetry (sidecar → aim scaler → KEDA external) | Prometheus (scrape 15 s → KEDA prometheus) |"
    );
    println!("| --- | --- | --- |");
    for (hop, pick) in [
        (
            "the pod's own gauge ≥ 1",
            (|h: &Hops| h.pod) as fn(&Hops) -> Option<Duration>,
        ),
        (
            "the metric's source ≥ 1 (scaler / Prometheus)",
            |h: &Hops| h.source,
        ),
        ("the HPA reads ≥ 1", |h: &Hops| h.hpa_reads),
        ("the HPA decides > 1", |h: &Hops| h.decided),
        ("the second pod created", |h: &Hops| h.created),
    ] {
        println!(
            "| {hop} | {} | {} |",
            cell(pick(&hops[0])),
            cell(pick(&hops[1]))
        );
    }
    for h in &hops {
        assert!(h.decided.is_some() && h.created.is_some());
    }

    // Seed 002's bare query, two pods: KEDA's scaler refuses the two series.
    // The HPA only learns that its metric failed, and the ScaledObject that
    // a trigger errs; KEDA's operator log alone names the cause.
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &prom_ns);
    let scaled_objects = dynamic(&client, &prom_ns, "keda.sh", "v1alpha1", "ScaledObject");
    let keda_log = info
        .kubeconfig
        .parent()
        .expect("the cluster's directory")
        .join("logs/keda-operator.log");
    let deadline = Instant::now() + WAIT;
    loop {
        let hpa_failing = hpas
            .get(&hpa_name)
            .await
            .unwrap()
            .status
            .and_then(|s| s.conditions)
            .is_some_and(|c| {
                c.iter().any(|c| {
                    c.type_ == "ScalingActive"
                        && c.status == "False"
                        && c.reason.as_deref() == Some("FailedGetExternalMetric")
                })
            });
        let so = serde_json::to_value(scaled_objects.get(name).await.unwrap()).unwrap();
        let trigger_error = so_condition(&so, "Ready").as_deref() == Some("False");
        let logged = std::fs::read_to_string(&keda_log)
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains(&prom_ns) && l.contains("returned multiple elements"));
        if hpa_failing && trigger_error && logged {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "KEDA never refused the bare query's two series: HPA failing {hpa_failing}, \
             ScaledObject not Ready {trigger_error}, logged {logged}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    for load in loads {
        stop(load);
    }
    for (_, ns, runner) in paths {
        runner.abort();
        aim_testkit::delete_namespace(&client, &ns).await;
    }
    drop(scaler);
    drop(turn);
}
