//! Scoring endpoints by load, the saturation test, and the pick.
//!
//! The rules follow the Gateway API Inference Extension's endpoint picker
//! (EPP), which the same vLLM gauges feed:
//!
//! - **queue**: vLLM's waiting requests, min–max normalised over the
//!   candidates (fewest waiting scores 1, most scores 0, all equal score 1),
//!   as the EPP's `queue-scorer`. Requests the gateway sent after the report
//!   are added: the report cannot show them yet, and without them a burst
//!   between two reports would all go to the endpoint that looked emptiest;
//! - **KV cache**: `1 − vllm:kv_cache_usage_perc`, as its
//!   `kv-cache-utilization-scorer`;
//! - **in flight**: the requests this gateway has sent to the endpoint and
//!   not yet seen finish, min–max normalised like the queue. The EPP has no
//!   such scorer in its default profile; it is here because the gateway's
//!   own count is exact and immediate, while a scrape is up to one interval
//!   old: it spreads a burst that arrives between two scrapes, and before the
//!   first scrape it is the only signal.
//!
//! An endpoint's score is the weighted sum; the highest score wins. Default
//! weights: queue 2, KV cache 2 (the EPP's default profile), in flight 1.
//! Equal scores go to the first endpoint at or after a caller-given position,
//! in order, so a caller that advances the position spreads ties in turn and
//! equal inputs always give the same pick.
//!
//! **Saturation** (the EPP's saturation detector, its defaults): an endpoint
//! is saturated when its last report is stale (older than `staleness`, or
//! there is none), when it reported `queue_depth` or more requests waiting,
//! or a KV cache `kv_usage` or more used, or when the gateway's queue has
//! released `queue_depth` requests to it since the report. An optional cap
//! on the gateway's own in-flight requests per endpoint saturates it too.
//!
//! The last rule meters a backlog. The EPP reads the report alone; then a
//! backlog held at the gateway goes all at once to the first endpoint whose
//! report shows room. Adding the releases to the reported waiting instead
//! would starve the endpoints: a busy vLLM reports a few requests waiting
//! at all times (those that arrived during the current engine step, which
//! the next step schedules), so only the few places left under
//! `queue_depth` would be released per report, fewer than arrive, and the
//! backlog would never drain (seen in `aim gateway bench` at 1,024
//! streams). So an endpoint whose report shows room takes up to
//! `queue_depth` held requests per report: a backlog leaves at up to
//! `queue_depth` per scrape interval and endpoint (100 a second at the
//! default 50 ms), and an endpoint is overfilled by less than `queue_depth`
//! requests at worst. Requests sent straight through while nothing is held
//! count in the queue score only.
//!
//! Only unsaturated endpoints are scored; when every endpoint is saturated
//! the caller learns which one would be best, and a gateway with flow
//! control holds the request instead.

use std::time::Duration;

/// The gauges a vLLM server exports that the picker reads.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ServerMetrics {
    /// `vllm:num_requests_waiting`.
    pub waiting: u32,
    /// `vllm:num_requests_running`.
    pub running: u32,
    /// `vllm:kv_cache_usage_perc`, from 0 to 1.
    pub kv_usage: f64,
}

/// A report from the endpoint's model server, as of now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observed {
    pub metrics: ServerMetrics,
    /// How long ago the report was taken.
    pub age: Duration,
    /// Requests this gateway sent to the endpoint after the report was
    /// taken: the server's gauges show them only from the next report.
    /// They count in the queue score.
    pub sent_since: u32,
    /// Of those, the ones released from the gateway's queue: they count as
    /// waiting in the saturation test too.
    pub released_since: u32,
}

/// One candidate endpoint as the picker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Load {
    /// Requests this gateway has sent to the endpoint and not yet seen end.
    pub in_flight: u32,
    /// The last report; `None` before the first one.
    pub observed: Option<Observed>,
}

impl Load {
    /// A load known exactly and at once (the lab reads its engines directly).
    pub fn exact(in_flight: u32, metrics: ServerMetrics) -> Self {
        Load {
            in_flight,
            observed: Some(Observed {
                metrics,
                age: Duration::ZERO,
                sent_since: 0,
                released_since: 0,
            }),
        }
    }
}

/// How much each signal counts. Zero turns a signal off; all zero picks in
/// turn among the unsaturated endpoints.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weights {
    pub queue: f64,
    pub kv_cache: f64,
    pub in_flight: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            queue: 2.0,
            kv_cache: 2.0,
            in_flight: 1.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PickerConfig {
    pub weights: Weights,
    /// Waiting requests reported, or requests released from the queue since
    /// the report, at which an endpoint is saturated.
    pub queue_depth: u32,
    /// KV-cache usage (0–1) at which an endpoint is saturated.
    pub kv_usage: f64,
    /// A report older than this says nothing: the endpoint counts as
    /// saturated and its gauges score as the worst.
    pub staleness: Duration,
    /// The gateway's own in-flight requests at which an endpoint is
    /// saturated, whatever its report says; `None`: no cap.
    pub max_in_flight: Option<u32>,
}

/// The Inference Extension's saturation-detector defaults: 5 waiting, 80 %
/// KV cache, reports older than 200 ms are stale (its scrapes run every
/// 50 ms).
impl Default for PickerConfig {
    fn default() -> Self {
        PickerConfig {
            weights: Weights::default(),
            queue_depth: 5,
            kv_usage: 0.8,
            staleness: Duration::from_millis(200),
            max_in_flight: None,
        }
    }
}

/// A configuration value out of range, named by its field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field} must be {rule}, got {value}")]
pub struct ConfigError {
    /// `weights.queue`, `weights.kv_cache`, `weights.in_flight`,
    /// `queue_depth`, `kv_usage`, `staleness` or `max_in_flight`.
    pub field: &'static str,
    pub rule: &'static str,
    pub value: String,
}

impl PickerConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let weights = [
            ("weights.queue", self.weights.queue),
            ("weights.kv_cache", self.weights.kv_cache),
            ("weights.in_flight", self.weights.in_flight),
        ];
        for (field, w) in weights {
            if !(w.is_finite() && w >= 0.0) {
                return Err(ConfigError {
                    field,
                    rule: "a finite number, zero or more",
                    value: w.to_string(),
                });
            }
        }
        if self.queue_depth == 0 {
            return Err(ConfigError {
                field: "queue_depth",
                rule: "at least 1 (0 would saturate every endpoint)",
                value: "0".into(),
            });
        }
        if !(self.kv_usage > 0.0 && self.kv_usage <= 1.0) {
            return Err(ConfigError {
                field: "kv_usage",
                rule: "above 0 and at most 1",
                value: self.kv_usage.to_string(),
            });
        }
        if self.staleness.is_zero() {
            return Err(ConfigError {
                field: "staleness",
                rule: "longer than zero (every report would be stale)",
                value: "0s".into(),
            });
        }
        if self.max_in_flight == Some(0) {
            return Err(ConfigError {
                field: "max_in_flight",
                rule: "at least 1 when set",
                value: "0".into(),
            });
        }
        Ok(())
    }
}

/// What [`Picker::pick`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// The best unsaturated endpoint.
    Endpoint(usize),
    /// Every endpoint is saturated; `best` scores highest among them. A
    /// gateway with flow control holds the request; one without sends it
    /// there.
    AllSaturated { best: usize },
    /// No candidate at all.
    NoEndpoint,
}

#[derive(Debug, Clone)]
pub struct Picker {
    cfg: PickerConfig,
}

/// Min and max over a set, for min–max normalisation.
#[derive(Clone, Copy)]
struct Range {
    min: f64,
    max: f64,
}

impl Range {
    const EMPTY: Range = Range {
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
    };

    fn add(&mut self, v: f64) {
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    /// 1 at the minimum, 0 at the maximum, 1 when every value is equal.
    fn lower_is_better(&self, v: f64) -> f64 {
        if self.max > self.min {
            (self.max - v) / (self.max - self.min)
        } else {
            1.0
        }
    }
}

impl Picker {
    pub fn new(cfg: PickerConfig) -> Result<Self, ConfigError> {
        cfg.validate()?;
        Ok(Picker { cfg })
    }

    pub fn config(&self) -> &PickerConfig {
        &self.cfg
    }

    /// The report, if it is fresh enough to believe.
    fn fresh<'a>(&self, load: &'a Load) -> Option<&'a Observed> {
        load.observed
            .as_ref()
            .filter(|o| o.age <= self.cfg.staleness)
    }

    /// Waiting requests as the server will report them: its last report
    /// plus what was sent since.
    fn expected_waiting(o: &Observed) -> f64 {
        f64::from(o.metrics.waiting) + f64::from(o.sent_since)
    }

    /// Waiting requests for the saturation test: the report's, or the
    /// queue's releases since it, whichever is more.
    fn metered_waiting(o: &Observed) -> f64 {
        f64::from(o.metrics.waiting.max(o.released_since))
    }

    /// The saturation test (module documentation).
    pub fn is_saturated(&self, load: &Load) -> bool {
        if self
            .cfg
            .max_in_flight
            .is_some_and(|cap| load.in_flight >= cap)
        {
            return true;
        }
        match self.fresh(load) {
            None => true,
            Some(o) => {
                Self::metered_waiting(o) >= f64::from(self.cfg.queue_depth)
                    || o.metrics.kv_usage >= self.cfg.kv_usage
            }
        }
    }

    /// How close to saturation an endpoint is: the larger of waiting over
    /// `queue_depth` and KV usage over `kv_usage` (1 or more is saturated); a
    /// stale endpoint counts 1. This is the Inference Extension's
    /// utilization detector per endpoint; its pool figure is the mean.
    pub fn saturation(&self, load: &Load) -> f64 {
        match self.fresh(load) {
            None => 1.0,
            Some(o) => {
                let q = Self::metered_waiting(o) / f64::from(self.cfg.queue_depth);
                let kv = o.metrics.kv_usage / self.cfg.kv_usage;
                q.max(kv)
            }
        }
    }

    /// Picks among `loads` (module documentation). Ties go to the first
    /// endpoint at or after `start` (taken modulo the number of endpoints).
    pub fn pick(&self, loads: &[Load], start: usize) -> Choice {
        let n = loads.len();
        if n == 0 {
            return Choice::NoEndpoint;
        }
        let any_unsaturated = loads.iter().any(|l| !self.is_saturated(l));
        let considered = |l: &Load| !any_unsaturated || !self.is_saturated(l);
        let (mut queue, mut in_flight) = (Range::EMPTY, Range::EMPTY);
        for l in loads.iter().filter(|l| considered(l)) {
            in_flight.add(f64::from(l.in_flight));
            if let Some(o) = self.fresh(l) {
                queue.add(Self::expected_waiting(o));
            }
        }
        let w = self.cfg.weights;
        let score = |l: &Load| {
            let (q, kv) = match self.fresh(l) {
                Some(o) => (
                    queue.lower_is_better(Self::expected_waiting(o)),
                    1.0 - o.metrics.kv_usage.clamp(0.0, 1.0),
                ),
                // Unknown gauges score as the worst.
                None => (0.0, 0.0),
            };
            w.queue * q
                + w.kv_cache * kv
                + w.in_flight * in_flight.lower_is_better(f64::from(l.in_flight))
        };
        let mut best: Option<(usize, f64)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            if !considered(&loads[i]) {
                continue;
            }
            let s = score(&loads[i]);
            // Strictly greater: the first in turn keeps a tie.
            if best.is_none_or(|(_, b)| s > b) {
                best = Some((i, s));
            }
        }
        let (i, _) = best.expect("at least one endpoint is considered");
        if any_unsaturated {
            Choice::Endpoint(i)
        } else {
            Choice::AllSaturated { best: i }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(waiting: u32, running: u32, kv_usage: f64) -> ServerMetrics {
        ServerMetrics {
            waiting,
            running,
            kv_usage,
        }
    }

    fn picker() -> Picker {
        Picker::new(PickerConfig::default()).unwrap()
    }

    fn weights(queue: f64, kv_cache: f64, in_flight: f64) -> Picker {
        Picker::new(PickerConfig {
            weights: Weights {
                queue,
                kv_cache,
                in_flight,
            },
            ..PickerConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn no_endpoint_is_said_so() {
        assert_eq!(picker().pick(&[], 0), Choice::NoEndpoint);
    }

    #[test]
    fn the_shorter_vllm_queue_wins() {
        let p = weights(1.0, 0.0, 0.0);
        let loads = [Load::exact(0, m(3, 8, 0.1)), Load::exact(0, m(1, 8, 0.1))];
        assert_eq!(p.pick(&loads, 0), Choice::Endpoint(1));
    }

    #[test]
    fn the_emptier_kv_cache_wins() {
        let p = weights(0.0, 1.0, 0.0);
        let loads = [Load::exact(0, m(0, 8, 0.7)), Load::exact(0, m(0, 8, 0.2))];
        assert_eq!(p.pick(&loads, 0), Choice::Endpoint(1));
    }

    #[test]
    fn fewer_in_flight_wins() {
        let p = weights(0.0, 0.0, 1.0);
        let loads = [Load::exact(4, m(0, 0, 0.0)), Load::exact(2, m(0, 0, 0.0))];
        assert_eq!(p.pick(&loads, 0), Choice::Endpoint(1));
    }

    #[test]
    fn weights_trade_signals_off() {
        // Endpoint 0 has the shorter queue, endpoint 1 the emptier cache.
        let loads = [Load::exact(0, m(0, 8, 0.6)), Load::exact(0, m(2, 8, 0.1))];
        assert_eq!(weights(1.0, 0.1, 0.0).pick(&loads, 0), Choice::Endpoint(0));
        assert_eq!(weights(0.1, 1.0, 0.0).pick(&loads, 0), Choice::Endpoint(1));
        // Defaults: queue 2 × (1 − 0) + KV 2 × 0.4 = 2.8 against 2 × 0 + 2 × 0.9 = 1.8.
        assert_eq!(picker().pick(&loads, 0), Choice::Endpoint(0));
    }

    #[test]
    fn ties_go_in_turn_from_the_start_position() {
        let p = picker();
        let loads = [Load::exact(1, m(0, 1, 0.1)); 3];
        assert_eq!(p.pick(&loads, 0), Choice::Endpoint(0));
        assert_eq!(p.pick(&loads, 1), Choice::Endpoint(1));
        assert_eq!(p.pick(&loads, 2), Choice::Endpoint(2));
        assert_eq!(p.pick(&loads, 3), Choice::Endpoint(0));
        // A better endpoint beats the position.
        let mut loads = loads;
        loads[0].in_flight = 0;
        assert_eq!(p.pick(&loads, 2), Choice::Endpoint(0));
    }

    #[test]
    fn all_zero_weights_pick_in_turn() {
        let p = weights(0.0, 0.0, 0.0);
        let loads = [Load::exact(9, m(4, 1, 0.7)), Load::exact(0, m(0, 0, 0.0))];
        assert_eq!(p.pick(&loads, 0), Choice::Endpoint(0));
        assert_eq!(p.pick(&loads, 1), Choice::Endpoint(1));
    }

    #[test]
    fn saturation_at_the_queue_and_kv_thresholds() {
        let p = picker();
        assert!(!p.is_saturated(&Load::exact(0, m(4, 8, 0.79))));
        assert!(p.is_saturated(&Load::exact(0, m(5, 8, 0.1))));
        assert!(p.is_saturated(&Load::exact(0, m(0, 8, 0.8))));
        assert_eq!(p.saturation(&Load::exact(0, m(5, 8, 0.4))), 1.0);
        assert_eq!(p.saturation(&Load::exact(0, m(0, 8, 0.4))), 0.5);
    }

    #[test]
    fn requests_sent_since_the_report_count_in_the_score() {
        let p = weights(1.0, 0.0, 0.0);
        let mut loads = [Load::exact(0, m(1, 8, 0.1)), Load::exact(0, m(2, 8, 0.1))];
        assert_eq!(p.pick(&loads, 0), Choice::Endpoint(0));
        loads[0].observed.as_mut().unwrap().sent_since = 2;
        assert_eq!(
            p.pick(&loads, 0),
            Choice::Endpoint(1),
            "1 reported + 2 sent since > 2"
        );
        // Sent straight through, they leave the saturation test alone.
        loads[0].observed.as_mut().unwrap().sent_since = 40;
        assert!(!p.is_saturated(&loads[0]));
        assert!((p.saturation(&loads[0]) - 0.2).abs() < 1e-12);
    }

    #[test]
    fn an_endpoint_takes_up_to_queue_depth_releases_per_report() {
        let p = picker();
        // Four reported waiting: room for held requests, five of them.
        let mut load = Load::exact(0, m(4, 8, 0.1));
        let o = load.observed.as_mut().unwrap();
        (o.sent_since, o.released_since) = (4, 4);
        assert!(!p.is_saturated(&load));
        assert!((p.saturation(&load) - 0.8).abs() < 1e-12);
        let o = load.observed.as_mut().unwrap();
        (o.sent_since, o.released_since) = (5, 5);
        assert!(p.is_saturated(&load), "five released since the report");
        assert_eq!(p.saturation(&load), 1.0);
    }

    #[test]
    fn a_stale_or_missing_report_saturates() {
        let p = picker();
        let mut load = Load::exact(0, m(0, 0, 0.0));
        load.observed.as_mut().unwrap().age = Duration::from_millis(200);
        assert!(!p.is_saturated(&load), "exactly at the limit is fresh");
        load.observed.as_mut().unwrap().age = Duration::from_millis(201);
        assert!(p.is_saturated(&load));
        assert_eq!(p.saturation(&load), 1.0);
        assert!(p.is_saturated(&Load::default()));
    }

    #[test]
    fn the_in_flight_cap_saturates_whatever_the_report() {
        let p = Picker::new(PickerConfig {
            max_in_flight: Some(2),
            ..PickerConfig::default()
        })
        .unwrap();
        assert!(!p.is_saturated(&Load::exact(1, m(0, 0, 0.0))));
        assert!(p.is_saturated(&Load::exact(2, m(0, 0, 0.0))));
    }

    #[test]
    fn saturated_endpoints_are_passed_over() {
        let p = picker();
        // Endpoint 0 scores better on everything but is saturated by its queue.
        let loads = [Load::exact(0, m(5, 1, 0.0)), Load::exact(3, m(4, 8, 0.5))];
        assert_eq!(p.pick(&loads, 0), Choice::Endpoint(1));
    }

    #[test]
    fn when_all_are_saturated_the_best_is_named() {
        let p = picker();
        let loads = [Load::exact(2, m(9, 8, 0.9)), Load::exact(2, m(6, 8, 0.9))];
        assert_eq!(p.pick(&loads, 0), Choice::AllSaturated { best: 1 });
        // Unknown gauges score as the worst: a known queue beats them.
        let loads = [Load::default(), Load::exact(0, m(50, 8, 0.95))];
        assert_eq!(p.pick(&loads, 0), Choice::AllSaturated { best: 1 });
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases: [(PickerConfig, &str); 6] = [
            (
                PickerConfig {
                    weights: Weights {
                        queue: -1.0,
                        ..Weights::default()
                    },
                    ..PickerConfig::default()
                },
                "weights.queue",
            ),
            (
                PickerConfig {
                    weights: Weights {
                        in_flight: f64::NAN,
                        ..Weights::default()
                    },
                    ..PickerConfig::default()
                },
                "weights.in_flight",
            ),
            (
                PickerConfig {
                    queue_depth: 0,
                    ..PickerConfig::default()
                },
                "queue_depth",
            ),
            (
                PickerConfig {
                    kv_usage: 1.5,
                    ..PickerConfig::default()
                },
                "kv_usage",
            ),
            (
                PickerConfig {
                    staleness: Duration::ZERO,
                    ..PickerConfig::default()
                },
                "staleness",
            ),
            (
                PickerConfig {
                    max_in_flight: Some(0),
                    ..PickerConfig::default()
                },
                "max_in_flight",
            ),
        ];
        for (cfg, field) in cases {
            let e = Picker::new(cfg).unwrap_err();
            assert_eq!(e.field, field);
            assert!(e.to_string().starts_with(field), "{e}");
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn load() -> impl Strategy<Value = Load> {
            (
                0u32..20,
                proptest::option::of((
                    0u32..12,
                    0u32..64,
                    0.0f64..1.0,
                    0u64..400,
                    0u32..4,
                    0u32..4,
                )),
            )
                .prop_map(|(in_flight, o)| Load {
                    in_flight,
                    observed: o.map(
                        |(waiting, running, kv_usage, age_ms, sent_since, released)| Observed {
                            metrics: ServerMetrics {
                                waiting,
                                running,
                                kv_usage,
                            },
                            age: Duration::from_millis(age_ms),
                            sent_since: sent_since + released,
                            released_since: released,
                        },
                    ),
                })
        }

        proptest! {
            /// The pick is unsaturated whenever some endpoint is, and its
            /// score is never beaten by another considered endpoint.
            #[test]
            fn picks_an_unsaturated_endpoint_when_one_exists(
                loads in proptest::collection::vec(load(), 1..8),
                start in 0usize..16,
            ) {
                let p = picker();
                let unsaturated = loads.iter().filter(|l| !p.is_saturated(l)).count();
                match p.pick(&loads, start) {
                    Choice::Endpoint(i) => {
                        prop_assert!(unsaturated > 0);
                        prop_assert!(!p.is_saturated(&loads[i]));
                    }
                    Choice::AllSaturated { best } => {
                        prop_assert_eq!(unsaturated, 0);
                        prop_assert!(best < loads.len());
                    }
                    Choice::NoEndpoint => prop_assert!(false, "loads are not empty"),
                }
            }

            /// Equal inputs give equal picks, and rotating the endpoints
            /// together with the start position rotates the pick.
            #[test]
            fn picks_are_deterministic_and_rotate_with_the_start(
                loads in proptest::collection::vec(load(), 1..8),
                shift in 0usize..8,
            ) {
                let p = picker();
                let n = loads.len();
                let shift = shift % n;
                let first = p.pick(&loads, 0);
                prop_assert_eq!(first, p.pick(&loads, 0));
                let mut rotated = loads.clone();
                rotated.rotate_left(shift);
                let index = |c: Choice| match c {
                    Choice::Endpoint(i) | Choice::AllSaturated { best: i } => i,
                    Choice::NoEndpoint => usize::MAX,
                };
                let again = p.pick(&rotated, (n - shift) % n);
                prop_assert_eq!((index(again) + shift) % n, index(first));
            }

            /// Lowering one endpoint's load never takes the pick away from it.
            #[test]
            fn less_load_never_loses_the_pick(
                loads in proptest::collection::vec(load(), 1..8),
                start in 0usize..8,
            ) {
                let p = picker();
                let chosen = match p.pick(&loads, start) {
                    Choice::Endpoint(i) => i,
                    _ => return Ok(()),
                };
                let mut lighter = loads.clone();
                lighter[chosen].in_flight = lighter[chosen].in_flight.saturating_sub(1);
                prop_assert_eq!(p.pick(&lighter, start), Choice::Endpoint(chosen));
            }
        }
    }
}
