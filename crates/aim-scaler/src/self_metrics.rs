//! The scaler's own Prometheus metrics. Every label set is fixed in code,
//! so cardinality cannot grow with what users query (otel-add-on's per-query
//! gauges never expired).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Grpc,
    Http,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rpc {
    IsActive,
    StreamIsActive,
    GetMetricSpec,
    GetMetrics,
}

impl Rpc {
    const ALL: [Rpc; 4] = [
        Rpc::IsActive,
        Rpc::StreamIsActive,
        Rpc::GetMetricSpec,
        Rpc::GetMetrics,
    ];

    fn name(self) -> &'static str {
        match self {
            Rpc::IsActive => "IsActive",
            Rpc::StreamIsActive => "StreamIsActive",
            Rpc::GetMetricSpec => "GetMetricSpec",
            Rpc::GetMetrics => "GetMetrics",
        }
    }
}

/// Upper bounds in seconds; KEDA calls are expected well under a millisecond.
const LATENCY_BOUNDS: [f64; 10] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0,
];

#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; LATENCY_BOUNDS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        if let Some(i) = LATENCY_BOUNDS.iter().position(|&b| seconds <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(
            elapsed.as_nanos().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
    }
}

#[derive(Default)]
pub struct SelfMetrics {
    points_grpc: AtomicU64,
    points_http: AtomicU64,
    requests_grpc_ok: AtomicU64,
    requests_grpc_failed: AtomicU64,
    requests_http_ok: AtomicU64,
    requests_http_failed: AtomicU64,
    rejected_series_cap: AtomicU64,
    rejected_too_old: AtomicU64,
    rejected_invalid: AtomicU64,
    ignored_no_recorded_value: AtomicU64,
    series_dropped_stale: AtomicU64,
    query_latency: [Histogram; 4],
    query_errors: [AtomicU64; 4],
    history_queries: AtomicU64,
    history_points: AtomicU64,
    history_refused: AtomicU64,
    snapshots_saved: AtomicU64,
    snapshots_failed: AtomicU64,
    snapshots_rejected: AtomicU64,
    snapshot_bytes: AtomicU64,
    snapshot_saved_at_nanos: AtomicU64,
}

impl SelfMetrics {
    pub fn record_ingest(&self, transport: Transport, report: &crate::ingest::IngestReport) {
        let points = match transport {
            Transport::Grpc => &self.points_grpc,
            Transport::Http => &self.points_http,
        };
        points.fetch_add(report.stored, Ordering::Relaxed);
        self.rejected_series_cap
            .fetch_add(report.rejected_series_cap, Ordering::Relaxed);
        self.rejected_too_old
            .fetch_add(report.rejected_too_old, Ordering::Relaxed);
        self.rejected_invalid
            .fetch_add(report.rejected_invalid, Ordering::Relaxed);
        self.ignored_no_recorded_value
            .fetch_add(report.ignored_no_recorded_value, Ordering::Relaxed);
    }

    pub fn record_request(&self, transport: Transport, ok: bool) {
        let counter = match (transport, ok) {
            (Transport::Grpc, true) => &self.requests_grpc_ok,
            (Transport::Grpc, false) => &self.requests_grpc_failed,
            (Transport::Http, true) => &self.requests_http_ok,
            (Transport::Http, false) => &self.requests_http_failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_swept(&self, series: usize) {
        self.series_dropped_stale
            .fetch_add(series as u64, Ordering::Relaxed);
    }

    pub fn record_query(&self, rpc: Rpc, elapsed: Duration, ok: bool) {
        let i = Rpc::ALL.iter().position(|r| *r == rpc).unwrap_or(0);
        self.query_latency[i].observe(elapsed);
        if !ok {
            self.query_errors[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The history's size, read just before rendering.
    pub fn set_history(&self, stats: crate::history::HistoryStats, refused: u64) {
        self.history_queries
            .store(stats.queries as u64, Ordering::Relaxed);
        self.history_points
            .store(stats.points as u64, Ordering::Relaxed);
        self.history_refused.store(refused, Ordering::Relaxed);
    }

    pub fn record_snapshot_saved(&self, bytes: usize, at_nanos: u64) {
        self.snapshots_saved.fetch_add(1, Ordering::Relaxed);
        self.snapshot_bytes.store(bytes as u64, Ordering::Relaxed);
        self.snapshot_saved_at_nanos
            .store(at_nanos, Ordering::Relaxed);
    }

    pub fn record_snapshot_failed(&self) {
        self.snapshots_failed.fetch_add(1, Ordering::Relaxed);
    }

    /// A snapshot found at start that could not be used (moved aside).
    pub fn record_snapshot_rejected(&self) {
        self.snapshots_rejected.fetch_add(1, Ordering::Relaxed);
    }

    pub fn rejected_series_cap(&self) -> u64 {
        self.rejected_series_cap.load(Ordering::Relaxed)
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self, series: usize, metric_names: usize) -> String {
        let mut out = String::new();
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP aim_scaler_points_ingested_total OTLP data points stored."
        );
        let _ = writeln!(out, "# TYPE aim_scaler_points_ingested_total counter");
        let _ = writeln!(
            out,
            "aim_scaler_points_ingested_total{{transport=\"grpc\"}} {}",
            load(&self.points_grpc)
        );
        let _ = writeln!(
            out,
            "aim_scaler_points_ingested_total{{transport=\"http\"}} {}",
            load(&self.points_http)
        );
        let _ = writeln!(
            out,
            "# HELP aim_scaler_export_requests_total OTLP export requests by outcome."
        );
        let _ = writeln!(out, "# TYPE aim_scaler_export_requests_total counter");
        for (transport, ok, counter) in [
            ("grpc", "ok", &self.requests_grpc_ok),
            ("grpc", "failed", &self.requests_grpc_failed),
            ("http", "ok", &self.requests_http_ok),
            ("http", "failed", &self.requests_http_failed),
        ] {
            let _ = writeln!(
                out,
                "aim_scaler_export_requests_total{{transport=\"{transport}\",outcome=\"{ok}\"}} {}",
                load(counter)
            );
        }
        let _ = writeln!(
            out,
            "# HELP aim_scaler_points_rejected_total Data points not stored, by reason."
        );
        let _ = writeln!(out, "# TYPE aim_scaler_points_rejected_total counter");
        for (reason, counter) in [
            ("series_cap", &self.rejected_series_cap),
            ("older_than_retention", &self.rejected_too_old),
            ("invalid", &self.rejected_invalid),
            ("no_recorded_value", &self.ignored_no_recorded_value),
        ] {
            let _ = writeln!(
                out,
                "aim_scaler_points_rejected_total{{reason=\"{reason}\"}} {}",
                load(counter)
            );
        }
        let _ = writeln!(out, "# HELP aim_scaler_series Live series in the store.");
        let _ = writeln!(out, "# TYPE aim_scaler_series gauge");
        let _ = writeln!(out, "aim_scaler_series {series}");
        let _ = writeln!(
            out,
            "# HELP aim_scaler_metric_names Distinct metric names in the store."
        );
        let _ = writeln!(out, "# TYPE aim_scaler_metric_names gauge");
        let _ = writeln!(out, "aim_scaler_metric_names {metric_names}");
        let _ = writeln!(
            out,
            "# HELP aim_scaler_series_dropped_total Series removed because they went stale."
        );
        let _ = writeln!(out, "# TYPE aim_scaler_series_dropped_total counter");
        let _ = writeln!(
            out,
            "aim_scaler_series_dropped_total {}",
            load(&self.series_dropped_stale)
        );
        let _ = writeln!(
            out,
            "# HELP aim_scaler_query_duration_seconds Time to answer a KEDA call."
        );
        let _ = writeln!(out, "# TYPE aim_scaler_query_duration_seconds histogram");
        for (rpc, histogram) in Rpc::ALL.iter().zip(&self.query_latency) {
            let rpc = rpc.name();
            let mut cumulative = 0;
            for (bound, bucket) in LATENCY_BOUNDS.iter().zip(&histogram.buckets) {
                cumulative += load(bucket);
                let _ = writeln!(
                    out,
                    "aim_scaler_query_duration_seconds_bucket{{rpc=\"{rpc}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let count = load(&histogram.count);
            let _ = writeln!(
                out,
                "aim_scaler_query_duration_seconds_bucket{{rpc=\"{rpc}\",le=\"+Inf\"}} {count}"
            );
            let sum = load(&histogram.sum_nanos) as f64 / 1e9;
            let _ = writeln!(
                out,
                "aim_scaler_query_duration_seconds_sum{{rpc=\"{rpc}\"}} {sum}"
            );
            let _ = writeln!(
                out,
                "aim_scaler_query_duration_seconds_count{{rpc=\"{rpc}\"}} {count}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP aim_scaler_query_errors_total KEDA calls answered with an error."
        );
        let _ = writeln!(out, "# TYPE aim_scaler_query_errors_total counter");
        for (rpc, counter) in Rpc::ALL.iter().zip(&self.query_errors) {
            let _ = writeln!(
                out,
                "aim_scaler_query_errors_total{{rpc=\"{}\"}} {}",
                rpc.name(),
                load(counter)
            );
        }
        self.render_history(&mut out);
        out
    }

    fn render_history(&self, out: &mut String) {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        for (name, kind, help, value) in [
            (
                "aim_scaler_history_queries",
                "gauge",
                "Queries whose compacted history is kept.",
                load(&self.history_queries),
            ),
            (
                "aim_scaler_history_points",
                "gauge",
                "15 s steps held over all compacted histories, gaps included (8 bytes each).",
                load(&self.history_points),
            ),
            (
                "aim_scaler_history_queries_refused_total",
                "counter",
                "Evaluations of a query left without compacted history because --history-max-queries were tracked.",
                load(&self.history_refused),
            ),
            (
                "aim_scaler_history_snapshot_bytes",
                "gauge",
                "Size of the last history snapshot written.",
                load(&self.snapshot_bytes),
            ),
            (
                "aim_scaler_history_snapshots_rejected_total",
                "counter",
                "History snapshots found at start that could not be used and were moved aside.",
                load(&self.snapshots_rejected),
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {value}");
        }
        let _ = writeln!(
            out,
            "# HELP aim_scaler_history_snapshots_total History snapshots written to --history-dir, by outcome."
        );
        let _ = writeln!(out, "# TYPE aim_scaler_history_snapshots_total counter");
        for (outcome, counter) in [
            ("ok", &self.snapshots_saved),
            ("failed", &self.snapshots_failed),
        ] {
            let _ = writeln!(
                out,
                "aim_scaler_history_snapshots_total{{outcome=\"{outcome}\"}} {}",
                load(counter)
            );
        }
        let _ = writeln!(
            out,
            "# HELP aim_scaler_history_snapshot_last_success_timestamp_seconds When the last history snapshot was written (0: never)."
        );
        let _ = writeln!(
            out,
            "# TYPE aim_scaler_history_snapshot_last_success_timestamp_seconds gauge"
        );
        let _ = writeln!(
            out,
            "aim_scaler_history_snapshot_last_success_timestamp_seconds {}",
            load(&self.snapshot_saved_at_nanos) as f64 / 1e9
        );
    }
}

/// The last answer per ScaledObject: what the query gave, what the policy
/// made of it, and the policy's state. One series per ScaledObject, so
/// the count follows the cluster's ScaledObjects, not the pods.
pub fn render_decisions(decisions: &[crate::state::Decision]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if decisions.is_empty() {
        return out;
    }
    let labels = |d: &crate::state::Decision| {
        format!(
            "namespace=\"{}\",scaledobject=\"{}\",policy=\"{}\"",
            escape(&d.namespace),
            escape(&d.scaledobject),
            d.policy
        )
    };
    out.push_str("# HELP aim_scaler_decision_raw The trigger query's value at the last answer, before the policy.\n");
    out.push_str("# TYPE aim_scaler_decision_raw gauge\n");
    for d in decisions {
        let _ = writeln!(out, "aim_scaler_decision_raw{{{}}} {}", labels(d), d.raw);
    }
    out.push_str(
        "# HELP aim_scaler_decision_value The value last sent to KEDA, after the policy.\n",
    );
    out.push_str("# TYPE aim_scaler_decision_value gauge\n");
    for d in decisions {
        let _ = writeln!(
            out,
            "aim_scaler_decision_value{{{}}} {}",
            labels(d),
            d.value
        );
    }
    out.push_str("# HELP aim_scaler_decision_replicas The replicas the last answer asks the HPA for (value over target in KEDA's milli-units, rounded up).\n");
    out.push_str("# TYPE aim_scaler_decision_replicas gauge\n");
    for d in decisions {
        let _ = writeln!(
            out,
            "aim_scaler_decision_replicas{{{}}} {}",
            labels(d),
            aim_policy::replicas_asked(d.value, d.target)
        );
    }
    out.push_str(
        "# HELP aim_scaler_policy_mode 1 for the state the policy was in at its last answer.\n",
    );
    out.push_str("# TYPE aim_scaler_policy_mode gauge\n");
    for d in decisions {
        if let Some(mode) = d.mode {
            let _ = writeln!(
                out,
                "aim_scaler_policy_mode{{{},mode=\"{mode}\"}} 1",
                labels(d)
            );
        }
    }
    out
}

fn escape(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
