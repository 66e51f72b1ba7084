//! Template auto-selection: which template a service without
//! `template.name` runs.
//!
//! The caller gathers the candidates (the namespaced templates in the
//! service's namespace and all cluster templates whose `spec.modelName` is
//! the resolved model) and calls [`select`]. The steps:
//!
//! 1. no candidates → [`SelectionOutcome::NoCandidates`];
//! 2. keep `status.status == Ready`; none → [`SelectionOutcome::NoneReady`];
//! 3. unless `allowUnoptimized`, keep profile type `optimized` (no profile
//!    counts as unoptimized);
//! 4. with overrides: metric and precision must equal the override; a GPU
//!    model override must equal the candidate's (normalized) when the
//!    candidate names one; a GPU count override (> 0) must equal the
//!    candidate's when that is > 0;
//! 5. keep candidates without a GPU model or whose model is in the cluster;
//! 6. if any namespaced candidate remains, drop the cluster ones;
//! 7. FIX: if the model's `defaultServiceTemplate` names a remaining
//!    candidate, it is selected. AIM Engine ignores the field; the docs say
//!    it picks the template. It only chooses among templates that passed
//!    every filter, so it can never select one that is not Ready, not
//!    optimized (without `allowUnoptimized`), against the overrides or on a
//!    GPU the cluster lacks;
//! 8. rank, lower is better, lexicographically: profile type (optimized <
//!    preview < unoptimized), GPU, metric (latency < throughput < unset),
//!    precision (fp4 < int4 < fp8 < int8 < fp16 < bf16 < fp32 < others).
//!    GPU rank, FIX: MI355X < MI350X < MI325X < MI300X < MI250X <
//!    MI210 < anything else. AIM Engine does not list MI350X and MI355X, so
//!    they ranked below MI210; the docs treat them like the other Instinct
//!    parts, and as the newest parts they rank first.
//!
//! A tie for the best rank is [`SelectionOutcome::Ambiguous`] with the tied
//! names (FIX: AIM Engine computed `TemplateSelectionAmbiguous` but
//! reported `TemplateNotFound`).
//!
//! Steps 3–5 report which filter removed the last candidates, so that the
//! service's condition says what to change.

use std::collections::BTreeSet;

use aim_api::common::{Metric, Precision, ProfileType, RuntimeParameters};
use aim_api::status::ResourcePhase;
use aim_api::template::{
    AIMClusterServiceTemplate, AIMServiceTemplate, AIMServiceTemplateSpec, AIMServiceTemplateStatus,
};

use crate::gpu::normalize_gpu_model;

/// Condition reasons of the service's `TemplateReady` for each outcome.
pub const REASON_TEMPLATE_NOT_FOUND: &str = "TemplateNotFound";
pub const REASON_TEMPLATE_NOT_READY: &str = "TemplateNotReady";
pub const REASON_TEMPLATE_SELECTION_AMBIGUOUS: &str = "TemplateSelectionAmbiguous";
pub const REASON_RESOLVED: &str = "Resolved";

/// GPU models by preference, newest first (AIM Engine ranks MI350X and
/// MI355X below MI210).
pub const GPU_PREFERENCE: &[&str] = &["MI355X", "MI350X", "MI325X", "MI300X", "MI250X", "MI210"];

/// Which kind a candidate is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CandidateScope {
    /// An AIMServiceTemplate in the service's namespace.
    Namespace,
    /// An AIMClusterServiceTemplate.
    Cluster,
}

/// What selection needs to know about one template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    pub scope: CandidateScope,
    /// `status.status`; `None` when the template has no status yet.
    pub phase: Option<ResourcePhase>,
    /// `status.profile.metadata.type`; `None` counts as unoptimized.
    pub profile_type: Option<ProfileType>,
    /// `spec.hardware.gpu.model`, else `status.profile.metadata.gpu`.
    pub gpu_model: Option<String>,
    /// `status.profile.metadata.gpuCount`, else `spec.hardware.gpu.requests`;
    /// 0 when neither is set.
    pub gpu_count: i32,
    /// `status.profile.metadata.metric`, else `spec.metric`.
    pub metric: Option<Metric>,
    /// `status.profile.metadata.precision`, else `spec.precision`.
    pub precision: Option<Precision>,
}

impl Candidate {
    /// A candidate from a template's spec and status (see the field docs
    /// for where each value comes from).
    pub fn from_parts(
        name: &str,
        scope: CandidateScope,
        spec: &AIMServiceTemplateSpec,
        status: Option<&AIMServiceTemplateStatus>,
    ) -> Self {
        let metadata = status
            .and_then(|s| s.profile.as_ref())
            .and_then(|p| p.metadata.as_ref());
        let spec_gpu = spec.hardware.as_ref().and_then(|h| h.gpu.as_ref());
        let non_empty = |s: Option<&String>| s.filter(|s| !s.trim().is_empty()).cloned();
        Candidate {
            name: name.to_string(),
            scope,
            phase: status.and_then(|s| s.status),
            profile_type: metadata.and_then(|m| m.type_),
            gpu_model: non_empty(spec_gpu.and_then(|g| g.model.as_ref()))
                .or_else(|| non_empty(metadata.and_then(|m| m.gpu.as_ref()))),
            gpu_count: metadata
                .and_then(|m| m.gpu_count)
                .or_else(|| spec_gpu.and_then(|g| g.requests))
                .unwrap_or(0),
            metric: metadata.and_then(|m| m.metric).or(spec.metric),
            precision: metadata.and_then(|m| m.precision).or(spec.precision),
        }
    }

    pub fn from_template(template: &AIMServiceTemplate) -> Self {
        Self::from_parts(
            template.metadata.name.as_deref().unwrap_or_default(),
            CandidateScope::Namespace,
            &template.spec,
            template.status.as_ref(),
        )
    }

    pub fn from_cluster_template(template: &AIMClusterServiceTemplate) -> Self {
        Self::from_parts(
            template.metadata.name.as_deref().unwrap_or_default(),
            CandidateScope::Cluster,
            &template.spec,
            template.status.as_ref(),
        )
    }

    fn is_ready(&self) -> bool {
        self.phase == Some(ResourcePhase::Ready)
    }

    fn is_optimized(&self) -> bool {
        self.profile_type == Some(ProfileType::Optimized)
    }

    /// The ranking key; lower is better.
    pub fn rank(&self) -> (u8, u8, u8, u8) {
        let type_rank = match self.profile_type {
            Some(ProfileType::Optimized) => 0,
            Some(ProfileType::Preview) => 1,
            Some(ProfileType::Unoptimized) | None => 2,
        };
        let gpu_rank = self
            .gpu_model
            .as_deref()
            .map(normalize_gpu_model)
            .and_then(|m| GPU_PREFERENCE.iter().position(|p| *p == m))
            .unwrap_or(GPU_PREFERENCE.len()) as u8;
        let metric_rank = match self.metric {
            Some(Metric::Latency) => 0,
            Some(Metric::Throughput) => 1,
            None => 2,
        };
        let precision_rank = match self.precision {
            Some(Precision::Fp4) => 0,
            Some(Precision::Int4) => 1,
            Some(Precision::Fp8) => 2,
            Some(Precision::Int8) => 3,
            Some(Precision::Fp16) => 4,
            Some(Precision::Bf16) => 5,
            Some(Precision::Fp32) => 6,
            Some(Precision::Auto) | None => 7,
        };
        (type_rank, gpu_rank, metric_rank, precision_rank)
    }
}

/// What the service asks of selection.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SelectionRequest {
    /// `spec.template.allowUnoptimized`.
    pub allow_unoptimized: bool,
    /// `spec.overrides`.
    pub overrides: Option<RuntimeParameters>,
    /// The normalized GPU models present in the cluster
    /// ([`crate::gpu::cluster_gpus`] keys).
    pub cluster_gpu_models: BTreeSet<String>,
    /// The model's `spec.defaultServiceTemplate`.
    pub default_template: Option<String>,
}

/// The result of auto-selection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SelectionOutcome {
    Selected(Candidate),
    /// No template exists for the model.
    NoCandidates,
    /// Templates exist, none is Ready yet.
    NoneReady,
    /// Every Ready template was removed by a filter; `reason` says which
    /// one removed the last and what to change.
    AllFilteredOut {
        reason: String,
    },
    /// Several templates share the best rank; their names, sorted.
    Ambiguous {
        candidates: Vec<String>,
    },
}

impl SelectionOutcome {
    /// The `TemplateReady` condition reason for this outcome.
    pub fn reason(&self) -> &'static str {
        match self {
            SelectionOutcome::Selected(_) => REASON_RESOLVED,
            SelectionOutcome::NoCandidates | SelectionOutcome::AllFilteredOut { .. } => {
                REASON_TEMPLATE_NOT_FOUND
            }
            SelectionOutcome::NoneReady => REASON_TEMPLATE_NOT_READY,
            SelectionOutcome::Ambiguous { .. } => REASON_TEMPLATE_SELECTION_AMBIGUOUS,
        }
    }

    /// A message for the condition and Event, saying what to do.
    pub fn message(&self) -> String {
        match self {
            SelectionOutcome::Selected(c) => format!("selected template {}", c.name),
            SelectionOutcome::NoCandidates => {
                "no template exists for the model; wait for the model to create its templates, \
                 or create an AIMServiceTemplate for it"
                    .to_string()
            }
            SelectionOutcome::NoneReady => "Templates exist but are not ready yet".to_string(),
            SelectionOutcome::AllFilteredOut { reason } => reason.clone(),
            SelectionOutcome::Ambiguous { candidates } => format!(
                "templates {} are equally suitable; set spec.template.name to one of them, \
                 narrow the choice with spec.overrides, or set the model's \
                 defaultServiceTemplate",
                candidates.join(", ")
            ),
        }
    }
}

fn describe_overrides(o: &RuntimeParameters) -> String {
    let gpu = o.hardware.as_ref().and_then(|h| h.gpu.as_ref());
    let mut parts = Vec::new();
    if let Some(m) = o.metric {
        parts.push(format!("metric={}", m.as_str()));
    }
    if let Some(p) = o.precision {
        parts.push(format!("precision={}", p.as_str()));
    }
    if let Some(m) = gpu
        .and_then(|g| g.model.as_deref())
        .filter(|m| !m.is_empty())
    {
        parts.push(format!("gpu.model={m}"));
    }
    if let Some(n) = gpu.and_then(|g| g.requests).filter(|n| *n > 0) {
        parts.push(format!("gpu.requests={n}"));
    }
    parts.join(", ")
}

fn matches_overrides(c: &Candidate, o: &RuntimeParameters) -> bool {
    if o.metric.is_some() && c.metric != o.metric {
        return false;
    }
    if o.precision.is_some() && c.precision != o.precision {
        return false;
    }
    let gpu = o.hardware.as_ref().and_then(|h| h.gpu.as_ref());
    if let (Some(want), Some(have)) = (
        gpu.and_then(|g| g.model.as_deref())
            .filter(|m| !m.trim().is_empty()),
        c.gpu_model.as_deref(),
    ) && normalize_gpu_model(want) != normalize_gpu_model(have)
    {
        return false;
    }
    if let Some(want) = gpu.and_then(|g| g.requests).filter(|n| *n > 0)
        && c.gpu_count > 0
        && c.gpu_count != want
    {
        return false;
    }
    true
}

/// Auto-selects a template from `candidates` (see the module docs).
pub fn select(candidates: &[Candidate], request: &SelectionRequest) -> SelectionOutcome {
    if candidates.is_empty() {
        return SelectionOutcome::NoCandidates;
    }
    let ready: Vec<&Candidate> = candidates.iter().filter(|c| c.is_ready()).collect();
    if ready.is_empty() {
        return SelectionOutcome::NoneReady;
    }

    let optimized: Vec<&Candidate> = if request.allow_unoptimized {
        ready
    } else {
        let kept: Vec<&Candidate> = ready.iter().copied().filter(|c| c.is_optimized()).collect();
        if kept.is_empty() {
            return SelectionOutcome::AllFilteredOut {
                reason: format!(
                    "no Ready template is optimized ({} Ready: {}) and \
                     spec.template.allowUnoptimized is false; set allowUnoptimized: true or \
                     name a template in spec.template.name",
                    ready.len(),
                    names(&ready)
                ),
            };
        }
        kept
    };

    let matching: Vec<&Candidate> = match &request.overrides {
        Some(o) => {
            let kept: Vec<&Candidate> = optimized
                .iter()
                .copied()
                .filter(|c| matches_overrides(c, o))
                .collect();
            if kept.is_empty() {
                return SelectionOutcome::AllFilteredOut {
                    reason: format!(
                        "no Ready template matches spec.overrides ({}); considered: {}; change \
                         the overrides or create a matching template",
                        describe_overrides(o),
                        names(&optimized)
                    ),
                };
            }
            kept
        }
        None => optimized,
    };

    let placeable: Vec<&Candidate> = matching
        .iter()
        .copied()
        .filter(|c| match c.gpu_model.as_deref() {
            None => true,
            Some(m) => request.cluster_gpu_models.contains(&normalize_gpu_model(m)),
        })
        .collect();
    if placeable.is_empty() {
        let wanted: BTreeSet<String> = matching
            .iter()
            .filter_map(|c| c.gpu_model.as_deref().map(normalize_gpu_model))
            .collect();
        let have = if request.cluster_gpu_models.is_empty() {
            "no node has AMD GPU labels".to_string()
        } else {
            format!(
                "the cluster has {}",
                request
                    .cluster_gpu_models
                    .iter()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        return SelectionOutcome::AllFilteredOut {
            reason: format!(
                "the required GPU is absent: the remaining templates need {}, but {have}; add \
                 such nodes or choose a template for the GPUs present",
                wanted.into_iter().collect::<Vec<_>>().join(", ")
            ),
        };
    }

    let scoped: Vec<&Candidate> = if placeable
        .iter()
        .any(|c| c.scope == CandidateScope::Namespace)
    {
        placeable
            .into_iter()
            .filter(|c| c.scope == CandidateScope::Namespace)
            .collect()
    } else {
        placeable
    };

    if let Some(default) = request.default_template.as_deref()
        && let Some(c) = scoped.iter().find(|c| c.name == default)
    {
        return SelectionOutcome::Selected((*c).clone());
    }

    let best = scoped
        .iter()
        .map(|c| c.rank())
        .min()
        .expect("scoped is non-empty");
    let winners: Vec<&Candidate> = scoped.into_iter().filter(|c| c.rank() == best).collect();
    if let [only] = winners.as_slice() {
        return SelectionOutcome::Selected((*only).clone());
    }
    let mut tied: Vec<String> = winners.iter().map(|c| c.name.clone()).collect();
    tied.sort();
    SelectionOutcome::Ambiguous { candidates: tied }
}

fn names(candidates: &[&Candidate]) -> String {
    let mut names: Vec<&str> = candidates.iter().map(|c| c.name.as_str()).collect();
    names.sort();
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use aim_api::common::{GpuRequirements, HardwareRequirements, Profile, ProfileMetadata};
    use proptest::prelude::*;

    fn cand(name: &str, gpu: Option<&str>, metric: Metric, precision: Precision) -> Candidate {
        Candidate {
            name: name.into(),
            scope: CandidateScope::Namespace,
            phase: Some(ResourcePhase::Ready),
            profile_type: Some(ProfileType::Optimized),
            gpu_model: gpu.map(Into::into),
            gpu_count: 1,
            metric: Some(metric),
            precision: Some(precision),
        }
    }

    fn request(gpus: &[&str]) -> SelectionRequest {
        SelectionRequest {
            cluster_gpu_models: gpus.iter().map(|g| g.to_string()).collect(),
            ..Default::default()
        }
    }

    fn selected(outcome: SelectionOutcome) -> String {
        match outcome {
            SelectionOutcome::Selected(c) => c.name,
            other => panic!("expected a selection, got {other:?}"),
        }
    }

    fn filtered(outcome: SelectionOutcome) -> String {
        match outcome {
            SelectionOutcome::AllFilteredOut { reason } => reason,
            other => panic!("expected AllFilteredOut, got {other:?}"),
        }
    }

    #[test]
    fn empty_and_not_ready() {
        assert_eq!(select(&[], &request(&[])), SelectionOutcome::NoCandidates);
        let mut c = cand("a", None, Metric::Latency, Precision::Fp8);
        c.phase = Some(ResourcePhase::Progressing);
        let mut d = c.clone();
        d.phase = None;
        assert_eq!(select(&[c, d], &request(&[])), SelectionOutcome::NoneReady);
        assert_eq!(SelectionOutcome::NoneReady.reason(), "TemplateNotReady");
        assert_eq!(
            SelectionOutcome::NoneReady.message(),
            "Templates exist but are not ready yet"
        );
    }

    #[test]
    fn unoptimized_needs_permission() {
        let mut c = cand("plain", None, Metric::Latency, Precision::Fp8);
        c.profile_type = None;
        let reason = filtered(select(std::slice::from_ref(&c), &request(&[])));
        assert!(reason.contains("allowUnoptimized is false"), "{reason}");
        assert!(reason.contains("plain"), "{reason}");
        let mut req = request(&[]);
        req.allow_unoptimized = true;
        assert_eq!(selected(select(&[c], &req)), "plain");
    }

    #[test]
    fn profile_type_ranks_first_when_unoptimized_allowed() {
        let mut preview = cand("preview", Some("MI355X"), Metric::Latency, Precision::Fp4);
        preview.profile_type = Some(ProfileType::Preview);
        let opt = cand("opt", Some("MI210"), Metric::Throughput, Precision::Fp32);
        let mut req = request(&["MI355X", "MI210"]);
        req.allow_unoptimized = true;
        assert_eq!(selected(select(&[preview, opt], &req)), "opt");
    }

    #[test]
    fn overrides_filter() {
        let a = cand("lat-fp8", Some("MI300X"), Metric::Latency, Precision::Fp8);
        let b = cand(
            "thr-fp16",
            Some("MI300X"),
            Metric::Throughput,
            Precision::Fp16,
        );
        let mut req = request(&["MI300X"]);
        req.overrides = Some(RuntimeParameters {
            metric: Some(Metric::Throughput),
            ..Default::default()
        });
        assert_eq!(selected(select(&[a.clone(), b.clone()], &req)), "thr-fp16");
        req.overrides = Some(RuntimeParameters {
            precision: Some(Precision::Bf16),
            ..Default::default()
        });
        let reason = filtered(select(&[a.clone(), b.clone()], &req));
        assert!(
            reason.contains("spec.overrides (precision=bf16)"),
            "{reason}"
        );
        assert!(reason.contains("lat-fp8, thr-fp16"), "{reason}");
    }

    #[test]
    fn gpu_overrides_compare_normalized_and_skip_unknowns() {
        let mut a = cand("a", Some("MI300X"), Metric::Latency, Precision::Fp8);
        a.gpu_count = 8;
        let mut cpu = cand("cpu", None, Metric::Latency, Precision::Fp8);
        cpu.gpu_count = 0;
        let mut req = request(&["MI300X"]);
        req.overrides = Some(RuntimeParameters {
            hardware: Some(HardwareRequirements {
                gpu: Some(GpuRequirements {
                    model: Some("Instinct MI300X".into()),
                    requests: Some(8),
                    ..Default::default()
                }),
                cpu: None,
            }),
            ..Default::default()
        });
        // The CPU candidate has no model and no count, so it is not excluded;
        // the MI300X one ranks first by GPU.
        assert_eq!(selected(select(&[cpu.clone(), a.clone()], &req)), "a");
        a.gpu_count = 4;
        assert_eq!(selected(select(&[cpu, a], &req)), "cpu");
    }

    #[test]
    fn absent_gpus_are_filtered_with_a_reason() {
        let a = cand("a", Some("MI355X"), Metric::Latency, Precision::Fp8);
        let reason = filtered(select(std::slice::from_ref(&a), &request(&["MI300X"])));
        assert!(reason.contains("required GPU is absent"), "{reason}");
        assert!(reason.contains("need MI355X"), "{reason}");
        assert!(reason.contains("the cluster has MI300X"), "{reason}");
        let reason = filtered(select(&[a], &request(&[])));
        assert!(reason.contains("no node has AMD GPU labels"), "{reason}");
    }

    #[test]
    fn fix17_newer_instinct_parts_rank_first() {
        let all = ["MI210", "MI250X", "MI300X", "MI325X", "MI350X", "MI355X"];
        let cands: Vec<Candidate> = all
            .iter()
            .map(|g| cand(g, Some(g), Metric::Latency, Precision::Fp8))
            .collect();
        assert_eq!(selected(select(&cands, &request(&all))), "MI355X");
        assert_eq!(selected(select(&cands[..5], &request(&all))), "MI350X");
        assert_eq!(selected(select(&cands[..4], &request(&all))), "MI325X");
        // An unlisted part ranks below MI210.
        let other = cand("mi100", Some("MI100"), Metric::Latency, Precision::Fp8);
        assert_eq!(
            selected(select(
                &[other, cands[0].clone()],
                &request(&["MI100", "MI210"])
            )),
            "MI210"
        );
    }

    #[test]
    fn metric_then_precision() {
        let a = cand(
            "thr-fp4",
            Some("MI300X"),
            Metric::Throughput,
            Precision::Fp4,
        );
        let b = cand("lat-fp32", Some("MI300X"), Metric::Latency, Precision::Fp32);
        let c = cand("lat-int4", Some("MI300X"), Metric::Latency, Precision::Int4);
        let d = cand("lat-fp4", Some("MI300X"), Metric::Latency, Precision::Fp4);
        let req = request(&["MI300X"]);
        assert_eq!(selected(select(&[a.clone(), b.clone()], &req)), "lat-fp32");
        assert_eq!(
            selected(select(&[a.clone(), b.clone(), c.clone()], &req)),
            "lat-int4"
        );
        assert_eq!(selected(select(&[a, b, c, d], &req)), "lat-fp4");
    }

    #[test]
    fn namespaced_candidates_shadow_cluster_ones() {
        let ns = cand("ns", Some("MI210"), Metric::Throughput, Precision::Fp32);
        let mut cl = cand("cl", Some("MI355X"), Metric::Latency, Precision::Fp4);
        cl.scope = CandidateScope::Cluster;
        let req = request(&["MI210", "MI355X"]);
        assert_eq!(selected(select(&[cl.clone(), ns.clone()], &req)), "ns");
        // A namespaced candidate that is filtered out does not shadow.
        let mut not_ready = ns;
        not_ready.phase = Some(ResourcePhase::Pending);
        assert_eq!(selected(select(&[cl, not_ready], &req)), "cl");
    }

    #[test]
    fn fix3_ties_are_reported_with_names() {
        let a = cand("b-tpl", Some("MI300X"), Metric::Latency, Precision::Fp8);
        let b = cand("a-tpl", Some("MI300X"), Metric::Latency, Precision::Fp8);
        let c = cand(
            "c-worse",
            Some("MI300X"),
            Metric::Throughput,
            Precision::Fp8,
        );
        let outcome = select(&[a, b, c], &request(&["MI300X"]));
        assert_eq!(
            outcome,
            SelectionOutcome::Ambiguous {
                candidates: vec!["a-tpl".into(), "b-tpl".into()]
            }
        );
        assert_eq!(outcome.reason(), "TemplateSelectionAmbiguous");
        assert!(
            outcome.message().contains("a-tpl, b-tpl"),
            "{}",
            outcome.message()
        );
    }

    #[test]
    fn fix4_default_template_wins_among_survivors() {
        let best = cand("best", Some("MI355X"), Metric::Latency, Precision::Fp4);
        let dflt = cand("dflt", Some("MI300X"), Metric::Throughput, Precision::Fp16);
        let mut req = request(&["MI355X", "MI300X"]);
        req.default_template = Some("dflt".into());
        assert_eq!(
            selected(select(&[best.clone(), dflt.clone()], &req)),
            "dflt"
        );
        // It breaks ties too.
        let twin = cand("twin", Some("MI300X"), Metric::Throughput, Precision::Fp16);
        assert_eq!(selected(select(&[twin, dflt.clone()], &req)), "dflt");
        // A default that did not survive the filters is ignored.
        let mut unready = dflt;
        unready.phase = Some(ResourcePhase::Failed);
        assert_eq!(selected(select(&[best.clone(), unready], &req)), "best");
        req.default_template = Some("missing".into());
        assert_eq!(selected(select(&[best], &req)), "best");
    }

    #[test]
    fn candidate_from_template_prefers_profile_metadata() {
        let mut t = AIMServiceTemplate::new(
            "tpl",
            AIMServiceTemplateSpec {
                model_name: "m".into(),
                metric: Some(Metric::Throughput),
                precision: Some(Precision::Fp16),
                hardware: Some(HardwareRequirements {
                    gpu: Some(GpuRequirements {
                        requests: Some(2),
                        ..Default::default()
                    }),
                    cpu: None,
                }),
                ..Default::default()
            },
        );
        let c = Candidate::from_template(&t);
        assert_eq!(c.name, "tpl");
        assert_eq!(c.scope, CandidateScope::Namespace);
        assert_eq!(c.phase, None);
        assert_eq!(c.profile_type, None);
        assert_eq!(c.gpu_model, None);
        assert_eq!(c.gpu_count, 2);
        assert_eq!(c.metric, Some(Metric::Throughput));
        t.status = Some(AIMServiceTemplateStatus {
            status: Some(ResourcePhase::Ready),
            profile: Some(Profile {
                metadata: Some(ProfileMetadata {
                    gpu: Some("MI300X".into()),
                    gpu_count: Some(4),
                    metric: Some(Metric::Latency),
                    precision: Some(Precision::Fp8),
                    type_: Some(ProfileType::Optimized),
                    engine: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let c = Candidate::from_template(&t);
        assert_eq!(c.phase, Some(ResourcePhase::Ready));
        assert_eq!(c.profile_type, Some(ProfileType::Optimized));
        assert_eq!(c.gpu_model.as_deref(), Some("MI300X"));
        assert_eq!(c.gpu_count, 4);
        assert_eq!(c.metric, Some(Metric::Latency));
        assert_eq!(c.precision, Some(Precision::Fp8));

        // The spec's GPU model wins over the profile's, as in AIM Engine.
        let mut spec = t.spec.clone();
        spec.hardware.as_mut().unwrap().gpu.as_mut().unwrap().model = Some("MI325X".into());
        let cl = AIMClusterServiceTemplate {
            metadata: t.metadata.clone(),
            spec,
            status: t.status.clone(),
        };
        let c = Candidate::from_cluster_template(&cl);
        assert_eq!(c.scope, CandidateScope::Cluster);
        assert_eq!(c.gpu_model.as_deref(), Some("MI325X"));
    }

    fn arb_candidate() -> impl Strategy<Value = Candidate> {
        (
            "[a-e]",
            any::<bool>(),
            prop::sample::select(vec![
                Some(ResourcePhase::Ready),
                Some(ResourcePhase::Pending),
                None,
            ]),
            prop::sample::select(vec![
                Some(ProfileType::Optimized),
                Some(ProfileType::Preview),
                None,
            ]),
            prop::sample::select(vec![None, Some("MI300X"), Some("MI355X"), Some("MI210")]),
            prop::sample::select(vec![Metric::Latency, Metric::Throughput]),
            prop::sample::select(vec![Precision::Fp8, Precision::Fp16]),
        )
            .prop_map(
                |(name, cluster, phase, ty, gpu, metric, precision)| Candidate {
                    name,
                    scope: if cluster {
                        CandidateScope::Cluster
                    } else {
                        CandidateScope::Namespace
                    },
                    phase,
                    profile_type: ty,
                    gpu_model: gpu.map(Into::into),
                    gpu_count: 1,
                    metric: Some(metric),
                    precision: Some(precision),
                },
            )
    }

    proptest! {
        #[test]
        fn selection_is_order_independent_and_sound(
            mut cands in proptest::collection::vec(arb_candidate(), 0..8),
            allow in any::<bool>(),
        ) {
            let req = SelectionRequest {
                allow_unoptimized: allow,
                cluster_gpu_models: ["MI300X".to_string(), "MI210".to_string()].into(),
                ..Default::default()
            };
            let forward = select(&cands, &req);
            cands.reverse();
            let backward = select(&cands, &req);
            match (&forward, &backward) {
                (SelectionOutcome::Selected(a), SelectionOutcome::Selected(b)) => {
                    prop_assert_eq!(a.rank(), b.rank());
                    prop_assert_eq!(&a.name, &b.name);
                    prop_assert!(a.is_ready());
                    prop_assert!(allow || a.is_optimized());
                    prop_assert!(a.gpu_model.as_deref() != Some("MI355X"));
                    // Nothing eligible outranks the winner.
                    for c in &cands {
                        if c.is_ready() && (allow || c.is_optimized())
                            && c.gpu_model.as_deref() != Some("MI355X") && c.scope == a.scope {
                            prop_assert!(c.rank() >= a.rank());
                        }
                    }
                }
                _ => prop_assert_eq!(forward, backward),
            }
        }
    }
}
