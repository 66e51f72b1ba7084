//! One translation of an AIMService's scaling into what runs, shared by the
//! operator (which deploys it) and the lab (which scores it), so the two
//! cannot drift apart.
//!
//! An AIMService autoscales when it sets `minReplicas`, `maxReplicas` or
//! `autoScaling`. Then one of two parties writes the KEDA ScaledObject:
//!
//! * **KServe**, for every manifest written for AIM Engine. The operator
//!   puts the metrics on the InferenceService with `autoscalerClass: keda`
//!   and KServe v0.16 builds the ScaledObject from them. [`kserve`] is a
//!   model of that build; a tier-3 test compares it with what the real
//!   KServe writes.
//! * **The operator**, when the service uses an aim extension
//!   (`autoScaling.policy` or `autoScaling.behavior`). KServe builds the
//!   trigger metadata and the HPA behaviour itself and reverts any edit to
//!   its ScaledObject's spec on the next reconcile (it watches them), so
//!   neither extension can ride on KServe's object. The operator marks the
//!   InferenceService `autoscalerClass: external`, which makes KServe
//!   leave the Deployment's replicas to someone else and build no
//!   autoscaler, and writes a ScaledObject of the same name itself: the
//!   same triggers KServe would write, plus the scaler's `policy` key and
//!   parameters, and the requested `behavior`. The OpenTelemetry sidecar
//!   is still KServe's: it follows the InferenceService's pod metrics
//!   whatever the class.
//!
//! The scaler then needs no Kubernetes access to find a service's policy:
//! KEDA sends the trigger metadata with every call.

pub mod kserve;
mod plan;
pub mod scaled_object;
mod to_policy;

pub use plan::{
    Autoscaled, DEFAULT_SCALING_METRIC, GATEWAY_QUEUE_METRIC, GATEWAY_QUEUE_TARGET, KEDA_PAUSED,
    KServeAutoscaler, Owner, PREDICTOR_SERVICE_PORT, SCALER_TRIGGER_KEYS, Scaling, ScalingError,
    ServiceScaling, autoscaling_bounds, default_autoscaling, gateway_backend, plan,
};
pub use scaled_object::ScaledObject;
pub use to_policy::{behavior_of, keda_spec};
