//! `aim pause` and `aim resume`: flip a service's autoscaling switch live.
//!
//! The switch is the service's annotation `aim.eai.amd.com/autoscaling-paused`;
//! the operator carries it to KEDA's ScaledObject. Writing the service, not
//! the ScaledObject, keeps one source of truth: a ScaledObject that KServe
//! recreates, or the next reconcile, cannot undo the choice.

use aim_api::AIMService;
use aim_rules::labels::AUTOSCALING_PAUSED;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum CostGuardError {
    #[error(
        "AIMService {namespace}/{name} not found: check the name with `kubectl -n {namespace} get aimservice`"
    )]
    NotFound { namespace: String, name: String },
    #[error(
        "AIMService {namespace}/{name} has fixed replicas (no autoScaling, minReplicas or maxReplicas): there is no autoscaling to {verb}"
    )]
    NotAutoscaled {
        namespace: String,
        name: String,
        verb: &'static str,
    },
    #[error("updating AIMService {namespace}/{name}: {source}")]
    Kube {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// What `pause`/`resume` found and did.
#[derive(Debug, PartialEq)]
pub struct Flip {
    /// The switch before the call (None: the annotation was absent).
    pub before: Option<String>,
    pub paused: bool,
}

/// Sets the service's pause switch. Refuses services with fixed replicas:
/// pausing them would do nothing, and saying so is better than a no-op.
pub async fn set_paused(
    client: &Client,
    namespace: &str,
    name: &str,
    paused: bool,
) -> Result<Flip, CostGuardError> {
    let api: Api<AIMService> = Api::namespaced(client.clone(), namespace);
    let kube_err = |source| CostGuardError::Kube {
        namespace: namespace.into(),
        name: name.into(),
        source,
    };
    let svc =
        api.get_opt(name)
            .await
            .map_err(kube_err)?
            .ok_or_else(|| CostGuardError::NotFound {
                namespace: namespace.into(),
                name: name.into(),
            })?;
    if !crate::service::render::replicas(&svc).autoscaling {
        return Err(CostGuardError::NotAutoscaled {
            namespace: namespace.into(),
            name: name.into(),
            verb: if paused { "pause" } else { "resume" },
        });
    }
    let before = svc.annotations().get(AUTOSCALING_PAUSED).cloned();
    let patch = json!({"metadata": {"annotations": {AUTOSCALING_PAUSED: paused.to_string()}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(kube_err)?;
    Ok(Flip { before, paused })
}
