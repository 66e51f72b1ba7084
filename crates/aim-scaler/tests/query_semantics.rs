//! operationOverTime and aggregation semantics over the store, for
//! counters, gauges and histograms: resets, stale pods, missing labels.

use aim_scaler::labels::LabelSet;
use aim_scaler::query::{EvalError, EvalRequest, Operation, evaluate, parse_query};
use aim_scaler::store::{
    DistributionPoint, NANOS_PER_SECOND, Nanos, PointData, ScalarPoint, SeriesKind, Store,
    StoreConfig, Temporality,
};
use aim_scaler::trigger::Trigger;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const S: Nanos = NANOS_PER_SECOND;
const T0: Nanos = 1_700_000_000 * S;

fn store() -> Store {
    Store::new(StoreConfig {
        retention: 600 * S,
        freshness: 15 * S,
        max_series: 1000,
        max_points_per_series: 1000,
    })
}

fn labels(pod: &str, deployment: Option<&str>) -> LabelSet {
    let mut pairs = vec![("namespace", "ns"), ("pod", pod)];
    if let Some(d) = deployment {
        pairs.push(("deployment", d));
    }
    LabelSet::from_pairs(pairs)
}

const COUNTER: SeriesKind = SeriesKind::Sum {
    temporality: Temporality::Cumulative,
    monotonic: true,
};

/// Points every 10 s starting at T0, received as they are made.
fn push_scalars(store: &Store, name: &str, kind: &SeriesKind, labels: &LabelSet, values: &[f64]) {
    for (i, &value) in values.iter().enumerate() {
        let time = T0 + i as u64 * 10 * S;
        store.append(
            name,
            labels.clone(),
            kind,
            PointData::Scalar(ScalarPoint {
                time,
                start: 0,
                value,
            }),
            time,
        );
    }
}

fn eval(
    store: &Store,
    query: &str,
    op: Operation,
    window_s: u64,
    now: Nanos,
) -> Result<f64, EvalError> {
    let query = parse_query(query).unwrap();
    evaluate(
        store,
        &EvalRequest {
            query: &query,
            operation: op,
            window: window_s * S,
            now,
            quantile: None,
        },
    )
    .map(|e| e.value)
}

#[test]
fn counter_operations_with_reset_across_two_pods() {
    let store = store();
    let dep = Some("d");
    // Pod a resets between 10 and 0.
    push_scalars(
        &store,
        "req_total",
        &COUNTER,
        &labels("a", dep),
        &[1., 3., 4., 6., 7., 9., 10., 0., 1.],
    );
    push_scalars(
        &store,
        "req_total",
        &COUNTER,
        &labels("b", dep),
        &[0., 8., 16., 24., 32., 40., 48., 56., 64.],
    );
    let now = T0 + 80 * S;
    let q = r#"sum(req_total{namespace="ns", deployment="d"})"#;
    assert_eq!(
        eval(&store, q, Operation::Rate, 120, now).unwrap(),
        0.125 + 0.8
    );
    assert_eq!(
        eval(&store, q, Operation::LastOne, 120, now).unwrap(),
        1.0 + 64.0
    );
    assert_eq!(eval(&store, q, Operation::Count, 120, now).unwrap(), 18.0);
    assert_eq!(
        eval(&store, q, Operation::Max, 120, now).unwrap(),
        10.0 + 64.0
    );
    assert_eq!(
        eval(&store, q, Operation::Min, 120, now).unwrap(),
        0.0 + 0.0
    );
    // The window is cut at query time: last 25 s hold points at 60, 70, 80.
    assert_eq!(eval(&store, q, Operation::Count, 25, now).unwrap(), 6.0);
    // a: 10 -> 0 (reset counts 0) -> 1 = 1 over 20 s; b: 16 over 20 s.
    assert_eq!(
        eval(&store, q, Operation::Rate, 25, now).unwrap(),
        1.0 / 20.0 + 16.0 / 20.0
    );
    assert_eq!(
        eval(&store, &q.replace("sum", "count"), Operation::Rate, 25, now).unwrap(),
        2.0
    );
    assert_eq!(
        eval(&store, &q.replace("sum", "max"), Operation::Rate, 25, now).unwrap(),
        0.8
    );
    assert_eq!(
        eval(&store, &q.replace("sum", "min"), Operation::Rate, 25, now).unwrap(),
        0.05
    );
    assert_eq!(
        eval(
            &store,
            &q.replace("sum", "avg"),
            Operation::LastOne,
            25,
            now
        )
        .unwrap(),
        32.5
    );
}

#[test]
fn gauge_operations_and_negative_values() {
    let store = store();
    push_scalars(
        &store,
        "vllm:num_requests_running",
        &SeriesKind::Gauge,
        &labels("a", Some("d")),
        &[2., 6., 4.],
    );
    push_scalars(
        &store,
        "vllm:num_requests_running",
        &SeriesKind::Gauge,
        &labels("b", Some("d")),
        &[-1., -3., -2.],
    );
    let now = T0 + 20 * S;
    let q = r#"sum(vllm:num_requests_running{deployment="d"})"#;
    assert_eq!(
        eval(&store, q, Operation::LastOne, 120, now).unwrap(),
        4.0 - 2.0
    );
    assert_eq!(
        eval(&store, q, Operation::Avg, 120, now).unwrap(),
        4.0 - 2.0
    );
    assert_eq!(
        eval(&store, q, Operation::Max, 120, now).unwrap(),
        6.0 - 1.0
    );
    assert_eq!(
        eval(&store, q, Operation::Min, 120, now).unwrap(),
        2.0 - 3.0
    );
    assert_eq!(eval(&store, q, Operation::Count, 120, now).unwrap(), 6.0);
}

#[test]
fn delta_sum_rate_sums_the_deltas() {
    let store = store();
    let delta = SeriesKind::Sum {
        temporality: Temporality::Delta,
        monotonic: true,
    };
    for i in 0..4u64 {
        let time = T0 + i * 5 * S;
        let point = ScalarPoint {
            time,
            start: time - 5 * S,
            value: (i + 1) as f64,
        };
        store.append(
            "gateway_requests",
            labels("a", None),
            &delta,
            PointData::Scalar(point),
            time,
        );
    }
    let now = T0 + 15 * S;
    // 1+2+3+4 over the 20 s the four intervals cover.
    assert_eq!(
        eval(&store, "gateway_requests", Operation::Rate, 120, now).unwrap(),
        0.5
    );
    // AIM's activation trigger: avg of deltas per scrape.
    assert_eq!(
        eval(&store, "gateway_requests", Operation::Avg, 120, now).unwrap(),
        2.5
    );
}

#[test]
fn dead_pod_stops_counting_after_freshness_not_retention() {
    let store = store();
    push_scalars(
        &store,
        "g",
        &SeriesKind::Gauge,
        &labels("alive", Some("d")),
        &[1., 1., 1., 1., 1., 1.],
    );
    push_scalars(
        &store,
        "g",
        &SeriesKind::Gauge,
        &labels("dead", Some("d")),
        &[5.],
    );
    // 'dead' reported once at T0; at T0+15 s it still counts, after that not.
    assert_eq!(
        eval(&store, "g", Operation::LastOne, 120, T0 + 15 * S).unwrap(),
        6.0
    );
    assert_eq!(
        eval(&store, "g", Operation::LastOne, 120, T0 + 16 * S).unwrap(),
        1.0
    );
    // When every pod is gone the answer is an error, not a silent 0.
    assert!(matches!(
        eval(&store, "g", Operation::LastOne, 120, T0 + 200 * S),
        Err(EvalError::AllSeriesStale { .. })
    ));
}

#[test]
fn series_missing_a_queried_label_do_not_match() {
    let store = store();
    push_scalars(
        &store,
        "g",
        &SeriesKind::Gauge,
        &labels("a", Some("mine")),
        &[1.],
    );
    push_scalars(
        &store,
        "g",
        &SeriesKind::Gauge,
        &labels("b", Some("other")),
        &[10.],
    );
    // No deployment label at all: otel-add-on would count it for any deployment.
    push_scalars(&store, "g", &SeriesKind::Gauge, &labels("c", None), &[100.]);
    let now = T0;
    assert_eq!(
        eval(
            &store,
            r#"sum(g{deployment="mine"})"#,
            Operation::LastOne,
            60,
            now
        )
        .unwrap(),
        1.0
    );
    assert_eq!(
        eval(
            &store,
            r#"sum(g{deployment!="mine"})"#,
            Operation::LastOne,
            60,
            now
        )
        .unwrap(),
        10.0
    );
    assert_eq!(
        eval(
            &store,
            r#"sum(g{deployment=~"m.*|o.*"})"#,
            Operation::LastOne,
            60,
            now
        )
        .unwrap(),
        11.0
    );
    assert_eq!(
        eval(
            &store,
            r#"sum(g{deployment!~"m.*"})"#,
            Operation::LastOne,
            60,
            now
        )
        .unwrap(),
        10.0
    );
    assert_eq!(
        eval(&store, "sum(g)", Operation::LastOne, 60, now).unwrap(),
        111.0
    );
    assert!(matches!(
        eval(
            &store,
            r#"sum(g{deployment="none"})"#,
            Operation::LastOne,
            60,
            now
        ),
        Err(EvalError::NoMatchingSeries { fresh: 3, .. })
    ));
    assert!(matches!(
        eval(&store, "sum(unknown)", Operation::LastOne, 60, now),
        Err(EvalError::UnknownMetric { .. })
    ));
}

#[test]
fn series_without_points_in_the_window_is_an_error() {
    let store = store();
    // Fresh (received now) but timestamped 100 s ago by a lagging exporter.
    let point = ScalarPoint {
        time: T0 - 100 * S,
        start: 0,
        value: 3.0,
    };
    store.append(
        "g",
        labels("a", None),
        &SeriesKind::Gauge,
        PointData::Scalar(point),
        T0,
    );
    assert!(matches!(
        eval(&store, "g", Operation::Avg, 30, T0),
        Err(EvalError::NoSamplesInWindow { series: 1, .. })
    ));
    assert_eq!(eval(&store, "g", Operation::Avg, 120, T0).unwrap(), 3.0);
}

fn histogram_kind(temporality: Temporality) -> SeriesKind {
    SeriesKind::Histogram {
        temporality,
        bounds: Arc::from(&[0.1, 0.5, 1.0][..]),
    }
}

fn push_histogram(store: &Store, pod: &str, start: Nanos, points: &[(u64, [u64; 4])]) {
    for (seconds, buckets) in points {
        let time = T0 + seconds * S;
        let point = DistributionPoint {
            time,
            start,
            count: buckets.iter().sum::<u64>() as f64,
            sum: buckets.iter().sum::<u64>() as f64 * 0.25,
            buckets: buckets.to_vec().into_boxed_slice(),
            quantiles: Box::new([]),
        };
        store.append(
            "vllm:time_to_first_token_seconds",
            labels(pod, Some("d")),
            &histogram_kind(Temporality::Cumulative),
            PointData::Distribution(point),
            time,
        );
    }
}

#[test]
fn histogram_quantile_and_components() {
    let store = store();
    // Pod a: old observations fast, new ones (inside the window) slow.
    push_histogram(
        &store,
        "a",
        T0 - 1000 * S,
        &[
            (0, [100, 0, 0, 0]),
            (10, [100, 0, 10, 0]),
            (20, [100, 0, 20, 0]),
        ],
    );
    // Pod b restarts between 10 and 20 (new start time, counts drop).
    push_histogram(
        &store,
        "b",
        T0 - 1000 * S,
        &[(0, [0, 50, 0, 0]), (10, [0, 60, 0, 0])],
    );
    push_histogram(&store, "b", T0 + 15 * S, &[(20, [0, 5, 0, 0])]);
    let now = T0 + 20 * S;
    let name = "vllm:time_to_first_token_seconds";
    let quantile = |op: Operation, q: f64| {
        let query = parse_query(&format!(r#"sum({name}{{deployment="d"}})"#)).unwrap();
        evaluate(
            &store,
            &EvalRequest {
                query: &query,
                operation: op,
                window: 60 * S,
                now,
                quantile: Some(q),
            },
        )
    };
    // In the window: a observed 20 in (0.5,1]; b observed 10 then (reset) 5 in (0.1,0.5].
    // Rank 0.5 * 35 = 17.5 falls in (0.5,1] at (17.5 - 15)/20.
    let p50 = quantile(Operation::Rate, 0.5).unwrap().value;
    assert!((p50 - (0.5 + 0.5 * (2.5 / 20.0))).abs() < 1e-9, "{p50}");
    // last_one: a has 100 fast + 20 slow, b 5 (since restart): rank 62.5 of 125 in the first bucket.
    let p50_total = quantile(Operation::LastOne, 0.5).unwrap().value;
    assert!((p50_total - 0.1 * 62.5 / 100.0).abs() < 1e-9, "{p50_total}");
    assert!(matches!(
        quantile(Operation::Avg, 0.5),
        Err(EvalError::WrongKind { .. })
    ));

    // otel-add-on's `_count` / `_sum` names still work, with every operation.
    let count_q = format!(r#"sum({name}_count{{deployment="d"}})"#);
    assert_eq!(
        eval(&store, &count_q, Operation::LastOne, 60, now).unwrap(),
        120.0 + 5.0
    );
    assert_eq!(
        eval(&store, &count_q, Operation::Rate, 60, now).unwrap(),
        1.0 + (10.0 + 5.0) / 20.0
    );
    assert_eq!(
        eval(&store, &count_q, Operation::Max, 60, now).unwrap(),
        120.0 + 60.0
    );
    assert_eq!(
        eval(&store, &count_q, Operation::Min, 60, now).unwrap(),
        100.0 + 5.0
    );
    assert_eq!(
        eval(&store, &count_q, Operation::Count, 60, now).unwrap(),
        6.0
    );
    assert_eq!(
        eval(&store, &count_q, Operation::Avg, 60, now).unwrap(),
        110.0 + 115.0 / 3.0
    );
    let sum_q = format!(r#"max({name}_sum{{deployment="d"}})"#);
    assert_eq!(
        eval(&store, &sum_q, Operation::LastOne, 60, now).unwrap(),
        120.0 * 0.25
    );
    // The bare histogram name without a quantile says what to do.
    let err = eval(&store, name, Operation::LastOne, 60, now).unwrap_err();
    assert!(err.to_string().contains("_count"), "{err}");
}

#[test]
fn missing_data_is_an_error_unless_the_trigger_asks_for_a_value() {
    let store = store();
    let metadata = |extra: &[(&str, &str)]| -> BTreeMap<String, String> {
        [
            ("metricQuery", "sum(nothing{namespace=\"ns\"})"),
            ("targetValue", "1"),
        ]
        .iter()
        .chain(extra)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    };
    let strict = Trigger::parse(metadata(&[]), Duration::from_secs(120)).unwrap();
    assert!(strict.evaluate(&store, T0).is_err());
    let lenient = Trigger::parse(
        metadata(&[("valueIfMissing", "0")]),
        Duration::from_secs(120),
    )
    .unwrap();
    let value = lenient.evaluate(&store, T0).unwrap();
    assert_eq!((value.value, value.active, value.series), (0.0, false, 0));
}

#[test]
fn trigger_clamps_and_activation_threshold() {
    let store = store();
    push_scalars(&store, "g", &SeriesKind::Gauge, &labels("a", None), &[3.0]);
    let trigger = |pairs: &[(&str, &str)]| {
        let metadata = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Trigger::parse(metadata, Duration::from_secs(120))
            .unwrap()
            .evaluate(&store, T0)
            .unwrap()
    };
    let base = [("metricQuery", "g"), ("targetValue", "1")];
    assert_eq!(trigger(&base).value, 3.0);
    assert!(trigger(&base).active);
    let with = |extra: (&'static str, &'static str)| {
        let mut pairs = base.to_vec();
        pairs.push(extra);
        trigger(&pairs)
    };
    assert_eq!(with(("clampMax", "2.5")).value, 2.5);
    assert_eq!(with(("clampMin", "7")).value, 7.0);
    assert!(
        !with(("activationThreshold", "3")).active,
        "active means strictly above"
    );
    assert!(with(("activationThreshold", "2.9")).active);
}
