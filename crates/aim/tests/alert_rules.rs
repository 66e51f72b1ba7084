//! The chart's alert rules under Prometheus's own tools: `promtool check
//! rules` on deploy/chart/files/alerts.yaml, and `promtool test rules` on
//! its unit tests, deploy/chart/files/alerts.test.yaml. Every alert must
//! have a case where it fires and one where it stays quiet; the coverage
//! check reads both files, so a new alert without tests fails here.
//!
//! promtool is the one `dev/control-plane/build.sh` builds from the pinned
//! Prometheus module into the bed's cache, found the way the bed finds its
//! binaries.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use aim_devcluster::CacheDirs;
use serde_yaml::Value;

const RULES: &str = "deploy/chart/files/alerts.yaml";
const TESTS: &str = "deploy/chart/files/alerts.test.yaml";

fn repo_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(relative)
}

fn promtool() -> PathBuf {
    let path = CacheDirs::discover()
        .expect("a cache directory")
        .binary(aim_devcluster::prometheus::PROMTOOL);
    assert!(
        path.exists(),
        "{} is missing: build it with `dev/control-plane/build.sh prometheus` (or `aim dev cluster build`)",
        path.display()
    );
    path
}

fn run_promtool(args: &[&str], file: &str) -> String {
    let out = Command::new(promtool())
        .args(args)
        .arg(repo_path(file))
        .output()
        .expect("promtool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {} {file} failed:\n{text}",
        args.join(" ")
    );
    text
}

#[test]
fn promtool_accepts_the_rules() {
    let out = run_promtool(&["check", "rules"], RULES);
    // "SUCCESS: 5 rules found": every rule of the file was read.
    let alerts = alert_names(&read(RULES)).len();
    assert!(out.contains(&format!("{alerts} rules found")), "{out}");
}

#[test]
fn promtool_unit_tests_of_the_rules_pass() {
    let out = run_promtool(&["test", "rules"], TESTS);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn every_alert_is_tested_firing_and_quiet() {
    let missing = coverage_gaps(&read(RULES), &read(TESTS));
    assert!(
        missing.is_empty(),
        "{TESTS} lacks cases: {missing:?}; add an alert_rule_test for each"
    );
}

#[test]
fn the_coverage_check_finds_a_missing_case() {
    // The real test file without its quiet cases for one alert, and
    // without any case for another.
    let mut tests: Value = serde_yaml::from_str(&read(TESTS)).unwrap();
    for case in tests["tests"].as_sequence_mut().unwrap() {
        if let Some(checks) = case
            .get_mut("alert_rule_test")
            .and_then(Value::as_sequence_mut)
        {
            checks.retain(|c| {
                let name = c["alertname"].as_str().unwrap_or_default();
                let quiet = c["exp_alerts"].as_sequence().is_none_or(Vec::is_empty);
                !(name == "AIMScalingFlapping" && quiet) && name != "AIMScalerReceivesNothing"
            });
        }
    }
    let gaps = coverage_gaps(&read(RULES), &serde_yaml::to_string(&tests).unwrap());
    assert_eq!(
        gaps,
        vec![
            "AIMScalerReceivesNothing: firing".to_string(),
            "AIMScalerReceivesNothing: quiet".to_string(),
            "AIMScalingFlapping: quiet".to_string(),
        ]
    );
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo_path(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

fn alert_names(rules: &str) -> BTreeSet<String> {
    let doc: Value = serde_yaml::from_str(rules).expect("the rules are YAML");
    doc["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().cloned().unwrap_or_default())
        .filter_map(|r| r["alert"].as_str().map(str::to_string))
        .collect()
}

/// "<alert>: firing" / "<alert>: quiet" for each case the tests lack. A
/// check with expected alerts is a firing case; one expecting none
/// (`exp_alerts: []` or no `exp_alerts`) a quiet one.
fn coverage_gaps(rules: &str, tests: &str) -> Vec<String> {
    let doc: Value = serde_yaml::from_str(tests).expect("the tests are YAML");
    let mut seen: BTreeMap<String, (bool, bool)> = BTreeMap::new();
    for case in doc["tests"].as_sequence().expect("tests") {
        for check in case["alert_rule_test"]
            .as_sequence()
            .cloned()
            .unwrap_or_default()
        {
            let name = check["alertname"].as_str().expect("alertname").to_string();
            let fires = check["exp_alerts"]
                .as_sequence()
                .is_some_and(|a| !a.is_empty());
            let entry = seen.entry(name).or_default();
            if fires {
                entry.0 = true;
            } else {
                entry.1 = true;
            }
        }
    }
    let mut gaps = Vec::new();
    for alert in alert_names(rules) {
        let (firing, quiet) = seen.get(&alert).copied().unwrap_or_default();
        if !firing {
            gaps.push(format!("{alert}: firing"));
        }
        if !quiet {
            gaps.push(format!("{alert}: quiet"));
        }
    }
    gaps
}
