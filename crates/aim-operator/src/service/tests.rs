//! Tier 0: the planner and the renderers on plain data.

use aim_api::AIMService;
use aim_api::common::Scope;
use aim_api::status::ResourcePhase;
use aim_api::template::{AIMServiceTemplateSpec, AIMServiceTemplateStatus};

use super::plan::{ConfigLookup, ModelLookup, Observed, TemplateLookup, plan};
use super::render;
use super::view::{ModelView, TemplateView};
use crate::state::ComponentState;

fn service(yaml: &str) -> AIMService {
    let mut svc: AIMService = serde_yaml::from_str(yaml).unwrap();
    svc.metadata.namespace = Some("ml-team".into());
    svc.metadata.uid = Some("uid-1".into());
    svc.metadata.generation = Some(1);
    svc
}

fn ready_model() -> ModelView {
    ModelView {
        scope: Scope::Namespace,
        name: "m".into(),
        namespace: Some("ml-team".into()),
        uid: Some("m-uid".into()),
        spec: aim_api::model::AIMModelSpec {
            image: "repo/img:1".into(),
            ..Default::default()
        },
        phase: Some(ResourcePhase::Ready),
    }
}

fn ready_template(name: &str, gpus: i32) -> TemplateView {
    let spec: AIMServiceTemplateSpec = serde_json::from_value(serde_json::json!({
        "modelName": "m", "metric": "latency", "precision": "fp8",
        "hardware": {"gpu": {"requests": gpus, "model": "MI300X"}}
    }))
    .unwrap();
    let status: AIMServiceTemplateStatus = serde_json::from_value(serde_json::json!({
        "status": "Ready",
        "profile": {"metadata": {"gpu": "MI300X", "gpuCount": gpus, "metric": "latency", "precision": "fp8", "type": "optimized"}},
        "resolvedHardware": {"gpu": {"requests": gpus, "model": "MI300X"}}
    }))
    .unwrap();
    TemplateView {
        scope: Scope::Namespace,
        name: name.into(),
        namespace: Some("ml-team".into()),
        uid: Some("t-uid".into()),
        labels: Default::default(),
        spec,
        status: Some(status),
    }
}

fn observed<'a>(svc: &'a AIMService, template: Option<TemplateView>) -> Observed<'a> {
    Observed {
        prometheus: Vec::new(),
        service: svc,
        config: ConfigLookup::NoDefault,
        model: ModelLookup::ByName {
            name: "m".into(),
            found: Some(Box::new(ready_model())),
        },
        templates: TemplateLookup {
            explicit_base: template,
            ..Default::default()
        },
        cluster_gpu_models: ["MI300X".to_string()].into(),
        isvc: None,
        isvc_events: vec![],
        pods: vec![],
        pod_events: vec![],
        hpa: None,
        scaled_object: None,
        route: None,
        cache: None,
        kserve: aim_scaling::KServeAutoscaler {
            default_scaler_address: "scaler:4318".into(),
            ..Default::default()
        },
        now: k8s_openapi::jiff::Timestamp::now(),
    }
}

const BASE: &str = "apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMService\nmetadata: {name: qwen-chat}\nspec:\n  model: {name: m}\n  template: {name: t}\n";

#[test]
fn a_ready_model_and_template_render_the_inference_service() {
    let svc = service(&format!("{BASE}  replicas: 2\n"));
    let p = plan(&observed(&svc, Some(ready_template("t", 2))));
    let isvc = p
        .owned
        .iter()
        .find(|o| o["kind"] == "InferenceService")
        .expect("an InferenceService");
    assert_eq!(
        isvc["metadata"]["name"], "qwen-chat-a04542d9",
        "AIM Engine's derived name"
    );
    let c = &isvc["spec"]["predictor"]["containers"][0];
    assert_eq!(c["resources"]["requests"]["cpu"], "8");
    assert_eq!(c["resources"]["requests"]["memory"], "64Gi");
    assert_eq!(c["resources"]["limits"]["memory"], "96Gi");
    assert_eq!(isvc["spec"]["predictor"]["minReplicas"], 2);
    let cache = p.healths.iter().find(|h| h.component == "Cache").unwrap();
    assert_eq!(cache.reason, "NoCacheRequired");
}

#[test]
fn service_resources_override_the_per_gpu_defaults_per_key() {
    let svc = service(&format!(
        "{BASE}  resources:\n    limits: {{cpu: \"6\", memory: 48Gi}}\n"
    ));
    let p = plan(&observed(&svc, Some(ready_template("t", 1))));
    let isvc = p
        .owned
        .iter()
        .find(|o| o["kind"] == "InferenceService")
        .unwrap();
    let r = &isvc["spec"]["predictor"]["containers"][0]["resources"];
    assert_eq!(r["limits"]["cpu"], "6");
    assert_eq!(r["limits"]["memory"], "48Gi");
    assert_eq!(
        r["limits"]["amd.com/gpu"], "1",
        "keys the service does not name keep their defaults"
    );
}

#[test]
fn nothing_renders_while_the_template_is_not_ready() {
    let svc = service(BASE);
    let mut t = ready_template("t", 1);
    t.status.as_mut().unwrap().status = Some(ResourcePhase::Progressing);
    let p = plan(&observed(&svc, Some(t)));
    assert!(p.owned.iter().all(|o| o["kind"] != "InferenceService"));
    let h = p
        .healths
        .iter()
        .find(|h| h.component == "Template")
        .unwrap();
    assert_eq!(
        (h.state, h.reason.as_str()),
        (ComponentState::Progressing, "TemplateNotReady")
    );
}

#[test]
fn explicit_template_with_overrides_derives_one_from_the_base() {
    let svc = service(&format!("{BASE}  overrides: {{precision: fp16}}\n"));
    let p = plan(&observed(&svc, Some(ready_template("t", 1))));
    let derived = p
        .owned
        .iter()
        .find(|o| o["kind"] == "AIMServiceTemplate")
        .expect("a derived template from an explicit template with overrides");
    assert_eq!(derived["spec"]["precision"], "fp16");
    assert_eq!(
        derived["metadata"]["labels"]["aim.eai.amd.com/origin"],
        "derived"
    );
    assert!(p.owned.iter().all(|o| o["kind"] != "InferenceService"));
}

#[test]
fn replicas_follow_the_documented_table() {
    let fixed = service(&format!("{BASE}  replicas: 3\n"));
    assert_eq!(
        render::replicas(&fixed),
        render::Replicas {
            min: 3,
            max: 3,
            autoscaling: false
        }
    );
    let min_only = service(&format!("{BASE}  minReplicas: 2\n"));
    assert_eq!(
        render::replicas(&min_only),
        render::Replicas {
            min: 2,
            max: 2,
            autoscaling: true
        }
    );
    let both = service(&format!("{BASE}  minReplicas: 1\n  maxReplicas: 5\n"));
    assert_eq!(
        render::replicas(&both),
        render::Replicas {
            min: 1,
            max: 5,
            autoscaling: true
        }
    );
    let metrics_only = service(&format!("{BASE}  autoScaling: {{metrics: []}}\n"));
    assert_eq!(
        render::replicas(&metrics_only),
        render::Replicas {
            min: 1,
            max: 1,
            autoscaling: true
        }
    );
}

#[test]
fn route_health_reads_each_parents_conditions() {
    use super::health::route_health;
    let route = |conds: serde_json::Value| serde_json::json!({"status": {"parents": [{"conditions": conds}]}});
    let accepted =
        route(serde_json::json!([{"type": "Accepted", "status": "True", "reason": "Accepted"}]));
    assert_eq!(route_health(Some(&accepted)).reason, "HTTPRouteAccepted");
    let rejected = route(
        serde_json::json!([{"type": "Accepted", "status": "False", "reason": "NotAllowedByListeners", "message": "no listener"}]),
    );
    let h = route_health(Some(&rejected));
    assert_eq!(
        (h.state, h.reason.as_str()),
        (ComponentState::Failed, "NotAllowedByListeners")
    );
    assert!(h.message.contains("no listener"));
    let unresolved = route(
        serde_json::json!([{"type": "ResolvedRefs", "status": "False", "reason": "BackendNotFound"}]),
    );
    assert_eq!(route_health(Some(&unresolved)).reason, "BackendNotFound");
    assert_eq!(
        route_health(Some(&serde_json::json!({}))).reason,
        "HTTPRoutePending"
    );
    assert_eq!(route_health(None).reason, "HTTPRouteCreating");
}

fn template_with_sources() -> TemplateView {
    let mut t = ready_template("t", 1);
    t.status.as_mut().unwrap().model_sources = vec![
        serde_json::from_value(serde_json::json!({"modelId": "a/b", "sourceUri": "hf://a/b"}))
            .unwrap(),
    ];
    t
}

fn failed_cache(failed_artifacts: Vec<String>) -> super::plan::CacheView {
    super::plan::CacheView {
        name: "t-cache".into(),
        uid: Some("c-uid".into()),
        phase: Some(ResourcePhase::Failed),
        message: "download failed".into(),
        volumes: vec![],
        failed_artifacts,
    }
}

#[test]
fn a_failed_shared_cache_is_retried_through_its_artifacts_never_deleted() {
    let svc = service(
        "apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMService\nmetadata: {name: s}\nspec: {model: {name: m}, template: {name: t}}\n",
    );
    let mut obs = observed(&svc, Some(template_with_sources()));
    obs.cache = Some(failed_cache(vec!["art-1".into()]));
    let p = plan(&obs);
    let kinds: Vec<&str> = p.delete.iter().map(|(_, k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["AIMArtifact"], "{:?}", p.delete);
    assert_eq!(p.delete[0].2, "art-1");
    assert_eq!(p.cache.unwrap().retry_attempts, Some(1));
    // Failed for another reason: a shared cache is left alone, and says so.
    obs.cache = Some(failed_cache(vec![]));
    let p = plan(&obs);
    assert!(p.delete.is_empty(), "{:?}", p.delete);
    let h = p.healths.iter().find(|h| h.component == "Cache").unwrap();
    assert_eq!(
        (h.state, h.reason.as_str()),
        (ComponentState::Degraded, "CacheFailed")
    );
}

#[test]
fn a_failed_dedicated_cache_without_failed_artifacts_is_recreated_once() {
    let mut svc = service(
        "apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMService\nmetadata: {name: s}\nspec: {model: {name: m}, template: {name: t}, caching: {mode: Dedicated}}\n",
    );
    let mut obs = observed(&svc, Some(template_with_sources()));
    obs.cache = Some(failed_cache(vec![]));
    let p = plan(&obs);
    assert_eq!(p.delete[0].1, "AIMTemplateCache");
    // The retry is spent: Degraded, nothing deleted.
    svc.status =
        Some(serde_json::from_value(serde_json::json!({"cache": {"retryAttempts": 1}})).unwrap());
    let mut obs = observed(&svc, Some(template_with_sources()));
    obs.cache = Some(failed_cache(vec!["art-1".into()]));
    let p = plan(&obs);
    assert!(p.delete.is_empty(), "{:?}", p.delete);
    let h = p.healths.iter().find(|h| h.component == "Cache").unwrap();
    assert!(h.message.contains("after 1 retry"), "{}", h.message);
}

#[test]
fn a_degraded_cache_degrades_the_service_with_its_message() {
    let svc = service(
        "apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMService\nmetadata: {name: s}\nspec: {model: {name: m}, template: {name: t}}\n",
    );
    let mut obs = observed(&svc, Some(template_with_sources()));
    let mut cache = failed_cache(vec![]);
    cache.phase = Some(ResourcePhase::Degraded);
    cache.message = "No download progress for 130 s".into();
    obs.cache = Some(cache);
    let p = plan(&obs);
    let h = p.healths.iter().find(|h| h.component == "Cache").unwrap();
    assert_eq!(
        (h.state, h.reason.as_str()),
        (ComponentState::Degraded, "CacheDegraded")
    );
    assert!(h.message.contains("No download progress"), "{}", h.message);
    assert!(p.delete.is_empty());
}

fn rendered_isvc(svc: &AIMService) -> serde_json::Value {
    let p = plan(&observed(svc, Some(ready_template("t", 1))));
    p.owned
        .into_iter()
        .find(|o| o["kind"] == "InferenceService")
        .expect("an InferenceService")
}

#[test]
fn bounds_without_metrics_scale_on_running_requests() {
    let svc = service(&format!("{BASE}  minReplicas: 1\n  maxReplicas: 4\n"));
    let isvc = rendered_isvc(&svc);
    let metric = &isvc["spec"]["predictor"]["autoScaling"]["metrics"][0]["podmetric"];
    assert_eq!(metric["metric"]["query"], "vllm:num_requests_running");
    assert_eq!(metric["metric"]["operationOverTime"], "avg");
    assert_eq!(metric["metric"]["serverAddress"], "scaler:4318");
    assert_eq!(metric["target"]["value"], "1");
    // Given metrics are used as they are.
    let own = service(&format!(
        "{BASE}  maxReplicas: 4\n  autoScaling:\n    metrics:\n    - type: PodMetric\n      podmetric:\n        metric: {{backend: opentelemetry, query: \"vllm:num_requests_waiting\"}}\n        target: {{type: Value, value: \"5\"}}\n"
    ));
    let isvc = rendered_isvc(&own);
    let metrics = isvc["spec"]["predictor"]["autoScaling"]["metrics"]
        .as_array()
        .unwrap();
    assert_eq!(metrics.len(), 1);
    assert_eq!(
        metrics[0]["podmetric"]["metric"]["query"],
        "vllm:num_requests_waiting"
    );
    assert_eq!(metrics[0]["podmetric"]["target"]["value"], "5");
    // An AverageValue target reaches KServe through `value`, the one field
    // it reads, and keeps its averageValue.
    let average = service(&format!(
        "{BASE}  maxReplicas: 4\n  autoScaling:\n    metrics:\n    - type: PodMetric\n      podmetric:\n        metric: {{backend: opentelemetry, query: \"vllm:num_requests_waiting\"}}\n        target: {{type: AverageValue, averageValue: \"3\"}}\n"
    ));
    let isvc = rendered_isvc(&average);
    let target = &isvc["spec"]["predictor"]["autoScaling"]["metrics"][0]["podmetric"]["target"];
    assert_eq!(
        (&target["type"], &target["value"], &target["averageValue"]),
        (
            &serde_json::json!("AverageValue"),
            &serde_json::json!("3"),
            &serde_json::json!("3")
        )
    );
}

#[test]
fn a_paused_service_carries_kedas_switch_on_the_inference_service() {
    let mut svc = service(&format!("{BASE}  minReplicas: 1\n  maxReplicas: 4\n"));
    assert!(
        rendered_isvc(&svc)["metadata"]["annotations"]
            .get("autoscaling.keda.sh/paused")
            .is_none()
    );
    svc.metadata.annotations = Some(
        [(
            "aim.eai.amd.com/autoscaling-paused".to_string(),
            "true".to_string(),
        )]
        .into(),
    );
    let isvc = rendered_isvc(&svc);
    assert_eq!(
        isvc["metadata"]["annotations"]["autoscaling.keda.sh/paused"],
        "true"
    );
    // Fixed replicas have no ScaledObject: nothing to pause.
    let mut fixed = service(&format!("{BASE}  replicas: 2\n"));
    fixed.metadata.annotations = svc.metadata.annotations.clone();
    assert!(
        rendered_isvc(&fixed)["metadata"]["annotations"]
            .get("autoscaling.keda.sh/paused")
            .is_none()
    );
}

#[test]
fn only_pod_metrics_ask_for_the_opentelemetry_sidecar() {
    let pod_metric = rendered_isvc(&service(&format!(
        "{BASE}  minReplicas: 1\n  maxReplicas: 4\n"
    )));
    assert!(
        pod_metric["metadata"]["annotations"]
            .get("sidecar.opentelemetry.io/inject")
            .is_some()
    );
    let prometheus = rendered_isvc(&service(&format!(
        "{BASE}  minReplicas: 1\n  maxReplicas: 4\n  autoScaling:\n    metrics:\n    - type: External\n      external:\n        metric: {{backend: prometheus, serverAddress: 'http://prometheus-operated.monitoring.svc:9090', query: 'sum(vllm:num_requests_running)'}}\n        target: {{type: Value, value: '2'}}\n"
    )));
    let annotations = &prometheus["metadata"]["annotations"];
    assert_eq!(annotations["serving.kserve.io/autoscalerClass"], "keda");
    assert!(
        annotations.get("sidecar.opentelemetry.io/inject").is_none(),
        "{annotations}"
    );
}

#[test]
fn an_unreadable_pause_switch_is_the_hpa_components_failure() {
    let mut svc = service(&format!("{BASE}  minReplicas: 1\n  maxReplicas: 4\n"));
    svc.metadata.annotations = Some(
        [(
            "aim.eai.amd.com/autoscaling-paused".to_string(),
            "yes".to_string(),
        )]
        .into(),
    );
    let p = plan(&observed(&svc, Some(ready_template("t", 1))));
    let hpa: Vec<_> = p.healths.iter().filter(|h| h.component == "HPA").collect();
    assert_eq!(hpa.len(), 1, "one health per component: {hpa:?}");
    assert_eq!(hpa[0].reason, "InvalidAnnotation");
    assert_eq!(hpa[0].state, ComponentState::Failed);
}

const POLICY: &str = "  minReplicas: 1\n  maxReplicas: 4\n  autoScaling:\n    policy: {name: predictive, params: {season: 1d}}\n";

fn kind<'a>(p: &'a super::plan::Plan, kind: &str) -> Option<&'a serde_json::Value> {
    p.owned.iter().find(|o| o["kind"] == kind)
}

#[test]
fn a_policy_is_deployed_as_the_operators_own_scaled_object() {
    let svc = service(&format!("{BASE}{POLICY}"));
    let p = plan(&observed(&svc, Some(ready_template("t", 1))));
    let isvc = kind(&p, "InferenceService").expect("an InferenceService");
    assert_eq!(
        isvc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"],
        "external"
    );
    // KServe's sidecar still follows the metrics on the InferenceService.
    assert_eq!(
        isvc["spec"]["predictor"]["autoScaling"]["metrics"][0]["podmetric"]["metric"]["metricNames"]
            [0],
        "vllm:num_requests_running"
    );
    assert!(
        isvc["spec"]["predictor"]["autoScaling"]
            .get("policy")
            .is_none()
    );
    let so = kind(&p, "ScaledObject").expect("the operator's ScaledObject");
    let predictor = format!("{}-predictor", isvc["metadata"]["name"].as_str().unwrap());
    assert_eq!(so["metadata"]["name"], predictor.as_str());
    assert_eq!(so["spec"]["scaleTargetRef"]["name"], predictor.as_str());
    let meta = &so["spec"]["triggers"][0]["metadata"];
    assert_eq!(meta["policy"], "predictive");
    assert_eq!(meta["season"], "1d");
    assert_eq!(meta["scalerAddress"], "scaler:4318");
    // The service's propagated labels, not KServe's, mark it.
    assert!(so["metadata"].get("ownerReferences").is_none());
    // Without the extension, KServe builds it: nothing for the operator.
    let plain = service(&format!("{BASE}  minReplicas: 1\n  maxReplicas: 4\n"));
    let p = plan(&observed(&plain, Some(ready_template("t", 1))));
    assert!(kind(&p, "ScaledObject").is_none());
    assert_eq!(
        kind(&p, "InferenceService").unwrap()["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"],
        "keda"
    );
}

#[test]
fn a_bad_policy_parameter_is_a_condition_and_nothing_is_written() {
    let svc = service(&format!(
        "{BASE}  minReplicas: 1\n  maxReplicas: 4\n  autoScaling:\n    policy: {{name: queue, params: {{headrom: \"0.3\"}}}}\n"
    ));
    let p = plan(&observed(&svc, Some(ready_template("t", 1))));
    assert!(kind(&p, "InferenceService").is_none());
    assert!(kind(&p, "ScaledObject").is_none());
    let h = p
        .healths
        .iter()
        .find(|h| h.component == "Scaling")
        .expect("a Scaling health");
    assert_eq!(h.state, ComponentState::Failed);
    assert_eq!(h.reason, "InvalidScaling");
    assert!(
        h.message.contains("spec.autoScaling.policy.params.headrom"),
        "{}",
        h.message
    );
    assert!(h.message.contains("headroom"), "{}", h.message);
}

fn live_scaled_object(controller: &str) -> serde_json::Value {
    serde_json::json!({"metadata": {"name": "x-predictor", "ownerReferences": [
        {"apiVersion": "v1", "kind": controller, "name": "x", "uid": "u", "controller": true}]}})
}

fn isvc_with_class(class: &str) -> serde_json::Value {
    serde_json::json!({"metadata": {"annotations": {"serving.kserve.io/autoscalerClass": class}}})
}

#[test]
fn the_scaled_object_changes_hands_without_kserve_rebuilding_the_operators() {
    use super::scaling::handover;
    let translate = |yaml: &str| {
        let svc = service(yaml);
        aim_scaling::plan(&aim_scaling::ServiceScaling {
            spec: &svc.spec,
            namespace: "ns",
            isvc_name: "x",
            paused: false,
            kserve: &aim_scaling::KServeAutoscaler::default(),
            routed: false,
        })
        .unwrap()
    };
    let with_policy = translate(&format!("{BASE}{POLICY}"));
    let plain = translate(&format!("{BASE}  minReplicas: 1\n  maxReplicas: 4\n"));
    let fixed = translate(&format!("{BASE}  replicas: 2\n"));
    let kserves = live_scaled_object("InferenceService");
    let ours = live_scaled_object("AIMService");

    // To the operator: class first, then KServe's object goes, then ours.
    let h = handover(&with_policy, Some(&isvc_with_class("keda")), Some(&kserves));
    assert_eq!(
        (h.autoscaler_class, h.apply.is_none(), h.delete.clone()),
        ("external", true, None)
    );
    let h = handover(
        &with_policy,
        Some(&isvc_with_class("external")),
        Some(&kserves),
    );
    assert_eq!(h.delete.as_deref(), Some("x-predictor"));
    assert!(h.apply.is_none());
    let h = handover(&with_policy, Some(&isvc_with_class("external")), None);
    assert!(h.apply.is_some() && h.delete.is_none());
    let h = handover(
        &with_policy,
        Some(&isvc_with_class("external")),
        Some(&ours),
    );
    assert!(h.apply.is_some() && h.delete.is_none());

    // Back to KServe: ours goes while the class stays external.
    let h = handover(&plain, Some(&isvc_with_class("external")), Some(&ours));
    assert_eq!(
        (h.autoscaler_class, h.delete.as_deref()),
        ("external", Some("x-predictor"))
    );
    let h = handover(&plain, Some(&isvc_with_class("external")), None);
    assert_eq!(
        (h.autoscaler_class, h.delete.clone(), h.apply.is_none()),
        ("keda", None, true)
    );
    // KServe's own object is never touched on KServe's route.
    let h = handover(&plain, Some(&isvc_with_class("keda")), Some(&kserves));
    assert_eq!((h.autoscaler_class, h.delete.clone()), ("keda", None));

    // Fixed replicas: only an object of ours is removed.
    assert_eq!(
        handover(&fixed, None, Some(&ours)).delete.as_deref(),
        Some("x-predictor")
    );
    assert_eq!(handover(&fixed, None, Some(&kserves)).delete, None);
    assert_eq!(handover(&fixed, None, None).autoscaler_class, "none");
}

#[test]
fn a_metricless_hpa_is_reported_and_deleted_once_it_had_time() {
    let svc = service(&format!("{BASE}  minReplicas: 1\n  maxReplicas: 4\n"));
    let now = k8s_openapi::jiff::Timestamp::now();
    let hpa_born = |age_s: i64| -> k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler {
        let born = now - k8s_openapi::jiff::SignedDuration::from_secs(age_s);
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "keda-hpa-qwen-chat-a04542d9-predictor",
                         "creationTimestamp": born.to_string()},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "x"}, "maxReplicas": 4,
                     "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                         "target": {"type": "Utilization", "averageUtilization": 80}}}]}
        }))
        .unwrap()
    };
    let so = serde_json::json!({"spec": {"triggers": [
        {"type": "external", "metadata": {"scalerAddress": "scaler:4318"}}]}});
    let planned = |age_s: i64| {
        let mut obs = observed(&svc, Some(ready_template("t", 1)));
        obs.now = now;
        obs.hpa = Some(hpa_born(age_s));
        obs.scaled_object = Some(so.clone());
        plan(&obs)
    };
    let deletes_hpa = |p: &super::plan::Plan| {
        p.delete.iter().any(|(_, kind, name)| {
            kind == "HorizontalPodAutoscaler" && name.starts_with("keda-hpa-")
        })
    };
    // Just rebuilt: reported, left to KEDA.
    let fresh = planned(5);
    let hpa: Vec<_> = fresh
        .healths
        .iter()
        .filter(|h| h.component == "HPA")
        .collect();
    assert_eq!(hpa.len(), 1, "{hpa:?}");
    assert_eq!(hpa[0].reason, "HPAWithoutMetrics");
    assert_eq!(hpa[0].state, ComponentState::Degraded);
    assert!(hpa[0].message.contains("80 % CPU"), "{}", hpa[0].message);
    assert!(!deletes_hpa(&fresh));
    // Had its time: deleted so that KEDA rebuilds it.
    let old = planned(60);
    assert!(deletes_hpa(&old), "{:?}", old.delete);
    assert!(
        old.healths
            .iter()
            .any(|h| h.reason == "HPAWithoutMetrics" && h.message.contains("deleting it now"))
    );
    // With the scaler's metric, nothing of the sort.
    let mut obs = observed(&svc, Some(ready_template("t", 1)));
    let mut whole = hpa_born(60);
    whole.spec.as_mut().unwrap().metrics = Some(vec![
        serde_json::from_value(serde_json::json!(
        {"type": "External", "external": {"metric": {"name": "s0-x"},
            "target": {"type": "AverageValue", "averageValue": "1"}}}))
        .unwrap(),
    ]);
    obs.hpa = Some(whole);
    obs.scaled_object = Some(so.clone());
    let fine = plan(&obs);
    assert!(!deletes_hpa(&fine));
    assert!(!fine.healths.iter().any(|h| h.reason == "HPAWithoutMetrics"));
}

#[test]
fn scale_from_zero_needs_routing_from_the_service_or_its_runtime_config() {
    // Without routing: nothing deployed, the field named.
    let bare = service(&format!("{BASE}  minReplicas: 0\n  maxReplicas: 2\n"));
    let p = plan(&observed(&bare, Some(ready_template("t", 1))));
    let scaling: Vec<_> = p
        .healths
        .iter()
        .filter(|h| h.component == "Scaling")
        .collect();
    assert_eq!(scaling.len(), 1, "{:?}", p.healths);
    assert_eq!(scaling[0].reason, "InvalidScaling");
    assert!(
        scaling[0].message.starts_with("spec.minReplicas:"),
        "{}",
        scaling[0].message
    );
    assert!(kind(&p, "InferenceService").is_none());
    // Routed through a Gateway: the InferenceService starts at 0 under the
    // operator's ScaledObject, with the wake trigger.
    let routed = service(&format!(
        "{BASE}  minReplicas: 0\n  maxReplicas: 2\n  routing:\n    enabled: true\n    gatewayRef: {{name: gw, namespace: gateways}}\n"
    ));
    let p = plan(&observed(&routed, Some(ready_template("t", 1))));
    assert!(
        !p.healths.iter().any(|h| h.reason == "InvalidScaling"),
        "{:?}",
        p.healths
    );
    let isvc = kind(&p, "InferenceService").expect("an InferenceService");
    assert_eq!(isvc["spec"]["predictor"]["minReplicas"], 0);
    assert_eq!(
        isvc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"],
        "external"
    );
    let so = kind(&p, "ScaledObject").expect("the operator's ScaledObject");
    assert_eq!(so["spec"]["minReplicaCount"], 0);
    assert_eq!(so["spec"]["triggers"][1]["type"], "external-push");
}
