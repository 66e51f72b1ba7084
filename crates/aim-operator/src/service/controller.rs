//! The AIMService controller: fetch what a service depends on, plan, run the
//! state engine, apply, write status. All decisions are in `plan` and
//! `state`; this file only talks to the API.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aim_api::common::Phase;
use aim_api::service::{AIMServiceStatus, ServicePhase};
use aim_api::{
    AIMClusterModel, AIMClusterServiceTemplate, AIMModel, AIMService, AIMServiceTemplate,
    AIMTemplateCache,
};
use futures::StreamExt;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::Value;

use super::dependents::{Changed, depends_on};
use super::plan::{self, CacheView, ModelLookup, Observed, TemplateLookup};
use super::view::{ModelView, TemplateView};
use crate::context::{Context, is_paused};
use crate::kube_io::{self, IoError};
use crate::state::{self, ComponentState, ErrorCategory, Health, Transition};

const KEDA_API_VERSION: &str = "keda.sh/v1alpha1";

pub const MANAGER: &str = "aim-service-controller";
pub const FINALIZER: &str = "aim.eai.amd.com/template-cache-cleanup";
const CONTROLLER: &str = "service";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("infrastructure error, retrying: {0}")]
    Retry(String),
}

impl Error {
    fn kind(&self) -> &'static str {
        match self {
            Error::Kube(e) => crate::metrics::error_kind(e),
            Error::Io(_) => "apply",
            Error::Retry(_) => "infrastructure",
        }
    }
}

/// The longest one reconcile may take. Every API call has its own read
/// timeout, yet a reconcile that never finishes freezes its service (the
/// controller runs one reconcile per object at a time), so the whole pass is
/// bounded too, and a timeout is an error that is retried and counted.
const RECONCILE_TIMEOUT: Duration = Duration::from_secs(90);

pub async fn reconcile(svc: Arc<AIMService>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = match tokio::time::timeout(RECONCILE_TIMEOUT, reconcile_inner(&svc, &ctx)).await {
        Ok(r) => r,
        Err(_) => {
            tracing::error!(
                service = %format!("{}/{}", svc.namespace().unwrap_or_default(), svc.name_any()),
                "a reconcile took longer than {RECONCILE_TIMEOUT:?}; abandoned and retried"
            );
            Err(Error::Retry(format!(
                "reconcile abandoned after {RECONCILE_TIMEOUT:?}"
            )))
        }
    };
    ctx.metrics.reconciled(CONTROLLER, started.elapsed());
    if let Err(e) = &result {
        ctx.metrics.failed(CONTROLLER, e.kind());
    }
    result
}

pub fn error_policy(_svc: Arc<AIMService>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(%error, "service reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

async fn reconcile_inner(svc: &AIMService, ctx: &Context) -> Result<Action, Error> {
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let api: Api<AIMService> = Api::namespaced(ctx.client.clone(), &ns);
    let finalizers = svc.finalizers().to_vec();
    let terminating = kube_io::namespace_terminating(&ctx.client, &ns).await;

    if svc.meta().deletion_timestamp.is_some() {
        ctx.metrics.service_scaling(&ns, &name, None);
        if finalizers.iter().any(|f| f == FINALIZER) {
            if !terminating {
                cleanup_unready_caches(ctx, svc, &ns).await?;
            }
            let rest: Vec<String> = finalizers.into_iter().filter(|f| f != FINALIZER).collect();
            kube_io::set_finalizers(&api, &name, rest).await?;
        }
        return Ok(Action::await_change());
    }
    // A terminating namespace must never be held up by our finalizer.
    if terminating {
        if finalizers.iter().any(|f| f == FINALIZER) {
            let rest: Vec<String> = finalizers.into_iter().filter(|f| f != FINALIZER).collect();
            kube_io::set_finalizers(&api, &name, rest).await?;
        }
    } else if !finalizers.iter().any(|f| f == FINALIZER) {
        let mut with = finalizers;
        with.push(FINALIZER.to_string());
        kube_io::set_finalizers(&api, &name, with).await?;
        return Ok(Action::requeue(Duration::ZERO));
    }
    if is_paused(svc.meta()) {
        return Ok(Action::await_change());
    }

    let mut fetch_errors: Vec<Health> = Vec::new();
    let observed_parts = fetch(svc, ctx, &ns, &mut fetch_errors).await?;
    let obs = Observed {
        service: svc,
        config: observed_parts.config,
        model: observed_parts.model,
        templates: observed_parts.templates,
        cluster_gpu_models: observed_parts.gpus,
        isvc: observed_parts.isvc,
        isvc_events: observed_parts.isvc_events,
        pods: observed_parts.pods,
        pod_events: observed_parts.pod_events,
        hpa: observed_parts.hpa,
        scaled_object: observed_parts.scaled_object,
        prometheus: observed_parts.prometheus,
        route: observed_parts.route,
        cache: observed_parts.cache,
        kserve: ctx.kserve_autoscaler(),
        now: Timestamp::now(),
    };
    let mut plan = plan::plan(&obs);
    plan.healths.extend(fetch_errors);

    let now = Time(Timestamp::now());
    let old_status = svc.status.clone().unwrap_or_default();
    let assessment = state::assess(
        &old_status.conditions,
        &plan.healths,
        svc.meta().generation,
        &now,
    );

    let mut apply_error = None;
    if assessment.apply_allowed {
        let owner = kube_io::owner_of(svc);
        for (api_version, kind, child) in &plan.delete {
            if let Err(e) = kube_io::delete(&ctx.client, api_version, kind, Some(&ns), child).await
            {
                apply_error = Some(e);
            }
        }
        let label =
            |o| kube_io::with_controller_labels(o, aim_rules::labels::Controller::Service, &name);
        for object in plan.unowned.drain(..) {
            if let Err(e) = kube_io::apply(&ctx.client, MANAGER, label(object), None).await {
                apply_error = Some(e);
            }
        }
        for object in plan.owned.drain(..) {
            if let Err(e) =
                kube_io::apply(&ctx.client, MANAGER, label(object), owner.as_ref()).await
            {
                apply_error = Some(e);
            }
        }
        // The pause switch on KServe's ScaledObject: a merge patch of one
        // annotation, so KServe keeps owning everything else.
        if let Some((so_name, patch)) = &plan.scaled_object_patch {
            let (so_ar, _) =
                kube_io::resource_of(KEDA_API_VERSION, "ScaledObject").expect("known kind");
            let so_api =
                Api::<kube::api::DynamicObject>::namespaced_with(ctx.client.clone(), &ns, &so_ar);
            match so_api
                .patch(so_name, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                Ok(_) => {}
                // Gone since we read it: KServe recreates it from the
                // InferenceService's annotations, which already agree.
                Err(kube::Error::Api(ae)) if ae.code == 404 => {}
                Err(e) => {
                    apply_error = Some(kube_io::IoError::Patch {
                        kind: "ScaledObject".into(),
                        name: so_name.clone(),
                        source: e,
                    });
                }
            }
        }
    }
    // An apply failure is an infrastructure problem of this reconcile.
    let assessment = match &apply_error {
        Some(e) => {
            let mut healths = plan.healths.clone();
            healths.push(
                Health::new(
                    "Apply",
                    ComponentState::Degraded,
                    "InfrastructureError",
                    e.to_string(),
                )
                .because(ErrorCategory::Infrastructure),
            );
            let mut a = state::assess(
                &old_status.conditions,
                &healths,
                svc.meta().generation,
                &now,
            );
            // "Apply" is not a component users should see as a condition.
            a.conditions.retain(|c| c.type_ != "ApplyReady");
            a
        }
        None => assessment,
    };

    let phase = match assessment.phase {
        Phase::Ready | Phase::Running => ServicePhase::Running,
        Phase::Progressing | Phase::Starting => ServicePhase::Starting,
        Phase::Degraded => ServicePhase::Degraded,
        Phase::Failed => ServicePhase::Failed,
        // The CRD's phase enum has no NotAvailable (AIM Engine writes it
        // anyway and the apiserver refuses the status): a service
        // whose hardware is absent is waiting for it.
        Phase::Pending | Phase::NotAvailable => ServicePhase::Pending,
    };
    let status = AIMServiceStatus {
        status: Some(phase),
        observed_generation: svc.meta().generation,
        conditions: assessment.conditions.clone(),
        resolved_model: plan
            .resolved_model
            .clone()
            .or(old_status.resolved_model.clone()),
        resolved_template: plan
            .resolved_template
            .clone()
            .or(old_status.resolved_template.clone()),
        resolved_runtime_config: plan.resolved_runtime_config.clone(),
        routing: plan.routing.clone(),
        cache: plan.cache.clone().or(old_status.cache.clone()),
        runtime: plan.runtime.clone(),
    };
    if Some(&status) != svc.status.as_ref() {
        kube_io::write_status(
            &api,
            svc,
            MANAGER,
            serde_json::to_value(&status).expect("status serialises"),
        )
        .await?;
    }
    kube_io::publish(&ctx.recorder, &svc.object_ref(&()), &assessment.transitions).await;
    ctx.metrics.service_scaling(
        &ns,
        &name,
        scaling_metrics(svc, &plan, &assessment.conditions),
    );
    if let Some(decision) = &plan.scale_decision {
        ctx.metrics
            .scale_decided(&ns, &name, decision.reason == "ScaledUp");
        let scaled = [Transition {
            warning: false,
            reason: decision.reason.to_string(),
            message: decision.message.clone(),
        }];
        kube_io::publish(&ctx.unaggregated_recorder(), &svc.object_ref(&()), &scaled).await;
    }

    if let Some(e) = apply_error {
        return Err(e.into());
    }
    if assessment.retry {
        return Err(Error::Retry(
            "an infrastructure error blocked this reconcile".into(),
        ));
    }
    // Watches cover every input; the periodic requeue only bounds the
    // damage of a missed event.
    // A Prometheus query's series come and go with the pods and scrapes,
    // which no watch sees: look again every half minute.
    let has_prometheus = !super::prometheus::queries(&svc.spec).is_empty();
    Ok(Action::requeue(
        if phase == ServicePhase::Running && !has_prometheus {
            Duration::from_secs(300)
        } else {
            Duration::from_secs(30)
        },
    ))
}

/// The metrics view of an autoscaled service's scaling; `None` for fixed
/// replicas.
fn scaling_metrics(
    svc: &AIMService,
    plan: &plan::Plan,
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) -> Option<crate::metrics::ServiceScaling> {
    if !super::render::replicas(svc).autoscaling {
        return None;
    }
    let runtime = plan.runtime.clone().unwrap_or_default();
    let hpa = conditions.iter().find(|c| c.type_ == "HPAReady");
    let ns = svc.namespace().unwrap_or_default();
    Some(crate::metrics::ServiceScaling {
        isvc: aim_rules::naming::isvc_name(&svc.name_any(), &ns).unwrap_or_default(),
        current: runtime.current_replicas.unwrap_or(0),
        desired: runtime.desired_replicas.unwrap_or(0),
        min: runtime.min_replicas.unwrap_or(0),
        max: runtime.max_replicas.unwrap_or(0),
        paused: runtime.paused == Some(true),
        reason: hpa.map(|c| c.reason.clone()).unwrap_or_default(),
        ready: hpa.is_some_and(|c| c.status == "True"),
    })
}

async fn cleanup_unready_caches(
    ctx: &Context,
    svc: &AIMService,
    ns: &str,
) -> Result<(), kube::Error> {
    let api: Api<AIMTemplateCache> = Api::namespaced(ctx.client.clone(), ns);
    let label = aim_rules::naming::sanitize(&svc.name_any());
    let template = svc
        .status
        .as_ref()
        .and_then(|st| st.resolved_template.as_ref())
        .and_then(|r| r.name.clone());
    // This service's caches: those labelled for it, and (its label may
    // have been overwritten by another user) the Shared cache of its template.
    let caches: Vec<AIMTemplateCache> = match api.list(&ListParams::default()).await {
        Ok(list) => list
            .items
            .into_iter()
            .filter(|c| {
                c.labels().get("aim.eai.amd.com/service") == Some(&label)
                    || (svc.spec.cache_mode() == aim_api::service::CacheMode::Shared
                        && c.owner_references().is_empty()
                        && Some(&c.spec.template_name) == template.as_ref())
            })
            .collect(),
        Err(kube::Error::Api(e)) if e.code == 403 || e.code == 404 => return Ok(()),
        Err(e) => return Err(e),
    };
    // The service label on a Shared cache names whichever service applied
    // it last, so it does not say who else waits for the cache. Another
    // live Shared-mode service on the same template does; a Dedicated
    // cache (owned) has no other user.
    let others: Vec<AIMService> = Api::<AIMService>::namespaced(ctx.client.clone(), ns)
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|o| {
            o.uid() != svc.uid()
                && o.metadata.deletion_timestamp.is_none()
                && o.spec.cache_mode() == aim_api::service::CacheMode::Shared
        })
        .collect();
    for cache in caches {
        let ready = cache.status.as_ref().and_then(|s| s.status)
            == Some(aim_api::status::ResourcePhase::Ready);
        let shared = cache.owner_references().is_empty();
        let still_used = shared
            && others.iter().any(|o| {
                o.status
                    .as_ref()
                    .and_then(|st| st.resolved_template.as_ref())
                    .and_then(|r| r.name.as_deref())
                    == Some(cache.spec.template_name.as_str())
            });
        if !ready && !still_used {
            match api.delete(&cache.name_any(), &Default::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 403 => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

struct Fetched {
    config: plan::ConfigLookup,
    model: ModelLookup,
    templates: TemplateLookup,
    gpus: BTreeSet<String>,
    isvc: Option<Value>,
    isvc_events: Vec<Event>,
    pods: Vec<Pod>,
    pod_events: Vec<Event>,
    hpa: Option<HorizontalPodAutoscaler>,
    scaled_object: Option<Value>,
    prometheus: Vec<super::prometheus::Probe>,
    route: Option<Value>,
    cache: Option<CacheView>,
}

/// Records a fetch failure as an infrastructure problem of `component`.
fn note(errors: &mut Vec<Health>, component: &'static str, what: &str, e: kube::Error) {
    errors.push(
        Health::new(
            component,
            ComponentState::Degraded,
            "FetchError",
            format!("reading {what} failed: {e}"),
        )
        .because(ErrorCategory::Infrastructure),
    );
}

async fn fetch(
    svc: &AIMService,
    ctx: &Context,
    ns: &str,
    errors: &mut Vec<Health>,
) -> Result<Fetched, Error> {
    let client = &ctx.client;
    let spec = &svc.spec;
    let config =
        crate::runtime_config::lookup(client, Some(ns), spec.runtime_config_name.as_deref())
            .await?;

    let models: Api<AIMModel> = Api::namespaced(client.clone(), ns);
    let cluster_models: Api<AIMClusterModel> = Api::all(client.clone());
    let model = if let Some(name) = spec.model.name.as_deref().map(str::trim) {
        let found = match models.get_opt(name).await? {
            Some(m) => Some(ModelView::from(&m)),
            None => cluster_models
                .get_opt(name)
                .await?
                .as_ref()
                .map(ModelView::from),
        };
        ModelLookup::ByName {
            name: name.to_string(),
            found: found.map(Box::new),
        }
    } else if let Some(image) = spec.model.image.as_deref().map(str::trim) {
        // `spec.image` is a selectable field: the apiserver does the match.
        let by_image = ListParams::default().fields(&format!("spec.image={image}"));
        let mut matches: Vec<ModelView> = models
            .list(&by_image)
            .await?
            .items
            .iter()
            .filter(|m| m.spec.image == image)
            .map(ModelView::from)
            .collect();
        matches.extend(
            cluster_models
                .list(&by_image)
                .await?
                .items
                .iter()
                .filter(|m| m.spec.image == image)
                .map(ModelView::from),
        );
        ModelLookup::ByMatch { matches }
    } else if let Some(custom) = &spec.model.custom {
        let matches = models
            .list(&ListParams::default().fields(&format!("spec.image={}", custom.base_image)))
            .await?
            .items
            .iter()
            .filter(|m| {
                m.spec.image == custom.base_image
                    && same_sources(&m.spec.model_sources, &custom.model_sources)
            })
            .map(ModelView::from)
            .collect();
        ModelLookup::ByMatch { matches }
    } else {
        ModelLookup::ByMatch {
            matches: Vec::new(),
        }
    };

    let model_name = match &model {
        ModelLookup::ByName { found: Some(m), .. } => Some(m.name.clone()),
        ModelLookup::ByMatch { matches } if !matches.is_empty() => {
            let ns_first = matches
                .iter()
                .find(|m| m.namespace.is_some())
                .or(matches.first());
            ns_first.map(|m| m.name.clone())
        }
        _ => None,
    };
    let templates_api: Api<AIMServiceTemplate> = Api::namespaced(client.clone(), ns);
    let cluster_templates: Api<AIMClusterServiceTemplate> = Api::all(client.clone());
    let mut templates = TemplateLookup::default();
    if let Some(base) = spec.template.as_ref().and_then(|t| t.name.as_deref()) {
        let derived = spec
            .overrides
            .as_ref()
            .and_then(|o| aim_rules::naming::derived_template_name(base, o));
        if let Some(d) = derived {
            templates.explicit_derived = templates_api
                .get_opt(&d)
                .await?
                .as_ref()
                .map(TemplateView::from);
        }
        templates.explicit_base = match templates_api.get_opt(base).await? {
            Some(t) => Some(TemplateView::from(&t)),
            None => cluster_templates
                .get_opt(base)
                .await?
                .as_ref()
                .map(TemplateView::from),
        };
    } else if let Some(model_name) = &model_name {
        let by_model = ListParams::default().fields(&format!("spec.modelName={model_name}"));
        templates.candidates.extend(
            templates_api
                .list(&by_model)
                .await?
                .items
                .iter()
                .filter(|t| &t.spec.model_name == model_name)
                .map(TemplateView::from),
        );
        templates.candidates.extend(
            cluster_templates
                .list(&by_model)
                .await?
                .items
                .iter()
                .filter(|t| &t.spec.model_name == model_name)
                .map(TemplateView::from),
        );
    }

    let mut gpus = BTreeSet::new();
    if spec
        .template
        .as_ref()
        .and_then(|t| t.name.as_ref())
        .is_none()
    {
        match Api::<Node>::all(client.clone())
            .list(&ListParams::default())
            .await
        {
            Ok(nodes) => {
                gpus = aim_rules::gpu::cluster_gpus(&nodes.items)
                    .into_keys()
                    .collect()
            }
            Err(e) => note(errors, "Template", "nodes", e),
        }
    }

    let isvc_name = aim_rules::naming::isvc_name(&svc.name_any(), ns).unwrap_or_default();
    let (isvc_ar, _) = kube_io::resource_of(super::render::KSERVE_API_VERSION, "InferenceService")
        .expect("known kind");
    let isvc_api: Api<kube::api::DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &isvc_ar);
    let isvc = match isvc_api.get_opt(&isvc_name).await {
        Ok(o) => o.map(|o| serde_json::to_value(o).unwrap_or(Value::Null)),
        Err(e) => {
            note(errors, "InferenceService", "the InferenceService", e);
            None
        }
    };
    let mut isvc_events = Vec::new();
    let mut pods = Vec::new();
    let mut pod_events = Vec::new();
    let mut hpa = None;
    let mut scaled_object = None;
    if isvc.is_some() {
        // KServe's warnings about the InferenceService come from a watch
        // cache: listing events per reconcile makes the apiserver scan every
        // event of the namespace each time.
        let events: Api<Event> = Api::namespaced(client.clone(), ns);
        let uid = isvc
            .as_ref()
            .and_then(|i| i.pointer("/metadata/uid"))
            .and_then(Value::as_str)
            .map(str::to_string);
        isvc_events = ctx
            .isvc_warnings
            .state()
            .iter()
            .filter(|e| {
                e.involved_object.namespace.as_deref() == Some(ns)
                    && e.involved_object.name.as_deref() == Some(isvc_name.as_str())
                    && e.involved_object.uid == uid
            })
            .map(|e| (**e).clone())
            .collect();
        match Api::<Pod>::namespaced(client.clone(), ns)
            .list(
                &ListParams::default()
                    .labels(&format!("serving.kserve.io/inferenceservice={isvc_name}")),
            )
            .await
        {
            Ok(list) => pods = list.items,
            Err(e) => note(errors, "InferenceServicePods", "pods", e),
        }
        // Only pending pods are explained by their events.
        for pod in pods
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending"))
        {
            let selector = format!(
                "involvedObject.kind=Pod,involvedObject.name={}",
                pod.name_any()
            );
            if let Ok(list) = events.list(&ListParams::default().fields(&selector)).await {
                pod_events.extend(list.items);
            }
        }
        if super::render::replicas(svc).autoscaling {
            match Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), ns)
                .get_opt(&format!("keda-hpa-{isvc_name}-predictor"))
                .await
            {
                Ok(h) => hpa = h,
                Err(e) => note(errors, "HPA", "the HorizontalPodAutoscaler", e),
            }
            let (so_ar, _) =
                kube_io::resource_of(KEDA_API_VERSION, "ScaledObject").expect("known kind");
            match Api::<kube::api::DynamicObject>::namespaced_with(client.clone(), ns, &so_ar)
                .get_opt(&format!("{isvc_name}-predictor"))
                .await
            {
                Ok(so) => {
                    scaled_object = so.map(|o| serde_json::to_value(o).unwrap_or(Value::Null))
                }
                // Without KEDA's CRD there is nothing to pause; the HPA
                // health already says that autoscaling is not happening.
                Err(kube::Error::Api(ae)) if ae.code == 404 => {}
                Err(e) => note(errors, "HPA", "the ScaledObject", e),
            }
        }
    }

    let route_name = aim_rules::naming::httproute_name(&svc.name_any(), ns);
    let (route_ar, _) =
        kube_io::resource_of(super::render::GATEWAY_API_VERSION, "HTTPRoute").expect("known kind");
    let route =
        match Api::<kube::api::DynamicObject>::namespaced_with(client.clone(), ns, &route_ar)
            .get_opt(&route_name)
            .await
        {
            Ok(r) => r.map(|r| serde_json::to_value(r).unwrap_or(Value::Null)),
            Err(e) => {
                note(errors, "HTTPRoute", "the HTTPRoute", e);
                None
            }
        };

    // The Prometheus queries KEDA will run, run now (each answers
    // within seconds, or counts as unreachable).
    let mut prometheus = Vec::new();
    for query in super::prometheus::queries(spec) {
        prometheus.push(super::prometheus::probe(&ctx.prometheus_http, &query).await);
    }

    let cache = fetch_cache(svc, ctx, ns).await?;
    Ok(Fetched {
        config,
        model,
        templates,
        gpus,
        isvc,
        isvc_events,
        pods,
        pod_events,
        hpa,
        scaled_object,
        prometheus,
        route,
        cache,
    })
}

fn same_sources(a: &[aim_api::common::ModelSource], b: &[aim_api::common::ModelSource]) -> bool {
    let endpoint = |s: &aim_api::common::ModelSource| {
        s.env
            .iter()
            .find(|e| e.name == "AWS_ENDPOINT_URL")
            .and_then(|e| e.value.clone())
    };
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.model_id == y.model_id && x.source_uri == y.source_uri && endpoint(x) == endpoint(y)
        })
}

/// The cache the service uses: the one its status names if still Ready,
/// else the dedicated one (owned by this service) or the best shared one
/// for its template.
async fn fetch_cache(
    svc: &AIMService,
    ctx: &Context,
    ns: &str,
) -> Result<Option<CacheView>, Error> {
    let Some(template) = svc
        .status
        .as_ref()
        .and_then(|s| s.resolved_template.as_ref())
        .and_then(|t| t.name.clone())
    else {
        return Ok(None);
    };
    let api: Api<AIMTemplateCache> = Api::namespaced(ctx.client.clone(), ns);
    let mode = svc.spec.cache_mode();
    let uid = svc.uid().unwrap_or_default();
    let caches = api.list(&ListParams::default()).await?.items;
    // A cache being deleted (e.g. for a retry) is no longer the service's.
    let usable = |c: &&AIMTemplateCache| {
        c.meta().deletion_timestamp.is_none()
            && c.spec.template_name == template
            && match mode {
                aim_api::service::CacheMode::Dedicated => {
                    c.spec.mode == Some(aim_api::service::CacheMode::Dedicated)
                        && c.owner_references().iter().any(|o| o.uid == uid)
                }
                aim_api::service::CacheMode::Shared => {
                    c.spec.mode != Some(aim_api::service::CacheMode::Dedicated)
                }
            }
    };
    let rank = |c: &AIMTemplateCache| match c.status.as_ref().and_then(|s| s.status) {
        Some(aim_api::status::ResourcePhase::Ready) => 0,
        Some(aim_api::status::ResourcePhase::Progressing) => 1,
        Some(aim_api::status::ResourcePhase::Pending) | None => 2,
        _ => 3,
    };
    let Some(c) = caches.iter().filter(usable).min_by_key(|c| rank(c)) else {
        return Ok(None);
    };
    // The artifacts the cache lists as Failed, checked against what exists
    // now: one another service (or an earlier reconcile) already deleted
    // for a retry means the cache's Failed status is stale; it will report
    // the recreated artifact shortly.
    let artifacts: Api<aim_api::AIMArtifact> = Api::namespaced(ctx.client.clone(), ns);
    let mut failed_artifacts = Vec::new();
    let mut stale = false;
    for (name, listed) in c
        .status
        .as_ref()
        .and_then(|s| s.artifacts.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, a)| a.status == Some(aim_api::status::ResourcePhase::Failed))
    {
        let live = artifacts.get_opt(&name).await?;
        match live {
            Some(a)
                if a.uid() == listed.uid
                    && a.meta().deletion_timestamp.is_none()
                    && a.status.as_ref().and_then(|s| s.status)
                        == Some(aim_api::status::ResourcePhase::Failed) =>
            {
                failed_artifacts.push(name)
            }
            _ => stale = true,
        }
    }
    let mut phase = c.status.as_ref().and_then(|s| s.status);
    if stale && phase == Some(aim_api::status::ResourcePhase::Failed) {
        phase = Some(aim_api::status::ResourcePhase::Progressing);
    }
    {
        let volumes = c
            .status
            .as_ref()
            .and_then(|s| s.artifacts.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, a)| a.status == Some(aim_api::status::ResourcePhase::Ready))
            .filter_map(|(name, a)| {
                let claim = a.persistent_volume_claim.clone()?;
                let path = a.mount_point.clone().unwrap_or_else(|| {
                    format!(
                        "{}/{}",
                        super::render::CACHE_BASE_PATH,
                        a.model.clone().unwrap_or_default().replace("..", "")
                    )
                });
                Some((
                    aim_rules::naming::sanitize(&name.replace('.', "-")),
                    claim,
                    path,
                ))
            })
            .collect();
        Ok(Some(CacheView {
            name: c.name_any(),
            uid: c.uid(),
            phase,
            message: c
                .status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|x| x.type_ == "Ready"))
                .map(|x| x.message.clone())
                .unwrap_or_default(),
            volumes,
            failed_artifacts,
        }))
    }
}

/// Runs the AIMService controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let services: Api<AIMService> = Api::all(client.clone());
    let (isvc_ar, _) = kube_io::resource_of(super::render::KSERVE_API_VERSION, "InferenceService")
        .expect("known kind");
    let (route_ar, _) =
        kube_io::resource_of(super::render::GATEWAY_API_VERSION, "HTTPRoute").expect("known kind");
    // Bounded concurrency keeps memory flat when hundreds of services
    // change at once (e.g. at start-up).
    let controller = Controller::new(services, watcher::Config::default())
        .with_config(kube::runtime::controller::Config::default().concurrency(16));
    let store = controller.store();
    let wc = watcher::Config::default;

    // A change re-runs exactly the services that resolve against the
    // changed object (see `dependents`).
    let dependents = |store: Store<AIMService>| {
        move |changed: Changed<'_>| -> Vec<ObjectRef<AIMService>> {
            store
                .state()
                .iter()
                .filter(|s| depends_on(s, &changed))
                .map(|s| ObjectRef::from_obj(s.as_ref()))
                .collect()
        }
    };
    let for_model = dependents(store.clone());
    let for_cluster_model = dependents(store.clone());
    let for_template = dependents(store.clone());
    let for_cluster_template = dependents(store.clone());
    let for_config = dependents(store.clone());
    let for_cluster_config = dependents(store.clone());
    let for_cache = dependents(store.clone());
    let store_for_pods = store.clone();
    let store_for_hpa = store.clone();
    let store_for_scaled_objects = store.clone();
    let store_for_config_map = store.clone();
    let (scaled_object_ar, _) =
        kube_io::resource_of(KEDA_API_VERSION, "ScaledObject").expect("known kind");

    controller
        .owns_with(
            Api::<kube::api::DynamicObject>::all_with(client.clone(), &isvc_ar),
            isvc_ar.clone(),
            wc(),
        )
        .owns_with(
            Api::<kube::api::DynamicObject>::all_with(client.clone(), &route_ar),
            route_ar.clone(),
            wc(),
        )
        .watches(Api::<AIMModel>::all(client.clone()), wc(), move |m| {
            let ns = m.namespace();
            let service = m.labels().get("aim.eai.amd.com/service").cloned();
            for_model(Changed::Model {
                namespace: Some(ns.as_deref().unwrap_or_default()),
                name: &m.name_any(),
                image: &m.spec.image,
                service: service.as_deref(),
            })
        })
        .watches(
            Api::<AIMClusterModel>::all(client.clone()),
            wc(),
            move |m| {
                for_cluster_model(Changed::Model {
                    namespace: None,
                    name: &m.name_any(),
                    image: &m.spec.image,
                    service: None,
                })
            },
        )
        .watches(
            Api::<AIMServiceTemplate>::all(client.clone()),
            wc(),
            move |t| {
                let ns = t.namespace();
                for_template(Changed::Template {
                    namespace: Some(ns.as_deref().unwrap_or_default()),
                    name: &t.name_any(),
                    model_name: &t.spec.model_name,
                })
            },
        )
        .watches(
            Api::<AIMClusterServiceTemplate>::all(client.clone()),
            wc(),
            move |t| {
                for_cluster_template(Changed::Template {
                    namespace: None,
                    name: &t.name_any(),
                    model_name: &t.spec.model_name,
                })
            },
        )
        .watches(
            Api::<aim_api::AIMRuntimeConfig>::all(client.clone()),
            wc(),
            move |c| {
                let ns = c.namespace();
                for_config(Changed::RuntimeConfig {
                    namespace: Some(ns.as_deref().unwrap_or_default()),
                    name: &c.name_any(),
                })
            },
        )
        .watches(
            Api::<aim_api::AIMClusterRuntimeConfig>::all(client.clone()),
            wc(),
            move |c| {
                for_cluster_config(Changed::RuntimeConfig {
                    namespace: None,
                    name: &c.name_any(),
                })
            },
        )
        .watches(
            Api::<AIMTemplateCache>::all(client.clone()),
            wc(),
            move |c| {
                let ns = c.namespace().unwrap_or_default();
                for_cache(Changed::Cache {
                    namespace: &ns,
                    template_name: &c.spec.template_name,
                })
            },
        )
        .watches(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default().labels("serving.kserve.io/inferenceservice"),
            move |pod| {
                let isvc = pod
                    .labels()
                    .get("serving.kserve.io/inferenceservice")
                    .cloned()
                    .unwrap_or_default();
                services_with_isvc(&store_for_pods, pod.namespace(), &isvc)
            },
        )
        .watches(
            Api::<HorizontalPodAutoscaler>::all(client.clone()),
            wc(),
            move |hpa| {
                let name = hpa.name_any();
                let isvc = name
                    .strip_prefix("keda-hpa-")
                    .and_then(|n| n.strip_suffix("-predictor"))
                    .unwrap_or_default()
                    .to_string();
                services_with_isvc(&store_for_hpa, hpa.namespace(), &isvc)
            },
        )
        // KServe's autoscaler settings are the defaults of the operator's
        // own ScaledObjects: a change re-runs the services that have one.
        .watches(
            Api::<k8s_openapi::api::core::v1::ConfigMap>::all(client.clone()),
            watcher::Config::default()
                .fields(&format!("metadata.name={}", crate::context::KSERVE_CONFIG)),
            move |_| {
                store_for_config_map
                    .state()
                    .iter()
                    .filter(|s| {
                        s.spec
                            .auto_scaling
                            .as_ref()
                            .is_some_and(aim_api::service::AutoScaling::uses_extensions)
                    })
                    .map(|s| ObjectRef::from_obj(s.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        // KServe names the ScaledObject `<isvc>-predictor`; a change to it
        // (KServe rewriting it, KEDA confirming a pause) may need the pause
        // switch put back or the status updated.
        .watches_with(
            Api::<kube::api::DynamicObject>::all_with(client.clone(), &scaled_object_ar),
            scaled_object_ar.clone(),
            wc(),
            move |so| {
                let isvc = so
                    .name_any()
                    .strip_suffix("-predictor")
                    .unwrap_or_default()
                    .to_string();
                services_with_isvc(&store_for_scaled_objects, so.namespace(), &isvc)
            },
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "service controller event");
            }
        })
        .await;
}

fn services_with_isvc(
    store: &Store<AIMService>,
    ns: Option<String>,
    isvc: &str,
) -> Vec<ObjectRef<AIMService>> {
    store
        .state()
        .iter()
        .filter(|s| s.namespace() == ns)
        .filter(|s| {
            aim_rules::naming::isvc_name(&s.name_any(), &ns.clone().unwrap_or_default())
                .is_ok_and(|n| n == isvc)
        })
        .map(|s| ObjectRef::from_obj(s.as_ref()))
        .collect()
}
