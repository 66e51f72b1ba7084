//! What every reconcile gets: the client, the event recorder, metrics and
//! the operator's settings.

use std::sync::Arc;

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};

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
    pub recorder: Recorder,
    /// Who publishes: also for one-off recorders (see [`Context::unaggregated_recorder`]).
    pub reporter: Reporter,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
    /// Serializes discovery's count-then-create among this process's
    /// reconciles; the `aim-discovery-lock` Lease does it across replicas.
    pub discovery_slot: tokio::sync::Mutex<()>,
}

impl Context {
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        settings: Settings,
        isvc_warnings: kube::runtime::reflector::Store<k8s_openapi::api::core::v1::Event>,
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
            metrics,
            settings,
            discovery_slot: tokio::sync::Mutex::new(()),
        }
    }
}

impl Context {
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
