//! AIMServiceTemplate (namespaced) and AIMClusterServiceTemplate (cluster):
//! one way to run a model (hardware, precision, optimisation goal) and what
//! discovery found out about it.

use k8s_openapi::api::core::v1::{
    EnvVar, LocalObjectReference, NodeAffinity, ResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use crate::common::{
    HardwareRequirements, Metric, ModelSource, Precision, Profile, ProfileType, ResolvedReference,
};
use crate::status::ResourcePhase;

#[skip_serializing_none]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[kube(
    group = "aim.eai.amd.com",
    version = "v1alpha1",
    kind = "AIMServiceTemplate",
    plural = "aimservicetemplates",
    singular = "aimservicetemplate",
    namespaced,
    status = "AIMServiceTemplateStatus",
    shortname = "aimtpl",
    selectable = ".spec.modelName",
    category = "aim",
    category = "all",
    doc = "AIMServiceTemplate is one way to run a model in a namespace: hardware, precision and optimisation goal, with the profile discovery found for them.",
    printcolumn(name = "Model", type_ = "string", json_path = ".spec.modelName"),
    printcolumn(name = "Status", type_ = "string", json_path = ".status.status"),
    printcolumn(
        name = "Hardware",
        type_ = "string",
        json_path = ".status.hardwareSummary"
    ),
    printcolumn(
        name = "Metric",
        type_ = "string",
        json_path = ".status.profile.metadata.metric"
    ),
    printcolumn(
        name = "Precision",
        type_ = "string",
        json_path = ".status.profile.metadata.precision"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct AIMServiceTemplateSpec {
    /// The AIMModel (or, for cluster templates, AIMClusterModel) this template runs.
    #[schemars(length(min = 1))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("model name is immutable"))]
    pub model_name: String,
    #[x_kube(validation = Rule::new("self == oldSelf").message("metric is immutable"))]
    pub metric: Option<Metric>,
    #[x_kube(validation = Rule::new("self == oldSelf").message("precision is immutable"))]
    pub precision: Option<Precision>,
    #[x_kube(validation = Rule::new("self == oldSelf").message("hardware is immutable"))]
    pub hardware: Option<HardwareRequirements>,
    pub runtime_config_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    pub service_account_name: Option<String>,
    pub resources: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub model_sources: Vec<ModelSource>,
    /// The image's profile this template pins.
    pub profile_id: Option<String>,
    #[serde(rename = "type")]
    pub type_: Option<ProfileType>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub env: Vec<EnvVar>,
    /// Namespaced templates only: pre-download the weights.
    pub caching: Option<TemplateCaching>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
pub struct TemplateCaching {
    #[serde(default = "default_false")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub env: Vec<EnvVar>,
}

fn default_false() -> Option<bool> {
    Some(false)
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AIMServiceTemplateStatus {
    #[serde(default = "crate::status::default_pending")]
    pub status: Option<ResourcePhase>,
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    pub resolved_runtime_config: Option<ResolvedReference>,
    pub resolved_model: Option<ResolvedReference>,
    pub resolved_cache: Option<ResolvedReference>,
    pub resolved_hardware: Option<HardwareRequirements>,
    pub resolved_node_affinity: Option<NodeAffinity>,
    /// e.g. `1 x MI300X`, `CPU`.
    pub hardware_summary: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub model_sources: Vec<ModelSource>,
    pub profile: Option<Profile>,
    pub discovery_job: Option<JobReference>,
    pub discovery: Option<DiscoveryState>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct JobReference {
    pub name: Option<String>,
    pub namespace: Option<String>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiscoveryState {
    pub attempts: Option<i32>,
    pub last_attempt_time: Option<Time>,
    pub last_failure_reason: Option<String>,
    /// Hash of the spec fields discovery depends on; a change re-runs it.
    pub spec_hash: Option<String>,
}

crate::cluster_twin!(
    AIMClusterServiceTemplate,
    AIMServiceTemplate,
    AIMServiceTemplateSpec,
    AIMServiceTemplateStatus,
    remove_spec_fields = ["caching"],
    plural = "aimclusterservicetemplates",
    singular = "aimclusterservicetemplate",
    shortname = "aimcltpl",
    doc = "AIMClusterServiceTemplate is one way to run a cluster model, available to every namespace: hardware, precision and optimisation goal, with the profile discovery found for them."
);
