//! Runs the engine model on the wall clock: one task owns the engine, takes submissions and
//! aborts from request handlers, steps, sleeps for each step's simulated duration and then
//! hands the step's tokens to the waiting handlers and its events to the metrics.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aim_engine::{
    Engine, EventKind, FinishReason, FinishedRequest, Request, RequestId, StepOutcome,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::metrics::Metrics;

/// Maps simulated time (a `Duration` since start) to the wall clock, `scale` times faster.
#[derive(Debug, Clone, Copy)]
pub struct SimClock {
    origin: Instant,
    scale: f64,
}

impl SimClock {
    pub fn start(scale: f64) -> Self {
        SimClock {
            origin: Instant::now(),
            scale,
        }
    }

    pub fn now(&self) -> Duration {
        self.origin.elapsed().mul_f64(self.scale)
    }

    pub fn instant_at(&self, simulated: Duration) -> Instant {
        self.origin + simulated.div_f64(self.scale)
    }

    pub fn to_wall(self, simulated: Duration) -> Duration {
        simulated.div_f64(self.scale)
    }
}

/// How a finished request ended, as its handler needs to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    pub reason: FinishReason,
    pub prompt_tokens: u32,
    pub output_tokens: u32,
    pub cached_tokens: u32,
}

/// What a handler hears about its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Update {
    /// Token `index` exists; `done` is set on the request's last token.
    Token {
        index: u32,
        done: Option<Completion>,
    },
    /// The engine refused the request (a validation gap; should not happen).
    Rejected,
}

pub enum Command {
    Submit {
        request: Request,
        arrival: Duration,
        sink: mpsc::UnboundedSender<Update>,
    },
    Abort {
        id: RequestId,
    },
}

/// State shared between the driver and the HTTP handlers.
pub struct Shared {
    pub metrics: Mutex<Metrics>,
    /// Requests admitted by handlers that the engine has not yet scheduled: the waiting
    /// queue as the 429 limit sees it, including submissions still in the channel.
    pub queued: AtomicUsize,
    pub clock: SimClock,
    /// The engine's busy time (simulated nanoseconds) as of the end of its
    /// latest finished step: the accumulator a GPU exporter samples.
    pub busy_nanos: AtomicU64,
}

/// Consecutive steps run back to back on simulated time, so timer granularity does not
/// stretch them; only when the driver lags the wall clock by more than this (an overloaded
/// host) does simulated time jump forward to catch up.
const MAX_WALL_LAG: Duration = Duration::from_millis(20);

pub async fn drive(
    mut engine: Engine,
    mut commands: mpsc::UnboundedReceiver<Command>,
    shared: Arc<Shared>,
) {
    let mut sinks: HashMap<RequestId, mpsc::UnboundedSender<Update>> = HashMap::new();
    let mut aborted: HashSet<RequestId> = HashSet::new();
    let clock = shared.clock;
    loop {
        loop {
            match commands.try_recv() {
                Ok(cmd) => apply(&mut engine, cmd, &mut sinks, &mut aborted, &shared),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return,
            }
        }
        if engine.is_idle() {
            shared
                .metrics
                .lock()
                .expect("metrics lock")
                .observe_engine(&engine);
            match commands.recv().await {
                Some(cmd) => apply(&mut engine, cmd, &mut sinks, &mut aborted, &shared),
                None => return,
            }
            continue;
        }
        let now = clock.now();
        let lag = clock.to_wall(now.saturating_sub(engine.busy_until()));
        let start = if lag <= MAX_WALL_LAG {
            engine.busy_until()
        } else {
            now
        };
        let Some(step) = engine.step(start) else {
            continue;
        };
        aborted.clear();
        let deadline = clock.instant_at(step.ended);
        loop {
            tokio::select! {
                biased;
                () = tokio::time::sleep_until(deadline) => break,
                cmd = commands.recv() => match cmd {
                    Some(cmd) => apply(&mut engine, cmd, &mut sinks, &mut aborted, &shared),
                    None => return,
                },
            }
        }
        dispatch(&engine, step, &mut sinks, &aborted, &shared);
    }
}

fn apply(
    engine: &mut Engine,
    cmd: Command,
    sinks: &mut HashMap<RequestId, mpsc::UnboundedSender<Update>>,
    aborted: &mut HashSet<RequestId>,
    shared: &Shared,
) {
    let mut metrics = shared.metrics.lock().expect("metrics lock");
    match cmd {
        Command::Submit {
            request,
            arrival,
            sink,
        } => {
            let id = request.id;
            match engine.submit(request, arrival) {
                Ok(_) => {
                    sinks.insert(id, sink);
                }
                Err(error) => {
                    tracing::warn!(%error, "engine refused a validated request");
                    shared.queued.fetch_sub(1, Ordering::AcqRel);
                    let _ = sink.send(Update::Rejected);
                }
            }
        }
        Command::Abort { id } => {
            sinks.remove(&id);
            let now = shared.clock.now();
            if let Some(event) = engine.abort(id, now) {
                aborted.insert(id);
                if let EventKind::Finished(f) = &event.kind
                    && f.first_scheduled.is_none()
                {
                    shared.queued.fetch_sub(1, Ordering::AcqRel);
                }
                metrics.observe_event(&event);
            }
        }
    }
    metrics.observe_engine(engine);
}

fn dispatch(
    engine: &Engine,
    step: StepOutcome,
    sinks: &mut HashMap<RequestId, mpsc::UnboundedSender<Update>>,
    aborted: &HashSet<RequestId>,
    shared: &Shared,
) {
    let mut metrics = shared.metrics.lock().expect("metrics lock");
    metrics.observe_step(&step);
    let busy = engine.busy_time(step.ended).as_nanos();
    shared
        .busy_nanos
        .store(u64::try_from(busy).unwrap_or(u64::MAX), Ordering::Release);
    // Completions ride on the last token, so a stream can mark its final chunk without
    // waiting for another message.
    let mut finished: HashMap<RequestId, &FinishedRequest> = HashMap::new();
    for event in &step.events {
        if let EventKind::Finished(f) = &event.kind {
            finished.insert(event.request, f);
        }
    }
    for event in &step.events {
        if let EventKind::Scheduled {
            first_time: true, ..
        } = event.kind
        {
            // Counted even for a request aborted during the step: it did leave the queue.
            shared.queued.fetch_sub(1, Ordering::AcqRel);
        }
        if aborted.contains(&event.request) {
            continue; // the client left while this step ran
        }
        metrics.observe_event(event);
        let EventKind::Token { index, .. } = event.kind else {
            continue;
        };
        let done = finished
            .get(&event.request)
            .filter(|f| f.output_tokens == index + 1)
            .map(|f| Completion {
                reason: f.reason,
                prompt_tokens: f.prompt_tokens,
                output_tokens: f.output_tokens,
                cached_tokens: f.cached_tokens,
            });
        if let Some(sink) = sinks.get(&event.request) {
            let _ = sink.send(Update::Token { index, done });
        }
        if done.is_some() {
            sinks.remove(&event.request);
        }
    }
    metrics.observe_engine(engine);
}
