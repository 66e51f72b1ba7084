//! One trait over the namespaced and cluster-scoped twins, so the model and
//! template controllers are written once for both scopes.

use std::fmt::Debug;

use aim_api::model::{AIMModelSpec, AIMModelStatus};
use aim_api::template::{AIMServiceTemplateSpec, AIMServiceTemplateStatus};
use aim_api::{AIMClusterModel, AIMClusterServiceTemplate, AIMModel, AIMServiceTemplate};
use kube::api::Api;
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub trait Scoped: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Serialize + Send + Sync + 'static {
    const CLUSTER: bool;
    /// The controller's short name: its metrics label and field manager.
    const CONTROLLER: &'static str;
    fn api(client: &Client, namespace: Option<&str>) -> Api<Self> {
        match (Self::CLUSTER, namespace) {
            (false, Some(ns)) => Api::namespaced(client.clone(), ns),
            _ => Api::all(client.clone()),
        }
    }
}

pub trait ModelObject: Scoped {
    fn spec(&self) -> &AIMModelSpec;
    fn status(&self) -> Option<&AIMModelStatus>;
}

pub trait TemplateObject: Scoped {
    fn spec(&self) -> &AIMServiceTemplateSpec;
    fn status(&self) -> Option<&AIMServiceTemplateStatus>;
}

macro_rules! scoped {
    ($ty:ty, $cluster:expr, $name:literal, $trait:ident, $spec:ty, $status:ty) => {
        impl Scoped for $ty {
            const CLUSTER: bool = $cluster;
            const CONTROLLER: &'static str = $name;
        }
        impl $trait for $ty {
            fn spec(&self) -> &$spec {
                &self.spec
            }
            fn status(&self) -> Option<&$status> {
                self.status.as_ref()
            }
        }
    };
}

scoped!(AIMModel, false, "model", ModelObject, AIMModelSpec, AIMModelStatus);
scoped!(AIMClusterModel, true, "cluster-model", ModelObject, AIMModelSpec, AIMModelStatus);
scoped!(AIMServiceTemplate, false, "service-template", TemplateObject, AIMServiceTemplateSpec, AIMServiceTemplateStatus);
scoped!(AIMClusterServiceTemplate, true, "cluster-service-template", TemplateObject, AIMServiceTemplateSpec, AIMServiceTemplateStatus);
