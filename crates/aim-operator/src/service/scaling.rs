//! The autoscaling cost guard and the scale decisions the operator reports
//! (services ship paused when the runtime config says so). Pure: the controller fetches the
//! ScaledObject and the HPA, this module decides what to write and say.
//!
//! Pausing is KEDA's own switch, `autoscaling.keda.sh/paused` on the
//! ScaledObject: KEDA then deletes its HPA and leaves the replica count
//! alone. KServe copies the InferenceService's annotations onto the
//! ScaledObject when it creates it, but later updates it only when the spec
//! changes. So the operator writes the switch in both places: on the
//! InferenceService, so a new or rewritten ScaledObject starts in the right
//! state, and on the live ScaledObject, so a flip takes effect at once.

use std::collections::BTreeMap;
use std::time::Duration;

use aim_api::runtime_config::AutoscalingConfig;
use aim_api::service::ServiceRuntimeStatus;
use aim_rules::labels::{AUTOSCALING_PAUSED, KEDA_PAUSED};
use k8s_openapi::api::autoscaling::v2::{HorizontalPodAutoscaler, MetricStatus, MetricTarget};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

use crate::state::{ComponentState, ErrorCategory, Health};

/// After the InferenceService turns Ready, its pods' first metrics still
/// have to travel sidecar → scaler → KEDA → HPA (a scrape interval, KEDA's
/// polling interval and an HPA sync, about a minute with defaults). Until
/// then an HPA without metrics is waiting, not failed.
pub const FIRST_METRICS_GRACE: Duration = Duration::from_secs(120);

/// Whether the service's autoscaling is paused: its annotation wins, then
/// the runtime config's default, then "not paused". A value other than
/// "true" or "false" is an error naming the annotation.
pub fn paused(
    annotations: &BTreeMap<String, String>,
    config: Option<&AutoscalingConfig>,
) -> Result<bool, String> {
    match annotations.get(AUTOSCALING_PAUSED).map(|v| v.trim()) {
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(other) => Err(format!(
            "annotation {AUTOSCALING_PAUSED} is {other:?}; it must be \"true\" or \"false\" \
             (use `aim pause` / `aim resume`, or remove it to follow the runtime config's \
             autoscaling.pausedByDefault)"
        )),
        None => Ok(config.and_then(|c| c.paused_by_default).unwrap_or(false)),
    }
}

/// Whether a ScaledObject carries KEDA's pause switch.
fn scaled_object_paused_annotation(scaled_object: &Value) -> bool {
    scaled_object
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(KEDA_PAUSED))
        .and_then(Value::as_str)
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// The merge patch that brings a live ScaledObject's pause switch in line,
/// or `None` when it already agrees (or does not exist yet: KServe will
/// create it from the InferenceService's annotations).
pub fn scaled_object_patch(scaled_object: Option<&Value>, paused: bool) -> Option<Value> {
    let so = scaled_object?;
    if scaled_object_paused_annotation(so) == paused {
        return None;
    }
    let value = if paused { json!("true") } else { Value::Null };
    Some(json!({"metadata": {"annotations": {KEDA_PAUSED: value}}}))
}

/// The `HPA` component while paused: KEDA has removed the HPA on purpose.
pub fn paused_health(scaled_object: Option<&Value>, service: &str) -> Health {
    const C: &str = "HPA";
    let confirmed = scaled_object.is_none_or(|so| {
        super::health::condition_of(so, "Paused").is_some_and(|(s, _, _)| s == "True")
    });
    if confirmed {
        Health::ready(
            C,
            "ScalingPaused",
            format!(
                "Autoscaling is paused: KEDA leaves the replica count alone. \
                 Run `aim resume {service}` to hand it back to KEDA"
            ),
        )
    } else {
        Health::new(
            C,
            ComponentState::Progressing,
            "PausingScaling",
            "Waiting for KEDA to pause the ScaledObject",
        )
    }
}

/// An InferenceService annotation value that does not parse is the
/// service's own mistake; nothing is rewritten until it is fixed.
pub fn invalid_pause_health(message: String) -> Health {
    Health::new("HPA", ComponentState::Failed, "InvalidAnnotation", message)
        .because(ErrorCategory::InvalidSpec)
}

/// A scaling field that cannot be deployed: the `ScalingReady` condition
/// names it, and nothing of the change is written.
pub fn invalid_scaling_health(e: &aim_scaling::ScalingError) -> Health {
    Health::new(
        "Scaling",
        ComponentState::Failed,
        "InvalidScaling",
        format!("{e}. Nothing of this change was deployed; fix the field and apply again"),
    )
    .because(ErrorCategory::InvalidSpec)
}

/// Who writes the ScaledObject this round, and what the operator does to
/// hand it over between KServe and itself.
#[derive(Clone, Debug, PartialEq)]
pub struct Handover {
    /// The InferenceService's `serving.kserve.io/autoscalerClass`.
    pub autoscaler_class: &'static str,
    /// The operator's own ScaledObject, to apply.
    pub apply: Option<aim_scaling::ScaledObject>,
    /// A ScaledObject to delete first (its name).
    pub delete: Option<String>,
}

/// The kind of an object's controlling owner.
fn controller_kind(object: &Value) -> Option<&str> {
    object
        .pointer("/metadata/ownerReferences")?
        .as_array()?
        .iter()
        .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))?
        .get("kind")?
        .as_str()
}

/// The handover between KServe's ScaledObject and the operator's, which
/// share the name `<isvc>-predictor`. Each side only ever deletes its own
/// kind of object, and the InferenceService's autoscaler class moves so
/// that KServe never rebuilds an object the operator is about to own:
///
/// * to the operator: the class turns `external` first (KServe stops
///   maintaining its object), then KServe's object is deleted, then the
///   operator's is applied;
/// * back to KServe: the operator's object is deleted while the class
///   stays `external`, and only once it is gone does the class return to
///   `keda`, so KServe creates its own afresh rather than updating the
///   operator's (KServe would then keep an object it does not control,
///   which its watch never sees deleted).
pub fn handover(
    translated: &aim_scaling::Scaling,
    isvc: Option<&Value>,
    live: Option<&Value>,
) -> Handover {
    let controller = live.and_then(controller_kind);
    let name = live
        .and_then(|so| so.pointer("/metadata/name"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let ours = controller == Some("AIMService");
    let kserves = controller == Some("InferenceService");
    let Some(a) = translated.autoscaled() else {
        return Handover {
            autoscaler_class: "none",
            apply: None,
            delete: if ours { name } else { None },
        };
    };
    let isvc_class = isvc
        .and_then(|i| i.pointer("/metadata/annotations/serving.kserve.io~1autoscalerClass"))
        .and_then(Value::as_str);
    match a.owner {
        aim_scaling::Owner::Operator if kserves => Handover {
            autoscaler_class: "external",
            apply: None,
            delete: if isvc_class == Some("external") {
                name
            } else {
                None
            },
        },
        aim_scaling::Owner::Operator => Handover {
            autoscaler_class: "external",
            apply: Some(a.scaled_object.clone()),
            delete: None,
        },
        aim_scaling::Owner::KServe if ours => Handover {
            autoscaler_class: "external",
            apply: None,
            delete: name,
        },
        aim_scaling::Owner::KServe => Handover {
            autoscaler_class: a.autoscaler_class(),
            apply: None,
            delete: None,
        },
    }
}

/// `status.runtime` while paused: the pods that exist are what runs.
pub fn paused_runtime(pods: &[Pod], min: i32, max: i32) -> ServiceRuntimeStatus {
    let running = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .count() as i32;
    let nz = |v: i32| (v != 0).then_some(v);
    ServiceRuntimeStatus {
        current_replicas: nz(running),
        desired_replicas: nz(running),
        min_replicas: nz(min),
        max_replicas: nz(max),
        replicas: Some(format!("{running} (paused)")),
        paused: Some(true),
    }
}

/// A scale decision the HPA made since the last status write: the event
/// reason and its message, with the metric values behind the decision.
#[derive(Clone, Debug, PartialEq)]
pub struct ScaleDecision {
    pub reason: &'static str,
    pub message: String,
}

/// Compares the HPA's desired replicas with what the status last recorded.
/// Nothing is reported before the status has recorded a runtime at all.
pub fn scale_decision(
    previous: Option<&ServiceRuntimeStatus>,
    hpa: Option<&HorizontalPodAutoscaler>,
) -> Option<ScaleDecision> {
    let before = previous?;
    if before.paused == Some(true) {
        return None;
    }
    // Status omits zeros: a recorded runtime without a desired count had 0.
    let before = before.desired_replicas.unwrap_or(0);
    let hpa = hpa?;
    let after = hpa.status.as_ref()?.desired_replicas;
    // A new HPA reports 0 until its first sync; with a minimum of at least
    // one that is no decision (seen with KEDA's HPA: a "1 → 0" event
    // before "0 → 1").
    let min = hpa.spec.as_ref().and_then(|s| s.min_replicas).unwrap_or(1);
    if after == before || (after == 0 && min >= 1) {
        return None;
    }
    let reason = if after > before {
        "ScaledUp"
    } else {
        "ScaledDown"
    };
    let mut message = format!("desired replicas {before} → {after}");
    let metrics = metric_summary(hpa);
    if !metrics.is_empty() {
        message.push_str(": ");
        message.push_str(&metrics.join("; "));
    }
    Some(ScaleDecision { reason, message })
}

/// "name = current (target T)" for each metric the HPA reports.
fn metric_summary(hpa: &HorizontalPodAutoscaler) -> Vec<String> {
    let targets: BTreeMap<String, String> = hpa
        .spec
        .as_ref()
        .and_then(|s| s.metrics.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|m| {
            let (name, target) = match (&m.external, &m.pods, &m.resource) {
                (Some(e), _, _) => (e.metric.name.clone(), &e.target),
                (_, Some(p), _) => (p.metric.name.clone(), &p.target),
                (_, _, Some(r)) => (r.name.clone(), &r.target),
                _ => return None,
            };
            Some((name, describe_target(target)))
        })
        .collect();
    hpa.status
        .as_ref()
        .and_then(|s| s.current_metrics.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|m| {
            let (name, value) = current_value(m)?;
            Some(match targets.get(&name) {
                Some(target) => format!("{name} = {value} (target {target})"),
                None => format!("{name} = {value}"),
            })
        })
        .collect()
}

fn current_value(m: &MetricStatus) -> Option<(String, String)> {
    let (name, current) = match (&m.external, &m.pods, &m.resource) {
        (Some(e), _, _) => (e.metric.name.clone(), &e.current),
        (_, Some(p), _) => (p.metric.name.clone(), &p.current),
        (_, _, Some(r)) => (r.name.clone(), &r.current),
        _ => return None,
    };
    let value = if let Some(v) = &current.average_value {
        format!("{} per pod", v.0)
    } else if let Some(v) = &current.value {
        v.0.clone()
    } else if let Some(u) = current.average_utilization {
        format!("{u}%")
    } else {
        return None;
    };
    Some((name, value))
}

fn describe_target(t: &MetricTarget) -> String {
    if let Some(v) = &t.average_value {
        format!("{} per pod", v.0)
    } else if let Some(v) = &t.value {
        v.0.clone()
    } else if let Some(u) = t.average_utilization {
        format!("{u}%")
    } else {
        t.type_.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(v: Option<&str>) -> BTreeMap<String, String> {
        v.map(|v| (AUTOSCALING_PAUSED.to_string(), v.to_string()))
            .into_iter()
            .collect()
    }

    fn config(paused: bool) -> AutoscalingConfig {
        AutoscalingConfig {
            paused_by_default: Some(paused),
        }
    }

    #[test]
    fn annotation_wins_over_the_runtime_config_default() {
        assert_eq!(paused(&annotations(None), None), Ok(false));
        assert_eq!(paused(&annotations(None), Some(&config(true))), Ok(true));
        assert_eq!(
            paused(&annotations(Some("false")), Some(&config(true))),
            Ok(false)
        );
        assert_eq!(
            paused(&annotations(Some("true")), Some(&config(false))),
            Ok(true)
        );
    }

    #[test]
    fn a_bad_annotation_value_names_the_annotation_and_the_fix() {
        let err = paused(&annotations(Some("yes")), None).unwrap_err();
        assert!(err.contains(AUTOSCALING_PAUSED), "{err}");
        assert!(err.contains("\"yes\""), "{err}");
        assert!(err.contains("aim resume"), "{err}");
    }

    #[test]
    fn the_patch_only_flips_a_switch_that_disagrees() {
        let unpaused = json!({"metadata": {"name": "x-predictor"}});
        let paused_so =
            json!({"metadata": {"name": "x-predictor", "annotations": {KEDA_PAUSED: "true"}}});
        assert_eq!(scaled_object_patch(None, true), None);
        assert_eq!(scaled_object_patch(Some(&unpaused), false), None);
        assert_eq!(scaled_object_patch(Some(&paused_so), true), None);
        assert_eq!(
            scaled_object_patch(Some(&unpaused), true),
            Some(json!({"metadata": {"annotations": {KEDA_PAUSED: "true"}}}))
        );
        // Resuming removes the switch rather than writing "false", so the
        // object looks like one that was never paused.
        assert_eq!(
            scaled_object_patch(Some(&paused_so), false),
            Some(json!({"metadata": {"annotations": {KEDA_PAUSED: null}}}))
        );
    }

    #[test]
    fn paused_is_confirmed_by_keda_condition() {
        let waiting = json!({"metadata": {}, "status": {"conditions": [
            {"type": "Paused", "status": "False"}]}});
        let done = json!({"metadata": {}, "status": {"conditions": [
            {"type": "Paused", "status": "True"}]}});
        assert_eq!(
            paused_health(Some(&waiting), "ns/s").reason,
            "PausingScaling"
        );
        let h = paused_health(Some(&done), "ns/s");
        assert_eq!(h.reason, "ScalingPaused");
        assert!(h.message.contains("aim resume ns/s"), "{}", h.message);
    }

    fn hpa(desired: i32) -> HorizontalPodAutoscaler {
        serde_json::from_value(json!({
            "metadata": {"name": "keda-hpa-x-predictor"},
            "spec": {
                "maxReplicas": 4,
                "scaleTargetRef": {"kind": "Deployment", "name": "x-predictor"},
                "metrics": [{"type": "External", "external": {
                    "metric": {"name": "s0-vllm-num_requests_running"},
                    "target": {"type": "AverageValue", "averageValue": "1"}}}]
            },
            "status": {
                "desiredReplicas": desired,
                "currentMetrics": [{"type": "External", "external": {
                    "metric": {"name": "s0-vllm-num_requests_running"},
                    "current": {"averageValue": "2700m"}}}]
            }
        }))
        .unwrap()
    }

    fn runtime(desired: i32) -> ServiceRuntimeStatus {
        ServiceRuntimeStatus {
            desired_replicas: Some(desired),
            ..Default::default()
        }
    }

    #[test]
    fn a_changed_desired_count_is_a_decision_with_its_metric() {
        let up = scale_decision(Some(&runtime(1)), Some(&hpa(3))).unwrap();
        assert_eq!(up.reason, "ScaledUp");
        assert_eq!(
            up.message,
            "desired replicas 1 → 3: s0-vllm-num_requests_running = 2700m per pod (target 1 per pod)"
        );
        let down = scale_decision(Some(&runtime(3)), Some(&hpa(1))).unwrap();
        assert_eq!(down.reason, "ScaledDown");
    }

    #[test]
    fn no_decision_without_a_change_or_a_previous_count() {
        assert_eq!(scale_decision(Some(&runtime(3)), Some(&hpa(3))), None);
        assert_eq!(scale_decision(None, Some(&hpa(3))), None);
        // A recorded runtime without a desired count had zero (omitempty).
        assert_eq!(
            scale_decision(Some(&ServiceRuntimeStatus::default()), Some(&hpa(3)))
                .map(|d| d.message.starts_with("desired replicas 0 → 3")),
            Some(true)
        );
        assert_eq!(scale_decision(Some(&runtime(1)), None), None);
        // A fresh HPA's 0 is not a decision while the minimum is above it.
        assert_eq!(scale_decision(Some(&runtime(1)), Some(&hpa(0))), None);
        // Resuming is not a decision of the HPA's.
        let was_paused = ServiceRuntimeStatus {
            desired_replicas: Some(1),
            paused: Some(true),
            ..Default::default()
        };
        assert_eq!(scale_decision(Some(&was_paused), Some(&hpa(3))), None);
    }
}

/// How long a rebuilt HPA gets before the operator deletes it again when
/// it still lacks the scaler's metric: enough for KEDA to rebuild it and
/// for a scaler that is coming back to be reached, short enough that a
/// service does not run on the wrong metric for long.
pub const METRICLESS_HPA_REBUILD_AFTER: Duration = Duration::from_secs(30);

/// KEDA's HPA when it lacks metrics the ScaledObject's triggers should
/// give it.
///
/// KEDA builds the HPA from each trigger's metric spec, asked of the
/// scaler when the HPA is built. When the scaler cannot be reached at
/// that moment, that trigger contributes no metric, and KEDA does not ask
/// again until the ScaledObject changes; an HPA left with no metric at all
/// is defaulted by the API server to 80 % CPU. The service then scales on
/// the wrong signal, or not at all, for as long as nothing changes.
/// Deleting the HPA makes KEDA rebuild it. `None`: the HPA has every
/// metric (or one side is missing, which other checks report).
pub fn missing_hpa_metrics(hpa: &HorizontalPodAutoscaler, scaled_object: &Value) -> Option<String> {
    let triggers = scaled_object.pointer("/spec/triggers")?.as_array()?;
    // Every trigger but cpu and memory becomes one External metric.
    let wanted = triggers
        .iter()
        .filter(|t| !matches!(t["type"].as_str(), Some("cpu" | "memory")))
        .count();
    let metrics = hpa
        .spec
        .as_ref()
        .and_then(|s| s.metrics.as_deref())
        .unwrap_or_default();
    let external = metrics.iter().filter(|m| m.type_ == "External").count();
    if external >= wanted {
        return None;
    }
    let cpu_default = metrics.iter().any(|m| m.type_ == "Resource")
        && !triggers
            .iter()
            .any(|t| matches!(t["type"].as_str(), Some("cpu" | "memory")));
    let scalers: Vec<&str> = triggers
        .iter()
        .filter_map(|t| t.pointer("/metadata/scalerAddress")?.as_str())
        .collect();
    Some(format!(
        "KEDA built the HPA with {external} of the ScaledObject's {wanted} external metrics{}; \
         the scaler was likely unreachable when it was built{}",
        if cpu_default {
            " (the API server defaulted it to 80 % CPU)"
        } else {
            ""
        },
        if scalers.is_empty() {
            String::new()
        } else {
            format!(" (scaler: {})", scalers.join(", "))
        }
    ))
}

#[cfg(test)]
mod metricless_tests {
    use super::*;

    fn hpa(metrics: Value) -> HorizontalPodAutoscaler {
        serde_json::from_value(json!({
            "metadata": {"name": "keda-hpa-chat-predictor"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "chat-predictor"},
                     "maxReplicas": 4, "metrics": metrics}
        }))
        .unwrap()
    }

    fn external() -> Value {
        json!({"type": "External", "external": {
            "metric": {"name": "s0-chat"}, "target": {"type": "AverageValue", "averageValue": "1"}}})
    }

    #[test]
    fn an_hpa_without_the_scalers_metric_is_found_and_explained() {
        let so = json!({"spec": {"triggers": [
            {"type": "external", "metadata": {"scalerAddress": "scaler.keda:4318"}},
            {"type": "external-push", "metadata": {"scalerAddress": "scaler.keda:4318"}},
        ]}});
        assert_eq!(
            missing_hpa_metrics(&hpa(json!([external(), external()])), &so),
            None
        );
        let cpu = json!([{"type": "Resource", "resource": {"name": "cpu",
            "target": {"type": "Utilization", "averageUtilization": 80}}}]);
        let why = missing_hpa_metrics(&hpa(cpu), &so).unwrap();
        assert!(why.contains("0 of the ScaledObject's 2"), "{why}");
        assert!(why.contains("80 % CPU"), "{why}");
        assert!(why.contains("scaler.keda:4318"), "{why}");
        let one = missing_hpa_metrics(&hpa(json!([external()])), &so).unwrap();
        assert!(one.contains("1 of the ScaledObject's 2"), "{one}");
        assert!(!one.contains("CPU"), "{one}");
        // A CPU trigger is the service's own choice, not a fallback.
        let with_cpu = json!({"spec": {"triggers": [{"type": "cpu", "metadata": {}}]}});
        let cpu_only = json!([{"type": "Resource", "resource": {"name": "cpu",
            "target": {"type": "Utilization", "averageUtilization": 50}}}]);
        assert_eq!(missing_hpa_metrics(&hpa(cpu_only), &with_cpu), None);
    }
}
