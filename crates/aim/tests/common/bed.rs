//! The tier-3 bed: one namespace with an AIMService, the operator (as the
//! Helm chart's ServiceAccount), the pod runner (an `aim sim` per pod and
//! its OTel sidecar) and an in-process `aim scaler`, against the local
//! cluster's real KServe, KEDA and HPA controller; plus the loads and
//! waits the tier-3 tests share.
//!
//! Bed settings that make a loop take seconds rather than minutes (each
//! said where it is set): the HPA controller syncs every 5 s and KServe's
//! scale-down stabilisation is 10 s (the dev cluster), and the scaler's
//! `operationOverTime` window is 10 s (here; upstream 120 s).

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

pub const WAIT: Duration = Duration::from_secs(180);
pub const SERVICE: &str = "qwen-chat";
/// Requests kept in flight by the load: with the default metric (running
/// requests, target 1 per replica) the HPA wants this many replicas.
pub const CONCURRENCY: usize = 3;
/// Output tokens per request: a few seconds each on the simulator, so a
/// stopped load drains quickly.
pub const MAX_TOKENS: u32 = 150;

pub fn model_and_template() -> String {
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
pub fn seed_service_yaml() -> String {
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
pub async fn ready_template(client: &Client, ns: &str) {
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
pub async fn operator_client() -> Client {
    aim_testkit::install_chart().await;
    let info = aim_testkit::cluster().await;
    let kc = kube::config::Kubeconfig::read_from(&info.kubeconfig).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    config.auth_info.impersonate = Some("system:serviceaccount:aim-system:aim-operator".into());
    Client::try_from(config).unwrap()
}

pub fn dynamic(
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

pub fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub async fn predictor_pods(pods: &Api<Pod>, isvc: &str) -> Vec<Pod> {
    pods.list(&ListParams::default().labels(&format!("serving.kserve.io/inferenceservice={isvc}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

pub fn desired(h: &HorizontalPodAutoscaler) -> i32 {
    h.status.as_ref().map(|s| s.desired_replicas).unwrap_or(0)
}

pub fn runtime(svc: &AIMService) -> Option<aim_api::service::ServiceRuntimeStatus> {
    svc.status.as_ref()?.runtime.clone()
}

/// What the scaler answers KEDA for the ScaledObject's first trigger, through
/// KEDA's own gRPC calls.
pub async fn scaler_value(
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

/// What the test drives at the ready predictor pods, spread over them in
/// turn as a Service would.
#[derive(Clone, Debug)]
pub enum Load {
    /// `clients` closed-loop clients, each sending its next completion as
    /// soon as its last one ended: always that many requests in flight.
    Closed {
        clients: usize,
        prompt: String,
        max_tokens: u32,
    },
    /// One completion every `every`, whatever is in flight (open loop).
    Open {
        every: Duration,
        prompt: String,
        max_tokens: u32,
    },
    /// An open loop whose rate rises linearly from `from_rps` to `to_rps`
    /// over `over`, then stays there: evenly spaced arrivals at the rate
    /// of the moment.
    Ramp {
        from_rps: f64,
        to_rps: f64,
        over: Duration,
        prompt: String,
        max_tokens: u32,
    },
}

impl Load {
    /// The seed test's load: `CONCURRENCY` clients of `MAX_TOKENS`-token
    /// stories.
    pub fn seed() -> Load {
        Load::Closed {
            clients: CONCURRENCY,
            prompt: "Tell me a story.".into(),
            max_tokens: MAX_TOKENS,
        }
    }
}

/// The addresses of the ready pods a label selector picks.
async fn ready_ips(pods: &Api<Pod>, selector: &str) -> Vec<String> {
    pods.list(&ListParams::default().labels(selector))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(is_ready)
        .filter_map(|p| p.status?.pod_ip)
        .collect()
}

/// `ip:port` of the ready pods a label selector picks.
async fn ready_addresses(pods: &Api<Pod>, selector: &str, port: u16) -> Vec<String> {
    ready_ips(pods, selector)
        .await
        .into_iter()
        .map(|ip| format!("{ip}:{port}"))
        .collect()
}

/// One completion to `address` (`ip:port`), read to its end; false when it
/// could not be sent.
async fn complete(http: &reqwest::Client, address: &str, prompt: &str, max_tokens: u32) -> bool {
    let sent = http
        .post(format!("http://{address}/v1/completions"))
        .json(&json!({"model": "Qwen/Qwen3-32B", "prompt": prompt,
                      "max_tokens": max_tokens, "ignore_eos": true}))
        .send()
        .await;
    match sent {
        Ok(r) => {
            let _ = r.bytes().await;
            true
        }
        Err(_) => false,
    }
}

/// Starts `load`; [`stop`] ends it (requests already sent by an open loop
/// run to their end).
pub fn start_load(
    client: Client,
    ns: String,
    isvc: String,
    load: Load,
) -> Vec<tokio::task::JoinHandle<()>> {
    start_load_on(
        client,
        ns,
        format!("serving.kserve.io/inferenceservice={isvc}"),
        load,
    )
}

/// [`start_load`] at the ready pods of any label selector (a plain
/// Deployment's, say).
pub fn start_load_on(
    client: Client,
    ns: String,
    selector: String,
    load: Load,
) -> Vec<tokio::task::JoinHandle<()>> {
    start_load_at(client, ns, selector, 8000, load)
}

/// [`start_load_on`] at another port than vLLM's 8000 (KServe's
/// huggingface runtime listens on 8080).
pub fn start_load_at(
    client: Client,
    ns: String,
    selector: String,
    port: u16,
    load: Load,
) -> Vec<tokio::task::JoinHandle<()>> {
    let pods: Api<Pod> = Api::namespaced(client, &ns);
    match load {
        Load::Closed {
            clients,
            prompt,
            max_tokens,
        } => (0..clients)
            .map(|worker| {
                let pods = pods.clone();
                let selector = selector.clone();
                let prompt = prompt.clone();
                tokio::spawn(async move {
                    let http = reqwest::Client::new();
                    let mut n = worker;
                    loop {
                        let ready = ready_addresses(&pods, &selector, port).await;
                        if ready.is_empty() {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            continue;
                        }
                        let ip = &ready[n % ready.len()];
                        n += 1;
                        if !complete(&http, ip, &prompt, max_tokens).await {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                })
            })
            .collect(),
        Load::Ramp {
            from_rps,
            to_rps,
            over,
            prompt,
            max_tokens,
        } => vec![tokio::spawn(async move {
            let http = reqwest::Client::new();
            let started = Instant::now();
            let mut next = started;
            let mut n = 0usize;
            loop {
                tokio::time::sleep_until(next.into()).await;
                let progress = (started.elapsed().as_secs_f64() / over.as_secs_f64()).min(1.0);
                let rate = from_rps + (to_rps - from_rps) * progress;
                next += Duration::from_secs_f64(1.0 / rate.max(1e-3));
                let ready = ready_addresses(&pods, &selector, port).await;
                if ready.is_empty() {
                    continue;
                }
                let ip = ready[n % ready.len()].clone();
                n += 1;
                let http = http.clone();
                let prompt = prompt.clone();
                tokio::spawn(async move {
                    complete(&http, &ip, &prompt, max_tokens).await;
                });
            }
        })],
        Load::Open {
            every,
            prompt,
            max_tokens,
        } => vec![tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut ticker = tokio::time::interval(every);
            // A late tick is not made up for: the arrivals stay evenly spaced.
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n = 0usize;
            loop {
                ticker.tick().await;
                let ready = ready_addresses(&pods, &selector, port).await;
                if ready.is_empty() {
                    continue;
                }
                let ip = ready[n % ready.len()].clone();
                n += 1;
                let http = http.clone();
                let prompt = prompt.clone();
                tokio::spawn(async move {
                    complete(&http, &ip, &prompt, max_tokens).await;
                });
            }
        })],
    }
}

/// The ScaledUp/ScaledDown events of the service, oldest first.
pub async fn scale_events(client: &Client, ns: &str, reason: &str) -> Vec<String> {
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
pub async fn await_events(
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

pub struct Lags {
    pub rows: Vec<(String, Duration)>,
}

impl Lags {
    pub fn print(&self, title: &str) {
        println!("{title}");
        for (step, took) in &self.rows {
            println!("  {step:<58} {:>6.1} s", took.as_secs_f64());
        }
    }
}

/// What a bed runs: the service, what comes before it, and the simulators'
/// settings.
#[derive(Clone, Debug)]
pub struct BedConfig {
    /// Namespace prefix.
    pub prefix: String,
    /// The AIMService (named `SERVICE`, on the template of
    /// [`model_and_template`]).
    pub service_yaml: String,
    /// YAML applied before the service (e.g. a namespace AIMRuntimeConfig).
    pub runtime_config: Option<String>,
    /// Wait for the idle loop (an HPA reading the metric), which a paused
    /// service never reaches.
    pub idle: bool,
    /// The service's metric `query`: KServe's trigger is
    /// `sum(<metric>{namespace=…, deployment=…})`.
    pub metric: String,
    /// Extra `aim sim` arguments for every pod.
    pub sim_args: Vec<String>,
    /// The service scales on a Prometheus metric: KServe makes a
    /// `prometheus` trigger and no OpenTelemetry collector.
    pub prometheus: bool,
    /// Bind the scaler's and the operator's admin ports at the addresses
    /// of the chart's own scaler and operator pods (KWOK pods with
    /// nothing in them), so whatever scrapes those pods, as Prometheus
    /// does through the chart's ServiceMonitors, reaches the in-process
    /// components.
    pub admin_at_chart_pods: bool,
}

impl BedConfig {
    /// The seed service: min 1, max 4, aim's default metric (running
    /// requests), default simulators.
    pub fn seed(prefix: &str) -> BedConfig {
        BedConfig {
            prefix: prefix.into(),
            service_yaml: seed_service_yaml(),
            runtime_config: None,
            idle: true,
            metric: "vllm:num_requests_running".into(),
            sim_args: Vec::new(),
            prometheus: false,
            admin_at_chart_pods: false,
        }
    }
}

/// Everything one test runs: a namespace with the service, the operator,
/// the pod runner and the scaler, up to the idle loop (one Ready pod whose
/// sidecar feeds the scaler, the HPA reading through KEDA).
pub struct Bed {
    pub admin: Client,
    pub ns: String,
    pub isvc: String,
    pub predictor: String,
    pub hpa_name: String,
    /// The trigger's metric (the service's query).
    pub metric: String,
    pub scaler_address: std::net::SocketAddr,
    pub scaler_args: aim_scaler::ScalerArgs,
    pub scaler: Option<aim_scaler::Running>,
    pub scaled_objects: Api<DynamicObject>,
    pub hpas: Api<HorizontalPodAutoscaler>,
    pub pods: Api<Pod>,
    pub services: Api<AIMService>,
    pub deployments: Api<Deployment>,
    stop_operator: tokio::sync::oneshot::Sender<()>,
    operator: tokio::task::JoinHandle<anyhow::Result<()>>,
    runner: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// Setup milestones from the service's apply.
    pub milestones: Vec<(String, Duration)>,
    /// Held for the test's life: every test binds the bed's one scaler
    /// address, so they take turns.
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The bed's turn, for a test that binds the tier-3 cluster's scaler
/// address itself rather than through [`Bed`].
pub async fn take_turn() -> tokio::sync::MutexGuard<'static, ()> {
    TURN.lock().await
}

impl Bed {
    /// The seed service. `runtime_config`: YAML applied before the service
    /// (e.g. a namespace AIMRuntimeConfig). `idle`: wait for the idle loop
    /// (an HPA reading the metric), which a paused service never reaches.
    pub async fn start(prefix: &str, runtime_config: Option<&str>, idle: bool) -> Bed {
        Bed::start_with(BedConfig {
            runtime_config: runtime_config.map(str::to_string),
            idle,
            ..BedConfig::seed(prefix)
        })
        .await
    }

    pub async fn start_with(config: BedConfig) -> Bed {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let turn = TURN.lock().await;
        let info = cluster_with_kserve().await;
        let admin = info.client().await.unwrap();
        let ns = namespace(&admin, &config.prefix).await;

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
        let (scaler_admin, operator_admin) = if config.admin_at_chart_pods {
            aim_testkit::install_chart().await;
            (
                chart_pod_admin(&admin, "keda", "aim-scaler").await,
                chart_pod_admin(&admin, "aim-system", "aim-operator").await,
            )
        } else {
            let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
            (any, any)
        };
        let mut scaler_args = aim_scaler::ScalerArgs::defaults();
        scaler_args.listen = vec![info.scaler_address, own];
        scaler_args.admin_listen = scaler_admin;
        scaler_args.default_window = Duration::from_secs(10);
        let scaler = start_scaler(&scaler_args).await;

        // The operator under the chart's RBAC, telling KEDA to ask the
        // scaler at its loopback address (KEDA runs outside the cluster).
        let sa_client = operator_client().await;
        let operator_args = aim_operator::OperatorArgs {
            admin_address: operator_admin,
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

        // The pod runner for this namespace: simulators with a 2 s cold
        // start and the bed's extra arguments.
        let runner = tokio::spawn(aim_pods::runner::run(
            admin.clone(),
            aim_pods::runner::RunnerConfig {
                cold_start: Duration::from_secs(2),
                aim_binary: env!("CARGO_BIN_EXE_aim").into(),
                sim_args: config.sim_args.clone(),
                exporter_override: None,
                namespace: Some(ns.clone()),
            },
        ));

        apply_yaml(&admin, &ns, &model_and_template())
            .await
            .unwrap();
        ready_template(&admin, &ns).await;
        if let Some(yaml) = &config.runtime_config {
            apply_yaml(&admin, &ns, yaml).await.unwrap();
        }
        let applied = Instant::now();
        // `$NAMESPACE` in the service stands for the bed's namespace.
        let service_yaml = config.service_yaml.replace("$NAMESPACE", &ns);
        apply_yaml(&admin, &ns, &service_yaml).await.unwrap();

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
        let trigger = &scaled_object.data["spec"]["triggers"][0];
        if config.prometheus {
            assert_eq!(trigger["type"], "prometheus", "{trigger}");
        }
        let collectors = dynamic(
            &admin,
            &ns,
            "opentelemetry.io",
            "v1beta1",
            "OpenTelemetryCollector",
        );
        if !config.prometheus {
            await_object(
                &collectors,
                &predictor,
                "KServe's OpenTelemetryCollector",
                WAIT,
                |_| true,
            )
            .await;
            assert_eq!(trigger["type"], "external", "{trigger}");
            assert_eq!(trigger["metadata"]["scalerAddress"], own.to_string());
            assert_eq!(
                trigger["metadata"]["metricQuery"],
                format!(
                    "sum({}{{namespace=\"{ns}\", deployment=\"{predictor}\"}})",
                    config.metric
                )
            );
        }
        let bed = Bed {
            hpas: Api::namespaced(admin.clone(), &ns),
            pods: Api::namespaced(admin.clone(), &ns),
            services: Api::namespaced(admin.clone(), &ns),
            hpa_name: format!("keda-hpa-{predictor}"),
            metric: config.metric.clone(),
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
        if !config.idle {
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
    pub async fn await_idle_loop(&self) {
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

    pub async fn ready_pods(&self) -> i32 {
        predictor_pods(&self.pods, &self.isvc)
            .await
            .iter()
            .filter(|p| is_ready(p))
            .count() as i32
    }

    /// The HPA's desired replicas; None while there is no HPA.
    pub async fn desired(&self) -> Option<i32> {
        self.hpas
            .get_opt(&self.hpa_name)
            .await
            .unwrap()
            .map(|h| desired(&h))
    }

    pub async fn scaled_object(&self) -> DynamicObject {
        self.scaled_objects.get(&self.predictor).await.unwrap()
    }

    /// What the scaler answers KEDA for the ScaledObject's trigger.
    pub async fn scaler_value(&self) -> Result<f64, String> {
        self.query(None).await
    }

    /// The trigger's query, optionally narrowed to one pod's series.
    pub async fn query(&self, pod: Option<&str>) -> Result<f64, String> {
        let q = pod.map(|pod| {
            format!(
                "sum({}{{namespace=\"{}\", pod=\"{pod}\"}})",
                self.metric, self.ns
            )
        });
        self.ask(q.as_deref()).await
    }

    /// What the scaler answers for the trigger with `metricQuery` replaced
    /// by `query` (the trigger's own when None).
    pub async fn ask(&self, query: Option<&str>) -> Result<f64, String> {
        let mut so = self.scaled_object().await;
        if let Some(q) = query {
            so.data["spec"]["triggers"][0]["metadata"]["metricQuery"] = json!(q);
        }
        let mut grpc = ExternalScalerClient::connect(format!("http://{}", self.scaler_address))
            .await
            .map_err(|e| format!("connecting: {e}"))?;
        scaler_value(&mut grpc, &so).await
    }

    /// The seed's load ([`Load::seed`]).
    pub fn load(&self) -> Vec<tokio::task::JoinHandle<()>> {
        self.drive(Load::seed())
    }

    pub fn drive(&self, load: Load) -> Vec<tokio::task::JoinHandle<()>> {
        start_load(self.admin.clone(), self.ns.clone(), self.isvc.clone(), load)
    }

    /// Waits until the HPA wants `n` and `n` pods are Ready.
    pub async fn await_scale(&self, n: i32, what: &str) {
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

    pub async fn condition(&self, ty: &str) -> Option<(String, String)> {
        let svc = self.services.get(SERVICE).await.unwrap();
        svc.status?
            .conditions
            .iter()
            .find(|c| c.type_ == ty)
            .map(|c| (c.status.clone(), c.reason.clone()))
    }

    pub async fn finish(mut self) {
        aim_testkit::delete_namespace(&self.admin, &self.ns).await;
        self.runner.abort();
        let _ = self.stop_operator.send(());
        let _ = self.operator.await;
        if let Some(scaler) = self.scaler.take() {
            scaler.shutdown().await;
        }
    }
}

/// The admin address of the chart's pod of `app.kubernetes.io/name=name`
/// in `ns`: its IP and the container port named `admin` (the first pod by
/// name, once KWOK has given it an address).
pub async fn chart_pod_admin(client: &Client, ns: &str, name: &str) -> std::net::SocketAddr {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + WAIT;
    loop {
        let mut list = pods
            .list(&ListParams::default().labels(&format!("app.kubernetes.io/name={name}")))
            .await
            .unwrap()
            .items;
        list.sort_by_key(|p| p.metadata.name.clone());
        let found = list.iter().find_map(|p| {
            let ip = p.status.as_ref()?.pod_ip.as_ref()?.parse().ok()?;
            let port = p
                .spec
                .as_ref()?
                .containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find(|port| port.name.as_deref() == Some("admin"))?
                .container_port;
            Some(std::net::SocketAddr::new(ip, port as u16))
        });
        if let Some(address) = found {
            return address;
        }
        assert!(
            Instant::now() < deadline,
            "the chart's {name} pod in {ns} got no address"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Binds the scaler, retrying while a previous one's socket lets go.
pub async fn start_scaler(args: &aim_scaler::ScalerArgs) -> aim_scaler::Running {
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

pub fn stop(load: Vec<tokio::task::JoinHandle<()>>) {
    for task in load {
        task.abort();
    }
}
