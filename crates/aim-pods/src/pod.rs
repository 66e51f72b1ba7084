//! Which pods the runner serves, and who they are. Pure.

use k8s_openapi::api::core::v1::Pod;

use crate::exposition::PodIdentity;

/// KServe puts this label on every predictor pod.
pub const ISVC_LABEL: &str = "serving.kserve.io/inferenceservice";
/// Pods that are not KServe's but should be played as vLLM pods too (a
/// plain Deployment of simulators, as in a runbook's scale-out proof) carry
/// this label with the value "true".
pub const SIMULATE_LABEL: &str = "aim.eai.amd.com/simulate";
/// The OTel operator injects its sidecar into pods carrying this annotation;
/// its value names the collector (or is "true" for the namespace's only one).
pub const INJECT_ANNOTATION: &str = "sidecar.opentelemetry.io/inject";
/// The device plugins' GPU resources.
pub const GPU_RESOURCES: [&str; 2] = ["amd.com/gpu", "nvidia.com/gpu"];

/// A pod the runner should serve: running on a (KWOK) node with an address.
#[derive(Clone, Debug, PartialEq)]
pub struct ServedPod {
    pub uid: String,
    pub identity: PodIdentity,
    pub ip: String,
    /// The inference container's HTTP port.
    pub port: u16,
    /// The inference container's name.
    pub container: String,
    /// The node the pod runs on.
    pub node: String,
    /// GPUs the inference container asks for (`amd.com/gpu` or
    /// `nvidia.com/gpu`), at least 1: the simulator always models one
    /// engine, and a GPU exporter needs a device to report it on.
    pub gpus: u32,
    /// The collector the sidecar follows, when one is injected.
    pub collector: Option<String>,
    pub ready: bool,
}

/// `None` for pods the runner has no business with, or not yet (no IP) or
/// no longer (being deleted).
pub fn served(pod: &Pod) -> Option<ServedPod> {
    let meta = &pod.metadata;
    if meta.deletion_timestamp.is_some() {
        return None;
    }
    let labels = meta.labels.as_ref()?;
    let simulate = labels.get(SIMULATE_LABEL).is_some_and(|v| v == "true");
    if !simulate && !labels.contains_key(ISVC_LABEL) {
        return None;
    }
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    let ip = status.pod_ip.clone().filter(|ip| !ip.is_empty())?;
    let spec = pod.spec.as_ref()?;
    // KServe's predictor container; the first one otherwise.
    let container = spec
        .containers
        .iter()
        .find(|c| c.name == "kserve-container")
        .or_else(|| spec.containers.first())?;
    let port = container
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("http"))
        .or_else(|| container.ports.as_ref().and_then(|p| p.first()))
        .and_then(|p| u16::try_from(p.container_port).ok())
        .unwrap_or(8080);
    let gpus = container
        .resources
        .iter()
        .flat_map(|r| [r.limits.as_ref(), r.requests.as_ref()])
        .flatten()
        .flat_map(|m| GPU_RESOURCES.iter().filter_map(|k| m.get(*k)))
        .filter_map(|q| q.0.parse::<u32>().ok())
        .max()
        .unwrap_or(0)
        .max(1);
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    Some(ServedPod {
        uid: meta.uid.clone()?,
        identity: PodIdentity {
            namespace: meta.namespace.clone()?,
            deployment: deployment_of(pod).unwrap_or_default(),
            pod: meta.name.clone()?,
        },
        ip,
        port,
        container: container.name.clone(),
        node: spec.node_name.clone().unwrap_or_default(),
        gpus,
        collector: meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(INJECT_ANNOTATION))
            .filter(|v| !v.is_empty() && v.as_str() != "false")
            .cloned(),
        ready,
    })
}

/// The Deployment behind a pod: its ReplicaSet's name without the
/// pod-template hash, which is how the OTel operator names
/// `k8s.deployment.name`.
pub fn deployment_of(pod: &Pod) -> Option<String> {
    let rs = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.kind == "ReplicaSet")?;
    let hash = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("pod-template-hash"));
    match hash {
        Some(h) => rs.name.strip_suffix(&format!("-{h}")).map(str::to_string),
        None => rs.name.rsplit_once('-').map(|(d, _)| d.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(extra: serde_json::Value) -> Pod {
        let mut base = json!({
            "metadata": {
                "name": "chat-predictor-7d9f-x1", "namespace": "ml", "uid": "u1",
                "labels": {ISVC_LABEL: "chat", "pod-template-hash": "7d9f"},
                "annotations": {INJECT_ANNOTATION: "chat-predictor"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "chat-predictor-7d9f", "uid": "r"}]
            },
            "spec": {"containers": [{"name": "kserve-container", "image": "x", "ports": [{"name": "http", "containerPort": 8000}]}]},
            "status": {"phase": "Running", "podIP": "127.1.0.7"}
        });
        merge(&mut base, extra);
        serde_json::from_value(base).unwrap()
    }

    fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
        match (a, b) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    #[test]
    fn a_running_predictor_pod_is_served_with_its_identity() {
        let p = served(&pod(json!({}))).unwrap();
        assert_eq!(p.identity.deployment, "chat-predictor");
        assert_eq!(p.identity.pod, "chat-predictor-7d9f-x1");
        assert_eq!((p.ip.as_str(), p.port), ("127.1.0.7", 8000));
        assert_eq!(p.collector.as_deref(), Some("chat-predictor"));
        assert!(!p.ready);
        assert_eq!(p.container, "kserve-container");
        assert_eq!(p.gpus, 1, "no GPU asked for: the simulator's one engine");
    }

    #[test]
    fn the_gpus_of_the_inference_container_are_counted() {
        let p = served(&pod(json!({"spec": {"nodeName": "kwok-0", "containers": [{
            "name": "kserve-container", "image": "x",
            "ports": [{"name": "http", "containerPort": 8000}],
            "resources": {"limits": {"amd.com/gpu": "2", "cpu": "4"}, "requests": {"amd.com/gpu": "2"}}
        }]}})))
        .unwrap();
        assert_eq!((p.gpus, p.node.as_str()), (2, "kwok-0"));
        let p = served(&pod(json!({"spec": {"containers": [{
            "name": "kserve-container", "image": "x",
            "resources": {"limits": {"nvidia.com/gpu": "8"}}
        }]}})))
        .unwrap();
        assert_eq!(p.gpus, 8);
    }

    #[test]
    fn other_pods_are_left_alone() {
        assert!(served(&pod(json!({"status": {"podIP": null}}))).is_none());
        assert!(served(&pod(json!({"status": {"phase": "Pending"}}))).is_none());
        assert!(
            served(&pod(
                json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}})
            ))
            .is_none()
        );
        assert!(served(&pod(json!({"metadata": {"labels": null}}))).is_none());
        // Any other pod, such as Prometheus' own, is not a vLLM pod.
        let other = json!({"metadata": {"labels": {"app": "prometheus"}}});
        let mut p = pod(other);
        p.metadata.labels = Some([("app".to_string(), "prometheus".to_string())].into());
        assert!(served(&p).is_none());
        p.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(SIMULATE_LABEL.into(), "false".into());
        assert!(served(&p).is_none());
    }

    #[test]
    fn a_pod_labelled_for_simulation_is_served_like_a_predictor() {
        let mut p = pod(json!({"spec": {"containers": [{
            "name": "sim", "image": "ghcr.io/llm-d/llm-d-inference-sim:v0.5",
            "ports": [{"name": "http", "containerPort": 8000}]
        }]}}));
        p.metadata.labels = Some(
            [
                ("app".to_string(), "vllm-sim".to_string()),
                (SIMULATE_LABEL.to_string(), "true".to_string()),
            ]
            .into(),
        );
        let served = served(&p).unwrap();
        assert_eq!((served.container.as_str(), served.port), ("sim", 8000));
        assert_eq!(served.identity.deployment, "chat-predictor");
    }
}
