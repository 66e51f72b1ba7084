//! Harness for tests that need a real Kubernetes control plane.
//!
//! One cluster, named `test`, serves every test binary of a run: the first
//! caller starts it (building the control plane if the cache is cold), and
//! later callers, in this process or another, reuse it. Each test works in
//! a fresh namespace so tests never see each other's objects. Awaits fail
//! with the object and the namespace's events, because "timed out" alone
//! explains nothing.

use std::fmt::Debug;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use aim_devcluster::{CacheDirs, ClusterInfo, ClusterOptions, PrometheusOptions};
use k8s_openapi::api::core::v1::{Event, Namespace};
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::pinned_kind;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::OnceCell;

/// The field manager tests apply with.
pub const TEST_MANAGER: &str = "aim-test";

static CLUSTER: OnceCell<ClusterInfo> = OnceCell::const_new();
static CLUSTER_WITH_KEDA: OnceCell<ClusterInfo> = OnceCell::const_new();
static CLUSTER_WITH_KSERVE: OnceCell<ClusterInfo> = OnceCell::const_new();
static CLUSTER_WITH_PROMETHEUS: OnceCell<ClusterInfo> = OnceCell::const_new();

fn options() -> ClusterOptions {
    let cache = CacheDirs::discover().expect("a cache directory");
    // AIM_TEST_CLUSTER gives parallel work trees clusters of their
    // own: two in-process operators on one cluster would fight.
    let name = std::env::var("AIM_TEST_CLUSTER").unwrap_or_else(|_| "test".into());
    let mut opts = ClusterOptions::new(&name, cache);
    opts.extra_manifests = vec![("aim CRDs".into(), aim_api::all_crds_yaml())];
    opts
}

/// The tier-3 cluster's name: `<test cluster>-t3`. Real KServe and KEDA act
/// on every InferenceService and ScaledObject they see, so they must not
/// share a cluster with the tier-1/2 tests, which play those controllers'
/// parts themselves (seen: KServe's webhook refusing a tier-1 example, KEDA
/// rewriting a tier-1 test's HPA).
fn tier3_options() -> ClusterOptions {
    let base = options();
    let mut opts = ClusterOptions::new(&format!("{}-t3", base.name), base.cache.clone());
    opts.extra_manifests = base.extra_manifests;
    opts
}

/// The shared test cluster, started on first use. In a test binary that
/// asked for [`cluster_with_keda`] or [`cluster_with_kserve`] it is that
/// tier-3 cluster, so helpers like [`client`] and [`install_chart`] act on
/// the cluster the test runs in.
pub async fn cluster() -> &'static ClusterInfo {
    if let Some(c) = CLUSTER_WITH_PROMETHEUS
        .get()
        .or(CLUSTER_WITH_KSERVE.get())
        .or(CLUSTER_WITH_KEDA.get())
    {
        return c;
    }
    CLUSTER
        .get_or_init(|| async {
            aim_devcluster::up(&options())
                .await
                .unwrap_or_else(|e| panic!("starting the test cluster failed: {e}"))
        })
        .await
}

/// The tier-3 test cluster with KEDA's operator and metrics server running.
/// A cluster of its own (see [`tier3_options`]); KEDA joins it if it runs
/// without, and stays for the rest of the run.
pub async fn cluster_with_keda() -> &'static ClusterInfo {
    CLUSTER_WITH_KEDA
        .get_or_init(|| async {
            aim_devcluster::up(&tier3_options().with_keda())
                .await
                .unwrap_or_else(|e| panic!("starting the test cluster with KEDA failed: {e}"))
        })
        .await
}

/// The shared test cluster with KEDA and KServe's controller running (the
/// whole tier-3 loop). KServe's ScaledObjects and sidecars expect an `aim
/// scaler` at [`ClusterInfo::scaler_address`]; a test starts one there.
pub async fn cluster_with_kserve() -> &'static ClusterInfo {
    CLUSTER_WITH_KSERVE
        .get_or_init(|| async {
            aim_devcluster::up(&tier3_options().with_keda().with_kserve())
                .await
                .unwrap_or_else(|e| panic!("starting the test cluster with KServe failed: {e}"))
        })
        .await
}

/// The tier-3 cluster (KEDA and KServe) with Prometheus and
/// prometheus-operator as well: the cluster's ServiceMonitors, PodMonitors
/// and PrometheusRules configure a real Prometheus at
/// [`ClusterInfo::prometheus_url`]. `options.aim_binary` is the `aim` whose
/// `dev prometheus-bridge` runs as the bridge (a test passes
/// `env!("CARGO_BIN_EXE_aim")`).
///
/// The same cluster as [`cluster_with_kserve`]: Prometheus joins it on
/// first use and stays for the rest of the run, so tier-3 tests that do not
/// ask for it do not pay for it (three more processes and a few seconds
/// at start). A cluster that has it takes `options`' intervals.
pub async fn cluster_with_prometheus(options: PrometheusOptions) -> &'static ClusterInfo {
    CLUSTER_WITH_PROMETHEUS
        .get_or_init(|| async {
            aim_devcluster::up(
                &tier3_options()
                    .with_keda()
                    .with_kserve()
                    .with_prometheus(options),
            )
            .await
            .unwrap_or_else(|e| panic!("starting the test cluster with Prometheus failed: {e}"))
        })
        .await
}

/// A client for the test cluster. Make one per test: a client belongs to
/// the async runtime that created it, and every `#[tokio::test]` has its own.
pub async fn client() -> Client {
    cluster()
        .await
        .client()
        .await
        .expect("a client for the test cluster")
}

static NAMESPACE_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Creates a namespace unique to this test, labelled so leftovers are easy
/// to find: `<prefix>-<pid>-<n>`.
pub async fn namespace(client: &Client, prefix: &str) -> String {
    let n = NAMESPACE_COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() % 10_000)
        .unwrap_or(0);
    let name = format!("{prefix}-{}-{n}-{nanos}", std::process::id());
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {"aim.eai.amd.com/test": "true"}}
    }))
    .expect("static namespace");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
    name
}

/// Deletes a test's namespace once it passed, so its leftovers stop keeping
/// controllers busy while later tests run. A failing test never gets here
/// and keeps its namespace for a look.
pub async fn delete_namespace(client: &Client, ns: &str) {
    Api::<Namespace>::all(client.clone())
        .delete(ns, &kube::api::DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("deleting namespace {ns}: {e}"));
}

/// Gives a pod's container the log its real image would print. KWOK plays
/// the node's kubelet: a `Logs` object points it at a file in CRI format,
/// and whoever reads `pods/log` through the apiserver gets these lines.
/// Call it again to replace the text (a growing log, a progress bar).
pub async fn set_pod_log(client: &Client, namespace: &str, pod: &str, container: &str, text: &str) {
    let info = cluster().await;
    let dir = info
        .kubeconfig
        .parent()
        .expect("the kubeconfig lives in the cluster directory")
        .join("pod-logs");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {dir:?}: {e}"));
    let file = dir.join(format!("{namespace}_{pod}_{container}.log"));
    let stamp = "2026-01-01T00:00:00.000000000Z";
    let mut cri = String::new();
    for line in text.lines() {
        cri.push_str(&format!("{stamp} stdout F {line}\n"));
    }
    // Write then rename, so a reader never sees half a log.
    let partial = file.with_extension("partial");
    std::fs::write(&partial, cri).unwrap_or_else(|e| panic!("writing {partial:?}: {e}"));
    std::fs::rename(&partial, &file).unwrap_or_else(|e| panic!("renaming to {file:?}: {e}"));
    let logs = serde_json::json!({
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "Logs",
        "metadata": {"name": pod, "namespace": namespace},
        "spec": {"logs": [{"containers": [container], "logsFile": file}]}
    });
    let gvk = GroupVersionKind::gvk("kwok.x-k8s.io", "v1alpha1", "Logs");
    let (resource, _) = pinned_kind(client, &gvk).await.unwrap_or_else(|e| {
        panic!("KWOK's Logs kind is not served (is the kwok CRD installed?): {e}")
    });
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    api.patch(
        pod,
        &PatchParams::apply(TEST_MANAGER).force(),
        &Patch::Apply(&logs),
    )
    .await
    .unwrap_or_else(|e| panic!("declaring the log of pod {namespace}/{pod}: {e}"));
}

/// Server-side applies every document of a YAML stream, in order. Namespaced
/// objects land in `namespace` whatever their manifest says. Returns the
/// first error with the document it came from.
pub async fn apply_yaml(
    client: &Client,
    namespace: &str,
    yaml: &str,
) -> Result<Vec<DynamicObject>, ApplyError> {
    let mut applied = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value: serde_yaml::Value = serde::Deserialize::deserialize(doc)?;
        if value.is_null() {
            continue;
        }
        let mut obj: DynamicObject = serde_yaml::from_value(value)?;
        let types = obj.types.clone().ok_or(ApplyError::NoType)?;
        let gvk =
            GroupVersionKind::try_from(&types).map_err(|e| ApplyError::Other(e.to_string()))?;
        let (resource, caps) = pinned_kind(client, &gvk).await.map_err(ApplyError::Kube)?;
        let name = obj.name_any();
        let api: Api<DynamicObject> = if caps.scope == kube::discovery::Scope::Namespaced {
            obj.metadata.namespace = Some(namespace.to_string());
            Api::namespaced_with(client.clone(), namespace, &resource)
        } else {
            Api::all_with(client.clone(), &resource)
        };
        let out = api
            .patch(
                &name,
                &PatchParams::apply(TEST_MANAGER),
                &Patch::Apply(&obj),
            )
            .await
            .map_err(ApplyError::Kube)?;
        applied.push(out);
    }
    Ok(applied)
}

#[derive(Debug)]
pub enum ApplyError {
    Yaml(serde_yaml::Error),
    NoType,
    Kube(kube::Error),
    Other(String),
}

impl From<serde_yaml::Error> for ApplyError {
    fn from(e: serde_yaml::Error) -> Self {
        ApplyError::Yaml(e)
    }
}

impl std::fmt::Display for ApplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApplyError::Yaml(e) => write!(f, "YAML: {e}"),
            ApplyError::NoType => f.write_str("a document without apiVersion/kind"),
            ApplyError::Kube(e) => write!(f, "{e}"),
            ApplyError::Other(e) => f.write_str(e),
        }
    }
}

impl ApplyError {
    /// The apiserver's message, for asserting on validation errors.
    pub fn api_message(&self) -> Option<&str> {
        match self {
            ApplyError::Kube(kube::Error::Api(status)) => Some(status.message.as_str()),
            _ => None,
        }
    }
}

/// Polls `get` until `done` holds or `timeout` passes. On timeout it panics
/// with `what`, the last object seen (as YAML) and the events of `namespace`.
pub async fn await_object<K>(
    api: &Api<K>,
    name: &str,
    what: &str,
    timeout: Duration,
    done: impl Fn(&K) -> bool,
) -> K
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    let deadline = Instant::now() + timeout;
    let mut last: Option<K> = None;
    let mut last_error = String::new();
    loop {
        match api.get_opt(name).await {
            Ok(Some(obj)) => {
                if done(&obj) {
                    return obj;
                }
                last = Some(obj);
            }
            Ok(None) => last_error = format!("{name} does not exist"),
            Err(e) => last_error = e.to_string(),
        }
        if Instant::now() > deadline {
            let namespace = last.as_ref().and_then(|o| o.meta().namespace.clone());
            let dump = last
                .as_ref()
                .map(|o| serde_yaml::to_string(o).unwrap_or_default())
                .unwrap_or_else(|| "(never seen)".into());
            let events = match &namespace {
                Some(ns) => events_of(&api.clone().into_client(), ns).await,
                None => String::new(),
            };
            panic!(
                "timed out after {:?} waiting for {what} ({name}). Last error: {last_error}\nLast object:\n{dump}\nEvents:\n{events}",
                timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The events of a namespace, one line each, for failure reports.
pub async fn events_of(client: &Client, namespace: &str) -> String {
    let api: Api<Event> = Api::namespaced(client.clone(), namespace);
    match api.list(&ListParams::default()).await {
        Ok(list) => list
            .items
            .iter()
            .map(|e| {
                format!(
                    "  {} {}/{} {}: {}",
                    e.type_.clone().unwrap_or_default(),
                    e.involved_object.kind.clone().unwrap_or_default(),
                    e.involved_object.name.clone().unwrap_or_default(),
                    e.reason.clone().unwrap_or_default(),
                    e.message.clone().unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Err(e) => format!("  (listing events failed: {e})"),
    }
}

/// A path inside the repository, from a crate's manifest dir.
pub fn repo_path(relative: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(relative)
}

static CHART: OnceCell<()> = OnceCell::const_new();

/// Installs `deploy/chart` into the shared cluster with the real helm, as a
/// user would (`helm upgrade --install aim deploy/chart -n aim-system`), with
/// every monitoring object on so they meet prometheus-operator's real CRDs.
/// Once per test binary; the upgrade keeps it idempotent across binaries.
/// The chart's Deployments become KWOK pods: nothing runs in them, but the
/// RBAC, Services and monitoring objects are real.
pub async fn install_chart() {
    CHART
        .get_or_init(|| async {
            let info = cluster().await;
            let client = client().await;
            let namespaces: Api<Namespace> = Api::all(client);
            for ns in ["aim-system", "keda"] {
                let object: Namespace = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": ns}
                }))
                .expect("a namespace");
                match namespaces.create(&PostParams::default(), &object).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
                    Err(e) => panic!("creating namespace {ns}: {e}"),
                }
            }
            let helm = CacheDirs::discover()
                .expect("a cache directory")
                .binary("helm");
            assert!(
                helm.exists(),
                "{} is missing: run `aim dev cluster build` (dev/test does)",
                helm.display()
            );
            let out = tokio::process::Command::new(&helm)
                .args(["upgrade", "--install", "aim"])
                .arg(repo_path("deploy/chart"))
                .args(["--namespace", "aim-system", "--kubeconfig"])
                .arg(&info.kubeconfig)
                .args([
                    "--set",
                    "monitoring.serviceMonitor.enabled=true",
                    "--set",
                    "monitoring.podMonitor.enabled=true",
                    "--set",
                    "monitoring.prometheusRule.enabled=true",
                    "--set",
                    "monitoring.dashboard.enabled=true",
                    // The alerts that a tier-3 run makes fire for real
                    // wait seconds, not the file's minutes (promtool's
                    // unit tests hold the file's own durations).
                    "--set",
                    "monitoring.prometheusRule.for.AIMAtMaxReplicasWithQueue=20s",
                    "--set",
                    "monitoring.prometheusRule.for.AIMScalerReceivesNothing=20s",
                ])
                .output()
                .await
                .expect("helm runs");
            assert!(
                out.status.success(),
                "helm upgrade --install failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        })
        .await;
}

/// Serves Debian's `docker-registry` (installed by `dev/registry.sh`) with
/// `config` on loopback `port`, logging to `dir/log`, and waits until it
/// listens. A watcher shell stops it when this test process exits, so no
/// registry outlives the tests that started it.
pub fn serve_registry(dir: &std::path::Path, config: &std::path::Path, port: u16) {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let script = format!(
        "docker-registry serve '{}' >'{}' 2>&1 & r=$!; while kill -0 {} 2>/dev/null && kill -0 $r 2>/dev/null; do sleep 1; done; kill $r 2>/dev/null",
        config.display(),
        dir.join("log").display(),
        std::process::id()
    );
    let mut watcher = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sh starts");
    // Reaped when the registry stops (never before this process exits).
    std::thread::spawn(move || watcher.wait());
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "docker-registry did not listen on {port}; log: {}",
            std::fs::read_to_string(dir.join("log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
