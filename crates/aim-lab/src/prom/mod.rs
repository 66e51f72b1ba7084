//! The Prometheus path: pods → Prometheus scrapes → a KEDA `prometheus`
//! trigger's PromQL query, evaluated as an instant query whenever KEDA
//! asks (every HPA sync through its metrics server, every
//! `pollingInterval` for activation).
//!
//! KEDA's prometheus scaler (v2.18, `pkg/scalers/prometheus_scaler.go`)
//! reads the query's result as follows, and so does the lab:
//! * no series: 0 when `ignoreNullValues` is true (the default), else an
//!   error;
//! * more than one series: an error ("returned multiple elements"), so the
//!   HPA gets no metric and holds its replicas;
//! * an infinite value: 0 with `ignoreNullValues`, else an error; NaN is
//!   passed on (the HPA reads it as a huge negative number and drops to its
//!   minimum);
//! * activation is the value strictly above `activationThreshold`;
//! * the target is `threshold`, `AverageValue` unless the trigger sets
//!   `metricType`.

pub mod promql;
pub mod tsdb;

#[cfg(test)]
mod loop_tests;

use std::collections::BTreeMap;

pub use promql::Query;
pub use tsdb::Tsdb;

/// How the lab runs Prometheus for a controller whose triggers query it.
#[derive(Debug, Clone, PartialEq)]
pub struct PromSetup {
    /// The scrape interval; `None` takes the run's `--scrape-interval`.
    pub scrape_interval_s: Option<f64>,
    /// The `namespace` label of the pods' series.
    pub namespace: String,
    /// Their `isvc` label (the chart's PodMonitor copies KServe's
    /// `serving.kserve.io/inferenceservice` pod label into it); `None` for
    /// pods that belong to no InferenceService.
    pub isvc: Option<String>,
    /// Pod `i` is named `<pod_prefix>-<i>` (its `pod` label).
    pub pod_prefix: String,
}

/// A trigger KEDA's prometheus scaler serves.
#[derive(Debug, Clone)]
pub struct PromTrigger {
    pub query: Query,
    pub ignore_null_values: bool,
}

/// Why KEDA could not read a trigger's query.
#[derive(Debug, Clone, PartialEq)]
pub enum ReadError {
    /// The query returned this many series.
    Several(usize),
    /// No series, with `ignoreNullValues: false`.
    Empty,
    /// An infinite value, with `ignoreNullValues: false`.
    Infinite,
    /// Prometheus refused the query on this data.
    Query(String),
}

/// One read: the value KEDA hands on (or why it could not), and how many
/// series the query returned (0 with a value is an empty result read as 0).
#[derive(Debug, Clone, PartialEq)]
pub struct Read {
    pub value: Result<f64, ReadError>,
    pub series: usize,
}

impl PromTrigger {
    /// Builds the trigger from a `type: prometheus` trigger's metadata.
    /// Errors name the key (under `path`, e.g. `spec.triggers[0]`) and say
    /// what to write.
    pub fn from_metadata(
        metadata: &BTreeMap<String, String>,
        path: &str,
    ) -> Result<PromTrigger, (String, String)> {
        let key = |k: &str| format!("{path}.metadata.{k}");
        for required in ["serverAddress", "query", "threshold"] {
            if metadata.get(required).is_none_or(|v| v.trim().is_empty()) {
                return Err((
                    key(required),
                    format!("KEDA's prometheus trigger needs {required}"),
                ));
            }
        }
        let text = metadata["query"].trim();
        let query = Query::compile(text).map_err(|e| (key("query"), e))?;
        let ignore_null_values = match metadata.get("ignoreNullValues").map(|v| v.trim()) {
            None | Some("") => true,
            Some(v) => parse_go_bool(v).ok_or_else(|| {
                (
                    key("ignoreNullValues"),
                    format!("{v:?} is not a boolean: write true or false"),
                )
            })?,
        };
        Ok(PromTrigger {
            query,
            ignore_null_values,
        })
    }

    /// What KEDA's scaler makes of the query at `t`.
    pub fn read(&self, db: &Tsdb, t: f64) -> Read {
        let result = match self.query.eval(db, t) {
            Ok(promql::Value::Vector(v)) => v,
            // Refused when the trigger was built.
            Ok(promql::Value::Scalar(_)) => {
                return Read {
                    value: Err(ReadError::Query("a scalar result".into())),
                    series: 0,
                };
            }
            Err(e) => {
                return Read {
                    value: Err(ReadError::Query(e)),
                    series: 0,
                };
            }
        };
        let series = result.len();
        let value = match result[..] {
            [] if self.ignore_null_values => Ok(0.0),
            [] => Err(ReadError::Empty),
            [one] if one.value.is_infinite() => {
                if self.ignore_null_values {
                    Ok(0.0)
                } else {
                    Err(ReadError::Infinite)
                }
            }
            [one] => Ok(one.value),
            _ => Err(ReadError::Several(series)),
        };
        Read { value, series }
    }
}

/// Go's `strconv.ParseBool`, which KEDA's typed metadata uses.
fn parse_go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// What went wrong with a run's Prometheus queries in the scored episode:
/// the figures behind a row's warning.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct MetricIssues {
    /// Queries KEDA ran (HPA syncs and polls, every Prometheus trigger).
    pub queries: u32,
    /// Queries that returned several series (a KEDA error).
    pub several_series: u32,
    /// The most series one query returned.
    pub most_series: u32,
    /// Queries that returned no series (0 with `ignoreNullValues`, else
    /// an error).
    pub empty: u32,
    /// Other errors: infinite values without `ignoreNullValues`, a query
    /// Prometheus refused on the data.
    pub other_errors: u32,
    /// NaN values handed on.
    pub nan: u32,
    /// HPA syncs, and those at which some trigger gave the HPA no metric.
    pub hpa_syncs: u32,
    pub hpa_syncs_without_metric: u32,
}

impl MetricIssues {
    pub fn any(&self) -> bool {
        self.several_series + self.empty + self.other_errors + self.nan > 0
            || self.hpa_syncs_without_metric > 0
    }

    pub fn count(&mut self, read: &Read) {
        self.queries += 1;
        self.most_series = self.most_series.max(read.series as u32);
        match &read.value {
            Err(ReadError::Several(_)) => self.several_series += 1,
            Err(ReadError::Empty) => self.empty += 1,
            Ok(_) if read.series == 0 => self.empty += 1,
            Ok(v) if v.is_nan() => self.nan += 1,
            Ok(_) => {}
            Err(_) => self.other_errors += 1,
        }
    }

    pub fn add(&mut self, other: &MetricIssues) {
        self.queries += other.queries;
        self.several_series += other.several_series;
        self.most_series = self.most_series.max(other.most_series);
        self.empty += other.empty;
        self.other_errors += other.other_errors;
        self.nan += other.nan;
        self.hpa_syncs += other.hpa_syncs;
        self.hpa_syncs_without_metric += other.hpa_syncs_without_metric;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tsdb::{RUNNING, SERIES_PER_TARGET};

    fn meta(query: &str) -> BTreeMap<String, String> {
        [
            ("serverAddress", "http://prometheus:9090"),
            ("query", query),
            ("threshold", "2"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    fn running(v: f64) -> tsdb::Values {
        let mut values = [0.0; SERIES_PER_TARGET];
        values[RUNNING] = v;
        values
    }

    #[test]
    fn several_series_are_kedas_error_and_none_read_as_zero() {
        let bare =
            PromTrigger::from_metadata(&meta("vllm:num_requests_running"), "spec.triggers[0]")
                .unwrap();
        let summed =
            PromTrigger::from_metadata(&meta("sum(vllm:num_requests_running)"), "spec.triggers[0]")
                .unwrap();
        let mut db = Tsdb::new(15.0, 0.0, "default", "lab", 1);
        // No scrape yet: empty, read as 0.
        assert_eq!(bare.read(&db, 1.0).value, Ok(0.0));
        db.append(0, 5.0, running(3.0));
        assert_eq!(bare.read(&db, 6.0).value, Ok(3.0));
        db.append(1, 7.0, running(4.0));
        let read = bare.read(&db, 8.0);
        assert_eq!((read.value, read.series), (Err(ReadError::Several(2)), 2));
        assert_eq!(summed.read(&db, 8.0).value, Ok(7.0));
        let mut issues = MetricIssues::default();
        issues.count(&bare.read(&db, 8.0));
        issues.count(&bare.read(&db, 1.0));
        assert_eq!((issues.several_series, issues.most_series), (1, 2));
        // Strict: an empty result is an error.
        let mut strict = meta("sum(vllm:num_requests_running)");
        strict.insert("ignoreNullValues".into(), "false".into());
        let strict = PromTrigger::from_metadata(&strict, "spec.triggers[0]").unwrap();
        let empty = Tsdb::new(15.0, 0.0, "default", "lab", 1);
        assert_eq!(strict.read(&empty, 1.0).value, Err(ReadError::Empty));
        // Infinity: 0 by default, an error when strict.
        let inf =
            PromTrigger::from_metadata(&meta("sum(vllm:num_requests_running) / 0"), "x").unwrap();
        assert_eq!(inf.read(&db, 8.0).value, Ok(0.0));
    }

    #[test]
    fn bad_trigger_metadata_names_the_key() {
        let mut m = meta("sum(vllm:num_requests_waiting)");
        m.remove("threshold");
        let (field, why) = PromTrigger::from_metadata(&m, "spec.triggers[0]").unwrap_err();
        assert_eq!(field, "spec.triggers[0].metadata.threshold");
        assert!(why.contains("threshold"), "{why}");
        let (field, why) = PromTrigger::from_metadata(
            &meta("sum by (pod) (vllm:num_requests_waiting)"),
            "spec.triggers[0]",
        )
        .unwrap_err();
        assert_eq!(field, "spec.triggers[0].metadata.query");
        assert!(
            why.contains("grouping") && why.contains("sum, avg"),
            "{why}"
        );
        let mut m = meta("sum(vllm:num_requests_waiting)");
        m.insert("ignoreNullValues".into(), "maybe".into());
        let (field, _) = PromTrigger::from_metadata(&m, "spec.triggers[1]").unwrap_err();
        assert_eq!(field, "spec.triggers[1].metadata.ignoreNullValues");
        let mut m = meta("sum(vllm:num_requests_waiting)");
        m.remove("serverAddress");
        let (field, _) = PromTrigger::from_metadata(&m, "spec.triggers[0]").unwrap_err();
        assert_eq!(field, "spec.triggers[0].metadata.serverAddress");
    }
}
