//! The same bench as `aim scaler bench-history`:
//! `cargo run --release -p aim-scaler --example bench_history -- --help`.

use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: aim_scaler::bench_history::HistoryBenchArgs,
}

fn main() -> anyhow::Result<()> {
    aim_scaler::bench_history::run(Cli::parse().args)
}
