//! The policies a trigger can name. Each decides a replica count `D` from
//! what it observed and reports `D × target` (see [`replica_value`]).
//!
//! | name | signal (`values`) | idea |
//! | --- | --- | --- |
//! | `passthrough` | any | the value unchanged (plain otel-add-on) |
//! | `stable-panic` | in-flight requests | Knative/AIBrix KPA: stable and panic windows |
//! | `queue` | in-flight, [waiting] | capacity per replica with headroom, held for a scale-down delay |
//! | `slo` | p90 TTFT, [p90 TPOT], [in-flight] | llm-d's latency/SLO control law plus a leading queue floor |
//! | `predictive` | arrival rate | trend + seasonal forecast at `now + coldStart`, schedules |
//! | `cost` | in-flight | utilization and keep-alive set by an SLO-vs-cost weight; spot spare; idle to zero |

mod cost;
mod passthrough;
mod predictive;
mod queue;
mod slo;
mod stable_panic;

pub use cost::{CostAware, hourly_price};
pub use passthrough::Passthrough;
pub use predictive::Predictive;
pub use queue::QueueBased;
pub use slo::SloAware;
pub use stable_panic::StablePanic;

use crate::{PolicyError, PolicyInput};

/// The value that makes an HPA on an `AverageValue` trigger with this
/// target choose `replicas`: `ceil(value / target) = replicas`.
///
/// KEDA hands the HPA both numbers as `int64(x × 1000)` milli-units,
/// truncated: the target when it generates the HPA, the value at every
/// query. So the value is built from the truncated target the HPA will
/// divide by, plus half a milli-unit so that the value's own truncation
/// cannot lose a whole milli-unit (with a 0.001 target, a whole replica).
/// Zero stays exactly zero, so KEDA sees the trigger as inactive.
pub fn replica_value(replicas: u32, target: f64) -> f64 {
    if replicas == 0 {
        return 0.0;
    }
    let target_milli = (target * 1000.0) as i64;
    (f64::from(replicas) * target_milli as f64 + 0.5) / 1000.0
}

/// The replicas an `AverageValue` trigger's value asks the HPA for, with
/// KEDA's truncation to milli-units of both numbers (the inverse of
/// [`replica_value`]): what to show a person as "the policy wants N".
pub fn replicas_asked(value: f64, target: f64) -> u32 {
    let target_milli = (target * 1000.0) as i64;
    if target_milli <= 0 || !value.is_finite() || value <= 0.0 {
        return 0;
    }
    let value_milli = (value * 1000.0) as i64;
    let replicas = (value_milli as f64 / target_milli as f64).ceil();
    replicas.min(f64::from(u32::MAX)) as u32
}

/// The value at `index` now, or an error naming the policy.
fn value(input: &PolicyInput<'_>, policy: &'static str, index: usize) -> Result<f64, PolicyError> {
    input
        .values
        .get(index)
        .copied()
        .ok_or(PolicyError::NotEnoughValues {
            policy,
            needed: index + 1,
            got: input.values.len(),
        })
}

/// `(at, value)` points of series `index` inside `(now − window, now]`,
/// oldest first, ending with the current value.
fn recent(input: &PolicyInput<'_>, index: usize, window: f64) -> Vec<(f64, f64)> {
    let from = input.now - window;
    let mut points: Vec<(f64, f64)> = input
        .history
        .iter()
        .filter(|s| s.at > from && s.at < input.now)
        .filter_map(|s| s.values.get(index).map(|v| (s.at, *v)))
        .collect();
    if let Some(v) = input.values.get(index) {
        points.push((input.now, *v));
    }
    points
}

fn mean(points: &[(f64, f64)]) -> f64 {
    if points.is_empty() {
        return 0.0;
    }
    points.iter().map(|p| p.1).sum::<f64>() / points.len() as f64
}

/// Replicas needed for `load` at `per_replica` each; non-finite or negative
/// load needs none.
fn replicas_for(load: f64, per_replica: f64) -> u32 {
    let r = (load / per_replica).ceil();
    if r.is_finite() && r > 0.0 {
        r.min(f64::from(u32::MAX)) as u32
    } else {
        0
    }
}

/// The per-replica capacity knob shared by the load-following policies,
/// defaulting to the trigger's own target.
fn per_replica(
    params: &crate::Params<'_>,
    input: &PolicyInput<'_>,
    key: &str,
) -> Result<f64, PolicyError> {
    params.number(key, input.target, 1e-9, 1e12)
}

#[cfg(test)]
mod replicas_asked_tests {
    use super::*;

    #[test]
    fn a_policys_value_reads_back_as_its_replicas() {
        for target in [0.001, 0.5, 1.0, 4.0, 2.7] {
            for replicas in [0, 1, 2, 3, 17] {
                assert_eq!(
                    replicas_asked(replica_value(replicas, target), target),
                    replicas,
                    "{replicas} at target {target}"
                );
            }
        }
        // A plain metric: 2.5 per replica at target 1 asks for 3.
        assert_eq!(replicas_asked(2.5, 1.0), 3);
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use std::collections::BTreeMap;

    use crate::hpa::{MetricInput, MetricTarget, PodSample, Tolerances, calculator::proposal};

    pub fn meta(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// What a plain HPA on a KEDA `AverageValue` trigger makes of `value`
    /// with `current` replicas (default tolerance).
    pub fn hpa_replicas(value: f64, target: f64, current: u32) -> u32 {
        let metric = MetricInput {
            target: MetricTarget::AverageValue { per_pod: target },
            pods: (0..current).map(|_| PodSample::ready(0.0)).collect(),
            value: Some(value),
            cpu_readiness_rules: false,
        };
        proposal(&metric, current, current, Tolerances::default()).unwrap()
    }
}
