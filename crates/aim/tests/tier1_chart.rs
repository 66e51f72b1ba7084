//! The Helm chart (deploy/chart), rendered and installed by the real helm
//! (built from its Go module by `aim dev cluster build`) into the real local
//! cluster, whose apiserver validates every object against the real CRDs,
//! prometheus-operator's included.

use std::process::Command;

use aim_devcluster::CacheDirs;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DynamicObject};
use kube::core::{ApiResource, GroupVersionKind};

fn helm_template(extra: &[&str]) -> Vec<serde_yaml::Value> {
    let helm = CacheDirs::discover().unwrap().binary("helm");
    assert!(
        helm.exists(),
        "{} missing: run `aim dev cluster build`",
        helm.display()
    );
    let out = Command::new(helm)
        .args(["template", "aim"])
        .arg(aim_testkit::repo_path("deploy/chart"))
        .args(["--namespace", "aim-system", "--kube-version", "1.34.4"])
        .args(extra)
        .output()
        .expect("helm runs");
    assert!(
        out.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &serde_yaml::Value| !v.is_null())
        .collect()
}

fn find<'a>(docs: &'a [serde_yaml::Value], kind: &str, name: &str) -> &'a serde_yaml::Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendered chart"))
}

#[test]
fn defaults_render_the_operator_with_leader_election_and_the_scaler_where_the_docs_say() {
    let docs = helm_template(&[]);
    let operator = find(&docs, "Deployment", "aim-operator");
    assert_eq!(operator["spec"]["replicas"], 2);
    let args: Vec<&str> = operator["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(args.contains(&"--namespace=aim-system"), "{args:?}");
    assert!(
        args.contains(&"--scaler-address=keda-otel-scaler.keda.svc:4318"),
        "{args:?}"
    );
    assert!(!args.contains(&"--no-leader-election"), "{args:?}");
    // The docs' default addresses: keda-otel-scaler.keda.svc:4317 and :4318.
    let service = find(&docs, "Service", "keda-otel-scaler");
    assert_eq!(service["metadata"]["namespace"], "keda");
    let ports: Vec<i64> = service["spec"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p["port"].as_i64().unwrap())
        .collect();
    assert!(ports.contains(&4317) && ports.contains(&4318), "{ports:?}");
    // Leases only in the operator's namespace: a Role, not the ClusterRole.
    let cluster_role = find(&docs, "ClusterRole", "aim-operator");
    let cluster_groups = serde_yaml::to_string(&cluster_role["rules"]).unwrap();
    assert!(
        !cluster_groups.contains("coordination.k8s.io"),
        "{cluster_groups}"
    );
    let role = find(&docs, "Role", "aim-operator-leases");
    assert_eq!(role["metadata"]["namespace"], "aim-system");
    // Nothing optional by default.
    for kind in [
        "ServiceMonitor",
        "PodMonitor",
        "PrometheusRule",
        "ConfigMap",
        "AIMClusterRuntimeConfig",
    ] {
        assert!(
            !docs.iter().any(|d| d["kind"] == kind),
            "{kind} rendered without being asked for"
        );
    }
}

#[test]
fn options_render_monitoring_from_the_same_files_and_single_replica_without_election() {
    let docs = helm_template(&[
        "--set",
        "monitoring.prometheusRule.enabled=true",
        "--set",
        "monitoring.dashboard.enabled=true",
        "--set",
        "operator.leaderElection=false",
        "--set",
        "runtimeConfig.create=true",
    ]);
    let rule = find(&docs, "PrometheusRule", "aim-scaling");
    let file: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(aim_testkit::repo_path("deploy/chart/files/alerts.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        rule["spec"]["groups"], file["groups"],
        "the rule file, unchanged"
    );
    let dashboard = find(&docs, "ConfigMap", "aim-dashboard");
    let json: serde_json::Value =
        serde_json::from_str(dashboard["data"]["aim-scaling.json"].as_str().unwrap()).unwrap();
    assert_eq!(json["uid"], "aim-scaling");
    let operator = find(&docs, "Deployment", "aim-operator");
    assert_eq!(operator["spec"]["replicas"], 1);
    let config = find(&docs, "AIMClusterRuntimeConfig", "default");
    assert_eq!(config["spec"]["autoscaling"]["pausedByDefault"], true);
}

#[tokio::test]
async fn helm_installs_the_chart_into_the_cluster() {
    aim_testkit::install_chart().await;
    let client = aim_testkit::client().await;
    let scaler: Api<Service> = Api::namespaced(client.clone(), "keda");
    let service = scaler.get("keda-otel-scaler").await.unwrap();
    assert!(service.spec.unwrap().cluster_ip.is_some());
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "aim-system");
    deployments.get("aim-operator").await.unwrap();
    // The monitoring objects were accepted by prometheus-operator's CRDs.
    for (kind, plural, ns, name) in [
        (
            "ServiceMonitor",
            "servicemonitors",
            "aim-system",
            "aim-operator",
        ),
        ("ServiceMonitor", "servicemonitors", "keda", "aim-scaler"),
        ("PodMonitor", "podmonitors", "aim-system", "aim-inference"),
        (
            "PrometheusRule",
            "prometheusrules",
            "aim-system",
            "aim-scaling",
        ),
    ] {
        let ar = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("monitoring.coreos.com", "v1", kind),
            plural,
        );
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
        api.get(name)
            .await
            .unwrap_or_else(|e| panic!("{kind} {ns}/{name}: {e}"));
    }
}

/// Least privilege, pinned: the operator reads secrets by name only, and
/// nothing in the chart can list or watch them.
#[test]
fn no_role_may_list_or_watch_secrets() {
    let docs = helm_template(&[]);
    for doc in docs
        .iter()
        .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
    {
        for rule in doc["rules"].as_sequence().into_iter().flatten() {
            let resources = serde_yaml::to_string(&rule["resources"]).unwrap();
            let verbs = serde_yaml::to_string(&rule["verbs"]).unwrap();
            if resources.contains("secrets") {
                assert!(
                    !verbs.contains("list") && !verbs.contains("watch"),
                    "{} may {verbs} secrets",
                    doc["metadata"]["name"].as_str().unwrap_or("?")
                );
            }
        }
    }
}
