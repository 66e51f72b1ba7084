//! SLO-aware: llm-d's latency control law (llm-d's autoscaling documentation) with a leading
//! queue floor, which llm-d names as its own next step.
//!
//! Signal `s = min(clamp, max(TTFT/ttft, TPOT/tpot))`, averaged over
//! `smoothing`. With `n` ready replicas:
//! * `s > up`: `n + ceil(n·(s/up − 1))`;
//! * `s < down`: `n − floor(n·(1 − s/down))`;
//! * otherwise `n`.
//!
//! A latency signal trails the load (it moves only once a queue has
//! formed), so when the trigger also passes in-flight requests and
//! `perReplica` is set, the answer never drops below
//! `ceil(in-flight / perReplica)`.
//!
//! Values: `[p90 TTFT seconds, p90 TPOT seconds?, in-flight?]`.
//! Knobs and defaults: `ttft` 3s, `tpot` 100ms (llm-d's interactive SLO),
//! `up` 0.55, `down` 0.40, `clamp` 2.0, `smoothing` 45s, `perReplica` 0
//! (floor off).

use std::collections::BTreeMap;

use super::{replica_value, replicas_for, value};
use crate::{Params, Policy, PolicyError, PolicyInput};

#[derive(Debug, Clone, Copy, Default)]
pub struct SloAware;

const NAME: &str = "slo";

struct Knobs {
    ttft: f64,
    tpot: f64,
    up: f64,
    down: f64,
    clamp: f64,
    smoothing: f64,
    per_replica: f64,
}

fn knobs(metadata: &BTreeMap<String, String>) -> Result<Knobs, PolicyError> {
    let p = Params::new(NAME, metadata);
    let k = Knobs {
        ttft: p.seconds("ttft", 3.0)?,
        tpot: p.seconds("tpot", 0.1)?,
        up: p.number("up", 0.55, 0.01, 10.0)?,
        down: p.number("down", 0.40, 0.0, 10.0)?,
        clamp: p.number("clamp", 2.0, 0.1, 1000.0)?,
        smoothing: p.seconds("smoothing", 45.0)?,
        per_replica: p.number("perReplica", 0.0, 0.0, 1e12)?,
    };
    if k.down >= k.up {
        return Err(PolicyError::InvalidParameter {
            policy: NAME,
            key: "down".into(),
            value: k.down.to_string(),
            reason: format!("must be below up ({}) or the policy would flap", k.up),
        });
    }
    for (key, v) in [("ttft", k.ttft), ("tpot", k.tpot)] {
        if v <= 0.0 {
            return Err(PolicyError::InvalidParameter {
                policy: NAME,
                key: key.into(),
                value: v.to_string(),
                reason: "the SLO must be above 0, e.g. \"3s\" or \"100ms\"".into(),
            });
        }
    }
    Ok(k)
}

impl SloAware {
    fn signal(k: &Knobs, values: &[f64]) -> f64 {
        let ttft = values.first().copied().unwrap_or(0.0) / k.ttft;
        let tpot = values.get(1).copied().unwrap_or(0.0) / k.tpot;
        let s = ttft.max(tpot);
        if s.is_finite() {
            s.clamp(0.0, k.clamp)
        } else {
            k.clamp
        }
    }

    pub fn desired(&self, input: &PolicyInput<'_>) -> Result<u32, PolicyError> {
        let k = knobs(input.metadata)?;
        value(input, NAME, 0)?;
        let from = input.now - k.smoothing;
        let mut signals: Vec<f64> = input
            .history
            .iter()
            .filter(|s| s.at > from && s.at < input.now && !s.values.is_empty())
            .map(|s| Self::signal(&k, &s.values))
            .collect();
        signals.push(Self::signal(&k, input.values));
        let s = signals.iter().sum::<f64>() / signals.len() as f64;
        let n = input.ready_replicas.unwrap_or(1).max(1);
        let nf = f64::from(n);
        let by_latency = if s > k.up {
            n + (nf * (s / k.up - 1.0)).ceil() as u32
        } else if s < k.down {
            n - (nf * (1.0 - s / k.down)).floor() as u32
        } else {
            n
        };
        let floor = match input.values.get(2) {
            Some(&inflight) if k.per_replica > 0.0 => replicas_for(inflight, k.per_replica),
            _ => 0,
        };
        Ok(by_latency.max(floor))
    }
}

impl Policy for SloAware {
    fn name(&self) -> &'static str {
        NAME
    }

    fn parameters(&self) -> &'static [&'static str] {
        &[
            "ttft",
            "tpot",
            "up",
            "down",
            "clamp",
            "smoothing",
            "perReplica",
        ]
    }

    fn evaluate(&self, input: &PolicyInput<'_>) -> Result<f64, PolicyError> {
        Ok(replica_value(self.desired(input)?, input.target))
    }

    fn history_seconds(&self, metadata: &BTreeMap<String, String>) -> Result<f64, PolicyError> {
        Ok(knobs(metadata)?.smoothing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policies::testing::{hpa_replicas, meta};

    fn at(values: &[f64], ready: u32, m: &BTreeMap<String, String>) -> u32 {
        let input = PolicyInput {
            ready_replicas: Some(ready),
            ..PolicyInput::new(values, m)
        };
        let d = SloAware.desired(&input).unwrap();
        // The value → HPA path lands on the same count.
        assert_eq!(
            hpa_replicas(SloAware.evaluate(&input).unwrap(), 1.0, ready),
            if d.abs_diff(ready) * 10 <= ready {
                ready
            } else {
                d
            }
        );
        d
    }

    #[test]
    fn control_law_up_hold_down() {
        let m = meta(&[]);
        // TTFT 3.3 s of 3 s → s = 1.1 → 4 + ceil(4 × 1) = 8.
        assert_eq!(at(&[3.3, 0.02], 4, &m), 8);
        // TPOT dominates: 0.06/0.1 = 0.6 → 4 + ceil(4 × 0.0909) = 5.
        assert_eq!(at(&[0.3, 0.06], 4, &m), 5);
        // In the band → hold.
        assert_eq!(at(&[1.5, 0.0], 4, &m), 4);
        // s = 0.2 → 10 − floor(10 × 0.5) = 5.
        assert_eq!(at(&[0.6, 0.0], 10, &m), 5);
        // Clamp: a 90 s TTFT counts as s = 2 → 2 + ceil(2 × 2.64) = 8.
        assert_eq!(at(&[90.0, 0.0], 2, &m), 8);
    }

    #[test]
    fn leading_queue_floor() {
        let m = meta(&[("perReplica", "4")]);
        // Latency still fine, but 30 in flight at 4 each needs 8.
        assert_eq!(at(&[0.5, 0.03, 30.0], 3, &m), 8);
    }

    #[test]
    fn inverted_thresholds_are_refused() {
        let m = meta(&[("up", "0.3"), ("down", "0.5")]);
        let e = SloAware
            .evaluate(&PolicyInput::new(&[1.0], &m))
            .unwrap_err()
            .to_string();
        assert!(e.contains("'down'") && e.contains("flap"), "{e}");
    }
}
