//! Queue-based: size the pool for the requests in flight (running plus
//! waiting) at a per-replica concurrency, with headroom, and hold the
//! highest need for a scale-down delay.
//!
//! Knobs and defaults:
//! * `perReplica` — in-flight requests one replica serves within its SLO
//!   (default: the trigger's `targetValue`);
//! * `headroom` — 0.1: spare fraction on top of the need;
//! * `scaleDownDelay` — 120s: roughly one cold start. Keeping an idle
//!   replica for one warm-up time is the 2-competitive ski-rental choice
//!   when the cost of a replica-second is what counts; the HPA's 300 s is longer than it needs to be;
//! * `queueWeight` — 1.0: with a second value (waiting requests), waiting
//!   requests count this many times, so a queue that forms scales earlier
//!   than the same number of running requests would.

use std::collections::BTreeMap;

use super::{per_replica, replica_value, replicas_for, value};
use crate::{Params, Policy, PolicyError, PolicyInput};

#[derive(Debug, Clone, Copy, Default)]
pub struct QueueBased;

const NAME: &str = "queue";

impl QueueBased {
    pub fn desired(&self, input: &PolicyInput<'_>) -> Result<u32, PolicyError> {
        let p = Params::new(NAME, input.metadata);
        let per = per_replica(&p, input, "perReplica")?;
        let headroom = p.number("headroom", 0.1, 0.0, 10.0)?;
        let delay = p.seconds("scaleDownDelay", 120.0)?;
        let weight = p.number("queueWeight", 1.0, 0.0, 100.0)?;
        value(input, NAME, 0)?;
        // Load of each point: in-flight plus the extra weight on waiting.
        let load = |s: &[f64]| s[0] + s.get(1).map_or(0.0, |w| (weight - 1.0) * w);
        let from = input.now - delay;
        let peak = input
            .history
            .iter()
            .filter(|s| s.at > from && s.at < input.now && !s.values.is_empty())
            .map(|s| load(&s.values))
            .fold(load(input.values), f64::max);
        Ok(replicas_for(peak * (1.0 + headroom), per))
    }
}

impl Policy for QueueBased {
    fn name(&self) -> &'static str {
        NAME
    }

    fn parameters(&self) -> &'static [&'static str] {
        &["perReplica", "headroom", "scaleDownDelay", "queueWeight"]
    }

    fn evaluate(&self, input: &PolicyInput<'_>) -> Result<f64, PolicyError> {
        Ok(replica_value(self.desired(input)?, input.target))
    }

    fn history_seconds(&self, metadata: &BTreeMap<String, String>) -> Result<f64, PolicyError> {
        let p = Params::new(NAME, metadata);
        p.number("headroom", 0.1, 0.0, 10.0)?;
        p.number("queueWeight", 1.0, 0.0, 100.0)?;
        p.seconds("scaleDownDelay", 120.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Sample;
    use crate::policies::testing::{hpa_replicas, meta};

    #[test]
    fn sizes_for_in_flight_with_headroom_through_the_hpa() {
        let m = meta(&[("perReplica", "8")]);
        let input = PolicyInput {
            target: 2.0,
            ..PolicyInput::new(&[40.0], &m)
        };
        // 40 × 1.1 / 8 = 5.5 → 6.
        assert_eq!(QueueBased.desired(&input).unwrap(), 6);
        assert_eq!(
            hpa_replicas(QueueBased.evaluate(&input).unwrap(), 2.0, 3),
            6
        );
    }

    #[test]
    fn holds_the_peak_for_the_scale_down_delay() {
        let m = meta(&[("perReplica", "10"), ("headroom", "0")]);
        let h = vec![
            Sample {
                at: 0.0,
                values: vec![50.0],
            },
            Sample {
                at: 60.0,
                values: vec![10.0],
            },
        ];
        let input = PolicyInput {
            now: 100.0,
            history: &h,
            ..PolicyInput::new(&[10.0], &m)
        };
        assert_eq!(QueueBased.desired(&input).unwrap(), 5);
        let later = PolicyInput {
            now: 121.0,
            ..input
        };
        assert_eq!(QueueBased.desired(&later).unwrap(), 1);
        assert_eq!(
            hpa_replicas(QueueBased.evaluate(&later).unwrap(), 1.0, 5),
            1
        );
    }

    #[test]
    fn waiting_requests_weigh_more() {
        let m = meta(&[
            ("perReplica", "10"),
            ("headroom", "0"),
            ("queueWeight", "3"),
        ]);
        // 20 in flight, 10 of them waiting: 20 + 2 × 10 = 40 → 4.
        assert_eq!(
            QueueBased
                .desired(&PolicyInput::new(&[20.0, 10.0], &m))
                .unwrap(),
            4
        );
    }

    #[test]
    fn bad_headroom_is_named() {
        let m = meta(&[("headroom", "-1")]);
        let e = QueueBased
            .evaluate(&PolicyInput::new(&[1.0], &m))
            .unwrap_err()
            .to_string();
        assert!(e.contains("headroom") && e.contains("-1"), "{e}");
    }
}
