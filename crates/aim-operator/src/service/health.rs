//! Health of the children a service observes: the InferenceService, its
//! pods, KEDA's HPA and the HTTPRoute.

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Event, Pod};
use serde_json::Value;

use crate::state::{ComponentState, ErrorCategory, Health};

/// `status.conditions[type]` of an unstructured object, as (status, reason, message).
pub fn condition_of(obj: &Value, ty: &str) -> Option<(String, String, String)> {
    obj.pointer("/status").and_then(|s| condition_in(s, ty))
}

/// `conditions[type]` directly under `obj` (e.g. a route's parent status).
fn condition_in(obj: &Value, ty: &str) -> Option<(String, String, String)> {
    obj.get("conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == ty)
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (s("status"), s("reason"), s("message"))
        })
}

pub fn isvc_health(isvc: Option<&Value>, events: &[Event]) -> Health {
    let Some(isvc) = isvc else {
        return Health::new(
            "InferenceService",
            ComponentState::Progressing,
            "CreatingRuntime",
            "Creating the InferenceService",
        );
    };
    if events
        .iter()
        .any(|e| e.reason.as_deref() == Some("ServerlessModeRejected"))
    {
        return Health::new(
            "InferenceService",
            ComponentState::Failed,
            "ServerlessModeRejected",
            "Knative is not available. Configure KServe to use RawDeployment mode.",
        )
        .because(ErrorCategory::InvalidSpec);
    }
    if let Some(e) = events.iter().find(|e| {
        e.type_.as_deref() == Some("Warning")
            && e.reason.as_deref() == Some("InternalError")
            && !e
                .message
                .as_deref()
                .unwrap_or_default()
                .contains("the object has been modified")
            && !e
                .message
                .as_deref()
                .unwrap_or_default()
                .contains("Operation cannot be fulfilled")
    }) {
        return Health::new(
            "InferenceService",
            ComponentState::Failed,
            "InternalError",
            e.message.clone().unwrap_or_default(),
        );
    }
    match condition_of(isvc, "Ready") {
        Some((s, _, _)) if s == "True" => Health::ready(
            "InferenceService",
            "RuntimeReady",
            "InferenceService is ready",
        ),
        Some((_, reason, message)) if !message.is_empty() => Health::new(
            "InferenceService",
            ComponentState::Progressing,
            "CreatingRuntime",
            format!("InferenceService is not ready: {reason} {message}")
                .trim()
                .to_string(),
        ),
        _ => Health::new(
            "InferenceService",
            ComponentState::Progressing,
            "CreatingRuntime",
            "InferenceService is not ready",
        ),
    }
}

/// The health of the predictor pods, from their phases, container states
/// and events.
pub fn pods_health(pods: &[Pod], events: &[Event]) -> Health {
    const C: &str = "InferenceServicePods";
    if pods.is_empty() {
        return Health::new(C, ComponentState::Progressing, "NoPods", "No pods yet")
            .because(ErrorCategory::MissingDownstream);
    }
    for pod in pods {
        let statuses = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.clone())
            .unwrap_or_default();
        for cs in statuses {
            let Some(waiting) = cs.state.and_then(|s| s.waiting) else {
                continue;
            };
            let reason = waiting.reason.unwrap_or_default();
            if reason != "ImagePullBackOff" && reason != "ErrImagePull" {
                continue;
            }
            let msg = waiting.message.unwrap_or_default();
            let lower = msg.to_lowercase();
            return if [
                "unauthorized",
                "authentication",
                "denied",
                "forbidden",
                "401",
                "403",
            ]
            .iter()
            .any(|k| lower.contains(k))
            {
                Health::new(
                    C,
                    ComponentState::Failed,
                    "ImagePullAuthFailure",
                    format!("Image pull was refused: {msg}. Check imagePullSecrets."),
                )
                .because(ErrorCategory::Auth)
            } else if ["not found", "manifest unknown", "404"]
                .iter()
                .any(|k| lower.contains(k))
            {
                Health::new(
                    C,
                    ComponentState::Failed,
                    "ImageNotFound",
                    format!("Image not found: {msg}"),
                )
                .upstream()
                .because(ErrorCategory::MissingUpstream)
            } else {
                Health::new(C, ComponentState::Degraded, "ImagePullBackOff", msg)
                    .because(ErrorCategory::Infrastructure)
            };
        }
    }
    let phase = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default()
    };
    if let Some(failed) = pods.iter().find(|p| phase(p) == "Failed") {
        let reason = failed
            .status
            .as_ref()
            .and_then(|s| s.reason.clone())
            .unwrap_or_default();
        let (r, cat) = match reason.as_str() {
            "OOMKilled" => ("PodOOMKilled", ErrorCategory::ResourceExhaustion),
            "Evicted" => ("PodEvicted", ErrorCategory::Infrastructure),
            "DeadlineExceeded" => ("PodDeadlineExceeded", ErrorCategory::InvalidSpec),
            _ => ("PodFailed", ErrorCategory::InvalidSpec),
        };
        let state = if cat == ErrorCategory::Infrastructure {
            ComponentState::Degraded
        } else {
            ComponentState::Failed
        };
        return Health::new(
            C,
            state,
            r,
            format!(
                "Pod {} failed: {reason}",
                failed.metadata.name.clone().unwrap_or_default()
            ),
        )
        .because(cat);
    }
    let ready = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    };
    if pods
        .iter()
        .any(|p| (phase(p) == "Running" && ready(p)) || phase(p) == "Succeeded")
    {
        return Health::ready(C, "PodsReady", "Pods are ready");
    }
    if pods.iter().any(|p| phase(p) == "Running") {
        return Health::new(
            C,
            ComponentState::Progressing,
            "PodsStarting",
            "Pods are starting",
        );
    }
    if pods.iter().all(|p| phase(p) == "Pending") {
        for reason in [
            "FailedScheduling",
            "FailedMount",
            "FailedAttachVolume",
            "FailedCreatePodSandBox",
        ] {
            if let Some(e) = events.iter().find(|e| e.reason.as_deref() == Some(reason)) {
                return Health::new(
                    C,
                    ComponentState::Pending,
                    reason,
                    e.message.clone().unwrap_or_default(),
                );
            }
        }
        if events
            .iter()
            .any(|e| e.reason.as_deref() == Some("Pulling"))
        {
            return Health::new(
                C,
                ComponentState::Progressing,
                "PodsProgressing",
                "Pulling the image",
            );
        }
        return Health::new(
            C,
            ComponentState::Pending,
            "PodsPending",
            "Pods are pending",
        );
    }
    Health::new(
        C,
        ComponentState::Progressing,
        "PodsProgressing",
        "Pods are progressing",
    )
}

/// KEDA's HPA `keda-hpa-<isvc>-predictor`.
///
/// `isvc_ready_for` is how long the InferenceService has been Ready (None:
/// not Ready). AIM Engine calls an HPA without metrics Failed as soon as the
/// InferenceService is Ready, which is before any pod could have reported a
/// metric; aim waits [`super::scaling::FIRST_METRICS_GRACE`] first.
pub fn hpa_health(
    hpa: Option<&HorizontalPodAutoscaler>,
    isvc_ready_for: Option<std::time::Duration>,
) -> Health {
    const C: &str = "HPA";
    let Some(hpa) = hpa else {
        return Health::new(
            C,
            ComponentState::Progressing,
            "HPANotFound",
            "Waiting for KEDA to create HorizontalPodAutoscaler",
        );
    };
    let conds = hpa
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let is = |ty: &str, st: &str| conds.iter().any(|c| c.type_ == ty && c.status == st);
    let message = |ty: &str| {
        conds
            .iter()
            .find(|c| c.type_ == ty)
            .and_then(|c| c.message.clone())
            .unwrap_or_default()
    };
    // KEDA took a scale-from-zero service to zero: the HPA controller
    // stands aside until KEDA brings a replica back.
    let disabled = conds
        .iter()
        .any(|c| c.type_ == "ScalingActive" && c.reason.as_deref() == Some("ScalingDisabled"));
    if disabled {
        return Health::ready(
            C,
            "ScaledToZero",
            "Scaled to zero: KEDA brings a replica back when the gateway holds a request",
        );
    }
    if !is("ScalingActive", "True") {
        let settled = isvc_ready_for.is_some_and(|d| d >= super::scaling::FIRST_METRICS_GRACE);
        return if settled {
            Health::new(
                C,
                ComponentState::Failed,
                "MetricsFailed",
                format!(
                    "The HPA cannot read its metrics: {}",
                    message("ScalingActive")
                ),
            )
        } else {
            Health::new(
                C,
                ComponentState::Progressing,
                "WaitingForMetrics",
                "Waiting for metrics",
            )
        };
    }
    if is("AbleToScale", "False") {
        return Health::new(
            C,
            ComponentState::Progressing,
            "ScaleTargetNotReady",
            message("AbleToScale"),
        );
    }
    Health::ready(C, "HPAOperational", "HPA is operational")
}

/// The route's parent status: Accepted decides, ResolvedRefs explains.
pub fn route_health(route: Option<&Value>) -> Health {
    const C: &str = "HTTPRoute";
    let Some(route) = route else {
        return Health::new(
            C,
            ComponentState::Progressing,
            "HTTPRouteCreating",
            "Creating the HTTPRoute",
        );
    };
    let parents = route
        .pointer("/status/parents")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut rejected = None;
    let mut unresolved = None;
    for parent in &parents {
        if let Some((s, reason, message)) = condition_in(parent, "Accepted") {
            if s == "True" {
                return Health::ready(
                    C,
                    "HTTPRouteAccepted",
                    "HTTPRoute is accepted by the gateway",
                );
            }
            if s == "False" {
                rejected = Some((reason, message));
            }
        }
        if let Some((s, reason, message)) = condition_in(parent, "ResolvedRefs")
            && s == "False"
        {
            unresolved = Some((reason, message));
        }
    }
    if let Some((reason, message)) = rejected {
        return Health::new(
            C,
            ComponentState::Failed,
            &reason,
            format!("HTTPRoute rejected: {message}"),
        )
        .because(ErrorCategory::InvalidSpec);
    }
    if let Some((reason, message)) = unresolved {
        return Health::new(C, ComponentState::Progressing, &reason, message)
            .because(ErrorCategory::MissingDownstream);
    }
    Health::new(
        C,
        ComponentState::Progressing,
        "HTTPRoutePending",
        "Waiting for the gateway to accept the HTTPRoute",
    )
}

/// `status.runtime` from the HPA or the spec.
pub fn runtime_status(
    hpa: Option<&HorizontalPodAutoscaler>,
    replicas: &super::render::Replicas,
) -> aim_api::service::ServiceRuntimeStatus {
    let (min, max, current, desired) = match hpa {
        Some(h) => {
            let spec = h.spec.as_ref();
            let status = h.status.as_ref();
            (
                spec.and_then(|s| s.min_replicas).unwrap_or(1),
                spec.map(|s| s.max_replicas).unwrap_or(replicas.max),
                status.and_then(|s| s.current_replicas).unwrap_or(0),
                status.map(|s| s.desired_replicas).unwrap_or(0),
            )
        }
        None => (replicas.min, replicas.max, replicas.min, replicas.min),
    };
    let display = if min == max {
        current.to_string()
    } else {
        format!("{current}/{desired} ({min}-{max})")
    };
    let nz = |v: i32| (v != 0).then_some(v);
    aim_api::service::ServiceRuntimeStatus {
        current_replicas: nz(current),
        desired_replicas: nz(desired),
        min_replicas: nz(min),
        max_replicas: nz(max),
        replicas: Some(display),
        paused: None,
    }
}
