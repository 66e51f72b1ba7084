//! `--ext-proc-listen`: the same service's picker behind the Gateway API
//! Inference Extension's endpoint-picker protocol (Envoy ext_proc), so an
//! Envoy-based gateway can route with it.
//!
//! A request that arrives over ext_proc is decided exactly as one the
//! proxy receives: the same [`Service`] (endpoints, scrapes, in-flight
//! counts, flow-control queue), the same split between inference requests
//! (flow-controlled) and others (best endpoint at once), the same client
//! and objective headers, and the same refusals with the same JSON bodies.
//! Only the transport differs: the answer is the endpoint's `IP:PORT`, and
//! Envoy sends the request there itself.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use aim_epp::{Pick, PickFuture, Picked, Refusal, RequestInfo};
use aim_picker::Rejection;
use http::{HeaderName, StatusCode};

use crate::args::Config;
use crate::proxy::{error_body, is_inference, rejection_parts};
use crate::service::{InFlight, Service};

/// Picks for ext_proc streams from one service's state.
pub struct ServicePicker {
    service: Arc<Service>,
    client_header: HeaderName,
    objective_header: HeaderName,
    objectives: BTreeMap<String, i32>,
}

impl ServicePicker {
    pub fn new(service: Arc<Service>, cfg: &Config) -> Self {
        ServicePicker {
            service,
            client_header: cfg.client_header.clone(),
            objective_header: cfg.objective_header.clone(),
            objectives: cfg.objectives.clone(),
        }
    }

    /// The client a request counts for in the queue's turns: the client
    /// header; else the first address of `x-forwarded-for` (Envoy appends
    /// the downstream's address there when it is the edge); else Envoy's
    /// own address, so that all its requests share one turn.
    fn client_key(&self, r: &RequestInfo, peer: Option<SocketAddr>) -> String {
        let named = r
            .header(self.client_header.as_str())
            .filter(|v| !v.is_empty());
        let forwarded = || {
            r.header("x-forwarded-for")
                .and_then(|v| v.split(',').next())
                .map(str::trim)
                .filter(|v| !v.is_empty())
        };
        named
            .or_else(forwarded)
            .map(str::to_string)
            .or_else(|| peer.map(|p| p.ip().to_string()))
            .unwrap_or_else(|| "ext_proc".to_string())
    }

    fn priority(&self, r: &RequestInfo) -> i32 {
        r.header(self.objective_header.as_str())
            .and_then(|name| self.objectives.get(name).copied())
            .unwrap_or(0)
    }
}

/// A refusal as the proxy would have answered it.
pub fn refusal(r: &Rejection) -> Refusal {
    let (status, retry_after, body) = rejection_parts(r);
    let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
    if let Some(after) = retry_after {
        headers.push(("retry-after".to_string(), after.to_string()));
    }
    Refusal {
        status: status.as_u16(),
        code: r.reason().to_string(),
        headers,
        body,
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Refusal {
    Refusal {
        status: status.as_u16(),
        code: code.to_string(),
        headers: vec![("content-type".to_string(), "application/json".to_string())],
        body: error_body(status, code, message),
    }
}

impl Pick for ServicePicker {
    type Guard = InFlight;

    fn pick(&self, r: RequestInfo, peer: Option<SocketAddr>) -> PickFuture<InFlight> {
        let service = self.service.clone();
        let inference = is_inference(&r.method, &r.path);
        let client = self.client_key(&r, peer);
        let priority = self.priority(&r);
        Box::pin(async move {
            let a = if inference {
                // Refused before it takes a place: an OpenAI-style
                // completion is a JSON body, and Envoy said none follows.
                if !r.has_body {
                    return Err(error(
                        StatusCode::BAD_REQUEST,
                        "missing_body",
                        &format!(
                            "{} {} came with end_of_stream on its headers: an inference request needs its JSON body",
                            r.method, r.path
                        ),
                    ));
                }
                service
                    .admit(&client, priority)
                    .await
                    .map_err(|e| refusal(&e))?
            } else {
                service.any_endpoint().ok_or_else(|| {
                    error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "no_endpoint",
                        &format!("{} has no endpoint taking requests", service.name),
                    )
                })?
            };
            Ok(Picked {
                endpoint: a.url.authority().as_str().to_string(),
                guard: a.guard,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_rejection_keeps_the_proxys_status_retry_after_and_body() {
        let r = Rejection::QueueFull {
            capacity: 2,
            retry_after: Duration::from_millis(300),
        };
        let x = refusal(&r);
        assert_eq!((x.status, x.code.as_str()), (429, "queue_full"));
        // Under a second rounds up to 1, as the proxy's header does.
        assert!(x.headers.contains(&("retry-after".into(), "1".into())));
        let body: serde_json::Value = serde_json::from_str(&x.body).unwrap();
        assert_eq!(body["error"]["code"], "queue_full");
        assert_eq!(body["error"]["type"], "RateLimitError");
        assert_eq!(body["error"]["message"], r.message());
        let x = refusal(&Rejection::ShuttingDown);
        assert_eq!(x.status, 503);
        assert!(!x.headers.iter().any(|(n, _)| n == "retry-after"));
    }
}
