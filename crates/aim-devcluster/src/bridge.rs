//! The bed's Prometheus bridge: a long-running process of the cluster
//! (`aim dev prometheus-bridge`, started by `up` like the Go components)
//! that stands in for what the Prometheus pod would have around the server:
//!
//! - the config reloader: it follows the Secret and the rule ConfigMaps
//!   prometheus-operator writes, turns them into files the local server
//!   loads ([`crate::promconfig`]) and POSTs `/-/reload`. A configuration
//!   that cannot be rendered, or that Prometheus refuses, is logged with the
//!   reason and the previous one stays loaded (and on disk);
//! - the endpoint slices Services of loopback pods need
//!   ([`crate::loopback_slices`]), so ServiceMonitors find their targets,
//!   and the slice of `prometheus-operated`, which leads to the local
//!   server;
//! - the Service proxy ([`crate::service_proxy`]) through which KEDA
//!   reaches `*.svc` addresses such as that one.
//!
//! All are watches on the API, which is why they share a process: it
//! outlives `aim dev cluster up`, which only starts the bed. It serves
//! `/healthz` and its own counters on `/metrics`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use crate::promconfig::{self, Layout};
use crate::{Error, loopback_slices};

const FIELD_MANAGER: &str = "aim-devcluster-bridge";
/// Events arrive in bursts (the operator writes the Secret and each rule
/// ConfigMap in turn); one pass after the burst is enough.
const SETTLE: Duration = Duration::from_millis(300);
/// How soon a reload Prometheus did not answer is tried again.
const RETRY: Duration = Duration::from_secs(2);

/// Everything the bridge needs, as `up` passes it on the command line.
#[derive(Debug, Clone, PartialEq)]
pub struct BridgeArgs {
    pub kubeconfig: PathBuf,
    /// Namespace and name of the Prometheus object.
    pub namespace: String,
    pub prometheus: String,
    /// The local server's directory: `prometheus.yaml` and `rules/`.
    pub dir: PathBuf,
    /// The local server, e.g. `http://127.0.0.1:20016`.
    pub prometheus_url: String,
    /// Where `/healthz` and `/metrics` listen.
    pub listen: std::net::SocketAddr,
    /// promtool, which says why Prometheus refused a configuration (its
    /// reload answer only says that it did).
    pub promtool: PathBuf,
    /// Where the Service proxy listens ([`crate::service_proxy`]), if at all.
    pub service_proxy: Option<std::net::SocketAddr>,
}

impl BridgeArgs {
    /// The arguments after `aim dev prometheus-bridge`.
    pub fn command_line(&self) -> Vec<String> {
        vec![
            format!("--kubeconfig={}", self.kubeconfig.display()),
            format!("--namespace={}", self.namespace),
            format!("--prometheus={}", self.prometheus),
            format!("--dir={}", self.dir.display()),
            format!("--prometheus-url={}", self.prometheus_url),
            format!("--listen={}", self.listen),
            format!("--promtool={}", self.promtool.display()),
        ]
        .into_iter()
        .chain(
            self.service_proxy
                .map(|a| format!("--service-proxy-listen={a}")),
        )
        .collect()
    }

    /// The file the server's `--config.file` names.
    pub fn config_file(&self) -> PathBuf {
        config_file(&self.dir)
    }
}

pub(crate) fn config_file(dir: &Path) -> PathBuf {
    dir.join("prometheus.yaml")
}

/// The counters on `/metrics`.
#[derive(Default)]
struct Counters {
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    render_failed: AtomicU64,
    slices_applied: AtomicU64,
    slice_errors: AtomicU64,
}

impl Counters {
    fn render(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "# HELP aim_prometheus_bridge_reloads_total Reloads of the local Prometheus, by result.\n\
             # TYPE aim_prometheus_bridge_reloads_total counter\n\
             aim_prometheus_bridge_reloads_total{{result=\"ok\"}} {}\n\
             aim_prometheus_bridge_reloads_total{{result=\"failed\"}} {}\n\
             # HELP aim_prometheus_bridge_render_failures_total Operator configurations the bridge could not turn into a local one.\n\
             # TYPE aim_prometheus_bridge_render_failures_total counter\n\
             aim_prometheus_bridge_render_failures_total {}\n\
             # HELP aim_prometheus_bridge_slices_applied_total Loopback EndpointSlices written.\n\
             # TYPE aim_prometheus_bridge_slices_applied_total counter\n\
             aim_prometheus_bridge_slices_applied_total {}\n\
             # HELP aim_prometheus_bridge_slice_errors_total Failed EndpointSlice writes or deletes.\n\
             # TYPE aim_prometheus_bridge_slice_errors_total counter\n\
             aim_prometheus_bridge_slice_errors_total {}\n",
            get(&self.reloads_ok),
            get(&self.reloads_failed),
            get(&self.render_failed),
            get(&self.slices_applied),
            get(&self.slice_errors),
        )
    }
}

/// Runs until the process is stopped (the bed's `down`). Fails only if it
/// cannot start: no kubeconfig, port taken.
pub async fn run(args: BridgeArgs) -> Result<(), Error> {
    let client = crate::cluster::client_for(&args.kubeconfig).await?;
    let counters = Arc::new(Counters::default());
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| Error::io(Path::new(&args.listen.to_string()), e))?;
    // One watch on every Service serves both the slice writer (whose loop it
    // wakes) and the Service proxy (which only reads it).
    let slice_changes = Arc::new(Notify::new());
    let services = reflect(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
        slice_changes.clone(),
    );
    let proxy_counters = Arc::new(crate::service_proxy::ProxyCounters::default());
    let proxy = match args.service_proxy {
        Some(address) => {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .map_err(|e| Error::io(Path::new(&address.to_string()), e))?;
            // Every slice, not only the bridge's: a Service's endpoints may
            // come from the controller. Nothing waits on its changes.
            let slices = reflect(
                Api::<EndpointSlice>::all(client.clone()),
                watcher::Config::default(),
                Arc::new(Notify::new()),
            );
            tracing::info!(listen = %address, "service proxy started");
            tokio::spawn(crate::service_proxy::serve(
                listener,
                services.clone(),
                slices,
                proxy_counters.clone(),
            ))
        }
        None => tokio::spawn(std::future::pending()),
    };
    let metrics = counters.clone();
    let proxy_metrics = proxy_counters.clone();
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route(
            "/metrics",
            axum::routing::get(move || {
                let (metrics, proxy_metrics) = (metrics.clone(), proxy_metrics.clone());
                async move { metrics.render() + &proxy_metrics.render() }
            }),
        );
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    tracing::info!(listen = %args.listen, prometheus = %args.prometheus_url, "prometheus bridge started");

    let config = tokio::spawn(follow_config(
        client.clone(),
        args.clone(),
        counters.clone(),
    ));
    let local_server = url_port(&args.prometheus_url).map(|port| (args.namespace.clone(), port));
    let slices = tokio::spawn(follow_slices(
        client,
        counters,
        local_server,
        services,
        slice_changes,
    ));
    tokio::select! {
        r = proxy => tracing::error!(?r, "the service proxy stopped"),
        r = server => tracing::error!(?r, "the health server stopped"),
        r = config => tracing::error!(?r, "the config bridge stopped"),
        r = slices => tracing::error!(?r, "the endpoint slice writer stopped"),
    }
    Err(Error::BridgeStopped)
}

/// A reflector over `api` that pokes `notify` on every change.
fn reflect<K>(api: Api<K>, config: watcher::Config, notify: Arc<Notify>) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, writer) = reflector::store();
    let kind = K::kind(&Default::default()).to_string();
    let stream = watcher(api, config)
        .default_backoff()
        .reflect(writer)
        .touched_objects();
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            if let Err(e) = event {
                tracing::warn!(kind, error = %e, "watch error; retrying with backoff");
            }
            notify.notify_one();
        }
    });
    reader
}

/// Waits for a change, then for the burst to settle.
async fn settled(notify: &Notify) {
    notify.notified().await;
    tokio::time::sleep(SETTLE).await;
}

async fn follow_config(client: Client, args: BridgeArgs, counters: Arc<Counters>) {
    let notify = Arc::new(Notify::new());
    let secret_name = format!("prometheus-{}", args.prometheus);
    let secrets = reflect(
        Api::<Secret>::namespaced(client.clone(), &args.namespace),
        watcher::Config::default().fields(&format!("metadata.name={secret_name}")),
        notify.clone(),
    );
    let configmaps = reflect(
        Api::<ConfigMap>::namespaced(client.clone(), &args.namespace),
        watcher::Config::default().labels(&format!("prometheus-name={}", args.prometheus)),
        notify.clone(),
    );
    let rules_prefix = format!("prometheus-{}-rulefiles-", args.prometheus);
    let http = crate::http_client();
    // The generation in force, and the last one refused: neither is tried
    // again until the operator's output changes.
    let mut loaded: Option<u64> = None;
    let mut refused: Option<u64> = None;
    loop {
        settled(&notify).await;
        let Some(secret) = secrets.state().into_iter().next() else {
            continue;
        };
        let qualified = format!("{}/{secret_name}", args.namespace);
        let data = secret
            .data
            .as_ref()
            .and_then(|d| d.get(promconfig::CONFIG_KEY))
            .map(|b| b.0.as_slice());
        let rule_maps: BTreeMap<String, BTreeMap<String, String>> = configmaps
            .state()
            .iter()
            .filter(|cm| cm.name_any().starts_with(&rules_prefix))
            .map(|cm| {
                let data = cm.data.clone().unwrap_or_default().into_iter().collect();
                (cm.name_any(), data)
            })
            .collect();
        let generated = match promconfig::unzip(&qualified, data) {
            Ok(text) => text,
            Err(e) => {
                counters.render_failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "cannot read the operator's configuration; the previous one stays loaded");
                continue;
            }
        };
        let fingerprint = promconfig::fingerprint(&generated, &rule_maps);
        if loaded == Some(fingerprint) || refused == Some(fingerprint) {
            continue;
        }
        match apply(&args, &http, &generated, &rule_maps, fingerprint).await {
            Ok(()) => {
                loaded = Some(fingerprint);
                refused = None;
                counters.reloads_ok.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    generation = format!("{fingerprint:016x}"),
                    rule_configmaps = rule_maps.len(),
                    "Prometheus reloaded with the operator's configuration"
                );
            }
            Err(Failure::Render(e)) => {
                refused = Some(fingerprint);
                counters.render_failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "the operator's configuration cannot run locally; the previous one stays loaded");
            }
            Err(Failure::Reload(e)) => {
                refused = Some(fingerprint);
                counters.reloads_failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "Prometheus refused the new configuration; the previous one stays loaded and on disk");
            }
            Err(Failure::Unreachable(e)) => {
                // Not a verdict on the configuration: try it again shortly.
                counters.reloads_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "Prometheus did not answer the reload; retrying");
                let notify = notify.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(RETRY).await;
                    notify.notify_one();
                });
            }
        }
    }
}

#[derive(Debug)]
enum Failure {
    Render(promconfig::ConfigError),
    /// Prometheus answered and refused.
    Reload(String),
    /// Prometheus did not answer, or a file could not be written.
    Unreachable(String),
}

/// Writes one generation (its rule files in a directory of its own, then
/// the config file by rename) and reloads. On a refusal the previous
/// config file is put back, so the file always matches what is loaded.
async fn apply(
    args: &BridgeArgs,
    http: &reqwest::Client,
    generated: &str,
    rule_maps: &BTreeMap<String, BTreeMap<String, String>>,
    fingerprint: u64,
) -> Result<(), Failure> {
    let rules_root = args.dir.join("rules");
    let generation = rules_root.join(format!("{fingerprint:016x}"));
    let layout = Layout {
        kubeconfig: args.kubeconfig.clone(),
        rules_dir: generation.clone(),
        pod_name: format!("prometheus-{}-0", args.prometheus),
    };
    let rendered = promconfig::render(generated, rule_maps, &layout).map_err(Failure::Render)?;
    let io =
        |what: &Path, e: std::io::Error| Failure::Unreachable(format!("{}: {e}", what.display()));
    let _ = std::fs::remove_dir_all(&generation);
    for (relative, text) in &rendered.rule_files {
        let path = generation.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
        }
        std::fs::write(&path, text).map_err(|e| io(&path, e))?;
    }
    let config = args.config_file();
    let previous = std::fs::read_to_string(&config).ok();
    let next = args.dir.join("prometheus.yaml.next");
    std::fs::write(&next, &rendered.config).map_err(|e| io(&next, e))?;
    std::fs::rename(&next, &config).map_err(|e| io(&config, e))?;

    match reload(http, &args.prometheus_url).await {
        Ok(()) => {
            // Older generations' rule files are no longer read.
            if let Ok(entries) = std::fs::read_dir(&rules_root) {
                for entry in entries.flatten() {
                    if entry.path() != generation {
                        let _ = std::fs::remove_dir_all(entry.path());
                    }
                }
            }
            Ok(())
        }
        Err(Failure::Reload(refusal)) => {
            let reason = explain(&args.promtool, &config).await;
            if let Some(previous) = previous {
                let _ = std::fs::write(&next, previous);
                let _ = std::fs::rename(&next, &config);
            }
            let _ = std::fs::remove_dir_all(&generation);
            Err(Failure::Reload(format!("{refusal}\n{reason}")))
        }
        Err(e) => {
            if let Some(previous) = previous {
                let _ = std::fs::write(&next, previous);
                let _ = std::fs::rename(&next, &config);
            }
            let _ = std::fs::remove_dir_all(&generation);
            Err(e)
        }
    }
}

/// What `promtool check config` says about a configuration Prometheus
/// refused: the file, line and rule at fault.
async fn explain(promtool: &Path, config: &Path) -> String {
    let out = tokio::process::Command::new(promtool)
        .args(["check", "config"])
        .arg(config)
        .output()
        .await;
    match out {
        Ok(out) => format!(
            "promtool check config says:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .trim_end()
        .to_string(),
        Err(e) => format!("(running {} failed: {e})", promtool.display()),
    }
}

/// POST `/-/reload`: Prometheus answers once the new configuration is in
/// force, or with the reason it kept the old one.
async fn reload(http: &reqwest::Client, base: &str) -> Result<(), Failure> {
    let url = format!("{}/-/reload", base.trim_end_matches('/'));
    let response = http
        .post(&url)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .map_err(|e| Failure::Unreachable(format!("POST {url}: {e}")))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let body = response.text().await.unwrap_or_default();
    Err(Failure::Reload(format!(
        "POST {url}: {status}: {}",
        body.trim()
    )))
}

/// The port of `http://host:port`.
fn url_port(url: &str) -> Option<u16> {
    url.rsplit_once(':')?.1.trim_end_matches('/').parse().ok()
}

/// The Service prometheus-operator makes for every Prometheus in a
/// namespace; here it leads to the local server.
const PROMETHEUS_SERVICE: &str = "prometheus-operated";

/// `local_server`: the namespace of the Prometheus object and the local
/// server's port, for the `prometheus-operated` slice. `services` is the
/// shared Service store, whose reflector pokes `notify`.
async fn follow_slices(
    client: Client,
    counters: Arc<Counters>,
    local_server: Option<(String, u16)>,
    services: Store<Service>,
    notify: Arc<Notify>,
) {
    let pods = reflect(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default(),
        notify.clone(),
    );
    let ours = reflect(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default().labels(&format!(
            "{}={}",
            loopback_slices::MANAGED_BY,
            loopback_slices::MANAGER
        )),
        notify.clone(),
    );
    // What this process last wrote, so an unchanged plan costs no request.
    let mut written: HashMap<(String, String), EndpointSlice> = HashMap::new();
    loop {
        settled(&notify).await;
        let pods: Vec<Pod> = pods.state().iter().map(|p| (**p).clone()).collect();
        let mut by_namespace: HashMap<String, Vec<Pod>> = HashMap::new();
        for pod in pods {
            by_namespace
                .entry(pod.namespace().unwrap_or_default())
                .or_default()
                .push(pod);
        }
        let mut desired: HashMap<(String, String), EndpointSlice> = HashMap::new();
        for service in services.state() {
            let ns = service.namespace().unwrap_or_default();
            let in_ns = by_namespace.get(&ns).map(Vec::as_slice).unwrap_or(&[]);
            for slice in loopback_slices::plan(&service, in_ns) {
                desired.insert((ns.clone(), slice.name_any()), slice);
            }
            if let Some((server_ns, port)) = &local_server
                && *server_ns == ns
                && service.name_any() == PROMETHEUS_SERVICE
            {
                let slice = loopback_slices::at_local_process(&service, *port);
                desired.insert((ns.clone(), slice.name_any()), slice);
            }
        }
        for ((ns, name), slice) in &desired {
            let key = (ns.clone(), name.clone());
            if written.get(&key) == Some(slice) {
                continue;
            }
            let api = Api::<EndpointSlice>::namespaced(client.clone(), ns);
            let params = PatchParams::apply(FIELD_MANAGER).force();
            match api.patch(name, &params, &Patch::Apply(slice)).await {
                Ok(_) => {
                    counters.slices_applied.fetch_add(1, Ordering::Relaxed);
                    written.insert(key, slice.clone());
                }
                Err(e) => {
                    counters.slice_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(namespace = ns, slice = name, error = %e, "writing the loopback EndpointSlice failed; retried on the next change");
                    written.remove(&key);
                }
            }
        }
        for existing in ours.state() {
            let key = (
                existing.namespace().unwrap_or_default(),
                existing.name_any(),
            );
            if desired.contains_key(&key) {
                continue;
            }
            let api = Api::<EndpointSlice>::namespaced(client.clone(), &key.0);
            match api.delete(&key.1, &DeleteParams::default()).await {
                Ok(_) => {
                    written.remove(&key);
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    written.remove(&key);
                }
                Err(e) => {
                    counters.slice_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(namespace = key.0, slice = key.1, error = %e, "deleting a stale loopback EndpointSlice failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The reload path against the real server from the bed's cache
    //! (`dev/control-plane/build.sh prometheus`).

    use super::*;
    use crate::CacheDirs;

    /// Stops the server however the test ends.
    struct Server(std::process::Child);

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    async fn start_server(dir: &Path) -> (Server, String) {
        let binary = CacheDirs::discover()
            .unwrap()
            .binary(crate::prometheus::SERVER);
        assert!(
            binary.exists(),
            "{} is missing: build it with `dev/control-plane/build.sh prometheus`",
            binary.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        std::fs::write(config_file(dir), "global: {scrape_interval: 15s}\n").unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = std::process::Command::new(binary)
            .args(crate::prometheus::server_args(dir, port))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let server = Server(child);
        let url = crate::prometheus::url(port);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !crate::http_client()
            .get(format!("{url}/-/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(
                std::time::Instant::now() < deadline,
                "prometheus did not become ready: {}",
                std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        (server, url)
    }

    async fn rule_groups(url: &str) -> Vec<String> {
        let text = crate::http_client()
            .get(format!("{url}/api/v1/rules"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_str(&text).unwrap();
        body["data"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["name"].as_str().unwrap().to_string())
            .collect()
    }

    fn rules(group: &str, expr: &str) -> BTreeMap<String, BTreeMap<String, String>> {
        BTreeMap::from([(
            "prometheus-aim-rulefiles-0".to_string(),
            BTreeMap::from([(
                "monitoring-test.yaml".to_string(),
                format!(
                    "groups:\n- name: {group}\n  rules:\n  - record: aim_test:one\n    expr: {expr}\n"
                ),
            )]),
        )])
    }

    const GENERATED: &str = "global:\n  external_labels:\n    prometheus: monitoring/aim\n    prometheus_replica: $(POD_NAME)\nrule_files:\n- /etc/prometheus/rules/prometheus-aim-rulefiles-0/*.yaml\n";

    #[tokio::test]
    async fn a_refused_configuration_leaves_the_previous_one_loaded_and_on_disk() {
        let dir = std::env::temp_dir().join(format!("aim-bridge-reload-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (_server, url) = start_server(&dir).await;
        let args = BridgeArgs {
            kubeconfig: dir.join("kubeconfig"),
            namespace: "monitoring".into(),
            prometheus: "aim".into(),
            dir: dir.clone(),
            prometheus_url: url.clone(),
            listen: "127.0.0.1:0".parse().unwrap(),
            promtool: CacheDirs::discover()
                .unwrap()
                .binary(crate::prometheus::PROMTOOL),
            service_proxy: None,
        };
        let http = crate::http_client();

        let good = rules("good", "vector(1)");
        let good_print = promconfig::fingerprint(GENERATED, &good);
        apply(&args, &http, GENERATED, &good, good_print)
            .await
            .expect("a valid configuration loads");
        assert_eq!(rule_groups(&url).await, ["good"]);
        let loaded = std::fs::read_to_string(args.config_file()).unwrap();
        assert!(
            loaded.contains("prometheus_replica: prometheus-aim-0"),
            "{loaded}"
        );

        // Not PromQL: Prometheus refuses the reload and says why.
        let bad = rules("bad", "sum(");
        let bad_print = promconfig::fingerprint(GENERATED, &bad);
        let err = apply(&args, &http, GENERATED, &bad, bad_print)
            .await
            .expect_err("Prometheus refuses a rule that does not parse");
        let Failure::Reload(message) = err else {
            panic!("expected a refusal, got {err:?}");
        };
        // Prometheus's answer, and promtool's reason naming file and rule.
        assert!(message.contains("500"), "{message}");
        assert!(message.contains("monitoring-test.yaml"), "{message}");
        assert!(message.contains("unclosed left parenthesis"), "{message}");
        // Still the previous configuration, in the server and on disk.
        assert_eq!(rule_groups(&url).await, ["good"]);
        assert_eq!(std::fs::read_to_string(args.config_file()).unwrap(), loaded);
        let generations: Vec<_> = std::fs::read_dir(dir.join("rules"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        assert_eq!(generations, [format!("{good_print:016x}")]);

        // A configuration the bed cannot run locally never reaches it.
        let err = apply(
            &args,
            &http,
            "scrape_configs:\n- job_name: x\n  bearer_token_file: /var/run/secrets/kubernetes.io/serviceaccount/token\n",
            &BTreeMap::new(),
            1,
        )
        .await
        .expect_err("a pod path is refused");
        assert!(matches!(err, Failure::Render(_)), "{err:?}");
        assert_eq!(std::fs::read_to_string(args.config_file()).unwrap(), loaded);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
