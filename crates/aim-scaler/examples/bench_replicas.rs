//! The same run as `aim scaler bench-replicas`:
//! `cargo run --release -p aim-scaler --example bench_replicas -- --help`.

use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: aim_scaler::bench_replicas::ReplicasBenchArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    aim_scaler::bench_replicas::run(Cli::parse().args).await
}
