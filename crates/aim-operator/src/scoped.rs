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

pub trait Scoped:
    Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Serialize + Send + Sync + 'static
{
    const CLUSTER: bool;
    /// The controller's short name: its metrics label and field manager.
    const CONTROLLER: &'static str;
    /// The API for objects of this kind in `namespace` (ignored when cluster-scoped).
    fn api(client: &Client, namespace: Option<&str>) -> Api<Self>;
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
    ($ty:ty, $cluster:tt, $name:literal, $trait:ident, $spec:ty, $status:ty) => {
        impl Scoped for $ty {
            const CLUSTER: bool = $cluster;
            const CONTROLLER: &'static str = $name;
            fn api(client: &Client, namespace: Option<&str>) -> Api<Self> {
                scoped!(@api $cluster, client, namespace)
            }
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
    (@api false, $client:ident, $ns:ident) => {
        Api::namespaced($client.clone(), $ns.unwrap_or_default())
    };
    (@api true, $client:ident, $ns:ident) => {{
        let _ = $ns;
        Api::all($client.clone())
    }};
}

scoped!(
    AIMModel,
    false,
    "model",
    ModelObject,
    AIMModelSpec,
    AIMModelStatus
);
scoped!(
    AIMClusterModel,
    true,
    "cluster-model",
    ModelObject,
    AIMModelSpec,
    AIMModelStatus
);
scoped!(
    AIMServiceTemplate,
    false,
    "service-template",
    TemplateObject,
    AIMServiceTemplateSpec,
    AIMServiceTemplateStatus
);
scoped!(
    AIMClusterServiceTemplate,
    true,
    "cluster-service-template",
    TemplateObject,
    AIMServiceTemplateSpec,
    AIMServiceTemplateStatus
);
