//! The Prometheus backend's health: before KEDA ever asks, the operator
//! runs each Prometheus metric's query the way KEDA's `prometheus` scaler
//! will (an instant query at `<serverAddress>/api/v1/query`) and says in
//! the `MetricsReady` condition what KEDA would otherwise only log.
//!
//! KEDA v2.18's scaler takes the first and only element of an instant
//! vector: an empty result is 0 (its `ignoreNullValues` default), more
//! than one element is an error ("returned multiple elements") and the HPA
//! then holds its replicas without saying why on the AIMService. The
//! operator names each case and its fix:
//!
//! * unreachable server → Degraded, `PrometheusUnreachable` (it may come
//!   back; nothing of the service is held up);
//! * a query Prometheus refuses (not PromQL) or one that is not an instant
//!   vector → Failed, `InvalidQuery`: the spec cannot work as written, so
//!   nothing of the change is deployed, as for any invalid scaling field;
//! * several series → Degraded, `QueryReturnsSeveralSeries`, with the
//!   query wrapped in `sum(...)` as the fix;
//! * no series → waiting during the first-metrics grace, then Degraded,
//!   `QueryReturnsNoSeries`, naming the scrape pools (ServiceMonitors,
//!   PodMonitors) that select no target at all.
//!
//! Pure apart from [`probe`], which does the HTTP.

use std::collections::BTreeSet;
use std::time::Duration;

use aim_api::service::AIMServiceSpec;
use serde_json::Value;

use crate::state::{ComponentState, ErrorCategory, Health};

const COMPONENT: &str = "Metrics";

/// One Prometheus metric of the spec, to be checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Query {
    /// Its index in `spec.autoScaling.metrics`.
    pub index: usize,
    pub server_address: String,
    pub query: String,
}

impl Query {
    fn field(&self) -> String {
        format!(
            "spec.autoScaling.metrics[{}].external.metric.query",
            self.index
        )
    }
}

/// The Prometheus metrics of an autoscaled service that are complete
/// enough to run (a broken field is the translation's `InvalidScaling`).
pub fn queries(spec: &AIMServiceSpec) -> Vec<Query> {
    if aim_scaling::autoscaling_bounds(spec).is_none() {
        return Vec::new();
    }
    let Some(scaling) = &spec.auto_scaling else {
        return Vec::new();
    };
    scaling
        .metrics
        .iter()
        .enumerate()
        .filter_map(|(index, m)| {
            let source = m.prometheus()?;
            let server_address = source.server_address.as_deref()?.trim();
            let query = source.query.as_deref()?.trim();
            let absolute =
                server_address.starts_with("http://") || server_address.starts_with("https://");
            (absolute && !query.is_empty()).then(|| Query {
                index,
                server_address: server_address.trim_end_matches('/').to_string(),
                query: query.to_string(),
            })
        })
        .collect()
}

/// What Prometheus answered.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    /// No HTTP answer at all (refused, timed out, no such host).
    Unreachable(String),
    /// Prometheus refused the query (`status: error`): `bad_data` is a
    /// query that does not parse or evaluate.
    Refused { error_type: String, error: String },
    /// A successful instant query.
    Result {
        result_type: String,
        /// Each series' labels, as `{a="b", ...}`, for the message.
        series: Vec<String>,
    },
    /// Something answered, but not Prometheus' query API.
    NotPrometheus(String),
}

/// One query's check.
#[derive(Clone, Debug, PartialEq)]
pub struct Probe {
    pub query: Query,
    pub answer: Answer,
    /// Scrape pools with no target, when the query found no series.
    pub idle_pools: Vec<String>,
}

/// Reads an answer of `/api/v1/query`.
pub fn parse_answer(status: u16, body: &[u8]) -> Answer {
    let Ok(json) = serde_json::from_slice::<Value>(body) else {
        let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        return Answer::NotPrometheus(format!("HTTP {status}: {text:?}"));
    };
    let field = |k: &str| json.get(k).and_then(Value::as_str).unwrap_or("");
    match field("status") {
        "error" => Answer::Refused {
            error_type: field("errorType").to_string(),
            error: field("error").to_string(),
        },
        "success" => {
            let data = json.get("data");
            let result_type = data
                .and_then(|d| d.get("resultType"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let series = match data.and_then(|d| d.get("result")) {
                Some(Value::Array(items)) if result_type != "scalar" && result_type != "string" => {
                    items.iter().map(series_labels).collect()
                }
                _ => Vec::new(),
            };
            Answer::Result {
                result_type,
                series,
            }
        }
        _ => Answer::NotPrometheus(format!("HTTP {status} without a Prometheus status field")),
    }
}

fn series_labels(item: &Value) -> String {
    let labels = item
        .get("metric")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    format!(
                        "{k}={}",
                        v.as_str().map_or(v.to_string(), |s| format!("{s:?}"))
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    format!("{{{labels}}}")
}

/// The scrape pools that have no active target: a ServiceMonitor or
/// PodMonitor that selects nothing shows up here (prometheus-operator names
/// its pools `serviceMonitor/<namespace>/<name>/<endpoint>` and
/// `podMonitor/...`). `pools` is `/api/v1/scrape_pools`, `targets` is
/// `/api/v1/targets?state=active`.
pub fn idle_pools(pools: &Value, targets: &Value) -> Vec<String> {
    let busy: BTreeSet<&str> = targets
        .pointer("/data/activeTargets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| t.get("scrapePool").and_then(Value::as_str))
        .collect();
    pools
        .pointer("/data/scrapePools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|p| !busy.contains(p))
        .map(describe_pool)
        .collect()
}

/// `serviceMonitor/ns/name/0` → `ServiceMonitor ns/name`.
fn describe_pool(pool: &str) -> String {
    let parts: Vec<&str> = pool.split('/').collect();
    let kind = match parts.first().copied() {
        Some("serviceMonitor") => Some("ServiceMonitor"),
        Some("podMonitor") => Some("PodMonitor"),
        Some("probe") => Some("Probe"),
        Some("scrapeConfig") => Some("ScrapeConfig"),
        _ => None,
    };
    match (kind, parts.get(1), parts.get(2)) {
        (Some(kind), Some(ns), Some(name)) => format!("{kind} {ns}/{name}"),
        _ => format!("scrape job {pool:?}"),
    }
}

/// The `Metrics` component of the service, or `None` when it has no
/// Prometheus metric. `ready_for` is how long the InferenceService has
/// been Ready (None: not Ready), for the first-metrics grace.
pub fn health(probes: &[Probe], ready_for: Option<Duration>) -> Option<Health> {
    if probes.is_empty() {
        return None;
    }
    let settled = ready_for.is_some_and(|d| d >= super::scaling::FIRST_METRICS_GRACE);
    let mut worst: Option<(u8, Health)> = None;
    let mut fine = Vec::new();
    for probe in probes {
        let (rank, health) = match judge(probe, settled) {
            Ok(message) => {
                fine.push(message);
                continue;
            }
            Err(found) => found,
        };
        if worst.as_ref().is_none_or(|(r, _)| rank > *r) {
            worst = Some((rank, health));
        }
    }
    Some(match worst {
        Some((_, h)) => h,
        None => Health::ready(COMPONENT, "QueryReturnsOneSeries", fine.join("; ")),
    })
}

/// Ok(message) for a query KEDA can use; Err((severity, health)) else.
fn judge(probe: &Probe, settled: bool) -> Result<String, (u8, Health)> {
    let q = &probe.query;
    let at = format!("Prometheus at {}", q.server_address);
    match &probe.answer {
        Answer::Unreachable(e) => Err((
            2,
            Health::new(
                COMPONENT,
                ComponentState::Degraded,
                "PrometheusUnreachable",
                format!(
                    "{at} cannot be reached ({e}), so KEDA cannot read {}; check \
                     spec.autoScaling.metrics[{}].external.metric.serverAddress and that the \
                     server is up",
                    q.query, q.index
                ),
            ),
        )),
        Answer::NotPrometheus(e) => Err((
            2,
            Health::new(
                COMPONENT,
                ComponentState::Degraded,
                "PrometheusUnreachable",
                format!(
                    "{at} did not answer as Prometheus' query API ({e}); \
                     spec.autoScaling.metrics[{}].external.metric.serverAddress must be the \
                     server's base URL, without /api/v1",
                    q.index
                ),
            ),
        )),
        Answer::Refused { error_type, error } => Err((
            4,
            Health::new(
                COMPONENT,
                ComponentState::Failed,
                "InvalidQuery",
                format!(
                    "{} is refused by {at}: {error_type}: {error}. Nothing of this change was \
                     deployed; fix the PromQL and apply again",
                    q.field()
                ),
            )
            .because(ErrorCategory::InvalidSpec),
        )),
        Answer::Result { result_type, .. } if result_type != "vector" => Err((
            4,
            Health::new(
                COMPONENT,
                ComponentState::Failed,
                "InvalidQuery",
                format!(
                    "{} returns a {result_type}, but KEDA's prometheus scaler reads an instant \
                     vector of one series; aggregate it, e.g. sum({}). Nothing of this change \
                     was deployed",
                    q.field(),
                    q.query
                ),
            )
            .because(ErrorCategory::InvalidSpec),
        )),
        Answer::Result { series, .. } if series.len() > 1 => {
            let shown: Vec<&str> = series.iter().take(3).map(String::as_str).collect();
            Err((
                3,
                Health::new(
                    COMPONENT,
                    ComponentState::Degraded,
                    "QueryReturnsSeveralSeries",
                    format!(
                        "{} returns {} series ({}{}); KEDA's prometheus scaler needs exactly one \
                         and stops scaling this service. Aggregate them: sum({})",
                        q.field(),
                        series.len(),
                        shown.join(", "),
                        if series.len() > 3 { ", ..." } else { "" },
                        q.query
                    ),
                ),
            ))
        }
        Answer::Result { series, .. } if series.is_empty() => {
            let pools = if probe.idle_pools.is_empty() {
                String::new()
            } else {
                format!(
                    " These select no target at all: {}; check their selectors against the \
                     pods' (or Services') labels and ports.",
                    probe.idle_pools.join(", ")
                )
            };
            let message = format!(
                "{} returns no series from {at}, so KEDA reads 0 and the service stays at its \
                 minimum. Check that Prometheus scrapes the service's pods (a ServiceMonitor or \
                 PodMonitor selecting them) and the metric's name.{pools}",
                q.field()
            );
            Err(if settled {
                (
                    1,
                    Health::new(
                        COMPONENT,
                        ComponentState::Degraded,
                        "QueryReturnsNoSeries",
                        message,
                    ),
                )
            } else {
                (
                    0,
                    Health::new(
                        COMPONENT,
                        ComponentState::Progressing,
                        "WaitingForSeries",
                        format!("Waiting for the first scrape: {message}"),
                    ),
                )
            })
        }
        Answer::Result { .. } => Ok(format!("{} returns one series from {at}", q.query)),
    }
}

/// Runs one query as KEDA will, and on an empty answer looks for scrape
/// pools that select nothing. Never fails: every outcome is an [`Answer`].
pub async fn probe(http: &reqwest::Client, query: &Query) -> Probe {
    let base = &query.server_address;
    let answer = match http
        .get(format!("{base}/api/v1/query"))
        .query(&[("query", query.query.as_str())])
        .send()
        .await
    {
        Err(e) => Answer::Unreachable(short_error(&e)),
        Ok(response) => {
            let status = response.status().as_u16();
            match response.bytes().await {
                Ok(body) => parse_answer(status, &body),
                Err(e) => Answer::Unreachable(short_error(&e)),
            }
        }
    };
    let empty = matches!(&answer, Answer::Result { result_type, series } if result_type == "vector" && series.is_empty());
    let idle_pools = if empty {
        let get = |path: &'static str| {
            let url = format!("{base}{path}");
            async move {
                let r = http.get(url).send().await.ok()?;
                r.json::<Value>().await.ok()
            }
        };
        match (
            get("/api/v1/scrape_pools").await,
            get("/api/v1/targets?state=active").await,
        ) {
            (Some(pools), Some(targets)) => idle_pools(&pools, &targets),
            _ => Vec::new(),
        }
    } else {
        Vec::new()
    };
    Probe {
        query: query.clone(),
        answer,
        idle_pools,
    }
}

/// reqwest's error with its causes, on one line.
fn short_error(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The client for Prometheus queries: a short timeout, since a reconcile
/// waits for it.
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(4))
        .build()
        .expect("a reqwest client builds")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn q() -> Query {
        Query {
            index: 0,
            server_address: "http://127.0.0.1:9090".into(),
            query: "vllm:num_requests_running".into(),
        }
    }

    fn probe(answer: Answer) -> Probe {
        Probe {
            query: q(),
            answer,
            idle_pools: Vec::new(),
        }
    }

    fn vector(n: usize) -> Vec<u8> {
        let result: Vec<Value> = (0..n)
            .map(|i| json!({"metric": {"pod": format!("p{i}")}, "value": [1.0, "3"]}))
            .collect();
        json!({"status": "success", "data": {"resultType": "vector", "result": result}})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn one_series_is_ready() {
        let h = health(&[probe(parse_answer(200, &vector(1)))], None).unwrap();
        assert_eq!(h.state, ComponentState::Ready);
        assert_eq!(h.condition_type(), "MetricsReady");
    }

    #[test]
    fn several_series_name_the_field_and_the_sum() {
        let h = health(&[probe(parse_answer(200, &vector(2)))], None).unwrap();
        assert_eq!(h.reason, "QueryReturnsSeveralSeries");
        assert_eq!(h.state, ComponentState::Degraded);
        assert!(
            h.message
                .contains("spec.autoScaling.metrics[0].external.metric.query")
        );
        assert!(h.message.contains("returns 2 series"));
        assert!(
            h.message.contains("sum(vllm:num_requests_running)"),
            "{}",
            h.message
        );
        assert!(h.message.contains("pod=\"p1\""), "{}", h.message);
        assert_eq!(h.error, None, "a runtime state must not block the deploy");
    }

    #[test]
    fn a_refused_query_is_invalid_and_blocks_the_change() {
        let body = br#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"query\": 1:5: parse error: unexpected end of input"}"#;
        let h = health(&[probe(parse_answer(400, body))], None).unwrap();
        assert_eq!(h.reason, "InvalidQuery");
        assert_eq!(h.error, Some(ErrorCategory::InvalidSpec));
        assert!(h.message.contains("parse error"), "{}", h.message);
        assert!(h.message.contains("external.metric.query"));
    }

    #[test]
    fn a_scalar_result_is_invalid_for_keda() {
        let body = br#"{"status":"success","data":{"resultType":"scalar","result":[1.0,"2"]}}"#;
        let h = health(&[probe(parse_answer(200, body))], None).unwrap();
        assert_eq!(h.reason, "InvalidQuery");
        assert!(h.message.contains("returns a scalar"));
    }

    #[test]
    fn no_series_waits_for_the_grace_then_names_idle_monitors() {
        let mut p = probe(parse_answer(200, &vector(0)));
        let early = health(std::slice::from_ref(&p), Some(Duration::from_secs(5))).unwrap();
        assert_eq!(early.state, ComponentState::Progressing);
        p.idle_pools = idle_pools(
            &json!({"data": {"scrapePools": ["serviceMonitor/inference/vllm-sim/0", "podMonitor/aim/aim-inference/0"]}}),
            &json!({"data": {"activeTargets": [{"scrapePool": "podMonitor/aim/aim-inference/0"}]}}),
        );
        let late = health(&[p], Some(Duration::from_secs(600))).unwrap();
        assert_eq!(late.reason, "QueryReturnsNoSeries");
        assert_eq!(late.state, ComponentState::Degraded);
        assert!(
            late.message.contains("ServiceMonitor inference/vllm-sim"),
            "{}",
            late.message
        );
        assert!(!late.message.contains("aim-inference"), "{}", late.message);
    }

    #[test]
    fn unreachable_and_foreign_servers_are_degraded_not_failed() {
        let h = health(
            &[probe(Answer::Unreachable("connection refused".into()))],
            None,
        )
        .unwrap();
        assert_eq!(h.reason, "PrometheusUnreachable");
        assert_eq!(h.error, None);
        assert!(h.message.contains("serverAddress"));
        let h = health(&[probe(parse_answer(404, b"404 page not found"))], None).unwrap();
        assert_eq!(h.reason, "PrometheusUnreachable");
        assert!(h.message.contains("without /api/v1"), "{}", h.message);
    }

    #[test]
    fn the_worst_query_speaks() {
        let mut second = probe(parse_answer(
            400,
            br#"{"status":"error","errorType":"bad_data","error":"x"}"#,
        ));
        second.query.index = 1;
        let h = health(&[probe(parse_answer(200, &vector(2))), second], None).unwrap();
        assert_eq!(h.reason, "InvalidQuery");
        assert!(h.message.contains("metrics[1]"));
    }
}
