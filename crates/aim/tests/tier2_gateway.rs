//! Tier 2: `aim gateway --kubernetes` against the real local apiserver.
//! Tests write GatewayClasses, Gateways and HTTPRoutes shaped like the
//! operator's (a PathPrefix rule rewritten to `/`, a Service backendRef on
//! port 80); the gateway writes their status, and requests sent through it
//! reach `aim sim` backends behind Services whose Deployments' KWOK pods
//! have loopback addresses the simulators listen on (the bed's stand-in for
//! EndpointSlices, which refuse loopback addresses). Others: the operator's
//! own route for an AIMService, EndpointSlices as a real cluster has them,
//! a rule's request timeout, readiness, and the command line itself.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use aim_gateway::GatewayArgs;
use aim_sim::{RunningSim, SimArgs};
use aim_testkit::{apply_yaml, await_object, namespace};
use clap::Parser;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DynamicObject, ListParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::Value;
use tokio::net::TcpListener;

const WAIT: Duration = Duration::from_secs(60);

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: GatewayArgs,
}

fn gateway_api(client: &kube::Client, kind: &str, ns: Option<&str>) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "gateway.networking.k8s.io",
        "v1",
        kind,
    ));
    match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    }
}

/// `(status, reason)` of condition `type_` in `conditions`.
fn cond(conditions: &Value, type_: &str) -> Option<(String, String)> {
    conditions.as_array()?.iter().find_map(|c| {
        (c["type"] == type_).then(|| {
            (
                c["status"].as_str().unwrap_or("").to_string(),
                c["reason"].as_str().unwrap_or("").to_string(),
            )
        })
    })
}

fn is(conditions: &Value, type_: &str, status: &str, reason: &str) -> bool {
    cond(conditions, type_) == Some((status.into(), reason.into()))
}

/// aim's entry in an HTTPRoute's `status.parents`.
fn our_parent(route: &DynamicObject) -> Value {
    route.data["status"]["parents"]
        .as_array()
        .and_then(|ps| {
            ps.iter()
                .find(|p| p["controllerName"] == aim_gateway::routes::CONTROLLER_NAME)
        })
        .cloned()
        .unwrap_or(Value::Null)
}

/// The pod IP of the Deployment `app`'s one pod, once it has one.
async fn pod_ip(client: &kube::Client, ns: &str, app: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + WAIT;
    loop {
        let ip = pods
            .list(&ListParams::default().labels(&format!("app={app}")))
            .await
            .unwrap()
            .items
            .into_iter()
            .find_map(|p| p.status?.pod_ip.filter(|ip| !ip.is_empty()));
        if let Some(ip) = ip {
            return ip;
        }
        assert!(
            Instant::now() < deadline,
            "the pod of {app} has no IP\n{}",
            aim_testkit::events_of(client, ns).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts `aim gateway --kubernetes --gateway NS/gw` in this process.
async fn start_gateway(client: &kube::Client, ns: &str) -> aim_gateway::RunningGateway {
    let gw_flag = format!("{ns}/gw");
    let cli = Cli::try_parse_from([
        "gateway",
        "--kubernetes",
        "--gateway",
        gw_flag.as_str(),
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ])
    .unwrap();
    let cfg = cli.args.config().unwrap();
    let scope = cfg.kubernetes.clone().unwrap();
    aim_gateway::start_kubernetes(
        cfg,
        client.clone(),
        scope,
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
    )
    .await
    .unwrap()
}

async fn start_sim(addr: SocketAddr) -> RunningSim {
    let listener = TcpListener::bind(addr)
        .await
        .expect("bind the pod's address");
    aim_sim::start(SimArgs::for_tests(), listener)
        .await
        .expect("simulator starts")
}

/// Waits until the gateway's admin address `admin` (`HOST:PORT`) answers
/// `/readyz` with 200, failing with `why` after `WAIT`.
async fn await_ready(admin: &str, why: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let ready = reqwest::get(format!("http://{admin}/readyz")).await;
        if ready.is_ok_and(|r| r.status().as_u16() == 200) {
            return;
        }
        assert!(Instant::now() < deadline, "{why}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Completions the simulator answered (its own counter).
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

/// POSTs a small completion to `path` through the gateway.
async fn complete(gateway: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = reqwest::Client::new()
        .post(format!("http://{gateway}{path}"))
        .header("content-type", "application/json")
        .body(r#"{"model": "sim-model", "prompt": "hi", "max_tokens": 2}"#);
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

/// aim's GatewayClass `class` and a Gateway `gw` of it with one HTTP listener.
fn gateway_yaml(class: &str) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: {class}}}
spec: {{controllerName: aim.eai.amd.com/gateway}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw}}
spec:
  gatewayClassName: {class}
  listeners: [{{name: http, protocol: HTTP, port: 80}}]
"#
    )
}

/// A Deployment `app` of one KWOK pod listening on `port`.
fn deployment_yaml(app: &str, port: u16) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: {app}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: {app}}}}}
  template:
    metadata: {{labels: {{app: {app}}}}}
    spec:
      containers:
      - name: vllm
        image: example.invalid/sim:1
        ports: [{{name: http, containerPort: {port}}}]
"#
    )
}

/// A Service `name` on port 80 in front of the pods of `app`.
fn service_yaml(name: &str, app: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  selector: {{app: {app}}}
  ports: [{{name: http, port: 80, targetPort: http}}]
"#
    )
}

fn manifests(ns: &str, class: &str, port: u16) -> String {
    let mut yaml = gateway_yaml(class);
    yaml.push_str(&format!(
        r#"---
# As the operator writes it: a PathPrefix rewritten to /, a Service on port 80.
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: chat}}
spec:
  parentRefs: [{{name: gw, namespace: {ns}}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /chat/a}}}}]
    filters: [{{type: URLRewrite, urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /}}}}}}]
    backendRefs: [{{group: "", kind: Service, name: sim-a, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /chat}}, headers: [{{name: x-pool, value: b}}]}}]
    filters: [{{type: URLRewrite, urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /}}}}}}]
    backendRefs: [{{name: sim-b, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /chat}}}}]
    filters: [{{type: URLRewrite, urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /}}}}}}]
    backendRefs: [{{name: sim-a, port: 80, weight: 3}}, {{name: sim-b, port: 80, weight: 1}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: missing}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /missing}}}}]
    backendRefs: [{{name: no-such-service, port: 80}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: wrong-kind}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /wrong-kind}}}}]
    backendRefs: [{{group: "", kind: ConfigMap, name: sim-a, port: 80}}]
"#
    ));
    for app in ["sim-a", "sim-b"] {
        yaml.push_str("---\n");
        yaml.push_str(&deployment_yaml(app, port));
        yaml.push_str("---\n");
        yaml.push_str(&service_yaml(app, app));
    }
    yaml
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_written_like_the_operators_are_served_and_get_status() {
    let client = aim_testkit::client().await;
    let ns = namespace(&client, "gw-k8s").await;
    // GatewayClasses are cluster-wide: one per test namespace.
    let class = format!("aim-{ns}");
    // One port for both pods; a free one on 127.0.0.1 is very likely free
    // on the pods' loopback addresses too.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    apply_yaml(&client, &ns, &manifests(&ns, &class, port))
        .await
        .unwrap();
    let sim_a = start_sim(
        format!("{}:{port}", pod_ip(&client, &ns, "sim-a").await)
            .parse()
            .unwrap(),
    )
    .await;
    let sim_b = start_sim(
        format!("{}:{port}", pod_ip(&client, &ns, "sim-b").await)
            .parse()
            .unwrap(),
    )
    .await;

    let gateway = start_gateway(&client, &ns).await;

    // The status, written by the gateway.
    await_object(
        &gateway_api(&client, "GatewayClass", None),
        &class,
        "GatewayClass Accepted",
        WAIT,
        |c| {
            is(
                &c.data["status"]["conditions"],
                "Accepted",
                "True",
                "Accepted",
            )
        },
    )
    .await;
    let gw = await_object(
        &gateway_api(&client, "Gateway", Some(&ns)),
        "gw",
        "Gateway Programmed, three routes attached",
        WAIT,
        |g| {
            let s = &g.data["status"];
            is(&s["conditions"], "Accepted", "True", "Accepted")
                && is(&s["conditions"], "Programmed", "True", "Programmed")
                && s["listeners"][0]["attachedRoutes"] == 3
        },
    )
    .await;
    assert_eq!(gw.data["status"]["listeners"][0]["name"], "http");
    let routes = gateway_api(&client, "HTTPRoute", Some(&ns));
    let chat = await_object(&routes, "chat", "chat Accepted, refs resolved", WAIT, |r| {
        let p = our_parent(r);
        is(&p["conditions"], "Accepted", "True", "Accepted")
            && is(&p["conditions"], "ResolvedRefs", "True", "ResolvedRefs")
    })
    .await;
    assert_eq!(our_parent(&chat)["parentRef"]["name"], "gw");
    // Server-side apply under the gateway's own field manager.
    assert!(
        chat.metadata.managed_fields.iter().flatten().any(|m| {
            m.manager.as_deref() == Some(aim_gateway::kubernetes::FIELD_MANAGER)
                && m.subresource.as_deref() == Some("status")
        }),
        "{:?}",
        chat.metadata.managed_fields
    );
    for (name, reason) in [
        ("missing", "BackendNotFound"),
        ("wrong-kind", "InvalidKind"),
    ] {
        await_object(&routes, name, reason, WAIT, |r| {
            let p = our_parent(r);
            // A bad backendRef leaves the route accepted (the spec's rule).
            is(&p["conditions"], "Accepted", "True", "Accepted")
                && is(&p["conditions"], "ResolvedRefs", "False", reason)
        })
        .await;
    }

    let readyz = reqwest::get(format!("http://{}/readyz", gateway.admin_addr))
        .await
        .unwrap();
    assert_eq!(readyz.status().as_u16(), 200);

    // A change the gateway sees (an annotation on a backend Service) plans
    // the same status, and no object changes: transition times are kept.
    // (Whether a request was skipped or was a no-op apply is not visible
    // from here; the writer's own check skips it.)
    let versions = |objs: Vec<DynamicObject>| -> Vec<Option<String>> {
        objs.into_iter()
            .map(|o| o.metadata.resource_version)
            .collect()
    };
    let gateways = gateway_api(&client, "Gateway", Some(&ns));
    let before = versions(vec![
        gateways.get("gw").await.unwrap(),
        routes.get("chat").await.unwrap(),
        routes.get("missing").await.unwrap(),
    ]);
    Api::<k8s_openapi::api::core::v1::Service>::namespaced(client.clone(), &ns)
        .patch(
            "sim-a",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                serde_json::json!({"metadata": {"annotations": {"touched": "1"}}}),
            ),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = versions(vec![
        gateways.get("gw").await.unwrap(),
        routes.get("chat").await.unwrap(),
        routes.get("missing").await.unwrap(),
    ]);
    assert_eq!(before, after, "status changed although nothing did");

    // Requests. The pods' endpoints may reach the table a moment after
    // the status: wait for the first answer.
    let addr = gateway.addr;
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = complete(addr, "/chat/a/v1/completions", &[]).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "{status}: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let base = (answered(&sim_a).await, answered(&sim_b).await);
    assert_eq!(base, (1.0, 0.0), "the warm-up went to sim-a");

    // Path: /chat/a goes to sim-a only, whatever the header says (the
    // longer prefix wins over the header match).
    for _ in 0..5 {
        let (status, body) = complete(addr, "/chat/a/v1/completions", &[("x-pool", "b")]).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!((answered(&sim_a).await, answered(&sim_b).await), (6.0, 0.0));
    // Header: x-pool: b under /chat goes to sim-b only.
    for _ in 0..5 {
        let (status, body) = complete(addr, "/chat/v1/completions", &[("x-pool", "b")]).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!((answered(&sim_a).await, answered(&sim_b).await), (6.0, 5.0));
    // Weights 3:1: smooth weighted round robin gives exactly 30 and 10 of 40.
    for _ in 0..40 {
        let (status, body) = complete(addr, "/chat/v1/completions", &[]).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(
        (answered(&sim_a).await, answered(&sim_b).await),
        (36.0, 15.0)
    );

    // No rule matches: 404 naming what was asked.
    let (status, body) = complete(addr, "/elsewhere/v1/completions", &[]).await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("no HTTPRoute rule matches POST /elsewhere/v1/completions"),
        "{body}"
    );
    // A bad backendRef's share is answered 500, as the spec asks.
    let (status, body) = complete(addr, "/missing/v1/completions", &[]).await;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("no-such-service"), "{body}");

    // A route moved to a Gateway this gateway does not serve loses its
    // entry, and the listener counts one route fewer.
    apply_yaml(
        &client,
        &ns,
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: wrong-kind}
spec:
  parentRefs: [{name: elsewhere}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /wrong-kind}}]
    backendRefs: [{group: "", kind: ConfigMap, name: sim-a, port: 80}]
"#,
    )
    .await
    .unwrap();
    await_object(&routes, "wrong-kind", "aim's entry gone", WAIT, |r| {
        our_parent(r).is_null()
    })
    .await;
    await_object(&gateways, "gw", "two routes attached", WAIT, |g| {
        g.data["status"]["listeners"][0]["attachedRoutes"] == 2
    })
    .await;

    gateway.shutdown().await.unwrap();
    drop((sim_a, sim_b));
    aim_testkit::delete_namespace(&client, &ns).await;
    // The class is cluster-wide: remove it with the namespace.
    gateway_api(&client, "GatewayClass", None)
        .delete(&class, &Default::default())
        .await
        .unwrap();
}

/// The `endpoint` label values of `family` for `service` whose value is `value`.
fn endpoints_with(metrics: &str, family: &str, service: &str, value: &str) -> Vec<String> {
    let prefix = format!("{family}{{service=\"{service}\",endpoint=\"");
    let mut out: Vec<String> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (endpoint, v) = rest.split_once("\"} ")?;
            (v == value).then(|| endpoint.to_string())
        })
        .collect();
    out.sort();
    out
}

/// On a real cluster a backend's endpoints come from its Service's
/// EndpointSlices, written here as a controller would (the apiserver's own
/// validation; TEST-NET-2 addresses, which it accepts and nothing answers
/// on). Ready and unset-ready endpoints take requests, a serving one that
/// is terminating drains, a not-ready one is left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_slices_give_a_backends_endpoints() {
    let client = aim_testkit::client().await;
    let ns = namespace(&client, "gw-slices").await;
    let class = format!("aim-{ns}");
    let mut yaml = gateway_yaml(&class);
    yaml.push_str(
        r#"---
apiVersion: v1
kind: Service
metadata: {name: api}
spec:
  ports: [{name: http, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: api}
spec:
  parentRefs: [{name: gw}]
  rules:
  - backendRefs: [{name: api, port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: api-1
  labels: {kubernetes.io/service-name: api, endpointslice.kubernetes.io/managed-by: aim-gateway-test}
addressType: IPv4
ports: [{name: http, port: 8000, protocol: TCP}]
endpoints:
- addresses: [198.51.100.10]
  conditions: {ready: true}
- addresses: [198.51.100.11]
- addresses: [198.51.100.12]
  conditions: {ready: false}
- addresses: [198.51.100.13]
  conditions: {ready: false, serving: true, terminating: true}
"#,
    );
    apply_yaml(&client, &ns, &yaml).await.unwrap();
    let gateway = start_gateway(&client, &ns).await;
    let service = format!("{ns}/api:80");
    let deadline = Instant::now() + WAIT;
    let (taking, draining) = loop {
        let text = reqwest::get(format!("http://{}/metrics", gateway.admin_addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let family = "aim_gateway_endpoint_draining";
        let found = (
            endpoints_with(&text, family, &service, "0"),
            endpoints_with(&text, family, &service, "1"),
        );
        if !found.0.is_empty() || Instant::now() > deadline {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        taking,
        ["http://198.51.100.10:8000", "http://198.51.100.11:8000"]
    );
    assert_eq!(draining, ["http://198.51.100.13:8000"]);
    gateway.shutdown().await.unwrap();
    aim_testkit::delete_namespace(&client, &ns).await;
    gateway_api(&client, "GatewayClass", None)
        .delete(&class, &Default::default())
        .await
        .unwrap();
}

/// Kills the child process when the test ends, passed or not.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `aim gateway --kubernetes` command, reaching the cluster through
/// KUBECONFIG: it writes the status and answers an unmatched path with 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_serves_a_gateway_from_the_kubeconfig() {
    let cluster = aim_testkit::cluster().await;
    let client = aim_testkit::client().await;
    let ns = namespace(&client, "gw-cli").await;
    let class = format!("aim-{ns}");
    apply_yaml(&client, &ns, &gateway_yaml(&class))
        .await
        .unwrap();
    let (port, admin) = (free_port(), free_port());
    let _gateway = Killed(
        std::process::Command::new(env!("CARGO_BIN_EXE_aim"))
            .args(["gateway", "--kubernetes", "--gateway", &format!("{ns}/gw")])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .env("KUBECONFIG", &cluster.kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    await_object(
        &gateway_api(&client, "Gateway", Some(&ns)),
        "gw",
        "Gateway Programmed by the aim gateway process",
        WAIT,
        |g| {
            is(
                &g.data["status"]["conditions"],
                "Programmed",
                "True",
                "Programmed",
            )
        },
    )
    .await;
    await_ready(
        &format!("127.0.0.1:{admin}"),
        "the process never became ready",
    )
    .await;
    let (status, body) = complete(
        format!("127.0.0.1:{port}").parse().unwrap(),
        "/v1/completions",
        &[],
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no_route"), "{body}");
    aim_testkit::delete_namespace(&client, &ns).await;
    gateway_api(&client, "GatewayClass", None)
        .delete(&class, &Default::default())
        .await
        .unwrap();
}

/// A rule's `timeouts.request` (the operator sets it from the AIMService's
/// requestTimeout): a backend that accepts connections and never answers
/// gets the request a 504 once the timeout has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rules_request_timeout_answers_504() {
    let client = aim_testkit::client().await;
    let ns = namespace(&client, "gw-timeout").await;
    let class = format!("aim-{ns}");
    let port = free_port();
    let mut yaml = gateway_yaml(&class);
    for doc in [
        deployment_yaml("stall", port),
        service_yaml("stall", "stall"),
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: stall}
spec:
  parentRefs: [{name: gw}]
  rules:
  - backendRefs: [{name: stall, port: 80}]
    timeouts: {request: 700ms}
"#
        .to_string(),
    ] {
        yaml.push_str("---\n");
        yaml.push_str(&doc);
    }
    apply_yaml(&client, &ns, &yaml).await.unwrap();
    // Takes connections at the pod's address and never answers.
    let listener = TcpListener::bind(format!("{}:{port}", pod_ip(&client, &ns, "stall").await))
        .await
        .unwrap();
    let stalled = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    let gateway = start_gateway(&client, &ns).await;
    await_object(
        &gateway_api(&client, "HTTPRoute", Some(&ns)),
        "stall",
        "stall accepted",
        WAIT,
        |r| {
            is(
                &our_parent(r)["conditions"],
                "ResolvedRefs",
                "True",
                "ResolvedRefs",
            )
        },
    )
    .await;
    let deadline = Instant::now() + WAIT;
    let (status, body, took) = loop {
        let start = Instant::now();
        let (status, body) = complete(gateway.addr, "/v1/completions", &[]).await;
        // Before the table has the route, 404s; then the timeout.
        if status != 404 || Instant::now() > deadline {
            break (status, body, start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status, 504, "{body}");
    assert!(
        body.contains("request_timeout") && body.contains("timeouts.request"),
        "{body}"
    );
    assert!(took >= Duration::from_millis(700), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    stalled.abort();
    gateway.shutdown().await.unwrap();
    aim_testkit::delete_namespace(&client, &ns).await;
    gateway_api(&client, "GatewayClass", None)
        .delete(&class, &Default::default())
        .await
        .unwrap();
}

/// Until the cluster has been read, the gateway is not ready: `/readyz`
/// says why, rather than every request getting a 404 from an empty table.
#[tokio::test]
async fn not_ready_before_the_cluster_is_read() {
    // Nothing listens on port 1: the watches never list anything.
    let config = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
    let unreachable = kube::Client::try_from(config).unwrap();
    let gateway = start_gateway(&unreachable, "infra").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let readyz = reqwest::get(format!("http://{}/readyz", gateway.admin_addr))
        .await
        .unwrap();
    assert_eq!(readyz.status().as_u16(), 503);
    let body = readyz.text().await.unwrap();
    assert!(body.contains("no routing table yet"), "{body}");
    gateway.shutdown().await.unwrap();
}

/// Starts the operator on a thread of its own (it outlives the test's
/// runtime), once per test binary.
fn operator() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        std::thread::spawn(|| {
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            rt.block_on(async {
                let client = aim_testkit::client().await;
                let admin = std::net::TcpListener::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap();
                let args = aim_operator::OperatorArgs {
                    admin_address: admin,
                    namespace: "aim-system".into(),
                    no_leader_election: true,
                    identity: None,
                    scaler_address: "aim-scaler.aim-system.svc:4318".into(),
                };
                aim_operator::run_with(client, args, std::future::pending())
                    .await
                    .expect("operator runs");
            });
        });
    });
}

fn route_ready(s: &aim_api::AIMService) -> Option<(String, String)> {
    s.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "HTTPRouteReady")
        .map(|c| (c.status.clone(), c.reason.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aimservice_route_is_accepted_by_the_gateway_and_serves() {
    operator();
    let client = aim_testkit::client().await;
    let ns = namespace(&client, "gw-op").await;
    let class = format!("aim-{ns}");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // A Ready model and a template frozen Ready with a discovered profile
    // (no registry, no discovery job), as the operator's own tests do.
    let model_and_template = r#"apiVersion: aim.eai.amd.com/v1alpha1
kind: AIMModel
metadata: {name: m}
spec:
  image: amdenterpriseai/aim-qwen-qwen3-32b:0.8.5
  discovery: {createServiceTemplates: false}
  imageMetadata:
    model: {canonicalName: Qwen/Qwen3-32B}
---
apiVersion: aim.eai.amd.com/v1alpha1
kind: AIMServiceTemplate
metadata:
  name: t
  annotations: {aim.eai.amd.com/reconciliation-paused: "true"}
spec:
  modelName: m
  metric: latency
  precision: fp8
  hardware: {gpu: {requests: 1, model: MI300X}}
"#;
    let mut yaml = gateway_yaml(&class);
    yaml.push_str("---\n");
    yaml.push_str(&deployment_yaml("sim", port));
    yaml.push_str("---\n");
    yaml.push_str(model_and_template);
    apply_yaml(&client, &ns, &yaml).await.unwrap();
    let templates: Api<aim_api::AIMServiceTemplate> = Api::namespaced(client.clone(), &ns);
    let discovered = serde_json::json!({
        "apiVersion": "aim.eai.amd.com/v1alpha1", "kind": "AIMServiceTemplate",
        "status": {
            "status": "Ready",
            "profile": {"metadata": {"engine": "vllm", "gpu": "MI300X", "gpuCount": 1, "metric": "latency", "precision": "fp8", "type": "optimized"}},
            "resolvedHardware": {"gpu": {"requests": 1, "model": "MI300X"}},
            "hardwareSummary": "1 x MI300X",
        }
    });
    templates
        .patch_status(
            "t",
            &kube::api::PatchParams::apply("aim-test-discovery").force(),
            &kube::api::Patch::Apply(&discovered),
        )
        .await
        .unwrap();
    apply_yaml(
        &client,
        &ns,
        &format!(
            "apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMService\nmetadata: {{name: chat}}\nspec:\n  model: {{name: m}}\n  template: {{name: t}}\n  routing:\n    enabled: true\n    gatewayRef: {{name: gw, namespace: {ns}}}\n"
        ),
    )
    .await
    .unwrap();
    let gateway = start_gateway(&client, &ns).await;

    // The operator's route, accepted by the gateway; its backend (KServe's
    // predictor Service) does not exist yet.
    let route_name = aim_rules::naming::httproute_name("chat", &ns);
    let routes = gateway_api(&client, "HTTPRoute", Some(&ns));
    let route = await_object(
        &routes,
        &route_name,
        "accepted, backend not found",
        WAIT,
        |r| {
            let p = our_parent(r);
            is(&p["conditions"], "Accepted", "True", "Accepted")
                && is(&p["conditions"], "ResolvedRefs", "False", "BackendNotFound")
        },
    )
    .await;
    let services: Api<aim_api::AIMService> = Api::namespaced(client.clone(), &ns);
    let svc = await_object(
        &services,
        "chat",
        "HTTPRouteReady from the gateway",
        WAIT,
        |s| route_ready(s) == Some(("True".into(), "HTTPRouteAccepted".into())),
    )
    .await;
    let path = svc
        .status
        .as_ref()
        .and_then(|s| s.routing.as_ref())
        .and_then(|r| r.path.clone())
        .expect("a routing path");

    // Play KServe: the predictor Service, in front of the simulator's pod.
    let predictor = route.data["spec"]["rules"][0]["backendRefs"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    apply_yaml(&client, &ns, &service_yaml(&predictor, "sim"))
        .await
        .unwrap();
    await_object(&routes, &route_name, "refs resolved", WAIT, |r| {
        is(
            &our_parent(r)["conditions"],
            "ResolvedRefs",
            "True",
            "ResolvedRefs",
        )
    })
    .await;
    let sim = start_sim(
        format!("{}:{port}", pod_ip(&client, &ns, "sim").await)
            .parse()
            .unwrap(),
    )
    .await;
    // The route's prefix is rewritten to `/`, as the operator asks.
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = complete(gateway.addr, &format!("{path}/v1/completions"), &[]).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "{path}: {status}: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(answered(&sim).await, 1.0);

    gateway.shutdown().await.unwrap();
    aim_testkit::delete_namespace(&client, &ns).await;
    gateway_api(&client, "GatewayClass", None)
        .delete(&class, &Default::default())
        .await
        .unwrap();
}

/// The chart's ServiceAccount, ClusterRole and binding for the gateway, as
/// `helm template --set gateway.enabled=true` renders them.
fn chart_gateway_rbac() -> String {
    let helm = aim_devcluster::CacheDirs::discover()
        .unwrap()
        .binary("helm");
    let out = std::process::Command::new(helm)
        .args(["template", "aim"])
        .arg(aim_testkit::repo_path("deploy/chart"))
        .args(["--namespace", "aim-system", "--kube-version", "1.34.4"])
        .args(["--set", "gateway.enabled=true"])
        .args(["--show-only", "templates/gateway.yaml"])
        .output()
        .expect("helm runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .split("\n---")
        .filter(|doc| {
            [
                "kind: ServiceAccount",
                "kind: ClusterRole\n",
                "kind: ClusterRoleBinding",
            ]
            .iter()
            .any(|k| doc.contains(k))
        })
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// The chart's RBAC is all the gateway needs: acting as the chart's
/// ServiceAccount it reads every kind it follows (ready), programs its
/// Gateway, and writes a route's status, resolving its backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_runs_under_the_charts_rbac() {
    let client = aim_testkit::client().await;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let aim_system =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "aim-system"}})).unwrap();
    match namespaces.create(&Default::default(), &aim_system).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("{e}"),
    }
    let rbac = chart_gateway_rbac();
    assert_eq!(
        rbac.lines().filter(|l| l.starts_with("kind: ")).count(),
        3,
        "{rbac}"
    );
    apply_yaml(&client, "aim-system", &rbac).await.unwrap();
    let info = aim_testkit::cluster().await;
    let kc = kube::config::Kubeconfig::read_from(&info.kubeconfig).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    config.auth_info.impersonate = Some("system:serviceaccount:aim-system:aim-gateway".into());
    let as_chart = kube::Client::try_from(config).unwrap();

    let ns = namespace(&client, "gw-rbac").await;
    let class = format!("aim-{ns}");
    let yaml = format!(
        "{}---\n{}---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: chat}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules:\n  - backendRefs: [{{name: present, port: 80}}]\n",
        gateway_yaml(&class),
        service_yaml("present", "nothing")
    );
    apply_yaml(&client, &ns, &yaml).await.unwrap();
    let gateway = start_gateway(&as_chart, &ns).await;
    await_object(
        &gateway_api(&client, "Gateway", Some(&ns)),
        "gw",
        "Gateway Programmed under the chart's RBAC",
        WAIT,
        |g| {
            is(
                &g.data["status"]["conditions"],
                "Programmed",
                "True",
                "Programmed",
            )
        },
    )
    .await;
    await_object(
        &gateway_api(&client, "HTTPRoute", Some(&ns)),
        "chat",
        "the route accepted with its backend resolved under the chart's RBAC",
        WAIT,
        |r| {
            let p = our_parent(r);
            is(&p["conditions"], "Accepted", "True", "Accepted")
                && is(&p["conditions"], "ResolvedRefs", "True", "ResolvedRefs")
        },
    )
    .await;
    await_ready(
        &gateway.admin_addr.to_string(),
        "never ready under the chart's RBAC: a watch it needs is forbidden",
    )
    .await;
    gateway.shutdown().await.unwrap();
    aim_testkit::delete_namespace(&client, &ns).await;
    gateway_api(&client, "GatewayClass", None)
        .delete(&class, &Default::default())
        .await
        .unwrap();
}
