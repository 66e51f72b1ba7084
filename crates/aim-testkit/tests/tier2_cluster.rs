//! Tier 2: the local cluster behaves like a real one. The scheduler places
//! pods on KWOK nodes, KWOK runs them with loopback pod IPs, the garbage
//! collector and the namespace controller clean up, and GPU nodes carry the
//! labels AIM's GPU detection reads.

use std::net::Ipv4Addr;
use std::time::Duration;

use aim_testkit::{apply_yaml, await_object, client, namespace};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn gpu_and_cpu_nodes_are_ready_with_amd_labels() {
    let client = client().await;
    let nodes: Api<Node> = Api::all(client);
    let list = nodes
        .list(&ListParams::default().labels("aim.eai.amd.com/dev-cluster=true"))
        .await
        .unwrap();
    let gpu: Vec<&Node> = list
        .items
        .iter()
        .filter(|n| {
            n.metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key("amd.com/gpu.device-id"))
        })
        .collect();
    assert!(gpu.len() >= 2, "expected GPU nodes");
    assert!(list.items.len() > gpu.len(), "expected a CPU-only node too");
    for node in &list.items {
        let status = node.status.as_ref().unwrap();
        let ready = status
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        assert!(ready, "{:?} not Ready", node.metadata.name);
    }
    let allocatable = gpu[0]
        .status
        .as_ref()
        .unwrap()
        .allocatable
        .as_ref()
        .unwrap();
    assert_eq!(allocatable["amd.com/gpu"].0, "8");
    assert_eq!(
        gpu[0].metadata.labels.as_ref().unwrap()["amd.com/gpu.vram"],
        "192G"
    );
}

fn deployment(name: &str, replicas: u32, gpus: u32) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
      - name: main
        image: example.invalid/sim:1
        resources:
          limits: {{"amd.com/gpu": "{gpus}"}}
          requests: {{cpu: "1", "amd.com/gpu": "{gpus}"}}
"#
    )
}

async fn running_pods(client: &kube::Client, ns: &str, app: &str, want: usize) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let list = pods
            .list(&ListParams::default().labels(&format!("app={app}")))
            .await
            .unwrap();
        let running: Vec<Pod> = list
            .items
            .into_iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .collect();
        if running.len() == want {
            return running;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {want} pods of {app} running after {WAIT:?}\n{}",
            running.len(),
            aim_testkit::events_of(client, ns).await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn deployment_pods_run_on_gpu_nodes_with_loopback_ips() {
    let client = client().await;
    let ns = namespace(&client, "pods").await;
    apply_yaml(&client, &ns, &deployment("sim", 3, 1))
        .await
        .unwrap();
    let pods = running_pods(&client, &ns, "sim", 3).await;
    let name = std::env::var("AIM_TEST_CLUSTER").unwrap_or_else(|_| "test".into());
    let cidr = aim_devcluster::default_pod_cidr(&name);
    let block = cidr.trim_end_matches("0.0/16");
    for pod in &pods {
        let status = pod.status.as_ref().unwrap();
        let ip: Ipv4Addr = status.pod_ip.as_deref().unwrap().parse().unwrap();
        assert!(ip.is_loopback(), "pod IP {ip} must be on loopback");
        assert!(
            ip.to_string().starts_with(block),
            "pod IP {ip} must come from the cluster's {cidr}"
        );
        let node = pod.spec.as_ref().unwrap().node_name.clone().unwrap();
        assert!(node.starts_with("gpu-"), "a GPU pod landed on {node}");
        let ready = status
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        assert!(ready);
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    await_object(&deployments, "sim", "3 available replicas", WAIT, |d| {
        d.status.as_ref().and_then(|s| s.available_replicas) == Some(3)
    })
    .await;
}

#[tokio::test]
async fn pods_asking_for_more_gpus_than_any_node_has_stay_pending() {
    let client = client().await;
    let ns = namespace(&client, "nogpu").await;
    apply_yaml(&client, &ns, &deployment("huge", 1, 64))
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let deadline = std::time::Instant::now() + WAIT;
    let pod = loop {
        let list = pods
            .list(&ListParams::default().labels("app=huge"))
            .await
            .unwrap();
        let unschedulable = list.items.into_iter().find(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| {
                    c.iter().any(|c| {
                        c.type_ == "PodScheduled"
                            && c.status == "False"
                            && c.reason.as_deref() == Some("Unschedulable")
                    })
                })
        });
        if let Some(p) = unschedulable {
            break p;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the scheduler never refused the pod"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(pod.status.unwrap().phase.as_deref(), Some("Pending"));
}

#[tokio::test]
async fn garbage_collector_removes_owned_objects() {
    let client = client().await;
    let ns = namespace(&client, "gc").await;
    apply_yaml(&client, &ns, &deployment("gc", 2, 0))
        .await
        .unwrap();
    running_pods(&client, &ns, "gc", 2).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    deployments
        .delete("gc", &DeleteParams::background())
        .await
        .unwrap();
    let replicasets: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let rs = replicasets
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len();
        let p = pods.list(&ListParams::default()).await.unwrap().items.len();
        if rs == 0 && p == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{rs} ReplicaSets and {p} pods survived their Deployment"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn namespace_deletion_completes() {
    let client = client().await;
    let ns = namespace(&client, "nsdel").await;
    apply_yaml(&client, &ns, &deployment("x", 1, 0))
        .await
        .unwrap();
    running_pods(&client, &ns, "x", 1).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .delete(&ns, &DeleteParams::default())
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while namespaces.get_opt(&ns).await.unwrap().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "namespace {ns} was never deleted"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn every_third_party_crd_is_installed() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let client = client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    for name in [
        "inferenceservices.serving.kserve.io",
        "servingruntimes.serving.kserve.io",
        "clusterservingruntimes.serving.kserve.io",
        "gatewayclasses.gateway.networking.k8s.io",
        "gateways.gateway.networking.k8s.io",
        "httproutes.gateway.networking.k8s.io",
        "scaledobjects.keda.sh",
        "triggerauthentications.keda.sh",
        "clustertriggerauthentications.keda.sh",
        "opentelemetrycollectors.opentelemetry.io",
        "logs.kwok.x-k8s.io",
        "clusterlogs.kwok.x-k8s.io",
        "aimservices.aim.eai.amd.com",
        "aimclustermodelsources.aim.eai.amd.com",
    ] {
        assert!(
            crds.get_opt(name).await.unwrap().is_some(),
            "CRD {name} missing"
        );
    }
}

/// The apiserver proxies `pods/log` to the node's kubelet (KWOK here) over
/// TLS verified against the cluster CA: the path every log reader uses.
#[tokio::test]
async fn pod_logs_come_through_the_apiserver_from_kwok() {
    use kube::api::LogParams;
    let client = client().await;
    let ns = namespace(&client, "logs").await;
    apply_yaml(
        &client,
        &ns,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: talker}\nspec:\n  nodeName: cpu-0\n  containers: [{name: main, image: example.invalid/talker}]\n",
    )
    .await
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    await_object(&pods, "talker", "Running", WAIT, |p: &Pod| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
    })
    .await;
    // Without a declared log the kubelet has nothing to serve.
    let missing = pods
        .logs(
            "talker",
            &LogParams {
                container: Some("main".into()),
                ..Default::default()
            },
        )
        .await;
    assert!(
        missing.is_err(),
        "a pod without a declared log returned {missing:?}"
    );

    aim_testkit::set_pod_log(
        &client,
        &ns,
        "talker",
        "main",
        "first line\n[{\"json\": true}]",
    )
    .await;
    let deadline = std::time::Instant::now() + WAIT;
    let text = loop {
        match pods
            .logs(
                "talker",
                &LogParams {
                    container: Some("main".into()),
                    ..Default::default()
                },
            )
            .await
        {
            Ok(t) => break t,
            Err(e) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "logs never served: {e}"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    };
    assert_eq!(text, "first line\n[{\"json\": true}]\n");

    // Replacing the log is how tests show progress over time.
    aim_testkit::set_pod_log(&client, &ns, "talker", "main", "second").await;
    let text = pods
        .logs(
            "talker",
            &LogParams {
                container: Some("main".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(text, "second\n");
}
