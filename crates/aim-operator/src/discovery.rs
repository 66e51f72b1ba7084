//! The discovery Job (AIM Engine's template auto-creation), pure parts: the Job a template gets,
//! the parse of its pod's `dry-run --format=json` log into `status.profile`
//! and `status.modelSources`, the spec hash, the retry backoff and the
//! decision what to do next (`assess`). The template controller does the
//! I/O: it reads the Job, its pods and the log, and acts on the decision.

use std::time::Duration;

use aim_api::common::{ModelSource, Profile, ProfileMetadata};
use aim_api::conditions::NewCondition;
use aim_api::template::DiscoveryState;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::state::{ComponentState, ErrorCategory, Health};
use serde::Deserialize;
use serde_json::{Value, json};

/// At most this many discovery Jobs run cluster-wide.
pub const MAX_ACTIVE_JOBS: usize = 10;
/// The Lease that serializes the count-then-create step.
pub const LOCK_LEASE: &str = "aim-discovery-lock";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error(
        "the discovery log holds no JSON array: the image's `dry-run --format=json` printed something else; check that spec.image is an AIM image"
    )]
    NoJsonArray,
    #[error(
        "the discovery output is an empty array: the image found no profile for this template's metric, precision and GPU"
    )]
    Empty,
    #[error(
        "the discovery output's first element is not a profile ({0}): the image's dry-run output format is not supported"
    )]
    Shape(String),
}

#[derive(Deserialize)]
struct Element {
    profile: Option<RawProfile>,
    #[serde(default)]
    models: Vec<RawModel>,
}

#[derive(Deserialize)]
struct RawProfile {
    metadata: Option<RawMetadata>,
    engine_args: Option<Value>,
    env_vars: Option<std::collections::BTreeMap<String, Value>>,
}

#[derive(Deserialize)]
struct RawMetadata {
    engine: Option<String>,
    gpu: Option<String>,
    precision: Option<String>,
    gpu_count: Option<i32>,
    metric: Option<String>,
    #[serde(rename = "type")]
    type_: Option<String>,
}

#[derive(Deserialize)]
struct RawModel {
    name: String,
    source: String,
    size_gb: Option<f64>,
}

/// What discovery found.
#[derive(Clone, Debug, PartialEq)]
pub struct Discovered {
    pub profile: Profile,
    pub model_sources: Vec<ModelSource>,
}

/// The last JSON array in `text` that parses, or the whole text if it is
/// one. "Last" is the array ending latest; among those, the outermost.
fn last_array(text: &str) -> Option<Vec<Value>> {
    if let Ok(Value::Array(a)) = serde_json::from_str(text.trim()) {
        return Some(a);
    }
    let mut best: Option<(usize, Vec<Value>)> = None;
    for (start, _) in text.match_indices('[') {
        let mut stream = serde_json::Deserializer::from_str(&text[start..]).into_iter::<Value>();
        if let Some(Ok(Value::Array(a))) = stream.next() {
            let end = start + stream.byte_offset();
            if best.as_ref().is_none_or(|(e, _)| end > *e) {
                best = Some((end, a));
            }
        }
    }
    best.map(|(_, a)| a)
}

/// A size in GiB as a BinarySI quantity (`0.5` → `512Mi`).
pub fn size_quantity(size_gb: f64) -> Quantity {
    let bytes = (size_gb * (1u64 << 30) as f64).round() as u64;
    let text = if bytes == 0 {
        "0".to_string()
    } else if bytes.is_multiple_of(1 << 30) {
        format!("{}Gi", bytes >> 30)
    } else if bytes.is_multiple_of(1 << 20) {
        format!("{}Mi", bytes >> 20)
    } else if bytes.is_multiple_of(1 << 10) {
        format!("{}Ki", bytes >> 10)
    } else {
        bytes.to_string()
    };
    Quantity(text)
}

fn enum_of<T: serde::de::DeserializeOwned>(value: Option<&str>) -> Option<T> {
    value.and_then(|v| serde_json::from_value(json!(v.to_lowercase())).ok())
}

/// Parses a discovery pod's log.
pub fn parse_output(log: &str) -> Result<Discovered, ParseError> {
    let array = last_array(log).ok_or(ParseError::NoJsonArray)?;
    let first = array.into_iter().next().ok_or(ParseError::Empty)?;
    let element: Element =
        serde_json::from_value(first.clone()).map_err(|e| ParseError::Shape(e.to_string()))?;
    let raw = element
        .profile
        .ok_or_else(|| ParseError::Shape("no profile".into()))?;
    let metadata = raw.metadata.map(|m| ProfileMetadata {
        engine: m.engine,
        gpu: m.gpu,
        gpu_count: m.gpu_count,
        metric: enum_of(m.metric.as_deref()),
        precision: enum_of(m.precision.as_deref()),
        type_: enum_of(m.type_.as_deref()),
    });
    let env_vars = raw.env_vars.map(|m| {
        m.into_iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                (k, v)
            })
            .collect()
    });
    let profile = Profile {
        engine_args: raw.engine_args,
        env_vars,
        metadata,
        original_discovery_output: Some(first),
    };
    let model_sources = element
        .models
        .into_iter()
        .map(|m| ModelSource {
            model_id: m.name,
            source_uri: m.source,
            size: m.size_gb.map(size_quantity),
            ..Default::default()
        })
        .collect();
    Ok(Discovered {
        profile,
        model_sources,
    })
}

/// Delay before the next attempt after `attempts` failed Jobs:
/// 60 s × 2^(attempts−1), at most an hour.
pub fn retry_delay(attempts: u32) -> Duration {
    if attempts == 0 {
        return Duration::ZERO;
    }
    Duration::from_secs((60u64 << (attempts - 1).min(6)).min(3600))
}

/// The inputs whose change resets the backoff, hashed (first 8 bytes of a
/// stable digest, hex). Not cryptographic: it only detects a change.
pub fn spec_hash(parts: &[Option<&str>]) -> String {
    // FNV-1a 64 over the parts, each terminated so ("ab", "") != ("a", "b").
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.unwrap_or("\u{0}").bytes().chain([0x1f]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// The Job's name: `discover-<template>-<hash>`. The hash covers every
/// input of the Job, so a changed spec gets a fresh Job rather than the
/// verdict of an old one. The template part is cut to 45 characters (AIM
/// cuts to 46, which makes 64: one more than the `job-name` label the job
/// controller puts on the pod may hold).
pub fn job_name(template: &str, spec_hash: &str) -> String {
    let mut base: String = aim_rules::naming::sanitize(template)
        .chars()
        .take(45)
        .collect();
    while base.ends_with('-') {
        base.pop();
    }
    format!("discover-{base}-{}", &spec_hash[..8.min(spec_hash.len())])
}

/// Whether a discovery Job still occupies one of the cluster-wide slots.
pub fn is_active(job: &Job) -> bool {
    job_finished(job).is_none()
}

/// `Some(Ok(()))` when the Job completed, `Some(Err(reason))` when it
/// failed (the Failed condition's reason), `None` while it runs.
fn job_finished(job: &Job) -> Option<Result<(), String>> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    for c in conditions.iter().filter(|c| c.status == "True") {
        match c.type_.as_str() {
            "Complete" => return Some(Ok(())),
            "Failed" => return Some(Err(c.reason.clone().unwrap_or_default())),
            _ => {}
        }
    }
    None
}

/// What the template controller saw of a template's discovery.
pub struct DiscoverySeen<'a> {
    /// The Job for the current spec (named by `job_name`), if it exists.
    pub job: Option<&'a Job>,
    pub pods: &'a [Pod],
    /// Why the job controller could not create the Job's pod (its latest
    /// `FailedCreate` event), when the Job has no pod at all.
    pub pod_create_failure: Option<String>,
    /// The discovery container's log, read once the Job completed.
    pub log: Option<Result<String, String>>,
    pub spec_hash: &'a str,
    pub previous: Option<&'a DiscoveryState>,
    pub now: Timestamp,
}

/// What the controller should do about the Job.
#[derive(Debug, PartialEq)]
pub enum JobAction {
    None,
    /// Create the Job, if a cluster-wide slot is free.
    Create,
    /// Delete the finished Job so the next attempt can use its name.
    Delete,
}

/// The verdict on a template's discovery.
pub struct DiscoveryAssessment {
    pub health: Health,
    pub state: DiscoveryState,
    pub found: Option<Discovered>,
    /// The `Discovered` condition (not a `*Ready` one: it never decides the
    /// phase, it explains it).
    pub condition: NewCondition,
    pub action: JobAction,
    /// When to look again (backoff end, log retry), if sooner than usual.
    pub requeue: Option<Duration>,
}

fn failure_health(reason: &str, job: &str, detail: Option<String>) -> Health {
    let (reason, category) = match reason {
        "BackoffLimitExceeded" => ("JobBackoffLimitExceeded", ErrorCategory::InvalidSpec),
        "DeadlineExceeded" => ("JobDeadlineExceeded", ErrorCategory::InvalidSpec),
        "Evicted" => ("JobEvicted", ErrorCategory::Infrastructure),
        _ => ("JobFailed", ErrorCategory::InvalidSpec),
    };
    Health::new(
        "DiscoveryJob",
        ComponentState::Failed,
        reason,
        format!(
            "discovery job {job} failed{}: check the model image and that it supports `dry-run --format=json`; \
             it is retried with backoff, and at once when the spec changes",
            detail.map(|d| format!(" ({d})")).unwrap_or_default()
        ),
    )
    .because(category)
}

fn evicted(pods: &[Pod]) -> bool {
    pods.iter().any(|p| {
        p.status
            .as_ref()
            .and_then(|s| s.reason.as_deref())
            .is_some_and(|r| r == "Evicted")
    })
}

/// Decides what a template without inline sources does next (as AIM Engine
/// does, with two fixes: a parse failure is a condition, `Discovered` turns True).
pub fn assess(seen: &DiscoverySeen<'_>) -> DiscoveryAssessment {
    // A changed spec is a new question: earlier failures do not count.
    let mut state = match seen.previous {
        Some(p) if p.spec_hash.as_deref() == Some(seen.spec_hash) => p.clone(),
        _ => DiscoveryState {
            spec_hash: Some(seen.spec_hash.to_string()),
            ..Default::default()
        },
    };
    let attempts = state.attempts.unwrap_or(0).max(0) as u32;
    let waiting = NewCondition::new(
        "Discovered",
        false,
        "AwaitingDiscovery",
        "Waiting for discovery to complete",
    );
    // Counts a finished, failed attempt once: the failure is recorded with
    // a time after the Job's creation, so a second look sees it counted.
    let record_failure = |state: &mut DiscoveryState, job: &Job, reason: &str| -> u32 {
        let created = job.metadata.creation_timestamp.as_ref().map(|t| t.0);
        let counted = match (state.last_attempt_time.as_ref(), created) {
            (Some(last), Some(created)) => last.0 >= created,
            _ => false,
        };
        if !counted {
            state.attempts = Some(attempts as i32 + 1);
            state.last_attempt_time = Some(Time(seen.now));
        }
        state.last_failure_reason = Some(reason.to_string());
        state.attempts.unwrap_or(0).max(0) as u32
    };
    let backoff_left = |state: &DiscoveryState, attempts: u32| -> Option<Duration> {
        let last = state.last_attempt_time.as_ref()?.0;
        let ready_at = last.as_second() + retry_delay(attempts).as_secs() as i64;
        let left = ready_at - seen.now.as_second();
        (left > 0).then(|| Duration::from_secs(left as u64))
    };

    let Some(job) = seen.job else {
        if let Some(left) = backoff_left(&state, attempts) {
            return DiscoveryAssessment {
                health: Health::new(
                    "DiscoveryJob",
                    ComponentState::Pending,
                    "AwaitingRetry",
                    format!(
                        "discovery attempt {attempts} failed ({}); the next one starts in {}s",
                        state.last_failure_reason.clone().unwrap_or_default(),
                        left.as_secs()
                    ),
                ),
                condition: NewCondition::new(
                    "Discovered",
                    false,
                    "AwaitingDiscovery",
                    format!(
                        "Waiting {}s before retry (attempt {attempts} failed)",
                        left.as_secs()
                    ),
                ),
                state,
                found: None,
                action: JobAction::None,
                requeue: Some(left),
            };
        }
        return DiscoveryAssessment {
            health: Health::new(
                "DiscoveryJob",
                ComponentState::Pending,
                "JobNotCreated",
                "the discovery job is being created (at most 10 run cluster-wide)",
            ),
            state,
            found: None,
            condition: waiting,
            action: JobAction::Create,
            requeue: None,
        };
    };
    let name = job.name_any();
    match job_finished(job) {
        None => {
            let problem = crate::artifact::pod_problem(seen.pods).or_else(|| {
                // A Job whose pod is refused (missing service account,
                // quota) stays "active" forever and holds one of the ten
                // slots: say why, so someone can fix it.
                seen.pod_create_failure.clone().map(|m| {
                    (
                        "PodCreateFailed".to_string(),
                        format!("{m}; fix the model's serviceAccountName or imagePullSecrets, or the namespace's quota"),
                    )
                })
            });
            let health = match problem {
                Some((reason, message)) => Health::new(
                    "DiscoveryJob",
                    ComponentState::Degraded,
                    &reason,
                    format!("discovery job {name}: {message}"),
                ),
                None => Health::new(
                    "DiscoveryJob",
                    ComponentState::Progressing,
                    "JobRunning",
                    format!("discovery job {name} is running"),
                ),
            };
            DiscoveryAssessment {
                health,
                state,
                found: None,
                condition: waiting,
                action: JobAction::None,
                requeue: None,
            }
        }
        Some(Err(reason)) => {
            let reason = if evicted(seen.pods) {
                "Evicted".to_string()
            } else {
                reason
            };
            let attempts = record_failure(&mut state, job, &reason);
            let left = backoff_left(&state, attempts);
            DiscoveryAssessment {
                health: failure_health(&reason, &name, None),
                condition: waiting,
                action: if left.is_none() {
                    JobAction::Delete
                } else {
                    JobAction::None
                },
                requeue: Some(left.unwrap_or(Duration::from_secs(1))),
                state,
                found: None,
            }
        }
        Some(Ok(())) => match &seen.log {
            None | Some(Err(_)) => DiscoveryAssessment {
                health: Health::new(
                    "DiscoveryJob",
                    ComponentState::Progressing,
                    "ReadingOutput",
                    format!(
                        "discovery job {name} completed; reading its pod's log{}",
                        match &seen.log {
                            Some(Err(e)) => format!(" failed so far: {e}"),
                            _ => String::new(),
                        }
                    ),
                ),
                state,
                found: None,
                condition: waiting,
                action: JobAction::None,
                requeue: Some(Duration::from_secs(3)),
            },
            Some(Ok(log)) => match parse_output(log) {
                Ok(found) => {
                    state.attempts = None;
                    state.last_failure_reason = None;
                    DiscoveryAssessment {
                        health: Health::ready(
                            "DiscoveryJob",
                            "JobComplete",
                            format!("discovery job {name} completed"),
                        ),
                        state,
                        found: Some(found),
                        condition: NewCondition::new(
                            "Discovered",
                            true,
                            "DiscoveryComplete",
                            "Profile and model sources discovered",
                        ),
                        action: JobAction::None,
                        requeue: None,
                    }
                }
                Err(e) => {
                    let attempts = record_failure(&mut state, job, "DiscoveryOutputInvalid");
                    let left = backoff_left(&state, attempts);
                    DiscoveryAssessment {
                        health: Health::new(
                            "DiscoveryJob",
                            ComponentState::Failed,
                            "DiscoveryOutputInvalid",
                            format!("discovery job {name} completed, but {e}"),
                        )
                        .because(ErrorCategory::InvalidSpec),
                        condition: NewCondition::new(
                            "Discovered",
                            false,
                            "DiscoveryOutputInvalid",
                            format!("The discovery output could not be parsed: {e}"),
                        ),
                        action: if left.is_none() {
                            JobAction::Delete
                        } else {
                            JobAction::None
                        },
                        requeue: Some(left.unwrap_or(Duration::from_secs(1))),
                        state,
                        found: None,
                    }
                }
            },
        },
    }
}

/// Inputs of a discovery Job.
pub struct JobInputs<'a> {
    pub template: &'a str,
    pub namespace: &'a str,
    pub image: &'a str,
    pub image_pull_secrets: &'a [k8s_openapi::api::core::v1::LocalObjectReference],
    pub service_account: Option<&'a str>,
    /// Template env (namespaced templates only), after the log-level pair.
    pub env: &'a [k8s_openapi::api::core::v1::EnvVar],
    pub metric: Option<&'a str>,
    pub precision: Option<&'a str>,
    pub gpu_model: Option<&'a str>,
    pub gpu_count: Option<i32>,
    pub profile_id: Option<&'a str>,
}

/// The discovery Job object (owner reference added by the caller).
pub fn job(name: &str, i: &JobInputs) -> Value {
    let mut env = vec![
        json!({"name": "AIM_LOG_LEVEL_ROOT", "value": "CRITICAL"}),
        json!({"name": "AIM_LOG_LEVEL", "value": "CRITICAL"}),
    ];
    env.extend(
        i.env
            .iter()
            .map(|e| serde_json::to_value(e).expect("serialises")),
    );
    let mut push = |k: &str, v: Option<String>| {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            env.push(json!({"name": k, "value": v}));
        }
    };
    push("AIM_METRIC", i.metric.map(str::to_string));
    push("AIM_PRECISION", i.precision.map(str::to_string));
    push("AIM_GPU_MODEL", i.gpu_model.map(str::to_string));
    push(
        "AIM_GPU_COUNT",
        i.gpu_count.filter(|c| *c > 0).map(|c| c.to_string()),
    );
    push("AIM_PROFILE_ID", i.profile_id.map(str::to_string));
    let mut pod_spec = json!({
        "restartPolicy": "Never",
        "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": "discovery",
            "image": i.image,
            "args": ["dry-run", "--format=json"],
            "env": env,
            "securityContext": {"allowPrivilegeEscalation": false, "runAsNonRoot": true, "capabilities": {"drop": ["ALL"]}},
        }],
    });
    if !i.image_pull_secrets.is_empty() {
        pod_spec["imagePullSecrets"] = json!(i.image_pull_secrets);
    }
    if let Some(sa) = i.service_account {
        pod_spec["serviceAccountName"] = json!(sa);
    }
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": i.namespace,
            "labels": {
                "app.kubernetes.io/name": "aim-discovery",
                "app.kubernetes.io/component": "discovery",
                "app.kubernetes.io/managed-by": "aim-controller",
                "aim.eai.amd.com/template": i.template,
            },
        },
        "spec": {
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": 60,
            "template": {
                "metadata": {"labels": {"aim.eai.amd.com/template": i.template}},
                "spec": pod_spec,
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = r#"[{"filename": "vllm-mi300x-fp8-tp1-latency.yaml",
      "profile": {"model": "HuggingFaceTB/SmolLM2-135M", "quantized_model": "",
        "metadata": {"engine": "vllm", "gpu": "MI300X", "precision": "fp8", "gpu_count": 1, "metric": "latency", "type": "optimized"},
        "engine_args": {"max-model-len": 2048}, "env_vars": {"VLLM_USE_V1": "1", "N": 2}},
      "models": [{"name": "HuggingFaceTB/SmolLM2-135M", "source": "hf://HuggingFaceTB/SmolLM2-135M", "size_gb": 0.5}]}]"#;

    #[test]
    fn the_aim_dummy_output_parses() {
        let d = parse_output(OUTPUT).unwrap();
        let m = d.profile.metadata.as_ref().unwrap();
        assert_eq!(m.engine.as_deref(), Some("vllm"));
        assert_eq!(m.gpu.as_deref(), Some("MI300X"));
        assert_eq!(m.gpu_count, Some(1));
        assert!(m.metric.is_some() && m.precision.is_some());
        let env = d.profile.env_vars.as_ref().unwrap();
        assert_eq!(env["VLLM_USE_V1"], "1");
        assert_eq!(env["N"], "2");
        assert_eq!(d.model_sources.len(), 1);
        assert_eq!(d.model_sources[0].model_id, "HuggingFaceTB/SmolLM2-135M");
        assert_eq!(
            d.model_sources[0].source_uri,
            "hf://HuggingFaceTB/SmolLM2-135M"
        );
        assert_eq!(d.model_sources[0].size, Some(Quantity("512Mi".into())));
        assert!(d.profile.original_discovery_output.is_some());
    }

    #[test]
    fn the_last_array_in_noisy_logs_is_used() {
        let log = format!("starting [1/3]\nwarning: x\n{OUTPUT}\n");
        assert_eq!(parse_output(&log).unwrap(), parse_output(OUTPUT).unwrap());
    }

    #[test]
    fn parse_failures_are_typed() {
        assert_eq!(parse_output("no json here"), Err(ParseError::NoJsonArray));
        assert_eq!(parse_output("[]"), Err(ParseError::Empty));
        assert!(matches!(
            parse_output(r#"[{"profile": 3}]"#),
            Err(ParseError::Shape(_))
        ));
    }

    #[test]
    fn sizes_are_binary_si() {
        assert_eq!(size_quantity(2.0).0, "2Gi");
        assert_eq!(size_quantity(0.25).0, "256Mi");
        assert_eq!(size_quantity(0.0).0, "0");
    }

    #[test]
    fn retry_delay_doubles_to_an_hour() {
        assert_eq!(retry_delay(0), Duration::ZERO);
        assert_eq!(retry_delay(1), Duration::from_secs(60));
        assert_eq!(retry_delay(3), Duration::from_secs(240));
        assert_eq!(retry_delay(40), Duration::from_secs(3600));
    }

    #[test]
    fn spec_hash_separates_parts() {
        assert_ne!(
            spec_hash(&[Some("ab"), Some("")]),
            spec_hash(&[Some("a"), Some("b")])
        );
        assert_ne!(spec_hash(&[None]), spec_hash(&[Some("")]));
        assert_eq!(spec_hash(&[Some("x")]), spec_hash(&[Some("x")]));
    }

    fn job_at(created: i64, condition: Option<(&str, &str)>) -> Job {
        serde_json::from_value(json!({
            "metadata": {"name": "discover-t-0000", "creationTimestamp": Timestamp::from_second(created).unwrap().to_string()},
            "status": {"conditions": condition.map(|(ty, reason)| vec![json!({"type": ty, "status": "True", "reason": reason})]).unwrap_or_default()},
        }))
        .unwrap()
    }

    fn seen<'a>(
        job: Option<&'a Job>,
        log: Option<Result<String, String>>,
        previous: Option<&'a DiscoveryState>,
        now: i64,
    ) -> DiscoverySeen<'a> {
        DiscoverySeen {
            job,
            pods: &[],
            pod_create_failure: None,
            log,
            spec_hash: "abcdef0123456789",
            previous,
            now: Timestamp::from_second(now).unwrap(),
        }
    }

    #[test]
    fn no_job_and_no_failures_creates_one() {
        let a = assess(&seen(None, None, None, 1000));
        assert_eq!(a.action, JobAction::Create);
        assert_eq!(a.state.spec_hash.as_deref(), Some("abcdef0123456789"));
    }

    #[test]
    fn a_failed_job_is_counted_once_and_backs_off() {
        let job = job_at(1000, Some(("Failed", "BackoffLimitExceeded")));
        let first = assess(&seen(Some(&job), None, None, 1010));
        assert_eq!(first.state.attempts, Some(1));
        assert_eq!(first.health.reason, "JobBackoffLimitExceeded");
        assert_eq!(first.action, JobAction::None, "60 s backoff first");
        assert_eq!(first.requeue, Some(Duration::from_secs(60)));
        // Looking again later does not count the same Job twice, and once
        // the backoff is over the Job is deleted to make room for a retry.
        let again = assess(&seen(Some(&job), None, Some(&first.state), 1080));
        assert_eq!(again.state.attempts, Some(1));
        assert_eq!(again.action, JobAction::Delete);
        // With the Job gone but the backoff running, the template waits.
        let waiting = assess(&seen(None, None, Some(&first.state), 1040));
        assert_eq!(waiting.action, JobAction::None);
        assert!(
            waiting
                .condition
                .message
                .contains("Waiting 30s before retry (attempt 1 failed)"),
            "{}",
            waiting.condition.message
        );
        // A second failed Job doubles the wait.
        let job2 = job_at(1100, Some(("Failed", "DeadlineExceeded")));
        let second = assess(&seen(Some(&job2), None, Some(&first.state), 1110));
        assert_eq!(second.state.attempts, Some(2));
        assert_eq!(second.health.reason, "JobDeadlineExceeded");
        assert_eq!(second.requeue, Some(Duration::from_secs(120)));
    }

    #[test]
    fn a_changed_spec_forgets_earlier_failures() {
        let old = DiscoveryState {
            attempts: Some(4),
            last_attempt_time: Some(Time(Timestamp::from_second(1000).unwrap())),
            last_failure_reason: Some("JobFailed".into()),
            spec_hash: Some("other".into()),
        };
        let a = assess(&seen(None, None, Some(&old), 1001));
        assert_eq!(a.action, JobAction::Create);
        assert_eq!(a.state.attempts, None);
    }

    #[test]
    fn output_is_parsed_or_reported() {
        let job = job_at(1000, Some(("Complete", "CompletionsReached")));
        let ok = assess(&seen(Some(&job), Some(Ok(OUTPUT.into())), None, 1010));
        assert!(ok.found.is_some());
        assert!(ok.condition.status);
        assert_eq!(ok.condition.reason, "DiscoveryComplete");
        let bad = assess(&seen(Some(&job), Some(Ok("hello".into())), None, 1010));
        assert_eq!(bad.health.reason, "DiscoveryOutputInvalid");
        assert_eq!(bad.state.attempts, Some(1));
        assert!(!bad.condition.status);
        // A log that cannot be read yet is retried soon, not a failure.
        let unread = assess(&seen(Some(&job), Some(Err("pod gone".into())), None, 1010));
        assert_eq!(unread.health.reason, "ReadingOutput");
        assert_eq!(unread.state.attempts, None);
    }

    #[test]
    fn a_job_whose_pod_is_refused_says_why() {
        let job = job_at(1000, None);
        let mut s = seen(Some(&job), None, None, 1010);
        s.pod_create_failure =
            Some("Error creating: pods is forbidden: serviceaccount \"x\" not found".into());
        let a = assess(&s);
        assert_eq!(a.health.reason, "PodCreateFailed");
        assert!(a.health.message.contains("serviceaccount"));
        assert!(a.health.message.contains("serviceAccountName"));
    }

    #[test]
    fn job_names_are_bounded_and_carry_the_hash() {
        let name = job_name(&"x".repeat(80), "0123456789abcdef");
        assert!(name.len() <= 63, "{name}");
        assert!(name.starts_with("discover-x") && name.ends_with("-01234567"));
    }

    #[test]
    fn the_job_follows_the_reference() {
        let j = job(
            "t-discovery",
            &JobInputs {
                template: "t",
                namespace: "ns",
                image: "reg/img:1",
                image_pull_secrets: &[],
                service_account: Some("sa"),
                env: &[],
                metric: Some("latency"),
                precision: None,
                gpu_model: Some("MI300X"),
                gpu_count: Some(0),
                profile_id: None,
            },
        );
        assert_eq!(j["spec"]["backoffLimit"], 0);
        assert_eq!(j["spec"]["ttlSecondsAfterFinished"], 60);
        let pod = &j["spec"]["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Never");
        assert_eq!(pod["serviceAccountName"], "sa");
        let c = &pod["containers"][0];
        assert_eq!(c["args"], json!(["dry-run", "--format=json"]));
        let names: Vec<&str> = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            vec![
                "AIM_LOG_LEVEL_ROOT",
                "AIM_LOG_LEVEL",
                "AIM_METRIC",
                "AIM_GPU_MODEL"
            ]
        );
        assert_eq!(j["metadata"]["labels"]["aim.eai.amd.com/template"], "t");
    }
}
