//! Cost-aware: one explicit knob trades SLO safety for GPU-hours.
//!
//! `sloWeight` ∈ [0, 1] (default 0.5; 0 = cheapest, 1 = safest) sets
//! * the utilization target `u = 1 − 0.4·sloWeight` of `perReplica`
//!   (1.0 packs replicas full; 0.6 keeps 40 % spare);
//! * the keep-alive before scale-down, `coldStart·(0.5 + sloWeight)`: half
//!   to one and a half warm-ups around the ski-rental optimum of one.
//!
//! Price: `price` ($/replica-hour on demand, default 10) and `spotPrice`
//! with `spotFraction` of the replicas on spot. Spot replicas can be
//! reclaimed, so `spotFraction · spotRisk` (default 0.05) of the count is
//! added as spare. The price does not change the keep-alive: holding a
//! replica and restarting one (billed through its warm-up) both scale with
//! it. [`hourly_price`] gives the blended price the lab reports.
//!
//! Scale to zero: after `idleToZero` (default 10m; 0 = never) with no load
//! at all in the history, the value is 0, so KEDA deactivates the trigger
//! and scales to `minReplicaCount` (0) after its cooldown.
//!
//! Value: `[in-flight requests]`.

use std::collections::BTreeMap;

use super::{per_replica, replica_value, replicas_for, value};
use crate::{Params, Policy, PolicyError, PolicyInput};

#[derive(Debug, Clone, Copy, Default)]
pub struct CostAware;

const NAME: &str = "cost";

struct Knobs {
    slo_weight: f64,
    cold_start: f64,
    idle_to_zero: f64,
    spot_fraction: f64,
    spot_risk: f64,
    price: f64,
    spot_price: f64,
}

fn knobs(metadata: &BTreeMap<String, String>) -> Result<Knobs, PolicyError> {
    let p = Params::new(NAME, metadata);
    let price = p.number("price", 10.0, 0.0, 1e6)?;
    Ok(Knobs {
        slo_weight: p.number("sloWeight", 0.5, 0.0, 1.0)?,
        cold_start: p.seconds("coldStart", 120.0)?,
        idle_to_zero: p.seconds("idleToZero", 600.0)?,
        spot_fraction: p.number("spotFraction", 0.0, 0.0, 1.0)?,
        spot_risk: p.number("spotRisk", 0.05, 0.0, 1.0)?,
        spot_price: p.number("spotPrice", price, 0.0, 1e6)?,
        price,
    })
}

/// The blended $/hour of `replicas` replicas under these metadata.
pub fn hourly_price(
    replicas: f64,
    metadata: &BTreeMap<String, String>,
) -> Result<f64, PolicyError> {
    let k = knobs(metadata)?;
    Ok(replicas * ((1.0 - k.spot_fraction) * k.price + k.spot_fraction * k.spot_price))
}

impl CostAware {
    pub fn desired(&self, input: &PolicyInput<'_>) -> Result<u32, PolicyError> {
        let k = knobs(input.metadata)?;
        let per = per_replica(&Params::new(NAME, input.metadata), input, "perReplica")?;
        let load_now = value(input, NAME, 0)?;
        let utilization = 1.0 - 0.4 * k.slo_weight;
        let keep = k.cold_start * (0.5 + k.slo_weight);
        let past = |window: f64| {
            input
                .history
                .iter()
                .filter(move |s| s.at > input.now - window && s.at < input.now)
                .filter_map(|s| s.values.first().copied())
        };
        if k.idle_to_zero > 0.0 && load_now <= 0.0 {
            let covered = input
                .history
                .first()
                .is_some_and(|s| s.at <= input.now - k.idle_to_zero);
            if covered && past(k.idle_to_zero).all(|v| v <= 0.0) {
                return Ok(0);
            }
        }
        let peak = past(keep).fold(load_now, f64::max);
        let need = replicas_for(peak, per * utilization).max(1);
        let spare = (f64::from(need) * k.spot_fraction * k.spot_risk).ceil() as u32;
        Ok(need + spare)
    }
}

impl Policy for CostAware {
    fn name(&self) -> &'static str {
        NAME
    }

    fn parameters(&self) -> &'static [&'static str] {
        &[
            "price",
            "sloWeight",
            "coldStart",
            "idleToZero",
            "spotFraction",
            "spotRisk",
            "spotPrice",
            "perReplica",
        ]
    }

    fn evaluate(&self, input: &PolicyInput<'_>) -> Result<f64, PolicyError> {
        Ok(replica_value(self.desired(input)?, input.target))
    }

    fn history_seconds(&self, metadata: &BTreeMap<String, String>) -> Result<f64, PolicyError> {
        let k = knobs(metadata)?;
        Ok(k.idle_to_zero.max(k.cold_start * (0.5 + k.slo_weight)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Sample;
    use crate::policies::testing::{hpa_replicas, meta};

    #[test]
    fn slo_weight_trades_replicas() {
        let cheap = meta(&[("perReplica", "10"), ("sloWeight", "0")]);
        let safe = meta(&[("perReplica", "10"), ("sloWeight", "1")]);
        let load = [48.0];
        let c = CostAware.desired(&PolicyInput::new(&load, &cheap)).unwrap();
        let s = CostAware.desired(&PolicyInput::new(&load, &safe)).unwrap();
        assert_eq!((c, s), (5, 8)); // 48/10 → 5; 48/6 → 8
        let v = CostAware
            .evaluate(&PolicyInput {
                target: 3.0,
                ..PolicyInput::new(&load, &safe)
            })
            .unwrap();
        assert_eq!(hpa_replicas(v, 3.0, 5), 8);
    }

    #[test]
    fn idle_to_zero_needs_a_full_idle_window() {
        let m = meta(&[("perReplica", "10"), ("idleToZero", "5m")]);
        let h: Vec<Sample> = (0..20)
            .map(|k| Sample {
                at: f64::from(k) * 30.0,
                values: vec![0.0],
            })
            .collect();
        let idle = PolicyInput {
            now: 600.0,
            history: &h,
            ..PolicyInput::new(&[0.0], &m)
        };
        assert_eq!(CostAware.desired(&idle).unwrap(), 0);
        assert_eq!(CostAware.evaluate(&idle).unwrap(), 0.0); // KEDA: inactive
        let short = PolicyInput {
            history: &h[15..],
            ..idle
        };
        assert_eq!(CostAware.desired(&short).unwrap(), 1);
    }

    #[test]
    fn spot_adds_spare_and_lowers_price() {
        let m = meta(&[
            ("perReplica", "1"),
            ("sloWeight", "0"),
            ("spotFraction", "1"),
            ("spotRisk", "0.1"),
            ("price", "10"),
            ("spotPrice", "4"),
        ]);
        assert_eq!(
            CostAware.desired(&PolicyInput::new(&[20.0], &m)).unwrap(),
            22
        );
        assert_eq!(hourly_price(2.0, &m).unwrap(), 8.0);
    }

    #[test]
    fn bad_weight_is_named() {
        let m = meta(&[("sloWeight", "2")]);
        let e = CostAware
            .evaluate(&PolicyInput::new(&[1.0], &m))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("sloWeight") && e.contains("between 0 and 1"),
            "{e}"
        );
    }
}
