//! AIMServiceTemplate and AIMClusterServiceTemplate controllers: resolve the
//! model, check that the cluster has the GPUs, and publish the template's
//! profile. Templates with inline model sources are ready
//! as soon as model and hardware are; discovered profiles come from a
//! discovery job (the catalog work), so such templates wait for it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aim_api::common::{HardwareRequirements, Profile, ProfileMetadata, ResolvedReference};
use aim_api::conditions::NewCondition;
use aim_api::status::ResourcePhase;
use aim_api::template::{AIMServiceTemplateSpec, AIMServiceTemplateStatus, JobReference};
use aim_api::{AIMClusterModel, AIMModel};
use aim_rules::gpu::{GpuAvailability, GpuInfo};

type ClusterGpus = std::collections::BTreeMap<String, GpuInfo>;
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;

use crate::context::{Context, is_paused};
use crate::discovery::JobAction;
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
    /// Hash of every input of discovery (`discovery_inputs_hash`).
    pub spec_hash: String,
    /// What was seen of the discovery Job, when discovery may run at all
    /// (model found with an image, GPUs available, no inline sources).
    pub discovery: Option<crate::discovery::DiscoverySeen<'a>>,
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
    pub job_action: crate::discovery::JobAction,
    pub requeue: Option<Duration>,
}

/// The inputs a discovery answer depends on, hashed. Scope is part of it:
/// a cluster template's Job lives in the operator namespace, next to any
/// namespaced template of the same name there.
pub fn discovery_inputs_hash(
    spec: &AIMServiceTemplateSpec,
    model: Option<&aim_api::model::AIMModelSpec>,
    cluster_scoped: bool,
) -> String {
    let text = |v: Option<String>| v.unwrap_or_default();
    let gpu = spec.hardware.as_ref().and_then(|h| h.gpu.as_ref());
    let mut parts: Vec<String> = vec![
        if cluster_scoped {
            "cluster"
        } else {
            "namespace"
        }
        .into(),
        spec.model_name.clone(),
        text(model.map(|m| m.image.clone())),
        text(model.and_then(|m| m.service_account_name.clone())),
    ];
    if !cluster_scoped {
        for e in &spec.env {
            parts.push(format!(
                "{}={}",
                e.name,
                e.value.clone().unwrap_or_default()
            ));
        }
    }
    for s in model
        .map(|m| m.image_pull_secrets.as_slice())
        .unwrap_or_default()
    {
        parts.push(s.name.clone());
    }
    parts.extend([
        text(enum_text(&spec.metric)),
        text(enum_text(&spec.precision)),
        text(gpu.and_then(|g| g.model.clone())),
        text(gpu.and_then(|g| g.requests).map(|r| r.to_string())),
        text(spec.profile_id.clone()),
    ]);
    let refs: Vec<Option<&str>> = parts.iter().map(|p| Some(p.as_str())).collect();
    crate::discovery::spec_hash(&refs)
}

/// An enum field as the string the CRD shows (`latency`, `fp8`).
fn enum_text<T: serde::Serialize>(value: &Option<T>) -> Option<String> {
    value
        .as_ref()
        .and_then(|v| serde_json::to_value(v).ok())
        .and_then(|v| v.as_str().map(str::to_string))
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
    let mut job_action = crate::discovery::JobAction::None;
    let mut requeue = None;
    let discovered_for_this_spec = |p: &&AIMServiceTemplateStatus| {
        p.profile.is_some()
            && p.discovery
                .as_ref()
                .and_then(|d| d.spec_hash.as_deref())
                .is_none_or(|h| h == obs.spec_hash)
    };
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
    } else if let Some(prev) = previous.filter(discovered_for_this_spec) {
        // A profile discovered for this very spec stays authoritative: the
        // Job is gone by now, and running it again would say the same.
        status.model_sources = prev.model_sources.clone();
        status.profile = prev.profile.clone();
        status.resolved_hardware = prev.resolved_hardware.clone().or(hardware.clone());
        status.hardware_summary = prev
            .hardware_summary
            .clone()
            .or(hardware.as_ref().map(aim_rules::gpu::hardware_summary));
        healths.push(Health::ready(
            "DiscoveryJob",
            "JobComplete",
            "Profile discovered",
        ));
        discovered = Some(NewCondition::new(
            "Discovered",
            true,
            "DiscoveryComplete",
            "Profile and model sources discovered",
        ));
    } else if let Some(seen) = &obs.discovery {
        let verdict = crate::discovery::assess(seen);
        status.discovery = Some(verdict.state);
        status.resolved_hardware = hardware.clone();
        status.hardware_summary = hardware.as_ref().map(aim_rules::gpu::hardware_summary);
        if let Some(found) = verdict.found {
            // The image knows the GPUs it was profiled for: its count and
            // model win over the spec, as in AIM Engine.
            let meta = found.profile.metadata.clone().unwrap_or_default();
            let mut resolved = hardware.clone().unwrap_or_default();
            let mut gpu = resolved.gpu.clone().unwrap_or_default();
            if meta.gpu_count.is_some() {
                gpu.requests = meta.gpu_count;
            }
            if let Some(m) = meta.gpu.clone().filter(|m| !m.is_empty()) {
                gpu.model = Some(m);
            }
            if gpu.requests.unwrap_or(0) > 0 || gpu.model.is_some() {
                resolved.gpu = Some(gpu);
            }
            status.hardware_summary = Some(aim_rules::gpu::hardware_summary(&resolved));
            status.resolved_hardware = Some(resolved);
            status.model_sources = found.model_sources;
            status.profile = Some(found.profile);
        }
        healths.push(verdict.health);
        discovered = Some(verdict.condition);
        job_action = verdict.action;
        requeue = verdict.requeue;
    } else {
        status.resolved_hardware = hardware.clone();
        status.hardware_summary = hardware.as_ref().map(aim_rules::gpu::hardware_summary);
        // Model or GPUs are missing (their components say which): no Job
        // is started for a template that could not run anyway.
        healths.push(Health::new(
            "DiscoveryJob",
            ComponentState::Pending,
            "AwaitingDiscovery",
            "discovery starts once the model and the GPUs this template needs are available",
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
        job_action,
        requeue,
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
    let old = tpl.status().cloned();
    let spec_hash = discovery_inputs_hash(spec, model.as_ref().map(|m| &m.spec), T::CLUSTER);
    let job_namespace = if T::CLUSTER {
        ctx.settings.operator_namespace.clone()
    } else {
        ns.clone().unwrap_or_default()
    };
    let job_name = crate::discovery::job_name(&tpl.name_any(), &spec_hash);
    let already_discovered = old.as_ref().is_some_and(|st| {
        st.profile.is_some()
            && st
                .discovery
                .as_ref()
                .and_then(|d| d.spec_hash.as_deref())
                .is_none_or(|h| h == spec_hash)
    });
    let gpus_ok = !requires_gpu(spec.hardware.as_ref())
        || gpus.as_ref().is_ok_and(|g| {
            matches!(
                aim_rules::gpu::gpu_availability(
                    spec.hardware.as_ref().expect("required implies set"),
                    g
                ),
                GpuAvailability::Available | GpuAvailability::NotRequired
            )
        });
    let may_discover = spec.model_sources.is_empty()
        && !already_discovered
        && gpus_ok
        && model
            .as_ref()
            .is_some_and(|m| !m.spec.image.trim().is_empty());
    let jobs: Api<Job> = Api::namespaced(client.clone(), &job_namespace);
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), &job_namespace);
    let (job, pods, log) = if may_discover {
        observe_job(&jobs, &pods_api, &job_name).await?
    } else {
        (None, Vec::new(), None)
    };
    let pod_create_failure = match &job {
        Some(j) if pods.is_empty() && crate::discovery::is_active(j) => {
            pod_create_failure(client, &job_namespace, j).await
        }
        _ => None,
    };
    let discovery = may_discover.then(|| crate::discovery::DiscoverySeen {
        job: job.as_ref(),
        pods: &pods,
        pod_create_failure,
        log,
        spec_hash: &spec_hash,
        previous: old.as_ref().and_then(|o| o.discovery.as_ref()),
        now: Timestamp::now(),
    });
    let obs = TemplateObserved {
        spec,
        cluster_scoped: T::CLUSTER,
        namespace: ns.clone(),
        model,
        gpus,
        spec_hash: spec_hash.clone(),
        discovery,
    };
    let mut plan = plan(&obs, old.as_ref());
    let mut requeue = plan.requeue;
    if job.is_some() {
        plan.status.discovery_job = Some(JobReference {
            name: Some(job_name.clone()),
            namespace: Some(job_namespace.clone()),
        });
    }
    match plan.job_action {
        JobAction::None => {}
        JobAction::Delete => match jobs.delete(&job_name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e),
        },
        JobAction::Create => {
            let model = obs.model.as_ref().expect("discovery needs the model");
            let job = discovery_job(tpl, &model.spec, &job_name, &job_namespace);
            match create_if_slot_free(ctx, &jobs, job).await? {
                Slot::Created => {
                    replace_health(
                        &mut plan.healths,
                        Health::new(
                            "DiscoveryJob",
                            ComponentState::Progressing,
                            "JobCreated",
                            format!("discovery job {job_name} created"),
                        ),
                    );
                    plan.status.discovery_job = Some(JobReference {
                        name: Some(job_name.clone()),
                        namespace: Some(job_namespace.clone()),
                    });
                }
                Slot::Busy(active) => {
                    replace_health(
                        &mut plan.healths,
                        Health::new(
                            "DiscoveryJob",
                            ComponentState::Pending,
                            "DiscoveryQueued",
                            format!(
                                "{active} discovery jobs are running cluster-wide (at most {}); this template waits for a free slot",
                                crate::discovery::MAX_ACTIVE_JOBS
                            ),
                        ),
                    );
                    requeue = Some(Duration::from_secs(5));
                }
            }
        }
    }

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
    Ok(Action::requeue(requeue.unwrap_or(Duration::from_secs(300))))
}

/// The template a discovery object belongs to, as (name, namespace) in the
/// scope of this controller: cluster templates' Jobs live in the operator
/// namespace.
fn labelled_template(
    labels: Option<&std::collections::BTreeMap<String, String>>,
    namespace: Option<String>,
    cluster: bool,
    operator_namespace: &str,
) -> Option<(String, Option<String>)> {
    let name = labels?.get("aim.eai.amd.com/template")?.clone();
    if cluster {
        (namespace.as_deref() == Some(operator_namespace)).then_some((name, None))
    } else {
        Some((name, namespace))
    }
}

fn job_template(
    job: &Job,
    cluster: bool,
    operator_namespace: &str,
) -> Option<(String, Option<String>)> {
    labelled_template(
        job.metadata.labels.as_ref(),
        job.namespace(),
        cluster,
        operator_namespace,
    )
}

fn pod_template(
    pod: &Pod,
    cluster: bool,
    operator_namespace: &str,
) -> Option<(String, Option<String>)> {
    labelled_template(
        pod.metadata.labels.as_ref(),
        pod.namespace(),
        cluster,
        operator_namespace,
    )
}

fn is_queued(status: Option<&AIMServiceTemplateStatus>) -> bool {
    status.is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "DiscoveryJobReady" && c.reason == "DiscoveryQueued")
    })
}

fn replace_health(healths: &mut [Health], health: Health) {
    if let Some(h) = healths.iter_mut().find(|h| h.component == health.component) {
        *h = health;
    }
}

/// The Job for the current spec, its pods, and once it completed, the log
/// of the pod that succeeded.
async fn observe_job(
    jobs: &Api<Job>,
    pods: &Api<Pod>,
    name: &str,
) -> Result<(Option<Job>, Vec<Pod>, Option<Result<String, String>>), kube::Error> {
    let Some(job) = jobs.get_opt(name).await? else {
        return Ok((None, Vec::new(), None));
    };
    let pod_list = pods
        .list(&ListParams::default().labels(&format!("job-name={name}")))
        .await?
        .items;
    let complete = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == "Complete" && c.status == "True")
        });
    let mut log = None;
    if complete {
        let succeeded = pod_list
            .iter()
            .find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded"));
        log = Some(match succeeded {
            None => Err("no succeeded pod is left to read".to_string()),
            Some(pod) => pods
                .logs(
                    &pod.name_any(),
                    &LogParams {
                        container: Some("discovery".into()),
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| format!("reading the log of pod {}: {e}", pod.name_any())),
        });
    }
    Ok((Some(job), pod_list, log))
}

/// The job controller's latest complaint about creating `job`'s pod.
/// Best effort: without it the template only says the Job runs.
async fn pod_create_failure(client: &kube::Client, ns: &str, job: &Job) -> Option<String> {
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), ns);
    let selector = format!(
        "involvedObject.kind=Job,involvedObject.name={},reason=FailedCreate",
        job.name_any()
    );
    let list = events
        .list(&ListParams::default().fields(&selector))
        .await
        .ok()?;
    list.items
        .into_iter()
        .filter(|e| e.involved_object.uid == job.metadata.uid)
        .max_by_key(|e| e.last_timestamp.as_ref().map(|t| t.0))
        .and_then(|e| e.message)
}

fn discovery_job<T: TemplateObject>(
    tpl: &T,
    model: &aim_api::model::AIMModelSpec,
    name: &str,
    namespace: &str,
) -> Job {
    let spec = tpl.spec();
    let gpu = spec.hardware.as_ref().and_then(|h| h.gpu.as_ref());
    let metric = enum_text(&spec.metric);
    let precision = enum_text(&spec.precision);
    let template_name = tpl.name_any();
    let mut value = crate::discovery::job(
        name,
        &crate::discovery::JobInputs {
            template: &template_name,
            namespace,
            image: &model.image,
            image_pull_secrets: &model.image_pull_secrets,
            service_account: model.service_account_name.as_deref(),
            env: if T::CLUSTER { &[] } else { &spec.env },
            metric: metric.as_deref(),
            precision: precision.as_deref(),
            gpu_model: gpu.and_then(|g| g.model.as_deref()),
            gpu_count: gpu.and_then(|g| g.requests),
            profile_id: spec.profile_id.as_deref(),
        },
    );
    if let Some(owner) = kube_io::owner_of(tpl) {
        value["metadata"]["ownerReferences"] = serde_json::json!([owner]);
    }
    serde_json::from_value(value).expect("the discovery job is a valid Job")
}

enum Slot {
    Created,
    /// No free slot: this many discovery Jobs are active.
    Busy(usize),
}

/// Counts the active discovery Jobs and creates `job` if fewer than the
/// limit run, holding the discovery lock in between so two reconciles (in
/// this process, or in another replica) cannot both take the last slot.
async fn create_if_slot_free(
    ctx: &Context,
    jobs: &Api<Job>,
    job: Job,
) -> Result<Slot, kube::Error> {
    let _local = ctx.discovery_slot.lock().await;
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(ctx.client.clone(), &ctx.settings.operator_namespace);
    let lock = crate::leader::LeaderConfig {
        namespace: ctx.settings.operator_namespace.clone(),
        identity: ctx.settings.identity.clone(),
        lease_duration: Duration::from_secs(30),
        renew: Duration::from_millis(100),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !crate::leader::try_acquire_named(&leases, crate::discovery::LOCK_LEASE, &lock).await? {
        if Instant::now() > deadline {
            return Ok(Slot::Busy(crate::discovery::MAX_ACTIVE_JOBS));
        }
        tokio::time::sleep(lock.renew).await;
    }
    let result = async {
        let all: Api<Job> = Api::all(ctx.client.clone());
        let active = all
            .list(&ListParams::default().labels("app.kubernetes.io/name=aim-discovery"))
            .await?
            .items
            .iter()
            .filter(|j| crate::discovery::is_active(j))
            .count();
        if active >= crate::discovery::MAX_ACTIVE_JOBS {
            return Ok(Slot::Busy(active));
        }
        match jobs.create(&PostParams::default(), &job).await {
            Ok(_) => Ok(Slot::Created),
            // Created by an earlier reconcile whose status write was lost.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Slot::Created),
            Err(e) => Err(e),
        }
    }
    .await;
    if let Err(e) = crate::leader::release(
        &leases,
        crate::discovery::LOCK_LEASE,
        &ctx.settings.identity,
    )
    .await
    {
        tracing::warn!(error = %e, "releasing the discovery lock failed; it expires in 30s");
    }
    result
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
    let store_jobs = store.clone();
    let store_pods = store.clone();
    let operator_namespace = ctx.settings.operator_namespace.clone();
    let operator_namespace_pods = operator_namespace.clone();
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
        // A discovery Job that finishes decides its template, and frees a
        // slot for the templates queued behind the limit.
        .watches(
            Api::<Job>::all(client.clone()),
            watcher::Config::default().labels("app.kubernetes.io/name=aim-discovery"),
            move |job| {
                let owner = job_template(&job, T::CLUSTER, &operator_namespace);
                let finished = !crate::discovery::is_active(&job);
                store_jobs
                    .state()
                    .iter()
                    .filter(|t| {
                        let own = owner.as_ref().is_some_and(|(name, ns)| {
                            t.name_any() == *name && t.namespace() == *ns
                        });
                        own || (finished && is_queued(t.status()))
                    })
                    .map(|t| ObjectRef::from_obj(t.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        // Pods show image pull and crash problems before the Job fails.
        .watches(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default().labels("aim.eai.amd.com/template"),
            move |pod| {
                let owner = pod_template(&pod, T::CLUSTER, &operator_namespace_pods);
                store_pods
                    .state()
                    .iter()
                    .filter(|t| {
                        owner
                            .as_ref()
                            .is_some_and(|(name, ns)| t.name_any() == *name && t.namespace() == *ns)
                    })
                    .map(|t| ObjectRef::from_obj(t.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile::<T>, error_policy::<T>, ctx)
        .for_each(|_| async {})
        .await;
}
