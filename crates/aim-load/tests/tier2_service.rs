//! Tier 2: `--service` against the real local cluster: EndpointSlices written by the
//! test (the apiserver's own validation and label selection), and a Deployment's pods
//! (loopback IPs that simulators in this process answer on) joining a running load as
//! the Deployment scales up.

use std::net::SocketAddr;
use std::time::Duration;

use aim_load::service::{ServiceTarget, Source, resolve};
use aim_load::{LoadArgs, execute};
use aim_sim::{RunningSim, SimArgs};
use clap::Parser;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::net::TcpListener;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: LoadArgs,
}

fn plan(flags: &str) -> aim_load::Plan {
    let argv = std::iter::once("aim-load").chain(flags.split_whitespace());
    Cli::try_parse_from(argv).unwrap().args.plan().unwrap()
}

async fn start_sim(addr: SocketAddr) -> RunningSim {
    let listener = TcpListener::bind(addr).await.expect("bind loopback");
    aim_sim::start(SimArgs::for_tests(), listener)
        .await
        .expect("simulator starts")
}

async fn answered(sim: &RunningSim) -> f64 {
    let text = reqwest::get(format!("http://{}/metrics", sim.addr()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("vllm:request_success_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

fn slice(name: &str, address: &str, ready: Option<bool>) -> EndpointSlice {
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/service-name": "api",
                "endpointslice.kubernetes.io/managed-by": "aim-load-test",
            },
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8000, "protocol": "TCP"}],
        "endpoints": [{"addresses": [address], "conditions": {"ready": ready}}],
    }))
    .unwrap()
}

#[tokio::test]
async fn endpoint_slices_give_the_ready_endpoints() {
    let client = aim_testkit::client().await;
    let ns = aim_testkit::namespace(&client, "load-slices").await;
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "api"},
        "spec": {"ports": [{"name": "http", "port": 8000}]},
    }))
    .unwrap();
    Api::<Service>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    // TEST-NET-2 addresses: the apiserver refuses loopback ones in EndpointSlices, and
    // nothing connects to these.
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), &ns);
    for (name, address, ready) in [
        ("a", "198.51.100.10", Some(true)),
        ("b", "198.51.100.11", None),
        ("c", "198.51.100.12", Some(false)),
    ] {
        slices
            .create(&PostParams::default(), &slice(name, address, ready))
            .await
            .unwrap();
    }
    let target = ServiceTarget {
        name: "api".into(),
        namespace: Some(ns.clone()),
        port_name: None,
        refresh: 1.0,
    };
    assert_eq!(
        resolve(&client, &ns, &target).await.unwrap(),
        (
            vec![
                "http://198.51.100.10:8000".to_string(),
                "http://198.51.100.11:8000".to_string()
            ],
            Source::EndpointSlices
        )
    );
    slices
        .patch(
            "c",
            &PatchParams::apply("aim-load-test").force(),
            &Patch::Apply(slice("c", "198.51.100.12", Some(true))),
        )
        .await
        .unwrap();
    slices.delete("a", &Default::default()).await.unwrap();
    let (urls, _) = resolve(&client, &ns, &target).await.unwrap();
    assert_eq!(
        urls,
        ["http://198.51.100.11:8000", "http://198.51.100.12:8000"]
    );
    aim_testkit::delete_namespace(&client, &ns).await;
}

/// The pods of `app` that have an IP, by name.
async fn pod_ips(client: &kube::Client, ns: &str, want: usize) -> Vec<(String, String)> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut ips: Vec<(String, String)> = pods
            .list(&ListParams::default().labels("app=sim"))
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|p| {
                let ip = p.status?.pod_ip.filter(|ip| !ip.is_empty())?;
                Some((p.metadata.name?, ip))
            })
            .collect();
        if ips.len() >= want {
            ips.sort();
            return ips;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {want} pods have IPs\n{}",
            ips.len(),
            aim_testkit::events_of(client, ns).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_join_the_spread_as_the_deployment_scales_up() {
    let client = aim_testkit::client().await;
    let ns = aim_testkit::namespace(&client, "load-pods").await;
    // Every pod listens on one port; a free one on 127.0.0.1 is very likely free on the
    // pods' 127.1.x.y too.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let manifests = format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: sim}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: sim}}}}
  template:
    metadata: {{labels: {{app: sim}}}}
    spec:
      containers:
      - name: vllm
        image: example.invalid/sim:1
        ports: [{{name: http, containerPort: {port}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: sim}}
spec:
  selector: {{app: sim}}
  ports: [{{name: http, port: 80, targetPort: http}}]
"#
    );
    aim_testkit::apply_yaml(&client, &ns, &manifests)
        .await
        .unwrap();
    let first = pod_ips(&client, &ns, 2).await;
    let mut sims = Vec::new();
    for (_, ip) in &first {
        sims.push(start_sim(format!("{ip}:{port}").parse().unwrap()).await);
    }

    let plan = plan(&format!(
        "--service sim -n {ns} --refresh 300ms --rate 0s:20,4s:0 --output-tokens 4 --quiet"
    ));
    let run = {
        let client = client.clone();
        tokio::spawn(async move { execute(&plan, Some(client), std::future::pending()).await })
    };
    tokio::time::sleep(Duration::from_millis(1200)).await;
    Api::<Deployment>::namespaced(client.clone(), &ns)
        .patch(
            "sim",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .unwrap();
    let third = pod_ips(&client, &ns, 3)
        .await
        .into_iter()
        .find(|p| !first.contains(p))
        .expect("a new pod");
    sims.push(start_sim(format!("{}:{port}", third.1).parse().unwrap()).await);
    let report = run.await.unwrap().unwrap();

    let s = &report.summary;
    assert_eq!(
        report.model, "sim-model",
        "discovered through the Service's pods"
    );
    // The new pod is Ready (KWOK) a moment before its simulator listens: only connect
    // errors may show, and only a few.
    let connect = s.counts.errors.get("connect").copied().unwrap_or(0);
    assert_eq!(s.errors_total, connect, "{s:?}");
    assert!(connect <= 10, "{s:?}");
    let mut counts = Vec::new();
    for sim in &sims {
        counts.push(answered(sim).await);
    }
    assert_eq!(counts.iter().sum::<f64>(), s.counts.completed as f64);
    assert!(counts[2] > 0.0, "the new pod joined: {counts:?}");
    assert!(counts[2] < counts[0] && counts[2] < counts[1], "{counts:?}");
    assert_eq!(report.samples.first().map(|x| x.endpoints), Some(2));
    assert_eq!(report.samples.last().map(|x| x.endpoints), Some(3));
    aim_testkit::delete_namespace(&client, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_service_is_named() {
    let client = aim_testkit::client().await;
    let ns = aim_testkit::namespace(&client, "load").await;
    let plan = plan(&format!(
        "--service nope -n {ns} --rate 1 --duration 1s --model m"
    ));
    let e = execute(&plan, Some(client.clone()), std::future::pending())
        .await
        .expect_err("no such Service")
        .to_string();
    assert!(
        e.contains(&format!("no Service nope in namespace {ns}")) && e.contains("-n NAMESPACE"),
        "{e}"
    );
    aim_testkit::delete_namespace(&client, &ns).await;
}
