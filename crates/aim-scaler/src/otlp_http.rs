//! OTLP/HTTP `POST /v1/metrics`: binary protobuf or JSON, optionally
//! gzip-compressed, answered in the request's own content type.

use crate::ingest::IngestReport;
use crate::self_metrics::Transport;
use crate::state::ScalerState;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use http::{HeaderMap, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use prost::Message;
use std::io::Read;
use std::sync::Arc;

pub const PATH: &str = "/v1/metrics";

#[derive(Clone)]
struct HttpState {
    state: Arc<ScalerState>,
    max_body_bytes: usize,
}

pub fn router(state: Arc<ScalerState>, max_body_bytes: usize) -> Router {
    Router::new()
        .route(PATH, post(export))
        // The handler enforces its own limit (compressed and decompressed)
        // with a message that says which limit was hit.
        .layer(DefaultBodyLimit::disable())
        .with_state(HttpState {
            state,
            max_body_bytes,
        })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Protobuf,
    Json,
}

/// `google.rpc.Status`, which OTLP/HTTP uses for error bodies.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

struct Failure {
    status: StatusCode,
    grpc_code: tonic::Code,
    message: String,
}

impl Failure {
    fn new(status: StatusCode, grpc_code: tonic::Code, message: impl Into<String>) -> Self {
        Failure {
            status,
            grpc_code,
            message: message.into(),
        }
    }

    fn into_response(self, format: Format) -> Response {
        let status = RpcStatus {
            code: self.grpc_code as i32,
            message: self.message,
        };
        match format {
            Format::Json => (
                self.status,
                [(header::CONTENT_TYPE, "application/json")],
                serde_json::json!({"code": status.code, "message": status.message}).to_string(),
            )
                .into_response(),
            Format::Protobuf => (
                self.status,
                [(header::CONTENT_TYPE, "application/x-protobuf")],
                status.encode_to_vec(),
            )
                .into_response(),
        }
    }
}

fn format_of(headers: &HeaderMap) -> Result<Format, Failure> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/x-protobuf" | "application/protobuf" => Ok(Format::Protobuf),
        "application/json" => Ok(Format::Json),
        _ => Err(Failure::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            tonic::Code::InvalidArgument,
            format!(
                "Content-Type {content_type:?} is not supported; send application/x-protobuf or application/json"
            ),
        )),
    }
}

async fn read_body(body: Body, headers: &HeaderMap, max: usize) -> Result<Bytes, Failure> {
    let too_large = |what: &str| {
        Failure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            tonic::Code::ResourceExhausted,
            format!(
                "{what} is larger than the {max}-byte limit; send smaller batches or raise --max-request-bytes"
            ),
        )
    };
    let raw = Limited::new(body, max)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                too_large("request body")
            } else {
                Failure::new(
                    StatusCode::BAD_REQUEST,
                    tonic::Code::InvalidArgument,
                    format!("reading request body: {e}"),
                )
            }
        })?
        .to_bytes();
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    match encoding.as_str() {
        "" | "identity" | "none" => Ok(raw),
        "gzip" => {
            let mut decompressed = Vec::new();
            // take(max + 1) bounds a gzip bomb; one byte over means too large.
            flate2::read::GzDecoder::new(&raw[..])
                .take(max as u64 + 1)
                .read_to_end(&mut decompressed)
                .map_err(|e| {
                    Failure::new(
                        StatusCode::BAD_REQUEST,
                        tonic::Code::InvalidArgument,
                        format!("Content-Encoding is gzip but the body is not valid gzip: {e}"),
                    )
                })?;
            if decompressed.len() > max {
                return Err(too_large("decompressed request body"));
            }
            Ok(decompressed.into())
        }
        other => Err(Failure::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            tonic::Code::InvalidArgument,
            format!("Content-Encoding {other:?} is not supported; use gzip or none"),
        )),
    }
}

fn bad_body(detail: String) -> Failure {
    Failure::new(
        StatusCode::BAD_REQUEST,
        tonic::Code::InvalidArgument,
        detail,
    )
}

/// Decodes and ingests the body: protobuf read in place
/// ([`crate::otlp_wire`]), JSON through serde.
fn ingest_body(state: &ScalerState, format: Format, body: &[u8]) -> Result<IngestReport, Failure> {
    match format {
        Format::Protobuf => state.ingest_protobuf(body, Transport::Http).map_err(|e| {
            bad_body(format!(
                "body is not a valid OTLP ExportMetricsServiceRequest protobuf: {e}"
            ))
        }),
        Format::Json => {
            let request: ExportMetricsServiceRequest =
                serde_json::from_slice(body).map_err(|e| {
                    bad_body(format!(
                        "body is not a valid OTLP/JSON ExportMetricsServiceRequest: {e}"
                    ))
                })?;
            Ok(state.ingest(&request, Transport::Http))
        }
    }
}

async fn export(State(http): State<HttpState>, headers: HeaderMap, body: Body) -> Response {
    // Errors about the content type itself are answered in protobuf, the
    // OTLP/HTTP default.
    let format = match format_of(&headers) {
        Ok(format) => format,
        Err(failure) => {
            http.state.metrics.record_request(Transport::Http, false);
            return failure.into_response(Format::Protobuf);
        }
    };
    let report = match read_body(body, &headers, http.max_body_bytes)
        .await
        .and_then(|bytes| ingest_body(&http.state, format, &bytes))
    {
        Ok(report) => report,
        Err(failure) => {
            http.state.metrics.record_request(Transport::Http, false);
            return failure.into_response(format);
        }
    };
    http.state.metrics.record_request(Transport::Http, true);
    let response = ExportMetricsServiceResponse {
        partial_success: report.partial_success(),
    };
    match format {
        Format::Protobuf => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            response.encode_to_vec(),
        )
            .into_response(),
        Format::Json => match serde_json::to_vec(&response) {
            Ok(json) => (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                json,
            )
                .into_response(),
            Err(e) => Failure::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                tonic::Code::Internal,
                format!("encoding the response: {e}"),
            )
            .into_response(format),
        },
    }
}
