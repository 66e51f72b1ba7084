//! `aim dev pods`: the pod runner of the local cluster.
//!
//! KWOK's pods are records, not processes. For the whole autoscaling loop to
//! run on one machine, each inference pod (label
//! `serving.kserve.io/inferenceservice`) needs something answering at its
//! address, and the OTel sidecar that KServe asked for needs to push that
//! something's metrics. The runner watches those pods and, per pod:
//! - starts `aim sim` bound to the pod's loopback IP and container port,
//!   with a startup delay that emulates the model's cold start;
//! - marks the pod Ready when the simulator's `/health` answers, as a
//!   kubelet's readiness probe would (the local cluster's KWOK stage leaves
//!   inference pods unready for this);
//! - plays the sidecar exactly as the pod's OpenTelemetryCollector resource
//!   says (`collector`): scrape interval, metric-name filter, the
//!   namespace/deployment/pod attributes, the OTLP exporter endpoint;
//! - plays the node's GPU exporter for the pod (`gpu`): AMD's and NVIDIA's
//!   utilisation gauges, derived from the simulator's busy time, join what
//!   the sidecar scraped before its pipeline runs;
//! - stops all of it when the pod goes away.

pub mod collector;
pub mod exposition;
pub mod gpu;
pub mod pod;
pub mod runner;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

#[derive(clap::Args, Clone, Debug)]
pub struct PodsArgs {
    /// Model-load time of each new replica (e.g. 5s, 1m). Passed to the
    /// simulator as --startup-delay, so a --sim-arg=--time-scale=N scales it.
    #[arg(long, default_value = "5s", value_parser = parse_cold_start)]
    pub cold_start: Duration,
    /// Extra `aim sim` argument for every pod (repeat), e.g. --sim-arg=--profile=...
    #[arg(long = "sim-arg", allow_hyphen_values = true)]
    pub sim_args: Vec<String>,
    /// Export sidecar metrics here (host:port, OTLP/gRPC) instead of the
    /// collector's endpoint.
    #[arg(long)]
    pub exporter: Option<String>,
    /// Watch one namespace only.
    #[arg(long, short)]
    pub namespace: Option<String>,
    /// The aim binary that runs `aim sim` (default: this one).
    #[arg(long)]
    pub aim_binary: Option<PathBuf>,
}

fn parse_cold_start(text: &str) -> Result<Duration, String> {
    collector::parse_duration(text)
        .ok_or_else(|| format!("{text:?} is not a duration like 5s, 500ms or 1m"))
}

pub async fn run(args: PodsArgs) -> anyhow::Result<()> {
    let client = kube::Client::try_default().await.context(
        "no Kubernetes client configuration: set KUBECONFIG (for the local cluster: eval \"$(aim dev cluster env)\")",
    )?;
    let aim_binary = match args.aim_binary {
        Some(b) => b,
        None => std::env::current_exe().context("locating the aim binary")?,
    };
    let config = runner::RunnerConfig {
        cold_start: args.cold_start,
        aim_binary,
        sim_args: args.sim_args,
        exporter_override: args.exporter,
        namespace: args.namespace,
    };
    tokio::select! {
        r = runner::run(client, config) => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}
