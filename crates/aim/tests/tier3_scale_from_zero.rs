//! Tier 3: a service scales from zero and back behind `aim gateway`, with
//! the bed's real KServe, KEDA and HPA.
//!
//! The AIMService sets `minReplicas: 0` and routes through aim's Gateway.
//! The gateway (`--kubernetes`, in this process) follows the operator's
//! HTTPRoute and pushes its held requests per backend to the bed's scaler
//! over OTLP; the operator's ScaledObject wakes the predictor on that
//! queue through an `external-push` trigger. The test:
//!
//! 1. waits for the idle service to reach zero replicas (KEDA, after the
//!    service's `cooldownPeriod`);
//! 2. sends one streamed completion through the gateway: it is held, KEDA
//!    brings up a pod, and the held request is served once the pod is
//!    Ready; the time to first token from zero is printed, with its steps;
//! 3. waits for the service to go back to zero after its cooldown.
//!
//! ```sh
//! AIM_TEST_CLUSTER=<name> cargo test -p aim --test tier3_scale_from_zero -- --nocapture
//! ```

mod common;

use std::time::{Duration, Instant};

use clap::Parser;
use common::bed::{Bed, BedConfig, SERVICE, WAIT, is_ready, predictor_pods};
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams};
use tokio::net::TcpListener;

/// Idle seconds before the service goes back to zero.
const COOLDOWN_S: u64 = 20;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: aim_gateway::GatewayArgs,
}

fn service_yaml() -> String {
    format!(
        r#"apiVersion: aim.eai.amd.com/v1alpha1
kind: AIMService
metadata: {{name: {SERVICE}}}
spec:
  model: {{name: qwen-qwen3-32b}}
  template: {{name: qwen3-32b-latency}}
  minReplicas: 0
  maxReplicas: 2
  autoScaling:
    cooldownPeriod: {COOLDOWN_S}
  routing:
    enabled: true
    gatewayRef: {{name: gw, namespace: $NAMESPACE}}
    requestTimeout: 180s
"#
    )
}

/// aim's GatewayClass (one per namespace: classes are cluster-wide) and a
/// Gateway `gw` of it.
fn gateway_yaml(class: &str) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: {class}}}
spec: {{controllerName: {}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw}}
spec:
  gatewayClassName: {class}
  listeners: [{{name: http, protocol: HTTP, port: 80}}]
"#,
        aim_gateway::routes::CONTROLLER_NAME
    )
}

async fn replicas(bed: &Bed) -> Option<i32> {
    bed.deployments
        .get_opt(&bed.predictor)
        .await
        .unwrap()
        .and_then(|d| d.spec?.replicas)
}

/// Waits until the Deployment asks for `n` replicas and runs exactly that
/// many pods; returns how long it took.
async fn await_replicas(bed: &Bed, n: i32, within: Duration, what: &str) -> Duration {
    let started = Instant::now();
    loop {
        let pods = predictor_pods(&bed.pods, &bed.isvc).await;
        if replicas(bed).await == Some(n) && pods.len() == n as usize {
            return started.elapsed();
        }
        if started.elapsed() > within {
            let so = bed.scaled_object().await;
            panic!(
                "{what}: the Deployment asks for {:?} replicas with {} pods after {within:?}\nScaledObject status: {}\n{}",
                replicas(bed).await,
                pods.len(),
                so.data["status"],
                aim_testkit::events_of(&bed.admin, &bed.ns).await
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// KEDA's `KEDAScaleTargetActivated` events on the ScaledObject.
async fn activations(bed: &Bed) -> usize {
    let events: Api<Event> = Api::namespaced(bed.admin.clone(), &bed.ns);
    events
        .list(&ListParams::default().fields(&format!(
            "involvedObject.kind=ScaledObject,involvedObject.name={},reason=KEDAScaleTargetActivated",
            bed.predictor
        )))
        .await
        .unwrap()
        .items
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_service_scales_from_zero_behind_the_gateway_and_back() {
    let class = format!("aim-zero-{}", std::process::id());
    let bed = Bed::start_with(BedConfig {
        service_yaml: service_yaml(),
        runtime_config: Some(gateway_yaml(&class)),
        idle: false,
        ..BedConfig::seed("zero")
    })
    .await;

    // The operator's ScaledObject: KServe's trigger on the pod metric, and
    // the wake trigger on the gateway's queue for the route's backend.
    let so = bed.scaled_object().await;
    assert_eq!(so.data["spec"]["minReplicaCount"], 0, "{}", so.data);
    assert_eq!(so.data["spec"]["cooldownPeriod"], COOLDOWN_S, "{}", so.data);
    let backend = aim_scaling::gateway_backend(&bed.ns, &bed.isvc);
    let wake = &so.data["spec"]["triggers"][1];
    assert_eq!(wake["type"], "external-push", "{}", so.data);
    assert_eq!(
        wake["metadata"]["metricQuery"],
        format!("sum(aim_gateway_queue_depth{{service=\"{backend}\"}})")
    );
    assert_eq!(
        wake["metadata"]["scalerAddress"],
        bed.scaler_address.to_string()
    );

    // The gateway, pushing its queues to the bed's scaler.
    let gw_flag = format!("{}/gw", bed.ns);
    let scaler = bed.scaler_address.to_string();
    let cli = Cli::try_parse_from([
        "gateway",
        "--kubernetes",
        "--gateway",
        gw_flag.as_str(),
        "--otlp-endpoint",
        scaler.as_str(),
        "--queue-timeout",
        "180s",
    ])
    .unwrap();
    let cfg = cli.args.config().unwrap();
    let scope = cfg.kubernetes.clone().unwrap();
    let gateway = aim_gateway::start_kubernetes(
        cfg,
        bed.admin.clone(),
        scope,
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
    )
    .await
    .unwrap();

    // The route accepted by the gateway gives the service its path.
    let svc = aim_testkit::await_object(
        &bed.services,
        SERVICE,
        "HTTPRouteReady from the gateway",
        WAIT,
        |s| {
            s.status.as_ref().is_some_and(|st| {
                st.conditions
                    .iter()
                    .any(|c| c.type_ == "HTTPRouteReady" && c.status == "True")
            })
        },
    )
    .await;
    let path = svc
        .status
        .as_ref()
        .and_then(|s| s.routing.as_ref())
        .and_then(|r| r.path.clone())
        .expect("a routing path");

    // 1. Idle: KEDA takes the service to zero after its cooldown.
    let to_zero = await_replicas(&bed, 0, WAIT, "the idle service going to zero").await;
    println!(
        "idle service → zero replicas: {:.1} s",
        to_zero.as_secs_f64()
    );

    // The gateway holds what arrives now; its queue is on /metrics too.
    let sent = Instant::now();
    let url = format!("http://{}{path}/v1/completions", gateway.addr);
    let request = tokio::spawn(async move {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut response = reqwest::Client::new()
            .post(url)
            .header("content-type", "application/json")
            .body(r#"{"model":"Qwen/Qwen3-32B","prompt":"wake up","max_tokens":20,"ignore_eos":true,"stream":true}"#)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let mut first_token = None;
        let mut body = String::new();
        while let Some(chunk) = response.chunk().await.unwrap() {
            let text = String::from_utf8_lossy(&chunk);
            if first_token.is_none() && text.contains("\"text\"") {
                first_token = Some(sent.elapsed());
            }
            body.push_str(&text);
        }
        (status, first_token, body, sent.elapsed())
    });

    // 2. The held request wakes KEDA: 0 → 1, and is served once the pod
    // is Ready.
    let mut scaled_up = None;
    let mut pod_ready = None;
    while !request.is_finished() {
        if scaled_up.is_none() && replicas(&bed).await == Some(1) {
            scaled_up = Some(sent.elapsed());
        }
        if pod_ready.is_none()
            && predictor_pods(&bed.pods, &bed.isvc)
                .await
                .iter()
                .any(is_ready)
        {
            pod_ready = Some(sent.elapsed());
        }
        assert!(
            sent.elapsed() < WAIT,
            "the held request was not served within {WAIT:?}; replicas {:?}\n{}",
            replicas(&bed).await,
            aim_testkit::events_of(&bed.admin, &bed.ns).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, first_token, body, done) = request.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    let first_token = first_token.expect("a token came");
    let scaled_up = scaled_up.expect("the Deployment was scaled to 1");
    println!(
        "from zero: request held → Deployment scaled to 1: {:.2} s; → pod Ready: {}; → first token: {:.2} s; → stream done: {:.2} s",
        scaled_up.as_secs_f64(),
        pod_ready.map_or("(between polls)".into(), |t| format!(
            "{:.2} s",
            t.as_secs_f64()
        )),
        first_token.as_secs_f64(),
        done.as_secs_f64()
    );
    assert!(
        scaled_up <= first_token,
        "a token came before any replica existed"
    );
    // KEDA, not the HPA, took it from zero, and said so on its object.
    assert!(
        activations(&bed).await >= 1,
        "KEDA recorded no activation of {}\n{}",
        bed.predictor,
        aim_testkit::events_of(&bed.admin, &bed.ns).await
    );

    // 3. Idle again: back to zero after the cooldown, with KEDA's polling.
    let idle_at = Instant::now();
    await_replicas(&bed, 0, WAIT, "the service going back to zero").await;
    println!(
        "last stream done → zero replicas again: {:.1} s (cooldown {COOLDOWN_S} s, KEDA polls every 30 s)",
        idle_at.elapsed().as_secs_f64()
    );
    // KEDA counts the cooldown from the last time it saw the service
    // active, which is no earlier than the wake-up.
    assert!(
        sent.elapsed() >= Duration::from_secs(COOLDOWN_S),
        "back to zero {:?} after the wake-up, before the {COOLDOWN_S} s cooldown ended",
        sent.elapsed()
    );

    gateway.shutdown().await.unwrap();
    // GatewayClasses are cluster-wide: this test's goes with it.
    let classes: Api<kube::core::DynamicObject> = Api::all_with(
        bed.admin.clone(),
        &kube::core::ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk(
            "gateway.networking.k8s.io",
            "v1",
            "GatewayClass",
        )),
    );
    classes.delete(&class, &Default::default()).await.unwrap();
    bed.finish().await;
}
