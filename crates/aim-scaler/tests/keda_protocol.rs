//! KEDA ExternalScaler protocol: wire layout against KEDA's proto field
//! table, StreamIsActive push-on-change, and replica agreement.

mod common;

use aim_scaler::proto::externalscaler::{
    GetMetricSpecResponse, GetMetricsRequest, GetMetricsResponse, MetricSpec, MetricValue,
    ScaledObjectRef,
};
use common::otlp::{counter, gauge, histogram, now, number_point, request};
use common::*;
use prost::Message;
use prost::encoding::{WireType, decode_key, encode_key, encode_varint};
use std::collections::HashMap;
use std::time::Duration;
use tokio_stream::StreamExt;

const S: u64 = 1_000_000_000;
const EXPECTED: Duration = Duration::from_secs(5);
const NOTHING: Duration = Duration::from_millis(700);

fn put_string(buf: &mut Vec<u8>, tag: u32, value: &str) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(value.len() as u64, buf);
    buf.extend_from_slice(value.as_bytes());
}

/// `ScaledObjectRef` encoded by hand from KEDA's field numbers (name=1,
/// namespace=2, scalerMetadata=3 as map<string,string>), independent of the
/// generated code, the way KEDA's Go client puts it on the wire.
fn keda_scaled_object_ref(name: &str, namespace: &str, metadata: &[(&str, &str)]) -> Vec<u8> {
    let mut buf = Vec::new();
    put_string(&mut buf, 1, name);
    put_string(&mut buf, 2, namespace);
    for (k, v) in metadata {
        let mut entry = Vec::new();
        put_string(&mut entry, 1, k);
        put_string(&mut entry, 2, v);
        encode_key(3, WireType::LengthDelimited, &mut buf);
        encode_varint(entry.len() as u64, &mut buf);
        buf.extend_from_slice(&entry);
    }
    buf
}

#[test]
fn generated_types_match_kedas_wire_layout() {
    let query = r#"sum(vllm:num_requests_running{namespace="default", deployment="huggingface-fbopt-predictor"})"#;
    let bytes = keda_scaled_object_ref(
        "huggingface-fbopt-predictor",
        "default",
        &[("metricQuery", query), ("targetValue", "4")],
    );
    let decoded = ScaledObjectRef::decode(&bytes[..]).unwrap();
    assert_eq!(decoded.name, "huggingface-fbopt-predictor");
    assert_eq!(decoded.namespace, "default");
    assert_eq!(decoded.scaler_metadata["metricQuery"], query);
    assert_eq!(decoded.scaler_metadata["targetValue"], "4");

    // GetMetricsRequest{scaledObjectRef=1, metricName=2}.
    let mut request = Vec::new();
    encode_key(1, WireType::LengthDelimited, &mut request);
    encode_varint(bytes.len() as u64, &mut request);
    request.extend_from_slice(&bytes);
    put_string(&mut request, 2, "default-huggingface-fbopt-predictor");
    let decoded = GetMetricsRequest::decode(&request[..]).unwrap();
    assert_eq!(decoded.metric_name, "default-huggingface-fbopt-predictor");
    assert_eq!(
        decoded.scaled_object_ref.unwrap().name,
        "huggingface-fbopt-predictor"
    );

    // MetricValue{metricName=1 string, metricValue=2 int64, metricValueFloat=3 double}.
    let value = GetMetricsResponse {
        metric_values: vec![MetricValue {
            metric_name: "m".into(),
            metric_value: 3,
            metric_value_float: 2.5,
        }],
    }
    .encode_to_vec();
    let inner = &value[2..];
    assert_eq!(
        decode_key(&mut &value[..]).unwrap(),
        (1, WireType::LengthDelimited)
    );
    assert_eq!(value[1] as usize, inner.len());
    assert_eq!(
        inner,
        &[0x0a, 1, b'm', 0x10, 3, 0x19, 0, 0, 0, 0, 0, 0, 4, 0x40][..]
    );

    // MetricSpec{metricName=1, targetSize=2 int64, targetSizeFloat=3 double}.
    let spec = GetMetricSpecResponse {
        metric_specs: vec![MetricSpec {
            metric_name: "m".into(),
            target_size: 1,
            target_size_float: 0.5,
        }],
    }
    .encode_to_vec();
    assert_eq!(
        &spec[2..],
        &[0x0a, 1, b'm', 0x10, 1, 0x19, 0, 0, 0, 0, 0, 0, 0xe0, 0x3f][..]
    );
}

fn labels(pod: &str) -> Vec<(&'static str, String)> {
    vec![
        ("namespace", "default".to_owned()),
        ("deployment", "huggingface-fbopt-predictor".to_owned()),
        ("pod", pod.to_owned()),
    ]
}

fn running(
    pod: &str,
    time: u64,
    value: f64,
) -> opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest {
    let labels = labels(pod);
    let pairs: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
    request(vec![gauge(
        "vllm:num_requests_running",
        vec![number_point(&pairs, time, 0, value)],
    )])
}

/// The next state sent within `wait`, if any. Expected messages get a long
/// wait (a loaded machine is slow); "nothing is sent" checks a short one.
async fn next_message(
    stream: &mut tonic::Streaming<aim_scaler::proto::externalscaler::IsActiveResponse>,
    wait: Duration,
) -> Option<bool> {
    tokio::time::timeout(wait, stream.next())
        .await
        .ok()
        .flatten()
        .map(|r| r.unwrap().result)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_is_active_pushes_only_changes() {
    let scaler = start_scaler(|args| args.freshness = Duration::from_secs(1)).await;
    let address = scaler.addresses[1];
    let mut client = keda_client(address).await;
    let mut metadata = kserve_metadata(
        "default",
        "huggingface-fbopt",
        "vllm:num_requests_running",
        "4",
        None,
    );
    metadata.insert("activationThreshold".into(), "1".into());
    metadata.insert("valueIfMissing".into(), "0".into());
    let reference = scaled_object("default", "huggingface-fbopt-predictor", metadata);
    let mut stream = client
        .stream_is_active(reference)
        .await
        .unwrap()
        .into_inner();
    // No data yet: valueIfMissing 0 is not above the threshold of 1.
    assert_eq!(next_message(&mut stream, EXPECTED).await, Some(false));
    push(address, running("a", now(), 1.0)).await;
    assert_eq!(
        next_message(&mut stream, NOTHING).await,
        None,
        "still inactive: nothing is sent"
    );
    push(address, running("a", now(), 3.0)).await;
    assert_eq!(next_message(&mut stream, EXPECTED).await, Some(true));
    push(address, running("a", now(), 5.0)).await;
    assert_eq!(
        next_message(&mut stream, NOTHING).await,
        None,
        "still active: nothing is sent"
    );
    // The pod dies; after the 1 s freshness limit the state flips back.
    let flipped = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!flipped.result);
    scaler.shutdown().await;
}

/// Several replicas behind one Service agree when each receives every
/// export (fan-out), even if delivery order differs and exports are retried:
/// points are ordered by their own timestamp and a repeated timestamp
/// replaces rather than duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_fed_the_same_exports_answer_the_same() {
    let a = start_scaler(|_| {}).await;
    let b = start_scaler(|_| {}).await;
    let base = now() - 50 * S;
    let dep = [
        ("namespace", "default"),
        ("deployment", "huggingface-fbopt-predictor"),
    ];
    let mut exports = Vec::new();
    // Pod 1's counter resets midway; pod 2 climbs steadily; gauges and a histogram move.
    let counts = [
        [10.0, 20.0],
        [30.0, 40.0],
        [2.0, 60.0],
        [6.0, 80.0],
        [9.0, 100.0],
    ];
    for (i, [c1, c2]) in counts.iter().enumerate() {
        let time = base + i as u64 * 10 * S;
        let p1 = [dep[0], dep[1], ("pod", "p1")];
        let p2 = [dep[0], dep[1], ("pod", "p2")];
        exports.push(request(vec![
            counter(
                "vllm:request_success_total",
                vec![
                    number_point(&p1, time, base - S, *c1),
                    number_point(&p2, time, base - S, *c2),
                ],
            ),
            gauge(
                "vllm:num_requests_running",
                vec![
                    number_point(&p1, time, 0, (i * 2) as f64),
                    number_point(&p2, time, 0, 9.0 - i as f64),
                ],
            ),
            histogram(
                "vllm:time_to_first_token_seconds",
                &p1,
                time,
                base - S,
                &[0.1, 0.5, 1.0],
                &[i as u64, 2 * i as u64, 1, 0],
            ),
        ]));
    }
    for export in &exports {
        push(a.addresses[0], export.clone()).await;
    }
    // Replica b: reverse order, and a retried export.
    for export in exports.iter().rev() {
        push(b.addresses[0], export.clone()).await;
    }
    push(b.addresses[0], exports[2].clone()).await;

    let mut client_a = keda_client(a.addresses[1]).await;
    let mut client_b = keda_client(b.addresses[1]).await;
    let mut compared = 0;
    for (metric, extra) in [
        ("vllm:request_success_total", None),
        ("vllm:num_requests_running", None),
        (
            "vllm:time_to_first_token_seconds",
            Some(("quantile", "0.9")),
        ),
    ] {
        for op in ["last_one", "avg", "max", "min", "rate", "count"] {
            let mut metadata: HashMap<String, String> =
                kserve_metadata("default", "huggingface-fbopt", metric, "4", Some(op));
            if let Some((k, v)) = extra {
                metadata.insert(k.into(), v.into());
            }
            let reference = scaled_object("default", "huggingface-fbopt-predictor", metadata);
            let from_a = keda_poll(&mut client_a, &reference)
                .await
                .map_err(|s| (s.code(), s.message().to_owned()));
            let from_b = keda_poll(&mut client_b, &reference)
                .await
                .map_err(|s| (s.code(), s.message().to_owned()));
            assert_eq!(from_a, from_b, "{metric} {op}");
            compared += usize::from(from_a.is_ok());
        }
    }
    assert_eq!(
        compared,
        3 * 6 - 4,
        "quantile is defined for last_one and rate only"
    );

    // And the counter rate is the reset-aware one: p1 10->20->30->40, 40->2 reset (+2)->6->9;
    // p2 +80; over 40 s.
    let metadata = kserve_metadata(
        "default",
        "huggingface-fbopt",
        "vllm:request_success_total",
        "4",
        Some("rate"),
    );
    let reference = scaled_object("default", "huggingface-fbopt-predictor", metadata);
    let rate = keda_poll(&mut client_b, &reference).await.unwrap().0;
    assert!(
        (rate - ((20.0 + 2.0 + 4.0 + 3.0) + 80.0) / 40.0).abs() < 1e-9,
        "{rate}"
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// Right after a (re)start the store is empty and then holds only the pods
/// that exported first: the scaler refuses KEDA's value queries for
/// `--warmup`, even for a trigger whose `valueIfMissing` would otherwise
/// answer 0, and answers normally afterwards. The metric spec is served at
/// once (it needs no data, and KEDA needs it to build the HPA).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_scaler_refuses_values_during_its_warm_up() {
    let warmup = Duration::from_secs(2);
    let scaler = start_scaler(|args| args.warmup = warmup).await;
    let started = std::time::Instant::now();
    let address = scaler.addresses[0];
    let mut client = keda_client(address).await;
    let mut metadata = kserve_metadata(
        "default",
        "huggingface-fbopt",
        "vllm:num_requests_running",
        "1",
        None,
    );
    metadata.insert("valueIfMissing".into(), "0".into());
    let reference = scaled_object("default", "huggingface-fbopt-predictor", metadata);
    push(address, running("a", now(), 3.0)).await;

    let spec = client.get_metric_spec(reference.clone()).await.unwrap();
    assert_eq!(spec.into_inner().metric_specs.len(), 1);
    let refused = keda_poll(&mut client, &reference).await.unwrap_err();
    assert!(
        started.elapsed() < warmup,
        "the test was too slow to see the warm-up"
    );
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("--warmup"),
        "{}",
        refused.message()
    );
    assert!(
        refused
            .message()
            .contains("default/huggingface-fbopt-predictor"),
        "{}",
        refused.message()
    );
    let is_active = client.is_active(reference.clone()).await.unwrap_err();
    assert_eq!(is_active.code(), tonic::Code::Unavailable);

    tokio::time::sleep(warmup.saturating_sub(started.elapsed()) + Duration::from_millis(100)).await;
    push(address, running("a", now(), 3.0)).await;
    let (value, _, active) = keda_poll(&mut client, &reference).await.unwrap();
    assert_eq!(value, 3.0);
    assert!(active);
    scaler.shutdown().await;
}
