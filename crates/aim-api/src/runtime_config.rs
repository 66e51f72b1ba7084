//! AIMRuntimeConfig (namespaced) and AIMClusterRuntimeConfig (cluster):
//! defaults for storage, routing, environment and label propagation that
//! services, models, templates and caches resolve against.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::EnvVar;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

#[skip_serializing_none]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[kube(
    group = "aim.eai.amd.com",
    version = "v1alpha1",
    kind = "AIMRuntimeConfig",
    plural = "aimruntimeconfigs",
    singular = "aimruntimeconfig",
    namespaced,
    status = "RuntimeConfigStatus",
    shortname = "aimrc",
    category = "aim",
    category = "all",
    doc = "AIMRuntimeConfig holds namespace defaults for AIM services: storage, routing, environment and label propagation. Values here override the AIMClusterRuntimeConfig of the same name."
)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfigSpec {
    pub storage: Option<StorageConfig>,
    pub routing: Option<RoutingConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub env: Vec<EnvVar>,
    pub model: Option<ModelConfig>,
    pub label_propagation: Option<LabelPropagation>,
    /// The cost guard of autoscaled services (an aim extension).
    pub autoscaling: Option<AutoscalingConfig>,
    /// Deprecated: use `storage.defaultStorageClassName`.
    pub default_storage_class_name: Option<String>,
    /// Deprecated: use `storage.pvcHeadroomPercent`.
    #[schemars(range(min = 0))]
    pub pvc_headroom_percent: Option<i32>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageConfig {
    pub default_storage_class_name: Option<String>,
    /// Extra space on model cache volumes, in percent of the model size.
    #[serde(default = "default_headroom")]
    #[schemars(range(min = 0))]
    pub pvc_headroom_percent: Option<i32>,
}

/// How autoscaled services start. While KEDA's ScaledObject is paused, KEDA
/// removes its HPA and leaves the replica count alone, so a minimum of one
/// replica cannot keep a GPU node up around the clock by accident.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingConfig {
    /// Autoscaled services are paused (`autoscaling.keda.sh/paused`) unless
    /// their annotation `aim.eai.amd.com/autoscaling-paused` says otherwise;
    /// `aim resume` sets it to "false", `aim pause` to "true".
    pub paused_by_default: Option<bool>,
}

fn default_headroom() -> Option<i32> {
    Some(10)
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoutingConfig {
    /// Create a Gateway API HTTPRoute for the service.
    pub enabled: Option<bool>,
    pub gateway_ref: Option<ParentReference>,
    /// Path prefix with `{jsonpath}` placeholders, e.g. `/{.metadata.namespace}/{.metadata.name}`.
    pub path_template: Option<String>,
    /// Route request timeout as a Go duration, e.g. `120s`.
    // `default` keeps the field optional: a custom schema hides the Option.
    #[serde(default)]
    #[schemars(schema_with = "crate::schema::duration")]
    pub request_timeout: Option<String>,
    pub annotations: Option<BTreeMap<String, String>>,
}

/// A Gateway API `ParentReference`: the Gateway (or listener) a route attaches to.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParentReference {
    #[serde(default = "default_parent_group")]
    #[schemars(length(max = 253))]
    pub group: Option<String>,
    #[serde(default = "default_parent_kind")]
    #[schemars(length(min = 1, max = 63))]
    pub kind: Option<String>,
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(length(min = 1, max = 253))]
    pub section_name: Option<String>,
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
}

fn default_parent_group() -> Option<String> {
    Some("gateway.networking.k8s.io".into())
}

fn default_parent_kind() -> Option<String> {
    Some("Gateway".into())
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelConfig {
    pub auto_discovery: Option<bool>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct LabelPropagation {
    #[serde(default = "default_false")]
    pub enabled: Option<bool>,
    /// Label key patterns (`*` and `?` wildcards) copied from parents to children.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub r#match: Vec<String>,
}

fn default_false() -> Option<bool> {
    Some(false)
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfigStatus {
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

crate::cluster_twin!(
    AIMClusterRuntimeConfig,
    AIMRuntimeConfig,
    RuntimeConfigSpec,
    RuntimeConfigStatus,
    remove_spec_fields = [],
    plural = "aimclusterruntimeconfigs",
    singular = "aimclusterruntimeconfig",
    shortname = "aimclrc",
    doc = "AIMClusterRuntimeConfig holds cluster-wide defaults for AIM resources. An AIMRuntimeConfig of the same name in a namespace overrides it there."
);
