//! Stand-alone front end for the simulator until (and besides) `aim sim`:
//! `cargo run --release -p aim-sim --example sim -- serve|bench|fidelity [options]`.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "CPU-only vLLM simulator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the OpenAI API and vLLM metrics.
    Serve(aim_sim::SimArgs),
    /// Measure the simulator's own capacity.
    Bench(aim_sim::bench::BenchArgs),
    /// Compare a profile with published vLLM measurements, on virtual time.
    Fidelity(aim_sim::fidelity::FidelityArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve(args) => tokio::runtime::Runtime::new()?.block_on(aim_sim::run(args)),
        Command::Bench(args) => aim_sim::bench::run(args),
        Command::Fidelity(args) => aim_sim::fidelity::run(args),
    }
}
