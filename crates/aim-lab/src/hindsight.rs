//! The hindsight plan: per-interval replica counts chosen with the whole
//! workload known, run through the same engines, cold start, drain and
//! billing as every other row, and itself meeting the SLO target.
//!
//! An exact optimum (dynamic programming over replica counts) needs the
//! state of every engine's queue and KV cache at each interval boundary,
//! which is far too large to enumerate. The search is a rolling horizon
//! over the real simulation instead:
//!
//! * Every `interval_s` it decides the count from now on. A new pod is
//!   ready one cold start after the decision, so a decision serves the
//!   requests of the next `lead + 1` intervals, `lead` being the slowest
//!   cold start in whole intervals.
//! * For each candidate count it clones the running simulation, holds the
//!   count, runs it until those requests are done, and keeps the smallest
//!   count whose attainment on them reaches the target (or, when none
//!   does, the count with the best attainment).
//! * Candidates are tried from the current count, downwards while the
//!   target holds and upwards while it does not, so a typical decision
//!   costs two or three short runs.
//!
//! The plan found is then run from scratch as an ordinary row; that run,
//! not the search, is what the tables report. The plan is an upper bound
//! on the best possible cost, and [`crate::bound`] a lower one.

use aim_policy::PolicyError;

use crate::control::Controller;
use crate::sim::{Replay, Sim, SimConfig, Slo};
use crate::trace::Arrival;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SearchConfig {
    /// Seconds between decisions.
    pub interval_s: f64,
    /// Attainment the plan must reach on each decision's requests.
    pub target: f64,
    pub min: u32,
    pub max: u32,
    /// Replicas warm at the start of the pre-roll.
    pub initial: u32,
}

/// A plan: `(episode time, replicas)` steps, the first at the start of the
/// pre-roll (a negative time when there is one).
#[derive(Debug, Clone, PartialEq)]
pub struct HindsightPlan {
    pub steps: Vec<(f64, u32)>,
    /// Simulated runs the search made.
    pub trials: usize,
}

impl HindsightPlan {
    pub fn controller(&self) -> Controller {
        Controller::Plan(self.steps.clone())
    }

    /// Replicas asked for at episode time `t`.
    pub fn at(&self, t: f64) -> u32 {
        let i = self.steps.partition_point(|s| s.0 <= t);
        self.steps[i.saturating_sub(1)].1
    }
}

/// Share of the requests arriving in `[from, to)` that met the SLO, and
/// how many there were.
fn attainment(sim: &Sim<'_>, slo: Slo, from: f64, to: f64) -> (f64, usize) {
    let (mut met, mut n) = (0usize, 0usize);
    for r in sim.outcomes_between(from, to) {
        n += 1;
        let ok = r.finished
            && r.ttft.is_some_and(|t| t <= slo.ttft_s)
            && r.tpot.is_none_or(|t| t <= slo.tpot_s);
        met += usize::from(ok);
    }
    (if n == 0 { 1.0 } else { met as f64 / n as f64 }, n)
}

/// Searches the plan for `arrivals` (episode time) under `cfg`.
pub fn search(
    cfg: &SimConfig,
    arrivals: &[Arrival],
    search: SearchConfig,
    progress: &mut dyn FnMut(f64),
) -> Result<HindsightPlan, PolicyError> {
    let replay = Replay::new(arrivals, cfg.warmup_s);
    let initial = search.initial.clamp(search.min, search.max);
    // The pre-roll is planned too, so the scored episode starts from a
    // state the plan chose rather than from a backlog it inherited.
    let start = -replay.offset;
    let mut sim = Sim::new(cfg, &replay, Controller::Plan(vec![(start, initial)]));
    let slowest_start = cfg.cold_start_s * (1.0 + cfg.cold_start_jitter);
    let lead = (slowest_start / search.interval_s).ceil();
    let reach = (lead + 1.0) * search.interval_s;
    let end = arrivals.last().map_or(0.0, |a| a.at);
    // Long enough for any request that is served at all to finish.
    let settle_limit = 600.0;
    let mut steps = vec![(start, initial)];
    let mut trials = 0usize;
    let mut t = start;
    while t <= end {
        let (from, to) = (t, t + reach);
        let mut try_count = |n: u32| -> Result<f64, PolicyError> {
            trials += 1;
            let mut trial = sim.clone();
            trial.command(n);
            let mut until = to;
            loop {
                let more = trial.advance(until, &mut |_| {})?;
                if !more || trial.settled_between(from, to) || until >= to + settle_limit {
                    break;
                }
                until += search.interval_s;
            }
            Ok(attainment(&trial, cfg.slo, from, to).0)
        };
        let current = sim.spec().clamp(search.min, search.max);
        let here = try_count(current)?;
        let chosen = if here >= search.target {
            let mut n = current;
            while n > search.min && try_count(n - 1)? >= search.target {
                n -= 1;
            }
            n
        } else {
            let (mut best, mut best_att) = (current, here);
            let mut n = current;
            while n < search.max {
                n += 1;
                let a = try_count(n)?;
                if a > best_att + 1e-12 {
                    (best, best_att) = (n, a);
                }
                if a >= search.target {
                    break;
                }
            }
            best
        };
        if chosen != sim.spec() {
            sim.command(chosen);
            steps.push((t, chosen));
        }
        t += search.interval_s;
        sim.advance(t, &mut |_| {})?;
        progress(((t - start) / (end - start).max(1.0)).min(1.0));
    }
    Ok(HindsightPlan { steps, trials })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score::score;
    use crate::sim::run;
    use aim_engine::Profile;

    fn steady(rate: f64, from: f64, to: f64) -> Vec<Arrival> {
        let n = ((to - from) * rate) as usize;
        (0..n)
            .map(|k| Arrival {
                at: from + k as f64 / rate,
                prompt_tokens: 64,
                output_tokens: 100,
                hash_ids: vec![],
            })
            .collect()
    }

    fn config() -> SimConfig {
        let mut cfg = SimConfig::new(Profile::tiny());
        cfg.cold_start_s = 30.0;
        cfg.cold_start_jitter = 0.0;
        cfg.slo = Slo {
            ttft_s: 0.5,
            tpot_s: 0.05,
        };
        cfg
    }

    /// A step from light to heavy load and back: the plan rises before the
    /// step (a cold start early), comes down after it, meets the target
    /// when run from scratch, and costs less than the peak pool held
    /// throughout.
    #[test]
    fn the_plan_follows_a_step_and_meets_the_target() {
        let cfg = config();
        let mut arrivals = steady(20.0, 0.0, 300.0);
        arrivals.extend(steady(150.0, 300.0, 480.0));
        arrivals.extend(steady(20.0, 480.0, 900.0));
        let s = SearchConfig {
            interval_s: 30.0,
            target: 0.99,
            min: 1,
            max: 20,
            initial: 1,
        };
        let plan = search(&cfg, &arrivals, s, &mut |_| {}).unwrap();
        let peak = (0..=900).map(|t| plan.at(f64::from(t))).max().unwrap();
        assert!(peak > plan.at(100.0), "plan never rose: {:?}", plan.steps);
        assert!(
            plan.at(290.0) > plan.at(100.0),
            "not ready for the step: {:?}",
            plan.steps
        );
        assert!(plan.at(800.0) < peak, "never came down: {:?}", plan.steps);
        let planned = run(&cfg, &arrivals, &mut plan.controller(), &mut |_| {}).unwrap();
        let got = score(&planned, cfg.slo, cfg.cold_start_s);
        assert!(got.attainment >= 0.99, "{got:?} with {:?}", plan.steps);
        let mut held = cfg.clone();
        held.initial_replicas = peak;
        let pool = run(&held, &arrivals, &mut Controller::Static(peak), &mut |_| {}).unwrap();
        assert!(planned.replica_seconds < pool.replica_seconds);
    }
}
