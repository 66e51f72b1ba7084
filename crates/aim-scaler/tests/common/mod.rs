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
