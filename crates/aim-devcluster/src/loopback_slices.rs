//! EndpointSlices for Services whose pods live at loopback addresses.
//!
//! The bed gives pods loopback IPs (a /16 per cluster) so that local processes can
//! answer at them, but kube-apiserver refuses loopback addresses in IPv4
//! EndpointSlices and in Endpoints ("may not be in the loopback range"), so
//! the endpoint controllers of kube-controller-manager can write none for
//! a Service that selects such pods. Anything that discovers a Service's
//! pods through its slices, as Prometheus does for a ServiceMonitor, then
//! finds nothing. FQDN slices carry any address, so the bed writes, for
//! every Service with a selector, the slice the controller would have
//! written, with `addressType: FQDN` and its own manager label (the
//! controller leaves slices that other managers own alone).
//!
//! Planning is pure; `bridge` runs it against the cluster.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The `endpointslice.kubernetes.io/managed-by` value of these slices: the
/// bridge deletes the slices with this value that no Service calls for, so
/// it must differ from the one on the bed's own hand-written slices (KEDA's
/// metrics server, the scaler's Service), which carry `aim-devcluster`.
pub const MANAGER: &str = "aim-devcluster-loopback";
pub const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
pub const SERVICE_NAME: &str = "kubernetes.io/service-name";

/// The slices for one Service, given every pod of its namespace. Pods that
/// resolve the Service's ports to the same numbers share a slice, as the
/// endpoint slice controller groups them. No selected pod with an address:
/// no slice.
pub fn plan(service: &Service, pods: &[Pod]) -> Vec<EndpointSlice> {
    let Some(spec) = &service.spec else {
        return Vec::new();
    };
    let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else {
        return Vec::new();
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return Vec::new();
    }
    let name = service.metadata.name.clone().unwrap_or_default();
    let namespace = service.metadata.namespace.clone().unwrap_or_default();
    let service_ports = spec.ports.clone().unwrap_or_default();

    // Port list → endpoints, ordered so the plan is stable.
    let mut groups: BTreeMap<Vec<(String, i32, String)>, Vec<Endpoint>> = BTreeMap::new();
    let mut selected: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(namespace.as_str()))
        .filter(|p| {
            let labels = p.metadata.labels.clone().unwrap_or_default();
            selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        })
        .filter(|p| {
            let status = p.status.as_ref();
            let phase = status.and_then(|s| s.phase.as_deref());
            let ip = status.and_then(|s| s.pod_ip.as_deref());
            ip.is_some_and(|ip| ip.starts_with("127."))
                && !matches!(phase, Some("Succeeded" | "Failed"))
        })
        .collect();
    selected.sort_by_key(|p| p.metadata.name.clone());
    for pod in selected {
        let ports: Vec<(String, i32, String)> = service_ports
            .iter()
            .filter_map(|sp| {
                let number = match &sp.target_port {
                    None => sp.port,
                    Some(IntOrString::Int(n)) => *n,
                    Some(IntOrString::String(port_name)) => container_port(pod, port_name)?,
                };
                Some((
                    sp.name.clone().unwrap_or_default(),
                    number,
                    sp.protocol.clone().unwrap_or_else(|| "TCP".into()),
                ))
            })
            .collect();
        if ports.is_empty() && !service_ports.is_empty() {
            continue;
        }
        groups.entry(ports).or_default().push(endpoint(pod));
    }

    let count = groups.len();
    groups
        .into_iter()
        .enumerate()
        .map(|(i, (ports, endpoints))| {
            let slice_name = if count == 1 {
                format!("{name}-loopback")
            } else {
                format!("{name}-loopback-{i}")
            };
            owned_slice(service, slice_name, ports, endpoints)
        })
        .collect()
}

/// An FQDN slice of `service`, owned by it and labelled as the bed's, with
/// `ports` as (name, number, protocol).
fn owned_slice(
    service: &Service,
    slice_name: String,
    ports: Vec<(String, i32, String)>,
    endpoints: Vec<Endpoint>,
) -> EndpointSlice {
    let name = service.metadata.name.clone().unwrap_or_default();
    let mut labels = service.metadata.labels.clone().unwrap_or_default();
    labels.insert(SERVICE_NAME.into(), name.clone());
    labels.insert(MANAGED_BY.into(), MANAGER.into());
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(slice_name),
            namespace: Some(service.metadata.namespace.clone().unwrap_or_default()),
            labels: Some(labels),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Service".into(),
                name,
                uid: service.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        address_type: "FQDN".into(),
        endpoints,
        ports: Some(
            ports
                .into_iter()
                .map(|(name, port, protocol)| EndpointPort {
                    name: Some(name),
                    port: Some(port),
                    protocol: Some(protocol),
                    app_protocol: None,
                })
                .collect(),
        ),
    }
}

/// The slice for a Service whose server is a local process of the bed at
/// `127.0.0.1:port` rather than a pod: the `prometheus-operated` Service
/// prometheus-operator makes for a Prometheus that runs locally here (its
/// StatefulSet has no replicas). Every port of the Service maps to `port`,
/// the one the process listens on.
pub fn at_local_process(service: &Service, port: u16) -> EndpointSlice {
    let name = service.metadata.name.clone().unwrap_or_default();
    let ports = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|sp| {
            (
                sp.name.unwrap_or_default(),
                i32::from(port),
                sp.protocol.unwrap_or_else(|| "TCP".into()),
            )
        })
        .collect();
    let endpoint = Endpoint {
        addresses: vec!["127.0.0.1".into()],
        conditions: Some(EndpointConditions {
            ready: Some(true),
            serving: Some(true),
            terminating: Some(false),
        }),
        ..Default::default()
    };
    owned_slice(service, format!("{name}-local"), ports, vec![endpoint])
}

fn container_port(pod: &Pod, name: &str) -> Option<i32> {
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(name))
        .map(|p| p.container_port)
}

fn endpoint(pod: &Pod) -> Endpoint {
    let status = pod.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let terminating = pod.metadata.deletion_timestamp.is_some();
    Endpoint {
        addresses: vec![status.and_then(|s| s.pod_ip.clone()).unwrap_or_default()],
        conditions: Some(EndpointConditions {
            ready: Some(ready && !terminating),
            serving: Some(ready),
            terminating: Some(terminating),
        }),
        node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            name: pod.metadata.name.clone(),
            namespace: pod.metadata.namespace.clone(),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service() -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "keda-otel-scaler", "namespace": "keda", "uid": "u1",
                         "labels": {"app.kubernetes.io/name": "aim-scaler"}},
            "spec": {
                "selector": {"app.kubernetes.io/name": "aim-scaler"},
                "ports": [
                    {"name": "otlp", "port": 4317, "targetPort": 4317},
                    {"name": "admin", "port": 8080, "targetPort": "admin"},
                ],
            }
        }))
        .unwrap()
    }

    fn pod(name: &str, ns: &str, ip: Option<&str>, ready: bool, admin_port: i32) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"),
                         "labels": {"app.kubernetes.io/name": "aim-scaler"}},
            "spec": {"nodeName": "cpu-0", "containers": [{"name": "scaler", "ports": [
                {"name": "otlp", "containerPort": 4317},
                {"name": "admin", "containerPort": admin_port},
            ]}]},
            "status": {"phase": "Running", "podIP": ip,
                       "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]},
        }))
        .unwrap()
    }

    #[test]
    fn a_service_gets_an_fqdn_slice_of_its_loopback_pods_with_named_ports_resolved() {
        let pods = [
            pod("a", "keda", Some("127.1.0.7"), true, 8080),
            pod("b", "keda", Some("127.1.0.8"), false, 8080),
            pod("elsewhere", "other", Some("127.1.0.9"), true, 8080),
            pod("pending", "keda", None, false, 8080),
        ];
        let slices = plan(&service(), &pods);
        assert_eq!(slices.len(), 1);
        let slice = &slices[0];
        assert_eq!(slice.address_type, "FQDN");
        assert_eq!(
            slice.metadata.name.as_deref(),
            Some("keda-otel-scaler-loopback")
        );
        let labels = slice.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[SERVICE_NAME], "keda-otel-scaler");
        assert_eq!(labels[MANAGED_BY], MANAGER);
        let ports: Vec<(Option<String>, Option<i32>)> = slice
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| (p.name.clone(), p.port))
            .collect();
        assert_eq!(
            ports,
            vec![
                (Some("otlp".into()), Some(4317)),
                (Some("admin".into()), Some(8080))
            ]
        );
        let endpoints: Vec<(String, Option<bool>, Option<String>)> = slice
            .endpoints
            .iter()
            .map(|e| {
                (
                    e.addresses[0].clone(),
                    e.conditions.as_ref().unwrap().ready,
                    e.target_ref.as_ref().unwrap().name.clone(),
                )
            })
            .collect();
        assert_eq!(
            endpoints,
            vec![
                ("127.1.0.7".into(), Some(true), Some("a".into())),
                ("127.1.0.8".into(), Some(false), Some("b".into())),
            ]
        );
        assert_eq!(
            slice.metadata.owner_references.as_ref().unwrap()[0].uid,
            "u1"
        );
    }

    #[test]
    fn pods_resolving_ports_differently_get_separate_slices() {
        let pods = [
            pod("a", "keda", Some("127.1.0.7"), true, 8080),
            pod("b", "keda", Some("127.1.0.8"), true, 9090),
        ];
        let slices = plan(&service(), &pods);
        let names: Vec<_> = slices
            .iter()
            .map(|s| s.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(
            names,
            ["keda-otel-scaler-loopback-0", "keda-otel-scaler-loopback-1"]
        );
    }

    /// Seen in the bed: with one manager value for both, the bridge took
    /// the bed's own slices for stale ones of its own and deleted them,
    /// cutting off KEDA's metrics server and the scaler.
    #[test]
    fn the_beds_own_slices_are_not_taken_for_these() {
        let kserve = crate::kserve::base_objects(&crate::kserve::KservePorts {
            webhook: 1,
            probe: 2,
            scaler: 3,
        });
        let keda = crate::keda::routing_objects(
            &crate::keda::KedaPorts {
                operator_grpc: 1,
                operator_metrics: 2,
                operator_probe: 3,
                adapter: 4,
                adapter_metrics: 5,
            },
            "CA",
        );
        let slices: Vec<_> = kserve
            .iter()
            .chain(&keda)
            .filter(|o| o["kind"] == "EndpointSlice")
            .collect();
        assert_eq!(slices.len(), 2);
        for slice in slices {
            assert_ne!(slice["metadata"]["labels"][MANAGED_BY], MANAGER, "{slice}");
        }
    }

    #[test]
    fn a_local_process_gets_one_ready_loopback_endpoint_on_every_service_port() {
        let slice = at_local_process(&service(), 20016);
        assert_eq!(
            slice.metadata.name.as_deref(),
            Some("keda-otel-scaler-local")
        );
        assert_eq!(slice.metadata.namespace.as_deref(), Some("keda"));
        assert_eq!(slice.address_type, "FQDN");
        let labels = slice.metadata.labels.clone().unwrap();
        assert_eq!(labels[SERVICE_NAME], "keda-otel-scaler");
        assert_eq!(labels[MANAGED_BY], MANAGER);
        assert_eq!(labels["app.kubernetes.io/name"], "aim-scaler");
        let owner = &slice.metadata.owner_references.clone().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("Service", "u1"));
        let ports: Vec<(Option<String>, Option<i32>)> = slice
            .ports
            .clone()
            .unwrap()
            .into_iter()
            .map(|p| (p.name, p.port))
            .collect();
        assert_eq!(
            ports,
            vec![
                (Some("otlp".into()), Some(20016)),
                (Some("admin".into()), Some(20016))
            ]
        );
        assert_eq!(slice.endpoints.len(), 1);
        assert_eq!(slice.endpoints[0].addresses, vec!["127.0.0.1".to_string()]);
        let conditions = slice.endpoints[0].conditions.clone().unwrap();
        assert_eq!(
            (conditions.ready, conditions.terminating),
            (Some(true), Some(false))
        );
    }

    #[test]
    fn services_without_selector_or_pods_get_nothing() {
        let mut selectorless = service();
        selectorless.spec.as_mut().unwrap().selector = None;
        assert!(
            plan(
                &selectorless,
                &[pod("a", "keda", Some("127.1.0.7"), true, 8080)]
            )
            .is_empty()
        );
        assert!(plan(&service(), &[]).is_empty());
        // A pod outside the loopback range is the endpoint controller's.
        assert!(
            plan(
                &service(),
                &[pod("a", "keda", Some("10.0.0.1"), true, 8080)]
            )
            .is_empty()
        );
    }
}
