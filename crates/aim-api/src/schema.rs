//! Schema fragments that schemars cannot derive the way Kubernetes wants.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use schemars::{Schema, SchemaGenerator, json_schema};
use serde_json::Value;

/// Free-form JSON the apiserver must keep as written (engine arguments,
/// raw discovery output). Kubernetes would prune unknown fields otherwise.
pub fn preserve_unknown(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// A Go `metav1.Duration` on the wire: a string such as `90s` or `1h30m`.
pub fn duration(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "pattern": "^(0|([0-9]+(\\.[0-9]+)?(ns|us|µs|ms|s|m|h))+)$"
    })
}

/// Drops the `nullable: true` (and the `null` enum members) that `Option`
/// fields produce. Our clients never send nulls (absent fields are omitted),
/// and without them the schema reads like AIM Engine's: an explicit `null`
/// in a manifest is pruned by the apiserver instead of being stored.
pub fn without_nullable(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    let mut value = serde_json::to_value(&crd).expect("a CRD serialises");
    strip_nullable(&mut value);
    serde_json::from_value(value).expect("removing nullable keeps a valid CRD")
}

fn strip_nullable(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.remove("nullable");
            if let Some(Value::Array(members)) = map.get_mut("enum") {
                members.retain(|m| !m.is_null());
            }
            map.values_mut().for_each(strip_nullable);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_nullable),
        _ => {}
    }
}
