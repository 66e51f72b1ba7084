//! The AIMService planner: what the controller observed in, the children to
//! apply, the component healths and the status fields out. Pure.

use std::collections::BTreeMap;

use aim_api::AIMService;
use aim_api::common::{ResolvedReference, Scope};
use aim_api::model::AIMModelSpec;
use aim_api::runtime_config::RuntimeConfigSpec;
use aim_api::service::{CacheMode, ServiceCacheStatus, ServiceRoutingStatus, ServiceRuntimeStatus};
use aim_api::status::ResourcePhase;
use aim_rules::selection::{self, CandidateScope, SelectionOutcome as Outcome, SelectionRequest};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Event, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde_json::{Value, json};

use super::health;
use super::render::{self, IsvcInputs};
use super::scaling;
use super::view::{ModelView, TemplateView};
use crate::state::{ComponentState, ErrorCategory, Health};

/// The runtime config lookup for the service.
#[derive(Clone, Debug)]
pub enum ConfigLookup {
    /// Merged cluster + namespace config, and what it resolved to.
    Found(Box<RuntimeConfigSpec>, ResolvedReference),
    /// `default` was asked for and neither scope has it: that is fine.
    NoDefault,
    /// A named config that exists in neither scope.
    Missing(String),
}

/// How the model was looked up, by the selector the spec uses.
#[derive(Clone, Debug)]
pub enum ModelLookup {
    /// `model.name`: what the namespace, then the cluster, had.
    ByName {
        name: String,
        found: Option<Box<ModelView>>,
    },
    /// `model.image` or `model.custom`: every matching model.
    ByMatch { matches: Vec<ModelView> },
}

/// Templates the controller fetched for the service.
#[derive(Clone, Debug, Default)]
pub struct TemplateLookup {
    /// With `template.name`: the namespaced template of the looked-up name
    /// (the derived name when overrides apply, else the base name).
    pub explicit_derived: Option<TemplateView>,
    /// With `template.name`: the base template, namespace first.
    pub explicit_base: Option<TemplateView>,
    /// Without `template.name`: every template of the model, both scopes.
    pub candidates: Vec<TemplateView>,
}

/// Everything observed for one service.
pub struct Observed<'a> {
    pub service: &'a AIMService,
    pub config: ConfigLookup,
    pub model: ModelLookup,
    pub templates: TemplateLookup,
    /// GPU models present in the cluster (normalized), for selection.
    pub cluster_gpu_models: std::collections::BTreeSet<String>,
    pub isvc: Option<Value>,
    pub isvc_events: Vec<Event>,
    pub pods: Vec<Pod>,
    pub pod_events: Vec<Event>,
    pub hpa: Option<HorizontalPodAutoscaler>,
    /// KServe's ScaledObject `<isvc>-predictor`, when autoscaling.
    pub scaled_object: Option<Value>,
    /// What the service's Prometheus queries return now.
    pub prometheus: Vec<super::prometheus::Probe>,
    pub route: Option<Value>,
    pub cache: Option<CacheView>,
    /// KServe's autoscaler settings and the scaler address metrics that
    /// name none are sent to.
    pub kserve: aim_scaling::KServeAutoscaler,
    pub now: Timestamp,
}

/// The template cache the service uses, as observed.
#[derive(Clone, Debug)]
pub struct CacheView {
    pub name: String,
    pub uid: Option<String>,
    pub phase: Option<ResourcePhase>,
    /// The cache's `Ready` message: what failed, when it did.
    pub message: String,
    /// (volume name, claim, mount path) of every Ready artifact.
    pub volumes: Vec<(String, String, String)>,
    /// The cache's artifacts that are Failed right now: what a retry
    /// recreates.
    pub failed_artifacts: Vec<String>,
}

/// What the controller should do and write.
#[derive(Debug, Default)]
pub struct Plan {
    pub healths: Vec<Health>,
    /// Children applied with the service as controller owner.
    pub owned: Vec<Value>,
    /// Objects applied without an owner: shared models and caches.
    pub unowned: Vec<Value>,
    /// Owned children to delete: (apiVersion, kind, name).
    pub delete: Vec<(String, String, String)>,
    pub resolved_model: Option<ResolvedReference>,
    pub resolved_template: Option<ResolvedReference>,
    pub resolved_runtime_config: Option<ResolvedReference>,
    pub routing: Option<ServiceRoutingStatus>,
    pub runtime: Option<ServiceRuntimeStatus>,
    pub cache: Option<ServiceCacheStatus>,
    /// A merge patch for the live ScaledObject (name, patch): the pause
    /// switch, flipped.
    pub scaled_object_patch: Option<(String, Value)>,
    /// A scale decision of the HPA's since the last status, to publish.
    pub scale_decision: Option<scaling::ScaleDecision>,
}

pub fn plan(obs: &Observed<'_>) -> Plan {
    let svc = obs.service;
    let ns = svc.namespace().unwrap_or_default();
    let mut plan = Plan::default();

    // Runtime config: cluster, then namespace, then the service's inline fields.
    let merged = match &obs.config {
        ConfigLookup::Found(spec, reference) => {
            plan.resolved_runtime_config = Some(reference.clone());
            plan.healths.push(
                Health::ready(
                    "RuntimeConfig",
                    "RuntimeConfigResolved",
                    format!(
                        "Runtime config {} resolved",
                        reference.name.clone().unwrap_or_default()
                    ),
                )
                .upstream(),
            );
            (**spec).clone()
        }
        ConfigLookup::NoDefault => RuntimeConfigSpec::default(),
        ConfigLookup::Missing(name) => {
            plan.healths.push(
                Health::new(
                    "RuntimeConfig",
                    ComponentState::Failed,
                    "ConfigNotFound",
                    format!(
                        "RuntimeConfig {name} not found: spec.runtimeConfigName names neither an AIMRuntimeConfig in namespace {ns} nor an AIMClusterRuntimeConfig; create it or remove the field"
                    ),
                )
                .upstream()
                .because(ErrorCategory::MissingUpstream),
            );
            RuntimeConfigSpec::default()
        }
    };
    let config = aim_rules::runtime_config::apply_service_inline(merged, &svc.spec);
    let propagated =
        aim_rules::labels::propagated_labels(svc.labels(), config.label_propagation.as_ref());

    let isvc_name = match aim_rules::naming::isvc_name(&svc.name_any(), &ns) {
        Ok(n) => n,
        Err(e) => {
            plan.healths.push(
                Health::new(
                    "InferenceService",
                    ComponentState::Failed,
                    "InvalidName",
                    e.to_string(),
                )
                .because(ErrorCategory::InvalidSpec),
            );
            return plan;
        }
    };

    let model = resolve_model(obs, &ns, &propagated, &mut plan);
    let template = model
        .as_ref()
        .and_then(|m| resolve_template(obs, m, &ns, &propagated, &mut plan));

    // Cache: only templates with model sources need one.
    let cache_ready = match &template {
        Some(t) if t.phase() == Some(ResourcePhase::Ready) => {
            cache_health(obs, t, &config, &ns, &mut plan)
        }
        Some(_) => {
            plan.healths.push(
                Health::new(
                    "Cache",
                    ComponentState::Pending,
                    "AwaitingTemplate",
                    "Waiting for the template to become ready",
                )
                .upstream(),
            );
            false
        }
        None => {
            plan.healths.push(
                Health::new(
                    "Cache",
                    ComponentState::Pending,
                    "AwaitingTemplate",
                    "Waiting for a template",
                )
                .upstream(),
            );
            false
        }
    };

    // The InferenceService: created once model, template and cache are
    // ready; kept up to date while the template stays ready.
    let model_ready = model
        .as_ref()
        .is_some_and(|m| m.phase == Some(ResourcePhase::Ready));
    let template_ready = template
        .as_ref()
        .is_some_and(|t| t.phase() == Some(ResourcePhase::Ready));
    let replicas = render::replicas(svc);
    let paused = if replicas.autoscaling {
        match scaling::paused(svc.annotations(), config.autoscaling.as_ref()) {
            Ok(p) => Some(p),
            Err(message) => {
                plan.healths.push(scaling::invalid_pause_health(message));
                None
            }
        }
    } else {
        Some(false)
    };
    // The one translation of the service's scaling, shared with the lab.
    // A field that cannot be deployed stops every write of the service's
    // InferenceService and ScaledObject until it is fixed: what runs keeps
    // running as it was.
    let translated = aim_scaling::plan(&aim_scaling::ServiceScaling {
        spec: &svc.spec,
        namespace: &ns,
        isvc_name: &isvc_name,
        paused: paused.unwrap_or(false),
        kserve: &obs.kserve,
        routed: config
            .routing
            .as_ref()
            .is_some_and(|r| r.enabled == Some(true) && r.gateway_ref.is_some()),
    });
    let translated = match translated {
        Ok(t) => Some(t),
        Err(e) => {
            plan.healths.push(scaling::invalid_scaling_health(&e));
            None
        }
    };
    let handover = translated
        .as_ref()
        .map(|t| scaling::handover(t, obs.isvc.as_ref(), obs.scaled_object.as_ref()));
    let may_render = template_ready && (obs.isvc.is_some() || (model_ready && cache_ready));
    if let (true, Some(model), Some(template), Some(translated), Some(handover)) =
        (may_render, &model, &template, &translated, &handover)
    {
        let env = aim_rules::env::inference_env(&config.env, &template.spec, &svc.spec.env);
        let volumes = if obs.isvc.is_some() && !cache_ready {
            existing_cache_volumes(obs.isvc.as_ref())
        } else {
            obs.cache
                .as_ref()
                .map(|c| c.volumes.clone())
                .unwrap_or_default()
        };
        let isvc = render::inference_service(&IsvcInputs {
            service: svc,
            isvc_name: &isvc_name,
            model,
            template,
            runtime_config: &config,
            propagated_labels: propagated.clone(),
            scaling: translated,
            autoscaler_class: handover.autoscaler_class,
            cache_volumes: volumes,
            env,
            autoscaling_paused: paused.unwrap_or(false),
        });
        plan.owned.push(isvc);
        if let Some(so) = &handover.apply {
            let mut so = serde_json::to_value(so).expect("a ScaledObject serialises");
            so["metadata"]["labels"] = serde_json::json!(propagated);
            plan.owned.push(so);
        }
    }
    if let Some(name) = handover.as_ref().and_then(|h| h.delete.clone()) {
        plan.delete.push((
            aim_scaling::scaled_object::API_VERSION.into(),
            aim_scaling::scaled_object::KIND.into(),
            name,
        ));
    }
    plan.healths
        .push(health::isvc_health(obs.isvc.as_ref(), &obs.isvc_events));
    if obs.isvc.is_some() {
        plan.healths
            .push(health::pods_health(&obs.pods, &obs.pod_events));
    }
    let isvc_ready = obs
        .isvc
        .as_ref()
        .and_then(|i| health::condition_of(i, "Ready"))
        .is_some_and(|(s, _, _)| s == "True");

    let svc_ref = format!("{ns}/{}", svc.name_any());
    match (replicas.autoscaling, paused) {
        (true, Some(true)) => {
            plan.healths
                .push(scaling::paused_health(obs.scaled_object.as_ref(), &svc_ref));
            plan.runtime = Some(scaling::paused_runtime(
                &obs.pods,
                replicas.min,
                replicas.max,
            ));
        }
        // The pause switch is unreadable: its InvalidAnnotation health
        // speaks for the HPA component this round.
        (true, None) => {
            plan.runtime = Some(health::runtime_status(obs.hpa.as_ref(), &replicas));
        }
        (true, Some(false)) => {
            let ready_for = isvc_ready.then(|| ready_for(obs.isvc.as_ref(), obs.now));
            let metricless = obs
                .hpa
                .as_ref()
                .zip(obs.scaled_object.as_ref())
                .and_then(|(hpa, so)| Some((hpa, scaling::missing_hpa_metrics(hpa, so)?)));
            match metricless {
                Some((hpa, why)) => {
                    // KEDA rebuilds a deleted HPA from the scaler's answers
                    // of the moment; a rebuilt one gets time to be right.
                    let age = hpa
                        .metadata
                        .creation_timestamp
                        .as_ref()
                        .and_then(|t| obs.now.duration_since(t.0).try_into().ok())
                        .unwrap_or(std::time::Duration::ZERO);
                    let rebuild = age >= scaling::METRICLESS_HPA_REBUILD_AFTER;
                    if rebuild {
                        plan.delete.push((
                            "autoscaling/v2".into(),
                            "HorizontalPodAutoscaler".into(),
                            hpa.name_any(),
                        ));
                    }
                    plan.healths.push(Health::new(
                        "HPA",
                        ComponentState::Degraded,
                        "HPAWithoutMetrics",
                        format!(
                            "{why}. The operator deletes the HPA so that KEDA rebuilds it, \
                             every {} s until the metrics are there{}",
                            scaling::METRICLESS_HPA_REBUILD_AFTER.as_secs(),
                            if rebuild { " (deleting it now)" } else { "" }
                        ),
                    ));
                }
                None => plan
                    .healths
                    .push(health::hpa_health(obs.hpa.as_ref(), ready_for.flatten())),
            }
            plan.runtime = Some(health::runtime_status(obs.hpa.as_ref(), &replicas));
            plan.scale_decision = scaling::scale_decision(
                svc.status.as_ref().and_then(|s| s.runtime.as_ref()),
                obs.hpa.as_ref(),
            );
        }
        (false, _) => {
            plan.runtime = Some(health::runtime_status(None, &replicas));
        }
    }
    // The Prometheus backend, checked whether or not scaling is paused: a
    // query that cannot work should be known before it is resumed.
    let ready_for = isvc_ready
        .then(|| ready_for(obs.isvc.as_ref(), obs.now))
        .flatten();
    plan.healths
        .extend(super::prometheus::health(&obs.prometheus, ready_for));
    // KServe's ScaledObject takes the pause switch by merge patch; the
    // operator's own carries it in what is applied.
    let kserve_owned = translated
        .as_ref()
        .and_then(|t| t.autoscaled())
        .is_some_and(|a| a.owner == aim_scaling::Owner::KServe);
    if let Some(p) = paused
        && kserve_owned
        && let Some(patch) = scaling::scaled_object_patch(obs.scaled_object.as_ref(), p)
    {
        plan.scaled_object_patch = Some((format!("{isvc_name}-predictor"), patch));
    }

    plan_route(obs, &config, &isvc_name, &propagated, &mut plan);
    plan
}

/// How long the InferenceService has been Ready. A Ready condition without
/// a readable transition time counts as Ready for long.
fn ready_for(isvc: Option<&Value>, now: Timestamp) -> Option<std::time::Duration> {
    let since = isvc?
        .pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?
        .get("lastTransitionTime")
        .and_then(Value::as_str)
        .and_then(|t| t.parse::<Timestamp>().ok());
    let Some(since) = since else {
        return Some(std::time::Duration::MAX);
    };
    Some(
        std::time::Duration::try_from(now.duration_since(since))
            .unwrap_or(std::time::Duration::ZERO),
    )
}

fn resolve_model(
    obs: &Observed<'_>,
    ns: &str,
    propagated: &BTreeMap<String, String>,
    plan: &mut Plan,
) -> Option<ModelView> {
    let svc = obs.service;
    let found = match &obs.model {
        ModelLookup::ByName { name, found } => match found {
            Some(m) => Some((**m).clone()),
            None => {
                plan.healths.push(
                    Health::new(
                        "Model",
                        ComponentState::Failed,
                        "ModelNotFound",
                        format!(
                            "model \"{name}\" not found in namespace {ns} or cluster scope: create an AIMModel or AIMClusterModel named {name}, or fix spec.model.name"
                        ),
                    )
                    .upstream()
                    .because(ErrorCategory::MissingUpstream),
                );
                return None;
            }
        },
        ModelLookup::ByMatch { matches } => {
            // A namespaced match shadows cluster ones, as for names.
            let namespaced: Vec<&ModelView> = matches
                .iter()
                .filter(|m| m.scope == Scope::Namespace)
                .collect();
            let pool: Vec<&ModelView> = if namespaced.is_empty() {
                matches.iter().collect()
            } else {
                namespaced
            };
            match pool.as_slice() {
                [] => None,
                [one] => Some((*one).clone()),
                many => {
                    let names: Vec<String> = many
                        .iter()
                        .map(|m| format!("{}/{}", m.kind(), m.name))
                        .collect();
                    plan.healths.push(
                        Health::new(
                            "Model",
                            ComponentState::Failed,
                            "ModelAmbiguous",
                            format!(
                                "several models serve this image: {}; name one with spec.model.name",
                                names.join(", ")
                            ),
                        )
                        .upstream()
                        .because(ErrorCategory::InvalidSpec),
                    );
                    return None;
                }
            }
        }
    };
    let Some(model) = found else {
        // Nothing matched: create a namespaced model, shared (no owner).
        match auto_model(svc, ns, propagated) {
            Ok((object, message)) => {
                plan.unowned.push(object);
                plan.healths.push(Health::new(
                    "Model",
                    ComponentState::Pending,
                    "CreatingModel",
                    message,
                ));
            }
            Err(message) => plan.healths.push(
                Health::new(
                    "Model",
                    ComponentState::Failed,
                    "InvalidImageReference",
                    message,
                )
                .because(ErrorCategory::InvalidSpec),
            ),
        }
        return None;
    };
    let health = match model.phase {
        Some(ResourcePhase::Ready) => {
            plan.resolved_model = Some(model.reference());
            Health::ready(
                "Model",
                "ModelResolved",
                format!("{} {} is ready", model.kind(), model.name),
            )
        }
        Some(ResourcePhase::Failed | ResourcePhase::Degraded) => Health::new(
            "Model",
            ComponentState::Failed,
            "ModelNotReady",
            format!("{} {} is in failed state", model.kind(), model.name),
        )
        .upstream(),
        _ => Health::new(
            "Model",
            ComponentState::Progressing,
            "ModelNotReady",
            format!("{} {} is not ready yet", model.kind(), model.name),
        )
        .upstream(),
    };
    plan.healths.push(health);
    Some(model)
}

/// The AIMModel a service creates for `model.image` or `model.custom`.
fn auto_model(
    svc: &AIMService,
    ns: &str,
    propagated: &BTreeMap<String, String>,
) -> Result<(Value, String), String> {
    let spec = &svc.spec;
    let mut labels = propagated.clone();
    labels.insert("aim.eai.amd.com/origin".into(), "auto-generated".into());
    let (name, model_spec, message) = if let Some(image) = &spec.model.image {
        let image = image.trim();
        let name = aim_rules::naming::image_model_name(image).map_err(|e| {
            format!("spec.model.image {image:?} is not a valid image reference: {e}")
        })?;
        let model_spec = AIMModelSpec {
            image: image.to_string(),
            runtime_config_name: spec.runtime_config_name.clone(),
            image_pull_secrets: spec.image_pull_secrets.clone(),
            service_account_name: spec.service_account_name.clone(),
            ..Default::default()
        };
        (
            name,
            model_spec,
            format!("Model will be created for image {image}"),
        )
    } else if let Some(custom) = &spec.model.custom {
        let name = aim_rules::naming::custom_model_name(custom)
            .map_err(|e| format!("spec.model.custom: {e}"))?;
        labels.insert("aim.eai.amd.com/custom-model".into(), "true".into());
        labels.insert("aim.eai.amd.com/service".into(), svc.name_any());
        let model_spec = AIMModelSpec {
            image: custom.base_image.clone(),
            model_sources: custom.model_sources.clone(),
            custom: Some(aim_api::model::ModelCustomization {
                hardware: Some(custom.hardware.clone()),
                type_: None,
            }),
            runtime_config_name: spec.runtime_config_name.clone(),
            image_pull_secrets: spec.image_pull_secrets.clone(),
            service_account_name: spec.service_account_name.clone(),
            env: spec.env.clone(),
            ..Default::default()
        };
        let id = custom
            .model_sources
            .first()
            .map(|s| s.model_id.clone())
            .unwrap_or_default();
        (
            name,
            model_spec,
            format!("Custom model will be created for {id}"),
        )
    } else {
        return Err("spec.model names no model".into());
    };
    let object = json!({
        "apiVersion": aim_api::API_VERSION,
        "kind": "AIMModel",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": model_spec,
    });
    Ok((object, message))
}

fn resolve_template(
    obs: &Observed<'_>,
    model: &ModelView,
    ns: &str,
    propagated: &BTreeMap<String, String>,
    plan: &mut Plan,
) -> Option<TemplateView> {
    let svc = obs.service;
    let spec = &svc.spec;
    let overrides = spec
        .overrides
        .as_ref()
        .filter(|o| o.metric.is_some() || o.precision.is_some() || o.hardware.is_some());
    let explicit = spec.template.as_ref().and_then(|t| t.name.clone());

    let chosen: TemplateView = if let Some(name) = explicit {
        // With overrides the service runs a derived template; it is created
        // from the named base when it does not exist yet (AIM Engine looks the
        // derived name up, finds nothing and waits forever).
        if let Some(derived) = &obs.templates.explicit_derived {
            derived.clone()
        } else if let Some(base) = &obs.templates.explicit_base {
            if let Some(o) = overrides {
                if base.phase() == Some(ResourcePhase::Ready) {
                    plan.owned
                        .push(derived_template(svc, base, model, o, ns, propagated));
                }
                plan.healths.push(
                    Health::new(
                        "Template",
                        ComponentState::Progressing,
                        "CreatingDerivedTemplate",
                        format!(
                            "Deriving a template from {} {} with the service's overrides",
                            base.kind(),
                            base.name
                        ),
                    )
                    .upstream(),
                );
                return None;
            }
            base.clone()
        } else {
            plan.healths.push(
                Health::new(
                    "Template",
                    ComponentState::Failed,
                    "TemplateNotFound",
                    format!(
                        "template \"{name}\" not found: create an AIMServiceTemplate in namespace {ns} or an AIMClusterServiceTemplate named {name}, or fix spec.template.name"
                    ),
                )
                .upstream()
                .because(ErrorCategory::MissingUpstream),
            );
            return None;
        }
    } else {
        let request = SelectionRequest {
            // A custom model's templates are the user's own and unoptimized by
            // definition; refusing them would make `model.custom` need a flag.
            allow_unoptimized: spec
                .template
                .as_ref()
                .and_then(|t| t.allow_unoptimized)
                .unwrap_or(spec.model.custom.is_some()),
            overrides: overrides.cloned(),
            cluster_gpu_models: obs.cluster_gpu_models.clone(),
            default_template: model.spec.default_service_template.clone(),
        };
        let candidates: Vec<selection::Candidate> =
            obs.templates.candidates.iter().map(candidate_of).collect();
        match selection::select(&candidates, &request) {
            Outcome::Selected(c) => {
                let found = obs
                    .templates
                    .candidates
                    .iter()
                    .find(|t| t.name == c.name && scope_matches(t, &c));
                match found {
                    Some(t) => {
                        // Overrides on an auto-selected namespaced template
                        // derive one, like AIM Engine.
                        if let Some(o) = overrides
                            && t.scope == Scope::Namespace
                            && t.labels.get("aim.eai.amd.com/origin").map(String::as_str)
                                != Some("derived")
                            && let Some(derived_name) =
                                aim_rules::naming::derived_template_name(&t.name, o)
                        {
                            if let Some(d) = obs
                                .templates
                                .candidates
                                .iter()
                                .find(|d| d.name == derived_name)
                            {
                                d.clone()
                            } else {
                                plan.owned
                                    .push(derived_template(svc, t, model, o, ns, propagated));
                                plan.healths.push(
                                    Health::new(
                                        "Template",
                                        ComponentState::Progressing,
                                        "CreatingDerivedTemplate",
                                        format!("Deriving {derived_name} from {}", t.name),
                                    )
                                    .upstream(),
                                );
                                return None;
                            }
                        } else {
                            t.clone()
                        }
                    }
                    None => return None,
                }
            }
            Outcome::NoCandidates => {
                plan.healths.push(
                    Health::new(
                        "Template",
                        ComponentState::Pending,
                        "TemplateNotFound",
                        format!("No template exists for model {} yet", model.name),
                    )
                    .upstream(),
                );
                return None;
            }
            Outcome::NoneReady => {
                plan.healths.push(
                    Health::new(
                        "Template",
                        ComponentState::Progressing,
                        "TemplateNotReady",
                        "Templates exist but are not ready yet",
                    )
                    .upstream(),
                );
                return None;
            }
            Outcome::AllFilteredOut { reason } => {
                plan.healths.push(
                    Health::new(
                        "Template",
                        ComponentState::Pending,
                        "TemplateNotFound",
                        reason,
                    )
                    .upstream(),
                );
                return None;
            }
            Outcome::Ambiguous { candidates } => {
                plan.healths.push(
                    Health::new(
                        "Template",
                        ComponentState::Failed,
                        "TemplateSelectionAmbiguous",
                        format!(
                            "templates rank equally: {}; name one in spec.template.name, or set spec.overrides to narrow the choice",
                            candidates.join(", ")
                        ),
                    )
                    .upstream()
                    .because(ErrorCategory::InvalidSpec),
                );
                return None;
            }
        }
    };

    let health = match chosen.phase() {
        Some(ResourcePhase::Ready) => {
            plan.resolved_template = Some(chosen.reference());
            Health::ready(
                "Template",
                "Resolved",
                format!("{} {} is ready", chosen.kind(), chosen.name),
            )
        }
        Some(ResourcePhase::NotAvailable) => Health::new(
            "Template",
            ComponentState::Pending,
            "TemplateNotAvailable",
            format!(
                "{} {} is not available: the cluster has no node with the GPUs it needs ({})",
                chosen.kind(),
                chosen.name,
                chosen
                    .status
                    .as_ref()
                    .and_then(|s| s.hardware_summary.clone())
                    .unwrap_or_else(|| "unknown hardware".into())
            ),
        )
        .upstream(),
        Some(ResourcePhase::Failed | ResourcePhase::Degraded) => Health::new(
            "Template",
            ComponentState::Failed,
            "TemplateNotReady",
            format!("{} {} is in failed state", chosen.kind(), chosen.name),
        )
        .upstream(),
        _ => Health::new(
            "Template",
            ComponentState::Progressing,
            "TemplateNotReady",
            format!("{} {} is not ready yet", chosen.kind(), chosen.name),
        )
        .upstream(),
    };
    plan.healths.push(health);
    Some(chosen)
}

fn scope_matches(t: &TemplateView, c: &selection::Candidate) -> bool {
    (t.scope == Scope::Cluster) == (c.scope == CandidateScope::Cluster)
}

fn candidate_of(t: &TemplateView) -> selection::Candidate {
    let scope = if t.scope == Scope::Cluster {
        CandidateScope::Cluster
    } else {
        CandidateScope::Namespace
    };
    selection::Candidate::from_parts(&t.name, scope, &t.spec, t.status.as_ref())
}

/// A namespaced copy of `base` with the service's overrides, owned by the
/// service.
fn derived_template(
    svc: &AIMService,
    base: &TemplateView,
    model: &ModelView,
    overrides: &aim_api::common::RuntimeParameters,
    ns: &str,
    propagated: &BTreeMap<String, String>,
) -> Value {
    let name = aim_rules::naming::derived_template_name(&base.name, overrides)
        .unwrap_or_else(|| base.name.clone());
    let mut spec = base.spec.clone();
    if spec.model_name.is_empty() {
        spec.model_name = model.name.clone();
    }
    spec.runtime_config_name = svc
        .spec
        .runtime_config_name
        .clone()
        .or(spec.runtime_config_name)
        .or(Some("default".into()));
    if overrides.metric.is_some() {
        spec.metric = overrides.metric;
    }
    if overrides.precision.is_some() {
        spec.precision = overrides.precision;
    }
    if overrides.hardware.is_some() {
        spec.hardware = overrides.hardware.clone();
    }
    if !svc.spec.image_pull_secrets.is_empty() {
        spec.image_pull_secrets = svc.spec.image_pull_secrets.clone();
    }
    if svc.spec.resources.is_some() {
        spec.resources = svc.spec.resources.clone();
    }
    if svc.spec.cache_mode() == CacheMode::Shared {
        spec.caching = Some(aim_api::template::TemplateCaching {
            enabled: Some(true),
            env: Vec::new(),
        });
    }
    // A cluster template names a cluster model; the derived template lives
    // in the namespace, so it must name a model it can see.
    if base.scope == Scope::Cluster {
        spec.model_name = model.name.clone();
    }
    let mut labels = propagated.clone();
    labels.insert("app.kubernetes.io/managed-by".into(), "aim-engine".into());
    labels.insert("aim.eai.amd.com/origin".into(), "derived".into());
    json!({
        "apiVersion": aim_api::API_VERSION,
        "kind": "AIMServiceTemplate",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": spec,
    })
}

/// How often a service recreates a failed template cache before it gives up
/// and reports Degraded.
pub const MAX_CACHE_RETRIES: i32 = 1;

/// The cache component. Templates without model sources need no cache
/// (AIM Engine would wait forever); the others wait for a Ready
/// AIMTemplateCache, planned here when missing.
fn cache_health(
    obs: &Observed<'_>,
    template: &TemplateView,
    config: &RuntimeConfigSpec,
    ns: &str,
    plan: &mut Plan,
) -> bool {
    let svc = obs.service;
    if template.model_sources().is_empty() {
        plan.healths.push(Health::ready(
            "Cache",
            "NoCacheRequired",
            "The template has no model sources to cache",
        ));
        return true;
    }
    match &obs.cache {
        Some(cache) if cache.phase == Some(ResourcePhase::Ready) => {
            plan.cache = Some(ServiceCacheStatus {
                template_cache_ref: Some(ResolvedReference {
                    name: Some(cache.name.clone()),
                    namespace: Some(ns.to_string()),
                    uid: cache.uid.clone(),
                    ..Default::default()
                }),
                retry_attempts: svc
                    .status
                    .as_ref()
                    .and_then(|s| s.cache.as_ref())
                    .and_then(|c| c.retry_attempts),
            });
            plan.healths.push(Health::ready(
                "Cache",
                "CacheReady",
                "Template cache is ready",
            ));
            true
        }
        Some(cache) if cache.phase == Some(ResourcePhase::Failed) => {
            // One retry per service, as AIM Engine's types promise and its code
            // never does. The retry recreates the
            // failed artifacts, not the cache: a Shared cache may serve
            // other services, which must not lose it (or their Ready
            // artifacts) because this one retries. The cache controller
            // recreates the deleted artifacts fresh.
            let attempts = svc
                .status
                .as_ref()
                .and_then(|s| s.cache.as_ref())
                .and_then(|c| c.retry_attempts)
                .unwrap_or(0);
            let why = if cache.message.is_empty() {
                String::new()
            } else {
                format!(": {}", cache.message)
            };
            // A Dedicated cache is this service's alone, so when it failed
            // for a reason other than its artifacts it is recreated whole.
            let retry: Option<(&str, Vec<String>, String)> = if !cache.failed_artifacts.is_empty() {
                Some((
                    "AIMArtifact",
                    cache.failed_artifacts.clone(),
                    format!(
                        "recreating its failed AIMArtifact {}",
                        cache.failed_artifacts.join(", ")
                    ),
                ))
            } else if svc.spec.cache_mode() == CacheMode::Dedicated {
                Some((
                    "AIMTemplateCache",
                    vec![cache.name.clone()],
                    "recreating it".to_string(),
                ))
            } else {
                None
            };
            if let (true, Some((kind, targets, what))) = (attempts < MAX_CACHE_RETRIES, &retry) {
                for target in targets {
                    plan.delete.push((
                        aim_api::API_VERSION.into(),
                        kind.to_string(),
                        target.clone(),
                    ));
                }
                plan.cache = Some(ServiceCacheStatus {
                    template_cache_ref: None,
                    retry_attempts: Some(attempts + 1),
                });
                plan.healths.push(Health::new(
                    "Cache",
                    ComponentState::Progressing,
                    "CacheRetrying",
                    format!(
                        "Template cache {} failed{why}; {what} (retry {} of {MAX_CACHE_RETRIES})",
                        cache.name,
                        attempts + 1
                    ),
                ));
            } else if retry.is_none() {
                plan.healths.push(Health::new(
                    "Cache",
                    ComponentState::Degraded,
                    "CacheFailed",
                    format!(
                        "Shared template cache {} failed{why}; it has no failed artifact to retry and other services may use it, so it is left as is. Fix the cause, then delete AIMTemplateCache {} to try again",
                        cache.name, cache.name
                    ),
                ));
            } else {
                plan.healths.push(Health::new(
                    "Cache",
                    ComponentState::Degraded,
                    "CacheFailed",
                    format!(
                        "Template cache {} failed again after {attempts} retry{why}. Fix the model source, its credentials (env) or the storage settings, then delete AIMTemplateCache {} to try again",
                        cache.name, cache.name
                    ),
                ));
            }
            false
        }
        Some(cache) => {
            // A degraded cache (e.g. a stalled download) degrades the
            // service too, with the cache's own words on why.
            let degraded = matches!(
                cache.phase,
                Some(ResourcePhase::Degraded | ResourcePhase::NotAvailable)
            );
            let why = if cache.message.is_empty() {
                String::new()
            } else {
                format!(": {}", cache.message)
            };
            plan.healths.push(Health::new(
                "Cache",
                if degraded {
                    ComponentState::Degraded
                } else {
                    ComponentState::Progressing
                },
                if degraded {
                    "CacheDegraded"
                } else {
                    "CacheNotReady"
                },
                format!(
                    "Template cache {} is {}{why}",
                    cache.name,
                    cache
                        .phase
                        .map(|p| format!("{p:?}"))
                        .unwrap_or_else(|| "Pending".into())
                ),
            ));
            false
        }
        None => {
            plan_cache(svc, template, config, ns, plan);
            plan.healths.push(Health::new(
                "Cache",
                ComponentState::Progressing,
                "CacheCreating",
                "Creating template cache",
            ));
            false
        }
    }
}

fn plan_cache(
    svc: &AIMService,
    template: &TemplateView,
    config: &RuntimeConfigSpec,
    ns: &str,
    plan: &mut Plan,
) {
    let mode = svc.spec.cache_mode();
    let name = match mode {
        CacheMode::Shared => aim_rules::naming::template_cache_name_shared(&template.name, ns),
        CacheMode::Dedicated => aim_rules::naming::template_cache_name_dedicated(
            &template.name,
            &svc.name_any(),
            &svc.uid().unwrap_or_default(),
        ),
    };
    let mut env = template.spec.env.clone();
    if let Some(caching) = &template.spec.caching {
        aim_rules::env::merge_env(&mut env, &caching.env);
    }
    aim_rules::env::merge_env(&mut env, &svc.spec.env);
    let storage_class = svc
        .spec
        .storage
        .as_ref()
        .and_then(|s| s.default_storage_class_name.clone())
        .or_else(|| {
            config
                .storage
                .as_ref()
                .and_then(|s| s.default_storage_class_name.clone())
        });
    let mut spec = json!({
        "templateName": template.name,
        "templateScope": if template.scope == Scope::Cluster { "Cluster" } else { "Namespace" },
        "mode": if mode == CacheMode::Dedicated { "Dedicated" } else { "Shared" },
    });
    if !env.is_empty() {
        spec["env"] = json!(env);
    }
    if let Some(sc) = storage_class {
        spec["storageClassName"] = json!(sc);
    }
    if let Some(rc) = &svc.spec.runtime_config_name {
        spec["runtimeConfigName"] = json!(rc);
    }
    let object = json!({
        "apiVersion": aim_api::API_VERSION,
        "kind": "AIMTemplateCache",
        "metadata": {"name": name, "namespace": ns, "labels": {"aim.eai.amd.com/service": aim_rules::naming::sanitize(&svc.name_any())}},
        "spec": spec,
    });
    match mode {
        CacheMode::Shared => plan.unowned.push(object),
        CacheMode::Dedicated => plan.owned.push(object),
    }
}

/// Cache volumes already on the InferenceService, kept while the cache is
/// being recreated so running pods are not restarted.
fn existing_cache_volumes(isvc: Option<&Value>) -> Vec<(String, String, String)> {
    let Some(isvc) = isvc else { return Vec::new() };
    let predictor = &isvc["spec"]["predictor"];
    let mounts: BTreeMap<String, String> = predictor
        .pointer("/containers/0/volumeMounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| {
            Some((
                m["name"].as_str()?.to_string(),
                m["mountPath"].as_str()?.to_string(),
            ))
        })
        .collect();
    predictor["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| {
            let name = v["name"].as_str()?;
            let claim = v.pointer("/persistentVolumeClaim/claimName")?.as_str()?;
            Some((
                name.to_string(),
                claim.to_string(),
                mounts.get(name)?.clone(),
            ))
        })
        .collect()
}

fn plan_route(
    obs: &Observed<'_>,
    config: &RuntimeConfigSpec,
    isvc_name: &str,
    propagated: &BTreeMap<String, String>,
    plan: &mut Plan,
) {
    let svc = obs.service;
    let ns = svc.namespace().unwrap_or_default();
    let route_name = aim_rules::naming::httproute_name(&svc.name_any(), &ns);
    let routing = config.routing.clone().unwrap_or_default();
    if !routing.enabled.unwrap_or(false) {
        if obs.route.is_some() {
            plan.delete.push((
                render::GATEWAY_API_VERSION.into(),
                "HTTPRoute".into(),
                route_name,
            ));
        }
        return;
    }
    let Some(gateway) = routing.gateway_ref.as_ref() else {
        plan.healths.push(
            Health::new(
                "HTTPRoute",
                ComponentState::Failed,
                "GatewayNotConfigured",
                "routing is enabled but no gateway is set: set spec.routing.gatewayRef on the service or routing.gatewayRef in its runtime config",
            )
            .because(ErrorCategory::InvalidSpec),
        );
        return;
    };
    let service_json = serde_json::to_value(svc).unwrap_or(Value::Null);
    let path = match &routing.path_template {
        Some(template) => match aim_rules::path_template::render(template, &service_json) {
            Ok(path) => path,
            Err(e) => {
                // The docs' behaviour: degrade, say why, no route (AIM Engine
                // falls back silently to /<namespace>/<uid>).
                plan.healths.push(Health::new(
                    "HTTPRoute",
                    ComponentState::Degraded,
                    "PathTemplateInvalid",
                    format!("spec.routing.pathTemplate {template:?}: {e}"),
                ));
                if obs.route.is_some() {
                    plan.delete.push((
                        render::GATEWAY_API_VERSION.into(),
                        "HTTPRoute".into(),
                        route_name,
                    ));
                }
                return;
            }
        },
        None => aim_rules::path_template::default_path(&ns, &svc.uid().unwrap_or_default()),
    };
    let annotations = routing.annotations.clone().unwrap_or_default();
    plan.owned.push(render::http_route(&render::RouteInputs {
        service: svc,
        route_name: &route_name,
        isvc_name,
        gateway,
        path: &path,
        request_timeout: routing.request_timeout.as_deref(),
        annotations: &annotations,
        propagated_labels: propagated,
    }));
    plan.routing = Some(ServiceRoutingStatus { path: Some(path) });
    plan.healths.push(health::route_health(obs.route.as_ref()));
}
