//! Tier 2: the pod runner (`aim dev pods`) on the real local cluster. A
//! Deployment shaped like KServe's predictor runs as KWOK pods; the runner
//! starts the real `aim sim` binary at each pod's address, marks the pod
//! Ready once the simulator answers, and plays the OTel sidecar that an
//! OpenTelemetryCollector resource (written as KServe writes it) describes,
//! pushing to a real aim scaler, which answers KEDA's own gRPC query.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aim_scaler::proto::externalscaler::external_scaler_client::ExternalScalerClient;
use aim_scaler::proto::externalscaler::{GetMetricsRequest, ScaledObjectRef};
use aim_testkit::{apply_yaml, await_object, client, namespace};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};

const WAIT: Duration = Duration::from_secs(60);

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_ip(p: &Pod) -> String {
    p.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_default()
}

async fn predictor_pods(pods: &Api<Pod>) -> Vec<Pod> {
    pods.list(&ListParams::default().labels("serving.kserve.io/inferenceservice=chat"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

/// Polls until `check` returns Some.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until nothing answers at `ip`:8000 (the simulator there stopped).
async fn until_nothing_answers(http: &reqwest::Client, ip: &str, what: &str) {
    eventually(what, || async move {
        http.get(format!("http://{ip}:8000/health"))
            .timeout(Duration::from_secs(1))
            .send()
            .await
            .is_err()
            .then_some(())
    })
    .await;
}

/// The pid of the `aim sim` serving the pod at `ip` (its command line
/// names the pod's address).
fn simulator_pid(ip: &str) -> u32 {
    let wanted = format!("--host\0{ip}\0");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&wanted))
        })
        .unwrap_or_else(|| panic!("no simulator process serves {ip}"))
}

fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

/// KEDA's GetMetrics for the trigger KServe writes for this predictor.
async fn keda_value(
    scaler: &mut ExternalScalerClient<tonic::transport::Channel>,
    ns: &str,
) -> Option<f64> {
    let reference = ScaledObjectRef {
        name: "chat-predictor".into(),
        namespace: ns.into(),
        scaler_metadata: HashMap::from([
            (
                "metricQuery".to_string(),
                format!(
                    "sum(vllm:num_requests_running{{namespace=\"{ns}\", deployment=\"chat-predictor\"}})"
                ),
            ),
            ("targetValue".to_string(), "1".to_string()),
        ]),
    };
    let spec = scaler
        .get_metric_spec(reference.clone())
        .await
        .ok()?
        .into_inner();
    let metrics = scaler
        .get_metrics(GetMetricsRequest {
            scaled_object_ref: Some(reference),
            metric_name: spec.metric_specs.first()?.metric_name.clone(),
        })
        .await
        .ok()?
        .into_inner();
    metrics.metric_values.first().map(|m| m.metric_value_float)
}

#[tokio::test]
async fn each_pod_gets_a_simulator_readiness_and_the_sidecar_kserve_described() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = client().await;
    let ns = namespace(&client, "pods").await;

    // The real scaler on loopback, reached through a cluster Service name
    // as the collector's exporter endpoint names it.
    let mut args = aim_scaler::ScalerArgs::defaults();
    args.warmup = Duration::ZERO;
    // Short, so a hung pod's series is seen going stale in seconds.
    args.freshness = Duration::from_secs(4);
    args.listen = vec!["127.0.0.1:0".parse().unwrap()];
    args.admin_listen = "127.0.0.1:0".parse().unwrap();
    let scaler = aim_scaler::start(&args).await.expect("scaler starts");
    let otlp_port = scaler.addresses[0].port();
    apply_yaml(
        &client,
        &ns,
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: otel-sink}}\nspec:\n  ports: [{{name: otlp-grpc, port: 4317, protocol: TCP}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: otel-sink-local\n  labels: {{kubernetes.io/service-name: otel-sink}}\naddressType: FQDN\nendpoints: [{{addresses: [\"127.0.0.1\"], conditions: {{ready: true}}}}]\nports: [{{name: otlp-grpc, port: {otlp_port}, protocol: TCP}}]\n"
        ),
    )
    .await
    .unwrap();

    // The collector exactly as KServe v0.16 writes it for an ISVC `chat`
    // scaling on vllm:num_requests_running.
    apply_yaml(
        &client,
        &ns,
        &format!(
            r#"apiVersion: opentelemetry.io/v1beta1
kind: OpenTelemetryCollector
metadata: {{name: chat-predictor}}
spec:
  mode: sidecar
  config:
    receivers:
      prometheus:
        config:
          scrape_configs:
          - job_name: otel-collector
            scrape_interval: 1s
            static_configs: [{{targets: ["localhost:8000"]}}]
    processors:
      resourcedetection/env: {{detectors: [env], timeout: 2s, override: false}}
      transform:
        metric_statements:
        - context: datapoint
          statements:
          - set(attributes["namespace"], resource.attributes["k8s.namespace.name"])
          - set(attributes["deployment"], resource.attributes["k8s.deployment.name"])
          - set(attributes["pod"], resource.attributes["k8s.pod.name"])
      filter/metrics:
        metrics:
          include: {{match_type: strict, metric_names: ["vllm:num_requests_running"]}}
    exporters:
      otlp: {{endpoint: "otel-sink.{ns}.svc:4317", compression: none, tls: {{insecure: true}}}}
    service:
      pipelines:
        metrics:
          receivers: [prometheus]
          processors: [resourcedetection/env, transform, filter/metrics]
          exporters: [otlp]
"#
        ),
    )
    .await
    .unwrap();

    // KServe's predictor Deployment, reduced to what the runner reads.
    apply_yaml(
        &client,
        &ns,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: chat-predictor}\nspec:\n  replicas: 1\n  selector: {matchLabels: {app: chat-predictor}}\n  template:\n    metadata:\n      labels: {app: chat-predictor, serving.kserve.io/inferenceservice: chat}\n      annotations: {sidecar.opentelemetry.io/inject: chat-predictor}\n    spec:\n      containers:\n      - name: kserve-container\n        image: amdenterpriseai/aim-qwen-qwen3-32b:0.8.5\n        ports: [{name: http, containerPort: 8000, protocol: TCP}]\n",
    )
    .await
    .unwrap();

    let config = aim_pods::runner::RunnerConfig {
        cold_start: Duration::from_secs(2),
        aim_binary: env!("CARGO_BIN_EXE_aim").into(),
        sim_args: vec![],
        exporter_override: None,
        namespace: Some(ns.clone()),
    };
    let mut runner = tokio::spawn(aim_pods::runner::run(client.clone(), config.clone()));

    // The pod runs unready (KWOK leaves readiness to the runner), then
    // turns Ready once its simulator answers after the cold start.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let first = eventually("a running pod with an address", || async {
        predictor_pods(&pods)
            .await
            .into_iter()
            .find(|p| !pod_ip(p).is_empty())
    })
    .await;
    let first_name = first.metadata.name.clone().unwrap();
    let running_at = Instant::now();
    assert!(
        !is_ready(&first),
        "Ready before any simulator answered: {:?}",
        first.status
    );
    let first = await_object(&pods, &first_name, "the runner's readiness", WAIT, is_ready).await;
    let cold = running_at.elapsed();
    assert!(
        cold >= Duration::from_millis(1500),
        "Ready after {cold:?}, before the 2 s cold start"
    );
    let ip = pod_ip(&first);
    let http = reqwest::Client::new();
    let models = http
        .get(format!("http://{ip}:8000/v1/models"))
        .send()
        .await
        .expect("the simulator answers at the pod's address");
    assert!(models.status().is_success());

    // The sidecar's points reach the scaler under the predictor's labels.
    let keda = ExternalScalerClient::connect(format!("http://{}", scaler.addresses[0]))
        .await
        .unwrap();
    eventually("the scaler to know the predictor's metric", || {
        let mut keda = keda.clone();
        let ns = ns.clone();
        async move { keda_value(&mut keda, &ns).await }
    })
    .await;
    // Load: requests that keep running make the metric rise.
    let mut load = Vec::new();
    for _ in 0..4 {
        let http = http.clone();
        let url = format!("http://{ip}:8000/v1/completions");
        load.push(tokio::spawn(async move {
            let _ = http
                .post(url)
                // Long answers keep the requests running for seconds.
                .json(&serde_json::json!({"model": "Qwen/Qwen3-32B", "prompt": "hello", "max_tokens": 1000, "ignore_eos": true}))
                .send()
                .await;
        }));
    }
    let busy = eventually("running requests to reach the scaler", || {
        let mut keda = keda.clone();
        let ns = ns.clone();
        async move { keda_value(&mut keda, &ns).await.filter(|v| *v >= 1.0) }
    })
    .await;
    assert!(busy <= 4.0, "at most the 4 requests sent run: {busy}");
    // Only the filtered metric went through.
    let admin = http
        .get(format!("http://{}/metrics", scaler.admin_address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        admin.lines().any(|l| l == "aim_scaler_metric_names 1"),
        "the filter passes exactly one metric name:\n{admin}"
    );

    // The simulator hangs (stopped, not dead): its sidecar's scrapes time
    // out, nothing is exported, and its series goes stale within the
    // scaler's freshness limit, so KEDA gets an error rather than the last
    // value forever. Woken, it reports again.
    let sim_pid = simulator_pid(&ip);
    signal(sim_pid, "STOP");
    let hung_at = Instant::now();
    eventually("the hung pod's series to go stale", || {
        let mut keda = keda.clone();
        let ns = ns.clone();
        async move { keda_value(&mut keda, &ns).await.is_none().then_some(()) }
    })
    .await;
    let stale_after = hung_at.elapsed();
    assert!(
        stale_after <= args.freshness + Duration::from_secs(6),
        "stale only after {stale_after:?} (freshness {:?})",
        args.freshness
    );
    signal(sim_pid, "CONT");
    eventually("the woken pod to report again", || {
        let mut keda = keda.clone();
        let ns = ns.clone();
        async move { keda_value(&mut keda, &ns).await }
    })
    .await;
    eprintln!("a hung simulator's series went stale after {stale_after:?}");

    // A new runner (a restart of `aim dev pods`) finds the pod Ready with no
    // simulator behind it: it is a restarted container, unready until its
    // new simulator answers.
    runner.abort();
    let _ = runner.await;
    until_nothing_answers(&http, &ip, "the old simulator to stop with its runner").await;
    runner = tokio::spawn(aim_pods::runner::run(client.clone(), config.clone()));
    await_object(&pods, &first_name, "unready after the restart", WAIT, |p| {
        !is_ready(p)
    })
    .await;
    await_object(&pods, &first_name, "Ready again", WAIT, is_ready).await;

    // A second replica gets its own simulator; deleting a pod stops its one.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    deployments
        .patch(
            "chat-predictor",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": 2}})),
        )
        .await
        .unwrap();
    let second = eventually("a second Ready pod", || async {
        predictor_pods(&pods)
            .await
            .into_iter()
            .find(|p| p.metadata.name.as_deref() != Some(first_name.as_str()) && is_ready(p))
    })
    .await;
    let second_ip = pod_ip(&second);
    assert_ne!(second_ip, ip);
    assert!(
        http.get(format!("http://{second_ip}:8000/health"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    );
    pods.delete(&first_name, &DeleteParams::default())
        .await
        .unwrap();
    let deleted_at = Instant::now();
    until_nothing_answers(&http, &ip, "the deleted pod's simulator to stop").await;
    eprintln!(
        "pod runner: cold start to Ready {cold:?}; deleted pod's simulator gone after {:?}",
        deleted_at.elapsed()
    );

    runner.abort();
    for l in load {
        l.abort();
    }
    scaler.shutdown().await;
    aim_testkit::delete_namespace(&client, &ns).await;
}

/// A Deployment `app` of one KWOK pod shaped like KServe's predictor (no
/// sidecar), with the given grace period.
fn plain_predictor(app: &str, grace_s: i64) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {app}}}\nspec:\n  replicas: 1\n  selector: {{matchLabels: {{app: {app}}}}}\n  template:\n    metadata:\n      labels: {{app: {app}, serving.kserve.io/inferenceservice: {app}}}\n    spec:\n      terminationGracePeriodSeconds: {grace_s}\n      containers:\n      - name: kserve-container\n        image: amdenterpriseai/aim-qwen-qwen3-32b:0.8.5\n        ports: [{{name: http, containerPort: 8000, protocol: TCP}}]\n"
    )
}

/// The Ready pod of `app` (its name and address).
async fn ready_pod(pods: &Api<Pod>, app: &str) -> (String, String) {
    eventually("a Ready pod", || async {
        pods.list(&ListParams::default().labels(&format!("app={app}")))
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|p| is_ready(p) && p.metadata.deletion_timestamp.is_none())
            .map(|p| (p.metadata.name.clone().unwrap(), pod_ip(&p)))
    })
    .await
}

/// A streamed completion of `tokens` tokens at `ip`: the tokens received
/// and whether the stream ended with `[DONE]`; `started` fires at the
/// first token.
async fn stream_tokens(
    ip: String,
    tokens: u32,
    started: tokio::sync::oneshot::Sender<()>,
) -> (usize, bool) {
    let mut response = reqwest::Client::new()
        .post(format!("http://{ip}:8000/v1/completions"))
        .json(
            &serde_json::json!({"model": "Qwen/Qwen3-32B", "prompt": "hello",
            "max_tokens": tokens, "ignore_eos": true, "stream": true}),
        )
        .send()
        .await
        .unwrap();
    let mut started = Some(started);
    let mut body = String::new();
    // A stream cut by a kill ends in an error: count what came.
    while let Ok(Some(chunk)) = response.chunk().await {
        body.push_str(&String::from_utf8_lossy(&chunk));
        if body.contains("\"text\"")
            && let Some(s) = started.take()
        {
            let _ = s.send(());
        }
    }
    let count = body.matches("\"text\"").count();
    (count, body.trim_end().ends_with("data: [DONE]"))
}

#[tokio::test]
async fn a_deleted_pods_simulator_finishes_its_streams_within_the_grace_period() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = client().await;
    let ns = namespace(&client, "drain").await;
    // `long`: 30 s to drain; `short`: 1 s, less than its stream needs.
    apply_yaml(&client, &ns, &plain_predictor("long", 30))
        .await
        .unwrap();
    apply_yaml(&client, &ns, &plain_predictor("short", 1))
        .await
        .unwrap();
    let runner = tokio::spawn(aim_pods::runner::run(
        client.clone(),
        aim_pods::runner::RunnerConfig {
            cold_start: Duration::ZERO,
            aim_binary: env!("CARGO_BIN_EXE_aim").into(),
            sim_args: vec![],
            exporter_override: None,
            namespace: Some(ns.clone()),
        },
    ));
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let http = reqwest::Client::new();

    // 250 tokens at about 12 ms each: about 3 s of stream, well inside 30 s.
    let (name, ip) = ready_pod(&pods, "long").await;
    let (started, first_token) = tokio::sync::oneshot::channel();
    let stream = tokio::spawn(stream_tokens(ip.clone(), 250, started));
    first_token.await.unwrap();
    pods.delete(&name, &DeleteParams::default()).await.unwrap();
    let deleted_at = Instant::now();
    // Draining: a new request is refused while the stream goes on.
    let refused = eventually("the draining simulator to refuse", || {
        let http = http.clone();
        let ip = ip.clone();
        async move {
            match http
                .post(format!("http://{ip}:8000/v1/completions"))
                .json(&serde_json::json!({"model": "Qwen/Qwen3-32B", "prompt": "late", "max_tokens": 1}))
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => None,
                Ok(r) => Some(r.status().as_u16()),
                Err(_) => Some(0),
            }
        }
    })
    .await;
    let (tokens, done) = stream.await.unwrap();
    assert_eq!(
        (tokens, done),
        (250, true),
        "the in-flight stream was cut by the pod's deletion"
    );
    assert!(
        refused == 503 || refused == 0,
        "a new request to a draining pod got {refused}"
    );
    until_nothing_answers(&http, &ip, "the drained simulator to exit").await;
    eprintln!(
        "drain: the in-flight stream ran to its end; the simulator exited {:?} after the deletion",
        deleted_at.elapsed()
    );

    // A 1 s grace period is all a simulator gets: a 12 s stream is cut.
    let (name, ip) = ready_pod(&pods, "short").await;
    let (started, first_token) = tokio::sync::oneshot::channel();
    let stream = tokio::spawn(stream_tokens(ip.clone(), 1000, started));
    first_token.await.unwrap();
    pods.delete(&name, &DeleteParams::default()).await.unwrap();
    let (tokens, done) = stream.await.unwrap();
    assert!(
        !done && tokens < 1000,
        "a 12 s stream outlived a 1 s grace period: {tokens} tokens, done {done}"
    );
    until_nothing_answers(&http, &ip, "the killed simulator to be gone").await;

    runner.abort();
    aim_testkit::delete_namespace(&client, &ns).await;
}
