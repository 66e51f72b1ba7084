//! Real peers: the official OpenTelemetry Rust SDK exporter pushes over
//! OTLP/gRPC (gzip), OTLP/HTTP protobuf (gzip) and OTLP/HTTP JSON; a client
//! generated from KEDA's proto then asks with the metadata KServe writes for
//! the seed examples.

mod common;

use common::*;
use opentelemetry::KeyValue;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_otlp::{
    Compression, MetricExporter, Protocol, WithExportConfig, WithHttpConfig, WithTonicConfig,
};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::metrics::periodic_reader_with_async_runtime::PeriodicReader;
use std::time::Duration;

#[derive(Clone, Copy)]
enum Transport {
    Grpc,
    HttpProtobuf,
    HttpJson,
}

fn provider(transport: Transport, address: std::net::SocketAddr, pod: &str) -> SdkMeterProvider {
    let exporter = match transport {
        Transport::Grpc => MetricExporter::builder()
            .with_tonic()
            .with_endpoint(format!("http://{address}"))
            .with_compression(Compression::Gzip)
            .build(),
        Transport::HttpProtobuf => MetricExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(format!("http://{address}/v1/metrics"))
            .with_compression(Compression::Gzip)
            .build(),
        Transport::HttpJson => MetricExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpJson)
            .with_endpoint(format!("http://{address}/v1/metrics"))
            .build(),
    }
    .expect("exporter builds");
    // The async-runtime reader exports on the test's tokio runtime, which the
    // tonic and hyper clients need; a long interval leaves flushing to us.
    let reader = PeriodicReader::builder(exporter, opentelemetry_sdk::runtime::Tokio)
        .with_interval(Duration::from_secs(3600))
        .build();
    SdkMeterProvider::builder()
        .with_reader(reader)
        .with_resource(
            Resource::builder_empty()
                .with_attributes([
                    KeyValue::new("k8s.pod.name", pod.to_owned()),
                    KeyValue::new("service.name", "vllm"),
                ])
                .build(),
        )
        .build()
}

async fn flush(provider: &SdkMeterProvider) {
    let provider = provider.clone();
    tokio::task::spawn_blocking(move || provider.force_flush())
        .await
        .unwrap()
        .expect("export succeeds");
}

/// Seed 001: AIMService qwen-chat in ml-team, `vllm:num_requests_running`,
/// operationOverTime avg, target Value 1. AIM names the ISVC
/// qwen-chat-a04542d9 (hash of the namespace), so KServe's ScaledObject is
/// qwen-chat-a04542d9-predictor.
async fn running_requests_reach_keda(transport: Transport) {
    let scaler = start_scaler(|_| {}).await;
    let otlp = scaler.addresses[0];
    let keda = scaler.addresses[1];
    let isvc = "qwen-chat-a04542d9";
    let deployment = format!("{isvc}-predictor");

    let mut providers = Vec::new();
    for (pod, running, dep) in [
        ("pod-a", 3.0, deployment.as_str()),
        ("pod-b", 2.0, deployment.as_str()),
        ("other", 50.0, "other-predictor"),
    ] {
        let provider = provider(transport, otlp, pod);
        let gauge = provider
            .meter("vllm")
            .f64_gauge("vllm:num_requests_running")
            .build();
        gauge.record(
            running,
            &[
                KeyValue::new("namespace", "ml-team"),
                KeyValue::new("deployment", dep.to_owned()),
                KeyValue::new("pod", pod.to_owned()),
            ],
        );
        flush(&provider).await;
        providers.push(provider);
    }

    let mut client = keda_client(keda).await;
    let metadata = kserve_metadata(
        "ml-team",
        isvc,
        "vllm:num_requests_running",
        "1",
        Some("avg"),
    );
    let reference = scaled_object("ml-team", &deployment, metadata);
    let spec = client
        .get_metric_spec(reference.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(spec.metric_specs.len(), 1);
    assert_eq!(
        spec.metric_specs[0].metric_name,
        format!("ml-team-{deployment}")
    );
    assert_eq!(spec.metric_specs[0].target_size_float, 1.0);
    assert_eq!(spec.metric_specs[0].target_size, 1);
    let (value, int_value, active) = keda_poll(&mut client, &reference).await.unwrap();
    assert_eq!(value, 5.0, "pods a and b, not the other deployment");
    assert_eq!(int_value, 5);
    assert!(active);

    // The same push is reachable on the other port too: both serve everything.
    let mut other_port = keda_client(otlp).await;
    assert_eq!(keda_poll(&mut other_port, &reference).await.unwrap().0, 5.0);

    for provider in providers {
        let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    }
    scaler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_exporter_gauge_reaches_keda() {
    running_requests_reach_keda(Transport::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_exporter_gauge_reaches_keda() {
    running_requests_reach_keda(Transport::HttpProtobuf).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_json_exporter_gauge_reaches_keda() {
    running_requests_reach_keda(Transport::HttpJson).await;
}

/// Counters and histograms from the SDK keep their temporality and buckets:
/// a TTFT quantile and a request rate come out of what the SDK sent.
async fn counters_and_histograms(transport: Transport) {
    let scaler = start_scaler(|_| {}).await;
    let address = scaler.addresses[0];
    let provider = provider(transport, address, "pod-a");
    let meter = provider.meter("vllm");
    let ttft = meter
        .f64_histogram("vllm:time_to_first_token_seconds")
        .with_boundaries(vec![0.1, 0.5, 1.0])
        .build();
    let requests = meter.u64_counter("vllm:request_success_total").build();
    let attributes = [
        KeyValue::new("namespace", "default"),
        KeyValue::new("deployment", "huggingface-fbopt-predictor"),
    ];
    for seconds in [0.05, 0.05, 0.3, 0.7] {
        ttft.record(seconds, &attributes);
    }
    requests.add(7, &attributes);
    flush(&provider).await;

    let mut client = keda_client(address).await;
    // Seed 002 (KServe docs): huggingface-fbopt, target Value 4, no operationOverTime.
    let mut metadata = kserve_metadata(
        "default",
        "huggingface-fbopt",
        "vllm:time_to_first_token_seconds",
        "4",
        None,
    );
    metadata.insert("quantile".into(), "0.5".into());
    let reference = scaled_object("default", "huggingface-fbopt-predictor", metadata);
    let (p50, p50_int, _) = keda_poll(&mut client, &reference).await.unwrap();
    // Buckets [2, 1, 1, 0]: rank 2 of 4 ends the first bucket, at its bound 0.1.
    assert!((p50 - 0.1).abs() < 1e-9, "{p50}");
    assert_eq!(p50_int, 1, "the int field carries the ceiling");

    let metadata = kserve_metadata(
        "default",
        "huggingface-fbopt",
        "vllm:time_to_first_token_seconds_count",
        "4",
        None,
    );
    let reference = scaled_object("default", "huggingface-fbopt-predictor", metadata);
    assert_eq!(keda_poll(&mut client, &reference).await.unwrap().0, 4.0);

    let metadata = kserve_metadata(
        "default",
        "huggingface-fbopt",
        "vllm:request_success_total",
        "4",
        Some("last_one"),
    );
    let reference = scaled_object("default", "huggingface-fbopt-predictor", metadata);
    assert_eq!(keda_poll(&mut client, &reference).await.unwrap().0, 7.0);

    let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    scaler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_exporter_counters_and_histograms() {
    counters_and_histograms(Transport::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_exporter_counters_and_histograms() {
    counters_and_histograms(Transport::HttpProtobuf).await;
}
