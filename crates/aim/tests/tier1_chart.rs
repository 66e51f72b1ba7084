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

/// `helm template` of the chart: its output, or helm's error text.
fn try_helm_template(extra: &[&str]) -> Result<String, String> {
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
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn helm_template(extra: &[&str]) -> Vec<serde_yaml::Value> {
    let text = try_helm_template(extra).unwrap_or_else(|e| panic!("helm template failed: {e}"));
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
        "GatewayClass",
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
    // A per-alert `for` replaces that alert's and no other; an unknown
    // alert name is refused, naming the value.
    let overridden = helm_template(&[
        "--set",
        "monitoring.prometheusRule.enabled=true",
        "--set",
        "monitoring.prometheusRule.for.AIMAtMaxReplicasWithQueue=30s",
    ]);
    let short = find(&overridden, "PrometheusRule", "aim-scaling");
    let mut expected = file["groups"].clone();
    for r in expected[0]["rules"].as_sequence_mut().unwrap() {
        if r["alert"] == "AIMAtMaxReplicasWithQueue" {
            r["for"] = "30s".into();
        }
    }
    assert_eq!(short["spec"]["groups"], expected);
    let refused = try_helm_template(&[
        "--set",
        "monitoring.prometheusRule.enabled=true",
        "--set",
        "monitoring.prometheusRule.for.AIMAtMaxReplica=30s",
    ])
    .unwrap_err();
    assert!(
        refused.contains("monitoring.prometheusRule.for.AIMAtMaxReplica: no alert of that name"),
        "{refused}"
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

fn scaler_args(scaler: &serde_yaml::Value) -> Vec<String> {
    scaler["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn scaler_history_persistence_is_off_by_default_and_mounts_a_claim_or_an_empty_dir_at_history_dir()
{
    // Off: memory only, no flag, no volume, no claim.
    let docs = helm_template(&[]);
    let scaler = find(&docs, "Deployment", "keda-otel-scaler");
    assert!(
        !scaler_args(scaler)
            .iter()
            .any(|a| a.starts_with("--history-dir")),
        "{:?}",
        scaler_args(scaler)
    );
    assert!(scaler["spec"]["template"]["spec"]["volumes"].is_null());
    assert!(!docs.iter().any(|d| d["kind"] == "PersistentVolumeClaim"));

    // A claim: created with the asked size and class, mounted where
    // --history-dir points, and the pod replaced with Recreate.
    let docs = helm_template(&[
        "--set",
        "scaler.persistence.type=pvc",
        "--set",
        "scaler.persistence.size=2Gi",
        "--set",
        "scaler.persistence.storageClassName=fast",
        "--set",
        "scaler.persistence.mountPath=/data/history",
    ]);
    let claim = find(&docs, "PersistentVolumeClaim", "keda-otel-scaler-history");
    assert_eq!(claim["metadata"]["namespace"], "keda");
    assert_eq!(claim["spec"]["resources"]["requests"]["storage"], "2Gi");
    assert_eq!(claim["spec"]["storageClassName"], "fast");
    assert_eq!(claim["spec"]["accessModes"][0], "ReadWriteOnce");
    let scaler = find(&docs, "Deployment", "keda-otel-scaler");
    assert!(
        scaler_args(scaler).contains(&"--history-dir=/data/history".to_owned()),
        "{:?}",
        scaler_args(scaler)
    );
    let pod = &scaler["spec"]["template"]["spec"];
    assert_eq!(pod["containers"][0]["volumeMounts"][0]["name"], "history");
    assert_eq!(
        pod["containers"][0]["volumeMounts"][0]["mountPath"],
        "/data/history"
    );
    assert_eq!(
        pod["volumes"][0]["persistentVolumeClaim"]["claimName"],
        "keda-otel-scaler-history"
    );
    assert_eq!(pod["securityContext"]["fsGroup"], 65532);
    assert_eq!(scaler["spec"]["strategy"]["type"], "Recreate");

    // An existing claim is used, not created.
    let docs = helm_template(&[
        "--set",
        "scaler.persistence.type=pvc",
        "--set",
        "scaler.persistence.existingClaim=mine",
    ]);
    assert!(!docs.iter().any(|d| d["kind"] == "PersistentVolumeClaim"));
    let scaler = find(&docs, "Deployment", "keda-otel-scaler");
    assert_eq!(
        scaler["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
        "mine"
    );

    // emptyDir: survives container restarts; several replicas are fine.
    let docs = helm_template(&[
        "--set",
        "scaler.persistence.type=emptyDir",
        "--set",
        "scaler.replicas=2",
    ]);
    let scaler = find(&docs, "Deployment", "keda-otel-scaler");
    assert!(
        scaler_args(scaler).contains(&"--history-dir=/var/lib/aim-scaler".to_owned()),
        "{:?}",
        scaler_args(scaler)
    );
    let volume = &scaler["spec"]["template"]["spec"]["volumes"][0];
    assert_eq!(volume["name"], "history");
    assert!(volume["emptyDir"].is_mapping(), "{volume:?}");
    assert!(scaler["spec"]["strategy"].is_null());
    assert!(!docs.iter().any(|d| d["kind"] == "PersistentVolumeClaim"));
}

#[test]
fn bad_scaler_persistence_values_fail_naming_the_value() {
    let err = try_helm_template(&["--set", "scaler.persistence.type=disk"]).unwrap_err();
    assert!(
        err.contains("scaler.persistence.type is \"disk\"; use none, emptyDir or pvc"),
        "{err}"
    );
    let err = try_helm_template(&[
        "--set",
        "scaler.persistence.type=pvc",
        "--set",
        "scaler.replicas=2",
    ])
    .unwrap_err();
    assert!(
        err.contains("scaler.persistence.type=pvc needs scaler.replicas=1 (it is 2)"),
        "{err}"
    );
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

#[test]
fn the_gateway_renders_for_its_class_pushing_to_the_charts_scaler() {
    let docs = helm_template(&["--set", "gateway.enabled=true"]);
    let class = find(&docs, "GatewayClass", "aim");
    assert_eq!(
        class["spec"]["controllerName"],
        aim_gateway::routes::CONTROLLER_NAME
    );
    let gateway = find(&docs, "Deployment", "aim-gateway");
    assert_eq!(gateway["metadata"]["namespace"], "aim-system");
    let pod = &gateway["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "aim-gateway");
    let args: Vec<&str> = pod["containers"][0]["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    for wanted in [
        "gateway",
        "--kubernetes",
        "--gateway-class=aim",
        // The chart's scaler, on its OTLP port: the wake-from-zero signal.
        "--otlp-endpoint=keda-otel-scaler.keda.svc:4317",
    ] {
        assert!(args.contains(&wanted), "{wanted} missing: {args:?}");
    }
    // Every flag the chart writes is one the binary accepts.
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: aim_gateway::GatewayArgs,
    }
    let cli = <Cli as clap::Parser>::try_parse_from(&args).unwrap();
    let cfg = cli.args.config().unwrap();
    assert_eq!(
        cfg.otlp.map(|(url, _)| url),
        Some("http://keda-otel-scaler.keda.svc:4317".into())
    );
    // The drain fits in the pod's grace period.
    assert!(
        pod["terminationGracePeriodSeconds"].as_i64().unwrap() > cfg.drain_timeout.as_secs() as i64
    );
    let binding = find(&docs, "ClusterRoleBinding", "aim-gateway");
    assert_eq!(binding["subjects"][0]["namespace"], "aim-system");
    // Without the scaler there is nothing to push to.
    let alone = helm_template(&[
        "--set",
        "gateway.enabled=true",
        "--set",
        "scaler.enabled=false",
    ]);
    let args =
        serde_yaml::to_string(
            &find(&alone, "Deployment", "aim-gateway")["spec"]["template"]["spec"]["containers"][0]
                ["args"],
        )
        .unwrap();
    assert!(!args.contains("--otlp-endpoint"), "{args}");
}
