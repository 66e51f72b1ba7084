//! Evaluates a parsed query: select series, reduce each over the window,
//! combine across series.

use super::parse::{Aggregation, Query};
use super::window::{Operation, bucket_counts, quantile_from_buckets, reduce};
use crate::store::{
    DistributionPoint, NANOS_PER_SECOND, Nanos, Samples, ScalarPoint, Series, SeriesKind, Store,
};
use std::sync::Arc;

#[derive(Clone, Copy, Debug)]
pub struct EvalRequest<'a> {
    pub query: &'a Query,
    pub operation: Operation,
    /// Length of the window ending at `now`.
    pub window: Nanos,
    pub now: Nanos,
    /// Quantile from trigger metadata; the query's own wins.
    pub quantile: Option<f64>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Evaluation {
    pub value: f64,
    /// Series that contributed.
    pub series: usize,
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum EvalError {
    #[error(
        "no data for metric '{metric}': the scaler has never received it; check the collector's metric filter and exporter endpoint"
    )]
    UnknownMetric { metric: String },
    #[error("metric '{metric}' has no fresh series: every pod reporting it stopped sending")]
    AllSeriesStale { metric: String },
    #[error(
        "no series of metric '{metric}' matches {selector} ({fresh} fresh series exist; a series must carry every label the query names)"
    )]
    NoMatchingSeries {
        metric: String,
        selector: String,
        fresh: usize,
    },
    #[error(
        "metric '{metric}': {series} matching series have no points in the last {window_seconds}s window"
    )]
    NoSamplesInWindow {
        metric: String,
        series: usize,
        window_seconds: f64,
    },
    #[error("metric '{metric}': no observations in the window to compute quantile {quantile}")]
    NoObservations { metric: String, quantile: f64 },
    #[error("metric '{metric}' is a {kind}: {hint}")]
    WrongKind {
        metric: String,
        kind: &'static str,
        hint: String,
    },
    #[error(
        "metric '{metric}': series have different bucket boundaries, so their quantile cannot be combined; narrow the query to series with one layout"
    )]
    BucketLayoutMismatch { metric: String },
}

impl EvalError {
    /// True for "the data is not there", which a trigger may map to a
    /// default value; false for mistakes in the query itself.
    pub fn is_missing_data(&self) -> bool {
        matches!(
            self,
            EvalError::UnknownMetric { .. }
                | EvalError::AllSeriesStale { .. }
                | EvalError::NoMatchingSeries { .. }
                | EvalError::NoSamplesInWindow { .. }
                | EvalError::NoObservations { .. }
        )
    }
}

/// Which part of a histogram or summary a `_count`/`_sum` name refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Component {
    Whole,
    Count,
    Sum,
}

/// Evaluates every term of the query with the request's operation, window
/// and quantile, and adds the values. A term without data makes the whole
/// query miss data: a partial sum would understate demand.
///
/// Points stamped after `request.now` still count: live, that is an
/// exporter whose clock runs ahead of the scaler's. To evaluate at an
/// earlier instant, use [`evaluate_as_of`].
pub fn evaluate(store: &Store, request: &EvalRequest<'_>) -> Result<Evaluation, EvalError> {
    evaluate_until(store, request, None)
}

/// [`evaluate`] as the store would have answered at `request.now`: points
/// stamped later are left out, so an instant in the past sees the window
/// that ended then, not the newest points.
pub fn evaluate_as_of(store: &Store, request: &EvalRequest<'_>) -> Result<Evaluation, EvalError> {
    evaluate_until(store, request, Some(request.now))
}

fn evaluate_until(
    store: &Store,
    request: &EvalRequest<'_>,
    until: Option<Nanos>,
) -> Result<Evaluation, EvalError> {
    let first = evaluate_term(store, request.query, request, until)?;
    if request.query.plus.is_empty() {
        return Ok(first);
    }
    let mut total = first;
    for term in &request.query.plus {
        let next = evaluate_term(store, term, request, until)?;
        total.value += next.value;
        // The terms usually describe the same pods (running + waiting), so
        // the pods behind the sum are the most any term saw, not the total.
        total.series = total.series.max(next.series);
    }
    Ok(total)
}

fn evaluate_term(
    store: &Store,
    query: &Query,
    request: &EvalRequest<'_>,
    until: Option<Nanos>,
) -> Result<Evaluation, EvalError> {
    let quantile = query.quantile.or(request.quantile);
    let from = request.now.saturating_sub(request.window);
    let mut selection = Selection::new(quantile, until.unwrap_or(Nanos::MAX));

    let mut visit = store.select(&query.metric, &query.matchers, request.now, |_, series| {
        selection.take(series, Component::Whole, from);
    });
    let mut selected_name = query.metric.as_str();
    if !visit.known {
        // otel-add-on exposes histograms as `<name>_count` and `<name>_sum`;
        // keep those names working on top of the full histogram.
        for (suffix, component) in [("_count", Component::Count), ("_sum", Component::Sum)] {
            if let Some(base) = query.metric.strip_suffix(suffix) {
                selected_name = base;
                visit = store.select(base, &query.matchers, request.now, |_, series| {
                    if matches!(
                        series.kind,
                        SeriesKind::Histogram { .. } | SeriesKind::Summary
                    ) {
                        selection.take(series, component, from);
                    }
                });
            }
        }
    }

    let metric = query.metric.clone();
    if !visit.known {
        return Err(EvalError::UnknownMetric { metric });
    }
    if selection.matched == 0 {
        // Only now is it worth counting every fresh series of the name:
        // the index visited just the selected ones.
        let fresh = store.fresh_count(selected_name, request.now);
        if fresh == 0 {
            return Err(EvalError::AllSeriesStale { metric });
        }
        return Err(EvalError::NoMatchingSeries {
            metric,
            selector: selector_text(query),
            fresh,
        });
    }
    if let Some(kind) = selection.unsupported_kind {
        return Err(wrong_kind(&metric, kind, quantile));
    }
    let window_seconds = request.window as f64 / NANOS_PER_SECOND as f64;
    let no_samples = || EvalError::NoSamplesInWindow {
        metric: query.metric.clone(),
        series: selection.matched,
        window_seconds,
    };

    match (quantile, selection.histograms.is_empty()) {
        (Some(q), false) => histogram_quantile(
            query,
            request.operation,
            q,
            &selection.histograms,
            no_samples,
        ),
        _ => {
            let mut per_series: Vec<f64> = selection
                .scalars
                .iter()
                .filter_map(|(points, temporality)| reduce(request.operation, points, *temporality))
                .collect();
            if per_series.is_empty() {
                return Err(no_samples());
            }
            // Series are visited in the order the index holds them, which
            // depends on arrival order; adding in value order instead gives
            // replicas fed the same data bit-identical sums.
            per_series.sort_unstable_by(f64::total_cmp);
            Ok(Evaluation {
                value: aggregate(query.aggregation, &per_series),
                series: per_series.len(),
            })
        }
    }
}

/// Series picked by a query, already cut to the window. Copying the few
/// points in the window out keeps the store's read locks short.
struct Selection {
    quantile: Option<f64>,
    /// Points stamped after this are left out.
    until: Nanos,
    matched: usize,
    scalars: Vec<(Vec<ScalarPoint>, crate::store::Temporality)>,
    histograms: Vec<HistogramWindow>,
    unsupported_kind: Option<&'static str>,
}

struct HistogramWindow {
    bounds: Arc<[f64]>,
    temporality: crate::store::Temporality,
    points: Vec<DistributionPoint>,
}

impl Selection {
    fn new(quantile: Option<f64>, until: Nanos) -> Self {
        Selection {
            quantile,
            until,
            matched: 0,
            scalars: Vec::new(),
            histograms: Vec::new(),
            unsupported_kind: None,
        }
    }

    fn take(&mut self, series: &Series, component: Component, from: Nanos) {
        self.matched += 1;
        let temporality = series.kind.temporality();
        match (&series.samples, component) {
            (Samples::Scalar(ring), Component::Whole) => {
                if self.quantile.is_some() {
                    self.unsupported_kind = Some(series.kind.describe());
                }
                self.scalars.push((
                    ring.between(from, self.until).copied().collect(),
                    temporality,
                ));
            }
            (Samples::Distribution(ring), Component::Count | Component::Sum) => {
                let points = ring
                    .since(from)
                    .map(|p| ScalarPoint {
                        time: p.time,
                        start: p.start,
                        value: if component == Component::Count {
                            p.count
                        } else {
                            p.sum
                        },
                    })
                    .collect();
                self.scalars.push((points, temporality));
            }
            (Samples::Distribution(ring), Component::Whole) => {
                match (&series.kind, self.quantile) {
                    (SeriesKind::Histogram { bounds, .. }, Some(_)) => {
                        self.histograms.push(HistogramWindow {
                            bounds: bounds.clone(),
                            temporality,
                            points: ring.between(from, self.until).cloned().collect(),
                        })
                    }
                    (SeriesKind::Summary, Some(q)) => {
                        // A summary carries ready-made quantiles; use the one asked for.
                        let points: Vec<ScalarPoint> = ring
                            .since(from)
                            .filter_map(|p| {
                                summary_quantile(p, q).map(|value| ScalarPoint {
                                    time: p.time,
                                    start: p.start,
                                    value,
                                })
                            })
                            .collect();
                        if points.is_empty() && ring.between(from, self.until).len() > 0 {
                            self.unsupported_kind = Some("summary without the requested quantile");
                        }
                        self.scalars
                            .push((points, crate::store::Temporality::Cumulative));
                    }
                    _ => self.unsupported_kind = Some(series.kind.describe()),
                }
            }
            (Samples::Scalar(_), _) => self.unsupported_kind = Some(series.kind.describe()),
        }
    }
}

fn summary_quantile(point: &DistributionPoint, q: f64) -> Option<f64> {
    point
        .quantiles
        .iter()
        .find(|(quantile, _)| (quantile - q).abs() < 1e-9)
        .map(|&(_, value)| value)
}

fn wrong_kind(metric: &str, kind: &'static str, quantile: Option<f64>) -> EvalError {
    let hint = match (kind, quantile) {
        ("histogram", None) | ("summary", None) => {
            format!(
                "query '{metric}_count' or '{metric}_sum', or ask for a quantile (metadata key 'quantile' or histogram_quantile(q, ...))"
            )
        }
        ("summary without the requested quantile", _) => {
            "ask for a quantile the summary reports".to_owned()
        }
        (_, Some(_)) => {
            "a quantile needs a histogram or summary metric; remove the quantile".to_owned()
        }
        _ => "this query shape does not apply to it".to_owned(),
    };
    EvalError::WrongKind {
        metric: metric.to_owned(),
        kind,
        hint,
    }
}

/// Buckets of every matching series are added before the quantile is
/// taken: the only combination that is statistically sound. The query's
/// aggregation (KServe always wraps in `sum`) therefore does not apply.
fn histogram_quantile(
    query: &Query,
    operation: Operation,
    q: f64,
    histograms: &[HistogramWindow],
    no_samples: impl Fn() -> EvalError,
) -> Result<Evaluation, EvalError> {
    if !matches!(operation, Operation::LastOne | Operation::Rate) {
        return Err(EvalError::WrongKind {
            metric: query.metric.clone(),
            kind: "histogram",
            hint: format!(
                "operationOverTime '{operation}' is not defined for a quantile; use 'rate' (observations in the window) or 'last_one' (since the series started)"
            ),
        });
    }
    let bounds = histograms[0].bounds.clone();
    let mut merged = vec![0.0; bounds.len() + 1];
    let mut contributing = 0;
    for histogram in histograms {
        if histogram.bounds != bounds {
            return Err(EvalError::BucketLayoutMismatch {
                metric: query.metric.clone(),
            });
        }
        let points: Vec<&DistributionPoint> = histogram.points.iter().collect();
        if let Some(counts) = bucket_counts(operation, &points, histogram.temporality)
            && counts.len() == merged.len()
        {
            contributing += 1;
            for (slot, count) in merged.iter_mut().zip(counts) {
                *slot += count;
            }
        }
    }
    if contributing == 0 {
        return Err(no_samples());
    }
    let value =
        quantile_from_buckets(q, &bounds, &merged).ok_or_else(|| EvalError::NoObservations {
            metric: query.metric.clone(),
            quantile: q,
        })?;
    Ok(Evaluation {
        value,
        series: contributing,
    })
}

fn selector_text(query: &Query) -> String {
    let matchers: Vec<String> = query
        .matchers
        .iter()
        .map(|m| format!("{}{}{:?}", m.label, m.op.symbol(), m.value))
        .collect();
    format!("{{{}}}", matchers.join(", "))
}

fn aggregate(aggregation: Aggregation, values: &[f64]) -> f64 {
    match aggregation {
        Aggregation::Sum => values.iter().sum(),
        Aggregation::Avg => values.iter().sum::<f64>() / values.len() as f64,
        Aggregation::Min => values.iter().copied().fold(f64::INFINITY, f64::min),
        Aggregation::Max => values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        Aggregation::Count => values.len() as f64,
    }
}
