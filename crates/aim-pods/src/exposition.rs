//! From a scraped Prometheus page to the OTLP request the sidecar sends.
//! Pure.
//!
//! The OTel prometheus receiver turns a gauge family into a Gauge, a
//! counter into a cumulative monotonic Sum, and a histogram's `_bucket`,
//! `_sum` and `_count` series into one Histogram. Scraped labels become
//! datapoint attributes; the pipeline's processors then add or drop.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, metric::Data, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

use crate::collector::Processor;

type Labels = BTreeMap<String, String>;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    Gauge,
    Counter,
    Histogram,
}

/// One histogram series: (labels without `le`, cumulative (bound, count)
/// pairs, sum, count).
pub type HistogramSeries = (Labels, Vec<(f64, f64)>, f64, f64);

/// One metric family of the page.
#[derive(Clone, Debug, PartialEq)]
pub struct Family {
    pub name: String,
    pub kind: Kind,
    /// (labels, value) of each plain sample (gauges and counters).
    pub samples: Vec<(Labels, f64)>,
    /// Histograms, per label set without `le`: (bounds with counts, sum, count).
    pub histograms: Vec<HistogramSeries>,
}

#[derive(Debug, PartialEq, thiserror::Error)]
#[error("line {line}: {problem}: {text:?}")]
pub struct ParseError {
    pub line: usize,
    pub problem: &'static str,
    pub text: String,
}

/// Parses a text exposition page. Untyped families count as gauges, as the
/// receiver treats them.
pub fn parse(page: &str) -> Result<Vec<Family>, ParseError> {
    let mut types: BTreeMap<String, Kind> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut plain: BTreeMap<String, Vec<(Labels, f64)>> = BTreeMap::new();
    type HistParts = (Vec<(f64, f64)>, Option<f64>, Option<f64>);
    let mut hist: BTreeMap<String, BTreeMap<Labels, HistParts>> = BTreeMap::new();

    for (i, raw) in page.lines().enumerate() {
        let line = raw.trim();
        let bad = |problem| ParseError {
            line: i + 1,
            problem,
            text: raw.to_string(),
        };
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let mut words = rest.split_whitespace();
            if words.next() == Some("TYPE") {
                let name = words.next().ok_or_else(|| bad("TYPE without a name"))?;
                let kind = match words.next() {
                    Some("counter") => Kind::Counter,
                    Some("histogram") => Kind::Histogram,
                    Some("gauge" | "untyped" | "unknown") => Kind::Gauge,
                    // Summaries carry quantiles the receiver maps to a
                    // Summary; nothing here scales on one.
                    Some("summary") => continue,
                    _ => return Err(bad("unknown TYPE")),
                };
                types.insert(name.to_string(), kind);
                if !order.iter().any(|n| n == name) {
                    order.push(name.to_string());
                }
            }
            continue;
        }
        let (name, labels, value) = parse_sample(line).ok_or_else(|| bad("not a sample"))?;
        let family_of = |suffix: &str| {
            name.strip_suffix(suffix)
                .filter(|base| types.get(*base) == Some(&Kind::Histogram))
        };
        if let Some(base) = family_of("_bucket") {
            let mut labels = labels;
            let le = labels
                .remove("le")
                .ok_or_else(|| bad("bucket without le"))?;
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().map_err(|_| bad("le is not a number"))?
            };
            hist.entry(base.to_string())
                .or_default()
                .entry(labels)
                .or_default()
                .0
                .push((bound, value));
        } else if let Some(base) = family_of("_sum") {
            hist.entry(base.to_string())
                .or_default()
                .entry(labels)
                .or_default()
                .1 = Some(value);
        } else if let Some(base) = family_of("_count") {
            hist.entry(base.to_string())
                .or_default()
                .entry(labels)
                .or_default()
                .2 = Some(value);
        } else {
            if !types.contains_key(&name) {
                types.insert(name.clone(), Kind::Gauge);
                order.push(name.clone());
            }
            plain.entry(name).or_default().push((labels, value));
        }
    }

    let mut out = Vec::new();
    for name in order {
        let kind = types[&name];
        let mut family = Family {
            name: name.clone(),
            kind,
            samples: plain.remove(&name).unwrap_or_default(),
            histograms: Vec::new(),
        };
        for (labels, (mut buckets, sum, count)) in hist.remove(&name).unwrap_or_default() {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            let count = count.or(buckets.last().map(|b| b.1)).unwrap_or(0.0);
            family
                .histograms
                .push((labels, buckets, sum.unwrap_or(0.0), count));
        }
        if !family.samples.is_empty() || !family.histograms.is_empty() {
            out.push(family);
        }
    }
    Ok(out)
}

/// `name{a="b",c="d"} 1.5 [timestamp]`
fn parse_sample(line: &str) -> Option<(String, Labels, f64)> {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => return None,
    };
    let mut labels = Labels::new();
    let rest = if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        let end;
        loop {
            // Skip separators.
            while let Some((_, c)) = chars.peek() {
                if *c == ',' || c.is_whitespace() {
                    chars.next();
                } else {
                    break;
                }
            }
            let (start, c) = *chars.peek()?;
            if c == '}' {
                end = start + 1;
                break;
            }
            let eq = body[start..].find('=')? + start;
            let key = body[start..eq].trim().to_string();
            while let Some((i, _)) = chars.peek() {
                if *i <= eq {
                    chars.next();
                } else {
                    break;
                }
            }
            if chars.next()?.1 != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                let (_, c) = chars.next()?;
                match c {
                    '"' => break,
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    other => value.push(other),
                }
            }
            labels.insert(key, value);
        }
        &body[end..]
    } else {
        rest
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().ok()?,
    };
    Some((name.to_string(), labels, value))
}

/// Who the sidecar runs beside: the `k8s.*` resource attributes the OTel
/// operator sets in the sidecar's environment.
#[derive(Clone, Debug, PartialEq)]
pub struct PodIdentity {
    pub namespace: String,
    pub deployment: String,
    pub pod: String,
}

impl PodIdentity {
    fn resource_attributes(&self) -> Labels {
        Labels::from([
            ("k8s.namespace.name".into(), self.namespace.clone()),
            ("k8s.deployment.name".into(), self.deployment.clone()),
            ("k8s.pod.name".into(), self.pod.clone()),
        ])
    }
}

/// Runs the pipeline's processors over the scraped families and builds the
/// export request. `now_nanos` stamps every point, as the receiver stamps
/// a scrape.
pub fn export_request(
    families: Vec<Family>,
    processors: &[Processor],
    identity: &PodIdentity,
    start_nanos: u64,
    now_nanos: u64,
) -> ExportMetricsServiceRequest {
    let mut resource = Labels::new();
    let mut copies: Vec<(String, String)> = Vec::new();
    let mut families = families;
    for p in processors {
        match p {
            Processor::ResourceFromEnv => resource.extend(identity.resource_attributes()),
            Processor::CopyResourceAttributes(pairs) => copies.extend(pairs.iter().cloned()),
            Processor::KeepOnly(names) => families.retain(|f| names.contains(&f.name)),
        }
    }
    let attributes = |labels: &Labels| -> Vec<KeyValue> {
        let mut all = labels.clone();
        for (to, from) in &copies {
            // A missing resource attribute sets nothing, as OTTL's set does
            // with a nil value.
            if let Some(v) = resource.get(from) {
                all.insert(to.clone(), v.clone());
            }
        }
        all.into_iter().map(|(k, v)| key_value(&k, &v)).collect()
    };
    let number = |labels: &Labels, value: f64| NumberDataPoint {
        attributes: attributes(labels),
        start_time_unix_nano: start_nanos,
        time_unix_nano: now_nanos,
        value: Some(number_data_point::Value::AsDouble(value)),
        ..Default::default()
    };
    let metrics = families
        .into_iter()
        .map(|f| {
            let data = match f.kind {
                Kind::Gauge => Data::Gauge(Gauge {
                    data_points: f.samples.iter().map(|(l, v)| number(l, *v)).collect(),
                }),
                Kind::Counter => Data::Sum(Sum {
                    data_points: f.samples.iter().map(|(l, v)| number(l, *v)).collect(),
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    is_monotonic: true,
                }),
                Kind::Histogram => Data::Histogram(Histogram {
                    data_points: f
                        .histograms
                        .iter()
                        .map(|(labels, buckets, sum, count)| {
                            // Cumulative `le` counts → per-bucket counts.
                            let mut previous = 0.0;
                            let mut counts = Vec::new();
                            let mut bounds = Vec::new();
                            for (bound, cumulative) in buckets {
                                counts.push((cumulative - previous).max(0.0) as u64);
                                previous = *cumulative;
                                if bound.is_finite() {
                                    bounds.push(*bound);
                                }
                            }
                            HistogramDataPoint {
                                attributes: attributes(labels),
                                start_time_unix_nano: start_nanos,
                                time_unix_nano: now_nanos,
                                count: *count as u64,
                                sum: Some(*sum),
                                bucket_counts: counts,
                                explicit_bounds: bounds,
                                ..Default::default()
                            }
                        })
                        .collect(),
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                }),
            };
            Metric {
                name: f.name,
                data: Some(data),
                ..Default::default()
            }
        })
        .collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: resource.iter().map(|(k, v)| key_value(k, v)).collect(),
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "aim-pods sidecar (prometheus receiver)".into(),
                    ..Default::default()
                }),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn key_value(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.to_string())),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="qwen"} 3.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="qwen"} 1
# TYPE vllm:request_success_total counter
vllm:request_success_total{finished_reason="stop",model_name="q\"x\\y"} 7
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{model_name="qwen",le="0.1"} 2
vllm:time_to_first_token_seconds_bucket{model_name="qwen",le="1.0"} 5
vllm:time_to_first_token_seconds_bucket{model_name="qwen",le="+Inf"} 6
vllm:time_to_first_token_seconds_sum{model_name="qwen"} 4.5
vllm:time_to_first_token_seconds_count{model_name="qwen"} 6
"#;

    #[test]
    fn families_of_every_kind() {
        let f = parse(PAGE).unwrap();
        let names: Vec<&str> = f.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "vllm:num_requests_running",
                "vllm:num_requests_waiting",
                "vllm:request_success_total",
                "vllm:time_to_first_token_seconds"
            ]
        );
        assert_eq!(f[0].samples[0].1, 3.0);
        assert_eq!(f[2].kind, Kind::Counter);
        assert_eq!(f[2].samples[0].0["model_name"], "q\"x\\y");
        let (_, buckets, sum, count) = &f[3].histograms[0];
        assert_eq!(buckets.len(), 3);
        assert_eq!((*sum, *count), (4.5, 6.0));
    }

    #[test]
    fn garbage_is_an_error_with_its_line() {
        let e = parse("# TYPE x gauge\nx{a=\"1\" 2\n").unwrap_err();
        assert_eq!(e.line, 2);
        let e = parse("x notanumber\n").unwrap_err();
        assert_eq!(e.problem, "not a sample");
    }

    fn attr(kv: &[KeyValue], key: &str) -> Option<String> {
        kv.iter()
            .find(|k| k.key == key)
            .and_then(|k| match k.value.as_ref()?.value.as_ref()? {
                any_value::Value::StringValue(s) => Some(s.clone()),
                _ => None,
            })
    }

    #[test]
    fn the_pipeline_filters_and_labels_as_kserves_collector_says() {
        let identity = PodIdentity {
            namespace: "ml".into(),
            deployment: "chat-predictor".into(),
            pod: "chat-predictor-abc-1".into(),
        };
        let processors = vec![
            Processor::ResourceFromEnv,
            Processor::CopyResourceAttributes(vec![
                ("namespace".into(), "k8s.namespace.name".into()),
                ("deployment".into(), "k8s.deployment.name".into()),
                ("pod".into(), "k8s.pod.name".into()),
            ]),
            Processor::KeepOnly(vec![
                "vllm:num_requests_running".into(),
                "vllm:time_to_first_token_seconds".into(),
            ]),
        ];
        let req = export_request(parse(PAGE).unwrap(), &processors, &identity, 1, 2);
        let metrics = &req.resource_metrics[0].scope_metrics[0].metrics;
        assert_eq!(metrics.len(), 2, "the filter keeps the named metrics only");
        let Some(Data::Gauge(g)) = &metrics[0].data else {
            panic!("a gauge")
        };
        let point = &g.data_points[0];
        assert_eq!(
            attr(&point.attributes, "deployment").as_deref(),
            Some("chat-predictor")
        );
        assert_eq!(attr(&point.attributes, "namespace").as_deref(), Some("ml"));
        assert_eq!(
            attr(&point.attributes, "pod").as_deref(),
            Some("chat-predictor-abc-1")
        );
        assert_eq!(
            attr(&point.attributes, "model_name").as_deref(),
            Some("qwen")
        );
        let Some(Data::Histogram(h)) = &metrics[1].data else {
            panic!("a histogram")
        };
        assert_eq!(h.data_points[0].bucket_counts, vec![2, 3, 1]);
        assert_eq!(h.data_points[0].explicit_bounds, vec![0.1, 1.0]);

        // Without resourcedetection the copies find nothing to copy.
        let bare = export_request(parse(PAGE).unwrap(), &processors[1..], &identity, 1, 2);
        let Some(Data::Gauge(g)) = &bare.resource_metrics[0].scope_metrics[0].metrics[0].data
        else {
            panic!("a gauge")
        };
        assert_eq!(attr(&g.data_points[0].attributes, "deployment"), None);
    }
}
