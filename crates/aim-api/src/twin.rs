//! Cluster-scoped twins of namespaced kinds.
//!
//! AIM pairs several namespaced kinds with a cluster-scoped kind of the same
//! shape (AIMModel/AIMClusterModel, …). kube's derive makes one kind per spec
//! type, but the controllers want one spec type for both scopes so that every
//! rule is written once. The twin is therefore a hand-made root type over the
//! same spec and status, and its CRD is the namespaced CRD with the names and
//! scope swapped (and any namespace-only spec fields removed).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

/// Turns the namespaced CRD into the cluster-scoped twin's CRD.
pub fn cluster_crd(
    mut crd: CustomResourceDefinition,
    kind: &str,
    plural: &str,
    singular: &str,
    shortname: &str,
    doc: &str,
    remove_spec_fields: &[&str],
) -> CustomResourceDefinition {
    crd.metadata.name = Some(format!("{plural}.{}", crd.spec.group));
    crd.spec.scope = "Cluster".into();
    let names = &mut crd.spec.names;
    names.kind = kind.into();
    names.list_kind = Some(format!("{kind}List"));
    names.plural = plural.into();
    names.singular = Some(singular.into());
    names.short_names = Some(vec![shortname.into()]);
    for version in &mut crd.spec.versions {
        let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        else {
            continue;
        };
        schema.description = Some(doc.into());
        if let Some(spec) = schema
            .properties
            .as_mut()
            .and_then(|p| p.get_mut("spec"))
            .and_then(|s| s.properties.as_mut())
        {
            for field in remove_spec_fields {
                spec.remove(*field);
            }
        }
    }
    crd
}

/// Declares a cluster-scoped kind that shares its spec and status types with
/// a namespaced kind derived by kube.
#[macro_export]
macro_rules! cluster_twin {
    (
        $kind:ident, $namespaced:ident, $spec:ty, $status:ty,
        remove_spec_fields = [$($removed:literal),*],
        plural = $plural:literal,
        singular = $singular:literal,
        shortname = $short:literal,
        doc = $doc:literal
    ) => {
        #[doc = $doc]
        // apiVersion and kind are ignored on input (unknown fields) and
        // written on output by the Serialize impl below.
        #[derive(::serde::Deserialize, Clone, Debug)]
        pub struct $kind {
            pub metadata: ::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
            pub spec: $spec,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub status: Option<$status>,
        }

        impl $kind {
            pub fn new(name: &str, spec: $spec) -> Self {
                Self {
                    metadata: ::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                        name: Some(name.to_string()),
                        ..Default::default()
                    },
                    spec,
                    status: None,
                }
            }

            /// The CustomResourceDefinition of this kind.
            pub fn crd() -> ::k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
                $crate::twin::cluster_crd(
                    <$namespaced as ::kube::CustomResourceExt>::crd(),
                    stringify!($kind),
                    $plural,
                    $singular,
                    $short,
                    $doc,
                    &[$($removed),*],
                )
            }
        }

        impl ::serde::Serialize for $kind {
            fn serialize<S: ::serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                use ::serde::ser::SerializeStruct;
                let mut out = serializer.serialize_struct(stringify!($kind), 5)?;
                out.serialize_field("apiVersion", $crate::API_VERSION)?;
                out.serialize_field("kind", stringify!($kind))?;
                out.serialize_field("metadata", &self.metadata)?;
                out.serialize_field("spec", &self.spec)?;
                match &self.status {
                    Some(status) => out.serialize_field("status", status)?,
                    None => out.skip_field("status")?,
                }
                out.end()
            }
        }

        impl ::kube::Resource for $kind {
            type DynamicType = ();
            type Scope = ::kube::core::ClusterResourceScope;

            fn kind(_: &()) -> ::std::borrow::Cow<'_, str> {
                stringify!($kind).into()
            }
            fn group(_: &()) -> ::std::borrow::Cow<'_, str> {
                $crate::GROUP.into()
            }
            fn version(_: &()) -> ::std::borrow::Cow<'_, str> {
                $crate::VERSION.into()
            }
            fn api_version(_: &()) -> ::std::borrow::Cow<'_, str> {
                $crate::API_VERSION.into()
            }
            fn plural(_: &()) -> ::std::borrow::Cow<'_, str> {
                $plural.into()
            }
            fn meta(&self) -> &::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                &mut self.metadata
            }
        }

        impl ::kube::core::object::HasSpec for $kind {
            type Spec = $spec;
            fn spec(&self) -> &$spec {
                &self.spec
            }
            fn spec_mut(&mut self) -> &mut $spec {
                &mut self.spec
            }
        }

        impl ::kube::core::object::HasStatus for $kind {
            type Status = $status;
            fn status(&self) -> Option<&$status> {
                self.status.as_ref()
            }
            fn status_mut(&mut self) -> &mut Option<$status> {
                &mut self.status
            }
        }
    };
}
