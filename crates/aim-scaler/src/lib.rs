//! aim-scaler: a KEDA external scaler fed by OpenTelemetry metrics.
//!
//! Pure parts (store, query language, trigger semantics, OTLP conversion)
//! are kept apart from the I/O (gRPC and HTTP servers in `server`,
//! `keda`, `otlp_grpc`, `otlp_http`).

mod args;
pub mod bench;
pub mod bench_history;
pub mod bench_replicas;
pub mod history;
pub mod ingest;
pub mod keda;
pub mod labels;
pub mod otlp_grpc;
pub mod otlp_http;
pub mod otlp_wire;
pub mod proto;
pub mod query;
pub mod self_metrics;
pub mod server;
pub mod state;
pub mod store;
pub mod tls;
pub mod trigger;

pub use args::{ScalerArgs, ScalerCommand};
pub use bench::BenchArgs;
pub use server::{Running, start};

/// Entry point of `aim scaler`: serves, or runs the bench subcommand.
pub async fn run(args: ScalerArgs) -> anyhow::Result<()> {
    match &args.command {
        Some(ScalerCommand::Bench(bench)) => bench::run(bench.clone()).await,
        Some(ScalerCommand::BenchHistory(bench)) => bench_history::run(bench.clone()),
        Some(ScalerCommand::BenchReplicas(bench)) => bench_replicas::run(bench.clone()).await,
        None => server::serve_until_signal(&args).await,
    }
}
