//! A real local Kubernetes control plane for aim's tests and demo.
//!
//! There is no container engine and no release download on our machines, so
//! etcd, kube-apiserver, kube-controller-manager, kube-scheduler and KWOK are
//! compiled from their upstream Go modules (`dev/control-plane/build.sh`,
//! embedded here) into a cache outside the repository, then started as plain
//! processes on loopback. KWOK plays the kubelets: fake GPU and CPU nodes, and
//! pods that become Running with an IP from a loopback pod CIDR, so that a
//! local process can later answer at a pod's address.
//!
//! With [`ClusterOptions::with_keda`], KEDA's operator and metrics server
//! (also built from their Go module) join as processes too, and the
//! apiserver routes the external metrics API to them, so a ScaledObject
//! drives a real HPA.
//!
//! With [`ClusterOptions::with_kserve`], KServe's controller joins too
//! (Standard deployment mode, its admission webhooks served on loopback),
//! so an InferenceService becomes a Deployment, a ScaledObject and an
//! OpenTelemetryCollector as in production.
//!
//! With [`ClusterOptions::with_prometheus`], a Prometheus server and
//! prometheus-operator (both from their Go modules) join, with the bed's
//! bridge (`aim dev prometheus-bridge`) doing the Prometheus pod's config
//! reloader's part: ServiceMonitors, PodMonitors and PrometheusRules
//! decide what the local server scrapes and evaluates.
//!
//! A cluster outlives the command that started it: its processes live in one
//! process group recorded in a state file, so `down` (or another test binary)
//! can find and stop exactly them.

pub mod bridge;
mod build;
pub use build::pins;
mod cluster;
mod keda;
mod kserve;
mod kubeconfig;
pub mod loopback_slices;
mod nodes;
mod otel;
mod paths;
mod pki;
mod process;
pub mod promconfig;
pub mod prometheus;

pub use build::{BuildOutput, build_control_plane, build_control_plane_with_env, check_go_at};
pub use cluster::{
    ClusterInfo, ClusterOptions, ClusterStatus, ComponentStatus, HPA_SYNC_PERIOD_SECONDS,
    default_pod_cidr, down, status, up,
};
pub use nodes::{NodeSpec, default_fleet};
pub use paths::CacheDirs;
pub use prometheus::PrometheusOptions;

use std::path::{Path, PathBuf};

/// Everything that can go wrong while building, starting or stopping a cluster.
/// Each message names the cause and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "no Go toolchain found ('go' is not on PATH). The control plane is built from upstream Go modules: install Go >= 1.24 (for example `apt-get install golang-go`, or add /usr/local/go/bin to PATH) and run again"
    )]
    GoMissing,
    #[error(
        "the Go toolchain is broken: `go version` failed with {0}. Reinstall Go >= 1.24 and run again"
    )]
    GoBroken(String),
    #[error(
        "building the control plane failed (exit {status}). Last lines of the build output:\n{tail}\nFix the cause above (network access to the Go module proxy, disk space, GOPROXY settings) and run again; finished components stay cached"
    )]
    BuildFailed { status: String, tail: String },
    #[error(
        "port {port} on 127.0.0.1, needed by {component}, is already in use by another process. Stop that process, or pick other ports with --port-base (cluster '{cluster}' uses {port_base}..{last})"
    )]
    PortInUse {
        port: u16,
        component: &'static str,
        cluster: String,
        port_base: u16,
        last: u16,
    },
    #[error("{component} exited during start-up ({status}). Last lines of its log {log}:\n{tail}")]
    ComponentDied {
        component: &'static str,
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error(
        "{component} did not become ready within {secs} s. Last lines of its log {log}:\n{tail}"
    )]
    ComponentTimeout {
        component: &'static str,
        secs: u64,
        log: PathBuf,
        tail: String,
    },
    #[error("{what} did not happen within {secs} s: {detail}")]
    Timeout {
        what: String,
        secs: u64,
        detail: String,
    },
    #[error(
        "KEDA is not built: {missing} missing from {bin}. Build it with `dev/control-plane/build.sh keda` (or `aim dev cluster build`, which builds every component) and run again"
    )]
    KedaMissing { missing: String, bin: PathBuf },
    #[error(
        "cluster '{cluster}' was started without the certificates KEDA and KServe need (by an older aim). Restart it to add them: `aim dev cluster down --name {cluster}`, then up again"
    )]
    KedaCertificatesMissing { cluster: String },
    #[error(
        "{component} is not built: {missing} missing. Build it with `dev/control-plane/build.sh {target}` and `dev/control-plane/build.sh crds` (or `aim dev cluster build`, which builds every component) and run again"
    )]
    NotBuilt {
        component: &'static str,
        missing: String,
        target: &'static str,
    },
    #[error(
        "the prometheus bridge stopped: one of its tasks ended (see the lines above in its log); restart the cluster"
    )]
    BridgeStopped,
    #[error("cannot work out a cache directory: set AIM_CACHE_DIR or HOME")]
    NoCacheDir,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation failed: {0}")]
    Pki(String),
    #[error("invalid manifest {origin}: {detail}")]
    Manifest { origin: String, detail: String },
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
