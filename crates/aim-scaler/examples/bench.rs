//! The same bench as `aim scaler bench`, runnable before the `aim` binary
//! wires it: `cargo run --release -p aim-scaler --example bench -- --help`.

use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: aim_scaler::BenchArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    aim_scaler::bench::run(Cli::parse().args).await
}
