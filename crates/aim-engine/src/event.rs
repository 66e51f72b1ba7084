//! Events the engine reports. Every vLLM metric is a function of these, computed the way
//! vLLM's `stats.py` (vllm/v1/metrics/stats.py) does, so the simulator and the lab agree by construction.

use std::time::Duration;

use crate::request::{FinishReason, RequestId};

/// Something that happened to one request at a point in time. Times are offsets from the
/// caller's origin (the engine has no clock; the caller passes `now` in).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub at: Duration,
    pub request: RequestId,
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    /// Accepted into the waiting queue.
    Arrived,
    /// Given a place in the running batch. `first_time` is false when a preempted request
    /// resumes. `cached_tokens` counts prompt tokens served from the prefix cache.
    Scheduled {
        first_time: bool,
        cached_tokens: u32,
    },
    /// Evicted from the running batch to free KV blocks; its KV will be recomputed.
    Preempted,
    /// One output token. `index` 0 is the first token; `gap` is the time since the previous
    /// token of this request (vLLM's inter-token latency sample), `None` for the first;
    /// `since_arrival` is the time since the request arrived (for the first token, its TTFT).
    Token {
        index: u32,
        gap: Option<Duration>,
        since_arrival: Duration,
    },
    /// The request left the engine, for good.
    Finished(Box<FinishedRequest>),
}

/// Everything vLLM's per-request metrics need, captured when a request ends.
#[derive(Debug, Clone, PartialEq)]
pub struct FinishedRequest {
    pub reason: FinishReason,
    pub prompt_tokens: u32,
    pub output_tokens: u32,
    pub max_tokens: u32,
    /// Prompt tokens served from the prefix cache when first scheduled.
    pub cached_tokens: u32,
    pub preemptions: u32,
    pub arrival: Duration,
    pub first_scheduled: Option<Duration>,
    pub first_token: Option<Duration>,
    pub last_token: Option<Duration>,
    pub finished: Duration,
}

impl FinishedRequest {
    /// Arrival to finish.
    pub fn e2e(&self) -> Duration {
        self.finished.saturating_sub(self.arrival)
    }

    /// Arrival to the first scheduling; `None` if it never left the queue.
    pub fn queue_time(&self) -> Option<Duration> {
        self.first_scheduled.map(|s| s.saturating_sub(self.arrival))
    }

    /// Arrival to first token (vLLM's TTFT includes queueing).
    pub fn ttft(&self) -> Option<Duration> {
        self.first_token.map(|t| t.saturating_sub(self.arrival))
    }

    /// First scheduling to first token.
    pub fn prefill_time(&self) -> Option<Duration> {
        Some(self.first_token?.saturating_sub(self.first_scheduled?))
    }

    /// First token to last token.
    pub fn decode_time(&self) -> Option<Duration> {
        Some(self.last_token?.saturating_sub(self.first_token?))
    }

    /// First scheduling to last token.
    pub fn inference_time(&self) -> Option<Duration> {
        Some(self.last_token?.saturating_sub(self.first_scheduled?))
    }

    /// Mean time per output token after the first: decode time / (tokens − 1).
    pub fn mean_tpot(&self) -> Option<Duration> {
        if self.output_tokens < 2 {
            return None;
        }
        Some(self.decode_time()? / (self.output_tokens - 1))
    }
}
