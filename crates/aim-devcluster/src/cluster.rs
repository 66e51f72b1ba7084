//! Bringing a cluster up, reporting on it, and taking it down.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, Config};
use serde::{Deserialize, Serialize};

use crate::keda::{self, KedaPorts};
use crate::kserve::{self, KservePorts};
use crate::nodes::NodeSpec;
use crate::otel::{self, OtelPorts};
use crate::prometheus::{self, PrometheusOptions, PrometheusPorts};
use crate::{CacheDirs, Error, build, kubeconfig, pki, process};

const FIELD_MANAGER: &str = "aim-devcluster";
/// Service IPs are only ever objects here; nothing routes to them.
const SERVICE_CIDR: &str = "10.96.0.0/16";
/// Upstream's own integration framework needed up to 35 s on busy CI
/// runners; two shared cores are slower still.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// The bed's HPA sync period in seconds (upstream: 15): autoscaling tests
/// and the demo see KEDA's metrics act within seconds, and the demo's lab
/// prediction replays the same period.
pub const HPA_SYNC_PERIOD_SECONDS: u32 = 5;

/// How to bring a cluster up.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub name: String,
    pub cache: CacheDirs,
    /// Components listen on `port_base .. port_base + PORT_COUNT`.
    pub port_base: u16,
    /// Extra CRD manifests (multi-document YAML) to install after the
    /// third-party ones, e.g. aim's own.
    pub extra_manifests: Vec<(String, String)>,
    pub nodes: Vec<NodeSpec>,
    /// Skip the (cheap when cached) build step; used when the caller already
    /// knows the binaries are current.
    pub skip_build: bool,
    /// Also run KEDA's operator and metrics server, with the external
    /// metrics API served through the aggregator. Added to a running
    /// cluster that lacks them; a cluster that has them keeps them.
    pub with_keda: bool,
    /// Also run KServe's controller (with its admission webhooks) in
    /// Standard mode. Added to a running cluster like KEDA.
    pub with_kserve: bool,
    /// Also run Prometheus and prometheus-operator, with the bridge
    /// between them. Added to a running cluster like KEDA; a cluster that
    /// has them gets these intervals.
    pub prometheus: Option<PrometheusOptions>,
}

impl ClusterOptions {
    pub fn new(name: &str, cache: CacheDirs) -> Self {
        Self {
            name: name.to_string(),
            cache,
            port_base: default_port_base(name),
            extra_manifests: Vec::new(),
            nodes: crate::default_fleet(),
            skip_build: false,
            with_keda: false,
            with_kserve: false,
            prometheus: None,
        }
    }

    /// These options with KEDA's operator and metrics server.
    pub fn with_keda(mut self) -> Self {
        self.with_keda = true;
        self
    }

    /// These options with KServe's controller.
    pub fn with_kserve(mut self) -> Self {
        self.with_kserve = true;
        self
    }

    /// These options with Prometheus and prometheus-operator.
    pub fn with_prometheus(mut self, prometheus: PrometheusOptions) -> Self {
        self.prometheus = Some(prometheus);
        self
    }
}

/// Separate default ports per cluster name let the dev cluster, the test
/// cluster and the clusters of parallel work trees run side by side. Other
/// names get one of 320 slots of `PORT_COUNT` ports in 20000..26400: below
/// the test cluster, and below the kernel's ephemeral range (32768 and up),
/// where an outgoing connection may take any port at any moment.
pub fn default_port_base(name: &str) -> u16 {
    match name {
        "dev" => 16440,
        "test" => 26440,
        other => {
            let h = other
                .bytes()
                .fold(0u32, |a, b| a.wrapping_mul(31).wrapping_add(b as u32));
            20000 + (h % 320) as u16 * PORT_COUNT
        }
    }
}

/// The pod CIDR lies in loopback so a local process can answer at a pod's
/// IP. Each cluster name gets its own /16, as it gets its own ports, so
/// that two beds on one machine (CI and a work tree) never hand out the
/// same pod address: `test` has 127.1.0.0/16, `dev` 127.2.0.0/16, and
/// other names one of 240 blocks from 127.10.0.0/16 up. 127.0.0.0/16 stays
/// for the components and the node.
pub fn default_pod_cidr(name: &str) -> String {
    let second = match name {
        "test" => 1,
        "dev" => 2,
        other => 10 + (default_port_base(other) - 20000) / PORT_COUNT % 240,
    };
    format!("127.{second}.0.0/16")
}

/// Ports reserved per cluster: six for the control plane, five for KEDA,
/// two for KServe, two for the OpenTelemetry operator, four for
/// Prometheus (server, operator, bridge, the bridge's Service proxy), and the
/// last one where the bed expects an `aim scaler`.
const PORT_COUNT: u16 = 20;

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Ports {
    apiserver: u16,
    etcd_client: u16,
    etcd_peer: u16,
    controller_manager: u16,
    scheduler: u16,
    kwok: u16,
}

impl Ports {
    fn from_base(base: u16) -> Self {
        Self {
            apiserver: base,
            etcd_client: base + 1,
            etcd_peer: base + 2,
            controller_manager: base + 3,
            scheduler: base + 4,
            kwok: base + 5,
        }
    }

    /// KEDA's ports follow the control plane's. Derived rather than stored,
    /// so a state file written before KEDA existed still reads.
    fn keda(&self) -> KedaPorts {
        let base = self.apiserver;
        KedaPorts {
            operator_grpc: base + 6,
            operator_metrics: base + 7,
            operator_probe: base + 8,
            adapter: base + 9,
            adapter_metrics: base + 10,
        }
    }

    /// KServe's ports, and the scaler's address the bed points KServe's
    /// objects at (the last port of the range).
    fn kserve(&self) -> KservePorts {
        let base = self.apiserver;
        KservePorts {
            webhook: base + 11,
            probe: base + 12,
            scaler: base + PORT_COUNT - 1,
        }
    }

    fn otel(&self) -> OtelPorts {
        let base = self.apiserver;
        OtelPorts {
            webhook: base + 13,
            probe: base + 14,
        }
    }

    fn prometheus(&self) -> PrometheusPorts {
        let base = self.apiserver;
        PrometheusPorts {
            operator: base + 15,
            server: base + 16,
            bridge: base + 17,
            service_proxy: base + 18,
        }
    }

    /// Every port a process of the bed listens on. The scaler's port is
    /// not among them: an `aim scaler` the user (or a test) runs binds it.
    fn all(&self) -> [(&'static str, u16); 19] {
        let keda = self.keda();
        let kserve = self.kserve();
        let otel = self.otel();
        let prometheus = self.prometheus();
        [
            ("kube-apiserver", self.apiserver),
            ("etcd (client)", self.etcd_client),
            ("etcd (peer)", self.etcd_peer),
            ("kube-controller-manager", self.controller_manager),
            ("kube-scheduler", self.scheduler),
            ("kwok", self.kwok),
            ("keda-operator (gRPC)", keda.operator_grpc),
            ("keda-operator (metrics)", keda.operator_metrics),
            ("keda-operator (probes)", keda.operator_probe),
            ("keda-adapter", keda.adapter),
            ("keda-adapter (metrics)", keda.adapter_metrics),
            ("kserve-manager (webhooks)", kserve.webhook),
            ("kserve-manager (probes)", kserve.probe),
            ("otel-operator (webhooks)", otel.webhook),
            ("otel-operator (probes)", otel.probe),
            ("prometheus-operator", prometheus.operator),
            ("prometheus", prometheus.server),
            ("prometheus-bridge", prometheus.bridge),
            (
                "service proxy (prometheus-bridge)",
                prometheus.service_proxy,
            ),
        ]
    }
}

/// What a running cluster recorded about itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    name: String,
    group: u32,
    ports: Ports,
    components: Vec<RecordedComponent>,
    kubeconfig: PathBuf,
    server: String,
    ready: bool,
    /// Whether KEDA's processes are among the components.
    #[serde(default)]
    keda: bool,
    #[serde(default)]
    kserve: bool,
    #[serde(default)]
    prometheus: bool,
    /// The port layout the cluster was started with (state files written
    /// before Prometheus joined have none: sixteen ports, the scaler on the
    /// last).
    #[serde(default = "sixteen")]
    port_count: u16,
}

fn sixteen() -> u16 {
    16
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RecordedComponent {
    name: String,
    pid: u32,
    /// The process's start time (see `process::Member`), so that a pid
    /// reused since is never signalled.
    #[serde(default)]
    start_ticks: Option<u64>,
    port: u16,
    log: PathBuf,
}

impl RecordedComponent {
    fn member(&self) -> process::Member {
        process::Member {
            pid: self.pid,
            start_ticks: self.start_ticks,
            name: self.name.clone(),
        }
    }
}

/// What callers need to use a running cluster.
#[derive(Debug, Clone)]
pub struct ClusterInfo {
    pub name: String,
    pub kubeconfig: PathBuf,
    pub server: String,
    /// Whether this call started it (false: it was already running).
    pub started: bool,
    /// Whether this call added KEDA to a cluster that ran without it.
    pub keda_added: bool,
    /// Whether this call added KServe to a cluster that ran without it.
    pub kserve_added: bool,
    /// Where KServe's ScaledObjects and OTel sidecars expect an `aim
    /// scaler` (OTLP and KEDA's ExternalScaler on one port), when the
    /// cluster runs KServe.
    pub scaler_address: std::net::SocketAddr,
    /// Whether this call added Prometheus to a cluster that ran without it.
    pub prometheus_added: bool,
    /// The Prometheus server (`http://127.0.0.1:<port>`), when the cluster
    /// runs it.
    pub prometheus_url: Option<String>,
}

impl ClusterInfo {
    /// A fresh client for the cluster's admin. Create one per async runtime:
    /// a client's connections belong to the runtime that made them.
    pub async fn client(&self) -> Result<Client, Error> {
        client_for(&self.kubeconfig).await
    }
}

pub async fn client_for(kubeconfig_path: &Path) -> Result<Client, Error> {
    let kc =
        Kubeconfig::read_from(kubeconfig_path).map_err(|e| Error::Kubeconfig(e.to_string()))?;
    let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| Error::Kubeconfig(e.to_string()))?;
    config.read_timeout = Some(Duration::from_secs(60));
    Ok(Client::try_from(config)?)
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

fn read_state(dir: &Path) -> Option<State> {
    let text = std::fs::read_to_string(state_path(dir)).ok()?;
    serde_json::from_str(&text).ok()
}

fn write_state(dir: &Path, state: &State) -> Result<(), Error> {
    let path = state_path(dir);
    let tmp = dir.join("state.json.tmp");
    let text = serde_json::to_string_pretty(state).expect("state serialises");
    std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
}

/// Holds the cluster's lock file for as long as it lives. Several test
/// binaries may ask for the same cluster at once; exactly one starts it.
struct Lock(#[allow(dead_code)] File);

fn lock(dir: &Path) -> Result<Lock, Error> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let path = dir.join("lock");
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    f.lock().map_err(|e| Error::io(&path, e))?;
    Ok(Lock(f))
}

/// Starts the cluster unless it already runs; idempotent. Blocks while
/// another process is starting the same cluster, then reuses it.
pub async fn up(opts: &ClusterOptions) -> Result<ClusterInfo, Error> {
    let dir = opts.cache.cluster(&opts.name);
    let _lock = lock(&dir)?;

    if let Some(state) = read_state(&dir) {
        // A cluster of another port layout puts its scaler and Prometheus
        // elsewhere than this binary would look: started over.
        if state.ready && state.port_count == PORT_COUNT && healthy(&state).await {
            // The manifests may have changed since it started (a developer
            // edited a CRD); re-applying is cheap and idempotent.
            let client = client_for(&state.kubeconfig).await?;
            install_manifests(&client, opts).await?;
            let keda_added = opts.with_keda && !state.keda;
            let state = if keda_added {
                add_keda(opts, &dir, &client, state).await?
            } else {
                state
            };
            let kserve_added = opts.with_kserve && !state.kserve;
            let state = if kserve_added {
                add_kserve(opts, &dir, &client, state).await?
            } else {
                state
            };
            let prometheus_added = opts.prometheus.is_some() && !state.prometheus;
            let state = match &opts.prometheus {
                Some(wanted) if prometheus_added => {
                    add_prometheus(opts, wanted, &dir, &client, state).await?
                }
                // Running already: the object takes this call's intervals.
                Some(wanted) => {
                    apply_objects(&client, &prometheus_objects(wanted)).await?;
                    state
                }
                None => state,
            };
            return Ok(ClusterInfo {
                name: state.name,
                kubeconfig: state.kubeconfig,
                server: state.server,
                started: false,
                keda_added,
                kserve_added,
                scaler_address: scaler_address(&state.ports),
                prometheus_added,
                prometheus_url: state
                    .prometheus
                    .then(|| prometheus::url(state.ports.prometheus().server)),
            });
        }
        // A crashed or half-started cluster: clear it away and start over.
        stop_recorded_off_runtime(&state).await;
    }
    clean_runtime_files(&dir)?;
    // Before any port or build work: with binaries that were never built,
    // the answer is a command to run, not a half-started cluster.
    if opts.with_keda && opts.skip_build {
        keda::binaries(&opts.cache)?;
    }
    if opts.with_kserve && opts.skip_build {
        kserve::prerequisites(&opts.cache)?;
        otel::prerequisites(&opts.cache)?;
    }
    if opts.prometheus.is_some() && opts.skip_build {
        prometheus::prerequisites(&opts.cache)?;
    }

    let ports = Ports::from_base(opts.port_base);
    for (component, port) in ports.all() {
        if process::port_in_use(port) {
            return Err(Error::PortInUse {
                port,
                component,
                cluster: opts.name.clone(),
                port_base: opts.port_base,
                last: opts.port_base + PORT_COUNT - 1,
            });
        }
    }

    if !opts.skip_build {
        let cache = opts.cache.clone();
        tokio::task::spawn_blocking(move || build::build_control_plane(&cache))
            .await
            .expect("build task")?;
        if opts.with_keda {
            keda::binaries(&opts.cache)?;
        }
        if opts.with_kserve {
            kserve::prerequisites(&opts.cache)?;
            otel::prerequisites(&opts.cache)?;
        }
        if opts.prometheus.is_some() {
            prometheus::prerequisites(&opts.cache)?;
        }
    }

    let mut started = Started::new(&opts.name, ports, &dir);
    match start(opts, &dir, ports, &mut started).await {
        Ok(info) => Ok(info),
        Err(e) => {
            // Leave nothing running behind a failed start; keep the logs.
            stop_recorded_off_runtime(&started.state).await;
            let _ = std::fs::remove_file(state_path(&dir));
            Err(e)
        }
    }
}

/// Components started so far, so a failure can stop exactly them.
struct Started {
    state: State,
}

impl Started {
    fn new(name: &str, ports: Ports, dir: &Path) -> Self {
        Self {
            state: State {
                name: name.to_string(),
                group: 0,
                ports,
                components: Vec::new(),
                kubeconfig: dir.join("kubeconfig"),
                server: format!("https://127.0.0.1:{}", ports.apiserver),
                ready: false,
                keda: false,
                kserve: false,
                prometheus: false,
                port_count: PORT_COUNT,
            },
        }
    }
}

fn stop_recorded(state: &State) {
    let members: Vec<process::Member> = state.components.iter().map(|c| c.member()).collect();
    if state.group != 0 || !members.is_empty() {
        process::stop_group(state.group, &members, Duration::from_secs(20));
    }
}

/// [`stop_recorded`] for async callers.
async fn stop_recorded_off_runtime(state: &State) {
    let members: Vec<process::Member> = state.components.iter().map(|c| c.member()).collect();
    if state.group != 0 || !members.is_empty() {
        process::stop_group_off_runtime(state.group, members, Duration::from_secs(20)).await;
    }
}

fn clean_runtime_files(dir: &Path) -> Result<(), Error> {
    for sub in ["etcd", "pki", prometheus::SERVER] {
        let p = dir.join(sub);
        if p.exists() {
            std::fs::remove_dir_all(&p).map_err(|e| Error::io(&p, e))?;
        }
    }
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| Error::io(&logs, e))?;
    // Fresh logs per start: a stale error from a previous run would mislead.
    if let Ok(entries) = std::fs::read_dir(&logs) {
        for e in entries.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(())
}

async fn start(
    opts: &ClusterOptions,
    dir: &Path,
    ports: Ports,
    started: &mut Started,
) -> Result<ClusterInfo, Error> {
    let bin = |name: &str| opts.cache.binary(name);
    let logs = dir.join("logs");
    let pki = pki::generate(&dir.join("pki"))?;
    let files = &pki.files;
    let server = started.state.server.clone();
    let kubeconfig_path = dir.join("kubeconfig");
    let kubeconfig_text = kubeconfig::render(
        &opts.name,
        &server,
        &pki.ca_pem,
        &pki.admin_cert_pem,
        &pki.admin_key_pem,
    );
    std::fs::write(&kubeconfig_path, kubeconfig_text)
        .map_err(|e| Error::io(&kubeconfig_path, e))?;
    let kc = kubeconfig_path.display().to_string();
    let p = |path: &Path| path.display().to_string();

    // etcd
    let etcd_client = format!("http://127.0.0.1:{}", ports.etcd_client);
    let etcd_peer = format!("http://127.0.0.1:{}", ports.etcd_peer);
    let etcd_args = vec![
        "--name=aim".to_string(),
        format!("--data-dir={}", p(&dir.join("etcd"))),
        format!("--listen-client-urls={etcd_client}"),
        format!("--advertise-client-urls={etcd_client}"),
        format!("--listen-peer-urls={etcd_peer}"),
        format!("--initial-advertise-peer-urls={etcd_peer}"),
        format!("--initial-cluster=aim={etcd_peer}"),
        // Durability is pointless for a throwaway cluster and fsync is the
        // slowest thing etcd does on a shared disk.
        "--unsafe-no-fsync=true".to_string(),
        "--log-level=warn".to_string(),
        "--quota-backend-bytes=4294967296".to_string(),
    ];
    launch(
        started,
        "etcd",
        &bin("etcd"),
        &etcd_args,
        ports.etcd_client,
        &logs,
    )?;
    wait_for(started, "etcd", || async {
        http_get_ok(ports.etcd_client, "/health").await
    })
    .await?;

    // kube-apiserver
    let apiserver_args = vec![
        format!("--etcd-servers={etcd_client}"),
        "--bind-address=127.0.0.1".to_string(),
        "--advertise-address=127.0.0.1".to_string(),
        format!("--secure-port={}", ports.apiserver),
        format!("--tls-cert-file={}", p(&files.apiserver_cert)),
        format!("--tls-private-key-file={}", p(&files.apiserver_key)),
        format!("--client-ca-file={}", p(&files.ca_cert)),
        // pods/log, exec and port-forward go to the node's kubelet, which is
        // KWOK here; nodes name it `localhost` (see nodes.rs).
        format!("--kubelet-certificate-authority={}", p(&files.ca_cert)),
        "--kubelet-preferred-address-types=Hostname,InternalIP".to_string(),
        format!("--service-cluster-ip-range={SERVICE_CIDR}"),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".to_string(),
        format!(
            "--service-account-key-file={}",
            p(&files.service_account_pub)
        ),
        format!(
            "--service-account-signing-key-file={}",
            p(&files.service_account_key)
        ),
        "--authorization-mode=RBAC".to_string(),
        "--allow-privileged=true".to_string(),
        // API aggregation, so an extension apiserver (KEDA's metrics
        // server) can serve external metrics to the HPA controller.
        format!(
            "--requestheader-client-ca-file={}",
            p(&files.front_proxy_ca_cert)
        ),
        format!(
            "--proxy-client-cert-file={}",
            p(&files.front_proxy_client_cert)
        ),
        format!(
            "--proxy-client-key-file={}",
            p(&files.front_proxy_client_key)
        ),
        "--requestheader-allowed-names=front-proxy-client".to_string(),
        "--requestheader-username-headers=X-Remote-User".to_string(),
        "--requestheader-group-headers=X-Remote-Group".to_string(),
        "--requestheader-extra-headers-prefix=X-Remote-Extra-".to_string(),
        "--enable-aggregator-routing=true".to_string(),
        // Tests create many objects quickly; fairness queuing only slows
        // them down on a single-tenant cluster.
        "--enable-priority-and-fairness=false".to_string(),
        "--max-requests-inflight=1000".to_string(),
        "--max-mutating-requests-inflight=500".to_string(),
        "--event-ttl=1h".to_string(),
        "--v=1".to_string(),
    ];
    launch(
        started,
        "kube-apiserver",
        &bin("kube-apiserver"),
        &apiserver_args,
        ports.apiserver,
        &logs,
    )?;
    let client = client_for(&kubeconfig_path).await?;
    wait_for(started, "kube-apiserver", || {
        let client = client.clone();
        async move { apiserver_ready(&client).await }
    })
    .await?;

    // Controller manager and scheduler talk to the apiserver as admin; their
    // own serving ports stay on loopback.
    let kcm_args = vec![
        format!("--kubeconfig={kc}"),
        format!("--authentication-kubeconfig={kc}"),
        format!("--authorization-kubeconfig={kc}"),
        "--leader-elect=false".to_string(),
        "--bind-address=127.0.0.1".to_string(),
        format!("--secure-port={}", ports.controller_manager),
        format!(
            "--service-account-private-key-file={}",
            p(&files.service_account_key)
        ),
        format!("--root-ca-file={}", p(&files.ca_cert)),
        format!("--service-cluster-ip-range={SERVICE_CIDR}"),
        "--controllers=*".to_string(),
        "--use-service-account-credentials=false".to_string(),
        "--kube-api-qps=500".to_string(),
        "--kube-api-burst=1000".to_string(),
        // Faster than the defaults so garbage collection and namespace
        // deletion show up in tests within seconds.
        "--concurrent-gc-syncs=10".to_string(),
        // The HPA controller re-evaluates every 5 s instead of every 15 s,
        // so autoscaling tests see KEDA's metrics act within seconds. The
        // rest of the HPA arithmetic (tolerance, behaviour) is upstream's.
        format!("--horizontal-pod-autoscaler-sync-period={HPA_SYNC_PERIOD_SECONDS}s"),
        "--v=1".to_string(),
    ];
    launch(
        started,
        "kube-controller-manager",
        &bin("kube-controller-manager"),
        &kcm_args,
        ports.controller_manager,
        &logs,
    )?;
    let scheduler_args = vec![
        format!("--kubeconfig={kc}"),
        format!("--authentication-kubeconfig={kc}"),
        format!("--authorization-kubeconfig={kc}"),
        "--leader-elect=false".to_string(),
        "--bind-address=127.0.0.1".to_string(),
        format!("--secure-port={}", ports.scheduler),
        "--v=1".to_string(),
    ];
    launch(
        started,
        "kube-scheduler",
        &bin("kube-scheduler"),
        &scheduler_args,
        ports.scheduler,
        &logs,
    )?;

    // The CRDs go in before KWOK starts, so its watch on `Logs` and
    // `ClusterLogs` finds them at once instead of backing off.
    write_state(dir, &started.state)?;
    install_manifests(&client, opts).await?;

    let stages = dir.join("kwok-stages.yaml");
    std::fs::write(&stages, include_str!("kwok-stages.yaml")).map_err(|e| Error::io(&stages, e))?;
    let kwok_args = vec![
        format!("--kubeconfig={kc}"),
        format!("--config={}", p(&stages)),
        "--manage-all-nodes=true".to_string(),
        format!("--cidr={}", default_pod_cidr(&opts.name)),
        "--node-ip=127.0.10.254".to_string(),
        "--node-lease-duration-seconds=40".to_string(),
        format!("--server-address=127.0.0.1:{}", ports.kwok),
        format!("--tls-cert-file={}", p(&files.kwok_cert)),
        format!("--tls-private-key-file={}", p(&files.kwok_key)),
        // Pod logs are declared by `Logs`/`ClusterLogs` objects, so a test
        // can give a fake pod the output its real image would print.
        "--enable-crds=Logs,ClusterLogs".to_string(),
    ];
    launch(started, "kwok", &bin("kwok"), &kwok_args, ports.kwok, &logs)?;
    for (name, port) in [
        ("kube-controller-manager", ports.controller_manager),
        ("kube-scheduler", ports.scheduler),
        ("kwok", ports.kwok),
    ] {
        wait_for(
            started,
            name,
            move || async move { process::port_open(port) },
        )
        .await?;
    }

    // Record the processes before the slower object setup, so `down` can
    // always clean up, even after a failure below.
    write_state(dir, &started.state)?;

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "aim-system"}
    }))
    .expect("static namespace");
    namespaces
        .patch(
            "aim-system",
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&ns),
        )
        .await?;
    create_nodes(&client, &opts.nodes, ports.kwok).await?;
    if opts.with_keda {
        start_keda(opts, dir, &client, started).await?;
    }
    if opts.with_kserve {
        start_kserve(opts, dir, &client, started).await?;
    }
    if let Some(wanted) = &opts.prometheus {
        start_prometheus(opts, wanted, dir, &client, started).await?;
    }

    started.state.ready = true;
    write_state(dir, &started.state)?;
    Ok(ClusterInfo {
        name: opts.name.clone(),
        kubeconfig: kubeconfig_path,
        server,
        started: true,
        keda_added: false,
        kserve_added: false,
        scaler_address: scaler_address(&ports),
        prometheus_added: false,
        prometheus_url: opts
            .prometheus
            .is_some()
            .then(|| prometheus::url(ports.prometheus().server)),
    })
}

fn scaler_address(ports: &Ports) -> std::net::SocketAddr {
    ([127, 0, 0, 1], ports.kserve().scaler).into()
}

/// Stops the processes a failed join started (those after `before`) and
/// records the cluster as it was before the join.
async fn undo_join(dir: &Path, started: &mut Started, before: usize) {
    let members: Vec<process::Member> = started.state.components[before..]
        .iter()
        .map(|c| c.member())
        .collect();
    process::stop_group_off_runtime(0, members, Duration::from_secs(20)).await;
    started.state.components.truncate(before);
    let _ = write_state(dir, &started.state);
}

/// Adds KServe to a running cluster; on failure only its process stops.
async fn add_kserve(
    opts: &ClusterOptions,
    dir: &Path,
    client: &Client,
    state: State,
) -> Result<State, Error> {
    kserve::prerequisites(&opts.cache)?;
    otel::prerequisites(&opts.cache)?;
    let before = state.components.len();
    let mut started = Started { state };
    match start_kserve(opts, dir, client, &mut started).await {
        Ok(()) => {
            write_state(dir, &started.state)?;
            Ok(started.state)
        }
        Err(e) => {
            started.state.kserve = false;
            undo_join(dir, &mut started, before).await;
            Err(e)
        }
    }
}

/// Starts KServe's controller and the OpenTelemetry operator (whose
/// webhooks KServe's collectors go through): KServe's namespace, config
/// map and the scaler's Service first (KServe reads the config at start),
/// then both processes, then their webhook registrations once both
/// webhook servers answer (most fail closed, so registering them earlier
/// would refuse every InferenceService in between).
async fn start_kserve(
    opts: &ClusterOptions,
    dir: &Path,
    client: &Client,
    started: &mut Started,
) -> Result<(), Error> {
    let files = pki::PkiFiles::in_dir(&dir.join("pki"));
    if !files.webhook_cert().exists() {
        return Err(Error::KedaCertificatesMissing {
            cluster: opts.name.clone(),
        });
    }
    let ca_pem =
        std::fs::read_to_string(&files.ca_cert).map_err(|e| Error::io(&files.ca_cert, e))?;
    let cluster_ports = started.state.ports;
    let ports = cluster_ports.kserve();
    for (component, port) in &cluster_ports.all()[11..15] {
        if process::port_in_use(*port) {
            return Err(Error::PortInUse {
                port: *port,
                component,
                cluster: opts.name.clone(),
                port_base: cluster_ports.apiserver,
                last: cluster_ports.apiserver + PORT_COUNT - 1,
            });
        }
    }
    let (webhooks, config) = kserve::upstream_manifests(&opts.cache)?;
    let otel_webhooks = otel::webhook_manifests(&opts.cache)?;
    let mut objects = kserve::base_objects(&ports);
    objects.push(kserve::config_map(&config, &ports)?);
    objects.push(kserve::huggingface_runtime(&opts.cache)?);
    apply_objects(client, &objects).await?;

    // Both webhook servers read the bed's certificate where
    // controller-runtime looks for it.
    let tmpdir = dir.join("webhook-tmp");
    let certs = kserve::cert_dir(&tmpdir);
    std::fs::create_dir_all(&certs).map_err(|e| Error::io(&certs, e))?;
    for (from, to) in [
        (files.webhook_cert(), certs.join("tls.crt")),
        (files.webhook_key(), certs.join("tls.key")),
    ] {
        std::fs::copy(&from, &to).map_err(|e| Error::io(&to, e))?;
    }

    let logs = dir.join("logs");
    let kubeconfig = started.state.kubeconfig.clone();
    let otel_ports = cluster_ports.otel();
    launch_with_env(
        started,
        otel::OPERATOR,
        &opts.cache.binary(otel::OPERATOR),
        &otel::args(&otel_ports),
        &otel::env(&kubeconfig, &tmpdir),
        otel_ports.webhook,
        &logs,
    )?;
    launch_with_env(
        started,
        kserve::MANAGER,
        &opts.cache.binary(kserve::MANAGER),
        &kserve::manager_args(&ports),
        &kserve::env(&kubeconfig, &tmpdir),
        ports.webhook,
        &logs,
    )?;
    started.state.kserve = true;
    write_state(dir, &started.state)?;
    wait_for(started, otel::OPERATOR, move || async move {
        http_get_ok(otel_ports.probe, "/readyz").await
    })
    .await?;
    wait_for(started, kserve::MANAGER, move || async move {
        http_get_ok(ports.probe, "/readyz").await
    })
    .await?;
    let mut hooks = kserve::webhook_configurations(
        "the OpenTelemetry operator's config/webhook/manifests.yaml",
        &otel_webhooks,
        otel_ports.webhook,
        &ca_pem,
        otel::NAME_PREFIX,
    )?;
    hooks.extend(kserve::webhook_configurations(
        "KServe's config/webhook/manifests.yaml",
        &webhooks,
        ports.webhook,
        &ca_pem,
        "",
    )?);
    apply_objects(client, &hooks).await
}

/// The namespace and `Prometheus` object for the pinned release.
fn prometheus_objects(wanted: &PrometheusOptions) -> Vec<serde_json::Value> {
    let release = build::pins()
        .into_iter()
        .find(|(k, _)| k == "PROMETHEUS_VERSION")
        .and_then(|(_, v)| prometheus::release_of(&v))
        .unwrap_or_else(|| "v3.0.0".into());
    prometheus::objects(wanted, &release)
}

/// Adds Prometheus to a running cluster; on failure only its processes
/// stop.
async fn add_prometheus(
    opts: &ClusterOptions,
    wanted: &PrometheusOptions,
    dir: &Path,
    client: &Client,
    state: State,
) -> Result<State, Error> {
    prometheus::prerequisites(&opts.cache)?;
    let before = state.components.len();
    let mut started = Started { state };
    match start_prometheus(opts, wanted, dir, client, &mut started).await {
        Ok(()) => {
            write_state(dir, &started.state)?;
            Ok(started.state)
        }
        Err(e) => {
            started.state.prometheus = false;
            undo_join(dir, &mut started, before).await;
            Err(e)
        }
    }
}

/// Starts the Prometheus server (on a placeholder configuration),
/// prometheus-operator and the bridge, then waits until the operator's
/// configuration for the bed's `Prometheus` object is the one loaded: the
/// whole chain works.
async fn start_prometheus(
    opts: &ClusterOptions,
    wanted: &PrometheusOptions,
    dir: &Path,
    client: &Client,
    started: &mut Started,
) -> Result<(), Error> {
    let cluster_ports = started.state.ports;
    let ports = cluster_ports.prometheus();
    for (component, port) in &cluster_ports.all()[15..19] {
        if process::port_in_use(*port) {
            return Err(Error::PortInUse {
                port: *port,
                component,
                cluster: opts.name.clone(),
                port_base: cluster_ports.apiserver,
                last: cluster_ports.apiserver + PORT_COUNT - 1,
            });
        }
    }
    let mut docs = Vec::new();
    for file in prometheus::stack_crd_files(&opts.cache) {
        let text = std::fs::read_to_string(&file).map_err(|e| Error::io(&file, e))?;
        docs.extend(parse_docs(&file.display().to_string(), &text)?);
    }
    apply_crds(client, docs).await?;
    apply_objects(client, &prometheus_objects(wanted)).await?;

    let home = dir.join(prometheus::SERVER);
    std::fs::create_dir_all(&home).map_err(|e| Error::io(&home, e))?;
    let config = crate::bridge::config_file(&home);
    std::fs::write(&config, prometheus::initial_config(wanted))
        .map_err(|e| Error::io(&config, e))?;

    let logs = dir.join("logs");
    let kubeconfig = started.state.kubeconfig.clone();
    launch(
        started,
        prometheus::SERVER,
        &opts.cache.binary(prometheus::SERVER),
        &prometheus::server_args(&home, ports.server),
        ports.server,
        &logs,
    )?;
    launch_with_env(
        started,
        prometheus::OPERATOR,
        &opts.cache.binary(prometheus::OPERATOR),
        &prometheus::operator_args(ports.operator),
        &prometheus::operator_env(&kubeconfig),
        ports.operator,
        &logs,
    )?;
    let bridge = crate::bridge::BridgeArgs {
        kubeconfig,
        namespace: prometheus::NAMESPACE.into(),
        prometheus: prometheus::NAME.into(),
        dir: home,
        prometheus_url: prometheus::url(ports.server),
        listen: ([127, 0, 0, 1], ports.bridge).into(),
        promtool: opts.cache.binary(prometheus::PROMTOOL),
        service_proxy: Some(([127, 0, 0, 1], ports.service_proxy).into()),
    };
    let mut bridge_args = vec!["dev".to_string(), "prometheus-bridge".to_string()];
    bridge_args.extend(bridge.command_line());
    launch_with_env(
        started,
        prometheus::BRIDGE,
        &wanted.aim_binary,
        &bridge_args,
        // Its log is a file: no terminal colours.
        &[("NO_COLOR", "1".to_string())],
        ports.bridge,
        &logs,
    )?;
    started.state.prometheus = true;
    write_state(dir, &started.state)?;

    wait_for(started, prometheus::SERVER, move || async move {
        http_get_ok(ports.server, "/-/ready").await
    })
    .await?;
    wait_for(started, prometheus::OPERATOR, move || async move {
        http_get_ok(ports.operator, "/healthz").await
    })
    .await?;
    wait_for(started, prometheus::BRIDGE, move || async move {
        http_get_ok(ports.bridge, "/healthz").await
    })
    .await?;
    // The operator's configuration carries the object as an external
    // label; the placeholder does not.
    let marker = format!("prometheus: {}/{}", prometheus::NAMESPACE, prometheus::NAME);
    let status_url = format!("{}/api/v1/status/config", prometheus::url(ports.server));
    wait_for(started, prometheus::BRIDGE, || {
        let (url, marker) = (status_url.clone(), marker.clone());
        async move {
            match crate::http_client().get(&url).send().await {
                Ok(r) => r.text().await.is_ok_and(|body| body.contains(&marker)),
                Err(_) => false,
            }
        }
    })
    .await
}

/// Adds KEDA to a running cluster. If that fails only KEDA's processes
/// are stopped: the cluster keeps running as it was.
async fn add_keda(
    opts: &ClusterOptions,
    dir: &Path,
    client: &Client,
    state: State,
) -> Result<State, Error> {
    keda::binaries(&opts.cache)?;
    let before = state.components.len();
    let mut started = Started { state };
    match start_keda(opts, dir, client, &mut started).await {
        Ok(()) => {
            write_state(dir, &started.state)?;
            Ok(started.state)
        }
        Err(e) => {
            started.state.keda = false;
            undo_join(dir, &mut started, before).await;
            Err(e)
        }
    }
}

/// Starts KEDA's operator and metrics server and waits until the external
/// metrics API answers through kube-apiserver's aggregator.
async fn start_keda(
    opts: &ClusterOptions,
    dir: &Path,
    client: &Client,
    started: &mut Started,
) -> Result<(), Error> {
    let files = pki::PkiFiles::in_dir(&dir.join("pki"));
    if !files.keda_cert().exists() {
        return Err(Error::KedaCertificatesMissing {
            cluster: opts.name.clone(),
        });
    }
    let ca_pem =
        std::fs::read_to_string(&files.ca_cert).map_err(|e| Error::io(&files.ca_cert, e))?;
    let cluster_ports = started.state.ports;
    let ports = cluster_ports.keda();
    for (component, port) in &cluster_ports.all()[6..11] {
        if process::port_in_use(*port) {
            return Err(Error::PortInUse {
                port: *port,
                component,
                cluster: opts.name.clone(),
                port_base: cluster_ports.apiserver,
                last: cluster_ports.apiserver + PORT_COUNT - 1,
            });
        }
    }
    apply_objects(client, &keda::routing_objects(&ports, &ca_pem)).await?;

    let logs = dir.join("logs");
    let kubeconfig = started.state.kubeconfig.clone();
    let env = keda::env(&kubeconfig, cluster_ports.prometheus().service_proxy);
    launch_with_env(
        started,
        keda::OPERATOR,
        &opts.cache.binary(keda::OPERATOR),
        &keda::operator_args(&ports, &files),
        &env,
        ports.operator_grpc,
        &logs,
    )?;
    launch_with_env(
        started,
        keda::ADAPTER,
        &opts.cache.binary(keda::ADAPTER),
        &keda::adapter_args(&ports, &files, &kubeconfig),
        &env,
        ports.adapter,
        &logs,
    )?;
    started.state.keda = true;
    write_state(dir, &started.state)?;

    wait_for(started, keda::OPERATOR, move || async move {
        http_get_ok(ports.operator_probe, "/readyz").await
    })
    .await?;
    let api_services: Api<APIService> = Api::all(client.clone());
    wait_for(started, keda::ADAPTER, || {
        let api_services = api_services.clone();
        async move { api_service_available(&api_services).await }
    })
    .await
}

/// Server-side applies the bed's own objects, in order.
async fn apply_objects(client: &Client, objects: &[serde_json::Value]) -> Result<(), Error> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for object in objects {
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        let namespace = object["metadata"]["namespace"].as_str().unwrap_or_default();
        let patch = Patch::Apply(object);
        match object["kind"].as_str().unwrap_or_default() {
            "Namespace" => {
                Api::<Namespace>::all(client.clone())
                    .patch(name, &params, &patch)
                    .await?;
            }
            "Service" => {
                Api::<Service>::namespaced(client.clone(), namespace)
                    .patch(name, &params, &patch)
                    .await?;
            }
            "EndpointSlice" => {
                Api::<EndpointSlice>::namespaced(client.clone(), namespace)
                    .patch(name, &params, &patch)
                    .await?;
            }
            "APIService" => {
                Api::<APIService>::all(client.clone())
                    .patch(name, &params, &patch)
                    .await?;
            }
            "ConfigMap" => {
                Api::<ConfigMap>::namespaced(client.clone(), namespace)
                    .patch(name, &params, &patch)
                    .await?;
            }
            "MutatingWebhookConfiguration" => {
                Api::<MutatingWebhookConfiguration>::all(client.clone())
                    .patch(name, &params, &patch)
                    .await?;
            }
            "ValidatingWebhookConfiguration" => {
                Api::<ValidatingWebhookConfiguration>::all(client.clone())
                    .patch(name, &params, &patch)
                    .await?;
            }
            "Prometheus" => {
                let gvk = GroupVersionKind::gvk("monitoring.coreos.com", "v1", "Prometheus");
                let resource = ApiResource::from_gvk_with_plural(&gvk, "prometheuses");
                Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &resource)
                    .patch(name, &params, &patch)
                    .await?;
            }
            "ClusterServingRuntime" => {
                let gvk =
                    GroupVersionKind::gvk("serving.kserve.io", "v1alpha1", "ClusterServingRuntime");
                let resource = ApiResource::from_gvk_with_plural(&gvk, "clusterservingruntimes");
                Api::<DynamicObject>::all_with(client.clone(), &resource)
                    .patch(name, &params, &patch)
                    .await?;
            }
            other => {
                return Err(Error::Manifest {
                    origin: format!("the bed's object {name}"),
                    detail: format!("unexpected kind {other:?}"),
                });
            }
        }
    }
    Ok(())
}

/// The aggregator marks the APIService Available once its own request to
/// the adapter succeeded: the whole route works.
async fn api_service_available(api: &Api<APIService>) -> bool {
    let Ok(Some(service)) = api.get_opt(keda::API_SERVICE).await else {
        return false;
    };
    service
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Available" && c.status == "True")
}

fn launch(
    started: &mut Started,
    name: &'static str,
    binary: &Path,
    args: &[String],
    port: u16,
    logs: &Path,
) -> Result<(), Error> {
    launch_with_env(started, name, binary, args, &[], port, logs)
}

fn launch_with_env(
    started: &mut Started,
    name: &'static str,
    binary: &Path,
    args: &[String],
    env: &[(&str, String)],
    port: u16,
    logs: &Path,
) -> Result<(), Error> {
    if !binary.exists() {
        return Err(Error::io(
            binary,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "binary missing from the cache; run `aim dev cluster build`",
            ),
        ));
    }
    let spawned = process::spawn(
        binary,
        args,
        env,
        &logs.join(format!("{name}.log")),
        started.state.group,
    )?;
    if started.state.group == 0 {
        started.state.group = spawned.pid;
    }
    started.state.components.push(RecordedComponent {
        name: name.to_string(),
        pid: spawned.pid,
        start_ticks: process::start_ticks(spawned.pid),
        port,
        log: spawned.log,
    });
    Ok(())
}

/// Polls `check` until it passes, failing early if the component died.
async fn wait_for<F, Fut>(started: &Started, name: &'static str, check: F) -> Result<(), Error>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let comp = started
        .state
        .components
        .iter()
        .find(|c| c.name == name)
        .expect("component was launched")
        .clone();
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if check().await {
            return Ok(());
        }
        process::reap(comp.pid);
        if !process::alive(comp.pid) {
            return Err(Error::ComponentDied {
                component: name,
                status: process::exit_status(comp.pid),
                tail: process::tail(&comp.log, 20),
                log: comp.log,
            });
        }
        if Instant::now() > deadline {
            return Err(Error::ComponentTimeout {
                component: name,
                secs: START_TIMEOUT.as_secs(),
                tail: process::tail(&comp.log, 20),
                log: comp.log,
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn http_get_ok(port: u16, path: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(Ok(mut stream)) = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    else {
        return false;
    };
    let req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    if stream.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut buf)).await;
    matches!(read, Ok(Ok(_))) && buf.starts_with(b"HTTP/1.") && buf.get(9..12) == Some(b"200")
}

async fn apiserver_ready(client: &Client) -> bool {
    let req = http::Request::get("/readyz")
        .body(Vec::new())
        .expect("static request");
    matches!(
        tokio::time::timeout(Duration::from_secs(5), client.request_text(req)).await,
        Ok(Ok(body)) if body.trim() == "ok"
    )
}

async fn healthy(state: &State) -> bool {
    if !state.components.iter().all(|c| process::alive(c.pid)) {
        return false;
    }
    match client_for(&state.kubeconfig).await {
        Ok(client) => apiserver_ready(&client).await,
        Err(_) => false,
    }
}

/// Applies the third-party CRDs from the cache and the caller's manifests,
/// then waits until every CRD is Established so callers can use them at once.
async fn install_manifests(client: &Client, opts: &ClusterOptions) -> Result<(), Error> {
    let mut docs: Vec<(String, serde_yaml::Value)> = Vec::new();
    let crd_root = opts.cache.third_party_crds();
    let mut files = Vec::new();
    if let Ok(projects) = std::fs::read_dir(&crd_root) {
        for project in projects.flatten() {
            if let Ok(entries) = std::fs::read_dir(project.path()) {
                files.extend(entries.flatten().map(|e| e.path()));
            }
        }
    }
    files.sort();
    for file in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "yaml"))
    {
        let text = std::fs::read_to_string(file).map_err(|e| Error::io(file, e))?;
        docs.extend(parse_docs(&file.display().to_string(), &text)?);
    }
    for (origin, text) in &opts.extra_manifests {
        docs.extend(parse_docs(origin, text)?);
    }
    apply_crds(client, docs).await
}

/// Server-side applies CRDs and waits until each is Established.
async fn apply_crds(client: &Client, docs: Vec<(String, serde_yaml::Value)>) -> Result<(), Error> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut names = Vec::new();
    for (origin, doc) in docs {
        let crd: CustomResourceDefinition =
            serde_yaml::from_value(doc).map_err(|e| Error::Manifest {
                origin: origin.clone(),
                detail: e.to_string(),
            })?;
        let name = crd.metadata.name.clone().ok_or_else(|| Error::Manifest {
            origin: origin.clone(),
            detail: "CRD without metadata.name".into(),
        })?;
        crds.patch(&name, &params, &Patch::Apply(&crd)).await?;
        names.push(name);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for name in names {
        loop {
            let crd = crds.get(&name).await?;
            let established = crd
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                break;
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout {
                    what: format!("CRD {name} becoming Established"),
                    secs: 60,
                    detail: "check the kube-apiserver log".into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

fn parse_docs(origin: &str, text: &str) -> Result<Vec<(String, serde_yaml::Value)>, Error> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = serde_yaml::Value::deserialize(doc).map_err(|e| Error::Manifest {
            origin: origin.to_string(),
            detail: e.to_string(),
        })?;
        if !value.is_null() {
            out.push((origin.to_string(), value));
        }
    }
    Ok(out)
}

async fn create_nodes(client: &Client, nodes: &[NodeSpec], kubelet_port: u16) -> Result<(), Error> {
    let api: Api<Node> = Api::all(client.clone());
    for spec in nodes {
        let node = spec.to_node();
        let name = spec.name.clone();
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&node),
        )
        .await?;
        // A Node's status is a subresource: capacity written on create is
        // kept, but an apply to an existing node needs the status endpoint.
        let status = serde_json::json!({
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "status": {
                "capacity": node.status.as_ref().and_then(|s| s.capacity.clone()),
                "allocatable": node.status.as_ref().and_then(|s| s.allocatable.clone()),
                "addresses": node.status.as_ref().and_then(|s| s.addresses.clone()),
                "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
            }
        });
        api.patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&status),
        )
        .await?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut not_ready = Vec::new();
        for spec in nodes {
            let node = api.get(&spec.name).await?;
            let ready = node
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            if !ready {
                not_ready.push(spec.name.clone());
            }
        }
        if not_ready.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::Timeout {
                what: "KWOK marking the fake nodes Ready".into(),
                secs: 60,
                detail: format!(
                    "still not Ready: {}; see the kwok log",
                    not_ready.join(", ")
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Stops every process of the cluster and removes its runtime data, leaving
/// nothing listening. Returns false when nothing was running.
pub fn down(cache: &CacheDirs, name: &str) -> Result<bool, Error> {
    let dir = cache.cluster(name);
    if !dir.exists() {
        return Ok(false);
    }
    let _lock = lock(&dir)?;
    let Some(state) = read_state(&dir) else {
        return Ok(false);
    };
    stop_recorded(&state);
    // A Go process's leader thread can be a zombie (and count as stopped)
    // while its other threads still close its sockets; on a loaded machine
    // that takes a moment. Give the ports a few seconds to be released.
    // Only the ports of the layout it was started with: in an older one,
    // a later port of today's layout was the scaler's, which `down` does
    // not own.
    let last_own = state.ports.apiserver + state.port_count.saturating_sub(2);
    let open_ports = || -> Vec<u16> {
        state
            .ports
            .all()
            .iter()
            .map(|(_, p)| *p)
            .filter(|p| *p <= last_own && process::port_open(*p))
            .collect()
    };
    let mut leftovers = open_ports();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !leftovers.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        leftovers = open_ports();
    }
    let _ = std::fs::remove_file(state_path(&dir));
    for data in [dir.join("etcd"), dir.join(prometheus::SERVER)] {
        if data.exists() {
            std::fs::remove_dir_all(&data).map_err(|e| Error::io(&data, e))?;
        }
    }
    if !leftovers.is_empty() {
        return Err(Error::Timeout {
            what: "releasing the cluster's ports".into(),
            secs: 30,
            detail: format!("ports still open: {leftovers:?}; another process may own them"),
        });
    }
    Ok(true)
}

/// One component's line in `aim dev cluster status`.
#[derive(Debug, Clone, Serialize)]
pub struct ComponentStatus {
    pub name: String,
    pub pid: u32,
    pub port: u16,
    pub running: bool,
    pub listening: bool,
    pub log: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    pub name: String,
    pub running: bool,
    pub apiserver_ready: bool,
    pub server: String,
    pub kubeconfig: PathBuf,
    /// The Prometheus server, when the cluster runs it.
    pub prometheus_url: Option<String>,
    pub components: Vec<ComponentStatus>,
}

/// Reports on a cluster without changing it. `None` when it was never
/// started (or has been taken down).
pub async fn status(cache: &CacheDirs, name: &str) -> Result<Option<ClusterStatus>, Error> {
    let dir = cache.cluster(name);
    let Some(state) = read_state(&dir) else {
        return Ok(None);
    };
    let components: Vec<ComponentStatus> = state
        .components
        .iter()
        .map(|c| ComponentStatus {
            name: c.name.clone(),
            pid: c.pid,
            port: c.port,
            running: process::alive(c.pid),
            listening: process::port_open(c.port),
            log: c.log.clone(),
        })
        .collect();
    let apiserver_ready = match client_for(&state.kubeconfig).await {
        Ok(client) => apiserver_ready(&client).await,
        Err(_) => false,
    };
    Ok(Some(ClusterStatus {
        name: state.name,
        running: components.iter().all(|c| c.running),
        apiserver_ready,
        server: state.server,
        kubeconfig: state.kubeconfig,
        prometheus_url: state
            .prometheus
            .then(|| prometheus::url(state.ports.prometheus().server)),
        components,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cluster_name_has_its_own_loopback_pod_cidr() {
        assert_eq!(default_pod_cidr("test"), "127.1.0.0/16");
        assert_eq!(default_pod_cidr("dev"), "127.2.0.0/16");
        let names = ["test-t3", "dev-t3", "bed", "gw-t3"];
        let mut seen = vec![default_pod_cidr("test"), default_pod_cidr("dev")];
        for name in names {
            let cidr = default_pod_cidr(name);
            let second: u16 = cidr.split('.').nth(1).unwrap().parse().unwrap();
            assert!((10..250).contains(&second), "{name}: {cidr}");
            assert!(!seen.contains(&cidr), "{name}: {cidr} is taken");
            seen.push(cidr);
        }
    }

    #[test]
    fn port_ranges_of_named_clusters_do_not_overlap() {
        let disjoint = |a: u16, b: u16| a + PORT_COUNT <= b || b + PORT_COUNT <= a;
        let dev = default_port_base("dev");
        let test = default_port_base("test");
        assert!(disjoint(dev, test));
        // The lifecycle tests' own clusters sit at fixed bases.
        let fixed = [dev, test, 28440, 29440];
        for name in ["bed", "someone-else", "wt-cache", "x", "lifecycle"] {
            let base = default_port_base(name);
            assert!(
                (20000..26400).contains(&base) && base + PORT_COUNT <= 26400,
                "{name}: {base}"
            );
            assert!(fixed.iter().all(|&f| disjoint(base, f)), "{name}: {base}");
        }
        // Every slot starts on a multiple of PORT_COUNT from 20000, so two
        // hashed names either share a base (same slot) or never overlap.
        for name in ["a", "bb", "ccc", "bed", "test2"] {
            assert_eq!((default_port_base(name) - 20000) % PORT_COUNT, 0);
        }
        // Everything stays below the ephemeral range.
        assert!(fixed.iter().all(|&f| f + PORT_COUNT < 32768));
    }

    #[test]
    fn every_component_has_its_own_port_inside_the_range() {
        let ports = Ports::from_base(20000);
        let all = ports.all();
        let mut numbers: Vec<u16> = all.iter().map(|(_, p)| *p).collect();
        numbers.sort_unstable();
        numbers.dedup();
        assert_eq!(numbers.len(), all.len(), "{all:?}");
        assert!(
            numbers
                .iter()
                .all(|p| (20000..20000 + PORT_COUNT).contains(p))
        );
    }

    #[test]
    fn a_state_file_from_before_the_twenty_port_layout_reads_as_sixteen() {
        let state = serde_json::json!({
            "name": "x", "group": 1,
            "ports": Ports::from_base(20000),
            "components": [], "kubeconfig": "/k", "server": "https://127.0.0.1:20000",
            "ready": true, "keda": true, "kserve": true,
        });
        let state: State = serde_json::from_value(state).unwrap();
        assert_eq!(state.port_count, 16);
        assert!(!state.prometheus);
        assert_ne!(state.port_count, PORT_COUNT, "so `up` starts it over");
    }

    #[test]
    fn parse_docs_skips_empty_documents_and_names_bad_ones() {
        let docs = parse_docs("x.yaml", "---\na: 1\n---\n---\nb: 2\n").unwrap();
        assert_eq!(docs.len(), 2);
        let err = parse_docs("bad.yaml", "a: [1,\n").unwrap_err();
        assert!(err.to_string().contains("bad.yaml"), "{err}");
    }
}
