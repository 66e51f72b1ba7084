//! Tier 3: the whole autoscaling loop, every part real.
//!
//! The operator (in-process, as the Helm chart's ServiceAccount) turns the
//! seed's autoscaling AIMService into an InferenceService; KServe's real
//! controller makes the Deployment, the ScaledObject and the
//! OpenTelemetryCollector; the pod runner gives each KWOK pod an `aim sim`
//! process and plays its OTel sidecar into an in-process `aim scaler`;
//! real KEDA and the real HPA controller scale the Deployment 1 → N under
//! load and back to 1 after it. The service's status and events follow.
//!
//! Bed settings that make it take seconds rather than minutes (all said
//! where they are set): the HPA controller syncs every 5 s, KServe's
//! scale-down stabilisation is 10 s (bed config map), and the scaler's
//! `operationOverTime` window is 10 s (upstream 120 s).
//!
//! ```sh
//! cargo test -p aim --test tier3_autoscaling -- --nocapture
//! ```

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aim_api::AIMService;
use aim_scaler::proto::externalscaler::external_scaler_client::ExternalScalerClient;
use aim_scaler::proto::externalscaler::{GetMetricsRequest, ScaledObjectRef};
use aim_testkit::{apply_yaml, await_object, cluster_with_kserve, namespace};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, ResourceExt};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(180);
const SERVICE: &str = "qwen-chat";
/// Requests kept in flight by the load: with the default metric (running
/// requests, target 1 per replica) the HPA wants this many replicas.
const CONCURRENCY: usize = 3;
/// Output tokens per request: a few seconds each on the simulator, so a
/// stopped load drains quickly.
const MAX_TOKENS: u32 = 150;

fn model_and_template() -> String {
    r#"apiVersion: aim.eai.amd.com/v1alpha1
kind: AIMModel
metadata: {name: qwen-qwen3-32b}
spec:
  image: amdenterpriseai/aim-qwen-qwen3-32b:0.8.5
  discovery: {createServiceTemplates: false}
  imageMetadata:
    model: {canonicalName: Qwen/Qwen3-32B}
---
apiVersion: aim.eai.amd.com/v1alpha1
kind: AIMServiceTemplate
metadata:
  name: qwen3-32b-latency
  annotations: {aim.eai.amd.com/reconciliation-paused: "true"}
spec:
  modelName: qwen-qwen3-32b
  metric: latency
  precision: fp8
  hardware: {gpu: {requests: 1, model: MI300X}}
"#
    .to_string()
}

/// The seed's `aim-basic-autoscaling.yaml` (min 1, max 4, no metrics: the
/// default metric applies), pinned to the template above.
fn service_yaml() -> String {
    format!(
        r#"apiVersion: aim.eai.amd.com/v1alpha1
kind: AIMService
metadata: {{name: {SERVICE}}}
spec:
  model: {{name: qwen-qwen3-32b}}
  template: {{name: qwen3-32b-latency}}
  minReplicas: 1
  maxReplicas: 4
"#
    )
}

/// Freezes the template Ready with a discovered profile, as discovery would.
async fn ready_template(client: &Client, ns: &str) {
    let api: Api<aim_api::AIMServiceTemplate> = Api::namespaced(client.clone(), ns);
    let status = json!({
        "apiVersion": "aim.eai.amd.com/v1alpha1", "kind": "AIMServiceTemplate",
        "status": {
            "status": "Ready",
            "profile": {"metadata": {"engine": "vllm", "gpu": "MI300X", "gpuCount": 1,
                                     "metric": "latency", "precision": "fp8", "type": "optimized"}},
            "resolvedHardware": {"gpu": {"requests": 1, "model": "MI300X"}},
            "hardwareSummary": "1 x MI300X",
        }
    });
    api.patch_status(
        "qwen3-32b-latency",
        &PatchParams::apply("aim-test-discovery").force(),
        &Patch::Apply(&status),
    )
    .await
    .unwrap();
}

/// A client acting as the chart's operator ServiceAccount.
async fn operator_client() -> Client {
    aim_testkit::install_chart().await;
    let info = aim_testkit::cluster().await;
    let kc = kube::config::Kubeconfig::read_from(&info.kubeconfig).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    config.auth_info.impersonate = Some("system:serviceaccount:aim-system:aim-operator".into());
    Client::try_from(config).unwrap()
}

fn dynamic(
    client: &Client,
    ns: &str,
    group: &str,
    version: &str,
    kind: &str,
) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let plural = format!("{}s", kind.to_lowercase());
    Api::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::from_gvk_with_plural(&gvk, &plural),
    )
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn predictor_pods(pods: &Api<Pod>, isvc: &str) -> Vec<Pod> {
    pods.list(&ListParams::default().labels(&format!("serving.kserve.io/inferenceservice={isvc}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

fn desired(h: &HorizontalPodAutoscaler) -> i32 {
    h.status.as_ref().map(|s| s.desired_replicas).unwrap_or(0)
}

fn runtime(svc: &AIMService) -> Option<aim_api::service::ServiceRuntimeStatus> {
    svc.status.as_ref()?.runtime.clone()
}

/// What the scaler answers KEDA for the ScaledObject's first trigger, through
/// KEDA's own gRPC calls.
async fn scaler_value(
    scaler: &mut ExternalScalerClient<tonic::transport::Channel>,
    scaled_object: &DynamicObject,
) -> Result<f64, String> {
    let trigger = &scaled_object.data["spec"]["triggers"][0]["metadata"];
    let metadata: HashMap<String, String> = trigger
        .as_object()
        .ok_or("the ScaledObject has no trigger")?
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect();
    let reference = ScaledObjectRef {
        name: scaled_object.name_any(),
        namespace: scaled_object.namespace().unwrap_or_default(),
        scaler_metadata: metadata,
    };
    let spec = scaler
        .get_metric_spec(reference.clone())
        .await
        .map_err(|e| e.message().to_string())?
        .into_inner();
    let name = spec
        .metric_specs
        .first()
        .ok_or("no metric spec")?
        .metric_name
        .clone();
    let metrics = scaler
        .get_metrics(GetMetricsRequest {
            scaled_object_ref: Some(reference),
            metric_name: name,
        })
        .await
        .map_err(|e| e.message().to_string())?
        .into_inner();
    metrics
        .metric_values
        .first()
        .map(|m| m.metric_value_float)
        .ok_or_else(|| "no metric value".to_string())
}

/// A closed loop of `CONCURRENCY` clients, each sending the next
/// completion as soon as the last one ended, to the ready predictor pods in
/// turn (as a Service would spread them).
fn start_load(client: Client, ns: String, isvc: String) -> Vec<tokio::task::JoinHandle<()>> {
    (0..CONCURRENCY)
        .map(|worker| {
            let client = client.clone();
            let ns = ns.clone();
            let isvc = isvc.clone();
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let pods: Api<Pod> = Api::namespaced(client, &ns);
                let mut n = worker;
                loop {
                    let ready: Vec<String> = predictor_pods(&pods, &isvc)
                        .await
                        .into_iter()
                        .filter(is_ready)
                        .filter_map(|p| p.status?.pod_ip)
                        .collect();
                    if ready.is_empty() {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                    let ip = &ready[n % ready.len()];
                    n += 1;
                    let sent = http
                        .post(format!("http://{ip}:8000/v1/completions"))
                        .json(
                            &json!({"model": "Qwen/Qwen3-32B", "prompt": "Tell me a story.",
                                      "max_tokens": MAX_TOKENS, "ignore_eos": true}),
                        )
                        .send()
                        .await;
                    match sent {
                        Ok(r) => {
                            let _ = r.bytes().await;
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            })
        })
        .collect()
}

/// The ScaledUp/ScaledDown events of the service, oldest first.
async fn scale_events(client: &Client, ns: &str, reason: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let mut list: Vec<Event> = events
        .list(&ListParams::default().fields(&format!(
            "involvedObject.kind=AIMService,involvedObject.name={SERVICE},reason={reason}"
        )))
        .await
        .unwrap()
        .items;
    list.sort_by_key(|e| e.metadata.creation_timestamp.clone().map(|t| t.0));
    list.into_iter().filter_map(|e| e.message).collect()
}

/// Waits until an event of `reason` matches, returning them all.
async fn await_events(
    client: &Client,
    ns: &str,
    reason: &str,
    matches: impl Fn(&str) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let events = scale_events(client, ns, reason).await;
        if events.iter().any(|m| matches(m)) {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "no matching {reason} event: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

struct Lags {
    rows: Vec<(String, Duration)>,
}

impl Lags {
    fn print(&self, title: &str) {
        println!("{title}");
        for (step, took) in &self.rows {
            println!("  {step:<58} {:>6.1} s", took.as_secs_f64());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_seed_service_scales_1_to_n_and_back_with_real_kserve_and_keda() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let info = cluster_with_kserve().await;
    let admin = info.client().await.unwrap();
    let ns = namespace(&admin, "tier3-loop").await;

    // The scaler where the bed points KServe's sidecars and ScaledObjects.
    // A 10 s operationOverTime window (upstream 120 s) so the average
    // follows a load step within seconds.
    let mut args = aim_scaler::ScalerArgs::defaults();
    args.listen = vec![info.scaler_address];
    args.admin_listen = "127.0.0.1:0".parse().unwrap();
    args.default_window = Duration::from_secs(10);
    let scaler = aim_scaler::start(&args)
        .await
        .unwrap_or_else(|e| panic!("the scaler cannot listen at {}: {e:#}", info.scaler_address));

    // The operator under the chart's RBAC, telling KEDA to ask the scaler
    // at its loopback address (KEDA runs outside the cluster here).
    let sa_client = operator_client().await;
    let operator_args = aim_operator::OperatorArgs {
        admin_address: "127.0.0.1:0".parse().unwrap(),
        namespace: "aim-system".into(),
        no_leader_election: true,
        identity: None,
        scaler_address: info.scaler_address.to_string(),
    };
    let (stop_operator, stopped) = tokio::sync::oneshot::channel::<()>();
    let operator = tokio::spawn(aim_operator::run_with(
        sa_client,
        operator_args,
        async move {
            let _ = stopped.await;
        },
    ));

    // The pod runner for this namespace: simulators with a 2 s cold start.
    let runner = tokio::spawn(aim_pods::runner::run(
        admin.clone(),
        aim_pods::runner::RunnerConfig {
            cold_start: Duration::from_secs(2),
            aim_binary: env!("CARGO_BIN_EXE_aim").into(),
            sim_args: Vec::new(),
            exporter_override: None,
            namespace: Some(ns.clone()),
        },
    ));

    apply_yaml(&admin, &ns, &model_and_template())
        .await
        .unwrap();
    ready_template(&admin, &ns).await;
    let applied = Instant::now();
    apply_yaml(&admin, &ns, &service_yaml()).await.unwrap();

    // The operator's InferenceService, and what KServe makes of it.
    let isvcs = dynamic(
        &admin,
        &ns,
        "serving.kserve.io",
        "v1beta1",
        "InferenceService",
    );
    let isvc = loop {
        let list = isvcs.list(&ListParams::default()).await.unwrap();
        if let Some(i) = list.items.first() {
            break i.name_any();
        }
        assert!(
            applied.elapsed() < WAIT,
            "the operator made no InferenceService"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let predictor = format!("{isvc}-predictor");
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &ns);
    await_object(
        &deployments,
        &predictor,
        "KServe's Deployment",
        WAIT,
        |_| true,
    )
    .await;
    let to_deployment = applied.elapsed();
    let scaled_objects = dynamic(&admin, &ns, "keda.sh", "v1alpha1", "ScaledObject");
    let scaled_object = await_object(
        &scaled_objects,
        &predictor,
        "KServe's ScaledObject",
        WAIT,
        |_| true,
    )
    .await;
    let collectors = dynamic(
        &admin,
        &ns,
        "opentelemetry.io",
        "v1beta1",
        "OpenTelemetryCollector",
    );
    await_object(
        &collectors,
        &predictor,
        "KServe's OpenTelemetryCollector",
        WAIT,
        |_| true,
    )
    .await;
    let trigger = &scaled_object.data["spec"]["triggers"][0];
    assert_eq!(trigger["type"], "external", "{trigger}");
    assert_eq!(
        trigger["metadata"]["scalerAddress"],
        info.scaler_address.to_string()
    );
    assert_eq!(
        trigger["metadata"]["metricQuery"],
        format!("sum(vllm:num_requests_running{{namespace=\"{ns}\", deployment=\"{predictor}\"}})")
    );
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(admin.clone(), &ns);
    let hpa_name = format!("keda-hpa-{predictor}");
    await_object(&hpas, &hpa_name, "KEDA's HPA", WAIT, |_| true).await;
    let to_hpa = applied.elapsed();

    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
    let services: Api<AIMService> = Api::namespaced(admin.clone(), &ns);
    // One pod, served and Ready, its sidecar feeding the scaler, the HPA
    // reading 0 through KEDA.
    let mut grpc = ExternalScalerClient::connect(format!("http://{}", info.scaler_address))
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let ready = predictor_pods(&pods, &isvc)
            .await
            .iter()
            .filter(|p| is_ready(p))
            .count();
        let value = scaler_value(&mut grpc, &scaled_object).await;
        let hpa = hpas.get(&hpa_name).await.unwrap();
        let reads = hpa
            .status
            .as_ref()
            .and_then(|s| s.current_metrics.as_ref())
            .is_some_and(|m| !m.is_empty());
        if ready == 1 && value == Ok(0.0) && reads {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "idle loop not up: {ready} ready pods, scaler answers {value:?}, HPA reads a metric: {reads}\n{}",
            aim_testkit::events_of(&admin, &ns).await
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let to_idle_loop = applied.elapsed();
    await_object(&services, SERVICE, "the service Running", WAIT, |s| {
        s.status
            .as_ref()
            .and_then(|st| st.status)
            .is_some_and(|p| p == aim_api::service::ServicePhase::Running)
    })
    .await;

    // Load step: CONCURRENCY requests always in flight.
    let loaded = Instant::now();
    let load = start_load(admin.clone(), ns.clone(), isvc.clone());
    let (mut at_scaler, mut decided, mut created, mut second_ready) = (None, None, None, None);
    let mut max_desired = 1;
    let n = CONCURRENCY as i32;
    loop {
        if at_scaler.is_none()
            && scaler_value(&mut grpc, &scaled_object)
                .await
                .is_ok_and(|v| v >= 1.0)
        {
            at_scaler = Some(loaded.elapsed());
        }
        let d = desired(&hpas.get(&hpa_name).await.unwrap());
        max_desired = max_desired.max(d);
        if decided.is_none() && d > 1 {
            decided = Some(loaded.elapsed());
        }
        let current = predictor_pods(&pods, &isvc).await;
        if created.is_none() && current.len() > 1 {
            created = Some(loaded.elapsed());
        }
        let ready = current.iter().filter(|p| is_ready(p)).count() as i32;
        if second_ready.is_none() && ready > 1 {
            second_ready = Some(loaded.elapsed());
        }
        if ready == n && d == n {
            break;
        }
        assert!(
            loaded.elapsed() < WAIT,
            "no scale-up to {n}: HPA wants {d}, {ready} ready pods\n{}",
            aim_testkit::events_of(&admin, &ns).await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let to_n = loaded.elapsed();
    // The service reports what the HPA decided.
    let svc = await_object(&services, SERVICE, "status.runtime at N", WAIT, |s| {
        runtime(s).is_some_and(|r| r.desired_replicas == Some(n) && r.current_replicas == Some(n))
    })
    .await;
    let status_runtime = runtime(&svc).unwrap();
    assert_eq!(status_runtime.min_replicas, Some(1));
    assert_eq!(status_runtime.max_replicas, Some(4));
    // A decision up from 1, with the metric value behind it (KEDA names
    // the HPA's metric after the ScaledObject: s0-<namespace>-…-predictor).
    let ups = await_events(&admin, &ns, "ScaledUp", |m| {
        m.starts_with("desired replicas 1 → ") && m.contains("target 1 per pod")
    })
    .await;
    assert!(
        max_desired <= n,
        "the HPA overshot to {max_desired} for {n} running requests"
    );

    // The load stops: back to min.
    let stopped_at = Instant::now();
    for task in &load {
        task.abort();
    }
    let (mut scaler_zero, mut decided_down) = (None, None);
    loop {
        if scaler_zero.is_none()
            && scaler_value(&mut grpc, &scaled_object)
                .await
                .is_ok_and(|v| v < 1.0)
        {
            scaler_zero = Some(stopped_at.elapsed());
        }
        let d = desired(&hpas.get(&hpa_name).await.unwrap());
        if decided_down.is_none() && d < n {
            decided_down = Some(stopped_at.elapsed());
        }
        let count = predictor_pods(&pods, &isvc).await.len();
        if d == 1 && count == 1 {
            break;
        }
        assert!(
            stopped_at.elapsed() < WAIT,
            "no scale-down: HPA wants {d}, {count} pods\n{}",
            aim_testkit::events_of(&admin, &ns).await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let to_one = stopped_at.elapsed();
    await_object(&services, SERVICE, "status.runtime back at 1", WAIT, |s| {
        runtime(s).is_some_and(|r| r.desired_replicas == Some(1) && r.current_replicas == Some(1))
    })
    .await;
    let downs = await_events(&admin, &ns, "ScaledDown", |m| {
        m.contains(" → 1: ") && m.contains("target 1 per pod")
    })
    .await;
    assert!(
        !downs.iter().any(|m| m.contains(" → 0")),
        "no decision below the minimum: {downs:?}"
    );

    let secs = |d: Option<Duration>| d.unwrap_or_default();
    Lags {
        rows: vec![
            (
                "service applied → KServe's Deployment".into(),
                to_deployment,
            ),
            ("service applied → KEDA's HPA".into(), to_hpa),
            (
                "service applied → pod Ready, sidecar → scaler, HPA reads".into(),
                to_idle_loop,
            ),
            (
                format!("load step ({CONCURRENCY} in flight) → metric ≥ 1 at the scaler"),
                secs(at_scaler),
            ),
            ("load step → HPA decides > 1".into(), secs(decided)),
            ("load step → new pod created".into(), secs(created)),
            ("load step → second pod Ready".into(), secs(second_ready)),
            (format!("load step → {n} pods Ready"), to_n),
            (
                "load stopped → metric < 1 at the scaler".into(),
                secs(scaler_zero),
            ),
            ("load stopped → HPA decides down".into(), secs(decided_down)),
            ("load stopped → 1 pod".into(), to_one),
        ],
    }
    .print("tier-3 whole loop (AIMService → KServe → KEDA → HPA; pods, sidecars, scaler):");
    println!("  ScaledUp events:   {ups:?}");
    println!("  ScaledDown events: {downs:?}");

    aim_testkit::delete_namespace(&admin, &ns).await;
    runner.abort();
    let _ = stop_operator.send(());
    let _ = operator.await;
    scaler.shutdown().await;
}
