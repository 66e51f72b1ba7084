//! Runtime-config resolution: the AIMClusterRuntimeConfig and
//! the AIMRuntimeConfig of the same name merged into one spec, and a
//! service's inline settings laid on top.
//!
//! # Rules
//!
//! - **Deprecated fields** are migrated on each side before merging:
//!   top-level `defaultStorageClassName` and `pvcHeadroomPercent` move to
//!   `storage.*` when the `storage` field is unset, and the top-level
//!   fields are cleared in the result.
//! - **Scalars** (`routing.enabled`, `storage.pvcHeadroomPercent`,
//!   `labelPropagation.enabled`, `model.autoDiscovery`, …): the overlay's
//!   value wins whenever it is set. FIX: AIM Engine lets a namespace
//!   value win only when it is non-zero, so `false` and `0` could not
//!   override the cluster's `true` and `20`; the docs say a namespace config
//!   overrides any cluster field, and here it does.
//! - **Strings** (`storage.defaultStorageClassName`, `routing.pathTemplate`,
//!   `routing.requestTimeout`): the overlay wins when set and non-empty. An
//!   empty string means "not set" for each of these, as it does in AIM
//!   Engine.
//! - **`routing.gatewayRef`** is replaced whole: a namespace naming its own
//!   gateway must not inherit the cluster gateway's namespace, section or
//!   port.
//! - **Maps** (`routing.annotations`) merge per key; the overlay wins.
//! - **`env`** merges by name, `AIM_ENGINE_ARGS` deep-merged
//!   ([`crate::env::merge_env`]).
//! - **Other lists** (`labelPropagation.match`) are replaced when the
//!   overlay's is non-empty.
//!
//! Note that the CRD defaults `storage.pvcHeadroomPercent` to 10 and
//! `labelPropagation.enabled` to `false` whenever their parent object is
//! present, so a stored namespace config that sets `storage` or
//! `labelPropagation` at all carries these values, and with that fix they
//! override the cluster's.

use aim_api::runtime_config::{
    AutoscalingConfig, LabelPropagation, ModelConfig, RoutingConfig, RuntimeConfigSpec,
    StorageConfig,
};
use aim_api::service::AIMServiceSpec;

use crate::env::merge_env;

/// The name of the runtime config used when none is given.
pub const DEFAULT_RUNTIME_CONFIG: &str = "default";

/// The runtime config name a consumer resolves: its own, else `default`.
pub fn effective_name(name: Option<&str>) -> &str {
    match name {
        Some(n) if !n.is_empty() => n,
        _ => DEFAULT_RUNTIME_CONFIG,
    }
}

/// Moves the deprecated top-level storage fields into `storage` where the
/// new fields are unset, and clears the old ones.
pub fn migrate_deprecated(mut spec: RuntimeConfigSpec) -> RuntimeConfigSpec {
    let class = spec.default_storage_class_name.take();
    let headroom = spec.pvc_headroom_percent.take();
    if class.is_some() || headroom.is_some() {
        let storage = spec.storage.get_or_insert_with(StorageConfig::default);
        if storage.default_storage_class_name.is_none() {
            storage.default_storage_class_name = class;
        }
        if storage.pvc_headroom_percent.is_none() {
            storage.pvc_headroom_percent = headroom;
        }
    }
    spec
}

/// The merged runtime config: the cluster config with the namespace config
/// laid on top (see the module docs for the rules). `None` on both sides
/// gives an empty spec; the caller decides whether a missing config is an
/// error (it is for any name but `default`).
pub fn merge(
    cluster: Option<&RuntimeConfigSpec>,
    namespace: Option<&RuntimeConfigSpec>,
) -> RuntimeConfigSpec {
    let base = cluster.cloned().map(migrate_deprecated).unwrap_or_default();
    match namespace {
        Some(ns) => overlay(base, &migrate_deprecated(ns.clone())),
        None => base,
    }
}

/// Lays `top` over `base` by the module's rules. Both are assumed migrated.
pub fn overlay(mut base: RuntimeConfigSpec, top: &RuntimeConfigSpec) -> RuntimeConfigSpec {
    base.storage = merge_opt(base.storage, top.storage.as_ref(), overlay_storage);
    base.routing = merge_opt(base.routing, top.routing.as_ref(), overlay_routing);
    merge_env(&mut base.env, &top.env);
    base.model = merge_opt(base.model, top.model.as_ref(), |b, t| ModelConfig {
        auto_discovery: t.auto_discovery.or(b.auto_discovery),
    });
    base.label_propagation = merge_opt(
        base.label_propagation,
        top.label_propagation.as_ref(),
        |b, t| LabelPropagation {
            enabled: t.enabled.or(b.enabled),
            r#match: if t.r#match.is_empty() {
                b.r#match
            } else {
                t.r#match.clone()
            },
        },
    );
    base.autoscaling = merge_opt(base.autoscaling, top.autoscaling.as_ref(), |b, t| {
        AutoscalingConfig {
            paused_by_default: t.paused_by_default.or(b.paused_by_default),
        }
    });
    base.default_storage_class_name = set_string(
        base.default_storage_class_name,
        top.default_storage_class_name.as_ref(),
    );
    base.pvc_headroom_percent = top.pvc_headroom_percent.or(base.pvc_headroom_percent);
    base
}

/// The effective config of one service: the merged runtime config with the
/// service's inline `storage`, `routing` and `env` laid on top by the same
/// rules, so the service wins wherever it sets a value.
///
/// `routing.annotations` merge per key with the service winning. AIM Engine
/// ignores the service's annotations; the docs say they merge.
pub fn apply_service_inline(
    merged: RuntimeConfigSpec,
    service: &AIMServiceSpec,
) -> RuntimeConfigSpec {
    let inline = RuntimeConfigSpec {
        storage: service.storage.clone(),
        routing: service.routing.clone(),
        env: service.env.clone(),
        ..Default::default()
    };
    overlay(merged, &inline)
}

fn merge_opt<T: Clone>(base: Option<T>, top: Option<&T>, f: impl FnOnce(T, &T) -> T) -> Option<T> {
    match (base, top) {
        (Some(b), Some(t)) => Some(f(b, t)),
        (None, Some(t)) => Some(t.clone()),
        (b, None) => b,
    }
}

fn set_string(base: Option<String>, top: Option<&String>) -> Option<String> {
    match top {
        Some(t) if !t.is_empty() => Some(t.clone()),
        _ => base,
    }
}

fn overlay_storage(base: StorageConfig, top: &StorageConfig) -> StorageConfig {
    StorageConfig {
        default_storage_class_name: set_string(
            base.default_storage_class_name,
            top.default_storage_class_name.as_ref(),
        ),
        pvc_headroom_percent: top.pvc_headroom_percent.or(base.pvc_headroom_percent),
    }
}

fn overlay_routing(base: RoutingConfig, top: &RoutingConfig) -> RoutingConfig {
    RoutingConfig {
        enabled: top.enabled.or(base.enabled),
        gateway_ref: top.gateway_ref.clone().or(base.gateway_ref),
        path_template: set_string(base.path_template, top.path_template.as_ref()),
        request_timeout: set_string(base.request_timeout, top.request_timeout.as_ref()),
        annotations: merge_opt(base.annotations, top.annotations.as_ref(), |mut b, t| {
            b.extend(t.iter().map(|(k, v)| (k.clone(), v.clone())));
            b
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aim_api::runtime_config::ParentReference;
    use k8s_openapi::api::core::v1::EnvVar;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn lit(name: &str, value: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: Some(value.into()),
            value_from: None,
        }
    }

    fn storage(class: Option<&str>, headroom: Option<i32>) -> Option<StorageConfig> {
        Some(StorageConfig {
            default_storage_class_name: class.map(Into::into),
            pvc_headroom_percent: headroom,
        })
    }

    fn gateway(name: &str, ns: Option<&str>, section: Option<&str>) -> ParentReference {
        ParentReference {
            name: name.into(),
            namespace: ns.map(Into::into),
            section_name: section.map(Into::into),
            ..Default::default()
        }
    }

    fn cluster() -> RuntimeConfigSpec {
        RuntimeConfigSpec {
            storage: storage(Some("fast"), Some(20)),
            routing: Some(RoutingConfig {
                enabled: Some(true),
                gateway_ref: Some(gateway("gw", Some("gateways"), Some("https"))),
                path_template: Some("/{.metadata.namespace}/{.metadata.name}".into()),
                request_timeout: Some("120s".into()),
                annotations: Some(BTreeMap::from([
                    ("a".to_string(), "cluster".to_string()),
                    ("b".to_string(), "cluster".to_string()),
                ])),
            }),
            env: vec![lit("X", "cluster"), lit("AIM_ENGINE_ARGS", r#"{"a":1}"#)],
            model: Some(ModelConfig {
                auto_discovery: Some(true),
            }),
            label_propagation: Some(LabelPropagation {
                enabled: Some(true),
                r#match: vec!["team/*".into()],
            }),
            ..Default::default()
        }
    }

    #[test]
    fn neither_side_gives_an_empty_spec() {
        assert_eq!(merge(None, None), RuntimeConfigSpec::default());
    }

    #[test]
    fn one_side_passes_through() {
        assert_eq!(merge(Some(&cluster()), None), cluster());
        assert_eq!(merge(None, Some(&cluster())), cluster());
    }

    #[test]
    fn fix14_false_and_zero_override() {
        let ns = RuntimeConfigSpec {
            storage: storage(None, Some(0)),
            routing: Some(RoutingConfig {
                enabled: Some(false),
                ..Default::default()
            }),
            model: Some(ModelConfig {
                auto_discovery: Some(false),
            }),
            label_propagation: Some(LabelPropagation {
                enabled: Some(false),
                r#match: vec![],
            }),
            ..Default::default()
        };
        let merged = merge(Some(&cluster()), Some(&ns));
        let storage = merged.storage.unwrap();
        assert_eq!(storage.pvc_headroom_percent, Some(0));
        assert_eq!(storage.default_storage_class_name.as_deref(), Some("fast"));
        let routing = merged.routing.unwrap();
        assert_eq!(routing.enabled, Some(false));
        assert_eq!(routing.request_timeout.as_deref(), Some("120s"));
        assert_eq!(merged.model.unwrap().auto_discovery, Some(false));
        let lp = merged.label_propagation.unwrap();
        assert_eq!(lp.enabled, Some(false));
        // An empty list does not replace.
        assert_eq!(lp.r#match, vec!["team/*".to_string()]);
    }

    #[test]
    fn unset_namespace_fields_keep_cluster_values() {
        let ns = RuntimeConfigSpec {
            routing: Some(RoutingConfig::default()),
            storage: Some(StorageConfig::default()),
            ..Default::default()
        };
        assert_eq!(merge(Some(&cluster()), Some(&ns)), cluster());
    }

    #[test]
    fn empty_strings_do_not_override() {
        let ns = RuntimeConfigSpec {
            storage: storage(Some(""), None),
            routing: Some(RoutingConfig {
                path_template: Some(String::new()),
                request_timeout: Some(String::new()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(merge(Some(&cluster()), Some(&ns)), cluster());
    }

    #[test]
    fn strings_and_lists_override_when_set() {
        let ns = RuntimeConfigSpec {
            storage: storage(Some("slow"), None),
            routing: Some(RoutingConfig {
                path_template: Some("/x".into()),
                ..Default::default()
            }),
            label_propagation: Some(LabelPropagation {
                enabled: None,
                r#match: vec!["env".into()],
            }),
            ..Default::default()
        };
        let merged = merge(Some(&cluster()), Some(&ns));
        assert_eq!(
            merged
                .storage
                .unwrap()
                .default_storage_class_name
                .as_deref(),
            Some("slow")
        );
        assert_eq!(merged.routing.unwrap().path_template.as_deref(), Some("/x"));
        let lp = merged.label_propagation.unwrap();
        assert_eq!(lp.r#match, vec!["env".to_string()]);
        assert_eq!(lp.enabled, Some(true));
    }

    #[test]
    fn gateway_ref_is_replaced_whole() {
        let ns = RuntimeConfigSpec {
            routing: Some(RoutingConfig {
                gateway_ref: Some(gateway("team-gw", None, None)),
                ..Default::default()
            }),
            ..Default::default()
        };
        let merged = merge(Some(&cluster()), Some(&ns));
        assert_eq!(
            merged.routing.unwrap().gateway_ref,
            Some(gateway("team-gw", None, None))
        );
    }

    #[test]
    fn annotations_merge_per_key() {
        let ns = RuntimeConfigSpec {
            routing: Some(RoutingConfig {
                annotations: Some(BTreeMap::from([
                    ("b".to_string(), "ns".to_string()),
                    ("c".to_string(), "ns".to_string()),
                ])),
                ..Default::default()
            }),
            ..Default::default()
        };
        let merged = merge(Some(&cluster()), Some(&ns));
        let ann = merged.routing.unwrap().annotations.unwrap();
        assert_eq!(
            ann,
            BTreeMap::from([
                ("a".to_string(), "cluster".to_string()),
                ("b".to_string(), "ns".to_string()),
                ("c".to_string(), "ns".to_string()),
            ])
        );
    }

    #[test]
    fn env_merges_by_name_with_engine_args_deep_merged() {
        let ns = RuntimeConfigSpec {
            env: vec![
                lit("Y", "ns"),
                lit("X", "ns"),
                lit("AIM_ENGINE_ARGS", r#"{"b":2}"#),
            ],
            ..Default::default()
        };
        let merged = merge(Some(&cluster()), Some(&ns));
        assert_eq!(
            merged.env,
            vec![
                lit("X", "ns"),
                lit("AIM_ENGINE_ARGS", r#"{"a":1,"b":2}"#),
                lit("Y", "ns"),
            ]
        );
    }

    #[test]
    fn deprecated_fields_migrate_when_new_fields_unset() {
        let old = RuntimeConfigSpec {
            default_storage_class_name: Some("legacy".into()),
            pvc_headroom_percent: Some(0),
            ..Default::default()
        };
        let merged = merge(Some(&cluster()), Some(&old));
        assert_eq!(merged.storage, storage(Some("legacy"), Some(0)));
        assert_eq!(merged.default_storage_class_name, None);
        assert_eq!(merged.pvc_headroom_percent, None);

        let both = RuntimeConfigSpec {
            storage: storage(Some("new"), None),
            default_storage_class_name: Some("legacy".into()),
            pvc_headroom_percent: Some(5),
            ..Default::default()
        };
        assert_eq!(
            migrate_deprecated(both).storage,
            storage(Some("new"), Some(5))
        );

        // The cluster side is migrated too.
        let merged = merge(Some(&old), None);
        assert_eq!(merged.storage, storage(Some("legacy"), Some(0)));
    }

    #[test]
    fn service_inline_settings_win() {
        let service = AIMServiceSpec {
            routing: Some(RoutingConfig {
                enabled: Some(false),
                path_template: Some("/svc".into()),
                annotations: Some(BTreeMap::from([("a".to_string(), "svc".to_string())])),
                ..Default::default()
            }),
            storage: storage(Some("svc-class"), None),
            env: vec![lit("X", "svc")],
            ..Default::default()
        };
        let effective = apply_service_inline(cluster(), &service);
        let routing = effective.routing.unwrap();
        assert_eq!(routing.enabled, Some(false));
        assert_eq!(routing.path_template.as_deref(), Some("/svc"));
        assert_eq!(
            routing.gateway_ref,
            Some(gateway("gw", Some("gateways"), Some("https")))
        );
        let ann = routing.annotations.unwrap();
        assert_eq!(ann["a"], "svc");
        assert_eq!(ann["b"], "cluster");
        let storage = effective.storage.unwrap();
        assert_eq!(
            storage.default_storage_class_name.as_deref(),
            Some("svc-class")
        );
        assert_eq!(storage.pvc_headroom_percent, Some(20));
        assert_eq!(effective.env[0], lit("X", "svc"));
        // Nothing set on the service: the merged config is unchanged.
        assert_eq!(
            apply_service_inline(cluster(), &AIMServiceSpec::default()),
            cluster()
        );
    }

    #[test]
    fn effective_name_defaults() {
        assert_eq!(effective_name(None), "default");
        assert_eq!(effective_name(Some("")), "default");
        assert_eq!(effective_name(Some("gpu")), "gpu");
    }

    fn spec_strategy() -> impl Strategy<Value = RuntimeConfigSpec> {
        (
            proptest::option::of((
                proptest::option::of("[a-c]{0,2}"),
                proptest::option::of(0i32..3),
            )),
            proptest::option::of((
                proptest::option::of(any::<bool>()),
                proptest::option::of("[a-c]{0,2}"),
                proptest::option::of(proptest::collection::btree_map("[a-c]", "[a-c]", 0..3)),
            )),
            proptest::collection::vec(("[A-C]", "[a-c]"), 0..4),
            proptest::option::of((
                proptest::option::of(any::<bool>()),
                proptest::collection::vec("[a-c]\\*?", 0..3),
            )),
            proptest::option::of(0i32..3),
        )
            .prop_map(|(st, rt, env, lp, old_headroom)| RuntimeConfigSpec {
                storage: st.map(|(c, h)| StorageConfig {
                    default_storage_class_name: c,
                    pvc_headroom_percent: h,
                }),
                routing: rt.map(|(e, p, a)| RoutingConfig {
                    enabled: e,
                    path_template: p,
                    annotations: a,
                    ..Default::default()
                }),
                env: env.into_iter().map(|(n, v)| lit(&n, &v)).collect(),
                label_propagation: lp.map(|(e, m)| LabelPropagation {
                    enabled: e,
                    r#match: m,
                }),
                pvc_headroom_percent: old_headroom,
                ..Default::default()
            })
    }

    proptest! {
        #[test]
        fn merging_the_same_namespace_twice_changes_nothing(a in spec_strategy(), b in spec_strategy()) {
            let once = merge(Some(&a), Some(&b));
            let twice = merge(Some(&once), Some(&b));
            prop_assert_eq!(once, twice);
        }

        #[test]
        fn set_namespace_scalars_always_win(a in spec_strategy(), b in spec_strategy()) {
            let merged = merge(Some(&a), Some(&b));
            let b = migrate_deprecated(b);
            if let Some(h) = b.storage.as_ref().and_then(|s| s.pvc_headroom_percent) {
                prop_assert_eq!(merged.storage.as_ref().unwrap().pvc_headroom_percent, Some(h));
            }
            if let Some(e) = b.routing.as_ref().and_then(|r| r.enabled) {
                prop_assert_eq!(merged.routing.as_ref().unwrap().enabled, Some(e));
            }
            if let Some(e) = b.label_propagation.as_ref().and_then(|l| l.enabled) {
                prop_assert_eq!(merged.label_propagation.as_ref().unwrap().enabled, Some(e));
            }
        }
    }
}
