//! A ScaledObject as the pure KEDA and HPA models run it
//! ([`aim_policy::keda`], [`aim_policy::hpa`]), with the API server's
//! defaults filled in where the object leaves a field out.

use aim_policy::hpa::{Behavior, PolicyKind, RatePolicy, ScalingRules, SelectPolicy};
use aim_policy::keda::{Annotations, MetricType, ScaledObjectSpec, TriggerSpec};
use k8s_openapi::api::autoscaling::v2::{HPAScalingRules, HorizontalPodAutoscalerBehavior};

use crate::plan::ScalingError;
use crate::scaled_object::ScaledObject;

fn error(field: String, message: impl Into<String>) -> ScalingError {
    ScalingError {
        field,
        message: message.into(),
    }
}

/// KEDA's view of the object: bounds, intervals, trigger targets, pause
/// annotations and the HPA behaviour.
pub fn keda_spec(so: &ScaledObject) -> Result<ScaledObjectSpec, ScalingError> {
    let mut spec = ScaledObjectSpec::default();
    let s = &so.spec;
    if let Some(v) = s.polling_interval {
        spec.polling_interval_seconds = f64::from(v);
    }
    if let Some(v) = s.cooldown_period {
        spec.cooldown_period_seconds = f64::from(v);
    }
    // KEDA's defaults: minReplicaCount 0, maxReplicaCount 100.
    spec.min_replica_count = s.min_replica_count.unwrap_or(0).max(0) as u32;
    spec.max_replica_count = s.max_replica_count.unwrap_or(100).max(0) as u32;
    spec.behavior = behavior_of(so.behavior());
    spec.triggers = s
        .triggers
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let field = |key: &str| format!("spec.triggers[{i}].metadata.{key}");
            let number = |key: &str, default: Option<f64>| -> Result<f64, ScalingError> {
                match t.metadata.get(key) {
                    None => default.ok_or_else(|| error(field(key), "missing")),
                    Some(text) => text
                        .trim()
                        .parse::<f64>()
                        .ok()
                        .filter(|v| v.is_finite())
                        .ok_or_else(|| error(field(key), format!("{text:?} is not a number"))),
                }
            };
            let target = if t.metadata.contains_key("targetValue") {
                number("targetValue", None)?
            } else {
                number("threshold", None).map_err(|_| error(field("targetValue"), "missing"))?
            };
            let metric_type = match t.metric_type.as_deref() {
                None | Some("") | Some("AverageValue") => MetricType::AverageValue,
                Some("Value") => MetricType::Value,
                Some(other) => {
                    return Err(error(
                        format!("spec.triggers[{i}].metricType"),
                        format!("{other:?}: use AverageValue or Value"),
                    ));
                }
            };
            Ok(TriggerSpec {
                metric_type,
                target,
                activation: number("activationThreshold", Some(0.0))?,
            })
        })
        .collect::<Result<_, _>>()?;
    let ann = |k: &str| so.metadata.annotations.get(k).map(|v| v.trim());
    spec.annotations = Annotations {
        paused: ann("autoscaling.keda.sh/paused").is_some_and(|v| v.eq_ignore_ascii_case("true")),
        paused_replicas: match ann("autoscaling.keda.sh/paused-replicas") {
            None => None,
            Some(n) => Some(n.parse().map_err(|_| {
                error(
                    "metadata.annotations[autoscaling.keda.sh/paused-replicas]".into(),
                    format!("{n:?} is not a whole number"),
                )
            })?),
        },
        paused_scale_in: ann("autoscaling.keda.sh/paused-scale-in") == Some("true"),
        paused_scale_out: ann("autoscaling.keda.sh/paused-scale-out") == Some("true"),
        force_activation: false,
    };
    Ok(spec)
}

/// An HPA `behavior` after the API server's defaulting: each direction
/// left out, and each field of it, takes the `autoscaling/v2` default.
pub fn behavior_of(asked: Option<&HorizontalPodAutoscalerBehavior>) -> Behavior {
    let mut out = Behavior::default();
    if let Some(b) = asked {
        merge(&mut out.scale_up, b.scale_up.as_ref());
        merge(&mut out.scale_down, b.scale_down.as_ref());
    }
    out
}

fn merge(rules: &mut ScalingRules, asked: Option<&HPAScalingRules>) {
    let Some(asked) = asked else { return };
    if let Some(w) = asked.stabilization_window_seconds {
        rules.stabilization_window_seconds = w.max(0) as u32;
    }
    match asked.select_policy.as_deref() {
        Some("Min") => rules.select = SelectPolicy::Min,
        Some("Disabled") => rules.select = SelectPolicy::Disabled,
        Some("Max") => rules.select = SelectPolicy::Max,
        _ => {}
    }
    if let Some(policies) = asked.policies.as_ref().filter(|p| !p.is_empty()) {
        rules.policies = policies
            .iter()
            .map(|p| RatePolicy {
                kind: if p.type_ == "Percent" {
                    PolicyKind::Percent
                } else {
                    PolicyKind::Pods
                },
                value: p.value.max(0) as u32,
                period_seconds: p.period_seconds.max(0) as u32,
            })
            .collect();
    }
    if let Some(t) = &asked.tolerance {
        rules.tolerance = t.0.parse().ok();
    }
}
