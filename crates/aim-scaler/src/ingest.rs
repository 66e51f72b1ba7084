//! Turns an OTLP `ExportMetricsServiceRequest` into store points. Pure:
//! the transports decode, this converts, the store keeps.

use crate::labels::{canonicalize_pairs, normalize_metric_name_cow};
use crate::store::{
    AppendOutcome, DistributionPoint, Nanos, PointData, ScalarPoint, SeriesKind, Store, Temporality,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Metric, metric::Data, number_data_point,
};
use std::borrow::Cow;
use std::sync::Arc;

/// OTLP data point flag bit: the point carries no value (how a Prometheus
/// staleness marker arrives).
pub(crate) const FLAG_NO_RECORDED_VALUE: u32 = 1;

/// Resource attributes copied onto every point by default. otel-add-on keeps
/// only `host.name`; the pod identity is added so that two pods whose point
/// attributes happen to be equal never collapse into one series.
pub const DEFAULT_RESOURCE_ATTRIBUTES: &[&str] = &[
    "host.name",
    "k8s.namespace.name",
    "k8s.deployment.name",
    "k8s.pod.name",
    "service.instance.id",
];

#[derive(Clone, Debug)]
pub struct IngestConfig {
    /// Resource attribute keys copied into each point's labels; a point
    /// attribute of the same key wins.
    pub resource_attributes: Vec<String>,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            resource_attributes: DEFAULT_RESOURCE_ATTRIBUTES
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IngestReport {
    pub stored: u64,
    pub rejected_series_cap: u64,
    pub rejected_too_old: u64,
    pub rejected_invalid: u64,
    pub ignored_no_recorded_value: u64,
    /// The first problem seen, for the partial-success message.
    pub first_problem: Option<String>,
}

impl IngestReport {
    pub fn rejected(&self) -> u64 {
        self.rejected_series_cap + self.rejected_too_old + self.rejected_invalid
    }

    /// OTLP says: leave partial_success unset on full success.
    pub fn partial_success(&self) -> Option<ExportMetricsPartialSuccess> {
        let rejected = self.rejected();
        (rejected > 0).then(|| ExportMetricsPartialSuccess {
            rejected_data_points: rejected as i64,
            error_message: format!(
                "{rejected} data points rejected (series cap: {}, older than retention: {}, invalid: {}); first: {}",
                self.rejected_series_cap,
                self.rejected_too_old,
                self.rejected_invalid,
                self.first_problem.as_deref().unwrap_or("-")
            ),
        })
    }

    pub(crate) fn problem(&mut self, text: impl FnOnce() -> String) {
        if self.first_problem.is_none() {
            self.first_problem = Some(text());
        }
    }

    pub(crate) fn count(&mut self, outcome: AppendOutcome, metric: &str) {
        match outcome {
            AppendOutcome::Stored => self.stored += 1,
            AppendOutcome::RejectedSeriesCap => {
                self.rejected_series_cap += 1;
                self.problem(|| format!("metric '{metric}': series cap reached; raise --max-series or filter metrics in the collector"));
            }
            AppendOutcome::RejectedTooOld => {
                self.rejected_too_old += 1;
                self.problem(|| {
                    format!("metric '{metric}': point older than the retention window")
                });
            }
        }
    }
}

// Problems named in partial-success messages, shared with the borrowing
// decoder (`otlp_wire`) so both paths word them alike.

pub(crate) fn empty_name_problem() -> String {
    "a metric has an empty name".to_owned()
}

pub(crate) fn histogram_shape_problem(name: &str, buckets: usize, bounds: usize) -> String {
    format!("histogram '{name}': {buckets} bucket counts for {bounds} bounds (must be one more)")
}

pub(crate) fn no_value_problem(name: &str) -> String {
    format!("metric '{name}': data point has neither as_double nor as_int")
}

pub(crate) fn not_finite_problem(name: &str, value: f64) -> String {
    format!("metric '{name}': value {value} is not finite")
}

/// Renders a typed attribute value so that an int 5 matches the query
/// string "5".
pub fn render_any_value(value: &AnyValue) -> String {
    match &value.value {
        None => String::new(),
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BytesValue(bytes)) => {
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        }
        Some(any_value::Value::ArrayValue(array)) => {
            let items: Vec<String> = array.values.iter().map(render_any_value).collect();
            format!("[{}]", items.join(","))
        }
        Some(any_value::Value::KvlistValue(list)) => {
            let items: Vec<String> = list
                .values
                .iter()
                .map(|kv| {
                    format!(
                        "{}={}",
                        kv.key,
                        kv.value.as_ref().map(render_any_value).unwrap_or_default()
                    )
                })
                .collect();
            format!("{{{}}}", items.join(","))
        }
        // Only profiles use string tables; metrics never should.
        Some(any_value::Value::StringValueStrindex(index)) => format!("strindex:{index}"),
    }
}

/// An attribute's label text, borrowed when it already is a string (the
/// common case), to save an allocation per label per point.
fn attribute_text(value: Option<&AnyValue>) -> Cow<'_, str> {
    match value {
        Some(AnyValue {
            value: Some(any_value::Value::StringValue(s)),
        }) => Cow::Borrowed(s),
        Some(other) => Cow::Owned(render_any_value(other)),
        None => Cow::Borrowed(""),
    }
}

/// Resource labels of one `ResourceMetrics`, borrowed from the request.
type Resource<'a> = [(&'a str, Cow<'a, str>)];

/// Builds a point's labels in canonical order into `scratch` (reused from
/// point to point), borrowing the request's text: a point of a series the
/// store already holds then costs no allocation at all.
fn labels<'a>(
    scratch: &mut Vec<(&'a str, Cow<'a, str>)>,
    resource: &Resource<'a>,
    attributes: &'a [KeyValue],
) {
    scratch.clear();
    scratch.extend(resource.iter().map(|(k, v)| (*k, v.clone())));
    scratch.extend(
        attributes
            .iter()
            .map(|kv| (kv.key.as_str(), attribute_text(kv.value.as_ref()))),
    );
    canonicalize_pairs(scratch);
}

pub(crate) fn temporality(value: i32) -> Temporality {
    // UNSPECIFIED is treated as cumulative: it is what a Prometheus-fed
    // pipeline means, and cumulative handling of a delta stream degrades
    // gracefully (drops look like resets).
    if value == AggregationTemporality::Delta as i32 {
        Temporality::Delta
    } else {
        Temporality::Cumulative
    }
}

pub fn ingest(
    store: &Store,
    request: &ExportMetricsServiceRequest,
    config: &IngestConfig,
    received: Nanos,
) -> IngestReport {
    let mut report = IngestReport::default();
    let mut scratch = Vec::new();
    for resource_metrics in &request.resource_metrics {
        let resource: Vec<(&str, Cow<'_, str>)> = resource_metrics
            .resource
            .iter()
            .flat_map(|r| r.attributes.iter())
            .filter(|kv| config.resource_attributes.contains(&kv.key))
            .map(|kv| (kv.key.as_str(), attribute_text(kv.value.as_ref())))
            .collect();
        for scope in &resource_metrics.scope_metrics {
            for metric in &scope.metrics {
                let mut ctx = PointContext {
                    store,
                    resource: &resource,
                    received,
                    scratch: &mut scratch,
                };
                ingest_metric(&mut ctx, metric, &mut report);
            }
        }
    }
    report
}

/// What every point of one `ResourceMetrics` shares.
struct PointContext<'a, 's> {
    store: &'a Store,
    resource: &'s Resource<'a>,
    received: Nanos,
    scratch: &'s mut Vec<(&'a str, Cow<'a, str>)>,
}

impl<'a> PointContext<'a, '_> {
    fn append(
        &mut self,
        name: &str,
        attributes: &'a [KeyValue],
        kind: &SeriesKind,
        point: PointData,
    ) -> AppendOutcome {
        labels(self.scratch, self.resource, attributes);
        self.store
            .append_pairs(name, self.scratch, kind, point, self.received)
    }
}

fn ingest_metric<'a>(
    ctx: &mut PointContext<'a, '_>,
    metric: &'a Metric,
    report: &mut IngestReport,
) {
    let received = ctx.received;
    let name = normalize_metric_name_cow(&metric.name);
    // A metric with no data is skipped on its own; otel-add-on aborted the
    // rest of the request instead.
    let Some(data) = &metric.data else { return };
    if name.is_empty() {
        let points = count_points(data);
        report.rejected_invalid += points;
        report.problem(empty_name_problem);
        return;
    }
    let time_or_now = |t: u64| if t == 0 { received } else { t };
    match data {
        Data::Gauge(gauge) => {
            for p in &gauge.data_points {
                scalar(
                    ctx,
                    &name,
                    &SeriesKind::Gauge,
                    p,
                    time_or_now(p.time_unix_nano),
                    report,
                );
            }
        }
        Data::Sum(sum) => {
            let kind = SeriesKind::Sum {
                temporality: temporality(sum.aggregation_temporality),
                monotonic: sum.is_monotonic,
            };
            for p in &sum.data_points {
                scalar(ctx, &name, &kind, p, time_or_now(p.time_unix_nano), report);
            }
        }
        Data::Histogram(histogram) => {
            for p in &histogram.data_points {
                if p.flags & FLAG_NO_RECORDED_VALUE != 0 {
                    report.ignored_no_recorded_value += 1;
                    continue;
                }
                if !p.bucket_counts.is_empty()
                    && p.bucket_counts.len() != p.explicit_bounds.len() + 1
                {
                    report.rejected_invalid += 1;
                    report.problem(|| {
                        histogram_shape_problem(
                            &name,
                            p.bucket_counts.len(),
                            p.explicit_bounds.len(),
                        )
                    });
                    continue;
                }
                let kind = SeriesKind::Histogram {
                    temporality: temporality(histogram.aggregation_temporality),
                    bounds: Arc::from(if p.bucket_counts.is_empty() {
                        &[][..]
                    } else {
                        &p.explicit_bounds[..]
                    }),
                };
                let point = DistributionPoint {
                    time: time_or_now(p.time_unix_nano),
                    start: p.start_time_unix_nano,
                    count: p.count as f64,
                    sum: p.sum.unwrap_or(0.0),
                    buckets: p.bucket_counts.clone().into_boxed_slice(),
                    quantiles: Box::new([]),
                };
                let outcome =
                    ctx.append(&name, &p.attributes, &kind, PointData::Distribution(point));
                report.count(outcome, &name);
            }
        }
        Data::ExponentialHistogram(histogram) => {
            // Kept as count and sum only (like otel-add-on); quantiles need
            // explicit buckets.
            for p in &histogram.data_points {
                if p.flags & FLAG_NO_RECORDED_VALUE != 0 {
                    report.ignored_no_recorded_value += 1;
                    continue;
                }
                let point = DistributionPoint {
                    time: time_or_now(p.time_unix_nano),
                    start: p.start_time_unix_nano,
                    count: p.count as f64,
                    sum: p.sum.unwrap_or(0.0),
                    buckets: Box::new([]),
                    quantiles: Box::new([]),
                };
                let outcome = ctx.append(
                    &name,
                    &p.attributes,
                    &SeriesKind::Summary,
                    PointData::Distribution(point),
                );
                report.count(outcome, &name);
            }
        }
        Data::Summary(summary) => {
            for p in &summary.data_points {
                if p.flags & FLAG_NO_RECORDED_VALUE != 0 {
                    report.ignored_no_recorded_value += 1;
                    continue;
                }
                let point = DistributionPoint {
                    time: time_or_now(p.time_unix_nano),
                    start: p.start_time_unix_nano,
                    count: p.count as f64,
                    sum: p.sum,
                    buckets: Box::new([]),
                    quantiles: p
                        .quantile_values
                        .iter()
                        .map(|q| (q.quantile, q.value))
                        .collect(),
                };
                let outcome = ctx.append(
                    &name,
                    &p.attributes,
                    &SeriesKind::Summary,
                    PointData::Distribution(point),
                );
                report.count(outcome, &name);
            }
        }
    }
}

fn scalar<'a>(
    ctx: &mut PointContext<'a, '_>,
    name: &str,
    kind: &SeriesKind,
    p: &'a opentelemetry_proto::tonic::metrics::v1::NumberDataPoint,
    time: Nanos,
    report: &mut IngestReport,
) {
    if p.flags & FLAG_NO_RECORDED_VALUE != 0 {
        report.ignored_no_recorded_value += 1;
        return;
    }
    // Negative values are kept (otel-add-on clamped them to 0 via max()).
    let value = match p.value {
        Some(number_data_point::Value::AsDouble(v)) => v,
        Some(number_data_point::Value::AsInt(v)) => v as f64,
        None => {
            report.rejected_invalid += 1;
            report.problem(|| no_value_problem(name));
            return;
        }
    };
    if !value.is_finite() {
        report.rejected_invalid += 1;
        report.problem(|| not_finite_problem(name, value));
        return;
    }
    let point = ScalarPoint {
        time,
        start: p.start_time_unix_nano,
        value,
    };
    let outcome = ctx.append(name, &p.attributes, kind, PointData::Scalar(point));
    report.count(outcome, name);
}

fn count_points(data: &Data) -> u64 {
    (match data {
        Data::Gauge(g) => g.data_points.len(),
        Data::Sum(s) => s.data_points.len(),
        Data::Histogram(h) => h.data_points.len(),
        Data::ExponentialHistogram(h) => h.data_points.len(),
        Data::Summary(s) => s.data_points.len(),
    }) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{NANOS_PER_SECOND, Samples, StoreConfig};
    use opentelemetry_proto::tonic::metrics::v1::{
        Gauge, NumberDataPoint, ResourceMetrics, ScopeMetrics, Summary, SummaryDataPoint,
        summary_data_point,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;

    const NOW: u64 = 1_700_000_000 * NANOS_PER_SECOND;

    fn string_kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value.into())),
            }),
            ..Default::default()
        }
    }

    fn request(resource: Vec<KeyValue>, metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource {
                    attributes: resource,
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn gauge_point(value: f64, flags: u32, attributes: Vec<KeyValue>) -> NumberDataPoint {
        NumberDataPoint {
            attributes,
            time_unix_nano: NOW,
            value: Some(number_data_point::Value::AsDouble(value)),
            flags,
            ..Default::default()
        }
    }

    fn store() -> Store {
        Store::new(StoreConfig::default())
    }

    fn stored_values(store: &Store, name: &str) -> Vec<(String, Vec<f64>)> {
        let mut out = Vec::new();
        store.visit_metric(name, NOW, |labels, series| {
            if let Samples::Scalar(ring) = &series.samples {
                out.push((labels.to_string(), ring.since(0).map(|p| p.value).collect()));
            }
        });
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    #[test]
    fn no_recorded_value_points_are_ignored_and_counted() {
        let store = store();
        let metric = Metric {
            name: "vllm.num_requests_running".into(),
            data: Some(Data::Gauge(Gauge {
                data_points: vec![
                    gauge_point(2.0, 0, vec![]),
                    gauge_point(f64::NAN, FLAG_NO_RECORDED_VALUE, vec![]),
                ],
            })),
            ..Default::default()
        };
        let report = ingest(
            &store,
            &request(vec![], vec![metric]),
            &IngestConfig::default(),
            NOW,
        );
        assert_eq!(
            (
                report.stored,
                report.ignored_no_recorded_value,
                report.rejected()
            ),
            (1, 1, 0)
        );
        assert_eq!(report.partial_success(), None);
        // The name was normalised on write.
        assert_eq!(
            stored_values(&store, "vllm_num_requests_running"),
            vec![("{}".into(), vec![2.0])]
        );
    }

    #[test]
    fn resource_identity_is_kept_and_point_attributes_win() {
        let store = store();
        let points = vec![
            gauge_point(-1.5, 0, vec![string_kv("host.name", "from-point")]),
            gauge_point(
                3.0,
                0,
                vec![
                    string_kv("pod", "x"),
                    KeyValue {
                        key: "n".into(),
                        value: Some(AnyValue {
                            value: Some(any_value::Value::IntValue(5)),
                        }),
                        ..Default::default()
                    },
                ],
            ),
        ];
        let metric = Metric {
            name: "g".into(),
            data: Some(Data::Gauge(Gauge {
                data_points: points,
            })),
            ..Default::default()
        };
        let resource = vec![
            string_kv("k8s.pod.name", "pod-1"),
            string_kv("host.name", "node"),
            string_kv("telemetry.sdk.name", "dropped"),
        ];
        ingest(
            &store,
            &request(resource, vec![metric]),
            &IngestConfig::default(),
            NOW,
        );
        assert_eq!(
            stored_values(&store, "g"),
            vec![
                (
                    "{host.name=\"from-point\", k8s.pod.name=\"pod-1\"}".into(),
                    vec![-1.5]
                ),
                (
                    "{host.name=\"node\", k8s.pod.name=\"pod-1\", n=\"5\", pod=\"x\"}".into(),
                    vec![3.0]
                ),
            ]
        );
    }

    #[test]
    fn invalid_points_are_rejected_with_a_reason() {
        let store = store();
        let histogram = Metric {
            name: "h".into(),
            data: Some(Data::Histogram(
                opentelemetry_proto::tonic::metrics::v1::Histogram {
                    data_points: vec![
                        opentelemetry_proto::tonic::metrics::v1::HistogramDataPoint {
                            time_unix_nano: NOW,
                            bucket_counts: vec![1, 2],
                            explicit_bounds: vec![0.1, 0.5],
                            ..Default::default()
                        },
                    ],
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                },
            )),
            ..Default::default()
        };
        let no_value = Metric {
            name: "g".into(),
            data: Some(Data::Gauge(Gauge {
                data_points: vec![NumberDataPoint {
                    time_unix_nano: NOW,
                    ..Default::default()
                }],
            })),
            ..Default::default()
        };
        let empty = Metric {
            name: "nothing".into(),
            data: None,
            ..Default::default()
        };
        let report = ingest(
            &store,
            &request(vec![], vec![histogram, empty, no_value]),
            &IngestConfig::default(),
            NOW,
        );
        assert_eq!(
            report.rejected_invalid, 2,
            "an empty metric skips itself, not the rest"
        );
        let partial = report.partial_success().unwrap();
        assert_eq!(partial.rejected_data_points, 2);
        assert!(
            partial
                .error_message
                .contains("2 bucket counts for 2 bounds"),
            "{}",
            partial.error_message
        );
    }

    #[test]
    fn summaries_keep_their_quantiles() {
        let store = store();
        let metric = Metric {
            name: "s".into(),
            data: Some(Data::Summary(Summary {
                data_points: vec![SummaryDataPoint {
                    time_unix_nano: NOW,
                    count: 10,
                    sum: 4.0,
                    quantile_values: vec![summary_data_point::ValueAtQuantile {
                        quantile: 0.99,
                        value: 0.8,
                    }],
                    ..Default::default()
                }],
            })),
            ..Default::default()
        };
        let report = ingest(
            &store,
            &request(vec![], vec![metric]),
            &IngestConfig::default(),
            NOW,
        );
        assert_eq!(report.stored, 1);
        let mut seen = Vec::new();
        store.visit_metric("s", NOW, |_, series| {
            if let Samples::Distribution(ring) = &series.samples {
                seen.extend(
                    ring.since(0)
                        .map(|p| (p.count, p.sum, p.quantiles.to_vec())),
                );
            }
        });
        assert_eq!(seen, vec![(10.0, 4.0, vec![(0.99, 0.8)])]);
    }
}
