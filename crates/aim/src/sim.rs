//! `aim sim`: the CPU-only vLLM simulator, its bench and its fidelity table.

use clap::{Args, Subcommand};

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct SimCli {
    #[command(subcommand)]
    command: Option<SimCommand>,
    #[command(flatten)]
    serve: aim_sim::SimArgs,
}

#[derive(Subcommand)]
enum SimCommand {
    /// Measure simulated requests/s, concurrent streams per core and memory per request.
    Bench(aim_sim::bench::BenchArgs),
    /// Compare the engine profiles with published vLLM measurements (virtual time).
    Fidelity(aim_sim::fidelity::FidelityArgs),
}

pub fn run(cli: SimCli) -> anyhow::Result<()> {
    match cli.command {
        Some(SimCommand::Bench(args)) => aim_sim::bench::run(args),
        Some(SimCommand::Fidelity(args)) => aim_sim::fidelity::run(args),
        None => tokio::runtime::Runtime::new()?.block_on(aim_sim::run(cli.serve)),
    }
}
