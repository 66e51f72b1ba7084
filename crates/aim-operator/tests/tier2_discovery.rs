//! Tier 2: template discovery against the real
//! control plane. The operator creates discovery Jobs; the real job
//! controller runs them as KWOK pods. The test plays the image: it gives the
//! pod the `dry-run --format=json` output through KWOK's pod-logs feature
//! (so the operator reads it through the apiserver's `pods/log`, as in
//! production) and ends the pod the way a kubelet would.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use aim_api::status::ResourcePhase;
use aim_api::{AIMClusterServiceTemplate, AIMServiceTemplate};
use aim_testkit::{apply_yaml, await_object, client, namespace, set_pod_log};
use common::kubelet::{running_pod_of_job, terminate};
use common::{WAIT, operator};
use k8s_openapi::api::batch::v1::Job;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;

/// What the aim-dummy image prints for `dry-run --format=json`, with the
/// log noise real images emit before it.
const DUMMY_OUTPUT: &str = r#"INFO selecting profile for MI300X
[{"filename": "vllm-mi300x-fp8-tp1-latency.yaml", "profile": {"model": "HuggingFaceTB/SmolLM2-135M", "quantized_model": "", "metadata": {"engine": "vllm", "gpu": "MI300X", "precision": "fp8", "gpu_count": 1, "metric": "latency", "type": "optimized"}, "engine_args": {"max-model-len": 2048}, "env_vars": {"VLLM_USE_V1": "1"}}, "models": [{"name": "HuggingFaceTB/SmolLM2-135M", "source": "hf://HuggingFaceTB/SmolLM2-135M", "size_gb": 0.5}]}]"#;

async fn setup(prefix: &str) -> (kube::Client, String) {
    operator();
    let client = client().await;
    free_the_slots().await;
    let ns = namespace(&client, prefix).await;
    (client, ns)
}

static SLOTS_FREED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

/// Earlier test binaries leave templates whose discovery Jobs nobody ends
/// (their tests were about other things), and those hold the ten
/// cluster-wide slots this binary's tests need. Test binaries run one
/// after another, so before the first test here creates anything, every
/// leftover test namespace and cluster-scoped model and template goes, and
/// the slots are awaited.
async fn free_the_slots() {
    SLOTS_FREED
        .get_or_init(|| async {
            let client = client().await;
            let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
            for ns in namespaces
                .list(&ListParams::default().labels("aim.eai.amd.com/test=true"))
                .await
                .unwrap()
                .items
            {
                let _ = namespaces
                    .delete(&ns.name_any(), &DeleteParams::background())
                    .await;
            }
            let models: Api<aim_api::AIMClusterModel> = Api::all(client.clone());
            let _ = models
                .delete_collection(&DeleteParams::background(), &ListParams::default())
                .await;
            let templates: Api<AIMClusterServiceTemplate> = Api::all(client.clone());
            let _ = templates
                .delete_collection(&DeleteParams::background(), &ListParams::default())
                .await;
            let jobs: Api<Job> = Api::all(client.clone());
            let deadline = Instant::now() + Duration::from_secs(180);
            loop {
                let left = jobs
                    .list(&ListParams::default().labels("app.kubernetes.io/name=aim-discovery"))
                    .await
                    .unwrap()
                    .items
                    .into_iter()
                    .filter(|j| {
                        j.metadata.deletion_timestamp.is_none()
                            && !j
                                .status
                                .as_ref()
                                .and_then(|s| s.conditions.as_ref())
                                .is_some_and(|c| {
                                    c.iter().any(|c| {
                                        c.status == "True"
                                            && (c.type_ == "Complete" || c.type_ == "Failed")
                                    })
                                })
                    })
                    .count();
                if left == 0 {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{left} leftover discovery jobs still run"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
        .await;
}

/// A model that needs no registry (air-gapped metadata) and makes no
/// templates of its own, so each test decides its templates. Its service
/// account must exist: the real ServiceAccount admission refuses pods
/// that name a missing one.
fn model_yaml(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: discovery-sa}}\n---\napiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMModel\nmetadata: {{name: {name}}}\nspec:\n  image: example.com/aim/dummy:0.1\n  serviceAccountName: discovery-sa\n  discovery: {{createServiceTemplates: false}}\n  imageMetadata:\n    model: {{canonicalName: HuggingFaceTB/SmolLM2-135M}}\n"
    )
}

fn template_yaml(name: &str, model: &str) -> String {
    format!(
        "apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMServiceTemplate\nmetadata: {{name: {name}}}\nspec:\n  modelName: {model}\n  metric: latency\n  precision: fp8\n  env: [{{name: EXTRA, value: '1'}}]\n  hardware: {{gpu: {{requests: 1, model: MI300X}}}}\n"
    )
}

/// The one discovery Job of `template`, waiting for it to appear.
async fn job_of(client: &kube::Client, ns: &str, template: &str) -> Job {
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let selector = format!("aim.eai.amd.com/template={template}");
    let deadline = Instant::now() + WAIT;
    loop {
        let items = jobs
            .list(&ListParams::default().labels(&selector))
            .await
            .unwrap()
            .items;
        if let [job] = items.as_slice() {
            return job.clone();
        }
        assert!(
            Instant::now() < deadline,
            "expected one discovery job for {template}, found {}",
            items.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn condition<'a>(
    conditions: &'a [k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    ty: &str,
) -> Option<(&'a str, &'a str, &'a str)> {
    conditions
        .iter()
        .find(|c| c.type_ == ty)
        .map(|c| (c.status.as_str(), c.reason.as_str(), c.message.as_str()))
}

/// The happy path: the Job is AIM Engine's, its output (read through
/// the logs API) becomes the template's profile and model sources, and
/// `Discovered` turns True (AIM Engine overwrites it to False in the same
/// reconcile).
#[tokio::test]
async fn discovery_output_becomes_the_template_profile() {
    let (client, ns) = setup("disc-ok").await;
    apply_yaml(&client, &ns, &model_yaml("dummy"))
        .await
        .unwrap();
    apply_yaml(&client, &ns, &template_yaml("dummy-lat", "dummy"))
        .await
        .unwrap();
    let job = job_of(&client, &ns, "dummy-lat").await;

    // The Job as AIM Engine makes it.
    let labels = job.labels();
    assert_eq!(labels["app.kubernetes.io/name"], "aim-discovery");
    assert_eq!(labels["app.kubernetes.io/component"], "discovery");
    assert_eq!(labels["aim.eai.amd.com/template"], "dummy-lat");
    assert!(job.name_any().starts_with("discover-dummy-lat-"));
    let owner = &job.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("AIMServiceTemplate", "dummy-lat")
    );
    let spec = job.spec.as_ref().unwrap();
    assert_eq!(spec.backoff_limit, Some(0));
    assert_eq!(spec.ttl_seconds_after_finished, Some(60));
    let pod_spec = spec.template.spec.as_ref().unwrap();
    assert_eq!(
        pod_spec.service_account_name.as_deref(),
        Some("discovery-sa")
    );
    let c = &pod_spec.containers[0];
    assert_eq!(c.image.as_deref(), Some("example.com/aim/dummy:0.1"));
    assert_eq!(c.args.as_ref().unwrap(), &["dry-run", "--format=json"]);
    let env: Vec<(String, String)> = c
        .env
        .as_ref()
        .unwrap()
        .iter()
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect();
    let want: Vec<(String, String)> = [
        ("AIM_LOG_LEVEL_ROOT", "CRITICAL"),
        ("AIM_LOG_LEVEL", "CRITICAL"),
        ("EXTRA", "1"),
        ("AIM_METRIC", "latency"),
        ("AIM_PRECISION", "fp8"),
        ("AIM_GPU_MODEL", "MI300X"),
        ("AIM_GPU_COUNT", "1"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(env, want);

    let templates: Api<AIMServiceTemplate> = Api::namespaced(client.clone(), &ns);
    let t = await_object(
        &templates,
        "dummy-lat",
        "JobRunning",
        WAIT,
        |t: &AIMServiceTemplate| {
            t.status.as_ref().is_some_and(|s| {
                condition(&s.conditions, "DiscoveryJobReady").is_some_and(|c| c.1 == "JobRunning")
            })
        },
    )
    .await;
    let st = t.status.unwrap();
    assert_eq!(st.status, Some(ResourcePhase::Progressing));
    assert_eq!(
        st.discovery_job.as_ref().and_then(|j| j.name.clone()),
        Some(job.name_any())
    );

    let pod = running_pod_of_job(&client, &ns, &job.name_any(), WAIT).await;
    set_pod_log(&client, &ns, &pod.name_any(), "discovery", DUMMY_OUTPUT).await;
    terminate(&client, &pod, 0).await;

    let t = await_object(
        &templates,
        "dummy-lat",
        "Ready",
        WAIT,
        |t: &AIMServiceTemplate| {
            t.status.as_ref().and_then(|s| s.status) == Some(ResourcePhase::Ready)
        },
    )
    .await;
    let st = t.status.unwrap();
    assert_eq!(st.model_sources.len(), 1);
    assert_eq!(st.model_sources[0].model_id, "HuggingFaceTB/SmolLM2-135M");
    assert_eq!(
        st.model_sources[0].source_uri,
        "hf://HuggingFaceTB/SmolLM2-135M"
    );
    assert_eq!(
        st.model_sources[0].size.as_ref().map(|q| q.0.as_str()),
        Some("512Mi")
    );
    let profile = st.profile.unwrap();
    assert_eq!(
        profile.metadata.as_ref().unwrap().engine.as_deref(),
        Some("vllm")
    );
    assert_eq!(profile.engine_args.unwrap()["max-model-len"], 2048);
    assert_eq!(st.hardware_summary.as_deref(), Some("1 x MI300X"));
    assert_eq!(
        condition(&st.conditions, "Discovered").map(|c| (c.0, c.1)),
        Some(("True", "DiscoveryComplete"))
    );
    assert!(st.discovery.unwrap().attempts.is_none());
    aim_testkit::delete_namespace(&client, &ns).await;
}

/// Output that is not a discovery answer fails the template with a
/// condition that says so (AIM only logs it and goes Ready without
/// sources), and counts as a failed attempt for the backoff.
#[tokio::test]
async fn unparseable_output_is_a_condition_and_a_counted_attempt() {
    let (client, ns) = setup("disc-bad").await;
    apply_yaml(&client, &ns, &model_yaml("dummy"))
        .await
        .unwrap();
    apply_yaml(&client, &ns, &template_yaml("dummy-lat", "dummy"))
        .await
        .unwrap();
    let job = job_of(&client, &ns, "dummy-lat").await;
    let pod = running_pod_of_job(&client, &ns, &job.name_any(), WAIT).await;
    set_pod_log(
        &client,
        &ns,
        &pod.name_any(),
        "discovery",
        "usage: aim-runtime [serve]\nunknown command dry-run",
    )
    .await;
    terminate(&client, &pod, 0).await;

    let templates: Api<AIMServiceTemplate> = Api::namespaced(client.clone(), &ns);
    let t = await_object(
        &templates,
        "dummy-lat",
        "Failed",
        WAIT,
        |t: &AIMServiceTemplate| {
            t.status.as_ref().and_then(|s| s.status) == Some(ResourcePhase::Failed)
        },
    )
    .await;
    let st = t.status.unwrap();
    let (status, reason, message) = condition(&st.conditions, "DiscoveryJobReady").unwrap();
    assert_eq!((status, reason), ("False", "DiscoveryOutputInvalid"));
    assert!(message.contains("no JSON array"), "{message}");
    assert!(
        message.contains("spec.image"),
        "the message says what to check: {message}"
    );
    let (status, reason, _) = condition(&st.conditions, "Discovered").unwrap();
    assert_eq!((status, reason), ("False", "DiscoveryOutputInvalid"));
    let d = st.discovery.unwrap();
    assert_eq!(d.attempts, Some(1));
    assert_eq!(
        d.last_failure_reason.as_deref(),
        Some("DiscoveryOutputInvalid")
    );
    assert!(st.model_sources.is_empty() && st.profile.is_none());
    aim_testkit::delete_namespace(&client, &ns).await;
}

/// A Job that fails (backoffLimit 0: one failed pod) fails the template
/// with the Job's reason; a changed spec resets the backoff and gets a
/// new Job at once.
#[tokio::test]
async fn failed_job_reports_its_reason_and_a_spec_change_retries_at_once() {
    let (client, ns) = setup("disc-fail").await;
    apply_yaml(&client, &ns, &model_yaml("dummy"))
        .await
        .unwrap();
    apply_yaml(&client, &ns, &template_yaml("dummy-lat", "dummy"))
        .await
        .unwrap();
    let job = job_of(&client, &ns, "dummy-lat").await;
    let pod = running_pod_of_job(&client, &ns, &job.name_any(), WAIT).await;
    terminate(&client, &pod, 1).await;

    let templates: Api<AIMServiceTemplate> = Api::namespaced(client.clone(), &ns);
    let t = await_object(
        &templates,
        "dummy-lat",
        "Failed",
        WAIT,
        |t: &AIMServiceTemplate| {
            t.status.as_ref().and_then(|s| s.status) == Some(ResourcePhase::Failed)
        },
    )
    .await;
    let st = t.status.unwrap();
    let (_, reason, message) = condition(&st.conditions, "DiscoveryJobReady").unwrap();
    assert_eq!(reason, "JobBackoffLimitExceeded");
    assert!(message.contains(&job.name_any()), "{message}");
    let d = st.discovery.unwrap();
    assert_eq!(d.attempts, Some(1));
    // The next attempt waits for the backoff (60 s): no second Job yet.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let names: BTreeSet<String> = jobs
        .list(&ListParams::default().labels("aim.eai.amd.com/template=dummy-lat"))
        .await
        .unwrap()
        .items
        .iter()
        .map(|j| j.name_any())
        .collect();
    assert_eq!(names, BTreeSet::from([job.name_any()]));

    // Different env is a different question (metric, precision and
    // hardware are immutable): a new Job now, without waiting.
    templates
        .patch(
            "dummy-lat",
            &PatchParams::apply("aim-test").force(),
            &Patch::Apply(json!({
                "apiVersion": "aim.eai.amd.com/v1alpha1", "kind": "AIMServiceTemplate",
                "metadata": {"name": "dummy-lat"},
                "spec": {"modelName": "dummy", "metric": "latency", "precision": "fp8",
                         "env": [{"name": "EXTRA", "value": "2"}],
                         "hardware": {"gpu": {"requests": 1, "model": "MI300X"}}},
            })),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    let new_job = loop {
        let items = jobs
            .list(&ListParams::default().labels("aim.eai.amd.com/template=dummy-lat"))
            .await
            .unwrap()
            .items;
        if let Some(j) = items.into_iter().find(|j| j.name_any() != job.name_any()) {
            break j;
        }
        assert!(
            Instant::now() < deadline,
            "no new discovery job after the spec change"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let env = new_job.spec.unwrap().template.spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap();
    assert!(
        env.iter()
            .any(|e| e.name == "EXTRA" && e.value.as_deref() == Some("2"))
    );
    let t = await_object(
        &templates,
        "dummy-lat",
        "attempts reset",
        WAIT,
        |t: &AIMServiceTemplate| {
            t.status
                .as_ref()
                .and_then(|s| s.discovery.as_ref())
                .is_some_and(|d| d.attempts.is_none())
        },
    )
    .await;
    assert_ne!(t.status.unwrap().status, Some(ResourcePhase::Failed));
    aim_testkit::delete_namespace(&client, &ns).await;
}

/// Cluster templates run discovery in the operator namespace.
#[tokio::test]
async fn cluster_template_discovery_runs_in_the_operator_namespace() {
    let (client, _ns) = setup("disc-cluster").await;
    let name = format!("disc-cluster-{}", std::process::id());
    let models: Api<aim_api::AIMClusterModel> = Api::all(client.clone());
    models
        .patch(
            &name,
            &PatchParams::apply("aim-test").force(),
            &Patch::Apply(json!({
                "apiVersion": "aim.eai.amd.com/v1alpha1", "kind": "AIMClusterModel",
                "metadata": {"name": name},
                "spec": {"image": "example.com/aim/dummy:0.1", "discovery": {"createServiceTemplates": false},
                         "imageMetadata": {"model": {"canonicalName": "HuggingFaceTB/SmolLM2-135M"}}},
            })),
        )
        .await
        .unwrap();
    let templates: Api<AIMClusterServiceTemplate> = Api::all(client.clone());
    templates
        .patch(
            &name,
            &PatchParams::apply("aim-test").force(),
            &Patch::Apply(json!({
                "apiVersion": "aim.eai.amd.com/v1alpha1", "kind": "AIMClusterServiceTemplate",
                "metadata": {"name": name},
                "spec": {"modelName": name, "metric": "latency", "hardware": {"gpu": {"requests": 1, "model": "MI300X"}}},
            })),
        )
        .await
        .unwrap();
    let job = job_of(&client, "aim-system", &name).await;
    assert_eq!(job.owner_references()[0].kind, "AIMClusterServiceTemplate");
    let pod = running_pod_of_job(&client, "aim-system", &job.name_any(), WAIT).await;
    set_pod_log(
        &client,
        "aim-system",
        &pod.name_any(),
        "discovery",
        DUMMY_OUTPUT,
    )
    .await;
    terminate(&client, &pod, 0).await;
    let t = await_object(
        &templates,
        &name,
        "Ready",
        WAIT,
        |t: &AIMClusterServiceTemplate| {
            t.status.as_ref().and_then(|s| s.status) == Some(ResourcePhase::Ready)
        },
    )
    .await;
    assert_eq!(t.status.unwrap().model_sources.len(), 1);
    // The template owns its Job: both go when the template goes.
    templates
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    models
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
}

/// Fifty templates queue for discovery; at no moment do more than ten
/// discovery Jobs run cluster-wide, and every template ends Ready. Prints
/// the throughput (the catalog issue's measurement).
#[tokio::test]
async fn fifty_templates_never_run_more_than_ten_jobs_at_once() {
    const TEMPLATES: usize = 50;
    let (client, ns) = setup("disc-fifty").await;
    apply_yaml(&client, &ns, &model_yaml("dummy"))
        .await
        .unwrap();
    let started = Instant::now();
    let mut docs = String::new();
    for i in 0..TEMPLATES {
        docs.push_str(&template_yaml(&format!("t{i:02}"), "dummy"));
        docs.push_str("---\n");
    }
    apply_yaml(&client, &ns, &docs).await.unwrap();

    let all_jobs: Api<Job> = Api::all(client.clone());
    let templates: Api<AIMServiceTemplate> = Api::namespaced(client.clone(), &ns);
    let by_discovery = ListParams::default().labels("app.kubernetes.io/name=aim-discovery");
    let mut max_active = 0;
    let mut finished: BTreeSet<String> = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let jobs = all_jobs.list(&by_discovery).await.unwrap().items;
        let active: Vec<&Job> = jobs
            .iter()
            .filter(|j| {
                !j.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| {
                        c.iter().any(|c| {
                            c.status == "True" && (c.type_ == "Complete" || c.type_ == "Failed")
                        })
                    })
            })
            .collect();
        assert!(
            active.len() <= 10,
            "{} discovery jobs active at once: {:?}",
            active.len(),
            active.iter().map(|j| j.name_any()).collect::<Vec<_>>()
        );
        max_active = max_active.max(active.len());
        // Play the image and the kubelet for this test's running Jobs.
        for job in active
            .iter()
            .filter(|j| j.namespace().as_deref() == Some(ns.as_str()))
        {
            let name = job.name_any();
            if finished.contains(&name) {
                continue;
            }
            let pod = running_pod_of_job(&client, &ns, &name, WAIT).await;
            set_pod_log(&client, &ns, &pod.name_any(), "discovery", DUMMY_OUTPUT).await;
            terminate(&client, &pod, 0).await;
            finished.insert(name);
        }
        let ready = templates
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .filter(|t| t.status.as_ref().and_then(|s| s.status) == Some(ResourcePhase::Ready))
            .count();
        if ready == TEMPLATES {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {ready}/{TEMPLATES} templates Ready"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let took = started.elapsed();
    assert_eq!(finished.len(), TEMPLATES, "one Job per template");
    assert!(
        max_active >= 2,
        "jobs never ran side by side (max {max_active})"
    );
    println!(
        "discovery: {TEMPLATES} templates in {:.1} s ({:.2} templates/s), at most {max_active} jobs active at once",
        took.as_secs_f64(),
        TEMPLATES as f64 / took.as_secs_f64()
    );
    aim_testkit::delete_namespace(&client, &ns).await;
}

/// A Job whose pod the job controller cannot create (the model names a
/// service account that does not exist) would hold a slot forever as
/// "running": the template says why instead, from the job controller's own
/// FailedCreate event.
#[tokio::test]
async fn a_refused_discovery_pod_is_explained() {
    let (client, ns) = setup("disc-nosa").await;
    let model = model_yaml("dummy").replace("discovery-sa", "no-such-sa");
    // Keep only the model document: the service account stays missing.
    let model = model.split("---\n").nth(1).unwrap().to_string();
    apply_yaml(&client, &ns, &model).await.unwrap();
    apply_yaml(&client, &ns, &template_yaml("dummy-lat", "dummy"))
        .await
        .unwrap();
    let templates: Api<AIMServiceTemplate> = Api::namespaced(client.clone(), &ns);
    let t = await_object(
        &templates,
        "dummy-lat",
        "PodCreateFailed",
        WAIT,
        |t: &AIMServiceTemplate| {
            t.status.as_ref().is_some_and(|s| {
                condition(&s.conditions, "DiscoveryJobReady")
                    .is_some_and(|c| c.1 == "PodCreateFailed")
            })
        },
    )
    .await;
    let st = t.status.unwrap();
    let (_, _, message) = condition(&st.conditions, "DiscoveryJobReady").unwrap();
    assert!(message.contains("no-such-sa"), "{message}");
    assert!(message.contains("serviceAccountName"), "{message}");
    assert_eq!(st.status, Some(ResourcePhase::Degraded));
    // Free the slot for the other tests of this binary.
    let _ = Api::<aim_api::AIMModel>::namespaced(client.clone(), &ns)
        .delete("dummy", &DeleteParams::default())
        .await;
    templates
        .delete("dummy-lat", &DeleteParams::background())
        .await
        .unwrap();
    aim_testkit::delete_namespace(&client, &ns).await;
}
