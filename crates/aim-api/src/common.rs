//! Sub-types shared by several kinds: hardware, runtime parameters, model
//! sources, resolved references, discovery profiles and image metadata.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::EnvVar;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

/// The status values used across kinds. Each kind's status restricts the
/// set it may hold through its own enum (see the kind modules).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema, Default)]
pub enum Phase {
    #[default]
    Pending,
    Starting,
    Progressing,
    Ready,
    Running,
    Degraded,
    NotAvailable,
    Failed,
}

impl Phase {
    /// The priority order of AIM's state engine: the worst component state
    /// wins, and lower numbers are worse.
    pub fn priority(self) -> u8 {
        match self {
            Phase::Running => 7,
            Phase::Ready => 6,
            Phase::Progressing => 5,
            Phase::Starting => 4,
            Phase::Pending => 3,
            Phase::Degraded => 2,
            Phase::NotAvailable => 1,
            Phase::Failed => 0,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Starting => "Starting",
            Phase::Progressing => "Progressing",
            Phase::Ready => "Ready",
            Phase::Running => "Running",
            Phase::Degraded => "Degraded",
            Phase::NotAvailable => "NotAvailable",
            Phase::Failed => "Failed",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which of the two parallel kinds (namespaced or cluster-scoped) an object
/// is, or `Merged` for a runtime config built from both.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Scope {
    Namespace,
    Cluster,
    Merged,
    Unknown,
}

/// Where a template or cache's model lives: the scope of the kind it names.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum TemplateScope {
    #[default]
    Namespace,
    Cluster,
    Unknown,
}

/// Hardware a template or custom model needs. At least one of GPU or CPU.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.gpu) || has(self.cpu)").message("at least one of gpu or cpu must be specified"))]
pub struct HardwareRequirements {
    pub gpu: Option<GpuRequirements>,
    pub cpu: Option<CpuRequirements>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.model) && size(self.model) > 0 && has(self.minVram))").message("model and minVram are mutually exclusive; specify either a specific GPU model OR a minimum VRAM requirement, not both"))]
pub struct GpuRequirements {
    /// Number of GPUs per replica.
    #[schemars(range(min = 0))]
    pub requests: Option<i32>,
    /// A GPU model such as MI300X. Mutually exclusive with `minVram`.
    #[schemars(length(max = 64))]
    pub model: Option<String>,
    /// The least VRAM per GPU, for "any GPU with at least this much".
    pub min_vram: Option<Quantity>,
    /// The extended resource that counts GPUs.
    #[serde(default = "default_gpu_resource_name")]
    pub resource_name: Option<String>,
}

fn default_gpu_resource_name() -> Option<String> {
    Some("amd.com/gpu".into())
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct CpuRequirements {
    pub requests: Quantity,
    pub limits: Option<Quantity>,
}

/// What a deployment is optimised for.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    Latency,
    Throughput,
}

impl Metric {
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Latency => "latency",
            Metric::Throughput => "throughput",
        }
    }
}

/// Numeric precision of the served weights.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Auto,
    Fp4,
    Fp8,
    Fp16,
    Fp32,
    Bf16,
    Int4,
    Int8,
}

impl Precision {
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Auto => "auto",
            Precision::Fp4 => "fp4",
            Precision::Fp8 => "fp8",
            Precision::Fp16 => "fp16",
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Int4 => "int4",
            Precision::Int8 => "int8",
        }
    }
}

/// How well a template is tuned for its hardware.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProfileType {
    Optimized,
    Preview,
    Unoptimized,
}

/// Runtime parameters of a template, also accepted as service overrides.
/// Each is immutable once set: a changed profile is a different template.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
pub struct RuntimeParameters {
    #[x_kube(validation = Rule::new("self == oldSelf").message("metric is immutable"))]
    pub metric: Option<Metric>,
    #[x_kube(validation = Rule::new("self == oldSelf").message("precision is immutable"))]
    pub precision: Option<Precision>,
    #[x_kube(validation = Rule::new("self == oldSelf").message("hardware is immutable"))]
    pub hardware: Option<HardwareRequirements>,
}

/// A model's weights and where to download them from.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelSource {
    /// `org/name`, e.g. `Qwen/Qwen3-32B`.
    #[schemars(regex(pattern = r"^[a-zA-Z0-9_-]+/[a-zA-Z0-9._-]+$"))]
    pub model_id: String,
    /// `hf://org/name` or `s3://bucket/path`.
    #[schemars(regex(pattern = r"^(hf|s3)://[^ \t\r\n]+$"))]
    pub source_uri: String,
    /// Size of the weights, when known; it sizes the cache volume.
    pub size: Option<Quantity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub env: Vec<EnvVar>,
}

/// A reference to the object a status field resolved to.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ResolvedReference {
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub scope: Option<Scope>,
    pub kind: Option<String>,
    pub uid: Option<String>,
}

/// What the discovery job found out about a template.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    #[serde(rename = "engine_args", default)]
    #[schemars(schema_with = "crate::schema::preserve_unknown")]
    pub engine_args: Option<serde_json::Value>,
    #[serde(rename = "env_vars")]
    pub env_vars: Option<BTreeMap<String, String>>,
    pub metadata: Option<ProfileMetadata>,
    #[serde(default)]
    #[schemars(schema_with = "crate::schema::preserve_unknown")]
    pub original_discovery_output: Option<serde_json::Value>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProfileMetadata {
    pub engine: Option<String>,
    pub gpu: Option<String>,
    pub gpu_count: Option<i32>,
    pub metric: Option<Metric>,
    pub precision: Option<Precision>,
    #[serde(rename = "type")]
    pub type_: Option<ProfileType>,
}

/// Labels read from a model image, parsed.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageMetadata {
    pub model: Option<ModelMetadata>,
    pub oci: Option<OciMetadata>,
    pub original_labels: Option<BTreeMap<String, String>>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelMetadata {
    pub canonical_name: Option<String>,
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub variants: Vec<String>,
    pub hf_token_required: Option<bool>,
    pub title: Option<String>,
    pub description_full: Option<String>,
    pub release_notes: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recommended_deployments: Vec<RecommendedDeployment>,
}

/// One deployment the image's publisher recommends; each becomes a template.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecommendedDeployment {
    pub gpu_model: Option<String>,
    pub gpu_count: Option<i32>,
    pub precision: Option<String>,
    pub metric: Option<String>,
    pub profile_id: Option<String>,
    pub description: Option<String>,
}

/// The standard OCI image annotations.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct OciMetadata {
    pub title: Option<String>,
    pub description: Option<String>,
    pub licenses: Option<String>,
    pub vendor: Option<String>,
    pub authors: Option<String>,
    pub source: Option<String>,
    pub documentation: Option<String>,
    pub created: Option<String>,
    pub revision: Option<String>,
    pub version: Option<String>,
}
