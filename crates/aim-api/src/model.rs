//! AIMModel (namespaced) and AIMClusterModel (cluster): a model image, what
//! it says about itself, and the templates it offers.

use k8s_openapi::api::core::v1::{EnvVar, LocalObjectReference, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use crate::common::{
    HardwareRequirements, ImageMetadata, Metric, ModelSource, Precision, ProfileType,
    ResolvedReference,
};
use crate::status::ResourcePhase;

#[skip_serializing_none]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[kube(
    group = "aim.eai.amd.com",
    version = "v1alpha1",
    kind = "AIMModel",
    plural = "aimmodels",
    singular = "aimmodel",
    namespaced,
    status = "AIMModelStatus",
    shortname = "aimmdl",
    selectable = ".spec.image",
    category = "aim",
    category = "all",
    doc = "AIMModel describes a model image in a namespace: its metadata, read from the image's labels, and the service templates it offers.",
    printcolumn(name = "Status", type_ = "string", json_path = ".status.status"),
    printcolumn(name = "Source", type_ = "string", json_path = ".status.sourceType"),
    printcolumn(name = "Image", type_ = "string", json_path = ".spec.image"),
    printcolumn(
        name = "Model",
        type_ = "string",
        json_path = ".status.imageMetadata.model.canonicalName"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.modelSources) || size(self.modelSources) == 0 || !has(self.customTemplates) || size(self.customTemplates) == 0 || (has(self.custom) && has(self.custom.hardware)) || self.customTemplates.all(t, has(t.hardware))").message("when using modelSources, hardware must be specified: set custom.hardware (inherited by all templates) or set hardware on each template individually"))]
pub struct AIMModelSpec {
    /// The model's container image.
    #[schemars(length(min = 1))]
    pub image: String,
    pub discovery: Option<ModelDiscovery>,
    /// The template services of this model use when they name none.
    pub default_service_template: Option<String>,
    pub custom: Option<ModelCustomization>,
    /// Templates declared by hand, in addition to (or, for custom models,
    /// instead of) those the image recommends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub custom_templates: Vec<CustomTemplate>,
    /// Weights downloaded at run time instead of baked into the image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1))]
    pub model_sources: Vec<ModelSource>,
    pub runtime_config_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub env: Vec<EnvVar>,
    pub service_account_name: Option<String>,
    pub resources: Option<ResourceRequirements>,
    /// Metadata given by hand, for air-gapped clusters: the registry is not asked.
    pub image_metadata: Option<ImageMetadata>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelDiscovery {
    /// Read the image's labels from its registry.
    #[serde(default = "default_true")]
    pub extract_metadata: Option<bool>,
    /// Create a template per recommended deployment.
    #[serde(default = "default_true")]
    pub create_service_templates: Option<bool>,
}

fn default_true() -> Option<bool> {
    Some(true)
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ModelCustomization {
    /// Hardware every custom template inherits unless it sets its own.
    pub hardware: Option<HardwareRequirements>,
    #[serde(rename = "type")]
    pub type_: Option<ProfileType>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
pub struct CustomTemplate {
    #[schemars(length(max = 63))]
    pub name: Option<String>,
    #[serde(rename = "type", default = "default_unoptimized")]
    pub type_: Option<ProfileType>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub env: Vec<EnvVar>,
    pub hardware: Option<HardwareRequirements>,
    pub profile: Option<CustomTemplateProfile>,
}

fn default_unoptimized() -> Option<ProfileType> {
    Some(ProfileType::Unoptimized)
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct CustomTemplateProfile {
    pub metric: Option<Metric>,
    pub precision: Option<Precision>,
}

/// Whether a model came from an image's own metadata or from explicit sources.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ModelSourceType {
    Image,
    Custom,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AIMModelStatus {
    #[serde(default = "crate::status::default_pending")]
    pub status: Option<ResourcePhase>,
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    pub resolved_runtime_config: Option<ResolvedReference>,
    pub image_metadata: Option<ImageMetadata>,
    pub source_type: Option<ModelSourceType>,
}

crate::cluster_twin!(
    AIMClusterModel,
    AIMModel,
    AIMModelSpec,
    AIMModelStatus,
    remove_spec_fields = [],
    plural = "aimclustermodels",
    singular = "aimclustermodel",
    shortname = "aimclmdl",
    doc = "AIMClusterModel describes a model image available to every namespace: its metadata, read from the image's labels, and the cluster service templates it offers."
);
