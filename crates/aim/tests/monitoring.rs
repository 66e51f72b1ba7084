//! The alert rules and the Grafana dashboard in deploy/chart/files must
//! parse as PromQL and name only series that aim's components really
//! export, with labels those series really carry. The exporters are the real
//! ones: the operator's and the scaler's metric registries, and a running
//! simulator's `/metrics` page.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use promql_parser::parser::{self, Expr};

/// Labels Prometheus itself adds to scraped vLLM series through the chart's
/// PodMonitor relabelling (and `job`/`instance` on every target).
const TARGET_LABELS: [&str; 5] = ["namespace", "isvc", "pod", "job", "instance"];

fn repo_file(path: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Series name → label names seen, from Prometheus text exposition.
fn series_of(exposition: &str, into: &mut BTreeMap<String, BTreeSet<String>>) {
    for line in exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, labels) = match line.split_once('{') {
            Some((name, rest)) => (name, rest.split_once('}').map(|(l, _)| l).unwrap_or("")),
            None => (line.split_whitespace().next().unwrap_or(""), ""),
        };
        let entry = into.entry(name.to_string()).or_default();
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            if let Some((label, _)) = pair.split_once('=') {
                entry.insert(label.trim().to_string());
            }
        }
    }
}

/// Every series the rules and the dashboard may use, from live exporters.
async fn exported_series() -> BTreeMap<String, BTreeSet<String>> {
    let mut all = BTreeMap::new();

    let operator = aim_operator::metrics::Metrics::default();
    operator.reconciled("service", std::time::Duration::from_millis(5));
    operator.failed("service", "apply");
    operator.service_scaling(
        "ml",
        "chat",
        Some(aim_operator::metrics::ServiceScaling {
            isvc: "chat".into(),
            current: 1,
            desired: 2,
            min: 1,
            max: 4,
            paused: false,
            reason: "HPAOperational".into(),
            ready: true,
        }),
    );
    operator.scale_decided("ml", "chat", true);
    series_of(&operator.render(), &mut all);

    let scaler = aim_scaler::self_metrics::SelfMetrics::default();
    series_of(&scaler.render(1, 1), &mut all);

    let _ = rustls::crypto::ring::default_provider().install_default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim = aim_sim::start(aim_sim::SimArgs::for_tests(), listener)
        .await
        .expect("simulator starts");
    let body = reqwest::get(format!("http://{}/metrics", sim.addr()))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .unwrap();
    series_of(&body, &mut all);
    all
}

/// (metric name, label names matched) of every selector in `expr`.
fn selectors(expr: &Expr, out: &mut Vec<(String, Vec<String>)>) {
    let vector = |vs: &parser::VectorSelector, out: &mut Vec<(String, Vec<String>)>| {
        let labels = vs
            .matchers
            .matchers
            .iter()
            .map(|m| m.name.clone())
            .filter(|n| n != "__name__")
            .collect();
        out.push((vs.name.clone().unwrap_or_default(), labels));
    };
    match expr {
        Expr::VectorSelector(vs) => vector(vs, out),
        Expr::MatrixSelector(ms) => vector(&ms.vs, out),
        Expr::Aggregate(a) => {
            selectors(&a.expr, out);
            if let Some(p) = &a.param {
                selectors(p, out);
            }
        }
        Expr::Unary(u) => selectors(&u.expr, out),
        Expr::Binary(b) => {
            selectors(&b.lhs, out);
            selectors(&b.rhs, out);
        }
        Expr::Paren(p) => selectors(&p.expr, out),
        Expr::Subquery(s) => selectors(&s.expr, out),
        Expr::Call(c) => c.args.args.iter().for_each(|a| selectors(a, out)),
        _ => {}
    }
}

/// Checks one expression; returns what is wrong with it.
fn problems(what: &str, expr: &str, known: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let parsed = match parser::parse(expr) {
        Ok(e) => e,
        Err(e) => return vec![format!("{what}: does not parse: {e}\n  {expr}")],
    };
    let mut found = Vec::new();
    selectors(&parsed, &mut found);
    let mut wrong = Vec::new();
    if found.is_empty() {
        wrong.push(format!("{what}: selects no series"));
    }
    for (name, labels) in found {
        let Some(has) = known.get(&name) else {
            wrong.push(format!("{what}: no component exports {name}"));
            continue;
        };
        for label in labels {
            if !has.contains(&label) && !TARGET_LABELS.contains(&label.as_str()) {
                wrong.push(format!(
                    "{what}: {name} has no label {label} (it has {has:?})"
                ));
            }
        }
    }
    wrong
}

#[tokio::test]
async fn alert_rules_parse_and_name_exported_series() {
    let known = exported_series().await;
    let rules: serde_yaml::Value =
        serde_yaml::from_str(&repo_file("deploy/chart/files/alerts.yaml")).unwrap();
    let mut wrong = Vec::new();
    let mut alerts = BTreeSet::new();
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"].as_str().expect("every rule is an alert");
            assert!(alerts.insert(name.to_string()), "alert {name} twice");
            for key in ["summary", "description"] {
                assert!(
                    rule["annotations"][key]
                        .as_str()
                        .is_some_and(|s| !s.is_empty()),
                    "{name} has no {key}"
                );
            }
            assert!(
                rule["labels"]["severity"].as_str().is_some(),
                "{name}: severity"
            );
            wrong.extend(problems(name, rule["expr"].as_str().expect("expr"), &known));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // The four cases: scaling failure, flapping, at max with a
    // queue, metrics missing.
    for needed in [
        "AIMScalingFailed",
        "AIMScalingFlapping",
        "AIMAtMaxReplicasWithQueue",
        "AIMScalingMetricsMissing",
    ] {
        assert!(alerts.contains(needed), "no alert {needed}");
    }
}

#[tokio::test]
async fn dashboard_queries_parse_and_name_exported_series() {
    let known = exported_series().await;
    let dashboard: serde_json::Value =
        serde_json::from_str(&repo_file("deploy/chart/files/dashboard.json")).unwrap();
    let mut wrong = Vec::new();
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap_or("?");
        assert!(ids.insert(panel["id"].as_i64()), "panel id twice: {title}");
        for target in panel["targets"].as_array().expect("targets") {
            wrong.extend(problems(
                title,
                target["expr"].as_str().expect("expr"),
                &known,
            ));
        }
    }
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(q) = var["query"]["query"].as_str() {
            // label_values(<selector>, label): check the selector.
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|r| r.rsplit_once(','))
                .map(|(s, _)| s)
                .unwrap_or(q);
            wrong.extend(problems(var["name"].as_str().unwrap(), inner, &known));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The checker itself must be able to fail.
#[tokio::test]
async fn the_checker_rejects_unknown_series_labels_and_bad_syntax() {
    let known = exported_series().await;
    assert!(!problems("t", "sum(rate(vllm:num_requests_waiting[5m]", &known).is_empty());
    assert!(!problems("t", "aim_service_replicaz", &known).is_empty());
    assert!(!problems("t", "aim_service_replicas{colour=\"red\"}", &known).is_empty());
    assert!(problems("t", "aim_service_replicas{kind=\"max\"}", &known).is_empty());
}
