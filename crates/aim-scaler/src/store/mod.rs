//! The in-memory time-series store: pure data structure, no clock, no I/O.
//! Callers pass "now" in, which keeps tests deterministic and lets the lab
//! drive it on virtual time.

mod series;

pub use series::{
    DistributionPoint, Nanos, Ring, Samples, ScalarPoint, Series, SeriesKind, Temporality, Timed,
};

mod index;

use crate::labels::LabelSet;
use crate::query::Matcher;
use foldhash::fast::FixedState;
use index::MetricIndex;
use std::hash::{BuildHasher, Hash, Hasher};
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
    /// Series visited: fresh ones (for [`Store::select`], fresh ones the
    /// matchers selected).
    pub fresh: usize,
}

type FastMap<K, V> = hashbrown::HashMap<K, V, FixedState>;

#[derive(Default)]
struct Shard {
    by_name: FastMap<Arc<str>, MetricIndex>,
}

/// Sharded by hash of (name, labels) so concurrent exports of different
/// pods rarely contend for one lock. Within a shard each metric name has
/// an inverted index from label pairs to its series, so a query reads the
/// series it selects and not every pod exporting the same name.
pub struct Store {
    config: StoreConfig,
    shards: Box<[RwLock<Shard>]>,
    series_count: AtomicUsize,
}

const SHARDS: usize = 16;

/// A fixed seed: shard placement is an internal detail, but a deterministic
/// one makes benchmarks repeatable.
const HASH_STATE: FixedState = FixedState::with_seed(0x6169_6d5f_7363_616c);

/// Identity hash of a series from its name and canonical label pairs,
/// computed from borrowed text so a known series costs no allocation.
fn series_hash<K: AsRef<str>, V: AsRef<str>>(name: &str, pairs: &[(K, V)]) -> u64 {
    let mut hasher = HASH_STATE.build_hasher();
    name.hash(&mut hasher);
    for (k, v) in pairs {
        k.as_ref().hash(&mut hasher);
        v.as_ref().hash(&mut hasher);
    }
    hasher.finish()
}

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

    fn shard_at(&self, hash: u64) -> &RwLock<Shard> {
        // The high bits pick the shard; the table inside uses the low ones.
        &self.shards[((hash >> 40) as usize) % self.shards.len()]
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
        self.append_pairs(name, labels.arc_pairs(), kind, point, received)
    }

    /// [`Store::append`] for labels given as pairs in canonical order
    /// (sorted by key, keys unique: see `labels::canonicalize_pairs`).
    /// Nothing is allocated unless the series is new.
    pub fn append_pairs<K: AsRef<str>, V: AsRef<str>>(
        &self,
        name: &str,
        pairs: &[(K, V)],
        kind: &SeriesKind,
        point: PointData,
        received: Nanos,
    ) -> AppendOutcome {
        let oldest_kept = received.saturating_sub(self.config.retention);
        if point.time() < oldest_kept {
            return AppendOutcome::RejectedTooOld;
        }
        let capacity = self.config.max_points_per_series;
        let hash = series_hash(name, pairs);
        let mut shard = self
            .shard_at(hash)
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let index = match shard.by_name.get_mut(name) {
            Some(index) => index,
            None => shard.by_name.entry(Arc::from(name)).or_default(),
        };
        let series = match index.find(hash, pairs) {
            Some(id) => index.series_mut(id),
            None => {
                if !self.reserve_series() {
                    return AppendOutcome::RejectedSeriesCap;
                }
                let id = index.insert(hash, pairs, new_series(kind));
                index.series_mut(id)
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

    /// Calls `visit` for every fresh series of `name`: a full scan, for
    /// callers that want everything (tests, tools). Queries use
    /// [`Store::select`].
    pub fn visit_metric(
        &self,
        name: &str,
        now: Nanos,
        mut visit: impl FnMut(&LabelSet, &Series),
    ) -> Visit {
        let mut result = Visit::default();
        for shard in self.shards.iter() {
            let shard = shard.read().unwrap_or_else(|e| e.into_inner());
            let Some(index) = shard.by_name.get(name) else {
                continue;
            };
            result.known |= !index.is_empty();
            index.for_each(|labels, series| {
                if self.is_fresh(series, now) {
                    result.fresh += 1;
                    visit(labels, series);
                }
            });
        }
        result
    }

    /// Calls `visit` for every fresh series of `name` that all `matchers`
    /// accept, reading only the series the index points at: equality
    /// matchers intersect their postings, and the others filter that
    /// result. Returns whether the name is known and how many series were
    /// visited.
    pub fn select(
        &self,
        name: &str,
        matchers: &[Matcher],
        now: Nanos,
        mut visit: impl FnMut(&LabelSet, &Series),
    ) -> Visit {
        let mut result = Visit::default();
        let mut scratch = index::Scratch::default();
        for shard in self.shards.iter() {
            let shard = shard.read().unwrap_or_else(|e| e.into_inner());
            let Some(index) = shard.by_name.get(name) else {
                continue;
            };
            result.known |= !index.is_empty();
            index.select(matchers, &mut scratch, |labels, series| {
                if self.is_fresh(series, now) {
                    result.fresh += 1;
                    visit(labels, series);
                }
            });
        }
        result
    }

    /// Fresh series of `name`, matching or not; only error messages need
    /// it, so it may scan.
    pub fn fresh_count(&self, name: &str, now: Nanos) -> usize {
        self.visit_metric(name, now, |_, _| {}).fresh
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
    ///
    /// Each shard is first read under its read lock to find the few series
    /// needing work, and only those are touched under the write lock, so a
    /// sweep over a million series does not stall queries for the length
    /// of a full scan.
    pub fn sweep(&self, now: Nanos) -> usize {
        let oldest_kept = now.saturating_sub(self.config.retention);
        let mut removed = 0;
        for shard in self.shards.iter() {
            let work: Vec<(Arc<str>, Vec<index::SeriesId>)> = {
                let shard = shard.read().unwrap_or_else(|e| e.into_inner());
                shard
                    .by_name
                    .iter()
                    .filter_map(|(name, index)| {
                        let mut ids = Vec::new();
                        index.for_each_id(|id, _, series| {
                            if !self.is_fresh(series, now)
                                || series
                                    .samples
                                    .oldest_time()
                                    .is_some_and(|t| t < oldest_kept)
                            {
                                ids.push(id);
                            }
                        });
                        (!ids.is_empty()).then(|| (name.clone(), ids))
                    })
                    .collect()
            };
            if work.is_empty() {
                continue;
            }
            let mut shard = shard.write().unwrap_or_else(|e| e.into_inner());
            for (name, ids) in work {
                let Some(index) = shard.by_name.get_mut(&*name) else {
                    continue;
                };
                // Re-checked under the write lock: a point may have arrived
                // since the read pass.
                let mut stale = Vec::new();
                for id in ids {
                    let Some(series) = index.get_mut(id) else {
                        continue;
                    };
                    if self.is_fresh(series, now) {
                        match &mut series.samples {
                            Samples::Scalar(ring) => ring.evict_before(oldest_kept),
                            Samples::Distribution(ring) => ring.evict_before(oldest_kept),
                        }
                    } else {
                        stale.push(id);
                    }
                }
                removed += index.remove(&stale);
                if index.is_empty() {
                    shard.by_name.remove(&*name);
                }
            }
        }
        self.series_count.fetch_sub(removed, Ordering::Relaxed);
        removed
    }

    /// Checks the index against its series (tests only).
    #[cfg(test)]
    fn check_index(&self) {
        for shard in self.shards.iter() {
            let shard = shard.read().unwrap();
            for index in shard.by_name.values() {
                index.check();
            }
        }
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
    fn index_follows_inserts_sweeps_and_compaction() {
        let store = store(100_000);
        let t = 100 * S;
        // Enough series to cross the compaction threshold in a shard.
        for i in 0..80_000 {
            let labels = LabelSet::from_pairs([
                ("pod", format!("p{i}")),
                ("deployment", format!("d{}", i % 10)),
            ]);
            let time = if i < 1_000 { t + 5 * S } else { t };
            store.append(
                "m",
                labels,
                &SeriesKind::Gauge,
                gauge_point(time, 1.0),
                time,
            );
        }
        store.check_index();
        // All but the first thousand go stale.
        assert_eq!(store.sweep(t + 12 * S), 79_000);
        store.check_index();
        let query = crate::query::parse_query(r#"m{deployment="d3"}"#).unwrap();
        let visit = store.select("m", &query.matchers, t + 12 * S, |labels, _| {
            assert_eq!(labels.get("deployment"), Some("d3"))
        });
        assert_eq!(visit.fresh, 100);
        // Freed slots are reused by new series and the index stays sound.
        for i in 0..500 {
            let labels =
                LabelSet::from_pairs([("pod", format!("n{i}")), ("deployment", "d3".into())]);
            store.append(
                "m",
                labels,
                &SeriesKind::Gauge,
                gauge_point(t + 12 * S, 1.0),
                t + 12 * S,
            );
        }
        store.check_index();
        let visit = store.select("m", &query.matchers, t + 12 * S, |_, _| {});
        assert_eq!(visit.fresh, 600);
        assert_eq!(store.sweep(t + 100 * S), 1_500);
        assert_eq!(store.series_count(), 0);
        assert!(store.metric_names().is_empty());
    }

    mod prop {
        use super::*;
        use crate::query::parse_query;
        use proptest::prelude::*;

        const KEYS: [&str; 4] = ["a", "b", "c", "d"];
        const VALUES: [&str; 4] = ["x", "y", "z", ""];

        /// A label set over a small alphabet, so series and matchers
        /// collide often; `None` leaves a key out.
        fn label_set() -> impl Strategy<Value = Vec<(usize, usize)>> {
            proptest::collection::vec((0..KEYS.len(), 0..VALUES.len()), 0..4)
        }

        fn matcher_text() -> impl Strategy<Value = String> {
            let ops = prop_oneof![Just("="), Just("!="), Just("=~"), Just("!~")];
            let values = prop_oneof![
                Just("x"),
                Just("y"),
                Just(""),
                Just("x|y"),
                Just(".*"),
                Just(".+"),
                Just("q")
            ];
            (0..KEYS.len() + 1, ops, values).prop_map(|(k, op, v)| {
                let key = KEYS.get(k).copied().unwrap_or("e");
                format!("{key}{op}\"{v}\"")
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(300))]
            #[test]
            fn indexed_select_equals_a_full_scan(
                series in proptest::collection::vec((label_set(), 0u64..3, 0usize..2), 0..60),
                sweep_at in proptest::option::of(0u64..30),
                matchers in proptest::collection::vec(matcher_text(), 0..4),
            ) {
                let store = store(1_000);
                let t = 100 * S;
                for (pairs, age, name) in &series {
                    let labels = LabelSet::from_pairs(pairs.iter().map(|&(k, v)| (KEYS[k], VALUES[v])));
                    // Arrivals spread over 20 s so freshness cuts some.
                    let at = t + age * 10 * S;
                    let name = ["m", "other"][*name];
                    store.append(name, labels, &SeriesKind::Gauge, gauge_point(at, 1.0), at);
                }
                if let Some(s) = sweep_at {
                    store.sweep(t + s * S);
                }
                store.check_index();
                let query = parse_query(&format!("m{{{}}}", matchers.join(", "))).unwrap();
                for now in [t + 5 * S, t + 15 * S, t + 25 * S, t + 40 * S] {
                    let mut indexed = Vec::new();
                    let visit = store.select("m", &query.matchers, now, |labels, _| {
                        indexed.push(labels.clone())
                    });
                    let mut scanned = Vec::new();
                    let all = store.visit_metric("m", now, |labels, _| {
                        if query.matchers.iter().all(|m| m.matches(labels.get(&m.label))) {
                            scanned.push(labels.clone());
                        }
                    });
                    indexed.sort();
                    scanned.sort();
                    prop_assert_eq!(&indexed, &scanned);
                    prop_assert_eq!(visit.known, all.known);
                    prop_assert_eq!(visit.fresh, indexed.len());
                }
            }
        }
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
