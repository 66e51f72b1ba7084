//! Tier 3: the whole autoscaling loop, every part real.
//!
//! The operator (in-process, as the Helm chart's ServiceAccount) turns the
//! seed's autoscaling AIMService into an InferenceService; KServe's real
//! controller makes the Deployment, the ScaledObject and the
//! OpenTelemetryCollector; the pod runner gives each KWOK pod an `aim sim`
//! process and plays its OTel sidecar into an in-process `aim scaler`;
//! real KEDA and the real HPA controller scale the Deployment 1 → N under
//! load and back to 1 after it. The service's status and events follow.
//!
//! Bed settings that make it take seconds rather than minutes (all said
//! where they are set): the HPA controller syncs every 5 s, KServe's
//! scale-down stabilisation is 10 s (bed config map), and the scaler's
//! `operationOverTime` window is 10 s (upstream 120 s).
//!
//! ```sh
//! cargo test -p aim --test tier3_autoscaling -- --nocapture
//! ```

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aim_api::AIMService;
use aim_scaler::proto::externalscaler::external_scaler_client::ExternalScalerClient;
use aim_scaler::proto::externalscaler::{GetMetricsRequest, ScaledObjectRef};
use aim_testkit::{apply_yaml, await_object, cluster_with_kserve, namespace};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, ResourceExt};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(180);
const SERVICE: &str = "qwen-chat";
/// Requests kept in flight by the load: with the default metric (running
/// requests, target 1 per replica) the HPA wants this many replicas.
const CONCURRENCY: usize = 3;
/// Output tokens per request: a few seconds each on the simulator, so a
/// stopped load drains quickly.
const MAX_TOKENS: u32 = 150;

fn model_and_template() -> String {
    r#"apiVersion: aim.eai.amd.com/v1alpha1
kind: AIMModel
metadata: {name: qwen-qwen3-32b}
spec:
  image: amdenterpriseai/aim-qwen-qwen3-32b:0.8.5
  discovery: {createServiceTemplates: false}
  imageMetadata:
    model: {canonicalName: Qwen/Qwen3-32B}
---
apiVersion: aim.eai.amd.com/v1alpha1
kind: AIMServiceTemplate
metadata:
  name: qwen3-32b-latency
  annotations: {aim.eai.amd.com/reconciliation-paused: "true"}
spec:
  modelName: qwen-qwen3-32b
  metric: latency
  precision: fp8
  hardware: {gpu: {requests: 1, model: MI300X}}
"#
    .to_string()
}

/// The seed's `aim-basic-autoscaling.yaml` (min 1, max 4, no metrics: the
/// default metric applies), pinned to the template above.
fn service_yaml() -> String {
    format!(
        r#"apiVersion: aim.eai.amd.com/v1alpha1
kind: AIMService
metadata: {{name: {SERVICE}}}
spec:
  model: {{name: qwen-qwen3-32b}}
  template: {{name: qwen3-32b-latency}}
  minReplicas: 1
  maxReplicas: 4
"#
    )
}

/// Freezes the template Ready with a discovered profile, as discovery would.
async fn ready_template(client: &Client, ns: &str) {
    let api: Api<aim_api::AIMServiceTemplate> = Api::namespaced(client.clone(), ns);
    let status = json!({
        "apiVersion": "aim.eai.amd.com/v1alpha1", "kind": "AIMServiceTemplate",
        "status": {
            "status": "Ready",
            "profile": {"metadata": {"engine": "vllm", "gpu": "MI300X", "gpuCount": 1,
                                     "metric": "latency", "precision": "fp8", "type": "optimized"}},
            "resolvedHardware": {"gpu": {"requests": 1, "model": "MI300X"}},
            "hardwareSummary": "1 x MI300X",
        }
    });
    api.patch_status(
        "qwen3-32b-latency",
        &PatchParams::apply("aim-test-discovery").force(),
        &Patch::Apply(&status),
    )
    .await
    .unwrap();
}

/// A client acting as the chart's operator ServiceAccount.
async fn operator_client() -> Client {
    aim_testkit::install_chart().await;
    let info = aim_testkit::cluster().await;
    let kc = kube::config::Kubeconfig::read_from(&info.kubeconfig).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    config.auth_info.impersonate = Some("system:serviceaccount:aim-system:aim-operator".into());
    Client::try_from(config).unwrap()
}

fn dynamic(
    client: &Client,
    ns: &str,
    group: &str,
    version: &str,
    kind: &str,
) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let plural = format!("{}s", kind.to_lowercase());
    Api::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::from_gvk_with_plural(&gvk, &plural),
    )
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn predictor_pods(pods: &Api<Pod>, isvc: &str) -> Vec<Pod> {
    pods.list(&ListParams::default().labels(&format!("serving.kserve.io/inferenceservice={isvc}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

fn desired(h: &HorizontalPodAutoscaler) -> i32 {
    h.status.as_ref().map(|s| s.desired_replicas).unwrap_or(0)
}

fn runtime(svc: &AIMService) -> Option<aim_api::service::ServiceRuntimeStatus> {
    svc.status.as_ref()?.runtime.clone()
}

/// What the scaler answers KEDA for the ScaledObject's first trigger, through
/// KEDA's own gRPC calls.
async fn scaler_value(
    scaler: &mut ExternalScalerClient<tonic::transport::Channel>,
    scaled_object: &DynamicObject,
) -> Result<f64, String> {
    let trigger = &scaled_object.data["spec"]["triggers"][0]["metadata"];
    let metadata: HashMap<String, String> = trigger
        .as_object()
        .ok_or("the ScaledObject has no trigger")?
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect();
    let reference = ScaledObjectRef {
        name: scaled_object.name_any(),
        namespace: scaled_object.namespace().unwrap_or_default(),
        scaler_metadata: metadata,
    };
    let spec = scaler
        .get_metric_spec(reference.clone())
        .await
        .map_err(|e| e.message().to_string())?
        .into_inner();
    let name = spec
        .metric_specs
        .first()
        .ok_or("no metric spec")?
        .metric_name
        .clone();
    let metrics = scaler
        .get_metrics(GetMetricsRequest {
            scaled_object_ref: Some(reference),
            metric_name: name,
        })
        .await
        .map_err(|e| e.message().to_string())?
        .into_inner();
    metrics
        .metric_values
        .first()
        .map(|m| m.metric_value_float)
        .ok_or_else(|| "no metric value".to_string())
}

/// A closed loop of `CONCURRENCY` clients, each sending the next
/// completion as soon as the last one ended, to the ready predictor pods in
/// turn (as a Service would spread them).
fn start_load(client: Client, ns: String, isvc: String) -> Vec<tokio::task::JoinHandle<()>> {
    (0..CONCURRENCY)
        .map(|worker| {
            let client = client.clone();
            let ns = ns.clone();
            let isvc = isvc.clone();
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let pods: Api<Pod> = Api::namespaced(client, &ns);
                let mut n = worker;
                loop {
                    let ready: Vec<String> = predictor_pods(&pods, &isvc)
                        .await
                        .into_iter()
                        .filter(is_ready)
                        .filter_map(|p| p.status?.pod_ip)
                        .collect();
                    if ready.is_empty() {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                    let ip = &ready[n % ready.len()];
                    n += 1;
                    let sent = http
                        .post(format!("http://{ip}:8000/v1/completions"))
                        .json(
                            &json!({"model": "Qwen/Qwen3-32B", "prompt": "Tell me a story.",
                                      "max_tokens": MAX_TOKENS, "ignore_eos": true}),
                        )
                        .send()
                        .await;
                    match sent {
                        Ok(r) => {
                            let _ = r.bytes().await;
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            })
        })
        .collect()
}

/// The ScaledUp/ScaledDown events of the service, oldest first.
async fn scale_events(client: &Client, ns: &str, reason: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let mut list: Vec<Event> = events
        .list(&ListParams::default().fields(&format!(
            "involvedObject.kind=AIMService,involvedObject.name={SERVICE},reason={reason}"
        )))
        .await
        .unwrap()
        .items;
    list.sort_by_key(|e| e.metadata.creation_timestamp.clone().map(|t| t.0));
    list.into_iter().filter_map(|e| e.message).collect()
}

/// Waits until an event of `reason` matches, returning them all.
async fn await_events(
    client: &Client,
    ns: &str,
    reason: &str,
    matches: impl Fn(&str) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let events = scale_events(client, ns, reason).await;
        if events.iter().any(|m| matches(m)) {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "no matching {reason} event: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

struct Lags {
    rows: Vec<(String, Duration)>,
}

impl Lags {
    fn print(&self, title: &str) {
        println!("{title}");
        for (step, took) in &self.rows {
            println!("  {step:<58} {:>6.1} s", took.as_secs_f64());
        }
    }
}

/// Everything one test runs: a namespace with the seed service, the
/// operator, the pod runner and the scaler, up to the idle loop (one Ready
/// pod whose sidecar feeds the scaler, the HPA reading through KEDA).
struct Bed {
    admin: Client,
    ns: String,
    isvc: String,
    predictor: String,
    hpa_name: String,
    scaler_address: std::net::SocketAddr,
    scaler_args: aim_scaler::ScalerArgs,
    scaler: Option<aim_scaler::Running>,
    scaled_objects: Api<DynamicObject>,
    hpas: Api<HorizontalPodAutoscaler>,
    pods: Api<Pod>,
    services: Api<AIMService>,
    deployments: Api<Deployment>,
    stop_operator: tokio::sync::oneshot::Sender<()>,
    operator: tokio::task::JoinHandle<anyhow::Result<()>>,
    runner: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// Setup milestones from the service's apply.
    milestones: Vec<(String, Duration)>,
    /// Held for the test's life: every test binds the bed's one scaler
    /// address, so they take turns.
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl Bed {
    /// `runtime_config`: YAML applied before the service (e.g. a namespace
    /// AIMRuntimeConfig). `idle`: wait for the idle loop (an HPA reading
    /// the metric), which a paused service never reaches.
    async fn start(prefix: &str, runtime_config: Option<&str>, idle: bool) -> Bed {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let turn = TURN.lock().await;
        let info = cluster_with_kserve().await;
        let admin = info.client().await.unwrap();
        let ns = namespace(&admin, prefix).await;

        // The scaler where the bed points KServe's sidecars and
        // ScaledObjects. A 10 s operationOverTime window (upstream 120 s)
        // so the average follows a load step within seconds.
        // It also listens on a port of its own, which the operator names
        // as the scaler KEDA asks: KEDA keeps one gRPC connection per
        // scaler address, and the previous test's scaler at the bed's
        // address left it in reconnect backoff. Built in that state, an
        // HPA gets no metric from the scaler and KEDA does not retry
        // (seen: "KEDAScalerFailed: got empty metric spec").
        let own = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut scaler_args = aim_scaler::ScalerArgs::defaults();
        scaler_args.listen = vec![info.scaler_address, own];
        scaler_args.admin_listen = "127.0.0.1:0".parse().unwrap();
        scaler_args.default_window = Duration::from_secs(10);
        let scaler = start_scaler(&scaler_args).await;

        // The operator under the chart's RBAC, telling KEDA to ask the
        // scaler at its loopback address (KEDA runs outside the cluster).
        let sa_client = operator_client().await;
        let operator_args = aim_operator::OperatorArgs {
            admin_address: "127.0.0.1:0".parse().unwrap(),
            namespace: "aim-system".into(),
            no_leader_election: true,
            identity: None,
            scaler_address: own.to_string(),
        };
        let (stop_operator, stopped) = tokio::sync::oneshot::channel::<()>();
        let operator = tokio::spawn(aim_operator::run_with(
            sa_client,
            operator_args,
            async move {
                let _ = stopped.await;
            },
        ));

        // The pod runner for this namespace: simulators with a 2 s cold start.
        let runner = tokio::spawn(aim_pods::runner::run(
            admin.clone(),
            aim_pods::runner::RunnerConfig {
                cold_start: Duration::from_secs(2),
                aim_binary: env!("CARGO_BIN_EXE_aim").into(),
                sim_args: Vec::new(),
                exporter_override: None,
                namespace: Some(ns.clone()),
            },
        ));

        apply_yaml(&admin, &ns, &model_and_template())
            .await
            .unwrap();
        ready_template(&admin, &ns).await;
        if let Some(yaml) = runtime_config {
            apply_yaml(&admin, &ns, yaml).await.unwrap();
        }
        let applied = Instant::now();
        apply_yaml(&admin, &ns, &service_yaml()).await.unwrap();

        // The operator's InferenceService, and what KServe makes of it.
        let isvcs = dynamic(
            &admin,
            &ns,
            "serving.kserve.io",
            "v1beta1",
            "InferenceService",
        );
        let isvc = loop {
            let list = isvcs.list(&ListParams::default()).await.unwrap();
            if let Some(i) = list.items.first() {
                break i.name_any();
            }
            assert!(
                applied.elapsed() < WAIT,
                "the operator made no InferenceService"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let predictor = format!("{isvc}-predictor");
        let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &ns);
        await_object(
            &deployments,
            &predictor,
            "KServe's Deployment",
            WAIT,
            |_| true,
        )
        .await;
        let mut milestones = vec![(
            "service applied → KServe's Deployment".to_string(),
            applied.elapsed(),
        )];
        let scaled_objects = dynamic(&admin, &ns, "keda.sh", "v1alpha1", "ScaledObject");
        let scaled_object = await_object(
            &scaled_objects,
            &predictor,
            "KServe's ScaledObject",
            WAIT,
            |_| true,
        )
        .await;
        let collectors = dynamic(
            &admin,
            &ns,
            "opentelemetry.io",
            "v1beta1",
            "OpenTelemetryCollector",
        );
        await_object(
            &collectors,
            &predictor,
            "KServe's OpenTelemetryCollector",
            WAIT,
            |_| true,
        )
        .await;
        let trigger = &scaled_object.data["spec"]["triggers"][0];
        assert_eq!(trigger["type"], "external", "{trigger}");
        assert_eq!(trigger["metadata"]["scalerAddress"], own.to_string());
        assert_eq!(
            trigger["metadata"]["metricQuery"],
            format!(
                "sum(vllm:num_requests_running{{namespace=\"{ns}\", deployment=\"{predictor}\"}})"
            )
        );
        let bed = Bed {
            hpas: Api::namespaced(admin.clone(), &ns),
            pods: Api::namespaced(admin.clone(), &ns),
            services: Api::namespaced(admin.clone(), &ns),
            hpa_name: format!("keda-hpa-{predictor}"),
            scaler_address: own,
            scaler_args,
            scaler: Some(scaler),
            admin,
            ns,
            isvc,
            predictor,
            scaled_objects,
            deployments,
            stop_operator,
            operator,
            runner,
            milestones: Vec::new(),
            _turn: turn,
        };
        if !idle {
            return Bed { milestones, ..bed };
        }
        await_object(&bed.hpas, &bed.hpa_name, "KEDA's HPA", WAIT, |_| true).await;
        milestones.push(("service applied → KEDA's HPA".into(), applied.elapsed()));
        bed.await_idle_loop().await;
        milestones.push((
            "service applied → pod Ready, sidecar → scaler, HPA reads".into(),
            applied.elapsed(),
        ));
        await_object(&bed.services, SERVICE, "the service Running", WAIT, |s| {
            s.status
                .as_ref()
                .and_then(|st| st.status)
                .is_some_and(|p| p == aim_api::service::ServicePhase::Running)
        })
        .await;
        Bed { milestones, ..bed }
    }

    /// One Ready pod, the scaler answering 0, the HPA reading a metric.
    async fn await_idle_loop(&self) {
        let deadline = Instant::now() + WAIT;
        loop {
            let ready = self.ready_pods().await;
            let value = self.scaler_value().await;
            let reads = self
                .hpas
                .get_opt(&self.hpa_name)
                .await
                .unwrap()
                .is_some_and(|h| {
                    h.status
                        .as_ref()
                        .and_then(|s| s.current_metrics.as_ref())
                        .is_some_and(|m| !m.is_empty())
                });
            if ready == 1 && value == Ok(0.0) && reads {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "idle loop not up: {ready} ready pods, scaler answers {value:?}, HPA reads a metric: {reads}\n{}",
                aim_testkit::events_of(&self.admin, &self.ns).await
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn ready_pods(&self) -> i32 {
        predictor_pods(&self.pods, &self.isvc)
            .await
            .iter()
            .filter(|p| is_ready(p))
            .count() as i32
    }

    /// The HPA's desired replicas; None while there is no HPA.
    async fn desired(&self) -> Option<i32> {
        self.hpas
            .get_opt(&self.hpa_name)
            .await
            .unwrap()
            .map(|h| desired(&h))
    }

    async fn scaled_object(&self) -> DynamicObject {
        self.scaled_objects.get(&self.predictor).await.unwrap()
    }

    /// What the scaler answers KEDA for the ScaledObject's trigger.
    async fn scaler_value(&self) -> Result<f64, String> {
        self.query(None).await
    }

    /// The trigger's query, optionally narrowed to one pod's series.
    async fn query(&self, pod: Option<&str>) -> Result<f64, String> {
        let mut so = self.scaled_object().await;
        if let Some(pod) = pod {
            let q = format!(
                "sum(vllm:num_requests_running{{namespace=\"{}\", pod=\"{pod}\"}})",
                self.ns
            );
            so.data["spec"]["triggers"][0]["metadata"]["metricQuery"] = json!(q);
        }
        let mut grpc = ExternalScalerClient::connect(format!("http://{}", self.scaler_address))
            .await
            .map_err(|e| format!("connecting: {e}"))?;
        scaler_value(&mut grpc, &so).await
    }

    fn load(&self) -> Vec<tokio::task::JoinHandle<()>> {
        start_load(self.admin.clone(), self.ns.clone(), self.isvc.clone())
    }

    /// Waits until the HPA wants `n` and `n` pods are Ready.
    async fn await_scale(&self, n: i32, what: &str) {
        let started = Instant::now();
        loop {
            let d = self.desired().await;
            let ready = self.ready_pods().await;
            if d == Some(n) && ready == n {
                return;
            }
            assert!(
                started.elapsed() < WAIT,
                "{what}: HPA wants {d:?}, {ready} ready pods\n{}",
                aim_testkit::events_of(&self.admin, &self.ns).await
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn condition(&self, ty: &str) -> Option<(String, String)> {
        let svc = self.services.get(SERVICE).await.unwrap();
        svc.status?
            .conditions
            .iter()
            .find(|c| c.type_ == ty)
            .map(|c| (c.status.clone(), c.reason.clone()))
    }

    async fn finish(mut self) {
        aim_testkit::delete_namespace(&self.admin, &self.ns).await;
        self.runner.abort();
        let _ = self.stop_operator.send(());
        let _ = self.operator.await;
        if let Some(scaler) = self.scaler.take() {
            scaler.shutdown().await;
        }
    }
}

/// Binds the scaler, retrying while a previous one's socket lets go.
async fn start_scaler(args: &aim_scaler::ScalerArgs) -> aim_scaler::Running {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match aim_scaler::start(args).await {
            Ok(s) => return s,
            Err(e) if Instant::now() < deadline => {
                eprintln!("scaler not up yet: {e:#}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("the scaler cannot listen at {:?}: {e:#}", args.listen),
        }
    }
}

fn stop(load: Vec<tokio::task::JoinHandle<()>>) {
    for task in load {
        task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_seed_service_scales_1_to_n_and_back_with_real_kserve_and_keda() {
    let bed = Bed::start("tier3-loop", None, true).await;
    let n = CONCURRENCY as i32;

    // Load step: CONCURRENCY requests always in flight.
    let loaded = Instant::now();
    let load = bed.load();
    let (mut at_scaler, mut decided, mut created, mut second_ready) = (None, None, None, None);
    let mut max_desired = 1;
    loop {
        if at_scaler.is_none() && bed.scaler_value().await.is_ok_and(|v| v >= 1.0) {
            at_scaler = Some(loaded.elapsed());
        }
        let d = bed.desired().await.unwrap_or(0);
        max_desired = max_desired.max(d);
        if decided.is_none() && d > 1 {
            decided = Some(loaded.elapsed());
        }
        let current = predictor_pods(&bed.pods, &bed.isvc).await;
        if created.is_none() && current.len() > 1 {
            created = Some(loaded.elapsed());
        }
        let ready = current.iter().filter(|p| is_ready(p)).count() as i32;
        if second_ready.is_none() && ready > 1 {
            second_ready = Some(loaded.elapsed());
        }
        if ready == n && d == n {
            break;
        }
        assert!(
            loaded.elapsed() < WAIT,
            "no scale-up to {n}: HPA wants {d}, {ready} ready pods\n{}",
            aim_testkit::events_of(&bed.admin, &bed.ns).await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let to_n = loaded.elapsed();
    // The service reports what the HPA decided.
    let svc = await_object(&bed.services, SERVICE, "status.runtime at N", WAIT, |s| {
        runtime(s).is_some_and(|r| r.desired_replicas == Some(n) && r.current_replicas == Some(n))
    })
    .await;
    let status_runtime = runtime(&svc).unwrap();
    assert_eq!(status_runtime.min_replicas, Some(1));
    assert_eq!(status_runtime.max_replicas, Some(4));
    // A decision up from 1, with the metric value behind it (KEDA names
    // the HPA's metric after the ScaledObject: s0-<namespace>-…-predictor).
    let ups = await_events(&bed.admin, &bed.ns, "ScaledUp", |m| {
        m.starts_with("desired replicas 1 → ") && m.contains("target 1 per pod")
    })
    .await;
    assert!(
        max_desired <= n,
        "the HPA overshot to {max_desired} for {n} running requests"
    );

    // The load stops: back to min.
    let stopped_at = Instant::now();
    stop(load);
    let (mut scaler_zero, mut decided_down) = (None, None);
    loop {
        if scaler_zero.is_none() && bed.scaler_value().await.is_ok_and(|v| v < 1.0) {
            scaler_zero = Some(stopped_at.elapsed());
        }
        let d = bed.desired().await.unwrap_or(0);
        if decided_down.is_none() && d < n {
            decided_down = Some(stopped_at.elapsed());
        }
        let count = predictor_pods(&bed.pods, &bed.isvc).await.len();
        if d == 1 && count == 1 {
            break;
        }
        assert!(
            stopped_at.elapsed() < WAIT,
            "no scale-down: HPA wants {d}, {count} pods\n{}",
            aim_testkit::events_of(&bed.admin, &bed.ns).await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let to_one = stopped_at.elapsed();
    await_object(
        &bed.services,
        SERVICE,
        "status.runtime back at 1",
        WAIT,
        |s| {
            runtime(s)
                .is_some_and(|r| r.desired_replicas == Some(1) && r.current_replicas == Some(1))
        },
    )
    .await;
    let downs = await_events(&bed.admin, &bed.ns, "ScaledDown", |m| {
        m.contains(" → 1: ") && m.contains("target 1 per pod")
    })
    .await;
    assert!(
        !downs.iter().any(|m| m.contains(" → 0")),
        "no decision below the minimum: {downs:?}"
    );

    let secs = |d: Option<Duration>| d.unwrap_or_default();
    let mut rows = bed.milestones.clone();
    rows.extend([
        (
            format!("load step ({CONCURRENCY} in flight) → metric ≥ 1 at the scaler"),
            secs(at_scaler),
        ),
        ("load step → HPA decides > 1".into(), secs(decided)),
        ("load step → new pod created".into(), secs(created)),
        ("load step → second pod Ready".into(), secs(second_ready)),
        (format!("load step → {n} pods Ready"), to_n),
        (
            "load stopped → metric < 1 at the scaler".into(),
            secs(scaler_zero),
        ),
        ("load stopped → HPA decides down".into(), secs(decided_down)),
        ("load stopped → 1 pod".into(), to_one),
    ]);
    Lags { rows }
        .print("tier-3 whole loop (AIMService → KServe → KEDA → HPA; pods, sidecars, scaler):");
    println!("  ScaledUp events:   {ups:?}");
    println!("  ScaledDown events: {downs:?}");
    bed.finish().await;
}

/// The cost guard with real KEDA: a namespace runtime config starts the
/// service paused (KServe creates the ScaledObject paused, KEDA makes no
/// HPA, load changes nothing); `aim resume` brings the HPA and scaling
/// back; `aim pause` removes the HPA again and holds the replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pause_and_resume_switch_real_kedas_hpa_off_and_on() {
    let config = "apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMRuntimeConfig\nmetadata: {name: default}\nspec:\n  autoscaling: {pausedByDefault: true}\n";
    let bed = Bed::start("tier3-pause", Some(config), false).await;
    let so = bed.scaled_object().await;
    assert_eq!(
        so.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("autoscaling.keda.sh/paused")),
        Some(&"true".to_string()),
        "KServe created the ScaledObject paused"
    );
    await_object(
        &bed.services,
        SERVICE,
        "HPAReady ScalingPaused, runtime paused",
        WAIT,
        |s| {
            let paused = runtime(s).and_then(|r| r.paused) == Some(true);
            let reason = s.status.as_ref().and_then(|st| {
                st.conditions
                    .iter()
                    .find(|c| c.type_ == "HPAReady")
                    .map(|c| c.reason.clone())
            });
            paused && reason.as_deref() == Some("ScalingPaused")
        },
    )
    .await;
    // One pod, Ready; load arrives, and nothing scales.
    let load = bed.load();
    let until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < until {
        assert_eq!(
            bed.desired().await,
            None,
            "KEDA made an HPA for a paused ScaledObject"
        );
        let d = bed.deployments.get(&bed.predictor).await.unwrap();
        assert_eq!(
            d.spec.and_then(|s| s.replicas),
            Some(1),
            "a paused service scaled"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        bed.scaler_value().await.is_ok_and(|v| v >= 1.0),
        "the load shows at the scaler"
    );

    // Resume: KEDA makes the HPA, and the waiting load scales the service.
    let resumed = Instant::now();
    aim_operator::cost_guard::set_paused(&bed.admin, &bed.ns, SERVICE, false)
        .await
        .unwrap();
    await_object(&bed.hpas, &bed.hpa_name, "the HPA back", WAIT, |_| true).await;
    let to_hpa = resumed.elapsed();
    bed.await_scale(CONCURRENCY as i32, "scaling after resume")
        .await;
    let to_n = resumed.elapsed();
    await_object(
        &bed.services,
        SERVICE,
        "runtime no longer paused",
        WAIT,
        |s| {
            runtime(s).is_some_and(|r| {
                r.paused != Some(true) && r.desired_replicas == Some(CONCURRENCY as i32)
            })
        },
    )
    .await;
    assert_ne!(
        bed.condition("HPAReady").await.map(|c| c.1).as_deref(),
        Some("ScalingPaused")
    );

    // Pause again mid-load: the HPA goes, the replicas stay.
    let paused = Instant::now();
    aim_operator::cost_guard::set_paused(&bed.admin, &bed.ns, SERVICE, true)
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while bed.desired().await.is_some() {
        assert!(
            Instant::now() < deadline,
            "KEDA kept the HPA of a paused ScaledObject"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let to_gone = paused.elapsed();
    stop(load);
    await_object(
        &bed.services,
        SERVICE,
        "HPAReady ScalingPaused again",
        WAIT,
        |s| {
            runtime(s).and_then(|r| r.paused) == Some(true)
                && s.status.as_ref().is_some_and(|st| {
                    st.conditions
                        .iter()
                        .any(|c| c.type_ == "HPAReady" && c.reason == "ScalingPaused")
                })
        },
    )
    .await;
    // No load and no HPA: the replicas stay where the pause found them.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let d = bed.deployments.get(&bed.predictor).await.unwrap();
    assert_eq!(
        d.spec.and_then(|s| s.replicas),
        Some(CONCURRENCY as i32),
        "paused: the replicas stay"
    );
    Lags {
        rows: vec![
            ("resume → KEDA's HPA exists".into(), to_hpa),
            (
                format!("resume → {CONCURRENCY} pods Ready under the waiting load"),
                to_n,
            ),
            ("pause → KEDA's HPA gone".into(), to_gone),
        ],
    }
    .print("tier-3 cost guard with real KEDA:");
    bed.finish().await;
}

/// A pod killed mid-load: the runner stops its simulator and sidecar, the
/// pod's series stops counting at the scaler once it goes stale
/// (`--freshness`, 15 s), and the Deployment's replacement joins the loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pod_killed_mid_load_stops_counting_and_is_replaced() {
    let bed = Bed::start("tier3-kill", None, true).await;
    let load = bed.load();
    let n = CONCURRENCY as i32;
    bed.await_scale(n, "scale-up before the kill").await;
    let victim = predictor_pods(&bed.pods, &bed.isvc).await[0].name_any();
    assert!(
        bed.query(Some(&victim)).await.is_ok(),
        "the victim's series counts"
    );

    let killed = Instant::now();
    bed.pods
        .delete(&victim, &kube::api::DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let mut gone_from_scaler = None;
    let mut replaced = None;
    let mut min_desired = n;
    let mut last_answer = Ok(0.0);
    loop {
        let answer = bed.query(Some(&victim)).await;
        if gone_from_scaler.is_none() && answer.is_err() {
            gone_from_scaler = Some(killed.elapsed());
        }
        if gone_from_scaler.is_none() {
            last_answer = answer.clone();
        }
        min_desired = min_desired.min(bed.desired().await.unwrap_or(0));
        if replaced.is_none() && bed.ready_pods().await == n {
            replaced = Some(killed.elapsed());
        }
        if gone_from_scaler.is_some() && replaced.is_some() {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "after the kill: victim's series {answer:?}, {} ready pods",
            bed.ready_pods().await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let gone = gone_from_scaler.unwrap();
    // The scaler keeps a silent series for --freshness (15 s), then drops it.
    assert!(
        gone <= bed.scaler_args.freshness + Duration::from_secs(5),
        "the dead pod still counted after {gone:?}"
    );
    assert_eq!(min_desired, n, "the kill never made the HPA scale down");
    stop(load);
    Lags {
        rows: vec![
            (
                "pod deleted → its series stops counting at the scaler".into(),
                gone,
            ),
            ("pod deleted → replacement Ready".into(), replaced.unwrap()),
        ],
    }
    .print("tier-3 pod killed mid-load:");
    println!("  the victim's series answered {last_answer:?} until it went stale");
    bed.finish().await;
}

/// The scaler restarted mid-load with an empty store: KEDA gets errors
/// (never a zero, never the partial sum of the pods that exported first)
/// for the scaler's `--warmup` (10 s, two of KServe's 5 s scrapes), so the
/// HPA holds its replicas until the sidecars have refilled the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scaler_restart_mid_load_never_answers_zero() {
    let mut bed = Bed::start("tier3-restart", None, true).await;
    let load = bed.load();
    let n = CONCURRENCY as i32;
    bed.await_scale(n, "scale-up before the restart").await;

    let restarted = Instant::now();
    bed.scaler.take().unwrap().shutdown().await;
    bed.scaler = Some(start_scaler(&bed.scaler_args).await);
    let mut answers: Vec<(Duration, Result<f64, String>)> = Vec::new();
    let mut min_desired = n;
    let mut back = None;
    while restarted.elapsed() < Duration::from_secs(30) {
        let answer = bed.scaler_value().await;
        if back.is_none() && answer.as_ref().is_ok_and(|v| *v >= n as f64 - 0.5) {
            back = Some(restarted.elapsed());
        }
        answers.push((restarted.elapsed(), answer));
        min_desired = min_desired.min(bed.desired().await.unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!("tier-3 scaler restart mid-load: what KEDA was answered");
    let mut last = String::new();
    for (at, answer) in &answers {
        let text = match answer {
            Ok(v) => format!("{v}"),
            Err(e) => format!("error: {}", e.chars().take(90).collect::<String>()),
        };
        if text != last {
            println!("  +{:>5.1} s  {text}", at.as_secs_f64());
            last = text;
        }
    }
    // During the warm-up only refusals; the first value is the whole sum,
    // not the part of it whose pods happened to export first.
    let warmup = bed.scaler_args.warmup;
    assert!(
        answers
            .iter()
            .filter(|(at, _)| *at < warmup)
            .all(|(_, a)| a.is_err()),
        "the scaler answered during its warm-up"
    );
    let first_value = answers.iter().find_map(|(_, a)| a.as_ref().ok());
    assert!(
        first_value.is_some_and(|v| *v >= n as f64 - 0.5),
        "the first value after the restart was partial: {first_value:?}"
    );
    assert!(
        !answers
            .iter()
            .any(|(_, a)| a.as_ref().is_ok_and(|v| *v == 0.0)),
        "the restarted scaler answered 0 under load"
    );
    assert_eq!(min_desired, n, "the restart made the HPA scale down");
    let back = back.expect("the sidecars refilled the scaler within 30 s");
    println!("  restart → full value again: {:.1} s", back.as_secs_f64());
    stop(load);
    bed.finish().await;
}
