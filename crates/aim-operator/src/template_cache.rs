//! The AIMTemplateCache controller: one AIMArtifact per
//! model source of the template, matched or created, and a status that is
//! as good as the worst artifact. A Shared cache takes only unowned
//! artifacts and creates them unowned, so they outlive it; a Dedicated one
//! owns its artifacts and they go with it. The `artifactcleanup` finalizer
//! removes artifacts that never became Ready, except while the namespace
//! is terminating: namespace deletion must never wait on us.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aim_api::cache::{AIMTemplateCacheStatus, CachedArtifact};
use aim_api::common::{ModelSource, TemplateScope};
use aim_api::service::CacheMode;
use aim_api::status::ResourcePhase;
use aim_api::{AIMArtifact, AIMClusterServiceTemplate, AIMServiceTemplate, AIMTemplateCache};
use aim_rules::labels;
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use crate::context::{Context, is_paused};
use crate::kube_io::{self, IoError};
use crate::state::{self, ComponentState, ErrorCategory, Health};

pub const MANAGER: &str = "aim-template-cache-controller";
pub const FINALIZER: &str = "aim.eai.amd.com/artifactcleanup";
const CONTROLLER: &str = "template-cache";

/// The template a cache is for, as observed.
#[derive(Clone, Debug, PartialEq)]
pub struct TemplateState {
    pub name: String,
    pub cluster: bool,
    pub phase: Option<ResourcePhase>,
    pub conditions: Vec<Condition>,
    pub model_sources: Vec<ModelSource>,
}

pub struct CacheObserved<'a> {
    pub cache: &'a AIMTemplateCache,
    pub template: Option<TemplateState>,
    /// Every artifact of the cache's namespace.
    pub artifacts: &'a [AIMArtifact],
}

#[derive(Debug, Default)]
pub struct CachePlan {
    pub healths: Vec<Health>,
    /// Dedicated caches' artifacts (owned by the cache).
    pub owned: Vec<Value>,
    /// Shared caches' artifacts (no owner).
    pub unowned: Vec<Value>,
    pub artifacts: BTreeMap<String, CachedArtifact>,
}

fn mode(cache: &AIMTemplateCache) -> CacheMode {
    cache.spec.mode.unwrap_or_default()
}

/// The env an artifact downloads with: the cache's, then the source's.
fn artifact_env(
    cache: &AIMTemplateCache,
    source: &ModelSource,
) -> Vec<k8s_openapi::api::core::v1::EnvVar> {
    let mut env = cache.spec.env.clone();
    aim_rules::env::merge_env(&mut env, &source.env);
    env
}

/// The artifact name of a source (AIM Engine's derived name): the URI, hashed with what makes
/// two downloads differ (env, storage class, and for Dedicated the cache).
pub fn artifact_name(cache: &AIMTemplateCache, source: &ModelSource) -> String {
    let env = artifact_env(cache, source);
    let mut inputs = vec![
        json!(source.source_uri),
        if env.is_empty() {
            Value::Null
        } else {
            json!(env)
        },
        json!(cache.spec.storage_class_name.clone().unwrap_or_default()),
    ];
    if mode(cache) == CacheMode::Dedicated {
        inputs.push(json!("dedicated"));
        inputs.push(json!(cache.name_any()));
    }
    aim_rules::naming::derived_name(&[&source.source_uri.replace('.', "-")], &inputs, 10, 63)
}

fn artifact_phase(a: &AIMArtifact) -> ResourcePhase {
    a.status.as_ref().and_then(|s| s.status).unwrap_or_default()
}

/// Best first: Ready, then working, then waiting, then broken.
fn rank(p: ResourcePhase) -> u8 {
    match p {
        ResourcePhase::Ready => 0,
        ResourcePhase::Progressing => 1,
        ResourcePhase::Pending => 2,
        ResourcePhase::Degraded => 3,
        ResourcePhase::NotAvailable => 4,
        ResourcePhase::Failed => 5,
    }
}

/// The artifact serving `source` for this cache, if any (AIM Engine's
/// matching, with mode isolation: Shared caches never use a Dedicated cache's
/// artifacts and the reverse).
fn matching<'a>(
    cache: &AIMTemplateCache,
    source: &ModelSource,
    artifacts: &'a [AIMArtifact],
) -> Option<&'a AIMArtifact> {
    let uid = cache.uid().unwrap_or_default();
    let class = cache
        .spec
        .storage_class_name
        .clone()
        .filter(|s| !s.is_empty());
    artifacts
        .iter()
        .filter(|a| a.meta().deletion_timestamp.is_none())
        .filter(|a| a.spec.source_uri == source.source_uri)
        .filter(|a| class.is_none() || a.spec.storage_class_name == class)
        .filter(|a| match mode(cache) {
            CacheMode::Shared => a.owner_references().is_empty(),
            CacheMode::Dedicated => a.owner_references().iter().any(|o| o.uid == uid),
        })
        .min_by_key(|a| rank(artifact_phase(a)))
}

fn ready_message(a: &AIMArtifact) -> String {
    a.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

/// Pure planning of one cache.
pub fn plan(obs: &CacheObserved<'_>) -> CachePlan {
    let cache = obs.cache;
    let ns = cache.namespace().unwrap_or_default();
    let mut plan = CachePlan::default();
    let kind = match cache.spec.template_scope {
        TemplateScope::Cluster => "AIMClusterServiceTemplate",
        _ => "AIMServiceTemplate",
    };
    let Some(template) = &obs.template else {
        plan.healths.push(
            Health::new(
                "ServiceTemplate",
                ComponentState::Failed,
                "ReferenceNotFound",
                format!(
                    "{kind} {:?} not found: spec.templateName and spec.templateScope must name an existing template",
                    cache.spec.template_name
                ),
            )
            .upstream()
            .because(ErrorCategory::MissingUpstream),
        );
        return plan;
    };
    let ready = template
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status == "True");
    let template_health = match (ready, template.phase) {
        (Some(true), _) | (None, Some(ResourcePhase::Ready)) => Health::ready(
            "ServiceTemplate",
            "TemplateReady",
            format!("Template {} is ready", template.name),
        ),
        (_, Some(ResourcePhase::Failed | ResourcePhase::Degraded)) | (Some(false), None) => {
            Health::new(
                "ServiceTemplate",
                ComponentState::Failed,
                "TemplateFailed",
                format!("Template {} is {:?}", template.name, template.phase),
            )
        }
        (_, Some(ResourcePhase::NotAvailable)) => Health::new(
            "ServiceTemplate",
            ComponentState::NotAvailable,
            "TemplateNotAvailable",
            format!("Template {} is not available", template.name),
        ),
        _ => Health::new(
            "ServiceTemplate",
            ComponentState::Pending,
            "TemplateNotReady",
            format!("Template {} is not ready yet", template.name),
        ),
    }
    .upstream();
    let template_ready = template_health.state == ComponentState::Ready;
    plan.healths.push(template_health);
    if !template_ready {
        return plan;
    }
    if template.model_sources.is_empty() {
        plan.healths.push(Health::ready(
            "Artifacts",
            "NoCaches",
            "The template has no model sources to cache",
        ));
        return plan;
    }

    let mut missing = 0;
    let mut worst: Option<&AIMArtifact> = None;
    for (index, source) in template.model_sources.iter().enumerate() {
        match matching(cache, source, obs.artifacts) {
            Some(a) => {
                plan.artifacts.insert(
                    a.name_any(),
                    CachedArtifact {
                        uid: a.uid(),
                        name: Some(a.name_any()),
                        model: Some(source.model_id.clone()),
                        status: Some(artifact_phase(a)),
                        persistent_volume_claim: a
                            .status
                            .as_ref()
                            .and_then(|s| s.persistent_volume_claim.clone()),
                        mount_point: None,
                    },
                );
                if worst.is_none_or(|w| rank(artifact_phase(a)) > rank(artifact_phase(w))) {
                    worst = Some(a);
                }
            }
            None => {
                missing += 1;
                let mut artifact_labels = BTreeMap::from([
                    (labels::TEMPLATE_CREATED.to_string(), "true".to_string()),
                    (labels::TEMPLATE_NAME.to_string(), template.name.clone()),
                    (
                        labels::TEMPLATE_SCOPE.to_string(),
                        if template.cluster {
                            "Cluster"
                        } else {
                            "Namespace"
                        }
                        .to_string(),
                    ),
                    (labels::TEMPLATE_INDEX.to_string(), index.to_string()),
                ]);
                for (k, v) in cache.labels() {
                    if k.starts_with(labels::AIM_PREFIX) {
                        artifact_labels.entry(k.clone()).or_insert(v.clone());
                    }
                }
                let mut spec = json!({
                    "sourceUri": source.source_uri,
                    "modelId": source.model_id,
                    "size": source.size.clone().map(|q| q.0).unwrap_or_else(|| "0".into()),
                });
                let env = artifact_env(cache, source);
                if !env.is_empty() {
                    spec["env"] = json!(env);
                }
                if let Some(sc) = cache
                    .spec
                    .storage_class_name
                    .as_ref()
                    .filter(|s| !s.is_empty())
                {
                    spec["storageClassName"] = json!(sc);
                }
                if let Some(rc) = &cache.spec.runtime_config_name {
                    spec["runtimeConfigName"] = json!(rc);
                }
                if let Some(image) = cache.spec.download_image.as_ref().filter(|s| !s.is_empty()) {
                    spec["modelDownloadImage"] = json!(image);
                }
                if !cache.spec.image_pull_secrets.is_empty() {
                    spec["imagePullSecrets"] = json!(cache.spec.image_pull_secrets);
                }
                let object = json!({
                    "apiVersion": aim_api::API_VERSION,
                    "kind": "AIMArtifact",
                    "metadata": {"name": artifact_name(cache, source), "namespace": ns, "labels": artifact_labels},
                    "spec": spec,
                });
                match mode(cache) {
                    CacheMode::Shared => plan.unowned.push(object),
                    CacheMode::Dedicated => plan.owned.push(object),
                }
            }
        }
    }

    let health = match worst.map(|a| (a, artifact_phase(a))) {
        Some((a, phase @ (ResourcePhase::Failed | ResourcePhase::Degraded))) => {
            let reason = a
                .status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
                .map(|c| c.reason.clone())
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| "CachesNotReady".into());
            Health::new(
                "Artifacts",
                if phase == ResourcePhase::Failed {
                    ComponentState::Failed
                } else {
                    ComponentState::Degraded
                },
                &reason,
                format!(
                    "One or more caches are not ready: AIMArtifact {} ({}) is {phase:?}: {}",
                    a.name_any(),
                    a.spec.source_uri,
                    ready_message(a)
                ),
            )
        }
        _ if missing > 0 => Health::new(
            "Artifacts",
            ComponentState::Progressing,
            "CreatingCaches",
            "Waiting for the AIM artifacts to be created",
        ),
        Some((_, ResourcePhase::Ready)) => Health::ready(
            "Artifacts",
            "AllCachesReady",
            "All model artifacts are downloaded",
        ),
        Some((a, _)) => Health::new(
            "Artifacts",
            ComponentState::Progressing,
            "CachesNotReady",
            format!(
                "AIMArtifact {} is not ready yet: {}",
                a.name_any(),
                ready_message(a)
            ),
        ),
        None => Health::new(
            "Artifacts",
            ComponentState::Progressing,
            "CreatingCaches",
            "Waiting for the AIM artifacts to be created",
        ),
    };
    plan.healths.push(health);
    plan
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("infrastructure error, retrying: {0}")]
    Retry(String),
}

/// Gone, terminating or unreadable namespaces never wait on a finalizer.
/// Deletes the cache's artifacts that never became Ready: a half-done
/// download is worth nothing to the next cache.
async fn cleanup_artifacts(
    client: &kube::Client,
    cache: &AIMTemplateCache,
    ns: &str,
) -> Result<(), kube::Error> {
    let api: Api<AIMArtifact> = Api::namespaced(client.clone(), ns);
    let selector = format!("{}={}", labels::TEMPLATE_CACHE_NAME, cache.name_any());
    for a in api
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
    {
        if artifact_phase(&a) != ResourcePhase::Ready {
            match api.delete(&a.name_any(), &Default::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

async fn reconcile(cache: Arc<AIMTemplateCache>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&cache, &ctx).await;
    ctx.metrics.reconciled(CONTROLLER, started.elapsed());
    if result.is_err() {
        ctx.metrics.failed(CONTROLLER, "api");
    }
    result
}

async fn reconcile_inner(cache: &AIMTemplateCache, ctx: &Context) -> Result<Action, Error> {
    let client = &ctx.client;
    let ns = cache.namespace().unwrap_or_default();
    let name = cache.name_any();
    let api: Api<AIMTemplateCache> = Api::namespaced(client.clone(), &ns);
    let finalizers = cache.finalizers().to_vec();
    let has_finalizer = finalizers.iter().any(|f| f == FINALIZER);
    let terminating = kube_io::namespace_terminating(client, &ns).await;
    let without = || {
        finalizers
            .iter()
            .filter(|f| *f != FINALIZER)
            .cloned()
            .collect::<Vec<_>>()
    };

    if cache.meta().deletion_timestamp.is_some() {
        if has_finalizer {
            if !terminating {
                cleanup_artifacts(client, cache, &ns).await?;
            }
            kube_io::set_finalizers(&api, &name, without()).await?;
        }
        return Ok(Action::await_change());
    }
    if terminating {
        if has_finalizer {
            kube_io::set_finalizers(&api, &name, without()).await?;
        }
        return Ok(Action::await_change());
    }
    if !has_finalizer {
        let mut with = finalizers.clone();
        with.push(FINALIZER.to_string());
        kube_io::set_finalizers(&api, &name, with).await?;
        return Ok(Action::requeue(Duration::ZERO));
    }
    if is_paused(cache.meta()) {
        return Ok(Action::await_change());
    }

    let template_name = &cache.spec.template_name;
    let namespaced = || async {
        Api::<AIMServiceTemplate>::namespaced(client.clone(), &ns)
            .get_opt(template_name)
            .await
            .map(|t| {
                t.map(|t| {
                    let st = t.status.unwrap_or_default();
                    TemplateState {
                        name: template_name.clone(),
                        cluster: false,
                        phase: st.status,
                        conditions: st.conditions,
                        model_sources: st.model_sources,
                    }
                })
            })
    };
    let cluster = || async {
        Api::<AIMClusterServiceTemplate>::all(client.clone())
            .get_opt(template_name)
            .await
            .map(|t| {
                t.map(|t| {
                    let st = t.status.unwrap_or_default();
                    TemplateState {
                        name: template_name.clone(),
                        cluster: true,
                        phase: st.status,
                        conditions: st.conditions,
                        model_sources: st.model_sources,
                    }
                })
            })
    };
    let template = match cache.spec.template_scope {
        TemplateScope::Namespace => namespaced().await?,
        TemplateScope::Cluster => cluster().await?,
        TemplateScope::Unknown => match namespaced().await? {
            Some(t) => Some(t),
            None => cluster().await?,
        },
    };
    let artifacts = Api::<AIMArtifact>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await?
        .items;
    let obs = CacheObserved {
        cache,
        template,
        artifacts: &artifacts,
    };
    let mut plan = plan(&obs);

    let now = Time(Timestamp::now());
    let old = cache.status.clone().unwrap_or_default();
    let generation = cache.meta().generation;
    let assessment = state::assess(&old.conditions, &plan.healths, generation, &now);
    let mut apply_error = None;
    if assessment.apply_allowed {
        let owner = kube_io::owner_of(cache);
        let label =
            |o| kube_io::with_controller_labels(o, labels::Controller::TemplateCache, &name);
        for object in plan.unowned.drain(..) {
            if let Err(e) = kube_io::apply(client, MANAGER, label(object), None).await {
                apply_error = Some(e);
            }
        }
        for object in plan.owned.drain(..) {
            if let Err(e) = kube_io::apply(client, MANAGER, label(object), owner.as_ref()).await {
                apply_error = Some(e);
            }
        }
    }
    let status = AIMTemplateCacheStatus {
        status: Some(ResourcePhase::from(assessment.phase)),
        observed_generation: generation,
        conditions: assessment.conditions.clone(),
        resolved_runtime_config: None,
        resolved_template_kind: obs.template.as_ref().map(|t| {
            if t.cluster {
                "AIMClusterServiceTemplate"
            } else {
                "AIMServiceTemplate"
            }
            .to_string()
        }),
        artifacts: (!plan.artifacts.is_empty()).then(|| plan.artifacts.clone()),
    };
    if status != old {
        match kube_io::write_status(
            &api,
            cache,
            MANAGER,
            serde_json::to_value(&status).expect("status serialises"),
        )
        .await
        {
            Ok(()) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    kube_io::publish(
        &ctx.recorder,
        &cache.object_ref(&()),
        &assessment.transitions,
    )
    .await;
    if let Some(e) = apply_error {
        return Err(e.into());
    }
    if assessment.retry {
        return Err(Error::Retry(
            "an infrastructure error blocked this reconcile".into(),
        ));
    }
    Ok(Action::requeue(Duration::from_secs(
        if status.status == Some(ResourcePhase::Ready) {
            300
        } else {
            30
        },
    )))
}

fn error_policy(_c: Arc<AIMTemplateCache>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(%error, "template cache reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

/// Runs the AIMTemplateCache controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let controller = Controller::new(
        Api::<AIMTemplateCache>::all(client.clone()),
        watcher::Config::default(),
    )
    .with_config(kube::runtime::controller::Config::default().concurrency(16));
    let store = controller.store();
    let store_cluster = store.clone();
    controller
        // Artifacts point at their cache by label, owned or not.
        .watches(
            Api::<AIMArtifact>::all(client.clone()),
            watcher::Config::default(),
            |a| {
                let ns = a.namespace()?;
                let cache = a.labels().get(labels::TEMPLATE_CACHE_NAME)?.clone();
                Some(ObjectRef::<AIMTemplateCache>::new(&cache).within(&ns))
            },
        )
        .watches(
            Api::<AIMServiceTemplate>::all(client.clone()),
            watcher::Config::default(),
            move |t| {
                let (name, ns) = (t.name_any(), t.namespace());
                store
                    .state()
                    .iter()
                    .filter(|c| {
                        c.namespace() == ns
                            && c.spec.template_name == name
                            && c.spec.template_scope != TemplateScope::Cluster
                    })
                    .map(|c| ObjectRef::from_obj(c.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .watches(
            Api::<AIMClusterServiceTemplate>::all(client.clone()),
            watcher::Config::default(),
            move |t| {
                let name = t.name_any();
                store_cluster
                    .state()
                    .iter()
                    .filter(|c| {
                        c.spec.template_name == name
                            && c.spec.template_scope != TemplateScope::Namespace
                    })
                    .map(|c| ObjectRef::from_obj(c.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use aim_api::cache::AIMTemplateCacheSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn cache(mode: CacheMode) -> AIMTemplateCache {
        let mut c = AIMTemplateCache::new(
            "tc",
            AIMTemplateCacheSpec {
                template_name: "t".into(),
                template_scope: TemplateScope::Namespace,
                mode: Some(mode),
                ..Default::default()
            },
        );
        c.metadata.namespace = Some("ns".into());
        c.metadata.uid = Some("cache-uid".into());
        c
    }

    fn source(uri: &str) -> ModelSource {
        ModelSource {
            model_id: "org/m".into(),
            source_uri: uri.into(),
            size: None,
            env: Vec::new(),
        }
    }

    fn template(sources: Vec<ModelSource>) -> TemplateState {
        TemplateState {
            name: "t".into(),
            cluster: false,
            phase: Some(ResourcePhase::Ready),
            conditions: Vec::new(),
            model_sources: sources,
        }
    }

    fn artifact(uri: &str, phase: ResourcePhase, owner: Option<&str>) -> AIMArtifact {
        let mut a = AIMArtifact::new(
            &format!("a-{}", rank(phase)),
            aim_api::artifact::AIMArtifactSpec {
                source_uri: uri.into(),
                ..Default::default()
            },
        );
        a.status = Some(aim_api::artifact::AIMArtifactStatus {
            status: Some(phase),
            ..Default::default()
        });
        if let Some(uid) = owner {
            a.metadata.owner_references = Some(vec![OwnerReference {
                uid: uid.into(),
                ..Default::default()
            }]);
        }
        a
    }

    #[test]
    fn missing_artifacts_are_created_unowned_for_shared_and_owned_for_dedicated() {
        for (mode, owned) in [(CacheMode::Shared, false), (CacheMode::Dedicated, true)] {
            let c = cache(mode);
            let p = plan(&CacheObserved {
                cache: &c,
                template: Some(template(vec![source("hf://org/m")])),
                artifacts: &[],
            });
            assert_eq!(p.owned.len(), usize::from(owned));
            assert_eq!(p.unowned.len(), usize::from(!owned));
            let a = p.owned.first().or(p.unowned.first()).unwrap();
            assert_eq!(a["spec"]["size"], "0");
            assert_eq!(a["metadata"]["labels"][labels::TEMPLATE_INDEX], "0");
            assert_eq!(p.healths.last().unwrap().reason, "CreatingCaches");
        }
    }

    #[test]
    fn dedicated_and_shared_names_differ() {
        let s = source("hf://org/m.v1");
        let shared = artifact_name(&cache(CacheMode::Shared), &s);
        let dedicated = artifact_name(&cache(CacheMode::Dedicated), &s);
        assert_ne!(shared, dedicated);
        // Go's sanitizing keeps one dash per replaced character.
        assert!(shared.starts_with("hf---org-m-v1-"), "{shared}");
    }

    #[test]
    fn modes_never_share_artifacts() {
        let arts = [artifact("hf://org/m", ResourcePhase::Ready, Some("other"))];
        let c = cache(CacheMode::Shared);
        let p = plan(&CacheObserved {
            cache: &c,
            template: Some(template(vec![source("hf://org/m")])),
            artifacts: &arts,
        });
        assert_eq!(p.unowned.len(), 1, "an owned artifact is not shared");
        let arts = [artifact("hf://org/m", ResourcePhase::Ready, None)];
        let c = cache(CacheMode::Dedicated);
        let p = plan(&CacheObserved {
            cache: &c,
            template: Some(template(vec![source("hf://org/m")])),
            artifacts: &arts,
        });
        assert_eq!(p.owned.len(), 1, "a dedicated cache makes its own");
    }

    #[test]
    fn the_worst_artifact_decides_and_explains() {
        let arts = [
            artifact("hf://org/a", ResourcePhase::Ready, None),
            artifact("hf://org/b", ResourcePhase::Failed, None),
        ];
        let c = cache(CacheMode::Shared);
        let p = plan(&CacheObserved {
            cache: &c,
            template: Some(template(vec![source("hf://org/a"), source("hf://org/b")])),
            artifacts: &arts,
        });
        let h = p.healths.last().unwrap();
        assert_eq!(h.state, ComponentState::Failed);
        assert!(h.message.contains("hf://org/b"), "{}", h.message);
        assert_eq!(p.artifacts.len(), 2);
        let all_ready = [artifact("hf://org/a", ResourcePhase::Ready, None)];
        let p = plan(&CacheObserved {
            cache: &c,
            template: Some(template(vec![source("hf://org/a")])),
            artifacts: &all_ready,
        });
        assert_eq!(p.healths.last().unwrap().state, ComponentState::Ready);
    }

    #[test]
    fn a_missing_template_fails_the_cache() {
        let c = cache(CacheMode::Shared);
        let p = plan(&CacheObserved {
            cache: &c,
            template: None,
            artifacts: &[],
        });
        assert_eq!(p.healths[0].error, Some(ErrorCategory::MissingUpstream));
        assert!(p.owned.is_empty() && p.unowned.is_empty());
    }
}
