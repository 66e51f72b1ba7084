//! Listeners: every main address serves OTLP/gRPC, OTLP/HTTP and KEDA's
//! ExternalScaler on one port (gRPC and HTTP/1.1 or h2c told apart per
//! connection, services by path); the admin address serves metrics and
//! probes.

use crate::args::ScalerArgs;
use crate::history::snapshot::{self, Loaded, Snapshot};
use crate::history::{History, HistoryConfig, SETTLE, STEP};
use crate::ingest::IngestConfig;
use crate::keda::KedaService;
use crate::otlp_grpc::OtlpGrpcService;
use crate::proto::externalscaler::external_scaler_server::ExternalScalerServer;
use crate::state::{ScalerState, now_nanos};
use crate::store::{Store, StoreConfig};
use crate::tls::{ReloadingCertificate, TlsFiles, server_config};
use anyhow::Context as _;
use axum::Router;
use axum::routing::get;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// A started scaler. Dropping it does not stop it; call `shutdown`.
pub struct Running {
    pub addresses: Vec<SocketAddr>,
    pub admin_address: SocketAddr,
    pub state: Arc<ScalerState>,
    /// What `--history-dir` held at start; `None` without the flag.
    pub history_load: Option<HistoryLoad>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
    history_dir: Option<PathBuf>,
}

impl Running {
    /// Stops serving and, with `--history-dir`, saves the history a last
    /// time.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        self.tasks.shutdown().await;
        if let Some(dir) = self.history_dir.take() {
            let state = self.state.clone();
            let _ = tokio::task::spawn_blocking(move || save_history(&state, &dir)).await;
        }
    }
}

/// Writes the history snapshot into `dir` and counts the outcome; returns
/// the snapshot's size. A failure is logged and counted, never fatal: the
/// scaler serves on and tries again at the next interval.
pub fn save_history(state: &ScalerState, dir: &Path) -> std::io::Result<usize> {
    let now = now_nanos();
    let bytes = snapshot::encode(&Snapshot {
        saved_at: now,
        tracks: state.history.export(),
    });
    match snapshot::write_atomically(dir, &bytes) {
        Ok(()) => {
            state.metrics.record_snapshot_saved(bytes.len(), now);
            Ok(bytes.len())
        }
        Err(e) => {
            state.metrics.record_snapshot_failed();
            tracing::warn!(file = %snapshot::path_in(dir).display(), error = %e, "could not save the history snapshot; check that --history-dir is writable by the scaler's user");
            Err(e)
        }
    }
}

/// What loading the history snapshot at start found.
#[derive(Debug, Clone, PartialEq)]
pub enum HistoryLoad {
    /// No snapshot yet (a first start).
    Missing,
    /// Queries taken in, from a snapshot saved at `saved_at`.
    Loaded { queries: usize, saved_at: u64 },
    /// The file could not be used: why, and where it was moved.
    Rejected {
        reason: String,
        moved_to: Option<PathBuf>,
    },
}

/// Reads the snapshot in `dir` into the history (see `snapshot::load` for
/// files that cannot be used).
pub fn load_history(state: &ScalerState, dir: &Path) -> HistoryLoad {
    match snapshot::load(dir) {
        Loaded::Missing => {
            tracing::info!(dir = %dir.display(), "no history snapshot yet; history starts empty");
            HistoryLoad::Missing
        }
        Loaded::Read(saved) => {
            let now = now_nanos();
            let queries = state.history.import(saved.tracks, now);
            tracing::info!(
                file = %snapshot::path_in(dir).display(),
                queries,
                points = state.history.stats().points,
                saved_seconds_ago = now.saturating_sub(saved.saved_at) / 1_000_000_000,
                "history snapshot loaded"
            );
            HistoryLoad::Loaded {
                queries,
                saved_at: saved.saved_at,
            }
        }
        Loaded::Rejected {
            error, moved_to, ..
        } => {
            state.metrics.record_snapshot_rejected();
            HistoryLoad::Rejected {
                reason: error.to_string(),
                moved_to,
            }
        }
    }
}

fn nanos(duration: std::time::Duration) -> u64 {
    duration.as_nanos().min(u64::MAX as u128) as u64
}

pub fn state_from_args(args: &ScalerArgs) -> ScalerState {
    let store = Store::new(StoreConfig {
        retention: nanos(args.retention),
        freshness: nanos(args.freshness),
        max_series: args.max_series,
        max_points_per_series: args.max_points_per_series,
    });
    let history = History::new(HistoryConfig {
        max_age: nanos(args.history_max_age),
        max_queries: args.history_max_queries,
        idle: nanos(args.history_idle),
        retention: nanos(args.retention),
        raw_since: now_nanos(),
    });
    ScalerState::new(
        store,
        history,
        IngestConfig {
            resource_attributes: args.resource_attributes.clone(),
        },
        args.default_window,
        args.stream_interval,
    )
    .with_warmup(args.warmup)
}

pub fn service_router(state: Arc<ScalerState>, max_request_bytes: usize) -> Router {
    let keda = ExternalScalerServer::new(KedaService::new(state.clone()));
    let otlp = OtlpGrpcService::new(state.clone(), max_request_bytes);
    tonic::service::Routes::new(otlp)
        .add_service(keda)
        .into_axum_router()
        .merge(crate::otlp_http::router(state, max_request_bytes))
}

fn admin_router(state: Arc<ScalerState>, ready: Arc<AtomicBool>) -> Router {
    let decisions_state = state.clone();
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let state = state.clone();
                async move {
                    state
                        .metrics
                        .set_history(state.history.stats(), state.history.refused());
                    let mut body = state
                        .metrics
                        .render(state.store.series_count(), state.store.metric_names().len());
                    body.push_str(&crate::self_metrics::render_decisions(&state.decisions()));
                    (
                        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        body,
                    )
                }
            }),
        )
        .route(
            "/debug/decisions",
            get({
                let state = decisions_state;
                move || {
                    let state = state.clone();
                    async move {
                        (
                            [(http::header::CONTENT_TYPE, "application/json")],
                            serde_json::to_string(&state.decisions()).unwrap_or_default(),
                        )
                    }
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.load(Ordering::Relaxed);
                async move {
                    if ready {
                        (http::StatusCode::OK, "ready")
                    } else {
                        (
                            http::StatusCode::SERVICE_UNAVAILABLE,
                            "not ready: listeners not started or shutting down",
                        )
                    }
                }
            }),
        )
}

async fn serve_connection<I>(io: I, router: Router)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(router);
    let result = auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .await;
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

async fn accept_loop(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Usually EMFILE; back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            match tls {
                None => serve_connection(stream, router).await,
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(stream) => serve_connection(stream, router).await,
                    Err(e) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                },
            }
        });
        // Reap finished connections so the set does not grow.
        while connections.try_join_next().is_some() {}
    }
    connections.shutdown().await;
}

/// Binds every address, then serves in the background.
pub async fn start(args: &ScalerArgs) -> anyhow::Result<Running> {
    anyhow::ensure!(
        !args.listen.is_empty(),
        "--listen needs at least one address"
    );
    anyhow::ensure!(
        args.history_dir.is_none() || !args.history_snapshot_interval.is_zero(),
        "--history-snapshot-interval must be longer than 0 (e.g. 60s): the history in --history-dir would be rewritten without pause"
    );
    let state = Arc::new(state_from_args(args));
    let history_load = match &args.history_dir {
        Some(dir) => {
            let state = state.clone();
            let dir = dir.clone();
            Some(tokio::task::spawn_blocking(move || load_history(&state, &dir)).await?)
        }
        None => None,
    };
    let (shutdown, shutdown_rx) = watch::channel(false);
    let ready = Arc::new(AtomicBool::new(false));
    let mut tasks = JoinSet::new();

    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let certificate = Arc::new(ReloadingCertificate::load(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: args.tls_client_ca.clone(),
            })?);
            let acceptor = TlsAcceptor::from(Arc::new(server_config(certificate.clone())?));
            let interval = args.tls_reload_interval;
            let mut stop = shutdown_rx.clone();
            tasks.spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(interval) => {}
                        _ = stop.changed() => return,
                    }
                    match certificate.reload_if_changed() {
                        Ok(true) => tracing::info!("TLS certificate reloaded"),
                        Ok(false) => {}
                        Err(e) => tracing::warn!(error = %format!("{e:#}"), "TLS certificate changed but could not be loaded; still serving the previous one"),
                    }
                }
            });
            Some(acceptor)
        }
        _ => None,
    };

    let router = service_router(state.clone(), args.max_request_bytes);
    let mut addresses = Vec::new();
    for address in &args.listen {
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("binding {address} (from --listen)"))?;
        addresses.push(listener.local_addr()?);
        tasks.spawn(accept_loop(
            listener,
            router.clone(),
            tls.clone(),
            shutdown_rx.clone(),
        ));
    }
    let admin = TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("binding {} (from --admin-listen)", args.admin_listen))?;
    let admin_address = admin.local_addr()?;
    tasks.spawn(accept_loop(
        admin,
        admin_router(state.clone(), ready.clone()),
        None,
        shutdown_rx.clone(),
    ));

    let sweeper_state = state.clone();
    let interval = args.sweep_interval;
    let mut stop = shutdown_rx.clone();
    tasks.spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.changed() => return,
            }
            let removed = sweeper_state.store.sweep(now_nanos());
            sweeper_state.metrics.record_swept(removed);
        }
    });

    // Records every known query's settled steps, whether or not KEDA polls.
    let recorder_state = state.clone();
    let mut stop = shutdown_rx.clone();
    tasks.spawn(async move {
        loop {
            // Just after each step has settled, so one pass records it.
            let now = now_nanos();
            let next = (now.saturating_sub(SETTLE) / STEP + 1) * STEP + SETTLE;
            let wait = std::time::Duration::from_nanos(next.saturating_sub(now));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
            recorder_state
                .history
                .record_all(&recorder_state.store, now_nanos());
        }
    });

    if let Some(dir) = args.history_dir.clone() {
        let snapshot_state = state.clone();
        let interval = args.history_snapshot_interval;
        let mut stop = shutdown_rx.clone();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = stop.changed() => return,
                }
                let state = snapshot_state.clone();
                let dir = dir.clone();
                let _ = tokio::task::spawn_blocking(move || save_history(&state, &dir)).await;
            }
        });
    }

    let mut stop = shutdown_rx;
    let ready_flag = ready.clone();
    tasks.spawn(async move {
        let _ = stop.changed().await;
        ready_flag.store(false, Ordering::Relaxed);
    });
    ready.store(true, Ordering::Relaxed);
    tracing::info!(?addresses, %admin_address, tls = args.tls_cert.is_some(), "aim scaler serving OTLP and KEDA ExternalScaler");
    Ok(Running {
        addresses,
        admin_address,
        state,
        history_load,
        shutdown,
        tasks,
        history_dir: args.history_dir.clone(),
    })
}

async fn terminate_signal() {
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Serves until SIGTERM or Ctrl-C.
pub async fn serve_until_signal(args: &ScalerArgs) -> anyhow::Result<()> {
    let running = start(args).await?;
    terminate_signal().await;
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(())
}
