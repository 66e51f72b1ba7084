//! Pushes each service's flow-control state to aim's scaler over
//! OTLP/gRPC (`--otlp-endpoint`), so a queue at the gateway can drive
//! KEDA. It is what wakes a service from zero: with no replica there is no
//! pod to report a metric, but the gateway holds the first requests and
//! says so here.
//!
//! Per service (the `service` attribute, named as on `/metrics`):
//! - `aim_gateway_queue_depth`: requests held now (gauge);
//! - `aim_gateway_in_flight`: requests sent on and not yet finished (gauge);
//! - `aim_gateway_queue_wait_seconds`: arrival to dispatch (cumulative
//!   histogram, the buckets of `/metrics`).
//!
//! A push runs every `--otlp-interval`, and within [`CHANGE_CHECK`] of a
//! change in any queue's depth, so the first held request reaches the
//! scaler (which pushes activation to KEDA) in about a tenth of a second.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, metric::Data, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use tokio::sync::watch;

use crate::metrics::{WAIT_BOUNDS, WaitSnapshot};
use crate::proxy::Target;

/// How often queue depths are compared with the last push.
pub const CHANGE_CHECK: Duration = Duration::from_millis(100);

/// One service's state at a push.
pub struct ServiceState<'a> {
    pub name: &'a str,
    pub queue_depth: usize,
    pub in_flight: u32,
    pub wait: WaitSnapshot,
}

/// Pushes that reached the receiver and pushes that did not, for
/// `/metrics`.
#[derive(Default)]
pub struct ExportCounters {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
}

fn text(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

/// The export request for `services`. Pure.
pub fn export_request(
    services: &[ServiceState<'_>],
    start_nanos: u64,
    now_nanos: u64,
) -> ExportMetricsServiceRequest {
    let gauge = |name: &str, value: &dyn Fn(&ServiceState<'_>) -> f64| Metric {
        name: name.into(),
        data: Some(Data::Gauge(Gauge {
            data_points: services
                .iter()
                .map(|s| NumberDataPoint {
                    attributes: vec![text("service", s.name)],
                    start_time_unix_nano: start_nanos,
                    time_unix_nano: now_nanos,
                    value: Some(number_data_point::Value::AsDouble(value(s))),
                    ..Default::default()
                })
                .collect(),
        })),
        ..Default::default()
    };
    let wait = Metric {
        name: "aim_gateway_queue_wait_seconds".into(),
        data: Some(Data::Histogram(Histogram {
            data_points: services
                .iter()
                .map(|s| HistogramDataPoint {
                    attributes: vec![text("service", s.name)],
                    start_time_unix_nano: start_nanos,
                    time_unix_nano: now_nanos,
                    count: s.wait.count,
                    sum: Some(s.wait.sum_seconds),
                    bucket_counts: s.wait.buckets.clone(),
                    explicit_bounds: WAIT_BOUNDS.to_vec(),
                    ..Default::default()
                })
                .collect(),
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
        })),
        ..Default::default()
    };
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![text("service.name", "aim-gateway")],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![
                    gauge("aim_gateway_queue_depth", &|s| s.queue_depth as f64),
                    gauge("aim_gateway_in_flight", &|s| f64::from(s.in_flight)),
                    wait,
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn nanos_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Pushes until `stopped`'s sender goes, which is after the drain: held
/// requests still count while the gateway shuts down. A receiver that cannot be reached or
/// refuses a push is retried at the next push, on a new connection; each
/// change between working and failing is logged once.
pub async fn push(
    target: Arc<Target>,
    url: String,
    interval: Duration,
    counters: Arc<ExportCounters>,
    mut stopped: watch::Receiver<bool>,
) {
    let start = nanos_now();
    let mut client: Option<MetricsServiceClient<tonic::transport::Channel>> = None;
    let mut last: Option<(Instant, Vec<(String, usize)>)> = None;
    let mut failing = false;
    let mut tick = tokio::time::interval(CHANGE_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = stopped.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        }
        let services = target.services();
        let depths: Vec<(String, usize)> = services
            .iter()
            .map(|s| (s.name.clone(), s.queue_depth()))
            .collect();
        let due = match &last {
            None => true,
            Some((at, seen)) => at.elapsed() >= interval || *seen != depths,
        };
        if !due {
            continue;
        }
        let states: Vec<ServiceState<'_>> = services
            .iter()
            .zip(&depths)
            .map(|(s, (_, depth))| ServiceState {
                name: &s.name,
                queue_depth: *depth,
                in_flight: s.in_flight(),
                wait: s.metrics.wait_snapshot(),
            })
            .collect();
        let request = export_request(&states, start, nanos_now());
        last = Some((Instant::now(), depths));
        let result = async {
            if client.is_none() {
                let endpoint = tonic::transport::Endpoint::from_shared(url.clone())
                    .map_err(|e| e.to_string())?
                    .connect_timeout(interval.max(Duration::from_secs(1)));
                client = Some(MetricsServiceClient::new(
                    endpoint.connect().await.map_err(|e| e.to_string())?,
                ));
            }
            let c = client.as_mut().expect("connected above");
            tokio::time::timeout(interval.max(Duration::from_secs(1)), c.export(request))
                .await
                .map_err(|_| "no answer in time".to_string())?
                .map_err(|s| format!("{}: {}", s.code(), s.message()))?;
            Ok::<(), String>(())
        }
        .await;
        match result {
            Ok(()) => {
                counters.ok.fetch_add(1, Ordering::Relaxed);
                if failing {
                    tracing::info!(%url, "OTLP push works again");
                    failing = false;
                }
            }
            Err(e) => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                client = None;
                if !failing {
                    tracing::warn!(%url, error = %e, "OTLP push failed; the scaler sees no queue until it works (retrying every push)");
                    failing = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attribute(points: &[KeyValue]) -> Option<String> {
        points.iter().find(|kv| kv.key == "service").and_then(|kv| {
            match kv.value.as_ref()?.value.as_ref()? {
                any_value::Value::StringValue(s) => Some(s.clone()),
                _ => None,
            }
        })
    }

    #[test]
    fn each_service_gets_its_depth_in_flight_and_wait() {
        let mut buckets = vec![0u64; WAIT_BOUNDS.len() + 1];
        buckets[0] = 3;
        buckets[WAIT_BOUNDS.len()] = 1;
        let states = [
            ServiceState {
                name: "ml/chat-predictor:80",
                queue_depth: 4,
                in_flight: 7,
                wait: WaitSnapshot {
                    buckets: buckets.clone(),
                    count: 4,
                    sum_seconds: 200.5,
                },
            },
            ServiceState {
                name: "ml/code-predictor:80",
                queue_depth: 0,
                in_flight: 0,
                wait: WaitSnapshot {
                    buckets: vec![0; WAIT_BOUNDS.len() + 1],
                    count: 0,
                    sum_seconds: 0.0,
                },
            },
        ];
        let request = export_request(&states, 10, 20);
        let metrics = &request.resource_metrics[0].scope_metrics[0].metrics;
        let gauge = |name: &str| -> Vec<(String, f64)> {
            let m = metrics.iter().find(|m| m.name == name).expect(name);
            let Some(Data::Gauge(g)) = &m.data else {
                panic!("{name} is not a gauge")
            };
            g.data_points
                .iter()
                .map(|p| {
                    let Some(number_data_point::Value::AsDouble(v)) = p.value else {
                        panic!("not a double")
                    };
                    assert_eq!((p.start_time_unix_nano, p.time_unix_nano), (10, 20));
                    (attribute(&p.attributes).unwrap(), v)
                })
                .collect()
        };
        assert_eq!(
            gauge("aim_gateway_queue_depth"),
            vec![
                ("ml/chat-predictor:80".into(), 4.0),
                ("ml/code-predictor:80".into(), 0.0)
            ]
        );
        assert_eq!(gauge("aim_gateway_in_flight")[0].1, 7.0);
        let wait = metrics
            .iter()
            .find(|m| m.name == "aim_gateway_queue_wait_seconds")
            .unwrap();
        let Some(Data::Histogram(h)) = &wait.data else {
            panic!("not a histogram")
        };
        assert_eq!(
            h.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        let p = &h.data_points[0];
        // One more count than bounds: the last is the overflow bucket.
        assert_eq!(p.bucket_counts.len(), p.explicit_bounds.len() + 1);
        assert_eq!(p.bucket_counts, buckets);
        assert_eq!((p.count, p.sum), (4, Some(200.5)));
    }
}
