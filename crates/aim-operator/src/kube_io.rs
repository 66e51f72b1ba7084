//! The thin I/O every controller shares: server-side apply of planned
//! objects, deletes, status writes and events. Planned objects are JSON with
//! `apiVersion` and `kind`; the table below maps them to API resources so no
//! discovery round-trip is needed per apply.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams,
};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use serde_json::Value;

use crate::state::Transition;

/// Which resource a planned object is, and whether it is namespaced.
pub fn resource_of(api_version: &str, kind: &str) -> Option<(ApiResource, bool)> {
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    let (plural, namespaced) = match kind {
        "InferenceService" => ("inferenceservices", true),
        "HTTPRoute" => ("httproutes", true),
        "AIMModel" => ("aimmodels", true),
        "AIMClusterModel" => ("aimclustermodels", false),
        "AIMServiceTemplate" => ("aimservicetemplates", true),
        "AIMClusterServiceTemplate" => ("aimclusterservicetemplates", false),
        "AIMTemplateCache" => ("aimtemplatecaches", true),
        "AIMArtifact" => ("aimartifacts", true),
        "Job" => ("jobs", true),
        "PersistentVolumeClaim" => ("persistentvolumeclaims", true),
        "RoleBinding" => ("rolebindings", true),
        "ScaledObject" => ("scaledobjects", true),
        "HorizontalPodAutoscaler" => ("horizontalpodautoscalers", true),
        _ => return None,
    };
    let gvk = GroupVersionKind::gvk(group, version, kind);
    Some((ApiResource::from_gvk_with_plural(&gvk, plural), namespaced))
}

#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error("planned object has no apiVersion/kind/name: {0}")]
    Malformed(String),
    #[error("planned object of unknown kind {0}")]
    UnknownKind(String),
    #[error("Failed to apply resources: {kind} {name}: {source}")]
    Apply {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("Failed to patch {kind} {name}: {source}")]
    Patch {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("Failed to delete {kind} {name}: {source}")]
    Delete {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

fn dynamic_api(
    client: &Client,
    ar: &ApiResource,
    namespaced: bool,
    namespace: Option<&str>,
) -> Api<DynamicObject> {
    match (namespaced, namespace) {
        (true, Some(ns)) => Api::namespaced_with(client.clone(), ns, ar),
        _ => Api::all_with(client.clone(), ar),
    }
}

/// Adds a controller's labels (`managed-by`, `aim.eai.amd.com/<ctrl>.name`)
/// to a planned object where it has none of its own.
pub fn with_controller_labels(
    mut object: Value,
    controller: aim_rules::labels::Controller,
    parent: &str,
) -> Value {
    let mut labels: std::collections::BTreeMap<String, String> = object
        .pointer("/metadata/labels")
        .and_then(|l| serde_json::from_value(l.clone()).ok())
        .unwrap_or_default();
    aim_rules::labels::add_missing(
        &mut labels,
        &aim_rules::labels::controller_labels(controller, parent),
    );
    object["metadata"]["labels"] = serde_json::json!(labels);
    object
}

/// Server-side applies `object` as `manager`, with `owner` as controller
/// owner when given. Ownership is forced: the controller is the authority
/// over the fields it writes.
pub async fn apply(
    client: &Client,
    manager: &str,
    mut object: Value,
    owner: Option<&OwnerReference>,
) -> Result<DynamicObject, IoError> {
    let api_version = object["apiVersion"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let kind = object["kind"].as_str().unwrap_or_default().to_string();
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if api_version.is_empty() || kind.is_empty() || name.is_empty() {
        return Err(IoError::Malformed(object.to_string()));
    }
    let (ar, namespaced) =
        resource_of(&api_version, &kind).ok_or_else(|| IoError::UnknownKind(kind.clone()))?;
    if let Some(owner) = owner {
        object["metadata"]["ownerReferences"] = serde_json::json!([owner]);
    }
    let namespace = object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .map(str::to_string);
    let api = dynamic_api(client, &ar, namespaced, namespace.as_deref());
    api.patch(
        &name,
        &PatchParams::apply(manager).force(),
        &Patch::Apply(&object),
    )
    .await
    .map_err(|source| IoError::Apply { kind, name, source })
}

/// Deletes an object if it exists.
pub async fn delete(
    client: &Client,
    api_version: &str,
    kind: &str,
    namespace: Option<&str>,
    name: &str,
) -> Result<(), IoError> {
    let (ar, namespaced) =
        resource_of(api_version, kind).ok_or_else(|| IoError::UnknownKind(kind.to_string()))?;
    let api = dynamic_api(client, &ar, namespaced, namespace);
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(source) => Err(IoError::Delete {
            kind: kind.to_string(),
            name: name.to_string(),
            source,
        }),
    }
}

/// The controller owner reference AIM Engine writes: no blockOwnerDeletion.
pub fn owner_of<K: Resource<DynamicType = ()>>(obj: &K) -> Option<OwnerReference> {
    let mut owner = obj.controller_owner_ref(&())?;
    owner.block_owner_deletion = None;
    Some(owner)
}

/// Publishes one Event per condition transition. Failures to publish are
/// logged, never fatal: events are for people, status is the contract.
pub async fn publish(recorder: &Recorder, reference: &ObjectReference, transitions: &[Transition]) {
    for t in transitions {
        let event = KubeEvent {
            type_: if t.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: t.reason.clone(),
            note: Some(t.message.chars().take(1024).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, reference).await {
            tracing::debug!(error = %e, "publishing an event failed");
        }
    }
}

/// Writes `status` (a JSON object) through the status subresource with
/// server-side apply, forcing ownership of the fields it sets.
pub async fn write_status<K>(
    api: &Api<K>,
    obj: &K,
    manager: &str,
    status: Value,
) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": {"name": obj.name_any()},
        "status": status,
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(manager).force(),
        &Patch::Apply(&body),
    )
    .await
    .map(|_| ())
}

/// Whether finalizers in `ns` must be let go: the namespace is terminating,
/// gone, or unreadable to us. Namespace deletion must never wait on us.
pub async fn namespace_terminating(client: &Client, ns: &str) -> bool {
    match Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .get_opt(ns)
        .await
    {
        Ok(Some(n)) => n.metadata.deletion_timestamp.is_some(),
        Ok(None) => true,
        Err(kube::Error::Api(e)) if e.code == 403 => true,
        Err(_) => false,
    }
}

/// Replaces an object's finalizers. An object already gone needs none.
pub async fn set_finalizers<K>(
    api: &Api<K>,
    name: &str,
    finalizers: Vec<String>,
) -> Result<(), kube::Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = serde_json::json!({"metadata": {"finalizers": finalizers}});
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}
