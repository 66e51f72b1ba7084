//! The series of one metric name within one shard, and the inverted index
//! from label pairs to them (postings: for each label name and value, the
//! sorted ids of the series carrying that pair).
//!
//! Every KServe pod exports the same metric names, so without the index
//! one service's query pays for every pod in the cluster. With it, the
//! query `sum(m{namespace="ns", deployment="d"})` intersects two postings
//! lists and reads only that deployment's pods.

use super::{FastMap, Series};
use crate::labels::LabelSet;
use crate::query::{MatchOp, Matcher};
use hashbrown::HashTable;
use std::sync::Arc;

/// Position of a series in [`MetricIndex::entries`]. Freed positions are
/// reused, so postings stay dense.
pub type SeriesId = u32;

/// Below this many slots an index is never compacted; above it, once live
/// series fall under a quarter of the slots (after a cardinality flood
/// went stale), the slots are renumbered so memory follows the live set.
const COMPACT_MIN_SLOTS: usize = 4096;

struct Entry {
    hash: u64,
    labels: LabelSet,
    series: Series,
}

#[derive(Default)]
pub struct MetricIndex {
    entries: Vec<Option<Entry>>,
    free: Vec<SeriesId>,
    live: usize,
    /// Ids by series hash, probed with borrowed label pairs so a known
    /// series is found without building its label set.
    table: HashTable<SeriesId>,
    /// Label name → label value → ids carrying that pair, ascending. The
    /// `Arc<str>` keys double as the interned text every series' labels
    /// point at: one allocation per distinct name and value, not per series.
    postings: FastMap<Arc<str>, FastMap<Arc<str>, Vec<SeriesId>>>,
}

/// Buffers reused across the shards of one query.
#[derive(Default)]
pub struct Scratch {
    candidates: Vec<SeriesId>,
}

impl MetricIndex {
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    pub fn find<K: AsRef<str>, V: AsRef<str>>(
        &self,
        hash: u64,
        pairs: &[(K, V)],
    ) -> Option<SeriesId> {
        let entries = &self.entries;
        self.table
            .find(hash, |&id| {
                entries[id as usize]
                    .as_ref()
                    .is_some_and(|e| e.labels.eq_pairs(pairs))
            })
            .copied()
    }

    pub fn series_mut(&mut self, id: SeriesId) -> &mut Series {
        &mut self.entries[id as usize]
            .as_mut()
            .expect("ids handed out by find/insert are live")
            .series
    }

    pub fn get_mut(&mut self, id: SeriesId) -> Option<&mut Series> {
        self.entries
            .get_mut(id as usize)?
            .as_mut()
            .map(|e| &mut e.series)
    }

    /// Adds a series that `find` did not find; `pairs` in canonical order.
    pub fn insert<K: AsRef<str>, V: AsRef<str>>(
        &mut self,
        hash: u64,
        pairs: &[(K, V)],
        series: Series,
    ) -> SeriesId {
        let id = self.allocate();
        let mut interned = Vec::with_capacity(pairs.len());
        for (key, value) in pairs {
            let (key, value) = self.intern_and_post(key.as_ref(), value.as_ref(), id);
            interned.push((key, value));
        }
        self.place(
            id,
            Entry {
                hash,
                labels: LabelSet::from_canonical(interned.into_boxed_slice()),
                series,
            },
        );
        id
    }

    fn allocate(&mut self) -> SeriesId {
        match self.free.pop() {
            Some(id) => id,
            None => {
                self.entries.push(None);
                SeriesId::try_from(self.entries.len() - 1)
                    .expect("fewer than 2^32 series per metric and shard")
            }
        }
    }

    fn place(&mut self, id: SeriesId, entry: Entry) {
        let hash = entry.hash;
        self.entries[id as usize] = Some(entry);
        let entries = &self.entries;
        self.table.insert_unique(hash, id, |&other| {
            entries[other as usize].as_ref().map_or(0, |e| e.hash)
        });
        self.live += 1;
    }

    /// Adds `id` to the postings of `key=value` and returns the shared
    /// text of both.
    fn intern_and_post(&mut self, key: &str, value: &str, id: SeriesId) -> (Arc<str>, Arc<str>) {
        if !self.postings.contains_key(key) {
            self.postings.insert(Arc::from(key), FastMap::default());
        }
        let (key, values) = self
            .postings
            .get_key_value_mut(key)
            .expect("inserted above");
        if !values.contains_key(value) {
            values.insert(Arc::from(value), Vec::new());
        }
        let (value, ids) = values.get_key_value_mut(value).expect("inserted above");
        // New ids usually come last (the free list is empty while the set
        // grows); a reused one goes to its place.
        match ids.last() {
            Some(&last) if last > id => {
                if let Err(at) = ids.binary_search(&id) {
                    ids.insert(at, id);
                }
            }
            _ => ids.push(id),
        }
        (key.clone(), value.clone())
    }

    /// Removes the given series (ids not live are skipped) and returns how
    /// many were removed. Each postings list they touched is filtered once,
    /// so a mass expiry costs the lists' length, not series × length.
    pub fn remove(&mut self, ids: &[SeriesId]) -> usize {
        if ids.is_empty() {
            return 0;
        }
        let mut gone = vec![false; self.entries.len()];
        let mut touched: Vec<(Arc<str>, Arc<str>)> = Vec::new();
        let mut removed = 0;
        for &id in ids {
            let Some(entry) = self.entries.get_mut(id as usize).and_then(Option::take) else {
                continue;
            };
            if let Ok(slot) = self.table.find_entry(entry.hash, |&other| other == id) {
                slot.remove();
            }
            gone[id as usize] = true;
            touched.extend(entry.labels.arc_pairs().iter().cloned());
            self.free.push(id);
            self.live -= 1;
            removed += 1;
        }
        touched.sort_unstable();
        touched.dedup();
        for (key, value) in touched {
            let Some(values) = self.postings.get_mut(&*key) else {
                continue;
            };
            if let Some(list) = values.get_mut(&*value) {
                list.retain(|&id| !gone[id as usize]);
                if list.is_empty() {
                    values.remove(&*value);
                }
            }
            if values.is_empty() {
                self.postings.remove(&*key);
            }
        }
        if self.entries.len() >= COMPACT_MIN_SLOTS && self.live * 4 < self.entries.len() {
            self.compact();
        }
        removed
    }

    /// Renumbers the live series densely and rebuilds the postings from
    /// their (already interned) labels.
    fn compact(&mut self) {
        let old = std::mem::take(&mut self.entries);
        *self = MetricIndex::default();
        for entry in old.into_iter().flatten() {
            let id = self.allocate();
            for (key, value) in entry.labels.arc_pairs() {
                self.postings
                    .entry(key.clone())
                    .or_default()
                    .entry(value.clone())
                    .or_default()
                    .push(id);
            }
            self.place(id, entry);
        }
    }

    pub fn for_each(&self, mut visit: impl FnMut(&LabelSet, &Series)) {
        self.for_each_id(|_, labels, series| visit(labels, series));
    }

    pub fn for_each_id(&self, mut visit: impl FnMut(SeriesId, &LabelSet, &Series)) {
        for (id, entry) in self.entries.iter().enumerate() {
            if let Some(entry) = entry {
                visit(id as SeriesId, &entry.labels, &entry.series);
            }
        }
    }

    /// Calls `visit` for every series all `matchers` accept. The index only
    /// narrows the candidates; each candidate is then checked against every
    /// matcher, so the answer is the one a full scan gives by construction.
    pub fn select(
        &self,
        matchers: &[Matcher],
        scratch: &mut Scratch,
        mut visit: impl FnMut(&LabelSet, &Series),
    ) {
        let accepts = |labels: &LabelSet| matchers.iter().all(|m| m.matches(labels.get(&m.label)));
        let mut lists: Vec<&[SeriesId]> = Vec::new();
        for m in matchers.iter().filter(|m| m.op == MatchOp::Equal) {
            match self
                .postings
                .get(m.label.as_str())
                .and_then(|values| values.get(m.value.as_str()))
            {
                Some(ids) => lists.push(ids),
                // No series carries this pair.
                None => return,
            }
        }
        let candidates = &mut scratch.candidates;
        candidates.clear();
        if let Some(smallest) = lists.iter().map(|l| l.len()).min() {
            let at = lists
                .iter()
                .position(|l| l.len() == smallest)
                .expect("min exists");
            candidates.extend_from_slice(lists.swap_remove(at));
            for other in &lists {
                candidates.retain(|id| other.binary_search(id).is_ok());
            }
        } else if let Some(m) = matchers.iter().find(|m| m.op == MatchOp::RegexMatch) {
            // A positive regex alone: test each distinct value once rather
            // than each series.
            let Some(values) = self.postings.get(m.label.as_str()) else {
                return;
            };
            for (value, ids) in values {
                if m.matches(Some(&**value)) {
                    candidates.extend_from_slice(ids);
                }
            }
            candidates.sort_unstable();
        } else {
            // Only negative matchers, or none: every series is a candidate.
            for entry in self.entries.iter().flatten() {
                if accepts(&entry.labels) {
                    visit(&entry.labels, &entry.series);
                }
            }
            return;
        }
        for &id in candidates.iter() {
            let entry = self.entries[id as usize]
                .as_ref()
                .expect("postings hold live ids only");
            if accepts(&entry.labels) {
                visit(&entry.labels, &entry.series);
            }
        }
    }

    /// Panics unless postings, table and entries agree (tests only).
    #[cfg(test)]
    pub fn check(&self) {
        let mut postings = 0;
        for (key, values) in &self.postings {
            assert!(!values.is_empty(), "empty value map for {key}");
            for (value, ids) in values {
                assert!(!ids.is_empty(), "empty postings for {key}={value}");
                assert!(ids.windows(2).all(|w| w[0] < w[1]), "unsorted postings");
                for &id in ids {
                    let entry = self.entries[id as usize].as_ref().expect("live id");
                    assert_eq!(entry.labels.get(key), Some(&**value));
                }
                postings += ids.len();
            }
        }
        let mut live = 0;
        let mut pairs = 0;
        for (id, entry) in self.entries.iter().enumerate() {
            if let Some(entry) = entry {
                live += 1;
                pairs += entry.labels.len();
                let pairs: Vec<(&str, &str)> = entry.labels.iter().collect();
                assert_eq!(self.find(entry.hash, &pairs), Some(id as SeriesId));
            }
        }
        assert_eq!(live, self.live);
        assert_eq!(pairs, postings, "every pair of every series is posted once");
        assert_eq!(self.table.len(), self.live);
    }
}
