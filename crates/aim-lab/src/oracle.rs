//! The perfect-foresight lower bound of reference §6.3.
//!
//! 1. Per-replica capacity c*: the highest constant Poisson rate one replica
//!    serves at ≥ 99 % attainment with the trace's own length mix,
//!    measured by bisection in the lab itself.
//! 2. need(t) every 10 s: the load in a centred 60 s window ÷ c*, rounded
//!    up and clamped to the bounds.
//! 3. Per layer k: the intervals where need ≥ k, gaps shorter than T_w
//!    merged (idling is cheaper than restarting), each started T_w early.
//!    Replicas are interchangeable, so this is optimal.

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

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Replicas that should exist (warming included) on each 10 s step.
    pub provisioned: Vec<u32>,
    /// Replica starts after t = 0.
    pub starts: usize,
}

impl Plan {
    pub fn replica_seconds(&self) -> f64 {
        self.provisioned
            .iter()
            .map(|&n| f64::from(n) * STEP_S)
            .sum()
    }

    /// The plan as controller steps (changes only).
    pub fn steps(&self) -> Vec<(f64, u32)> {
        let mut out: Vec<(f64, u32)> = Vec::new();
        for (k, &n) in self.provisioned.iter().enumerate() {
            if out.last().is_none_or(|l| l.1 != n) {
                out.push((k as f64 * STEP_S, n));
            }
        }
        out
    }
}

/// The layered T_w-aware oracle. Layers warm at t = 0 start for free.
pub fn plan(need: &[u32], cold_start_s: f64) -> Plan {
    let steps = need.len();
    let lead = (cold_start_s / STEP_S).ceil() as usize;
    let top = need.iter().copied().max().unwrap_or(0);
    let mut provisioned = vec![0u32; steps];
    let mut starts = 0;
    for k in 1..=top {
        // Intervals [a, b) where need ≥ k.
        let mut intervals: Vec<(usize, usize)> = Vec::new();
        let mut i = 0;
        while i < steps {
            if need[i] >= k {
                let a = i;
                while i < steps && need[i] >= k {
                    i += 1;
                }
                match intervals.last_mut() {
                    // A gap shorter than T_w: keep the replica idle instead.
                    Some(last) if a - last.1 < lead => last.1 = i,
                    _ => intervals.push((a, i)),
                }
            } else {
                i += 1;
            }
        }
        for (a, b) in intervals {
            let start = a.saturating_sub(lead);
            if a > 0 {
                starts += 1;
            }
            for p in &mut provisioned[if a == 0 { 0 } else { start }..b] {
                *p += 1;
            }
        }
    }
    Plan {
        provisioned,
        starts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_merge_short_gaps_and_lead_by_cold_start() {
        // Need: 1 throughout, 2 on steps 20..30 and 33..40, 3 on 60..62.
        let mut need = vec![1u32; 80];
        need[20..30].fill(2);
        need[33..40].fill(2);
        need[60..62].fill(3);
        let p = plan(&need, 100.0);
        // Layer 2: gap 30..33 (3 steps) < 10 → merged; starts at 10.
        assert_eq!(p.provisioned[9], 1);
        assert_eq!(p.provisioned[10], 2);
        assert_eq!(p.provisioned[31], 2);
        // Layers 2 and 3 each start once for the spike at 60 (gap 40..60 ≥ 10).
        assert_eq!(p.provisioned[50], 3);
        assert_eq!(p.provisioned[62], 1);
        assert_eq!(p.starts, 3);
        // Never below need.
        assert!(need.iter().zip(&p.provisioned).all(|(n, p)| p >= n));
    }

    #[test]
    fn zero_cold_start_is_need_itself() {
        let need = vec![1, 3, 2, 2, 5, 1];
        assert_eq!(plan(&need, 0.0).provisioned, need);
    }

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
