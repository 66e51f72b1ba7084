//! The state engine: component health in, conditions, overall status and
//! "may we apply children?" out. Pure; the controllers feed it what they
//! observed and write what it returns.
//!
//! It follows AIM Engine's reconcile pipeline (pause check, runtime config,
//! fetch, observe, plan, conditions, apply, events, status) with the documented
//! fixes: component conditions of features that are no longer assessed are
//! removed instead of lingering (AIM Engine keeps them forever), every condition carries the
//! generation it was computed from, and a Warning event is raised once per
//! transition into an error state rather than on every reconcile (as AIM
//! Engine does).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use aim_api::common::Phase;
use aim_api::conditions::{self, Change, NewCondition};

/// How a component is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ComponentState {
    Ready,
    Progressing,
    Pending,
    Degraded,
    NotAvailable,
    Failed,
}

impl ComponentState {
    fn is_error(self) -> bool {
        matches!(
            self,
            ComponentState::Degraded | ComponentState::NotAvailable | ComponentState::Failed
        )
    }
}

/// Why something went wrong; decides Failed vs Degraded vs waiting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCategory {
    /// Credentials missing or refused.
    Auth,
    /// The spec cannot work as written; wait for the user to change it.
    InvalidSpec,
    /// Something the user referenced does not exist.
    MissingUpstream,
    /// Something we create does not exist yet.
    MissingDownstream,
    /// The API or network failed; retry with backoff.
    Infrastructure,
    /// Out of memory, disk or quota.
    ResourceExhaustion,
}

/// Whether a component is something the user pointed at (upstream) or
/// something the controller makes (downstream). A not-ready upstream
/// component means "waiting" (Pending); a downstream one "working on it".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dependency {
    Upstream,
    Downstream,
}

/// One component's health, as a controller observed it.
#[derive(Clone, Debug, PartialEq)]
pub struct Health {
    /// Component name; its condition is `<component>Ready`.
    pub component: &'static str,
    pub state: ComponentState,
    pub reason: String,
    pub message: String,
    pub dependency: Dependency,
    pub error: Option<ErrorCategory>,
}

impl Health {
    pub fn ready(component: &'static str, reason: &str, message: impl Into<String>) -> Self {
        Self {
            component,
            state: ComponentState::Ready,
            reason: reason.into(),
            message: message.into(),
            dependency: Dependency::Downstream,
            error: None,
        }
    }

    pub fn new(
        component: &'static str,
        state: ComponentState,
        reason: &str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            component,
            state,
            reason: reason.into(),
            message: message.into(),
            dependency: Dependency::Downstream,
            error: None,
        }
    }

    pub fn upstream(mut self) -> Self {
        self.dependency = Dependency::Upstream;
        self
    }

    /// Marks the health as caused by an error of `category`.
    pub fn because(mut self, category: ErrorCategory) -> Self {
        self.error = Some(category);
        self
    }

    pub fn condition_type(&self) -> String {
        format!("{}Ready", self.component)
    }
}

pub const READY: &str = "Ready";
pub const DEPENDENCIES_REACHABLE: &str = "DependenciesReachable";
pub const AUTH_VALID: &str = "AuthValid";
pub const CONFIG_VALID: &str = "ConfigValid";
const FRAMEWORK: [&str; 4] = [READY, DEPENDENCIES_REACHABLE, AUTH_VALID, CONFIG_VALID];

/// A condition change worth an Event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub warning: bool,
    pub reason: String,
    pub message: String,
}

/// What the state engine decided.
#[derive(Clone, Debug, PartialEq)]
pub struct Assessment {
    pub conditions: Vec<Condition>,
    pub phase: Phase,
    /// False when an error means children must not be touched this round.
    pub apply_allowed: bool,
    /// True when an infrastructure error should be retried with backoff.
    pub retry: bool,
    pub transitions: Vec<Transition>,
}

/// Runs the state engine over `healths`, starting from the object's current
/// conditions. `generation` is recorded on every condition.
pub fn assess(
    previous: &[Condition],
    healths: &[Health],
    generation: Option<i64>,
    now: &Time,
) -> Assessment {
    let mut conds: Vec<Condition> = previous.to_vec();
    let mut transitions = Vec::new();
    let mut record = |conds: &mut Vec<Condition>, new: NewCondition, warning: bool| {
        let change = conditions::set(conds, new.clone(), generation, now);
        if change != Change::Unchanged {
            transitions.push(Transition {
                warning: warning && !new.status,
                reason: new.reason.clone(),
                message: if new.message.is_empty() {
                    format!(
                        "{} is {}: {}",
                        new.type_.trim_end_matches("Ready"),
                        if new.status { "ready" } else { "not ready" },
                        new.reason
                    )
                } else {
                    new.message.clone()
                },
            });
        }
    };

    // Component conditions. Stale ones (a feature switched off) go away so
    // they cannot keep dragging the status down.
    let current: Vec<String> = healths.iter().map(Health::condition_type).collect();
    conds.retain(|c| {
        FRAMEWORK.contains(&c.type_.as_str())
            || !c.type_.ends_with("Ready")
            || current.contains(&c.type_)
    });
    for h in healths.iter().filter(|h| !h.component.is_empty()) {
        let new = NewCondition::new(
            &h.condition_type(),
            h.state == ComponentState::Ready,
            &h.reason,
            h.message.clone(),
        );
        record(&mut conds, new, h.state.is_error());
    }

    let has = |cats: &[ErrorCategory]| {
        healths
            .iter()
            .any(|h| h.error.is_some_and(|e| cats.contains(&e)))
    };
    let infra = has(&[ErrorCategory::Infrastructure]);
    let auth = has(&[ErrorCategory::Auth]);
    let invalid = has(&[ErrorCategory::InvalidSpec]);
    let missing = has(&[ErrorCategory::MissingUpstream]);

    // Framework conditions exist only after a first problem.
    let flip_back = |conds: &mut Vec<Condition>,
                     record: &mut dyn FnMut(&mut Vec<Condition>, NewCondition, bool),
                     ty: &str,
                     bad: Option<(&str, &str)>,
                     good: (&str, &str)| {
        match bad {
            Some((reason, message)) => {
                record(conds, NewCondition::new(ty, false, reason, message), true)
            }
            None => {
                if conditions::find(conds, ty).is_some_and(|c| c.status != conditions::TRUE) {
                    record(conds, NewCondition::new(ty, true, good.0, good.1), false);
                }
            }
        }
    };
    flip_back(
        &mut conds,
        &mut record,
        DEPENDENCIES_REACHABLE,
        infra.then_some(("InfrastructureError", "Cannot reach dependencies")),
        ("Reachable", "All dependencies are reachable"),
    );
    flip_back(
        &mut conds,
        &mut record,
        AUTH_VALID,
        auth.then_some(("AuthError", "Authentication or authorization failed")),
        ("AuthenticationValid", "Authentication is valid"),
    );
    let config_bad = if invalid {
        Some(("InvalidSpec", "Configuration validation failed"))
    } else if missing {
        Some(("ReferenceNotFound", "Referenced resource not found"))
    } else {
        None
    };
    flip_back(
        &mut conds,
        &mut record,
        CONFIG_VALID,
        config_bad,
        ("ConfigurationValid", "Configuration is valid"),
    );

    // Terminal spec problems: Failed, and no children are touched.
    if auth || invalid || missing {
        let reason = if auth {
            "AuthError"
        } else if invalid {
            "InvalidSpec"
        } else {
            "ReferenceNotFound"
        };
        let culprit = healths
            .iter()
            .find(|h| {
                matches!(
                    h.error,
                    Some(
                        ErrorCategory::Auth
                            | ErrorCategory::InvalidSpec
                            | ErrorCategory::MissingUpstream
                    )
                )
            })
            .map(|h| h.message.clone())
            .unwrap_or_default();
        record(
            &mut conds,
            NewCondition::new(READY, false, reason, culprit),
            true,
        );
        return Assessment {
            conditions: conds,
            phase: Phase::Failed,
            apply_allowed: false,
            retry: false,
            transitions,
        };
    }

    let mut worst = Phase::Running;
    let mut first_error: Option<&Health> = None;
    for h in healths.iter().filter(|h| !h.component.is_empty()) {
        let phase = match h.state {
            ComponentState::Ready => Phase::Ready,
            ComponentState::Failed => Phase::Failed,
            ComponentState::Degraded => Phase::Degraded,
            ComponentState::NotAvailable => Phase::NotAvailable,
            ComponentState::Pending => Phase::Pending,
            ComponentState::Progressing if h.dependency == Dependency::Upstream => Phase::Pending,
            ComponentState::Progressing => Phase::Progressing,
        };
        if phase.priority() < worst.priority() {
            worst = phase;
        }
        if h.state.is_error() && first_error.is_none() {
            first_error = Some(h);
        }
    }
    let all_ready = healths.iter().all(|h| h.state == ComponentState::Ready);
    let ready = if all_ready {
        NewCondition::new(
            READY,
            true,
            "AllComponentsReady",
            "All components are ready",
        )
    } else if let Some(h) = first_error {
        NewCondition::new(
            READY,
            false,
            &h.reason,
            format!("Component {} is not ready: {}", h.component, h.message),
        )
    } else if infra {
        NewCondition::new(
            READY,
            false,
            "InfrastructureError",
            "Infrastructure error - waiting for retry",
        )
    } else {
        NewCondition::new(
            READY,
            false,
            "Progressing",
            "Waiting for components to become ready",
        )
    };
    record(&mut conds, ready, first_error.is_some());

    let (phase, apply_allowed, retry) = if infra && !all_ready {
        (Phase::Degraded, false, true)
    } else if all_ready {
        (Phase::Ready, true, false)
    } else {
        (worst, true, false)
    };
    Assessment {
        conditions: conds,
        phase,
        apply_allowed,
        retry,
        transitions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn now() -> Time {
        Time(Timestamp::from_second(1_000).unwrap())
    }

    fn types(a: &Assessment) -> Vec<String> {
        a.conditions.iter().map(|c| c.type_.clone()).collect()
    }

    #[test]
    fn all_ready_is_ready_with_all_components_ready() {
        let a = assess(
            &[],
            &[
                Health::ready("Model", "ModelResolved", "ok"),
                Health::ready("Template", "Resolved", "ok"),
            ],
            Some(3),
            &now(),
        );
        assert_eq!(a.phase, Phase::Ready);
        assert!(a.apply_allowed);
        let ready = conditions::find(&a.conditions, READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", "AllComponentsReady")
        );
        assert!(
            a.conditions
                .iter()
                .all(|c| c.observed_generation == Some(3))
        );
        assert_eq!(types(&a), vec!["ModelReady", "TemplateReady", "Ready"]);
    }

    #[test]
    fn missing_reference_fails_blocks_apply_and_sets_config_valid() {
        let a = assess(
            &[],
            &[
                Health::new(
                    "Model",
                    ComponentState::Failed,
                    "ModelNotFound",
                    "model \"m\" not found",
                )
                .upstream()
                .because(ErrorCategory::MissingUpstream),
                Health::ready("Template", "Resolved", ""),
            ],
            Some(1),
            &now(),
        );
        assert_eq!(a.phase, Phase::Failed);
        assert!(!a.apply_allowed);
        let cv = conditions::find(&a.conditions, CONFIG_VALID).unwrap();
        assert_eq!(
            (cv.status.as_str(), cv.reason.as_str()),
            ("False", "ReferenceNotFound")
        );
        let ready = conditions::find(&a.conditions, READY).unwrap();
        assert_eq!(ready.reason, "ReferenceNotFound");
        assert!(ready.message.contains("not found"));
    }

    #[test]
    fn upstream_waiting_is_pending_and_downstream_work_is_progressing() {
        let waiting = assess(
            &[],
            &[Health::new(
                "Template",
                ComponentState::Progressing,
                "TemplateNotReady",
                "",
            )
            .upstream()],
            None,
            &now(),
        );
        assert_eq!(waiting.phase, Phase::Pending);
        let working = assess(
            &[],
            &[Health::new(
                "InferenceService",
                ComponentState::Progressing,
                "CreatingRuntime",
                "",
            )],
            None,
            &now(),
        );
        assert_eq!(working.phase, Phase::Progressing);
        let ready = conditions::find(&working.conditions, READY).unwrap();
        assert_eq!(ready.reason, "Progressing");
    }

    #[test]
    fn infrastructure_errors_degrade_and_retry_then_recover() {
        let broken = assess(
            &[],
            &[
                Health::new("HPA", ComponentState::Failed, "HPAFetchError", "boom")
                    .because(ErrorCategory::Infrastructure),
            ],
            Some(1),
            &now(),
        );
        assert_eq!(broken.phase, Phase::Degraded);
        assert!(!broken.apply_allowed && broken.retry);
        let dr = conditions::find(&broken.conditions, DEPENDENCIES_REACHABLE).unwrap();
        assert_eq!(dr.status, "False");

        let healed = assess(
            &broken.conditions,
            &[Health::ready("HPA", "HPAOperational", "")],
            Some(1),
            &now(),
        );
        assert_eq!(healed.phase, Phase::Ready);
        let dr = conditions::find(&healed.conditions, DEPENDENCIES_REACHABLE).unwrap();
        assert_eq!(
            (dr.status.as_str(), dr.reason.as_str()),
            ("True", "Reachable")
        );
    }

    #[test]
    fn stale_component_conditions_are_removed() {
        let with_route = assess(
            &[],
            &[
                Health::ready("Model", "ModelResolved", ""),
                Health::new(
                    "HTTPRoute",
                    ComponentState::Failed,
                    "HTTPRouteRejected",
                    "nope",
                ),
            ],
            None,
            &now(),
        );
        assert_eq!(with_route.phase, Phase::Failed);
        let without = assess(
            &with_route.conditions,
            &[Health::ready("Model", "ModelResolved", "")],
            None,
            &now(),
        );
        assert!(conditions::find(&without.conditions, "HTTPRouteReady").is_none());
        assert_eq!(without.phase, Phase::Ready);
    }

    #[test]
    fn warnings_are_raised_once_per_transition() {
        let failing = [Health::new(
            "Template",
            ComponentState::NotAvailable,
            "TemplateNotReady",
            "no GPUs",
        )];
        let first = assess(&[], &failing, None, &now());
        assert!(
            first
                .transitions
                .iter()
                .any(|t| t.warning && t.reason == "TemplateNotReady")
        );
        let second = assess(&first.conditions, &failing, None, &now());
        assert!(
            second.transitions.is_empty(),
            "no new events without a change: {:?}",
            second.transitions
        );
    }

    #[test]
    fn worst_component_wins_and_ready_names_the_first_error() {
        let a = assess(
            &[],
            &[
                Health::ready("Model", "ModelResolved", ""),
                Health::new("Cache", ComponentState::Degraded, "CacheLost", "cache gone"),
                Health::new(
                    "InferenceService",
                    ComponentState::Progressing,
                    "CreatingRuntime",
                    "",
                ),
            ],
            None,
            &now(),
        );
        assert_eq!(a.phase, Phase::Degraded);
        let ready = conditions::find(&a.conditions, READY).unwrap();
        assert_eq!(ready.reason, "CacheLost");
        assert_eq!(ready.message, "Component Cache is not ready: cache gone");
    }
}
