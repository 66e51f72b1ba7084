//! The scaler says what it last answered each ScaledObject and why: the
//! query's value, the policy's value and the policy's state, on the admin
//! port as JSON (`/debug/decisions`) and as self-metrics.

mod common;

use common::otlp::{gauge, now, number_point, request};
use common::*;

fn running(pod: &str, value: f64) -> opentelemetry_proto::tonic::metrics::v1::NumberDataPoint {
    number_point(
        &[
            ("namespace", "ns"),
            ("deployment", "chat-predictor"),
            ("pod", pod),
        ],
        now(),
        0,
        value,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_answer_per_scaled_object_is_on_the_admin_port() {
    let scaler = start_scaler(|_| {}).await;
    push(
        scaler.addresses[0],
        request(vec![gauge(
            "vllm:num_requests_running",
            vec![running("a", 8.0), running("b", 8.0), running("c", 8.0)],
        )]),
    )
    .await;
    let mut client = keda_client(scaler.addresses[0]).await;
    let mut panicky = kserve_metadata("ns", "chat", "vllm:num_requests_running", "4", None);
    panicky.insert("policy".into(), "stable-panic".into());
    let (value, _, _) = keda_poll(&mut client, &scaled_object("ns", "panicky", panicky))
        .await
        .unwrap();
    // 24 in flight at 4 per replica is 6 replicas, twice the 3 that
    // report: panic, capped at twice the current count.
    assert!((value - 24.0).abs() < 0.01, "{value}");
    let plain = kserve_metadata("ns", "chat", "vllm:num_requests_running", "4", None);
    keda_poll(&mut client, &scaled_object("ns", "plain", plain))
        .await
        .unwrap();

    let (status, _, body) =
        http_request(scaler.admin_address, "GET", "/debug/decisions", &[], vec![]).await;
    assert_eq!(status, 200);
    let decisions: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
    assert_eq!(decisions.len(), 2, "{decisions:?}");
    let of = |name: &str| {
        decisions
            .iter()
            .find(|d| d["scaledobject"] == name)
            .unwrap_or_else(|| panic!("no decision for {name}: {decisions:?}"))
    };
    let p = of("panicky");
    assert_eq!(p["namespace"], "ns");
    assert_eq!(p["policy"], "stable-panic");
    assert_eq!(p["mode"], "panic");
    assert_eq!(p["raw"], 24.0);
    assert!(p["at"].as_f64().unwrap() > 1.7e9);
    let q = of("plain");
    assert_eq!(q["policy"], "passthrough");
    assert!(q.get("mode").is_none(), "{q}");
    assert_eq!(q["value"], 24.0);

    let (_, _, body) = http_request(scaler.admin_address, "GET", "/metrics", &[], vec![]).await;
    let text = String::from_utf8(body).unwrap();
    for line in [
        "aim_scaler_policy_mode{namespace=\"ns\",scaledobject=\"panicky\",policy=\"stable-panic\",mode=\"panic\"} 1",
        "aim_scaler_decision_raw{namespace=\"ns\",scaledobject=\"plain\",policy=\"passthrough\"} 24",
        "aim_scaler_decision_replicas{namespace=\"ns\",scaledobject=\"plain\",policy=\"passthrough\"} 6",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    scaler.shutdown().await;
}
