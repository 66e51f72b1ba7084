//! Runs several configurations on the same workload over several seeds,
//! with the hindsight and static-peak rows and the lower bound, and keeps
//! seed 1's timelines for the charts.

use std::collections::BTreeMap;

use crate::LabError;
use crate::bound::{Bound, lower_bound};
use crate::capacity::{self, Capacity};
use crate::control::Controller;
use crate::hindsight::{self, HindsightPlan, SearchConfig};
use crate::scenario::{self, Context};
use crate::score::{Score, score};
use crate::sim::{RunResult, SimConfig, run};
use crate::trace::Arrival;

/// A configuration to score: a named scenario or an explicit controller
/// (from a manifest).
#[derive(Debug, Clone)]
pub enum Entry {
    Named(String),
    Manifest(String, Controller),
}

impl Entry {
    pub fn label(&self) -> &str {
        match self {
            Entry::Named(n) | Entry::Manifest(n, _) => n,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Row {
    pub name: String,
    pub scores: Vec<Score>,
    /// Per seed: what went wrong with the row's Prometheus queries.
    pub issues: Vec<crate::prom::MetricIssues>,
    /// The row's Prometheus queries, if any, for its warnings.
    pub queries: Vec<String>,
    /// Seed 1's run, for charts.
    pub example: RunResult,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub rows: Vec<Row>,
    pub capacity: Capacity,
    /// Seed 1's hindsight plan, for the charts.
    pub hindsight_plan: HindsightPlan,
    /// The lower bound of each seed's workload.
    pub bounds: Vec<Bound>,
    pub peak_need: u32,
}

/// The attainment every bound and hindsight plan is held to.
pub const TARGET: f64 = 0.99;

/// Seconds between the hindsight plan's decisions.
pub const HINDSIGHT_INTERVAL_S: f64 = 60.0;

pub struct Setup<'a> {
    pub sim: SimConfig,
    pub min: u32,
    pub max: u32,
    pub window_s: f64,
    pub seeds: u64,
    /// Seeds run are `first_seed ..= first_seed + seeds − 1`.
    pub first_seed: u64,
    pub overrides: BTreeMap<String, String>,
    /// Arrivals for a seed.
    pub workload: &'a dyn Fn(u64) -> Vec<Arrival>,
    /// Measured c* to reuse instead of measuring it again.
    pub capacity: Option<Capacity>,
    /// Search and run the hindsight plan (a tuning grid can skip it).
    pub hindsight: bool,
}

/// The grid rule for "KEDA tuned as well as you can": among the rows that
/// are seed-style KEDA grid points ([`scenario::KedaKnobs`]), the one with
/// the fewest mean GPU-hours whose mean attainment reaches `goal` (a
/// fraction); when none does, the one with the best mean attainment
/// (fewer GPU-hours breaking ties).
pub fn select_tuned(rows: &[Row], goal: f64) -> Option<&Row> {
    let grid: Vec<Row> = rows
        .iter()
        .filter(|r| scenario::KedaKnobs::parse(&r.name).is_some())
        .cloned()
        .collect();
    let name = select_cheapest(&grid, goal)?.name.clone();
    rows.iter().find(|r| r.name == name)
}

/// The same rule over any rows.
pub fn select_cheapest(rows: &[Row], goal: f64) -> Option<&Row> {
    let mean = |row: &Row, f: fn(&crate::score::Score) -> f64| {
        row.scores.iter().map(f).sum::<f64>() / row.scores.len().max(1) as f64
    };
    let grid: Vec<(&Row, f64, f64)> = rows
        .iter()
        .filter(|r| !r.scores.is_empty())
        .map(|r| (r, mean(r, |s| s.attainment), mean(r, |s| s.gpu_hours)))
        .collect();
    let cheapest_at_goal = grid
        .iter()
        .filter(|(_, att, _)| *att >= goal)
        .min_by(|a, b| a.2.total_cmp(&b.2));
    let best = || {
        grid.iter()
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.2.total_cmp(&a.2)))
    };
    cheapest_at_goal.or_else(best).map(|g| g.0)
}

/// c* at 99 % attainment on (up to ~3,000 requests of) the workload's
/// length mix.
pub fn measure_capacity(sim: &SimConfig, arrivals: &[Arrival]) -> Capacity {
    let stride = (arrivals.len() / 3000).max(1);
    let mix: Vec<Arrival> = arrivals.iter().step_by(stride).cloned().collect();
    capacity::capacity(sim, &mix, 0.99)
}

/// Runs every entry (plus `hindsight` and `static-peak`) for every seed,
/// and computes each seed's lower bound.
pub fn compare(
    setup: &Setup<'_>,
    entries: &[Entry],
    progress: &mut dyn FnMut(&str, u64, f64),
) -> Result<Outcome, LabError> {
    let first_seed = setup.first_seed.max(1);
    let last_seed = first_seed + setup.seeds.max(1) - 1;
    let first = (setup.workload)(first_seed);
    if first.is_empty() {
        return Err(LabError::Input("the workload has no requests".into()));
    }
    let capacity = match &setup.capacity {
        Some(c) => c.clone(),
        None => {
            progress("measuring c*", 0, 0.0);
            measure_capacity(&setup.sim, &first)
        }
    };
    let ctx = Context {
        capacity: capacity.clone(),
        cold_start_s: setup.sim.cold_start_s,
        min: setup.min,
        max: setup.max,
        window_s: setup.window_s,
        ttft_s: setup.sim.slo.ttft_s,
        tpot_s: setup.sim.slo.tpot_s,
    };
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    let mut order: Vec<String> = entries.iter().map(|e| e.label().to_owned()).collect();
    order.push("static-peak".into());
    order.push("hindsight".into());
    let mut first_plan = None;
    let mut bounds = Vec::new();
    let mut peak_need = 0;
    for seed in first_seed..=last_seed {
        let arrivals = if seed == first_seed {
            first.clone()
        } else {
            (setup.workload)(seed)
        };
        let need = capacity::need(&arrivals, capacity.rps, setup.min, setup.max);
        let peak = need.iter().copied().max().unwrap_or(setup.min);
        let mut sim = setup.sim.clone();
        sim.seed = seed;
        // Every row starts with the replicas the first minute needs; the
        // pre-roll then lets each controller settle before scoring.
        sim.initial_replicas = need
            .first()
            .copied()
            .unwrap_or(setup.min)
            .clamp(setup.min.max(1), setup.max);
        let end = (arrivals.last().map_or(0.0, |a| a.at) + sim.tail_s).ceil();
        bounds.push(lower_bound(&sim, &arrivals, end, setup.min, TARGET));
        progress("hindsight search", seed, 0.0);
        let plan = if setup.hindsight {
            hindsight::search(
                &sim,
                &arrivals,
                SearchConfig {
                    interval_s: HINDSIGHT_INTERVAL_S,
                    target: TARGET,
                    min: setup.min,
                    max: setup.max,
                    initial: sim.initial_replicas,
                },
                &mut |f| progress("hindsight search", seed, f),
            )?
        } else {
            HindsightPlan {
                steps: vec![(0.0, sim.initial_replicas)],
                trials: 0,
            }
        };
        for name in &order {
            if name == "hindsight" && !setup.hindsight {
                continue;
            }
            let mut controller = match name.as_str() {
                "static-peak" => Controller::Static(peak),
                "hindsight" => plan.controller(),
                _ => match entries.iter().find(|e| e.label() == name) {
                    Some(Entry::Manifest(_, c)) => c.clone(),
                    _ => scenario::build(name, &ctx, &setup.overrides)?,
                },
            };
            let queries = match &controller {
                Controller::Keda(k) => k
                    .triggers
                    .iter()
                    .filter_map(|t| t.prometheus.as_ref())
                    .map(|p| p.query.text.clone())
                    .collect(),
                _ => Vec::new(),
            };
            let mut sim = sim.clone();
            if name == "static-peak" {
                sim.initial_replicas = peak;
            }
            let result = run(&sim, &arrivals, &mut controller, &mut |f| {
                progress(name, seed, f)
            })?;
            let s = score(&result, sim.slo, sim.cold_start_s);
            let row = rows.entry(name.clone()).or_insert_with(|| Row {
                name: name.clone(),
                scores: vec![],
                issues: vec![],
                queries,
                example: result.clone(),
            });
            row.scores.push(s);
            row.issues.push(result.metric_issues);
        }
        if seed == first_seed {
            first_plan = Some(plan);
            peak_need = peak;
        }
    }
    Ok(Outcome {
        rows: order.iter().filter_map(|n| rows.remove(n)).collect(),
        capacity,
        hindsight_plan: first_plan.unwrap_or(HindsightPlan {
            steps: vec![(0.0, setup.min)],
            trials: 0,
        }),
        bounds,
        peak_need,
    })
}
