//! The AIM operator: one controller per kind, each split into pure
//! "observe → plan" functions (tested without a cluster) and thin API I/O.
//!
//! `run` starts the admin server, waits for the leader lease, then runs
//! every controller until SIGTERM/SIGINT or the loss of leadership.

pub mod admin;
pub mod artifact;
pub mod catalog_filter;
pub mod context;
pub mod cost_guard;
pub mod discovery;
pub mod image_labels;
pub mod inspect;
pub mod kube_io;
pub mod leader;
pub mod metrics;
pub mod model;
pub mod model_source;
pub mod registry;
pub mod runtime_config;
pub mod scoped;
pub mod service;
pub mod state;
pub mod template;
pub mod template_cache;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aim_api::{AIMClusterModel, AIMClusterServiceTemplate, AIMModel, AIMServiceTemplate};
use anyhow::Context as _;

use crate::context::{Context, Settings};

#[derive(clap::Args, Clone, Debug)]
pub struct OperatorArgs {
    /// Admin address: /metrics, /healthz, /readyz.
    #[arg(
        long,
        default_value = "127.0.0.1:8081",
        env = "AIM_OPERATOR_ADMIN_ADDRESS"
    )]
    pub admin_address: SocketAddr,
    /// Namespace for the leader lease and operator-owned objects.
    #[arg(long, env = "AIM_SYSTEM_NAMESPACE", default_value = "aim-system")]
    pub namespace: String,
    /// Turn leader election off (a single replica, e.g. in tests).
    #[arg(long)]
    pub no_leader_election: bool,
    /// Identity in the leader lease; defaults to POD_NAME, else the host name and pid.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// The KEDA external scaler that metrics without a serverAddress use.
    #[arg(
        long,
        env = "AIM_SCALER_ADDRESS",
        default_value = "aim-scaler.aim-system.svc:4318"
    )]
    pub scaler_address: String,
}

/// Runs the operator until a shutdown signal or the loss of leadership.
pub async fn run(args: OperatorArgs) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to Kubernetes (set KUBECONFIG or run in a pod)")?;
    run_with(client, args, shutdown_signal()).await
}

/// Runs the operator with `client` until `shutdown` resolves or leadership
/// is lost. Tests use it to run the operator in-process.
pub async fn run_with(
    client: kube::Client,
    args: OperatorArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let metrics = Arc::new(metrics::Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let (bound, _admin) = admin::serve(
        args.admin_address,
        admin::AdminState {
            metrics: metrics.clone(),
            ready: ready.clone(),
        },
    )
    .await
    .with_context(|| format!("binding the admin address {}", args.admin_address))?;
    tracing::info!(%bound, "admin server listening");

    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let lease = leader::LeaderConfig {
        namespace: args.namespace.clone(),
        identity,
        lease_duration: Duration::from_secs(15),
        renew: Duration::from_secs(2),
    };
    if !args.no_leader_election {
        tracing::info!(namespace = %lease.namespace, "waiting for the leader lease");
        leader::acquire(&client, &lease)
            .await
            .context("acquiring the leader lease")?;
        tracing::info!("leading");
    }
    ready.store(true, Ordering::Relaxed);

    let settings = Settings {
        operator_namespace: args.namespace.clone(),
        default_scaler_address: args.scaler_address.clone(),
        identity: lease.identity.clone(),
    };
    let (isvc_warnings, writer) = kube::runtime::reflector::store();
    let warning_watch = kube::runtime::reflector(
        writer,
        kube::runtime::WatchStreamExt::default_backoff(kube::runtime::watcher(
            kube::Api::<k8s_openapi::api::core::v1::Event>::all(client.clone()),
            kube::runtime::watcher::Config::default()
                .fields("involvedObject.kind=InferenceService,type=Warning"),
        )),
    );
    let warnings_task = tokio::spawn(futures::StreamExt::for_each(warning_watch, |_| async {}));
    // Only KServe's config map, by name: the chart grants exactly that one.
    let (kserve_config, writer) = kube::runtime::reflector::store();
    // With backoff: an unreachable API server is retried, not spun on.
    let kserve_config_watch = kube::runtime::reflector(
        writer,
        kube::runtime::WatchStreamExt::default_backoff(kube::runtime::watcher(
            kube::Api::<k8s_openapi::api::core::v1::ConfigMap>::all(client.clone()),
            kube::runtime::watcher::Config::default()
                .fields(&format!("metadata.name={}", context::KSERVE_CONFIG)),
        )),
    );
    let kserve_config_task = tokio::spawn(futures::StreamExt::for_each(
        kserve_config_watch,
        |event| async move {
            if let Err(e) = event {
                tracing::warn!(error = %e, "watching KServe's config map; its autoscaler settings are taken as KServe's defaults until it can be read");
            }
        },
    ));
    let ctx = Arc::new(Context::new(
        client.clone(),
        metrics,
        settings,
        isvc_warnings,
        kserve_config,
    ));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let controllers = tokio::spawn({
        let ctx = ctx.clone();
        async move {
            tokio::join!(
                service::controller::run(ctx.clone(), stopped(stop_rx.clone())),
                model::run::<AIMModel>(ctx.clone(), stopped(stop_rx.clone())),
                model::run::<AIMClusterModel>(ctx.clone(), stopped(stop_rx.clone())),
                template::run::<AIMServiceTemplate>(ctx.clone(), stopped(stop_rx.clone())),
                template::run::<AIMClusterServiceTemplate>(ctx.clone(), stopped(stop_rx.clone())),
                template_cache::run(ctx.clone(), stopped(stop_rx.clone())),
                artifact::run(ctx.clone(), stopped(stop_rx.clone())),
                model_source::run(ctx.clone(), stopped(stop_rx.clone())),
            );
        }
    });

    let lost_lease = async {
        if args.no_leader_election {
            std::future::pending::<()>().await
        } else {
            leader::hold(client.clone(), lease.clone()).await
        }
    };
    let reason = tokio::select! {
        _ = shutdown => "signal",
        _ = lost_lease => "lost the leader lease",
    };
    tracing::info!(reason, "shutting down: finishing in-flight reconciles");
    ready.store(false, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(30), controllers).await;
    warnings_task.abort();
    kserve_config_task.abort();
    if reason != "signal" {
        anyhow::bail!("stopped because this replica {reason}");
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
