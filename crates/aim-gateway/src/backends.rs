//! A backend's endpoints, without I/O: the addresses behind one Service
//! port, from its EndpointSlices, or, where the slices list no endpoint at
//! all, from the ready pods its selector picks.
//!
//! The second source exists for the local bed: its pods have loopback
//! addresses (127.x) that local processes answer on, and the apiserver
//! refuses loopback addresses in EndpointSlices, so no slice ever lists
//! them. Where slices list endpoints (any real cluster), they are the truth.
//! `aim load --service` reads Services the same way.
//!
//! An endpoint that is terminating but still serving (a slice's
//! `serving=true, terminating=true`, or a ready pod being deleted) is listed
//! as draining: it gets no new requests while its streams finish.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::endpoints::{EndpointSpec, EndpointUrl};

/// The label an EndpointSlice names its Service with.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

fn url(address: &str, port: i32) -> Option<EndpointUrl> {
    let host = if address.contains(':') {
        format!("[{address}]")
    } else {
        address.to_string()
    };
    EndpointUrl::parse(&format!("http://{host}:{port}")).ok()
}

fn add(out: &mut BTreeMap<String, EndpointSpec>, url: EndpointUrl, draining: bool) {
    let key = url.to_string();
    // Listed ready somewhere wins over listed draining elsewhere.
    match out.get_mut(&key) {
        Some(e) => e.draining &= draining,
        None => {
            out.insert(key, EndpointSpec { url, draining });
        }
    }
}

/// The endpoints behind `port` of `svc`. `slices` are the Service's
/// EndpointSlices, `pods` the pods of its namespace.
pub fn endpoints_of(
    svc: &Service,
    port: i32,
    slices: &[&EndpointSlice],
    pods: &[&Pod],
) -> Vec<EndpointSpec> {
    let spec = svc.spec.as_ref();
    let Some(sp) = spec
        .and_then(|s| s.ports.as_ref())
        .and_then(|ps| ps.iter().find(|p| p.port == port))
    else {
        return Vec::new();
    };
    let mut out = BTreeMap::new();
    // Only IP slices route: an FQDN slice (the bed's Prometheus bridge
    // writes them for Services whose pods have loopback addresses) names
    // no address the proxy would connect to, and must not hide the pods.
    let slices: Vec<&EndpointSlice> = slices
        .iter()
        .copied()
        .filter(|s| matches!(s.address_type.as_str(), "IPv4" | "IPv6"))
        .collect();
    if slices.iter().any(|s| !s.endpoints.is_empty()) {
        for slice in slices {
            // A slice port carries the Service port's name (both unnamed
            // when the Service has a single port).
            let Some(target) = slice
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref().unwrap_or("") == sp.name.as_deref().unwrap_or(""))
                .and_then(|p| p.port)
            else {
                continue;
            };
            for e in &slice.endpoints {
                let c = e.conditions.as_ref();
                // A missing `ready` reads as ready, as Kubernetes reads it.
                let ready = c.and_then(|c| c.ready) != Some(false);
                let serving = c.and_then(|c| c.serving).unwrap_or(ready);
                let terminating = c.and_then(|c| c.terminating) == Some(true);
                let draining = if ready && !terminating {
                    false
                } else if serving {
                    true
                } else {
                    continue;
                };
                for a in &e.addresses {
                    if let Some(u) = url(a, target) {
                        add(&mut out, u, draining);
                    }
                }
            }
        }
        return out.into_values().collect();
    }
    let Some(selector) = spec
        .and_then(|s| s.selector.as_ref())
        .filter(|s| !s.is_empty())
    else {
        return Vec::new();
    };
    for pod in pods {
        let labels = pod.metadata.labels.as_ref();
        if !selector
            .iter()
            .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        {
            continue;
        }
        let status = pod.status.as_ref();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let ip = status.and_then(|s| s.pod_ip.as_deref()).unwrap_or("");
        if !ready || ip.is_empty() {
            continue;
        }
        let Some(target) = target_port(sp, pod) else {
            continue;
        };
        if let Some(u) = url(ip, target) {
            add(&mut out, u, pod.metadata.deletion_timestamp.is_some());
        }
    }
    out.into_values().collect()
}

/// The pod port a Service port sends to (a named target port is looked up
/// among the pod's container ports).
fn target_port(sp: &ServicePort, pod: &Pod) -> Option<i32> {
    match &sp.target_port {
        None => Some(sp.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => pod
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| p.container_port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(ports: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "sim", "namespace": "ns"},
            "spec": {"selector": {"app": "sim"}, "ports": ports},
        }))
        .unwrap()
    }

    fn slice(ports: serde_json::Value, endpoints: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": "s", "labels": {SERVICE_NAME_LABEL: "sim"}},
            "addressType": "IPv4",
            "ports": ports,
            "endpoints": endpoints,
        }))
        .unwrap()
    }

    fn pod(ip: &str, ready: bool, deleting: bool, app: &str) -> Pod {
        let mut meta = json!({"name": ip, "labels": {"app": app}});
        if deleting {
            meta["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        serde_json::from_value(json!({
            "metadata": meta,
            "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8000}]}]},
            "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]},
        }))
        .unwrap()
    }

    fn urls(v: &[EndpointSpec]) -> Vec<(String, bool)> {
        v.iter().map(|e| (e.url.to_string(), e.draining)).collect()
    }

    #[test]
    fn slices_give_ready_and_draining_endpoints_at_the_named_port() {
        let svc = service(json!([
            {"name": "http", "port": 80, "targetPort": 8000},
            {"name": "metrics", "port": 9090}
        ]));
        let s = slice(
            json!([{"name": "metrics", "port": 9091}, {"name": "http", "port": 8000}]),
            json!([
                {"addresses": ["10.0.0.1"], "conditions": {"ready": true}},
                {"addresses": ["10.0.0.2"]},
                {"addresses": ["10.0.0.3"], "conditions": {"ready": false, "serving": true, "terminating": true}},
                {"addresses": ["10.0.0.4"], "conditions": {"ready": false, "serving": false}},
            ]),
        );
        assert_eq!(
            urls(&endpoints_of(&svc, 80, &[&s], &[])),
            [
                ("http://10.0.0.1:8000".to_string(), false),
                ("http://10.0.0.2:8000".to_string(), false),
                ("http://10.0.0.3:8000".to_string(), true),
            ]
        );
        assert_eq!(
            urls(&endpoints_of(&svc, 9090, &[&s], &[]))[0].0,
            "http://10.0.0.1:9091"
        );
        // A port the Service does not have gives nothing.
        assert!(endpoints_of(&svc, 81, &[&s], &[]).is_empty());
    }

    #[test]
    fn without_slice_endpoints_the_selected_ready_pods_serve() {
        let svc = service(json!([{"name": "http", "port": 80, "targetPort": "http"}]));
        let empty = slice(json!([]), json!([]));
        let pods = [
            pod("127.1.0.2", true, false, "sim"),
            pod("127.1.0.3", false, false, "sim"),
            pod("127.1.0.4", true, true, "sim"),
            pod("127.1.0.5", true, false, "other"),
        ];
        let refs: Vec<&Pod> = pods.iter().collect();
        assert_eq!(
            urls(&endpoints_of(&svc, 80, &[&empty], &refs)),
            [
                ("http://127.1.0.2:8000".to_string(), false),
                ("http://127.1.0.4:8000".to_string(), true),
            ]
        );
        // An FQDN slice with endpoints (as the bed's bridge writes) does
        // not hide the pods.
        let mut fqdn = slice(
            json!([{"name": "http", "port": 8000}]),
            json!([{"addresses": ["127.1.0.9"], "conditions": {"ready": true}}]),
        );
        fqdn.address_type = "FQDN".into();
        assert_eq!(
            urls(&endpoints_of(&svc, 80, &[&fqdn], &refs))[0].0,
            "http://127.1.0.2:8000"
        );
        let numeric = service(json!([{"port": 80, "targetPort": 9000}]));
        assert_eq!(
            urls(&endpoints_of(&numeric, 80, &[], &refs[..1]))[0].0,
            "http://127.1.0.2:9000"
        );
    }
}
