//! The in-memory time-series store: pure data structure, no clock, no I/O.
//! Callers pass "now" in, which keeps tests deterministic and lets the lab
//! drive it on virtual time.

mod series;

pub use series::{
    DistributionPoint, Nanos, Ring, Samples, ScalarPoint, Series, SeriesKind, Temporality, Timed,
};

use crate::labels::LabelSet;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

pub const NANOS_PER_SECOND: u64 = 1_000_000_000;

#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Points older than this (by their own timestamp) are dropped.
    pub retention: Nanos,
    /// A series not received for longer than this no longer answers queries
    /// and is removed by the next sweep.
    pub freshness: Nanos,
    /// Upper bound on live series; points of new series beyond it are
    /// rejected and counted.
    pub max_series: usize,
    /// Ring buffer capacity per series.
    pub max_points_per_series: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            retention: 300 * NANOS_PER_SECOND,
            freshness: 15 * NANOS_PER_SECOND,
            max_series: 200_000,
            max_points_per_series: 1024,
        }
    }
}

/// A point as it arrives, before it is stored.
#[derive(Clone, Debug, PartialEq)]
pub enum PointData {
    Scalar(ScalarPoint),
    Distribution(DistributionPoint),
}

impl PointData {
    fn time(&self) -> Nanos {
        match self {
            PointData::Scalar(p) => p.time,
            PointData::Distribution(p) => p.time,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendOutcome {
    Stored,
    /// The series is new and the store is at `max_series`.
    RejectedSeriesCap,
    /// Older than retention, or older than a full ring buffer.
    RejectedTooOld,
}

/// What a metric name matched when a query visited it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Visit {
    /// Series of this name exist at all (fresh or not).
    pub known: bool,
    /// Series of this name visited because they are fresh.
    pub fresh: usize,
}

#[derive(Default)]
struct Shard {
    by_name: HashMap<Arc<str>, HashMap<LabelSet, Series>>,
}

/// Sharded by hash of (name, labels) so concurrent exports of different
/// pods rarely contend for one lock.
pub struct Store {
    config: StoreConfig,
    shards: Box<[RwLock<Shard>]>,
    series_count: AtomicUsize,
}

const SHARDS: usize = 16;

impl Store {
    pub fn new(config: StoreConfig) -> Self {
        Store {
            config,
            shards: (0..SHARDS).map(|_| RwLock::new(Shard::default())).collect(),
            series_count: AtomicUsize::new(0),
        }
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    pub fn series_count(&self) -> usize {
        self.series_count.load(Ordering::Relaxed)
    }

    fn shard_for(&self, name: &str, labels: &LabelSet) -> &RwLock<Shard> {
        // A fixed-key hasher: shard placement is an internal detail, but a
        // deterministic one makes benchmarks repeatable.
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one((name, labels));
        &self.shards[(hash as usize) % self.shards.len()]
    }

    /// Stores one point. `received` is this scaler's clock at arrival; it
    /// marks the series fresh. A series whose kind changes (a metric
    /// redefined by a new exporter version) starts over.
    pub fn append(
        &self,
        name: &str,
        labels: LabelSet,
        kind: &SeriesKind,
        point: PointData,
        received: Nanos,
    ) -> AppendOutcome {
        let oldest_kept = received.saturating_sub(self.config.retention);
        if point.time() < oldest_kept {
            return AppendOutcome::RejectedTooOld;
        }
        let capacity = self.config.max_points_per_series;
        let mut shard = self
            .shard_for(name, &labels)
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let by_labels = match shard.by_name.get_mut(name) {
            Some(by_labels) => by_labels,
            None => shard.by_name.entry(Arc::from(name)).or_default(),
        };
        let series = match by_labels.get_mut(&labels) {
            Some(series) => series,
            None => {
                if !self.reserve_series() {
                    return AppendOutcome::RejectedSeriesCap;
                }
                by_labels.entry(labels).or_insert_with(|| new_series(kind))
            }
        };
        if series.kind != *kind || !samples_fit(&series.samples, &point) {
            *series = new_series(kind);
        }
        let stored = match (&mut series.samples, point) {
            (Samples::Scalar(ring), PointData::Scalar(p)) => {
                ring.evict_before(oldest_kept);
                ring.insert(p, capacity)
            }
            (Samples::Distribution(ring), PointData::Distribution(p)) => {
                ring.evict_before(oldest_kept);
                ring.insert(p, capacity)
            }
            _ => unreachable!("samples were reset to match the point kind above"),
        };
        series.last_seen = series.last_seen.max(received);
        if stored {
            AppendOutcome::Stored
        } else {
            AppendOutcome::RejectedTooOld
        }
    }

    fn reserve_series(&self) -> bool {
        let cap = self.config.max_series;
        self.series_count
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < cap).then_some(n + 1)
            })
            .is_ok()
    }

    fn is_fresh(&self, series: &Series, now: Nanos) -> bool {
        now.saturating_sub(series.last_seen) <= self.config.freshness
    }

    /// Calls `visit` for every fresh series of `name`.
    pub fn visit_metric(
        &self,
        name: &str,
        now: Nanos,
        mut visit: impl FnMut(&LabelSet, &Series),
    ) -> Visit {
        let mut result = Visit::default();
        for shard in self.shards.iter() {
            let shard = shard.read().unwrap_or_else(|e| e.into_inner());
            let Some(by_labels) = shard.by_name.get(name) else {
                continue;
            };
            result.known |= !by_labels.is_empty();
            for (labels, series) in by_labels {
                if self.is_fresh(series, now) {
                    result.fresh += 1;
                    visit(labels, series);
                }
            }
        }
        result
    }

    /// Names of all metrics with at least one series.
    pub fn metric_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .shards
            .iter()
            .flat_map(|shard| {
                let shard = shard.read().unwrap_or_else(|e| e.into_inner());
                shard
                    .by_name
                    .keys()
                    .map(|k| k.to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Removes series that went stale and points past retention. Returns
    /// how many series were removed.
    pub fn sweep(&self, now: Nanos) -> usize {
        let oldest_kept = now.saturating_sub(self.config.retention);
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.write().unwrap_or_else(|e| e.into_inner());
            shard.by_name.retain(|_, by_labels| {
                by_labels.retain(|_, series| {
                    let keep = self.is_fresh(series, now);
                    if keep {
                        match &mut series.samples {
                            Samples::Scalar(ring) => ring.evict_before(oldest_kept),
                            Samples::Distribution(ring) => ring.evict_before(oldest_kept),
                        }
                    } else {
                        removed += 1;
                    }
                    keep
                });
                !by_labels.is_empty()
            });
        }
        self.series_count.fetch_sub(removed, Ordering::Relaxed);
        removed
    }
}

fn new_series(kind: &SeriesKind) -> Series {
    let samples = match kind {
        SeriesKind::Gauge | SeriesKind::Sum { .. } => Samples::Scalar(Ring::new()),
        SeriesKind::Histogram { .. } | SeriesKind::Summary => Samples::Distribution(Ring::new()),
    };
    Series {
        kind: kind.clone(),
        samples,
        last_seen: 0,
    }
}

fn samples_fit(samples: &Samples, point: &PointData) -> bool {
    matches!(
        (samples, point),
        (Samples::Scalar(_), PointData::Scalar(_))
            | (Samples::Distribution(_), PointData::Distribution(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = NANOS_PER_SECOND;

    fn gauge_point(time: Nanos, value: f64) -> PointData {
        PointData::Scalar(ScalarPoint {
            time,
            start: 0,
            value,
        })
    }

    fn pod(name: &str) -> LabelSet {
        LabelSet::from_pairs([("pod", name)])
    }

    fn store(max_series: usize) -> Store {
        Store::new(StoreConfig {
            retention: 60 * S,
            freshness: 10 * S,
            max_series,
            max_points_per_series: 100,
        })
    }

    fn fresh_pods(store: &Store, now: Nanos) -> Vec<String> {
        let mut pods = Vec::new();
        store.visit_metric("m", now, |labels, _| {
            pods.push(labels.get("pod").unwrap().to_owned())
        });
        pods.sort();
        pods
    }

    #[test]
    fn series_cap_rejects_new_series_only() {
        let store = store(2);
        let t = 100 * S;
        assert_eq!(
            store.append("m", pod("a"), &SeriesKind::Gauge, gauge_point(t, 1.0), t),
            AppendOutcome::Stored
        );
        assert_eq!(
            store.append("m", pod("b"), &SeriesKind::Gauge, gauge_point(t, 1.0), t),
            AppendOutcome::Stored
        );
        assert_eq!(
            store.append("m", pod("c"), &SeriesKind::Gauge, gauge_point(t, 1.0), t),
            AppendOutcome::RejectedSeriesCap
        );
        // Existing series still accept points at the cap.
        assert_eq!(
            store.append(
                "m",
                pod("a"),
                &SeriesKind::Gauge,
                gauge_point(t + S, 2.0),
                t + S
            ),
            AppendOutcome::Stored
        );
        assert_eq!(store.series_count(), 2);
    }

    #[test]
    fn stale_series_stop_answering_then_are_swept_and_free_their_slot() {
        let store = store(2);
        let t = 100 * S;
        store.append("m", pod("a"), &SeriesKind::Gauge, gauge_point(t, 1.0), t);
        store.append("m", pod("b"), &SeriesKind::Gauge, gauge_point(t, 1.0), t);
        // b keeps reporting, a died.
        store.append(
            "m",
            pod("b"),
            &SeriesKind::Gauge,
            gauge_point(t + 8 * S, 1.0),
            t + 8 * S,
        );
        assert_eq!(fresh_pods(&store, t + 10 * S), vec!["a", "b"]);
        assert_eq!(fresh_pods(&store, t + 11 * S), vec!["b"]);
        assert_eq!(store.sweep(t + 11 * S), 1);
        assert_eq!(store.series_count(), 1);
        assert_eq!(
            store.append(
                "m",
                pod("c"),
                &SeriesKind::Gauge,
                gauge_point(t + 11 * S, 1.0),
                t + 11 * S
            ),
            AppendOutcome::Stored
        );
    }

    #[test]
    fn points_older_than_retention_are_rejected_and_evicted() {
        let store = store(10);
        let now = 1000 * S;
        assert_eq!(
            store.append(
                "m",
                pod("a"),
                &SeriesKind::Gauge,
                gauge_point(now - 61 * S, 1.0),
                now
            ),
            AppendOutcome::RejectedTooOld
        );
        store.append(
            "m",
            pod("a"),
            &SeriesKind::Gauge,
            gauge_point(now - 50 * S, 1.0),
            now,
        );
        store.append(
            "m",
            pod("a"),
            &SeriesKind::Gauge,
            gauge_point(now, 2.0),
            now,
        );
        let mut lens = Vec::new();
        store.visit_metric("m", now, |_, series| lens.push(series.samples.len()));
        assert_eq!(lens, vec![2]);
        // Twenty seconds on, the point from 50 s ago is past retention.
        store.append(
            "m",
            pod("a"),
            &SeriesKind::Gauge,
            gauge_point(now + 20 * S, 3.0),
            now + 20 * S,
        );
        store.sweep(now + 20 * S);
        lens.clear();
        store.visit_metric("m", now + 20 * S, |_, series| {
            lens.push(series.samples.len())
        });
        assert_eq!(lens, vec![2]);
    }

    #[test]
    fn kind_change_restarts_the_series() {
        let store = store(10);
        let t = 100 * S;
        store.append("m", pod("a"), &SeriesKind::Gauge, gauge_point(t, 1.0), t);
        let sum = SeriesKind::Sum {
            temporality: Temporality::Cumulative,
            monotonic: true,
        };
        store.append("m", pod("a"), &sum, gauge_point(t + S, 5.0), t + S);
        let mut seen = Vec::new();
        store.visit_metric("m", t + S, |_, series| {
            seen.push((series.kind.clone(), series.samples.len()))
        });
        assert_eq!(seen, vec![(sum, 1)]);
        assert_eq!(store.series_count(), 1);
    }

    #[test]
    fn unknown_metric_is_reported_as_unknown() {
        let store = store(10);
        let visit = store.visit_metric("nope", 0, |_, _| {});
        assert_eq!(
            visit,
            Visit {
                known: false,
                fresh: 0
            }
        );
    }
}
