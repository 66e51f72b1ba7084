//! AIMModel and AIMClusterModel controllers: metadata, the
//! templates a model offers, and their aggregate health. Metadata comes from
//! `spec.imageMetadata` (air-gapped mode), from the cached
//! `status.imageMetadata`, or from the registry (`crate::inspect`); it is
//! switched off with `discovery.extractMetadata: false`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aim_api::common::{ImageMetadata, Metric, ProfileType};
use aim_api::model::{AIMModelSpec, AIMModelStatus, ModelSourceType};
use aim_api::status::ResourcePhase;
use aim_api::template::AIMServiceTemplateSpec;
use aim_api::{AIMClusterServiceTemplate, AIMServiceTemplate};
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use serde_json::{Value, json};

use crate::context::{Context, is_paused};
use crate::inspect::{InspectFailure, Inspection};
use crate::kube_io;
use crate::scoped::ModelObject;
use crate::service::plan::ConfigLookup;
use crate::state::{self, ComponentState, ErrorCategory, Health};

pub struct ModelPlan {
    pub healths: Vec<Health>,
    pub templates: Vec<Value>,
    pub metadata: Option<ImageMetadata>,
}

/// Whether templates should exist: `None` while that depends on metadata
/// not known yet.
fn expects_templates(spec: &AIMModelSpec, metadata: Option<&ImageMetadata>) -> Option<bool> {
    if spec
        .discovery
        .as_ref()
        .and_then(|d| d.create_service_templates)
        == Some(false)
    {
        return Some(false);
    }
    if !spec.model_sources.is_empty() {
        return Some(true);
    }
    let metadata = metadata?;
    let recommended = metadata
        .model
        .as_ref()
        .is_some_and(|m| !m.recommended_deployments.is_empty());
    Some(recommended || !spec.custom_templates.is_empty())
}

/// Whether the registry must be asked: extraction is on, the spec carries
/// no metadata, and status holds none cached for this generation.
pub fn needs_inspection(
    spec: &AIMModelSpec,
    previous: Option<&AIMModelStatus>,
    generation: Option<i64>,
) -> bool {
    let extract = spec
        .discovery
        .as_ref()
        .and_then(|d| d.extract_metadata)
        .unwrap_or(true);
    let cached =
        previous.is_some_and(|p| p.image_metadata.is_some() && p.observed_generation == generation);
    // A custom model (`modelSources`) names a base runtime image whose
    // labels decide nothing: its templates come from the spec.
    extract && spec.model_sources.is_empty() && spec.image_metadata.is_none() && !cached
}

/// Pure planning for one model. `templates` are the phases of the templates
/// that name it; `inspection` is what the registry said, when it was asked.
#[allow(clippy::too_many_arguments)]
pub fn plan(
    name: &str,
    namespace: Option<&str>,
    cluster: bool,
    spec: &AIMModelSpec,
    previous: Option<&AIMModelStatus>,
    config: &ConfigLookup,
    templates: &[Option<ResourcePhase>],
    inspection: Option<&Inspection>,
) -> ModelPlan {
    let mut healths = Vec::new();
    match config {
        ConfigLookup::Found(..) => healths
            .push(Health::ready("RuntimeConfig", "ConfigFound", "Runtime config found").upstream()),
        ConfigLookup::NoDefault => healths.push(Health::ready(
            "RuntimeConfig",
            "DefaultConfigNotFound",
            "No default runtime config; using built-in defaults",
        )),
        ConfigLookup::Missing(n) => healths.push(
            Health::new(
                "RuntimeConfig",
                ComponentState::Failed,
                "ConfigNotFound",
                format!("RuntimeConfig {n} not found: create it or fix spec.runtimeConfigName"),
            )
            .upstream()
            .because(ErrorCategory::MissingUpstream),
        ),
    }

    let extract = spec
        .discovery
        .as_ref()
        .and_then(|d| d.extract_metadata)
        .unwrap_or(true);
    let mut failure: Option<&InspectFailure> = None;
    let metadata = match (&spec.image_metadata, inspection) {
        (Some(m), _) => Some(m.clone()),
        (None, Some(Inspection::Found(m))) => Some((**m).clone()),
        (None, Some(Inspection::Failed(f))) => {
            failure = Some(f);
            None
        }
        (None, None) if extract => previous.and_then(|p| p.image_metadata.clone()),
        (None, None) => None,
    };
    match (&metadata, failure, extract) {
        (Some(m), _, _) => healths.push(Health::ready(
            "ImageMetadata",
            if m.model
                .as_ref()
                .and_then(|x| x.canonical_name.as_ref())
                .is_some()
            {
                "ImageMetadataFound"
            } else {
                "ImageFound"
            },
            "Image metadata is known",
        )),
        (None, Some(f), _) => healths.push(f.health()),
        (None, None, false) => healths.push(Health::ready(
            "ImageMetadata",
            "ImageFound",
            "Metadata extraction is disabled",
        )),
        (None, None, true) if !spec.model_sources.is_empty() => healths.push(Health::ready(
            "ImageMetadata",
            "ImageFound",
            "Custom model: sources and hardware come from the spec, not image labels",
        )),
        (None, None, true) => healths.push(Health::new(
            "ImageMetadata",
            ComponentState::Progressing,
            "AwaitingMetadata",
            "Waiting for the registry to be inspected",
        )),
    }

    let component = if cluster {
        "ClusterServiceTemplates"
    } else {
        "ServiceTemplates"
    };
    let expected = expects_templates(spec, metadata.as_ref());
    let mut planned = Vec::new();
    if expected == Some(true) {
        planned = plan_templates(name, namespace, cluster, spec, metadata.as_ref());
    }
    let health = if templates.is_empty() {
        match expected {
            None => Health::new(
                component,
                ComponentState::Progressing,
                "AwaitingMetadata",
                "Waiting for image metadata",
            ),
            Some(true) => Health::new(
                component,
                ComponentState::Progressing,
                "CreatingTemplates",
                "Creating templates",
            ),
            Some(false) => Health::ready(component, "NoTemplatesExpected", "No templates expected"),
        }
    } else {
        let count =
            |f: &dyn Fn(Option<ResourcePhase>) -> bool| templates.iter().filter(|p| f(**p)).count();
        let ready = count(&|p| p == Some(ResourcePhase::Ready));
        let failed = count(&|p| matches!(p, Some(ResourcePhase::Failed | ResourcePhase::Degraded)));
        let na = count(&|p| p == Some(ResourcePhase::NotAvailable));
        let waiting = count(&|p| {
            matches!(
                p,
                None | Some(ResourcePhase::Pending | ResourcePhase::Progressing)
            )
        });
        let n = templates.len();
        if ready == n {
            Health::ready(component, "AllTemplatesReady", "All templates are ready")
        } else if failed == n {
            Health::new(
                component,
                ComponentState::Failed,
                "AllTemplatesFailed",
                "All templates failed",
            )
        } else if na == n {
            Health::new(
                component,
                ComponentState::NotAvailable,
                "NoTemplatesAvailable",
                "No template's hardware is available in the cluster",
            )
        } else if failed > 0 {
            Health::new(
                component,
                ComponentState::Degraded,
                "SomeTemplatesDegraded",
                format!("{failed} of {n} templates failed"),
            )
        } else if waiting > 0 {
            Health::new(
                component,
                ComponentState::Progressing,
                "TemplatesProgressing",
                format!("{waiting} of {n} templates are not ready yet"),
            )
        } else {
            Health::ready(
                component,
                "SomeTemplatesReady",
                format!("{ready} of {n} templates are ready; the others lack hardware"),
            )
        }
    };
    healths.push(health);
    ModelPlan {
        healths,
        templates: planned,
        metadata,
    }
}

fn template_object(
    cluster: bool,
    name: &str,
    namespace: Option<&str>,
    labels: Value,
    spec: &AIMServiceTemplateSpec,
) -> Value {
    let mut spec = serde_json::to_value(spec).expect("serialises");
    if cluster {
        // Cluster templates have no caching block.
        spec.as_object_mut().map(|o| o.remove("caching"));
    }
    let mut metadata = json!({"name": name, "labels": labels});
    if let (false, Some(ns)) = (cluster, namespace) {
        metadata["namespace"] = json!(ns);
    }
    json!({
        "apiVersion": aim_api::API_VERSION,
        "kind": if cluster { "AIMClusterServiceTemplate" } else { "AIMServiceTemplate" },
        "metadata": metadata,
        "spec": spec,
    })
}

fn plan_templates(
    model: &str,
    namespace: Option<&str>,
    cluster: bool,
    spec: &AIMModelSpec,
    metadata: Option<&ImageMetadata>,
) -> Vec<Value> {
    let mut out = Vec::new();
    let base_labels =
        json!({"aim.eai.amd.com/model": model, "aim.eai.amd.com/origin": "auto-generated"});
    let custom_hw = spec.custom.as_ref().and_then(|c| c.hardware.clone());
    let custom_type = spec.custom.as_ref().and_then(|c| c.type_);
    let custom_template = |index: usize, t: Option<&aim_api::model::CustomTemplate>| {
        let hardware = t.and_then(|t| t.hardware.clone()).or(custom_hw.clone());
        let metric = t.and_then(|t| t.profile.as_ref()).and_then(|p| p.metric);
        let precision = t.and_then(|t| t.profile.as_ref()).and_then(|p| p.precision);
        let mut env = if cluster {
            Vec::new()
        } else {
            spec.env.clone()
        };
        if let Some(t) = t {
            aim_rules::env::merge_env(&mut env, &t.env);
        }
        let hash = json!([
            model,
            index,
            t.and_then(|t| t.name.clone()),
            metric,
            precision,
            hardware
        ]);
        let mut parts = vec![model, "custom"];
        let alias = t.and_then(|t| t.name.clone());
        if let Some(a) = &alias {
            parts.push(a);
        }
        let name = aim_rules::naming::derived_name(&parts, &[hash], 8, 63);
        let tspec = AIMServiceTemplateSpec {
            model_name: model.to_string(),
            metric,
            precision,
            hardware,
            model_sources: spec.model_sources.clone(),
            image_pull_secrets: spec.image_pull_secrets.clone(),
            service_account_name: spec.service_account_name.clone(),
            type_: t
                .and_then(|t| t.type_)
                .or(custom_type)
                .or(Some(ProfileType::Unoptimized)),
            env,
            ..Default::default()
        };
        let mut labels = base_labels.clone();
        if let Some(a) = alias {
            labels["aim.eai.amd.com/template.alias"] = json!(a);
        }
        template_object(cluster, &name, namespace, labels, &tspec)
    };
    if !spec.model_sources.is_empty() && spec.custom_templates.is_empty() {
        out.push(custom_template(0, None));
        return out;
    }
    for (i, t) in spec.custom_templates.iter().enumerate() {
        out.push(custom_template(i, Some(t)));
    }
    if spec.model_sources.is_empty() {
        let deployments = metadata
            .and_then(|m| m.model.as_ref())
            .map(|m| m.recommended_deployments.clone())
            .unwrap_or_default();
        for d in deployments {
            let gpu = d.gpu_model.clone().unwrap_or_default();
            let count = d.gpu_count.unwrap_or(0);
            let metric = d
                .metric
                .as_deref()
                .and_then(|m| serde_json::from_value::<Metric>(json!(m.to_lowercase())).ok());
            let precision = d.precision.as_deref().and_then(|p| {
                serde_json::from_value::<aim_api::common::Precision>(json!(p.to_lowercase())).ok()
            });
            let mut suffix = format!("{count}x-{}", gpu.to_lowercase());
            match metric {
                Some(Metric::Latency) => suffix.push_str("-lat"),
                Some(Metric::Throughput) => suffix.push_str("-thr"),
                None => {}
            }
            if let Some(p) = precision {
                suffix.push('-');
                suffix.push_str(p.as_str());
            }
            let hash_input = format!(
                "{model}-{}{}{}{}{}",
                spec.image,
                if gpu.is_empty() {
                    String::new()
                } else {
                    format!("-{gpu}")
                },
                if count > 0 {
                    format!("-x{count}")
                } else {
                    String::new()
                },
                metric
                    .map(|m| format!("-{}", m.as_str()))
                    .unwrap_or_default(),
                precision
                    .map(|p| format!("-{}", p.as_str()))
                    .unwrap_or_default(),
            );
            let name = aim_rules::naming::derived_name(
                &[&spec.image, &suffix],
                &[json!(hash_input)],
                4,
                63,
            );
            let hardware =
                (!gpu.is_empty() && count > 0).then(|| HardwareFromDeployment::gpu(&gpu, count));
            let tspec = AIMServiceTemplateSpec {
                model_name: model.to_string(),
                metric,
                precision,
                profile_id: d.profile_id.clone(),
                hardware,
                image_pull_secrets: spec.image_pull_secrets.clone(),
                service_account_name: spec.service_account_name.clone(),
                ..Default::default()
            };
            out.push(template_object(
                cluster,
                &name,
                namespace,
                base_labels.clone(),
                &tspec,
            ));
        }
    }
    out
}

struct HardwareFromDeployment;

impl HardwareFromDeployment {
    fn gpu(model: &str, count: i32) -> aim_api::common::HardwareRequirements {
        aim_api::common::HardwareRequirements {
            gpu: Some(aim_api::common::GpuRequirements {
                requests: Some(count),
                model: Some(model.to_string()),
                ..Default::default()
            }),
            cpu: None,
        }
    }
}

async fn reconcile<M: ModelObject>(
    model: Arc<M>,
    ctx: Arc<Context>,
) -> Result<Action, kube::Error> {
    let started = Instant::now();
    let result = reconcile_inner(&*model, &ctx).await;
    ctx.metrics.reconciled(M::CONTROLLER, started.elapsed());
    if let Err(e) = &result {
        ctx.metrics
            .failed(M::CONTROLLER, crate::metrics::error_kind(e));
    }
    result
}

async fn reconcile_inner<M: ModelObject>(model: &M, ctx: &Context) -> Result<Action, kube::Error> {
    if is_paused(model.meta()) || model.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let client = &ctx.client;
    let ns = model.namespace();
    let name = model.name_any();
    let spec = model.spec();
    let config =
        crate::runtime_config::lookup(client, ns.as_deref(), spec.runtime_config_name.as_deref())
            .await?;
    // `spec.modelName` is a selectable field of the template CRDs, so the
    // apiserver filters; listing every template per model would be quadratic.
    let by_model = ListParams::default().fields(&format!("spec.modelName={name}"));
    let templates: Vec<Option<ResourcePhase>> = if M::CLUSTER {
        Api::<AIMClusterServiceTemplate>::all(client.clone())
            .list(&by_model)
            .await?
            .items
            .iter()
            .filter(|t| t.spec.model_name == name)
            .map(|t| t.status.as_ref().and_then(|s| s.status))
            .collect()
    } else {
        Api::<AIMServiceTemplate>::namespaced(client.clone(), ns.as_deref().unwrap_or_default())
            .list(&by_model)
            .await?
            .items
            .iter()
            .filter(|t| t.spec.model_name == name)
            .map(|t| t.status.as_ref().and_then(|s| s.status))
            .collect()
    };
    let old = model.status().cloned();
    let inspection = if needs_inspection(spec, old.as_ref(), model.meta().generation) {
        let secrets_ns = if M::CLUSTER {
            ctx.settings.operator_namespace.clone()
        } else {
            ns.clone().unwrap_or_default()
        };
        let started = Instant::now();
        let result =
            crate::inspect::inspect(client, &secrets_ns, &spec.image, &spec.image_pull_secrets)
                .await;
        tracing::debug!(image = %spec.image, elapsed = ?started.elapsed(), ok = result.is_ok(), "inspected image");
        Some(match result {
            Ok(m) => Inspection::Found(Box::new(m)),
            Err(e) => Inspection::Failed(InspectFailure::from(&e)),
        })
    } else {
        None
    };
    let backoff_key = model.meta().uid.clone().unwrap_or_else(|| name.clone());
    let retry_after = match &inspection {
        Some(Inspection::Failed(_)) => Some(crate::inspect::failed(&backoff_key)),
        _ => {
            crate::inspect::succeeded(&backoff_key);
            None
        }
    };
    let plan = plan(
        &name,
        ns.as_deref(),
        M::CLUSTER,
        spec,
        old.as_ref(),
        &config,
        &templates,
        inspection.as_ref(),
    );
    let now = Time(Timestamp::now());
    let previous_conditions = old
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let assessment = state::assess(
        &previous_conditions,
        &plan.healths,
        model.meta().generation,
        &now,
    );
    let manager = format!("aim-{}-controller", M::CONTROLLER);
    if assessment.apply_allowed {
        let owner = kube_io::owner_of(model);
        let controller = if M::CLUSTER {
            aim_rules::labels::Controller::ClusterModel
        } else {
            aim_rules::labels::Controller::Model
        };
        for t in plan.templates {
            let t = kube_io::with_controller_labels(t, controller, &name);
            if let Err(e) = kube_io::apply(client, &manager, t, owner.as_ref()).await {
                tracing::warn!(error = %e, "applying a template failed");
            }
        }
    }
    let status = AIMModelStatus {
        status: Some(ResourcePhase::from(assessment.phase)),
        observed_generation: model.meta().generation,
        conditions: assessment.conditions,
        resolved_runtime_config: match &config {
            ConfigLookup::Found(_, r) => Some(r.clone()),
            _ => None,
        },
        image_metadata: plan.metadata,
        source_type: Some(if spec.model_sources.is_empty() {
            ModelSourceType::Image
        } else {
            ModelSourceType::Custom
        }),
    };
    if Some(&status) != old.as_ref() {
        let api = M::api(client, ns.as_deref());
        kube_io::write_status(
            &api,
            model,
            &manager,
            serde_json::to_value(&status).expect("serialises"),
        )
        .await?;
    }
    kube_io::publish(
        &ctx.recorder,
        &model.object_ref(&()),
        &assessment.transitions,
    )
    .await;
    Ok(Action::requeue(
        retry_after.unwrap_or(Duration::from_secs(300)),
    ))
}

fn error_policy<M: ModelObject>(_m: Arc<M>, error: &kube::Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(%error, controller = M::CONTROLLER, "model reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

/// Runs a model controller (either scope) until `shutdown` resolves.
pub async fn run<M: ModelObject>(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let controller = Controller::new(Api::<M>::all(client.clone()), watcher::Config::default())
        .with_config(kube::runtime::controller::Config::default().concurrency(16));
    let store = controller.store();
    let by_template = store.clone();
    let by_cluster_template = store.clone();
    let by_config = store.clone();
    let by_cluster_config = store.clone();
    controller
        .watches(
            Api::<AIMServiceTemplate>::all(client.clone()),
            watcher::Config::default(),
            move |t| {
                let (model, ns) = (t.spec.model_name.clone(), t.namespace());
                by_template
                    .state()
                    .iter()
                    .filter(|m| !M::CLUSTER && m.namespace() == ns && m.name_any() == model)
                    .map(|m| ObjectRef::from_obj(m.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .watches(
            Api::<AIMClusterServiceTemplate>::all(client.clone()),
            watcher::Config::default(),
            move |t| {
                let model = t.spec.model_name.clone();
                by_cluster_template
                    .state()
                    .iter()
                    .filter(|m| M::CLUSTER && m.name_any() == model)
                    .map(|m| ObjectRef::from_obj(m.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .watches(
            Api::<aim_api::AIMRuntimeConfig>::all(client.clone()),
            watcher::Config::default(),
            move |c| {
                let ns = c.namespace();
                by_config
                    .state()
                    .iter()
                    .filter(|m| m.namespace() == ns)
                    .map(|m| ObjectRef::from_obj(m.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .watches(
            Api::<aim_api::AIMClusterRuntimeConfig>::all(client.clone()),
            watcher::Config::default(),
            move |_| {
                by_cluster_config
                    .state()
                    .iter()
                    .map(|m| ObjectRef::from_obj(m.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile::<M>, error_policy::<M>, ctx)
        .for_each(|_| async {})
        .await;
}
