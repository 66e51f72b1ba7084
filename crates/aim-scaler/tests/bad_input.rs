//! Bad input gets the right gRPC or HTTP status and a message naming the
//! problem; the server keeps serving afterwards.

mod common;

use bytes::{Buf, BufMut, Bytes};
use common::otlp::{gauge, now, number_point, request};
use common::*;
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use prost::Message;
use std::io::Write;
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// Sends raw bytes as a gRPC message, to put malformed protobuf on the wire.
#[derive(Clone, Default)]
struct RawCodec;
struct RawEncoder;
struct RawDecoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

async fn raw_export(address: std::net::SocketAddr, body: Vec<u8>) -> Result<Bytes, tonic::Status> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static(
        "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
    );
    grpc.unary(tonic::Request::new(Bytes::from(body)), path, RawCodec)
        .await
        .map(|r| r.into_inner())
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

fn small_request() -> ExportMetricsServiceRequest {
    request(vec![gauge(
        "g",
        vec![number_point(&[("pod", "a")], now(), 0, 1.0)],
    )])
}

/// Field 1 (resource_metrics) claims 100 bytes but the buffer ends.
const TRUNCATED_PROTOBUF: &[u8] = &[0x0a, 100, 1, 2, 3];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_export_malformed_and_oversized() {
    let scaler = start_scaler(|args| args.max_request_bytes = 4096).await;
    let address = scaler.addresses[0];

    let err = raw_export(address, TRUNCATED_PROTOBUF.to_vec())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("ExportMetricsServiceRequest"),
        "{}",
        err.message()
    );

    let big = request(vec![gauge(
        "g",
        (0..200)
            .map(|i| number_point(&[("pod", &format!("pod-{i:04}"))], now(), 0, 1.0))
            .collect(),
    )]);
    assert!(big.encoded_len() > 4096);
    let err = raw_export(address, big.encode_to_vec()).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("4096"),
        "names the limit: {}",
        err.message()
    );

    // Still serving: a good request is accepted with no partial success.
    let ok = raw_export(address, small_request().encode_to_vec())
        .await
        .unwrap();
    assert_eq!(
        ExportMetricsServiceResponse::decode(ok)
            .unwrap()
            .partial_success,
        None
    );
    scaler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_export_bad_bodies() {
    let scaler = start_scaler(|args| args.max_request_bytes = 4096).await;
    let address = scaler.addresses[1];
    let protobuf = [("content-type", "application/x-protobuf")];
    let json = [("content-type", "application/json")];

    let decode_status = |body: &[u8]| {
        #[derive(Clone, PartialEq, prost::Message)]
        struct RpcStatus {
            #[prost(int32, tag = "1")]
            code: i32,
            #[prost(string, tag = "2")]
            message: String,
        }
        let status = RpcStatus::decode(body).expect("error body is a google.rpc.Status");
        (status.code, status.message)
    };

    let (status, headers, body) = http_request(
        address,
        "POST",
        "/v1/metrics",
        &protobuf,
        TRUNCATED_PROTOBUF.to_vec(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(headers["content-type"], "application/x-protobuf");
    let (code, message) = decode_status(&body);
    assert_eq!(code, Code::InvalidArgument as i32);
    assert!(
        message.contains("ExportMetricsServiceRequest protobuf"),
        "{message}"
    );

    let (status, headers, body) = http_request(
        address,
        "POST",
        "/v1/metrics",
        &json,
        br#"{"resourceMetrics": 5}"#.to_vec(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(headers["content-type"], "application/json");
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["code"], Code::InvalidArgument as i32);
    assert!(
        body["message"].as_str().unwrap().contains("OTLP/JSON"),
        "{body}"
    );

    let bad_gzip = [
        ("content-type", "application/x-protobuf"),
        ("content-encoding", "gzip"),
    ];
    let (status, _, body) = http_request(
        address,
        "POST",
        "/v1/metrics",
        &bad_gzip,
        b"not gzip".to_vec(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(decode_status(&body).1.contains("gzip"));

    let (status, _, body) =
        http_request(address, "POST", "/v1/metrics", &protobuf, vec![0; 5000]).await;
    assert_eq!(status, 413);
    assert!(decode_status(&body).1.contains("4096-byte limit"));

    // A small gzip body that inflates past the limit is caught too.
    let bomb = gzip(&vec![0u8; 1 << 18]);
    assert!(bomb.len() < 4096);
    let (status, _, body) = http_request(address, "POST", "/v1/metrics", &bad_gzip, bomb).await;
    assert_eq!(status, 413);
    assert!(decode_status(&body).1.contains("decompressed"));

    let (status, _, body) = http_request(
        address,
        "POST",
        "/v1/metrics",
        &[("content-type", "text/plain")],
        b"x".to_vec(),
    )
    .await;
    assert_eq!(status, 415);
    assert!(
        decode_status(&body)
            .1
            .contains("application/x-protobuf or application/json")
    );

    let (status, _, _) = http_request(address, "GET", "/v1/metrics", &[], vec![]).await;
    assert_eq!(status, 405);

    // Good gzip protobuf and JSON bodies still work.
    let good = gzip(&small_request().encode_to_vec());
    let (status, _, body) = http_request(address, "POST", "/v1/metrics", &bad_gzip, good).await;
    assert_eq!(status, 200);
    assert_eq!(
        ExportMetricsServiceResponse::decode(&body[..])
            .unwrap()
            .partial_success,
        None
    );
    let (status, headers, _) = http_request(
        address,
        "POST",
        "/v1/metrics",
        &json,
        serde_json::to_vec(&small_request()).unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    scaler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keda_calls_with_bad_metadata_or_missing_data() {
    let scaler = start_scaler(|_| {}).await;
    let address = scaler.addresses[1];
    let mut client = keda_client(address).await;
    let metadata = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let cases: Vec<(std::collections::HashMap<String, String>, Code, &str)> = vec![
        (
            metadata(&[("metricQuery", "sum(vllm:x{a=\"b\""), ("targetValue", "1")]),
            Code::InvalidArgument,
            "metricQuery",
        ),
        (
            metadata(&[("metricQuery", "m")]),
            Code::InvalidArgument,
            "'targetValue'",
        ),
        (
            metadata(&[
                ("metricQuery", "m"),
                ("targetValue", "1"),
                ("operationOverTime", "p99"),
            ]),
            Code::InvalidArgument,
            "operationOverTime",
        ),
        (
            metadata(&[
                ("metricQuery", "m"),
                ("targetValue", "1"),
                ("policy", "magic"),
            ]),
            Code::InvalidArgument,
            "unknown policy 'magic'",
        ),
        (
            metadata(&[
                ("metricQuery", "sum(vllm:never_sent{namespace=\"x\"})"),
                ("targetValue", "1"),
            ]),
            Code::NotFound,
            "vllm:never_sent",
        ),
    ];
    for (metadata, code, needle) in cases {
        let reference = scaled_object("ns", "so", metadata);
        let err = keda_poll(&mut client, &reference).await.unwrap_err();
        assert_eq!(err.code(), code, "{err:?}");
        assert!(err.message().contains(needle), "{}", err.message());
        assert!(
            err.message().contains("ns/so"),
            "names the ScaledObject: {}",
            err.message()
        );
    }
    let err = client
        .get_metrics(aim_scaler::proto::externalscaler::GetMetricsRequest {
            scaled_object_ref: None,
            metric_name: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("scaledObjectRef"));

    // Known metric, but no series carries the queried label.
    push(scaler.addresses[0], small_request()).await;
    let reference = scaled_object(
        "ns",
        "so",
        metadata(&[
            ("metricQuery", "sum(g{deployment=\"d\"})"),
            ("targetValue", "1"),
        ]),
    );
    let err = keda_poll(&mut client, &reference).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        err.message().contains("must carry every label"),
        "{}",
        err.message()
    );
    scaler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_cap_rejections_are_reported_and_counted() {
    let scaler = start_scaler(|args| args.max_series = 3).await;
    let points = (0..5)
        .map(|i| number_point(&[("pod", &format!("p{i}"))], now(), 0, 1.0))
        .collect();
    let response = push(scaler.addresses[0], request(vec![gauge("g", points)])).await;
    let partial = response.partial_success.expect("partial success is set");
    assert_eq!(partial.rejected_data_points, 2);
    assert!(
        partial.error_message.contains("series cap"),
        "{}",
        partial.error_message
    );

    let (status, _, body) =
        http_request(scaler.admin_address, "GET", "/metrics", &[], vec![]).await;
    assert_eq!(status, 200);
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.contains("aim_scaler_points_rejected_total{reason=\"series_cap\"} 2"),
        "{text}"
    );
    assert!(text.contains("aim_scaler_series 3"), "{text}");
    assert!(
        text.contains("aim_scaler_points_ingested_total{transport=\"grpc\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("aim_scaler_query_duration_seconds_count{rpc=\"GetMetrics\"}"),
        "{text}"
    );
    for probe in ["/healthz", "/readyz"] {
        assert_eq!(
            http_request(scaler.admin_address, "GET", probe, &[], vec![])
                .await
                .0,
            200,
            "{probe}"
        );
    }
    scaler.shutdown().await;
}
