//! The OpenTelemetry operator as a local process, for KServe's collectors.
//!
//! KServe writes one `OpenTelemetryCollector` per autoscaled predictor, and
//! in production the operator's admission webhooks default and validate it
//! and inject the sidecar into the predictor's pods. The bed runs the real
//! operator with those webhooks on loopback (registered from its own
//! `config/webhook/manifests.yaml` like KServe's), so the collector KServe
//! creates is the one a real cluster stores; the pod runner then plays the
//! sidecar it describes.

use std::path::Path;

use crate::{CacheDirs, Error};

pub const OPERATOR: &str = "otel-operator";
const WEBHOOK_MANIFESTS: &str = "manifests.yaml";
/// Upstream's kustomization prefixes its generic webhook configuration
/// names (`mutating-webhook-configuration`) with the project name.
pub const NAME_PREFIX: &str = "opentelemetry-operator-";
/// The namespace it believes it runs in.
const NAMESPACE: &str = "opentelemetry-operator-system";

#[derive(Debug, Clone, Copy)]
pub struct OtelPorts {
    pub webhook: u16,
    pub probe: u16,
}

pub fn prerequisites(cache: &CacheDirs) -> Result<(), Error> {
    let binary = cache.binary(OPERATOR);
    let manifests = cache.manifests("otel-operator").join(WEBHOOK_MANIFESTS);
    let missing: Vec<String> = [binary, manifests]
        .into_iter()
        .filter(|p| !p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::NotBuilt {
            component: "the OpenTelemetry operator",
            missing: missing.join(", "),
            target: "otel-operator",
        })
    }
}

pub fn webhook_manifests(cache: &CacheDirs) -> Result<String, Error> {
    let path = cache.manifests("otel-operator").join(WEBHOOK_MANIFESTS);
    std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))
}

pub fn env(kubeconfig: &Path, tmpdir: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("KUBECONFIG", kubeconfig.display().to_string()),
        ("NAMESPACE", NAMESPACE.to_string()),
        // controller-runtime's webhook server reads its certificate from
        // $TMPDIR/k8s-webhook-server/serving-certs.
        ("TMPDIR", tmpdir.display().to_string()),
    ]
}

pub fn args(ports: &OtelPorts) -> Vec<String> {
    vec![
        format!("--webhook-port={}", ports.webhook),
        format!("--health-probe-addr=127.0.0.1:{}", ports.probe),
        // "0" turns the metrics listener off.
        "--metrics-addr=0".to_string(),
        "--enable-leader-election=false".to_string(),
        "--zap-log-level=info".to_string(),
        "--zap-encoder=console".to_string(),
    ]
}
