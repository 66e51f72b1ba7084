//! `aim dev …`: the local Kubernetes control plane for tests and the demo.

use std::time::Instant;

use aim_devcluster::{CacheDirs, ClusterOptions};
use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};

#[derive(Args)]
pub struct DevArgs {
    #[command(subcommand)]
    command: DevCommand,
}

#[derive(Subcommand)]
enum DevCommand {
    /// A real control plane (etcd, kube-apiserver, controller-manager,
    /// scheduler, KWOK) on loopback, built from upstream Go modules.
    Cluster(ClusterArgs),
    /// The local cluster plus the operator, with the seed's qwen-chat
    /// service deployed and its status followed as it progresses.
    Demo(crate::demo::DemoArgs),
    /// Time the operator bringing N services to Starting, and its peak RSS.
    BenchOperator(crate::bench_operator::BenchOperatorArgs),
    /// The pod runner: a simulator at each inference pod's address, its
    /// readiness, and the OTel sidecar its OpenTelemetryCollector describes.
    Pods(aim_pods::PodsArgs),
    /// The bed's Prometheus bridge, started by `aim dev cluster up
    /// --with-prometheus`: prometheus-operator's configuration into the
    /// local Prometheus, EndpointSlices for Services of loopback pods, and
    /// the Service proxy KEDA reaches `*.svc` addresses through.
    PrometheusBridge(BridgeArgs),
}

#[derive(Args)]
struct BridgeArgs {
    /// The cluster's admin kubeconfig.
    #[arg(long)]
    kubeconfig: std::path::PathBuf,
    /// Namespace of the Prometheus object.
    #[arg(long)]
    namespace: String,
    /// Name of the Prometheus object.
    #[arg(long)]
    prometheus: String,
    /// The local server's directory (its config file and rule files).
    #[arg(long)]
    dir: std::path::PathBuf,
    /// The local server, for `/-/reload`.
    #[arg(long)]
    prometheus_url: String,
    /// Where the bridge serves /healthz and /metrics.
    #[arg(long)]
    listen: std::net::SocketAddr,
    /// promtool, to explain a configuration Prometheus refuses.
    #[arg(long)]
    promtool: std::path::PathBuf,
    /// Also serve the bed's Service proxy here: an HTTP proxy (KEDA's
    /// HTTP_PROXY) that resolves `<service>.<namespace>.svc` names through
    /// Services and EndpointSlices.
    #[arg(long)]
    service_proxy_listen: Option<std::net::SocketAddr>,
}

impl From<BridgeArgs> for aim_devcluster::bridge::BridgeArgs {
    fn from(a: BridgeArgs) -> Self {
        Self {
            kubeconfig: a.kubeconfig,
            namespace: a.namespace,
            prometheus: a.prometheus,
            dir: a.dir,
            prometheus_url: a.prometheus_url,
            listen: a.listen,
            promtool: a.promtool,
            service_proxy: a.service_proxy_listen,
        }
    }
}

#[derive(Args)]
struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(Args, Clone)]
struct ClusterName {
    /// Which local cluster; several can run side by side.
    #[arg(long, default_value = "dev", global = true)]
    name: String,
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Build (if needed) and start the cluster with every CRD installed.
    /// Does nothing when it already runs.
    Up {
        #[command(flatten)]
        name: ClusterName,
        /// First of the twenty loopback ports the components listen on.
        #[arg(long)]
        port_base: Option<u16>,
        /// Also run KEDA's operator and metrics server, so ScaledObjects
        /// drive real HPAs. Adds them to a running cluster that lacks them.
        #[arg(long)]
        with_keda: bool,
        /// Also run KServe's controller (Standard mode, webhooks on
        /// loopback): InferenceServices become Deployments, ScaledObjects
        /// and OpenTelemetryCollectors. Implies --with-keda.
        #[arg(long)]
        with_kserve: bool,
        /// Also run Prometheus and prometheus-operator: every
        /// ServiceMonitor, PodMonitor and PrometheusRule in the cluster
        /// configures the server. Adds them to a running cluster that
        /// lacks them.
        #[arg(long)]
        with_prometheus: bool,
        /// The Prometheus object's scrape interval (monitors may set their
        /// own), e.g. 15s, 5s.
        #[arg(long, default_value = "15s", value_parser = interval, requires = "with_prometheus")]
        scrape_interval: std::time::Duration,
        /// How often Prometheus evaluates rules.
        #[arg(long, default_value = "15s", value_parser = interval, requires = "with_prometheus")]
        evaluation_interval: std::time::Duration,
    },
    /// Stop every process of the cluster and delete its data.
    Down {
        #[command(flatten)]
        name: ClusterName,
    },
    /// Show the cluster's processes, ports and health.
    Status {
        #[command(flatten)]
        name: ClusterName,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Print the shell variables that point kubectl and aim at the cluster.
    Env {
        #[command(flatten)]
        name: ClusterName,
    },
    /// Build the pinned control-plane binaries and fetch the third-party CRDs.
    Build,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
    Yaml,
}

pub fn run(args: DevArgs) -> anyhow::Result<()> {
    let cluster = match args.command {
        DevCommand::Cluster(cluster) => cluster,
        DevCommand::Demo(demo) => return crate::demo::run(demo),
        DevCommand::BenchOperator(args) => return crate::bench_operator::run(args),
        DevCommand::Pods(args) => {
            return tokio::runtime::Runtime::new()?.block_on(aim_pods::run(args));
        }
        DevCommand::PrometheusBridge(args) => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            return Ok(tokio::runtime::Runtime::new()?
                .block_on(aim_devcluster::bridge::run(args.into()))?);
        }
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let cache = CacheDirs::discover()?;
    match cluster.command {
        ClusterCommand::Up {
            name,
            port_base,
            with_keda,
            with_kserve,
            with_prometheus,
            scrape_interval,
            evaluation_interval,
        } => {
            let prometheus = if with_prometheus {
                let aim = std::env::current_exe()
                    .context("finding the aim binary, which runs the Prometheus bridge")?;
                let mut options = aim_devcluster::PrometheusOptions::new(aim);
                options.scrape_interval = scrape_interval;
                options.evaluation_interval = evaluation_interval;
                Some(options)
            } else {
                None
            };
            runtime.block_on(up(
                cache,
                &name.name,
                port_base,
                with_keda || with_kserve,
                with_kserve,
                prometheus,
            ))
        }
        ClusterCommand::Down { name } => {
            if aim_devcluster::down(&cache, &name.name)? {
                println!("cluster '{}' stopped", name.name);
            } else {
                println!("cluster '{}' was not running", name.name);
            }
            Ok(())
        }
        ClusterCommand::Status { name, output } => {
            runtime.block_on(status(cache, &name.name, output))
        }
        ClusterCommand::Env { name } => {
            let kubeconfig = cache.cluster(&name.name).join("kubeconfig");
            if !kubeconfig.exists() {
                anyhow::bail!(
                    "cluster '{}' has no kubeconfig yet: run `aim dev cluster up --name {}` first",
                    name.name,
                    name.name
                );
            }
            println!("export KUBECONFIG={}", kubeconfig.display());
            println!("export PATH={}:$PATH", cache.bin().display());
            Ok(())
        }
        ClusterCommand::Build => {
            aim_devcluster::build_control_plane(&cache)?;
            println!("control plane binaries in {}", cache.bin().display());
            Ok(())
        }
    }
}

/// A Prometheus interval: "15s", "500ms", "1m" or seconds; at least 1 s.
fn interval(text: &str) -> Result<std::time::Duration, String> {
    let secs = aim_policy::parse_seconds(text)
        .ok_or_else(|| format!("{text:?} is not a duration; write it like 15s, 1m or 500ms"))?;
    if secs < 1.0 {
        return Err(format!(
            "{text:?} is shorter than 1 s; Prometheus scrapes and evaluates at most once a second in the bed"
        ));
    }
    Ok(std::time::Duration::from_millis(
        (secs * 1000.0).round() as u64
    ))
}

async fn up(
    cache: CacheDirs,
    name: &str,
    port_base: Option<u16>,
    with_keda: bool,
    with_kserve: bool,
    prometheus: Option<aim_devcluster::PrometheusOptions>,
) -> anyhow::Result<()> {
    let started_at = Instant::now();
    let mut opts = ClusterOptions::new(name, cache.clone());
    if let Some(base) = port_base {
        opts.port_base = base;
    }
    opts.with_keda = with_keda;
    opts.with_kserve = with_kserve;
    opts.prometheus = prometheus;
    opts.extra_manifests = vec![("aim CRDs".to_string(), aim_api::all_crds_yaml())];
    let info = aim_devcluster::up(&opts)
        .await
        .context("bringing the cluster up")?;
    let added: Vec<&str> = [
        (info.keda_added, "KEDA"),
        (info.kserve_added, "KServe"),
        (info.prometheus_added, "Prometheus"),
    ]
    .into_iter()
    .filter_map(|(added, what)| added.then_some(what))
    .collect();
    let verb = if info.started {
        "started".to_string()
    } else if added.is_empty() {
        "already running".to_string()
    } else {
        format!("was running; {} added", added.join(" and "))
    };
    println!(
        "cluster '{}' {verb} in {:.1} s: {}",
        info.name,
        started_at.elapsed().as_secs_f64(),
        info.server
    );
    println!();
    println!("Use it from a shell:");
    println!("  export KUBECONFIG={}", info.kubeconfig.display());
    println!("  export PATH={}:$PATH", cache.bin().display());
    println!("  kubectl get nodes -L amd.com/gpu.device-id");
    println!("  kubectl get crds | grep -e aim -e kserve -e keda -e gateway");
    if with_keda {
        println!("  kubectl get --raw /apis/external.metrics.k8s.io/v1beta1");
    }
    if with_kserve {
        println!("  kubectl -n kserve get configmap inferenceservice-config -o yaml");
        println!(
            "KServe's ScaledObjects and sidecars expect an aim scaler at {}:",
            info.scaler_address
        );
        println!("  aim scaler --listen {}", info.scaler_address);
    }
    if let Some(url) = &info.prometheus_url {
        println!("Prometheus (configured by prometheus-operator from the cluster's monitors):");
        println!("  {url}");
        println!("  curl -s '{url}/api/v1/targets?state=active' | head -c 600");
        println!("  kubectl -n monitoring get prometheus aim");
    }
    println!();
    println!("Stop it with: aim dev cluster down --name {}", info.name);
    Ok(())
}

async fn status(cache: CacheDirs, name: &str, output: Output) -> anyhow::Result<()> {
    let Some(status) = aim_devcluster::status(&cache, name).await? else {
        println!("cluster '{name}' is not running");
        return Ok(());
    };
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&status)?),
        Output::Yaml => print!("{}", serde_yaml::to_string(&status)?),
        Output::Table => {
            println!(
                "cluster '{}' at {}: apiserver {}",
                status.name,
                status.server,
                if status.apiserver_ready {
                    "ready"
                } else {
                    "NOT ready"
                }
            );
            if let Some(url) = &status.prometheus_url {
                println!("prometheus at {url}");
            }
            println!(
                "{:<26} {:>8} {:>6} {:<8} {:<9}",
                "COMPONENT", "PID", "PORT", "RUNNING", "LISTENING"
            );
            for c in &status.components {
                println!(
                    "{:<26} {:>8} {:>6} {:<8} {:<9}",
                    c.name,
                    c.pid,
                    c.port,
                    if c.running { "yes" } else { "no" },
                    if c.listening { "yes" } else { "no" }
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// `up` writes the bridge's command line (aim-devcluster) and this CLI
    /// reads it: the two must agree on every flag.
    #[test]
    fn the_bridge_command_line_the_bed_writes_parses_back() {
        let args = aim_devcluster::bridge::BridgeArgs {
            kubeconfig: "/c/kubeconfig".into(),
            namespace: "monitoring".into(),
            prometheus: "aim".into(),
            dir: "/c/prometheus".into(),
            prometheus_url: "http://127.0.0.1:20016".into(),
            listen: "127.0.0.1:20017".parse().unwrap(),
            promtool: "/b/promtool".into(),
            service_proxy: Some("127.0.0.1:20018".parse().unwrap()),
        };
        let mut argv = vec![
            "aim".to_string(),
            "dev".to_string(),
            "prometheus-bridge".to_string(),
        ];
        argv.extend(args.command_line());
        let cli = crate::Cli::try_parse_from(argv).unwrap();
        let crate::Command::Dev(DevArgs {
            command: DevCommand::PrometheusBridge(parsed),
        }) = cli.command
        else {
            panic!("not the bridge subcommand");
        };
        assert_eq!(aim_devcluster::bridge::BridgeArgs::from(parsed), args);
    }

    #[test]
    fn intervals_are_durations_of_a_second_or_more() {
        assert_eq!(interval("15s"), Ok(std::time::Duration::from_secs(15)));
        assert_eq!(interval("1m"), Ok(std::time::Duration::from_secs(60)));
        assert_eq!(
            interval("1500ms"),
            Ok(std::time::Duration::from_millis(1500))
        );
        assert!(interval("500ms").unwrap_err().contains("shorter than 1 s"));
        assert!(interval("soon").unwrap_err().contains("like 15s"));
    }
}
