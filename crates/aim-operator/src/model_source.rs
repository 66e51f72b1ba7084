//! AIMClusterModelSource controller: list a registry's
//! repositories and tags, keep those that pass the source's filters, and
//! create one AIMClusterModel per match, up to `maxModels`.
//!
//! The flow is split so that everything that decides is pure:
//! 1. [`sync_due`] decides whether this reconcile talks to registries at all.
//!    Status writes, operator restarts and spec-less events would otherwise
//!    each cost a full registry listing.
//! 2. The I/O half ([`discover`]) turns each filter into a [`FilterResult`]:
//!    the images it matched, or why it failed.
//! 3. [`plan`] turns filter results and the models that already exist into
//!    models to create, component health and status counts.
//!
//! Models are append-only: an image that stops matching keeps its model,
//! because services may be using it. They are owned by the source, so
//! deleting the source garbage-collects them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aim_api::common::Phase;
use aim_api::conditions::{self, NewCondition};
use aim_api::model_source::{AIMClusterModelSourceSpec, AIMClusterModelSourceStatus};
use aim_api::{AIMClusterModel, AIMClusterModelSource};
use aim_rules::labels;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{LocalObjectReference, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};

use crate::catalog_filter::{self, FilterTarget};
use crate::context::{Context, is_paused};
use crate::inspect::InspectError;
use crate::kube_io;
use crate::registry::{self, Credentials, RegistryError, Session};
use crate::state::{self, ComponentState, ErrorCategory, Health};

const CONTROLLER: labels::Controller = labels::Controller::ClusterModelSource;
const METRICS_NAME: &str = "cluster-model-source";
const DEFAULT_SYNC_INTERVAL: &str = "1h";
const DEFAULT_MAX_MODELS: i32 = 100;
/// How soon a source whose last sync was not clean is tried again (capped by
/// its own interval): long enough not to hammer a registry that refuses us,
/// short enough that a fixed secret or registry shows up within a minute.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);
/// Condition messages are for people; a source with a hundred failing
/// filters should not produce a status too big to read (or to store).
const MAX_MESSAGE_CHARS: usize = 4000;
pub const LIMIT_CONDITION: &str = "MaxModelsLimitReached";

// ---------------------------------------------------------------------------
// Sync interval
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum IntervalError {
    #[error(
        "spec.syncInterval {value:?} is not a duration ({reason}): write a Go duration such as 30s, 5m, 1h or 1h30m"
    )]
    Unparsable { value: String, reason: String },
    #[error(
        "spec.syncInterval {value:?} is shorter than 1s, which would list the registry continuously: use at least 1s (the default is 1h)"
    )]
    TooShort { value: String },
}

/// Parses a Go `time.Duration` string (`300ms`, `1.5h`, `2h45m`). Units:
/// ns, us, µs, ms, s, m, h. Intervals under a second are rejected: they
/// only make sense as typos and would turn the sync into a busy loop.
pub fn parse_sync_interval(value: &str) -> Result<Duration, IntervalError> {
    let bad = |reason: &str| IntervalError::Unparsable {
        value: value.to_string(),
        reason: reason.to_string(),
    };
    let text = value.trim();
    if text.is_empty() {
        return Err(bad("it is empty"));
    }
    if text.starts_with('-') {
        return Err(bad("it is negative"));
    }
    let text = text.strip_prefix('+').unwrap_or(text);
    let mut seconds = 0f64;
    let mut rest = text;
    if rest == "0" {
        rest = "";
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| bad("a number without a unit"))?;
        if number_len == 0 {
            return Err(bad("expected a number"));
        }
        let number: f64 = rest[..number_len]
            .parse()
            .map_err(|_| bad("a malformed number"))?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => return Err(bad("a number without a unit")),
            _ => return Err(bad("an unknown unit; use ns, us, ms, s, m or h")),
        };
        seconds += number * scale;
        rest = &rest[unit_len..];
    }
    if !seconds.is_finite() || seconds > 1e9 {
        return Err(bad("it is too large"));
    }
    if seconds < 1.0 {
        return Err(IntervalError::TooShort {
            value: value.to_string(),
        });
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// How long after the last sync the next one is due: the interval, or
/// sooner when the last sync left the source unhealthy.
pub fn next_sync_delay(interval: Duration, last_phase: Option<Phase>) -> Duration {
    if last_phase == Some(Phase::Ready) {
        interval
    } else {
        interval.min(RETRY_AFTER_FAILURE)
    }
}

/// `None` when a sync is due now; otherwise how long until it is. A spec
/// change (generation) always makes a sync due.
pub fn sync_due(
    generation: Option<i64>,
    status: Option<&AIMClusterModelSourceStatus>,
    interval: Duration,
    now: Timestamp,
) -> Option<Duration> {
    let status = status?;
    if status.observed_generation != generation {
        return None;
    }
    let last = status.last_sync_time.as_ref()?.0;
    let since = now.duration_since(last);
    let since = Duration::try_from(since).unwrap_or(Duration::ZERO);
    let delay = next_sync_delay(interval, status.status);
    delay.checked_sub(since).filter(|d| !d.is_zero())
}

// ---------------------------------------------------------------------------
// Filter results
// ---------------------------------------------------------------------------

/// One image a filter matched.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DiscoveredImage {
    pub registry: String,
    pub repository: String,
    pub tag: String,
}

impl DiscoveredImage {
    pub fn uri(&self) -> String {
        catalog_filter::image_uri(&self.registry, &self.repository, &self.tag)
    }

    /// The model name AIM Engine derives: `[repository, tag]`, hashed over registry,
    /// repository and tag (6 hex characters).
    pub fn model_name(&self) -> String {
        aim_rules::naming::derived_name(
            &[&self.repository, &self.tag],
            &[
                json!(self.registry),
                json!(self.repository),
                json!(self.tag),
            ],
            6,
            aim_rules::naming::MAX_NAME_LEN,
        )
    }
}

/// Why one filter produced nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterFailure {
    /// A short reason, e.g. `RegistryUnreachable`.
    pub reason: &'static str,
    /// What went wrong and what to do, without the filter's index (the
    /// planner adds it).
    pub message: String,
    /// Whether retrying can help without anyone changing anything.
    pub transient: bool,
}

/// What one filter produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FilterResult {
    Matched(Vec<DiscoveredImage>),
    Failed(FilterFailure),
}

fn invalid_filter(reason: &'static str, message: String) -> FilterFailure {
    FilterFailure {
        reason,
        message,
        transient: false,
    }
}

/// A registry error, phrased for a source's filter: which field to fix.
pub fn registry_failure(e: &RegistryError, pull_secrets: &[LocalObjectReference]) -> FilterFailure {
    match e {
        RegistryError::Unauthorized {
            registry,
            repository,
            status,
        } => {
            let advice = if pull_secrets.is_empty() {
                format!(
                    "create a kubernetes.io/dockerconfigjson secret with credentials for {registry} in the operator namespace and list it in spec.imagePullSecrets"
                )
            } else {
                format!(
                    "check that a secret in spec.imagePullSecrets has valid credentials for {registry} in its .dockerconfigjson"
                )
            };
            invalid_filter(
                "RegistryAuthFailed",
                format!(
                    "registry {registry} refused access to {repository} (HTTP {status}): {advice}"
                ),
            )
        }
        RegistryError::NotFound { registry, image } => invalid_filter(
            "RepositoryNotFound",
            format!(
                "{image} does not exist in registry {registry}: fix the filter's image or push the repository"
            ),
        ),
        RegistryError::InvalidReference { .. } => invalid_filter("InvalidFilter", e.to_string()),
        RegistryError::Unreachable { .. } => FilterFailure {
            reason: "RegistryUnreachable",
            message: format!("{e}; retrying"),
            transient: true,
        },
        RegistryError::Server { .. } => FilterFailure {
            reason: "RegistryError",
            message: e.to_string(),
            transient: true,
        },
        RegistryError::BadResponse { .. } => FilterFailure {
            reason: "RegistryBadResponse",
            message: format!("{e}; retrying"),
            transient: true,
        },
    }
}

/// Whether a wildcard on `registry` needs an API this operator does not
/// speak (Docker Hub and GitHub Packages have no usable `/v2/_catalog`).
pub fn wildcard_unsupported(registry: &str) -> Option<FilterFailure> {
    let api = match registry {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => "the Docker Hub repository API",
        "ghcr.io" => "the GitHub Packages API",
        _ => return None,
    };
    Some(invalid_filter(
        "WildcardUnsupported",
        format!(
            "wildcards on {registry} need {api}, which aim does not call: list each repository as its own filter without * (its tags are then listed), or mirror the images to a registry that serves /v2/_catalog"
        ),
    ))
}

/// Orders a repository's tags newest version first (tags that are not
/// versions last, alphabetically), so that a `maxModels` limit keeps the
/// newest images rather than whichever the registry listed first.
pub fn newest_first(tags: &mut [String]) {
    tags.sort_by(|a, b| {
        match (
            catalog_filter::tag_version(a),
            catalog_filter::tag_version(b),
        ) {
            (Some(x), Some(y)) => y.cmp(&x).then_with(|| a.cmp(b)),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => a.cmp(b),
        }
    });
}

/// The repositories of a catalog a wildcard filter selects, sorted.
pub fn select_repositories(pattern: &str, exclude: &[String], catalog: &[String]) -> Vec<String> {
    let mut out: Vec<String> = catalog
        .iter()
        .filter(|r| catalog_filter::repository_matches(pattern, exclude, r))
        .cloned()
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The images one repository contributes: tags kept by the version
/// constraints, newest first.
pub fn images_of(
    registry: &str,
    repository: &str,
    tags: &[String],
    filter_versions: &[String],
    global_versions: &[String],
) -> Result<Vec<DiscoveredImage>, catalog_filter::FilterError> {
    let mut kept = catalog_filter::keep_tags(tags, filter_versions, global_versions)?;
    newest_first(&mut kept);
    Ok(kept
        .into_iter()
        .map(|tag| DiscoveredImage {
            registry: registry.to_string(),
            repository: repository.to_string(),
            tag,
        })
        .collect())
}

// ---------------------------------------------------------------------------
// Planning
// ---------------------------------------------------------------------------

/// A model the source already has (labelled with its name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExistingModel {
    pub name: String,
    pub image: String,
}

/// What the reconcile observed before planning.
#[derive(Clone, Debug, PartialEq)]
pub enum Observation {
    /// `spec.syncInterval` is unusable; nothing was synced.
    BadInterval(IntervalError),
    /// The pull secrets could not be read; no registry was contacted.
    BadSecrets(SecretProblem),
    /// Every filter ran (in spec order).
    Synced(Vec<FilterResult>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretProblem {
    pub reason: &'static str,
    pub message: String,
    pub category: ErrorCategory,
}

impl From<&InspectError> for SecretProblem {
    fn from(e: &InspectError) -> Self {
        let (reason, category) = match e {
            InspectError::SecretNotFound { .. } => {
                ("SecretNotFound", ErrorCategory::MissingUpstream)
            }
            InspectError::SecretAccess { .. } => {
                ("SecretAccessFailed", ErrorCategory::Infrastructure)
            }
            _ => ("InvalidPullSecret", ErrorCategory::Auth),
        };
        let message = match e {
            InspectError::SecretNotFound { namespace, name } => format!(
                "image pull secret {name} (spec.imagePullSecrets) does not exist in the operator namespace {namespace}: create it there (kubectl create secret docker-registry {name} -n {namespace} ...) or remove it from spec.imagePullSecrets; no registry was contacted"
            ),
            other => format!("{other}; no registry was contacted"),
        };
        Self {
            reason,
            message,
            category,
        }
    }
}

/// Everything the reconcile writes.
#[derive(Clone, Debug, PartialEq)]
pub struct SourcePlan {
    pub healths: Vec<Health>,
    /// AIMClusterModels to create, without owner (the I/O adds it).
    pub models: Vec<Value>,
    /// Existing + newly created models.
    pub discovered: i32,
    /// Distinct images the filters matched (`None` when nothing was synced).
    pub available: Option<i32>,
    pub limit_reached: bool,
    pub max_models: i32,
    /// Whether a failure could go away without a spec change.
    pub transient_failure: bool,
}

fn truncate(mut message: String) -> String {
    if message.chars().count() > MAX_MESSAGE_CHARS {
        message = message.chars().take(MAX_MESSAGE_CHARS).collect();
        message.push_str(" …");
    }
    message
}

/// Pure planning for one source. `existing` are its models; `taken_names`
/// are the names of every other AIMClusterModel, which it must not claim.
pub fn plan(
    source: &str,
    spec: &AIMClusterModelSourceSpec,
    existing: &[ExistingModel],
    taken_names: &BTreeSet<String>,
    observation: &Observation,
) -> SourcePlan {
    let max_models = spec.max_models.unwrap_or(DEFAULT_MAX_MODELS).max(1);
    let mut healths = Vec::new();
    let mut plan = SourcePlan {
        healths: Vec::new(),
        models: Vec::new(),
        discovered: existing.len() as i32,
        available: None,
        limit_reached: false,
        max_models,
        transient_failure: false,
    };
    let results = match observation {
        Observation::BadInterval(e) => {
            healths.push(
                Health::new(
                    "SyncInterval",
                    ComponentState::Failed,
                    "InvalidSyncInterval",
                    e.to_string(),
                )
                .upstream()
                .because(ErrorCategory::InvalidSpec),
            );
            plan.healths = healths;
            return plan;
        }
        Observation::BadSecrets(p) => {
            let state = if p.category == ErrorCategory::Infrastructure {
                ComponentState::Degraded
            } else {
                ComponentState::Failed
            };
            healths.push(
                Health::new("PullSecrets", state, p.reason, p.message.clone())
                    .upstream()
                    .because(p.category),
            );
            plan.transient_failure = p.category == ErrorCategory::Infrastructure;
            plan.healths = healths;
            return plan;
        }
        Observation::Synced(results) => results,
    };
    healths.push(Health::ready(
        "PullSecrets",
        "PullSecretsRead",
        if spec.image_pull_secrets.is_empty() {
            "No image pull secrets: registries are read anonymously".to_string()
        } else {
            format!(
                "{} image pull secret(s) read",
                spec.image_pull_secrets.len()
            )
        },
    ));

    // Every distinct image, in filter order (results are OR-merged).
    let mut matched: Vec<&DiscoveredImage> = Vec::new();
    let mut seen = BTreeSet::new();
    let mut failures = Vec::new();
    for (index, result) in results.iter().enumerate() {
        match result {
            FilterResult::Matched(images) => {
                for image in images {
                    if seen.insert(image.uri()) {
                        matched.push(image);
                    }
                }
            }
            FilterResult::Failed(f) => {
                let image = spec
                    .filters
                    .get(index)
                    .map(|f| f.image.as_str())
                    .unwrap_or_default();
                failures.push((index, image, f));
            }
        }
    }
    plan.available = Some(matched.len() as i32);
    plan.transient_failure = failures.iter().any(|(_, _, f)| f.transient);

    let existing_images: BTreeSet<&str> = existing.iter().map(|m| m.image.as_str()).collect();
    let existing_names: BTreeSet<&str> = existing.iter().map(|m| m.name.as_str()).collect();
    let mut count = existing.len() as i32;
    let mut skipped_foreign = Vec::new();
    for image in &matched {
        let uri = image.uri();
        let name = image.model_name();
        if existing_images.contains(uri.as_str()) || existing_names.contains(name.as_str()) {
            continue;
        }
        if taken_names.contains(&name) {
            skipped_foreign.push(format!("{uri} (AIMClusterModel {name} exists already)"));
            continue;
        }
        if count >= max_models {
            plan.limit_reached = true;
            break;
        }
        plan.models.push(model_object(source, spec, image, &name));
        count += 1;
    }
    // Only images that could not be created for want of room count; AIM
    // Engine's `available > discovered` would also count images skipped
    // because another object holds their name.
    plan.discovered = count;

    let n = results.len();
    let describe = |list: &[(usize, &str, &FilterFailure)]| {
        list.iter()
            .map(|(i, image, f)| format!("filters[{i}] (image {image:?}) failed: {}", f.message))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let mut filters = if n == 0 {
        Health::new(
            "Filters",
            ComponentState::Progressing,
            "NoFilters",
            "spec.filters is empty: add at least one filter",
        )
    } else if failures.is_empty() {
        Health::ready(
            "Filters",
            "AllFiltersSucceeded",
            format!(
                "{n} filter(s) matched {} image(s)",
                plan.available.unwrap_or(0)
            ),
        )
    } else if failures.len() == n {
        Health::new(
            "Filters",
            ComponentState::Failed,
            "AllFiltersFailed",
            truncate(format!("all {n} filter(s) failed: {}", describe(&failures))),
        )
    } else {
        Health::new(
            "Filters",
            ComponentState::Degraded,
            "SomeFiltersFailed",
            truncate(format!(
                "{} of {n} filters failed, the others matched {} image(s): {}",
                failures.len(),
                plan.available.unwrap_or(0),
                describe(&failures)
            )),
        )
    };
    if !skipped_foreign.is_empty() {
        filters.message = truncate(format!(
            "{}; not created because another AIMClusterModel has the name: {}",
            filters.message,
            skipped_foreign.join(", ")
        ));
    }
    // Filter failures are not categorised errors (as in AIM Engine): a
    // failing filter must not stop the healthy ones' models being created.
    healths.push(filters.upstream());
    plan.healths = healths;
    plan
}

/// The AIMClusterModel for one discovered image.
fn model_object(
    source: &str,
    spec: &AIMClusterModelSourceSpec,
    image: &DiscoveredImage,
    name: &str,
) -> Value {
    let mut model_spec = json!({"image": image.uri()});
    if !spec.image_pull_secrets.is_empty() {
        model_spec["imagePullSecrets"] = json!(spec.image_pull_secrets);
    }
    json!({
        "apiVersion": aim_api::API_VERSION,
        "kind": "AIMClusterModel",
        "metadata": {
            "name": name,
            "labels": {
                labels::MODEL_SOURCE: source,
                labels::ORIGIN: labels::ORIGIN_AUTO_GENERATED,
            },
            "annotations": {
                labels::SOURCE_REGISTRY: image.registry,
                labels::SOURCE_REPOSITORY: image.repository,
                labels::SOURCE_TAG: image.tag,
            },
        },
        "spec": model_spec,
    })
}

/// The `MaxModelsLimitReached` condition for a plan.
pub fn limit_condition(plan: &SourcePlan) -> NewCondition {
    if plan.limit_reached {
        NewCondition::new(
            LIMIT_CONDITION,
            true,
            "LimitReached",
            format!(
                "{} image(s) match but spec.maxModels is {}: {} model(s) exist; raise spec.maxModels or narrow the filters to get the rest",
                plan.available.unwrap_or(0),
                plan.max_models,
                plan.discovered
            ),
        )
    } else {
        NewCondition::new(
            LIMIT_CONDITION,
            false,
            "WithinLimit",
            format!(
                "{} model(s) of at most {}",
                plan.discovered, plan.max_models
            ),
        )
    }
}

// ---------------------------------------------------------------------------
// I/O
// ---------------------------------------------------------------------------

/// Credentials per registry from every listed pull secret in `namespace`
/// (the first secret with an entry for a registry wins). Any secret that is
/// missing or unreadable is an error: a sync with half the credentials
/// would report misleading auth failures.
pub async fn load_credentials(
    client: &Client,
    namespace: &str,
    secrets: &[LocalObjectReference],
) -> Result<BTreeMap<String, Credentials>, InspectError> {
    let api = Api::<Secret>::namespaced(client.clone(), namespace);
    let mut out = BTreeMap::new();
    for s in secrets.iter().filter(|s| !s.name.is_empty()) {
        let secret = api
            .get_opt(&s.name)
            .await
            .map_err(|source| InspectError::SecretAccess {
                namespace: namespace.to_string(),
                name: s.name.clone(),
                source,
            })?
            .ok_or_else(|| InspectError::SecretNotFound {
                namespace: namespace.to_string(),
                name: s.name.clone(),
            })?;
        let data: BTreeMap<String, Vec<u8>> = secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        for (registry, creds) in registry::credentials_from_secret(&s.name, &data)? {
            out.entry(registry).or_insert(creds);
        }
    }
    Ok(out)
}

/// Registry sessions of one sync, one per registry so a bearer token is
/// fetched once and reused across filters.
struct Sessions<'a> {
    credentials: &'a BTreeMap<String, Credentials>,
    insecure: Vec<String>,
    open: BTreeMap<String, Session>,
}

impl Sessions<'_> {
    fn get(&mut self, registry: &str) -> &mut Session {
        self.open.entry(registry.to_string()).or_insert_with(|| {
            Session::new(
                registry,
                self.credentials.get(registry).cloned(),
                &self.insecure,
            )
        })
    }
}

/// Docker Hub's official images live under `library/`, which people do
/// not write.
fn listing_repository(registry: &str, repository: &str) -> String {
    if registry == "docker.io" && !repository.contains('/') {
        format!("library/{repository}")
    } else {
        repository.to_string()
    }
}

/// Runs every filter against its registry, in spec order.
pub async fn discover(
    spec: &AIMClusterModelSourceSpec,
    credentials: &BTreeMap<String, Credentials>,
) -> Vec<FilterResult> {
    let mut sessions = Sessions {
        credentials,
        insecure: registry::insecure_from_env(),
        open: BTreeMap::new(),
    };
    let default_registry = spec.registry.as_deref().unwrap_or("docker.io");
    let mut out = Vec::with_capacity(spec.filters.len());
    for filter in &spec.filters {
        let result = run_filter(filter, default_registry, spec, &mut sessions).await;
        out.push(match result {
            Ok(images) => FilterResult::Matched(images),
            Err(f) => FilterResult::Failed(f),
        });
    }
    out
}

async fn run_filter(
    filter: &aim_api::model_source::ModelSourceFilter,
    default_registry: &str,
    spec: &AIMClusterModelSourceSpec,
    sessions: &mut Sessions<'_>,
) -> Result<Vec<DiscoveredImage>, FilterFailure> {
    let spec_error =
        |e: catalog_filter::FilterError| invalid_filter("InvalidFilter", e.to_string());
    let registry_error = |e: RegistryError| registry_failure(&e, &spec.image_pull_secrets);
    match catalog_filter::parse_filter(&filter.image, default_registry).map_err(spec_error)? {
        FilterTarget::Exact {
            registry,
            repository,
            tag,
        } => {
            // An exact tag is taken on trust: no registry call, so a source
            // naming known images works even while the registry is down.
            Ok(vec![DiscoveredImage {
                registry,
                repository,
                tag,
            }])
        }
        FilterTarget::Tags {
            registry,
            repository,
        } => {
            let tags = sessions
                .get(&registry)
                .tags(&listing_repository(&registry, &repository))
                .await
                .map_err(registry_error)?;
            images_of(
                &registry,
                &repository,
                &tags,
                &filter.versions,
                &spec.versions,
            )
            .map_err(spec_error)
        }
        FilterTarget::Wildcard { registry, pattern } => {
            if let Some(f) = wildcard_unsupported(&registry) {
                return Err(f);
            }
            let session = sessions.get(&registry);
            let catalog = session.catalog().await.map_err(|e| match e {
                RegistryError::NotFound { registry, .. } => invalid_filter(
                    "CatalogUnavailable",
                    format!(
                        "registry {registry} does not serve /v2/_catalog, which wildcards need: name repositories without *"
                    ),
                ),
                other => registry_error(other),
            })?;
            let mut images = Vec::new();
            for repository in select_repositories(&pattern, &filter.exclude, &catalog) {
                let tags = session.tags(&repository).await.map_err(registry_error)?;
                images.extend(
                    images_of(
                        &registry,
                        &repository,
                        &tags,
                        &filter.versions,
                        &spec.versions,
                    )
                    .map_err(spec_error)?,
                );
            }
            Ok(images)
        }
    }
}

async fn reconcile(
    source: Arc<AIMClusterModelSource>,
    ctx: Arc<Context>,
) -> Result<Action, kube::Error> {
    let started = Instant::now();
    let result = reconcile_inner(&source, &ctx).await;
    ctx.metrics.reconciled(METRICS_NAME, started.elapsed());
    if let Err(e) = &result {
        ctx.metrics
            .failed(METRICS_NAME, crate::metrics::error_kind(e));
    }
    result
}

async fn reconcile_inner(
    source: &AIMClusterModelSource,
    ctx: &Context,
) -> Result<Action, kube::Error> {
    if is_paused(&source.metadata) || source.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let client = &ctx.client;
    let name = source.name_any();
    let spec = &source.spec;
    let generation = source.metadata.generation;
    let old = source.status.clone();
    let now = Timestamp::now();
    let interval = parse_sync_interval(
        spec.sync_interval
            .as_deref()
            .unwrap_or(DEFAULT_SYNC_INTERVAL),
    );
    if let Ok(interval) = &interval
        && let Some(wait) = sync_due(generation, old.as_ref(), *interval, now)
    {
        return Ok(Action::requeue(wait));
    }

    let all_models = Api::<AIMClusterModel>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    let (mine, others): (Vec<_>, Vec<_>) = all_models.items.into_iter().partition(|m| {
        m.labels().get(labels::MODEL_SOURCE).map(String::as_str) == Some(name.as_str())
    });
    let existing: Vec<ExistingModel> = mine
        .iter()
        .map(|m| ExistingModel {
            name: m.name_any(),
            image: m.spec.image.clone(),
        })
        .collect();
    let taken: BTreeSet<String> = others.iter().map(|m| m.name_any()).collect();

    let observation = match &interval {
        Err(e) => Observation::BadInterval(e.clone()),
        Ok(_) => match load_credentials(
            client,
            &ctx.settings.operator_namespace,
            &spec.image_pull_secrets,
        )
        .await
        {
            Err(e) => Observation::BadSecrets(SecretProblem::from(&e)),
            Ok(creds) => Observation::Synced(discover(spec, &creds).await),
        },
    };
    let plan = plan(&name, spec, &existing, &taken, &observation);

    let now_time = Time(Timestamp::now());
    let previous_conditions = old
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let mut assessment = state::assess(&previous_conditions, &plan.healths, generation, &now_time);
    let manager = CONTROLLER.manager();
    let mut apply_failure = None;
    if assessment.apply_allowed {
        let owner = kube_io::owner_of(source);
        for model in &plan.models {
            let model = kube_io::with_controller_labels(model.clone(), CONTROLLER, &name);
            if let Err(e) = kube_io::apply(client, &manager, model, owner.as_ref()).await {
                tracing::warn!(error = %e, source = %name, "creating an AIMClusterModel failed");
                apply_failure.get_or_insert(e);
            }
        }
    }
    if let Some(e) = &apply_failure {
        // As the state engine does for any controller.
        conditions::set(
            &mut assessment.conditions,
            NewCondition::new(
                state::DEPENDENCIES_REACHABLE,
                false,
                "InfrastructureError",
                e.to_string(),
            ),
            generation,
            &now_time,
        );
    }
    let synced = matches!(observation, Observation::Synced(_));
    if synced {
        conditions::set(
            &mut assessment.conditions,
            limit_condition(&plan),
            generation,
            &now_time,
        );
    }
    let created = if assessment.apply_allowed && apply_failure.is_none() {
        plan.discovered
    } else {
        existing.len() as i32
    };
    let status = AIMClusterModelSourceStatus {
        status: Some(if apply_failure.is_some() {
            Phase::Degraded
        } else {
            assessment.phase
        }),
        observed_generation: generation,
        // The time of the last attempt: it schedules the next one.
        last_sync_time: if interval.is_ok() {
            Some(now_time.clone())
        } else {
            old.as_ref().and_then(|s| s.last_sync_time.clone())
        },
        discovered_models: Some(created),
        available_models: plan
            .available
            .or(old.as_ref().and_then(|s| s.available_models)),
        models_limit_reached: if synced {
            Some(plan.limit_reached)
        } else {
            old.as_ref().and_then(|s| s.models_limit_reached)
        },
        conditions: assessment.conditions,
    };
    if Some(&status) != old.as_ref() {
        kube_io::write_status(
            &Api::<AIMClusterModelSource>::all(client.clone()),
            source,
            &manager,
            serde_json::to_value(&status).expect("serialises"),
        )
        .await?;
    }
    kube_io::publish(
        &ctx.recorder,
        &source.object_ref(&()),
        &assessment.transitions,
    )
    .await;
    if let Some(e) = apply_failure {
        tracing::warn!(error = %e, source = %name, "retrying after a failed model create");
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    Ok(match interval {
        Ok(interval) => Action::requeue(next_sync_delay(interval, status.status)),
        // Only a spec change can fix the interval.
        Err(_) => Action::await_change(),
    })
}

fn error_policy(_s: Arc<AIMClusterModelSource>, error: &kube::Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(%error, controller = METRICS_NAME, "model source reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

/// Runs the AIMClusterModelSource controller until `shutdown` resolves.
/// Models are not watched: they change status often after creation, and
/// the source acts on its own schedule (`spec.syncInterval`) anyway.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    Controller::new(
        Api::<AIMClusterModelSource>::all(client),
        watcher::Config::default(),
    )
    .with_config(kube::runtime::controller::Config::default().concurrency(4))
    .graceful_shutdown_on(shutdown)
    .run(reconcile, error_policy, ctx)
    .for_each(|_| async {})
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use aim_api::model_source::ModelSourceFilter;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn img(registry: &str, repository: &str, tag: &str) -> DiscoveredImage {
        DiscoveredImage {
            registry: registry.into(),
            repository: repository.into(),
            tag: tag.into(),
        }
    }

    fn source_spec(filters: &[&str], max: i32) -> AIMClusterModelSourceSpec {
        AIMClusterModelSourceSpec {
            registry: Some("docker.io".into()),
            filters: filters
                .iter()
                .map(|f| ModelSourceFilter {
                    image: f.to_string(),
                    ..Default::default()
                })
                .collect(),
            max_models: Some(max),
            ..Default::default()
        }
    }

    fn health<'a>(p: &'a SourcePlan, component: &str) -> &'a Health {
        p.healths
            .iter()
            .find(|h| h.component == component)
            .unwrap_or_else(|| panic!("no {component} health in {:?}", p.healths))
    }

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse_sync_interval("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_sync_interval("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_sync_interval("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_sync_interval("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_sync_interval("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(
            parse_sync_interval("1500ms"),
            Ok(Duration::from_millis(1500))
        );
        for bad in ["", "soon", "5", "5x", "-1h", "h"] {
            let e = parse_sync_interval(bad).unwrap_err().to_string();
            assert!(e.contains("spec.syncInterval"), "{bad}: {e}");
        }
        for short in ["0", "0s", "999ms", "10ns"] {
            assert!(
                matches!(
                    parse_sync_interval(short),
                    Err(IntervalError::TooShort { .. })
                ),
                "{short}"
            );
        }
    }

    #[test]
    fn syncs_are_due_on_spec_change_interval_or_retry() {
        let now = Timestamp::from_second(10_000).unwrap();
        let at = |secs_ago: i64| Time(Timestamp::from_second(10_000 - secs_ago).unwrap());
        let status = |generation: i64, ago: i64, phase: Phase| AIMClusterModelSourceStatus {
            observed_generation: Some(generation),
            last_sync_time: Some(at(ago)),
            status: Some(phase),
            ..Default::default()
        };
        let hour = Duration::from_secs(3600);
        assert_eq!(sync_due(Some(1), None, hour, now), None, "never synced");
        assert_eq!(
            sync_due(Some(2), Some(&status(1, 5, Phase::Ready)), hour, now),
            None,
            "spec changed"
        );
        assert_eq!(
            sync_due(Some(1), Some(&status(1, 600, Phase::Ready)), hour, now),
            Some(Duration::from_secs(3000))
        );
        assert_eq!(
            sync_due(Some(1), Some(&status(1, 3600, Phase::Ready)), hour, now),
            None
        );
        // Unhealthy: retried after 30 s, not after the hour.
        assert_eq!(
            sync_due(Some(1), Some(&status(1, 10, Phase::Failed)), hour, now),
            Some(Duration::from_secs(20))
        );
        assert_eq!(
            sync_due(Some(1), Some(&status(1, 31, Phase::Degraded)), hour, now),
            None
        );
        // A short interval is not lengthened by the retry delay.
        assert_eq!(
            sync_due(
                Some(1),
                Some(&status(1, 1, Phase::Failed)),
                Duration::from_secs(2),
                now
            ),
            Some(Duration::from_secs(1))
        );
    }

    #[test]
    fn model_names_follow_the_derived_name_rule() {
        let a = img("127.0.0.1:5000", "aim/llama", "1.0.0");
        let name = a.model_name();
        assert!(name.starts_with("aim-llama-1-0-0-"), "{name}");
        assert_eq!(name.len(), "aim-llama-1-0-0-".len() + 6);
        // The registry is in the hash: the same repo elsewhere differs.
        assert_ne!(name, img("ghcr.io", "aim/llama", "1.0.0").model_name());
        let long = img("r.io", &"x".repeat(80), "1.0");
        assert!(long.model_name().len() <= 63);
        assert_eq!(a.uri(), "127.0.0.1:5000/aim/llama:1.0.0");
        assert_eq!(img("docker.io", "a/b", "1").uri(), "a/b:1");
    }

    #[test]
    fn tags_are_filtered_and_newest_first() {
        let tags = s(&["0.7.0", "latest", "v0.9", "0.8.1", "1.0.0"]);
        let got = images_of("r", "a", &tags, &s(&[">=0.8"]), &s(&["<0.8"])).unwrap();
        let tags: Vec<_> = got.iter().map(|i| i.tag.as_str()).collect();
        assert_eq!(tags, ["1.0.0", "v0.9", "0.8.1"]);
        // Global constraints apply when the filter has none.
        let got = images_of("r", "a", &s(&["0.7.0", "0.8.1"]), &[], &s(&["<0.8"])).unwrap();
        assert_eq!(got, vec![img("r", "a", "0.7.0")]);
        let mut all = s(&["latest", "1.0", "dev", "2.0"]);
        newest_first(&mut all);
        assert_eq!(all, s(&["2.0", "1.0", "dev", "latest"]));
        assert!(images_of("r", "a", &all, &s(&[">>1"]), &[]).is_err());
    }

    #[test]
    fn wildcards_select_from_the_catalog_minus_excludes() {
        let catalog = s(&["aim/b", "aim/a", "aim/base", "other/a", "aim/x/y"]);
        assert_eq!(
            select_repositories("aim/*", &s(&["aim/base"]), &catalog),
            s(&["aim/a", "aim/b"])
        );
        assert!(wildcard_unsupported("docker.io").is_some());
        let ghcr = wildcard_unsupported("ghcr.io").unwrap();
        assert!(ghcr.message.contains("GitHub Packages"), "{}", ghcr.message);
        assert!(wildcard_unsupported("127.0.0.1:5000").is_none());
    }

    #[test]
    fn models_are_created_up_to_the_limit_and_never_twice() {
        let spec = source_spec(&["r.io/a", "r.io/b"], 3);
        let have = img("r.io", "a", "1.0");
        let existing = vec![ExistingModel {
            name: have.model_name(),
            image: have.uri(),
        }];
        let results = vec![
            FilterResult::Matched(vec![img("r.io", "a", "2.0"), have.clone()]),
            // Overlaps the first filter: merged, not counted twice.
            FilterResult::Matched(vec![
                img("r.io", "a", "2.0"),
                img("r.io", "b", "1.0"),
                img("r.io", "b", "0.9"),
            ]),
        ];
        let p = plan(
            "src",
            &spec,
            &existing,
            &BTreeSet::new(),
            &Observation::Synced(results),
        );
        let names: Vec<_> = p
            .models
            .iter()
            .map(|m| m["spec"]["image"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(names, ["r.io/a:2.0", "r.io/b:1.0"]);
        assert_eq!(
            (p.discovered, p.available, p.limit_reached),
            (3, Some(4), true)
        );
        let c = limit_condition(&p);
        assert!(c.status && c.reason == "LimitReached", "{c:?}");
        assert!(c.message.contains("spec.maxModels"), "{}", c.message);
        let m = &p.models[0];
        assert_eq!(m["metadata"]["labels"][labels::MODEL_SOURCE], "src");
        assert_eq!(
            m["metadata"]["labels"][labels::ORIGIN],
            labels::ORIGIN_AUTO_GENERATED
        );
        assert_eq!(m["metadata"]["annotations"][labels::SOURCE_TAG], "2.0");
        assert_eq!(
            m["metadata"]["annotations"][labels::SOURCE_REGISTRY],
            "r.io"
        );
        assert_eq!(health(&p, "Filters").reason, "AllFiltersSucceeded");
    }

    #[test]
    fn within_limit_and_foreign_names() {
        let spec = source_spec(&["r.io/a:1.0", "r.io/a:2.0"], 100);
        let foreign = img("r.io", "a", "2.0").model_name();
        let p = plan(
            "src",
            &spec,
            &[],
            &BTreeSet::from([foreign.clone()]),
            &Observation::Synced(vec![
                FilterResult::Matched(vec![img("r.io", "a", "1.0")]),
                FilterResult::Matched(vec![img("r.io", "a", "2.0")]),
            ]),
        );
        assert_eq!(p.models.len(), 1);
        assert!(!p.limit_reached);
        let c = limit_condition(&p);
        assert_eq!((c.status, c.reason.as_str()), (false, "WithinLimit"));
        let msg = &health(&p, "Filters").message;
        assert!(msg.contains(&foreign), "{msg}");
    }

    #[test]
    fn filter_health_names_each_failing_filter() {
        let spec = source_spec(&["r.io/ok", "r.io/down", "docker.io/org/*"], 10);
        let down = registry_failure(
            &RegistryError::Unreachable {
                registry: "r.io".into(),
                detail: "connection refused".into(),
            },
            &[],
        );
        let results = vec![
            FilterResult::Matched(vec![img("r.io", "ok", "1")]),
            FilterResult::Failed(down.clone()),
            FilterResult::Failed(wildcard_unsupported("docker.io").unwrap()),
        ];
        let p = plan(
            "src",
            &spec,
            &[],
            &BTreeSet::new(),
            &Observation::Synced(results),
        );
        let h = health(&p, "Filters");
        assert_eq!(
            (h.state, h.reason.as_str()),
            (ComponentState::Degraded, "SomeFiltersFailed")
        );
        assert!(h.message.contains("2 of 3"), "{}", h.message);
        assert!(
            h.message.contains("filters[1] (image \"r.io/down\")"),
            "{}",
            h.message
        );
        assert!(h.message.contains("filters[2]"), "{}", h.message);
        assert!(h.message.contains("connection refused"), "{}", h.message);
        assert!(p.transient_failure);
        assert_eq!(p.models.len(), 1, "healthy filters still create models");

        let all = plan(
            "src",
            &source_spec(&["r.io/down"], 10),
            &[],
            &BTreeSet::new(),
            &Observation::Synced(vec![FilterResult::Failed(down)]),
        );
        let h = health(&all, "Filters");
        assert_eq!(
            (h.state, h.reason.as_str()),
            (ComponentState::Failed, "AllFiltersFailed")
        );

        let none = plan(
            "src",
            &source_spec(&[], 10),
            &[],
            &BTreeSet::new(),
            &Observation::Synced(vec![]),
        );
        assert_eq!(health(&none, "Filters").reason, "NoFilters");
    }

    #[test]
    fn auth_failures_say_which_secret_to_add() {
        let e = RegistryError::Unauthorized {
            registry: "r.io".into(),
            repository: "a".into(),
            status: 401,
        };
        let f = registry_failure(&e, &[]);
        assert_eq!(f.reason, "RegistryAuthFailed");
        assert!(f.message.contains("spec.imagePullSecrets"), "{}", f.message);
        assert!(!f.transient);
    }

    #[test]
    fn missing_secrets_and_bad_intervals_stop_before_any_sync() {
        let spec = source_spec(&["r.io/a"], 10);
        let problem = SecretProblem::from(&InspectError::SecretNotFound {
            namespace: "aim-system".into(),
            name: "creds".into(),
        });
        let p = plan(
            "src",
            &spec,
            &[],
            &BTreeSet::new(),
            &Observation::BadSecrets(problem),
        );
        let h = health(&p, "PullSecrets");
        assert_eq!(h.reason, "SecretNotFound");
        assert!(
            h.message.contains("creds") && h.message.contains("aim-system"),
            "{}",
            h.message
        );
        assert_eq!(h.error, Some(ErrorCategory::MissingUpstream));
        assert!(p.models.is_empty() && p.available.is_none());

        let p = plan(
            "src",
            &spec,
            &[],
            &BTreeSet::new(),
            &Observation::BadInterval(parse_sync_interval("0s").unwrap_err()),
        );
        let h = health(&p, "SyncInterval");
        assert_eq!(h.error, Some(ErrorCategory::InvalidSpec));
        assert!(h.message.contains("spec.syncInterval"), "{}", h.message);
    }
}
