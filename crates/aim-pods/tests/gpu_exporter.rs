//! The runner's GPU exporter against a real simulator: what `aim sim`
//! serves at `/sim/metrics` is what the runner reads, and the utilisation
//! derived from it follows the engine's load.

use std::time::Duration;

use aim_pods::gpu::{self, BusySample};
use aim_sim::{SimArgs, TextMode};
use tokio::net::TcpListener;

async fn read(http: &reqwest::Client, base: &str) -> BusySample {
    let page = http
        .get(format!("{base}{}", gpu::SIM_METRICS_PATH))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    gpu::parse_busy(&page).unwrap_or_else(|e| panic!("{e}:\n{page}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn utilisation_is_high_while_the_engine_works_and_zero_when_it_idles() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The names the runner looks for are the ones the simulator serves.
    assert_eq!(gpu::SIM_METRICS_PATH, aim_sim::SIM_METRICS_PATH);
    assert_eq!(gpu::SIM_BUSY_SECONDS, aim_sim::BUSY_SECONDS);
    assert_eq!(gpu::SIM_CLOCK_SECONDS, aim_sim::CLOCK_SECONDS);

    let mut args = SimArgs::for_tests();
    args.mode = TextMode::Fixed;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim = aim_sim::start(args, listener).await.unwrap();
    let base = format!("http://{}", sim.addr());
    let http = reqwest::Client::new();

    let idle_from = read(&http, &base).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle_to = read(&http, &base).await;
    assert_eq!(gpu::utilisation_percent(idle_from, idle_to), Some(0.0));

    // One long request: about 1.5 s of back-to-back 1 ms steps on the
    // tiny profile.
    let request = {
        let http = http.clone();
        let base = base.clone();
        tokio::spawn(async move {
            let body = serde_json::json!({"model": "sim-model", "prompt": "a b c d",
                                          "max_tokens": 1500, "ignore_eos": true});
            http.post(format!("{base}/v1/completions"))
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let busy_from = read(&http, &base).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let busy_to = read(&http, &base).await;
    let loaded = gpu::utilisation_percent(busy_from, busy_to).unwrap();
    assert!(loaded > 90.0, "a working engine: {loaded}%");
    assert!(busy_to.busy_s <= busy_to.clock_s, "{busy_to:?}");

    request.await.unwrap();
    let after_from = read(&http, &base).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after_to = read(&http, &base).await;
    assert_eq!(gpu::utilisation_percent(after_from, after_to), Some(0.0));
    sim.shutdown().await.unwrap();
}
