//! The proxy: one request in, one endpoint picked, the response streamed
//! back frame by frame as the endpoint writes it.
//!
//! Inference requests (`POST /v1/completions`, `POST /v1/chat/completions`)
//! go through the service's flow control; anything else (`/v1/models`,
//! `/health`…) goes to the best endpoint at once, saturated or not. Nothing
//! is buffered: the request body is handed to the endpoint as it arrives,
//! and each response frame (an SSE event, for a streamed completion) is
//! passed on when it arrives, so the client's first token waits for nothing
//! but the endpoint.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use aim_picker::Rejection;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::args::Config;
use crate::kubernetes::Router;
use crate::routes::{Action, PathKind, RequestView, rewrite_path};
use crate::service::{Assignment, InFlight, Service};

/// Every body the gateway sends or receives.
pub type ProxyBody = UnsyncBoxBody<Bytes, hyper::Error>;
/// The client the gateway reaches endpoints with (HTTP/1.1, as vLLM serves).
pub type Client = hyper_util::client::legacy::Client<HttpConnector, ProxyBody>;

pub fn client(connect_timeout: Duration) -> Client {
    let mut connector = HttpConnector::new();
    // Tokens are small writes; Nagle would hold each behind the previous
    // one's acknowledgement.
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connect_timeout));
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(connector)
}

/// Headers that belong to one connection, not to the message (RFC 9110
/// section 7.6.1); HTTP/2 forbids them outright.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers the Connection header names are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::try_from(n.trim()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in HOP_BY_HOP {
        headers.remove(n);
    }
    headers.remove(header::TRANSFER_ENCODING);
}

/// A response body that holds its request's place on the endpoint until
/// it ends or is dropped.
struct Guarded {
    inner: Incoming,
    _guard: InFlight,
}

impl Body for Guarded {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    UnsyncBoxBody::new(Full::new(bytes.into()).map_err(|never| match never {}))
}

/// The body of an OpenAI-style error: `{"error": {"message", "type",
/// "param", "code"}}`, with the cause's stable name in `code`. The proxy
/// and the ext_proc server answer with the same body.
pub fn error_body(status: StatusCode, code: &str, message: &str) -> String {
    let kind = match status.as_u16() {
        400 => "BadRequestError",
        404 => "NotFoundError",
        429 => "RateLimitError",
        502 => "BadGatewayError",
        503 => "ServiceUnavailableError",
        504 => "TimeoutError",
        _ => "InternalServerError",
    };
    serde_json::json!({
        "error": {"message": message, "type": kind, "param": null, "code": code}
    })
    .to_string()
}

/// An OpenAI-style error response (see [`error_body`]).
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response<ProxyBody> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(error_body(status, code, message)))
        .expect("static parts are valid")
}

/// A refusal's status, its Retry-After in whole seconds (at least 1) when
/// it has one, and its body.
pub fn rejection_parts(r: &Rejection) -> (StatusCode, Option<u64>, String) {
    let status = StatusCode::from_u16(r.status()).expect("429 and 503 are statuses");
    let retry_after = r.retry_after().map(|after| after.as_secs().max(1));
    (
        status,
        retry_after,
        error_body(status, r.reason(), &r.message()),
    )
}

fn rejection_response(r: &Rejection) -> Response<ProxyBody> {
    let (status, retry_after, body) = rejection_parts(r);
    let mut response = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(body))
        .expect("static parts are valid");
    if let Some(after) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(after));
    }
    response
}

/// Whether a request is an inference request, which goes through flow
/// control (`POST /v1/completions`, `POST /v1/chat/completions`); `path`
/// without its query.
pub fn is_inference(method: &str, path: &str) -> bool {
    method == "POST" && matches!(path, "/v1/completions" | "/v1/chat/completions")
}

/// Where requests go: one service (`--endpoint`, `--endpoints-file`), or
/// the Gateway API's routes (`--kubernetes`).
pub enum Target {
    Single(Arc<Service>),
    Routes(Arc<Router>),
}

impl Target {
    /// Every service the gateway sends to, for `/metrics` and shutdown.
    pub fn services(&self) -> Vec<Arc<Service>> {
        match self {
            Target::Single(s) => vec![s.clone()],
            Target::Routes(r) => r.services(),
        }
    }

    /// Whether requests can be routed: always for one service; for the
    /// Gateway API, once the first table is installed.
    pub fn ready(&self) -> bool {
        match self {
            Target::Single(_) => true,
            Target::Routes(r) => r.has_table(),
        }
    }

    pub fn in_flight(&self) -> u32 {
        self.services().iter().map(|s| s.in_flight()).sum()
    }

    pub fn close(&self) {
        for s in self.services() {
            s.close();
        }
    }
}

pub struct Proxy {
    pub target: Arc<Target>,
    client: Client,
    client_header: HeaderName,
    objective_header: HeaderName,
    objectives: std::collections::BTreeMap<String, i32>,
}

impl Proxy {
    pub fn new(target: Arc<Target>, client: Client, cfg: &Config) -> Self {
        Proxy {
            target,
            client,
            client_header: cfg.client_header.clone(),
            objective_header: cfg.objective_header.clone(),
            objectives: cfg.objectives.clone(),
        }
    }

    /// The client a request counts for in the queue's turns: the client
    /// header, else the peer's address.
    fn client_key(&self, req: &Request<Incoming>, peer: SocketAddr) -> String {
        req.headers()
            .get(&self.client_header)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map_or_else(|| peer.ip().to_string(), str::to_string)
    }

    fn priority(&self, req: &Request<Incoming>) -> i32 {
        req.headers()
            .get(&self.objective_header)
            .and_then(|v| v.to_str().ok())
            .and_then(|name| self.objectives.get(name).copied())
            .unwrap_or(0)
    }

    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<ProxyBody> {
        match &*self.target {
            Target::Single(service) => self.dispatch(service, req, peer).await,
            Target::Routes(router) => self.route(router, req, peer).await,
        }
    }

    /// Finds the request's rule, picks a backend by weight, applies the
    /// rule's filters and sends it to that backend's endpoints.
    async fn route(
        &self,
        router: &Router,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<ProxyBody> {
        let table = router.table();
        let host = req
            .uri()
            .host()
            .or_else(|| {
                req.headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
            })
            .map(|h| strip_port(h).to_ascii_lowercase());
        let view = RequestView {
            host: host.as_deref(),
            method: req.method().as_str(),
            path: req.uri().path(),
            query: req.uri().query(),
            headers: req.headers(),
        };
        let Some(entry) = table.route(&view) else {
            return error_response(
                StatusCode::NOT_FOUND,
                "no_route",
                &format!(
                    "no HTTPRoute rule matches {} {} on host {}; the gateway serves the routes attached to its Gateways",
                    req.method(),
                    req.uri().path(),
                    host.as_deref().unwrap_or("(none)")
                ),
            );
        };
        let action = &entry.action;
        let Some(backend) = action.choose() else {
            return error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "no_backend",
                &format!(
                    "HTTPRoute {} rule {} has no backendRef with weight above 0",
                    action.route, action.rule
                ),
            );
        };
        let key = match &backend.target {
            Ok(k) => k,
            Err(why) => {
                return error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "invalid_backend",
                    &format!("HTTPRoute {} rule {}: {why}", action.route, action.rule),
                );
            }
        };
        let Some(service) = router.backend(key) else {
            return error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_endpoint",
                &format!("backend {key} is not followed yet"),
            );
        };
        let matched = match &entry.path {
            PathKind::Prefix(p) => Some(p.clone()),
            PathKind::Exact(_) => None,
        };
        let (mut parts, body) = req.into_parts();
        filter(&mut parts, action, matched.as_deref());
        let work = self.dispatch(&service, Request::from_parts(parts, body), peer);
        let Some(limit) = action.request_timeout else {
            return work.await;
        };
        // timeouts.request bounds the wait for the response's head (time
        // held in the queue included); a stream that has begun runs on.
        // Dropping `work` leaves the queue as a client that went away does.
        match tokio::time::timeout(limit, work).await {
            Ok(response) => response,
            Err(_) => error_response(
                StatusCode::GATEWAY_TIMEOUT,
                "request_timeout",
                &format!(
                    "HTTPRoute {} rule {}: no response within its timeouts.request ({limit:?})",
                    action.route, action.rule
                ),
            ),
        }
    }

    /// Sends a request to one service's endpoints: inference requests
    /// through its flow control, others to its best endpoint at once.
    async fn dispatch(
        &self,
        service: &Arc<Service>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<ProxyBody> {
        let assignment = if is_inference(req.method().as_str(), req.uri().path()) {
            let client = self.client_key(&req, peer);
            match service.admit(&client, self.priority(&req)).await {
                Ok(a) => a,
                Err(r) => return rejection_response(&r),
            }
        } else {
            match service.any_endpoint() {
                Some(a) => a,
                None => {
                    return error_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "no_endpoint",
                        &format!("{} has no endpoint taking requests", service.name),
                    );
                }
            }
        };
        self.forward(service, req, assignment, peer).await
    }

    async fn forward(
        &self,
        service: &Service,
        req: Request<Incoming>,
        a: Assignment,
        peer: SocketAddr,
    ) -> Response<ProxyBody> {
        let (mut parts, body) = req.into_parts();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        parts.uri = a.url.uri(path);
        // vLLM serves HTTP/1.1; an HTTP/2 client's request is sent on as one.
        parts.version = Version::HTTP_11;
        strip_hop_by_hop(&mut parts.headers);
        // The endpoint's own authority goes in Host (set by the client).
        parts.headers.remove(header::HOST);
        if let Some(RewrittenHost(host)) = parts.extensions.remove::<RewrittenHost>() {
            parts.headers.insert(header::HOST, host);
        }
        let forwarded = match parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
        {
            Some(before) => format!("{before}, {}", peer.ip()),
            None => peer.ip().to_string(),
        };
        if let Ok(v) = HeaderValue::try_from(forwarded) {
            parts.headers.insert("x-forwarded-for", v);
        }
        let upstream = Request::from_parts(parts, UnsyncBoxBody::new(body));
        match self.client.request(upstream).await {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                let body = Guarded {
                    inner: body,
                    _guard: a.guard,
                };
                Response::from_parts(parts, UnsyncBoxBody::new(body))
            }
            Err(e) => {
                service.metrics.upstream_error();
                tracing::warn!(service = %service.name, endpoint = %a.url, error = %e, "endpoint unreachable");
                error_response(
                    StatusCode::BAD_GATEWAY,
                    "endpoint_unreachable",
                    &format!("endpoint {} could not be reached: {e}", a.url),
                )
            }
        }
    }
}

/// The Host a URLRewrite filter set (the forwarder otherwise drops the
/// client's Host for the endpoint's own authority).
#[derive(Clone)]
struct RewrittenHost(HeaderValue);

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        return host
            .split_once(']')
            .map_or(host, |(h, _)| &host[..h.len() + 1]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// Applies a rule's RequestHeaderModifier and URLRewrite filters.
fn filter(parts: &mut http::request::Parts, action: &Action, matched: Option<&str>) {
    for m in &action.header_modifiers {
        for nv in &m.set {
            if let (Ok(n), Ok(v)) = (
                HeaderName::try_from(nv.name.as_str()),
                HeaderValue::try_from(nv.value.as_str()),
            ) {
                parts.headers.insert(n, v);
            }
        }
        for nv in &m.add {
            if let (Ok(n), Ok(v)) = (
                HeaderName::try_from(nv.name.as_str()),
                HeaderValue::try_from(nv.value.as_str()),
            ) {
                parts.headers.append(n, v);
            }
        }
        for name in &m.remove {
            parts.headers.remove(name.as_str());
        }
    }
    let Some(rewrite) = &action.rewrite else {
        return;
    };
    if let Some(host) = rewrite
        .hostname
        .as_deref()
        .and_then(|h| HeaderValue::try_from(h).ok())
    {
        parts.extensions.insert(RewrittenHost(host));
    }
    if let Some(m) = &rewrite.path {
        let path = rewrite_path(parts.uri.path(), matched, m);
        let pq = match parts.uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let mut uri = http::uri::Parts::default();
        uri.path_and_query = pq.parse().ok();
        if let Ok(u) = http::Uri::from_parts(uri) {
            parts.uri = u;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_including_those_connection_names() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert(
            "content-type",
            HeaderValue::from_static("text/event-stream"),
        );
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("content-type"));
    }

    #[test]
    fn rejections_carry_status_code_and_retry_after() {
        let r = rejection_response(&Rejection::QueueFull {
            capacity: 4,
            retry_after: Duration::from_secs(7),
        });
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()[header::RETRY_AFTER], "7");
        let r = rejection_response(&Rejection::TimedOut {
            waited: Duration::from_secs(1),
            endpoints: 1,
        });
        assert_eq!(r.status(), 503);
        assert!(!r.headers().contains_key(header::RETRY_AFTER));
    }

    #[test]
    fn the_port_leaves_the_host_for_routing() {
        assert_eq!(strip_port("chat.example.com:8080"), "chat.example.com");
        assert_eq!(strip_port("chat.example.com"), "chat.example.com");
        assert_eq!(strip_port("[::1]:8080"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }

    fn action(filters: serde_json::Value) -> Action {
        let filters: Vec<crate::routes::Filter> = serde_json::from_value(filters).unwrap();
        Action::new("ns/r".into(), 0, Vec::new(), &filters, None)
    }

    fn parts(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = Request::builder().uri(uri);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn header_modifiers_set_add_and_remove() {
        let a = action(
            serde_json::json!([{"type": "RequestHeaderModifier", "requestHeaderModifier": {
                "set": [{"name": "x-tier", "value": "gold"}],
                "add": [{"name": "x-seen", "value": "aim"}],
                "remove": ["x-secret"],
            }}]),
        );
        let mut p = parts(
            "/v1/models",
            &[("x-tier", "free"), ("x-seen", "client"), ("x-secret", "s")],
        );
        filter(&mut p, &a, None);
        assert_eq!(p.headers.get_all("x-tier").iter().count(), 1);
        assert_eq!(p.headers["x-tier"], "gold");
        let seen: Vec<_> = p.headers.get_all("x-seen").iter().collect();
        assert_eq!(seen, ["client", "aim"]);
        assert!(p.headers.get("x-secret").is_none());
    }

    #[test]
    fn url_rewrite_replaces_the_matched_prefix_keeps_the_query_and_sets_the_host() {
        let a = action(serde_json::json!([{"type": "URLRewrite", "urlRewrite": {
            "hostname": "backend.internal",
            "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"},
        }}]));
        let mut p = parts("/team/chat/v1/completions?stream=true", &[]);
        filter(&mut p, &a, Some("/team/chat"));
        assert_eq!(p.uri.path(), "/v1/completions");
        assert_eq!(p.uri.query(), Some("stream=true"));
        let host = p.extensions.get::<RewrittenHost>().map(|h| h.0.clone());
        assert_eq!(host, Some(HeaderValue::from_static("backend.internal")));
        // The prefix itself becomes `/`.
        let mut p = parts("/team/chat", &[]);
        filter(&mut p, &a, Some("/team/chat"));
        assert_eq!(p.uri.path(), "/");
        // No filter: nothing changes.
        let mut p = parts("/team/chat/v1/models", &[]);
        filter(&mut p, &action(serde_json::json!([])), Some("/team/chat"));
        assert_eq!(p.uri.path(), "/team/chat/v1/models");
        assert!(p.extensions.get::<RewrittenHost>().is_none());
    }
}
