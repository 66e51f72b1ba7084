//! Tier 2: model caching against the real control plane. The real job
//! controller runs the check-size and download Jobs, the real PV binder
//! binds their claims, and KWOK runs their pods. Tests play three parts:
//! the storage provisioner (a pre-made PersistentVolume), the kubelet
//! (writing a finished pod's status, including the termination message the
//! check-size container writes) and the downloader image (patching the
//! artifact status as the namespace's `default` ServiceAccount, with only
//! the RBAC the operator grants it).

mod common;

use std::time::Duration;

use aim_api::service::ServicePhase;
use aim_api::{AIMArtifact, AIMService, AIMTemplateCache};
use aim_testkit::{apply_yaml, await_object, client, namespace};
use common::{WAIT, await_phase, condition, operator};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Pod};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

/// Failing a Job for real takes three pod failures with the job
/// controller's back-off (10 s, 20 s) in between.
const SLOW: Duration = Duration::from_secs(180);
const GIB: u64 = 1 << 30;

async fn setup(prefix: &str) -> (kube::Client, String) {
    operator();
    let client = client().await;
    let ns = namespace(&client, prefix).await;
    (client, ns)
}

/// A storage class of this test plus a volume for it, so the real PV
/// binder binds the operator's claim (no provisioner runs here).
/// `volumes` volumes: a released volume is not bound again, so a test that
/// recreates a claim needs one per claim.
async fn storage(client: &kube::Client, ns: &str, capacity_gib: u64, volumes: usize) -> String {
    let class = format!("sc-{ns}");
    let mut yaml = format!(
        "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {{name: {class}}}\nprovisioner: kubernetes.io/no-provisioner\nvolumeBindingMode: Immediate\n"
    );
    for i in 0..volumes {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: PersistentVolume\nmetadata: {{name: pv-{ns}-{i}}}\nspec:\n  storageClassName: {class}\n  capacity: {{storage: {capacity_gib}Gi}}\n  accessModes: [ReadWriteMany]\n  hostPath: {{path: /tmp/aim-test-{ns}-{i}}}\n"
        ));
    }
    apply_yaml(client, ns, &yaml).await.unwrap();
    class
}

fn model_yaml(name: &str) -> String {
    format!(
        "apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMModel\nmetadata: {{name: {name}}}\nspec:\n  image: amdenterpriseai/aim-qwen-qwen3-32b:0.8.5\n  discovery: {{createServiceTemplates: false}}\n  imageMetadata:\n    model: {{canonicalName: Qwen/Qwen3-32B}}\n"
    )
}

/// A template frozen Ready with the given model sources in its status, as
/// discovery would publish them.
async fn ready_template(client: &kube::Client, ns: &str, name: &str, model: &str, sources: Value) {
    apply_yaml(
        client,
        ns,
        &format!(
            "apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMServiceTemplate\nmetadata:\n  name: {name}\n  annotations: {{aim.eai.amd.com/reconciliation-paused: \"true\"}}\nspec:\n  modelName: {model}\n  metric: latency\n  precision: fp8\n  hardware: {{gpu: {{requests: 1, model: MI300X}}}}\n"
        ),
    )
    .await
    .unwrap();
    let api: Api<aim_api::AIMServiceTemplate> = Api::namespaced(client.clone(), ns);
    let status = json!({
        "apiVersion": "aim.eai.amd.com/v1alpha1", "kind": "AIMServiceTemplate",
        "status": {
            "status": "Ready",
            "modelSources": sources,
            "profile": {"metadata": {"engine": "vllm", "gpu": "MI300X", "gpuCount": 1, "metric": "latency", "precision": "fp8", "type": "optimized"}},
            "resolvedHardware": {"gpu": {"requests": 1, "model": "MI300X"}},
            "hardwareSummary": "1 x MI300X",
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

fn isvc_api(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("serving.kserve.io", "v1beta1", "InferenceService"),
        "inferenceservices",
    );
    Api::namespaced_with(client.clone(), ns, &ar)
}

/// Waits until exactly one object matches `selector`, returning it.
async fn one<K>(api: &Api<K>, selector: &str, what: &str, timeout: Duration) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let items = api
            .list(&ListParams::default().labels(selector))
            .await
            .unwrap()
            .items;
        if items.len() == 1 {
            return items.into_iter().next().unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for one {what} ({selector}); found {}",
            items.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The job's pod that is running now.
async fn running_pod(client: &kube::Client, ns: &str, job: &str) -> Pod {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selector = format!("job-name={job}");
    let deadline = std::time::Instant::now() + SLOW;
    loop {
        let list = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .unwrap();
        let live = list.items.into_iter().find(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        });
        if let Some(p) = live {
            return p;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no running pod of job {job}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Plays the container: what the job's running pod prints, served by
/// KWOK through the apiserver's `pods/log` like a kubelet would.
async fn pod_prints(client: &kube::Client, ns: &str, job: &str, text: &str) {
    let pod = running_pod(client, ns, job).await;
    let container = pod.spec.as_ref().unwrap().containers[0].name.clone();
    aim_testkit::set_pod_log(client, ns, &pod.name_any(), &container, text).await;
    // Only hand the pod over once its log is really served.
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let deadline = std::time::Instant::now() + WAIT;
    while pods
        .logs(&pod.name_any(), &Default::default())
        .await
        .map_or(true, |t| {
            !t.contains(text.lines().last().unwrap_or_default())
        })
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the log of {} is never served",
            pod.name_any()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The download Job of exactly this artifact object: a recreated artifact
/// has its predecessor's name, and that one's Job may linger until the
/// garbage collector follows the owner reference.
async fn download_job_of(jobs: &Api<Job>, artifact: &AIMArtifact) -> Job {
    let selector = format!(
        "aim.eai.amd.com/cache.name={},aim.eai.amd.com/component=download",
        artifact.name_any()
    );
    let uid = artifact.uid();
    let deadline = std::time::Instant::now() + SLOW;
    loop {
        let mine: Vec<Job> = jobs
            .list(&ListParams::default().labels(&selector))
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|j| {
                j.owner_references()
                    .iter()
                    .any(|o| Some(&o.uid) == uid.as_ref())
            })
            .collect();
        if let [job] = mine.as_slice() {
            return job.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no download Job owned by {} ({uid:?})",
            artifact.name_any()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Plays the kubelet: the job's running pod terminates with `exit_code`
/// (and `message` as its termination message).
async fn finish_pod(client: &kube::Client, ns: &str, job: &str, exit_code: i32, message: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod = running_pod(client, ns, job).await;
    let container = pod.spec.as_ref().unwrap().containers[0].name.clone();
    let now = "2026-01-01T00:00:00Z";
    let status = json!({"status": {
        "phase": if exit_code == 0 { "Succeeded" } else { "Failed" },
        "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": now, "reason": "PodCompleted"}],
        "containerStatuses": [{
            "name": container, "image": pod.spec.as_ref().unwrap().containers[0].image, "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": exit_code, "reason": if exit_code == 0 { "Completed" } else { "Error" }, "message": message, "startedAt": now, "finishedAt": now}},
        }],
    }});
    pods.patch_status(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await
    .unwrap();
}

/// Fails a Job for real: its pods fail until the back-off limit is spent.
async fn fail_job(client: &kube::Client, ns: &str, job: &str) {
    fail_job_printing(client, ns, job, None).await
}

/// Fails a Job for real, each pod printing `log` before it fails.
async fn fail_job_printing(client: &kube::Client, ns: &str, job: &str, log: Option<&str>) {
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let failed = |j: &Job| {
        j.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Failed" && c.status == "True"))
    };
    loop {
        // A Job gone means the operator already acted on its failure (a
        // retry deletes the artifact, and the garbage collector its Job).
        let Some(j) = jobs.get_opt(job).await.unwrap() else {
            return;
        };
        if failed(&j) {
            return;
        }
        if let Some(log) = log {
            pod_prints(client, ns, job, log).await;
        }
        finish_pod(client, ns, job, 1, "download failed").await;
        // Wait until the job controller counted it before failing the next.
        let before = j.status.as_ref().and_then(|s| s.failed).unwrap_or(0);
        let deadline = std::time::Instant::now() + SLOW;
        loop {
            match jobs.get_opt(job).await.unwrap() {
                None => return,
                Some(j)
                    if failed(&j)
                        || j.status.as_ref().and_then(|s| s.failed).unwrap_or(0) > before =>
                {
                    break;
                }
                Some(_) => {}
            }
            assert!(
                std::time::Instant::now() < deadline,
                "job {job} never counted the failure"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Plays the downloader image: patches the artifact status as the
/// namespace's `default` ServiceAccount.
async fn as_downloader(client: &kube::Client, ns: &str, artifact: &str, status: Value) {
    let info = aim_testkit::cluster().await;
    let kc = kube::config::Kubeconfig::read_from(&info.kubeconfig).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    config.auth_info.impersonate = Some(format!("system:serviceaccount:{ns}:default"));
    let sa = kube::Client::try_from(config).unwrap();
    let _ = client;
    Api::<AIMArtifact>::namespaced(sa, ns)
        .patch_status(
            artifact,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": status})),
        )
        .await
        .unwrap_or_else(|e| panic!("the downloader may patch the artifact status: {e}"));
}

/// The ClusterRole the operator binds for downloaders, from the chart.
async fn install_status_updater_role(_client: &kube::Client) {
    aim_testkit::install_chart().await;
}

fn cond(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    ty: &str,
) -> Option<(String, String, String)> {
    conditions
        .iter()
        .find(|c| c.type_ == ty)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

fn artifact_phase(a: &AIMArtifact) -> Option<aim_api::status::ResourcePhase> {
    a.status.as_ref().and_then(|s| s.status)
}

/// A passing test removes its namespace, so its artifacts stop keeping
/// controllers busy in later test binaries. (A failing one keeps it to
/// look at.)
async fn done(client: &kube::Client, ns: &str) {
    aim_testkit::delete_namespace(client, ns).await;
}

async fn the_artifact(client: &kube::Client, ns: &str) -> AIMArtifact {
    one(
        &Api::<AIMArtifact>::namespaced(client.clone(), ns),
        "aim.eai.amd.com/template-created=true",
        "AIMArtifact",
        WAIT,
    )
    .await
}

/// The whole Shared path: the service waits for its cache, the artifact
/// gets a bound volume sized to model + headroom and a download job, the
/// downloader reports progress, and once the job succeeds the service is
/// rendered with the cached model mounted. Deleting the service keeps the
/// Ready shared cache.
#[tokio::test]
async fn shared_cache_downloads_then_the_service_mounts_it_and_the_cache_outlives_it() {
    let (client, ns) = setup("cache-shared").await;
    install_status_updater_role(&client).await;
    let class = storage(&client, &ns, 20, 1).await;
    apply_yaml(&client, &ns, &model_yaml("m")).await.unwrap();
    ready_template(
        &client,
        &ns,
        "t",
        "m",
        json!([{"modelId": "Qwen/Qwen3-32B", "sourceUri": "hf://Qwen/Qwen3-32B", "size": "10Gi"}]),
    )
    .await;
    apply_yaml(
        &client,
        &ns,
        &format!("apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMService\nmetadata: {{name: s}}\nspec:\n  model: {{name: m}}\n  template: {{name: t}}\n  caching: {{mode: Always}}\n  storage: {{defaultStorageClassName: {class}}}\n"),
    )
    .await
    .unwrap();
    let services: Api<AIMService> = Api::namespaced(client.clone(), &ns);
    let caches: Api<AIMTemplateCache> = Api::namespaced(client.clone(), &ns);
    let cache = one(
        &caches,
        "aim.eai.amd.com/service=s",
        "AIMTemplateCache",
        WAIT,
    )
    .await;
    assert_eq!(
        cache.spec.mode,
        Some(aim_api::service::CacheMode::Shared),
        "Always maps to Shared"
    );
    assert!(
        cache.owner_references().is_empty(),
        "a Shared cache has no owner"
    );
    assert_eq!(
        cache.spec.storage_class_name.as_deref(),
        Some(class.as_str())
    );

    let artifact = the_artifact(&client, &ns).await;
    assert!(artifact.owner_references().is_empty());
    assert_eq!(
        artifact.labels()["aim.eai.amd.com/template-cache.name"],
        cache.name_any()
    );
    assert_eq!(artifact.spec.source_uri, "hf://Qwen/Qwen3-32B");

    // No InferenceService while the cache is not Ready.
    let svc = await_object(
        &services,
        "s",
        "CacheReady=False",
        WAIT,
        |s: &AIMService| condition(s, "CacheReady").is_some_and(|c| c.0 == "False"),
    )
    .await;
    assert_ne!(
        svc.status.as_ref().unwrap().status,
        Some(ServicePhase::Running)
    );
    let isvc_name = aim_rules::naming::isvc_name("s", &ns).unwrap();
    assert!(
        isvc_api(&client, &ns)
            .get_opt(&isvc_name)
            .await
            .unwrap()
            .is_none()
    );

    // The volume: 10 Gi + 10 % = 11 Gi, the service's storage class.
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let pvc = one(
        &pvcs,
        &format!("aim.eai.amd.com/cache.name={}", artifact.name_any()),
        "PVC",
        WAIT,
    )
    .await;
    let spec = pvc.spec.as_ref().unwrap();
    assert_eq!(spec.storage_class_name.as_deref(), Some(class.as_str()));
    let requested = aim_rules::gpu::quantity_bytes(
        &spec.resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"],
    )
    .unwrap();
    assert_eq!(requested, 11 * GIB);
    assert_eq!(
        spec.access_modes.as_deref(),
        Some(&["ReadWriteMany".to_string()][..])
    );
    assert_eq!(pvc.labels()["aim.eai.amd.com/cache.type"], "template-cache");

    let rb = await_object(
        &Api::<RoleBinding>::namespaced(client.clone(), &ns),
        "aim-engine-artifact-status-updater",
        "the status-updater RoleBinding",
        WAIT,
        |_| true,
    )
    .await;
    assert_eq!(rb.role_ref.name, "aim-engine-artifact-status-updater");

    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let job = one(
        &jobs,
        &format!(
            "aim.eai.amd.com/cache.name={},aim.eai.amd.com/component=download",
            artifact.name_any()
        ),
        "download Job",
        WAIT,
    )
    .await;
    let pod_spec = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let c = &pod_spec.containers[0];
    assert_eq!(
        c.image.as_deref(),
        Some("ghcr.io/silogen/aim-artifact-downloader:0.2.0")
    );
    assert_eq!(
        c.args.as_deref(),
        Some(&["hf://Qwen/Qwen3-32B".to_string()][..])
    );
    let env: std::collections::BTreeMap<String, String> = c
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect();
    assert_eq!(env["AIM_DOWNLOADER_PROTOCOL"], "XET,HF_TRANSFER");
    assert_eq!(env["STALL_TIMEOUT"], "120");
    assert_eq!(env["EXPECTED_SIZE_BYTES"], (10 * GIB).to_string());
    assert_eq!(env["ARTIFACT_NAME"], artifact.name_any());
    assert_eq!(job.spec.as_ref().unwrap().backoff_limit, Some(2));

    // The downloader reports: falling back from XET to HF_TRANSFER, 40 %.
    as_downloader(
        &client,
        &ns,
        &artifact.name_any(),
        json!({
            "progress": {"totalBytes": 10 * GIB, "downloadedBytes": 4 * GIB, "percentage": 40, "displayPercentage": "40 %"},
            "download": {"protocol": "HF_TRANSFER", "attempt": 2, "totalAttempts": 2, "protocolSequence": "XET,HF_TRANSFER", "message": "XET stalled, falling back"},
        }),
    )
    .await;
    let arts: Api<AIMArtifact> = Api::namespaced(client.clone(), &ns);
    let a = await_object(
        &arts,
        &artifact.name_any(),
        "progress in the condition",
        WAIT,
        |a: &AIMArtifact| {
            a.status
                .as_ref()
                .and_then(|s| cond(&s.conditions, "DownloadComplete"))
                .is_some_and(|c| c.2.contains("HF_TRANSFER") && c.2.contains("40"))
        },
    )
    .await;
    let st = a.status.unwrap();
    assert_eq!(
        st.progress.unwrap().percentage,
        Some(40),
        "the operator keeps the downloader's progress"
    );
    assert_eq!(st.display_size.as_deref(), Some("10 GiB"));
    assert_eq!(st.mode, Some(aim_api::service::CacheMode::Shared));

    finish_pod(&client, &ns, &job.name_any(), 0, "").await;
    let a = await_object(
        &arts,
        &artifact.name_any(),
        "artifact Ready",
        WAIT,
        |a: &AIMArtifact| artifact_phase(a) == Some(aim_api::status::ResourcePhase::Ready),
    )
    .await;
    let st = a.status.unwrap();
    assert_eq!(st.progress.as_ref().unwrap().percentage, Some(100));
    assert_eq!(
        cond(&st.conditions, "DownloadComplete").unwrap().1,
        "Verified"
    );
    assert_eq!(
        st.persistent_volume_claim.as_deref(),
        Some(pvc.name_any().as_str())
    );

    await_phase(&services, "s", ServicePhase::Starting).await;
    await_object(&services, "s", "CacheReady", WAIT, |s: &AIMService| {
        condition(s, "CacheReady").is_some_and(|c| c.0 == "True")
    })
    .await;
    let isvc = await_object(
        &isvc_api(&client, &ns),
        &isvc_name,
        "the InferenceService",
        WAIT,
        |_| true,
    )
    .await;
    let isvc = serde_json::to_value(isvc).unwrap();
    let volumes = isvc["spec"]["predictor"]["volumes"].as_array().unwrap();
    assert!(
        volumes
            .iter()
            .any(|v| v["persistentVolumeClaim"]["claimName"] == pvc.name_any()),
        "the cached model is mounted: {volumes:?}"
    );

    services
        .delete("s", &DeleteParams::default())
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while services.get_opt("s").await.unwrap().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the service was not deleted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        caches.get_opt(&cache.name_any()).await.unwrap().is_some(),
        "a Ready Shared cache outlives its service"
    );
    assert!(arts.get_opt(&artifact.name_any()).await.unwrap().is_some());
    done(&client, &ns).await;
}

/// Dedicated (here through the legacy `Never`): the cache and its artifact
/// are owned, and both go with the service.
#[tokio::test]
async fn dedicated_cache_is_owned_by_the_service_and_goes_with_it() {
    let (client, ns) = setup("cache-dedicated").await;
    let class = storage(&client, &ns, 20, 1).await;
    apply_yaml(&client, &ns, &model_yaml("m")).await.unwrap();
    ready_template(
        &client,
        &ns,
        "t",
        "m",
        json!([{"modelId": "Qwen/Qwen3-32B", "sourceUri": "hf://Qwen/Qwen3-32B", "size": "10Gi"}]),
    )
    .await;
    apply_yaml(
        &client,
        &ns,
        &format!("apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMService\nmetadata: {{name: s}}\nspec:\n  model: {{name: m}}\n  template: {{name: t}}\n  caching: {{mode: Never}}\n  storage: {{defaultStorageClassName: {class}}}\n"),
    )
    .await
    .unwrap();
    let services: Api<AIMService> = Api::namespaced(client.clone(), &ns);
    let svc = services.get("s").await.unwrap();
    let caches: Api<AIMTemplateCache> = Api::namespaced(client.clone(), &ns);
    let cache = one(
        &caches,
        "aim.eai.amd.com/service=s",
        "AIMTemplateCache",
        WAIT,
    )
    .await;
    assert_eq!(
        cache.spec.mode,
        Some(aim_api::service::CacheMode::Dedicated),
        "Never maps to Dedicated"
    );
    assert_eq!(cache.owner_references()[0].uid, svc.uid().unwrap());
    let artifact = the_artifact(&client, &ns).await;
    assert_eq!(artifact.owner_references()[0].uid, cache.uid().unwrap());

    // The mode cannot change afterwards.
    let err = apply_yaml(&client, &ns, "apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMService\nmetadata: {name: s}\nspec:\n  model: {name: m}\n  template: {name: t}\n  caching: {mode: Shared}\n").await.unwrap_err();
    assert!(
        err.api_message().unwrap_or_default().contains("immutable"),
        "{err}"
    );

    services
        .delete("s", &DeleteParams::default())
        .await
        .unwrap();
    let arts: Api<AIMArtifact> = Api::namespaced(client.clone(), &ns);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let left = (
            caches.get_opt(&cache.name_any()).await.unwrap().is_some(),
            arts.get_opt(&artifact.name_any()).await.unwrap().is_some(),
        );
        if left == (false, false) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "cache/artifact survived a Dedicated service: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    done(&client, &ns).await;
}

/// No size in the spec: a check-size job finds it (its answer read from the
/// pod's termination message), and the volume uses the runtime config's
/// storage class and headroom.
#[tokio::test]
async fn unknown_size_is_checked_and_the_volume_uses_the_runtime_config() {
    let (client, ns) = setup("cache-size").await;
    let class = storage(&client, &ns, 20, 1).await;
    apply_yaml(
        &client,
        &ns,
        &format!("apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMRuntimeConfig\nmetadata: {{name: default}}\nspec:\n  storage: {{defaultStorageClassName: {class}, pvcHeadroomPercent: 50}}\n---\napiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMArtifact\nmetadata: {{name: a}}\nspec:\n  sourceUri: hf://Qwen/Qwen3-0.6B\n  modelDownloadImage: registry.local/downloader:test\n"),
    )
    .await
    .unwrap();
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let job = one(
        &jobs,
        "aim.eai.amd.com/cache.name=a,aim.eai.amd.com/component=check-size",
        "check-size Job",
        WAIT,
    )
    .await;
    let c = &job
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0];
    assert_eq!(
        c.image.as_deref(),
        Some("registry.local/downloader:test"),
        "the image is configurable"
    );
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    assert!(
        pvcs.list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "no volume before the size is known"
    );

    finish_pod(
        &client,
        &ns,
        &job.name_any(),
        0,
        "{\"url\":\"hf://Qwen/Qwen3-0.6B\",\"sizeBytes\":2362232012}",
    )
    .await;
    let arts: Api<AIMArtifact> = Api::namespaced(client.clone(), &ns);
    let a = await_object(
        &arts,
        "a",
        "the discovered size",
        WAIT,
        |a: &AIMArtifact| {
            a.status
                .as_ref()
                .and_then(|s| s.discovered_size_bytes)
                .is_some()
        },
    )
    .await;
    let st = a.status.unwrap();
    assert_eq!(st.discovered_size_bytes, Some(2_362_232_012));
    assert_eq!(st.display_size.as_deref(), Some("2.2 GiB"));
    let pvc = one(&pvcs, "aim.eai.amd.com/cache.name=a", "PVC", WAIT).await;
    let spec = pvc.spec.unwrap();
    assert_eq!(spec.storage_class_name.as_deref(), Some(class.as_str()));
    // 2.2 GiB × 1.5 = 3.3 GiB, rounded up to 4 GiB.
    let requested =
        aim_rules::gpu::quantity_bytes(&spec.resources.unwrap().requests.unwrap()["storage"])
            .unwrap();
    assert_eq!(requested, 4 * GIB);
    let a = await_object(&arts, "a", "headroom in status", WAIT, |a: &AIMArtifact| {
        a.status.as_ref().and_then(|s| s.headroom_percent).is_some()
    })
    .await;
    assert_eq!(a.status.unwrap().headroom_percent, Some(50));
    done(&client, &ns).await;
}

/// Bad input names the field, and leaves no volume behind.
#[tokio::test]
async fn bad_input_names_the_field_and_creates_no_volume() {
    let (client, ns) = setup("cache-bad").await;
    apply_yaml(
        &client,
        &ns,
        "apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMArtifact\nmetadata: {name: bad-size}\nspec: {sourceUri: hf://Qwen/Qwen3-0.6B, size: lots}\n---\napiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMArtifact\nmetadata: {name: bad-class}\nspec: {sourceUri: hf://Qwen/Qwen3-0.6B, size: 1Gi, storageClassName: no-such-class}\n---\napiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMArtifact\nmetadata: {name: bad-uri}\nspec: {sourceUri: hf://Qwen, size: 1Gi}\n---\napiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMRuntimeConfig\nmetadata: {name: default}\nspec:\n  storage: {defaultStorageClassName: no-such-default-class}\n---\napiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMArtifact\nmetadata: {name: bad-default-class}\nspec: {sourceUri: hf://Qwen/Qwen3-0.6B, size: 1Gi}\n",
    )
    .await
    .unwrap();
    let arts: Api<AIMArtifact> = Api::namespaced(client.clone(), &ns);
    for (name, reason, field) in [
        ("bad-size", "InvalidSize", "spec.size"),
        ("bad-class", "StorageClassNotFound", "spec.storageClassName"),
        ("bad-uri", "InvalidSourceUri", "spec.sourceUri"),
        (
            "bad-default-class",
            "StorageClassNotFound",
            "storage.defaultStorageClassName",
        ),
    ] {
        let a = await_object(&arts, name, "Failed", WAIT, |a: &AIMArtifact| {
            artifact_phase(a) == Some(aim_api::status::ResourcePhase::Failed)
        })
        .await;
        let (status, r, message) = cond(&a.status.unwrap().conditions, "Ready").unwrap();
        assert_eq!(
            (status.as_str(), r.as_str()),
            ("False", "InvalidSpec"),
            "{name}"
        );
        let a = arts.get(name).await.unwrap();
        let component = a
            .status
            .unwrap()
            .conditions
            .into_iter()
            .find(|c| c.reason == reason)
            .unwrap_or_else(|| panic!("{name}: no condition with reason {reason}"));
        assert!(
            component.message.contains(field),
            "{name}: {}",
            component.message
        );
        assert!(
            message.contains(field),
            "{name}: Ready names the field: {message}"
        );
    }
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    assert!(
        pvcs.list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "no orphaned PVC"
    );
    done(&client, &ns).await;
}

/// A failing download fails the artifact, the cache and the service's
/// CacheReady; the service recreates the cache once (retryAttempts), and
/// after a second failure it is Degraded with a message saying what to do.
#[tokio::test]
async fn failed_download_is_retried_once_then_the_service_is_degraded() {
    let (client, ns) = setup("cache-retry").await;
    install_status_updater_role(&client).await;
    let class = storage(&client, &ns, 20, 2).await;
    apply_yaml(&client, &ns, &model_yaml("m")).await.unwrap();
    ready_template(
        &client,
        &ns,
        "t",
        "m",
        json!([{"modelId": "Qwen/Qwen3-32B", "sourceUri": "hf://Qwen/Qwen3-32B", "size": "10Gi"}]),
    )
    .await;
    apply_yaml(
        &client,
        &ns,
        &format!("apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMService\nmetadata: {{name: s}}\nspec:\n  model: {{name: m}}\n  template: {{name: t}}\n  storage: {{defaultStorageClassName: {class}}}\n"),
    )
    .await
    .unwrap();
    let services: Api<AIMService> = Api::namespaced(client.clone(), &ns);
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let arts: Api<AIMArtifact> = Api::namespaced(client.clone(), &ns);

    let first = the_artifact(&client, &ns).await;
    let job = one(
        &jobs,
        &format!(
            "aim.eai.amd.com/cache.name={},aim.eai.amd.com/component=download",
            first.name_any()
        ),
        "download Job",
        WAIT,
    )
    .await;
    as_downloader(&client, &ns, &first.name_any(), json!({"download": {"protocol": "HF_TRANSFER", "attempt": 2, "totalAttempts": 2, "message": "401 Unauthorized"}})).await;
    fail_job(&client, &ns, &job.name_any()).await;

    await_object(&services, "s", "one retry", SLOW, |s: &AIMService| {
        s.status
            .as_ref()
            .and_then(|st| st.cache.as_ref())
            .and_then(|c| c.retry_attempts)
            == Some(1)
    })
    .await;
    // A fresh artifact (new UID) with a fresh job.
    let deadline = std::time::Instant::now() + SLOW;
    let second = loop {
        let a = the_artifact(&client, &ns).await;
        if a.uid() != first.uid() {
            break a;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the failed artifact was not recreated"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let job = download_job_of(&jobs, &second).await;
    fail_job(&client, &ns, &job.name_any()).await;
    let a = await_object(
        &arts,
        &second.name_any(),
        "artifact Failed",
        SLOW,
        |a: &AIMArtifact| artifact_phase(a) == Some(aim_api::status::ResourcePhase::Failed),
    )
    .await;
    assert_eq!(
        a.status
            .unwrap()
            .progress
            .and_then(|p| p.display_percentage)
            .as_deref(),
        Some("N/A")
    );

    let svc = await_phase(&services, "s", ServicePhase::Degraded).await;
    let (status, reason, message) = condition(&svc, "CacheReady").unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("False", "CacheFailed"));
    assert!(message.contains("after 1 retry"), "{message}");
    assert!(
        message.contains("hf://Qwen/Qwen3-32B"),
        "says what failed: {message}"
    );
    assert!(
        message.contains("delete AIMTemplateCache"),
        "says what to do: {message}"
    );
    assert_eq!(svc.status.unwrap().cache.unwrap().retry_attempts, Some(1));
    done(&client, &ns).await;
}

/// Deleting a namespace with a not-Ready cache (finalizer and all) is never
/// blocked.
#[tokio::test]
async fn namespace_deletion_is_never_blocked_by_cache_finalizers() {
    let (client, ns) = setup("cache-nsdel").await;
    apply_yaml(&client, &ns, &model_yaml("m")).await.unwrap();
    ready_template(
        &client,
        &ns,
        "t",
        "m",
        json!([{"modelId": "Qwen/Qwen3-32B", "sourceUri": "hf://Qwen/Qwen3-32B", "size": "10Gi"}]),
    )
    .await;
    apply_yaml(&client, &ns, "apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMTemplateCache\nmetadata: {name: tc}\nspec: {templateName: t, templateScope: Namespace}\n").await.unwrap();
    let caches: Api<AIMTemplateCache> = Api::namespaced(client.clone(), &ns);
    await_object(
        &caches,
        "tc",
        "the finalizer",
        WAIT,
        |c: &AIMTemplateCache| {
            c.finalizers()
                .iter()
                .any(|f| f == "aim.eai.amd.com/artifactcleanup")
        },
    )
    .await;
    the_artifact(&client, &ns).await;
    Api::<Namespace>::all(client.clone())
        .delete(&ns, &DeleteParams::default())
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + SLOW;
    while Api::<Namespace>::all(client.clone())
        .get_opt(&ns)
        .await
        .unwrap()
        .is_some()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "namespace {ns} is stuck terminating"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A non-Ready cache deleted on its own takes its unfinished artifacts
/// with it (the artifactcleanup finalizer), even Shared unowned ones.
#[tokio::test]
async fn deleting_a_cache_removes_its_unfinished_artifacts() {
    let (client, ns) = setup("cache-cleanup").await;
    apply_yaml(&client, &ns, &model_yaml("m")).await.unwrap();
    ready_template(
        &client,
        &ns,
        "t",
        "m",
        json!([{"modelId": "Qwen/Qwen3-32B", "sourceUri": "hf://Qwen/Qwen3-32B", "size": "10Gi"}]),
    )
    .await;
    apply_yaml(&client, &ns, "apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMTemplateCache\nmetadata: {name: tc}\nspec: {templateName: t, templateScope: Namespace}\n").await.unwrap();
    let artifact = the_artifact(&client, &ns).await;
    assert!(artifact.owner_references().is_empty());
    let caches: Api<AIMTemplateCache> = Api::namespaced(client.clone(), &ns);
    await_object(
        &caches,
        "tc",
        "the finalizer",
        WAIT,
        |c: &AIMTemplateCache| !c.finalizers().is_empty(),
    )
    .await;
    caches.delete("tc", &DeleteParams::default()).await.unwrap();
    let arts: Api<AIMArtifact> = Api::namespaced(client.clone(), &ns);
    let deadline = std::time::Instant::now() + WAIT;
    while arts.get_opt(&artifact.name_any()).await.unwrap().is_some()
        || caches.get_opt("tc").await.unwrap().is_some()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the unfinished artifact or the cache survived"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    done(&client, &ns).await;
}

/// The artifact's `<type>` condition as (status, reason, message).
async fn artifact_condition(
    arts: &Api<AIMArtifact>,
    name: &str,
    ty: &str,
    what: &str,
    timeout: Duration,
    accept: impl Fn(&(String, String, String)) -> bool,
) -> (String, String, String) {
    let a = await_object(arts, name, what, timeout, |a: &AIMArtifact| {
        a.status
            .as_ref()
            .and_then(|s| cond(&s.conditions, ty))
            .is_some_and(|c| accept(&c))
    })
    .await;
    cond(&a.status.unwrap().conditions, ty).unwrap()
}

fn no_pvcs(pvcs: Vec<PersistentVolumeClaim>) {
    assert!(
        pvcs.is_empty(),
        "no orphaned PVC: {:?}",
        pvcs.iter().map(|p| p.name_any()).collect::<Vec<_>>()
    );
}

/// The real check-size image prints its answer on stdout. With no
/// termination message, the operator reads it from the pod's log through
/// the apiserver, as it would from a real kubelet.
#[tokio::test]
async fn check_size_answer_is_read_from_the_pod_log() {
    let (client, ns) = setup("cache-sizelog").await;
    let class = storage(&client, &ns, 20, 1).await;
    apply_yaml(
        &client,
        &ns,
        &format!("apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMArtifact\nmetadata: {{name: a}}\nspec: {{sourceUri: hf://Qwen/Qwen3-0.6B, storageClassName: {class}}}\n"),
    )
    .await
    .unwrap();
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let job = one(
        &jobs,
        "aim.eai.amd.com/cache.name=a,aim.eai.amd.com/component=check-size",
        "check-size Job",
        WAIT,
    )
    .await;
    pod_prints(
        &client,
        &ns,
        &job.name_any(),
        "Resolving hf://Qwen/Qwen3-0.6B\nListing 12 files\n{\"url\":\"hf://Qwen/Qwen3-0.6B\",\"sizeBytes\":5368709120}",
    )
    .await;
    finish_pod(&client, &ns, &job.name_any(), 0, "").await;
    let arts: Api<AIMArtifact> = Api::namespaced(client.clone(), &ns);
    let a = await_object(
        &arts,
        "a",
        "the size from the log",
        WAIT,
        |a: &AIMArtifact| {
            a.status
                .as_ref()
                .and_then(|s| s.discovered_size_bytes)
                .is_some()
        },
    )
    .await;
    let st = a.status.unwrap();
    assert_eq!(st.discovered_size_bytes, Some(5 * GIB as i64));
    assert_eq!(st.display_size.as_deref(), Some("5 GiB"));
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let pvc = one(&pvcs, "aim.eai.amd.com/cache.name=a", "PVC", WAIT).await;
    // 5 GiB + 10 % = 5.5 GiB, rounded up to 6 GiB.
    let requested = aim_rules::gpu::quantity_bytes(
        &pvc.spec.unwrap().resources.unwrap().requests.unwrap()["storage"],
    )
    .unwrap();
    assert_eq!(requested, 6 * GIB);
    done(&client, &ns).await;
}

/// A check-size answer that is not the expected JSON fails the output
/// component, quoting what was printed, and no volume is made.
#[tokio::test]
async fn unparseable_check_size_output_fails_and_creates_no_volume() {
    let (client, ns) = setup("cache-sizebad").await;
    apply_yaml(
        &client,
        &ns,
        "apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMArtifact\nmetadata: {name: a}\nspec: {sourceUri: hf://Qwen/Qwen3-0.6B}\n",
    )
    .await
    .unwrap();
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let job = one(
        &jobs,
        "aim.eai.amd.com/cache.name=a,aim.eai.amd.com/component=check-size",
        "check-size Job",
        WAIT,
    )
    .await;
    pod_prints(
        &client,
        &ns,
        &job.name_any(),
        "Resolving hf://Qwen/Qwen3-0.6B\nsize: about 1.2 GB",
    )
    .await;
    finish_pod(&client, &ns, &job.name_any(), 0, "").await;
    let arts: Api<AIMArtifact> = Api::namespaced(client.clone(), &ns);
    let (status, reason, message) = artifact_condition(
        &arts,
        "a",
        "CheckSizeOutputReady",
        "CheckSizeOutput failed",
        WAIT,
        |c| c.0 == "False" && c.1 != "CheckingSize",
    )
    .await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "InvalidSizeOutput")
    );
    assert!(
        message.contains("size: about 1.2 GB"),
        "names what was printed: {message}"
    );
    let a = await_object(&arts, "a", "Failed", WAIT, |a: &AIMArtifact| {
        artifact_phase(a) == Some(aim_api::status::ResourcePhase::Failed)
    })
    .await;
    assert_eq!(a.status.unwrap().discovered_size_bytes, None);
    no_pvcs(
        Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
            .list(&Default::default())
            .await
            .unwrap()
            .items,
    );
    done(&client, &ns).await;
}

/// A download whose pods fail saying the source refused the credentials is
/// an AuthError, with advice on which credentials to set, all the way up
/// to the artifact's Ready condition.
#[tokio::test]
async fn failed_download_refused_in_its_log_is_an_auth_error() {
    let (client, ns) = setup("cache-auth").await;
    install_status_updater_role(&client).await;
    let class = storage(&client, &ns, 20, 1).await;
    apply_yaml(
        &client,
        &ns,
        &format!("apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMArtifact\nmetadata: {{name: a}}\nspec: {{sourceUri: hf://meta-llama/Llama-3.1-8B, size: 1Gi, storageClassName: {class}}}\n"),
    )
    .await
    .unwrap();
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let job = one(
        &jobs,
        "aim.eai.amd.com/cache.name=a,aim.eai.amd.com/component=download",
        "download Job",
        WAIT,
    )
    .await;
    fail_job_printing(
        &client,
        &ns,
        &job.name_any(),
        Some("Protocol sequence: XET,HF_TRANSFER\nXET: starting\nhuggingface_hub.errors.GatedRepoError: 403 Client Error. Cannot access gated repo for url https://huggingface.co/meta-llama/Llama-3.1-8B"),
    )
    .await;
    let arts: Api<AIMArtifact> = Api::namespaced(client.clone(), &ns);
    let (status, reason, message) = artifact_condition(
        &arts,
        "a",
        "DownloadJobReady",
        "the download diagnosed",
        SLOW,
        |c| c.0 == "False" && c.1 != "Downloading",
    )
    .await;
    assert_eq!((status.as_str(), reason.as_str()), ("False", "AuthError"));
    assert!(
        message.contains("403 Client Error"),
        "quotes the log: {message}"
    );
    assert!(message.contains("HF_TOKEN"), "says what to do: {message}");
    let a = arts.get("a").await.unwrap();
    assert_eq!(
        artifact_phase(&a),
        Some(aim_api::status::ResourcePhase::Failed)
    );
    let (_, ready_reason, ready_message) = cond(&a.status.unwrap().conditions, "Ready").unwrap();
    assert_eq!(ready_reason, "AuthError");
    assert!(ready_message.contains("HF_TOKEN"), "{ready_message}");
    done(&client, &ns).await;
}

/// The downloader stops moving: once `status.progress.downloadedBytes`
/// (which it writes itself) has not changed for STALL_TIMEOUT, the
/// artifact says DownloadStalled, the cache and the service repeat it, and
/// nothing is killed. When bytes move again the stall is over.
#[tokio::test]
async fn a_stalled_download_is_reported_up_to_the_service_without_killing_it() {
    let (client, ns) = setup("cache-stall").await;
    install_status_updater_role(&client).await;
    let class = storage(&client, &ns, 20, 1).await;
    apply_yaml(&client, &ns, &model_yaml("m")).await.unwrap();
    ready_template(
        &client,
        &ns,
        "t",
        "m",
        json!([{"modelId": "Qwen/Qwen3-32B", "sourceUri": "hf://Qwen/Qwen3-32B", "size": "10Gi"}]),
    )
    .await;
    apply_yaml(
        &client,
        &ns,
        &format!("apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMRuntimeConfig\nmetadata: {{name: default}}\nspec:\n  env: [{{name: STALL_TIMEOUT, value: \"4\"}}]\n---\napiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMService\nmetadata: {{name: s}}\nspec:\n  model: {{name: m}}\n  template: {{name: t}}\n  storage: {{defaultStorageClassName: {class}}}\n"),
    )
    .await
    .unwrap();
    let artifact = the_artifact(&client, &ns).await;
    let name = artifact.name_any();
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let job = one(
        &jobs,
        &format!("aim.eai.amd.com/cache.name={name},aim.eai.amd.com/component=download"),
        "download Job",
        WAIT,
    )
    .await;
    let env = &job
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .env;
    assert!(
        env.iter()
            .flatten()
            .any(|e| e.name == "STALL_TIMEOUT" && e.value.as_deref() == Some("4")),
        "the runtime config's STALL_TIMEOUT reaches the downloader"
    );
    running_pod(&client, &ns, &job.name_any()).await;
    as_downloader(
        &client,
        &ns,
        &name,
        json!({"progress": {"totalBytes": 10 * GIB, "downloadedBytes": 3 * GIB, "percentage": 30, "displayPercentage": "30 %"}}),
    )
    .await;
    let arts: Api<AIMArtifact> = Api::namespaced(client.clone(), &ns);
    let started = std::time::Instant::now();
    let (_, reason, message) = artifact_condition(
        &arts,
        &name,
        "DownloadStalled",
        "DownloadStalled=True",
        WAIT,
        |c| c.0 == "True",
    )
    .await;
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "not before the timeout: {:?}",
        started.elapsed()
    );
    assert_eq!(reason, "NoProgress");
    assert!(
        message.contains("STALL_TIMEOUT is 4 s") && message.contains("3 GiB"),
        "{message}"
    );
    let caches: Api<AIMTemplateCache> = Api::namespaced(client.clone(), &ns);
    await_object(
        &caches,
        &artifact.labels()["aim.eai.amd.com/template-cache.name"],
        "the cache repeats it",
        WAIT,
        |c: &AIMTemplateCache| {
            c.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.message.contains("No download progress"))
            })
        },
    )
    .await;
    let services: Api<AIMService> = Api::namespaced(client.clone(), &ns);
    let svc = await_object(
        &services,
        "s",
        "the service repeats it",
        WAIT,
        |s: &AIMService| {
            condition(s, "CacheReady")
                .is_some_and(|c| c.1 == "CacheDegraded" && c.2.contains("No download progress"))
        },
    )
    .await;
    assert_eq!(svc.status.unwrap().status, Some(ServicePhase::Degraded));
    // Nothing was killed: the same job, its pod still running.
    let still = jobs.get(&job.name_any()).await.unwrap();
    assert_eq!(still.uid(), job.uid());
    assert!(still.metadata.deletion_timestamp.is_none());
    running_pod(&client, &ns, &job.name_any()).await;

    as_downloader(
        &client,
        &ns,
        &name,
        json!({"progress": {"totalBytes": 10 * GIB, "downloadedBytes": 4 * GIB, "percentage": 40, "displayPercentage": "40 %"}}),
    )
    .await;
    let (_, reason, _) = artifact_condition(
        &arts,
        &name,
        "DownloadStalled",
        "DownloadStalled=False",
        WAIT,
        |c| c.0 == "False",
    )
    .await;
    assert_eq!(reason, "NotStalled");
    done(&client, &ns).await;
}

/// Two services share one cache. When its download fails, the retry
/// recreates the failed artifact and keeps the cache (same object), so the
/// other service never loses it; once the new download succeeds both
/// services have their cache ready.
#[tokio::test]
async fn retrying_a_shared_cache_keeps_it_for_the_other_services() {
    let (client, ns) = setup("cache-shared-retry").await;
    install_status_updater_role(&client).await;
    let class = storage(&client, &ns, 20, 2).await;
    apply_yaml(&client, &ns, &model_yaml("m")).await.unwrap();
    ready_template(
        &client,
        &ns,
        "t",
        "m",
        json!([{"modelId": "Qwen/Qwen3-32B", "sourceUri": "hf://Qwen/Qwen3-32B", "size": "10Gi"}]),
    )
    .await;
    for s in ["s1", "s2"] {
        apply_yaml(
            &client,
            &ns,
            &format!("apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMService\nmetadata: {{name: {s}}}\nspec:\n  model: {{name: m}}\n  template: {{name: t}}\n  storage: {{defaultStorageClassName: {class}}}\n"),
        )
        .await
        .unwrap();
    }
    let services: Api<AIMService> = Api::namespaced(client.clone(), &ns);
    let caches: Api<AIMTemplateCache> = Api::namespaced(client.clone(), &ns);
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let first = the_artifact(&client, &ns).await;
    let cache_name = first.labels()["aim.eai.amd.com/template-cache.name"].clone();
    let cache = caches.get(&cache_name).await.unwrap();
    assert_eq!(
        caches.list(&Default::default()).await.unwrap().items.len(),
        1,
        "one cache for both services"
    );
    let job = one(
        &jobs,
        &format!(
            "aim.eai.amd.com/cache.name={},aim.eai.amd.com/component=download",
            first.name_any()
        ),
        "download Job",
        WAIT,
    )
    .await;
    fail_job(&client, &ns, &job.name_any()).await;

    let retried = |s: &AIMService| {
        s.status
            .as_ref()
            .and_then(|st| st.cache.as_ref())
            .and_then(|c| c.retry_attempts)
            == Some(1)
    };
    let deadline = std::time::Instant::now() + SLOW;
    let second = loop {
        let a = the_artifact(&client, &ns).await;
        if a.uid() != first.uid() {
            break a;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the failed artifact was not recreated"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // The service records its retry right after deleting the artifact.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let s1 = services.get("s1").await.unwrap();
        let s2 = services.get("s2").await.unwrap();
        if retried(&s1) || retried(&s2) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no service spent its retry"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let now = caches.get(&cache_name).await.unwrap();
    assert_eq!(now.uid(), cache.uid(), "the shared cache was kept");
    assert!(now.metadata.deletion_timestamp.is_none());

    let job = download_job_of(&jobs, &second).await;
    finish_pod(&client, &ns, &job.name_any(), 0, "").await;
    for s in ["s1", "s2"] {
        await_object(&services, s, "CacheReady", WAIT, |svc: &AIMService| {
            condition(svc, "CacheReady").is_some_and(|c| c.0 == "True")
        })
        .await;
    }
    assert_eq!(caches.get(&cache_name).await.unwrap().uid(), cache.uid());
    done(&client, &ns).await;
}

/// A service running a cluster-scoped template with model sources gets a
/// cache for it like for a namespaced one, and mounts it once Ready.
#[tokio::test]
async fn a_cluster_template_with_model_sources_gets_its_cache() {
    let (client, ns) = setup("cache-cluster").await;
    install_status_updater_role(&client).await;
    let class = storage(&client, &ns, 20, 1).await;
    let model = format!("cm-{ns}");
    let template = format!("ct-{ns}");
    apply_yaml(
        &client,
        &ns,
        &format!(
            "apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMClusterModel\nmetadata: {{name: {model}}}\nspec:\n  image: amdenterpriseai/aim-qwen-qwen3-32b:0.8.5\n  discovery: {{createServiceTemplates: false}}\n  imageMetadata:\n    model: {{canonicalName: Qwen/Qwen3-32B}}\n---\napiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMClusterServiceTemplate\nmetadata:\n  name: {template}\n  annotations: {{aim.eai.amd.com/reconciliation-paused: \"true\"}}\nspec:\n  modelName: {model}\n  metric: latency\n  precision: fp8\n  hardware: {{gpu: {{requests: 1, model: MI300X}}}}\n"
        ),
    )
    .await
    .unwrap();
    let cluster_templates: Api<aim_api::AIMClusterServiceTemplate> = Api::all(client.clone());
    cluster_templates
        .patch_status(
            &template,
            &PatchParams::apply("aim-test-discovery").force(),
            &Patch::Apply(&json!({
                "apiVersion": "aim.eai.amd.com/v1alpha1", "kind": "AIMClusterServiceTemplate",
                "status": {
                    "status": "Ready",
                    "modelSources": [{"modelId": "Qwen/Qwen3-32B", "sourceUri": "hf://Qwen/Qwen3-32B", "size": "10Gi"}],
                    "profile": {"metadata": {"engine": "vllm", "gpu": "MI300X", "gpuCount": 1, "metric": "latency", "precision": "fp8", "type": "optimized"}},
                    "resolvedHardware": {"gpu": {"requests": 1, "model": "MI300X"}},
                    "hardwareSummary": "1 x MI300X",
                }
            })),
        )
        .await
        .unwrap();
    apply_yaml(
        &client,
        &ns,
        &format!("apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMService\nmetadata: {{name: s}}\nspec:\n  model: {{name: {model}}}\n  template: {{name: {template}}}\n  storage: {{defaultStorageClassName: {class}}}\n"),
    )
    .await
    .unwrap();
    let caches: Api<AIMTemplateCache> = Api::namespaced(client.clone(), &ns);
    let cache = one(
        &caches,
        "aim.eai.amd.com/service=s",
        "AIMTemplateCache",
        WAIT,
    )
    .await;
    assert_eq!(cache.spec.template_name, template);
    assert_eq!(
        cache.spec.template_scope,
        aim_api::common::TemplateScope::Cluster
    );
    let artifact = the_artifact(&client, &ns).await;
    assert_eq!(artifact.spec.source_uri, "hf://Qwen/Qwen3-32B");
    assert_eq!(
        artifact.labels()["aim.eai.amd.com/template.scope"],
        "Cluster"
    );
    let cache = await_object(
        &caches,
        &cache.name_any(),
        "the resolved kind",
        WAIT,
        |c: &AIMTemplateCache| {
            c.status
                .as_ref()
                .and_then(|s| s.resolved_template_kind.as_deref())
                == Some("AIMClusterServiceTemplate")
        },
    )
    .await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let job = one(
        &jobs,
        &format!(
            "aim.eai.amd.com/cache.name={},aim.eai.amd.com/component=download",
            artifact.name_any()
        ),
        "download Job",
        WAIT,
    )
    .await;
    finish_pod(&client, &ns, &job.name_any(), 0, "").await;
    let services: Api<AIMService> = Api::namespaced(client.clone(), &ns);
    let svc = await_object(&services, "s", "CacheReady", WAIT, |s: &AIMService| {
        condition(s, "CacheReady").is_some_and(|c| c.0 == "True")
    })
    .await;
    assert_eq!(
        svc.status
            .unwrap()
            .cache
            .and_then(|c| c.template_cache_ref)
            .and_then(|r| r.name),
        Some(cache.name_any())
    );
    let isvc_name = aim_rules::naming::isvc_name("s", &ns).unwrap();
    let isvc = await_object(
        &isvc_api(&client, &ns),
        &isvc_name,
        "the InferenceService",
        WAIT,
        |_| true,
    )
    .await;
    let isvc = serde_json::to_value(isvc).unwrap();
    assert!(
        isvc["spec"]["predictor"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["persistentVolumeClaim"]["claimName"]
                .as_str()
                .is_some_and(|c| !c.is_empty())),
        "the cached model is mounted"
    );
    done(&client, &ns).await;
    cluster_templates
        .delete(&template, &DeleteParams::default())
        .await
        .unwrap();
    Api::<aim_api::AIMClusterModel>::all(client.clone())
        .delete(&model, &DeleteParams::default())
        .await
        .unwrap();
}

/// Two services wait for one Shared cache that is still downloading.
/// Deleting the service whose name the cache's label carries keeps the
/// cache for the other; deleting the last one cleans the cache up.
#[tokio::test]
async fn deleting_one_of_two_services_keeps_their_unready_shared_cache() {
    let (client, ns) = setup("cache-shared-delete").await;
    install_status_updater_role(&client).await;
    let class = storage(&client, &ns, 20, 1).await;
    apply_yaml(&client, &ns, &model_yaml("m")).await.unwrap();
    ready_template(
        &client,
        &ns,
        "t",
        "m",
        json!([{"modelId": "Qwen/Qwen3-32B", "sourceUri": "hf://Qwen/Qwen3-32B", "size": "10Gi"}]),
    )
    .await;
    for s in ["s1", "s2"] {
        apply_yaml(
            &client,
            &ns,
            &format!("apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMService\nmetadata: {{name: {s}}}\nspec:\n  model: {{name: m}}\n  template: {{name: t}}\n  storage: {{defaultStorageClassName: {class}}}\n"),
        )
        .await
        .unwrap();
    }
    let services: Api<AIMService> = Api::namespaced(client.clone(), &ns);
    let caches: Api<AIMTemplateCache> = Api::namespaced(client.clone(), &ns);
    // Both wait on the same cache; its name is in their CacheReady message.
    let artifact = the_artifact(&client, &ns).await;
    let cache_name = artifact.labels()["aim.eai.amd.com/template-cache.name"].clone();
    for s in ["s1", "s2"] {
        await_object(
            &services,
            s,
            "waiting for the cache",
            WAIT,
            |svc: &AIMService| {
                condition(svc, "CacheReady")
                    .is_some_and(|c| c.0 == "False" && c.2.contains(&cache_name))
            },
        )
        .await;
    }
    assert_eq!(
        caches.list(&Default::default()).await.unwrap().items.len(),
        1
    );
    let names = [cache_name];
    let cache = caches.get(&names[0]).await.unwrap();
    assert_ne!(
        cache.status.as_ref().and_then(|s| s.status),
        Some(aim_api::status::ResourcePhase::Ready),
        "the download has not finished"
    );
    let labelled = cache.labels()["aim.eai.amd.com/service"].clone();
    let other = if labelled == "s1" { "s2" } else { "s1" };
    services
        .delete(&labelled, &DeleteParams::default())
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while services.get_opt(&labelled).await.unwrap().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "{labelled} never went away"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let kept = caches.get(&names[0]).await.unwrap();
    assert_eq!(
        kept.uid(),
        cache.uid(),
        "the cache {other} waits for was kept"
    );
    assert!(kept.metadata.deletion_timestamp.is_none());

    // With no one left waiting, the unfinished cache goes with the last service.
    services
        .delete(other, &DeleteParams::default())
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while caches
        .get_opt(&names[0])
        .await
        .unwrap()
        .is_some_and(|c| c.uid() == cache.uid())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the unready cache outlived its last service"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    done(&client, &ns).await;
}
