//! `aim load`: a load generator for OpenAI-compatible LLM servers (vLLM, `aim sim`).
//!
//! It sends streamed `/v1/completions` (or chat) requests and measures time to first
//! token at the first streamed token, end-to-end latency, and errors by kind, printing
//! live figures every second and a summary at the end.
//!
//! - **Open loop** ([`args::Shape::Rate`], [`args::Shape::Trace`]): requests go out when
//!   the schedule says, whether or not earlier ones were answered. A rate schedule
//!   (`--rate "0s:1,30s:8,90s:1"`) gives Poisson arrivals; a trace (`--trace`, read by
//!   `aim_lab::trace`) gives arrival times and each request's prompt and output length.
//!   At most `--max-in-flight` requests are out; one due beyond that is dropped and
//!   counted, never sent late, so an overloaded target cannot quietly lighten its load.
//! - **Closed loop** ([`args::Shape::Closed`], `--concurrency N`): N clients, each
//!   sending its next request when its last one is answered (after `--think-time`).
//!
//! Requests are spread over `--url`s, or over the ready endpoints of a Kubernetes
//! Service (`--service NAME -n NS`), read from its EndpointSlices and refreshed while
//! the run goes on, so pods that become ready join in.
//!
//! Usage from the `aim` binary: [`LoadArgs`] and [`run`]. Tests and embedders: turn
//! flags into a [`Plan`] with [`LoadArgs::plan`] and call [`execute`], which returns the
//! [`Report`] that `--json-out` writes.

pub mod args;
pub mod pick;
pub mod report;
pub mod request;
mod run;
pub mod schedule;
pub mod service;
pub mod stats;
pub mod window;

pub use args::{LoadArgs, Plan};
pub use run::{Report, SampleObserver, execute, execute_observed};

/// Everything that stops a run before or after it sends, with what to do about it.
/// Failed requests are not errors: they are counted in the report.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Flags that do not make a run; the message names the flag and the fix.
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Trace(#[from] aim_lab::trace::TraceError),
    /// The targets cannot be found or asked for their model.
    #[error("{0}")]
    Target(String),
    #[error("--json-out {path}: {reason}")]
    Output { path: String, reason: String },
}

/// `aim load`: checks the flags, runs until the load is sent and answered or Ctrl-C,
/// then prints the summary on stdout.
pub async fn run(args: LoadArgs) -> Result<(), LoadError> {
    let plan = args.plan()?;
    let kube = match &plan.targets {
        args::Targets::Service(_) => Some(kube_client().await?),
        args::Targets::Urls(_) => None,
    };
    let report = execute(&plan, kube, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    print!(
        "{}",
        report::summary(&report.shape, &report.model, &report.summary)
    );
    if report.interrupted {
        println!(
            "note: interrupted; the {} requests still out were abandoned (counted as unfinished)",
            report.summary.unfinished
        );
    }
    Ok(())
}

async fn kube_client() -> Result<kube::Client, LoadError> {
    let config = kube::Config::infer().await.map_err(|e| {
        LoadError::Target(format!(
            "--service needs a Kubernetes client configuration ({e}): set KUBECONFIG (for the local cluster: eval \"$(aim dev cluster env)\")"
        ))
    })?;
    kube::Client::try_from(config)
        .map_err(|e| LoadError::Target(format!("--service: cannot build a Kubernetes client: {e}")))
}
