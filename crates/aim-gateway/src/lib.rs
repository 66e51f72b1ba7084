//! `aim gateway`: a streaming proxy in front of a service's inference pods.
//!
//! - HTTP/1.1 and HTTP/2 with prior knowledge (h2c) from clients, HTTP/1.1
//!   to the endpoints; responses (SSE token streams) are passed on frame by
//!   frame ([`proxy`]).
//! - Each inference request goes to the endpoint `aim-picker` scores best by
//!   load: the gateway's own in-flight count and the vLLM gauges scraped
//!   from each endpoint's `/metrics` ([`scrape`]).
//! - While every endpoint is saturated, requests wait in the service's
//!   flow-control queue: bounded (429 with Retry-After when full), fair
//!   across clients and priorities, with a timeout (503) ([`service`]).
//! - Endpoints come from an [`endpoints::EndpointSource`]; one that leaves
//!   or is marked draining gets no new requests while its streams finish.
//! - With `--ext-proc-listen`, the same picker also answers Envoy's ext_proc
//!   streams (the Inference Extension's endpoint-picker protocol, [`epp`]).
//! - `/metrics`, `/healthz` and `/readyz` on the admin address; on SIGTERM
//!   the gateway stops accepting, lets in-flight and held requests finish
//!   for up to `--drain-timeout`, then refuses what is still held.
//!
//! Entry points: [`run`] for the command, [`start`] for tests and benches.

mod admin;
mod args;
pub mod backends;
pub mod bench;
pub mod endpoints;
pub mod epp;
pub mod kubernetes;
mod metrics;
pub mod otlp;
pub mod proxy;
pub mod routes;
pub mod scrape;
pub mod service;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use args::{Config, GatewayArgs, duration_arg};
use endpoints::{EndpointSource, FileSource, StaticSource};
use proxy::{Proxy, Target};
use service::Service;

/// `aim gateway` and its bench.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct GatewayCli {
    #[command(subcommand)]
    command: Option<GatewayCommand>,
    #[command(flatten)]
    serve: GatewayArgs,
}

#[derive(Debug, clap::Subcommand)]
enum GatewayCommand {
    /// Measure the time to first token the proxy adds over a direct connection.
    Bench(bench::BenchArgs),
}

/// Runs the command.
pub fn main(cli: GatewayCli) -> anyhow::Result<()> {
    match cli.command {
        Some(GatewayCommand::Bench(args)) => bench::run(args),
        None => tokio::runtime::Runtime::new()?.block_on(run(cli.serve)),
    }
}

/// The source `--endpoint` or `--endpoints-file` describes (the file wins
/// when both are given: it can change, the flags cannot).
pub fn source(cfg: &Config) -> anyhow::Result<Box<dyn EndpointSource>> {
    Ok(match &cfg.endpoints_file {
        Some(path) => {
            anyhow::ensure!(
                cfg.endpoints.is_empty(),
                "give either --endpoint or --endpoints-file, not both"
            );
            Box::new(FileSource::open(path.clone(), cfg.endpoints_refresh)?)
        }
        None => Box::new(StaticSource(cfg.endpoints.clone())),
    })
}

/// Serves until SIGTERM or Ctrl-C, then drains.
pub async fn run(args: GatewayArgs) -> anyhow::Result<()> {
    let cfg = args.config()?;
    let source = match cfg.kubernetes {
        Some(_) => None,
        None => Some(source(&cfg)?),
    };
    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding {} (from --listen)", cfg.listen))?;
    let admin = TcpListener::bind(cfg.admin_listen)
        .await
        .with_context(|| format!("binding {} (from --admin-listen)", cfg.admin_listen))?;
    let gateway = match (source, cfg.kubernetes.clone()) {
        (Some(source), _) => start(cfg, source, listener, admin).await?,
        (None, Some(scope)) => {
            let client = kube::Client::try_default().await.context(
                "--kubernetes: no cluster to follow (set KUBECONFIG, or run in a pod with a service account)",
            )?;
            start_kubernetes(cfg, client, scope, listener, admin).await?
        }
        (None, None) => unreachable!("config() gives a source or a scope"),
    };
    shutdown_signal().await;
    tracing::info!(
        in_flight = gateway.target.in_flight(),
        "shutdown requested; draining"
    );
    gateway.shutdown().await
}

/// A gateway serving on its sockets.
pub struct RunningGateway {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// `--ext-proc-listen`'s bound address.
    pub ext_proc_addr: Option<SocketAddr>,
    pub target: Arc<Target>,
    stop: watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
}

impl RunningGateway {
    /// Stops accepting, lets requests finish for up to the drain timeout,
    /// refuses what is still held, and returns.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.server.await.context("the server task failed")?;
        Ok(())
    }
}

/// Starts serving on `listener` (the proxy) and `admin`.
pub async fn start(
    cfg: Config,
    source: Box<dyn EndpointSource>,
    listener: TcpListener,
    admin: TcpListener,
) -> anyhow::Result<RunningGateway> {
    let picker = aim_picker::Picker::new(cfg.picker)?;
    let client = proxy::client(cfg.connect_timeout);
    let service = Service::new(
        cfg.service.clone(),
        picker,
        cfg.queue,
        client.clone(),
        cfg.scrape_interval,
    );
    tokio::spawn(service.clone().follow(source.start()));
    let ext_proc = match cfg.ext_proc_listen {
        None => None,
        Some(at) => {
            let l = TcpListener::bind(at)
                .await
                .with_context(|| format!("binding {at} (from --ext-proc-listen)"))?;
            Some((l, Arc::new(epp::ServicePicker::new(service.clone(), &cfg))))
        }
    };
    let mut gateway = serve_target(cfg, Target::Single(service), client, listener, admin)?;
    if let Some((l, picker)) = ext_proc {
        gateway.ext_proc_addr = Some(l.local_addr()?);
        let mut stopped = gateway.stop.subscribe();
        tracing::info!(ext_proc_addr = %l.local_addr()?, "ext_proc endpoint picker listening");
        tokio::spawn(async move {
            let shutdown = async move { stop_requested(&mut stopped).await };
            if let Err(e) = aim_epp::serve(l, picker, shutdown).await {
                tracing::error!(error = %e, "the ext_proc server stopped");
            }
        });
    }
    Ok(gateway)
}

/// Starts serving the Gateway API's routes for the Gateways `scope`
/// names, following the cluster `kube` reaches.
pub async fn start_kubernetes(
    cfg: Config,
    kube: kube::Client,
    scope: routes::Scope,
    listener: TcpListener,
    admin: TcpListener,
) -> anyhow::Result<RunningGateway> {
    // Checked here so a bad picker configuration fails at start, not at
    // the first backend.
    aim_picker::Picker::new(cfg.picker)?;
    let client = proxy::client(cfg.connect_timeout);
    let router =
        kubernetes::Router::new(cfg.picker, cfg.queue, client.clone(), cfg.scrape_interval);
    tokio::spawn(kubernetes::run(kube, scope, router.clone()));
    serve_target(cfg, Target::Routes(router), client, listener, admin)
}

fn serve_target(
    cfg: Config,
    target: Target,
    client: proxy::Client,
    listener: TcpListener,
    admin: TcpListener,
) -> anyhow::Result<RunningGateway> {
    let target = Arc::new(target);
    let proxy = Arc::new(Proxy::new(target.clone(), client, &cfg));
    let addr = listener.local_addr()?;
    let admin_addr = admin.local_addr()?;
    let ready = Arc::new(AtomicBool::new(true));
    let (stop, stopped) = watch::channel(false);
    let exports = Arc::new(otlp::ExportCounters::default());
    if let Some((url, interval)) = cfg.otlp.clone() {
        tokio::spawn(otlp::push(
            target.clone(),
            url,
            interval,
            exports.clone(),
            stopped.clone(),
        ));
    }
    tokio::spawn(admin::serve(
        admin,
        target.clone(),
        cfg.otlp.is_some().then_some(exports),
        ready.clone(),
        stopped.clone(),
    ));
    let drain_timeout = cfg.drain_timeout;
    let server = tokio::spawn(serve(
        listener,
        proxy,
        target.clone(),
        ready,
        stopped,
        drain_timeout,
    ));
    tracing::info!(%addr, %admin_addr, service = %cfg.service, kubernetes = cfg.kubernetes.is_some(), "gateway listening");
    Ok(RunningGateway {
        addr,
        admin_addr,
        ext_proc_addr: None,
        target,
        stop,
        server,
    })
}

async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    target: Arc<Target>,
    ready: Arc<AtomicBool>,
    mut stopped: watch::Receiver<bool>,
    drain_timeout: std::time::Duration,
) {
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop_requested(&mut stopped) => break,
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
        let proxy = proxy.clone();
        let svc = hyper::service::service_fn(move |req| {
            let proxy = proxy.clone();
            async move { Ok::<_, Infallible>(proxy.handle(req, peer).await) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), svc)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
    drop(listener);
    ready.store(false, Ordering::Release);
    // Idle connections close now; busy ones after their response, and
    // HTTP/2 clients are told (GOAWAY) to open no new stream.
    let drained = graceful.shutdown();
    tokio::pin!(drained);
    if tokio::time::timeout(drain_timeout, &mut drained)
        .await
        .is_err()
    {
        tracing::warn!(
            in_flight = target.in_flight(),
            "drain timeout; refusing held requests"
        );
        target.close();
        // Give the refusals a moment to reach their clients.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), &mut drained).await;
    }
    target.close();
}

/// Resolves once the stop flag is set (or its sender is gone).
pub(crate) async fn stop_requested(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
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
