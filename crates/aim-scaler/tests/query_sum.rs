//! Sums of aggregates: `sum(a) + sum(b)`, each term evaluated with the
//! trigger's operationOverTime and window, the values added, and missing
//! data in any term meaning missing data for the whole query.

use aim_scaler::labels::LabelSet;
use aim_scaler::query::{EvalError, EvalRequest, Operation, evaluate, parse_query};
use aim_scaler::store::{
    NANOS_PER_SECOND, Nanos, PointData, ScalarPoint, SeriesKind, Store, StoreConfig,
};
use aim_scaler::trigger::Trigger;
use std::collections::BTreeMap;
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

/// One gauge point every 10 s from T0 for `pod` of deployment `d`.
fn gauge(store: &Store, name: &str, pod: &str, values: &[f64]) {
    let labels = LabelSet::from_pairs([("namespace", "ns"), ("deployment", "d"), ("pod", pod)]);
    for (i, &value) in values.iter().enumerate() {
        let time = T0 + i as u64 * 10 * S;
        store.append(
            name,
            labels.clone(),
            &SeriesKind::Gauge,
            PointData::Scalar(ScalarPoint {
                time,
                start: 0,
                value,
            }),
            time,
        );
    }
}

fn eval(store: &Store, query: &str, operation: Operation, now: Nanos) -> Result<f64, EvalError> {
    let query = parse_query(query).unwrap();
    evaluate(
        store,
        &EvalRequest {
            query: &query,
            operation,
            window: 60 * S,
            now,
            quantile: None,
        },
    )
    .map(|e| e.value)
}

#[test]
fn terms_are_evaluated_with_the_same_operation_and_added() {
    let store = store();
    gauge(&store, "vllm:num_requests_running", "a", &[1., 3.]);
    gauge(&store, "vllm:num_requests_running", "b", &[2., 2.]);
    gauge(&store, "vllm:num_requests_waiting", "a", &[0., 4.]);
    let now = T0 + 10 * S;
    let query = r#"sum(vllm:num_requests_running{namespace="ns", deployment="d"}) + sum(vllm:num_requests_waiting{namespace="ns", deployment="d"})"#;
    // last_one: (3 + 2) + 4.
    assert_eq!(eval(&store, query, Operation::LastOne, now).unwrap(), 9.0);
    // avg per series over the window, then each term's sum: (2 + 2) + 2.
    assert_eq!(eval(&store, query, Operation::Avg, now).unwrap(), 6.0);
    // Each term keeps its own aggregation.
    let mixed = "max(vllm:num_requests_running) + count(vllm:num_requests_running) + vllm:num_requests_waiting";
    assert_eq!(
        eval(&store, mixed, Operation::LastOne, now).unwrap(),
        3.0 + 2.0 + 4.0
    );
}

#[test]
fn missing_data_in_any_term_is_missing_data() {
    let store = store();
    gauge(&store, "vllm:num_requests_running", "a", &[1.]);
    let query = "sum(vllm:num_requests_running) + sum(vllm:num_requests_waiting)";
    let err = eval(&store, query, Operation::LastOne, T0).unwrap_err();
    assert!(
        matches!(err, EvalError::UnknownMetric { ref metric } if metric == "vllm:num_requests_waiting")
    );
    assert!(err.is_missing_data());
    // A term whose labels match nothing is missing data too.
    gauge(&store, "vllm:num_requests_waiting", "a", &[1.]);
    let err = eval(
        &store,
        r#"sum(vllm:num_requests_running) + sum(vllm:num_requests_waiting{deployment="other"})"#,
        Operation::LastOne,
        T0,
    )
    .unwrap_err();
    assert!(matches!(err, EvalError::NoMatchingSeries { fresh: 1, .. }));

    // Through a trigger, valueIfMissing stands in for the whole sum.
    let metadata: BTreeMap<String, String> = [
        ("metricQuery", query),
        ("targetValue", "1"),
        ("valueIfMissing", "7"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let trigger = Trigger::parse(metadata, Duration::from_secs(60)).unwrap();
    let fresh_store = store_with_running_only();
    assert_eq!(trigger.evaluate(&fresh_store, T0).unwrap().value, 7.0);
    assert_eq!(trigger.evaluate(&store, T0).unwrap().value, 2.0);
}

fn store_with_running_only() -> Store {
    let store = store();
    gauge(&store, "vllm:num_requests_running", "a", &[5.]);
    store
}

#[test]
fn series_count_is_the_largest_term_not_the_total() {
    let store = store();
    for pod in ["a", "b", "c"] {
        gauge(&store, "running", pod, &[1.]);
    }
    gauge(&store, "waiting", "a", &[1.]);
    let query = parse_query("sum(running) + sum(waiting)").unwrap();
    let evaluation = evaluate(
        &store,
        &EvalRequest {
            query: &query,
            operation: Operation::LastOne,
            window: 60 * S,
            now: T0,
            quantile: None,
        },
    )
    .unwrap();
    assert_eq!(evaluation.value, 4.0);
    assert_eq!(evaluation.series, 3);
}
