//! The `aim.eai.amd.com/v1alpha1` custom resources, manifest-compatible with
//! AMD's AIM Engine v0.2.1: types, defaults, CEL validation, condition
//! helpers and CRD generation.
//!
//! The Rust types are the source of truth; `deploy/crds/` holds the
//! generated YAML and a test fails when the two drift apart.

// kube's `printcolumn(name = …, type_ = …)` repeats keys across columns,
// which this lint mistakes for duplicated attributes.
#![allow(clippy::duplicated_attributes)]

pub mod artifact;
pub mod cache;
pub mod common;
pub mod conditions;
pub mod model;
pub mod model_source;
pub mod runtime_config;
mod schema;
pub mod service;
pub mod status;
pub mod template;
#[doc(hidden)]
pub mod twin;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use artifact::AIMArtifact;
pub use cache::AIMTemplateCache;
pub use model::{AIMClusterModel, AIMModel};
pub use model_source::AIMClusterModelSource;
pub use runtime_config::{AIMClusterRuntimeConfig, AIMRuntimeConfig};
pub use service::AIMService;
pub use template::{AIMClusterServiceTemplate, AIMServiceTemplate};

pub const GROUP: &str = "aim.eai.amd.com";
pub const VERSION: &str = "v1alpha1";
pub const API_VERSION: &str = "aim.eai.amd.com/v1alpha1";

/// Every CRD of the group, in a stable order.
pub fn all_crds() -> Vec<CustomResourceDefinition> {
    [
        AIMService::crd(),
        AIMModel::crd(),
        AIMClusterModel::crd(),
        AIMServiceTemplate::crd(),
        AIMClusterServiceTemplate::crd(),
        AIMRuntimeConfig::crd(),
        AIMClusterRuntimeConfig::crd(),
        AIMTemplateCache::crd(),
        AIMArtifact::crd(),
        AIMClusterModelSource::crd(),
    ]
    .into_iter()
    .map(schema::without_nullable)
    .collect()
}

/// One CRD as the YAML committed under `deploy/crds/<name>.yaml`.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> String {
    let body = serde_yaml::to_string(crd).expect("a CRD always serialises");
    format!(
        "# Generated from the aim-api Rust types by `aim crds --out-dir deploy/crds`. Do not edit.\n{body}"
    )
}

/// `(file name, YAML)` for every CRD, as written to `deploy/crds/`.
pub fn crd_files() -> Vec<(String, String)> {
    all_crds()
        .iter()
        .map(|crd| {
            let name = crd.metadata.name.clone().expect("derived CRDs are named");
            (format!("{name}.yaml"), crd_yaml(crd))
        })
        .collect()
}

/// All CRDs as one multi-document YAML stream.
pub fn all_crds_yaml() -> String {
    crd_files()
        .into_iter()
        .map(|(_, yaml)| yaml)
        .collect::<Vec<_>>()
        .join("---\n")
}
