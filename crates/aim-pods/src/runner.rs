//! The runner's I/O: watch inference pods, give each a simulator process at
//! its address, mark it Ready the way a kubelet's readiness probe would, and
//! play its OTel sidecar.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use serde_json::json;
use tokio::task::JoinHandle;

use crate::collector::{self, SidecarPlan};
use crate::exposition;
use crate::gpu;
use crate::pod::{ServedPod, served};

#[derive(Clone, Debug)]
pub struct RunnerConfig {
    /// How long a simulator "loads its model" before it answers: the cold
    /// start a new replica pays.
    pub cold_start: Duration,
    /// The `aim` binary that runs `aim sim`.
    pub aim_binary: PathBuf,
    /// Extra `aim sim` arguments for every pod.
    pub sim_args: Vec<String>,
    /// Where sidecars export, overriding the collector's endpoint.
    pub exporter_override: Option<String>,
    /// Only this namespace (default: all).
    pub namespace: Option<String>,
}

/// Runs until the watch ends or the future is dropped; dropping it stops
/// every simulator (their processes are killed with their handles).
pub async fn run(client: Client, config: RunnerConfig) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let pods: Api<Pod> = match &config.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    // Dropping these maps (the runner's future dropped or aborted) aborts
    // every pod's task, and with it kills its simulator (kill_on_drop).
    let mut running: HashMap<String, PodTask> = HashMap::new();
    // Simulators of deleted pods, finishing their in-flight requests.
    let mut draining: HashMap<String, PodTask> = HashMap::new();
    // A watch that fails (an API server restart, a connection timed out)
    // is resumed with backoff, and the relist reconciles what changed
    // meanwhile: a transient error must not stop every simulator.
    // Every pod: a label selector cannot say "KServe's or labelled for
    // simulation", and `served` decides.
    let mut stream = watcher::watcher(pods, watcher::Config::default())
        .default_backoff()
        .boxed();
    // Pods seen in the current relist, to stop the ones that vanished while
    // the watch was down.
    let mut relisted: Option<Vec<String>> = None;
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                tracing::warn!(error = %e, "the pod watch failed; resuming it with backoff");
                continue;
            }
        };
        draining.retain(|_, task| !task.task.is_finished());
        match event {
            Event::Apply(pod) | Event::InitApply(pod) => {
                let uid = pod.uid().unwrap_or_default();
                if let Some(seen) = relisted.as_mut() {
                    seen.push(uid.clone());
                }
                match served(&pod) {
                    Some(p) if !running.contains_key(&p.uid) => {
                        tracing::info!(pod = %p.identity.pod, ip = %p.ip, "starting a simulator");
                        let (drain, drained) = tokio::sync::oneshot::channel();
                        let task =
                            tokio::spawn(serve_pod(client.clone(), config.clone(), p, drained));
                        running.insert(
                            uid,
                            PodTask {
                                task,
                                drain: Some(drain),
                            },
                        );
                    }
                    Some(_) => {}
                    None => stop(&mut running, &mut draining, &uid, &pod),
                }
            }
            Event::Delete(pod) => stop(
                &mut running,
                &mut draining,
                &pod.uid().unwrap_or_default(),
                &pod,
            ),
            Event::Init => relisted = Some(Vec::new()),
            Event::InitDone => {
                if let Some(seen) = relisted.take() {
                    let gone: Vec<String> = running
                        .keys()
                        .filter(|uid| !seen.contains(uid))
                        .cloned()
                        .collect();
                    for uid in gone {
                        // Gone while the watch was down: its grace period
                        // is unknown and has likely passed.
                        if running.remove(&uid).is_some() {
                            tracing::info!(%uid, "stopping the simulator of a pod gone while the watch was down");
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// A pod's task, aborted when dropped: a plain JoinHandle would let it run on.
struct PodTask {
    task: JoinHandle<()>,
    /// Tells the task its pod is being deleted, with the grace period.
    drain: Option<tokio::sync::oneshot::Sender<Duration>>,
}

impl Drop for PodTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The pod's grace period, as the kubelet reads it: the deletion's own,
/// else the spec's, else Kubernetes' default of 30 s.
pub fn grace_period(pod: &Pod) -> Duration {
    let seconds = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| pod.spec.as_ref()?.termination_grace_period_seconds)
        .unwrap_or(30);
    Duration::from_secs(seconds.max(0) as u64)
}

/// A pod being deleted: its simulator gets SIGTERM and its grace period to
/// finish what is in flight, as a kubelet gives vLLM; the task moves to
/// `draining`, where it ends by itself.
fn stop(
    running: &mut HashMap<String, PodTask>,
    draining: &mut HashMap<String, PodTask>,
    uid: &str,
    pod: &Pod,
) {
    if let Some(mut task) = running.remove(uid) {
        let grace = grace_period(pod);
        tracing::info!(pod = %pod.name_any(), ?grace, "draining its simulator");
        if let Some(drain) = task.drain.take() {
            let _ = drain.send(grace);
        }
        draining.insert(uid.to_string(), task);
    }
}

/// Everything one pod gets, for as long as the task lives; when `drained`
/// fires, the simulator drains (SIGTERM) for at most the grace period it
/// carries, then is killed.
async fn serve_pod(
    client: Client,
    config: Arc<RunnerConfig>,
    pod: ServedPod,
    drained: tokio::sync::oneshot::Receiver<Duration>,
) {
    let mut command = tokio::process::Command::new(&config.aim_binary);
    command
        .arg("sim")
        .args(["--host", &pod.ip, "--port", &pod.port.to_string()])
        .args([
            "--startup-delay",
            &config.cold_start.as_secs_f64().to_string(),
        ])
        .args(&config.sim_args)
        // A runner killed outright (no drop, no kill_on_drop) still takes
        // its simulators with it: they would hold the pods' addresses.
        .args(["--parent-pid", &std::process::id().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(pod = %pod.identity.pod, binary = %config.aim_binary.display(), error = %e, "cannot start the simulator");
            return;
        }
    };
    let grace = tokio::select! {
        () = run_pod(&client, &config, &pod, &mut child) => return,
        grace = drained => match grace {
            Ok(grace) => grace,
            // The runner went away without a drain: the task is aborted
            // and the simulator killed with it.
            Err(_) => return,
        },
    };
    // As the kubelet does: SIGTERM, then SIGKILL once the grace period is
    // over. `aim sim` answers SIGTERM as vLLM does: new requests are
    // refused, in-flight ones run to their end.
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => {
            tracing::info!(pod = %pod.identity.pod, ?status, "its simulator drained and exited");
        }
        Err(_) => {
            tracing::warn!(pod = %pod.identity.pod, ?grace, "its simulator outlived the grace period; killing it");
            let _ = child.kill().await;
        }
    }
}

/// The pod's life until it is deleted: readiness, then the sidecar (or
/// just the simulator) for as long as it runs.
async fn run_pod(
    client: &Client,
    config: &RunnerConfig,
    pod: &ServedPod,
    child: &mut tokio::process::Child,
) {
    let base = format!("http://{}:{}", pod.ip, pod.port);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("an HTTP client");

    // A pod that still shows Ready had a simulator from an earlier runner:
    // this one is a restarted container, unready until its probe passes,
    // as the kubelet would report it. Otherwise traffic would reach the
    // address during the whole cold start.
    if pod.ready
        && let Err(e) = set_ready(client, pod, false).await
    {
        tracing::warn!(pod = %pod.identity.pod, error = %e, "marking the restarted pod unready failed");
    }
    // Readiness probe: the pod turns Ready when /health answers.
    {
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                tracing::error!(pod = %pod.identity.pod, %status, "the simulator exited before it was ready");
                return;
            }
            let healthy = http
                .get(format!("{base}/health"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if healthy {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        if let Err(e) = set_ready(client, pod, true).await {
            tracing::warn!(pod = %pod.identity.pod, error = %e, "marking the pod Ready failed");
        }
    }

    match &pod.collector {
        Some(name) => sidecar(client, config, pod, name, &http).await,
        // No sidecar: just keep the simulator alive with the task.
        None => {
            let _ = child.wait().await;
        }
    }
}

/// What the kubelet writes when a readiness probe first succeeds (`ready`),
/// or when a container restarts (not `ready`).
async fn set_ready(client: &Client, pod: &ServedPod, ready: bool) -> Result<(), kube::Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.identity.namespace);
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let current: Pod = api.get_status(&pod.identity.pod).await?;
    let containers: Vec<serde_json::Value> = current
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| json!({"name": c.name, "ready": ready, "started": true}))
        .collect();
    let status = if ready { "True" } else { "False" };
    let patch = json!({"status": {
        "conditions": [
            {"type": "ContainersReady", "status": status, "lastTransitionTime": now},
            {"type": "Ready", "status": status, "lastTransitionTime": now},
        ],
        "containerStatuses": containers,
    }});
    api.patch_status(
        &pod.identity.pod,
        &PatchParams::default(),
        &Patch::Strategic(&patch),
    )
    .await?;
    Ok(())
}

fn collector_api(client: &Client, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("opentelemetry.io", "v1beta1", "OpenTelemetryCollector"),
        "opentelemetrycollectors",
    );
    Api::namespaced_with(client.clone(), ns, &ar)
}

/// The collector the pod's inject annotation names ("true": the only one
/// in the namespace).
pub async fn sidecar_plan(client: &Client, ns: &str, name: &str) -> Result<SidecarPlan, String> {
    let api = collector_api(client, ns);
    let object = if name == "true" {
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        match list.items.as_slice() {
            [one] => one.clone(),
            [] => return Err(format!("no OpenTelemetryCollector in namespace {ns}")),
            _ => {
                return Err(format!(
                    "inject \"true\" but namespace {ns} has several OpenTelemetryCollectors: name one"
                ));
            }
        }
    } else {
        api.get_opt(name)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("OpenTelemetryCollector {ns}/{name} does not exist"))?
    };
    let value = serde_json::to_value(&object).map_err(|e| e.to_string())?;
    collector::plan(&value).map_err(|e| e.to_string())
}

/// The sidecar loop: scrape, process, export, every scrape interval.
async fn sidecar(
    client: &Client,
    config: &RunnerConfig,
    pod: &ServedPod,
    collector_name: &str,
    http: &reqwest::Client,
) {
    let plan = loop {
        match sidecar_plan(client, &pod.identity.namespace, collector_name).await {
            Ok(p) => break p,
            Err(e) => {
                tracing::warn!(pod = %pod.identity.pod, "no sidecar yet: {e}");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    };
    let start = nanos_now();
    // The sidecar scrapes its own pod: localhost there is the pod address.
    let scrape_url = format!("http://{}:{}{}", pod.ip, plan.port, plan.metrics_path);
    // The node's GPU exporter, played beside the sidecar (see `gpu`).
    let busy_url = format!("http://{}:{}{}", pod.ip, pod.port, gpu::SIM_METRICS_PATH);
    let owner = gpu::GpuOwner {
        identity: pod.identity.clone(),
        container: pod.container.clone(),
        node: pod.node.clone(),
        uid: pod.uid.clone(),
        gpus: pod.gpus,
    };
    let mut last_busy: Option<gpu::BusySample> = None;
    let mut exporter: Option<MetricsServiceClient<tonic::transport::Channel>> = None;
    let mut ticker = tokio::time::interval(plan.scrape_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let page = match http.get(&scrape_url).send().await {
            Ok(r) if r.status().is_success() => r.text().await.unwrap_or_default(),
            Ok(r) => {
                tracing::debug!(pod = %pod.identity.pod, status = %r.status(), "scrape refused");
                continue;
            }
            Err(e) => {
                tracing::debug!(pod = %pod.identity.pod, error = %e, "scrape failed");
                continue;
            }
        };
        let mut families = match exposition::parse(&page) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(pod = %pod.identity.pod, "unparseable metrics page: {e}");
                continue;
            }
        };
        match read_busy(http, &busy_url).await {
            Ok(now) => {
                // The first read only sets the baseline: utilisation is a
                // share of an interval, and there is none yet.
                if let Some(percent) = last_busy.and_then(|b| gpu::utilisation_percent(b, now)) {
                    families.extend(gpu::families(&owner, percent));
                }
                last_busy = Some(now);
            }
            Err(e) => {
                tracing::debug!(pod = %pod.identity.pod, "no GPU utilisation this scrape: {e}");
            }
        }
        let request = exposition::export_request(
            families,
            &plan.processors,
            &pod.identity,
            start,
            nanos_now(),
        );
        if exporter.is_none() {
            let target = match &config.exporter_override {
                Some(t) => t.clone(),
                None => {
                    match resolve(client, &plan.exporter_endpoint, &pod.identity.namespace).await {
                        Ok(t) => t,
                        Err(e) => {
                            tracing::warn!(pod = %pod.identity.pod, "exporter endpoint: {e}");
                            continue;
                        }
                    }
                }
            };
            match MetricsServiceClient::connect(format!("http://{target}")).await {
                Ok(c) => exporter = Some(c),
                Err(e) => {
                    tracing::debug!(pod = %pod.identity.pod, %target, error = %e, "exporter unreachable");
                    continue;
                }
            }
        }
        if let Some(c) = exporter.as_mut()
            && let Err(e) = c.export(request).await
        {
            tracing::debug!(pod = %pod.identity.pod, error = %e, "export failed; reconnecting");
            exporter = None;
        }
    }
}

async fn read_busy(http: &reqwest::Client, url: &str) -> Result<gpu::BusySample, String> {
    let response = http.get(url).send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("{url} answered {}", response.status()));
    }
    let page = response.text().await.map_err(|e| e.to_string())?;
    gpu::parse_busy(&page)
}

fn nanos_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// `host:port` to something this machine can connect to. Addresses pass
/// through; a cluster Service name (`svc.ns.svc[.cluster.local]`, `svc.ns`
/// or `svc` in the pod's namespace) resolves through the Service's
/// EndpointSlices, as cluster DNS plus kube-proxy would.
pub async fn resolve(client: &Client, endpoint: &str, pod_ns: &str) -> Result<String, String> {
    let (host, port) = endpoint
        .rsplit_once(':')
        .ok_or_else(|| format!("{endpoint:?} has no port"))?;
    let port: i32 = port
        .parse()
        .map_err(|_| format!("{endpoint:?}: port is not a number"))?;
    if host.parse::<std::net::IpAddr>().is_ok() || host == "localhost" {
        return Ok(endpoint.to_string());
    }
    let trimmed = host
        .trim_end_matches(".cluster.local")
        .trim_end_matches(".svc");
    let (name, ns) = match trimmed.split_once('.') {
        Some((n, ns)) => (n, ns),
        None => (trimmed, pod_ns),
    };
    let service: Service = Api::namespaced(client.clone(), ns)
        .get(name)
        .await
        .map_err(|e| format!("Service {ns}/{name}: {e}"))?;
    let service_port = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .and_then(|ports| ports.iter().find(|p| p.port == port).cloned())
        .ok_or_else(|| format!("Service {ns}/{name} has no port {port}"))?;
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let list = slices
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={name}")))
        .await
        .map_err(|e| format!("EndpointSlices of {ns}/{name}: {e}"))?;
    for slice in list.items {
        let target_port = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name == service_port.name)
            .and_then(|p| p.port)
            .unwrap_or(port);
        let ready = slice
            .endpoints
            .iter()
            .find(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true));
        if let Some(address) = ready.and_then(|e| e.addresses.first()) {
            return Ok(format!("{address}:{target_port}"));
        }
    }
    Err(format!("Service {ns}/{name} has no ready endpoint"))
}
