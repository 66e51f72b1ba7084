//! The replica model: a vLLM V1-style scheduler over the paged KV cache, advanced one step
//! at a time by the caller.
//!
//! Each call to [`Engine::step`] is one engine iteration:
//! 1. running requests are served first, in admission order: decodes take one token of the
//!    step budget, unfinished prefills take a chunk of what is left;
//! 2. a running request that needs a KV block when none is free preempts the newest running
//!    request (recompute: its blocks are freed and it goes back to the head of the queue);
//! 3. if nothing was preempted, waiting requests are admitted in FIFO order while the batch has
//!    room (`max_num_seqs`), budget remains and their blocks fit, reusing cached prefix blocks;
//! 4. the step takes the profile's time for its shape; every request whose known tokens are
//!    all computed at the end samples one token.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Duration;

use crate::config::{ConfigError, EngineConfig};
use crate::event::{Event, EventKind, FinishedRequest};
use crate::kv::{BlockId, KvCache};
use crate::profile::StepShape;
use crate::request::{FinishReason, Request, RequestId};
use crate::rng::Rng;

/// Why a request was refused at submission.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("request {0} is already in the engine")]
    DuplicateId(RequestId),
    #[error("prompt_tokens must be at least 1")]
    EmptyPrompt,
    #[error("max_tokens must be at least 1")]
    ZeroMaxTokens,
    #[error(
        "prompt ({prompt}) plus max_tokens ({max_tokens}) exceeds the {limit}-token limit of this engine"
    )]
    TooLong {
        prompt: u32,
        max_tokens: u32,
        limit: u32,
    },
}

/// What one step did. Events at the step's start (scheduling, preemption) carry `started`;
/// tokens and completions carry `ended`, when the step's results exist.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOutcome {
    pub started: Duration,
    pub duration: Duration,
    pub ended: Duration,
    pub shape: StepShape,
    /// Prompt tokens of requests whose prefill completed in this step (vLLM counts prompt
    /// tokens when the first token appears).
    pub prompt_tokens: u64,
    /// Output tokens produced by this step.
    pub generation_tokens: u32,
    pub preemptions: u32,
    /// Prefix-cache lookups made while admitting requests, in tokens.
    pub prefix_cache_queries: u64,
    pub prefix_cache_hits: u64,
    pub events: Vec<Event>,
}

#[derive(Debug, Clone)]
struct Seq {
    prompt_tokens: u32,
    max_tokens: u32,
    planned_output: u32,
    planned_reason: FinishReason,
    block_hashes: Vec<u64>,
    generated: u32,
    /// Tokens whose KV has been computed.
    computed: u32,
    blocks: Vec<BlockId>,
    /// Leading blocks already published to the prefix cache.
    registered: u32,
    cached_tokens: u32,
    preemptions: u32,
    arrival: Duration,
    first_scheduled: Option<Duration>,
    first_token: Option<Duration>,
    last_token: Option<Duration>,
}

impl Seq {
    /// Prompt plus generated tokens: everything whose KV must exist before the next sample.
    fn known_tokens(&self) -> u32 {
        self.prompt_tokens + self.generated
    }

    fn is_decoding(&self) -> bool {
        self.generated > 0 && self.computed + 1 == self.known_tokens()
    }
}

/// Hashes request ids for the per-step lookups. Ids are chosen by the
/// caller and not adversarial here (the engine is a model, not a server
/// facing clients), so a multiplicative hash does: it is several times
/// cheaper than the default SipHash, and every step looks each batched
/// request up three times.
#[derive(Debug, Clone, Copy, Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = (id ^ (id >> 29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type SeqMap = HashMap<RequestId, Seq, BuildHasherDefault<IdHasher>>;

/// One vLLM replica. Pure: no I/O, no clock, no threads; see the crate docs for the contract.
#[derive(Debug, Clone)]
pub struct Engine {
    config: EngineConfig,
    kv: KvCache,
    seqs: SeqMap,
    /// Whether every token gets an event, or only each request's first
    /// (a caller that only scores TTFT and completions saves the rest).
    every_token_event: bool,
    /// Scratch for the batch being built (kept to avoid a per-step allocation).
    batch: Vec<(RequestId, u32)>,
    waiting: VecDeque<RequestId>,
    running: Vec<RequestId>,
    busy_until: Duration,
    /// Sum of the durations of every step started so far, the one in
    /// flight included: the time the modelled GPU spent computing.
    busy: Duration,
    /// Duration of the latest step, the only one that can still be in flight.
    last_step: Duration,
    rng: Rng,
}

impl Engine {
    pub fn new(config: EngineConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Engine {
            kv: KvCache::new(config.num_gpu_blocks),
            rng: Rng::new(config.seed),
            config,
            seqs: SeqMap::default(),
            every_token_event: true,
            batch: Vec::new(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            busy_until: Duration::ZERO,
            busy: Duration::ZERO,
            last_step: Duration::ZERO,
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// With `false`, steps report a [`EventKind::Token`] only for each
    /// request's first token; completions still carry every timing. The
    /// engine's behaviour is the same either way.
    pub fn set_every_token_event(&mut self, every: bool) {
        self.every_token_event = every;
    }

    /// Requests waiting for a place in the batch (including preempted ones).
    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Requests in the running batch.
    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    /// KV-cache usage, 0.0..=1.0, as `vllm:kv_cache_usage_perc`.
    pub fn kv_usage(&self) -> f64 {
        self.kv.usage()
    }

    /// KV blocks referenced by requests.
    pub fn kv_blocks_used(&self) -> u32 {
        self.kv.num_used()
    }

    /// True when no request is waiting or running, so [`step`](Self::step) would do nothing.
    pub fn is_idle(&self) -> bool {
        self.seqs.is_empty()
    }

    /// When the last step's results exist; a step asked for earlier starts then.
    pub fn busy_until(&self) -> Duration {
        self.busy_until
    }

    /// How long the engine has been computing up to `now`: the summed
    /// durations of its steps, counting a step still in flight only up to
    /// `now`. Idle gaps between steps are not in it, so the share of an
    /// interval that it grows by is the GPU's busy fraction over that
    /// interval, which is what a GPU exporter's utilisation reports.
    pub fn busy_time(&self, now: Duration) -> Duration {
        let ahead = self.busy_until.saturating_sub(now).min(self.last_step);
        self.busy - ahead
    }

    /// Whether the engine holds this request.
    pub fn contains(&self, id: RequestId) -> bool {
        self.seqs.contains_key(&id)
    }

    /// Checks the engine's internal consistency: every block reference is owned by a request,
    /// no more blocks are in use than exist, the batch respects `max_num_seqs`, and every
    /// running request holds blocks for the tokens it has computed. For tests and debugging;
    /// returns a description of the first violation.
    pub fn audit(&self) -> Result<(), String> {
        let capacity = self.config.num_gpu_blocks;
        if self.kv.num_used() > capacity {
            return Err(format!("{} blocks used of {capacity}", self.kv.num_used()));
        }
        if self.running.len() > self.config.max_num_seqs as usize {
            return Err(format!("{} running > max_num_seqs", self.running.len()));
        }
        if self.running.len() + self.waiting.len() != self.seqs.len() {
            return Err("a request is neither waiting nor running".into());
        }
        let mut owned: HashMap<BlockId, u32> = HashMap::new();
        for &id in &self.waiting {
            if !self.seqs[&id].blocks.is_empty() {
                return Err(format!("waiting request {id} holds blocks"));
            }
        }
        for (id, seq) in &self.seqs {
            if (seq.blocks.len() as u32) < self.config.blocks_for(seq.computed) {
                return Err(format!(
                    "request {id} computed more tokens than its blocks hold"
                ));
            }
            for &b in &seq.blocks {
                *owned.entry(b).or_default() += 1;
            }
        }
        if owned.len() as u32 != self.kv.num_used() {
            return Err(format!(
                "{} blocks owned by requests but {} marked used",
                owned.len(),
                self.kv.num_used()
            ));
        }
        for (b, n) in owned {
            if self.kv.refs(b) != n {
                return Err(format!(
                    "block {b}: {n} owners, {} references",
                    self.kv.refs(b)
                ));
            }
        }
        Ok(())
    }

    /// Adds a request to the waiting queue at `now` (its arrival time).
    pub fn submit(&mut self, request: Request, now: Duration) -> Result<Event, SubmitError> {
        if self.seqs.contains_key(&request.id) {
            return Err(SubmitError::DuplicateId(request.id));
        }
        if request.prompt_tokens == 0 {
            return Err(SubmitError::EmptyPrompt);
        }
        if request.max_tokens == 0 {
            return Err(SubmitError::ZeroMaxTokens);
        }
        let limit = self.config.max_request_tokens();
        if u64::from(request.prompt_tokens) + u64::from(request.max_tokens) > u64::from(limit) {
            return Err(SubmitError::TooLong {
                prompt: request.prompt_tokens,
                max_tokens: request.max_tokens,
                limit,
            });
        }
        let (planned_output, planned_reason) = request.planned_output();
        let mut block_hashes = request.block_hashes;
        if !self.config.enable_prefix_caching {
            block_hashes.clear();
        }
        self.seqs.insert(
            request.id,
            Seq {
                prompt_tokens: request.prompt_tokens,
                max_tokens: request.max_tokens,
                planned_output,
                planned_reason,
                block_hashes,
                generated: 0,
                computed: 0,
                blocks: Vec::new(),
                registered: 0,
                cached_tokens: 0,
                preemptions: 0,
                arrival: now,
                first_scheduled: None,
                first_token: None,
                last_token: None,
            },
        );
        self.waiting.push_back(request.id);
        Ok(Event {
            at: now,
            request: request.id,
            kind: EventKind::Arrived,
        })
    }

    /// Removes a request at `now` (a client went away), freeing its slot and blocks at once.
    /// `None` if the engine does not hold it.
    pub fn abort(&mut self, id: RequestId, now: Duration) -> Option<Event> {
        let seq = self.seqs.remove(&id)?;
        if let Some(pos) = self.waiting.iter().position(|&w| w == id) {
            self.waiting.remove(pos);
        } else if let Some(pos) = self.running.iter().position(|&r| r == id) {
            self.running.remove(pos);
        }
        self.kv.release(&seq.blocks);
        Some(finished_event(id, seq, FinishReason::Abort, now))
    }

    /// Runs one engine iteration starting at `now` (or when the previous step ends, if later).
    /// `None` when there is nothing to do. The caller should call again at `outcome.ended`.
    pub fn step(&mut self, now: Duration) -> Option<StepOutcome> {
        if self.seqs.is_empty() {
            return None;
        }
        let started = now.max(self.busy_until);
        let mut out = StepOutcome {
            started,
            duration: Duration::ZERO,
            ended: started,
            shape: StepShape::default(),
            prompt_tokens: 0,
            generation_tokens: 0,
            preemptions: 0,
            prefix_cache_queries: 0,
            prefix_cache_hits: 0,
            events: Vec::new(),
        };
        let mut budget = self.config.max_num_batched_tokens;
        // The batch buffer is reused across steps: one allocation per engine.
        let mut batch = std::mem::take(&mut self.batch);
        batch.clear();

        self.schedule_running(started, &mut budget, &mut batch, &mut out);
        if out.preemptions == 0 || batch.is_empty() {
            self.schedule_waiting(started, &mut budget, &mut batch, &mut out);
        }
        if batch.is_empty() {
            self.batch = batch;
            // Only possible when every candidate is blocked; nothing advances time.
            return if out.events.is_empty() {
                None
            } else {
                Some(out)
            };
        }

        out.duration = self.jittered(self.config.profile.step_duration(out.shape));
        out.ended = started + out.duration;
        self.busy_until = out.ended;
        self.busy += out.duration;
        self.last_step = out.duration;
        self.complete_batch(&batch, &mut out);
        self.batch = batch;
        Some(out)
    }

    fn jittered(&mut self, d: Duration) -> Duration {
        if self.config.step_jitter == 0.0 {
            return d;
        }
        // Clamped so a step can never take zero or negative time.
        let factor = (1.0 + self.config.step_jitter * self.rng.normal()).max(0.05);
        Duration::from_nanos((d.as_nanos() as f64 * factor).round() as u64)
    }

    fn schedule_running(
        &mut self,
        now: Duration,
        budget: &mut u32,
        batch: &mut Vec<(RequestId, u32)>,
        out: &mut StepOutcome,
    ) {
        let block_size = self.config.block_size;
        let mut i = 0;
        while i < self.running.len() && *budget > 0 {
            let id = self.running[i];
            let seq = &self.seqs[&id];
            let tokens = (seq.known_tokens() - seq.computed).min(*budget);
            let need = (seq.computed + tokens).div_ceil(block_size) - seq.blocks.len() as u32;
            let mut fits = true;
            while self.kv.num_free() < need {
                let victim = *self.running.last().expect("the current request is running");
                self.preempt(victim, now, out);
                if victim == id {
                    fits = false;
                    break;
                }
            }
            if !fits {
                break;
            }
            let seq = self.seqs.get_mut(&id).expect("running");
            add_to_shape(&mut out.shape, seq, tokens);
            if need > 0 {
                let new = self.kv.allocate(need).expect("checked free blocks");
                seq.blocks.extend(new);
            }
            batch.push((id, tokens));
            *budget -= tokens;
            i += 1;
        }
    }

    fn preempt(&mut self, id: RequestId, now: Duration, out: &mut StepOutcome) {
        let pos = self
            .running
            .iter()
            .rposition(|&r| r == id)
            .expect("victim is running");
        self.running.remove(pos);
        let seq = self.seqs.get_mut(&id).expect("running request is known");
        self.kv.release(&seq.blocks);
        seq.blocks.clear();
        seq.computed = 0;
        seq.registered = 0;
        seq.preemptions += 1;
        self.waiting.push_front(id);
        out.preemptions += 1;
        out.events.push(Event {
            at: now,
            request: id,
            kind: EventKind::Preempted,
        });
    }

    fn schedule_waiting(
        &mut self,
        now: Duration,
        budget: &mut u32,
        batch: &mut Vec<(RequestId, u32)>,
        out: &mut StepOutcome,
    ) {
        let block_size = self.config.block_size;
        while *budget > 0 && self.running.len() < self.config.max_num_seqs as usize {
            let Some(&id) = self.waiting.front() else {
                break;
            };
            let seq = &self.seqs[&id];
            let known = seq.known_tokens();
            // At least one token must be computed to sample from, so a full-prompt hit gives
            // back its last block, as vLLM does.
            let max_hit_blocks = (known - 1) / block_size;
            let mut hit = self.kv.lookup_prefix(&seq.block_hashes);
            hit.truncate(max_hit_blocks as usize);
            let hit_tokens = hit.len() as u32 * block_size;
            let tokens = (known - hit_tokens).min(*budget);
            let need = (hit_tokens + tokens).div_ceil(block_size) - hit.len() as u32;
            if self.kv.num_free() < need + self.kv.count_unreferenced(&hit) {
                // FCFS: the head of the queue blocks those behind it.
                break;
            }
            self.kv.touch(&hit);
            let new = self.kv.allocate(need).expect("checked free blocks");
            self.waiting.pop_front();
            self.running.push(id);
            out.prefix_cache_queries += u64::from(known);
            out.prefix_cache_hits += u64::from(hit_tokens);
            let seq = self.seqs.get_mut(&id).expect("waiting request is known");
            let first_time = seq.first_scheduled.is_none();
            if first_time {
                seq.first_scheduled = Some(now);
                seq.cached_tokens = hit_tokens;
            }
            seq.registered = hit.len() as u32;
            seq.blocks = hit;
            seq.blocks.extend(new);
            seq.computed = hit_tokens;
            add_to_shape(&mut out.shape, seq, tokens);
            out.events.push(Event {
                at: now,
                request: id,
                kind: EventKind::Scheduled {
                    first_time,
                    cached_tokens: hit_tokens,
                },
            });
            batch.push((id, tokens));
            *budget -= tokens;
        }
    }

    fn complete_batch(&mut self, batch: &[(RequestId, u32)], out: &mut StepOutcome) {
        let block_size = self.config.block_size;
        let at = out.ended;
        let mut finished: Vec<RequestId> = Vec::new();
        for &(id, tokens) in batch {
            let seq = self.seqs.get_mut(&id).expect("batched request is known");
            seq.computed += tokens;
            let full_blocks = (seq.computed / block_size).min(seq.block_hashes.len() as u32);
            for b in seq.registered..full_blocks {
                self.kv
                    .register(seq.blocks[b as usize], seq.block_hashes[b as usize]);
            }
            seq.registered = seq.registered.max(full_blocks);
            if seq.computed < seq.known_tokens() {
                continue; // a prefill chunk that did not reach the end of the prompt
            }
            let index = seq.generated;
            seq.generated += 1;
            let gap = seq.last_token.map(|t| at.saturating_sub(t));
            if seq.first_token.is_none() {
                seq.first_token = Some(at);
                out.prompt_tokens += u64::from(seq.prompt_tokens);
            }
            seq.last_token = Some(at);
            out.generation_tokens += 1;
            let since_arrival = at.saturating_sub(seq.arrival);
            if index == 0 || self.every_token_event {
                out.events.push(Event {
                    at,
                    request: id,
                    kind: EventKind::Token {
                        index,
                        gap,
                        since_arrival,
                    },
                });
            }
            if seq.generated >= seq.planned_output {
                finished.push(id);
            }
        }
        if finished.is_empty() {
            return;
        }
        for &id in &finished {
            let seq = self.seqs.remove(&id).expect("finished request is known");
            self.kv.release(&seq.blocks);
            let reason = seq.planned_reason;
            out.events.push(finished_event(id, seq, reason, at));
        }
        // One pass keeps admission order for the survivors, in O(running).
        let seqs = &self.seqs;
        self.running.retain(|id| seqs.contains_key(id));
    }
}

/// Adds a scheduled request to the step's shape: a decode is one sequence
/// reading its whole context, anything else is `tokens` of prefill.
fn add_to_shape(shape: &mut StepShape, seq: &Seq, tokens: u32) {
    if seq.is_decoding() {
        shape.decode_seqs += 1;
        shape.decode_kv_tokens += u64::from(seq.known_tokens());
    } else {
        shape.prefill_tokens += tokens;
    }
}

fn finished_event(id: RequestId, seq: Seq, reason: FinishReason, at: Duration) -> Event {
    Event {
        at,
        request: id,
        kind: EventKind::Finished(Box::new(FinishedRequest {
            reason,
            prompt_tokens: seq.prompt_tokens,
            output_tokens: seq.generated,
            max_tokens: seq.max_tokens,
            cached_tokens: seq.cached_tokens,
            preemptions: seq.preemptions,
            arrival: seq.arrival,
            first_scheduled: seq.first_scheduled,
            first_token: seq.first_token,
            last_token: seq.last_token,
            finished: at,
        })),
    }
}
