//! Fetching and merging the runtime config a resource names.

use aim_api::common::{ResolvedReference, Scope};
use aim_api::{AIMClusterRuntimeConfig, AIMRuntimeConfig};
use kube::api::Api;
use kube::{Client, ResourceExt};

use crate::service::plan::ConfigLookup;

/// Looks up `name` (empty: `default`) in the namespace and cluster scopes
/// and merges what exists, namespace over cluster.
pub async fn lookup(
    client: &Client,
    namespace: Option<&str>,
    name: Option<&str>,
) -> Result<ConfigLookup, kube::Error> {
    let name = name.filter(|n| !n.is_empty()).unwrap_or("default");
    let cluster = Api::<AIMClusterRuntimeConfig>::all(client.clone())
        .get_opt(name)
        .await?;
    let namespaced = match namespace {
        Some(ns) => {
            Api::<AIMRuntimeConfig>::namespaced(client.clone(), ns)
                .get_opt(name)
                .await?
        }
        None => None,
    };
    let reference = match (&cluster, &namespaced) {
        (None, None) if name == "default" => return Ok(ConfigLookup::NoDefault),
        (None, None) => return Ok(ConfigLookup::Missing(name.to_string())),
        (Some(c), None) => ResolvedReference {
            name: Some(name.into()),
            namespace: None,
            scope: Some(Scope::Cluster),
            kind: Some(format!("{}/AIMClusterRuntimeConfig", aim_api::API_VERSION)),
            uid: c.uid(),
        },
        (None, Some(n)) => ResolvedReference {
            name: Some(name.into()),
            namespace: n.namespace(),
            scope: Some(Scope::Namespace),
            kind: Some(format!("{}/AIMRuntimeConfig", aim_api::API_VERSION)),
            uid: n.uid(),
        },
        (Some(_), Some(n)) => ResolvedReference {
            name: Some(name.into()),
            namespace: n.namespace(),
            scope: Some(Scope::Merged),
            kind: Some(format!("{}/AIMRuntimeConfig", aim_api::API_VERSION)),
            uid: n.uid(),
        },
    };
    let merged = aim_rules::runtime_config::merge(
        cluster.as_ref().map(|c| &c.spec),
        namespaced.as_ref().map(|n| &n.spec),
    );
    Ok(ConfigLookup::Found(Box::new(merged), reference))
}
