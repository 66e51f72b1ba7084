//! What an OpenTelemetryCollector resource tells its sidecar to do, as a
//! plain value. Pure.
//!
//! KServe writes one `opentelemetry.io/v1beta1` collector per autoscaled
//! predictor (`otel_reconciler.go`): a `prometheus` receiver scraping
//! `localhost:<port>` every `scrape_interval`, the processors
//! `resourcedetection/env`, `transform` (datapoint attributes copied from
//! resource attributes) and `filter/metrics` (strict names), and an `otlp`
//! exporter. The runner plays that pipeline in order. Anything it cannot
//! play exactly is an error naming the field, never a silent approximation:
//! a sidecar that quietly sends other metrics than the resource says would
//! make every scaling test meaningless.

use std::time::Duration;

use serde_json::Value;

/// One step of the metrics pipeline, in the order the resource lists them.
#[derive(Clone, Debug, PartialEq)]
pub enum Processor {
    /// `resourcedetection/env`: resource attributes from the environment
    /// (the `k8s.*` attributes the OTel operator puts in the sidecar's
    /// `OTEL_RESOURCE_ATTRIBUTES`).
    ResourceFromEnv,
    /// `transform` statements `set(attributes["to"], resource.attributes["from"])`.
    CopyResourceAttributes(Vec<(String, String)>),
    /// `filter/metrics` with `include.match_type: strict`.
    KeepOnly(Vec<String>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct SidecarPlan {
    pub scrape_interval: Duration,
    /// The scrape target's port on the pod (`localhost:<port>`).
    pub port: u16,
    pub metrics_path: String,
    pub processors: Vec<Processor>,
    /// `host:port` of the OTLP/gRPC exporter.
    pub exporter_endpoint: String,
}

#[derive(Debug, PartialEq, thiserror::Error)]
#[error("OpenTelemetryCollector {collector}: {field}: {problem}")]
pub struct PlanError {
    pub collector: String,
    pub field: String,
    pub problem: String,
}

/// Reads the collector resource (as JSON).
pub fn plan(collector: &Value) -> Result<SidecarPlan, PlanError> {
    let name = format!(
        "{}/{}",
        collector
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or(""),
        collector
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("?")
    );
    let err = |field: &str, problem: String| PlanError {
        collector: name.clone(),
        field: field.to_string(),
        problem,
    };
    let config = collector
        .pointer("/spec/config")
        .ok_or_else(|| err("spec.config", "missing".into()))?;
    let pipeline = config
        .pointer("/service/pipelines/metrics")
        .ok_or_else(|| err("spec.config.service.pipelines.metrics", "missing".into()))?;
    let names = |key: &str| -> Vec<String> {
        pipeline
            .get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };

    let receivers = names("receivers");
    if receivers != ["prometheus"] {
        return Err(err(
            "spec.config.service.pipelines.metrics.receivers",
            format!("{receivers:?}: the runner scrapes exactly one prometheus receiver"),
        ));
    }
    let scrape = config
        .pointer("/receivers/prometheus/config/scrape_configs/0")
        .ok_or_else(|| {
            err(
                "spec.config.receivers.prometheus.config.scrape_configs",
                "no scrape config".into(),
            )
        })?;
    let interval_field =
        "spec.config.receivers.prometheus.config.scrape_configs[0].scrape_interval";
    let scrape_interval = match scrape.get("scrape_interval").and_then(Value::as_str) {
        // Prometheus' own default.
        None => Duration::from_secs(60),
        Some(text) => parse_duration(text).ok_or_else(|| {
            err(
                interval_field,
                format!("{text:?} is not a duration like 5s or 1m"),
            )
        })?,
    };
    if scrape_interval.is_zero() {
        return Err(err(interval_field, "must be longer than zero".into()));
    }
    let target_field =
        "spec.config.receivers.prometheus.config.scrape_configs[0].static_configs[0].targets[0]";
    let target = scrape
        .pointer("/static_configs/0/targets/0")
        .and_then(Value::as_str)
        .ok_or_else(|| err(target_field, "missing".into()))?;
    let port = target
        .strip_prefix("localhost:")
        .and_then(|p| p.parse::<u16>().ok())
        .ok_or_else(|| {
            err(
                target_field,
                format!("{target:?}: a sidecar scrapes its own pod, localhost:<port>"),
            )
        })?;
    let metrics_path = scrape
        .get("metrics_path")
        .and_then(Value::as_str)
        .unwrap_or("/metrics")
        .to_string();

    let mut processors = Vec::new();
    for p in names("processors") {
        let at = format!("spec.config.processors[{p:?}]");
        let body = config
            .pointer("/processors")
            .and_then(|ps| ps.get(&p))
            .ok_or_else(|| err(&at, "named by the pipeline but not defined".into()))?;
        let kind = p.split('/').next().unwrap_or("");
        processors.push(match kind {
            "resourcedetection" => {
                let detectors: Vec<&str> = body
                    .get("detectors")
                    .and_then(Value::as_array)
                    .map(|d| d.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                if detectors != ["env"] {
                    return Err(err(
                        &format!("{at}.detectors"),
                        format!("{detectors:?}: only the env detector can be played here"),
                    ));
                }
                Processor::ResourceFromEnv
            }
            "transform" => {
                let mut copies = Vec::new();
                for (i, group) in body
                    .get("metric_statements")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    let context = group.get("context").and_then(Value::as_str);
                    if context != Some("datapoint") {
                        return Err(err(
                            &format!("{at}.metric_statements[{i}].context"),
                            format!("{context:?}: only the datapoint context is played"),
                        ));
                    }
                    for s in group
                        .get("statements")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                    {
                        copies.push(parse_set_statement(s).ok_or_else(|| {
                            err(
                                &format!("{at}.metric_statements[{i}].statements"),
                                format!(
                                    "{s:?}: only set(attributes[\"x\"], resource.attributes[\"y\"]) is played"
                                ),
                            )
                        })?);
                    }
                }
                Processor::CopyResourceAttributes(copies)
            }
            "filter" => {
                let include = body.pointer("/metrics/include");
                let match_type = include
                    .and_then(|i| i.get("match_type"))
                    .and_then(Value::as_str);
                if match_type != Some("strict") {
                    return Err(err(
                        &format!("{at}.metrics.include.match_type"),
                        format!("{match_type:?}: only strict matching is played"),
                    ));
                }
                if body.pointer("/metrics/exclude").is_some() {
                    return Err(err(
                        &format!("{at}.metrics.exclude"),
                        "exclusion is not played".into(),
                    ));
                }
                let names: Vec<String> = include
                    .and_then(|i| i.get("metric_names"))
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default();
                Processor::KeepOnly(names)
            }
            _ => {
                return Err(err(
                    &at,
                    "a processor the runner cannot play (resourcedetection, transform and filter are)"
                        .into(),
                ));
            }
        });
    }

    let exporters = names("exporters");
    if exporters != ["otlp"] {
        return Err(err(
            "spec.config.service.pipelines.metrics.exporters",
            format!("{exporters:?}: the runner exports to exactly one otlp exporter"),
        ));
    }
    let endpoint = config
        .pointer("/exporters/otlp/endpoint")
        .and_then(Value::as_str)
        .filter(|e| !e.is_empty())
        .ok_or_else(|| err("spec.config.exporters.otlp.endpoint", "missing".into()))?;
    let exporter_endpoint = endpoint
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .to_string();
    Ok(SidecarPlan {
        scrape_interval,
        port,
        metrics_path,
        processors,
        exporter_endpoint,
    })
}

/// `set(attributes["to"], resource.attributes["from"])` → (to, from).
fn parse_set_statement(s: &str) -> Option<(String, String)> {
    let inner = s.trim().strip_prefix("set(")?.strip_suffix(')')?;
    let (to, from) = inner.split_once(',')?;
    let key = |part: &str, prefix: &str| -> Option<String> {
        let quoted = part.trim().strip_prefix(prefix)?.strip_suffix(']')?;
        Some(quoted.strip_prefix('"')?.strip_suffix('"')?.to_string())
    };
    Some((key(to, "attributes[")?, key(from, "resource.attributes[")?))
}

/// Prometheus durations as collectors write them: `5s`, `1m`, `500ms`,
/// `1m30s`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        total += match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            _ => return None,
        };
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The collector exactly as KServe v0.16's otel reconciler writes it.
    pub fn kserve_collector(port: &str, names: &[&str], endpoint: &str) -> Value {
        json!({
            "apiVersion": "opentelemetry.io/v1beta1",
            "kind": "OpenTelemetryCollector",
            "metadata": {"name": "chat-predictor", "namespace": "ml"},
            "spec": {
                "mode": "sidecar",
                "config": {
                    "receivers": {"prometheus": {"config": {"scrape_configs": [{
                        "job_name": "otel-collector",
                        "scrape_interval": "5s",
                        "static_configs": [{"targets": [format!("localhost:{port}")]}]
                    }]}}},
                    "processors": {
                        "resourcedetection/env": {"detectors": ["env"], "timeout": "2s", "override": false},
                        "transform": {"metric_statements": [{"context": "datapoint", "statements": [
                            "set(attributes[\"namespace\"], resource.attributes[\"k8s.namespace.name\"])",
                            "set(attributes[\"deployment\"], resource.attributes[\"k8s.deployment.name\"])",
                            "set(attributes[\"pod\"], resource.attributes[\"k8s.pod.name\"])"
                        ]}]},
                        "filter/metrics": {"metrics": {"include": {"match_type": "strict", "metric_names": names}}}
                    },
                    "exporters": {"otlp": {"endpoint": endpoint, "compression": "none", "tls": {"insecure": true}}},
                    "service": {"pipelines": {"metrics": {
                        "receivers": ["prometheus"],
                        "processors": ["resourcedetection/env", "transform", "filter/metrics"],
                        "exporters": ["otlp"]
                    }}}
                }
            }
        })
    }

    #[test]
    fn kserves_collector_becomes_the_plan() {
        let plan = plan(&kserve_collector(
            "8000",
            &["vllm:num_requests_running"],
            "keda-otel-scaler.keda.svc:4317",
        ))
        .unwrap();
        assert_eq!(plan.scrape_interval, Duration::from_secs(5));
        assert_eq!(plan.port, 8000);
        assert_eq!(plan.metrics_path, "/metrics");
        assert_eq!(plan.exporter_endpoint, "keda-otel-scaler.keda.svc:4317");
        assert_eq!(
            plan.processors,
            vec![
                Processor::ResourceFromEnv,
                Processor::CopyResourceAttributes(vec![
                    ("namespace".into(), "k8s.namespace.name".into()),
                    ("deployment".into(), "k8s.deployment.name".into()),
                    ("pod".into(), "k8s.pod.name".into()),
                ]),
                Processor::KeepOnly(vec!["vllm:num_requests_running".into()]),
            ]
        );
    }

    #[test]
    fn what_cannot_be_played_is_named() {
        let mut c = kserve_collector("8000", &["x"], "a:4317");
        c["spec"]["config"]["processors"]["filter/metrics"]["metrics"]["include"]["match_type"] =
            json!("regexp");
        let e = plan(&c).unwrap_err();
        assert_eq!(
            e.field,
            "spec.config.processors[\"filter/metrics\"].metrics.include.match_type"
        );

        let mut c = kserve_collector("8000", &["x"], "a:4317");
        c["spec"]["config"]["receivers"]["prometheus"]["config"]["scrape_configs"][0]["scrape_interval"] =
            json!("soon");
        let e = plan(&c).unwrap_err();
        assert!(e.field.ends_with("scrape_interval"), "{e}");
        assert!(e.to_string().contains("\"soon\""), "{e}");

        let c = kserve_collector("eighty", &["x"], "a:4317");
        assert!(plan(&c).unwrap_err().field.ends_with("targets[0]"));

        let mut c = kserve_collector("8000", &["x"], "a:4317");
        c["spec"]["config"]["processors"]["transform"]["metric_statements"][0]["statements"] =
            json!(["delete_key(attributes, \"x\")"]);
        assert!(plan(&c).unwrap_err().problem.contains("delete_key"));

        let mut c = kserve_collector("8000", &["x"], "a:4317");
        c["spec"]["config"]["service"]["pipelines"]["metrics"]["processors"] = json!(["batch"]);
        assert_eq!(
            plan(&c).unwrap_err().problem,
            "named by the pipeline but not defined"
        );

        let mut c = kserve_collector("8000", &["x"], "");
        c["metadata"]["name"] = json!("n");
        let e = plan(&c).unwrap_err();
        assert_eq!(e.field, "spec.config.exporters.otlp.endpoint");
        assert!(
            e.to_string().starts_with("OpenTelemetryCollector ml/n:"),
            "{e}"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration(""), None);
        assert_eq!(parse_duration("3d"), None);
    }
}
