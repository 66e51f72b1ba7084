//! KServe's controller as a local process of a cluster.
//!
//! In a real cluster KServe's manager runs in namespace `kserve` behind the
//! Service `kserve-webhook-server-service`, and kube-apiserver reaches its
//! admission webhooks through that Service. Here it is a plain process on
//! loopback: its webhooks are registered with `clientConfig.url`
//! (`https://127.0.0.1:<port>/<path>`) and the cluster CA as `caBundle`,
//! with every path, rule, selector and failure policy taken from KServe's
//! own `config/webhook/manifests.yaml`. Its `inferenceservice-config` is
//! upstream's, with the few keys a one-machine cluster needs changed (see
//! [`config_map`]).

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{CacheDirs, Error};

pub const NAMESPACE: &str = "kserve";
pub const MANAGER: &str = "kserve-manager";
pub const CONFIG_MAP: &str = "inferenceservice-config";
/// The selector-less Service through which sidecars reach the scaler's
/// OTLP receiver (the pod runner resolves it through its EndpointSlice).
pub const SCALER_SERVICE: &str = "aim-scaler";
/// KServe's default receiver port (`keda-otel-scaler.keda.svc:4317`).
const SCALER_SERVICE_PORT: i32 = 4317;
const WEBHOOK_MANIFESTS: &str = "manifests.yaml";
const CONFIG_MANIFEST: &str = "inferenceservice.yaml";
/// KServe's own runtime for `modelFormat: huggingface` (seed 002's
/// InferenceServices name no runtime and need one that auto-selects).
const HUGGINGFACE_RUNTIME: &str = "kserve-huggingfaceserver.yaml";
/// What KServe's release install (its kustomization) puts in the
/// runtime's placeholder image; the bed never pulls it, the pod runner
/// plays the pod.
const HUGGINGFACE_IMAGE: &str = "kserve/huggingfaceserver:v0.16.0";

/// The loopback ports of KServe's process, and the scaler's address the
/// bed points KServe's objects at.
#[derive(Debug, Clone, Copy)]
pub struct KservePorts {
    /// The admission webhooks (HTTPS).
    pub webhook: u16,
    /// `/healthz` and `/readyz`.
    pub probe: u16,
    /// Where an `aim scaler` is expected: OTLP from the sidecars and
    /// KEDA's ExternalScaler calls, both on one port.
    pub scaler: u16,
}

/// The binary and the upstream manifests, or an error that says how to
/// get them.
pub fn prerequisites(cache: &CacheDirs) -> Result<(), Error> {
    let mut missing: Vec<PathBuf> = Vec::new();
    let binary = cache.binary(MANAGER);
    if !binary.exists() {
        missing.push(binary);
    }
    for file in [WEBHOOK_MANIFESTS, CONFIG_MANIFEST, HUGGINGFACE_RUNTIME] {
        let path = cache.manifests("kserve").join(file);
        if !path.exists() {
            missing.push(path);
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::NotBuilt {
            component: "KServe",
            missing: missing
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            target: "kserve",
        })
    }
}

/// Upstream's webhook registrations and config map, as extracted by the
/// build script.
pub fn upstream_manifests(cache: &CacheDirs) -> Result<(String, String), Error> {
    let read = |file: &str| {
        let path = cache.manifests("kserve").join(file);
        std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))
    };
    Ok((read(WEBHOOK_MANIFESTS)?, read(CONFIG_MANIFEST)?))
}

/// KServe's `kserve-huggingfaceserver` ClusterServingRuntime as upstream
/// ships it, with the image its release install substitutes.
pub fn huggingface_runtime(cache: &CacheDirs) -> Result<Value, Error> {
    let path = cache.manifests("kserve").join(HUGGINGFACE_RUNTIME);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let origin = "KServe's config/runtimes/kserve-huggingfaceserver.yaml";
    let mut runtime = documents(origin, &text)?
        .into_iter()
        .find(|d| d["kind"] == "ClusterServingRuntime")
        .ok_or_else(|| manifest_error(origin, "no ClusterServingRuntime"))?;
    let containers = runtime
        .pointer_mut("/spec/containers")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| manifest_error(origin, "no spec.containers"))?;
    for c in containers {
        c["image"] = json!(HUGGINGFACE_IMAGE);
    }
    Ok(runtime)
}

/// controller-runtime's webhook server reads `tls.crt` and `tls.key` from
/// `$TMPDIR/k8s-webhook-server/serving-certs` (KServe has no flag for
/// it), so the process gets a TMPDIR of its own holding the bed's
/// certificate.
pub fn cert_dir(tmpdir: &Path) -> PathBuf {
    tmpdir.join("k8s-webhook-server").join("serving-certs")
}

pub fn env(kubeconfig: &Path, tmpdir: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("KUBECONFIG", kubeconfig.display().to_string()),
        // KServe reads its config map from this namespace.
        ("POD_NAMESPACE", NAMESPACE.to_string()),
        ("TMPDIR", tmpdir.display().to_string()),
    ]
}

pub fn manager_args(ports: &KservePorts) -> Vec<String> {
    vec![
        "-leader-elect=false".to_string(),
        format!("-webhook-port={}", ports.webhook),
        format!("-health-probe-addr=127.0.0.1:{}", ports.probe),
        // "0" turns controller-runtime's metrics listener off: no port of
        // the cluster's range is spent on it.
        "-metrics-addr=0".to_string(),
        "-zap-log-level=info".to_string(),
        "-zap-encoder=console".to_string(),
        "-zap-time-encoding=rfc3339".to_string(),
    ]
}

fn manifest_error(origin: &str, detail: impl std::fmt::Display) -> Error {
    Error::Manifest {
        origin: origin.to_string(),
        detail: detail.to_string(),
    }
}

fn documents(origin: &str, yaml: &str) -> Result<Vec<Value>, Error> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value = Value::deserialize(doc).map_err(|e| manifest_error(origin, e))?;
        if !value.is_null() {
            out.push(value);
        }
    }
    Ok(out)
}

/// Upstream's Mutating/ValidatingWebhookConfigurations with each webhook
/// pointed at `https://127.0.0.1:<port><path>`, trusting `ca_pem`. Names
/// get `name_prefix` (upstream's kustomization adds one to some projects'
/// generic names).
pub fn webhook_configurations(
    origin: &str,
    upstream: &str,
    port: u16,
    ca_pem: &str,
    name_prefix: &str,
) -> Result<Vec<Value>, Error> {
    let mut out = Vec::new();
    for mut doc in documents(origin, upstream)? {
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        if kind != "MutatingWebhookConfiguration" && kind != "ValidatingWebhookConfiguration" {
            return Err(manifest_error(
                origin,
                format!("expected webhook configurations only, found kind {kind:?}"),
            ));
        }
        let name = doc["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if name.is_empty() {
            return Err(manifest_error(origin, format!("a {kind} without a name")));
        }
        doc["metadata"] = json!({
            "name": format!("{name_prefix}{name}"),
            "labels": {"app.kubernetes.io/managed-by": "aim-devcluster"},
        });
        let hooks = doc["webhooks"]
            .as_array_mut()
            .ok_or_else(|| manifest_error(origin, format!("{kind} {name}: no webhooks list")))?;
        for hook in hooks {
            let path = hook
                .pointer("/clientConfig/service/path")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    manifest_error(
                        origin,
                        format!(
                            "{kind} {name}: webhook {} has no clientConfig.service.path",
                            hook["name"]
                        ),
                    )
                })?
                .to_string();
            hook["clientConfig"] = json!({
                "url": format!("https://127.0.0.1:{port}{path}"),
                "caBundle": STANDARD.encode(ca_pem),
            });
        }
        out.push(doc);
    }
    Ok(out)
}

/// Sets `key` of a JSON-valued config map entry.
fn set_json(data: &mut Value, entry: &str, edit: impl FnOnce(&mut Value)) -> Result<(), Error> {
    let text = data[entry].as_str().ok_or_else(|| {
        manifest_error(
            "KServe's inferenceservice-config",
            format!("no data key {entry:?}"),
        )
    })?;
    let mut value: Value = serde_json::from_str(text).map_err(|e| {
        manifest_error(
            "KServe's inferenceservice-config",
            format!("data.{entry}: {e}"),
        )
    })?;
    edit(&mut value);
    data[entry] = Value::String(serde_json::to_string_pretty(&value).expect("JSON"));
    Ok(())
}

/// Upstream's `inferenceservice-config`, changed where one machine needs it:
///
/// - `deploy.defaultDeploymentMode: Standard` (upstream: Serverless, which
///   needs Knative): plain Deployments, the mode KEDA autoscaling works in;
/// - `ingress.disableIngressCreation` and `disableIstioVirtualHost`: there
///   is no ingress controller or Istio (aim routes with Gateway API);
/// - `inferenceService.resource.cpuLimit: ""`: upstream defaults a missing
///   CPU limit to 1, below the 4 CPUs per GPU AIM requests, and the
///   Deployment would be refused (limit < request). An empty value makes
///   KServe's defaulter leave the limit unset, as the pod spec asked;
/// - `opentelemetryCollector`: sidecars export to the selector-less Service
///   `aim-scaler.kserve.svc:4317` (resolved through its EndpointSlice to
///   the scaler's loopback port, as cluster DNS would), and ScaledObjects
///   name the scaler by its loopback address, because KEDA's operator is
///   a local process and cannot resolve cluster names;
/// - `autoscaler.scaleDownStabilizationWindowSeconds: 10` (upstream 300),
///   so scaling back down takes seconds in tests and the demo.
pub fn config_map(upstream: &str, ports: &KservePorts) -> Result<Value, Error> {
    let origin = "KServe's config/configmap/inferenceservice.yaml";
    let mut doc = documents(origin, upstream)?
        .into_iter()
        .find(|d| d["kind"] == "ConfigMap")
        .ok_or_else(|| manifest_error(origin, "no ConfigMap"))?;
    let mut data = doc["data"].take();
    if let Some(map) = data.as_object_mut() {
        // Commented examples only; not JSON.
        map.remove("_example");
    } else {
        return Err(manifest_error(origin, "no data"));
    }
    set_json(&mut data, "deploy", |v| {
        v["defaultDeploymentMode"] = json!("Standard");
    })?;
    set_json(&mut data, "ingress", |v| {
        v["disableIngressCreation"] = json!(true);
        v["disableIstioVirtualHost"] = json!(true);
    })?;
    set_json(&mut data, "inferenceService", |v| {
        v["resource"]["cpuLimit"] = json!("");
    })?;
    set_json(&mut data, "opentelemetryCollector", |v| {
        v["metricReceiverEndpoint"] = json!(format!(
            "{SCALER_SERVICE}.{NAMESPACE}.svc:{SCALER_SERVICE_PORT}"
        ));
        v["metricScalerEndpoint"] = json!(format!("127.0.0.1:{}", ports.scaler));
    })?;
    set_json(&mut data, "autoscaler", |v| {
        v["scaleDownStabilizationWindowSeconds"] = json!("10");
    })?;
    Ok(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": CONFIG_MAP, "namespace": NAMESPACE,
                     "labels": {"app.kubernetes.io/managed-by": "aim-devcluster"}},
        "data": data,
    }))
}

/// The namespace and the scaler's Service, before KServe starts.
pub fn base_objects(ports: &KservePorts) -> Vec<Value> {
    let labels = json!({"app.kubernetes.io/managed-by": "aim-devcluster"});
    vec![
        json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": NAMESPACE, "labels": labels},
        }),
        // No selector: the scaler is a local process, and the endpoint
        // controllers would refuse its loopback address anyway.
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": SCALER_SERVICE, "namespace": NAMESPACE, "labels": labels},
            "spec": {"ports": [{"name": "otlp-grpc", "port": SCALER_SERVICE_PORT,
                                "protocol": "TCP", "targetPort": ports.scaler}]},
        }),
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {
                "name": format!("{SCALER_SERVICE}-loopback"),
                "namespace": NAMESPACE,
                "labels": {
                    "kubernetes.io/service-name": SCALER_SERVICE,
                    "endpointslice.kubernetes.io/managed-by": "aim-devcluster",
                },
            },
            "addressType": "FQDN",
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}],
            "ports": [{"name": "otlp-grpc", "port": ports.scaler, "protocol": "TCP"}],
        }),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    const PORTS: KservePorts = KservePorts {
        webhook: 101,
        probe: 102,
        scaler: 103,
    };

    const WEBHOOKS: &str = r#"
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {name: inferenceservice.serving.kserve.io, creationTimestamp: null}
webhooks:
  - clientConfig:
      service: {name: $(webhookServiceName), namespace: $(kserveNamespace), path: /mutate-pods}
    failurePolicy: Fail
    name: inferenceservice.kserve-webhook-server.pod-mutator
    objectSelector:
      matchExpressions: [{key: serving.kserve.io/inferenceservice, operator: Exists}]
    rules: [{apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [pods]}]
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata: {name: trainedmodel.serving.kserve.io}
webhooks:
  - clientConfig:
      service: {name: x, namespace: y, path: /validate-tm}
    name: tm.validator
"#;

    #[test]
    fn webhooks_point_at_loopback_and_keep_upstream_rules() {
        let out = webhook_configurations("test", WEBHOOKS, 9443, "CA", "p-").unwrap();
        assert_eq!(out.len(), 2);
        let hook = &out[0]["webhooks"][0];
        assert_eq!(
            hook["clientConfig"]["url"],
            "https://127.0.0.1:9443/mutate-pods"
        );
        assert_eq!(hook["clientConfig"]["caBundle"], STANDARD.encode("CA"));
        assert!(hook["clientConfig"].get("service").is_none());
        assert_eq!(hook["failurePolicy"], "Fail");
        assert_eq!(
            hook["objectSelector"]["matchExpressions"][0]["key"],
            "serving.kserve.io/inferenceservice"
        );
        assert_eq!(
            out[0]["metadata"]["name"],
            "p-inferenceservice.serving.kserve.io"
        );
        assert_eq!(
            out[1]["webhooks"][0]["clientConfig"]["url"],
            "https://127.0.0.1:9443/validate-tm"
        );
    }

    #[test]
    fn a_webhook_without_a_path_is_named_in_the_error() {
        let bad = WEBHOOKS.replace(", path: /validate-tm", "");
        let err = webhook_configurations("kserve webhooks", &bad, 1, "CA", "")
            .unwrap_err()
            .to_string();
        assert!(err.contains("kserve webhooks"), "{err}");
        assert!(err.contains("tm.validator"), "{err}");
        assert!(err.contains("clientConfig.service.path"), "{err}");
    }

    const CONFIG: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: inferenceservice-config, namespace: kserve}
data:
  _example: |-
    # comments, not JSON
  deploy: |-
    {"defaultDeploymentMode": "Serverless"}
  ingress: |-
    {"ingressDomain": "example.com", "disableIngressCreation": false}
  inferenceService: |-
    {"resource": {"cpuLimit": "1", "memoryLimit": "2Gi"}}
  opentelemetryCollector: |-
    {"scrapeInterval": "5s", "metricReceiverEndpoint": "keda-otel-scaler.keda.svc:4317",
     "metricScalerEndpoint": "keda-otel-scaler.keda.svc:4318"}
  autoscaler: |-
    {"scaleUpStabilizationWindowSeconds": "0", "scaleDownStabilizationWindowSeconds": "300"}
  agent: |-
    {"image": "kserve/agent:latest"}
"#;

    fn entry(cm: &Value, key: &str) -> Value {
        serde_json::from_str(cm["data"][key].as_str().unwrap()).unwrap()
    }

    #[test]
    fn the_config_map_changes_only_what_one_machine_needs() {
        let cm = config_map(CONFIG, &PORTS).unwrap();
        assert_eq!(cm["metadata"]["namespace"], NAMESPACE);
        assert!(cm["data"].get("_example").is_none());
        assert_eq!(entry(&cm, "deploy")["defaultDeploymentMode"], "Standard");
        let otel = entry(&cm, "opentelemetryCollector");
        assert_eq!(otel["metricReceiverEndpoint"], "aim-scaler.kserve.svc:4317");
        assert_eq!(otel["metricScalerEndpoint"], "127.0.0.1:103");
        assert_eq!(otel["scrapeInterval"], "5s");
        let resource = &entry(&cm, "inferenceService")["resource"];
        assert_eq!(resource["cpuLimit"], "");
        assert_eq!(resource["memoryLimit"], "2Gi");
        assert_eq!(entry(&cm, "ingress")["ingressDomain"], "example.com");
        assert_eq!(entry(&cm, "ingress")["disableIngressCreation"], true);
        let autoscaler = entry(&cm, "autoscaler");
        assert_eq!(autoscaler["scaleDownStabilizationWindowSeconds"], "10");
        assert_eq!(autoscaler["scaleUpStabilizationWindowSeconds"], "0");
        assert_eq!(entry(&cm, "agent")["image"], "kserve/agent:latest");
    }

    #[test]
    fn a_missing_or_broken_config_key_is_named() {
        let err = config_map(&CONFIG.replace("  deploy: |-", "  other: |-"), &PORTS)
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"deploy\""), "{err}");
        let broken = CONFIG.replace("{\"image\": \"kserve/agent:latest\"}", "x");
        assert!(
            config_map(&broken, &PORTS).is_ok(),
            "untouched keys pass as written"
        );
        let broken = CONFIG.replace("{\"defaultDeploymentMode\": \"Serverless\"}", "{oops");
        let err = config_map(&broken, &PORTS).unwrap_err().to_string();
        assert!(err.contains("data.deploy"), "{err}");
    }

    #[test]
    fn missing_pieces_name_the_build_command() {
        let root = std::env::temp_dir().join(format!("aim-kserve-missing-{}", std::process::id()));
        let err = prerequisites(&CacheDirs::at(&root))
            .unwrap_err()
            .to_string();
        assert!(err.contains("kserve-manager"), "{err}");
        assert!(err.contains("inferenceservice.yaml"), "{err}");
        assert!(err.contains("dev/control-plane/build.sh kserve"), "{err}");
        let err = crate::otel::prerequisites(&CacheDirs::at(&root))
            .unwrap_err()
            .to_string();
        assert!(err.contains("otel-operator"), "{err}");
        assert!(
            err.contains("dev/control-plane/build.sh otel-operator"),
            "{err}"
        );
    }

    #[test]
    fn the_scaler_service_maps_the_receiver_port_to_the_scaler_by_name() {
        let objects = base_objects(&PORTS);
        let service = &objects[1]["spec"]["ports"][0];
        let slice = &objects[2];
        assert_eq!(slice["ports"][0]["name"], service["name"]);
        assert_eq!(slice["ports"][0]["port"], 103);
        assert_eq!(service["port"], 4317);
        assert_eq!(
            slice["metadata"]["labels"]["kubernetes.io/service-name"],
            SCALER_SERVICE
        );
    }

    #[test]
    fn the_huggingface_runtime_is_upstreams_with_the_release_image() {
        let root = std::env::temp_dir().join(format!("aim-kserve-hf-{}", std::process::id()));
        let cache = CacheDirs::at(&root);
        let dir = cache.manifests("kserve");
        std::fs::create_dir_all(&dir).unwrap();
        let err = huggingface_runtime(&cache).unwrap_err().to_string();
        assert!(err.contains("kserve-huggingfaceserver.yaml"), "{err}");
        std::fs::write(
            dir.join(HUGGINGFACE_RUNTIME),
            "apiVersion: serving.kserve.io/v1alpha1\nkind: ClusterServingRuntime\nmetadata: {name: kserve-huggingfaceserver}\nspec:\n  supportedModelFormats: [{name: huggingface, autoSelect: true}]\n  containers:\n  - name: kserve-container\n    image: huggingfaceserver:replace\n    args:\n    - --model_name={{.Name}}\n",
        )
        .unwrap();
        let runtime = huggingface_runtime(&cache).unwrap();
        assert_eq!(runtime["spec"]["containers"][0]["image"], HUGGINGFACE_IMAGE);
        assert_eq!(
            runtime["spec"]["containers"][0]["args"][0],
            "--model_name={{.Name}}"
        );
        assert_eq!(
            runtime["spec"]["supportedModelFormats"][0]["name"],
            "huggingface"
        );
        std::fs::remove_dir_all(&root).ok();
    }
}
