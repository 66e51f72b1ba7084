//! The pure rules of the AIM operator.
//!
//! Everything here is a function of its arguments: no I/O, no clock, no
//! Kubernetes client. The controllers in `aim-operator` observe the cluster,
//! hand what they saw to these functions and apply what comes back. Keeping
//! the rules apart means each one is tested on its own (tier 0) and the
//! controllers stay thin.
//!
//! Behaviour follows AIM Engine v0.2.1 (amd-enterprise-ai/aim-engine), except
//! where its code disagrees with its own documentation: there the
//! documentation wins. Each such place is marked `FIX:` and says what AIM
//! Engine does instead.

pub mod env;
pub mod gpu;
pub mod labels;
pub mod naming;
pub mod path_template;
pub mod runtime_config;
pub mod selection;
