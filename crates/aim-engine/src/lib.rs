//! A pure model of one vLLM (V1) replica, for the simulator (wall clock) and the lab
//! (virtual clock): "one model, two clocks".
//!
//! The engine owns no clock and does no I/O. The caller passes the current time into every
//! call, as a [`Duration`](std::time::Duration) since an origin of its choosing, and drives
//! the engine step by step:
//!
//! ```
//! use std::time::Duration;
//! use aim_engine::{Engine, EngineConfig, EventKind, Profile, Request};
//!
//! let mut engine = Engine::new(EngineConfig::from_profile(Profile::tiny())).unwrap();
//! engine.submit(Request::new(1, 100, 3), Duration::ZERO).unwrap();
//! let mut now = Duration::ZERO;
//! let mut tokens = 0;
//! while let Some(step) = engine.step(now) {
//!     tokens += step.events.iter().filter(|e| matches!(e.kind, EventKind::Token { .. })).count();
//!     now = step.ended; // a wall-clock caller sleeps until here; a virtual one just jumps
//! }
//! assert_eq!(tokens, 3);
//! assert!(engine.is_idle());
//! ```
//!
//! What is modelled: continuous batching bounded by `max_num_seqs` and
//! `max_num_batched_tokens`, chunked prefill, a paged KV cache of `block_size`-token blocks
//! with prefix caching by chained block hashes, recompute preemption of the newest request
//! when blocks run out, and a step time from a named [`Profile`]. Every state change returns
//! the [`Event`]s from which vLLM's metrics derive.

mod config;
mod engine;
mod event;
mod kv;
mod profile;
mod request;
pub mod rng;

pub use config::{ConfigError, DEFAULT_BLOCK_SIZE, EngineConfig};
pub use engine::{Engine, StepOutcome, SubmitError};
pub use event::{Event, EventKind, FinishedRequest};
pub use profile::{Profile, StepShape};
pub use request::{FinishReason, Request, RequestId, chain_block_hashes, expand_coarse_hashes};
