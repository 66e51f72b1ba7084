//! The fake node fleet KWOK keeps Ready.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeSpec as CoreNodeSpec, NodeStatus};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// One fake node. GPU nodes carry the labels AMD's device plugin and node
/// labeller publish, which is all AIM's GPU detection reads.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub name: String,
    pub address: String,
    /// `(device id, vram label, count)` for an AMD GPU node.
    pub gpu: Option<(String, String, u32)>,
    pub cpu: u32,
    pub memory: String,
}

/// Two MI300X nodes with eight GPUs each and one CPU-only node: enough for
/// scheduling, GPU detection and "not available" cases.
pub fn default_fleet() -> Vec<NodeSpec> {
    let gpu = |i: u32| NodeSpec {
        name: format!("gpu-mi300x-{i}"),
        address: format!("127.0.10.{}", i + 1),
        gpu: Some(("74a1".into(), "192G".into(), 8)),
        cpu: 192,
        memory: "2Ti".into(),
    };
    vec![
        gpu(0),
        gpu(1),
        NodeSpec {
            name: "cpu-0".into(),
            address: "127.0.10.100".into(),
            gpu: None,
            cpu: 32,
            memory: "128Gi".into(),
        },
    ]
}

impl NodeSpec {
    pub fn to_node(&self) -> Node {
        let mut labels = BTreeMap::from([
            ("kubernetes.io/hostname".to_string(), self.name.clone()),
            ("kubernetes.io/os".to_string(), "linux".to_string()),
            ("kubernetes.io/arch".to_string(), "amd64".to_string()),
            ("type".to_string(), "kwok".to_string()),
            (
                "aim.eai.amd.com/dev-cluster".to_string(),
                "true".to_string(),
            ),
        ]);
        let mut resources = BTreeMap::from([
            ("cpu".to_string(), Quantity(self.cpu.to_string())),
            ("memory".to_string(), Quantity(self.memory.clone())),
            ("pods".to_string(), Quantity("110".into())),
            ("ephemeral-storage".to_string(), Quantity("1Ti".into())),
        ]);
        if let Some((device_id, vram, count)) = &self.gpu {
            labels.insert("amd.com/gpu.device-id".into(), device_id.clone());
            labels.insert("amd.com/gpu.vram".into(), vram.clone());
            labels.insert("amd.com/gpu.family".into(), "AI".into());
            resources.insert("amd.com/gpu".into(), Quantity(count.to_string()));
        }
        Node {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                labels: Some(labels),
                annotations: Some(BTreeMap::from([(
                    "kwok.x-k8s.io/node".to_string(),
                    "fake".to_string(),
                )])),
                ..Default::default()
            },
            spec: Some(CoreNodeSpec::default()),
            status: Some(NodeStatus {
                allocatable: Some(resources.clone()),
                capacity: Some(resources),
                // One KWOK process serves the kubelet API of every node on
                // 127.0.0.1; `localhost` as the Hostname address is where
                // the apiserver finds it, while each node keeps its own IP.
                addresses: Some(vec![
                    NodeAddress {
                        type_: "InternalIP".into(),
                        address: self.address.clone(),
                    },
                    NodeAddress {
                        type_: "Hostname".into(),
                        address: "localhost".into(),
                    },
                ]),
                ..Default::default()
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_nodes_advertise_amd_gpus_and_cpu_nodes_do_not() {
        let fleet = default_fleet();
        let gpu = fleet[0].to_node();
        let labels = gpu.metadata.labels.unwrap();
        assert_eq!(labels["amd.com/gpu.device-id"], "74a1");
        assert_eq!(
            gpu.status.unwrap().allocatable.unwrap()["amd.com/gpu"],
            Quantity("8".into())
        );
        let cpu = fleet.iter().find(|n| n.gpu.is_none()).unwrap().to_node();
        assert!(
            !cpu.metadata
                .labels
                .unwrap()
                .contains_key("amd.com/gpu.device-id")
        );
        assert!(
            !cpu.status
                .unwrap()
                .allocatable
                .unwrap()
                .contains_key("amd.com/gpu")
        );
        // Node addresses stay on loopback: nothing may ever be sent elsewhere.
        assert!(fleet.iter().all(|n| n.address.starts_with("127.")));
    }
}
