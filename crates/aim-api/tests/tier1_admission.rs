//! Tier 1: the CRDs against a real kube-apiserver. Every seed manifest is
//! admitted by server-side apply with AIM Engine's defaults filled in, and
//! invalid ones are refused with the CRD's own message.

use aim_api::AIMService;
use aim_testkit::{ApplyError, apply_yaml, client, namespace, repo_path};
use kube::api::{Api, Patch, PatchParams};

fn example(name: &str) -> String {
    std::fs::read_to_string(repo_path("examples/seeds").join(name))
        .unwrap_or_else(|e| panic!("examples/seeds/{name}: {e}"))
}

fn aim_examples() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(repo_path("examples/seeds"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("aim-") && n.ends_with(".yaml"))
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn every_seed_aim_manifest_is_admitted() {
    let client = client().await;
    let examples = aim_examples();
    assert!(examples.len() >= 15, "found only {examples:?}");
    for name in examples {
        // One namespace per example: they all name their service qwen-chat.
        let ns = namespace(&client, "seed").await;
        let applied = apply_yaml(&client, &ns, &example(&name))
            .await
            .unwrap_or_else(|e| panic!("{name} was refused: {e}"));
        assert!(!applied.is_empty(), "{name} applied nothing");
    }
}

#[tokio::test]
async fn apiserver_fills_in_aim_engine_defaults() {
    let client = client().await;
    let ns = namespace(&client, "defaults").await;
    apply_yaml(&client, &ns, &example("aim-caching-dedicated.yaml"))
        .await
        .unwrap();
    apply_yaml(
        &client,
        &ns,
        &example("aim-custom-metrics.yaml").replace("qwen-chat", "scaled"),
    )
    .await
    .unwrap();
    let api: Api<AIMService> = Api::namespaced(client.clone(), &ns);
    let svc = api.get("qwen-chat").await.unwrap();
    assert_eq!(svc.spec.replicas, Some(1), "replicas defaults to 1");
    let scaled = api.get("scaled").await.unwrap();
    let metric = scaled.spec.auto_scaling.unwrap().metrics[0].clone();
    assert_eq!(
        serde_json::to_value(metric.podmetric.unwrap().metric.unwrap().backend).unwrap(),
        "opentelemetry"
    );

    let model = apply_yaml(
        &client,
        &ns,
        "apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMModel\nmetadata: {name: m}\nspec:\n  image: a/b:1\n  discovery: {}\n",
    )
    .await
    .unwrap();
    let discovery = &model[0].data["spec"]["discovery"];
    assert_eq!(discovery["extractMetadata"], true);
    assert_eq!(discovery["createServiceTemplates"], true);

    let source = apply_yaml(
        &client,
        &ns,
        "apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMClusterModelSource\nmetadata: {name: defaults-src}\nspec:\n  filters: [{image: amdenterpriseai/aim-*}]\n",
    )
    .await
    .unwrap();
    assert_eq!(source[0].data["spec"]["registry"], "docker.io");
    assert_eq!(source[0].data["spec"]["syncInterval"], "1h");
    assert_eq!(source[0].data["spec"]["maxModels"], 100);
}

/// Applies `yaml` expecting a refusal whose message contains `expected`.
async fn assert_refused(yaml: &str, expected: &str) {
    let client = client().await;
    let ns = namespace(&client, "refused").await;
    match apply_yaml(&client, &ns, yaml).await {
        Ok(_) => panic!("accepted, but should be refused with {expected:?}:\n{yaml}"),
        Err(e) => {
            let msg = e
                .api_message()
                .map(str::to_string)
                .unwrap_or_else(|| e.to_string());
            assert!(
                msg.contains(expected),
                "refused, but with {msg:?}; expected {expected:?}"
            );
        }
    }
}

const HEAD: &str =
    "apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMService\nmetadata: {name: bad}\nspec:\n";

#[tokio::test]
async fn two_model_selectors_are_refused() {
    assert_refused(
        &format!("{HEAD}  model: {{name: m, image: a/b:1}}\n"),
        "exactly one of name, image, or custom must be specified",
    )
    .await;
    assert_refused(
        &format!("{HEAD}  model: {{}}\n"),
        "exactly one of name, image, or custom must be specified",
    )
    .await;
}

#[tokio::test]
async fn negative_min_replicas_is_refused() {
    assert_refused(
        &format!("{HEAD}  model: {{image: a/b:1}}\n  minReplicas: -1\n  maxReplicas: 2\n"),
        "spec.minReplicas",
    )
    .await;
}

/// `minReplicas: 0` (scale from zero) is an aim extension: admitted, since
/// whether the service is routed through a gateway may come from its
/// runtime config, which admission cannot see; the operator refuses it
/// without routing (`ScalingReady=False` naming the field).
#[tokio::test]
async fn zero_min_replicas_is_admitted_for_the_operator_to_judge() {
    let client = client().await;
    let ns = namespace(&client, "zero").await;
    apply_yaml(
        &client,
        &ns,
        &format!("{HEAD}  model: {{image: a/b:1}}\n  minReplicas: 0\n  maxReplicas: 2\n"),
    )
    .await
    .expect("minReplicas 0 admitted");
}

#[tokio::test]
async fn unknown_enum_values_are_refused() {
    assert_refused(
        &format!("{HEAD}  model: {{image: a/b:1}}\n  caching: {{mode: Sometimes}}\n"),
        "spec.caching.mode",
    )
    .await;
    assert_refused(
        &format!("{HEAD}  model: {{image: a/b:1}}\n  overrides: {{metric: fastest}}\n"),
        "spec.overrides.metric",
    )
    .await;
}

#[tokio::test]
async fn custom_model_needs_a_source_and_valid_uri() {
    assert_refused(
        &format!(
            "{HEAD}  model:\n    custom:\n      baseImage: amdenterpriseai/aim-base:0.8.5\n      modelSources: []\n      hardware: {{gpu: {{requests: 1}}}}\n"
        ),
        "modelSources",
    )
    .await;
    assert_refused(
        &format!(
            "{HEAD}  model:\n    custom:\n      baseImage: amdenterpriseai/aim-base:0.8.5\n      modelSources: [{{modelId: Qwen/Qwen3-32B, sourceUri: 'ftp://x/y'}}]\n      hardware: {{gpu: {{requests: 1}}}}\n"
        ),
        "sourceUri",
    )
    .await;
    assert_refused(
        &format!(
            "{HEAD}  model:\n    custom:\n      baseImage: amdenterpriseai/aim-base:0.8.5\n      modelSources: [{{modelId: Qwen/Qwen3-32B, sourceUri: 'hf://Qwen/Qwen3-32B'}}]\n      hardware: {{}}\n"
        ),
        "at least one of gpu or cpu must be specified",
    )
    .await;
    assert_refused(
        &format!(
            "{HEAD}  model:\n    custom:\n      baseImage: amdenterpriseai/aim-base:0.8.5\n      modelSources: [{{modelId: Qwen/Qwen3-32B, sourceUri: 'hf://Qwen/Qwen3-32B'}}]\n      hardware: {{gpu: {{model: MI300X, minVram: 64Gi}}}}\n"
        ),
        "model and minVram are mutually exclusive",
    )
    .await;
}

#[tokio::test]
async fn immutable_fields_cannot_change() {
    let client = client().await;
    let ns = namespace(&client, "immutable").await;
    let original = format!(
        "{HEAD}  model: {{image: a/b:1}}\n  caching: {{mode: Shared}}\n  overrides: {{metric: latency}}\n"
    );
    apply_yaml(&client, &ns, &original).await.unwrap();
    let cases = [
        (
            original.replace("a/b:1", "a/b:2"),
            "model selection is immutable after creation",
        ),
        (
            original.replace("mode: Shared", "mode: Dedicated"),
            "caching mode is immutable after creation",
        ),
        (
            original.replace("metric: latency", "metric: throughput"),
            "metric is immutable",
        ),
    ];
    for (changed, expected) in cases {
        let err = apply_yaml(&client, &ns, &changed)
            .await
            .expect_err("an immutable change must be refused");
        let msg = err.api_message().unwrap_or_default().to_string();
        assert!(msg.contains(expected), "got {msg:?}, expected {expected:?}");
    }
    // Mutable fields still change.
    apply_yaml(&client, &ns, &format!("{original}  replicas: 4\n"))
        .await
        .unwrap();

    let template = "apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMServiceTemplate\nmetadata: {name: t}\nspec:\n  modelName: m1\n";
    apply_yaml(&client, &ns, template).await.unwrap();
    let err = apply_yaml(&client, &ns, &template.replace("m1", "m2"))
        .await
        .unwrap_err();
    assert!(
        err.api_message()
            .unwrap_or_default()
            .contains("model name is immutable"),
        "{err}"
    );

    let artifact = "apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMArtifact\nmetadata: {name: a}\nspec:\n  sourceUri: hf://Qwen/Qwen3-32B\n";
    apply_yaml(&client, &ns, artifact).await.unwrap();
    let err = apply_yaml(&client, &ns, &artifact.replace("Qwen3-32B", "Qwen3-8B"))
        .await
        .unwrap_err();
    assert!(
        err.api_message()
            .unwrap_or_default()
            .contains("sourceUri is immutable"),
        "{err}"
    );
}

#[tokio::test]
async fn model_with_sources_needs_template_hardware() {
    let yaml = "apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMModel\nmetadata: {name: m}\nspec:\n  image: amdenterpriseai/aim-base:0.8.5\n  modelSources: [{modelId: Qwen/Qwen3-32B, sourceUri: 'hf://Qwen/Qwen3-32B'}]\n  customTemplates: [{name: t1}]\n";
    assert_refused(yaml, "when using modelSources, hardware must be specified").await;
    // Inherited hardware satisfies the rule.
    let client = client().await;
    let ns = namespace(&client, "modelhw").await;
    let ok = yaml.replace(
        "  customTemplates",
        "  custom: {hardware: {gpu: {requests: 1}}}\n  customTemplates",
    );
    apply_yaml(&client, &ns, &ok).await.unwrap();
}

#[tokio::test]
async fn status_accepts_what_the_controllers_write() {
    let client = client().await;
    let ns = namespace(&client, "status").await;
    apply_yaml(&client, &ns, &format!("{HEAD}  model: {{image: a/b:1}}\n"))
        .await
        .unwrap();
    let api: Api<AIMService> = Api::namespaced(client.clone(), &ns);
    let status = serde_json::json!({
        "apiVersion": "aim.eai.amd.com/v1alpha1", "kind": "AIMService",
        "status": {
            "status": "Running",
            "observedGeneration": 1,
            "conditions": [{"type": "Ready", "status": "True", "reason": "AllComponentsReady",
                            "message": "All components are ready", "lastTransitionTime": "2026-01-01T00:00:00Z",
                            "observedGeneration": 1}],
            "resolvedRuntimeConfig": {"name": "default", "scope": "Merged", "kind": "AIMClusterRuntimeConfig"},
            "routing": {"path": "/ns/bad"},
            "cache": {"retryAttempts": 1},
            "runtime": {"currentReplicas": 2, "desiredReplicas": 3, "minReplicas": 1, "maxReplicas": 4, "replicas": "2/3 (1-4)"}
        }
    });
    let out = api
        .patch_status(
            "bad",
            &PatchParams::apply("aim-test-status").force(),
            &Patch::Apply(&status),
        )
        .await
        .unwrap();
    let st = out.status.unwrap();
    assert_eq!(st.routing.unwrap().path.as_deref(), Some("/ns/bad"));
    assert_eq!(st.cache.unwrap().retry_attempts, Some(1));
    // NotAvailable is not an AIMService state: the controller maps it.
    let bad = serde_json::json!({
        "apiVersion": "aim.eai.amd.com/v1alpha1", "kind": "AIMService",
        "status": {"status": "NotAvailable"}
    });
    let err = api
        .patch_status(
            "bad",
            &PatchParams::apply("aim-test-status").force(),
            &Patch::Apply(&bad),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("status.status"), "{err}");
}

#[tokio::test]
async fn kserve_examples_validate_against_the_real_kserve_crd() {
    let client = client().await;
    let ns = namespace(&client, "kserve").await;
    for name in [
        "kserve-keda-prometheus.yaml",
        "kserve-keda-opentelemetry.yaml",
    ] {
        apply_yaml(&client, &ns, &example(name))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    // The CRD really validates: a wrong type is refused.
    let broken =
        example("kserve-keda-opentelemetry.yaml").replace("minReplicas: 1", "minReplicas: one");
    let err = apply_yaml(&client, &ns, &broken).await.unwrap_err();
    assert!(err.to_string().contains("minReplicas"), "{err}");
}

#[tokio::test]
async fn keda_scaled_object_from_the_runbook_validates() {
    let client = client().await;
    let ns = namespace(&client, "keda").await;
    apply_yaml(&client, &ns, &example("keda-vllm-sim-scaledobject.yaml"))
        .await
        .unwrap();
    let broken = example("keda-vllm-sim-scaledobject.yaml")
        .replace("pollingInterval: 15", "pollingInterval: often");
    assert!(apply_yaml(&client, &ns, &broken).await.is_err());
}

#[tokio::test]
async fn apply_errors_name_the_document_problem() {
    let client = client().await;
    let err = apply_yaml(&client, "default", "kind: [").await.unwrap_err();
    assert!(matches!(err, ApplyError::Yaml(_)), "{err}");
}

/// aim's scaling extensions: a policy the scaler does not have, a rate
/// limit of nothing, or a window beyond the HPA's hour is refused by the
/// API server itself, naming the field.
#[tokio::test]
async fn bad_scaling_extensions_are_refused_at_admission() {
    let bounds = "  model: {image: a/b:1}\n  minReplicas: 1\n  maxReplicas: 4\n";
    assert_refused(
        &format!("{HEAD}{bounds}  autoScaling:\n    policy: {{name: predictve}}\n"),
        "spec.autoScaling.policy.name",
    )
    .await;
    assert_refused(
        &format!(
            "{HEAD}{bounds}  autoScaling:\n    behavior:\n      scaleUp:\n        policies: [{{type: Pods, value: 0, periodSeconds: 15}}]\n"
        ),
        "spec.autoScaling.behavior.scaleUp.policies[0].value",
    )
    .await;
    assert_refused(
        &format!(
            "{HEAD}{bounds}  autoScaling:\n    behavior:\n      scaleDown: {{stabilizationWindowSeconds: 7200}}\n"
        ),
        "spec.autoScaling.behavior.scaleDown.stabilizationWindowSeconds",
    )
    .await;
    assert_refused(
        &format!(
            "{HEAD}{bounds}  autoScaling:\n    policy: {{name: queue, params: {{headroom: 0.2}}}}\n"
        ),
        "spec.autoScaling.policy.params.headroom",
    )
    .await;
    // The Prometheus backend: KServe's other backends are not aim's.
    assert_refused(
        &format!(
            "{HEAD}{bounds}  autoScaling:\n    metrics:\n    - type: External\n      external:\n        metric: {{backend: graphite, serverAddress: \"http://g:8080\", query: x}}\n"
        ),
        "spec.autoScaling.metrics[0].external.metric.backend",
    )
    .await;
    assert_refused(
        &format!("{HEAD}{bounds}  autoScaling:\n    metrics:\n    - type: Prometheus\n"),
        "spec.autoScaling.metrics[0].type",
    )
    .await;
}

/// The Prometheus backend is admitted and reads back as written, its
/// backend defaulting to prometheus.
#[tokio::test]
async fn the_prometheus_backend_is_admitted() {
    let client = client().await;
    let ns = namespace(&client, "prometheus").await;
    let yaml = format!(
        "{HEAD}  model: {{image: a/b:1}}\n  minReplicas: 1\n  maxReplicas: 4\n  autoScaling:\n    metrics:\n    - type: External\n      external:\n        metric: {{serverAddress: \"http://prometheus-operated.monitoring.svc:9090\", query: \"sum(vllm:num_requests_waiting)\"}}\n        target: {{type: Value, value: \"5\"}}\n"
    );
    apply_yaml(&client, &ns, &yaml).await.unwrap();
    let api: Api<AIMService> = Api::namespaced(client.clone(), &ns);
    let svc = api.get("bad").await.unwrap();
    let metric = &svc.spec.auto_scaling.unwrap().metrics[0];
    let source = metric.prometheus().expect("a Prometheus metric");
    assert_eq!(
        source.backend,
        Some(aim_api::service::ExternalBackend::Prometheus)
    );
    assert_eq!(
        source.query.as_deref(),
        Some("sum(vllm:num_requests_waiting)")
    );
    assert_eq!(
        metric
            .external
            .as_ref()
            .unwrap()
            .target
            .as_ref()
            .unwrap()
            .value
            .as_deref(),
        Some("5")
    );
}

/// A well-formed extension is admitted and reads back as written.
#[tokio::test]
async fn scaling_extensions_are_admitted() {
    let client = client().await;
    let ns = namespace(&client, "extensions").await;
    let yaml = format!(
        "{HEAD}  model: {{image: a/b:1}}\n  minReplicas: 1\n  maxReplicas: 4\n  autoScaling:\n    policy: {{name: stable-panic, params: {{panicThreshold: \"2\"}}}}\n    behavior:\n      scaleDown: {{stabilizationWindowSeconds: 60, policies: [{{type: Percent, value: 50, periodSeconds: 30}}]}}\n"
    );
    apply_yaml(&client, &ns, &yaml).await.unwrap();
    let api: Api<AIMService> = Api::namespaced(client.clone(), &ns);
    // HEAD names the service "bad"; this one is fine.
    let svc = api.get("bad").await.unwrap();
    let scaling = svc.spec.auto_scaling.unwrap();
    let policy = scaling.policy.unwrap();
    assert_eq!(policy.name, aim_api::service::PolicyName::StablePanic);
    assert_eq!(policy.params["panicThreshold"], "2");
    let down = scaling.behavior.unwrap().scale_down.unwrap();
    assert_eq!(down.stabilization_window_seconds, Some(60));
    assert_eq!(down.policies[0].value, 50);
}
