//! `--service NAME`: the ready endpoints of a Kubernetes Service, read from its
//! EndpointSlices, or from the ready pods its selector picks when the slices list no
//! endpoint at all.
//!
//! The second source exists for the local cluster: its pods have loopback IPs
//! (127.1.x.y) so local processes can answer for them, and the apiserver refuses
//! loopback addresses in EndpointSlices, so the EndpointSlice controller never manages
//! to write them. Where slices do list endpoints (any real cluster), they are the truth.
//!
//! [`endpoint_urls`] and [`pod_urls`] are the pure parts; [`resolve`] reads the objects.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::{EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ListParams};

/// Which Service to follow and how.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceTarget {
    pub name: String,
    /// `None`: the kubeconfig context's namespace.
    pub namespace: Option<String>,
    /// The EndpointSlice port to send to, by name (needed when the Service has several).
    pub port_name: Option<String>,
    /// Seconds between two reads of the EndpointSlices.
    pub refresh: f64,
}

/// The label EndpointSlices carry to name their Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

fn slice_port<'a>(
    ports: &'a [EndpointPort],
    port_name: Option<&str>,
) -> Result<Option<&'a EndpointPort>, Vec<String>> {
    let tcp: Vec<&EndpointPort> = ports
        .iter()
        .filter(|p| p.port.is_some() && p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .collect();
    let name = |p: &EndpointPort| p.name.clone().unwrap_or_default();
    if let Some(wanted) = port_name {
        return Ok(tcp.into_iter().find(|p| name(p) == wanted));
    }
    match tcp.as_slice() {
        [] => Ok(None),
        [only] => Ok(Some(only)),
        several => several
            .iter()
            .find(|p| name(p) == "http")
            .map(|p| Some(*p))
            .ok_or_else(|| several.iter().map(|p| name(p)).collect()),
    }
}

/// The `http://ADDRESS:PORT` of every ready endpoint, sorted and without duplicates.
/// Endpoints whose `ready` condition is false are left out (Kubernetes reads a missing
/// condition as ready). With several ports and no `port_name`, the one named `http` is
/// taken; otherwise the error names the choices.
pub fn endpoint_urls(
    slices: &[EndpointSlice],
    port_name: Option<&str>,
) -> Result<Vec<String>, String> {
    let mut urls = BTreeSet::new();
    let mut names_seen = BTreeSet::new();
    let mut ambiguous = None;
    for slice in slices {
        let ports = slice.ports.as_deref().unwrap_or_default();
        names_seen.extend(ports.iter().map(|p| p.name.clone().unwrap_or_default()));
        let port = match slice_port(ports, port_name) {
            Ok(Some(p)) => p.port.unwrap_or_default(),
            Ok(None) => continue,
            Err(names) => {
                ambiguous = Some(names);
                continue;
            }
        };
        for endpoint in &slice.endpoints {
            if endpoint.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            for address in &endpoint.addresses {
                let host = if slice.address_type == "IPv6" {
                    format!("[{address}]")
                } else {
                    address.clone()
                };
                urls.insert(format!("http://{host}:{port}"));
            }
        }
    }
    if let Some(names) = ambiguous {
        return Err(format!(
            "the Service has several ports ({}) and none is named http: pass --port-name with one of them",
            names.join(", ")
        ));
    }
    if let Some(wanted) = port_name
        && urls.is_empty()
        && !slices.is_empty()
        && !names_seen.contains(wanted)
    {
        return Err(format!(
            "--port-name {wanted}: the Service's endpoints have no port of that name (they have: {})",
            names_seen.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(urls.into_iter().collect())
}

/// Checks that the Service exists, so a misspelt name fails at once instead of looking
/// like a Service without endpoints.
pub async fn check_exists(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<(), String> {
    match Api::<Service>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
    {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(format!(
            "--service {name}: no Service {name} in namespace {namespace} (pass -n NAMESPACE if it lives elsewhere)"
        )),
        Err(e) => Err(format!(
            "--service {name}: cannot read Service {namespace}/{name}: {e}"
        )),
    }
}

/// Where [`resolve`] found the endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    EndpointSlices,
    /// The slices listed no endpoint, so the selector's ready pods were read instead.
    SelectedPods,
}

/// The URL of every ready pod that `service` selects, at the Service port's target port.
/// A named target port is looked up among each pod's container ports.
pub fn pod_urls(
    service: &Service,
    pods: &[Pod],
    port_name: Option<&str>,
) -> Result<Vec<String>, String> {
    let ports: Vec<&ServicePort> = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or_default()
        .iter()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .collect();
    let name = |p: &ServicePort| p.name.clone().unwrap_or_default();
    let names = || ports.iter().map(|p| name(p)).collect::<Vec<_>>().join(", ");
    let port = match (port_name, ports.as_slice()) {
        (_, []) => return Ok(Vec::new()),
        (Some(wanted), _) => ports.iter().find(|p| name(p) == wanted).ok_or_else(|| {
            format!(
                "--port-name {wanted}: the Service has no port of that name (it has: {})",
                names()
            )
        })?,
        (None, [only]) => only,
        (None, _) => ports.iter().find(|p| name(p) == "http").ok_or_else(|| {
            format!(
                "the Service has several ports ({}) and none is named http: pass --port-name with one of them",
                names()
            )
        })?,
    };
    let mut urls = BTreeSet::new();
    for pod in pods {
        let status = pod.status.as_ref();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let ip = status.and_then(|s| s.pod_ip.as_deref()).unwrap_or_default();
        if !ready || ip.is_empty() || pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let target = match &port.target_port {
            None => Some(port.port),
            Some(IntOrString::Int(n)) => Some(*n),
            Some(IntOrString::String(wanted)) => pod
                .spec
                .iter()
                .flat_map(|s| &s.containers)
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| p.name.as_deref() == Some(wanted))
                .map(|p| p.container_port),
        };
        let Some(target) = target else { continue };
        let host = if ip.contains(':') {
            format!("[{ip}]")
        } else {
            ip.to_string()
        };
        urls.insert(format!("http://{host}:{target}"));
    }
    Ok(urls.into_iter().collect())
}

/// The current ready endpoints of the Service, and where they were found.
pub async fn resolve(
    client: &kube::Client,
    namespace: &str,
    target: &ServiceTarget,
) -> Result<(Vec<String>, Source), String> {
    let name = &target.name;
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(&format!("{SERVICE_NAME_LABEL}={name}")))
        .await
        .map_err(|e| format!("--service {name}: cannot list EndpointSlices in {namespace}: {e}"))?;
    if slices.items.iter().any(|s| !s.endpoints.is_empty()) {
        return endpoint_urls(&slices.items, target.port_name.as_deref())
            .map(|urls| (urls, Source::EndpointSlices))
            .map_err(|e| format!("--service {name}: {e}"));
    }
    let service = Api::<Service>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .map_err(|e| format!("--service {name}: cannot read Service {namespace}/{name}: {e}"))?;
    let selector = service
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .filter(|s| !s.is_empty());
    let Some(selector) = selector else {
        return Ok((Vec::new(), Source::EndpointSlices));
    };
    let labels = selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(&labels))
        .await
        .map_err(|e| {
            format!("--service {name}: cannot list the pods it selects ({labels}): {e}")
        })?;
    pod_urls(&service, &pods.items, target.port_name.as_deref())
        .map(|urls| (urls, Source::SelectedPods))
        .map_err(|e| format!("--service {name}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn slice(v: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(v).expect("a valid EndpointSlice")
    }

    fn two_pod_slice() -> EndpointSlice {
        slice(json!({
            "metadata": {"name": "s-1"},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8000, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["127.1.0.6"], "conditions": {"ready": true}},
                {"addresses": ["127.1.0.5"]},
                {"addresses": ["127.1.0.7"], "conditions": {"ready": false}},
            ]
        }))
    }

    #[test]
    fn ready_endpoints_become_sorted_urls() {
        let other = slice(json!({
            "metadata": {"name": "s-2"},
            "addressType": "IPv6",
            "ports": [{"port": 9000}],
            "endpoints": [{"addresses": ["fd00::1"]}, {"addresses": ["fd00::1"]}]
        }));
        assert_eq!(
            endpoint_urls(&[two_pod_slice(), other], None).unwrap(),
            [
                "http://127.1.0.5:8000",
                "http://127.1.0.6:8000",
                "http://[fd00::1]:9000"
            ]
        );
        assert_eq!(endpoint_urls(&[], None).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn several_ports_need_a_name_unless_one_is_http() {
        let multi = |names: [&str; 2]| {
            slice(json!({
                "metadata": {"name": "s"},
                "addressType": "IPv4",
                "ports": [{"name": names[0], "port": 8000}, {"name": names[1], "port": 9090}],
                "endpoints": [{"addresses": ["127.1.0.5"]}]
            }))
        };
        assert_eq!(
            endpoint_urls(&[multi(["metrics", "http"])], None).unwrap(),
            ["http://127.1.0.5:9090"]
        );
        let e = endpoint_urls(&[multi(["api", "metrics"])], None).unwrap_err();
        assert!(
            e.contains("--port-name") && e.contains("api, metrics"),
            "{e}"
        );
        assert_eq!(
            endpoint_urls(&[multi(["api", "metrics"])], Some("api")).unwrap(),
            ["http://127.1.0.5:8000"]
        );
        let e = endpoint_urls(&[multi(["api", "metrics"])], Some("grpc")).unwrap_err();
        assert!(
            e.contains("--port-name grpc") && e.contains("api, metrics"),
            "{e}"
        );
    }

    #[test]
    fn udp_and_portless_slices_give_nothing() {
        let udp = slice(json!({
            "metadata": {"name": "s"},
            "addressType": "IPv4",
            "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}],
            "endpoints": [{"addresses": ["127.1.0.5"]}]
        }));
        let none = slice(json!({
            "metadata": {"name": "t"},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["127.1.0.6"]}]
        }));
        assert_eq!(
            endpoint_urls(&[udp, none], None).unwrap(),
            Vec::<String>::new()
        );
    }

    fn service(ports: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": ports},
        }))
        .unwrap()
    }

    fn pod(ip: &str, ready: &str, extra: serde_json::Value) -> Pod {
        let mut p = json!({
            "metadata": {"name": format!("p-{ip}")},
            "spec": {"containers": [{"name": "c", "ports": [{"name": "api", "containerPort": 8000}]}]},
            "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": ready}]},
        });
        if let (Some(p), Some(extra)) = (p.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                p.insert(k.clone(), v.clone());
            }
        }
        serde_json::from_value(p).unwrap()
    }

    #[test]
    fn ready_selected_pods_at_the_target_port() {
        let svc = service(json!([{"name": "http", "port": 80, "targetPort": "api"}]));
        let pods = [
            pod("127.1.0.2", "True", json!({})),
            pod("127.1.0.1", "True", json!({})),
            pod("127.1.0.3", "False", json!({})),
            pod("", "True", json!({})),
            pod(
                "127.1.0.4",
                "True",
                json!({"metadata": {"name": "gone", "deletionTimestamp": "2026-01-01T00:00:00Z"}}),
            ),
            pod("fd00::2", "True", json!({})),
        ];
        assert_eq!(
            pod_urls(&svc, &pods, None).unwrap(),
            [
                "http://127.1.0.1:8000",
                "http://127.1.0.2:8000",
                "http://[fd00::2]:8000"
            ]
        );
        let numeric = service(json!([{"port": 80, "targetPort": 9000}]));
        assert_eq!(
            pod_urls(&numeric, &pods[..1], None).unwrap(),
            ["http://127.1.0.2:9000"]
        );
        let same = service(json!([{"port": 8080}]));
        assert_eq!(
            pod_urls(&same, &pods[..1], None).unwrap(),
            ["http://127.1.0.2:8080"]
        );
        let unknown_name = service(json!([{"port": 80, "targetPort": "grpc"}]));
        assert_eq!(
            pod_urls(&unknown_name, &pods[..1], None).unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn service_ports_are_chosen_like_slice_ports() {
        let two = service(json!([
            {"name": "metrics", "port": 9090},
            {"name": "api", "port": 8000},
        ]));
        let pods = [pod("127.1.0.1", "True", json!({}))];
        let e = pod_urls(&two, &pods, None).unwrap_err();
        assert!(
            e.contains("--port-name") && e.contains("metrics, api"),
            "{e}"
        );
        assert_eq!(
            pod_urls(&two, &pods, Some("metrics")).unwrap(),
            ["http://127.1.0.1:9090"]
        );
        let e = pod_urls(&two, &pods, Some("grpc")).unwrap_err();
        assert!(
            e.contains("--port-name grpc") && e.contains("metrics, api"),
            "{e}"
        );
    }
}
