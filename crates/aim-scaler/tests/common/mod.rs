//! Shared helpers for the server-level tests. Everything binds 127.0.0.1
//! on port 0.

#![allow(dead_code)]

use aim_scaler::proto::externalscaler::external_scaler_client::ExternalScalerClient;
use aim_scaler::proto::externalscaler::{GetMetricsRequest, ScaledObjectRef};
use aim_scaler::{Running, ScalerArgs};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use tonic::transport::Channel;

pub async fn start_scaler(configure: impl FnOnce(&mut ScalerArgs)) -> Running {
    let mut args = ScalerArgs::defaults();
    args.listen = vec![
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    ];
    args.admin_listen = "127.0.0.1:0".parse().unwrap();
    args.sweep_interval = Duration::from_millis(100);
    args.stream_interval = Duration::from_millis(100);
    // These tests query right after pushing; the warm-up has its own test.
    args.warmup = Duration::ZERO;
    configure(&mut args);
    aim_scaler::start(&args).await.expect("scaler starts")
}

pub async fn keda_client(address: SocketAddr) -> ExternalScalerClient<Channel> {
    ExternalScalerClient::connect(format!("http://{address}"))
        .await
        .expect("connect to scaler")
}

/// Trigger metadata exactly as KServe's KEDA reconciler writes it for an
/// InferenceService PodMetric with backend opentelemetry.
pub fn kserve_metadata(
    namespace: &str,
    isvc: &str,
    query: &str,
    target: &str,
    operation_over_time: Option<&str>,
) -> HashMap<String, String> {
    let mut metadata = HashMap::from([
        (
            "metricQuery".to_owned(),
            format!("sum({query}{{namespace=\"{namespace}\", deployment=\"{isvc}-predictor\"}})"),
        ),
        ("targetValue".to_owned(), target.to_owned()),
        (
            "scalerAddress".to_owned(),
            "keda-otel-scaler.keda.svc:4318".to_owned(),
        ),
    ]);
    if let Some(op) = operation_over_time {
        metadata.insert("operationOverTime".to_owned(), op.to_owned());
    }
    metadata
}

pub fn scaled_object(
    namespace: &str,
    name: &str,
    metadata: HashMap<String, String>,
) -> ScaledObjectRef {
    ScaledObjectRef {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        scaler_metadata: metadata,
    }
}

/// What KEDA's GetMetricsAndActivity does: GetMetricSpec, GetMetrics, IsActive.
pub async fn keda_poll(
    client: &mut ExternalScalerClient<Channel>,
    reference: &ScaledObjectRef,
) -> Result<(f64, i64, bool), tonic::Status> {
    let spec = client
        .get_metric_spec(reference.clone())
        .await?
        .into_inner();
    let metric_name = spec.metric_specs[0].metric_name.clone();
    let metrics = client
        .get_metrics(GetMetricsRequest {
            scaled_object_ref: Some(reference.clone()),
            metric_name,
        })
        .await?
        .into_inner();
    let active = client
        .is_active(reference.clone())
        .await?
        .into_inner()
        .result;
    let value = &metrics.metric_values[0];
    Ok((value.metric_value_float, value.metric_value, active))
}

pub mod otlp {
    //! Hand-built OTLP requests for tests that need exact timestamps.
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::metrics::v1::{
        AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
        ResourceMetrics, ScopeMetrics, Sum, metric::Data, number_data_point,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;

    pub fn attributes(pairs: &[(&str, &str)]) -> Vec<KeyValue> {
        pairs
            .iter()
            .map(|(k, v)| KeyValue {
                key: k.to_string(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue(v.to_string())),
                }),
                ..Default::default()
            })
            .collect()
    }

    pub fn number_point(
        labels: &[(&str, &str)],
        time: u64,
        start: u64,
        value: f64,
    ) -> NumberDataPoint {
        NumberDataPoint {
            attributes: attributes(labels),
            start_time_unix_nano: start,
            time_unix_nano: time,
            value: Some(number_data_point::Value::AsDouble(value)),
            ..Default::default()
        }
    }

    pub fn request(metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource::default()),
                scope_metrics: vec![ScopeMetrics {
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    pub fn gauge(name: &str, points: Vec<NumberDataPoint>) -> Metric {
        Metric {
            name: name.into(),
            data: Some(Data::Gauge(Gauge {
                data_points: points,
            })),
            ..Default::default()
        }
    }

    pub fn counter(name: &str, points: Vec<NumberDataPoint>) -> Metric {
        Metric {
            name: name.into(),
            data: Some(Data::Sum(Sum {
                data_points: points,
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: true,
            })),
            ..Default::default()
        }
    }

    pub fn histogram(
        name: &str,
        labels: &[(&str, &str)],
        time: u64,
        start: u64,
        bounds: &[f64],
        buckets: &[u64],
    ) -> Metric {
        Metric {
            name: name.into(),
            data: Some(Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    attributes: attributes(labels),
                    start_time_unix_nano: start,
                    time_unix_nano: time,
                    count: buckets.iter().sum(),
                    sum: Some(0.0),
                    bucket_counts: buckets.to_vec(),
                    explicit_bounds: bounds.to_vec(),
                    ..Default::default()
                }],
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            })),
            ..Default::default()
        }
    }

    pub fn now() -> u64 {
        aim_scaler::state::now_nanos()
    }
}

pub async fn push(
    address: SocketAddr,
    request: opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest,
) -> opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse {
    use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
    let mut client = MetricsServiceClient::connect(format!("http://{address}"))
        .await
        .expect("connect OTLP");
    client
        .export(request)
        .await
        .expect("export accepted")
        .into_inner()
}

/// A minimal HTTP/1.1 POST for the OTLP/HTTP tests.
pub async fn http_request(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, HashMap<String, String>, Vec<u8>) {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client: Client<_, Full<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("http://{address}{path}"));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = client
        .request(request.body(Full::new(bytes::Bytes::from(body))).unwrap())
        .await
        .expect("HTTP request");
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let body = response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, headers, body)
}
