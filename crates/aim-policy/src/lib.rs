//! Scaling policies: pure functions that turn the metric value(s) a scaler
//! observed into the single value reported to the autoscaler (KEDA/HPA).
//!
//! Policies take no clock and do no I/O, so the same code runs in the live
//! scaler (wall clock) and in the lab's simulation (virtual clock). A trigger
//! picks a policy by name through its `policy` metadata key; [`lookup`] maps
//! that name to an implementation.

use std::collections::BTreeMap;

mod passthrough;

pub use passthrough::Passthrough;

/// What a policy sees for one evaluation of one trigger.
#[derive(Debug, Clone, Copy)]
pub struct PolicyInput<'a> {
    /// The queried value(s), in the order the trigger defines. A plain
    /// `metricQuery` trigger passes exactly one.
    pub values: &'a [f64],
    /// The trigger's metadata, so a policy can read its own keys.
    pub metadata: &'a BTreeMap<String, String>,
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
}

/// A scaling policy. Implementations must be deterministic functions of
/// their input so that several scaler replicas holding the same data give
/// the same answer.
pub trait Policy: Send + Sync {
    /// The name a trigger uses in its `policy` metadata key.
    fn name(&self) -> &'static str;
    /// The value to report to the autoscaler.
    fn evaluate(&self, input: &PolicyInput<'_>) -> Result<f64, PolicyError>;
}

/// The policy used when a trigger names none.
pub const DEFAULT_POLICY: &str = "passthrough";

static REGISTRY: &[&dyn Policy] = &[&Passthrough];

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
    fn unknown_policy_lists_known_names() {
        let err = lookup("predictive-typo").err().unwrap();
        let text = err.to_string();
        assert!(text.contains("predictive-typo"), "{text}");
        assert!(text.contains("passthrough"), "{text}");
    }
}
