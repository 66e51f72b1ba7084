//! Prometheus' side of the Prometheus path: every pod is a scrape target
//! scraped at its own fixed phase, each scrape stores one sample per
//! series, and a target that goes away leaves staleness markers behind.
//!
//! The facts modelled, from Prometheus' scrape manager and TSDB:
//! * A target is scraped every `scrape_interval` at a fixed phase within
//!   the interval: Prometheus derives it from a hash of the target's labels,
//!   so targets are spread over the interval and each keeps its phase for
//!   its whole life. The lab draws the phase from the run's seed and the
//!   pod's index, without touching the run's random stream.
//! * A pod is a target from its creation (Kubernetes service discovery
//!   lists not-ready endpoints too), but until its server answers the
//!   scrapes fail and store nothing: its first sample is the first scrape
//!   at or after it is Ready.
//! * Deleting a pod removes it from the Service's endpoints at once (the
//!   lab's draining pods are deleted pods), so its scrape loop stops. After
//!   a scrape loop stops, Prometheus waits until the next scrape would have
//!   been, then one more interval and a tenth, and then writes staleness
//!   markers stamped with the first of those times. Until they are written,
//!   an instant query still returns the target's last sample (for up to
//!   the 5 minute lookback); from then on the series is gone.

use std::collections::VecDeque;

/// One series each lab pod exports, under vLLM's name and labels (the
/// names `aim sim` exports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeriesKind {
    pub name: &'static str,
    /// vLLM's `finished_reason` label, on the success counter only.
    pub finished_reason: Option<&'static str>,
}

/// `vllm:num_requests_running`.
pub const RUNNING: usize = 0;
/// `vllm:num_requests_waiting`.
pub const WAITING: usize = 1;
/// `vllm:kv_cache_usage_perc` (a fraction, 0–1, despite its name).
pub const KV_USAGE: usize = 2;
/// First of `vllm:request_success_total`'s series, one per finish reason
/// in [`FINISH_REASONS`] order.
pub const SUCCESS: usize = 3;

/// vLLM's finish reasons, in the order `aim_engine::FinishReason::ALL`
/// lists them: vLLM creates every reason's series when it starts, so a
/// pod exports all of them from its first scrape.
pub const FINISH_REASONS: [&str; 5] = ["stop", "length", "abort", "error", "repetition"];

/// Series per target.
pub const SERIES_PER_TARGET: usize = SUCCESS + FINISH_REASONS.len();

/// Every series a target exports, by index.
pub fn series_kind(index: usize) -> SeriesKind {
    match index {
        RUNNING => SeriesKind {
            name: "vllm:num_requests_running",
            finished_reason: None,
        },
        WAITING => SeriesKind {
            name: "vllm:num_requests_waiting",
            finished_reason: None,
        },
        KV_USAGE => SeriesKind {
            name: "vllm:kv_cache_usage_perc",
            finished_reason: None,
        },
        i => SeriesKind {
            name: "vllm:request_success_total",
            finished_reason: Some(FINISH_REASONS[i - SUCCESS]),
        },
    }
}

/// The metric names the lab's pods export.
pub const METRIC_NAMES: [&str; 4] = [
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:request_success_total",
];

/// Prometheus' default lookback for instant vector selectors.
pub const LOOKBACK_S: f64 = 300.0;

/// One scrape's values, by series index.
pub type Values = [f64; SERIES_PER_TARGET];

/// When a gone target's staleness markers take effect.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Staleness {
    /// The markers' timestamp: when the next scrape would have been.
    at: f64,
    /// When Prometheus writes them.
    written: f64,
}

#[derive(Debug, Clone)]
struct Target {
    pod_name: String,
    phase: f64,
    samples: VecDeque<(f64, Values)>,
    gone: Option<Staleness>,
}

/// What a query sees of one series.
#[derive(Debug, Clone, Copy)]
pub struct SeriesRef<'a> {
    pub pod: u32,
    pub pod_name: &'a str,
    pub kind: SeriesKind,
    index: usize,
    target: &'a Target,
    lookback: f64,
}

impl SeriesRef<'_> {
    /// The instant value at `t`: the latest sample in `(t − lookback, t]`,
    /// unless staleness markers written by `t` end the series first.
    pub fn instant(&self, t: f64) -> Option<f64> {
        if let Some(s) = self.target.gone
            && s.written <= t
            && s.at <= t
        {
            return None;
        }
        let samples = &self.target.samples;
        let end = samples.partition_point(|(at, _)| *at <= t);
        let (at, values) = samples.get(end.checked_sub(1)?)?;
        (*at > t - self.lookback).then_some(values[self.index])
    }

    /// The samples in `(t − range, t]` (Prometheus 3 ranges are open on
    /// the left; staleness markers are never part of a range).
    pub fn range(&self, t: f64, range: f64) -> impl Iterator<Item = (f64, f64)> + '_ {
        let samples = &self.target.samples;
        let from = samples.partition_point(|(at, _)| *at <= t - range);
        let to = samples.partition_point(|(at, _)| *at <= t);
        samples
            .range(from..to)
            .map(move |(at, values)| (*at, values[self.index]))
    }
}

/// The samples Prometheus holds for the lab's pods.
#[derive(Debug, Clone)]
pub struct Tsdb {
    pub interval: f64,
    pub namespace: String,
    /// The `isvc` label, when the pods belong to an InferenceService.
    pub isvc: Option<String>,
    /// Pod `i` is named `<pod_prefix>-<i>`.
    pub pod_prefix: String,
    /// How far back samples are kept: the lookback or the longest range a
    /// query reads, whichever is longer, plus an interval.
    retention: f64,
    seed: u64,
    targets: Vec<Option<Target>>,
}

/// A well-spread 64-bit mix (splitmix64's finaliser).
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A target's scrape phase within the interval, in seconds: fixed by the
/// run's seed and the pod's index, as Prometheus fixes it by the target's
/// labels.
pub fn phase(seed: u64, pod: usize, interval: f64) -> f64 {
    let h = mix(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ mix(pod as u64 + 1));
    (h >> 11) as f64 / (1u64 << 53) as f64 * interval
}

impl Tsdb {
    pub fn new(
        interval: f64,
        longest_range: f64,
        namespace: &str,
        pod_prefix: &str,
        seed: u64,
    ) -> Tsdb {
        Tsdb {
            interval,
            namespace: namespace.to_owned(),
            isvc: None,
            pod_prefix: pod_prefix.to_owned(),
            retention: LOOKBACK_S.max(longest_range) + interval,
            seed,
            targets: Vec::new(),
        }
    }

    fn target_mut(&mut self, pod: usize) -> &mut Target {
        if self.targets.len() <= pod {
            self.targets.resize(pod + 1, None);
        }
        let (seed, interval) = (self.seed, self.interval);
        let prefix = &self.pod_prefix;
        self.targets[pod].get_or_insert_with(|| Target {
            pod_name: format!("{prefix}-{pod}"),
            phase: phase(seed, pod, interval),
            samples: VecDeque::new(),
            gone: None,
        })
    }

    /// The first scrape of `pod` at or after `t`.
    pub fn next_scrape(&mut self, pod: usize, t: f64) -> f64 {
        let interval = self.interval;
        let phase = self.target_mut(pod).phase;
        let k = ((t - phase) / interval).ceil().max(0.0);
        let at = phase + k * interval;
        // Rounding can put `at` a hair before `t`.
        if at < t { at + interval } else { at }
    }

    /// A successful scrape of `pod` at `t`.
    pub fn append(&mut self, pod: usize, t: f64, values: Values) {
        let keep_from = t - self.retention;
        let target = self.target_mut(pod);
        target.samples.push_back((t, values));
        while target
            .samples
            .front()
            .is_some_and(|(at, _)| *at < keep_from)
        {
            target.samples.pop_front();
        }
    }

    /// `pod` stopped being a target at `t` (deleted). Staleness markers
    /// follow as Prometheus writes them; a target never scraped leaves
    /// none.
    pub fn target_gone(&mut self, pod: usize, t: f64) {
        let interval = self.interval;
        let next = self.next_scrape(pod, t);
        let target = self.target_mut(pod);
        if target.gone.is_some() || target.samples.is_empty() {
            return;
        }
        // The next tick strictly after the stop.
        let at = if next > t { next } else { next + interval };
        target.gone = Some(Staleness {
            at,
            written: at + interval * 1.1,
        });
    }

    /// Every series of every target that still has samples.
    pub fn series(&self) -> impl Iterator<Item = SeriesRef<'_>> + '_ {
        self.targets
            .iter()
            .enumerate()
            .filter_map(|(pod, t)| t.as_ref().map(|t| (pod, t)))
            .filter(|(_, t)| !t.samples.is_empty())
            .flat_map(|(pod, target)| {
                (0..SERIES_PER_TARGET).map(move |index| SeriesRef {
                    pod: pod as u32,
                    pod_name: &target.pod_name,
                    kind: series_kind(index),
                    index,
                    target,
                    lookback: LOOKBACK_S,
                })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(running: f64) -> Values {
        let mut v = [0.0; SERIES_PER_TARGET];
        v[RUNNING] = running;
        v
    }

    fn running_at(db: &Tsdb, pod: u32, t: f64) -> Option<f64> {
        db.series()
            .find(|s| s.pod == pod && s.kind.name == "vllm:num_requests_running")
            .and_then(|s| s.instant(t))
    }

    #[test]
    fn each_target_keeps_one_phase_and_targets_are_spread() {
        let mut db = Tsdb::new(15.0, 0.0, "default", "lab", 7);
        let phases: Vec<f64> = (0..16).map(|p| phase(7, p, 15.0)).collect();
        assert!(phases.iter().all(|p| (0.0..15.0).contains(p)), "{phases:?}");
        // Spread over the interval, not bunched: 16 draws cover most of it.
        let (lo, hi) = phases
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), p| (l.min(*p), h.max(*p)));
        assert!(hi - lo > 10.0, "{phases:?}");
        // Every scrape of a target falls on its own phase.
        let mut t = 0.0;
        for _ in 0..5 {
            let at = db.next_scrape(3, t);
            assert!(at >= t);
            let k = (at - phases[3]) / 15.0;
            assert!(
                (k - k.round()).abs() < 1e-9,
                "{at} is off phase {}",
                phases[3]
            );
            t = at + 1e-6;
        }
        // Another seed, other phases.
        assert_ne!(phase(8, 3, 15.0), phases[3]);
    }

    #[test]
    fn an_instant_query_reads_the_latest_sample_within_the_lookback() {
        let mut db = Tsdb::new(15.0, 0.0, "default", "lab", 1);
        db.append(0, 10.0, values(2.0));
        db.append(0, 25.0, values(5.0));
        assert_eq!(running_at(&db, 0, 9.0), None);
        assert_eq!(running_at(&db, 0, 24.9), Some(2.0));
        assert_eq!(running_at(&db, 0, 25.0), Some(5.0));
        // 5 minutes after the last sample it is out of the lookback.
        assert_eq!(running_at(&db, 0, 324.9), Some(5.0));
        assert_eq!(running_at(&db, 0, 325.0), None);
    }

    #[test]
    fn a_gone_target_counts_until_its_staleness_markers_are_written() {
        let mut db = Tsdb::new(10.0, 0.0, "default", "lab", 1);
        let p = phase(1, 0, 10.0);
        let first = db.next_scrape(0, 0.0);
        assert_eq!(first, p);
        db.append(0, first, values(3.0));
        db.append(0, first + 10.0, values(4.0));
        // Deleted 2 s after its last scrape: the next scrape would have
        // been 8 s later; markers stamped then are written 11 s after that.
        let gone = first + 12.0;
        db.target_gone(0, gone);
        let marker = first + 20.0;
        let written = marker + 11.0;
        assert_eq!(running_at(&db, 0, marker + 5.0), Some(4.0));
        assert_eq!(running_at(&db, 0, written - 0.01), Some(4.0));
        assert_eq!(running_at(&db, 0, written), None);
        // Its samples stay in ranges.
        let s = db.series().find(|s| s.pod == 0).unwrap();
        assert_eq!(s.range(written, 60.0).count(), 2);
        // A target that never answered leaves no series and no markers.
        db.target_gone(1, 5.0);
        assert!(db.series().all(|s| s.pod == 0));
    }

    #[test]
    fn samples_older_than_the_retention_are_dropped() {
        let mut db = Tsdb::new(15.0, 600.0, "default", "lab", 1);
        for k in 0..100 {
            db.append(0, f64::from(k) * 15.0, values(f64::from(k)));
        }
        let s = db.series().next().unwrap();
        let kept = s.range(1500.0, 1e9).count();
        // 600 s range + 15 s: 41 or 42 samples of the 100.
        assert!((40..=42).contains(&kept), "{kept}");
    }
}
