//! Prometheus as the bed runs it (`--with-prometheus`): the real server and
//! prometheus-operator, both built from their Go modules, as local
//! processes, with the bed's bridge between them.
//!
//! The chain is the one a cluster with prometheus-operator has:
//! ServiceMonitors, PodMonitors and PrometheusRules → the operator →
//! the Secret and ConfigMaps it generates for the `Prometheus` object →
//! (the config reloader; here the bridge) → the server. So whatever the
//! chart's monitoring objects say is what gets scraped and evaluated.
//!
//! The `Prometheus` object asks for zero replicas: the operator still
//! generates the configuration, and its StatefulSet starts no pod. A pod
//! would land on a KWOK node and be reported Running with nothing behind
//! it, a second "Prometheus" that answers nothing; the real one is the
//! local process.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::{CacheDirs, Error};

pub const OPERATOR: &str = "prometheus-operator";
pub const SERVER: &str = "prometheus";
pub const BRIDGE: &str = "prometheus-bridge";
pub const PROMTOOL: &str = "promtool";
pub const NAMESPACE: &str = "monitoring";
/// The `Prometheus` object's name: the operator's Secret is
/// `prometheus-aim`, its rule ConfigMaps `prometheus-aim-rulefiles-<n>`.
pub const NAME: &str = "aim";
/// How long the local server keeps samples: a bed lives for a test run or
/// a demo.
const RETENTION: &str = "6h";

/// What a cluster's Prometheus is asked to do.
#[derive(Debug, Clone)]
pub struct PrometheusOptions {
    /// The `aim` binary: its `aim dev prometheus-bridge` is the bridge
    /// process.
    pub aim_binary: PathBuf,
    /// The `Prometheus` object's `scrapeInterval` (monitors may set their
    /// own, as the chart's do).
    pub scrape_interval: Duration,
    /// Its `evaluationInterval`: how often rules are evaluated.
    pub evaluation_interval: Duration,
}

impl PrometheusOptions {
    /// Prometheus's defaults scaled to a bed: both intervals 15 s (the
    /// chart's monitors scrape every 15 s too).
    pub fn new(aim_binary: impl Into<PathBuf>) -> Self {
        Self {
            aim_binary: aim_binary.into(),
            scrape_interval: Duration::from_secs(15),
            evaluation_interval: Duration::from_secs(15),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct PrometheusPorts {
    pub operator: u16,
    pub server: u16,
    pub bridge: u16,
    /// The bridge's Service proxy, KEDA's `HTTP_PROXY`.
    pub service_proxy: u16,
}

/// Both binaries, the operator's other CRDs and promtool, or an error
/// naming the build command.
pub fn prerequisites(cache: &CacheDirs) -> Result<(), Error> {
    let mut missing: Vec<String> = [OPERATOR, SERVER, PROMTOOL]
        .into_iter()
        .map(|b| cache.binary(b))
        .filter(|p| !p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if stack_crd_files(cache).is_empty() {
        missing.push(cache.manifests(OPERATOR).display().to_string());
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::NotBuilt {
            component: "Prometheus",
            missing: missing.join(", "),
            target: "prometheus` and `dev/control-plane/build.sh prometheus-operator",
        })
    }
}

/// prometheus-operator's CRDs beyond the three every cluster has.
pub fn stack_crd_files(cache: &CacheDirs) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(cache.manifests(OPERATOR))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// The release a Prometheus module version is: v0.3XX.Y → v3.XX.Y. The
/// operator shapes the configuration for the version the object names.
pub fn release_of(module_version: &str) -> Option<String> {
    let rest = module_version.strip_prefix("v0.3")?;
    let (minor, patch) = rest.split_once('.')?;
    let minor: u32 = minor.parse().ok()?;
    let patch: u32 = patch.parse().ok()?;
    Some(format!("v3.{minor}.{patch}"))
}

/// A Prometheus duration: whole seconds where it is, milliseconds
/// otherwise.
fn seconds(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// The `monitoring` namespace and the `Prometheus` object: every
/// ServiceMonitor, PodMonitor, Probe, ScrapeConfig and PrometheusRule in
/// every namespace, discovered through EndpointSlices (the bed writes
/// slices for loopback pods; it cannot write Endpoints), zero replicas.
pub fn objects(options: &PrometheusOptions, release: &str) -> Vec<Value> {
    let labels = json!({"app.kubernetes.io/managed-by": "aim-devcluster"});
    let all = json!({});
    let scrape = options.scrape_interval;
    // A scrape may not outlast its interval; 10 s is the operator's default.
    let timeout = scrape.min(Duration::from_secs(10));
    vec![
        json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": NAMESPACE, "labels": labels},
        }),
        json!({
            "apiVersion": "monitoring.coreos.com/v1", "kind": "Prometheus",
            "metadata": {"name": NAME, "namespace": NAMESPACE, "labels": labels},
            "spec": {
                "version": release,
                "replicas": 0,
                "scrapeInterval": seconds(scrape),
                "scrapeTimeout": seconds(timeout),
                "evaluationInterval": seconds(options.evaluation_interval),
                "serviceDiscoveryRole": "EndpointSlice",
                "serviceMonitorSelector": all, "serviceMonitorNamespaceSelector": all,
                "podMonitorSelector": all, "podMonitorNamespaceSelector": all,
                "probeSelector": all, "probeNamespaceSelector": all,
                "scrapeConfigSelector": all, "scrapeConfigNamespaceSelector": all,
                "ruleSelector": all, "ruleNamespaceSelector": all,
            },
        }),
    ]
}

/// What the server loads until the bridge hands it the operator's
/// configuration.
pub fn initial_config(options: &PrometheusOptions) -> String {
    format!(
        "# The bed's placeholder until prometheus-operator's configuration arrives\n\
         # through the bridge (aim dev prometheus-bridge).\n\
         global:\n  scrape_interval: {}\n  evaluation_interval: {}\n",
        seconds(options.scrape_interval),
        seconds(options.evaluation_interval)
    )
}

pub fn server_args(dir: &Path, port: u16) -> Vec<String> {
    let p = |path: &Path| path.display().to_string();
    vec![
        format!("--config.file={}", p(&crate::bridge::config_file(dir))),
        format!("--storage.tsdb.path={}", p(&dir.join("data"))),
        format!("--storage.tsdb.retention.time={RETENTION}"),
        format!("--web.listen-address=127.0.0.1:{port}"),
        // The bridge's reload (what the config reloader sidecar does).
        "--web.enable-lifecycle".to_string(),
        "--log.level=info".to_string(),
    ]
}

pub fn operator_args(port: u16) -> Vec<String> {
    vec![
        format!("--web.listen-address=127.0.0.1:{port}"),
        "--log-level=info".to_string(),
    ]
}

/// The operator finds the cluster through `KUBECONFIG`.
pub fn operator_env(kubeconfig: &Path) -> Vec<(&'static str, String)> {
    vec![("KUBECONFIG", kubeconfig.display().to_string())]
}

pub fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_versions_map_to_releases() {
        assert_eq!(release_of("v0.316.0").as_deref(), Some("v3.16.0"));
        assert_eq!(release_of("v0.300.1").as_deref(), Some("v3.0.1"));
        assert_eq!(release_of("v2.55.0"), None);
        // The pin the bed builds is a 3.x release.
        let pin = crate::pins()
            .into_iter()
            .find(|(k, _)| k == "PROMETHEUS_VERSION")
            .expect("PROMETHEUS_VERSION is pinned")
            .1;
        assert!(release_of(&pin).is_some(), "{pin}");
    }

    #[test]
    fn the_prometheus_object_selects_everything_and_runs_no_pod() {
        let mut options = PrometheusOptions::new("/bin/aim");
        options.scrape_interval = Duration::from_secs(5);
        options.evaluation_interval = Duration::from_secs(7);
        let objects = objects(&options, "v3.16.0");
        let spec = &objects[1]["spec"];
        assert_eq!(spec["replicas"], 0);
        assert_eq!(spec["scrapeInterval"], "5s");
        // Never longer than the interval.
        assert_eq!(spec["scrapeTimeout"], "5s");
        assert_eq!(spec["evaluationInterval"], "7s");
        assert_eq!(spec["version"], "v3.16.0");
        for selector in [
            "serviceMonitorSelector",
            "serviceMonitorNamespaceSelector",
            "podMonitorSelector",
            "podMonitorNamespaceSelector",
            "ruleSelector",
            "ruleNamespaceSelector",
        ] {
            assert_eq!(spec[selector], json!({}), "{selector}");
        }
        assert_eq!(
            objects[1]["metadata"]["namespace"],
            objects[0]["metadata"]["name"]
        );
    }

    #[test]
    fn missing_binaries_name_the_build_commands() {
        let root = std::env::temp_dir().join(format!("aim-prom-missing-{}", std::process::id()));
        let err = prerequisites(&CacheDirs::at(&root))
            .unwrap_err()
            .to_string();
        for expected in [
            "prometheus-operator",
            "promtool",
            "dev/control-plane/build.sh prometheus",
            "build.sh prometheus-operator",
        ] {
            assert!(err.contains(expected), "{expected}: {err}");
        }
    }
}
