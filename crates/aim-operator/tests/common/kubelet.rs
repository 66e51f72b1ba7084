//! The kubelet's part in tests: KWOK runs pods but leaves Job pods running
//! (see the dev cluster's stages), so a test ends them the way a kubelet
//! would, by writing the pod's terminal status. The real job controller then
//! completes or fails the Job.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;

/// The running, not-deleted pod of Job `job`, waiting up to `timeout`.
pub async fn running_pod_of_job(
    client: &kube::Client,
    ns: &str,
    job: &str,
    timeout: Duration,
) -> Pod {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selector = format!("job-name={job}");
    let deadline = Instant::now() + timeout;
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
            Instant::now() < deadline,
            "no running pod of job {ns}/{job}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Terminates `pod`'s first container with `exit_code`.
pub async fn terminate(client: &kube::Client, pod: &Pod, exit_code: i32) {
    let ns = pod.namespace().unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let spec = pod.spec.as_ref().unwrap();
    let now = "2026-01-01T00:00:00Z";
    let status = json!({"status": {
        "phase": if exit_code == 0 { "Succeeded" } else { "Failed" },
        "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": now, "reason": "PodCompleted"}],
        "containerStatuses": [{
            "name": spec.containers[0].name, "image": spec.containers[0].image, "imageID": "",
            "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": exit_code, "reason": if exit_code == 0 { "Completed" } else { "Error" }, "startedAt": now, "finishedAt": now}},
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
