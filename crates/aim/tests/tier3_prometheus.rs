//! Tier 3: the chart's monitoring objects drive a real Prometheus.
//!
//! The bed runs Prometheus and prometheus-operator (both built from their
//! Go modules) with the bridge between them (`aim dev cluster up
//! --with-prometheus`; here `aim_testkit::cluster_with_prometheus`). The
//! chart is installed with its PodMonitor, ServiceMonitors and
//! PrometheusRule, and nothing else tells Prometheus what to scrape: the
//! operator turns those objects into its configuration. The test checks
//! that
//!
//! - the PrometheusRule's groups are loaded, alert for alert as in
//!   deploy/chart/files/alerts.yaml;
//! - a service's pod is scraped through the PodMonitor, its `vllm:` series
//!   labelled `namespace`, `isvc` and `pod` as the rules and the dashboard
//!   expect;
//! - the scaler's and the operator's admin metrics arrive through the
//!   ServiceMonitors (the bed runs both in-process with their admin ports
//!   at the chart's own pods' addresses), with the operator's per-service
//!   labels intact.
//!
//! ```sh
//! AIM_TEST_CLUSTER=<name> cargo test -p aim --test tier3_prometheus -- --nocapture
//! ```

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use aim_devcluster::PrometheusOptions;
use common::bed::{Bed, BedConfig, SERVICE, predictor_pods};
use serde_json::Value;

/// Two of the chart's 15 s scrape intervals, plus the rule evaluation and
/// the bridge's reload.
const SCRAPED: Duration = Duration::from_secs(90);

struct Prometheus {
    url: String,
    http: reqwest::Client,
}

impl Prometheus {
    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .query(query)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["status"], "success", "{path}: {body}");
        body["data"].clone()
    }

    /// The series an instant query returns.
    async fn query(&self, promql: &str) -> Vec<Value> {
        self.get("/api/v1/query", &[("query", promql)]).await["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Polls `promql` until `done` holds for its result; panics with the
    /// last result and the active targets.
    async fn await_query(
        &self,
        promql: &str,
        what: &str,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + SCRAPED;
        loop {
            let result = self.query(promql).await;
            if done(&result) {
                return result;
            }
            if Instant::now() > deadline {
                let targets = self.get("/api/v1/targets", &[("state", "active")]).await;
                panic!(
                    "{what}: `{promql}` returned {result:?} after {SCRAPED:?}\nactive targets: {}",
                    serde_json::to_string_pretty(&targets).unwrap()
                );
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
}

fn alert_names_in_chart() -> BTreeSet<String> {
    let path = aim_testkit::repo_path("deploy/chart/files/alerts.yaml");
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    doc["groups"][0]["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|r| r["alert"].as_str().map(str::to_string))
        .collect()
}

fn label<'a>(series: &'a Value, name: &str) -> &'a str {
    series["metric"][name].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_charts_monitors_configure_a_real_prometheus() {
    let info =
        aim_testkit::cluster_with_prometheus(PrometheusOptions::new(env!("CARGO_BIN_EXE_aim")))
            .await;
    let prometheus = Prometheus {
        url: info
            .prometheus_url
            .clone()
            .expect("the cluster runs Prometheus"),
        http: reqwest::Client::new(),
    };
    let bed = Bed::start_with(BedConfig {
        admin_at_chart_pods: true,
        ..BedConfig::seed("prom")
    })
    .await;
    let ns = bed.ns.clone();

    // The chart's PrometheusRule, through the operator's rule ConfigMap
    // and the bridge: the same alerts as the plain rule file.
    let started = Instant::now();
    let loaded = loop {
        let groups = prometheus.get("/api/v1/rules", &[("type", "alert")]).await["groups"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let group = groups.into_iter().find(|g| g["name"] == "aim-scaling");
        if let Some(group) = group {
            break group;
        }
        assert!(
            started.elapsed() < SCRAPED,
            "no rule group aim-scaling in Prometheus after {SCRAPED:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let names: BTreeSet<String> = loaded["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, alert_names_in_chart());
    // The operator names a rule file after the object it came from.
    let file = loaded["file"].as_str().unwrap();
    assert!(
        file.contains("prometheus-aim-rulefiles-") && file.contains("aim-system-aim-scaling"),
        "{file}"
    );
    println!("rule group aim-scaling loaded from {file}");

    // A rule of the test's own, timed through the chain: applied →
    // operator's ConfigMap → bridge → reloaded → evaluated.
    let applied = Instant::now();
    aim_testkit::apply_yaml(
        &bed.admin,
        &ns,
        "apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\nmetadata: {name: bed-probe}\nspec:\n  groups:\n  - name: bed-probe\n    rules:\n    - {record: 'aim_test:bed_probe', expr: vector(1)}\n",
    )
    .await
    .unwrap();
    loop {
        let groups = prometheus.get("/api/v1/rules", &[("type", "record")]).await;
        if groups["groups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["name"] == "bed-probe")
        {
            break;
        }
        assert!(
            applied.elapsed() < SCRAPED,
            "the PrometheusRule bed-probe was not loaded after {SCRAPED:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let loaded_after = applied.elapsed();
    prometheus
        .await_query("aim_test:bed_probe", "the test's recording rule", |r| {
            !r.is_empty()
        })
        .await;
    println!(
        "PrometheusRule applied → loaded {:.1} s, → first evaluation {:.1} s",
        loaded_after.as_secs_f64(),
        applied.elapsed().as_secs_f64()
    );

    // The pod, through the PodMonitor's relabelling.
    let pods = predictor_pods(&bed.pods, &bed.isvc).await;
    let pod = pods[0].metadata.name.clone().unwrap();
    let promql = format!("vllm:num_requests_running{{namespace=\"{ns}\"}}");
    let series = prometheus
        .await_query(&promql, "the pod's vLLM metrics", |r| !r.is_empty())
        .await;
    assert_eq!(series.len(), 1, "{series:?}");
    assert_eq!(label(&series[0], "isvc"), bed.isvc);
    assert_eq!(label(&series[0], "pod"), pod);
    assert_eq!(label(&series[0], "namespace"), ns);
    println!("{promql} → {}", series[0]["metric"]);
    let targets = prometheus
        .get("/api/v1/targets", &[("state", "active")])
        .await;
    let target = targets["activeTargets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["labels"]["pod"] == pod.as_str())
        .unwrap_or_else(|| panic!("no target for pod {pod}: {targets}"))
        .clone();
    assert_eq!(target["health"], "up", "{target}");
    assert!(
        target["scrapePool"]
            .as_str()
            .unwrap()
            .starts_with("podMonitor/aim-system/aim-inference/"),
        "{target}"
    );

    // The scaler, through its ServiceMonitor: the sidecar's points have
    // reached it since the idle loop came up.
    let ingested = prometheus
        .await_query(
            "sum(aim_scaler_points_ingested_total{service=\"keda-otel-scaler\"})",
            "the scaler's admin metrics",
            |r| {
                r.first()
                    .and_then(|s| s["value"][1].as_str())
                    .and_then(|v| v.parse::<f64>().ok())
                    .is_some_and(|v| v > 0.0)
            },
        )
        .await;
    println!("scaler points ingested: {}", ingested[0]["value"][1]);

    // The operator, through its ServiceMonitor, with the service's own
    // namespace and name (not the operator Service's).
    let promql = format!("aim_service_replicas{{kind=\"max\", namespace=\"{ns}\"}}");
    let replicas = prometheus
        .await_query(&promql, "the operator's per-service metrics", |r| {
            !r.is_empty()
        })
        .await;
    assert_eq!(label(&replicas[0], "service"), SERVICE, "{replicas:?}");
    assert_eq!(replicas[0]["value"][1], "4", "{replicas:?}");
    println!("{promql} → {}", replicas[0]["metric"]);

    bed.finish().await;
}
