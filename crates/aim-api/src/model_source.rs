//! AIMClusterModelSource: a registry whose matching images become
//! AIMClusterModels, kept in sync on an interval.

use k8s_openapi::api::core::v1::LocalObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use crate::common::Phase;

#[skip_serializing_none]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[kube(
    group = "aim.eai.amd.com",
    version = "v1alpha1",
    kind = "AIMClusterModelSource",
    plural = "aimclustermodelsources",
    singular = "aimclustermodelsource",
    status = "AIMClusterModelSourceStatus",
    shortname = "aimclsrc",
    category = "aim",
    category = "all",
    doc = "AIMClusterModelSource lists a registry's repositories and tags and keeps an AIMClusterModel for each image that passes its filters.",
    printcolumn(name = "Status", type_ = "string", json_path = ".status.status"),
    printcolumn(
        name = "Models",
        type_ = "integer",
        json_path = ".status.discoveredModels"
    ),
    printcolumn(name = "LastSync", type_ = "date", json_path = ".status.lastSyncTime"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct AIMClusterModelSourceSpec {
    #[serde(default = "default_registry")]
    pub registry: Option<String>,
    /// Secrets in the operator's namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    #[schemars(length(min = 1, max = 100))]
    pub filters: Vec<ModelSourceFilter>,
    /// How often to list the registry, as a Go duration.
    #[serde(default = "default_sync_interval")]
    #[schemars(schema_with = "crate::schema::duration")]
    pub sync_interval: Option<String>,
    /// Version constraints applied to every filter, e.g. `>=0.8.0`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<String>,
    #[serde(default = "default_max_models")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_models: Option<i32>,
}

fn default_registry() -> Option<String> {
    Some("docker.io".into())
}

fn default_sync_interval() -> Option<String> {
    Some("1h".into())
}

fn default_max_models() -> Option<i32> {
    Some(100)
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ModelSourceFilter {
    /// Repository pattern, `*` wildcards allowed, e.g. `amdenterpriseai/aim-*`.
    #[schemars(length(max = 512))]
    pub image: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<String>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AIMClusterModelSourceStatus {
    #[serde(default = "crate::status::default_phase")]
    pub status: Option<Phase>,
    pub observed_generation: Option<i64>,
    pub last_sync_time: Option<Time>,
    pub discovered_models: Option<i32>,
    pub available_models: Option<i32>,
    pub models_limit_reached: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}
