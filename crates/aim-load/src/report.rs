//! Text for people: the live line each second and the closing summary.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::stats::{Latency, Sample, Summary};

/// `41ms`, `1.25s`, or `-` when nothing was measured.
pub fn millis(ms: Option<f64>) -> String {
    match ms {
        None => "-".into(),
        Some(ms) if ms < 1000.0 => format!("{ms:.0}ms"),
        Some(ms) => format!("{:.2}s", ms / 1e3),
    }
}

fn errors(errors: &BTreeMap<String, u64>) -> String {
    errors
        .iter()
        .map(|(kind, n)| format!("{kind} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The live figures of one second. `total_errors` are the run's so far: a failure that
/// happened once stays visible after its second scrolled away.
pub fn live_line(s: &Sample, total_errors: &BTreeMap<String, u64>) -> String {
    let mut line = format!(
        "{:>6.1}s  sent {:>5.1}/s  done {:>5.1}/s  in flight {:>4}  ttft p50 {} p99 {}  e2e p50 {} p99 {}  endpoints {}",
        s.t,
        s.per_second(s.counts.sent),
        s.per_second(s.counts.completed),
        s.in_flight,
        millis(s.ttft_p50_ms),
        millis(s.ttft_p99_ms),
        millis(s.e2e_p50_ms),
        millis(s.e2e_p99_ms),
        s.endpoints,
    );
    if s.counts.dropped > 0 {
        let _ = write!(line, "  dropped {}", s.counts.dropped);
    }
    if s.counts.late > 0 {
        let _ = write!(line, "  late {}", s.counts.late);
    }
    if !total_errors.is_empty() {
        let _ = write!(line, "  errors: {}", errors(total_errors));
    }
    line
}

fn latency_row(name: &str, l: &Latency) -> String {
    format!(
        "{name:<12}p50 {:>8}  p90 {:>8}  p99 {:>8}  max {:>8}  mean {:>8}  (n={})\n",
        millis(l.p50_ms),
        millis(l.p90_ms),
        millis(l.p99_ms),
        millis(l.max_ms),
        millis(l.mean_ms),
        l.count
    )
}

/// The closing summary.
pub fn summary(heading: &str, model: &str, s: &Summary) -> String {
    let c = &s.counts;
    let mut out = format!(
        "aim load: {heading}; model {model}; ran {:.1}s\n",
        s.duration_s
    );
    let _ = writeln!(
        out,
        "{:<12}sent {}  completed {}  errors {}  dropped {}  late {} (max {:.0}ms behind)  unfinished {}",
        "requests",
        c.sent,
        c.completed,
        s.errors_total,
        c.dropped,
        c.late,
        s.max_late_ms,
        s.unfinished
    );
    let _ = writeln!(
        out,
        "{:<12}{:.2} completed/s  {:.1} output tokens/s  most in flight {}",
        "throughput", s.completed_per_s, s.output_tokens_per_s, s.max_in_flight
    );
    out.push_str(&latency_row("ttft", &s.ttft));
    out.push_str(&latency_row("end-to-end", &s.e2e));
    if !c.errors.is_empty() {
        let _ = writeln!(out, "{:<12}{}", "errors", errors(&c.errors));
    }
    if c.dropped > 0 {
        let _ = writeln!(
            out,
            "note: {} requests were due while --max-in-flight requests were out and were not sent; the servers answered slower than the schedule asked",
            c.dropped
        );
    }
    if c.late > 0 {
        let _ = writeln!(
            out,
            "note: {} requests went out more than 50ms after they were due: this machine could not keep the schedule",
            c.late
        );
    }
    let width = s
        .endpoints
        .iter()
        .map(|e| e.url.len())
        .max()
        .unwrap_or(0)
        .max(8);
    let _ = writeln!(
        out,
        "{:<width$}  {:>8}  {:>9}  {:>6}",
        "endpoint", "sent", "completed", "errors"
    );
    for e in &s.endpoints {
        let _ = writeln!(
            out,
            "{:<width$}  {:>8}  {:>9}  {:>6}",
            e.url, e.sent, e.completed, e.errors
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{ErrorKind, Outcome, Recorder};

    #[test]
    fn live_lines_show_rates_latency_and_errors() {
        let mut r = Recorder::new(10.0);
        r.sent("a", 0.0);
        r.sent("a", 0.2);
        r.finished(
            0.5,
            "a",
            &Outcome::Ok {
                ttft: Some(0.041),
                e2e: 1.25,
                output_tokens: 3,
            },
        );
        r.dropped();
        let s = r.tick(1.0, 3);
        r.finished(1.2, "a", &Outcome::Failed(ErrorKind::Status(429)));
        let line = live_line(&s, &r.totals().errors);
        for wanted in [
            "1.0s",
            "sent   2.0/s",
            "done   1.0/s",
            "in flight    1",
            "ttft p50 41ms p99 41ms",
            "e2e p50 1.25s",
            "endpoints 3",
            "dropped 1",
            "late 1",
            "errors: http 429 1",
        ] {
            assert!(line.contains(wanted), "{line:?} lacks {wanted:?}");
        }
        let clean = live_line(&r.tick(2.0, 3), &BTreeMap::new());
        assert!(
            !clean.contains("errors") && !clean.contains("dropped"),
            "{clean}"
        );
    }

    #[test]
    fn the_summary_has_every_figure() {
        let mut r = Recorder::new(10.0);
        r.sent("http://a:1", 0.0);
        r.sent("http://b:1", 0.0);
        r.finished(
            1.0,
            "http://a:1",
            &Outcome::Ok {
                ttft: Some(0.1),
                e2e: 0.5,
                output_tokens: 8,
            },
        );
        r.finished(1.0, "http://b:1", &Outcome::Failed(ErrorKind::Connect));
        r.dropped();
        let text = summary("open loop", "m", &r.summary(2.0));
        for wanted in [
            "open loop; model m; ran 2.0s",
            "sent 2  completed 1  errors 1  dropped 1",
            "0.50 completed/s",
            "4.0 output tokens/s",
            "ttft        p50    100ms",
            "end-to-end  p50    500ms",
            "errors      connect 1",
            "were not sent",
            "http://a:1",
        ] {
            assert!(text.contains(wanted), "{text}\nlacks {wanted:?}");
        }
        assert_eq!(millis(None), "-");
    }
}
