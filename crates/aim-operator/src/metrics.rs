//! The operator's own Prometheus metrics: reconcile counts, errors and
//! durations per controller. A small hand-written registry: four metric
//! families do not justify a metrics framework.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the reconcile-duration histogram, in seconds.
const BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

#[derive(Default)]
struct PerController {
    reconciles: u64,
    errors: BTreeMap<String, u64>,
    bucket_counts: [u64; BUCKETS.len()],
    sum_seconds: f64,
}

/// A short label for a failed API call, so a missing RBAC verb
/// (`forbidden`) stands out from the races any busy cluster has.
pub fn error_kind(e: &kube::Error) -> &'static str {
    match e {
        kube::Error::Api(s) if s.code == 403 => "forbidden",
        kube::Error::Api(s) if s.code == 404 => "not-found",
        kube::Error::Api(s) if s.code == 409 => "conflict",
        kube::Error::Api(_) => "api",
        _ => "transport",
    }
}

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<BTreeMap<&'static str, PerController>>,
}

impl Metrics {
    pub fn reconciled(&self, controller: &'static str, took: Duration) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let c = map.entry(controller).or_default();
        c.reconciles += 1;
        let secs = took.as_secs_f64();
        c.sum_seconds += secs;
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                c.bucket_counts[i] += 1;
            }
        }
    }

    pub fn failed(&self, controller: &'static str, kind: &str) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry(controller)
            .or_default()
            .errors
            .entry(kind.to_string())
            .or_default() += 1;
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        out.push_str("# HELP aim_operator_reconciles_total Reconciles run, per controller.\n# TYPE aim_operator_reconciles_total counter\n");
        for (name, c) in map.iter() {
            let _ = writeln!(
                out,
                "aim_operator_reconciles_total{{controller=\"{name}\"}} {}",
                c.reconciles
            );
        }
        out.push_str("# HELP aim_operator_reconcile_errors_total Reconciles that failed, per controller and error kind.\n# TYPE aim_operator_reconcile_errors_total counter\n");
        for (name, c) in map.iter() {
            for (kind, n) in &c.errors {
                let _ = writeln!(
                    out,
                    "aim_operator_reconcile_errors_total{{controller=\"{name}\",error=\"{kind}\"}} {n}"
                );
            }
        }
        out.push_str("# HELP aim_operator_reconcile_duration_seconds Time per reconcile.\n# TYPE aim_operator_reconcile_duration_seconds histogram\n");
        for (name, c) in map.iter() {
            for (i, bound) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "aim_operator_reconcile_duration_seconds_bucket{{controller=\"{name}\",le=\"{bound}\"}} {}",
                    c.bucket_counts[i]
                );
            }
            let _ = writeln!(
                out,
                "aim_operator_reconcile_duration_seconds_bucket{{controller=\"{name}\",le=\"+Inf\"}} {}",
                c.reconciles
            );
            let _ = writeln!(
                out,
                "aim_operator_reconcile_duration_seconds_sum{{controller=\"{name}\"}} {}",
                c.sum_seconds
            );
            let _ = writeln!(
                out,
                "aim_operator_reconcile_duration_seconds_count{{controller=\"{name}\"}} {}",
                c.reconciles
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_errors_are_labelled() {
        let m = Metrics::default();
        m.reconciled("service", Duration::from_millis(3));
        m.reconciled("service", Duration::from_millis(300));
        m.failed("service", "apply");
        let text = m.render();
        assert!(text.contains("aim_operator_reconciles_total{controller=\"service\"} 2"));
        assert!(text.contains("le=\"0.005\"} 1"));
        assert!(text.contains("le=\"0.5\"} 2"));
        assert!(text.contains("le=\"+Inf\"} 2"));
        assert!(text.contains(
            "aim_operator_reconcile_errors_total{controller=\"service\",error=\"apply\"} 1"
        ));
    }
}
