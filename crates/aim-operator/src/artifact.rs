//! The AIMArtifact controller, as AIM Engine v0.2.1 runs it: one model's weights on a
//! persistent volume. It grants the downloader the right to report its own
//! progress (a RoleBinding), finds the size when the spec does not give it
//! (a check-size Job), creates the volume sized to the model plus headroom,
//! and runs the download Job. The downloader image does protocol fallback
//! (`AIM_DOWNLOADER_PROTOCOL`) and stall detection (`STALL_TIMEOUT`) itself
//! and patches `status.progress`/`status.download`; this controller only
//! configures it and reads what it wrote.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aim_api::AIMArtifact;
use aim_api::artifact::{AIMArtifactStatus, DEFAULT_DOWNLOAD_IMAGE, DownloadProgress};
use aim_api::conditions::NewCondition;
use aim_api::runtime_config::RuntimeConfigSpec;
use aim_api::service::CacheMode;
use aim_api::status::ResourcePhase;
use aim_rules::labels;
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{EnvVar, PersistentVolumeClaim, Pod};
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, LogParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use crate::context::{Context, is_paused};
use crate::kube_io::{self, IoError};
use crate::service::plan::ConfigLookup;
use crate::state::{self, ComponentState, ErrorCategory, Health};

pub const MANAGER: &str = "aim-artifact-controller";
const CONTROLLER: &str = "artifact";
/// The RoleBinding (and ClusterRole) that lets the downloader pod, running
/// as the namespace's `default` ServiceAccount, patch the artifact status.
pub const STATUS_UPDATER: &str = "aim-engine-artifact-status-updater";
const GIB: u64 = 1 << 30;
/// Sizes above this are taken as a broken check-size answer (1 PiB).
const MAX_SIZE: u64 = 1 << 50;
const DEFAULT_HEADROOM: i32 = 10;
/// The downloader's own default for `STALL_TIMEOUT`.
const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(120);

/// Whether the storage class the volume would use exists.
#[derive(Clone, Debug, PartialEq)]
pub enum StorageClassCheck {
    /// No class named: the cluster default applies.
    Default,
    Exists,
    Missing,
    /// Reading it failed; retry.
    Unknown(String),
}

/// Everything the artifact controller observed.
pub struct ArtifactObserved<'a> {
    pub artifact: &'a AIMArtifact,
    pub config: ConfigLookup,
    pub role_binding: bool,
    pub storage_class: StorageClassCheck,
    pub check_size_job: Option<Job>,
    /// The check-size pod's answer: its termination message, else its log.
    pub check_size_output: PodOutput,
    pub pvc: Option<PersistentVolumeClaim>,
    pub download_job: Option<Job>,
    pub download_pods: Vec<Pod>,
    /// The end of the newest failed download pod's log, when one failed.
    pub download_log: Option<String>,
    /// When the downloader's byte count last changed, as last seen.
    pub progress_mark: Option<ProgressMark>,
    pub now: Timestamp,
}

/// A finished pod's output, as read.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum PodOutput {
    /// No finished pod to read (or nothing to read yet).
    #[default]
    Missing,
    Text(String),
    /// The pod is there but reading its log failed; worth another try.
    Unreadable(String),
}

/// What to apply and write for one artifact.
#[derive(Debug, Default)]
pub struct ArtifactPlan {
    pub healths: Vec<Health>,
    /// Children with the artifact as controller owner (PVC, Jobs).
    pub owned: Vec<Value>,
    /// Applied without owner: the namespace's RoleBinding.
    pub unowned: Vec<Value>,
    /// The status fields this controller owns.
    pub status: AIMArtifactStatus,
    pub download_complete: Option<NewCondition>,
    /// `DownloadStalled`, once a stall was seen (kept to say it is over).
    pub download_stalled: Option<NewCondition>,
    /// The progress mark to keep for the next reconcile; None forgets it.
    pub progress_mark: Option<ProgressMark>,
    /// Look again this soon (a stall may be reached before the requeue).
    pub recheck_after: Option<Duration>,
}

/// The config the artifact resolved, or a default when none exists.
fn merged_config(config: &ConfigLookup) -> RuntimeConfigSpec {
    match config {
        ConfigLookup::Found(spec, _) => (**spec).clone(),
        _ => RuntimeConfigSpec::default(),
    }
}

/// The storage class the volume uses and the field it came from, so a
/// missing class can be blamed on the right field.
pub fn storage_class(
    artifact: &AIMArtifact,
    config: &ConfigLookup,
) -> Option<(String, &'static str)> {
    if let Some(sc) = artifact
        .spec
        .storage_class_name
        .clone()
        .filter(|s| !s.is_empty())
    {
        return Some((sc, "spec.storageClassName"));
    }
    merged_config(config)
        .storage
        .and_then(|s| s.default_storage_class_name)
        .filter(|s| !s.is_empty())
        .map(|s| (s, "storage.defaultStorageClassName of the runtime config"))
}

fn headroom(config: &ConfigLookup) -> i32 {
    merged_config(config)
        .storage
        .and_then(|s| s.pvc_headroom_percent)
        .unwrap_or(DEFAULT_HEADROOM)
        .max(0)
}

/// The volume size for `bytes` of weights: headroom added, rounded up to
/// whole GiB.
pub fn pvc_bytes(bytes: u64, headroom_percent: i32) -> u64 {
    let with_headroom = bytes as u128 * (100 + headroom_percent.max(0) as u128);
    let gib_hundredths = GIB as u128 * 100;
    let gibs = with_headroom.div_ceil(gib_hundredths).max(1);
    (gibs * GIB as u128) as u64
}

/// `2.2 GiB`, `100 MiB`: binary units, two significant figures.
pub fn display_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value >= 10.0 || unit == 0 {
        format!("{:.0} {}", value, UNITS[unit])
    } else {
        let text = format!("{value:.1}");
        format!("{} {}", text.trim_end_matches(".0"), UNITS[unit])
    }
}

/// Why a source URI cannot be downloaded.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SourceUriError {
    #[error("the scheme must be hf:// or s3://")]
    Scheme,
    #[error("hf:// URIs need an organisation and a model name: hf://<org>/<model>")]
    HfRepository,
    #[error("s3:// URIs need a bucket and a path: s3://<bucket>/<path>")]
    S3Path,
}

/// Checks that the downloader can act on `uri`; the CRD pattern only
/// checks the scheme.
pub fn check_source_uri(uri: &str) -> Result<(), SourceUriError> {
    let nonempty = |s: &str| !s.is_empty() && !s.contains(char::is_whitespace);
    if let Some(rest) = uri.strip_prefix("hf://") {
        let repo = rest.split('@').next().unwrap_or_default();
        match repo.split('/').collect::<Vec<_>>().as_slice() {
            [org, model, ..] if nonempty(org) && nonempty(model) => Ok(()),
            _ => Err(SourceUriError::HfRepository),
        }
    } else if let Some(rest) = uri.strip_prefix("s3://") {
        match rest.split_once('/') {
            Some((bucket, path)) if nonempty(bucket) && nonempty(path) => Ok(()),
            _ => Err(SourceUriError::S3Path),
        }
    } else {
        Err(SourceUriError::Scheme)
    }
}

/// Reads the check-size answer: the last non-empty line, JSON
/// `{"url": ..., "sizeBytes": n}` with 0 < n ≤ 1 PiB.
pub fn parse_check_size(output: &str) -> Result<u64, String> {
    let line = output
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .ok_or("the check-size job printed nothing")?;
    let value: Value = serde_json::from_str(line.trim())
        .map_err(|e| format!("the check-size output {line:?} is not JSON: {e}"))?;
    let size = value
        .get("sizeBytes")
        .and_then(Value::as_u64)
        .ok_or_else(|| format!("the check-size output {line:?} has no positive sizeBytes"))?;
    if size == 0 || size > MAX_SIZE {
        return Err(format!(
            "the check-size output reports {size} bytes, outside 1 byte..1 PiB"
        ));
    }
    Ok(size)
}

/// What a failed download's log says went wrong (AIM Engine reads the
/// same lines from the download Job's pod).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DownloadFailure {
    AuthError,
    SourceNotFound,
    StorageFull,
}

impl DownloadFailure {
    pub fn reason(self) -> &'static str {
        match self {
            DownloadFailure::AuthError => "AuthError",
            DownloadFailure::SourceNotFound => "SourceNotFound",
            DownloadFailure::StorageFull => "StorageFull",
        }
    }

    /// What the user should do about it.
    pub fn advice(self, source_uri: &str) -> String {
        match self {
            DownloadFailure::AuthError => format!(
                "the source refused access to {source_uri}: put working credentials in the env the download uses (HF_TOKEN for hf://, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY for s3://; set them on the service, template or runtime config), and accept the model's licence on Hugging Face if it is gated"
            ),
            DownloadFailure::SourceNotFound => format!(
                "{source_uri} does not exist: check the source URI (organisation, model name, revision, or bucket and path)"
            ),
            DownloadFailure::StorageFull => format!(
                "the volume ran out of space downloading {source_uri}: raise storage.pvcHeadroomPercent in the runtime config or give the real model size, then delete the AIMArtifact so its volume is recreated larger"
            ),
        }
    }
}

/// Whether `code` appears in `line` as a number of its own (so `401` in
/// `HTTP 401` counts but not in `14010 bytes`).
fn has_status_code(line: &str, code: &str) -> bool {
    line.match_indices(code).any(|(at, _)| {
        let before = line[..at].chars().next_back();
        let after = line[at + code.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_alphanumeric())
            && !after.is_some_and(|c| c.is_ascii_alphanumeric())
    })
}

/// Reads a failed download's log from the end: the last line that names a
/// known cause decides, since earlier lines may be from protocols the
/// downloader fell back from. Returns the cause and that line.
pub fn diagnose_download_log(log: &str) -> Option<(DownloadFailure, String)> {
    const FULL: [&str; 5] = [
        "no space left on device",
        "enospc",
        "disk quota exceeded",
        "not enough free space",
        "not enough disk space",
    ];
    const AUTH: [&str; 10] = [
        "unauthorized",
        "forbidden",
        "access denied",
        "accessdenied",
        "invalidaccesskeyid",
        "signaturedoesnotmatch",
        "gatedrepoerror",
        "gated repo",
        "invalid token",
        "invalid credentials",
    ];
    const MISSING: [&str; 8] = [
        "repositorynotfound",
        "repository not found",
        "revisionnotfound",
        "entrynotfound",
        "nosuchbucket",
        "nosuchkey",
        "not found",
        "does not exist",
    ];
    log.lines().rev().find_map(|line| {
        let lower = line.to_lowercase();
        let any = |words: &[&str]| words.iter().any(|w| lower.contains(w));
        // Most specific first: a full disk is never a credentials problem,
        // and HF answers 401 for private repos it then calls "not found".
        let cause = if any(&FULL) {
            DownloadFailure::StorageFull
        } else if any(&AUTH) || has_status_code(&lower, "401") || has_status_code(&lower, "403") {
            DownloadFailure::AuthError
        } else if any(&MISSING) || has_status_code(&lower, "404") {
            DownloadFailure::SourceNotFound
        } else {
            return None;
        };
        Some((cause, line.trim().to_string()))
    })
}

/// When the download last moved: the bytes the downloader reported and
/// when the operator first saw that number.
#[derive(Clone, Debug, PartialEq)]
pub struct ProgressMark {
    pub bytes: i64,
    pub since: Timestamp,
}

/// The stall timeout a download runs with: `STALL_TIMEOUT` (seconds) as
/// the Job's container gets it, else the default.
pub fn stall_timeout(env: &[EnvVar]) -> Duration {
    env.iter()
        .rev()
        .find(|e| e.name == "STALL_TIMEOUT")
        .and_then(|e| e.value.as_deref())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_STALL_TIMEOUT)
}

/// Tracks download progress: a new byte count starts a new mark; the same
/// count for `timeout` or longer is a stall, reported with how long it has
/// lasted. Also returns how long until the stall would be reached, so the
/// controller can look again right then.
pub fn stall_check(
    mark: Option<&ProgressMark>,
    bytes: i64,
    now: Timestamp,
    timeout: Duration,
) -> (ProgressMark, Result<Duration, Duration>) {
    match mark {
        Some(m) if m.bytes == bytes => {
            // A clock step backwards counts as no time passed.
            let elapsed = now.duration_since(m.since);
            let still = if elapsed.is_negative() {
                Duration::ZERO
            } else {
                elapsed.unsigned_abs()
            };
            let verdict = if still >= timeout {
                Ok(still)
            } else {
                Err(timeout - still)
            };
            (m.clone(), verdict)
        }
        _ => (ProgressMark { bytes, since: now }, Err(timeout)),
    }
}

fn derived(artifact: &AIMArtifact, suffix: &str) -> String {
    aim_rules::naming::derived_name(
        &[&artifact.name_any(), suffix],
        &[json!(artifact.uid().unwrap_or_default())],
        8,
        63,
    )
}

pub fn pvc_name(artifact: &AIMArtifact) -> String {
    derived(artifact, "cache")
}

pub fn download_job_name(artifact: &AIMArtifact) -> String {
    derived(artifact, "download")
}

pub fn check_size_job_name(artifact: &AIMArtifact) -> String {
    derived(artifact, "check-size")
}

fn job_condition(job: &Job, ty: &str) -> Option<String> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == ty && c.status == "True")
        .map(|c| c.message.clone().unwrap_or_default())
}

/// A pod problem that will not fix itself (bad image, bad config, crash
/// loop), as (reason, message).
pub(crate) fn pod_problem(pods: &[Pod]) -> Option<(String, String)> {
    const STUCK: [&str; 6] = [
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "CrashLoopBackOff",
    ];
    pods.iter().find_map(|p| {
        p.status
            .as_ref()?
            .container_statuses
            .as_ref()?
            .iter()
            .find_map(|c| {
                let waiting = c.state.as_ref()?.waiting.as_ref()?;
                let reason = waiting.reason.clone()?;
                STUCK.contains(&reason.as_str()).then(|| {
                    (
                        reason,
                        format!(
                            "pod {}: {}",
                            p.name_any(),
                            waiting.message.clone().unwrap_or_default()
                        ),
                    )
                })
            })
    })
}

fn job_env(
    artifact: &AIMArtifact,
    config: &RuntimeConfigSpec,
    defaults: Vec<EnvVar>,
) -> Vec<EnvVar> {
    let mut env = defaults;
    aim_rules::env::merge_env(&mut env, &config.env);
    aim_rules::env::merge_env(&mut env, &artifact.spec.env);
    env
}

fn var(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn image(artifact: &AIMArtifact) -> String {
    artifact
        .spec
        .model_download_image
        .clone()
        .filter(|i| !i.is_empty())
        .unwrap_or_else(|| DEFAULT_DOWNLOAD_IMAGE.into())
}

fn job_labels(artifact: &AIMArtifact, component: &str) -> Value {
    json!({
        labels::CACHE_NAME: artifact.name_any(),
        labels::CACHE_TYPE: labels::CACHE_TYPE_ARTIFACT,
        labels::COMPONENT: component,
    })
}

/// Job pods carry the Job's labels plus the controller's name label
/// (never `managed-by`: the pods are the Job's, not the operator's).
fn pod_labels(artifact: &AIMArtifact, job_labels: &Value) -> Value {
    let mut out = job_labels.clone();
    out[labels::Controller::Artifact.name_label()] = json!(artifact.name_any());
    out
}

fn check_size_job(artifact: &AIMArtifact, config: &RuntimeConfigSpec, ns: &str) -> Value {
    let job_labels = job_labels(artifact, labels::COMPONENT_CHECK_SIZE);
    let pod_labels = pod_labels(artifact, &job_labels);
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": check_size_job_name(artifact), "namespace": ns, "labels": job_labels},
        "spec": {
            "backoffLimit": 2,
            "ttlSecondsAfterFinished": 300,
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "restartPolicy": "Never",
                    "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "runAsNonRoot": true},
                    "imagePullSecrets": artifact.spec.image_pull_secrets,
                    "containers": [{
                        "name": "check-size",
                        "image": image(artifact),
                        "imagePullPolicy": "IfNotPresent",
                        // The size also goes to the termination message, so
                        // the answer survives without log access.
                        "command": ["/bin/sh", "-c",
                            "out=$(/check-size.sh \"$1\") || exit $?; printf '%s\\n' \"$out\"; printf '%s' \"$out\" | tail -n 1 > /dev/termination-log",
                            "check-size"],
                        "args": [artifact.spec.source_uri],
                        "terminationMessagePolicy": "FallbackToLogsOnError",
                        "env": job_env(artifact, config, Vec::new()),
                    }],
                },
            },
        },
    })
}

fn download_job(
    artifact: &AIMArtifact,
    config: &RuntimeConfigSpec,
    ns: &str,
    size: u64,
    pvc: &str,
) -> Value {
    let job_labels = job_labels(artifact, labels::COMPONENT_DOWNLOAD);
    let defaults = vec![
        var("AIM_DOWNLOADER_PROTOCOL", "XET,HF_TRANSFER"),
        var("TMPDIR", "/tmp/"),
        var("HF_HOME", "/tmp/.hf"),
        var("EXPECTED_SIZE_BYTES", size.to_string()),
        var("MOUNT_PATH", "/cache"),
        var("ARTIFACT_NAME", artifact.name_any()),
        var("ARTIFACT_NAMESPACE", ns),
        var("STALL_TIMEOUT", "120"),
        var("TARGET_DIR", "/cache"),
    ];
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": download_job_name(artifact), "namespace": ns, "labels": job_labels},
        "spec": {
            "backoffLimit": 2,
            "ttlSecondsAfterFinished": 600,
            "template": {
                "metadata": {"labels": pod_labels(artifact, &job_labels)},
                "spec": {
                    "restartPolicy": "Never",
                    "serviceAccountName": "default",
                    "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000, "runAsNonRoot": true},
                    "imagePullSecrets": artifact.spec.image_pull_secrets,
                    "containers": [{
                        "name": "model-download",
                        "image": image(artifact),
                        "imagePullPolicy": "IfNotPresent",
                        "args": [artifact.spec.source_uri],
                        "env": job_env(artifact, config, defaults),
                        "volumeMounts": [{"name": "cache", "mountPath": "/cache"}],
                    }],
                    "volumes": [{"name": "cache", "persistentVolumeClaim": {"claimName": pvc}}],
                },
            },
        },
    })
}

fn role_binding(ns: &str) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": STATUS_UPDATER, "namespace": ns},
        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": ns}],
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": STATUS_UPDATER},
    })
}

/// Pure planning of one artifact.
pub fn plan(obs: &ArtifactObserved<'_>) -> ArtifactPlan {
    let artifact = obs.artifact;
    let ns = artifact.namespace().unwrap_or_default();
    let old = artifact.status.clone().unwrap_or_default();
    let mut plan = ArtifactPlan::default();
    plan.status.mode = Some(if artifact.owner_references().is_empty() {
        CacheMode::Shared
    } else {
        CacheMode::Dedicated
    });
    // The downloader owns these; they are carried so our apply never
    // removes them.
    plan.status.progress = old.progress.clone();
    plan.status.download = old.download.clone();
    plan.status.discovered_size_bytes = old.discovered_size_bytes;

    if let ConfigLookup::Missing(name) = &obs.config {
        plan.healths.push(
            Health::new(
                "RuntimeConfig",
                ComponentState::Failed,
                "ConfigNotFound",
                format!(
                    "RuntimeConfig {name} not found: spec.runtimeConfigName names neither an AIMRuntimeConfig in namespace {ns} nor an AIMClusterRuntimeConfig; create it or fix the field"
                ),
            )
            .upstream()
            .because(ErrorCategory::MissingUpstream),
        );
        return plan;
    }
    let config = merged_config(&obs.config);

    if let Err(e) = check_source_uri(&artifact.spec.source_uri) {
        plan.healths.push(
            Health::new(
                "SourceUri",
                ComponentState::Failed,
                "InvalidSourceUri",
                format!("spec.sourceUri {:?}: {e}", artifact.spec.source_uri),
            )
            .upstream()
            .because(ErrorCategory::InvalidSpec),
        );
        return plan;
    }

    // Size from the spec; zero or absent means "discover it".
    let spec_size = match &artifact.spec.size {
        None => None,
        Some(q) => match aim_rules::gpu::quantity_bytes(q) {
            Some(0) => None,
            Some(bytes) if bytes <= MAX_SIZE => Some(bytes),
            Some(_) | None => {
                plan.healths.push(
                    Health::new(
                        "Size",
                        ComponentState::Failed,
                        "InvalidSize",
                        format!(
                            "spec.size {:?} is not a size between 1 byte and 1 PiB (e.g. 16Gi); fix spec.size or remove it to have the size discovered",
                            q.0
                        ),
                    )
                    .upstream()
                    .because(ErrorCategory::InvalidSpec),
                );
                return plan;
            }
        },
    };

    let class = storage_class(artifact, &obs.config);
    match (&obs.storage_class, &class) {
        (StorageClassCheck::Missing, Some((name, field))) if obs.pvc.is_none() => {
            plan.healths.push(
                Health::new(
                    "CachePvc",
                    ComponentState::Failed,
                    "StorageClassNotFound",
                    format!(
                        "{field} names StorageClass {name:?}, which does not exist: create it or name an existing class"
                    ),
                )
                .upstream()
                .because(ErrorCategory::InvalidSpec),
            );
            return plan;
        }
        (StorageClassCheck::Unknown(e), _) if obs.pvc.is_none() => {
            plan.healths.push(
                Health::new(
                    "CachePvc",
                    ComponentState::Degraded,
                    "StorageClassUnreadable",
                    format!("reading the storage class failed: {e}"),
                )
                .because(ErrorCategory::Infrastructure),
            );
            return plan;
        }
        _ => {}
    }

    if !obs.role_binding {
        plan.unowned.push(role_binding(&ns));
    }

    let size = match spec_size.or(old.discovered_size_bytes.map(|s| s.max(0) as u64)) {
        Some(s) => s,
        None => {
            discover_size(obs, &config, &ns, &mut plan);
            match plan.status.discovered_size_bytes {
                Some(s) => s as u64,
                None => return plan,
            }
        }
    };
    plan.status.display_size = Some(display_size(size));

    let pvc = pvc_name(artifact);
    let headroom = headroom(&obs.config);
    match &obs.pvc {
        None => {
            let mut pvc_labels = json!({
                labels::CACHE_NAME: artifact.name_any(),
                labels::SOURCE_MODEL: aim_rules::naming::sanitize_label(
                    artifact.spec.source_uri.split_once("://").map(|(_, r)| r).unwrap_or_default()
                ),
            });
            if artifact
                .labels()
                .get(labels::TEMPLATE_CREATED)
                .map(String::as_str)
                == Some("true")
            {
                pvc_labels[labels::CACHE_TYPE] = json!(labels::CACHE_TYPE_TEMPLATE_CACHE);
            }
            let mut spec = json!({
                "accessModes": ["ReadWriteMany"],
                "resources": {"requests": {"storage": pvc_bytes(size, headroom).to_string()}},
            });
            if let Some((class, _)) = &class {
                spec["storageClassName"] = json!(class);
            }
            plan.owned.push(json!({
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": pvc, "namespace": ns, "labels": pvc_labels},
                "spec": spec,
            }));
            plan.healths.push(Health::new(
                "CachePvc",
                ComponentState::Progressing,
                "PvcPending",
                format!("Creating PersistentVolumeClaim {pvc}"),
            ));
        }
        Some(claim) => {
            plan.status.persistent_volume_claim = Some(claim.name_any());
            plan.status.allocated_size = claim
                .spec
                .as_ref()
                .and_then(|s| s.resources.as_ref())
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get("storage").cloned());
            plan.status.headroom_percent = Some(headroom);
            let phase = claim.status.as_ref().and_then(|s| s.phase.clone());
            plan.healths.push(match phase.as_deref() {
                Some("Bound") => Health::ready("CachePvc", "PvcBound", format!("PersistentVolumeClaim {pvc} is bound")),
                Some("Lost") => Health::new(
                    "CachePvc",
                    ComponentState::Degraded,
                    "PvcLost",
                    format!("PersistentVolumeClaim {pvc} lost its volume: delete the AIMArtifact to download again"),
                )
                .because(ErrorCategory::Infrastructure),
                _ => Health::new(
                    "CachePvc",
                    ComponentState::Progressing,
                    "PvcPending",
                    format!("PersistentVolumeClaim {pvc} is waiting for a volume"),
                ),
            });
        }
    }

    plan_download(obs, &config, &ns, size, &pvc, &mut plan);
    plan
}

fn discover_size(
    obs: &ArtifactObserved<'_>,
    config: &RuntimeConfigSpec,
    ns: &str,
    plan: &mut ArtifactPlan,
) {
    let artifact = obs.artifact;
    let Some(job) = &obs.check_size_job else {
        plan.owned.push(check_size_job(artifact, config, ns));
        plan.healths.push(Health::new(
            "CheckSizeJob",
            ComponentState::Progressing,
            "CheckingSize",
            "spec.size is not set: a check-size job is finding the model size",
        ));
        return;
    };
    if let Some(message) = job_condition(job, "Failed") {
        plan.healths.push(Health::new(
            "CheckSizeJob",
            ComponentState::Failed,
            "CheckSizeFailed",
            format!(
                "check-size job {} failed ({message}): check spec.sourceUri and the credentials in spec.env, or set spec.size",
                job.name_any()
            ),
        ));
        return;
    }
    if job_condition(job, "Complete").is_none() {
        plan.healths.push(Health::new(
            "CheckSizeJob",
            ComponentState::Progressing,
            "CheckingSize",
            format!("check-size job {} is running", job.name_any()),
        ));
        return;
    }
    let answer = match &obs.check_size_output {
        PodOutput::Text(text) => parse_check_size(text),
        PodOutput::Missing => Err("the check-size job finished without output".to_string()),
        PodOutput::Unreadable(e) => {
            plan.healths.push(
                Health::new(
                    "CheckSizeOutput",
                    ComponentState::Progressing,
                    "ReadingSizeOutput",
                    format!(
                        "check-size job {} finished; reading its output failed, retrying: {e}",
                        job.name_any()
                    ),
                )
                .because(ErrorCategory::Infrastructure),
            );
            return;
        }
    };
    match answer {
        Ok(size) => {
            plan.status.discovered_size_bytes = Some(size as i64);
            plan.healths.push(Health::ready(
                "CheckSizeOutput",
                "SizeDiscovered",
                format!("The model is {}", display_size(size)),
            ));
        }
        Err(message) => plan.healths.push(Health::new(
            "CheckSizeOutput",
            ComponentState::Failed,
            "InvalidSizeOutput",
            format!("{message}; set spec.size to skip discovery"),
        )),
    }
}

fn plan_download(
    obs: &ArtifactObserved<'_>,
    config: &RuntimeConfigSpec,
    ns: &str,
    size: u64,
    pvc: &str,
    plan: &mut ArtifactPlan,
) {
    let artifact = obs.artifact;
    let old = artifact.status.clone().unwrap_or_default();
    let already_ready = old.status == Some(ResourcePhase::Ready);
    let download = old.download.clone().unwrap_or_default();
    let attempt = match (
        &download.protocol,
        download.attempt,
        download.total_attempts,
    ) {
        (Some(p), Some(a), Some(t)) => format!(" with {p} (attempt {a} of {t})"),
        (Some(p), _, _) => format!(" with {p}"),
        _ => String::new(),
    };
    let downloader_says = download
        .message
        .clone()
        .filter(|m| !m.is_empty())
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    let percentage = old
        .progress
        .as_ref()
        .and_then(|p| p.percentage)
        .unwrap_or(0);
    let full = |p: &mut ArtifactPlan| {
        p.status.progress = Some(DownloadProgress {
            total_bytes: Some(size as i64),
            downloaded_bytes: Some(size as i64),
            percentage: Some(100),
            display_percentage: Some("100 %".into()),
        });
    };

    if already_ready && obs.download_job.is_none() {
        full(plan);
        settle_stall(&old, plan, "the download is complete");
        plan.download_complete = Some(NewCondition::new(
            "DownloadComplete",
            true,
            "Verified",
            "The model is downloaded and verified",
        ));
        return;
    }
    let Some(job) = &obs.download_job else {
        // The pod reports progress itself: without the RoleBinding it could
        // not, so it waits for it.
        if obs.role_binding {
            plan.owned
                .push(download_job(artifact, config, ns, size, pvc));
        }
        plan.healths.push(Health::new(
            "DownloadJob",
            ComponentState::Progressing,
            "Downloading",
            "Creating the download job",
        ));
        plan.download_complete = Some(NewCondition::new(
            "DownloadComplete",
            false,
            "Downloading",
            "Download not started",
        ));
        return;
    };
    if job_condition(job, "Complete").is_some() {
        full(plan);
        settle_stall(&old, plan, "the download is complete");
        plan.healths.push(Health::ready(
            "DownloadJob",
            "Downloaded",
            format!("{} downloaded", artifact.spec.source_uri),
        ));
        plan.download_complete = Some(NewCondition::new(
            "DownloadComplete",
            true,
            "Verified",
            "The model is downloaded and verified",
        ));
        return;
    }
    let failed = job_condition(job, "Failed");
    let stuck = pod_problem(&obs.download_pods);
    if failed.is_some() || stuck.is_some() {
        let mut progress = old.progress.clone().unwrap_or_default();
        progress.display_percentage = Some("N/A".into());
        plan.status.progress = Some(progress);
        let (reason, what) = match (&failed, &stuck) {
            (Some(m), _) => (
                "DownloadFailed",
                format!(
                    "download job {} failed{attempt}{downloader_says} ({m})",
                    job.name_any()
                ),
            ),
            (None, Some((r, m))) => (
                "DownloadPodFailing",
                format!("download pod cannot run: {r}: {m}"),
            ),
            _ => unreachable!("one of them is set"),
        };
        let state = if failed.is_some() {
            ComponentState::Failed
        } else {
            ComponentState::Degraded
        };
        // The pod's log usually says why; then the advice can be precise.
        let diagnosis = failed
            .as_ref()
            .and(obs.download_log.as_deref())
            .and_then(diagnose_download_log);
        let health = match &diagnosis {
            Some((cause, line)) => {
                let health = Health::new(
                    "DownloadJob",
                    state,
                    cause.reason(),
                    format!(
                        "{what}. The log says {line:?}: {}; the job is retried once its TTL removes it",
                        cause.advice(&artifact.spec.source_uri)
                    ),
                );
                match cause {
                    DownloadFailure::AuthError => health.because(ErrorCategory::Auth),
                    DownloadFailure::StorageFull => {
                        health.because(ErrorCategory::ResourceExhaustion)
                    }
                    DownloadFailure::SourceNotFound => health,
                }
            }
            None => Health::new(
                "DownloadJob",
                state,
                reason,
                format!(
                    "{what}. Check that {} exists and that spec.env carries working credentials (HF_TOKEN, AWS_*); the job is retried once its TTL removes it",
                    artifact.spec.source_uri
                ),
            ),
        };
        plan.healths.push(health);
        settle_stall(&old, plan, "the download job is not running");
        plan.download_complete = Some(NewCondition::new(
            "DownloadComplete",
            false,
            if percentage >= 100 {
                "VerificationFailed"
            } else {
                "Downloading"
            },
            what,
        ));
        return;
    }
    let (ok, reason) = if percentage >= 100 {
        (true, "Verifying")
    } else {
        (false, "Downloading")
    };
    // The downloader gives up on a stalled protocol itself; the operator
    // only says so, so a stuck download is visible without reading logs.
    let downloaded = old.progress.as_ref().and_then(|p| p.downloaded_bytes);
    let stall = downloaded.map(|bytes| {
        let env = job
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|s| s.containers.first())
            .and_then(|c| c.env.clone())
            .unwrap_or_else(|| job_env(artifact, config, Vec::new()));
        let timeout = stall_timeout(&env);
        let (mark, verdict) = stall_check(obs.progress_mark.as_ref(), bytes, obs.now, timeout);
        plan.progress_mark = Some(mark);
        (bytes, timeout, verdict)
    });
    match stall {
        Some((bytes, timeout, Ok(stalled_for))) => {
            let message = format!(
                "No download progress for {} s (STALL_TIMEOUT is {} s): still at {} of {}{attempt}{downloader_says}. The downloader falls back to the next protocol or fails by itself; if it stays stuck, check the network to the source and the download pod's log",
                stalled_for.as_secs(),
                timeout.as_secs(),
                display_size(bytes.max(0) as u64),
                display_size(size),
            );
            plan.healths.push(Health::new(
                "DownloadJob",
                ComponentState::Degraded,
                "DownloadStalled",
                message.clone(),
            ));
            plan.download_stalled = Some(NewCondition::new(
                "DownloadStalled",
                true,
                "NoProgress",
                message,
            ));
            plan.recheck_after = Some(Duration::from_secs(10));
        }
        other => {
            if let Some((_, _, Err(left))) = other {
                plan.recheck_after = Some(left.min(Duration::from_secs(10)));
            }
            plan.healths.push(Health::new(
                "DownloadJob",
                ComponentState::Progressing,
                "Downloading",
                format!(
                    "Downloading {}{attempt}: {percentage} %{downloader_says}",
                    artifact.spec.source_uri
                ),
            ));
            settle_stall(&old, plan, "the download is making progress");
        }
    }
    plan.download_complete = Some(NewCondition::new(
        "DownloadComplete",
        ok,
        reason,
        format!("{percentage} %{attempt}{downloader_says}"),
    ));
}

/// Clears a `DownloadStalled` condition left from earlier; artifacts that
/// never stalled get none.
fn settle_stall(old: &AIMArtifactStatus, plan: &mut ArtifactPlan, why: &str) {
    if old.conditions.iter().any(|c| c.type_ == "DownloadStalled") {
        plan.download_stalled = Some(NewCondition::new(
            "DownloadStalled",
            false,
            "NotStalled",
            format!("No stall: {why}"),
        ));
    }
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

async fn reconcile(artifact: Arc<AIMArtifact>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&artifact, &ctx).await;
    ctx.metrics.reconciled(CONTROLLER, started.elapsed());
    if result.is_err() {
        ctx.metrics.failed(CONTROLLER, "api");
    }
    result
}

/// The newest finished pod's answer: termination message first (written
/// by the job's shell wrapper), else the last lines of its log, which is
/// where the check-size image prints it.
async fn check_size_output(client: &kube::Client, ns: &str, job: &Job) -> PodOutput {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = match pods
        .list(&ListParams::default().labels(&format!("job-name={}", job.name_any())))
        .await
    {
        Ok(list) => list.items,
        Err(e) => return PodOutput::Unreadable(format!("listing the job's pods: {e}")),
    };
    let Some(pod) = list
        .iter()
        .find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded"))
    else {
        return PodOutput::Missing;
    };
    let message = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .find_map(|c| c.state.as_ref()?.terminated.as_ref()?.message.clone())
        .filter(|m| !m.trim().is_empty());
    if let Some(message) = message {
        return PodOutput::Text(message);
    }
    match pods.logs(&pod.name_any(), &log_tail(5)).await {
        Ok(text) => PodOutput::Text(text),
        Err(e) => PodOutput::Unreadable(format!("reading the log of pod {}: {e}", pod.name_any())),
    }
}

fn log_tail(lines: i64) -> LogParams {
    LogParams {
        tail_lines: Some(lines),
        ..Default::default()
    }
}

/// The end of the newest failed pod's log: the downloader's last words.
/// Unreadable logs only cost the precise diagnosis, so errors give None.
async fn failed_pod_log(client: &kube::Client, ns: &str, pods: &[Pod]) -> Option<String> {
    let pod = pods
        .iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed"))
        .max_by_key(|p| p.metadata.creation_timestamp.clone())?;
    Api::<Pod>::namespaced(client.clone(), ns)
        .logs(&pod.name_any(), &log_tail(50))
        .await
        .map_err(|e| tracing::debug!(pod = %pod.name_any(), %e, "download log unreadable"))
        .ok()
}

/// Progress marks by artifact UID. Kept in memory: after a restart the
/// stall clock starts again, which delays a stall report but never makes
/// one up.
static PROGRESS_MARKS: Mutex<Option<HashMap<String, ProgressMark>>> = Mutex::new(None);

fn progress_mark(uid: &str) -> Option<ProgressMark> {
    PROGRESS_MARKS
        .lock()
        .expect("progress marks")
        .as_ref()
        .and_then(|m| m.get(uid).cloned())
}

fn keep_progress_mark(uid: &str, mark: Option<ProgressMark>) {
    let mut marks = PROGRESS_MARKS.lock().expect("progress marks");
    let marks = marks.get_or_insert_with(HashMap::new);
    match mark {
        Some(m) => marks.insert(uid.to_string(), m),
        None => marks.remove(uid),
    };
}

async fn reconcile_inner(artifact: &AIMArtifact, ctx: &Context) -> Result<Action, Error> {
    let uid = artifact.uid().unwrap_or_default();
    if is_paused(artifact.meta()) || artifact.meta().deletion_timestamp.is_some() {
        keep_progress_mark(&uid, None);
        return Ok(Action::await_change());
    }
    let client = &ctx.client;
    let ns = artifact.namespace().unwrap_or_default();
    let name = artifact.name_any();
    let config = crate::runtime_config::lookup(
        client,
        Some(&ns),
        artifact.spec.runtime_config_name.as_deref(),
    )
    .await?;
    let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
        .get_opt(&pvc_name(artifact))
        .await?;
    let storage_class = match storage_class(artifact, &config) {
        None => StorageClassCheck::Default,
        Some(_) if pvc.is_some() => StorageClassCheck::Exists,
        Some((class, _)) => match Api::<StorageClass>::all(client.clone())
            .get_opt(&class)
            .await
        {
            Ok(Some(_)) => StorageClassCheck::Exists,
            Ok(None) => StorageClassCheck::Missing,
            Err(e) => StorageClassCheck::Unknown(e.to_string()),
        },
    };
    let role_binding = Api::<RoleBinding>::namespaced(client.clone(), &ns)
        .get_opt(STATUS_UPDATER)
        .await?
        .is_some();
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let check_size_job = jobs.get_opt(&check_size_job_name(artifact)).await?;
    let check_size_output = match &check_size_job {
        Some(job) if job_condition(job, "Complete").is_some() => {
            check_size_output(client, &ns, job).await
        }
        _ => PodOutput::Missing,
    };
    let download_job = jobs.get_opt(&download_job_name(artifact)).await?;
    let download_pods = match &download_job {
        Some(job) => {
            Api::<Pod>::namespaced(client.clone(), &ns)
                .list(&ListParams::default().labels(&format!("job-name={}", job.name_any())))
                .await?
                .items
        }
        None => Vec::new(),
    };
    let download_log = match &download_job {
        Some(job) if job_condition(job, "Failed").is_some() => {
            failed_pod_log(client, &ns, &download_pods).await
        }
        _ => None,
    };
    let obs = ArtifactObserved {
        artifact,
        config,
        role_binding,
        storage_class,
        check_size_job,
        check_size_output,
        pvc,
        download_job,
        download_pods,
        download_log,
        progress_mark: progress_mark(&uid),
        now: Timestamp::now(),
    };
    let mut plan = plan(&obs);
    keep_progress_mark(&uid, plan.progress_mark.take());

    let now = Time(Timestamp::now());
    let old = artifact.status.clone().unwrap_or_default();
    let generation = artifact.meta().generation;
    let assessment = state::assess(&old.conditions, &plan.healths, generation, &now);
    let mut apply_error = None;
    if assessment.apply_allowed {
        let owner = kube_io::owner_of(artifact);
        let label = |o| kube_io::with_controller_labels(o, labels::Controller::Artifact, &name);
        for object in plan.unowned.drain(..) {
            if let Err(e) = kube_io::apply(client, MANAGER, object, None).await {
                apply_error = Some(e);
            }
        }
        for object in plan.owned.drain(..) {
            if let Err(e) = kube_io::apply(client, MANAGER, label(object), owner.as_ref()).await {
                apply_error = Some(e);
            }
        }
    }
    let mut conditions = assessment.conditions;
    for extra in [plan.download_complete.take(), plan.download_stalled.take()]
        .into_iter()
        .flatten()
    {
        aim_api::conditions::set(&mut conditions, extra, generation, &now);
    }
    plan.status.conditions = conditions;
    plan.status.observed_generation = generation;
    plan.status.status = Some(ResourcePhase::from(assessment.phase));
    // Write only on a real change; the downloader's own fields were
    // carried over above, so they do not count as a difference.
    let mut compare = old.clone();
    compare.resolved_runtime_config = None;
    compare.last_used = None;
    if plan.status != compare {
        let api: Api<AIMArtifact> = Api::namespaced(client.clone(), &ns);
        match kube_io::write_status(
            &api,
            artifact,
            MANAGER,
            serde_json::to_value(&plan.status).expect("status serialises"),
        )
        .await
        {
            Ok(()) => {}
            // The downloader wrote in between; the watch brings us back.
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    kube_io::publish(
        &ctx.recorder,
        &artifact.object_ref(&()),
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
    Ok(match plan.status.status {
        Some(ResourcePhase::Ready) => Action::requeue(Duration::from_secs(300)),
        // Failed downloads retry once the Job's TTL removes it; invalid
        // specs wait for a change, but a missing storage class may appear.
        // A download close to its stall timeout is looked at right then.
        _ => Action::requeue(
            plan.recheck_after
                .unwrap_or(Duration::from_secs(10))
                .clamp(Duration::from_secs(1), Duration::from_secs(10)),
        ),
    })
}

fn error_policy(_a: Arc<AIMArtifact>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(%error, "artifact reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

/// Runs the AIMArtifact controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let controller = Controller::new(
        Api::<AIMArtifact>::all(client.clone()),
        watcher::Config::default(),
    )
    .with_config(kube::runtime::controller::Config::default().concurrency(16));
    let store = controller.store();
    controller
        .owns(Api::<Job>::all(client.clone()), watcher::Config::default())
        .owns(
            Api::<PersistentVolumeClaim>::all(client.clone()),
            watcher::Config::default(),
        )
        .watches(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default().labels(labels::CACHE_NAME),
            |pod| {
                let ns = pod.namespace()?;
                let artifact = pod.labels().get(labels::CACHE_NAME)?.clone();
                Some(ObjectRef::<AIMArtifact>::new(&artifact).within(&ns))
            },
        )
        .watches(
            Api::<RoleBinding>::all(client.clone()),
            watcher::Config::default().fields(&format!("metadata.name={STATUS_UPDATER}")),
            move |rb| {
                let ns = rb.namespace();
                store
                    .state()
                    .iter()
                    .filter(|a| a.namespace() == ns)
                    .map(|a| ObjectRef::from_obj(a.as_ref()))
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
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    #[test]
    fn volume_adds_headroom_and_rounds_up_to_whole_gib() {
        assert_eq!(pvc_bytes(10 * GIB, 10), 11 * GIB);
        assert_eq!(pvc_bytes(10 * GIB + 1, 10), 12 * GIB);
        assert_eq!(pvc_bytes(100 << 20, 10), GIB);
        assert_eq!(pvc_bytes(10 * GIB, 0), 10 * GIB);
        assert_eq!(pvc_bytes(20 * GIB, 25), 25 * GIB);
    }

    #[test]
    fn display_sizes_use_binary_units_and_two_figures() {
        assert_eq!(display_size(100 << 20), "100 MiB");
        assert_eq!(display_size(2_362_232_012), "2.2 GiB");
        assert_eq!(display_size(2 * GIB), "2 GiB");
        assert_eq!(display_size(512), "512 B");
    }

    #[test]
    fn check_size_output_is_the_last_json_line() {
        assert_eq!(
            parse_check_size("probing...\n{\"url\":\"hf://a/b\",\"sizeBytes\":1234}\n"),
            Ok(1234)
        );
        assert!(parse_check_size("").unwrap_err().contains("nothing"));
        assert!(
            parse_check_size("not json")
                .unwrap_err()
                .contains("not JSON")
        );
        assert!(
            parse_check_size("{\"sizeBytes\":0}")
                .unwrap_err()
                .contains("outside")
        );
        assert!(
            parse_check_size(&format!("{{\"sizeBytes\":{}}}", MAX_SIZE + 1))
                .unwrap_err()
                .contains("outside")
        );
    }

    #[test]
    fn source_uris_need_a_repository_or_a_path() {
        assert_eq!(check_source_uri("hf://Qwen/Qwen3-32B"), Ok(()));
        assert_eq!(check_source_uri("hf://Qwen/Qwen3-32B@main"), Ok(()));
        assert_eq!(check_source_uri("s3://bucket/models/x"), Ok(()));
        assert_eq!(
            check_source_uri("hf://Qwen"),
            Err(SourceUriError::HfRepository)
        );
        assert_eq!(check_source_uri("s3://bucket"), Err(SourceUriError::S3Path));
        assert_eq!(check_source_uri("http://x/y"), Err(SourceUriError::Scheme));
    }

    fn artifact(size: Option<&str>) -> AIMArtifact {
        let mut a = AIMArtifact::new(
            "a",
            aim_api::artifact::AIMArtifactSpec {
                source_uri: "hf://org/model".into(),
                size: size.map(|s| Quantity(s.into())),
                env: vec![var("STALL_TIMEOUT", "30")],
                ..Default::default()
            },
        );
        a.metadata.namespace = Some("ns".into());
        a.metadata.uid = Some("uid-1".into());
        a
    }

    fn observed(a: &AIMArtifact) -> ArtifactObserved<'_> {
        ArtifactObserved {
            artifact: a,
            config: ConfigLookup::NoDefault,
            role_binding: true,
            storage_class: StorageClassCheck::Default,
            check_size_job: None,
            check_size_output: PodOutput::Missing,
            pvc: None,
            download_job: None,
            download_pods: Vec::new(),
            download_log: None,
            progress_mark: None,
            now: Timestamp::from_second(1_000_000).unwrap(),
        }
    }

    fn job(condition: Option<&str>) -> Job {
        serde_json::from_value(json!({
            "metadata": {"name": "j"},
            "status": {"conditions": condition.map(|c| vec![json!({"type": c, "status": "True", "message": "BackoffLimitExceeded"})]).unwrap_or_default()},
        }))
        .unwrap()
    }

    #[test]
    fn the_download_waits_for_the_role_binding_and_artifact_env_wins() {
        let a = artifact(Some("10Gi"));
        let mut obs = observed(&a);
        obs.role_binding = false;
        let p = plan(&obs);
        assert_eq!(p.unowned[0]["kind"], "RoleBinding");
        assert!(
            p.owned.iter().all(|o| o["kind"] != "Job"),
            "no job before the binding"
        );
        obs.role_binding = true;
        let p = plan(&obs);
        let job = p.owned.iter().find(|o| o["kind"] == "Job").unwrap();
        let env = job["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap();
        let stall = env.iter().find(|e| e["name"] == "STALL_TIMEOUT").unwrap();
        assert_eq!(stall["value"], "30", "artifact env overrides the defaults");
        let pvc = p
            .owned
            .iter()
            .find(|o| o["kind"] == "PersistentVolumeClaim")
            .unwrap();
        assert_eq!(
            pvc["spec"]["resources"]["requests"]["storage"],
            (11 * GIB).to_string()
        );
    }

    #[test]
    fn a_failed_download_fails_with_na_progress_and_says_what_to_do() {
        let mut a = artifact(Some("10Gi"));
        a.status = Some(AIMArtifactStatus {
            progress: Some(DownloadProgress {
                percentage: Some(100),
                ..Default::default()
            }),
            ..Default::default()
        });
        let mut obs = observed(&a);
        obs.download_job = Some(job(Some("Failed")));
        let p = plan(&obs);
        let h = p
            .healths
            .iter()
            .find(|h| h.component == "DownloadJob")
            .unwrap();
        assert_eq!(
            (h.state, h.reason.as_str()),
            (ComponentState::Failed, "DownloadFailed")
        );
        assert!(h.message.contains("credentials"), "{}", h.message);
        assert_eq!(
            p.status.progress.unwrap().display_percentage.as_deref(),
            Some("N/A")
        );
        assert_eq!(p.download_complete.unwrap().reason, "VerificationFailed");
    }

    #[test]
    fn a_bad_check_size_answer_fails_the_output_component() {
        let a = artifact(None);
        let mut obs = observed(&a);
        obs.check_size_job = Some(job(Some("Complete")));
        obs.check_size_output = PodOutput::Text("{\"sizeBytes\": 0}".into());
        let p = plan(&obs);
        let h = p
            .healths
            .iter()
            .find(|h| h.component == "CheckSizeOutput")
            .unwrap();
        assert_eq!(
            (h.state, h.reason.as_str()),
            (ComponentState::Failed, "InvalidSizeOutput")
        );
        assert!(p.owned.is_empty(), "no volume without a size");
    }

    #[test]
    fn download_logs_name_the_cause_from_their_last_telling_line() {
        let auth = "Trying XET\nHTTP 404 on xet endpoint, falling back\nhuggingface_hub.errors.GatedRepoError: 403 Client Error. Cannot access gated repo\n";
        let (cause, line) = diagnose_download_log(auth).unwrap();
        assert_eq!(cause, DownloadFailure::AuthError);
        assert!(line.contains("GatedRepoError"), "{line}");
        assert_eq!(
            diagnose_download_log("HTTP/1.1 401\n").unwrap().0,
            DownloadFailure::AuthError
        );
        assert_eq!(
            diagnose_download_log("An error occurred (AccessDenied) when calling GetObject")
                .unwrap()
                .0,
            DownloadFailure::AuthError
        );
        assert_eq!(
            diagnose_download_log("RepositoryNotFoundError: Qwen/Nope")
                .unwrap()
                .0,
            DownloadFailure::SourceNotFound
        );
        assert_eq!(
            diagnose_download_log("An error occurred (NoSuchBucket)")
                .unwrap()
                .0,
            DownloadFailure::SourceNotFound
        );
        assert_eq!(
            diagnose_download_log("OSError: [Errno 28] No space left on device")
                .unwrap()
                .0,
            DownloadFailure::StorageFull
        );
        // Numbers inside other numbers are not status codes.
        assert_eq!(
            diagnose_download_log("downloaded 14010 of 40300 bytes"),
            None
        );
        assert_eq!(diagnose_download_log("killed\n"), None);
        assert!(
            DownloadFailure::AuthError
                .advice("hf://a/b")
                .contains("HF_TOKEN")
        );
        assert!(
            DownloadFailure::StorageFull
                .advice("hf://a/b")
                .contains("pvcHeadroomPercent")
        );
    }

    #[test]
    fn the_stall_timeout_is_the_jobs_env_or_120_seconds() {
        assert_eq!(stall_timeout(&[]), Duration::from_secs(120));
        assert_eq!(
            stall_timeout(&[var("STALL_TIMEOUT", "120"), var("STALL_TIMEOUT", "7")]),
            Duration::from_secs(7),
            "the last value wins, as in the container"
        );
        assert_eq!(
            stall_timeout(&[var("STALL_TIMEOUT", "soon")]),
            Duration::from_secs(120)
        );
        assert_eq!(
            stall_timeout(&[var("STALL_TIMEOUT", "0")]),
            Duration::from_secs(120)
        );
    }

    #[test]
    fn a_stall_is_the_same_byte_count_for_the_whole_timeout() {
        let t0 = Timestamp::from_second(1_000).unwrap();
        let at = |s: i64| Timestamp::from_second(1_000 + s).unwrap();
        let timeout = Duration::from_secs(30);
        let (mark, verdict) = stall_check(None, 5, t0, timeout);
        assert_eq!(
            mark,
            ProgressMark {
                bytes: 5,
                since: t0
            }
        );
        assert_eq!(verdict, Err(timeout));
        let (same, verdict) = stall_check(Some(&mark), 5, at(20), timeout);
        assert_eq!(same.since, t0, "no progress keeps the old mark");
        assert_eq!(verdict, Err(Duration::from_secs(10)));
        assert_eq!(
            stall_check(Some(&mark), 5, at(45), timeout).1,
            Ok(Duration::from_secs(45))
        );
        let (moved, verdict) = stall_check(Some(&mark), 6, at(45), timeout);
        assert_eq!(
            moved,
            ProgressMark {
                bytes: 6,
                since: at(45)
            }
        );
        assert_eq!(verdict, Err(timeout));
        assert_eq!(
            stall_check(Some(&mark), 5, at(-5), timeout).1,
            Err(timeout),
            "a clock step back is no stall"
        );
    }

    fn running_job(env: Vec<EnvVar>) -> Job {
        serde_json::from_value(json!({
            "metadata": {"name": "j"},
            "spec": {"template": {"spec": {"containers": [{"name": "model-download", "env": env}]}}},
            "status": {"active": 1},
        }))
        .unwrap()
    }

    fn with_progress(mut a: AIMArtifact, bytes: i64) -> AIMArtifact {
        let mut st = a.status.take().unwrap_or_default();
        st.progress = Some(DownloadProgress {
            downloaded_bytes: Some(bytes),
            total_bytes: Some(10 * GIB as i64),
            percentage: Some(40),
            display_percentage: Some("40 %".into()),
        });
        a.status = Some(st);
        a
    }

    #[test]
    fn a_download_stuck_past_the_jobs_stall_timeout_is_reported_not_killed() {
        let a = with_progress(artifact(Some("10Gi")), 4 * GIB as i64);
        let mut obs = observed(&a);
        obs.pvc = Some(
            serde_json::from_value(
                json!({"metadata": {"name": "p"}, "status": {"phase": "Bound"}}),
            )
            .unwrap(),
        );
        obs.download_job = Some(running_job(vec![var("STALL_TIMEOUT", "30")]));
        // First sight: a mark, no stall, a look again when it could be one.
        let p = plan(&obs);
        let mark = p.progress_mark.clone().unwrap();
        assert_eq!(mark.bytes, 4 * GIB as i64);
        assert!(p.download_stalled.is_none(), "never stalled, no condition");
        assert_eq!(p.recheck_after, Some(Duration::from_secs(10)));
        // 31 s later, same bytes: stalled.
        obs.progress_mark = Some(mark.clone());
        obs.now = mark
            .since
            .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(31))
            .unwrap();
        let p = plan(&obs);
        let h = p
            .healths
            .iter()
            .find(|h| h.component == "DownloadJob")
            .unwrap();
        assert_eq!(
            (h.state, h.reason.as_str()),
            (ComponentState::Degraded, "DownloadStalled")
        );
        assert!(
            h.message.contains("31 s") && h.message.contains("STALL_TIMEOUT is 30 s"),
            "{}",
            h.message
        );
        let c = p.download_stalled.unwrap();
        assert!(c.status);
        assert_eq!(c.reason, "NoProgress");
        assert!(
            p.owned.is_empty() && p.healths.iter().all(|h| h.state != ComponentState::Failed),
            "nothing is killed or failed"
        );
        // Bytes move again: the condition says the stall is over.
        let mut moving = with_progress(a.clone(), 5 * GIB as i64);
        moving.status.as_mut().unwrap().conditions =
            vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                type_: "DownloadStalled".into(),
                status: "True".into(),
                reason: "NoProgress".into(),
                message: String::new(),
                last_transition_time: Time(obs.now),
                observed_generation: None,
            }];
        let mut obs2 = observed(&moving);
        obs2.pvc = obs.pvc.clone();
        obs2.download_job = obs.download_job.clone();
        obs2.progress_mark = Some(mark);
        obs2.now = obs.now;
        let p = plan(&obs2);
        let c = p.download_stalled.unwrap();
        assert!(!c.status);
        let h = p
            .healths
            .iter()
            .find(|h| h.component == "DownloadJob")
            .unwrap();
        assert_eq!(h.state, ComponentState::Progressing);
    }

    #[test]
    fn a_failed_download_with_a_refusal_in_its_log_is_an_auth_error() {
        let a = artifact(Some("10Gi"));
        let mut obs = observed(&a);
        obs.download_job = Some(job(Some("Failed")));
        obs.download_log = Some("Downloading with XET\nrequests.exceptions.HTTPError: 401 Client Error: Unauthorized for url\n".into());
        let p = plan(&obs);
        let h = p
            .healths
            .iter()
            .find(|h| h.component == "DownloadJob")
            .unwrap();
        assert_eq!(
            (h.state, h.reason.as_str()),
            (ComponentState::Failed, "AuthError")
        );
        assert_eq!(h.error, Some(ErrorCategory::Auth));
        assert!(
            h.message.contains("401 Client Error") && h.message.contains("HF_TOKEN"),
            "{}",
            h.message
        );
        // Without a telling log the generic failure stays.
        obs.download_log = Some("Killed".into());
        let p = plan(&obs);
        let h = p
            .healths
            .iter()
            .find(|h| h.component == "DownloadJob")
            .unwrap();
        assert_eq!(h.reason, "DownloadFailed");
    }

    #[test]
    fn check_size_output_read_from_the_log_or_retried_when_unreadable() {
        let a = artifact(None);
        let mut obs = observed(&a);
        obs.check_size_output = PodOutput::Unreadable("connection refused".into());
        obs.check_size_job = Some(job(Some("Complete")));
        let p = plan(&obs);
        let h = p
            .healths
            .iter()
            .find(|h| h.component == "CheckSizeOutput")
            .unwrap();
        assert_eq!(
            (h.state, h.reason.as_str()),
            (ComponentState::Progressing, "ReadingSizeOutput")
        );
        assert!(p.owned.is_empty());
        obs.check_size_output = PodOutput::Text("Error: could not reach hub\nsize unknown".into());
        let p = plan(&obs);
        let h = p
            .healths
            .iter()
            .find(|h| h.component == "CheckSizeOutput")
            .unwrap();
        assert_eq!(
            (h.state, h.reason.as_str()),
            (ComponentState::Failed, "InvalidSizeOutput")
        );
        assert!(
            h.message.contains("size unknown"),
            "names what was printed: {}",
            h.message
        );
        assert!(p.owned.iter().all(|o| o["kind"] != "PersistentVolumeClaim"));
        obs.check_size_output =
            PodOutput::Text("{\"url\":\"hf://org/model\",\"sizeBytes\":2048}".into());
        let p = plan(&obs);
        assert_eq!(p.status.discovered_size_bytes, Some(2048));
        assert!(p.owned.iter().any(|o| o["kind"] == "PersistentVolumeClaim"));
    }

    #[test]
    fn bad_input_names_its_field_and_plans_no_volume() {
        let class_config = ConfigLookup::Found(
            Box::new(RuntimeConfigSpec {
                storage: Some(aim_api::runtime_config::StorageConfig {
                    default_storage_class_name: Some("gone".into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            Default::default(),
        );
        let cases: Vec<(
            AIMArtifact,
            Option<ConfigLookup>,
            StorageClassCheck,
            &str,
            &str,
        )> = vec![
            (
                artifact(Some("lots")),
                None,
                StorageClassCheck::Default,
                "InvalidSize",
                "spec.size",
            ),
            (
                {
                    let mut a = artifact(Some("1Gi"));
                    a.spec.source_uri = "hf://only-org".into();
                    a
                },
                None,
                StorageClassCheck::Default,
                "InvalidSourceUri",
                "spec.sourceUri",
            ),
            (
                {
                    let mut a = artifact(Some("1Gi"));
                    a.spec.storage_class_name = Some("gone".into());
                    a
                },
                None,
                StorageClassCheck::Missing,
                "StorageClassNotFound",
                "spec.storageClassName",
            ),
            (
                artifact(Some("1Gi")),
                Some(class_config),
                StorageClassCheck::Missing,
                "StorageClassNotFound",
                "storage.defaultStorageClassName",
            ),
        ];
        for (a, config, class, reason, field) in cases {
            let mut obs = observed(&a);
            if let Some(c) = config {
                obs.config = c;
            }
            obs.storage_class = class;
            let p = plan(&obs);
            let h = p
                .healths
                .iter()
                .find(|h| h.reason == reason)
                .unwrap_or_else(|| panic!("{reason}: {:?}", p.healths));
            assert_eq!(h.state, ComponentState::Failed);
            assert_eq!(h.error, Some(ErrorCategory::InvalidSpec));
            assert!(h.message.contains(field), "{reason}: {}", h.message);
            assert!(p.owned.is_empty(), "{reason}: no volume, no job");
        }
    }
}
