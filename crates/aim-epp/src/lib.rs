//! The Gateway API Inference Extension's endpoint-picker protocol: an Envoy
//! external processor (`envoy.service.ext_proc.v3.ExternalProcessor/Process`)
//! that answers each HTTP request's headers with the endpoint to send it to.
//!
//! This crate knows the protocol, not how endpoints are chosen: [`Pick`] is
//! the picker behind it (aim gateway's per-service state, so the proxy and
//! ext_proc share endpoints, scrapes, in-flight counts and the flow-control
//! queue). [`map`] holds the pure translation between ext_proc messages and
//! picks or refusals; [`server`] runs one ext_proc stream per HTTP request.

pub mod map;
pub mod proto;
pub mod server;

pub use map::{DESTINATION_HEADER, DESTINATION_NAMESPACE, RequestInfo};
pub use server::{ExtProc, Pick, PickFuture, Picked, Refusal, serve};
