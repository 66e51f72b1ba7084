//! KEDA's operator and metrics server as local processes of a cluster.
//!
//! In a real cluster both run as pods in namespace `keda`, and
//! kube-apiserver reaches the metrics server through the APIService
//! `v1beta1.external.metrics.k8s.io` and its Service. Here they are plain
//! processes on loopback, so the Service has no selector and the bed
//! writes its EndpointSlice itself, pointing at 127.0.0.1. Everything else
//! is what KEDA's own manifests set up: same names, same namespace, the
//! same certificate layout (with cert rotation off: the bed's PKI signs
//! them), and the HPA controller reads external metrics through the
//! aggregator exactly as it does in production.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::pki::PkiFiles;
use crate::{CacheDirs, Error};

pub const NAMESPACE: &str = "keda";
pub const OPERATOR: &str = "keda-operator";
pub const ADAPTER: &str = "keda-adapter";
const METRICS_SERVICE: &str = "keda-metrics-apiserver";
pub const API_SERVICE: &str = "v1beta1.external.metrics.k8s.io";
/// The Service port the APIService names; the slice maps it to the
/// adapter's real port.
const SERVICE_PORT: i32 = 443;

/// The loopback ports of KEDA's processes.
#[derive(Debug, Clone, Copy)]
pub struct KedaPorts {
    /// The operator's gRPC metrics service, which the adapter asks.
    pub operator_grpc: u16,
    pub operator_metrics: u16,
    /// `/healthz` and `/readyz` of the operator.
    pub operator_probe: u16,
    /// The adapter's external metrics API (HTTPS, behind the aggregator).
    pub adapter: u16,
    /// The adapter's Prometheus `/metrics`.
    pub adapter_metrics: u16,
}

/// The binaries, or an error that says how to build them.
pub fn binaries(cache: &CacheDirs) -> Result<(), Error> {
    let missing: Vec<&str> = [OPERATOR, ADAPTER]
        .into_iter()
        .filter(|name| !cache.binary(name).exists())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::KedaMissing {
            missing: missing.join(", "),
            bin: cache.bin(),
        })
    }
}

/// Both processes find the cluster through `KUBECONFIG` and behave as if
/// deployed in namespace `keda`, watching every namespace.
/// `service_proxy`: the bed's Service proxy port. Go's HTTP clients send
/// plain-HTTP requests for other hosts through `HTTP_PROXY` and never
/// loopback ones (the apiserver, pods, the scaler), so only `*.svc`
/// addresses such as a `prometheus` trigger's `serverAddress` go there,
/// and they reach what the Service leads to, as in a cluster. The proxy
/// runs with Prometheus (`--with-prometheus`); without it such an address
/// fails to connect, as it fails to resolve without cluster DNS.
pub fn env(kubeconfig: &Path, service_proxy: u16) -> Vec<(&'static str, String)> {
    vec![
        ("KUBECONFIG", kubeconfig.display().to_string()),
        ("HTTP_PROXY", format!("http://127.0.0.1:{service_proxy}")),
        ("WATCH_NAMESPACE", String::new()),
        ("POD_NAMESPACE", NAMESPACE.to_string()),
        ("KEDA_CLUSTER_OBJECT_NAMESPACE", NAMESPACE.to_string()),
    ]
}

pub fn operator_args(ports: &KedaPorts, pki: &PkiFiles) -> Vec<String> {
    let p = |path: &Path| path.display().to_string();
    vec![
        "--leader-elect=false".to_string(),
        format!(
            "--metrics-service-bind-address=127.0.0.1:{}",
            ports.operator_grpc
        ),
        format!(
            "--metrics-bind-address=127.0.0.1:{}",
            ports.operator_metrics
        ),
        format!(
            "--health-probe-bind-address=127.0.0.1:{}",
            ports.operator_probe
        ),
        // The bed's PKI issued the certificates; rotation would replace
        // them with KEDA's own CA, which kube-apiserver does not know.
        "--enable-cert-rotation=false".to_string(),
        format!("--cert-dir={}", p(&pki.keda_dir)),
        // Scalers dialling with TLS trust the cluster CA (the default is a
        // path inside KEDA's container image).
        format!("--ca-dir={}", p(&pki.keda_ca_dir)),
        "--kube-api-qps=100".to_string(),
        "--kube-api-burst=200".to_string(),
        "--zap-log-level=info".to_string(),
        "--zap-encoder=console".to_string(),
        "--zap-time-encoding=rfc3339".to_string(),
    ]
}

pub fn adapter_args(ports: &KedaPorts, pki: &PkiFiles, kubeconfig: &Path) -> Vec<String> {
    let p = |path: &Path| path.display().to_string();
    let kc = p(kubeconfig);
    vec![
        "--bind-address=127.0.0.1".to_string(),
        format!("--secure-port={}", ports.adapter),
        // The same files as KEDA's Deployment mounts at /certs: the serving
        // certificate, and the gRPC client identity for the operator.
        format!("--cert-dir={}", p(&pki.keda_dir)),
        format!("--tls-cert-file={}", p(&pki.keda_cert())),
        format!("--tls-private-key-file={}", p(&pki.keda_key())),
        format!("--client-ca-file={}", p(&pki.keda_ca())),
        format!(
            "--metrics-service-address=127.0.0.1:{}",
            ports.operator_grpc
        ),
        format!("--port={}", ports.adapter_metrics),
        format!("--lister-kubeconfig={kc}"),
        format!("--authentication-kubeconfig={kc}"),
        format!("--authorization-kubeconfig={kc}"),
        "--kube-api-qps=100".to_string(),
        "--kube-api-burst=200".to_string(),
        "--zap-log-level=info".to_string(),
    ]
}

/// The objects that route the external metrics API to the adapter, in
/// the order they must be applied.
pub fn routing_objects(ports: &KedaPorts, ca_pem: &str) -> Vec<Value> {
    let labels = json!({"app.kubernetes.io/part-of": "keda-operator",
                        "app.kubernetes.io/managed-by": "aim-devcluster"});
    vec![
        json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": NAMESPACE, "labels": labels},
        }),
        // No selector: no pod backs it, and the endpoint controllers leave
        // its slice alone.
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": METRICS_SERVICE, "namespace": NAMESPACE, "labels": labels},
            "spec": {"ports": [{"name": "https", "port": SERVICE_PORT, "protocol": "TCP",
                                "targetPort": ports.adapter}]},
        }),
        // EndpointSlice validation refuses loopback IPs in IPv4 slices; an
        // FQDN slice may carry any host name, and kube-apiserver dials its
        // first address as written.
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {
                "name": format!("{METRICS_SERVICE}-loopback"),
                "namespace": NAMESPACE,
                "labels": {
                    "kubernetes.io/service-name": METRICS_SERVICE,
                    "endpointslice.kubernetes.io/managed-by": "aim-devcluster",
                    "app.kubernetes.io/part-of": "keda-operator",
                },
            },
            "addressType": "FQDN",
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}],
            "ports": [{"name": "https", "port": ports.adapter, "protocol": "TCP"}],
        }),
        json!({
            "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
            "metadata": {"name": API_SERVICE, "labels": labels},
            "spec": {
                "service": {"name": METRICS_SERVICE, "namespace": NAMESPACE, "port": SERVICE_PORT},
                "group": "external.metrics.k8s.io",
                "version": "v1beta1",
                "groupPriorityMinimum": 100,
                "versionPriority": 100,
                "caBundle": STANDARD.encode(ca_pem),
            },
        }),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports() -> KedaPorts {
        KedaPorts {
            operator_grpc: 1,
            operator_metrics: 2,
            operator_probe: 3,
            adapter: 4,
            adapter_metrics: 5,
        }
    }

    #[test]
    fn the_api_service_reaches_the_adapter_port_through_a_named_service_port() {
        let objects = routing_objects(&ports(), "CA");
        let service = &objects[1]["spec"]["ports"][0];
        let slice = &objects[2];
        let api = &objects[3]["spec"];
        // The aggregator matches the slice port to the Service port by name.
        assert_eq!(slice["ports"][0]["name"], service["name"]);
        assert_eq!(slice["ports"][0]["port"], 4);
        assert_eq!(api["service"]["port"], service["port"]);
        assert_eq!(
            slice["metadata"]["labels"]["kubernetes.io/service-name"],
            api["service"]["name"]
        );
        assert_eq!(api["caBundle"], STANDARD.encode("CA"));
    }

    #[test]
    fn missing_binaries_name_the_build_command() {
        let root = std::env::temp_dir().join(format!("aim-keda-missing-{}", std::process::id()));
        let cache = CacheDirs::at(&root);
        let err = binaries(&cache).unwrap_err().to_string();
        assert!(err.contains("keda-operator, keda-adapter"), "{err}");
        assert!(err.contains("dev/control-plane/build.sh keda"), "{err}");
    }
}
