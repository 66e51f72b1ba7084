//! The `aim` command: operator, scaler, gateway, simulator, lab and developer tools
//! behind one binary.

// The workstation tools (feature `tools`, on by default); without them the
// binary is what a cluster runs (Cargo.toml says which commands).
#[cfg(feature = "tools")]
mod bench_operator;
mod cost_guard;
mod crds;
#[cfg(feature = "tools")]
mod demo;
#[cfg(feature = "tools")]
mod dev;
#[cfg(all(test, feature = "tools"))]
mod doc_commands;
#[cfg(feature = "tools")]
mod prediction;
mod sim;

use clap::{Parser, Subcommand};

/// aim: serve LLMs on Kubernetes with demand-based autoscaling.
#[derive(Parser)]
#[command(name = "aim", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the aim.eai.amd.com CRDs as YAML, or write one file per CRD.
    Crds(crds::CrdsArgs),
    #[cfg(feature = "tools")]
    /// Developer tools: the local Kubernetes control plane.
    Dev(dev::DevArgs),
    /// Run the operator: controllers for every aim.eai.amd.com kind.
    Operator(aim_operator::OperatorArgs),
    /// The CPU-only vLLM simulator (OpenAI API and vLLM metrics), or its bench.
    Sim(Box<sim::SimCli>),
    /// The KEDA external scaler fed by OpenTelemetry metrics, or its bench.
    Scaler(Box<aim_scaler::ScalerArgs>),
    #[cfg(feature = "tools")]
    /// Replay traces through the autoscaling loop on virtual time and score policies.
    Lab(Box<aim_lab::LabArgs>),
    /// A streaming proxy in front of inference pods: load-aware picking, a flow-control queue, drain; or its bench.
    Gateway(Box<aim_gateway::GatewayCli>),
    #[cfg(feature = "tools")]
    /// Send load to OpenAI-compatible servers (URLs or a Service's endpoints) and measure TTFT.
    Load(Box<aim_load::LoadArgs>),
    /// Pause a service's autoscaling (cost guard): KEDA leaves its replicas alone.
    Pause(cost_guard::ServiceRef),
    /// Resume a service's autoscaling: KEDA drives its replicas again.
    Resume(cost_guard::ServiceRef),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // kube's client logs every failed readiness poll as an
                // error while the local apiserver starts; that is expected.
                .unwrap_or_else(|_| {
                    tracing_subscriber::EnvFilter::new("info,kube_client::client::builder=off")
                }),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crds(args) => crds::run(args),
        #[cfg(feature = "tools")]
        Command::Dev(args) => dev::run(args),
        Command::Operator(args) => tokio::runtime::Runtime::new()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(aim_operator::run(args))),
        Command::Sim(cli) => sim::run(*cli),
        #[cfg(feature = "tools")]
        Command::Lab(args) => aim_lab::run(*args).map_err(anyhow::Error::from),
        #[cfg(feature = "tools")]
        Command::Load(args) => tokio::runtime::Runtime::new()
            .map_err(anyhow::Error::from)
            .and_then(|rt| {
                rt.block_on(aim_load::run(*args))
                    .map_err(anyhow::Error::from)
            }),
        Command::Gateway(cli) => aim_gateway::main(*cli),
        Command::Pause(target) => cost_guard::run(target, true),
        Command::Resume(target) => cost_guard::run(target, false),
        Command::Scaler(args) => tokio::runtime::Runtime::new()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(aim_scaler::run(*args))),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
