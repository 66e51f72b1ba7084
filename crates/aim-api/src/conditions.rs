//! Conditions as a list keyed by type, with Kubernetes' transition rules:
//! `lastTransitionTime` moves only when the status really flips, and every
//! condition records the generation it was computed from.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const TRUE: &str = "True";
pub const FALSE: &str = "False";
pub const UNKNOWN: &str = "Unknown";

/// A condition to be written; the helpers fill in the times.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewCondition {
    pub type_: String,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl NewCondition {
    pub fn new(type_: &str, status: bool, reason: &str, message: impl Into<String>) -> Self {
        Self {
            type_: type_.into(),
            status,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// What `set` changed, so callers can emit an event only on transitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// The condition did not exist.
    Added,
    /// Status or reason changed.
    Transitioned,
    /// Only the message or generation changed, or nothing at all.
    Unchanged,
}

/// Inserts or updates the condition of `new.type_`. The transition time is
/// kept unless the status flips, so a reason change alone does not reset it.
pub fn set(
    conditions: &mut Vec<Condition>,
    new: NewCondition,
    generation: Option<i64>,
    now: &Time,
) -> Change {
    let status = if new.status { TRUE } else { FALSE };
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(existing) => {
            let flipped = existing.status != status;
            let change = if flipped || existing.reason != new.reason {
                Change::Transitioned
            } else {
                Change::Unchanged
            };
            if flipped {
                existing.last_transition_time = now.clone();
            }
            existing.status = status.into();
            existing.reason = new.reason;
            existing.message = new.message;
            existing.observed_generation = generation;
            change
        }
        None => {
            conditions.push(Condition {
                type_: new.type_,
                status: status.into(),
                reason: new.reason,
                message: new.message,
                observed_generation: generation,
                last_transition_time: now.clone(),
            });
            Change::Added
        }
    }
}

pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == TRUE)
}

/// Removes a condition, e.g. of a feature that was turned off, so a stale
/// failure cannot keep affecting the overall status. Returns whether it existed.
pub fn remove(conditions: &mut Vec<Condition>, type_: &str) -> bool {
    let before = conditions.len();
    conditions.retain(|c| c.type_ != type_);
    conditions.len() != before
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let mut conds = Vec::new();
        let c = NewCondition::new("ModelReady", false, "ModelNotReady", "waiting");
        assert_eq!(set(&mut conds, c.clone(), Some(1), &at(10)), Change::Added);
        assert_eq!(set(&mut conds, c, Some(2), &at(20)), Change::Unchanged);
        assert_eq!(conds[0].last_transition_time, at(10));
        assert_eq!(conds[0].observed_generation, Some(2));

        let reason_only = NewCondition::new("ModelReady", false, "ModelNotFound", "gone");
        assert_eq!(
            set(&mut conds, reason_only, Some(2), &at(30)),
            Change::Transitioned
        );
        assert_eq!(
            conds[0].last_transition_time,
            at(10),
            "reason change keeps the time"
        );

        let flip = NewCondition::new("ModelReady", true, "ModelResolved", "ok");
        assert_eq!(
            set(&mut conds, flip, Some(3), &at(40)),
            Change::Transitioned
        );
        assert_eq!(conds[0].last_transition_time, at(40));
        assert_eq!(conds[0].status, TRUE);
        assert!(is_true(&conds, "ModelReady"));
    }

    #[test]
    fn remove_drops_only_the_named_type() {
        let mut conds = Vec::new();
        set(
            &mut conds,
            NewCondition::new("A", true, "R", ""),
            None,
            &at(1),
        );
        set(
            &mut conds,
            NewCondition::new("B", false, "R", ""),
            None,
            &at(1),
        );
        assert!(remove(&mut conds, "B"));
        assert!(!remove(&mut conds, "B"));
        assert_eq!(conds.len(), 1);
        assert!(find(&conds, "A").is_some());
    }
}
