//! Which endpoint gets a request, and what happens to it when none should.
//!
//! Two pure parts, shared by `aim gateway` (wall clock) and the lab's routers
//! (virtual clock), so the lab scores the code the gateway runs:
//!
//! - [`score`]: each endpoint's load (the gateway's own in-flight count and the
//!   model server's last reported vLLM gauges) turned into a score, the
//!   saturation test, and the pick ([`Picker::pick`]);
//! - [`flow`]: the flow-control queue that holds requests while every endpoint
//!   is saturated: bounded, strict across priorities, round robin across
//!   clients within a priority, first come first served within a client,
//!   with a per-request timeout.
//!
//! [`Rejection`] names every way a request is refused and the HTTP answer it
//! gets. Nothing here does I/O or reads a clock: times are `Duration`s since
//! an origin the caller chooses.

pub mod flow;
mod rejection;
pub mod score;

pub use flow::{FlowQueue, Popped, QueueConfig};
pub use rejection::Rejection;
pub use score::{
    Choice, ConfigError, Load, Observed, Picker, PickerConfig, ServerMetrics, Weights,
};
