//! `--service NAME`: the ready endpoints of a Kubernetes Service, read from its
//! EndpointSlices. [`endpoint_urls`] is the pure part; [`resolve`] lists the slices.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::{EndpointPort, EndpointSlice};
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

/// The current ready endpoints of the Service.
pub async fn resolve(
    client: &kube::Client,
    namespace: &str,
    target: &ServiceTarget,
) -> Result<Vec<String>, String> {
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(&format!("{SERVICE_NAME_LABEL}={}", target.name)))
        .await
        .map_err(|e| {
            format!(
                "--service {}: cannot list EndpointSlices in {namespace}: {e}",
                target.name
            )
        })?;
    endpoint_urls(&slices.items, target.port_name.as_deref())
        .map_err(|e| format!("--service {}: {e}", target.name))
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
}
