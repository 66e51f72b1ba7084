//! `aim sim`: a CPU-only vLLM stand-in. It serves vLLM's OpenAI-compatible API and its V1
//! `vllm:` Prometheus metrics, with timing from the [`aim_engine`] replica model run on the
//! wall clock (optionally sped up with `--time-scale`).
//!
//! Entry points for the `aim` binary:
//! - [`run`] with [`SimArgs`]: serve until SIGTERM or Ctrl-C, then drain;
//! - [`bench::run`] with [`bench::BenchArgs`]: measure the simulator's own capacity;
//! - [`fidelity::run`] with [`fidelity::FidelityArgs`]: compare profiles with published data.
//!
//! Tests and embedders use [`start`] with their own listener and [`RunningSim::shutdown`].

mod args;
pub mod bench;
mod driver;
mod error;
pub mod fidelity;
mod host;
mod metrics;
mod protocol;
mod response;
mod server;
mod streaming;
mod text;

pub use args::{SimArgs, TextMode};
pub use metrics::one_two_five_buckets;
pub use server::{
    BUSY_SECONDS, CLOCK_SECONDS, RunningSim, SIM_METRICS_PATH, VLLM_COMPAT_VERSION, start,
};

/// Serves until SIGTERM or Ctrl-C, then refuses new requests with 503 and drains in-flight
/// ones for up to `--drain-timeout` seconds.
pub async fn run(args: SimArgs) -> anyhow::Result<()> {
    if let Some(parent) = args.parent_pid {
        host::exit_with_parent(parent)?;
    }
    let listener = match tokio::net::TcpListener::bind((args.host, args.port)).await {
        Ok(l) => l,
        Err(e) => {
            let holder = if e.kind() == std::io::ErrorKind::AddrInUse {
                match host::listener_of(args.host, args.port) {
                    Some(h) => format!("; held by {h}"),
                    None => "; no process of this host was found holding it".into(),
                }
            } else {
                String::new()
            };
            anyhow::bail!(
                "cannot listen on {}:{} (--host, --port): {e}{holder}",
                args.host,
                args.port
            );
        }
    };
    let sim = start(args, listener).await?;
    shutdown_signal().await;
    tracing::info!(in_flight = sim.in_flight(), "shutdown requested; draining");
    sim.shutdown().await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
