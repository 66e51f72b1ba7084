//! `aim dev demo`: the main job. The whole autoscaling loop on this machine:
//! the local cluster with real KServe, KEDA and the HPA controller, the
//! operator, the scaler and the pod runner in this process, the seed's
//! autoscaling `qwen-chat` service, a load step, the service scaling 1 → N
//! and back to 1, live figures, and a chart of the run.
//!
//! It stops what it started: the in-process parts always, and the local
//! cluster too unless it was already running when the demo began (then it
//! is someone else's and stays), also on Ctrl-C. `--keep-running` holds
//! everything until Ctrl-C first.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aim_api::AIMService;
use aim_devcluster::{CacheDirs, ClusterOptions};
use anyhow::Context;
use clap::Parser;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::pinned_kind;

/// The local cluster the demo runs on.
/// The local cluster the demo uses unless told otherwise (`aim dev cluster`'s default).
const CLUSTER: &str = "dev";
const DEMO_NAMESPACE: &str = "ml-team";
const SERVICE: &str = "qwen-chat";
const MANAGER: &str = "aim-demo";
/// The aim-engine profile every simulator runs, and the lab replays.
const SIM_PROFILE: &str = "qwen3-32b-2xh100";
/// The scaler's averaging window for the demo (120 s by default).
const SCALER_WINDOW: Duration = Duration::from_secs(10);
/// How long the live view waits for the scale-down after the load.
const WATCH_AFTER_LOAD_S: f64 = 300.0;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Which local cluster to run on (`aim dev cluster --name`): a second
    /// name runs beside another demo or a test bed on its own ports.
    #[arg(long, value_name = "NAME", default_value = CLUSTER)]
    cluster: String,
    /// How long the load step lasts.
    #[arg(long, default_value = "90s", value_parser = seconds)]
    load_for: f64,
    /// Clients of the closed-loop load step. Each keeps one request in
    /// flight, and the service scales on running requests with a target of
    /// one per replica, so this is the replica count the load asks for
    /// (up to maxReplicas, 4).
    #[arg(long, default_value_t = 3, conflicts_with = "rate")]
    concurrency: usize,
    /// An open-loop load step instead: Poisson arrivals from `aim load`'s
    /// rate schedule (e.g. "0s:0.5" or "0s:0.3,30s:0.8"), cut at --load-for.
    /// The lab then replays the same arrivals through the same
    /// configuration and prints its prediction beside the live figures.
    #[arg(long, value_name = "SCHEDULE", value_parser = rate_schedule)]
    rate: Option<String>,
    /// Seed of the open-loop arrivals.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Model-load time of each new replica (the simulator's startup delay).
    #[arg(long, default_value = "10s", value_parser = seconds)]
    cold_start: f64,
    /// Where to save the chart of the run (SVG); default: the cache's demo folder.
    #[arg(long)]
    chart: Option<PathBuf>,
    /// Keep everything running after the scale-down, until Ctrl-C. Without
    /// it (and after Ctrl-C) the demo stops the local cluster it started; a
    /// cluster that was already running is left as it was.
    #[arg(long)]
    keep_running: bool,
    /// Admin address of the in-process operator.
    #[arg(long, default_value = "127.0.0.1:18081")]
    admin_address: std::net::SocketAddr,
    /// Deploy the service with this scaling policy (an aim extension, see
    /// docs/policies.md): passthrough, queue, slo, cost, predictive or
    /// stable-panic. The operator then writes the ScaledObject itself.
    #[arg(long, value_parser = policy_name)]
    policy: Option<String>,
    /// A parameter of --policy, KEY=VALUE (repeat for several), e.g.
    /// --param headroom=0.3 --param scaleDownDelay=30s.
    #[arg(long = "param", value_name = "KEY=VALUE", value_parser = key_value, requires = "policy")]
    params: Vec<(String, String)>,
    /// Where the service's metric comes from. `opentelemetry` (the seed's
    /// way): KServe's sidecar pushes to aim scaler, KEDA's external trigger
    /// asks it. `prometheus` (aim extension): the bed runs a real
    /// Prometheus that scrapes the pods through a PodMonitor, and the
    /// service's metric is the Prometheus backend, so KEDA's own
    /// prometheus scaler queries it.
    #[arg(long, value_enum, default_value_t = Backend::Opentelemetry, conflicts_with = "policy")]
    backend: Backend,
    /// With --backend prometheus: the PodMonitor's scrape interval (the
    /// runbook's 15 s by default; KServe's sidecar scrapes every 5 s).
    #[arg(long, default_value = "15s", value_parser = seconds)]
    scrape_interval: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Backend {
    Opentelemetry,
    Prometheus,
}

/// With --backend prometheus: the service's metric, the seed's default
/// (running requests, one per replica) as PromQL over the demo's pods.
fn prometheus_query() -> String {
    format!("sum(vllm:num_requests_running{{namespace=\"{DEMO_NAMESPACE}\"}})")
}

/// With --backend prometheus: the PodMonitor that has the bed's
/// Prometheus scrape the service's pods (the simulators' vLLM metrics on
/// 8000), as a user of the Prometheus backend writes one.
fn pod_monitor(isvc: &str, scrape_interval_s: f64) -> String {
    format!(
        "apiVersion: monitoring.coreos.com/v1\nkind: PodMonitor\nmetadata: {{name: {SERVICE}}}\nspec:\n  selector:\n    matchLabels: {{{label}: {isvc}}}\n  podMetricsEndpoints:\n  - targetPort: 8000\n    path: /metrics\n    interval: {interval}\n",
        label = aim_pods::pod::ISVC_LABEL,
        interval = prometheus_duration(scrape_interval_s),
    )
}

/// A duration as Prometheus writes one: whole units only, so a fraction of
/// a second goes in milliseconds.
fn prometheus_duration(seconds: f64) -> String {
    let ms = (seconds * 1000.0).round() as u64;
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

fn policy_name(text: &str) -> Result<String, String> {
    aim_policy::lookup(text)
        .map(|p| p.name().to_string())
        .map_err(|e| e.to_string())
}

fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("{text:?} is not KEY=VALUE, e.g. headroom=0.3")),
    }
}

const SEED_SERVICE: &str = include_str!("../../../examples/seeds/aim-basic-autoscaling.yaml");

/// The seed's service, with the policy or the backend asked for on the
/// command line; `prometheus_url` is the bed's server (a placeholder when
/// only checking). The translation the operator runs checks it before
/// anything starts.
fn service_manifest(args: &DemoArgs, prometheus_url: &str) -> anyhow::Result<String> {
    if args.policy.is_none() && args.backend == Backend::Opentelemetry {
        return Ok(SEED_SERVICE.to_string());
    }
    let mut svc: AIMService = serde_yaml::from_str(SEED_SERVICE)?;
    let scaling = svc.spec.auto_scaling.get_or_insert_with(Default::default);
    if let Some(policy) = &args.policy {
        scaling.policy = Some(serde_json::from_value(serde_json::json!({
            "name": policy,
            "params": args.params.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
        }))?);
    }
    if args.backend == Backend::Prometheus {
        // The namespace goes into the manifest too: the lab labels its
        // series with it, and the query selects on it.
        svc.metadata.namespace = Some(DEMO_NAMESPACE.into());
        scaling.metrics = vec![serde_json::from_value(serde_json::json!({
            "type": "External",
            "external": {
                "metric": {
                    "backend": "prometheus",
                    "serverAddress": prometheus_url,
                    "query": prometheus_query(),
                },
                "target": {"type": "Value", "value": "1"},
            },
        }))?];
    }
    aim_scaling::plan(&aim_scaling::ServiceScaling {
        spec: &svc.spec,
        namespace: DEMO_NAMESPACE,
        isvc_name: SERVICE,
        paused: false,
        kserve: &aim_scaling::KServeAutoscaler::default(),
        // The demo runs no gateway.
        routed: false,
    })
    .map_err(|e| anyhow::anyhow!("--policy/--param: {e}"))?;
    Ok(serde_yaml::to_string(&svc)?)
}

/// Stands for the bed's Prometheus before the cluster is up.
const PLACEHOLDER_PROMETHEUS: &str = "http://127.0.0.1:9090";

fn seconds(text: &str) -> Result<f64, String> {
    aim_policy::parse_seconds(text)
        .filter(|s| *s > 0.0)
        .ok_or_else(|| format!("{text:?} is not a duration like 90s or 2m"))
}

/// Checks `--rate` before anything is brought up; the text goes on to
/// `aim load` unchanged.
fn rate_schedule(text: &str) -> Result<String, String> {
    aim_load::schedule::RateSchedule::parse(text)?;
    Ok(text.to_string())
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    // A bad policy is refused before the cluster comes up.
    service_manifest(&args, PLACEHOLDER_PROMETHEUS)?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(demo(args))
}

/// One row of the live view, kept for the chart.
#[derive(Clone, Debug, Default)]
struct Row {
    t: f64,
    current: i32,
    desired: i32,
    ready_pods: usize,
    /// Pods that exist and are not being deleted.
    pods: usize,
    /// status.desiredReplicas of the HPA itself.
    hpa_desired: i32,
    running: f64,
    waiting: f64,
    load_rps: f64,
    ttft_p50_ms: Option<f64>,
    ttft_p99_ms: Option<f64>,
}

/// Runs the demo, then stops what it started, whether it ended, failed or
/// was interrupted.
async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let cache = CacheDirs::discover()?;
    let cluster = args.cluster.clone();
    // How a shell names this cluster: `--name` only when it is not the default.
    let name_flag = if cluster == CLUSTER {
        String::new()
    } else {
        format!(" --name {cluster}")
    };
    let already_up = matches!(
        aim_devcluster::status(&cache, &cluster).await,
        Ok(Some(status)) if status.running
    );
    // The in-process operator listens for Ctrl-C too, and a listener turns
    // off the default exit on SIGINT: without this the demo would go on.
    let outcome = tokio::select! {
        outcome = live(args, cache.clone()) => outcome,
        _ = tokio::signal::ctrl_c() => {
            println!();
            println!("==> interrupted");
            Ok(())
        }
    };
    println!();
    if already_up {
        println!(
            "==> the local cluster '{cluster}' was running before the demo and stays up (namespace {DEMO_NAMESPACE} holds the service); stop it with `aim dev cluster down{name_flag}`"
        );
    } else {
        println!(
            "==> stopping the local cluster the demo started (aim dev cluster down{name_flag})"
        );
        let down_cache = cache.clone();
        let down_name = cluster.clone();
        match tokio::task::spawn_blocking(move || aim_devcluster::down(&down_cache, &down_name))
            .await
        {
            Ok(Ok(_)) => println!(
                "    stopped; `aim dev cluster up{name_flag}` before the demo keeps one up"
            ),
            Ok(Err(e)) => {
                println!("    could not stop it ({e}); run `aim dev cluster down{name_flag}`")
            }
            Err(e) => {
                println!("    could not stop it ({e}); run `aim dev cluster down{name_flag}`")
            }
        }
    }
    outcome
}

async fn live(args: DemoArgs, cache: CacheDirs) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut opts = ClusterOptions::new(&args.cluster, cache.clone())
        .with_keda()
        .with_kserve();
    if args.backend == Backend::Prometheus {
        opts = opts.with_prometheus(aim_devcluster::PrometheusOptions::new(
            std::env::current_exe().context("locating the aim binary")?,
        ));
    }
    opts.extra_manifests = vec![("aim CRDs".to_string(), aim_api::all_crds_yaml())];
    println!(
        "==> local cluster with KServe, KEDA and the OpenTelemetry operator{}",
        if args.backend == Backend::Prometheus {
            ", Prometheus and prometheus-operator"
        } else {
            ""
        }
    );
    let info = aim_devcluster::up(&opts)
        .await
        .context("bringing the cluster up")?;
    let prometheus_url = match args.backend {
        Backend::Prometheus => info
            .prometheus_url
            .clone()
            .context("the cluster came up without the Prometheus it was asked for")?,
        Backend::Opentelemetry => PLACEHOLDER_PROMETHEUS.to_string(),
    };
    println!(
        "    {} (KUBECONFIG={})",
        info.server,
        info.kubeconfig.display()
    );
    let client = info.client().await?;

    // The demo's shortenings, said where they are made: the bed's HPA syncs
    // every 5 s and KServe's scale-down stabilisation is 10 s (upstream 15 s
    // and 300 s), and the scaler averages over 10 s (upstream 120 s).
    println!(
        "==> aim scaler: OTLP from the sidecars on {}, KEDA's queries on a port of this run's own (10 s averaging window for the demo, 120 s by default)",
        info.scaler_address
    );
    // KEDA is told a port of this run's own: it keeps one gRPC connection
    // per scaler address, and a ScaledObject built while its connection to
    // a stopped scaler (a previous run's) is in backoff gets an HPA without
    // the metric, which KEDA does not rebuild.
    let keda_address = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mut scaler_args = aim_scaler::ScalerArgs::defaults();
    scaler_args.listen = vec![info.scaler_address, keda_address];
    scaler_args.admin_listen = "127.0.0.1:0".parse()?;
    scaler_args.default_window = SCALER_WINDOW;
    let scaler = aim_scaler::start(&scaler_args)
        .await
        .with_context(|| format!("starting the scaler at {}", info.scaler_address))?;

    println!(
        "==> operator (in this process; admin on http://{})",
        args.admin_address
    );
    let operator_args = aim_operator::OperatorArgs {
        admin_address: args.admin_address,
        namespace: "aim-system".into(),
        no_leader_election: true,
        identity: Some(format!("aim-demo-{}", std::process::id())),
        scaler_address: keda_address.to_string(),
    };
    // The operator gets a client of its own, as a separate process would.
    let operator_client = info.client().await?;
    let operator = tokio::spawn(aim_operator::run_with(
        operator_client,
        operator_args,
        async {
            let _ = tokio::signal::ctrl_c().await;
        },
    ));

    println!(
        "==> pod runner: an `aim sim` per inference pod, {} s cold start, and the OTel sidecar KServe asked for",
        args.cold_start
    );
    let runner = tokio::spawn(aim_pods::runner::run(
        client.clone(),
        aim_pods::runner::RunnerConfig {
            cold_start: Duration::from_secs_f64(args.cold_start),
            aim_binary: std::env::current_exe().context("locating the aim binary")?,
            sim_args: vec![format!("--profile={SIM_PROFILE}")],
            exporter_override: None,
            namespace: Some(DEMO_NAMESPACE.into()),
        },
    ));

    println!(
        "==> namespace {DEMO_NAMESPACE}, the model and its template, then examples/seeds/aim-basic-autoscaling.yaml (min 1, max 4; running requests, avg, target 1)"
    );
    apply_all(
        &client,
        None,
        &format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {DEMO_NAMESPACE}}}\n"),
    )
    .await?;
    apply_all(
        &client,
        Some(DEMO_NAMESPACE),
        include_str!("../../../examples/demo/qwen-model-and-template.yaml"),
    )
    .await?;
    freeze_template_as_discovered(&client).await?;
    if let Some(policy) = &args.policy {
        println!(
            "    with the scaling policy {policy} {:?} (the operator writes the ScaledObject)",
            args.params
        );
    }
    let isvc = aim_rules::naming::isvc_name(SERVICE, DEMO_NAMESPACE)?;
    if args.backend == Backend::Prometheus {
        println!(
            "    on the Prometheus backend (aim extension): {} at {prometheus_url}, target 1 per replica; a PodMonitor scrapes the pods every {} s",
            prometheus_query(),
            args.scrape_interval
        );
        apply_all(
            &client,
            Some(DEMO_NAMESPACE),
            &pod_monitor(&isvc, args.scrape_interval),
        )
        .await?;
    }
    apply_all(
        &client,
        Some(DEMO_NAMESPACE),
        &service_manifest(&args, &prometheus_url)?,
    )
    .await?;

    let services: Api<AIMService> = Api::namespaced(client.clone(), DEMO_NAMESPACE);
    let pods: Api<Pod> = Api::namespaced(client.clone(), DEMO_NAMESPACE);
    println!();
    println!("kubectl -n {DEMO_NAMESPACE} get aimservice {SERVICE}");
    let mut last = String::new();
    let waited = Instant::now();
    loop {
        if operator.is_finished() || runner.is_finished() {
            return Err(stopped(operator, runner).await);
        }
        if let Some(svc) = services.get_opt(SERVICE).await? {
            let st = svc.status.clone().unwrap_or_default();
            let phase = st.status.map(|p| format!("{p:?}")).unwrap_or_default();
            let row = format!(
                "  {:<10} model {:<16} template {:<20} replicas {}",
                phase,
                st.resolved_model.and_then(|r| r.name).unwrap_or_default(),
                st.resolved_template
                    .and_then(|r| r.name)
                    .unwrap_or_default(),
                st.runtime.and_then(|r| r.replicas).unwrap_or_default()
            );
            if row != last {
                println!("{row}");
                let reasons: BTreeMap<String, String> = st
                    .conditions
                    .iter()
                    .filter(|c| c.status != "True")
                    .map(|c| (c.type_.clone(), format!("{}: {}", c.reason, c.message)))
                    .collect();
                for (ty, why) in reasons {
                    println!("      {ty} {why}");
                }
                last = row;
            }
            if phase == "Running" {
                break;
            }
        }
        anyhow::ensure!(
            waited.elapsed() < Duration::from_secs(300),
            "the service did not reach Running in 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // A re-run finds the service as the last run left it: let it settle at
    // one Ready replica first, so the figures start from the load step.
    // The pod runner re-serves a previous run's Ready pod from scratch (it
    // marks it unready until its new simulator answers), so one Ready pod
    // counts only once it has stayed so for a few seconds.
    let settling = Instant::now();
    let mut steady_since: Option<Instant> = None;
    loop {
        let desired = services
            .get(SERVICE)
            .await?
            .status
            .and_then(|s| s.runtime)
            .and_then(|r| r.desired_replicas)
            .unwrap_or(0);
        let listed = pods_of(&pods, &isvc).await?;
        let ready = listed.iter().filter(|p| is_ready(p)).count();
        if desired <= 1 && ready == 1 && listed.len() == 1 {
            let since = *steady_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= Duration::from_secs(5) {
                break;
            }
        } else {
            steady_since = None;
        }
        if settling.elapsed() > Duration::from_secs(10)
            && settling.elapsed().as_secs().is_multiple_of(10)
        {
            println!("    waiting for one Ready replica (desired {desired}, ready {ready})");
        }
        anyhow::ensure!(
            settling.elapsed() < Duration::from_secs(300),
            "the service did not settle at one Ready replica in 5 minutes"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    println!();
    let shape = match &args.rate {
        Some(rate) => {
            println!(
                "==> load step: open loop, --rate {rate:?} (Poisson, seed {}) for {} s through Service {isvc}-predictor (aim load), then none",
                args.seed, args.load_for
            );
            vec![
                "--rate".to_string(),
                rate.clone(),
                "--seed".into(),
                args.seed.to_string(),
            ]
        }
        None => {
            println!(
                "==> load step: {} clients for {} s through Service {isvc}-predictor (aim load), then none",
                args.concurrency, args.load_for
            );
            vec!["--concurrency".to_string(), args.concurrency.to_string()]
        }
    };
    let load_args = LoadCli::try_parse_from(
        [
            "load".to_string(),
            "--service".into(),
            format!("{isvc}-predictor"),
            "--namespace".into(),
            DEMO_NAMESPACE.into(),
            "--duration".into(),
            format!("{}s", args.load_for),
            "--output-tokens".into(),
            "200".into(),
            "--quiet".into(),
        ]
        .into_iter()
        .chain(shape),
    )?
    .load;
    let plan = load_args.plan()?;
    // Open loop: the exact arrivals `aim load` sends, for the lab to replay.
    let arrivals = plan.shape.arrivals(plan.seed)?;
    let latest: Arc<Mutex<Option<aim_load::stats::Sample>>> = Arc::new(Mutex::new(None));
    let observed = latest.clone();
    let observer: aim_load::SampleObserver = Arc::new(move |s: &aim_load::stats::Sample| {
        *observed.lock().unwrap_or_else(|p| p.into_inner()) = Some(s.clone());
    });
    let load_client = client.clone();
    let load = tokio::spawn(async move {
        aim_load::execute_observed(
            &plan,
            Some(load_client),
            std::future::pending(),
            Some(observer),
        )
        .await
    });

    let hpa_name = format!("keda-hpa-{isvc}-predictor");
    let hpas: Api<k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler> =
        Api::namespaced(client.clone(), DEMO_NAMESPACE);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let predictor = format!("{isvc}-predictor");
    let start = Instant::now();
    let mut rows: Vec<Row> = Vec::new();
    let mut first_up: Option<f64> = None;
    let mut peak = 1;
    let mut peak_at: Option<f64> = None;
    let mut back_at_one: Option<f64> = None;
    println!(
        "{:>6}  {:>9}  {:>10}  {:>7}  {:>7}  {:>8}  {:>14}  {:>3}  {}",
        "t (s)",
        "replicas",
        "ready pods",
        "running",
        "waiting",
        "load r/s",
        "TTFT p50/p99",
        "HPA",
        if args.policy.is_some() {
            "scaler asks"
        } else {
            ""
        }
    );
    loop {
        let t = start.elapsed().as_secs_f64();
        let svc = services.get(SERVICE).await?;
        let runtime = svc.status.and_then(|s| s.runtime).unwrap_or_default();
        // A pod being deleted is out of its Service's endpoints and its
        // simulator is stopped: it counts neither as Ready nor as billed.
        let existing: Vec<Pod> = pods_of(&pods, &isvc)
            .await?
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        let pod_count = existing.len();
        let ready: Vec<String> = existing
            .into_iter()
            .filter(is_ready)
            .filter_map(|p| p.status?.pod_ip)
            .collect();
        let (running, waiting) = queue_of(&http, &ready).await;
        let sample = latest.lock().unwrap_or_else(|p| p.into_inner()).clone();
        // An open loop's last request may be answered before --load-for
        // ends; the step is over when both have passed.
        let load_done = load.is_finished() && t >= args.load_for;
        // The HPA's own desired count, without the operator's status
        // propagation, for the comparison with the lab.
        let hpa_desired = hpas
            .get_opt(&hpa_name)
            .await?
            .and_then(|h| h.status)
            .map_or(0, |s| s.desired_replicas);
        let row = Row {
            t,
            current: runtime.current_replicas.unwrap_or(0),
            desired: runtime.desired_replicas.unwrap_or(0),
            hpa_desired,
            ready_pods: ready.len(),
            pods: pod_count,
            running,
            waiting,
            load_rps: if load_done {
                0.0
            } else {
                sample
                    .as_ref()
                    .map(|s| s.per_second(s.counts.completed))
                    .unwrap_or(0.0)
            },
            ttft_p50_ms: sample
                .as_ref()
                .and_then(|s| s.ttft_p50_ms)
                .filter(|_| !load_done),
            ttft_p99_ms: sample
                .as_ref()
                .and_then(|s| s.ttft_p99_ms)
                .filter(|_| !load_done),
        };
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
        // What the policy asks for, from the scaler's last answer.
        let asks = if args.policy.is_some() {
            scaler
                .state
                .decisions()
                .into_iter()
                .find(|d| d.namespace == DEMO_NAMESPACE && d.scaledobject == predictor)
                .map(|d| {
                    let replicas = aim_policy::replicas_asked(d.value, d.target);
                    match d.mode {
                        Some(mode) => format!("{replicas} ({mode})"),
                        None => format!("{replicas}"),
                    }
                })
                .unwrap_or_default()
        } else {
            String::new()
        };
        println!(
            "{:>6.0}  {:>9}  {:>10}  {:>7.0}  {:>7.0}  {:>8.1}  {:>14}  {:>3}  {asks}",
            t,
            format!("{}/{}", row.current, row.desired),
            row.ready_pods,
            row.running,
            row.waiting,
            row.load_rps,
            format!("{}/{} ms", ms(row.ttft_p50_ms), ms(row.ttft_p99_ms)),
            row.hpa_desired,
        );
        if first_up.is_none() && row.desired > 1 {
            first_up = Some(t);
        }
        if row.ready_pods > peak {
            peak = row.ready_pods;
            peak_at = Some(t);
        }
        // The same "back at one" as the lab comparison's (prediction::episode):
        // a pod still starting counts, and so does the HPA's own count. The
        // service's status is shown but not waited for: it follows the HPA
        // and must not hold up a measurement of the HPA.
        let at_one =
            load_done && peak > 1 && row.hpa_desired == 1 && row.ready_pods == 1 && row.pods == 1;
        rows.push(row);
        if at_one {
            back_at_one = Some(t);
            break;
        }
        if t > args.load_for + WATCH_AFTER_LOAD_S {
            println!("    (stopping the view: no scale-down 5 minutes after the load)");
            break;
        }
        if operator.is_finished() || runner.is_finished() {
            return Err(stopped(operator, runner).await);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    let report = load.await??;
    println!();
    println!("==> what happened");
    let say = |what: &str, at: Option<f64>| match at {
        Some(t) => println!("    {what:<48} {t:>6.0} s"),
        None => println!("    {what:<48} {:>6}", "never"),
    };
    say("load step → first scale-up decision", first_up);
    say(&format!("load step → {peak} replicas Ready"), peak_at);
    say(
        &format!("load stopped ({} s) → back to 1 replica", args.load_for),
        back_at_one,
    );
    let s = &report.summary;
    let errors = if s.counts.errors.is_empty() {
        "no errors".to_string()
    } else {
        s.counts
            .errors
            .iter()
            .map(|(kind, n)| format!("{n} {kind}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "    requests: {} completed ({errors}); TTFT p50 {} ms, p99 {} ms",
        s.counts.completed,
        s.ttft.p50_ms.map_or("-".into(), |v| format!("{v:.0}")),
        s.ttft.p99_ms.map_or("-".into(), |v| format!("{v:.0}")),
    );
    let chart = match args.chart.clone() {
        Some(p) => p,
        None => {
            let dir = cache.root.join("demo");
            std::fs::create_dir_all(&dir)?;
            dir.join(format!(
                "run-{}.svg",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_secs()
            ))
        }
    };
    let prediction = match &arrivals {
        Some(arrivals) => {
            println!();
            println!(
                "==> the lab's prediction of this run: the same {} arrivals, AIMService, HPA behaviour, {} s HPA sync, scrape interval and {} s scaler window, on virtual time",
                arrivals.len(),
                aim_devcluster::HPA_SYNC_PERIOD_SECONDS,
                SCALER_WINDOW.as_secs()
            );
            // A prediction that cannot be made costs only itself: the live
            // figures above and the chart below stand.
            let predicted = async {
                let live_loop = live_loop(&client, &isvc, &args, &prometheus_url).await?;
                let (lab, run) = crate::prediction::predict_phases(
                    &live_loop,
                    arrivals,
                    crate::prediction::PHASE_DRAWS,
                )?;
                let samples: Vec<crate::prediction::Sample> = rows
                    .iter()
                    .map(|r| crate::prediction::Sample {
                        t: r.t,
                        pods: r.pods as u32,
                        ready: r.ready_pods as u32,
                        desired: r.hpa_desired.max(0) as u32,
                    })
                    .collect();
                let mut live = crate::prediction::episode(&samples, args.load_for);
                live.completed = s.counts.completed;
                live.failed = s.counts.errors.values().sum();
                live.ttft_p50_ms = s.ttft.p50_ms;
                live.ttft_p99_ms = s.ttft.p99_ms;
                print!("{}", crate::prediction::side_by_side(&lab, &live));
                // The manifest the lab ran, where a user can run it again:
                // the seed's file, or the seed with --policy written out.
                let manifest_file = if live_loop.manifest != SEED_SERVICE {
                    let dir = cache.root.join("demo");
                    let file = dir.join("service.yaml");
                    std::fs::create_dir_all(&dir)
                        .and_then(|()| std::fs::write(&file, &live_loop.manifest))
                        .with_context(|| format!("writing {}", file.display()))?;
                    file
                } else {
                    std::path::PathBuf::from("examples/seeds/aim-basic-autoscaling.yaml")
                };
                println!(
                    "    the lab runs {} times, with the first scrape and the first HPA sync at phases spread over their periods (live they are whatever the processes' start made them). Live replica figures are read every 2 s (desired from the HPA's status); the lab's every 1 s. The aligned case from the command line: aim lab run -f {} --profile {SIM_PROFILE} --cold-start {} --cold-start-jitter 0 --hpa-sync {} --scrape-interval {} --window {} --scale-down-window {} --drain-grace 0 --router round-robin (on a trace of these arrivals)",
                    crate::prediction::PHASE_DRAWS,
                    manifest_file.display(),
                    live_loop.cold_start_s,
                    live_loop.hpa_sync_s,
                    live_loop.scrape_interval_s,
                    live_loop.scaler_window_s,
                    live_loop.behavior.scale_down.stabilization_window_seconds
                );
                anyhow::Ok(run)
            }
            .await;
            match predicted {
                Ok(run) => Some(run),
                Err(e) => {
                    println!("    no lab prediction: {e:#}");
                    None
                }
            }
        }
        None => None,
    };
    std::fs::write(&chart, chart_of(&rows, prediction.as_ref(), args.load_for))
        .with_context(|| format!("writing the chart to {}", chart.display()))?;
    println!("    chart of the run: {}", chart.display());

    if args.keep_running {
        println!();
        println!(
            "Everything keeps running until Ctrl-C (then the demo stops what it started). From another shell:"
        );
        let name_flag = if args.cluster == CLUSTER {
            String::new()
        } else {
            format!(" --name {}", args.cluster)
        };
        println!("  eval \"$(aim dev cluster env{name_flag})\"");
        println!("  kubectl -n {DEMO_NAMESPACE} get aimsvc,isvc,scaledobject,hpa,pods");
        println!("  aim pause {DEMO_NAMESPACE}/{SERVICE}   # the cost guard; aim resume to undo");
        let _ = tokio::signal::ctrl_c().await;
    }
    scaler.shutdown().await;
    runner.abort();
    // Its watches would only complain while the cluster is taken down.
    operator.abort();
    Ok(())
}

/// Why the in-process operator or pod runner ended early: its error, or
/// that it returned (a watch that ended), so the demo's failure names it.
async fn stopped(
    operator: tokio::task::JoinHandle<anyhow::Result<()>>,
    runner: tokio::task::JoinHandle<anyhow::Result<()>>,
) -> anyhow::Error {
    let (name, task, other) = if operator.is_finished() {
        ("the operator", operator, runner)
    } else {
        ("the pod runner", runner, operator)
    };
    other.abort();
    match task.await {
        Ok(Ok(())) => anyhow::anyhow!("{name} stopped early without an error"),
        Ok(Err(e)) => e.context(format!("{name} stopped")),
        Err(e) => anyhow::anyhow!("{name} stopped: {e}"),
    }
}

/// The live loop's settings, read from the cluster where they live: the
/// HPA KEDA made (its behaviour, as KServe's autoscaler config set it) and
/// the scrape interval, from the OpenTelemetryCollector the sidecars
/// follow or, on the Prometheus backend, from the PodMonitor.
async fn live_loop(
    client: &kube::Client,
    isvc: &str,
    args: &DemoArgs,
    prometheus_url: &str,
) -> anyhow::Result<crate::prediction::LiveLoop> {
    use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
    let hpa_name = format!("keda-hpa-{isvc}-predictor");
    let hpa = Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), DEMO_NAMESPACE)
        .get(&hpa_name)
        .await
        .with_context(|| format!("reading HPA {DEMO_NAMESPACE}/{hpa_name}"))?;
    let behavior =
        crate::prediction::behavior_of(hpa.spec.as_ref().and_then(|s| s.behavior.as_ref()));
    let scrape_interval_s = match args.backend {
        Backend::Opentelemetry => {
            let pod = pods_of(&Api::namespaced(client.clone(), DEMO_NAMESPACE), isvc)
                .await?
                .into_iter()
                .next()
                .context("no pod of the service is left to read its sidecar from")?;
            let inject = pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(aim_pods::pod::INJECT_ANNOTATION))
                .cloned()
                .context("the service's pod carries no OpenTelemetry sidecar annotation")?;
            aim_pods::runner::sidecar_plan(client, DEMO_NAMESPACE, &inject)
                .await
                .map_err(|e| anyhow::anyhow!("reading the sidecar's collector: {e}"))?
                .scrape_interval
                .as_secs_f64()
        }
        Backend::Prometheus => pod_monitor_interval(client).await?,
    };
    Ok(crate::prediction::LiveLoop {
        manifest: service_manifest(args, prometheus_url)?,
        behavior,
        profile: SIM_PROFILE.into(),
        cold_start_s: args.cold_start,
        hpa_sync_s: f64::from(aim_devcluster::HPA_SYNC_PERIOD_SECONDS),
        scrape_interval_s,
        prometheus: args.backend == Backend::Prometheus,
        scaler_window_s: SCALER_WINDOW.as_secs_f64(),
        load_for_s: args.load_for,
        watch_after_s: WATCH_AFTER_LOAD_S,
    })
}

/// The scrape interval of the demo's PodMonitor, as the cluster holds it.
async fn pod_monitor_interval(client: &kube::Client) -> anyhow::Result<f64> {
    let gvk = GroupVersionKind::gvk("monitoring.coreos.com", "v1", "PodMonitor");
    let (resource, _) = pinned_kind(client, &gvk).await?;
    let monitor = Api::<DynamicObject>::namespaced_with(client.clone(), DEMO_NAMESPACE, &resource)
        .get(SERVICE)
        .await
        .with_context(|| format!("reading PodMonitor {DEMO_NAMESPACE}/{SERVICE}"))?;
    let interval = monitor.data["spec"]["podMetricsEndpoints"][0]["interval"]
        .as_str()
        .context("the PodMonitor's podMetricsEndpoints[0] has no interval")?;
    aim_policy::parse_seconds(interval)
        .with_context(|| format!("the PodMonitor's interval {interval:?} is not a duration"))
}

/// `aim load`'s flags, parsed as the command line would.
#[derive(Parser)]
struct LoadCli {
    #[command(flatten)]
    load: aim_load::LoadArgs,
}

/// The pods KServe labels as the InferenceService's.
async fn pods_of(pods: &Api<Pod>, isvc: &str) -> Result<Vec<Pod>, kube::Error> {
    let selector = format!("{}={isvc}", aim_pods::pod::ISVC_LABEL);
    Ok(pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items)
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Running and waiting requests summed over the ready pods, from each
/// simulator's own vLLM metrics.
async fn queue_of(http: &reqwest::Client, ips: &[String]) -> (f64, f64) {
    let mut running = 0.0;
    let mut waiting = 0.0;
    for ip in ips {
        let Ok(resp) = http.get(format!("http://{ip}:8000/metrics")).send().await else {
            continue;
        };
        let Ok(page) = resp.text().await else {
            continue;
        };
        let Ok(families) = aim_pods::exposition::parse(&page) else {
            continue;
        };
        for f in families {
            let sum: f64 = f.samples.iter().map(|(_, v)| v).sum();
            match f.name.as_str() {
                "vllm:num_requests_running" => running += sum,
                "vllm:num_requests_waiting" => waiting += sum,
                _ => {}
            }
        }
    }
    (running, waiting)
}

fn chart_of(rows: &[Row], lab: Option<&aim_lab::sim::RunResult>, load_for: f64) -> String {
    use aim_lab::chart::{Panel, Series, render};
    let t_end = rows.last().map_or(1.0, |r| r.t);
    let lab_ready = lab.map(|run| Series {
        label: "ready (lab prediction)",
        color: "#17becf",
        step: true,
        points: run
            .timeline
            .iter()
            .filter(|p| p.at <= t_end)
            .map(|p| (p.at, f64::from(p.ready)))
            .collect(),
    });
    let series = |label, color, step, f: &dyn Fn(&Row) -> Option<f64>| Series {
        label,
        color,
        step,
        points: rows.iter().filter_map(|r| Some((r.t, f(r)?))).collect(),
    };
    let panels = [
        Panel {
            title: "replicas",
            series: vec![
                series("desired (HPA)", "#d62728", true, &|r| {
                    Some(r.desired as f64)
                }),
                series("ready pods", "#1f77b4", true, &|r| {
                    Some(r.ready_pods as f64)
                }),
            ]
            .into_iter()
            .chain(lab_ready)
            .collect(),
            reference: None,
        },
        Panel {
            title: "requests in the simulators",
            series: vec![
                series("running", "#2ca02c", false, &|r| Some(r.running)),
                series("waiting", "#ff7f0e", false, &|r| Some(r.waiting)),
            ],
            reference: None,
        },
        Panel {
            title: "TTFT (ms, 10 s window)",
            series: vec![
                series("p50", "#1f77b4", false, &|r| r.ttft_p50_ms),
                series("p99", "#9467bd", false, &|r| r.ttft_p99_ms),
            ],
            reference: None,
        },
        Panel {
            title: "load (completed requests/s)",
            series: vec![series("aim load", "#7f7f7f", false, &|r| Some(r.load_rps))],
            reference: None,
        },
    ];
    render(
        &format!("aim dev demo: qwen-chat under a {load_for:.0} s load step"),
        t_end,
        &panels,
    )
}

/// The profile discovery would publish for the demo template.
async fn freeze_template_as_discovered(client: &kube::Client) -> anyhow::Result<()> {
    let api: Api<aim_api::AIMServiceTemplate> = Api::namespaced(client.clone(), DEMO_NAMESPACE);
    let status = serde_json::json!({
        "apiVersion": aim_api::API_VERSION, "kind": "AIMServiceTemplate",
        "status": {
            "status": "Ready",
            "profile": {"metadata": {"engine": "vllm", "gpu": "MI300X", "gpuCount": 1, "metric": "latency", "precision": "fp8", "type": "optimized"}},
            "resolvedHardware": {"gpu": {"requests": 1, "model": "MI300X"}},
            "hardwareSummary": "1 x MI300X",
        }
    });
    api.patch_status(
        "qwen3-32b-latency",
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&status),
    )
    .await
    .context("writing the demo template's discovered profile")?;
    Ok(())
}

async fn apply_all(
    client: &kube::Client,
    namespace: Option<&str>,
    yaml: &str,
) -> anyhow::Result<()> {
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value: serde_yaml::Value = serde::Deserialize::deserialize(doc)?;
        if value.is_null() {
            continue;
        }
        let mut obj: DynamicObject = serde_yaml::from_value(value)?;
        let types = obj
            .types
            .clone()
            .context("a manifest without apiVersion/kind")?;
        let gvk = GroupVersionKind::try_from(&types)?;
        let (resource, caps) = pinned_kind(client, &gvk).await?;
        let api: Api<DynamicObject> = match (caps.scope, namespace) {
            (kube::discovery::Scope::Namespaced, Some(ns)) => {
                obj.metadata.namespace = Some(ns.to_string());
                Api::namespaced_with(client.clone(), ns, &resource)
            }
            _ => Api::all_with(client.clone(), &resource),
        };
        api.patch(
            &obj.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&obj),
        )
        .await
        .with_context(|| format!("applying {} {}", types.kind, obj.name_any()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        demo: DemoArgs,
    }

    #[test]
    fn a_bad_rate_is_refused_before_anything_starts() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("demo").chain(args.iter().copied()))
        };
        let e = parse(&["--rate", "0s:1,soon:3"]).err().unwrap().to_string();
        assert!(e.contains("--rate") && e.contains("soon"), "{e}");
        let e = parse(&["--rate", "0s:1", "--concurrency", "2"])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("cannot be used with"), "{e}");
        let ok = parse(&["--rate", "0s:0.7", "--seed", "2"]).unwrap().demo;
        assert_eq!((ok.rate.as_deref(), ok.seed), (Some("0s:0.7"), 2));
    }

    #[test]
    fn a_bad_policy_is_refused_before_anything_starts() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("demo").chain(args.iter().copied()))
        };
        let e = parse(&["--policy", "predictve"]).err().unwrap().to_string();
        assert!(e.contains("--policy") && e.contains("predictve"), "{e}");
        let e = parse(&["--param", "headroom=0.3"])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("--policy"), "{e}");
        let e = parse(&["--policy", "queue", "--param", "headroom"])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("KEY=VALUE"), "{e}");
        let args = parse(&["--policy", "queue", "--param", "headrom=0.3"])
            .unwrap()
            .demo;
        let e = service_manifest(&args, PLACEHOLDER_PROMETHEUS)
            .unwrap_err()
            .to_string();
        assert!(e.contains("spec.autoScaling.policy.params.headrom"), "{e}");
        let args = parse(&["--policy", "queue", "--param", "headroom=0.3"])
            .unwrap()
            .demo;
        let manifest = service_manifest(&args, PLACEHOLDER_PROMETHEUS).unwrap();
        let svc: AIMService = serde_yaml::from_str(&manifest).unwrap();
        let policy = svc.spec.auto_scaling.unwrap().policy.unwrap();
        assert_eq!(policy.name, aim_api::service::PolicyName::Queue);
        assert_eq!(policy.params["headroom"], "0.3");
        // Without --policy the seed goes out exactly as written.
        let plain = parse(&[]).unwrap().demo;
        assert_eq!(
            service_manifest(&plain, PLACEHOLDER_PROMETHEUS).unwrap(),
            SEED_SERVICE
        );
    }

    #[test]
    fn the_prometheus_backend_is_the_seed_on_a_prometheus_metric_and_the_lab_reads_it() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("demo").chain(args.iter().copied()))
        };
        let e = parse(&["--backend", "prometheus", "--policy", "queue"])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("--backend") && e.contains("--policy"), "{e}");
        let e = parse(&["--backend", "statsd"]).err().unwrap().to_string();
        assert!(e.contains("--backend") && e.contains("prometheus"), "{e}");
        let args = parse(&["--backend", "prometheus", "--scrape-interval", "2.5s"])
            .unwrap()
            .demo;
        assert!(pod_monitor(SERVICE, args.scrape_interval).contains("interval: 2500ms"));
        assert!(pod_monitor(SERVICE, 15.0).contains("interval: 15s"));
        let url = "http://127.0.0.1:20016";
        let manifest = service_manifest(&args, url).unwrap();
        let svc: AIMService = serde_yaml::from_str(&manifest).unwrap();
        assert_eq!(svc.metadata.namespace.as_deref(), Some(DEMO_NAMESPACE));
        let metric = serde_json::to_value(&svc.spec.auto_scaling.unwrap().metrics[0]).unwrap();
        assert_eq!(metric["external"]["metric"]["backend"], "prometheus");
        assert_eq!(metric["external"]["metric"]["serverAddress"], url);
        assert_eq!(metric["external"]["metric"]["query"], prometheus_query());
        // The lab replays it through its Prometheus: the query selects the
        // series the lab labels with the manifest's namespace, so a step of
        // about three replicas' worth scales out, and the draws' scrape
        // phases (one seed each) move the first decision.
        let mut behavior = aim_policy::hpa::Behavior::default();
        behavior.scale_down.stabilization_window_seconds = 10;
        let live = crate::prediction::LiveLoop {
            manifest,
            behavior,
            profile: SIM_PROFILE.into(),
            cold_start_s: 10.0,
            hpa_sync_s: 5.0,
            scrape_interval_s: 15.0,
            prometheus: true,
            scaler_window_s: 10.0,
            load_for_s: 90.0,
            watch_after_s: 120.0,
        };
        let arrivals: Vec<aim_lab::trace::Arrival> = (0..45)
            .flat_map(|i| {
                (0..3).map(move |k| aim_lab::trace::Arrival {
                    at: f64::from(i) * 2.0 + f64::from(k) * 0.5,
                    prompt_tokens: 256,
                    output_tokens: 200,
                    hash_ids: vec![],
                })
            })
            .collect();
        let (draws, _) = crate::prediction::predict_phases(&live, &arrivals, 5).unwrap();
        let firsts: Vec<f64> = draws.iter().filter_map(|d| d.first_scale_up_s).collect();
        assert_eq!(firsts.len(), 5, "a draw never scaled out: {firsts:?}");
        assert!(draws.iter().all(|d| d.peak_ready >= 2), "{firsts:?}");
        let (lo, hi) = firsts.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &f| {
            (lo.min(f), hi.max(f))
        });
        assert!(hi > lo, "every draw decided at {lo} s: phases did not move");
    }
}
