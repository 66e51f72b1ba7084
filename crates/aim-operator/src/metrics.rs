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

/// Every `error` label a controller's failures can carry: an API call's
/// kind ([`error_kind`]), a failed apply, an infrastructure retry. Each is
/// exported at 0 from a controller's first reconcile, so an error rate
/// reads 0 rather than "no data" (and `rate()` sees the first error).
pub const ERROR_KINDS: [&str; 7] = [
    "forbidden",
    "not-found",
    "conflict",
    "api",
    "transport",
    "apply",
    "infrastructure",
];

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

/// The scaling state of one autoscaled AIMService, as its last reconcile
/// saw it. The alert rules in deploy/chart/files/alerts.yaml read these.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceScaling {
    pub isvc: String,
    pub current: i32,
    pub desired: i32,
    pub min: i32,
    pub max: i32,
    pub paused: bool,
    /// The reason of the service's `HPAReady` condition, e.g.
    /// `HPAOperational`, `MetricsFailed`, `ScalingPaused`.
    pub reason: String,
    pub ready: bool,
}

/// (namespace, service name)
type ServiceKey = (String, String);

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<BTreeMap<&'static str, PerController>>,
    services: Mutex<BTreeMap<ServiceKey, ServiceScaling>>,
    /// Scale decisions per service and direction ("up" / "down").
    decisions: Mutex<BTreeMap<(ServiceKey, &'static str), u64>>,
}

impl Metrics {
    pub fn reconciled(&self, controller: &'static str, took: Duration) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let c = map.entry(controller).or_insert_with(|| PerController {
            errors: ERROR_KINDS.iter().map(|k| (k.to_string(), 0)).collect(),
            ..Default::default()
        });
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

    /// Records the scaling state of an autoscaled service; `None` removes
    /// it (fixed replicas, or the service is gone).
    pub fn service_scaling(&self, namespace: &str, name: &str, state: Option<ServiceScaling>) {
        let mut map = self.services.lock().unwrap_or_else(|p| p.into_inner());
        let key = (namespace.to_string(), name.to_string());
        match state {
            Some(s) => {
                // Both directions from the start, at 0: the first decision
                // is then an increase that `increase()` can see.
                let mut decisions = self.decisions.lock().unwrap_or_else(|p| p.into_inner());
                for direction in ["up", "down"] {
                    decisions.entry((key.clone(), direction)).or_default();
                }
                map.insert(key, s);
            }
            None => {
                let mut decisions = self.decisions.lock().unwrap_or_else(|p| p.into_inner());
                decisions.retain(|(k, _), _| *k != key);
                map.remove(&key);
            }
        }
    }

    pub fn scale_decided(&self, namespace: &str, name: &str, up: bool) {
        let mut map = self.decisions.lock().unwrap_or_else(|p| p.into_inner());
        let key = (namespace.to_string(), name.to_string());
        *map.entry((key, if up { "up" } else { "down" }))
            .or_default() += 1;
    }

    fn render_services(&self, out: &mut String) {
        let services = self.services.lock().unwrap_or_else(|p| p.into_inner());
        let labels = |(ns, name): &ServiceKey, isvc: &str| {
            format!("namespace=\"{ns}\",service=\"{name}\",isvc=\"{isvc}\"")
        };
        out.push_str("# HELP aim_service_replicas Replicas of each autoscaled AIMService (status.runtime), by kind: current, desired, min, max.\n# TYPE aim_service_replicas gauge\n");
        for (key, s) in services.iter() {
            for (kind, v) in [
                ("current", s.current),
                ("desired", s.desired),
                ("min", s.min),
                ("max", s.max),
            ] {
                let _ = writeln!(
                    out,
                    "aim_service_replicas{{{},kind=\"{kind}\"}} {v}",
                    labels(key, &s.isvc)
                );
            }
        }
        out.push_str("# HELP aim_service_autoscaling_paused 1 while the service's autoscaling is paused (cost guard).\n# TYPE aim_service_autoscaling_paused gauge\n");
        for (key, s) in services.iter() {
            let _ = writeln!(
                out,
                "aim_service_autoscaling_paused{{{}}} {}",
                labels(key, &s.isvc),
                u8::from(s.paused)
            );
        }
        out.push_str("# HELP aim_service_scaling_ready 1 when the service's HPAReady condition is True; reason is the condition's reason.\n# TYPE aim_service_scaling_ready gauge\n");
        for (key, s) in services.iter() {
            let _ = writeln!(
                out,
                "aim_service_scaling_ready{{{},reason=\"{}\"}} {}",
                labels(key, &s.isvc),
                s.reason,
                u8::from(s.ready)
            );
        }
        let decisions = self.decisions.lock().unwrap_or_else(|p| p.into_inner());
        out.push_str("# HELP aim_service_scale_decisions_total Changes of the HPA's desired replicas the operator observed, by direction.\n# TYPE aim_service_scale_decisions_total counter\n");
        for (((ns, name), direction), n) in decisions.iter() {
            let _ = writeln!(
                out,
                "aim_service_scale_decisions_total{{namespace=\"{ns}\",service=\"{name}\",direction=\"{direction}\"}} {n}"
            );
        }
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_services(&mut out);
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
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
        // Every other kind is there at 0 from the first reconcile.
        for kind in ERROR_KINDS.iter().filter(|k| **k != "apply") {
            assert!(
                text.contains(&format!(
                    "aim_operator_reconcile_errors_total{{controller=\"service\",error=\"{kind}\"}} 0"
                )),
                "{kind}: {text}"
            );
        }
    }

    #[test]
    fn service_scaling_series_appear_and_go_with_the_service() {
        let m = Metrics::default();
        let state = ServiceScaling {
            isvc: "chat".into(),
            current: 2,
            desired: 3,
            min: 1,
            max: 4,
            paused: false,
            reason: "HPAOperational".into(),
            ready: true,
        };
        m.service_scaling("ml", "chat", Some(state));
        m.scale_decided("ml", "chat", true);
        m.scale_decided("ml", "chat", true);
        let text = m.render();
        assert!(text.contains(
            "aim_service_replicas{namespace=\"ml\",service=\"chat\",isvc=\"chat\",kind=\"desired\"} 3"
        ));
        assert!(text.contains(
            "aim_service_scaling_ready{namespace=\"ml\",service=\"chat\",isvc=\"chat\",reason=\"HPAOperational\"} 1"
        ));
        assert!(text.contains(
            "aim_service_scale_decisions_total{namespace=\"ml\",service=\"chat\",direction=\"up\"} 2"
        ));
        assert!(text.contains(
            "aim_service_scale_decisions_total{namespace=\"ml\",service=\"chat\",direction=\"down\"} 0"
        ));
        m.service_scaling("ml", "chat", None);
        let text = m.render();
        assert!(!text.contains("aim_service_replicas{"));
        assert!(!text.contains("aim_service_scale_decisions_total{"));
    }
}
