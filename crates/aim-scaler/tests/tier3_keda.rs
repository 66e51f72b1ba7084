//! Tier 3: the autoscaling loop with real parts only.
//!
//! The OpenTelemetry SDK's OTLP/gRPC exporter pushes `vllm:num_requests_running`
//! to aim's scaler; the real KEDA operator asks the scaler through an
//! `external` trigger on loopback; KEDA's metrics server serves the value
//! through kube-apiserver's aggregator; the real HPA controller scales a
//! Deployment whose pods KWOK runs: 1 → N while the load lasts, back to 1
//! when it drops. The figures it prints (`--nocapture`) are the latencies
//! of each step on the local cluster.
//!
//! ```sh
//! cargo test -p aim-scaler --test tier3_keda -- --nocapture
//! ```

use std::time::{Duration, Instant};

use aim_testkit::{apply_yaml, await_object, cluster_with_keda, namespace};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::api::{Api, DynamicObject};
use kube::core::GroupVersionKind;
use kube::discovery::pinned_kind;
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Gauge, MeterProvider as _};
use opentelemetry_otlp::{MetricExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::metrics::periodic_reader_with_async_runtime::PeriodicReader;

const DEPLOYMENT: &str = "chat-predictor";
const SCALED_OBJECT: &str = "chat";
/// Per-replica target of the trigger; the load below needs `N` replicas.
const TARGET: f64 = 2.0;
/// Running requests reported by two pods' collectors: 5 + 3 = 8 → 8 / 2.
const LOAD: [f64; 2] = [5.0, 3.0];
const N: i32 = 4;
/// Generous: the figures are printed, not asserted; this only bounds a hang.
const WAIT: Duration = Duration::from_secs(120);

fn deployment_yaml() -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: {DEPLOYMENT}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: {DEPLOYMENT}}}}}
  template:
    metadata: {{labels: {{app: {DEPLOYMENT}}}}}
    spec:
      containers:
      - name: main
        image: example.invalid/vllm-sim:1
        resources: {{requests: {{cpu: 100m}}}}
"#
    )
}

/// What AIM and KServe generate for an OpenTelemetry-backed metric, with
/// the scaler on loopback. The scale-down stabilisation window is 0 instead
/// of upstream's 300 s so the way back to 1 takes seconds, not minutes.
fn scaled_object_yaml(namespace: &str, scaler: std::net::SocketAddr) -> String {
    format!(
        r#"apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata: {{name: {SCALED_OBJECT}}}
spec:
  scaleTargetRef: {{name: {DEPLOYMENT}}}
  minReplicaCount: 1
  maxReplicaCount: 8
  pollingInterval: 5
  advanced:
    horizontalPodAutoscalerConfig:
      behavior:
        scaleDown:
          stabilizationWindowSeconds: 0
          policies: [{{type: Percent, value: 100, periodSeconds: 5}}]
  triggers:
  - type: external
    metadata:
      scalerAddress: "{scaler}"
      metricQuery: 'sum(vllm:num_requests_running{{namespace="{namespace}", deployment="{DEPLOYMENT}"}})'
      targetValue: "{TARGET}"
"#
    )
}

/// One pod's metrics pipeline: the SDK exports its gauge every 500 ms over
/// OTLP/gRPC, as a collector sidecar would after each scrape.
fn pod_exporter(scaler: std::net::SocketAddr, pod: &str) -> SdkMeterProvider {
    let exporter = MetricExporter::builder()
        .with_tonic()
        .with_endpoint(format!("http://{scaler}"))
        .build()
        .expect("exporter builds");
    let reader = PeriodicReader::builder(exporter, opentelemetry_sdk::runtime::Tokio)
        .with_interval(Duration::from_millis(500))
        .build();
    SdkMeterProvider::builder()
        .with_reader(reader)
        .with_resource(
            Resource::builder_empty()
                .with_attributes([KeyValue::new("k8s.pod.name", pod.to_owned())])
                .build(),
        )
        .build()
}

struct Pod {
    provider: SdkMeterProvider,
    gauge: Gauge<f64>,
    attributes: Vec<KeyValue>,
}

impl Pod {
    fn report(&self, running: f64) {
        self.gauge.record(running, &self.attributes);
    }
}

fn replicas(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn ready_replicas(d: &Deployment) -> i32 {
    d.status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_load_scales_a_deployment_from_1_to_n_and_back_through_keda() {
    let client = cluster_with_keda()
        .await
        .client()
        .await
        .expect("a client for the test cluster");
    let ns = namespace(&client, "tier3-keda").await;

    let mut args = aim_scaler::ScalerArgs::defaults();
    // The figures below time KEDA and the HPA, not the scaler's warm-up.
    args.warmup = Duration::ZERO;
    args.listen = vec!["127.0.0.1:0".parse().unwrap()];
    args.admin_listen = "127.0.0.1:0".parse().unwrap();
    let scaler = aim_scaler::start(&args).await.expect("the scaler starts");
    let address = scaler.addresses[0];

    let pods: Vec<Pod> = LOAD
        .iter()
        .enumerate()
        .map(|(i, _)| {
            let name = format!("{DEPLOYMENT}-{i}");
            let provider = pod_exporter(address, &name);
            let gauge = provider
                .meter("vllm")
                .f64_gauge("vllm:num_requests_running")
                .build();
            // KServe's collector copies these resource attributes onto
            // every point; the query selects by them.
            let attributes = vec![
                KeyValue::new("namespace", ns.clone()),
                KeyValue::new("deployment", DEPLOYMENT),
                KeyValue::new("pod", name),
            ];
            Pod {
                provider,
                gauge,
                attributes,
            }
        })
        .collect();
    // Idle pods report 0, and the scaler holds both series before KEDA
    // first asks: a trigger on a metric never received is an error.
    pods.iter().for_each(|p| p.report(0.0));
    let exporting = Instant::now();
    while scaler.state.store.series_count() < LOAD.len() {
        assert!(
            exporting.elapsed() < WAIT,
            "the SDK exporters never delivered both series"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    apply_yaml(&client, &ns, &deployment_yaml())
        .await
        .unwrap_or_else(|e| panic!("applying the Deployment: {e}"));
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    await_object(&deployments, DEPLOYMENT, "1 ready replica", WAIT, |d| {
        ready_replicas(d) == 1
    })
    .await;

    let applied = Instant::now();
    apply_yaml(&client, &ns, &scaled_object_yaml(&ns, address))
        .await
        .unwrap_or_else(|e| panic!("applying the ScaledObject: {e}"));
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns);
    let hpa_name = format!("keda-hpa-{SCALED_OBJECT}");
    let hpa = await_object(&hpas, &hpa_name, "KEDA's HPA", WAIT, |_| true).await;
    let to_hpa = applied.elapsed();

    // The HPA reads the idle value through the aggregator before any load:
    // the whole metrics path answers.
    let metric = hpa.spec.as_ref().and_then(|s| s.metrics.as_ref()).unwrap()[0]
        .external
        .as_ref()
        .expect("an External metric")
        .metric
        .name
        .clone();
    await_object(
        &hpas,
        &hpa_name,
        "the HPA reading the idle metric",
        WAIT,
        |h| external_value(h) == Some(0.0),
    )
    .await;
    let to_first_read = applied.elapsed();
    let so_gvk = GroupVersionKind::gvk("keda.sh", "v1alpha1", "ScaledObject");
    let (so_resource, _) = pinned_kind(&client, &so_gvk).await.unwrap();
    let scaled_objects: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &so_resource);
    await_object(
        &scaled_objects,
        SCALED_OBJECT,
        "the ScaledObject Ready",
        WAIT,
        |so| condition(so, "Ready") == Some("True"),
    )
    .await;

    // Load arrives.
    let loaded = Instant::now();
    pods.iter().zip(LOAD).for_each(|(p, v)| p.report(v));
    let mut max_seen = 1;
    let first = await_object(&deployments, DEPLOYMENT, "a scale-up", WAIT, |d| {
        replicas(d) > 1
    })
    .await;
    let to_first_scale_up = loaded.elapsed();
    max_seen = max_seen.max(replicas(&first));
    let at_n = await_object(
        &deployments,
        DEPLOYMENT,
        &format!("{N} ready replicas"),
        WAIT,
        |d| replicas(d) == N && ready_replicas(d) == N,
    )
    .await;
    let to_n = loaded.elapsed();
    max_seen = max_seen.max(replicas(&at_n));

    // The value the HPA acted on is the pushed sum, read through the
    // aggregator exactly as the HPA controller reads it.
    let raw = external_metric(&client, &ns, &metric).await;
    assert_eq!(
        raw,
        LOAD.iter().sum::<f64>(),
        "the external metrics API serves the pushed sum"
    );

    // Steady load: the HPA holds N (ceil(8 / 2) = 4, tolerance 10 %).
    let hold_until = Instant::now() + Duration::from_secs(12);
    while Instant::now() < hold_until {
        let d = deployments.get(DEPLOYMENT).await.unwrap();
        max_seen = max_seen.max(replicas(&d));
        assert_eq!(replicas(&d), N, "steady load must hold {N} replicas");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Load drops.
    let dropped = Instant::now();
    pods.iter().for_each(|p| p.report(0.0));
    await_object(&deployments, DEPLOYMENT, "back to 1 replica", WAIT, |d| {
        replicas(d) == 1
    })
    .await;
    let to_one = dropped.elapsed();

    let load: f64 = LOAD.iter().sum();
    println!("tier-3 autoscaling loop (OTLP → aim scaler → KEDA → HPA → Deployment):");
    for (step, took) in [
        (
            format!("ScaledObject applied → HPA {hpa_name} exists"),
            to_hpa,
        ),
        (
            "ScaledObject applied → HPA reads the metric".to_string(),
            to_first_read,
        ),
        (
            format!("load (sum {load}) → first scale-up"),
            to_first_scale_up,
        ),
        (format!("load → {N} replicas ready"), to_n),
        ("load dropped → 1 replica".to_string(), to_one),
    ] {
        println!("  {step:<50} {:>5.1} s", took.as_secs_f64());
    }
    assert_eq!(max_seen, N, "never above ceil(load / target)");

    // The ScaledObject goes first, so KEDA stops asking before the scaler
    // stops answering.
    aim_testkit::delete_namespace(&client, &ns).await;
    for pod in pods {
        let _ = tokio::task::spawn_blocking(move || pod.provider.shutdown()).await;
    }
    scaler.shutdown().await;
}

/// The External metric's current value in the HPA's status.
fn external_value(hpa: &HorizontalPodAutoscaler) -> Option<f64> {
    let current = hpa.status.as_ref()?.current_metrics.as_ref()?;
    let external = current.iter().find_map(|m| m.external.as_ref())?;
    let quantity = external
        .current
        .average_value
        .as_ref()
        .or(external.current.value.as_ref())?;
    parse_quantity(&quantity.0)
}

fn condition<'a>(object: &'a DynamicObject, type_: &str) -> Option<&'a str> {
    object.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)?["status"]
        .as_str()
}

/// `GET /apis/external.metrics.k8s.io/v1beta1/namespaces/<ns>/<metric>`
/// with KEDA's selector: the HPA controller's own request.
async fn external_metric(client: &kube::Client, namespace: &str, metric: &str) -> f64 {
    let path = format!(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric}?labelSelector=scaledobject.keda.sh%2Fname%3D{SCALED_OBJECT}"
    );
    let request = http::Request::get(&path).body(Vec::new()).unwrap();
    let list: serde_json::Value = client
        .request(request)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let value = list["items"][0]["value"]
        .as_str()
        .unwrap_or_else(|| panic!("no value in {list}"));
    parse_quantity(value).unwrap_or_else(|| panic!("not a quantity: {value}"))
}

/// Kubernetes quantities as KEDA writes them: plain decimals or milli-units.
fn parse_quantity(text: &str) -> Option<f64> {
    match text.strip_suffix('m') {
        Some(milli) => milli.parse::<f64>().ok().map(|v| v / 1000.0),
        None => text.parse().ok(),
    }
}
