//! aim-scaler: a KEDA external scaler fed by OpenTelemetry metrics.
//!
//! Pure parts (store, query language, trigger semantics, OTLP conversion)
//! are kept apart from the I/O (gRPC and HTTP servers).

pub mod ingest;
pub mod labels;
pub mod query;
pub mod store;
pub mod trigger;
