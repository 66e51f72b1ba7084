//! The admin address: `/metrics` (Prometheus text), `/healthz` (the
//! process answers) and `/readyz` (it takes new connections; 503 once it is
//! shutting down, so a load balancer stops sending).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::metrics;
use crate::otlp::ExportCounters;
use crate::proxy::Target;

fn answer(
    target: &Target,
    exports: Option<&ExportCounters>,
    ready: &AtomicBool,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match req.uri().path() {
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            {
                let services = target.services();
                let views: Vec<_> = services.iter().map(|s| s.view()).collect();
                let all: Vec<_> = services
                    .iter()
                    .zip(&views)
                    .map(|(s, v)| (s.name.as_str(), &s.metrics, v))
                    .collect();
                let mut page = metrics::render(&all);
                if let Some(exports) = exports {
                    page.push_str(&metrics::render_exports(exports));
                }
                page
            },
        ),
        "/healthz" => (StatusCode::OK, "text/plain", "ok".into()),
        "/readyz" if !ready.load(Ordering::Acquire) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "shutting down".into(),
        ),
        // With --kubernetes, not before the first routing table: until
        // then every request would be answered 404.
        "/readyz" if !target.ready() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "no routing table yet: the Gateway API objects are still being read".into(),
        ),
        "/readyz" => (StatusCode::OK, "text/plain", "ready".into()),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "the admin address serves /metrics, /healthz and /readyz".into(),
        ),
    };
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static parts are valid")
}

pub async fn serve(
    listener: TcpListener,
    target: Arc<Target>,
    exports: Option<Arc<ExportCounters>>,
    ready: Arc<AtomicBool>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            // The admin address stays up while the proxy drains (readiness
            // then says so), and goes with the stop flag's sender when the
            // drain is over.
            changed = stopped.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        let (target, ready, exports) = (target.clone(), ready.clone(), exports.clone());
        let svc = hyper::service::service_fn(move |req| {
            let response = answer(&target, exports.as_deref(), &ready, &req);
            async move { Ok::<_, Infallible>(response) }
        });
        tokio::spawn(async move {
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
