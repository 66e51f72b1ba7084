//! What a run did, second by second and in total. Pure bookkeeping: the caller passes the
//! times in, so the figures can be checked without a clock.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::window::{Window, percentile};

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ErrorKind {
    /// No connection: refused, unreachable, or the connect timed out.
    Connect,
    /// No complete answer within `--timeout`.
    Timeout,
    /// The server answered with a status other than 200.
    Status(u16),
    /// The stream broke, carried an error frame, or ended without `[DONE]`.
    Stream,
    /// No endpoint was known when the request was due.
    NoEndpoint,
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ErrorKind::Connect => f.write_str("connect"),
            ErrorKind::Timeout => f.write_str("timeout"),
            ErrorKind::Status(code) => write!(f, "http {code}"),
            ErrorKind::Stream => f.write_str("stream"),
            ErrorKind::NoEndpoint => f.write_str("no endpoint"),
        }
    }
}

/// How one request ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Ok {
        /// Seconds from sending to the first streamed token (`None` if no token came).
        ttft: Option<f64>,
        /// Seconds from sending to the end of the stream.
        e2e: f64,
        output_tokens: u64,
    },
    Failed(ErrorKind),
}

/// Counts over one interval or the whole run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Counts {
    pub sent: u64,
    pub completed: u64,
    /// Due while `--max-in-flight` requests were out, so never sent.
    pub dropped: u64,
    /// Sent later than due (see [`LATE_AFTER`]).
    pub late: u64,
    pub output_tokens: u64,
    pub errors: BTreeMap<String, u64>,
}

impl Counts {
    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }

    fn error(&mut self, kind: ErrorKind) {
        *self.errors.entry(kind.to_string()).or_default() += 1;
    }
}

/// A send this much behind its due time counts as late: the loader itself could not keep
/// the schedule (an overloaded machine), which would otherwise look like a lighter load.
pub const LATE_AFTER: f64 = 0.05;

/// One second of the run, as printed live and written to `--json-out`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// Seconds since the start, at the end of the interval.
    pub t: f64,
    pub interval_s: f64,
    #[serde(flatten)]
    pub counts: Counts,
    /// Requests out at the end of the interval, and the most at any time in it.
    pub in_flight: usize,
    pub max_in_flight: usize,
    pub endpoints: usize,
    /// Over the sliding window (`--window`), in milliseconds.
    pub ttft_p50_ms: Option<f64>,
    pub ttft_p99_ms: Option<f64>,
    pub e2e_p50_ms: Option<f64>,
    pub e2e_p99_ms: Option<f64>,
}

impl Sample {
    pub fn per_second(&self, n: u64) -> f64 {
        if self.interval_s > 0.0 {
            n as f64 / self.interval_s
        } else {
            0.0
        }
    }
}

/// Latency percentiles over the whole run, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Latency {
    pub count: usize,
    pub mean_ms: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

impl Latency {
    fn of(values: &[f64]) -> Self {
        let mut v: Vec<f64> = values.iter().map(|s| s * 1e3).collect();
        v.sort_by(f64::total_cmp);
        Latency {
            count: v.len(),
            mean_ms: (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64),
            p50_ms: percentile(&v, 50.0),
            p90_ms: percentile(&v, 90.0),
            p99_ms: percentile(&v, 99.0),
            max_ms: v.last().copied(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EndpointCounts {
    pub url: String,
    pub sent: u64,
    pub completed: u64,
    pub errors: u64,
}

/// The whole run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub duration_s: f64,
    #[serde(flatten)]
    pub counts: Counts,
    pub errors_total: u64,
    /// Still out when the run stopped (Ctrl-C or the end of `--timeout`): never answered.
    pub unfinished: usize,
    pub max_in_flight: usize,
    pub max_late_ms: f64,
    pub completed_per_s: f64,
    pub output_tokens_per_s: f64,
    pub ttft: Latency,
    pub e2e: Latency,
    pub endpoints: Vec<EndpointCounts>,
}

#[derive(Debug)]
pub struct Recorder {
    ttft_window: Window,
    e2e_window: Window,
    interval: Counts,
    interval_start: f64,
    interval_max_in_flight: usize,
    total: Counts,
    ttfts: Vec<f64>,
    e2es: Vec<f64>,
    in_flight: usize,
    max_in_flight: usize,
    max_late: f64,
    endpoints: BTreeMap<String, EndpointCounts>,
}

impl Recorder {
    /// `window`: seconds the live percentiles look back over.
    pub fn new(window: f64) -> Self {
        Recorder {
            ttft_window: Window::new(window),
            e2e_window: Window::new(window),
            interval: Counts::default(),
            interval_start: 0.0,
            interval_max_in_flight: 0,
            total: Counts::default(),
            ttfts: Vec::new(),
            e2es: Vec::new(),
            in_flight: 0,
            max_in_flight: 0,
            max_late: 0.0,
            endpoints: BTreeMap::new(),
        }
    }

    fn endpoint(&mut self, url: &str) -> &mut EndpointCounts {
        self.endpoints
            .entry(url.to_string())
            .or_insert_with(|| EndpointCounts {
                url: url.to_string(),
                ..EndpointCounts::default()
            })
    }

    /// A request went out to `url`, `behind` seconds after it was due (0 for closed loop).
    pub fn sent(&mut self, url: &str, behind: f64) {
        self.interval.sent += 1;
        self.total.sent += 1;
        if behind > LATE_AFTER {
            self.interval.late += 1;
            self.total.late += 1;
        }
        self.max_late = self.max_late.max(behind);
        self.in_flight += 1;
        self.max_in_flight = self.max_in_flight.max(self.in_flight);
        self.interval_max_in_flight = self.interval_max_in_flight.max(self.in_flight);
        self.endpoint(url).sent += 1;
    }

    /// A request came due while the in-flight cap was reached, and was not sent.
    pub fn dropped(&mut self) {
        self.interval.dropped += 1;
        self.total.dropped += 1;
    }

    /// A request came due while no endpoint was known.
    pub fn no_endpoint(&mut self) {
        self.interval.error(ErrorKind::NoEndpoint);
        self.total.error(ErrorKind::NoEndpoint);
    }

    /// The request sent to `url` ended at `t` seconds.
    pub fn finished(&mut self, t: f64, url: &str, outcome: &Outcome) {
        self.in_flight = self.in_flight.saturating_sub(1);
        match *outcome {
            Outcome::Ok {
                ttft,
                e2e,
                output_tokens,
            } => {
                self.interval.completed += 1;
                self.total.completed += 1;
                self.interval.output_tokens += output_tokens;
                self.total.output_tokens += output_tokens;
                if let Some(ttft) = ttft {
                    self.ttft_window.push(t, ttft);
                    self.ttfts.push(ttft);
                }
                self.e2e_window.push(t, e2e);
                self.e2es.push(e2e);
                self.endpoint(url).completed += 1;
            }
            Outcome::Failed(kind) => {
                self.interval.error(kind);
                self.total.error(kind);
                self.endpoint(url).errors += 1;
            }
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Closes the interval ending at `t` and starts the next.
    pub fn tick(&mut self, t: f64, endpoints: usize) -> Sample {
        let ms = |v: Option<f64>| v.map(|s| s * 1e3);
        let ttft = self.ttft_window.percentiles(t, &[50.0, 99.0]);
        let e2e = self.e2e_window.percentiles(t, &[50.0, 99.0]);
        let sample = Sample {
            t,
            interval_s: t - self.interval_start,
            counts: std::mem::take(&mut self.interval),
            in_flight: self.in_flight,
            max_in_flight: self.interval_max_in_flight,
            endpoints,
            ttft_p50_ms: ms(ttft[0]),
            ttft_p99_ms: ms(ttft[1]),
            e2e_p50_ms: ms(e2e[0]),
            e2e_p99_ms: ms(e2e[1]),
        };
        self.interval_start = t;
        self.interval_max_in_flight = self.in_flight;
        sample
    }

    pub fn totals(&self) -> &Counts {
        &self.total
    }

    /// The run so far, `t` seconds after its start.
    pub fn summary(&self, t: f64) -> Summary {
        let rate = |n: u64| if t > 0.0 { n as f64 / t } else { 0.0 };
        Summary {
            duration_s: t,
            counts: self.total.clone(),
            errors_total: self.total.errors_total(),
            unfinished: self.in_flight,
            max_in_flight: self.max_in_flight,
            max_late_ms: self.max_late * 1e3,
            completed_per_s: rate(self.total.completed),
            output_tokens_per_s: rate(self.total.output_tokens),
            ttft: Latency::of(&self.ttfts),
            e2e: Latency::of(&self.e2es),
            endpoints: self.endpoints.values().cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(ttft: f64, e2e: f64) -> Outcome {
        Outcome::Ok {
            ttft: Some(ttft),
            e2e,
            output_tokens: 10,
        }
    }

    #[test]
    fn intervals_count_and_reset() {
        let mut r = Recorder::new(10.0);
        r.sent("a", 0.0);
        r.sent("b", 0.2);
        r.sent("a", 0.0);
        r.finished(0.5, "a", &ok(0.1, 0.4));
        r.finished(0.7, "b", &Outcome::Failed(ErrorKind::Connect));
        r.dropped();
        r.no_endpoint();
        let s = r.tick(1.0, 2);
        assert_eq!((s.counts.sent, s.counts.completed), (3, 1));
        assert_eq!((s.counts.dropped, s.counts.late), (1, 1));
        assert_eq!(s.counts.output_tokens, 10);
        assert_eq!(s.counts.errors["connect"], 1);
        assert_eq!(s.counts.errors["no endpoint"], 1);
        assert_eq!((s.in_flight, s.max_in_flight, s.endpoints), (1, 3, 2));
        assert_eq!(s.ttft_p50_ms, Some(100.0));
        assert_eq!(s.e2e_p99_ms, Some(400.0));
        assert_eq!(s.per_second(s.counts.sent), 3.0);

        let quiet = r.tick(2.0, 2);
        assert_eq!(quiet.counts, Counts::default());
        // The window still holds the first second's latency; the in-flight peak restarts
        // from what is out now.
        assert_eq!(quiet.ttft_p50_ms, Some(100.0));
        assert_eq!(quiet.max_in_flight, 1);
        let later = r.tick(11.0, 2);
        assert_eq!(later.ttft_p50_ms, None, "older than the 10 s window");
        assert_eq!(later.interval_s, 9.0);
    }

    #[test]
    fn the_summary_covers_the_whole_run() {
        let mut r = Recorder::new(1.0);
        for i in 0..100 {
            r.sent(if i % 2 == 0 { "a" } else { "b" }, 0.0);
        }
        for i in 0..98 {
            let url = if i % 2 == 0 { "a" } else { "b" };
            r.finished(
                f64::from(i) / 10.0,
                url,
                &ok(f64::from(i + 1) / 1000.0, 1.0),
            );
        }
        r.finished(9.9, "b", &Outcome::Failed(ErrorKind::Status(503)));
        r.tick(5.0, 2);
        let s = r.summary(10.0);
        assert_eq!(
            (s.counts.sent, s.counts.completed, s.errors_total),
            (100, 98, 1)
        );
        assert_eq!(s.counts.errors["http 503"], 1);
        assert_eq!(s.unfinished, 1);
        assert_eq!(s.max_in_flight, 100);
        assert_eq!(s.completed_per_s, 9.8);
        assert_eq!(s.output_tokens_per_s, 98.0);
        assert_eq!(s.ttft.count, 98);
        assert_eq!(s.ttft.p50_ms, Some(49.0));
        assert_eq!(s.ttft.p99_ms, Some(98.0));
        assert_eq!(s.ttft.max_ms, Some(98.0));
        assert_eq!(s.e2e.p50_ms, Some(1000.0));
        assert_eq!(
            s.endpoints,
            vec![
                EndpointCounts {
                    url: "a".into(),
                    sent: 50,
                    completed: 49,
                    errors: 0
                },
                EndpointCounts {
                    url: "b".into(),
                    sent: 50,
                    completed: 49,
                    errors: 1
                },
            ]
        );
    }

    #[test]
    fn a_request_without_tokens_has_no_ttft() {
        let mut r = Recorder::new(10.0);
        r.sent("a", 0.0);
        r.finished(
            0.1,
            "a",
            &Outcome::Ok {
                ttft: None,
                e2e: 0.1,
                output_tokens: 0,
            },
        );
        let s = r.summary(1.0);
        assert_eq!((s.ttft.count, s.e2e.count), (0, 1));
        assert_eq!(s.ttft.p50_ms, None);
    }
}
