//! Scaling arithmetic and policies: pure functions of what was observed, so
//! the same code runs in the live scaler (wall clock) and in the lab
//! (virtual clock) — "one model, two clocks".
//!
//! * [`hpa`]: the Kubernetes HPA v2 controller's arithmetic and memory.
//! * [`keda`]: KEDA's activation, 0↔1, cooldown, fallback and pauses.
//! * [`Policy`] and the registry: what a scaler trigger names in its
//!   `policy` metadata key. Every policy other than `passthrough` decides a
//!   replica count `D` and reports `D × targetValue`, which a plain KEDA
//!   trigger of `metricType: AverageValue` (KEDA's default) turns into
//!   exactly `D` replicas in the HPA (`ceil(value / target)`), outside the
//!   HPA's tolerance band. See [`policies`] for each policy's knobs.
//!
//! Nothing here reads a clock or does I/O: the caller passes `now` and the
//! history it kept.

use std::collections::BTreeMap;

pub mod hpa;
pub mod keda;
mod params;
pub mod policies;

pub use params::{Params, parse_seconds};
pub use policies::{
    CostAware, Passthrough, Predictive, QueueBased, SloAware, StablePanic, replica_value,
    replicas_asked,
};

/// An earlier observation of the trigger's value(s).
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The caller's clock, in seconds.
    pub at: f64,
    pub values: Vec<f64>,
}

/// What a policy sees for one evaluation of one trigger.
#[derive(Debug, Clone, Copy)]
pub struct PolicyInput<'a> {
    /// The queried value(s), in the order the trigger defines. A plain
    /// `metricQuery` trigger passes exactly one.
    pub values: &'a [f64],
    /// The trigger's metadata, so a policy can read its own keys.
    pub metadata: &'a BTreeMap<String, String>,
    /// The caller's clock in seconds: Unix time in the scaler, virtual time
    /// in the lab. Only differences matter, except for scheduled scaling,
    /// which reads the time of day from it (UTC).
    pub now: f64,
    /// Earlier observations, oldest first, none later than `now`. May be
    /// empty; policies then act on the current value alone.
    pub history: &'a [Sample],
    /// The trigger's target value: the HPA divides the reported value by it.
    pub target: f64,
    /// Pods currently reporting the metric, when known.
    pub ready_replicas: Option<u32>,
}

static NO_METADATA: BTreeMap<String, String> = BTreeMap::new();

impl<'a> PolicyInput<'a> {
    /// Values and metadata only: no history, target 1, replicas unknown.
    pub fn new(values: &'a [f64], metadata: &'a BTreeMap<String, String>) -> Self {
        PolicyInput {
            values,
            metadata,
            now: 0.0,
            history: &[],
            target: 1.0,
            ready_replicas: None,
        }
    }

    /// A value-only input without metadata (tests, the lab's defaults).
    pub fn bare(values: &'a [f64]) -> Self {
        Self::new(values, &NO_METADATA)
    }
}

/// A policy's answer and, for policies with states, the state it is in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub value: f64,
    pub mode: Option<&'static str>,
}

/// Why a policy could not produce a value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    #[error("policy '{policy}' needs at least {needed} metric value(s) but got {got}")]
    NotEnoughValues {
        policy: &'static str,
        needed: usize,
        got: usize,
    },
    #[error("policy '{policy}': metadata key '{key}' = '{value}' is invalid: {reason}")]
    InvalidParameter {
        policy: &'static str,
        key: String,
        value: String,
        reason: String,
    },
    #[error("unknown policy '{name}'; known policies: {known}")]
    Unknown { name: String, known: String },
    #[error("policy '{policy}' has no parameter '{key}'; its parameters are: {known}")]
    UnknownParameter {
        policy: &'static str,
        key: String,
        known: String,
    },
}

/// A scaling policy. Implementations must be deterministic functions of
/// their input so that several scaler replicas holding the same data give
/// the same answer.
pub trait Policy: Send + Sync {
    /// The name a trigger uses in its `policy` metadata key.
    fn name(&self) -> &'static str;
    /// The value to report to the autoscaler.
    fn evaluate(&self, input: &PolicyInput<'_>) -> Result<f64, PolicyError>;
    /// The value with the state behind it, for people watching the
    /// scaler (stable-panic says whether it is in panic). Policies without
    /// states keep the default.
    fn decide(&self, input: &PolicyInput<'_>) -> Result<Decision, PolicyError> {
        Ok(Decision {
            value: self.evaluate(input)?,
            mode: None,
        })
    }
    /// How much history (seconds before `now`) the policy reads with these
    /// metadata, so callers keep no more than needed. Also validates the
    /// metadata, so a bad key is reported when the trigger is parsed.
    fn history_seconds(&self, metadata: &BTreeMap<String, String>) -> Result<f64, PolicyError> {
        let _ = metadata;
        Ok(0.0)
    }
    /// The metadata keys the policy reads, for validating a manifest
    /// before anything is deployed.
    fn parameters(&self) -> &'static [&'static str] {
        &[]
    }
}

/// Checks a policy's parameters as a manifest gives them, before they are
/// deployed: every key must be one the policy reads (a typo would
/// otherwise leave the default silently in force) and every value must
/// parse. `extra_keys` are keys the caller accepts beside the policy's own
/// (the scaler's trigger keys).
pub fn check_parameters(
    policy: &'static dyn Policy,
    params: &BTreeMap<String, String>,
    extra_keys: &[&str],
) -> Result<(), PolicyError> {
    let known = policy.parameters();
    if let Some(key) = params
        .keys()
        .find(|k| !known.contains(&k.as_str()) && !extra_keys.contains(&k.as_str()))
    {
        let mut names: Vec<&str> = known.iter().chain(extra_keys).copied().collect();
        names.sort_unstable();
        return Err(PolicyError::UnknownParameter {
            policy: policy.name(),
            key: key.clone(),
            known: if names.is_empty() {
                "none".into()
            } else {
                names.join(", ")
            },
        });
    }
    policy.history_seconds(params)?;
    // Knobs read only while evaluating (capacities default to the
    // trigger's target) are checked by one evaluation on neutral input.
    let values = [0.0; 3];
    policy
        .evaluate(&PolicyInput::new(&values, params))
        .map(|_| ())
}

/// The policy used when a trigger names none.
pub const DEFAULT_POLICY: &str = "passthrough";

static REGISTRY: &[&dyn Policy] = &[
    &Passthrough,
    &StablePanic,
    &QueueBased,
    &SloAware,
    &Predictive,
    &CostAware,
];

/// Every registered policy, for help texts and error messages.
pub fn registered() -> impl Iterator<Item = &'static dyn Policy> {
    REGISTRY.iter().copied()
}

/// Finds a policy by name. Names are matched exactly; an unknown name is an
/// error that lists the known ones, so a typo in a trigger is easy to fix.
pub fn lookup(name: &str) -> Result<&'static dyn Policy, PolicyError> {
    registered()
        .find(|policy| policy.name() == name)
        .ok_or_else(|| PolicyError::Unknown {
            name: name.to_owned(),
            known: registered()
                .map(|policy| policy.name())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_is_registered() {
        assert_eq!(lookup(DEFAULT_POLICY).unwrap().name(), DEFAULT_POLICY);
    }

    #[test]
    fn every_policy_is_found_by_its_name() {
        for name in [
            "passthrough",
            "stable-panic",
            "queue",
            "slo",
            "predictive",
            "cost",
        ] {
            assert_eq!(lookup(name).unwrap().name(), name);
        }
    }

    #[test]
    fn parameters_are_checked_by_name_and_value() {
        let mut params = BTreeMap::new();
        params.insert("season".to_string(), "1d".to_string());
        let predictive = lookup("predictive").unwrap();
        assert_eq!(check_parameters(predictive, &params, &[]), Ok(()));
        params.insert("headrom".to_string(), "0.2".to_string());
        let err = check_parameters(predictive, &params, &["quantile"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("'headrom'"), "{err}");
        assert!(err.contains("headroom"), "{err}");
        assert!(err.contains("quantile"), "{err}");
        params.remove("headrom");
        assert_eq!(check_parameters(predictive, &params, &["quantile"]), Ok(()));
        params.insert("capacity".to_string(), "lots".to_string());
        let err = check_parameters(predictive, &params, &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("'capacity' = 'lots'"), "{err}");
        let err = check_parameters(lookup("passthrough").unwrap(), &params, &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("its parameters are: none"), "{err}");
    }

    #[test]
    fn every_parameter_a_policy_lists_is_one_it_reads() {
        // A listed key with a nonsense value must be refused: otherwise the
        // list names a key the policy ignores.
        for policy in registered() {
            for key in policy.parameters() {
                let mut params = BTreeMap::new();
                params.insert(key.to_string(), "nonsense".to_string());
                assert!(
                    check_parameters(policy, &params, &[]).is_err(),
                    "{} ignores '{key}'",
                    policy.name()
                );
            }
        }
    }

    #[test]
    fn unknown_policy_lists_known_names() {
        let err = lookup("predictive-typo").err().unwrap();
        let text = err.to_string();
        assert!(text.contains("predictive-typo"), "{text}");
        assert!(text.contains("passthrough"), "{text}");
        assert!(text.contains("stable-panic"), "{text}");
    }
}
