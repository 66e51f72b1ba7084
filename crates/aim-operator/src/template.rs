//! AIMServiceTemplate and AIMClusterServiceTemplate controllers: resolve the
//! model, check that the cluster has the GPUs, and publish the template's
//! profile (reference §3.3). Templates with inline model sources are ready
//! as soon as model and hardware are; discovered profiles come from a
//! discovery job (the catalog work), so such templates wait for it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aim_api::common::{HardwareRequirements, Profile, ProfileMetadata, ResolvedReference};
use aim_api::conditions::NewCondition;
use aim_api::status::ResourcePhase;
use aim_api::template::{AIMServiceTemplateSpec, AIMServiceTemplateStatus};
use aim_api::{AIMClusterModel, AIMModel};
use aim_rules::gpu::{GpuAvailability, GpuInfo};

type ClusterGpus = std::collections::BTreeMap<String, GpuInfo>;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;

use crate::context::{Context, is_paused};
use crate::kube_io;
use crate::scoped::TemplateObject;
use crate::state::{self, ComponentState, ErrorCategory, Health};

/// What the template controller observed.
pub struct TemplateObserved<'a> {
    pub spec: &'a AIMServiceTemplateSpec,
    pub cluster_scoped: bool,
    pub namespace: Option<String>,
    /// The model of `spec.modelName` in the template's own scope.
    pub model: Option<TemplateModel>,
    pub gpus: Result<ClusterGpus, String>,
}

/// The parts of a template's model that its health depends on.
pub struct TemplateModel {
    pub name: String,
    pub namespace: Option<String>,
    pub spec: aim_api::model::AIMModelSpec,
    pub conditions: Vec<Condition>,
    pub phase: Option<ResourcePhase>,
}

pub struct TemplatePlan {
    pub healths: Vec<Health>,
    pub status: AIMServiceTemplateStatus,
    pub discovered: Option<NewCondition>,
}

fn requires_gpu(hw: Option<&HardwareRequirements>) -> bool {
    hw.and_then(|h| h.gpu.as_ref()).is_some_and(|g| {
        g.requests.unwrap_or(0) > 0 || g.model.as_deref().is_some_and(|m| !m.is_empty())
    })
}

/// Pure planning of a template's health and status.
pub fn plan(
    obs: &TemplateObserved<'_>,
    previous: Option<&AIMServiceTemplateStatus>,
) -> TemplatePlan {
    let spec = obs.spec;
    let mut healths = Vec::new();
    let mut status = AIMServiceTemplateStatus {
        discovery_job: previous.and_then(|p| p.discovery_job.clone()),
        discovery: previous.and_then(|p| p.discovery.clone()),
        ..Default::default()
    };
    let model_kind = if obs.cluster_scoped {
        "ClusterModel"
    } else {
        "Model"
    };
    let kind_name = if obs.cluster_scoped {
        "AIMClusterModel"
    } else {
        "AIMModel"
    };
    match &obs.model {
        None => healths.push(
            Health::new(
                if obs.cluster_scoped {
                    "ClusterModel"
                } else {
                    "Model"
                },
                ComponentState::Failed,
                "ModelNotFound",
                format!(
                    "{kind_name} {:?} not found{}: create it or fix spec.modelName",
                    spec.model_name,
                    obs.namespace
                        .as_ref()
                        .map(|n| format!(" in namespace {n}"))
                        .unwrap_or_default()
                ),
            )
            .upstream()
            .because(ErrorCategory::MissingUpstream),
        ),
        Some(TemplateModel {
            name,
            namespace: ns,
            spec: model_spec,
            conditions,
            phase,
        }) => {
            status.resolved_model = Some(ResolvedReference {
                name: Some(name.clone()),
                namespace: ns.clone(),
                ..Default::default()
            });
            // A model failing only because of its templates must not fail
            // its templates in turn: that would be a deadlock.
            let failing_elsewhere = conditions.iter().any(|c| {
                c.type_.ends_with("Ready")
                    && c.type_ != "Ready"
                    && !c.type_.contains("ServiceTemplates")
                    && c.status == "False"
            });
            if model_spec.image.trim().is_empty() {
                healths.push(
                    Health::new(
                        model_kind,
                        ComponentState::Failed,
                        "ImageNotSpecified",
                        format!("{kind_name} {name} has no image"),
                    )
                    .upstream()
                    .because(ErrorCategory::InvalidSpec),
                );
            } else if matches!(phase, Some(ResourcePhase::Failed | ResourcePhase::Degraded))
                && failing_elsewhere
            {
                let state = if *phase == Some(ResourcePhase::Failed) {
                    ComponentState::Failed
                } else {
                    ComponentState::Degraded
                };
                healths.push(
                    Health::new(
                        model_kind,
                        state,
                        if obs.cluster_scoped {
                            "ClusterModelFailed"
                        } else {
                            "ModelFailed"
                        },
                        format!("{kind_name} {name} is {phase:?}"),
                    )
                    .upstream(),
                );
            } else {
                healths.push(Health::ready(
                    model_kind,
                    if obs.cluster_scoped {
                        "ClusterModelFound"
                    } else {
                        "ModelFound"
                    },
                    format!("{kind_name} {name} found"),
                ));
            }
        }
    }

    let hardware = spec.hardware.clone();
    if requires_gpu(hardware.as_ref()) {
        match &obs.gpus {
            Err(e) => healths.push(
                Health::new(
                    "GPU",
                    ComponentState::Degraded,
                    "GPUCheckFailed",
                    format!("listing nodes failed: {e}"),
                )
                .because(ErrorCategory::Infrastructure),
            ),
            Ok(gpus) => match aim_rules::gpu::gpu_availability(
                hardware.as_ref().expect("required implies set"),
                gpus,
            ) {
                GpuAvailability::Available | GpuAvailability::NotRequired => {
                    healths.push(Health::ready(
                        "GPU",
                        "GPUAvailable",
                        "The cluster has the GPUs this template needs",
                    ))
                }
                GpuAvailability::NotAvailable { reason, message } => healths.push(Health::new(
                    "GPU",
                    ComponentState::NotAvailable,
                    reason,
                    message,
                )),
            },
        }
        if let (Some(hw), Ok(gpus)) = (hardware.as_ref(), &obs.gpus) {
            status.resolved_node_affinity = aim_rules::gpu::node_affinity(hw, gpus);
        }
    }

    let discovered;
    if !spec.model_sources.is_empty() {
        status.model_sources = spec.model_sources.clone();
        let gpu = hardware.as_ref().and_then(|h| h.gpu.as_ref());
        status.profile = Some(Profile {
            metadata: Some(ProfileMetadata {
                gpu: gpu.and_then(|g| g.model.clone()),
                gpu_count: gpu.and_then(|g| g.requests),
                metric: spec.metric,
                precision: spec.precision,
                type_: spec.type_,
                engine: None,
            }),
            ..Default::default()
        });
        status.resolved_hardware = hardware.clone();
        status.hardware_summary = hardware.as_ref().map(aim_rules::gpu::hardware_summary);
        status.discovery = None;
        discovered = Some(NewCondition::new(
            "Discovered",
            true,
            "InlineModelSources",
            "Model sources provided in-line in spec",
        ));
    } else if let Some(prev) = previous.filter(|p| p.profile.is_some()) {
        // A profile published earlier (by discovery) stays authoritative.
        status.model_sources = prev.model_sources.clone();
        status.profile = prev.profile.clone();
        status.resolved_hardware = prev.resolved_hardware.clone().or(hardware.clone());
        status.hardware_summary = prev
            .hardware_summary
            .clone()
            .or(hardware.as_ref().map(aim_rules::gpu::hardware_summary));
        discovered = Some(NewCondition::new(
            "Discovered",
            true,
            "DiscoveryComplete",
            "Profile discovered",
        ));
    } else {
        status.resolved_hardware = hardware.clone();
        status.hardware_summary = hardware.as_ref().map(aim_rules::gpu::hardware_summary);
        healths.push(Health::new(
            "DiscoveryJob",
            ComponentState::Pending,
            "AwaitingDiscovery",
            "The template has no inline model sources, so its profile must be discovered from the model image; \
             discovery jobs are not run by this operator release. Add spec.modelSources to serve it now.",
        ));
        discovered = Some(NewCondition::new(
            "Discovered",
            false,
            "AwaitingDiscovery",
            "Waiting for discovery to complete",
        ));
    }
    TemplatePlan {
        healths,
        status,
        discovered,
    }
}

async fn reconcile<T: TemplateObject>(
    tpl: Arc<T>,
    ctx: Arc<Context>,
) -> Result<Action, kube::Error> {
    let started = Instant::now();
    let result = reconcile_inner(&*tpl, &ctx).await;
    ctx.metrics.reconciled(T::CONTROLLER, started.elapsed());
    if let Err(e) = &result {
        ctx.metrics
            .failed(T::CONTROLLER, crate::metrics::error_kind(e));
    }
    result
}

async fn reconcile_inner<T: TemplateObject>(tpl: &T, ctx: &Context) -> Result<Action, kube::Error> {
    if is_paused(tpl.meta()) || tpl.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let client = &ctx.client;
    let ns = tpl.namespace();
    let spec = tpl.spec();
    let model = if T::CLUSTER {
        Api::<AIMClusterModel>::all(client.clone())
            .get_opt(&spec.model_name)
            .await?
            .map(|m| {
                let st = m.status.clone().unwrap_or_default();
                TemplateModel {
                    name: m.name_any(),
                    namespace: None,
                    spec: m.spec.clone(),
                    conditions: st.conditions,
                    phase: st.status,
                }
            })
    } else {
        Api::<AIMModel>::namespaced(client.clone(), ns.as_deref().unwrap_or_default())
            .get_opt(&spec.model_name)
            .await?
            .map(|m| {
                let st = m.status.clone().unwrap_or_default();
                TemplateModel {
                    name: m.name_any(),
                    namespace: m.namespace(),
                    spec: m.spec.clone(),
                    conditions: st.conditions,
                    phase: st.status,
                }
            })
    };
    let gpus = if requires_gpu(spec.hardware.as_ref()) {
        Api::<Node>::all(client.clone())
            .list(&ListParams::default())
            .await
            .map(|l| aim_rules::gpu::cluster_gpus(&l.items))
            .map_err(|e| e.to_string())
    } else {
        Ok(Default::default())
    };
    let obs = TemplateObserved {
        spec,
        cluster_scoped: T::CLUSTER,
        namespace: ns.clone(),
        model,
        gpus,
    };
    let old = tpl.status().cloned();
    let mut plan = plan(&obs, old.as_ref());
    let now = Time(Timestamp::now());
    let previous_conditions = old
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let assessment = state::assess(
        &previous_conditions,
        &plan.healths,
        tpl.meta().generation,
        &now,
    );
    let mut conditions = assessment.conditions;
    if let Some(d) = plan.discovered.take() {
        aim_api::conditions::set(&mut conditions, d, tpl.meta().generation, &now);
    }
    plan.status.conditions = conditions;
    plan.status.observed_generation = tpl.meta().generation;
    plan.status.status = Some(ResourcePhase::from(assessment.phase));
    if Some(&plan.status) != old.as_ref() {
        let api = T::api(client, ns.as_deref());
        kube_io::write_status(
            &api,
            tpl,
            &format!("aim-{}-controller", T::CONTROLLER),
            serde_json::to_value(&plan.status).expect("serialises"),
        )
        .await?;
    }
    kube_io::publish(&ctx.recorder, &tpl.object_ref(&()), &assessment.transitions).await;
    Ok(Action::requeue(Duration::from_secs(300)))
}

fn error_policy<T: TemplateObject>(_t: Arc<T>, error: &kube::Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(%error, controller = T::CONTROLLER, "template reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

/// Runs a template controller (either scope) until `shutdown` resolves.
pub async fn run<T: TemplateObject>(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let controller = Controller::new(Api::<T>::all(client.clone()), watcher::Config::default())
        .with_config(kube::runtime::controller::Config::default().concurrency(16));
    let store = controller.store();
    let store_models = store.clone();
    let store_cluster_models = store.clone();
    let store_nodes = store.clone();
    controller
        .watches(
            Api::<AIMModel>::all(client.clone()),
            watcher::Config::default(),
            move |m| {
                let (name, ns) = (m.name_any(), m.namespace());
                store_models
                    .state()
                    .iter()
                    .filter(|t| !T::CLUSTER && t.namespace() == ns && t.spec().model_name == name)
                    .map(|t| ObjectRef::from_obj(t.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .watches(
            Api::<AIMClusterModel>::all(client.clone()),
            watcher::Config::default(),
            move |m| {
                let name = m.name_any();
                store_cluster_models
                    .state()
                    .iter()
                    .filter(|t| T::CLUSTER && t.spec().model_name == name)
                    .map(|t| ObjectRef::from_obj(t.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        // Nodes coming and going change GPU availability.
        .watches(
            Api::<Node>::all(client.clone()),
            watcher::Config::default(),
            move |_| {
                store_nodes
                    .state()
                    .iter()
                    .filter(|t| requires_gpu(t.spec().hardware.as_ref()))
                    .map(|t| ObjectRef::from_obj(t.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile::<T>, error_policy::<T>, ctx)
        .for_each(|_| async {})
        .await;
}
