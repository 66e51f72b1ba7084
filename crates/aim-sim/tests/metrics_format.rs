//! `/metrics` read by an independent Prometheus text-format parser and checked against the
//! vLLM V1 metric table (`vllm/v1/metrics/loggers.py`): names, types, labels and bucket boundaries, and
//! values that reflect what the engine did.

mod common;

use std::collections::HashMap;

use common::{eventually, get_text, metric, post, start_sim, url};
use futures::StreamExt;
use openmetrics_parser::{MetricFamily, PrometheusType, PrometheusValue};

type Family = MetricFamily<PrometheusType, PrometheusValue>;

const TTFT: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
const ITL: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
const LATENCY: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];
/// The 1-2-5 series up to the tiny profile's max_model_len of 2048, written out by hand.
const TOKENS_2048: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0,
];
const PARAMS_N: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0];
const ITERATION: &[f64] = &[
    1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0,
];

fn expected_histograms() -> Vec<(&'static str, &'static [f64])> {
    vec![
        ("vllm:time_to_first_token_seconds", TTFT),
        ("vllm:inter_token_latency_seconds", ITL),
        ("vllm:request_time_per_output_token_seconds", ITL),
        ("vllm:e2e_request_latency_seconds", LATENCY),
        ("vllm:request_queue_time_seconds", LATENCY),
        ("vllm:request_inference_time_seconds", LATENCY),
        ("vllm:request_prefill_time_seconds", LATENCY),
        ("vllm:request_decode_time_seconds", LATENCY),
        ("vllm:request_prompt_tokens", TOKENS_2048),
        ("vllm:request_generation_tokens", TOKENS_2048),
        ("vllm:request_max_num_generation_tokens", TOKENS_2048),
        ("vllm:request_params_max_tokens", TOKENS_2048),
        ("vllm:request_params_n", PARAMS_N),
        ("vllm:iteration_tokens_total", ITERATION),
    ]
}

const COUNTERS: &[&str] = &[
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:request_success_total",
    "vllm:num_preemptions_total",
    "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total",
    "vllm:external_prefix_cache_queries_total",
    "vllm:external_prefix_cache_hits_total",
    "vllm:mm_cache_queries_total",
    "vllm:mm_cache_hits_total",
];

const GAUGES: &[&str] = &[
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:engine_sleep_state",
    "vllm:cache_config_info",
];

/// Label names as a sorted set (the parser does not keep exposition order).
fn labels(family: &Family) -> Vec<String> {
    let mut names = family.get_label_names().to_vec();
    names.sort();
    names
}

fn sorted(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names
}

fn scrape(text: &str) -> HashMap<String, Family> {
    openmetrics_parser::prometheus::parse_prometheus(text)
        .unwrap_or_else(|e| panic!("exposition does not parse: {e:?}\n{text}"))
        .families
}

fn counter(families: &HashMap<String, Family>, name: &str, reason: Option<&str>) -> f64 {
    let family = &families[name];
    let sample = family
        .iter_samples()
        .find(|s| {
            reason.is_none_or(|r| {
                s.get_labelset().unwrap().get_label_value("finished_reason") == Some(r)
            })
        })
        .unwrap();
    match &sample.value {
        PrometheusValue::Counter(c) => c.value.as_f64(),
        other => panic!("{name} is not a counter: {other:?}"),
    }
}

fn histogram_count(families: &HashMap<String, Family>, name: &str) -> u64 {
    match &families[name].iter_samples().next().unwrap().value {
        PrometheusValue::Histogram(h) => h.count.unwrap(),
        other => panic!("{name} is not a histogram: {other:?}"),
    }
}

#[tokio::test]
async fn metrics_match_vllm_names_types_labels_and_buckets() {
    let sim = start_sim(|a| a.served_model_name = Some("served/model".into())).await;
    // Two identical prompts (the second hits the prefix cache), one aborted stream.
    let prompt = "w ".repeat(40);
    for _ in 0..2 {
        let body = format!(
            r#"{{"model":"served/model","prompt":"{prompt}","max_tokens":4,"ignore_eos":true}}"#
        );
        assert_eq!(post(&sim, "/v1/completions", &body).await.0, 200);
    }
    let stream = reqwest::Client::new()
        .post(url(&sim, "/v1/completions"))
        .body(r#"{"model":"served/model","prompt":"x","max_tokens":1500,"ignore_eos":true,"stream":true}"#)
        .send()
        .await
        .unwrap();
    let mut body = stream.bytes_stream();
    body.next().await.unwrap().unwrap();
    drop(body);
    eventually("the stream is aborted", || async {
        metric(&sim, "vllm:request_success_total|finished_reason=\"abort\"").await == 1.0
    })
    .await;

    let (status, text) = get_text(&sim, "/metrics").await;
    assert_eq!(status, 200);
    let families = scrape(&text);

    let model_labels = sorted(vec!["model_name".to_string(), "engine".to_string()]);
    for name in GAUGES {
        let family = families
            .get(*name)
            .unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(family.family_type, PrometheusType::Gauge, "{name}");
    }
    for name in [
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
    ] {
        assert_eq!(labels(&families[name]), model_labels, "{name}");
    }
    let mut sleep_labels = model_labels.clone();
    sleep_labels.push("sleep_state".into());
    assert_eq!(
        labels(&families["vllm:engine_sleep_state"]),
        sorted(sleep_labels)
    );
    let cache_info = labels(&families["vllm:cache_config_info"]);
    for label in [
        "block_size",
        "num_gpu_blocks",
        "enable_prefix_caching",
        "engine",
    ] {
        assert!(
            cache_info.iter().any(|l| l == label),
            "cache_config_info lacks {label}"
        );
    }

    for name in COUNTERS {
        let family = families
            .get(*name)
            .unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(family.family_type, PrometheusType::Counter, "{name}");
        let mut expected = model_labels.clone();
        if *name == "vllm:request_success_total" {
            expected.push("finished_reason".into());
        }
        assert_eq!(labels(family), sorted(expected), "{name}");
    }
    let reasons: Vec<String> = families["vllm:request_success_total"]
        .iter_samples()
        .map(|s| {
            s.get_labelset()
                .unwrap()
                .get_label_value("finished_reason")
                .unwrap()
                .to_string()
        })
        .collect();
    for reason in ["stop", "length", "abort", "error", "repetition"] {
        assert!(
            reasons.iter().any(|r| r == reason),
            "finished_reason={reason} is pre-created"
        );
    }

    for (name, buckets) in expected_histograms() {
        let family = families
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(family.family_type, PrometheusType::Histogram, "{name}");
        assert_eq!(labels(family), model_labels, "{name}");
        let PrometheusValue::Histogram(h) = &family.iter_samples().next().unwrap().value else {
            panic!("{name} has no histogram sample");
        };
        let bounds: Vec<f64> = h.buckets.iter().map(|b| b.upper_bound).collect();
        let mut expected = buckets.to_vec();
        expected.push(f64::INFINITY);
        assert_eq!(bounds, expected, "{name} buckets");
    }

    for series in families.values().flat_map(|f| f.iter_samples()) {
        let set = series.get_labelset().unwrap();
        if let Some(model) = set.get_label_value("model_name") {
            assert_eq!(model, "served/model");
        }
        assert_eq!(set.get_label_value("engine"), Some("0"));
    }

    // Values reflect the engine: 3 requests ended, the second prompt hit the cache.
    assert_eq!(
        counter(&families, "vllm:request_success_total", Some("length")),
        2.0
    );
    assert_eq!(
        counter(&families, "vllm:request_success_total", Some("abort")),
        1.0
    );
    assert_eq!(
        histogram_count(&families, "vllm:e2e_request_latency_seconds"),
        3
    );
    assert_eq!(
        histogram_count(&families, "vllm:request_queue_time_seconds"),
        3,
        "every scheduled request"
    );
    assert_eq!(
        histogram_count(&families, "vllm:time_to_first_token_seconds"),
        3
    );
    assert!(counter(&families, "vllm:prefix_cache_hits_total", None) >= 32.0);
    assert_eq!(
        counter(&families, "vllm:prompt_tokens_total", None),
        40.0 + 40.0 + 1.0
    );
    assert!(counter(&families, "vllm:generation_tokens_total", None) >= 9.0);
    assert_eq!(counter(&families, "vllm:num_preemptions_total", None), 0.0);
}

#[tokio::test]
async fn preemptions_and_kv_usage_show_kv_pressure() {
    // Eight 16-token blocks: two long requests cannot both keep their KV.
    let sim = start_sim(|a| a.num_gpu_blocks_override = Some(8)).await;
    let body = r#"{"model":"sim-model","prompt":"x","max_tokens":100,"ignore_eos":true}"#;
    let (a, b) = tokio::join!(
        post(&sim, "/v1/completions", body),
        post(&sim, "/v1/completions", body)
    );
    assert_eq!((a.0, b.0), (200, 200));
    let (_, text) = get_text(&sim, "/metrics").await;
    let families = scrape(&text);
    assert!(counter(&families, "vllm:num_preemptions_total", None) >= 1.0);
    assert_eq!(
        counter(&families, "vllm:request_success_total", Some("length")),
        2.0
    );
    assert_eq!(
        metric(&sim, "vllm:kv_cache_usage_perc").await,
        0.0,
        "all blocks are back"
    );
}
