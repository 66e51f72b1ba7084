//! The HTTP surface: routes, admission (readiness, draining, the 429 queue limit) and the
//! lifetime of one request from validation to its last token.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use aim_engine::{Engine, Request, RequestId, chain_block_hashes};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt as _;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

use crate::args::{SimArgs, TextMode};
use crate::driver::{Command, Shared, SimClock, Update, drive};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::protocol::{Endpoint, Generation, ModelLimits, parse};
use crate::response::{self, ResponseMeta};
use crate::streaming;
use crate::text::{OutputPlan, OutputSpec, token_id};

/// The simulator's own counters, apart from `/metrics` so that page stays
/// what vLLM serves. The pod runner reads them to play a GPU exporter.
pub const SIM_METRICS_PATH: &str = "/sim/metrics";
/// Simulated seconds the engine spent in steps (busy), since it started.
pub const BUSY_SECONDS: &str = "aim_sim_engine_busy_seconds_total";
/// Simulated seconds since the simulator started: the denominator of a
/// busy fraction, on the same clock as the busy time.
pub const CLOCK_SECONDS: &str = "aim_sim_clock_seconds_total";

/// The vLLM version whose API and metrics the simulator follows, reported by `/version`.
pub const VLLM_COMPAT_VERSION: &str = "0.12.0";

pub(crate) struct App {
    pub args: SimArgs,
    pub served_name: String,
    max_tokens_total: u32,
    block_size: u32,
    hash_salt: u64,
    commands: mpsc::UnboundedSender<Command>,
    pub shared: Arc<Shared>,
    next_id: AtomicU64,
    in_flight: AtomicUsize,
    ready_at: Instant,
    draining: AtomicBool,
    idle: Notify,
    pub created: u64,
}

impl App {
    fn check_serving(&self) -> Result<(), ApiError> {
        if self.draining.load(Ordering::Acquire) {
            return Err(ApiError::unavailable("The server is shutting down."));
        }
        if Instant::now() < self.ready_at {
            return Err(ApiError::unavailable("The model is still loading."));
        }
        Ok(())
    }

    /// Takes a place in the waiting queue, or refuses with 429 when it is full.
    fn admit(self: &Arc<Self>) -> Result<Ticket, ApiError> {
        let limit = self.args.max_waiting_queue_length;
        self.shared
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q < limit).then_some(q + 1)
            })
            .map_err(|_| ApiError::queue_full(limit))?;
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        Ok(Ticket {
            id,
            app: self.clone(),
            finished: false,
        })
    }
}

/// One admitted request. Dropping it before the request finished (the client went away)
/// aborts the request in the engine, freeing its slot and KV blocks at once.
pub(crate) struct Ticket {
    pub id: RequestId,
    app: Arc<App>,
    finished: bool,
}

impl Ticket {
    pub fn finish(&mut self) {
        self.finished = true;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.app.commands.send(Command::Abort { id: self.id });
        }
        if self.app.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.app.idle.notify_waiters();
        }
    }
}

/// A simulator serving on a socket. Dropping it does not stop it; call [`RunningSim::shutdown`].
pub struct RunningSim {
    addr: SocketAddr,
    app: Arc<App>,
    stop: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl RunningSim {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests admitted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.app.in_flight.load(Ordering::Acquire)
    }

    /// Refuses new requests with 503 (and turns /health to 503) while in-flight ones go on.
    pub fn begin_drain(&self) {
        self.app.draining.store(true, Ordering::Release);
    }

    /// Drains (as on SIGTERM): refuses new requests, waits up to `--drain-timeout` for
    /// in-flight ones, then stops the server.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.begin_drain();
        let wait = async {
            loop {
                let idle = self.app.idle.notified();
                if self.in_flight() == 0 {
                    break;
                }
                idle.await;
            }
        };
        let timeout = std::time::Duration::from_secs_f64(self.app.args.drain_timeout);
        if tokio::time::timeout(timeout, wait).await.is_err() {
            tracing::warn!(
                in_flight = self.in_flight(),
                "drain timeout; stopping anyway"
            );
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.server.await??;
        Ok(())
    }
}

/// Starts serving on `listener` (tests bind 127.0.0.1:0 and read the address back).
pub async fn start(args: SimArgs, listener: TcpListener) -> anyhow::Result<RunningSim> {
    args.validate()?;
    let engine = Engine::new(args.engine_config())?;
    let served_name = args.served_name().to_string();
    let shared = Arc::new(Shared {
        metrics: Mutex::new(Metrics::new(&engine, &served_name)),
        queued: AtomicUsize::new(0),
        clock: SimClock::start(args.time_scale),
        busy_nanos: AtomicU64::new(0),
    });
    let (commands, rx) = mpsc::unbounded_channel();
    let config = engine.config().clone();
    tokio::spawn(drive(engine, rx, shared.clone()));
    let app = Arc::new(App {
        served_name: served_name.clone(),
        max_tokens_total: config.max_request_tokens(),
        block_size: config.block_size,
        hash_salt: u64::from(token_id(&served_name)),
        commands,
        shared,
        next_id: AtomicU64::new(1),
        in_flight: AtomicUsize::new(0),
        ready_at: Instant::now() + args.wall(args.startup_delay),
        draining: AtomicBool::new(false),
        idle: Notify::new(),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        args,
    });
    let router = Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/version", get(version))
        .route("/metrics", get(metrics))
        .route(SIM_METRICS_PATH, get(sim_metrics))
        .with_state(app.clone());
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    // Each token is a small write. Without TCP_NODELAY, Nagle holds a token back until
    // the client acknowledges the previous write, and clients delay acknowledgements by
    // up to 40 ms: the first token would wait behind the response headers. vLLM's
    // server (asyncio) sets TCP_NODELAY on every connection too.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
    });
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
    });
    tracing::info!(%addr, model = %app.served_name, profile = app.args.profile.name, "simulator listening");
    Ok(RunningSim {
        addr,
        app,
        stop: Some(stop),
        server,
    })
}

async fn completions(State(app): State<Arc<App>>, body: Bytes) -> Response {
    generate(app, Endpoint::Completions, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn chat_completions(State(app): State<Arc<App>>, body: Bytes) -> Response {
    generate(app, Endpoint::Chat, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn generate(app: Arc<App>, endpoint: Endpoint, body: Bytes) -> Result<Response, ApiError> {
    app.check_serving()?;
    let limits = ModelLimits {
        served_name: &app.served_name,
        max_tokens_total: app.max_tokens_total,
    };
    let generation = parse(endpoint, &body, &limits)?;
    let mut ticket = app.admit()?;
    let plan = output_plan(&app, &generation, ticket.id);
    let mut request = Request::new(
        ticket.id,
        generation.prompt_token_ids.len() as u32,
        generation.max_tokens,
    )
    .with_block_hashes(chain_block_hashes(
        &generation.prompt_token_ids,
        app.block_size,
        app.hash_salt,
    ));
    request.stop_after = plan.stop_after;
    let (sink, updates) = mpsc::unbounded_channel();
    let arrival = app.shared.clock.now();
    app.commands
        .send(Command::Submit {
            request,
            arrival,
            sink,
        })
        .map_err(|_| ApiError::unavailable("The engine has stopped."))?;
    let meta = ResponseMeta::new(endpoint, ticket.id, app.created, &app.served_name);
    if generation.stream {
        return Ok(streaming::response(
            meta,
            plan,
            generation.include_usage,
            updates,
            ticket,
        ));
    }
    let mut updates = updates;
    while let Some(update) = updates.recv().await {
        match update {
            Update::Token {
                done: Some(done), ..
            } => {
                ticket.finish();
                return Ok(axum::Json(response::full(&meta, &plan, done)).into_response());
            }
            Update::Token { done: None, .. } => {}
            Update::Rejected => break,
        }
    }
    ticket.finish();
    Err(ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        message: "The engine dropped the request.".into(),
        param: None,
    })
}

fn output_plan(app: &App, generation: &Generation, id: RequestId) -> OutputPlan {
    let source = match app.args.mode {
        TextMode::Echo => generation.echo_source.as_str(),
        TextMode::Fixed => app.args.fixed_text.as_str(),
        TextMode::Random => "",
    };
    OutputPlan::new(OutputSpec {
        mode: app.args.mode,
        source,
        max_tokens: generation.max_tokens,
        ignore_eos: generation.ignore_eos,
        stop: &generation.stop,
        seed: app.args.seed ^ id.rotate_left(32),
    })
}

async fn models(State(app): State<Arc<App>>) -> impl IntoResponse {
    axum::Json(json!({
        "object": "list",
        "data": [{
            "id": app.served_name,
            "object": "model",
            "created": app.created,
            "owned_by": "vllm",
            "root": app.args.model,
            "parent": null,
            "max_model_len": app.max_tokens_total,
            "permission": [],
        }],
    }))
}

async fn health(State(app): State<Arc<App>>) -> StatusCode {
    match app.check_serving() {
        Ok(()) => StatusCode::OK,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

async fn version() -> impl IntoResponse {
    axum::Json(
        json!({ "version": VLLM_COMPAT_VERSION, "simulator": concat!("aim-sim ", env!("CARGO_PKG_VERSION")) }),
    )
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let text = app.shared.metrics.lock().expect("metrics lock").render();
    Response::builder()
        .header(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )
        .body(Body::from(text))
        .expect("static headers are valid")
}

async fn sim_metrics(State(app): State<Arc<App>>) -> Response {
    let busy = app.shared.busy_nanos.load(Ordering::Acquire) as f64 / 1e9;
    let clock = app.shared.clock.now().as_secs_f64();
    let text = format!(
        "# HELP {BUSY_SECONDS} Simulated seconds the engine spent computing steps.\n\
         # TYPE {BUSY_SECONDS} counter\n\
         {BUSY_SECONDS} {busy}\n\
         # HELP {CLOCK_SECONDS} Simulated seconds since the simulator started.\n\
         # TYPE {CLOCK_SECONDS} counter\n\
         {CLOCK_SECONDS} {clock}\n"
    );
    Response::builder()
        .header(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )
        .body(Body::from(text))
        .expect("static headers are valid")
}
