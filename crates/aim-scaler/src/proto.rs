//! Generated from KEDA's `externalscaler.proto` (vendored under `proto/`).

#[allow(clippy::all, clippy::pedantic)]
pub mod externalscaler {
    tonic::include_proto!("externalscaler");
}
