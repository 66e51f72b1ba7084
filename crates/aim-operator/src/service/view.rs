//! Scope-independent views of models and templates, so the service planner
//! treats AIMModel and AIMClusterModel (and the two template kinds) alike.

use aim_api::common::{ResolvedReference, Scope};
use aim_api::model::AIMModelSpec;
use aim_api::status::ResourcePhase;
use aim_api::template::{AIMServiceTemplateSpec, AIMServiceTemplateStatus};
use aim_api::{AIMClusterModel, AIMClusterServiceTemplate, AIMModel, AIMServiceTemplate};
use kube::ResourceExt;

#[derive(Clone, Debug, PartialEq)]
pub struct ModelView {
    pub scope: Scope,
    pub name: String,
    pub namespace: Option<String>,
    pub uid: Option<String>,
    pub spec: AIMModelSpec,
    pub phase: Option<ResourcePhase>,
}

impl ModelView {
    pub fn kind(&self) -> &'static str {
        match self.scope {
            Scope::Cluster => "AIMClusterModel",
            _ => "AIMModel",
        }
    }

    pub fn reference(&self) -> ResolvedReference {
        ResolvedReference {
            name: Some(self.name.clone()),
            namespace: self.namespace.clone(),
            scope: Some(self.scope),
            kind: Some(format!("{}/{}", aim_api::API_VERSION, self.kind())),
            uid: self.uid.clone(),
        }
    }
}

impl From<&AIMModel> for ModelView {
    fn from(m: &AIMModel) -> Self {
        Self {
            scope: Scope::Namespace,
            name: m.name_any(),
            namespace: m.namespace(),
            uid: m.uid(),
            spec: m.spec.clone(),
            phase: m.status.as_ref().and_then(|s| s.status),
        }
    }
}

impl From<&AIMClusterModel> for ModelView {
    fn from(m: &AIMClusterModel) -> Self {
        Self {
            scope: Scope::Cluster,
            name: m.name_any(),
            namespace: None,
            uid: m.uid(),
            spec: m.spec.clone(),
            phase: m.status.as_ref().and_then(|s| s.status),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct TemplateView {
    pub scope: Scope,
    pub name: String,
    pub namespace: Option<String>,
    pub uid: Option<String>,
    pub labels: std::collections::BTreeMap<String, String>,
    pub spec: AIMServiceTemplateSpec,
    pub status: Option<AIMServiceTemplateStatus>,
}

impl TemplateView {
    pub fn kind(&self) -> &'static str {
        match self.scope {
            Scope::Cluster => "AIMClusterServiceTemplate",
            _ => "AIMServiceTemplate",
        }
    }

    pub fn phase(&self) -> Option<ResourcePhase> {
        self.status.as_ref().and_then(|s| s.status)
    }

    pub fn reference(&self) -> ResolvedReference {
        ResolvedReference {
            name: Some(self.name.clone()),
            namespace: self.namespace.clone(),
            scope: Some(self.scope),
            kind: Some(format!("{}/{}", aim_api::API_VERSION, self.kind())),
            uid: self.uid.clone(),
        }
    }

    /// Sources from status (discovered) else spec (inline).
    pub fn model_sources(&self) -> Vec<aim_api::common::ModelSource> {
        let from_status = self
            .status
            .as_ref()
            .map(|s| s.model_sources.clone())
            .unwrap_or_default();
        if from_status.is_empty() {
            self.spec.model_sources.clone()
        } else {
            from_status
        }
    }
}

impl From<&AIMServiceTemplate> for TemplateView {
    fn from(t: &AIMServiceTemplate) -> Self {
        Self {
            scope: Scope::Namespace,
            name: t.name_any(),
            namespace: t.namespace(),
            uid: t.uid(),
            labels: t.labels().clone(),
            spec: t.spec.clone(),
            status: t.status.clone(),
        }
    }
}

impl From<&AIMClusterServiceTemplate> for TemplateView {
    fn from(t: &AIMClusterServiceTemplate) -> Self {
        Self {
            scope: Scope::Cluster,
            name: t.name_any(),
            namespace: None,
            uid: t.uid(),
            labels: t.labels().clone(),
            spec: t.spec.clone(),
            status: t.status.clone(),
        }
    }
}
