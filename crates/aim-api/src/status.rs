//! Status vocabulary shared by the kinds other than AIMService.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::Phase;

/// The states models, templates, caches and artifacts report.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema, Default)]
pub enum ResourcePhase {
    #[default]
    Pending,
    Progressing,
    Ready,
    Degraded,
    Failed,
    NotAvailable,
}

impl From<ResourcePhase> for Phase {
    fn from(p: ResourcePhase) -> Phase {
        match p {
            ResourcePhase::Pending => Phase::Pending,
            ResourcePhase::Progressing => Phase::Progressing,
            ResourcePhase::Ready => Phase::Ready,
            ResourcePhase::Degraded => Phase::Degraded,
            ResourcePhase::Failed => Phase::Failed,
            ResourcePhase::NotAvailable => Phase::NotAvailable,
        }
    }
}

/// The state engine's phase as models, templates, caches and artifacts
/// report it: they have no Starting or Running.
impl From<Phase> for ResourcePhase {
    fn from(p: Phase) -> ResourcePhase {
        match p {
            Phase::Ready | Phase::Running => ResourcePhase::Ready,
            Phase::Progressing | Phase::Starting => ResourcePhase::Progressing,
            Phase::Pending => ResourcePhase::Pending,
            Phase::Degraded => ResourcePhase::Degraded,
            Phase::NotAvailable => ResourcePhase::NotAvailable,
            Phase::Failed => ResourcePhase::Failed,
        }
    }
}

pub(crate) fn default_pending() -> Option<ResourcePhase> {
    Some(ResourcePhase::Pending)
}

pub(crate) fn default_phase() -> Option<Phase> {
    Some(Phase::Pending)
}
