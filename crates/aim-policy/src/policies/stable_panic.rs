//! Knative/AIBrix KPA: a stable window for the steady state and a short
//! panic window for bursts.
//!
//! Knobs (trigger metadata) and defaults, AIBrix's where they differ from
//! Knative's:
//! * `perReplica` — in-flight requests one replica should carry (default:
//!   the trigger's `targetValue`);
//! * `stableWindow` — 180s; `panicWindow` — 60s;
//! * `panicThreshold` — 2.0: panic when the panic-window demand reaches this
//!   multiple of the current replicas;
//! * `maxScaleUpRate` — 2.0, `maxScaleDownRate` — 2.0 (per decision).
//!
//! In panic the count never drops and holds the highest panic proposal seen
//! during the last stable window. Panic state is re-derived from history,
//! not remembered, so the policy stays a pure function.

use std::collections::BTreeMap;

use super::{mean, per_replica, recent, replica_value, replicas_for, value};
use crate::{Params, Policy, PolicyError, PolicyInput};

#[derive(Debug, Clone, Copy, Default)]
pub struct StablePanic;

const NAME: &str = "stable-panic";

struct Knobs {
    per_replica: f64,
    stable: f64,
    panic: f64,
    threshold: f64,
    up_rate: f64,
    down_rate: f64,
}

fn knobs(input: &PolicyInput<'_>) -> Result<Knobs, PolicyError> {
    let p = Params::new(NAME, input.metadata);
    let k = Knobs {
        per_replica: per_replica(&p, input, "perReplica")?,
        stable: p.seconds("stableWindow", 180.0)?,
        panic: p.seconds("panicWindow", 60.0)?,
        threshold: p.number("panicThreshold", 2.0, 1.0, 1000.0)?,
        up_rate: p.number("maxScaleUpRate", 2.0, 1.0, 1000.0)?,
        down_rate: p.number("maxScaleDownRate", 2.0, 1.0, 1000.0)?,
    };
    if k.panic > k.stable || k.panic <= 0.0 {
        return Err(PolicyError::InvalidParameter {
            policy: NAME,
            key: "panicWindow".into(),
            value: k.panic.to_string(),
            reason: format!("must be above 0 and at most stableWindow ({}s)", k.stable),
        });
    }
    Ok(k)
}

impl StablePanic {
    pub fn desired(&self, input: &PolicyInput<'_>) -> Result<u32, PolicyError> {
        self.desired_in_mode(input).map(|(d, _)| d)
    }

    /// The replicas wanted and whether the panic window decided them.
    fn desired_in_mode(&self, input: &PolicyInput<'_>) -> Result<(u32, bool), PolicyError> {
        let k = knobs(input)?;
        value(input, NAME, 0)?;
        let stable = replicas_for(mean(&recent(input, 0, k.stable)), k.per_replica);
        let current = input.ready_replicas.unwrap_or(stable);
        let bounded = |d: u32| -> u32 {
            let ceiling = ((f64::from(current) * k.up_rate).ceil() as u32).max(1);
            let floor = (f64::from(current) / k.down_rate).floor() as u32;
            d.clamp(floor, ceiling.max(floor))
        };
        // Re-derive panic: any evaluation point in the last stable window
        // whose panic-window demand reached the threshold times the
        // replicas of its moment. Now, that is the ready replicas; for an
        // earlier point, which cannot know them, it is what the stable
        // window wanted then. (Comparing an old point with today's count
        // would re-enter panic as the count falls after a load: a point
        // of the load, read against half the replicas, looks like a
        // burst.)
        let mut highest_panic: Option<u32> = None;
        let lookback = recent(input, 0, 2.0 * k.stable);
        let inside = |from: f64, to: f64| -> Vec<(f64, f64)> {
            lookback
                .iter()
                .copied()
                .filter(|p| p.0 > from && p.0 <= to)
                .collect()
        };
        for &(at, _) in lookback.iter().filter(|p| p.0 > input.now - k.stable) {
            let proposal = replicas_for(mean(&inside(at - k.panic, at)), k.per_replica);
            let then = if at >= input.now {
                current
            } else {
                replicas_for(mean(&inside(at - k.stable, at)), k.per_replica)
            };
            if f64::from(proposal) >= k.threshold * f64::from(then.max(1)) {
                highest_panic = Some(highest_panic.map_or(proposal, |h| h.max(proposal)));
            }
        }
        Ok(match highest_panic {
            Some(p) => (bounded(p).max(current), true),
            None => (bounded(stable), false),
        })
    }
}

impl Policy for StablePanic {
    fn name(&self) -> &'static str {
        NAME
    }

    fn parameters(&self) -> &'static [&'static str] {
        &[
            "perReplica",
            "stableWindow",
            "panicWindow",
            "panicThreshold",
            "maxScaleUpRate",
            "maxScaleDownRate",
        ]
    }

    fn evaluate(&self, input: &PolicyInput<'_>) -> Result<f64, PolicyError> {
        Ok(replica_value(self.desired(input)?, input.target))
    }

    fn decide(&self, input: &PolicyInput<'_>) -> Result<crate::Decision, PolicyError> {
        let (desired, panic) = self.desired_in_mode(input)?;
        Ok(crate::Decision {
            value: replica_value(desired, input.target),
            mode: Some(if panic { "panic" } else { "stable" }),
        })
    }

    fn history_seconds(&self, metadata: &BTreeMap<String, String>) -> Result<f64, PolicyError> {
        let input = PolicyInput::new(&[], metadata);
        // A point of the last stable window is judged against the stable
        // window before it.
        Ok(2.0 * knobs(&input)?.stable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Sample;
    use crate::policies::testing::{hpa_replicas, meta};

    fn history(points: &[(f64, f64)]) -> Vec<Sample> {
        points
            .iter()
            .map(|&(at, v)| Sample {
                at,
                values: vec![v],
            })
            .collect()
    }

    #[test]
    fn steady_load_follows_the_stable_window_through_the_hpa() {
        let m = meta(&[]);
        let h = history(&[(0.0, 20.0), (60.0, 20.0), (120.0, 20.0)]);
        let input = PolicyInput {
            now: 150.0,
            history: &h,
            target: 4.0,
            ready_replicas: Some(4),
            ..PolicyInput::new(&[20.0], &m)
        };
        assert_eq!(StablePanic.desired(&input).unwrap(), 5);
        let v = StablePanic.evaluate(&input).unwrap();
        assert_eq!(hpa_replicas(v, 4.0, 4), 5); // ratio 1.25: outside the band
    }

    #[test]
    fn burst_panics_and_never_scales_down_in_panic() {
        let m = meta(&[("perReplica", "2")]);
        let h = history(&[(0.0, 2.0), (100.0, 2.0), (140.0, 40.0)]);
        // Panic window (60 s) at 150 s: mean(40, 40) = 40 → 20 ≥ 2 × 2 → panic.
        let input = PolicyInput {
            now: 150.0,
            history: &h,
            target: 1.0,
            ready_replicas: Some(2),
            ..PolicyInput::new(&[40.0], &m)
        };
        assert_eq!(StablePanic.desired(&input).unwrap(), 4); // capped at 2× per step
        let decision = StablePanic.decide(&input).unwrap();
        assert_eq!(decision.mode, Some("panic"));
        assert_eq!(decision.value, StablePanic.evaluate(&input).unwrap());
        // Before the burst the stable window decides.
        let calm = PolicyInput {
            now: 110.0,
            history: &h[..2],
            target: 1.0,
            ready_replicas: Some(2),
            ..PolicyInput::new(&[2.0], &m)
        };
        assert_eq!(StablePanic.decide(&calm).unwrap().mode, Some("stable"));
    }

    #[test]
    fn panic_holds_the_highest_proposal_for_a_stable_window() {
        let m = meta(&[]);
        let mut points: Vec<(f64, f64)> = (1..=19).map(|k| (f64::from(k) * 10.0, 0.0)).collect();
        points[12].1 = 120.0; // one burst sample at 130 s
        let h = history(&points);
        // At 200 s the stable mean is 120/18 → 7, but the panic windows ending
        // at 130–180 s asked for 20 ≥ 2 × 10: panic holds the 20.
        let input = PolicyInput {
            now: 200.0,
            history: &h,
            target: 1.0,
            ready_replicas: Some(10),
            ..PolicyInput::new(&[0.0], &m)
        };
        assert_eq!(StablePanic.desired(&input).unwrap(), 20);
        let v = StablePanic.evaluate(&input).unwrap();
        assert_eq!(hpa_replicas(v, 1.0, 10), 20);
        // The burst stays in the 60 s panic windows of the points up to
        // 190 s, and panic lasts a stable window (180 s) past the last of
        // them: still held at 320 s.
        let held = PolicyInput {
            now: 320.0,
            ..input
        };
        assert_eq!(StablePanic.desired(&held).unwrap(), 20);
        // Past 370 s it scales down (÷2 at most).
        let late = PolicyInput {
            now: 375.0,
            ..input
        };
        assert_eq!(StablePanic.desired(&late).unwrap(), 5);
    }

    #[test]
    fn falling_replicas_after_a_load_do_not_re_enter_panic() {
        // A steady 4 in flight for two minutes, then nothing; the count
        // has come down to 2. The load's points are no burst: the stable
        // window wanted 4 when they were taken.
        let m = meta(&[("stableWindow", "60s"), ("panicWindow", "10s")]);
        let mut points: Vec<(f64, f64)> = (0..=8).map(|k| (f64::from(k) * 15.0, 4.0)).collect();
        points.extend((9..=10).map(|k| (f64::from(k) * 15.0, 0.0)));
        let h = history(&points);
        let input = PolicyInput {
            now: 165.0,
            history: &h,
            target: 1.0,
            ready_replicas: Some(2),
            ..PolicyInput::new(&[0.0], &m)
        };
        let decision = StablePanic.decide(&input).unwrap();
        assert_eq!(decision.mode, Some("stable"));
        assert!(StablePanic.desired(&input).unwrap() <= 2);
        // A step from nothing is a burst, and stays one for a stable window.
        let mut step: Vec<(f64, f64)> = (0..=4).map(|k| (f64::from(k) * 15.0, 0.0)).collect();
        step.push((75.0, 4.0));
        let h = history(&step);
        let later = PolicyInput {
            now: 120.0,
            history: &h,
            target: 1.0,
            ready_replicas: Some(4),
            ..PolicyInput::new(&[4.0], &m)
        };
        assert_eq!(StablePanic.decide(&later).unwrap().mode, Some("panic"));
        assert_eq!(StablePanic.desired(&later).unwrap(), 4);
    }

    #[test]
    fn panic_window_longer_than_stable_is_refused() {
        let m = meta(&[("panicWindow", "5m"), ("stableWindow", "1m")]);
        let e = StablePanic
            .evaluate(&PolicyInput::new(&[1.0], &m))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("panicWindow") && e.contains("stableWindow"),
            "{e}"
        );
    }
}
