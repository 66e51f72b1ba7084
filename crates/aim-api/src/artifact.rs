//! AIMArtifact: one model's weights downloaded onto a persistent volume.

use k8s_openapi::api::core::v1::{EnvVar, LocalObjectReference};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use crate::common::ResolvedReference;
use crate::service::CacheMode;
use crate::status::ResourcePhase;

/// The downloader image AIM Engine uses; the operator's default.
pub const DEFAULT_DOWNLOAD_IMAGE: &str = "ghcr.io/silogen/aim-artifact-downloader:0.2.0";

#[skip_serializing_none]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[kube(
    group = "aim.eai.amd.com",
    version = "v1alpha1",
    kind = "AIMArtifact",
    plural = "aimartifacts",
    singular = "aimartifact",
    namespaced,
    status = "AIMArtifactStatus",
    shortname = "aimart",
    category = "aim",
    category = "all",
    doc = "AIMArtifact downloads one model's weights onto a persistent volume claim.",
    printcolumn(name = "Status", type_ = "string", json_path = ".status.status"),
    printcolumn(name = "Mode", type_ = "string", json_path = ".status.mode"),
    printcolumn(
        name = "Model Size",
        type_ = "string",
        json_path = ".status.displaySize"
    ),
    printcolumn(
        name = "Progress",
        type_ = "string",
        json_path = ".status.progress.displayPercentage"
    ),
    printcolumn(
        name = "Protocol",
        type_ = "string",
        json_path = ".status.download.protocol",
        priority = 1
    ),
    printcolumn(
        name = "Attempt",
        type_ = "integer",
        json_path = ".status.download.attempt",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct AIMArtifactSpec {
    /// `hf://org/name` or `s3://bucket/path`.
    #[schemars(regex(pattern = r"^(hf|s3)://[^ \t\r\n]+$"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("sourceUri is immutable"))]
    pub source_uri: String,
    #[schemars(regex(pattern = r"^[a-zA-Z0-9_-]+/[a-zA-Z0-9._-]+$"))]
    pub model_id: Option<String>,
    pub storage_class_name: Option<String>,
    /// The weights' size; zero or absent means "find out with a check-size job".
    pub size: Option<Quantity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub env: Vec<EnvVar>,
    #[serde(default = "default_download_image")]
    pub model_download_image: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    pub runtime_config_name: Option<String>,
}

fn default_download_image() -> Option<String> {
    Some(DEFAULT_DOWNLOAD_IMAGE.into())
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AIMArtifactStatus {
    #[serde(default = "crate::status::default_pending")]
    pub status: Option<ResourcePhase>,
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    pub resolved_runtime_config: Option<ResolvedReference>,
    pub progress: Option<DownloadProgress>,
    /// Written by the downloader pod itself.
    pub download: Option<DownloadState>,
    /// e.g. `2.2 GiB`.
    pub display_size: Option<String>,
    pub last_used: Option<Time>,
    pub persistent_volume_claim: Option<String>,
    /// Dedicated when the artifact has an owner, else Shared.
    pub mode: Option<CacheMode>,
    pub discovered_size_bytes: Option<i64>,
    pub allocated_size: Option<Quantity>,
    pub headroom_percent: Option<i32>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DownloadProgress {
    pub total_bytes: Option<i64>,
    pub downloaded_bytes: Option<i64>,
    #[schemars(range(min = 0, max = 100))]
    pub percentage: Option<i32>,
    pub display_percentage: Option<String>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DownloadState {
    /// The protocol of the current attempt, e.g. `XET`, `HF_TRANSFER`, `HTTP`.
    pub protocol: Option<String>,
    pub attempt: Option<i32>,
    pub total_attempts: Option<i32>,
    /// The protocols tried in order, comma-separated.
    pub protocol_sequence: Option<String>,
    pub message: Option<String>,
}
