//! What every reconcile gets: the client, the event recorder, metrics and
//! the operator's settings.

use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::events::{Recorder, Reporter};
use kube::{Client, ResourceExt};

use crate::metrics::Metrics;

#[derive(Clone, Debug)]
pub struct Settings {
    /// Where operator-owned objects live (discovery jobs, cluster secrets).
    pub operator_namespace: String,
    /// The KEDA scaler address written into metrics that name none.
    pub default_scaler_address: String,
    /// This replica's name in Leases (the leader lease, the discovery lock).
    pub identity: String,
}

pub struct Context {
    pub client: Client,
    /// Warning events about InferenceServices (KServe's complaints), kept
    /// by a watch so reconciles read them from memory.
    pub isvc_warnings: kube::runtime::reflector::Store<k8s_openapi::api::core::v1::Event>,
    /// KServe's `inferenceservice-config` config map(s), kept by a watch:
    /// its autoscaler settings decide the ScaledObjects KServe builds and
    /// the defaults of the operator's own.
    pub kserve_config: kube::runtime::reflector::Store<ConfigMap>,
    pub recorder: Recorder,
    /// Who publishes: also for one-off recorders (see [`Context::unaggregated_recorder`]).
    pub reporter: Reporter,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
    /// Serializes discovery's count-then-create among this process's
    /// reconciles; the `aim-discovery-lock` Lease does it across replicas.
    pub discovery_slot: tokio::sync::Mutex<()>,
    /// For the Prometheus backend's queries (see `service::prometheus`).
    pub prometheus_http: reqwest::Client,
}

impl Context {
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        settings: Settings,
        isvc_warnings: kube::runtime::reflector::Store<k8s_openapi::api::core::v1::Event>,
        kserve_config: kube::runtime::reflector::Store<ConfigMap>,
    ) -> Self {
        let reporter = Reporter {
            controller: "aim-operator".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter.clone()),
            reporter,
            client,
            isvc_warnings,
            kserve_config,
            metrics,
            settings,
            discovery_slot: tokio::sync::Mutex::new(()),
            prometheus_http: crate::service::prometheus::http_client(),
        }
    }
}

/// The name of KServe's cluster configuration.
pub const KSERVE_CONFIG: &str = "inferenceservice-config";
/// Where KServe's installation puts it.
pub const KSERVE_NAMESPACE: &str = "kserve";

impl Context {
    /// KServe's autoscaler settings as its config map says, with KServe's
    /// shipped defaults for what it does not say (or when no config map is
    /// visible), and the operator's scaler address.
    pub fn kserve_autoscaler(&self) -> aim_scaling::KServeAutoscaler {
        let maps = self.kserve_config.state();
        // KServe reads the one in its own namespace.
        let map = maps
            .iter()
            .find(|m| m.namespace().as_deref() == Some(KSERVE_NAMESPACE))
            .or_else(|| maps.first());
        kserve_autoscaler(
            map.map(|m| m.as_ref()),
            &self.settings.default_scaler_address,
        )
    }

    /// A recorder with an empty cache. kube's recorder folds every event
    /// with the same reason, action and object into the first one (a
    /// series count), keeping the first note: a second `ScaledUp` within
    /// its cache's lifetime would show the first decision's replicas and
    /// metric values. Scale decisions are each their own event.
    pub fn unaggregated_recorder(&self) -> Recorder {
        Recorder::new(self.client.clone(), self.reporter.clone())
    }
}

/// The annotation that freezes an object: no status write, no children.
pub const PAUSED_ANNOTATION: &str = "aim.eai.amd.com/reconciliation-paused";

pub fn is_paused(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> bool {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(PAUSED_ANNOTATION))
        .is_some_and(|v| v == "true")
}

/// KServe's `autoscaler` entry: JSON with the stabilisation windows as
/// strings of seconds. A window that is absent, empty or unreadable is left
/// to KServe's default, as KServe itself does.
pub fn kserve_autoscaler(
    map: Option<&ConfigMap>,
    default_scaler_address: &str,
) -> aim_scaling::KServeAutoscaler {
    let mut out = aim_scaling::KServeAutoscaler {
        default_scaler_address: default_scaler_address.to_string(),
        ..Default::default()
    };
    let entry = map
        .and_then(|m| m.data.as_ref())
        .and_then(|d| d.get("autoscaler"))
        .and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok());
    let window = |key: &str| {
        entry
            .as_ref()
            .and_then(|e| e.get(key))
            .and_then(|v| v.as_str())
            .and_then(|s| s.trim().parse::<i32>().ok())
    };
    if let Some(up) = window("scaleUpStabilizationWindowSeconds") {
        out.scale_up_stabilization_s = Some(up);
    }
    if let Some(down) = window("scaleDownStabilizationWindowSeconds") {
        out.scale_down_stabilization_s = Some(down);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kserve_windows_come_from_its_config_map() {
        let map: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {"name": KSERVE_CONFIG, "namespace": "kserve"},
            "data": {"autoscaler": "{\"scaleUpStabilizationWindowSeconds\": \"5\", \"scaleDownStabilizationWindowSeconds\": \"10\"}"}
        }))
        .unwrap();
        let a = kserve_autoscaler(Some(&map), "scaler:4318");
        assert_eq!(a.scale_up_stabilization_s, Some(5));
        assert_eq!(a.scale_down_stabilization_s, Some(10));
        assert_eq!(a.default_scaler_address, "scaler:4318");
        let none = kserve_autoscaler(None, "s:1");
        assert_eq!(none.scale_down_stabilization_s, Some(300));
        assert_eq!(none.scale_up_stabilization_s, Some(0));
    }
}
