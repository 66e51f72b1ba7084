//! Environment variable lists: the merge rule every env list follows, and
//! the InferenceService env AIM Engine renders.

use aim_api::template::AIMServiceTemplateSpec;
use k8s_openapi::api::core::v1::EnvVar;
use serde_json::{Map, Value};

use crate::naming::go_json;

/// The variable whose value is a JSON object of vLLM engine arguments; it is
/// deep-merged instead of replaced.
pub const AIM_ENGINE_ARGS: &str = "AIM_ENGINE_ARGS";
/// Where model caches are mounted in the inference container.
pub const AIM_CACHE_BASE_PATH: &str = "/workspace/cache";

/// Merges `overlay` into `base` by name.
///
/// - A name already in `base` keeps its position; its entry is replaced by
///   the overlay's.
/// - A new name is appended, in overlay order.
/// - `AIM_ENGINE_ARGS`: when both sides hold a literal value that parses as
///   a JSON object, the objects are deep-merged (nested objects merge
///   recursively, the overlay wins per key; any other value is replaced) and
///   written back as compact JSON with sorted keys, as Go's `json.Marshal`
///   writes a map. If either side is not a JSON object (or uses
///   `valueFrom`), the overlay's entry replaces the base's like any other.
/// - Within one list a repeated name behaves as if the later entry were
///   merged over the earlier one.
pub fn merge_env(base: &mut Vec<EnvVar>, overlay: &[EnvVar]) {
    for var in overlay {
        match base.iter_mut().find(|b| b.name == var.name) {
            Some(existing) => {
                let merged = (var.name == AIM_ENGINE_ARGS)
                    .then(|| merge_engine_args(existing, var))
                    .flatten();
                *existing = merged.unwrap_or_else(|| var.clone());
            }
            None => base.push(var.clone()),
        }
    }
}

/// The deep merge of two `AIM_ENGINE_ARGS` entries, or `None` when either
/// is not a literal JSON object.
fn merge_engine_args(base: &EnvVar, overlay: &EnvVar) -> Option<EnvVar> {
    let as_object = |v: &EnvVar| -> Option<Map<String, Value>> {
        if v.value_from.is_some() {
            return None;
        }
        match serde_json::from_str(v.value.as_deref()?) {
            Ok(Value::Object(map)) => Some(map),
            _ => None,
        }
    };
    let mut merged = Value::Object(as_object(base)?);
    deep_merge(&mut merged, Value::Object(as_object(overlay)?));
    Some(EnvVar {
        name: overlay.name.clone(),
        value: Some(go_json(&merged)),
        value_from: None,
    })
}

/// Merges `overlay` into `base`: objects key by key, recursively; anything
/// else is replaced by the overlay.
pub fn deep_merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Object(base), Value::Object(overlay)) => {
            for (key, value) in overlay {
                match base.get_mut(&key) {
                    Some(slot) => deep_merge(slot, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (slot, value) => *slot = value,
    }
}

fn literal(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value.into()),
        value_from: None,
    }
}

/// The env of the InferenceService's `kserve-container`, built in
/// this order and then sorted by name (a stable sort):
///
/// 1. `AIM_CACHE_PATH=/workspace/cache`, `VLLM_ENABLE_METRICS=true`;
/// 2. the merged runtime config's env, merged;
/// 3. `AIM_PROFILE_ID`, `AIM_METRIC`, `AIM_PRECISION` from the template spec,
///    each when set;
/// 4. the template's `spec.env`, merged;
/// 5. `AIM_MODEL_ID` = the template's `spec.modelSources[0].modelId`, when
///    the template has sources (custom models);
/// 6. the service's `spec.env`, merged (highest priority).
///
/// AIM Engine *appends* the variables of steps 3 and 5, so a runtime config
/// that also sets, say, `AIM_METRIC` yields two entries; in a container the
/// later one takes effect, but server-side apply rejects a list-map with a
/// repeated key. They are merged here instead, which keeps the effective
/// value (the later one) and never repeats a name.
///
/// Passing a runtime config that already has the service env applied
/// ([`crate::runtime_config::apply_service_inline`]) gives the same result:
/// the service env is merged again last and wins.
pub fn inference_env(
    runtime_config_env: &[EnvVar],
    template: &AIMServiceTemplateSpec,
    service_env: &[EnvVar],
) -> Vec<EnvVar> {
    let mut env = vec![
        literal("AIM_CACHE_PATH", AIM_CACHE_BASE_PATH),
        literal("VLLM_ENABLE_METRICS", "true"),
    ];
    merge_env(&mut env, runtime_config_env);

    let mut profile = Vec::new();
    if let Some(id) = template.profile_id.as_deref().filter(|s| !s.is_empty()) {
        profile.push(literal("AIM_PROFILE_ID", id));
    }
    if let Some(metric) = template.metric {
        profile.push(literal("AIM_METRIC", metric.as_str()));
    }
    if let Some(precision) = template.precision {
        profile.push(literal("AIM_PRECISION", precision.as_str()));
    }
    merge_env(&mut env, &profile);

    merge_env(&mut env, &template.env);

    if let Some(source) = template.model_sources.first() {
        merge_env(
            &mut env,
            &[literal("AIM_MODEL_ID", source.model_id.clone())],
        );
    }

    merge_env(&mut env, service_env);
    env.sort_by(|a, b| a.name.cmp(&b.name));
    env
}

#[cfg(test)]
mod tests {
    use super::*;
    use aim_api::common::{Metric, ModelSource, Precision};
    use k8s_openapi::api::core::v1::{EnvVarSource, SecretKeySelector};
    use proptest::prelude::*;
    use serde_json::json;

    fn lit(name: &str, value: &str) -> EnvVar {
        literal(name, value)
    }

    fn names(env: &[EnvVar]) -> Vec<&str> {
        env.iter().map(|e| e.name.as_str()).collect()
    }

    fn value<'a>(env: &'a [EnvVar], name: &str) -> Option<&'a str> {
        env.iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value.as_deref())
    }

    #[test]
    fn merge_keeps_base_order_and_appends_new_names() {
        let mut base = vec![lit("A", "1"), lit("B", "2"), lit("C", "3")];
        merge_env(&mut base, &[lit("D", "4"), lit("B", "two"), lit("E", "5")]);
        assert_eq!(names(&base), ["A", "B", "C", "D", "E"]);
        assert_eq!(value(&base, "B"), Some("two"));
    }

    #[test]
    fn overlay_value_from_replaces_literal() {
        let secret = EnvVar {
            name: "HF_TOKEN".into(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: "hf".into(),
                    key: "token".into(),
                    optional: None,
                }),
                ..Default::default()
            }),
        };
        let mut base = vec![lit("HF_TOKEN", "plain")];
        merge_env(&mut base, std::slice::from_ref(&secret));
        assert_eq!(base, vec![secret]);
    }

    #[test]
    fn engine_args_are_deep_merged() {
        let mut base = vec![lit(
            AIM_ENGINE_ARGS,
            r#"{"max-model-len": 4096, "compilation": {"level": 3, "cudagraph": true}, "keep": "x"}"#,
        )];
        merge_env(
            &mut base,
            &[lit(
                AIM_ENGINE_ARGS,
                r#"{"max-model-len": 8192, "compilation": {"level": 1}, "new": [1]}"#,
            )],
        );
        let merged: Value = serde_json::from_str(value(&base, AIM_ENGINE_ARGS).unwrap()).unwrap();
        assert_eq!(
            merged,
            json!({
                "max-model-len": 8192,
                "compilation": {"level": 1, "cudagraph": true},
                "keep": "x",
                "new": [1]
            })
        );
        // Written compactly with sorted keys, as Go marshals a map.
        assert_eq!(
            value(&base, AIM_ENGINE_ARGS).unwrap(),
            r#"{"compilation":{"cudagraph":true,"level":1},"keep":"x","max-model-len":8192,"new":[1]}"#
        );
    }

    #[test]
    fn engine_args_not_objects_are_replaced() {
        for (b, o) in [
            ("not json", r#"{"a":1}"#),
            (r#"{"a":1}"#, "[1,2]"),
            ("3", "4"),
        ] {
            let mut base = vec![lit(AIM_ENGINE_ARGS, b)];
            merge_env(&mut base, &[lit(AIM_ENGINE_ARGS, o)]);
            assert_eq!(value(&base, AIM_ENGINE_ARGS), Some(o), "{b} <- {o}");
        }
    }

    #[test]
    fn other_variables_holding_json_are_not_deep_merged() {
        let mut base = vec![lit("OTHER", r#"{"a":1}"#)];
        merge_env(&mut base, &[lit("OTHER", r#"{"b":2}"#)]);
        assert_eq!(value(&base, "OTHER"), Some(r#"{"b":2}"#));
    }

    fn template() -> AIMServiceTemplateSpec {
        AIMServiceTemplateSpec {
            model_name: "m".into(),
            metric: Some(Metric::Latency),
            precision: Some(Precision::Fp8),
            profile_id: Some("prof-1".into()),
            env: vec![lit("TPL", "t"), lit("SHARED", "template")],
            ..Default::default()
        }
    }

    #[test]
    fn inference_env_order_and_priorities() {
        let rc = vec![
            lit("SHARED", "runtime-config"),
            lit("RC_ONLY", "rc"),
            lit("AIM_METRIC", "throughput"),
            lit(AIM_ENGINE_ARGS, r#"{"a":1,"b":1}"#),
        ];
        let mut tpl = template();
        tpl.env.push(lit(AIM_ENGINE_ARGS, r#"{"b":2,"c":2}"#));
        let svc = vec![
            lit("SHARED", "service"),
            lit("VLLM_ENABLE_METRICS", "false"),
            lit(AIM_ENGINE_ARGS, r#"{"c":3}"#),
        ];
        let env = inference_env(&rc, &tpl, &svc);
        assert_eq!(
            names(&env),
            [
                "AIM_CACHE_PATH",
                AIM_ENGINE_ARGS,
                "AIM_METRIC",
                "AIM_PRECISION",
                "AIM_PROFILE_ID",
                "RC_ONLY",
                "SHARED",
                "TPL",
                "VLLM_ENABLE_METRICS",
            ]
        );
        assert_eq!(value(&env, "AIM_CACHE_PATH"), Some("/workspace/cache"));
        assert_eq!(value(&env, "SHARED"), Some("service"));
        assert_eq!(value(&env, "VLLM_ENABLE_METRICS"), Some("false"));
        // The template's metric is applied after the runtime config's.
        assert_eq!(value(&env, "AIM_METRIC"), Some("latency"));
        assert_eq!(value(&env, "AIM_PRECISION"), Some("fp8"));
        assert_eq!(value(&env, "AIM_PROFILE_ID"), Some("prof-1"));
        assert_eq!(value(&env, AIM_ENGINE_ARGS), Some(r#"{"a":1,"b":2,"c":3}"#));
    }

    #[test]
    fn inference_env_model_id_for_custom_models() {
        let mut tpl = template();
        assert_eq!(value(&inference_env(&[], &tpl, &[]), "AIM_MODEL_ID"), None);
        tpl.model_sources = vec![ModelSource {
            model_id: "Qwen/Qwen3-8B".into(),
            source_uri: "hf://Qwen/Qwen3-8B".into(),
            ..Default::default()
        }];
        tpl.env.push(lit("AIM_MODEL_ID", "from-template-env"));
        let env = inference_env(&[], &tpl, &[]);
        // Step 5 comes after the template env.
        assert_eq!(value(&env, "AIM_MODEL_ID"), Some("Qwen/Qwen3-8B"));
        let env = inference_env(&[], &tpl, &[lit("AIM_MODEL_ID", "svc")]);
        assert_eq!(value(&env, "AIM_MODEL_ID"), Some("svc"));
    }

    #[test]
    fn inference_env_minimal_template() {
        let tpl = AIMServiceTemplateSpec {
            model_name: "m".into(),
            profile_id: Some(String::new()),
            ..Default::default()
        };
        let env = inference_env(&[], &tpl, &[]);
        assert_eq!(names(&env), ["AIM_CACHE_PATH", "VLLM_ENABLE_METRICS"]);
    }

    fn env_strategy() -> impl Strategy<Value = Vec<EnvVar>> {
        proptest::collection::vec(("[A-E]", "[a-z0-9]{0,3}"), 0..6)
            .prop_map(|pairs| pairs.into_iter().map(|(n, v)| lit(&n, &v)).collect())
    }

    proptest! {
        #[test]
        fn merge_is_idempotent_and_names_unique(base in env_strategy(), overlay in env_strategy()) {
            let mut dedup = Vec::new();
            merge_env(&mut dedup, &base);
            let mut once = dedup.clone();
            merge_env(&mut once, &overlay);
            let mut twice = once.clone();
            merge_env(&mut twice, &overlay);
            prop_assert_eq!(&once, &twice);
            let mut seen = std::collections::BTreeSet::new();
            for e in &once {
                prop_assert!(seen.insert(e.name.clone()), "repeated {}", e.name);
            }
            // Every overlay name ends with the overlay's last value for it.
            for e in &overlay {
                let last = overlay.iter().rev().find(|o| o.name == e.name).unwrap();
                prop_assert_eq!(value(&once, &e.name), last.value.as_deref());
            }
        }

        #[test]
        fn engine_args_merge_keeps_every_key(
            a in proptest::collection::btree_map("[a-d]", 0i64..5, 0..4),
            b in proptest::collection::btree_map("[a-d]", 0i64..5, 0..4),
        ) {
            let mut base = vec![lit(AIM_ENGINE_ARGS, &serde_json::to_string(&a).unwrap())];
            merge_env(&mut base, &[lit(AIM_ENGINE_ARGS, &serde_json::to_string(&b).unwrap())]);
            let merged: std::collections::BTreeMap<String, i64> =
                serde_json::from_str(value(&base, AIM_ENGINE_ARGS).unwrap()).unwrap();
            let mut expected = a.clone();
            expected.extend(b.clone());
            prop_assert_eq!(merged, expected);
        }
    }
}
