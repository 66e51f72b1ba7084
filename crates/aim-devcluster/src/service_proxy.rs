//! Cluster Service names for the bed's local processes: an HTTP proxy.
//!
//! In a cluster, KEDA reaches `http://prometheus-operated.monitoring.svc:9090`
//! through cluster DNS and the Service's virtual IP. The bed's components
//! are local processes: there is no cluster DNS, and Service IPs route
//! nowhere. Go programs send plain-HTTP requests through the proxy that
//! `HTTP_PROXY` names (net/http's `ProxyFromEnvironment`, which KEDA's
//! HTTP clients use) and never send loopback destinations there (the
//! apiserver, pod IPs), so the bed points KEDA's `HTTP_PROXY` here. This
//! proxy resolves `<service>.<namespace>.svc[.cluster.local]` as
//! kube-proxy would route it: the Service port asked for, the port of the
//! same name in the Service's EndpointSlices, a ready endpoint (in turn).
//! An ExternalName Service is followed to the name it gives.
//!
//! So the seeds' manifests keep their cluster addresses unchanged in the
//! bed; a name that is not a Service's gets a 502 that says why.
//!
//! [`resolve`] is pure; [`serve`] runs it over reflector stores.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, Response, StatusCode, header};
use futures::TryStreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::loopback_slices::SERVICE_NAME;

/// ExternalName Services that point at each other end here.
const MAX_HOPS: usize = 8;

/// Why a host could not be resolved; the proxy's 502 body says it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ResolveError {
    #[error(
        "{0} is not a cluster Service name: this proxy serves <service>.<namespace>.svc[.cluster.local] only"
    )]
    NotAServiceName(String),
    #[error("no Service {namespace}/{name}")]
    NoService { namespace: String, name: String },
    #[error("Service {namespace}/{name} has no port {port} (its ports: {known:?})")]
    NoPort {
        namespace: String,
        name: String,
        port: u16,
        known: Vec<i32>,
    },
    #[error(
        "Service {namespace}/{name} port {port} has no ready endpoint in its EndpointSlices (label {SERVICE_NAME}={name})"
    )]
    NoReadyEndpoint {
        namespace: String,
        name: String,
        port: u16,
    },
    #[error("ExternalName Services starting at {0} lead more than {MAX_HOPS} names deep")]
    TooManyHops(String),
}

/// `(service, namespace)` of a cluster Service host name, with or without
/// the cluster domain and a trailing dot.
pub fn service_of_host(host: &str) -> Option<(&str, &str)> {
    let host = host.strip_suffix('.').unwrap_or(host);
    let host = host.strip_suffix(".cluster.local").unwrap_or(host);
    let rest = host.strip_suffix(".svc")?;
    let (name, namespace) = rest.split_once('.')?;
    (!name.is_empty() && !namespace.is_empty() && !namespace.contains('.'))
        .then_some((name, namespace))
}

/// Where a request for `host:port` goes. `services` finds a Service by
/// namespace and name; `slices` lists a Service's EndpointSlices;
/// `turn` picks among the ready endpoints (round robin by the caller).
pub fn resolve(
    host: &str,
    port: u16,
    services: &dyn Fn(&str, &str) -> Option<Service>,
    slices: &dyn Fn(&str, &str) -> Vec<EndpointSlice>,
    turn: usize,
) -> Result<(String, u16), ResolveError> {
    let mut host = host.to_string();
    for _ in 0..MAX_HOPS {
        let Some((name, namespace)) = service_of_host(&host) else {
            return Err(ResolveError::NotAServiceName(host));
        };
        let (name, namespace) = (name.to_string(), namespace.to_string());
        let service = services(&namespace, &name).ok_or_else(|| ResolveError::NoService {
            namespace: namespace.clone(),
            name: name.clone(),
        })?;
        let spec = service.spec.unwrap_or_default();
        if spec.type_.as_deref() == Some("ExternalName") {
            let target = spec.external_name.unwrap_or_default();
            if service_of_host(&target).is_none() {
                // A name outside the cluster (or an address): the caller
                // connects to it directly, as DNS's CNAME would lead it.
                return Ok((target, port));
            }
            host = target;
            continue;
        }
        let ports = spec.ports.unwrap_or_default();
        let Some(service_port) = ports.iter().find(|p| p.port == i32::from(port)) else {
            return Err(ResolveError::NoPort {
                namespace,
                name,
                port,
                known: ports.iter().map(|p| p.port).collect(),
            });
        };
        let port_name = service_port.name.clone().unwrap_or_default();
        let mut ready: Vec<(String, u16)> = Vec::new();
        for slice in slices(&namespace, &name) {
            let Some(number) = slice
                .ports
                .unwrap_or_default()
                .iter()
                .find(|p| p.name.clone().unwrap_or_default() == port_name)
                .and_then(|p| p.port)
                .and_then(|p| u16::try_from(p).ok())
            else {
                continue;
            };
            for endpoint in slice.endpoints {
                let is_ready = endpoint
                    .conditions
                    .as_ref()
                    .and_then(|c| c.ready)
                    .unwrap_or(true);
                if let (true, Some(address)) = (is_ready, endpoint.addresses.first()) {
                    ready.push((address.clone(), number));
                }
            }
        }
        ready.sort();
        if ready.is_empty() {
            return Err(ResolveError::NoReadyEndpoint {
                namespace,
                name,
                port,
            });
        }
        return Ok(ready[turn % ready.len()].clone());
    }
    Err(ResolveError::TooManyHops(host))
}

/// The proxy's counters, rendered on the bridge's `/metrics`.
#[derive(Debug, Default)]
pub struct ProxyCounters {
    pub forwarded: AtomicU64,
    pub unresolved: AtomicU64,
    pub upstream_errors: AtomicU64,
}

impl ProxyCounters {
    pub fn render(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "# HELP aim_service_proxy_requests_total Requests through the bed's Service proxy, by result.\n\
             # TYPE aim_service_proxy_requests_total counter\n\
             aim_service_proxy_requests_total{{result=\"forwarded\"}} {}\n\
             aim_service_proxy_requests_total{{result=\"unresolved\"}} {}\n\
             aim_service_proxy_requests_total{{result=\"upstream_error\"}} {}\n",
            get(&self.forwarded),
            get(&self.unresolved),
            get(&self.upstream_errors),
        )
    }
}

/// Headers that describe one connection, not the request (RFC 9110 §7.6.1),
/// plus the proxy's own.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn end_to_end(headers: &HeaderMap) -> HeaderMap {
    let mut out = headers.clone();
    for name in HOP_BY_HOP {
        out.remove(*name);
    }
    out
}

struct Shared {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    http: reqwest::Client,
    turn: AtomicUsize,
    counters: Arc<ProxyCounters>,
}

fn refuse(status: StatusCode, text: String) -> Response<Body> {
    let mut response = Response::new(Body::from(text + "\n"));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

async fn forward(shared: Arc<Shared>, request: Request<Body>) -> Response<Body> {
    if request.method() == Method::CONNECT {
        return refuse(
            StatusCode::NOT_IMPLEMENTED,
            "the bed's Service proxy forwards plain http:// requests only (no CONNECT): use http:// for in-cluster addresses".into(),
        );
    }
    let uri = request.uri().clone();
    let Some(authority) = uri.authority() else {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!(
                "{uri} is not absolute: this is an HTTP proxy; send it as HTTP_PROXY would (GET http://<service>.<namespace>.svc:<port>/path)"
            ),
        );
    };
    let host = authority.host().to_string();
    let port = authority.port_u16().unwrap_or(80);
    let turn = shared.turn.fetch_add(1, Ordering::Relaxed);
    let services = |ns: &str, name: &str| {
        shared
            .services
            .get(&ObjectRef::new(name).within(ns))
            .map(|s| (*s).clone())
    };
    let slices = |ns: &str, name: &str| {
        shared
            .slices
            .state()
            .iter()
            .filter(|s| {
                s.metadata.namespace.as_deref() == Some(ns)
                    && s.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(SERVICE_NAME))
                        .map(String::as_str)
                        == Some(name)
            })
            .map(|s| (**s).clone())
            .collect()
    };
    let (address, target_port) = match resolve(&host, port, &services, &slices, turn) {
        Ok(target) => target,
        Err(e) => {
            shared.counters.unresolved.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%host, port, error = %e, "service proxy: not resolved");
            return refuse(StatusCode::BAD_GATEWAY, e.to_string());
        }
    };
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let url = format!("http://{address}:{target_port}{path}");
    let (parts, body) = request.into_parts();
    let upstream = shared
        .http
        .request(parts.method, &url)
        .headers(end_to_end(&parts.headers))
        .body(reqwest::Body::wrap_stream(body.into_data_stream()))
        .send()
        .await;
    match upstream {
        Ok(response) => {
            shared.counters.forwarded.fetch_add(1, Ordering::Relaxed);
            let status = response.status();
            let headers = end_to_end(response.headers());
            let mut out = Response::new(Body::from_stream(
                response.bytes_stream().map_err(std::io::Error::other),
            ));
            *out.status_mut() = status;
            *out.headers_mut() = headers;
            out
        }
        Err(e) => {
            shared
                .counters
                .upstream_errors
                .fetch_add(1, Ordering::Relaxed);
            refuse(
                StatusCode::BAD_GATEWAY,
                format!("{host}:{port} resolved to {address}:{target_port}, which failed: {e}"),
            )
        }
    }
}

/// Serves the proxy on `listener` until the process stops, once both
/// stores have listed (before that every name would look unknown).
pub async fn serve(
    listener: tokio::net::TcpListener,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    counters: Arc<ProxyCounters>,
) -> std::io::Result<()> {
    let _ = services.wait_until_ready().await;
    let _ = slices.wait_until_ready().await;
    let http = crate::http_client_builder()
        .no_proxy()
        .build()
        .map_err(std::io::Error::other)?;
    let shared = Arc::new(Shared {
        services,
        slices,
        http,
        turn: AtomicUsize::new(0),
        counters,
    });
    let app = axum::Router::new().fallback(move |request: Request<Body>| {
        let shared = shared.clone();
        async move { forward(shared, request).await }
    });
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(ns: &str, name: &str, spec: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns},
            "spec": spec,
        }))
        .unwrap()
    }

    fn slice(
        ns: &str,
        service: &str,
        port_name: &str,
        port: u16,
        endpoints: serde_json::Value,
    ) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": format!("{service}-x"), "namespace": ns,
                         "labels": {SERVICE_NAME: service}},
            "addressType": "FQDN",
            "ports": [{"name": port_name, "port": port}],
            "endpoints": endpoints,
        }))
        .unwrap()
    }

    struct World {
        services: Vec<Service>,
        slices: Vec<EndpointSlice>,
    }

    impl World {
        fn resolve(
            &self,
            host: &str,
            port: u16,
            turn: usize,
        ) -> Result<(String, u16), ResolveError> {
            let services = |ns: &str, name: &str| {
                self.services
                    .iter()
                    .find(|s| {
                        s.metadata.namespace.as_deref() == Some(ns)
                            && s.metadata.name.as_deref() == Some(name)
                    })
                    .cloned()
            };
            let slices = |ns: &str, name: &str| {
                self.slices
                    .iter()
                    .filter(|s| {
                        s.metadata.namespace.as_deref() == Some(ns)
                            && s.metadata.labels.as_ref().unwrap()[SERVICE_NAME] == name
                    })
                    .cloned()
                    .collect()
            };
            resolve(host, port, &services, &slices, turn)
        }
    }

    fn prometheus_world() -> World {
        World {
            services: vec![
                // prometheus-operator's governing Service: port 9090 named web.
                service(
                    "monitoring",
                    "prometheus-operated",
                    json!({"clusterIP": "None", "selector": {"app.kubernetes.io/name": "prometheus"},
                           "ports": [{"name": "web", "port": 9090, "targetPort": "web"}]}),
                ),
                // Istio's address in seed 002, aliased to it.
                service(
                    "istio-system",
                    "prometheus",
                    json!({"type": "ExternalName",
                           "externalName": "prometheus-operated.monitoring.svc.cluster.local"}),
                ),
                service(
                    "a",
                    "loop",
                    json!({"type": "ExternalName", "externalName": "loop.a.svc"}),
                ),
                service(
                    "a",
                    "outside",
                    json!({"type": "ExternalName", "externalName": "localhost"}),
                ),
            ],
            slices: vec![slice(
                "monitoring",
                "prometheus-operated",
                "web",
                20016,
                json!([{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}]),
            )],
        }
    }

    #[test]
    fn host_names_of_services_with_and_without_the_cluster_domain() {
        assert_eq!(
            service_of_host("p.monitoring.svc"),
            Some(("p", "monitoring"))
        );
        assert_eq!(
            service_of_host("p.monitoring.svc.cluster.local."),
            Some(("p", "monitoring"))
        );
        assert_eq!(service_of_host("example.com"), None);
        assert_eq!(service_of_host("p.svc"), None);
        assert_eq!(service_of_host("a.b.c.svc"), None);
        assert_eq!(service_of_host("127.0.0.1"), None);
    }

    #[test]
    fn a_service_port_goes_to_the_slice_port_of_the_same_name() {
        let w = prometheus_world();
        assert_eq!(
            w.resolve("prometheus-operated.monitoring.svc", 9090, 0),
            Ok(("127.0.0.1".into(), 20016))
        );
    }

    #[test]
    fn external_names_are_followed_to_a_service_or_out_of_the_cluster() {
        let w = prometheus_world();
        assert_eq!(
            w.resolve("prometheus.istio-system.svc.cluster.local", 9090, 0),
            Ok(("127.0.0.1".into(), 20016))
        );
        assert_eq!(
            w.resolve("outside.a.svc", 1234, 0),
            Ok(("localhost".into(), 1234))
        );
        assert_eq!(
            w.resolve("loop.a.svc", 80, 0),
            Err(ResolveError::TooManyHops("loop.a.svc".into()))
        );
    }

    #[test]
    fn each_failure_names_what_is_missing() {
        let w = prometheus_world();
        assert_eq!(
            w.resolve("example.com", 80, 0),
            Err(ResolveError::NotAServiceName("example.com".into()))
        );
        assert_eq!(
            w.resolve("nope.monitoring.svc", 9090, 0),
            Err(ResolveError::NoService {
                namespace: "monitoring".into(),
                name: "nope".into()
            })
        );
        let e = w
            .resolve("prometheus-operated.monitoring.svc", 9091, 0)
            .unwrap_err();
        assert!(
            e.to_string().contains("no port 9091 (its ports: [9090])"),
            "{e}"
        );
    }

    #[test]
    fn only_ready_endpoints_take_requests_in_turn() {
        let mut w = prometheus_world();
        w.services.push(service(
            "inference",
            "sim",
            json!({"selector": {"app": "sim"}, "ports": [{"name": "http", "port": 8000, "targetPort": 8000}]}),
        ));
        w.slices.push(slice(
            "inference",
            "sim",
            "http",
            8000,
            json!([
                {"addresses": ["127.1.0.6"], "conditions": {"ready": true}},
                {"addresses": ["127.1.0.5"]},
                {"addresses": ["127.1.0.7"], "conditions": {"ready": false}},
            ]),
        ));
        let picks: Vec<String> = (0..4)
            .map(|turn| w.resolve("sim.inference.svc", 8000, turn).unwrap().0)
            .collect();
        assert_eq!(picks, ["127.1.0.5", "127.1.0.6", "127.1.0.5", "127.1.0.6"]);
        // Nothing ready: said, not guessed.
        w.slices
            .last_mut()
            .unwrap()
            .endpoints
            .retain(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(false));
        let e = w.resolve("sim.inference.svc", 8000, 0).unwrap_err();
        assert!(matches!(e, ResolveError::NoReadyEndpoint { .. }), "{e}");
    }

    /// A store already listed, holding `objects`.
    fn listed<K>(objects: Vec<K>) -> Store<K>
    where
        K: kube::Resource + Clone + 'static,
        K::DynamicType: Default + Eq + std::hash::Hash + Clone,
    {
        use kube::runtime::watcher::Event;
        let (reader, mut writer) = kube::runtime::reflector::store();
        writer.apply_watcher_event(&Event::Init);
        for object in objects {
            writer.apply_watcher_event(&Event::InitApply(object));
        }
        writer.apply_watcher_event(&Event::InitDone);
        reader
    }

    /// Sends `request` as raw HTTP/1.1 and returns the status line and body.
    async fn raw(proxy: SocketAddr, request: &str) -> (String, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        let status = answer.lines().next().unwrap_or_default().to_string();
        let body = answer
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    /// Over real sockets: a Service name reaches its endpoint with the path
    /// kept, and each request the proxy cannot serve gets an answer that
    /// says why.
    #[tokio::test]
    async fn the_proxy_forwards_service_names_and_says_why_it_cannot() {
        let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream_port = upstream.local_addr().unwrap().port();
        let app = axum::Router::new()
            .fallback(|uri: axum::http::Uri| async move { format!("upstream saw {uri}") });
        tokio::spawn(async move { axum::serve(upstream, app).await });

        let mut w = prometheus_world();
        w.slices[0] = slice(
            "monitoring",
            "prometheus-operated",
            "web",
            upstream_port,
            json!([{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}]),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = listener.local_addr().unwrap();
        let counters = Arc::new(ProxyCounters::default());
        tokio::spawn(serve(
            listener,
            listed(w.services),
            listed(w.slices),
            counters.clone(),
        ));

        let get = |url: &str| {
            format!(
                "GET {url} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                url.trim_start_matches("http://").split('/').next().unwrap()
            )
        };
        let (status, body) = raw(
            proxy,
            &get("http://prometheus.istio-system.svc.cluster.local:9090/api/v1/query?query=up"),
        )
        .await;
        assert!(status.contains("200"), "{status}");
        assert!(
            body.contains("upstream saw /api/v1/query?query=up"),
            "{body}"
        );

        let (status, body) = raw(proxy, &get("http://nope.monitoring.svc:9090/")).await;
        assert!(status.contains("502"), "{status}");
        assert!(body.contains("no Service monitoring/nope"), "{body}");
        let (status, body) = raw(proxy, &get("http://example.com/")).await;
        assert!(status.contains("502"), "{status}");
        assert!(
            body.contains("example.com is not a cluster Service name"),
            "{body}"
        );

        let (status, body) = raw(
            proxy,
            "GET /api/v1/query HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(status.contains("400"), "{status}");
        assert!(body.contains("is not absolute"), "{body}");
        let (status, body) = raw(
            proxy,
            "CONNECT prometheus-operated.monitoring.svc:443 HTTP/1.1\r\nHost: prometheus-operated.monitoring.svc:443\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(status.contains("501"), "{status}");
        assert!(body.contains("no CONNECT"), "{body}");

        assert_eq!(counters.forwarded.load(Ordering::Relaxed), 1);
        assert_eq!(counters.unresolved.load(Ordering::Relaxed), 2);
    }
}
