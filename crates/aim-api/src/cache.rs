//! AIMTemplateCache: the downloaded weights of one template, shared by the
//! services of a namespace or dedicated to one service.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, LocalObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use crate::common::{ModelSource, ResolvedReference, TemplateScope};
use crate::service::CacheMode;
use crate::status::ResourcePhase;

#[skip_serializing_none]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[kube(
    group = "aim.eai.amd.com",
    version = "v1alpha1",
    kind = "AIMTemplateCache",
    plural = "aimtemplatecaches",
    singular = "aimtemplatecache",
    namespaced,
    status = "AIMTemplateCacheStatus",
    shortname = "aimtc",
    category = "aim",
    category = "all",
    doc = "AIMTemplateCache holds the downloaded model weights of one service template, as AIMArtifacts on persistent volumes.",
    printcolumn(name = "Template", type_ = "string", json_path = ".spec.templateName"),
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(name = "Status", type_ = "string", json_path = ".status.status"),
    printcolumn(
        name = "Kind",
        type_ = "string",
        json_path = ".status.resolvedTemplateKind"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct AIMTemplateCacheSpec {
    #[schemars(length(min = 1))]
    pub template_name: String,
    pub template_scope: TemplateScope,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub env: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    pub storage_class_name: Option<String>,
    pub download_image: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub model_sources: Vec<ModelSource>,
    pub runtime_config_name: Option<String>,
    #[serde(default = "default_mode")]
    pub mode: Option<CacheMode>,
}

fn default_mode() -> Option<CacheMode> {
    Some(CacheMode::Shared)
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AIMTemplateCacheStatus {
    #[serde(default = "crate::status::default_pending")]
    pub status: Option<ResourcePhase>,
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    pub resolved_runtime_config: Option<ResolvedReference>,
    pub resolved_template_kind: Option<String>,
    /// The cache's artifacts, keyed by artifact name.
    pub artifacts: Option<BTreeMap<String, CachedArtifact>>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CachedArtifact {
    pub uid: Option<String>,
    pub name: Option<String>,
    /// The model id the artifact holds.
    pub model: Option<String>,
    pub status: Option<ResourcePhase>,
    pub persistent_volume_claim: Option<String>,
    pub mount_point: Option<String>,
}
