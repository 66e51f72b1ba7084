//! Compacted query history: what lets a policy look back further than the
//! raw store holds, and across restarts.
//!
//! The raw store keeps minutes of points (`--retention`), but a policy such
//! as `predictive` reads up to a season (a day by default) of its query's
//! values. So for every distinct query that a history-reading trigger
//! evaluates, the scaler keeps one value per 15 s step: the query evaluated
//! at the step's own instant (a multiple of 15 s since the Unix epoch) with
//! that trigger's operation, window and quantile, i.e. exactly what
//! re-evaluating the raw store at that instant gives. That is the value
//! before the policy and clamping.
//!
//! Why evaluate at the step's instant instead of keeping what KEDA's polls
//! happened to compute: each step then has exactly one value, the same one
//! raw re-evaluation gives (so raw and compacted points mix without a seam),
//! and replicas fed the same exports keep the same history whatever the
//! timing of the polls they each received. There is no "last or mean of
//! several evaluations in a step" to choose.
//!
//! A step is recorded once it has settled (`SETTLE` after its instant, so
//! exports for it have arrived) and while the raw store still holds its
//! whole window; later steps never overwrite it. Steps missed (no poll, no
//! tick) are filled in on the next recording pass as long as the raw store
//! still covers them; older gaps stay holes. Data missing at a step (no
//! series, no points in the window) is a hole too: `valueIfMissing` is not
//! recorded, because it is not an observation.

pub mod snapshot;

use crate::query::{EvalRequest, Operation, Query, evaluate_as_of, parse_query};
use crate::store::{NANOS_PER_SECOND, Nanos, Store};
use aim_policy::Sample;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Spacing of history points: the HPA's sync period.
pub const STEP: Nanos = 15 * NANOS_PER_SECOND;
/// How long after a step's instant it is recorded: exporters send every
/// few seconds (KServe's sidecar every 5 s), so by then the step's points
/// have arrived, while a pod that stopped just before the step has not yet
/// been swept (`--freshness` is 15 s by default).
pub const SETTLE: Nanos = 5 * NANOS_PER_SECOND;
/// Longest history kept for any query unless `--history-max-age` says
/// otherwise: a week of seasonality and a day's margin.
pub const DEFAULT_MAX_AGE: Nanos = 8 * 24 * 3600 * NANOS_PER_SECOND;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// What determines a query's value: one history is kept per key, shared
/// by every trigger (and ScaledObject) that evaluates the same thing.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HistoryKey {
    /// The query's canonical text.
    pub query: String,
    pub operation: Operation,
    pub window: Nanos,
    /// The trigger's `quantile`, as bits so the key can be hashed.
    quantile_bits: Option<u64>,
}

impl HistoryKey {
    pub fn new(query: &Query, operation: Operation, window: Nanos, quantile: Option<f64>) -> Self {
        HistoryKey {
            query: query.to_string(),
            operation,
            window,
            quantile_bits: quantile.map(f64::to_bits),
        }
    }

    pub fn quantile(&self) -> Option<f64> {
        self.quantile_bits.map(f64::from_bits)
    }

    fn request<'a>(&self, query: &'a Query, at: Nanos) -> EvalRequest<'a> {
        EvalRequest {
            query,
            operation: self.operation,
            window: self.window,
            now: at,
            quantile: self.quantile(),
        }
    }
}

/// The raw store's value of `query` as of `at` (points stamped later left
/// out), or `None` when data is missing.
fn evaluate_at(store: &Store, query: &Query, key: &HistoryKey, at: Nanos) -> Option<f64> {
    evaluate_as_of(store, &key.request(query, at))
        .ok()
        .map(|e| e.value)
}

/// From when the raw store can re-evaluate a query with its whole window:
/// the store holds points from `retention` ago, and only from `raw_since`
/// (its start) at all.
pub fn raw_from(retention: Nanos, raw_since: Nanos, window: Nanos, now: Nanos) -> Nanos {
    now.saturating_sub(retention)
        .max(raw_since)
        .saturating_add(window)
}

/// One value per step, oldest first; `NaN` marks a step without a value.
/// Step `s` is the instant `s * STEP` nanoseconds since the Unix epoch.
#[derive(Clone, Debug, Default)]
pub struct Ring {
    first: u64,
    values: VecDeque<f64>,
}

/// Equal when they hold the same steps with the same values, holes
/// included (`NaN` is not equal to itself as a number).
impl PartialEq for Ring {
    fn eq(&self, other: &Self) -> bool {
        self.first == other.first
            && self.values.len() == other.values.len()
            && self
                .values
                .iter()
                .zip(&other.values)
                .all(|(a, b)| a.to_bits() == b.to_bits())
    }
}

impl Ring {
    pub fn new() -> Self {
        Ring::default()
    }

    /// Builds a ring from stored parts (a snapshot).
    pub fn from_parts(first: u64, values: Vec<f64>) -> Self {
        let mut ring = Ring {
            first,
            values: values.into(),
        };
        ring.drop_leading_holes();
        ring
    }

    /// Step of the first slot and every slot's value (`NaN` for holes).
    pub fn parts(&self) -> (u64, impl ExactSizeIterator<Item = f64> + '_) {
        (self.first, self.values.iter().copied())
    }

    pub fn get(&self, step: u64) -> Option<f64> {
        let offset = step.checked_sub(self.first)?;
        let value = *self.values.get(usize::try_from(offset).ok()?)?;
        (!value.is_nan()).then_some(value)
    }

    /// Newest step held.
    pub fn newest(&self) -> Option<u64> {
        (!self.values.is_empty()).then(|| self.first + self.values.len() as u64 - 1)
    }

    /// Oldest step held.
    pub fn oldest(&self) -> Option<u64> {
        (!self.values.is_empty()).then_some(self.first)
    }

    /// Slots held, holes included: what the ring costs in memory.
    pub fn slots(&self) -> usize {
        self.values.len()
    }

    /// Steps that have a value.
    pub fn points(&self) -> usize {
        self.values.iter().filter(|v| !v.is_nan()).count()
    }

    /// Sets step `step`, keeping at most `capacity` slots ending at the
    /// newest step. A value older than the kept span is ignored.
    pub fn set(&mut self, step: u64, value: f64, capacity: usize) {
        if capacity == 0 {
            self.values.clear();
            return;
        }
        // The span is known: take it at once rather than letting the
        // buffer double its way there (and hold up to twice the span).
        if self.values.capacity() < capacity {
            self.values.reserve_exact(capacity - self.values.len());
        }
        let Some(newest) = self.newest() else {
            self.first = step;
            self.values.push_back(value);
            return;
        };
        if step > newest {
            let gap = step - newest - 1;
            if gap >= capacity as u64 {
                self.values.clear();
                self.first = step;
            } else {
                self.values
                    .extend(std::iter::repeat_n(f64::NAN, gap as usize));
            }
            self.values.push_back(value);
        } else if step >= self.first {
            self.values[(step - self.first) as usize] = value;
        } else {
            if newest - step >= capacity as u64 {
                return;
            }
            for _ in 0..(self.first - step - 1) {
                self.values.push_front(f64::NAN);
            }
            self.values.push_front(value);
            self.first = step;
        }
        self.trim(capacity);
    }

    /// Keeps at most `capacity` slots, the newest.
    pub fn trim(&mut self, capacity: usize) {
        while self.values.len() > capacity {
            self.values.pop_front();
            self.first += 1;
        }
        self.drop_leading_holes();
        // A need that shrank (a trigger gone) should give memory back.
        if self.values.capacity() > 2 * capacity.max(16) {
            self.values.shrink_to(capacity);
        }
    }

    /// Drops every step before `step`.
    pub fn drop_before(&mut self, step: u64) {
        while !self.values.is_empty() && self.first < step {
            self.values.pop_front();
            self.first += 1;
        }
        self.drop_leading_holes();
    }

    fn drop_leading_holes(&mut self) {
        while self.values.front().is_some_and(|v| v.is_nan()) {
            self.values.pop_front();
            self.first += 1;
        }
        if self.values.is_empty() {
            self.first = 0;
        }
    }
}

/// How far back one trigger shape reads, and when it last did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Need {
    /// History the policy reads, capped at `--history-max-age`.
    pub span: Nanos,
    pub last_used: Nanos,
}

/// One query's history and what it is kept for.
pub struct Track {
    query: Query,
    /// One entry per distinct span asked for; the longest live one sets
    /// how much is kept.
    needs: Vec<Need>,
    /// Newest step evaluated (with or without a value): never redone.
    recorded_through: Option<u64>,
    ring: Ring,
}

impl Track {
    fn new(query: Query) -> Self {
        Track {
            query,
            needs: Vec::new(),
            recorded_through: None,
            ring: Ring::new(),
        }
    }

    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    pub fn needs(&self) -> &[Need] {
        &self.needs
    }

    /// Longest live need.
    pub fn span(&self) -> Nanos {
        self.needs.iter().map(|n| n.span).max().unwrap_or(0)
    }

    /// Slots that cover the longest need: every step in `[now - span, now)`
    /// plus the one being settled.
    fn capacity(&self) -> usize {
        usize::try_from(self.span().div_ceil(STEP) + 1).unwrap_or(usize::MAX)
    }

    fn use_for(&mut self, span: Nanos, now: Nanos) {
        match self.needs.iter_mut().find(|n| n.span == span) {
            Some(need) => need.last_used = need.last_used.max(now),
            None => {
                self.needs.push(Need {
                    span,
                    last_used: now,
                });
            }
        }
    }

    /// Forgets needs unused for their span plus `idle`; true when none is
    /// left.
    fn expire(&mut self, now: Nanos, idle: Nanos) -> bool {
        self.needs
            .retain(|n| now.saturating_sub(n.last_used) <= n.span.saturating_add(idle));
        let capacity = self.capacity();
        self.ring.trim(capacity);
        self.needs.is_empty()
    }
}

#[derive(Clone, Debug)]
pub struct HistoryConfig {
    /// Longest history kept for any query (`--history-max-age`).
    pub max_age: Nanos,
    /// Most queries tracked (`--history-max-queries`).
    pub max_queries: usize,
    /// A query is forgotten this long after its longest need stopped being
    /// asked for (`--history-idle`).
    pub idle: Nanos,
    /// The raw store's retention (`--retention`).
    pub retention: Nanos,
    /// When the raw store started filling: before `raw_since + window`
    /// re-evaluating it would read a partly empty window.
    pub raw_since: Nanos,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HistoryStats {
    /// Queries tracked.
    pub queries: usize,
    /// Slots held over all queries, holes included (8 bytes each).
    pub points: usize,
}

/// Every tracked query's history.
pub struct History {
    config: HistoryConfig,
    tracks: Mutex<HashMap<HistoryKey, Arc<Mutex<Track>>>>,
    /// Uses refused because `max_queries` queries were tracked.
    refused: AtomicU64,
    refusal_warned_at: AtomicU64,
}

impl History {
    pub fn new(config: HistoryConfig) -> Self {
        History {
            config,
            tracks: Mutex::new(HashMap::new()),
            refused: AtomicU64::new(0),
            refusal_warned_at: AtomicU64::new(0),
        }
    }

    pub fn config(&self) -> &HistoryConfig {
        &self.config
    }

    /// Uses of a new query refused because the table was full.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Registers that a trigger reading `span` of history evaluated `key`
    /// at `now`, and returns its history. `None` when the trigger reads no
    /// history or `max_queries` other queries are tracked.
    pub fn track(
        &self,
        key: &HistoryKey,
        query: &Query,
        span: Nanos,
        now: Nanos,
    ) -> Option<Arc<Mutex<Track>>> {
        let span = span.min(self.config.max_age);
        if span == 0 {
            return None;
        }
        let mut tracks = lock(&self.tracks);
        let track = match tracks.get(key) {
            Some(track) => track.clone(),
            None => {
                if tracks.len() >= self.config.max_queries {
                    self.expire_locked(&mut tracks, now);
                }
                if tracks.len() >= self.config.max_queries {
                    self.refuse(key, now);
                    return None;
                }
                let track = Arc::new(Mutex::new(Track::new(query.clone())));
                tracks.insert(key.clone(), track.clone());
                track
            }
        };
        drop(tracks);
        lock(&track).use_for(span, now);
        Some(track)
    }

    fn refuse(&self, key: &HistoryKey, now: Nanos) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        let warned = self.refusal_warned_at.load(Ordering::Relaxed);
        if warned == 0 || now.saturating_sub(warned) >= 60 * NANOS_PER_SECOND {
            self.refusal_warned_at.store(now.max(1), Ordering::Relaxed);
            tracing::warn!(
                query = %key.query,
                max_queries = self.config.max_queries,
                "history is full: this query gets no history beyond the raw store's retention; raise --history-max-queries"
            );
        }
    }

    /// Records every settled step of `track` not recorded yet that the raw
    /// store still covers with a whole window.
    pub fn record_due(&self, key: &HistoryKey, track: &mut Track, store: &Store, now: Nanos) {
        let Some(settled) = now.checked_sub(SETTLE) else {
            return;
        };
        let newest = settled / STEP;
        let capacity = track.capacity();
        if capacity == 0 {
            return;
        }
        let raw_first = raw_from(
            self.config.retention,
            self.config.raw_since,
            key.window,
            now,
        )
        .div_ceil(STEP);
        let mut from = raw_first.max((newest + 1).saturating_sub(capacity as u64));
        if let Some(done) = track.recorded_through {
            from = from.max(done + 1);
        }
        for step in from..=newest {
            if let Some(value) = evaluate_at(store, &track.query, key, step * STEP) {
                track.ring.set(step, value, capacity);
            }
            track.recorded_through = Some(step);
        }
    }

    /// One recording pass over every tracked query (the background tick),
    /// after forgetting unused ones; KEDA's polls need not arrive for the
    /// history to fill.
    pub fn record_all(&self, store: &Store, now: Nanos) {
        self.expire(now);
        let tracks: Vec<(HistoryKey, Arc<Mutex<Track>>)> = lock(&self.tracks)
            .iter()
            .map(|(k, t)| (k.clone(), t.clone()))
            .collect();
        for (key, track) in tracks {
            self.record_due(&key, &mut lock(&track), store, now);
        }
    }

    /// Forgets queries whose every need has gone unused for its span plus
    /// `idle`.
    pub fn expire(&self, now: Nanos) {
        let mut tracks = lock(&self.tracks);
        self.expire_locked(&mut tracks, now);
    }

    fn expire_locked(&self, tracks: &mut HashMap<HistoryKey, Arc<Mutex<Track>>>, now: Nanos) {
        let idle = self.config.idle;
        tracks.retain(|_, track| !lock(track).expire(now, idle));
    }

    pub fn stats(&self) -> HistoryStats {
        let tracks: Vec<Arc<Mutex<Track>>> = lock(&self.tracks).values().cloned().collect();
        HistoryStats {
            queries: tracks.len(),
            points: tracks.iter().map(|t| lock(t).ring.slots()).sum(),
        }
    }

    /// The history handed to a policy that reads `span` of `key`, mixing
    /// raw re-evaluation and this history (see [`samples`]).
    pub fn samples(
        &self,
        store: &Store,
        query: &Query,
        key: &HistoryKey,
        track: Option<&Track>,
        span: Nanos,
        now: Nanos,
    ) -> Vec<Sample> {
        samples(
            store,
            query,
            key,
            track.map(|t| &t.ring),
            span.min(self.config.max_age),
            self.config.raw_since,
            now,
        )
    }

    /// Everything, for a snapshot.
    pub fn export(&self) -> Vec<SavedTrack> {
        let tracks: Vec<(HistoryKey, Arc<Mutex<Track>>)> = lock(&self.tracks)
            .iter()
            .map(|(k, t)| (k.clone(), t.clone()))
            .collect();
        let mut saved: Vec<SavedTrack> = tracks
            .into_iter()
            .map(|(key, track)| {
                let track = lock(&track);
                SavedTrack {
                    key,
                    needs: track.needs.clone(),
                    recorded_through: track.recorded_through,
                    ring: track.ring.clone(),
                }
            })
            .collect();
        // Same history, same bytes: easier to compare and diff.
        saved.sort_by(|a, b| {
            (&a.key.query, a.key.operation.name(), a.key.window)
                .cmp(&(&b.key.query, b.key.operation.name(), b.key.window))
                .then(a.key.quantile_bits.cmp(&b.key.quantile_bits))
        });
        saved
    }

    /// Takes in what a snapshot held: needs unused for too long and points
    /// older than `max_age` are dropped, as are queries that no longer
    /// parse. Returns how many queries were taken in.
    pub fn import(&self, saved: Vec<SavedTrack>, now: Nanos) -> usize {
        let oldest_step = now.saturating_sub(self.config.max_age) / STEP;
        let mut saved = saved;
        // The most recently used first, should the table be smaller now.
        saved.sort_by_key(|s| std::cmp::Reverse(s.needs.iter().map(|n| n.last_used).max()));
        let mut tracks = lock(&self.tracks);
        let mut taken = 0;
        for item in saved {
            if tracks.len() >= self.config.max_queries {
                tracing::warn!(
                    max_queries = self.config.max_queries,
                    "history snapshot holds more queries than --history-max-queries; the least recently used were dropped"
                );
                break;
            }
            let query = match parse_query(&item.key.query) {
                Ok(query) => query,
                Err(e) => {
                    tracing::warn!(query = %item.key.query, error = %e, "history snapshot: a query no longer parses; its history is dropped");
                    continue;
                }
            };
            let mut track = Track {
                query,
                needs: item
                    .needs
                    .iter()
                    .map(|n| Need {
                        span: n.span.min(self.config.max_age),
                        last_used: n.last_used,
                    })
                    .collect(),
                recorded_through: item.recorded_through,
                ring: item.ring,
            };
            track.ring.drop_before(oldest_step);
            if track.expire(now, self.config.idle) {
                continue;
            }
            tracks.insert(item.key, Arc::new(Mutex::new(track)));
            taken += 1;
        }
        taken
    }
}

/// One query's history as a snapshot stores it.
#[derive(Clone, Debug, PartialEq)]
pub struct SavedTrack {
    pub key: HistoryKey,
    pub needs: Vec<Need>,
    pub recorded_through: Option<u64>,
    pub ring: Ring,
}

/// The history a policy reads: one sample per step in `[now - span, now)`,
/// oldest first. Steps the raw store still covers with a whole window (see
/// [`raw_from`]) are re-evaluated from it, older ones come from `ring`;
/// a step neither has is left out.
pub fn samples(
    store: &Store,
    query: &Query,
    key: &HistoryKey,
    ring: Option<&Ring>,
    span: Nanos,
    raw_since: Nanos,
    now: Nanos,
) -> Vec<Sample> {
    if span == 0 || now == 0 {
        return Vec::new();
    }
    let raw_first = raw_from(store.config().retention, raw_since, key.window, now).div_ceil(STEP);
    let mut first = now.saturating_sub(span).div_ceil(STEP);
    let last = (now - 1) / STEP;
    let from_ring = |step: u64| ring.and_then(|r| r.get(step));
    match ring.and_then(Ring::oldest) {
        Some(oldest) => first = first.max(oldest.min(raw_first)),
        None => first = first.max(raw_first),
    }
    let mut out =
        Vec::with_capacity(last.saturating_sub(first).saturating_add(1).min(1 << 16) as usize);
    for step in first..=last {
        let at = step * STEP;
        let value = if step >= raw_first {
            evaluate_at(store, query, key, at).or_else(|| from_ring(step))
        } else {
            from_ring(step)
        };
        if let Some(value) = value {
            out.push(Sample {
                at: at as f64 / NANOS_PER_SECOND as f64,
                values: vec![value],
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::LabelSet;
    use crate::store::{PointData, ScalarPoint, SeriesKind, StoreConfig};

    const S: Nanos = NANOS_PER_SECOND;
    /// A step boundary, so step arithmetic in the tests is plain.
    const T0: Nanos = 1_700_000_100 * S;
    const QUERY: &str = r#"sum(load{deployment="d"})"#;

    fn store(retention: Nanos) -> Store {
        Store::new(StoreConfig {
            retention,
            freshness: 15 * S,
            max_series: 100,
            max_points_per_series: 10_000,
        })
    }

    /// A gauge point for pod `pod` at `time`, received then.
    fn put(store: &Store, pod: &str, time: Nanos, value: f64) {
        store.append(
            "load",
            LabelSet::from_pairs([("deployment", "d"), ("pod", pod)]),
            &SeriesKind::Gauge,
            PointData::Scalar(ScalarPoint {
                time,
                start: 0,
                value,
            }),
            time,
        );
    }

    fn config(max_age: Nanos) -> HistoryConfig {
        HistoryConfig {
            max_age,
            max_queries: 8,
            idle: 3600 * S,
            retention: 300 * S,
            raw_since: 0,
        }
    }

    fn key_for(query: &Query, window: Nanos) -> HistoryKey {
        HistoryKey::new(query, Operation::LastOne, window, None)
    }

    fn value_of(t: Nanos) -> f64 {
        (t / S) as f64
    }

    #[test]
    fn ring_keeps_one_slot_per_step_and_at_most_capacity() {
        let mut ring = Ring::new();
        ring.set(100, 1.0, 5);
        ring.set(101, 2.0, 5);
        assert_eq!((ring.oldest(), ring.newest()), (Some(100), Some(101)));
        // The same step again replaces its value: still one slot.
        ring.set(101, 3.0, 5);
        assert_eq!(ring.slots(), 2);
        assert_eq!(ring.get(101), Some(3.0));
        // A gap becomes holes, which have no value.
        ring.set(104, 4.0, 5);
        assert_eq!(ring.slots(), 5);
        assert_eq!(ring.get(102), None);
        assert_eq!(ring.points(), 3);
        // Beyond capacity the oldest go.
        ring.set(105, 5.0, 5);
        assert_eq!(ring.oldest(), Some(101));
        assert_eq!(ring.get(100), None);
        // A gap as long as the capacity leaves nothing of the old values.
        ring.set(111, 6.0, 5);
        assert_eq!((ring.oldest(), ring.slots()), (Some(111), 1));
        // Older than the kept span: ignored; inside it: filled in.
        ring.set(106, 7.0, 5);
        assert_eq!(ring.slots(), 1);
        ring.set(108, 8.0, 5);
        assert_eq!((ring.oldest(), ring.slots()), (Some(108), 4));
        assert_eq!(ring.get(108), Some(8.0));
        // Leading holes cost nothing: trimming past a value drops them too.
        ring.trim(2);
        assert_eq!((ring.oldest(), ring.slots()), (Some(111), 1));
    }

    #[test]
    fn the_tick_records_one_value_per_step_at_the_step_instant_without_polls() {
        let store = store(300 * S);
        let history = History::new(config(DEFAULT_MAX_AGE));
        let query = parse_query(QUERY).unwrap();
        let key = key_for(&query, 10 * S);
        // One KEDA poll makes the query known...
        history.track(&key, &query, 3600 * S, T0).unwrap();
        // ...then only the background pass runs, every second for ten
        // minutes, while a point arrives every 5 s.
        for second in 0..600 {
            let t = T0 + second * S;
            if second % 5 == 0 {
                put(&store, "a", t, value_of(t));
            }
            history.record_all(&store, t);
        }
        let track = history.track(&key, &query, 3600 * S, T0 + 600 * S).unwrap();
        let track = track.lock().unwrap();
        let ring = track.ring();
        // Steps T0 .. T0+585 s have settled by T0+599 s: 40 steps, each once.
        assert_eq!(ring.oldest(), Some(T0 / STEP));
        assert_eq!(ring.newest(), Some((T0 + 585 * S) / STEP));
        assert_eq!(ring.slots(), 40);
        assert_eq!(ring.points(), 40);
        for step in T0 / STEP..=(T0 + 585 * S) / STEP {
            // last_one at the step's instant is the point sent at it (the
            // step is a multiple of 5 s), not a value from when the pass ran.
            assert_eq!(ring.get(step), Some(value_of(step * STEP)), "step {step}");
        }
    }

    #[test]
    fn missed_passes_are_filled_in_while_the_raw_store_covers_them() {
        let store = store(300 * S);
        let history = History::new(config(DEFAULT_MAX_AGE));
        let query = parse_query(QUERY).unwrap();
        let key = key_for(&query, 10 * S);
        history.track(&key, &query, 3600 * S, T0).unwrap();
        for second in (0..=1200).step_by(5) {
            put(&store, "a", T0 + second * S, value_of(T0 + second * S));
        }
        // Nothing ran for twenty minutes; the store holds the last five.
        history.record_all(&store, T0 + 1200 * S);
        let track = history.track(&key, &query, 3600 * S, T0).unwrap();
        let ring = &track.lock().unwrap().ring;
        // Steps from (now - retention + window) rounded up to a step, to the
        // last settled one (now - 5 s rounded down): 915 s .. 1185 s.
        assert_eq!(ring.oldest(), Some((T0 + 915 * S) / STEP));
        assert_eq!(ring.newest(), Some((T0 + 1185 * S) / STEP));
        assert_eq!(ring.points(), 19);
    }

    #[test]
    fn history_is_capped_at_max_age() {
        let store = store(300 * S);
        let history = History::new(config(600 * S));
        let query = parse_query(QUERY).unwrap();
        let key = key_for(&query, 10 * S);
        let mut now = T0;
        while now < T0 + 3600 * S {
            put(&store, "a", now, 1.0);
            // The policy asks for a day; it gets ten minutes.
            history.track(&key, &query, 86_400 * S, now);
            history.record_all(&store, now);
            now += 5 * S;
        }
        let track = history.track(&key, &query, 86_400 * S, now).unwrap();
        {
            let track = track.lock().unwrap();
            assert_eq!(track.span(), 600 * S);
            assert_eq!(track.ring().slots(), 41);
        }
        let stats = history.stats();
        assert_eq!((stats.queries, stats.points), (1, 41));
    }

    #[test]
    fn unused_queries_are_forgotten_an_idle_time_after_their_longest_need() {
        let history = History::new(config(DEFAULT_MAX_AGE));
        let query = parse_query(QUERY).unwrap();
        let other = parse_query(r#"sum(load{deployment="e"})"#).unwrap();
        let long = key_for(&query, 10 * S);
        let short = key_for(&other, 10 * S);
        // Two triggers read the first query, 2 h and 10 min.
        history.track(&long, &query, 7200 * S, T0).unwrap();
        history.track(&long, &query, 600 * S, T0 + 100 * S).unwrap();
        history.track(&short, &other, 600 * S, T0).unwrap();
        // The short-need query goes an hour (idle) after its 10 min.
        history.expire(T0 + 4200 * S);
        assert_eq!(history.stats().queries, 2);
        history.expire(T0 + 4201 * S);
        assert_eq!(history.stats().queries, 1);
        // The first query keeps its 2 h need until 2 h + 1 h after use.
        history.expire(T0 + 10_800 * S);
        assert_eq!(history.stats().queries, 1);
        let track = history
            .track(&long, &query, 600 * S, T0 + 10_800 * S)
            .unwrap();
        assert_eq!(track.lock().unwrap().span(), 7200 * S);
        history.expire(T0 + 10_801 * S);
        assert_eq!(
            track.lock().unwrap().span(),
            600 * S,
            "the 2 h need expired"
        );
        assert_eq!(history.stats().queries, 1, "the 10 min need was just used");
    }

    #[test]
    fn a_full_table_refuses_new_queries_until_one_expires() {
        let history = History::new(HistoryConfig {
            max_queries: 2,
            ..config(DEFAULT_MAX_AGE)
        });
        let queries: Vec<Query> = ["a", "b", "c"]
            .iter()
            .map(|d| parse_query(&format!(r#"sum(load{{deployment="{d}"}})"#)).unwrap())
            .collect();
        let keys: Vec<HistoryKey> = queries.iter().map(|q| key_for(q, 10 * S)).collect();
        assert!(history.track(&keys[0], &queries[0], 60 * S, T0).is_some());
        assert!(
            history
                .track(&keys[1], &queries[1], 60 * S, T0 + 3000 * S)
                .is_some()
        );
        assert!(
            history
                .track(&keys[2], &queries[2], 60 * S, T0 + 3000 * S)
                .is_none()
        );
        assert_eq!(history.refused(), 1);
        // A stateless trigger asks for nothing and is never counted.
        assert!(history.track(&keys[2], &queries[2], 0, T0).is_none());
        assert_eq!(history.refused(), 1);
        // Once the first has gone unused for 60 s + 1 h, the third fits.
        assert!(
            history
                .track(&keys[2], &queries[2], 60 * S, T0 + 3661 * S)
                .is_some()
        );
        assert_eq!(history.stats().queries, 2);
    }

    #[test]
    fn samples_take_raw_values_where_the_store_covers_them_and_compacted_ones_before() {
        let store = store(300 * S);
        let query = parse_query(QUERY).unwrap();
        let window = 30 * S;
        let key = key_for(&query, window);
        let now = T0 + 3600 * S;
        // The raw store: a point every 5 s over its five minutes.
        let mut t = now - 300 * S;
        while t <= now {
            put(&store, "a", t, value_of(t));
            t += 5 * S;
        }
        // Compacted values, told apart from raw ones (a point's value is
        // its time in seconds) by an offset, for the whole hour.
        let mut ring = Ring::new();
        for step in T0 / STEP..now / STEP {
            ring.set(step, 1e6 + step as f64, 1000);
        }
        let all = samples(&store, &query, &key, Some(&ring), 3600 * S, 0, now);
        assert_eq!(all.len(), 240, "every step of the hour, none at now");
        let raw_first = (now - 300 * S + window).div_ceil(STEP);
        for sample in &all {
            let step = (sample.at * 1e9) as u64 / STEP;
            let expected = if step >= raw_first {
                value_of(step * STEP)
            } else {
                1e6 + step as f64
            };
            assert_eq!(sample.values, vec![expected], "step {step}");
        }
        // The earliest point is an hour old, twelve times the retention.
        assert_eq!(now as f64 / 1e9 - all[0].at, 3600.0);

        // Right after a restart the raw store holds only what arrived
        // since: compacted values stand in until a whole window has.
        let since = now - 20 * S;
        let restarted = samples(&store, &query, &key, Some(&ring), 3600 * S, since, now);
        let last = restarted.last().unwrap();
        assert_eq!(last.values[0], 1e6 + ((now - STEP) / STEP) as f64);

        // Without compacted history: only what the raw store covers.
        let raw_only = samples(&store, &query, &key, None, 3600 * S, 0, now);
        assert_eq!(raw_only.len(), (now / STEP - raw_first) as usize);
        // Raw values are the point's own time in seconds.
        assert!(raw_only.iter().all(|s| s.values[0] == s.at));
    }

    #[test]
    fn a_step_missing_from_the_raw_store_falls_back_to_the_compacted_value() {
        let store = store(300 * S);
        let query = parse_query(QUERY).unwrap();
        let key = key_for(&query, 10 * S);
        let now = T0 + 300 * S;
        // Raw data only for the last minute: with a 10 s window, only the
        // step 60 s ago sees a point.
        put(&store, "a", now - 60 * S, 5.0);
        put(&store, "a", now - 5 * S, 5.0);
        let mut ring = Ring::new();
        ring.set((now - 120 * S) / STEP, 9.0, 100);
        let out = samples(&store, &query, &key, Some(&ring), 600 * S, 0, now);
        let values: Vec<(f64, f64)> = out
            .iter()
            .map(|s| (now as f64 / 1e9 - s.at, s.values[0]))
            .collect();
        assert_eq!(values, vec![(120.0, 9.0), (60.0, 5.0)]);
    }
}
