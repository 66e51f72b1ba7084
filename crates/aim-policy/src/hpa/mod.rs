//! The Kubernetes `autoscaling/v2` HorizontalPodAutoscaler, computed the way
//! kube-controller-manager computes it (`replica_calculator.go` and
//! `horizontal.go`), without a clock: the caller passes `now` into every sync.
//!
//! * [`calculator`]: one metric → one replica proposal (tolerance, target
//!   types, missing and not-ready pods).
//! * [`behavior`]: stabilization windows and Pods/Percent rate policies.
//! * [`controller`]: one sync: proposals → max → stabilize → rate-limit →
//!   bounds, plus the recommendation and scale-event history it keeps.

pub mod behavior;
pub mod calculator;
pub mod controller;

pub use behavior::{Behavior, PolicyKind, RatePolicy, ScalingRules, SelectPolicy};
pub use calculator::{MetricInput, MetricTarget, PodSample, Tolerances};
pub use controller::{Hpa, HpaSpec, SyncInput, SyncOutcome};

/// `--horizontal-pod-autoscaler-sync-period`.
pub const SYNC_PERIOD_SECONDS: f64 = 15.0;
/// `--horizontal-pod-autoscaler-tolerance`.
pub const DEFAULT_TOLERANCE: f64 = 0.1;
/// `--horizontal-pod-autoscaler-downscale-stabilization`.
pub const DEFAULT_DOWNSCALE_STABILIZATION_SECONDS: f64 = 300.0;
