//! A policy that re-derives its state from history, run the way the live
//! loop runs it: exports every 5 s, the HPA asking every 5 s, the compacted
//! history one point per 15 s. `stable-panic` must stay in panic for its
//! stable window after a step, even though the evaluations that first saw
//! the burst are not history points.

use aim_scaler::history::{History, HistoryConfig};
use aim_scaler::labels::LabelSet;
use aim_scaler::store::{
    NANOS_PER_SECOND, Nanos, PointData, ScalarPoint, SeriesKind, Store, StoreConfig,
};
use aim_scaler::trigger::Trigger;
use std::collections::BTreeMap;
use std::time::Duration;

const S: Nanos = NANOS_PER_SECOND;
const T0: Nanos = 1_700_006_400 * S;

#[test]
fn stable_panic_holds_panic_through_its_stable_window_after_a_step() {
    let store = Store::new(StoreConfig {
        retention: 300 * S,
        freshness: 15 * S,
        max_series: 16,
        max_points_per_series: 1024,
    });
    let history = History::new(HistoryConfig {
        max_age: aim_scaler::history::DEFAULT_MAX_AGE,
        max_queries: 16,
        idle: 3600 * S,
        retention: 300 * S,
        raw_since: 0,
    });
    let metadata: BTreeMap<String, String> = [
        (
            "metricQuery",
            r#"sum(vllm:num_requests_running{deployment="chat"})"#,
        ),
        ("targetValue", "1"),
        ("operationOverTime", "avg"),
        ("window", "10s"),
        ("policy", "stable-panic"),
        ("stableWindow", "60s"),
        ("panicWindow", "10s"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let trigger = Trigger::parse(metadata, Duration::from_secs(10)).unwrap();
    // Idle for two minutes on one pod, then 4 requests in flight for 30 s
    // (spread over the pods the HPA asked for, which start 5 s after it
    // does), then nothing.
    let step = T0 + 127 * S;
    let stop = step + 30 * S;
    let mut pods = 1usize;
    let mut modes = Vec::new();
    let mut t = T0;
    while t <= stop + 90 * S {
        let load = if (step..stop).contains(&t) { 4.0 } else { 0.0 };
        for p in 0..pods {
            store.append(
                "vllm:num_requests_running",
                LabelSet::from_pairs([("deployment", "chat"), ("pod", &format!("p{p}"))]),
                &SeriesKind::Gauge,
                PointData::Scalar(ScalarPoint {
                    time: t,
                    start: 0,
                    value: load / pods as f64,
                }),
                t,
            );
        }
        history.record_all(&store, t);
        let answer = trigger
            .evaluate_with_history(&store, Some(&history), t)
            .unwrap();
        let asked = aim_policy::replicas_asked(answer.value, trigger.target).max(1) as usize;
        modes.push(((t as f64 - step as f64) / 1e9, answer.mode, asked));
        // New pods report from the next export on.
        pods = asked;
        t += 5 * S;
    }
    for (at, mode, asked) in &modes {
        println!("{at:+6.0} s  {mode:?}  asks {asked}");
    }
    let panic_from = modes
        .iter()
        .find(|(_, m, _)| *m == Some("panic"))
        .map(|(at, _, _)| *at)
        .expect("panic on the step");
    assert!(panic_from <= 10.0, "panic {panic_from} s after the step");
    // Panic lasts a stable window from the burst, and once it has asked
    // for 4 (twice the replicas per decision) it never asks for fewer.
    let four_at = modes
        .iter()
        .find(|(_, _, asked)| *asked >= 4)
        .map(|(at, _, _)| *at)
        .expect("asks for 4");
    for (at, mode, asked) in &modes {
        if *at >= panic_from && *at < panic_from + 55.0 {
            assert_eq!(*mode, Some("panic"), "at {at:+} s");
        }
        if *at >= four_at && *at < panic_from + 55.0 {
            assert!(*asked >= 4, "at {at:+} s it asks {asked}");
        }
    }
    let (_, last_mode, last_asked) = modes.last().unwrap();
    assert_eq!((*last_mode, *last_asked), (Some("stable"), 1));
}
