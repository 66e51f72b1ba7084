//! The gateway's Prometheus metrics. Every series that can be zero is
//! exported from the start, so dashboards read 0 and `increase()` sees the
//! first event.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aim_picker::Rejection;

use crate::service::View;

/// Upper bounds of the queue-wait histogram, in seconds: from a held
/// request released by the next scrape (tens of ms) to a cold start.
pub const WAIT_BOUNDS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
];

/// A copy of a service's queue-wait histogram.
#[derive(Clone, Debug, PartialEq)]
pub struct WaitSnapshot {
    pub buckets: Vec<u64>,
    pub count: u64,
    pub sum_seconds: f64,
}

#[derive(Default)]
pub struct ServiceMetrics {
    wait_buckets: [AtomicU64; WAIT_BOUNDS.len()],
    wait_count: AtomicU64,
    wait_sum_nanos: AtomicU64,
    rejected: [AtomicU64; Rejection::REASONS.len()],
    cancelled: AtomicU64,
    upstream_errors: AtomicU64,
}

impl ServiceMetrics {
    /// A request left for an endpoint after `waited` in the queue (zero
    /// when it was never held).
    pub fn observe_wait(&self, waited: Duration) {
        let s = waited.as_secs_f64();
        if let Some(i) = WAIT_BOUNDS.iter().position(|&b| s <= b) {
            self.wait_buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.wait_count.fetch_add(1, Ordering::Relaxed);
        self.wait_sum_nanos.fetch_add(
            waited.as_nanos().min(u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
    }

    /// The queue-wait histogram as it stands: per-bucket counts (one per
    /// bound, then the overflow), the count and the sum in seconds.
    pub fn wait_snapshot(&self) -> WaitSnapshot {
        let mut buckets: Vec<u64> = self
            .wait_buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let count = self.wait_count.load(Ordering::Relaxed);
        let within: u64 = buckets.iter().sum();
        buckets.push(count.saturating_sub(within));
        WaitSnapshot {
            buckets,
            count,
            sum_seconds: self.wait_sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }

    pub fn rejected(&self, r: &Rejection) {
        let i = Rejection::REASONS
            .iter()
            .position(|&n| n == r.reason())
            .expect("every reason is listed");
        self.rejected[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn cancelled(&self) {
        self.cancelled.fetch_add(1, Ordering::Relaxed);
    }

    pub fn upstream_error(&self) {
        self.upstream_errors.fetch_add(1, Ordering::Relaxed);
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The text exposition of every service's metrics (one service with
/// `--endpoint`; one per backend with `--kubernetes`), each family once.
pub fn render(services: &[(&str, &ServiceMetrics, &View)]) -> String {
    let mut out = String::new();
    let each = |out: &mut String, line: &dyn Fn(&mut String, &str, &ServiceMetrics, &View)| {
        for (name, m, view) in services {
            line(out, &escape(name), m, view);
        }
    };
    header(
        &mut out,
        "aim_gateway_queue_depth",
        "gauge",
        "Requests held in the flow-control queue because every endpoint is saturated.",
    );
    each(&mut out, &|out, svc, _, view| {
        let _ = writeln!(
            out,
            "aim_gateway_queue_depth{{service=\"{svc}\"}} {}",
            view.queue_depth
        );
    });

    header(
        &mut out,
        "aim_gateway_queue_wait_seconds",
        "histogram",
        "Time from arrival to dispatch, for every dispatched inference request (0 when not held).",
    );
    each(&mut out, &|out, svc, m, _| {
        let mut cumulative = 0;
        for (b, n) in WAIT_BOUNDS.iter().zip(&m.wait_buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "aim_gateway_queue_wait_seconds_bucket{{service=\"{svc}\",le=\"{b}\"}} {cumulative}"
            );
        }
        let count = m.wait_count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "aim_gateway_queue_wait_seconds_bucket{{service=\"{svc}\",le=\"+Inf\"}} {count}\n\
             aim_gateway_queue_wait_seconds_sum{{service=\"{svc}\"}} {}\n\
             aim_gateway_queue_wait_seconds_count{{service=\"{svc}\"}} {count}",
            m.wait_sum_nanos.load(Ordering::Relaxed) as f64 / 1e9
        );
    });

    header(
        &mut out,
        "aim_gateway_rejections_total",
        "counter",
        "Requests refused: queue_full and flow_full (429), queue_timeout and shutting_down (503).",
    );
    each(&mut out, &|out, svc, m, _| {
        for (reason, n) in Rejection::REASONS.iter().zip(&m.rejected) {
            let _ = writeln!(
                out,
                "aim_gateway_rejections_total{{service=\"{svc}\",reason=\"{reason}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
    });
    header(
        &mut out,
        "aim_gateway_queue_cancelled_total",
        "counter",
        "Held requests whose client went away before an endpoint took them.",
    );
    each(&mut out, &|out, svc, m, _| {
        let _ = writeln!(
            out,
            "aim_gateway_queue_cancelled_total{{service=\"{svc}\"}} {}",
            m.cancelled.load(Ordering::Relaxed)
        );
    });
    header(
        &mut out,
        "aim_gateway_upstream_errors_total",
        "counter",
        "Requests answered 502 because their endpoint could not be reached.",
    );
    each(&mut out, &|out, svc, m, _| {
        let _ = writeln!(
            out,
            "aim_gateway_upstream_errors_total{{service=\"{svc}\"}} {}",
            m.upstream_errors.load(Ordering::Relaxed)
        );
    });
    header(
        &mut out,
        "aim_gateway_pool_saturation",
        "gauge",
        "Mean over the endpoints taking requests of max(waiting / queue threshold, KV usage / KV threshold); a stale endpoint counts 1, no endpoint reads 1.",
    );
    each(&mut out, &|out, svc, _, view| {
        let _ = writeln!(
            out,
            "aim_gateway_pool_saturation{{service=\"{svc}\"}} {}",
            view.pool_saturation
        );
    });

    let per_endpoint: [(&str, &str, &str); 5] = [
        (
            "aim_gateway_endpoint_in_flight",
            "gauge",
            "Requests the gateway has sent to the endpoint that have not ended.",
        ),
        (
            "aim_gateway_endpoint_requests_total",
            "counter",
            "Requests the gateway has sent to the endpoint.",
        ),
        (
            "aim_gateway_endpoint_saturated",
            "gauge",
            "1 when the picker counts the endpoint as saturated (or its report is stale).",
        ),
        (
            "aim_gateway_endpoint_draining",
            "gauge",
            "1 when the endpoint takes no new requests (draining or removed) while its requests finish.",
        ),
        (
            "aim_gateway_endpoint_scrape_errors_total",
            "counter",
            "Failed scrapes of the endpoint's /metrics.",
        ),
    ];
    for (k, (name, kind, help)) in per_endpoint.iter().enumerate() {
        header(&mut out, name, kind, help);
        each(&mut out, &|out, svc, _, view| {
            for e in &view.endpoints {
                let value = match k {
                    0 => u64::from(e.in_flight),
                    1 => e.dispatched,
                    2 => u64::from(e.saturated),
                    3 => u64::from(e.draining),
                    _ => e.scrape_errors,
                };
                let _ = writeln!(
                    out,
                    "{name}{{service=\"{svc}\",endpoint=\"{}\"}} {value}",
                    escape(&e.key)
                );
            }
        });
    }
    header(
        &mut out,
        "aim_gateway_endpoint_report_age_seconds",
        "gauge",
        "Age of the endpoint's last good /metrics scrape (absent before the first).",
    );
    each(&mut out, &|out, svc, _, view| {
        for e in &view.endpoints {
            if let Some(age) = e.report_age {
                let _ = writeln!(
                    out,
                    "aim_gateway_endpoint_report_age_seconds{{service=\"{svc}\",endpoint=\"{}\"}} {}",
                    escape(&e.key),
                    age.as_secs_f64()
                );
            }
        }
    });
    out
}

/// The OTLP push's own counters (with `--otlp-endpoint`).
pub fn render_exports(exports: &crate::otlp::ExportCounters) -> String {
    let mut out = String::new();
    header(
        &mut out,
        "aim_gateway_otlp_exports_total",
        "counter",
        "OTLP pushes of the queue state to the scaler, by result",
    );
    for (result, n) in [("ok", &exports.ok), ("failed", &exports.failed)] {
        let _ = writeln!(
            out,
            "aim_gateway_otlp_exports_total{{result=\"{result}\"}} {}",
            n.load(Ordering::Relaxed)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::EndpointView;

    #[test]
    fn every_reason_and_bucket_is_exported_from_the_start() {
        let m = ServiceMetrics::default();
        m.observe_wait(Duration::from_millis(30));
        m.observe_wait(Duration::ZERO);
        m.rejected(&Rejection::ShuttingDown);
        let view = View {
            queue_depth: 3,
            pool_saturation: 0.5,
            endpoints: vec![EndpointView {
                key: "http://127.0.0.1:1".into(),
                in_flight: 2,
                dispatched: 7,
                draining: false,
                saturated: true,
                report_age: None,
                scrape_errors: 0,
            }],
        };
        let other = View {
            queue_depth: 0,
            pool_saturation: 1.0,
            endpoints: vec![],
        };
        let text = render(&[("chat \"a\"", &m, &view), ("b", &m, &other)]);
        // Each family is announced once, with a series per service.
        assert_eq!(
            text.matches("# TYPE aim_gateway_queue_depth gauge").count(),
            1
        );
        assert!(
            text.contains("aim_gateway_queue_depth{service=\"b\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("aim_gateway_queue_depth{service=\"chat \\\"a\\\"\"} 3"),
            "{text}"
        );
        for reason in Rejection::REASONS {
            assert!(text.contains(&format!("reason=\"{reason}\"}}")), "{reason}");
        }
        assert!(text.contains("reason=\"shutting_down\"} 1"));
        assert!(text.contains("le=\"0.001\"} 1\n"), "{text}");
        assert!(text.contains("le=\"0.05\"} 2\n"), "{text}");
        assert!(
            text.contains("aim_gateway_queue_wait_seconds_count{service=\"chat \\\"a\\\"\"} 2")
        );
        assert!(text.contains("aim_gateway_endpoint_in_flight{service=\"chat \\\"a\\\"\",endpoint=\"http://127.0.0.1:1\"} 2"));
        assert!(text.contains("aim_gateway_endpoint_saturated{service=\"chat \\\"a\\\"\",endpoint=\"http://127.0.0.1:1\"} 1"));
        assert!(!text.contains("aim_gateway_endpoint_report_age_seconds{"));
    }
}
