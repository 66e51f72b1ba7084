//! The discrete-event simulation: arrivals → router → replicas (aim-engine
//! on virtual time) → metrics pipeline → controller → pod lifecycle.
//!
//! Time is virtual and only jumps from event to event, so an hour of
//! traffic takes seconds. Everything random is seeded: equal inputs and
//! seeds give identical runs.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Duration;

use aim_engine::rng::Rng;
use aim_engine::{Engine, EngineConfig, EventKind, Profile, Request, expand_coarse_hashes};
use aim_picker::{Choice, FlowQueue, Load, Picker, PickerConfig, QueueConfig, ServerMetrics};
use aim_policy::PolicyError;

use crate::control::Controller;
use crate::metrics::{Pipeline, p90};
use crate::prom::{MetricIssues, Tsdb, tsdb};
use crate::trace::Arrival;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Router {
    RoundRobin,
    LeastOutstanding,
    /// An inference gateway with flow control (Gateway API Inference
    /// Extension): least-outstanding over the Ready pods that are not
    /// saturated (vLLM waiting < 5 and KV cache < 80 %, the extension's
    /// saturation-detector defaults); when every Ready pod is saturated the
    /// gateway holds requests in arrival order and dispatches them as pods
    /// drain their queues or become Ready. Held requests count as waiting
    /// in the scraped metrics. Requests already inside a vLLM are never
    /// moved.
    GatewayQueue,
    /// `aim gateway`'s endpoint picker (the `aim-picker` crate, default
    /// configuration) without flow control: the best-scoring unsaturated
    /// Ready pod by vLLM queue, KV cache and in-flight requests, read from
    /// the engines at the instant of the pick; when every Ready pod is
    /// saturated, the best of them. Ties go in turn.
    Picker,
    /// `aim gateway`'s picker with its flow-control queue (`aim-picker`'s
    /// `FlowQueue`, one client, unbounded, no timeout): requests are held
    /// while every Ready pod is saturated and released in arrival order as
    /// pods drain their queues or become Ready. Held requests count as
    /// waiting in the scraped metrics, as with `gateway-queue`.
    PickerQueue,
}

impl Router {
    /// Routers that hold requests while every Ready pod is saturated.
    fn holds_when_saturated(self) -> bool {
        matches!(self, Router::GatewayQueue | Router::PickerQueue)
    }
}

/// The gateway's saturation thresholds for [`Router::GatewayQueue`].
pub const GATEWAY_QUEUE_DEPTH: usize = 5;
pub const GATEWAY_KV_UTILIZATION: f64 = 0.8;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Slo {
    pub ttft_s: f64,
    pub tpot_s: f64,
}

/// Everything about the simulated cluster that is not the controller.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub profile: Profile,
    pub gpus_per_replica: u32,
    /// Pod creation to Ready: scheduling, image pull, model load (T_w).
    pub cold_start_s: f64,
    /// Uniform ± fraction of T_w, per pod.
    pub cold_start_jitter: f64,
    /// Pod scrape / OTel push interval.
    pub scrape_interval_s: f64,
    /// HPA sync period.
    pub hpa_sync_s: f64,
    /// In-flight requests on a pod being removed get this long to finish,
    /// then are aborted (and count as misses).
    pub drain_grace_s: f64,
    pub router: Router,
    pub slo: Slo,
    pub seed: u64,
    /// Ready replicas at t = 0 (warm start).
    pub initial_replicas: u32,
    /// Spacing of the timeline kept for charts.
    pub sample_interval_s: f64,
    /// The episode goes on this long after the last arrival (controller,
    /// timeline and billing included), to watch the scale-down after a
    /// load ends.
    pub tail_s: f64,
    /// When the first scrape and the first HPA sync fall, in seconds from
    /// the start. `None` aligns them: the scrape at one interval, the HPA
    /// 1 ms after it, so the HPA always reads a fresh scrape. On a live
    /// cluster the sidecars' scrapes and the HPA's sync run at unrelated
    /// phases, so the data the HPA reads is up to one interval old.
    pub first_ticks: Option<(f64, f64)>,
    /// Seconds of pre-roll before the scored episode: the first `warmup_s`
    /// of the workload, mirrored in time (t ↦ −t), run through the same
    /// loop before t = 0. Engines, the metrics pipeline, rate estimates and
    /// the controller's memory then start the scored episode in the
    /// workload's own steady state instead of empty. Nothing that happens
    /// before t = 0 is scored or billed. 0 starts cold, as a live run does.
    pub warmup_s: f64,
}

impl SimConfig {
    pub fn new(profile: Profile) -> Self {
        SimConfig {
            gpus_per_replica: gpus_for(&profile),
            profile,
            cold_start_s: 100.0,
            cold_start_jitter: 0.1,
            scrape_interval_s: 15.0,
            hpa_sync_s: aim_policy::hpa::SYNC_PERIOD_SECONDS,
            drain_grace_s: 120.0,
            router: Router::LeastOutstanding,
            slo: Slo {
                ttft_s: 3.0,
                tpot_s: 0.1,
            },
            seed: 1,
            initial_replicas: 1,
            sample_interval_s: 10.0,
            tail_s: 0.0,
            first_ticks: None,
            warmup_s: 0.0,
        }
    }
}

/// GPUs per replica from the profile name's "<n>x" hardware part.
pub fn gpus_for(profile: &Profile) -> u32 {
    profile
        .name
        .rsplit('-')
        .next()
        .and_then(|hw| hw.split_once('x'))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or(1)
}

/// What happened to one request.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RequestOutcome {
    pub arrival: f64,
    /// Arrival to first token, wherever the request waited: a gateway's
    /// queue, the router, or the engine's own queue.
    pub ttft: Option<f64>,
    /// Seconds the request was held before an engine took it (0 when it
    /// was dispatched on arrival).
    pub held: f64,
    pub tpot: Option<f64>,
    pub finished: bool,
    pub aborted: bool,
    pub output_tokens: u32,
}

/// One point of the run's timeline.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct TimelinePoint {
    pub at: f64,
    /// Arrivals per second over the last sample interval.
    pub load_rps: f64,
    pub spec: u32,
    /// Pods that exist (billed), ready or not.
    pub provisioned: u32,
    pub ready: u32,
    pub waiting: u32,
    pub running: u32,
    /// p90 TTFT of first tokens in the last minute.
    pub ttft_p90: f64,
}

/// A replica-count change the controller made.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScaleChange {
    pub at: f64,
    pub from: u32,
    pub to: u32,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunResult {
    pub requests: Vec<RequestOutcome>,
    pub timeline: Vec<TimelinePoint>,
    pub changes: Vec<ScaleChange>,
    /// Σ (removed or episode end − created), seconds, over all pods.
    pub replica_seconds: f64,
    pub gpus_per_replica: u32,
    /// Trace span: billing and averages run over [0, episode_end].
    pub episode_end: f64,
    pub clipped_prompts: usize,
    pub simulated_until: f64,
    /// What went wrong with the controller's Prometheus queries in the
    /// scored episode (nothing unless a trigger queries Prometheus).
    pub metric_issues: MetricIssues,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Starting,
    Ready,
    Draining,
    Gone,
}

#[derive(Clone)]
struct Pod {
    created: f64,
    gone_at: Option<f64>,
    phase: Phase,
    engine: Engine,
    outstanding: u32,
    stepping: bool,
    /// Results of the step in flight, applied when it ends.
    first_tokens: Vec<(u64, f64)>,
    finished: Vec<Finished>,
    /// vLLM's `request_success_total`, by finish reason.
    successes: [u64; tsdb::FINISH_REASONS.len()],
    /// (time, engine busy time) at the previous scrape: a GPU exporter's
    /// utilisation is the busy share of the interval since.
    busy_seen: Option<(f64, Duration)>,
}

/// A request the step in flight finishes.
#[derive(Debug, Clone, Copy)]
struct Finished {
    id: u64,
    ttft: Option<f64>,
    tpot: Option<f64>,
    aborted: bool,
    /// The finish reason's index in `FinishReason::ALL`.
    reason: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    StepEnd(usize),
    PodReady(usize),
    DrainDeadline(usize),
    Scrape,
    /// Prometheus scrapes one pod.
    PromScrape(usize),
    HpaSync,
    KedaPoll,
    Sample,
    Plan(usize),
}

const NS: f64 = 1e9;

/// `FinishReason::Abort`'s index in `FinishReason::ALL`.
const ABORT: usize = 2;

fn ns(t: f64) -> u64 {
    // Round to the nearest nanosecond; `as` truncates, and adding a half
    // first is several times cheaper than `f64::round` (a library call).
    (t.max(0.0) * NS + 0.5) as u64
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[derive(Clone)]
struct World<'a> {
    cfg: &'a SimConfig,
    engine_cfg: EngineConfig,
    pods: Vec<Pod>,
    heap: BinaryHeap<Reverse<(u64, u64, Event)>>,
    seq: u64,
    now: f64,
    rng: Rng,
    gateway: VecDeque<u64>,
    /// [`Router::PickerQueue`]'s held requests.
    flow: FlowQueue<u64>,
    /// [`Router::Picker`]'s and [`Router::PickerQueue`]'s picker, and where
    /// its next tie goes.
    picker: Picker,
    cursor: usize,
    arrivals: &'a [Arrival],
    requests: Vec<RequestOutcome>,
    assigned: Vec<u32>,
    pipeline: Pipeline,
    rr: usize,
    spec: u32,
    changes: Vec<ScaleChange>,
    clipped: usize,
    outstanding_total: usize,
    sample_arrivals: usize,
    /// Prometheus, when a trigger queries it.
    prom: Option<Tsdb>,
}

impl<'a> World<'a> {
    fn schedule(&mut self, at: f64, event: Event) {
        self.seq += 1;
        self.heap.push(Reverse((ns(at), self.seq, event)));
    }

    fn engine(&mut self, index: usize) -> Engine {
        let mut cfg = self.engine_cfg.clone();
        cfg.seed = self
            .cfg
            .seed
            .wrapping_mul(1_000_003)
            .wrapping_add(index as u64);
        let mut engine = Engine::new(cfg).expect("validated at start");
        // The lab scores first tokens and completions only.
        engine.set_every_token_event(false);
        engine
    }

    fn add_pod(&mut self, ready_now: bool) {
        let index = self.pods.len();
        let engine = self.engine(index);
        let jitter = self.cfg.cold_start_jitter * (2.0 * self.rng.next_f64() - 1.0);
        let ready_at = self.now + self.cfg.cold_start_s * (1.0 + jitter);
        self.pods.push(Pod {
            created: self.now,
            gone_at: None,
            phase: if ready_now {
                Phase::Ready
            } else {
                Phase::Starting
            },
            engine,
            busy_seen: None,
            outstanding: 0,
            stepping: false,
            first_tokens: Vec::new(),
            finished: Vec::new(),
            successes: [0; tsdb::FINISH_REASONS.len()],
        });
        if !ready_now {
            self.schedule(ready_at, Event::PodReady(index));
        }
        // Prometheus knows the pod from its creation and scrapes it at its
        // own phase; scrapes fail until it is Ready.
        if let Some(db) = &mut self.prom {
            let at = db.next_scrape(index, self.now);
            self.schedule(at, Event::PromScrape(index));
        }
    }

    fn active(&self) -> impl Iterator<Item = (usize, &Pod)> {
        self.pods
            .iter()
            .enumerate()
            .filter(|(_, p)| matches!(p.phase, Phase::Starting | Phase::Ready))
    }

    fn counts(&self) -> (u32, u32) {
        let existing = self.active().count() as u32;
        let ready = self.pods.iter().filter(|p| p.phase == Phase::Ready).count() as u32;
        (existing, ready)
    }

    fn set_spec(&mut self, to: u32) {
        if to != self.spec {
            self.changes.push(ScaleChange {
                at: self.now,
                from: self.spec,
                to,
            });
            self.spec = to;
        }
        self.reconcile();
    }

    /// Makes the pods match `spec`: create, or remove starting pods first
    /// (newest first), then the ready pods with the least work.
    fn reconcile(&mut self) {
        let existing = self.active().count() as u32;
        for _ in existing..self.spec {
            self.add_pod(false);
        }
        let mut excess = existing.saturating_sub(self.spec);
        while excess > 0 {
            let starting = self.pods.iter().rposition(|p| p.phase == Phase::Starting);
            let victim = starting.or_else(|| {
                self.pods
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.phase == Phase::Ready)
                    .min_by_key(|(i, p)| (p.outstanding, Reverse(*i)))
                    .map(|(i, _)| i)
            });
            let Some(i) = victim else { break };
            self.remove_pod(i);
            excess -= 1;
        }
    }

    fn remove_pod(&mut self, i: usize) {
        // A deleted pod leaves the Service's endpoints at once: Prometheus
        // stops scraping it, and its series go stale.
        if let Some(db) = &mut self.prom {
            db.target_gone(i, self.now);
        }
        let pod = &mut self.pods[i];
        if pod.phase == Phase::Ready && pod.outstanding > 0 {
            pod.phase = Phase::Draining;
            let deadline = self.now + self.cfg.drain_grace_s;
            self.schedule(deadline, Event::DrainDeadline(i));
        } else {
            pod.phase = Phase::Gone;
            pod.gone_at = Some(self.now);
        }
    }

    fn pick_pod(&mut self) -> Option<usize> {
        if matches!(self.cfg.router, Router::Picker | Router::PickerQueue) {
            return self.pick_scored();
        }
        let ready: Vec<usize> = self
            .pods
            .iter()
            .enumerate()
            .filter(|(_, p)| p.phase == Phase::Ready)
            .filter(|(_, p)| {
                self.cfg.router != Router::GatewayQueue
                    || (p.engine.num_waiting() < GATEWAY_QUEUE_DEPTH
                        && p.engine.kv_usage() < GATEWAY_KV_UTILIZATION)
            })
            .map(|(i, _)| i)
            .collect();
        if ready.is_empty() {
            return None;
        }
        Some(match self.cfg.router {
            Router::RoundRobin => {
                self.rr = self.rr.wrapping_add(1);
                ready[self.rr % ready.len()]
            }
            Router::LeastOutstanding | Router::GatewayQueue => *ready
                .iter()
                .min_by_key(|&&i| (self.pods[i].outstanding, i))
                .expect("non-empty"),
            Router::Picker | Router::PickerQueue => unreachable!("picked by pick_scored"),
        })
    }

    /// The `aim-picker` pick over the Ready pods, their engines read now.
    fn pick_scored(&mut self) -> Option<usize> {
        let ready: Vec<usize> = self
            .pods
            .iter()
            .enumerate()
            .filter(|(_, p)| p.phase == Phase::Ready)
            .map(|(i, _)| i)
            .collect();
        let loads: Vec<Load> = ready
            .iter()
            .map(|&i| {
                let p = &self.pods[i];
                Load::exact(
                    p.outstanding,
                    ServerMetrics {
                        waiting: p.engine.num_waiting() as u32,
                        running: p.engine.num_running() as u32,
                        kv_usage: p.engine.kv_usage(),
                    },
                )
            })
            .collect();
        let k = match self.picker.pick(&loads, self.cursor) {
            Choice::Endpoint(k) => k,
            Choice::AllSaturated { best } if self.cfg.router == Router::Picker => best,
            Choice::AllSaturated { .. } | Choice::NoEndpoint => return None,
        };
        self.cursor = k + 1;
        Some(ready[k])
    }

    fn dispatch(&mut self, id: u64) {
        if self.cfg.router == Router::PickerQueue {
            self.dispatch_flow(id);
            return;
        }
        if self.cfg.router == Router::GatewayQueue && !self.gateway.is_empty() {
            // Held requests go first.
            self.gateway.push_back(id);
            self.release_held();
            return;
        }
        let Some(pod) = self.pick_pod() else {
            // No ready (or, behind a flow-controlling gateway, no unsaturated)
            // replica: the gateway holds the request (its TTFT keeps counting
            // from arrival).
            self.gateway.push_back(id);
            return;
        };
        self.submit(id, pod);
    }

    /// [`Router::PickerQueue`]: held requests go first.
    fn dispatch_flow(&mut self, id: u64) {
        if self.flow.is_empty()
            && let Some(pod) = self.pick_pod()
        {
            self.submit(id, pod);
            return;
        }
        let now = Duration::from_nanos(ns(self.now));
        self.flow
            .push("", 0, now, id)
            .expect("the lab's flow-control queue is unbounded");
        self.release_held();
    }

    /// Dispatches held requests in arrival order while a pod takes them.
    fn release_held(&mut self) {
        if self.cfg.router == Router::PickerQueue {
            let now = Duration::from_nanos(ns(self.now));
            while !self.flow.is_empty() {
                let Some(pod) = self.pick_pod() else {
                    return;
                };
                let held = self.flow.pop(now).expect("not empty");
                self.submit(held.value, pod);
            }
            return;
        }
        while let Some(&id) = self.gateway.front() {
            let Some(pod) = self.pick_pod() else {
                return;
            };
            self.gateway.pop_front();
            self.submit(id, pod);
        }
    }

    fn submit(&mut self, id: u64, pod: usize) {
        let a = &self.arrivals[id as usize];
        let limit = self.engine_cfg.max_request_tokens();
        let output = a.output_tokens.min(limit / 2).max(1);
        let mut prompt = a.prompt_tokens;
        if prompt + output > limit {
            // Longer than the model's context: clipped so it still runs (counted).
            prompt = limit - output;
            self.clipped += 1;
        }
        let mut request = Request::new(id, prompt.max(1), output);
        if !a.hash_ids.is_empty() {
            let mut hashes = expand_coarse_hashes(&a.hash_ids, 512, self.engine_cfg.block_size);
            hashes.truncate((prompt / self.engine_cfg.block_size) as usize);
            request = request.with_block_hashes(hashes);
        }
        let now = Duration::from_nanos(ns(self.now));
        self.requests[id as usize].held = (self.now - a.at).max(0.0);
        let p = &mut self.pods[pod];
        if p.engine.submit(request, now).is_ok() {
            p.outstanding += 1;
            self.assigned[id as usize] = pod as u32;
            if !p.stepping {
                self.kick(pod);
            }
        } else {
            self.requests[id as usize].aborted = true;
            self.outstanding_total -= 1;
        }
    }

    fn kick(&mut self, i: usize) {
        let now = Duration::from_nanos(ns(self.now));
        let pod = &mut self.pods[i];
        let Some(outcome) = pod.engine.step(now) else {
            pod.stepping = false;
            return;
        };
        for e in &outcome.events {
            match &e.kind {
                EventKind::Token {
                    index: 0,
                    since_arrival,
                    ..
                } => pod.first_tokens.push((e.request, secs(*since_arrival))),
                EventKind::Finished(f) => {
                    let aborted = matches!(f.reason, aim_engine::FinishReason::Abort);
                    let reason = aim_engine::FinishReason::ALL
                        .iter()
                        .position(|r| *r == f.reason)
                        .unwrap_or(ABORT);
                    pod.finished.push(Finished {
                        id: e.request,
                        ttft: f.ttft().map(secs),
                        tpot: f.mean_tpot().map(secs),
                        aborted,
                        reason,
                    });
                }
                _ => {}
            }
        }
        pod.stepping = true;
        let ended = secs(outcome.ended);
        self.schedule(ended, Event::StepEnd(i));
    }

    fn step_end(&mut self, i: usize) {
        let firsts = std::mem::take(&mut self.pods[i].first_tokens);
        for (id, engine_ttft) in firsts {
            // vLLM's TTFT histogram starts when the engine receives the
            // request; what the user feels starts at arrival.
            let r = &mut self.requests[id as usize];
            r.ttft = Some(r.held + engine_ttft);
            self.pipeline.first_token(self.now, engine_ttft);
        }
        let finished = std::mem::take(&mut self.pods[i].finished);
        for f in finished {
            self.finish(i, f.id, f.ttft, f.tpot, f.aborted, f.reason);
        }
        self.pods[i].stepping = false;
        if !self.pods[i].engine.is_idle() {
            self.kick(i);
        }
        if self.cfg.router.holds_when_saturated() {
            self.release_held();
        }
        self.maybe_gone(i);
    }

    fn finish(
        &mut self,
        pod: usize,
        id: u64,
        ttft: Option<f64>,
        tpot: Option<f64>,
        aborted: bool,
        reason: usize,
    ) {
        let r = &mut self.requests[id as usize];
        if r.finished || r.aborted {
            return;
        }
        self.pods[pod].successes[reason] += 1;
        r.ttft = r.ttft.or(ttft.map(|t| r.held + t));
        r.tpot = tpot;
        r.finished = !aborted;
        r.aborted = aborted;
        if let Some(t) = tpot {
            self.pipeline.finished(self.now, t);
        }
        if !aborted {
            self.pipeline.success(self.now);
        }
        self.pods[pod].outstanding -= 1;
        self.outstanding_total -= 1;
    }

    fn maybe_gone(&mut self, i: usize) {
        let p = &mut self.pods[i];
        if p.phase == Phase::Draining && p.outstanding == 0 {
            p.phase = Phase::Gone;
            p.gone_at = Some(self.now);
        }
    }

    fn drain_deadline(&mut self, i: usize) {
        if self.pods[i].phase != Phase::Draining {
            return;
        }
        let now = Duration::from_nanos(ns(self.now));
        let ids: Vec<u64> = (0..self.requests.len() as u64)
            .filter(|&id| self.assigned[id as usize] == i as u32)
            .filter(|&id| self.pods[i].engine.contains(id))
            .collect();
        for id in ids {
            self.pods[i].engine.abort(id, now);
            self.finish(i, id, None, None, true, ABORT);
        }
        self.pods[i].first_tokens.clear();
        self.pods[i].finished.clear();
        self.maybe_gone(i);
    }

    fn scrape(&mut self) {
        let (mut running, mut waiting, mut kv, mut n) = (0usize, 0usize, 0.0, 0usize);
        let (mut gpu, mut gpus) = (0.0, 0usize);
        let now = self.now;
        for p in self
            .pods
            .iter_mut()
            .filter(|p| matches!(p.phase, Phase::Ready | Phase::Draining))
        {
            running += p.engine.num_running();
            waiting += p.engine.num_waiting();
            kv += p.engine.kv_usage();
            n += 1;
            // A pod's first scrape only sets the baseline, as the live
            // exporter's does.
            let busy = p.engine.busy_time(Duration::from_nanos(ns(now)));
            if let Some((at, before)) = p.busy_seen.replace((now, busy))
                && now > at
            {
                gpu += 100.0 * (busy - before).as_secs_f64() / (now - at);
                gpus += 1;
            }
        }
        if self.cfg.router.holds_when_saturated() {
            // The gateway's flow-control queue is exported with the pods'
            // queues, so a queue-driven scaler sees held work.
            waiting += self.gateway.len() + self.flow.len();
        }
        let kv = if n > 0 { kv / n as f64 } else { 0.0 };
        let gpu = if gpus > 0 { gpu / gpus as f64 } else { 0.0 };
        self.pipeline
            .scrape(self.now, running as f64, waiting as f64, kv, gpu);
    }

    /// Prometheus scrapes pod `i`: a Ready pod answers with its gauges and
    /// counters; a starting pod's scrape fails and stores nothing; a
    /// deleted pod is no longer a target.
    fn prom_scrape(&mut self, i: usize) {
        let Some(db) = &mut self.prom else { return };
        let pod = &self.pods[i];
        match pod.phase {
            Phase::Draining | Phase::Gone => return,
            Phase::Starting => {}
            Phase::Ready => {
                let mut values = [0.0; tsdb::SERIES_PER_TARGET];
                values[tsdb::RUNNING] = pod.engine.num_running() as f64;
                values[tsdb::WAITING] = pod.engine.num_waiting() as f64;
                values[tsdb::KV_USAGE] = pod.engine.kv_usage();
                for (k, n) in pod.successes.iter().enumerate() {
                    values[tsdb::SUCCESS + k] = *n as f64;
                }
                db.append(i, self.now, values);
            }
        }
        let next = self.now + db.interval;
        self.schedule(next, Event::PromScrape(i));
    }

    /// Records a timeline point; its TTFT column is filled in after the run.
    fn sample(&mut self, timeline: &mut Vec<TimelinePoint>) {
        let (existing, ready) = self.counts();
        let provisioned = existing
            + self
                .pods
                .iter()
                .filter(|p| p.phase == Phase::Draining)
                .count() as u32;
        let (mut running, mut waiting) = (0, 0);
        for p in self.pods.iter().filter(|p| p.phase != Phase::Gone) {
            running += p.engine.num_running() as u32;
            waiting += p.engine.num_waiting() as u32;
        }
        timeline.push(TimelinePoint {
            at: self.now,
            load_rps: self.sample_arrivals as f64 / self.cfg.sample_interval_s,
            spec: self.spec,
            provisioned,
            ready,
            waiting: waiting + (self.gateway.len() + self.flow.len()) as u32,
            running,
            ttft_p90: 0.0,
        });
        self.sample_arrivals = 0;
    }
}

/// The workload as the loop replays it: the pre-roll (the first
/// `warmup_s` of the workload mirrored in time) followed by the workload,
/// both shifted so the pre-roll starts at 0 on the run's internal clock.
#[derive(Debug, Clone, PartialEq)]
pub struct Replay {
    pub arrivals: Vec<Arrival>,
    /// Arrivals before this index are pre-roll: replayed, never scored.
    pub scored_from: usize,
    /// Internal time of the scored episode's t = 0.
    pub offset: f64,
}

impl Replay {
    pub fn new(arrivals: &[Arrival], warmup_s: f64) -> Replay {
        let offset = warmup_s.max(0.0);
        let mut out: Vec<Arrival> = arrivals
            .iter()
            .filter(|a| a.at > 0.0 && a.at <= offset)
            .map(|a| Arrival {
                at: offset - a.at,
                ..a.clone()
            })
            .collect();
        out.reverse();
        let scored_from = out.len();
        out.extend(arrivals.iter().map(|a| Arrival {
            at: a.at + offset,
            ..a.clone()
        }));
        Replay {
            arrivals: out,
            scored_from,
            offset,
        }
    }
}

/// A run in progress. It can be advanced to a time and cloned, so a search
/// can try several futures from one state (see `hindsight`).
#[derive(Clone)]
pub struct Sim<'a> {
    w: World<'a>,
    controller: Controller,
    timeline: Vec<TimelinePoint>,
    next_arrival: usize,
    /// Internal time at which billing and the timeline stop.
    episode_end: f64,
    hard_stop: f64,
    scored_from: usize,
    offset: f64,
}

impl<'a> Sim<'a> {
    /// Sets up a run of `replay` under `controller`. Plan steps are in
    /// episode time (t = 0 is the end of the pre-roll); the plan's first
    /// count holds through the pre-roll.
    pub fn new(cfg: &'a SimConfig, replay: &'a Replay, controller: Controller) -> Sim<'a> {
        let arrivals = &replay.arrivals[..];
        let mut engine_cfg = EngineConfig::from_profile(cfg.profile.clone());
        engine_cfg.seed = cfg.seed;
        let episode_end =
            (arrivals.last().map_or(replay.offset, |a| a.at) + cfg.tail_s.max(0.0)).ceil();
        let mut w = World {
            cfg,
            engine_cfg,
            pods: Vec::new(),
            heap: BinaryHeap::new(),
            seq: 0,
            now: 0.0,
            rng: Rng::new(cfg.seed ^ 0xc01d_57a7),
            gateway: VecDeque::new(),
            flow: FlowQueue::new(QueueConfig::unbounded()),
            picker: Picker::new(PickerConfig::default())
                .expect("the default configuration is valid"),
            cursor: 0,
            arrivals,
            requests: arrivals
                .iter()
                .map(|a| RequestOutcome {
                    arrival: a.at,
                    output_tokens: a.output_tokens,
                    ..Default::default()
                })
                .collect(),
            assigned: vec![u32::MAX; arrivals.len()],
            pipeline: Pipeline::new(3600.0),
            rr: 0,
            spec: 0,
            changes: Vec::new(),
            clipped: 0,
            outstanding_total: arrivals.len(),
            sample_arrivals: 0,
            prom: None,
        };
        let mut controller = controller;
        if let Controller::Keda(k) = &mut controller {
            k.score_from = replay.offset;
            if let Some(setup) = &k.prometheus {
                let longest = k
                    .triggers
                    .iter()
                    .filter_map(|t| t.prometheus.as_ref())
                    .map(|p| p.query.longest_range)
                    .fold(0.0, f64::max);
                let mut db = Tsdb::new(
                    setup.scrape_interval_s.unwrap_or(cfg.scrape_interval_s),
                    longest,
                    &setup.namespace,
                    &setup.pod_prefix,
                    cfg.seed,
                );
                db.isvc = setup.isvc.clone();
                w.prom = Some(db);
            }
        }
        let initial = match &controller {
            Controller::Static(n) => *n,
            Controller::Plan(steps) => steps.first().map_or(cfg.initial_replicas, |s| s.1),
            Controller::Keda(_) => cfg.initial_replicas,
        };
        for _ in 0..initial {
            w.add_pod(true);
        }
        w.spec = initial;
        // Aligned by default: offsets keep the order scrape → HPA → KEDA
        // within a tick.
        let (first_scrape, first_sync) = cfg
            .first_ticks
            .unwrap_or((cfg.scrape_interval_s, cfg.hpa_sync_s + 0.001));
        w.schedule(first_scrape, Event::Scrape);
        match &controller {
            Controller::Keda(k) => {
                w.schedule(first_sync, Event::HpaSync);
                w.schedule(
                    k.keda.spec.polling_interval_seconds + 0.002,
                    Event::KedaPoll,
                );
            }
            Controller::Plan(steps) => {
                for (i, step) in steps.iter().enumerate().skip(1) {
                    w.schedule(step.0 + replay.offset, Event::Plan(i));
                }
            }
            Controller::Static(_) => {}
        }
        w.schedule(cfg.sample_interval_s, Event::Sample);
        Sim {
            w,
            controller,
            timeline: Vec::new(),
            next_arrival: 0,
            episode_end,
            hard_stop: episode_end + 1800.0,
            scored_from: replay.scored_from,
            offset: replay.offset,
        }
    }

    /// Episode time now (negative during the pre-roll).
    pub fn now(&self) -> f64 {
        self.w.now - self.offset
    }

    /// Sets the replica count now, as a plan step would.
    pub fn command(&mut self, replicas: u32) {
        self.w.set_spec(replicas);
    }

    /// The replica count the loop asks for now.
    pub fn spec(&self) -> u32 {
        self.w.spec
    }

    /// Outcomes so far of the scored requests (episode-time arrivals).
    pub fn outcomes(&self) -> impl Iterator<Item = RequestOutcome> + '_ {
        self.w.requests[self.scored_from..]
            .iter()
            .map(|r| RequestOutcome {
                arrival: r.arrival - self.offset,
                ..*r
            })
    }

    /// Outcomes so far of the scored requests that arrived in episode
    /// time `[from, to)`.
    pub fn outcomes_between(
        &self,
        from: f64,
        to: f64,
    ) -> impl Iterator<Item = RequestOutcome> + '_ {
        let scored = &self.w.requests[self.scored_from..];
        let lo = scored.partition_point(|r| r.arrival - self.offset < from);
        let hi = scored.partition_point(|r| r.arrival - self.offset < to);
        scored[lo..hi].iter().map(|r| RequestOutcome {
            arrival: r.arrival - self.offset,
            ..*r
        })
    }

    /// Whether every request that arrived in episode time `[from, to)` is done.
    pub fn settled_between(&self, from: f64, to: f64) -> bool {
        self.outcomes_between(from, to)
            .all(|r| r.finished || r.aborted)
    }

    /// Runs the loop until episode time `until` (or the end of the run).
    /// Returns false once the run is over.
    pub fn advance(
        &mut self,
        until: f64,
        progress: &mut dyn FnMut(f64),
    ) -> Result<bool, PolicyError> {
        let until = ns(until + self.offset);
        let span = self.episode_end.max(1.0);
        let mut next_report = self.w.now;
        loop {
            let heap_next = self.w.heap.peek().map(|Reverse((t, _, _))| *t);
            let arrival_next = self.w.arrivals.get(self.next_arrival).map(|a| ns(a.at));
            let take_arrival = match (arrival_next, heap_next) {
                (Some(a), Some(h)) => a <= h,
                (Some(_), None) => true,
                (None, _) => false,
            };
            let next = if take_arrival {
                arrival_next
            } else {
                heap_next
            };
            match next {
                Some(t) if t > until => return Ok(true),
                None => return Ok(false),
                _ => {}
            }
            if take_arrival {
                let w = &mut self.w;
                w.now = w.arrivals[self.next_arrival].at;
                w.pipeline.arrival(w.now);
                w.sample_arrivals += 1;
                w.dispatch(self.next_arrival as u64);
                self.next_arrival += 1;
                continue;
            }
            let Some(Reverse((t, _, event))) = self.w.heap.pop() else {
                return Ok(false);
            };
            self.w.now = t as f64 / NS;
            let now = self.w.now;
            if now > self.hard_stop
                || (self.next_arrival == self.w.arrivals.len()
                    && self.w.outstanding_total == 0
                    && now > self.episode_end)
            {
                self.w.heap.clear();
                return Ok(false);
            }
            if now >= next_report {
                progress((now / span).min(1.0));
                next_report = now + span / 50.0;
            }
            self.handle(event)?;
        }
    }

    fn handle(&mut self, event: Event) -> Result<(), PolicyError> {
        let cfg = self.w.cfg;
        let w = &mut self.w;
        match event {
            Event::StepEnd(i) => w.step_end(i),
            Event::PodReady(i) => {
                if w.pods[i].phase == Phase::Starting {
                    w.pods[i].phase = Phase::Ready;
                    w.release_held();
                }
            }
            Event::DrainDeadline(i) => w.drain_deadline(i),
            Event::Scrape => {
                w.scrape();
                w.schedule(w.now + cfg.scrape_interval_s, Event::Scrape);
            }
            Event::PromScrape(i) => w.prom_scrape(i),
            Event::HpaSync => {
                if let Controller::Keda(k) = &mut self.controller {
                    let (existing, ready) = w.counts();
                    if let Some(n) =
                        k.sync(&w.pipeline, w.prom.as_ref(), w.now, w.spec, existing, ready)?
                    {
                        w.set_spec(n);
                    }
                }
                w.schedule(w.now + cfg.hpa_sync_s, Event::HpaSync);
            }
            Event::KedaPoll => {
                if let Controller::Keda(k) = &mut self.controller {
                    let (_, ready) = w.counts();
                    if let Some(n) = k.poll(&w.pipeline, w.prom.as_ref(), w.now, w.spec, ready)? {
                        w.set_spec(n);
                    }
                    w.schedule(
                        w.now + k.keda.spec.polling_interval_seconds,
                        Event::KedaPoll,
                    );
                }
            }
            Event::Plan(i) => {
                if let Controller::Plan(steps) = &self.controller {
                    let n = steps[i].1;
                    w.set_spec(n);
                }
            }
            Event::Sample => {
                w.sample(&mut self.timeline);
                if w.now < self.episode_end {
                    w.schedule(w.now + cfg.sample_interval_s, Event::Sample);
                }
            }
        }
        Ok(())
    }

    /// Runs to the end and reports the scored episode: requests from
    /// t = 0, billing over [0, end], timeline and changes in episode time.
    pub fn finish(mut self, progress: &mut dyn FnMut(f64)) -> Result<RunResult, PolicyError> {
        while self.advance(f64::INFINITY, progress)? {}
        progress(1.0);
        let (offset, end) = (self.offset, self.episode_end);
        let replica_seconds = self
            .w
            .pods
            .iter()
            .map(|p| {
                let gone = p.gone_at.unwrap_or(end).min(end);
                (gone - p.created.max(offset)).max(0.0)
            })
            .sum();
        let requests: Vec<RequestOutcome> = self.outcomes().collect();
        let mut timeline: Vec<TimelinePoint> = self
            .timeline
            .iter()
            .filter(|p| p.at > offset)
            .map(|p| TimelinePoint {
                at: p.at - offset,
                ..*p
            })
            .collect();
        let changes = self
            .w
            .changes
            .iter()
            .filter(|c| c.at >= offset)
            .map(|c| ScaleChange {
                at: c.at - offset,
                ..*c
            })
            .collect();
        // TTFT over time for the charts, from the requests themselves.
        let mut by_time: Vec<(f64, f64)> = requests
            .iter()
            .filter_map(|r| r.ttft.map(|t| (r.arrival + t, t)))
            .collect();
        by_time.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (mut lo, mut hi) = (0, 0);
        for point in &mut timeline {
            while hi < by_time.len() && by_time[hi].0 <= point.at {
                hi += 1;
            }
            while lo < hi && by_time[lo].0 <= point.at - 60.0 {
                lo += 1;
            }
            point.ttft_p90 = p90(by_time[lo..hi].iter().map(|p| p.1));
        }
        Ok(RunResult {
            requests,
            timeline,
            changes,
            replica_seconds,
            gpus_per_replica: self.w.cfg.gpus_per_replica,
            episode_end: end - offset,
            clipped_prompts: self.w.clipped,
            simulated_until: self.w.now - offset,
            metric_issues: match &self.controller {
                Controller::Keda(k) => k.issues,
                _ => MetricIssues::default(),
            },
        })
    }
}

/// Runs one episode, with `cfg.warmup_s` of pre-roll before it.
/// `progress` receives the simulated fraction of the run now and then.
pub fn run(
    cfg: &SimConfig,
    arrivals: &[Arrival],
    controller: &mut Controller,
    progress: &mut dyn FnMut(f64),
) -> Result<RunResult, PolicyError> {
    let replay = Replay::new(arrivals, cfg.warmup_s);
    Sim::new(cfg, &replay, controller.clone()).finish(progress)
}
