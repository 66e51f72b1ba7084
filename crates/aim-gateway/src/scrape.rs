//! Reading an endpoint's vLLM gauges from its Prometheus `/metrics`.
//!
//! Only three gauges matter to the picker, so the text format is scanned
//! for them rather than fully parsed: `vllm:num_requests_waiting`,
//! `vllm:num_requests_running` (summed over their label sets, one per
//! engine) and `vllm:kv_cache_usage_perc` (the fullest engine; vLLM before
//! V1 called it `vllm:gpu_cache_usage_perc`).

use std::time::Duration;

use aim_picker::ServerMetrics;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};

use crate::endpoints::EndpointUrl;
use crate::proxy::{Client, ProxyBody};

const WAITING: &str = "vllm:num_requests_waiting";
const RUNNING: &str = "vllm:num_requests_running";
const KV_USAGE: &str = "vllm:kv_cache_usage_perc";
const KV_USAGE_V0: &str = "vllm:gpu_cache_usage_perc";

/// A metrics page larger than this is refused (vLLM's is tens of KiB).
const MAX_PAGE_BYTES: usize = 4 << 20;

/// The metric name and value of one sample line, or `None` for comments,
/// blank lines and lines that do not parse.
fn sample(line: &str) -> Option<(&str, f64)> {
    let line = line.trim_start();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    if rest.starts_with('{') {
        // Label values are quoted and may hold `}`, spaces and escapes.
        let mut quoted = false;
        let mut escaped = false;
        let mut close = None;
        for (i, c) in rest.char_indices() {
            match (quoted, escaped, c) {
                (true, true, _) => escaped = false,
                (true, false, '\\') => escaped = true,
                (_, false, '"') => quoted = !quoted,
                (false, _, '}') => {
                    close = Some(i);
                    break;
                }
                _ => {}
            }
        }
        rest = &rest[close? + 1..];
    }
    // The value, then an optional timestamp.
    let value = rest.split_whitespace().next()?;
    Some((name, value.parse().ok()?))
}

/// The picker's gauges from a `/metrics` page; the error names what is
/// missing or wrong.
pub fn parse_vllm_metrics(text: &str) -> Result<ServerMetrics, String> {
    let (mut waiting, mut running, mut kv, mut kv_v0) =
        (None::<f64>, None::<f64>, None::<f64>, None::<f64>);
    for (name, value) in text.lines().filter_map(sample) {
        let slot = match name {
            WAITING => &mut waiting,
            RUNNING => &mut running,
            KV_USAGE => &mut kv,
            KV_USAGE_V0 => &mut kv_v0,
            _ => continue,
        };
        if !value.is_finite() || value < 0.0 {
            return Err(format!("{name} is {value}"));
        }
        *slot = Some(match (name, *slot) {
            (KV_USAGE | KV_USAGE_V0, Some(v)) => v.max(value),
            (_, Some(v)) => v + value,
            (_, None) => value,
        });
    }
    let missing = |name| format!("no {name} sample: is this a vLLM /metrics page?");
    Ok(ServerMetrics {
        waiting: waiting.ok_or_else(|| missing(WAITING))?.round() as u32,
        running: running.ok_or_else(|| missing(RUNNING))?.round() as u32,
        kv_usage: kv.or(kv_v0).ok_or_else(|| missing(KV_USAGE))?.min(1.0),
    })
}

/// One scrape of `url`'s `/metrics`, within `timeout`.
pub async fn scrape(
    client: &Client,
    url: &EndpointUrl,
    timeout: Duration,
) -> Result<ServerMetrics, String> {
    let request = http::Request::get(url.uri("/metrics"))
        .body(ProxyBody::new(
            Empty::<Bytes>::new().map_err(|never| match never {}),
        ))
        .expect("a GET of a valid URI");
    let fetch = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| format!("GET /metrics: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("GET /metrics answered {}", response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_PAGE_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading /metrics: {e}"))?
            .to_bytes();
        let text = std::str::from_utf8(&body).map_err(|_| "/metrics is not UTF-8".to_string())?;
        parse_vllm_metrics(text)
    };
    tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| format!("GET /metrics took longer than {timeout:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_read_past_labels_that_hold_braces_and_spaces() {
        assert_eq!(sample("x 1"), Some(("x", 1.0)));
        assert_eq!(sample("x{a=\"b\"} 2.5 1700000000000"), Some(("x", 2.5)));
        assert_eq!(sample(r#"x{a="} {",b="q\"}"} 3"#), Some(("x", 3.0)));
        assert_eq!(sample("# TYPE x gauge"), None);
        assert_eq!(sample("x{a=\"unclosed 1"), None);
        assert_eq!(sample("x notanumber"), None);
    }

    #[test]
    fn gauges_are_summed_and_the_fullest_cache_counts() {
        let page = "\
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine=\"0\",model_name=\"m\"} 3.0
vllm:num_requests_waiting{engine=\"1\",model_name=\"m\"} 1.0
vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 7.0
vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"m\"} 0.25
vllm:kv_cache_usage_perc{engine=\"1\",model_name=\"m\"} 0.5
vllm:num_requests_waiting_total 99
";
        let m = parse_vllm_metrics(page).unwrap();
        assert_eq!((m.waiting, m.running, m.kv_usage), (4, 7, 0.5));
    }

    #[test]
    fn the_v0_cache_gauge_is_read_when_the_v1_one_is_absent() {
        let page = "vllm:num_requests_waiting 0\nvllm:num_requests_running 1\nvllm:gpu_cache_usage_perc 0.4\n";
        assert_eq!(parse_vllm_metrics(page).unwrap().kv_usage, 0.4);
    }

    #[test]
    fn a_page_without_the_gauges_is_refused_by_name() {
        let e = parse_vllm_metrics("up 1\n").unwrap_err();
        assert!(e.contains("vllm:num_requests_waiting"), "{e}");
        let e = parse_vllm_metrics("vllm:num_requests_waiting NaN\n").unwrap_err();
        assert!(e.contains("NaN"), "{e}");
    }
}
