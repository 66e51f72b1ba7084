//! The lab: the whole autoscaling loop — trace → router → replicas
//! (aim-engine) → metrics pipeline → KEDA + HPA or aim policies → pods
//! with cold start — on virtual time, scored against a proven lower bound
//! and a hindsight plan found by search. The policies and the HPA/KEDA arithmetic are `aim_policy`'s,
//! the replica model is `aim_engine`'s: the same code the scaler and the
//! simulator run on the wall clock.
//!
//! Entry points for the `aim` binary: [`LabArgs`] and [`run`].

pub mod bound;
pub mod capacity;
pub mod chart;
pub mod control;
pub mod experiment;
pub mod fidelity;
pub mod hindsight;
pub mod isvc;
pub mod manifest;
pub mod metrics;
pub mod prom;
pub mod report;
pub mod scenario;
pub mod score;
pub mod sim;
pub mod synth;
pub mod trace;

mod cli;

pub use cli::{BenchArgs, CompareArgs, FidelityArgs, LabArgs, LabCommand, RunArgs, TuneArgs, run};

/// Everything that can stop a lab command, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(transparent)]
    Trace(#[from] trace::TraceError),
    #[error(transparent)]
    Policy(#[from] aim_policy::PolicyError),
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
    #[error("{0}")]
    Input(String),
    #[error("cannot write {path}: {reason}")]
    Output { path: String, reason: String },
}
