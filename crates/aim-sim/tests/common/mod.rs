//! Shared helpers: start a simulator on 127.0.0.1 port 0, talk to it over raw HTTP.
#![allow(dead_code)] // each test binary uses a different subset

use std::time::Duration;

use aim_sim::{RunningSim, SimArgs, TextMode};
use serde_json::Value;
use tokio::net::TcpListener;

pub async fn start_sim(edit: impl FnOnce(&mut SimArgs)) -> RunningSim {
    // reqwest insists on a TLS provider even for plain HTTP; ring is the one already built.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut args = SimArgs::for_tests();
    args.mode = TextMode::Fixed;
    args.fixed_text = "one two three four five".into();
    edit(&mut args);
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    aim_sim::start(args, listener)
        .await
        .expect("simulator starts")
}

pub fn url(sim: &RunningSim, path: &str) -> String {
    format!("http://{}{path}", sim.addr())
}

pub async fn post(sim: &RunningSim, path: &str, body: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(url(sim, path))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("request is sent");
    let status = response.status().as_u16();
    let bytes = response.bytes().await.expect("body is read");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

pub async fn get_text(sim: &RunningSim, path: &str) -> (u16, String) {
    let response = reqwest::get(url(sim, path)).await.expect("request is sent");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body is read"))
}

/// The value of one unlabelled-by-reason sample line, e.g. `vllm:num_requests_running`.
pub async fn metric(sim: &RunningSim, name_and_extra_labels: &str) -> f64 {
    let (_, text) = get_text(sim, "/metrics").await;
    text.lines()
        .find(|l| {
            let (series, _) = l.rsplit_once(' ').unwrap_or_default();
            !l.starts_with('#') && series_matches(series, name_and_extra_labels)
        })
        .and_then(|l| l.rsplit_once(' ')?.1.parse().ok())
        .unwrap_or_else(|| panic!("metric {name_and_extra_labels} missing in:\n{text}"))
}

fn series_matches(series: &str, wanted: &str) -> bool {
    // `wanted` is a name, optionally followed by `|label="value"` to match one extra label.
    let (name, extra) = wanted.split_once('|').unwrap_or((wanted, ""));
    series.split('{').next() == Some(name) && series.contains(extra)
}

/// Polls until `check` holds, failing after a generous bound (a state wait, not a speed test).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..400 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for: {what}");
}
