//! Tier 3: the shared translation against the real KServe and operator.
//!
//! The lab scores the ScaledObject that `aim_scaling` predicts for a
//! manifest. Here every seed AIMService that autoscales is deployed
//! through the operator and the real KServe controller, and the
//! ScaledObject that appears must be the predicted one, field for field:
//! if KServe (or the operator) ever builds something else, the lab would be
//! scoring a configuration nobody runs, and this test fails.
//!
//! It also hands a service's ScaledObject from KServe to the operator and
//! back, by adding and removing a scaling policy, and prints how long each
//! handover takes.
//!
//! ```sh
//! cargo test -p aim --test tier3_translation -- --nocapture
//! ```

mod common;

use std::time::{Duration, Instant};

use aim_api::AIMService;
use aim_scaling::{KServeAutoscaler, ScaledObject, Scaling, ServiceScaling};
use aim_testkit::{apply_yaml, cluster_with_kserve, namespace, repo_path};
use common::bed::{dynamic, model_and_template, operator_client, ready_template};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde::Deserialize;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(120);
/// The scaler address the operator writes; nothing needs to answer there.
const SCALER: &str = "127.0.0.1:4399";

fn scaled_objects(client: &Client, ns: &str) -> Api<DynamicObject> {
    dynamic(client, ns, "keda.sh", "v1alpha1", "ScaledObject")
}

/// The seed AIMServices that autoscale, reduced to their scaling fields and
/// pinned to the bed's model and template (caching, routing and the rest do
/// not change the ScaledObject and need parts this test does not run).
fn autoscaling_seeds() -> Vec<(String, AIMService)> {
    let dir = repo_path("examples/seeds");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    names.sort();
    let mut out = Vec::new();
    for path in names {
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_yaml::Value::deserialize(doc).unwrap();
            if value.get("kind").and_then(|k| k.as_str()) != Some("AIMService") {
                continue;
            }
            let seed: AIMService = serde_yaml::from_value(value).unwrap();
            if aim_scaling::autoscaling_bounds(&seed.spec).is_none() {
                continue;
            }
            let file = path.file_stem().unwrap().to_string_lossy().into_owned();
            let mut svc = AIMService::new(
                &format!("s{}", out.len()),
                serde_json::from_value(json!({
                    "model": {"name": "qwen-qwen3-32b"},
                    "template": {"name": "qwen3-32b-latency"},
                }))
                .unwrap(),
            );
            svc.spec.min_replicas = seed.spec.min_replicas;
            svc.spec.max_replicas = seed.spec.max_replicas;
            svc.spec.auto_scaling = seed.spec.auto_scaling.clone();
            out.push((file, svc));
        }
    }
    out
}

/// KServe's autoscaler settings as the bed's config map has them.
async fn kserve_settings(client: &Client) -> KServeAutoscaler {
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "kserve");
    let map = maps.get("inferenceservice-config").await.unwrap();
    aim_operator::context::kserve_autoscaler(Some(&map), SCALER)
}

fn predicted(svc: &AIMService, ns: &str, kserve: &KServeAutoscaler) -> ScaledObject {
    let isvc = aim_rules::naming::isvc_name(&svc.name_any(), ns).unwrap();
    match aim_scaling::plan(&ServiceScaling {
        spec: &svc.spec,
        namespace: ns,
        isvc_name: &isvc,
        paused: false,
        kserve,
        routed: svc
            .spec
            .routing
            .as_ref()
            .is_some_and(|r| r.enabled == Some(true)),
    })
    .unwrap()
    {
        Scaling::Autoscaled(a) => a.scaled_object,
        Scaling::Fixed { .. } => panic!("{} does not autoscale", svc.name_any()),
    }
}

/// The fields that decide scaling, live vs predicted; `None` when equal.
fn difference(live: &ScaledObject, want: &ScaledObject) -> Option<String> {
    let l = &live.spec;
    let w = &want.spec;
    let mut out = Vec::new();
    if l.scale_target_ref.name != w.scale_target_ref.name {
        out.push(format!(
            "scaleTargetRef {:?} ≠ {:?}",
            l.scale_target_ref, w.scale_target_ref
        ));
    }
    for (field, a, b) in [
        ("minReplicaCount", l.min_replica_count, w.min_replica_count),
        ("maxReplicaCount", l.max_replica_count, w.max_replica_count),
        ("pollingInterval", l.polling_interval, w.polling_interval),
        ("cooldownPeriod", l.cooldown_period, w.cooldown_period),
    ] {
        if a != b {
            out.push(format!("{field} {a:?} ≠ {b:?}"));
        }
    }
    if l.triggers != w.triggers {
        out.push(format!("triggers {:?} ≠ {:?}", l.triggers, w.triggers));
    }
    if live.behavior() != want.behavior() {
        out.push(format!(
            "behavior {:?} ≠ {:?}",
            live.behavior(),
            want.behavior()
        ));
    }
    // What the lab runs from each must be the same loop, too.
    let (a, b) = (
        aim_scaling::keda_spec(live).unwrap(),
        aim_scaling::keda_spec(want).unwrap(),
    );
    if a != b {
        out.push(format!("KEDA view {a:?} ≠ {b:?}"));
    }
    (!out.is_empty()).then(|| out.join("; "))
}

fn controller_kind(so: &DynamicObject) -> Option<String> {
    so.metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
        .map(|r| r.kind.clone())
}

/// Waits until the ScaledObject is controlled by `owner` and matches `want`.
async fn await_scaled_object(
    api: &Api<DynamicObject>,
    want: &ScaledObject,
    owner: &str,
    what: &str,
) -> Duration {
    let started = Instant::now();
    let mut last = String::from("no ScaledObject yet");
    loop {
        if let Some(so) = api.get_opt(&want.metadata.name).await.unwrap() {
            let kind = controller_kind(&so);
            let live: ScaledObject = serde_json::from_value(serde_json::to_value(&so).unwrap())
                .unwrap_or_else(|e| panic!("{what}: the live ScaledObject does not read: {e}"));
            match (kind.as_deref() == Some(owner), difference(&live, want)) {
                (true, None) => return started.elapsed(),
                (owned, diff) => {
                    last = format!(
                        "controlled by {kind:?} (want {owner}: {owned}); difference: {}",
                        diff.unwrap_or_else(|| "none".into())
                    );
                }
            }
        }
        assert!(
            started.elapsed() < WAIT,
            "{what}: the live ScaledObject never became the predicted one: {last}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One operator at a time on the cluster: two would fight over services.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Operator {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start_operator() -> Operator {
    let args = aim_operator::OperatorArgs {
        admin_address: "127.0.0.1:0".parse().unwrap(),
        namespace: "aim-system".into(),
        no_leader_election: true,
        identity: None,
        scaler_address: SCALER.into(),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(aim_operator::run_with(
        operator_client().await,
        args,
        async move {
            let _ = stopped.await;
        },
    ));
    Operator { stop, task }
}

impl Operator {
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_autoscaling_seed_gets_the_scaled_object_the_lab_scores() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _turn = TURN.lock().await;
    let info = cluster_with_kserve().await;
    let admin = info.client().await.unwrap();
    let ns = namespace(&admin, "translation").await;
    let operator = start_operator().await;
    apply_yaml(&admin, &ns, &model_and_template())
        .await
        .unwrap();
    ready_template(&admin, &ns).await;
    let kserve = kserve_settings(&admin).await;
    let seeds = autoscaling_seeds();
    assert!(
        seeds.len() >= 3,
        "found only {} autoscaling seeds",
        seeds.len()
    );
    let services: Api<AIMService> = Api::namespaced(admin.clone(), &ns);
    for (_, svc) in &seeds {
        services
            .patch(
                &svc.name_any(),
                &PatchParams::apply("aim-test").force(),
                &Patch::Apply(svc),
            )
            .await
            .unwrap();
    }
    let api = scaled_objects(&admin, &ns);
    for (file, svc) in &seeds {
        let want = predicted(svc, &ns, &kserve);
        let took = await_scaled_object(&api, &want, "InferenceService", file).await;
        println!(
            "{file}: KServe built the predicted ScaledObject ({took:.1?} after the last apply)"
        );
    }
    aim_testkit::delete_namespace(&admin, &ns).await;
    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_policy_hands_the_scaled_object_to_the_operator_and_back() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _turn = TURN.lock().await;
    let info = cluster_with_kserve().await;
    let admin = info.client().await.unwrap();
    let ns = namespace(&admin, "handover").await;
    let operator = start_operator().await;
    apply_yaml(&admin, &ns, &model_and_template())
        .await
        .unwrap();
    ready_template(&admin, &ns).await;
    let kserve = kserve_settings(&admin).await;
    let base = r#"apiVersion: aim.eai.amd.com/v1alpha1
kind: AIMService
metadata: {name: chat}
spec:
  model: {name: qwen-qwen3-32b}
  template: {name: qwen3-32b-latency}
  minReplicas: 1
  maxReplicas: 4
"#;
    let policy = "  autoScaling:\n    policy: {name: stable-panic, params: {panicThreshold: \"3\"}}\n    behavior:\n      scaleUp:\n        policies: [{type: Pods, value: 1, periodSeconds: 30}]\n";
    let api = scaled_objects(&admin, &ns);
    let svc_of = |yaml: &str| -> AIMService { serde_yaml::from_str(yaml).unwrap() };

    apply_yaml(&admin, &ns, base).await.unwrap();
    let took = await_scaled_object(
        &api,
        &predicted(&svc_of(base), &ns, &kserve),
        "InferenceService",
        "KServe's first",
    )
    .await;
    println!("applied → KServe's ScaledObject: {took:.1?}");

    let with_policy = format!("{base}{policy}");
    let applied = Instant::now();
    apply_yaml(&admin, &ns, &with_policy).await.unwrap();
    let want = predicted(&svc_of(&with_policy), &ns, &kserve);
    assert_eq!(want.spec.triggers[0].metadata["policy"], "stable-panic");
    await_scaled_object(&api, &want, "AIMService", "to the operator").await;
    println!(
        "policy added → the operator's ScaledObject: {:.1?}",
        applied.elapsed()
    );

    let changed = with_policy.replace("panicThreshold: \"3\"", "panicThreshold: \"4\"");
    assert_ne!(changed, with_policy);
    let applied = Instant::now();
    apply_yaml(&admin, &ns, &changed).await.unwrap();
    await_scaled_object(
        &api,
        &predicted(&svc_of(&changed), &ns, &kserve),
        "AIMService",
        "a parameter change",
    )
    .await;
    println!(
        "parameter changed → ScaledObject updated: {:.1?}",
        applied.elapsed()
    );

    // Back: the service is re-applied without the extension (the test's
    // field manager owned it, so it is removed).
    let applied = Instant::now();
    apply_yaml(&admin, &ns, base).await.unwrap();
    await_scaled_object(
        &api,
        &predicted(&svc_of(base), &ns, &kserve),
        "InferenceService",
        "back to KServe",
    )
    .await;
    println!(
        "policy removed → KServe's ScaledObject again: {:.1?}",
        applied.elapsed()
    );

    aim_testkit::delete_namespace(&admin, &ns).await;
    operator.stop().await;
}
