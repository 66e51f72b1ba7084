//! The Prometheus path inside the whole loop: scrape phases, HPA syncs and
//! KEDA's reading of a query, on the lab's virtual clock.

use std::collections::BTreeMap;

use aim_engine::Profile;
use aim_scaling::KServeAutoscaler;

use crate::capacity::Capacity;
use crate::control::Controller;
use crate::prom::tsdb;
use crate::scenario::{self, Context};
use crate::sim::{RunResult, SimConfig, run};
use crate::trace::Arrival;

fn config(seed: u64) -> SimConfig {
    let mut c = SimConfig::new(Profile::qwen3_32b_2xh100());
    c.cold_start_s = 10.0;
    c.cold_start_jitter = 0.0;
    c.warmup_s = 0.0;
    c.seed = seed;
    c
}

fn ctx() -> Context {
    Context {
        capacity: Capacity {
            rps: 1.0,
            in_flight: 8.0,
        },
        cold_start_s: 10.0,
        min: 1,
        max: 8,
        window_s: 120.0,
        ttft_s: 3.0,
        tpot_s: 0.1,
    }
}

/// `n` long requests arriving together at `at`: minutes of decoding, so
/// they are still running when the slowest scrape comes.
fn step(at: f64, n: usize) -> Vec<Arrival> {
    (0..n)
        .map(|_| Arrival {
            at,
            prompt_tokens: 200,
            output_tokens: 20_000,
            hash_ids: Vec::new(),
        })
        .collect()
}

fn go(c: &SimConfig, arrivals: &[Arrival], mut controller: Controller) -> RunResult {
    run(c, arrivals, &mut controller, &mut |_| {}).unwrap()
}

fn prom(label: &str) -> Controller {
    scenario::build(label, &ctx(), &BTreeMap::new()).unwrap()
}

/// The first time `t ≥ from` on the grid `first + k × period`.
fn next_on_grid(first: f64, period: f64, from: f64) -> f64 {
    first + ((from - first) / period).ceil().max(0.0) * period
}

#[test]
fn a_scrape_interval_longer_than_the_load_step_delays_the_first_decision_by_the_arithmetic() {
    let load_at = 100.0;
    let arrivals = step(load_at, 20);
    for (seed, scrape) in [(1, 60.0), (2, 60.0), (3, 45.0), (2, 5.0)] {
        let c = config(seed);
        let result = go(
            &c,
            &arrivals,
            prom(&format!(
                "prom[query=sum(vllm:num_requests_running);threshold=2;scrape={scrape}]"
            )),
        );
        // The one pod's scrapes fall on its phase; the first that sees the
        // step is the first at or after it. The HPA syncs every 15 s from
        // 15.001 s and decides at its first sync after that scrape.
        let phase = tsdb::phase(seed, 0, scrape);
        let scraped = next_on_grid(phase, scrape, load_at);
        assert!(
            scraped > load_at + 0.5,
            "seed {seed}: a scrape {:.3} s after the step; pick a seed whose phase leaves the engine time to admit it",
            scraped - load_at
        );
        let decided = next_on_grid(c.hpa_sync_s + 0.001, c.hpa_sync_s, scraped);
        if scrape > c.hpa_sync_s {
            // The scrape, not the HPA, is what made it late: 35, 50 and
            // 35 s here against 5 s for the 5 s scrape.
            assert!(decided > next_on_grid(c.hpa_sync_s + 0.001, c.hpa_sync_s, load_at) + 1.0);
        }
        let first = result
            .changes
            .first()
            .unwrap_or_else(|| panic!("seed {seed}, scrape {scrape} s: the step scales up"));
        assert!(
            (first.at - decided).abs() < 1e-6,
            "seed {seed}, scrape {scrape} s: first decision at {:.3} s, the arithmetic says {decided:.3} s (scrape at {scraped:.3} s)",
            first.at
        );
        // 20 requests, target 2 per replica: 10 wanted, and the HPA's
        // default scale-up limit (4 pods or 100 % per 15 s) allows 5.
        assert_eq!((first.from, first.to), (1, 5));
        assert!(!result.metric_issues.any(), "{:?}", result.metric_issues);
    }
}

#[test]
fn the_bare_query_of_seed_002_returns_a_series_per_pod_and_the_hpa_holds() {
    let manifest = include_str!("../../../../examples/seeds/kserve-keda-prometheus.yaml");
    let k = crate::manifest::parse_any(manifest, 120.0, &KServeAutoscaler::default()).unwrap();
    let summed = crate::manifest::parse_any(
        &manifest.replace(
            "query: vllm:num_requests_running",
            "query: sum(vllm:num_requests_running)",
        ),
        120.0,
        &KServeAutoscaler::default(),
    )
    .unwrap();
    let mut c = config(1);
    // Long enough after the load for KServe's 300 s scale-down window.
    c.tail_s = 900.0;
    let arrivals = step(30.0, 12);
    let bare = go(&c, &arrivals, Controller::Keda(Box::new(k)));
    let sum = go(&c, &arrivals, Controller::Keda(Box::new(summed)));
    // One pod: one series, and the HPA scales up on it.
    let up = bare
        .changes
        .first()
        .expect("scales up while one pod answers");
    assert_eq!(up.from, 1);
    assert!(up.to > 1);
    // Then every pod is a series: KEDA refuses the query from then on,
    // the HPA gets no metric and holds, long after the load is gone.
    let i = bare.metric_issues;
    assert!(i.several_series > 0 && i.most_series >= 2, "{i:?}");
    assert!(i.hpa_syncs_without_metric > 0, "{i:?}");
    assert_eq!(bare.changes.len(), 1, "{:?}", bare.changes);
    assert_eq!(bare.timeline.last().unwrap().spec, up.to);
    // The same service with the query summed scales back to 1.
    assert!(!sum.metric_issues.any(), "{:?}", sum.metric_issues);
    assert_eq!(sum.timeline.last().unwrap().spec, 1);
    assert!(sum.changes.len() >= 2, "{:?}", sum.changes);
}

#[test]
fn a_deleted_pod_stops_counting_once_its_series_are_stale() {
    // Two pods with 4 running each; one is deleted at 60 s: its requests
    // stay in the sum until its staleness markers are written.
    let mut db = tsdb::Tsdb::new(10.0, 0.0, "default", "lab", 4);
    let mut v = [0.0; tsdb::SERIES_PER_TARGET];
    v[tsdb::RUNNING] = 4.0;
    let q = crate::prom::Query::compile("sum(vllm:num_requests_running)").unwrap();
    let sum_at = |db: &tsdb::Tsdb, t: f64| match q.eval(db, t).unwrap() {
        crate::prom::promql::Value::Vector(v) => v.first().map(|e| e.value),
        _ => None,
    };
    for pod in 0..2 {
        let mut t = db.next_scrape(pod, 0.0);
        while t < 60.0 {
            db.append(pod, t, v);
            t += 10.0;
        }
    }
    assert_eq!(sum_at(&db, 60.0), Some(8.0));
    db.target_gone(1, 60.0);
    let marker = db.next_scrape(1, 60.0001);
    assert_eq!(
        sum_at(&db, marker + 10.0),
        Some(8.0),
        "markers not written yet"
    );
    assert_eq!(sum_at(&db, marker + 11.0), Some(4.0), "stale from then on");
}
