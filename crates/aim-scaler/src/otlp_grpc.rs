//! OTLP/gRPC `MetricsService/Export`.
//!
//! Served through tonic's generic server machinery with a codec of our own
//! instead of the generated `MetricsServiceServer`, for one reason: a
//! malformed request must be INVALID_ARGUMENT (a permanent error the
//! exporter drops) rather than the INTERNAL that tonic's codec reports, and
//! an oversized one RESOURCE_EXHAUSTED as other gRPC servers answer.

use crate::self_metrics::Transport;
use crate::state::ScalerState;
use bytes::{Buf, Bytes};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EnabledCompressionEncodings};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Code, Request, Response, Status};

pub const SERVICE_NAME: &str = "opentelemetry.proto.collector.metrics.v1.MetricsService";
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

#[derive(Clone)]
pub struct OtlpGrpcService {
    state: Arc<ScalerState>,
    max_message_bytes: usize,
}

impl OtlpGrpcService {
    pub fn new(state: Arc<ScalerState>, max_message_bytes: usize) -> Self {
        OtlpGrpcService {
            state,
            max_message_bytes,
        }
    }
}

impl NamedService for OtlpGrpcService {
    const NAME: &'static str = SERVICE_NAME;
}

struct Export(Arc<ScalerState>);

/// The handler gets the message's bytes and decodes them in place
/// ([`crate::otlp_wire`]) rather than through a prost-decoded request.
impl UnaryService<Bytes> for Export {
    type Response = ExportMetricsServiceResponse;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Self::Response>, Status>> + Send>>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            let report = state
                .ingest_protobuf(request.get_ref(), Transport::Grpc)
                .map_err(|error| {
                    Status::invalid_argument(format!(
                        "request body is not a valid OTLP ExportMetricsServiceRequest protobuf: {error}"
                    ))
                })?;
            state.metrics.record_request(Transport::Grpc, true);
            Ok(Response::new(ExportMetricsServiceResponse {
                partial_success: report.partial_success(),
            }))
        })
    }
}

/// Codec handing the request message over as raw bytes (decoded by the
/// handler, whose errors are INVALID_ARGUMENT naming the message) and
/// encoding the response with prost.
#[derive(Default)]
struct OtlpCodec;

struct RawDecoder;

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        Ok(Some(buf.copy_to_bytes(buf.remaining())))
    }
}

impl Codec for OtlpCodec {
    type Encode = ExportMetricsServiceResponse;
    type Decode = Bytes;
    type Encoder = <tonic_prost::ProstCodec<ExportMetricsServiceResponse, ()> as Codec>::Encoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstCodec::<ExportMetricsServiceResponse, ()>::default().encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawDecoder
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, Infallible>> + Send>>;

impl<B> tower::Service<http::Request<B>> for OtlpGrpcService
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let state = self.state.clone();
        let max = self.max_message_bytes;
        Box::pin(async move {
            if request.uri().path() != EXPORT_PATH {
                return Ok(Status::unimplemented(format!(
                    "{} is not served; use {EXPORT_PATH}",
                    request.uri().path()
                ))
                .into_http());
            }
            let mut accept = EnabledCompressionEncodings::default();
            accept.enable(CompressionEncoding::Gzip);
            let mut grpc = Grpc::new(OtlpCodec)
                .apply_compression_config(accept, EnabledCompressionEncodings::default())
                .apply_max_message_size_config(Some(max), None);
            let response = grpc.unary(Export(state.clone()), request).await;
            let response = rewrite_size_limit_status(response);
            if grpc_status(&response).is_some_and(|code| code != Code::Ok) {
                state.metrics.record_request(Transport::Grpc, false);
            }
            Ok(response)
        })
    }
}

fn grpc_status<B>(response: &http::Response<B>) -> Option<Code> {
    let value = response
        .headers()
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    Some(Code::from_i32(value))
}

/// tonic reports a message over the size limit as OUT_OF_RANGE before any
/// handler runs; gRPC's own servers say RESOURCE_EXHAUSTED, which is what
/// OTLP exporters expect for "too big".
fn rewrite_size_limit_status<B>(mut response: http::Response<B>) -> http::Response<B> {
    if grpc_status(&response) == Some(Code::OutOfRange) {
        response.headers_mut().insert(
            "grpc-status",
            http::HeaderValue::from(Code::ResourceExhausted as i32),
        );
    }
    response
}
