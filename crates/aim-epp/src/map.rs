//! Pure translation between ext_proc messages and the picker: what a
//! request's headers say, and the answers for a pick, a refusal and each
//! body or trailer message. No I/O, no clock.
//!
//! The wire contract is the endpoint-picker protocol proposal of the
//! Gateway API Inference Extension (`docs/proposals/004-endpoint-picker-protocol`
//! in its repository) over Envoy's ext_proc API
//! (`envoy/service/ext_proc/v3/external_processor.proto`).

use prost_types::{Struct, Value, value::Kind};

use crate::proto::envoy::config::core::v3::{
    HeaderMap, HeaderValue, HeaderValueOption, header_value_option::HeaderAppendAction,
};
use crate::proto::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use crate::proto::envoy::service::ext_proc::v3::{
    BodyMutation, BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, HttpBody,
    HttpHeaders, ImmediateResponse, ProcessingResponse, ProtocolConfiguration,
    StreamedBodyResponse, TrailersResponse, body_mutation, processing_response,
};
use crate::proto::envoy::r#type::v3::{HttpStatus, StatusCode};
use crate::server::Refusal;

/// The request header, and the key under [`DESTINATION_NAMESPACE`] in the
/// answer's dynamic metadata, that carry the picked endpoint as `IP:PORT`.
pub const DESTINATION_HEADER: &str = "x-gateway-destination-endpoint";
/// The dynamic-metadata namespace of the picked endpoint (Envoy's own
/// load-balancer namespace, as the protocol proposal sets by default).
pub const DESTINATION_NAMESPACE: &str = "envoy.lb";

/// What the picker needs of a request, from its ext_proc headers message.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestInfo {
    pub method: String,
    /// `:path` without its query.
    pub path: String,
    /// Every header as Envoy sent it, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The headers message did not end the request: a body follows.
    pub has_body: bool,
}

impl RequestInfo {
    /// The first value of header `name` (lower-case), if any.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads a request's headers. Envoy sends a value in `raw_value` (bytes)
/// or, from older versions, in `value`; the pseudo-headers `:method` and
/// `:path` are always there, and a message without them is refused naming
/// the one missing.
pub fn request_info(h: &HttpHeaders) -> Result<RequestInfo, String> {
    let headers: Vec<(String, String)> = h
        .headers
        .as_ref()
        .map(|m| m.headers.iter().map(header_text).collect())
        .unwrap_or_default();
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };
    let missing = |name: &str| {
        format!(
            "request_headers has no `{name}` header; Envoy sends the request's pseudo-headers \
             (:method, :path) with its headers, so send them as header entries"
        )
    };
    let method = find(":method").ok_or_else(|| missing(":method"))?;
    let full = find(":path").ok_or_else(|| missing(":path"))?;
    let path = full.split('?').next().unwrap_or_default().to_string();
    Ok(RequestInfo {
        method,
        path,
        headers,
        has_body: !h.end_of_stream,
    })
}

fn header_text(h: &HeaderValue) -> (String, String) {
    let value = if h.raw_value.is_empty() {
        h.value.clone()
    } else {
        String::from_utf8_lossy(&h.raw_value).into_owned()
    };
    (h.key.to_ascii_lowercase(), value)
}

/// How Envoy delivers bodies on this stream, from the `protocol_config` of
/// its first message (absent from older Envoys: then the answers suit the
/// streamed and buffered modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Modes {
    pub request: Option<BodySendMode>,
    pub response: Option<BodySendMode>,
}

impl Modes {
    pub fn from_config(c: Option<&ProtocolConfiguration>) -> Self {
        let Some(c) = c else {
            return Modes::default();
        };
        Modes {
            request: BodySendMode::try_from(c.request_body_mode).ok(),
            response: BodySendMode::try_from(c.response_body_mode).ok(),
        }
    }
}

fn set_header(name: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: name.to_string(),
            value: String::new(),
            raw_value: value.as_bytes().to_vec(),
        }),
        // A client could send its own x-gateway-destination-endpoint; the
        // pick replaces it rather than joining it.
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

fn string_value(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_string())),
    }
}

/// The answer to the request headers once `endpoint` (`IP:PORT`) is picked:
/// the destination header set on the request, the route cache cleared (so
/// a route that reads the header sees it), and the same endpoint in the
/// dynamic metadata under `envoy.lb`.
pub fn destination(endpoint: &str) -> ProcessingResponse {
    let lb = Struct {
        fields: [(DESTINATION_HEADER.to_string(), string_value(endpoint))].into(),
    };
    ProcessingResponse {
        response: Some(processing_response::Response::RequestHeaders(
            HeadersResponse {
                response: Some(CommonResponse {
                    header_mutation: Some(HeaderMutation {
                        set_headers: vec![set_header(DESTINATION_HEADER, endpoint)],
                        remove_headers: Vec::new(),
                    }),
                    clear_route_cache: true,
                    ..Default::default()
                }),
            },
        )),
        dynamic_metadata: Some(Struct {
            fields: [(
                DESTINATION_NAMESPACE.to_string(),
                Value {
                    kind: Some(Kind::StructValue(lb)),
                },
            )]
            .into(),
        }),
        ..Default::default()
    }
}

/// A refusal as Envoy's local reply: its status, headers and body as the
/// proxy would have answered, and its code in `details` (Envoy's response
/// code details, shown in access logs).
pub fn immediate(r: &Refusal) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(processing_response::Response::ImmediateResponse(
            ImmediateResponse {
                status: Some(HttpStatus {
                    code: status_code(r.status) as i32,
                }),
                headers: Some(HeaderMutation {
                    set_headers: r.headers.iter().map(|(n, v)| set_header(n, v)).collect(),
                    remove_headers: Vec::new(),
                }),
                body: r.body.clone().into_bytes(),
                grpc_status: None,
                details: format!("aim_{}", r.code),
            },
        )),
        ..Default::default()
    }
}

/// Envoy's `StatusCode` enum numbers its values by the HTTP status itself;
/// a status it does not list would be refused by Envoy's validation, so it
/// becomes 500.
fn status_code(status: u16) -> StatusCode {
    StatusCode::try_from(i32::from(status)).unwrap_or(StatusCode::InternalServerError)
}

/// Which side of the exchange a body or trailers message belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Request,
    Response,
}

/// The answer to a body message. In `FULL_DUPLEX_STREAMED` mode Envoy
/// forwards only what the processor sends back, so the chunk is returned
/// as it came (no buffering: tokens keep flowing); in the other modes Envoy
/// keeps the body and an empty answer lets it go on unchanged.
pub fn body_reply(side: Side, mode: Option<BodySendMode>, body: HttpBody) -> ProcessingResponse {
    let common = if mode == Some(BodySendMode::FullDuplexStreamed) {
        CommonResponse {
            body_mutation: Some(BodyMutation {
                mutation: Some(body_mutation::Mutation::StreamedResponse(
                    StreamedBodyResponse {
                        body: body.body,
                        end_of_stream: body.end_of_stream,
                        end_of_stream_without_message: body.end_of_stream_without_message,
                        grpc_message_compressed: body.grpc_message_compressed,
                    },
                )),
            }),
            ..Default::default()
        }
    } else {
        CommonResponse::default()
    };
    let reply = BodyResponse {
        response: Some(common),
    };
    ProcessingResponse {
        response: Some(match side {
            Side::Request => processing_response::Response::RequestBody(reply),
            Side::Response => processing_response::Response::ResponseBody(reply),
        }),
        ..Default::default()
    }
}

/// The answer to response headers: nothing to change.
pub fn response_headers_reply() -> ProcessingResponse {
    ProcessingResponse {
        response: Some(processing_response::Response::ResponseHeaders(
            HeadersResponse {
                response: Some(CommonResponse::default()),
            },
        )),
        ..Default::default()
    }
}

/// The answer to trailers: nothing to change.
pub fn trailers_reply(side: Side) -> ProcessingResponse {
    let t = TrailersResponse::default();
    ProcessingResponse {
        response: Some(match side {
            Side::Request => processing_response::Response::RequestTrailers(t),
            Side::Response => processing_response::Response::ResponseTrailers(t),
        }),
        ..Default::default()
    }
}

/// A header map as Envoy writes one (values in `raw_value`), for clients
/// and tests.
pub fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
    HeaderMap {
        headers: pairs
            .iter()
            .map(|(k, v)| HeaderValue {
                key: k.to_string(),
                value: String::new(),
                raw_value: v.as_bytes().to_vec(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)], end_of_stream: bool) -> HttpHeaders {
        HttpHeaders {
            headers: Some(header_map(pairs)),
            end_of_stream,
            ..Default::default()
        }
    }

    #[test]
    fn request_info_reads_raw_and_plain_values_and_drops_the_query() {
        let mut h = headers(
            &[
                (":method", "POST"),
                (":path", "/v1/completions?x=1"),
                ("X-Gateway-Inference-Fairness-Id", "team-a"),
            ],
            false,
        );
        // An older Envoy writes `value` instead of `raw_value`.
        h.headers.as_mut().unwrap().headers.push(HeaderValue {
            key: "content-type".into(),
            value: "application/json".into(),
            raw_value: Vec::new(),
        });
        let info = request_info(&h).unwrap();
        assert_eq!(info.method, "POST");
        assert_eq!(info.path, "/v1/completions");
        assert!(info.has_body);
        assert_eq!(
            info.header("x-gateway-inference-fairness-id"),
            Some("team-a")
        );
        assert_eq!(info.header("content-type"), Some("application/json"));
        assert_eq!(info.header("absent"), None);
        let info = request_info(&headers(
            &[(":method", "GET"), (":path", "/v1/models")],
            true,
        ))
        .unwrap();
        assert!(!info.has_body);
    }

    #[test]
    fn request_info_names_the_missing_pseudo_header() {
        let e = request_info(&headers(&[(":method", "POST")], false)).unwrap_err();
        assert!(e.contains("`:path`"), "{e}");
        let e = request_info(&headers(&[(":path", "/v1/completions")], false)).unwrap_err();
        assert!(e.contains("`:method`"), "{e}");
        let e = request_info(&HttpHeaders::default()).unwrap_err();
        assert!(e.contains("`:method`"), "{e}");
    }

    #[test]
    fn destination_sets_the_header_and_the_envoy_lb_metadata_to_the_same_endpoint() {
        let r = destination("10.0.0.5:8000");
        let Some(processing_response::Response::RequestHeaders(h)) = &r.response else {
            panic!("{r:?}");
        };
        let common = h.response.as_ref().unwrap();
        assert!(common.clear_route_cache);
        let set = &common.header_mutation.as_ref().unwrap().set_headers;
        assert_eq!(set.len(), 1);
        let hv = set[0].header.as_ref().unwrap();
        assert_eq!(hv.key, "x-gateway-destination-endpoint");
        assert_eq!(hv.raw_value, b"10.0.0.5:8000");
        assert_eq!(
            set[0].append_action,
            HeaderAppendAction::OverwriteIfExistsOrAdd as i32
        );
        let md = r.dynamic_metadata.as_ref().unwrap();
        let Some(Kind::StructValue(lb)) = &md.fields["envoy.lb"].kind else {
            panic!("{md:?}");
        };
        assert_eq!(
            lb.fields["x-gateway-destination-endpoint"].kind,
            Some(Kind::StringValue("10.0.0.5:8000".into()))
        );
    }

    #[test]
    fn a_refusal_becomes_a_local_reply_with_its_status_headers_and_body() {
        let r = Refusal {
            status: 429,
            code: "queue_full".into(),
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("retry-after".into(), "3".into()),
            ],
            body: r#"{"error":{"code":"queue_full"}}"#.into(),
        };
        let Some(processing_response::Response::ImmediateResponse(i)) = immediate(&r).response
        else {
            panic!()
        };
        assert_eq!(i.status.unwrap().code, 429);
        assert_eq!(i.body, r.body.as_bytes());
        assert_eq!(i.details, "aim_queue_full");
        let set = i.headers.unwrap().set_headers;
        let names: Vec<_> = set
            .iter()
            .map(|h| h.header.as_ref().unwrap().key.as_str())
            .collect();
        assert_eq!(names, ["content-type", "retry-after"]);
        // A status Envoy's enum does not list becomes 500.
        assert_eq!(status_code(599), StatusCode::InternalServerError);
        assert_eq!(status_code(503), StatusCode::ServiceUnavailable);
    }

    #[test]
    fn bodies_are_echoed_only_in_full_duplex_mode() {
        let chunk = HttpBody {
            body: b"data: 1\n\n".to_vec(),
            end_of_stream: true,
            ..Default::default()
        };
        let r = body_reply(
            Side::Response,
            Some(BodySendMode::FullDuplexStreamed),
            chunk.clone(),
        );
        let Some(processing_response::Response::ResponseBody(b)) = r.response else {
            panic!()
        };
        let Some(body_mutation::Mutation::StreamedResponse(s)) =
            b.response.unwrap().body_mutation.unwrap().mutation
        else {
            panic!()
        };
        assert_eq!(
            (s.body.as_slice(), s.end_of_stream),
            (&b"data: 1\n\n"[..], true)
        );
        for mode in [
            None,
            Some(BodySendMode::Buffered),
            Some(BodySendMode::Streamed),
        ] {
            let r = body_reply(Side::Request, mode, chunk.clone());
            let Some(processing_response::Response::RequestBody(b)) = r.response else {
                panic!()
            };
            assert_eq!(b.response.unwrap(), CommonResponse::default(), "{mode:?}");
        }
    }

    #[test]
    fn modes_come_from_the_first_messages_protocol_config() {
        assert_eq!(Modes::from_config(None), Modes::default());
        let m = Modes::from_config(Some(&ProtocolConfiguration {
            request_body_mode: BodySendMode::FullDuplexStreamed as i32,
            response_body_mode: BodySendMode::Buffered as i32,
            send_body_without_waiting_for_header_response: false,
        }));
        assert_eq!(m.request, Some(BodySendMode::FullDuplexStreamed));
        assert_eq!(m.response, Some(BodySendMode::Buffered));
        // A mode this build does not know reads as none given.
        let m = Modes::from_config(Some(&ProtocolConfiguration {
            request_body_mode: 42,
            ..Default::default()
        }));
        assert_eq!(m.request, None);
    }
}
