//! Tier 1/2: the AIMService controller against the real apiserver, with the
//! real KServe, Gateway API and KEDA CRDs. Tests play KServe's and KEDA's
//! parts by writing the status those controllers would write, and freeze
//! templates (the `reconciliation-paused` annotation) to give them a
//! discovered profile, as AIM Engine's own e2e tests do.

mod common;

use std::time::Duration;

use aim_api::AIMService;
use aim_api::service::ServicePhase;
use aim_testkit::{apply_yaml, await_object, client, namespace};
use common::{WAIT, await_phase, condition, operator};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

fn isvc_api(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("serving.kserve.io", "v1beta1", "InferenceService"),
        "inferenceservices",
    );
    Api::namespaced_with(client.clone(), ns, &ar)
}

fn route_api(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
        "httproutes",
    );
    Api::namespaced_with(client.clone(), ns, &ar)
}

/// A Ready model with metadata given in the spec (no registry needed).
fn model_yaml(name: &str, image: &str) -> String {
    format!(
        "apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMModel\nmetadata: {{name: {name}}}\nspec:\n  image: {image}\n  discovery: {{createServiceTemplates: false}}\n  imageMetadata:\n    model: {{canonicalName: Qwen/Qwen3-32B}}\n"
    )
}

/// A template frozen in Ready with a discovered profile.
/// One MI300X, optimized.
async fn ready_template(
    client: &kube::Client,
    ns: &str,
    name: &str,
    model: &str,
    metric: &str,
    precision: &str,
) {
    let (gpus, kind) = (1, "optimized");
    let yaml = format!(
        "apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMServiceTemplate\nmetadata:\n  name: {name}\n  annotations: {{aim.eai.amd.com/reconciliation-paused: \"true\"}}\nspec:\n  modelName: {model}\n  metric: {metric}\n  precision: {precision}\n  hardware: {{gpu: {{requests: {gpus}, model: MI300X}}}}\n"
    );
    apply_yaml(client, ns, &yaml).await.unwrap();
    let api: Api<aim_api::AIMServiceTemplate> = Api::namespaced(client.clone(), ns);
    let status = json!({
        "apiVersion": "aim.eai.amd.com/v1alpha1", "kind": "AIMServiceTemplate",
        "status": {
            "status": "Ready",
            "profile": {"metadata": {"engine": "vllm", "gpu": "MI300X", "gpuCount": gpus, "metric": metric, "precision": precision, "type": kind}},
            "resolvedHardware": {"gpu": {"requests": gpus, "model": "MI300X"}},
            "hardwareSummary": format!("{gpus} x MI300X"),
        }
    });
    api.patch_status(
        name,
        &PatchParams::apply("aim-test-discovery").force(),
        &Patch::Apply(&status),
    )
    .await
    .unwrap();
}

/// Plays KServe: marks the InferenceService Ready.
async fn mark_isvc_ready(client: &kube::Client, ns: &str, name: &str) {
    let status = json!({
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "status": {"conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
    });
    isvc_api(client, ns)
        .patch_status(
            name,
            &PatchParams::apply("aim-test-kserve").force(),
            &Patch::Apply(&status),
        )
        .await
        .unwrap();
}

async fn the_isvc(client: &kube::Client, ns: &str, svc: &str) -> Value {
    let name = aim_rules::naming::isvc_name(svc, ns).unwrap();
    let obj = await_object(
        &isvc_api(client, ns),
        &name,
        "the InferenceService",
        WAIT,
        |_| true,
    )
    .await;
    serde_json::to_value(obj).unwrap()
}

async fn setup(prefix: &str) -> (kube::Client, String, Api<AIMService>) {
    operator();
    let client = client().await;
    let ns = namespace(&client, prefix).await;
    let api = Api::namespaced(client.clone(), &ns);
    (client, ns, api)
}

#[tokio::test]
async fn static_service_renders_the_inference_service_and_runs() {
    let (client, ns, api) = setup("static").await;
    apply_yaml(
        &client,
        &ns,
        &model_yaml("qwen-qwen3-32b", "amdenterpriseai/aim-qwen-qwen3-32b:0.8.5"),
    )
    .await
    .unwrap();
    ready_template(
        &client,
        &ns,
        "qwen3-32b-latency",
        "qwen-qwen3-32b",
        "latency",
        "fp8",
    )
    .await;
    apply_yaml(
        &client,
        &ns,
        "apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMService\nmetadata: {name: qwen-chat, labels: {aim.eai.amd.com/team: research}}\nspec:\n  model: {name: qwen-qwen3-32b}\n  template: {name: qwen3-32b-latency}\n  replicas: 3\n  env:\n  - name: HF_TOKEN\n    valueFrom: {secretKeyRef: {name: huggingface-creds, key: token}}\n  imagePullSecrets: [{name: registry-credentials}]\n",
    )
    .await
    .unwrap();
    let svc = await_phase(&api, "qwen-chat", ServicePhase::Starting).await;
    let isvc = the_isvc(&client, &ns, "qwen-chat").await;

    assert_eq!(
        isvc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"],
        "none"
    );
    let predictor = &isvc["spec"]["predictor"];
    assert_eq!(predictor["minReplicas"], 3);
    assert_eq!(predictor["maxReplicas"], 3);
    assert_eq!(
        predictor["imagePullSecrets"][0]["name"],
        "registry-credentials"
    );
    let c = &predictor["containers"][0];
    assert_eq!(c["name"], "kserve-container");
    assert_eq!(c["image"], "amdenterpriseai/aim-qwen-qwen3-32b:0.8.5");
    assert_eq!(c["ports"][0]["containerPort"], 8000);
    assert_eq!(c["volumeMounts"][0]["mountPath"], "/dev/shm");
    assert_eq!(predictor["volumes"][0]["emptyDir"]["medium"], "Memory");
    assert_eq!(c["resources"]["requests"]["amd.com/gpu"], "1");
    assert_eq!(c["resources"]["requests"]["cpu"], "4");
    assert_eq!(c["resources"]["limits"]["memory"], "48Gi");
    let env: Vec<&str> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    let mut sorted = env.clone();
    sorted.sort();
    assert_eq!(env, sorted, "env is sorted by name");
    for name in [
        "AIM_CACHE_PATH",
        "VLLM_ENABLE_METRICS",
        "AIM_METRIC",
        "AIM_PRECISION",
        "HF_TOKEN",
    ] {
        assert!(env.contains(&name), "{name} missing from {env:?}");
    }
    let hf = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "HF_TOKEN")
        .unwrap();
    assert_eq!(hf["valueFrom"]["secretKeyRef"]["name"], "huggingface-creds");
    let labels = &isvc["metadata"]["labels"];
    assert_eq!(labels["app.kubernetes.io/component"], "inference");
    assert_eq!(labels["aim.eai.amd.com/service"], "qwen-chat");
    assert_eq!(labels["aim.eai.amd.com/metric"], "latency");
    assert_eq!(
        labels["aim.eai.amd.com/team"], "research",
        "aim.eai.amd.com/* labels propagate"
    );
    let owner = &isvc["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "AIMService");
    assert_eq!(owner["controller"], true);

    let st = svc.status.unwrap();
    assert_eq!(
        st.resolved_model.unwrap().name.as_deref(),
        Some("qwen-qwen3-32b")
    );
    assert_eq!(
        st.resolved_template.unwrap().name.as_deref(),
        Some("qwen3-32b-latency")
    );
    assert_eq!(st.runtime.unwrap().replicas.as_deref(), Some("3"));
    assert_eq!(st.observed_generation, Some(1));
    assert!(
        st.conditions
            .iter()
            .all(|c| c.observed_generation == Some(1))
    );

    mark_isvc_ready(&client, &ns, isvc["metadata"]["name"].as_str().unwrap()).await;
    // Pods are KServe's too; without them the pods component waits.
    let svc = await_object(
        &api,
        "qwen-chat",
        "InferenceServiceReady",
        WAIT,
        |s: &AIMService| condition(s, "InferenceServiceReady").is_some_and(|c| c.0 == "True"),
    )
    .await;
    let pods = condition(&svc, "InferenceServicePodsReady").unwrap();
    assert_eq!((pods.0.as_str(), pods.1.as_str()), ("False", "NoPods"));
}

#[tokio::test]
async fn autoscaling_sets_keda_annotations_and_switching_back_removes_them() {
    let (client, ns, api) = setup("autoscale").await;
    apply_yaml(
        &client,
        &ns,
        &model_yaml("m", "amdenterpriseai/aim-qwen-qwen3-32b:0.8.5"),
    )
    .await
    .unwrap();
    ready_template(&client, &ns, "t", "m", "latency", "fp8").await;
    let scaled = "apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMService\nmetadata: {name: qwen-chat}\nspec:\n  model: {name: m}\n  template: {name: t}\n  minReplicas: 1\n  maxReplicas: 8\n  autoScaling:\n    metrics:\n    - type: PodMetric\n      podmetric:\n        metric: {backend: opentelemetry, metricNames: [\"vllm:num_requests_running\"], query: \"vllm:num_requests_running\", operationOverTime: avg}\n        target: {type: Value, value: \"1\"}\n";
    apply_yaml(&client, &ns, scaled).await.unwrap();
    let svc = await_phase(&api, "qwen-chat", ServicePhase::Starting).await;
    let isvc = the_isvc(&client, &ns, "qwen-chat").await;
    let name = isvc["metadata"]["name"].as_str().unwrap().to_string();
    let ann = &isvc["metadata"]["annotations"];
    assert_eq!(ann["serving.kserve.io/autoscalerClass"], "keda");
    assert_eq!(
        ann["sidecar.opentelemetry.io/inject"],
        format!("{name}-predictor")
    );
    assert_eq!(ann["prometheus.kserve.io/port"], "8000");
    let p = &isvc["spec"]["predictor"];
    assert_eq!(
        (p["minReplicas"].clone(), p["maxReplicas"].clone()),
        (json!(1), json!(8))
    );
    let metric = &p["autoScaling"]["metrics"][0]["podmetric"];
    assert_eq!(metric["metric"]["query"], "vllm:num_requests_running");
    assert_eq!(metric["metric"]["operationOverTime"], "avg");
    assert_eq!(
        metric["metric"]["serverAddress"], "aim-scaler.aim-system.svc:4318",
        "default scaler address filled in"
    );
    assert_eq!(metric["target"]["value"], "1");
    let hpa = condition(&svc, "HPAReady").unwrap();
    assert_eq!(hpa.1, "HPANotFound");

    // Play KEDA: the HPA appears and scales; status.runtime follows it.
    let hpa_yaml = format!(
        "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {{name: keda-hpa-{name}-predictor}}\nspec:\n  scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: {name}-predictor}}\n  minReplicas: 1\n  maxReplicas: 8\n  metrics:\n  - type: External\n    external: {{metric: {{name: s0-otel}}, target: {{type: AverageValue, averageValue: '1'}}}}\n"
    );
    apply_yaml(&client, &ns, &hpa_yaml).await.unwrap();
    let hpas: Api<k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler> =
        Api::namespaced(client.clone(), &ns);
    let hpa_status = json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "status": {"currentReplicas": 2, "desiredReplicas": 3,
            "currentMetrics": [{"type": "External", "external": {"metric": {"name": "s0-otel"}, "current": {"averageValue": "2500m"}}}],
            "conditions": [
            {"type": "AbleToScale", "status": "True", "reason": "ReadyForNewScale"},
            {"type": "ScalingActive", "status": "True", "reason": "ValidMetricFound"}]}
    });
    // The real HPA controller also writes this status; ours must win the race
    // long enough to be observed, so keep writing until the service saw it.
    let svc = loop {
        let _ = hpas
            .patch_status(
                &format!("keda-hpa-{name}-predictor"),
                &PatchParams::apply("aim-test-keda").force(),
                &Patch::Apply(&hpa_status),
            )
            .await;
        let s = api.get("qwen-chat").await.unwrap();
        if s.status
            .as_ref()
            .and_then(|st| st.runtime.as_ref())
            .and_then(|r| r.replicas.clone())
            .as_deref()
            == Some("2/3 (1-8)")
        {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(condition(&svc, "HPAReady").unwrap().1, "HPAOperational");
    // The HPA's decision (1 desired before it existed, 3 now) is an event
    // on the service, with the metric value behind it.
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns);
    let scaled_up = await_object_list(&events, "a ScaledUp event", |e| {
        e.reason.as_deref() == Some("ScaledUp")
            && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("qwen-chat")
    })
    .await;
    let note = scaled_up.note.unwrap_or_default();
    // What it was before 3 depends on whether the real HPA controller wrote
    // its own status first (it cannot scale a Deployment that is absent).
    assert!(
        note.starts_with("desired replicas ") && note.contains(" → 3: "),
        "{note}"
    );
    assert!(
        note.contains("s0-otel = 2500m per pod (target 1 per pod)"),
        "{note}"
    );

    // Back to fixed replicas: the KEDA annotations and the HPA condition go.
    apply_yaml(
        &client,
        &ns,
        "apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMService\nmetadata: {name: qwen-chat}\nspec:\n  model: {name: m}\n  template: {name: t}\n  replicas: 2\n",
    )
    .await
    .unwrap();
    let isvc = await_object(
        &isvc_api(&client, &ns),
        &name,
        "fixed replicas",
        WAIT,
        |o: &DynamicObject| {
            o.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("serving.kserve.io/autoscalerClass"))
                .map(String::as_str)
                == Some("none")
        },
    )
    .await;
    let ann = isvc.metadata.annotations.unwrap();
    assert!(
        !ann.contains_key("sidecar.opentelemetry.io/inject"),
        "{ann:?}"
    );
    assert!(isvc.data["spec"]["predictor"].get("autoScaling").is_none());
    let svc = await_object(
        &api,
        "qwen-chat",
        "HPAReady removed",
        WAIT,
        |s: &AIMService| condition(s, "HPAReady").is_none(),
    )
    .await;
    assert_eq!(
        svc.status.unwrap().runtime.unwrap().replicas.as_deref(),
        Some("2")
    );
}

#[tokio::test]
async fn missing_model_fails_with_config_valid_and_creates_nothing() {
    let (client, ns, api) = setup("nomodel").await;
    apply_yaml(&client, &ns, "apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMService\nmetadata: {name: s}\nspec:\n  model: {name: ghost}\n").await.unwrap();
    let svc = await_phase(&api, "s", ServicePhase::Failed).await;
    let cv = condition(&svc, "ConfigValid").unwrap();
    assert_eq!(
        (cv.0.as_str(), cv.1.as_str()),
        ("False", "ReferenceNotFound")
    );
    let model = condition(&svc, "ModelReady").unwrap();
    assert_eq!(model.1, "ModelNotFound");
    assert!(
        model.2.contains("ghost") && model.2.contains("spec.model.name"),
        "{}",
        model.2
    );
    let ready = condition(&svc, "Ready").unwrap();
    assert_eq!(ready.1, "ReferenceNotFound");
    let list = isvc_api(&client, &ns)
        .list(&Default::default())
        .await
        .unwrap();
    assert!(list.items.is_empty(), "no child may be written");
}

#[tokio::test]
async fn model_by_image_is_created_once_and_shared() {
    let (client, ns, api) = setup("byimage").await;
    for svc in ["a", "b"] {
        apply_yaml(&client, &ns, &format!("apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMService\nmetadata: {{name: {svc}}}\nspec:\n  model: {{image: amdenterpriseai/aim-qwen-qwen3-32b:0.8.5}}\n")).await.unwrap();
    }
    let models: Api<aim_api::AIMModel> = Api::namespaced(client.clone(), &ns);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let list = models.list(&Default::default()).await.unwrap().items;
        if !list.is_empty() {
            // Give the second service time to (not) create a second one.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let list = models.list(&Default::default()).await.unwrap().items;
            assert_eq!(
                list.len(),
                1,
                "one model per image: {:?}",
                list.iter()
                    .map(|m| m.metadata.name.clone())
                    .collect::<Vec<_>>()
            );
            let m = &list[0];
            assert_eq!(m.spec.image, "amdenterpriseai/aim-qwen-qwen3-32b:0.8.5");
            assert_eq!(
                m.metadata.labels.as_ref().unwrap()["aim.eai.amd.com/origin"],
                "auto-generated"
            );
            assert!(
                m.metadata
                    .owner_references
                    .as_ref()
                    .is_none_or(|o| o.is_empty()),
                "shared: no owner"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no model was created");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let svc = api.get("a").await.unwrap();
    assert!(svc.status.is_some());
}

#[tokio::test]
async fn tied_templates_report_selection_ambiguous_with_candidates() {
    let (client, ns, api) = setup("ambiguous").await;
    apply_yaml(
        &client,
        &ns,
        &model_yaml("m", "amdenterpriseai/aim-qwen-qwen3-32b:0.8.5"),
    )
    .await
    .unwrap();
    ready_template(&client, &ns, "twin-a", "m", "latency", "fp8").await;
    ready_template(&client, &ns, "twin-b", "m", "latency", "fp8").await;
    apply_yaml(&client, &ns, "apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMService\nmetadata: {name: s}\nspec:\n  model: {name: m}\n").await.unwrap();
    let svc = await_object(
        &api,
        "s",
        "TemplateSelectionAmbiguous",
        WAIT,
        |s: &AIMService| {
            condition(s, "TemplateReady").is_some_and(|c| c.1 == "TemplateSelectionAmbiguous")
        },
    )
    .await;
    let msg = condition(&svc, "TemplateReady").unwrap().2;
    assert!(msg.contains("twin-a") && msg.contains("twin-b"), "{msg}");

    // A better-ranked template breaks the tie and the service proceeds.
    ready_template(&client, &ns, "fast", "m", "latency", "fp4").await;
    let svc = await_phase(&api, "s", ServicePhase::Starting).await;
    assert_eq!(
        svc.status
            .unwrap()
            .resolved_template
            .unwrap()
            .name
            .as_deref(),
        Some("fast")
    );
}

#[tokio::test]
async fn routing_writes_the_route_and_the_path() {
    let (client, ns, api) = setup("routing").await;
    apply_yaml(
        &client,
        &ns,
        &model_yaml("m", "amdenterpriseai/aim-qwen-qwen3-32b:0.8.5"),
    )
    .await
    .unwrap();
    ready_template(&client, &ns, "t", "m", "latency", "fp8").await;
    apply_yaml(
        &client,
        &ns,
        "apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMService\nmetadata: {name: qwen-chat, labels: {team: Research}}\nspec:\n  model: {name: m}\n  template: {name: t}\n  routing:\n    enabled: true\n    gatewayRef: {name: inference-gateway, namespace: gateways}\n    pathTemplate: \"/team/{.metadata.labels['team']}/{.metadata.name}\"\n    requestTimeout: 120s\n",
    )
    .await
    .unwrap();
    let svc = await_object(
        &api,
        "qwen-chat",
        "a routing path",
        WAIT,
        |s: &AIMService| {
            s.status
                .as_ref()
                .and_then(|st| st.routing.as_ref())
                .is_some()
        },
    )
    .await;
    assert_eq!(
        svc.status
            .as_ref()
            .unwrap()
            .routing
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/team/research/qwen-chat")
    );
    let route_name = aim_rules::naming::httproute_name("qwen-chat", &ns);
    let route = await_object(
        &route_api(&client, &ns),
        &route_name,
        "the HTTPRoute",
        WAIT,
        |_| true,
    )
    .await;
    let spec = &route.data["spec"];
    assert_eq!(spec["parentRefs"][0]["name"], "inference-gateway");
    let rule = &spec["rules"][0];
    assert_eq!(
        rule["matches"][0]["path"]["value"],
        "/team/research/qwen-chat"
    );
    assert_eq!(
        rule["filters"][0]["urlRewrite"]["path"]["replacePrefixMatch"],
        "/"
    );
    assert_eq!(rule["backendRefs"][0]["port"], 80);
    assert!(
        rule["backendRefs"][0]["name"]
            .as_str()
            .unwrap()
            .ends_with("-predictor")
    );
    assert_eq!(rule["timeouts"]["request"], "120s");
    // Once the route exists, it waits for a gateway to accept it.
    await_object(
        &api,
        "qwen-chat",
        "HTTPRoutePending",
        WAIT,
        |s: &AIMService| condition(s, "HTTPRouteReady").is_some_and(|c| c.1 == "HTTPRoutePending"),
    )
    .await;

    // Play the gateway: Accepted makes the route Ready.
    let status = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "status": {"parents": [{
        "parentRef": {"name": "inference-gateway", "namespace": "gateways"},
        "controllerName": "example.com/gateway",
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}]
    }]}});
    route_api(&client, &ns)
        .patch_status(
            &route_name,
            &PatchParams::apply("aim-test-gateway").force(),
            &Patch::Apply(&status),
        )
        .await
        .unwrap();
    await_object(
        &api,
        "qwen-chat",
        "HTTPRouteAccepted",
        WAIT,
        |s: &AIMService| condition(s, "HTTPRouteReady").is_some_and(|c| c.1 == "HTTPRouteAccepted"),
    )
    .await;

    // Routing off: the route and its stale condition both go (AIM Engine
    // keeps an old HTTPRouteReady=False forever).
    apply_yaml(&client, &ns, "apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMService\nmetadata: {name: qwen-chat, labels: {team: Research}}\nspec:\n  model: {name: m}\n  template: {name: t}\n  routing: {enabled: false}\n").await.unwrap();
    await_object(
        &api,
        "qwen-chat",
        "HTTPRouteReady removed",
        WAIT,
        |s: &AIMService| condition(s, "HTTPRouteReady").is_none(),
    )
    .await;
    let deadline = std::time::Instant::now() + WAIT;
    while route_api(&client, &ns)
        .get_opt(&route_name)
        .await
        .unwrap()
        .is_some()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the route survived routing being turned off"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn a_bad_path_template_degrades_without_a_route() {
    let (client, ns, api) = setup("badpath").await;
    apply_yaml(
        &client,
        &ns,
        &model_yaml("m", "amdenterpriseai/aim-qwen-qwen3-32b:0.8.5"),
    )
    .await
    .unwrap();
    ready_template(&client, &ns, "t", "m", "latency", "fp8").await;
    apply_yaml(
        &client,
        &ns,
        "apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMService\nmetadata: {name: s}\nspec:\n  model: {name: m}\n  template: {name: t}\n  routing:\n    enabled: true\n    gatewayRef: {name: gw}\n    pathTemplate: \"/team/{.metadata.labels['team']}/chat\"\n",
    )
    .await
    .unwrap();
    let svc = await_phase(&api, "s", ServicePhase::Degraded).await;
    let c = condition(&svc, "HTTPRouteReady").unwrap();
    assert_eq!(c.1, "PathTemplateInvalid");
    assert!(
        c.2.contains("team"),
        "the message names the missing label: {}",
        c.2
    );
    let routes = route_api(&client, &ns)
        .list(&Default::default())
        .await
        .unwrap();
    assert!(routes.items.is_empty());
    // The inference service itself still deploys.
    the_isvc(&client, &ns, "s").await;
}

#[tokio::test]
async fn routing_without_a_gateway_fails_and_applies_nothing() {
    let (client, ns, api) = setup("nogw").await;
    apply_yaml(
        &client,
        &ns,
        &model_yaml("m", "amdenterpriseai/aim-qwen-qwen3-32b:0.8.5"),
    )
    .await
    .unwrap();
    ready_template(&client, &ns, "t", "m", "latency", "fp8").await;
    apply_yaml(&client, &ns, "apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMService\nmetadata: {name: s}\nspec:\n  model: {name: m}\n  template: {name: t}\n  routing: {enabled: true}\n").await.unwrap();
    let svc = await_phase(&api, "s", ServicePhase::Failed).await;
    assert_eq!(
        condition(&svc, "HTTPRouteReady").unwrap().1,
        "GatewayNotConfigured"
    );
    assert_eq!(condition(&svc, "ConfigValid").unwrap().1, "InvalidSpec");
    assert!(
        isvc_api(&client, &ns)
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn a_missing_runtime_config_fails_and_a_namespace_false_overrides_the_cluster() {
    let (client, ns, api) = setup("rtconfig").await;
    apply_yaml(&client, &ns, "apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMService\nmetadata: {name: s}\nspec:\n  model: {image: a/b:1}\n  runtimeConfigName: team-config\n").await.unwrap();
    let svc = await_phase(&api, "s", ServicePhase::Failed).await;
    let c = condition(&svc, "RuntimeConfigReady").unwrap();
    assert_eq!(c.1, "ConfigNotFound");
    assert!(c.2.contains("team-config"));

    // Cluster config turns routing on with a gateway; the namespace config
    // of the same name switches it off again (AIM Engine lets
    // only non-zero namespace values win).
    let cluster_name = format!("cfg-{ns}");
    apply_yaml(&client, &ns, &format!("apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMClusterRuntimeConfig\nmetadata: {{name: {cluster_name}}}\nspec:\n  routing: {{enabled: true, gatewayRef: {{name: gw}}}}\n")).await.unwrap();
    apply_yaml(&client, &ns, &format!("apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMRuntimeConfig\nmetadata: {{name: {cluster_name}}}\nspec:\n  routing: {{enabled: false}}\n")).await.unwrap();
    apply_yaml(
        &client,
        &ns,
        &model_yaml("m", "amdenterpriseai/aim-qwen-qwen3-32b:0.8.5"),
    )
    .await
    .unwrap();
    ready_template(&client, &ns, "t", "m", "latency", "fp8").await;
    apply_yaml(&client, &ns, &format!("apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMService\nmetadata: {{name: r}}\nspec:\n  model: {{name: m}}\n  template: {{name: t}}\n  runtimeConfigName: {cluster_name}\n")).await.unwrap();
    let svc = await_phase(&api, "r", ServicePhase::Starting).await;
    assert!(
        condition(&svc, "HTTPRouteReady").is_none(),
        "routing must be off"
    );
    let resolved = svc.status.unwrap().resolved_runtime_config.unwrap();
    assert_eq!(
        resolved.scope,
        Some(aim_api::common::Scope::Merged),
        "status.resolvedRuntimeConfig is written (AIM Engine never sets it)"
    );
}

#[tokio::test]
async fn a_paused_service_is_left_alone() {
    let (client, ns, api) = setup("paused").await;
    apply_yaml(&client, &ns, "apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMService\nmetadata:\n  name: s\n  annotations: {aim.eai.amd.com/reconciliation-paused: \"true\"}\nspec:\n  model: {name: ghost}\n").await.unwrap();
    // The finalizer still arrives (it is added before the pause check)...
    let svc = await_object(&api, "s", "the finalizer", WAIT, |s: &AIMService| {
        !s.metadata.finalizers.clone().unwrap_or_default().is_empty()
    })
    .await;
    // ...but no status is ever written.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let svc2 = api.get("s").await.unwrap();
    assert!(
        svc2.status.is_none() || svc2.status == svc.status,
        "a paused service got a status: {:?}",
        svc2.status
    );
    assert!(svc2.status.is_none());
}

#[tokio::test]
async fn deleting_a_service_collects_its_children() {
    let (client, ns, api) = setup("delete").await;
    apply_yaml(
        &client,
        &ns,
        &model_yaml("m", "amdenterpriseai/aim-qwen-qwen3-32b:0.8.5"),
    )
    .await
    .unwrap();
    ready_template(&client, &ns, "t", "m", "latency", "fp8").await;
    apply_yaml(&client, &ns, "apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMService\nmetadata: {name: s}\nspec:\n  model: {name: m}\n  template: {name: t}\n").await.unwrap();
    let isvc = the_isvc(&client, &ns, "s").await;
    let name = isvc["metadata"]["name"].as_str().unwrap().to_string();
    api.delete("s", &Default::default()).await.unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while api.get_opt("s").await.unwrap().is_some()
        || isvc_api(&client, &ns)
            .get_opt(&name)
            .await
            .unwrap()
            .is_some()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "service or its InferenceService survived deletion"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The chart's RBAC is enough: run a second operator instance as the
/// `aim-operator` ServiceAccount (impersonated) and see it reconcile.
#[tokio::test]
async fn operator_runs_under_the_charts_rbac() {
    let admin = client().await;
    // The chart's RBAC, installed by the real helm.
    aim_testkit::install_chart().await;
    let info = aim_testkit::cluster().await;
    let kc = kube::config::Kubeconfig::read_from(&info.kubeconfig).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    config.auth_info.impersonate = Some("system:serviceaccount:aim-system:aim-operator".into());
    let sa_client = kube::Client::try_from(config).unwrap();

    // The shared in-process operator may reconcile this namespace too; what
    // this test checks is that the impersonated one works without a 403.
    let ns = namespace(&admin, "rbac").await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let args = aim_operator::OperatorArgs {
        admin_address: port,
        namespace: "aim-system".into(),
        no_leader_election: false,
        identity: Some(format!("rbac-test-{}", std::process::id())),
        scaler_address: "aim-scaler.aim-system.svc:4318".into(),
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let operator = tokio::spawn(aim_operator::run_with(sa_client, args, async move {
        let _ = stop_rx.await;
    }));
    // It must win the lease (create + update on leases) and serve /readyz.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let ok = reqwest::get(format!("http://{port}/readyz"))
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false);
        if ok {
            break;
        }
        assert!(
            !operator.is_finished(),
            "the operator stopped: {:?}",
            operator.await
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the impersonated operator never became ready"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    apply_yaml(
        &admin,
        &ns,
        &model_yaml("m", "amdenterpriseai/aim-qwen-qwen3-32b:0.8.5"),
    )
    .await
    .unwrap();
    ready_template(&admin, &ns, "t", "m", "latency", "fp8").await;
    apply_yaml(&admin, &ns, "apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMService\nmetadata: {name: s}\nspec:\n  model: {name: m}\n  template: {name: t}\n").await.unwrap();
    let api: Api<AIMService> = Api::namespaced(admin.clone(), &ns);
    await_phase(&api, "s", ServicePhase::Starting).await;
    // The shared operator may have got there first; wait until the
    // impersonated one has reconciled services too (it lists them all).
    let deadline = std::time::Instant::now() + WAIT;
    let metrics = loop {
        let metrics = reqwest::get(format!("http://{port}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics.contains("aim_operator_reconciles_total{controller=\"service\"}") {
            break metrics;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the impersonated operator reconciled no service:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // Every error kind is exported from the start at 0, so a refusal shows
    // as a forbidden series whose count is above zero.
    let refused: Vec<&str> = metrics
        .lines()
        .filter(|line| line.contains("error=\"forbidden\""))
        .filter(|line| line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) != Some(0.0))
        .collect();
    assert!(
        refused.is_empty(),
        "the chart's RBAC lacks a permission: {refused:?}\n{metrics}"
    );
    let _ = stop_tx.send(());
    let _ = operator.await;
}

/// Every AIMService example of the seed documents deploys: with its model,
/// a discovered template and the `team-config` runtime config present, each
/// reaches Starting with an InferenceService shaped as the example asks.
#[tokio::test]
async fn every_seed_service_example_deploys() {
    operator();
    let client = client().await;
    let dir = aim_testkit::repo_path("examples/seeds");
    let mut examples: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("aim-") && n.ends_with(".yaml") && n != "aim-companions.yaml")
        .collect();
    examples.sort();
    assert!(examples.len() >= 14);
    let mut checks = Vec::new();
    for example in &examples {
        let ns = namespace(&client, "seedsvc").await;
        apply_yaml(
            &client,
            &ns,
            &model_yaml("qwen-qwen3-32b", "amdenterpriseai/aim-qwen-qwen3-32b:0.8.5"),
        )
        .await
        .unwrap();
        ready_template(
            &client,
            &ns,
            "qwen3-32b-latency",
            "qwen-qwen3-32b",
            "latency",
            "fp8",
        )
        .await;
        apply_yaml(
            &client,
            &ns,
            "apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMRuntimeConfig\nmetadata: {name: team-config}\nspec:\n  routing: {enabled: true, gatewayRef: {name: inference-gateway, namespace: gateways}}\n",
        )
        .await
        .unwrap();
        let text = std::fs::read_to_string(dir.join(example)).unwrap();
        apply_yaml(&client, &ns, &text)
            .await
            .unwrap_or_else(|e| panic!("{example}: {e}"));
        checks.push((example.clone(), ns, text));
    }
    for (example, ns, text) in checks {
        let api: Api<AIMService> = Api::namespaced(client.clone(), &ns);
        let svc = await_phase(&api, "qwen-chat", ServicePhase::Starting).await;
        let isvc = the_isvc(&client, &ns, "qwen-chat").await;
        let p = &isvc["spec"]["predictor"];
        let ann = &isvc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"];
        if text.contains("maxReplicas") {
            assert_eq!(ann, "keda", "{example}");
        } else {
            assert_eq!(ann, "none", "{example}");
        }
        if text.contains("replicas: 3") {
            assert_eq!(p["minReplicas"], 3, "{example}");
        }
        if text.contains("maxReplicas: 8") {
            assert_eq!(p["maxReplicas"], 8, "{example}");
        }
        if text.contains("HF_TOKEN") {
            let env = p["containers"][0]["env"].as_array().unwrap();
            assert!(env.iter().any(|e| e["name"] == "HF_TOKEN"), "{example}");
        }
        if text.contains("registry-credentials") {
            assert_eq!(
                p["imagePullSecrets"][0]["name"], "registry-credentials",
                "{example}"
            );
        }
        if text.contains("cpu: \"8\"") {
            assert_eq!(
                p["containers"][0]["resources"]["limits"]["cpu"], "8",
                "{example}"
            );
        }
        let routed = text.contains("routing:") || text.contains("team-config");
        let path = svc
            .status
            .as_ref()
            .and_then(|s| s.routing.as_ref())
            .and_then(|r| r.path.clone());
        assert_eq!(path.is_some(), routed, "{example}: routing path {path:?}");
        if text.contains("/{.metadata.namespace}/chat/{.metadata.name}") {
            assert_eq!(
                path.as_deref(),
                Some(format!("/{ns}/chat/qwen-chat").as_str()),
                "{example}"
            );
        }
        if text.contains("team/{.metadata.labels['team']}/chat") {
            assert_eq!(path.as_deref(), Some("/team/research/chat"), "{example}");
        }
    }
}

/// `model.custom`: the service creates a shared model marked as custom, the
/// model controller gives it a template with the inline sources, and the
/// service asks for a template cache for those sources.
#[tokio::test]
async fn a_custom_model_gets_a_model_a_template_and_a_cache_request() {
    let (client, ns, api) = setup("custom").await;
    apply_yaml(
        &client,
        &ns,
        "apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMService\nmetadata: {name: s}\nspec:\n  model:\n    custom:\n      baseImage: amdenterpriseai/aim-base:0.9\n      modelSources: [{modelId: Qwen/Qwen3-8B, sourceUri: 'hf://Qwen/Qwen3-8B', size: 16Gi}]\n      hardware: {gpu: {requests: 1, model: MI300X}}\n",
    )
    .await
    .unwrap();
    let models: Api<aim_api::AIMModel> = Api::namespaced(client.clone(), &ns);
    let model = loop {
        if let Some(m) = models
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .next()
        {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let labels = model.metadata.labels.clone().unwrap();
    assert_eq!(labels["aim.eai.amd.com/custom-model"], "true");
    assert_eq!(labels["aim.eai.amd.com/service"], "s");
    assert_eq!(model.spec.image, "amdenterpriseai/aim-base:0.9");
    assert_eq!(model.spec.model_sources[0].model_id, "Qwen/Qwen3-8B");

    let templates: Api<aim_api::AIMServiceTemplate> = Api::namespaced(client.clone(), &ns);
    let model_name = model.metadata.name.clone().unwrap();
    let template = loop {
        let list = templates.list(&Default::default()).await.unwrap().items;
        if let Some(t) = list.into_iter().find(|t| t.spec.model_name == model_name) {
            break t;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(
        template.metadata.owner_references.as_ref().unwrap()[0].kind,
        "AIMModel"
    );
    assert_eq!(
        template.spec.model_sources[0].source_uri,
        "hf://Qwen/Qwen3-8B"
    );
    let template = await_object(
        &templates,
        template.metadata.name.as_deref().unwrap(),
        "template Ready",
        WAIT,
        |t: &aim_api::AIMServiceTemplate| {
            t.status.as_ref().and_then(|s| s.status) == Some(aim_api::status::ResourcePhase::Ready)
        },
    )
    .await;
    let st = template.status.clone().unwrap();
    assert_eq!(st.hardware_summary.as_deref(), Some("1 x MI300X"));
    assert!(
        st.resolved_node_affinity.is_some(),
        "MI300X pins the node affinity"
    );

    // The template has sources, so the service waits for a cache it requested.
    let svc = await_object(
        &api,
        "s",
        "a cache being created",
        WAIT,
        |s: &AIMService| {
            condition(s, "CacheReady")
                .is_some_and(|c| c.1 == "CacheCreating" || c.1 == "CacheNotReady")
        },
    )
    .await;
    assert_eq!(
        svc.status.unwrap().resolved_template.and_then(|t| t.name),
        template.metadata.name.clone(),
        "a custom model's unoptimized template is selected without allowUnoptimized"
    );
    let caches: Api<aim_api::AIMTemplateCache> = Api::namespaced(client.clone(), &ns);
    let cache = caches.list(&Default::default()).await.unwrap().items;
    assert_eq!(cache.len(), 1, "one shared cache for the template");
    assert_eq!(
        Some(cache[0].spec.template_name.clone()),
        template.metadata.name
    );
    assert!(
        isvc_api(&client, &ns)
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "no InferenceService before the cache is Ready"
    );
}

/// Recommended deployments become templates owned by the model; one whose
/// GPU the cluster lacks is NotAvailable; deleting the model collects them.
#[tokio::test]
async fn recommended_deployments_become_owned_templates_with_gpu_availability() {
    let (client, ns, _api) = setup("recommended").await;
    apply_yaml(
        &client,
        &ns,
        "apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMModel\nmetadata: {name: qwen}\nspec:\n  image: amdenterpriseai/aim-qwen-qwen3-32b:0.8.5\n  imageMetadata:\n    model:\n      canonicalName: Qwen/Qwen3-32B\n      recommendedDeployments:\n      - {gpuModel: MI300X, gpuCount: 1, precision: fp8, metric: latency}\n      - {gpuModel: MI355X, gpuCount: 1, precision: fp4, metric: throughput}\n",
    )
    .await
    .unwrap();
    let templates: Api<aim_api::AIMServiceTemplate> = Api::namespaced(client.clone(), &ns);
    let deadline = std::time::Instant::now() + WAIT;
    let list = loop {
        let list = templates.list(&Default::default()).await.unwrap().items;
        if list.len() == 2 {
            break list;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "expected two templates, have {}",
            list.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    for t in &list {
        assert_eq!(
            t.metadata.owner_references.as_ref().unwrap()[0].name,
            "qwen"
        );
        assert_eq!(
            t.metadata.labels.as_ref().unwrap()["aim.eai.amd.com/origin"],
            "auto-generated"
        );
    }
    let mi355x = list
        .iter()
        .find(|t| {
            t.spec
                .hardware
                .as_ref()
                .and_then(|h| h.gpu.as_ref())
                .and_then(|g| g.model.as_deref())
                == Some("MI355X")
        })
        .unwrap();
    let name = mi355x.metadata.name.clone().unwrap();
    let t = await_object(
        &templates,
        &name,
        "NotAvailable",
        WAIT,
        |t: &aim_api::AIMServiceTemplate| {
            t.status.as_ref().and_then(|s| s.status)
                == Some(aim_api::status::ResourcePhase::NotAvailable)
        },
    )
    .await;
    let gpu = t
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "GPUReady")
        .unwrap();
    assert_eq!(gpu.reason, "GPUNotAvailable");
    assert!(gpu.message.contains("MI355X"), "{}", gpu.message);

    let models: Api<aim_api::AIMModel> = Api::namespaced(client.clone(), &ns);
    models.delete("qwen", &Default::default()).await.unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while !templates
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .is_empty()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "templates survived their model"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A failure raises one Warning event per transition, not one per reconcile
/// (AIM Engine emits one per reconcile), even when the service is reconciled again and again.
#[tokio::test]
async fn warnings_are_raised_once_per_transition() {
    let (client, ns, api) = setup("events").await;
    apply_yaml(&client, &ns, "apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMService\nmetadata: {name: s}\nspec:\n  model: {name: ghost}\n").await.unwrap();
    await_phase(&api, "s", ServicePhase::Failed).await;
    // Touch the service a few times: each change is a reconcile.
    for i in 0..4 {
        let patch = json!({"metadata": {"annotations": {"example.com/touch": i.to_string()}}});
        api.patch("s", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns);
    let list = events.list(&Default::default()).await.unwrap().items;
    let warnings: Vec<_> = list
        .iter()
        .filter(|e| {
            e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some("ModelNotFound")
        })
        .collect();
    assert_eq!(warnings.len(), 1, "one ModelNotFound warning: {warnings:?}");
    let count = warnings[0].deprecated_count.unwrap_or(1)
        + warnings[0].series.as_ref().map(|s| s.count).unwrap_or(0);
    assert!(count <= 1, "the warning repeated {count} times");
}

/// Waits for an item of a list that matches.
async fn await_object_list<K>(api: &Api<K>, what: &str, matches: impl Fn(&K) -> bool) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(list) = api.list(&Default::default()).await
            && let Some(found) = list.items.into_iter().find(|k| matches(k))
        {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn scaled_object_api(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("keda.sh", "v1alpha1", "ScaledObject"),
        "scaledobjects",
    );
    Api::namespaced_with(client.clone(), ns, &ar)
}

fn annotation(o: &DynamicObject, key: &str) -> Option<String> {
    o.metadata.annotations.as_ref()?.get(key).cloned()
}

/// The cost guard: a runtime config can make autoscaled
/// services start paused; `aim pause`/`aim resume` (the library call behind
/// them) flip KEDA's switch on the live ScaledObject; status says so; a bad
/// annotation value is refused by name and rewrites nothing.
#[tokio::test]
async fn autoscaling_starts_paused_by_config_and_pause_resume_flip_keda() {
    use aim_operator::cost_guard::{CostGuardError, set_paused};
    const KEDA_PAUSED: &str = "autoscaling.keda.sh/paused";
    let (client, ns, api) = setup("costguard").await;
    apply_yaml(
        &client,
        &ns,
        "apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMRuntimeConfig\nmetadata: {name: default}\nspec:\n  autoscaling: {pausedByDefault: true}\n",
    )
    .await
    .unwrap();
    apply_yaml(
        &client,
        &ns,
        &model_yaml("m", "amdenterpriseai/aim-qwen-qwen3-32b:0.8.5"),
    )
    .await
    .unwrap();
    ready_template(&client, &ns, "t", "m", "latency", "fp8").await;
    let scaled = "apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMService\nmetadata: {name: qwen-chat}\nspec:\n  model: {name: m}\n  template: {name: t}\n  minReplicas: 1\n  maxReplicas: 4\n  autoScaling:\n    metrics:\n    - type: PodMetric\n      podmetric:\n        metric: {backend: opentelemetry, metricNames: [\"vllm:num_requests_running\"], query: \"vllm:num_requests_running\", operationOverTime: avg}\n        target: {type: Value, value: \"1\"}\n";
    apply_yaml(&client, &ns, scaled).await.unwrap();

    // Created paused: the InferenceService carries KEDA's switch, so the
    // ScaledObject KServe makes from it starts paused.
    let isvc = the_isvc(&client, &ns, "qwen-chat").await;
    let isvc_name = isvc["metadata"]["name"].as_str().unwrap().to_string();
    assert_eq!(isvc["metadata"]["annotations"][KEDA_PAUSED], "true");
    let svc = await_object(
        &api,
        "qwen-chat",
        "paused status",
        WAIT,
        |s: &AIMService| condition(s, "HPAReady").is_some_and(|c| c.1 == "ScalingPaused"),
    )
    .await;
    let runtime = svc.status.as_ref().unwrap().runtime.clone().unwrap();
    assert_eq!(runtime.paused, Some(true));
    assert_eq!(runtime.replicas.as_deref(), Some("0 (paused)"));
    let message = condition(&svc, "HPAReady").unwrap().2;
    assert!(
        message.contains(&format!("aim resume {ns}/qwen-chat")),
        "{message}"
    );

    // A ScaledObject without the switch (one KServe wrote before the pause)
    // gets it, and status waits for KEDA to confirm.
    let so_name = format!("{isvc_name}-predictor");
    apply_yaml(
        &client,
        &ns,
        &format!(
            "apiVersion: keda.sh/v1alpha1\nkind: ScaledObject\nmetadata: {{name: {so_name}}}\nspec:\n  scaleTargetRef: {{name: {so_name}}}\n  minReplicaCount: 1\n  maxReplicaCount: 4\n  triggers:\n  - type: external\n    metadata: {{scalerAddress: 'keda-otel-scaler.keda.svc:4318', metricQuery: 'sum(vllm:num_requests_running)', targetValue: '1'}}\n"
        ),
    )
    .await
    .unwrap();
    let sos = scaled_object_api(&client, &ns);
    await_object(
        &sos,
        &so_name,
        "the pause switch on the ScaledObject",
        WAIT,
        |o| annotation(o, KEDA_PAUSED).as_deref() == Some("true"),
    )
    .await;
    await_object(
        &api,
        "qwen-chat",
        "PausingScaling",
        WAIT,
        |s: &AIMService| condition(s, "HPAReady").is_some_and(|c| c.1 == "PausingScaling"),
    )
    .await;
    // Play KEDA: it confirms the pause in the ScaledObject's status.
    sos.patch_status(
        &so_name,
        &PatchParams::apply("aim-test-keda").force(),
        &Patch::Apply(&json!({
            "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
            "status": {"conditions": [{"type": "Paused", "status": "True", "reason": "ScaledObjectPaused", "message": "ScaledObject is paused"}]}
        })),
    )
    .await
    .unwrap();
    await_object(
        &api,
        "qwen-chat",
        "ScalingPaused",
        WAIT,
        |s: &AIMService| condition(s, "HPAReady").is_some_and(|c| c.1 == "ScalingPaused"),
    )
    .await;

    // Resume: the switch leaves the ScaledObject and the InferenceService;
    // the service waits for KEDA's HPA again.
    let flip = set_paused(&client, &ns, "qwen-chat", false).await.unwrap();
    assert_eq!(flip.before, None, "the config default applied before");
    await_object(&sos, &so_name, "switch removed", WAIT, |o| {
        annotation(o, KEDA_PAUSED).is_none()
    })
    .await;
    await_object(
        &isvc_api(&client, &ns),
        &isvc_name,
        "isvc switch removed",
        WAIT,
        |o| annotation(o, KEDA_PAUSED).is_none(),
    )
    .await;
    let svc = await_object(
        &api,
        "qwen-chat",
        "resumed status",
        WAIT,
        |s: &AIMService| condition(s, "HPAReady").is_some_and(|c| c.1 == "HPANotFound"),
    )
    .await;
    assert_eq!(svc.status.unwrap().runtime.unwrap().paused, None);

    // Pause again, live.
    let flip = set_paused(&client, &ns, "qwen-chat", true).await.unwrap();
    assert_eq!(flip.before.as_deref(), Some("false"));
    await_object(&sos, &so_name, "paused again", WAIT, |o| {
        annotation(o, KEDA_PAUSED).as_deref() == Some("true")
    })
    .await;

    // A value that is neither true nor false: the service fails naming the
    // annotation, and neither child is rewritten.
    api.patch(
        "qwen-chat",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"metadata": {"annotations": {"aim.eai.amd.com/autoscaling-paused": "yes"}}}),
        ),
    )
    .await
    .unwrap();
    let svc = await_object(
        &api,
        "qwen-chat",
        "InvalidAnnotation",
        WAIT,
        |s: &AIMService| condition(s, "HPAReady").is_some_and(|c| c.1 == "InvalidAnnotation"),
    )
    .await;
    assert_eq!(
        svc.status.as_ref().unwrap().status,
        Some(ServicePhase::Failed)
    );
    let message = condition(&svc, "HPAReady").unwrap().2;
    assert!(
        message.contains("aim.eai.amd.com/autoscaling-paused"),
        "{message}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let so = sos.get(&so_name).await.unwrap();
    assert_eq!(annotation(&so, KEDA_PAUSED).as_deref(), Some("true"));
    let isvc = isvc_api(&client, &ns).get(&isvc_name).await.unwrap();
    assert_eq!(annotation(&isvc, KEDA_PAUSED).as_deref(), Some("true"));

    // The CLI's refusals: a missing service and one with fixed replicas.
    match set_paused(&client, &ns, "nope", true).await {
        Err(CostGuardError::NotFound { name, .. }) => assert_eq!(name, "nope"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    apply_yaml(
        &client,
        &ns,
        "apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMService\nmetadata: {name: fixed}\nspec:\n  model: {name: m}\n  template: {name: t}\n  replicas: 2\n",
    )
    .await
    .unwrap();
    let err = set_paused(&client, &ns, "fixed", true).await.unwrap_err();
    assert!(matches!(err, CostGuardError::NotAutoscaled { .. }), "{err}");
    assert!(err.to_string().contains("fixed replicas"), "{err}");
    aim_testkit::delete_namespace(&client, &ns).await;
}

/// A scaling policy parameter the policy does not have: the service says
/// so in `ScalingReady`, naming the field, and nothing is deployed. Fixed,
/// the InferenceService appears with `autoscalerClass: external` and the
/// operator's own ScaledObject carries the policy.
#[tokio::test]
async fn a_bad_policy_parameter_is_a_condition_naming_the_field_and_deploys_nothing() {
    let (client, ns, api) = setup("badpolicy").await;
    apply_yaml(
        &client,
        &ns,
        &model_yaml("m", "amdenterpriseai/aim-qwen-qwen3-32b:0.8.5"),
    )
    .await
    .unwrap();
    ready_template(&client, &ns, "t", "m", "latency", "fp8").await;
    let service = |params: &str| {
        format!(
            "apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMService\nmetadata: {{name: s}}\nspec:\n  model: {{name: m}}\n  template: {{name: t}}\n  minReplicas: 1\n  maxReplicas: 4\n  autoScaling:\n    policy: {{name: queue, params: {{{params}}}}}\n"
        )
    };
    apply_yaml(&client, &ns, &service("headrom: \"0.3\""))
        .await
        .unwrap();
    let svc = await_object(&api, "s", "ScalingReady=False", WAIT, |s: &AIMService| {
        condition(s, "ScalingReady").is_some_and(|c| c.0 == "False")
    })
    .await;
    let (_, reason, message) = condition(&svc, "ScalingReady").unwrap();
    assert_eq!(reason, "InvalidScaling");
    assert!(
        message.contains("spec.autoScaling.policy.params.headrom") && message.contains("headroom"),
        "{message}"
    );
    // A moment for anything the operator might (wrongly) write.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let isvcs = isvc_api(&client, &ns)
        .list(&Default::default())
        .await
        .unwrap();
    assert!(
        isvcs.items.is_empty(),
        "nothing is deployed from a bad spec"
    );

    apply_yaml(&client, &ns, &service("headroom: \"0.3\""))
        .await
        .unwrap();
    let isvc = the_isvc(&client, &ns, "s").await;
    assert_eq!(
        isvc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"],
        "external"
    );
    let gvk = GroupVersionKind::gvk("keda.sh", "v1alpha1", "ScaledObject");
    let scaled_objects: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns,
        &ApiResource::from_gvk_with_plural(&gvk, "scaledobjects"),
    );
    let name = format!("{}-predictor", isvc["metadata"]["name"].as_str().unwrap());
    let so = await_object(
        &scaled_objects,
        &name,
        "the operator's ScaledObject",
        WAIT,
        |_| true,
    )
    .await;
    let meta = &so.data["spec"]["triggers"][0]["metadata"];
    assert_eq!(meta["policy"], "queue");
    assert_eq!(meta["headroom"], "0.3");
    // The condition goes away once the field is fixed.
    await_object(&api, "s", "no ScalingReady", WAIT, |s: &AIMService| {
        condition(s, "ScalingReady").is_none()
    })
    .await;
    // KServe's cluster-wide window is the default of the direction the
    // service leaves out: a change to KServe's config reaches the object.
    apply_yaml(
        &client,
        "kserve",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: kserve}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: inferenceservice-config, namespace: kserve}\ndata:\n  autoscaler: '{\"scaleUpStabilizationWindowSeconds\": \"0\", \"scaleDownStabilizationWindowSeconds\": \"42\"}'\n",
    )
    .await
    .unwrap();
    await_object(&scaled_objects, &name, "KServe's 42 s window", WAIT, |so| {
        so.data["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
            ["stabilizationWindowSeconds"]
            == 42
    })
    .await;
    let maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), "kserve");
    let _ = maps
        .delete("inferenceservice-config", &Default::default())
        .await;
}
