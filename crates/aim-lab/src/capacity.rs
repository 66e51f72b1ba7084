//! What one replica can take, and what a workload needs of them:
//!
//! 1. Per-replica capacity c*: the highest constant Poisson rate one replica
//!    serves at ≥ 99 % attainment with the trace's own length mix,
//!    measured by bisection in the lab itself. Policies are tuned from it.
//! 2. need(t) every 10 s: the load in a centred 60 s window ÷ c*, rounded
//!    up and clamped to the bounds (the static-peak row and the replicas
//!    every row starts with).
//!
//! Neither is a bound: c* is measured under constant Poisson load, and a
//! burstier or smoother workload needs more or less. The bound is
//! [`crate::bound`]; the best plan found with hindsight is
//! [`crate::hindsight`].

use aim_engine::rng::Rng;

use crate::control::Controller;
use crate::score::score;
use crate::sim::{SimConfig, run};
use crate::trace::Arrival;

pub const STEP_S: f64 = 10.0;
pub const WINDOW_S: f64 = 60.0;

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Capacity {
    /// c*, requests/s per replica.
    pub rps: f64,
    /// Mean requests in flight on the replica at c* (a concurrency target).
    pub in_flight: f64,
}

/// Poisson arrivals at `rate` for `duration_s`, lengths drawn from `mix`.
fn constant_load(mix: &[Arrival], rate: f64, duration_s: f64, seed: u64) -> Vec<Arrival> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();
    let mut t = 0.0;
    loop {
        t += -(1.0 - rng.next_f64()).ln() / rate;
        if t >= duration_s {
            return out;
        }
        let pick = &mix[(rng.next_u64() % mix.len() as u64) as usize];
        out.push(Arrival {
            at: t,
            ..pick.clone()
        });
    }
}

/// Measures c* by bisection on one static replica.
pub fn capacity(cfg: &SimConfig, mix: &[Arrival], target: f64) -> Capacity {
    let duration = 600.0;
    let probe = |rate: f64| {
        let load = constant_load(mix, rate, duration, 17);
        let mut one = cfg.clone();
        one.initial_replicas = 1;
        let result = run(&one, &load, &mut Controller::Static(1), &mut |_| {})
            .expect("static runs need no policy");
        let s = score(&result, cfg.slo, cfg.cold_start_s);
        let busy: f64 = result
            .timeline
            .iter()
            .map(|p| f64::from(p.running + p.waiting))
            .sum::<f64>()
            / result.timeline.len().max(1) as f64;
        (s.attainment, busy)
    };
    let (mut lo, mut hi) = (0.0f64, 0.25f64);
    while probe(hi).0 >= target && hi < 1000.0 {
        lo = hi;
        hi *= 2.0;
    }
    for _ in 0..8 {
        let mid = (lo + hi) / 2.0;
        if probe(mid).0 >= target {
            lo = mid
        } else {
            hi = mid
        }
    }
    let rps = lo.max(1e-3);
    Capacity {
        rps,
        in_flight: probe(rps).1.max(1.0),
    }
}

/// need(t) on a 10 s grid.
pub fn need(arrivals: &[Arrival], c: f64, min: u32, max: u32) -> Vec<u32> {
    let end = arrivals.last().map_or(0.0, |a| a.at);
    let steps = (end / STEP_S).ceil() as usize + 1;
    let times: Vec<f64> = arrivals.iter().map(|a| a.at).collect();
    (0..steps)
        .map(|k| {
            let mid = k as f64 * STEP_S;
            let lo = times.partition_point(|&t| t < mid - WINDOW_S / 2.0);
            let hi = times.partition_point(|&t| t < mid + WINDOW_S / 2.0);
            let rate = (hi - lo) as f64 / WINDOW_S;
            ((rate / c).ceil() as u32).clamp(min, max)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn need_follows_the_windowed_rate() {
        let arrivals: Vec<Arrival> = (0..600)
            .map(|k| Arrival {
                at: f64::from(k) * 0.5,
                prompt_tokens: 1,
                output_tokens: 1,
                hash_ids: vec![],
            })
            .collect();
        let n = need(&arrivals, 0.5, 1, 10);
        assert_eq!(n[10], 4); // 2 rps / 0.5
        assert!(n.iter().all(|&x| (1..=10).contains(&x)));
    }
}
