//! Image inspection for the model controllers (a registry query, no Job): pull
//! secrets, then the registry, then the labels. Every failure class gets its
//! own condition reason and error category; the model requeues with a
//! backoff, so each recovers by itself once fixed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use aim_api::common::ImageMetadata;
use k8s_openapi::api::core::v1::{LocalObjectReference, Secret};
use kube::Client;
use kube::api::Api;

use crate::image_labels::{self, LabelError};
use crate::registry::{self, Credentials, Reference, RegistryError, SecretError, Session};
use crate::state::{ComponentState, ErrorCategory, Health};

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(
        "image pull secret {name} does not exist in namespace {namespace}: create it or fix spec.imagePullSecrets"
    )]
    SecretNotFound { namespace: String, name: String },
    #[error("reading image pull secret {namespace}/{name} failed: {source}")]
    SecretAccess {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error(transparent)]
    BadSecret(#[from] SecretError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Labels(#[from] LabelError),
}

/// What the registry said, as the pure planner sees it.
#[derive(Clone, Debug, PartialEq)]
pub enum Inspection {
    Found(Box<ImageMetadata>),
    Failed(InspectFailure),
}

#[derive(Clone, Debug, PartialEq)]
pub struct InspectFailure {
    pub reason: &'static str,
    pub message: String,
    pub category: ErrorCategory,
}

impl InspectFailure {
    /// The `ImageMetadata` component's health for this failure.
    pub fn health(&self) -> Health {
        let state = if self.category == ErrorCategory::Infrastructure {
            ComponentState::Degraded
        } else {
            ComponentState::Failed
        };
        Health::new("ImageMetadata", state, self.reason, self.message.clone())
            .upstream()
            .because(self.category)
    }
}

impl From<&InspectError> for InspectFailure {
    fn from(e: &InspectError) -> Self {
        use ErrorCategory::*;
        let (reason, category) = match e {
            InspectError::SecretNotFound { .. } => ("SecretNotFound", MissingUpstream),
            InspectError::SecretAccess { .. } => ("SecretAccessFailed", Infrastructure),
            InspectError::BadSecret(_) => ("InvalidPullSecret", Auth),
            InspectError::Registry(r) => match r {
                RegistryError::InvalidReference { .. } => ("InvalidImageReference", InvalidSpec),
                RegistryError::Unauthorized { .. } => ("RegistryAuthFailed", Auth),
                RegistryError::NotFound { .. } => ("ImageNotFound", MissingUpstream),
                RegistryError::Unreachable { .. } => ("RegistryUnreachable", Infrastructure),
                RegistryError::Server { .. } => ("RegistryError", Infrastructure),
                RegistryError::BadResponse { .. } => ("RegistryBadResponse", Infrastructure),
            },
            InspectError::Labels(_) => ("InvalidImageLabels", InvalidSpec),
        };
        Self {
            reason,
            message: e.to_string(),
            category,
        }
    }
}

/// Credentials for `registry` from the listed pull secrets in `namespace`;
/// the first secret with an entry for the registry wins.
pub async fn credentials(
    client: &Client,
    namespace: &str,
    secrets: &[LocalObjectReference],
    registry: &str,
) -> Result<Option<Credentials>, InspectError> {
    let api = Api::<Secret>::namespaced(client.clone(), namespace);
    let mut found = None;
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
        let mut creds = registry::credentials_from_secret(&s.name, &data)?;
        if found.is_none() {
            found = creds.remove(registry);
        }
    }
    Ok(found)
}

/// Reads `image`'s labels from its registry and parses them.
pub async fn inspect(
    client: &Client,
    secrets_namespace: &str,
    image: &str,
    secrets: &[LocalObjectReference],
) -> Result<ImageMetadata, InspectError> {
    let reference = Reference::parse(image)?;
    let creds = credentials(client, secrets_namespace, secrets, &reference.registry).await?;
    let mut session = Session::new(&reference.registry, creds, &registry::insecure_from_env());
    let labels = session.labels(&reference).await?;
    Ok(image_labels::metadata_from_labels(&labels)?)
}

static FAILURES: Mutex<Option<HashMap<String, u32>>> = Mutex::new(None);

/// Delay before retrying after `attempts` failures in a row: 2 s doubling,
/// at most 30 s, so a fixed registry, secret or image is seen within half a
/// minute (one small GET per failing model per 30 s).
pub fn backoff(attempts: u32) -> Duration {
    Duration::from_secs((2u64 << attempts.saturating_sub(1).min(8)).min(30))
}

/// Records a failed inspection of `key`; returns when to retry.
pub fn failed(key: &str) -> Duration {
    let mut map = FAILURES.lock().expect("not poisoned");
    let n = map
        .get_or_insert_with(HashMap::new)
        .entry(key.to_string())
        .or_insert(0);
    *n += 1;
    backoff(*n)
}

/// Forgets the failures of `key`.
pub fn succeeded(key: &str) {
    if let Some(map) = FAILURES.lock().expect("not poisoned").as_mut() {
        map.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(2), Duration::from_secs(4));
        assert_eq!(backoff(4), Duration::from_secs(16));
        assert_eq!(backoff(5), Duration::from_secs(30));
        assert_eq!(backoff(50), Duration::from_secs(30));
    }

    #[test]
    fn each_failure_class_has_its_reason() {
        let cases: Vec<(InspectError, &str, ErrorCategory)> = vec![
            (
                RegistryError::Unauthorized {
                    registry: "r".into(),
                    repository: "a".into(),
                    status: 401,
                }
                .into(),
                "RegistryAuthFailed",
                ErrorCategory::Auth,
            ),
            (
                RegistryError::NotFound {
                    registry: "r".into(),
                    image: "a:1".into(),
                }
                .into(),
                "ImageNotFound",
                ErrorCategory::MissingUpstream,
            ),
            (
                RegistryError::Unreachable {
                    registry: "r".into(),
                    detail: "refused".into(),
                }
                .into(),
                "RegistryUnreachable",
                ErrorCategory::Infrastructure,
            ),
            (
                LabelError::RecommendedDeployments {
                    label: "l".into(),
                    reason: "x".into(),
                }
                .into(),
                "InvalidImageLabels",
                ErrorCategory::InvalidSpec,
            ),
        ];
        for (e, reason, category) in cases {
            let f = InspectFailure::from(&e);
            assert_eq!((f.reason, f.category), (reason, category), "{e}");
            let h = f.health();
            assert_eq!(h.component, "ImageMetadata");
            assert_eq!(
                h.state == ComponentState::Degraded,
                category == ErrorCategory::Infrastructure
            );
        }
    }
}
