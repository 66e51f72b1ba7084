//! One time series: its kind and a time-ordered ring buffer of points.

use std::collections::VecDeque;
use std::sync::Arc;

/// Nanoseconds since the Unix epoch, as OTLP sends them.
pub type Nanos = u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Temporality {
    /// Each point holds the total since `start`.
    Cumulative,
    /// Each point holds the increase over `[start, time]`.
    Delta,
}

/// What a series measures; decides how window operations read it.
#[derive(Clone, Debug, PartialEq)]
pub enum SeriesKind {
    Gauge,
    Sum {
        temporality: Temporality,
        monotonic: bool,
    },
    /// Explicit-bucket histogram. `bounds` are the upper bounds of all but
    /// the last (+Inf) bucket, shared between series to save memory.
    Histogram {
        temporality: Temporality,
        bounds: Arc<[f64]>,
    },
    /// Summary, and exponential histograms reduced to count and sum.
    Summary,
}

impl SeriesKind {
    pub fn describe(&self) -> &'static str {
        match self {
            SeriesKind::Gauge => "gauge",
            SeriesKind::Sum { .. } => "sum",
            SeriesKind::Histogram { .. } => "histogram",
            SeriesKind::Summary => "summary",
        }
    }

    pub fn temporality(&self) -> Temporality {
        match self {
            SeriesKind::Sum { temporality, .. } | SeriesKind::Histogram { temporality, .. } => {
                *temporality
            }
            SeriesKind::Gauge | SeriesKind::Summary => Temporality::Cumulative,
        }
    }
}

/// A gauge or sum point.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScalarPoint {
    pub time: Nanos,
    /// 0 when the exporter did not say (gauges usually don't).
    pub start: Nanos,
    pub value: f64,
}

/// A histogram or summary point.
#[derive(Clone, Debug, PartialEq)]
pub struct DistributionPoint {
    pub time: Nanos,
    pub start: Nanos,
    pub count: f64,
    pub sum: f64,
    /// Per-bucket (not cumulative) counts, one more than the bounds; empty
    /// for summaries.
    pub buckets: Box<[u64]>,
    /// `(quantile, value)` pairs of a summary; empty for histograms.
    pub quantiles: Box<[(f64, f64)]>,
}

pub trait Timed {
    fn time(&self) -> Nanos;
}

impl Timed for ScalarPoint {
    fn time(&self) -> Nanos {
        self.time
    }
}

impl Timed for DistributionPoint {
    fn time(&self) -> Nanos {
        self.time
    }
}

/// Points ordered by their own timestamp, not by arrival. Ordering by
/// timestamp (and replacing a point that repeats a timestamp) makes the
/// contents independent of delivery order and of retried exports, which is
/// what lets several scaler replicas fed the same data agree.
#[derive(Clone, Debug, Default)]
pub struct Ring<P> {
    points: VecDeque<P>,
}

impl<P: Timed> Ring<P> {
    pub fn new() -> Self {
        Ring {
            points: VecDeque::new(),
        }
    }

    /// Inserts in time order, dropping the oldest point when `capacity` is
    /// reached. Returns false if the point was older than everything kept in
    /// a full buffer and so was not stored.
    pub fn insert(&mut self, point: P, capacity: usize) -> bool {
        let time = point.time();
        match self.points.back() {
            None => self.points.push_back(point),
            Some(last) if last.time() < time => self.points.push_back(point),
            Some(_) => match self.points.binary_search_by(|p| p.time().cmp(&time)) {
                Ok(same) => {
                    self.points[same] = point;
                    return true;
                }
                Err(0) if self.points.len() >= capacity => return false,
                Err(position) => self.points.insert(position, point),
            },
        }
        while self.points.len() > capacity.max(1) {
            self.points.pop_front();
        }
        true
    }

    /// Drops points older than `oldest_kept`.
    pub fn evict_before(&mut self, oldest_kept: Nanos) {
        while self.points.front().is_some_and(|p| p.time() < oldest_kept) {
            self.points.pop_front();
        }
    }

    /// Points with `time >= from`, oldest first.
    pub fn since(&self, from: Nanos) -> impl DoubleEndedIterator<Item = &P> + ExactSizeIterator {
        let first = self.points.partition_point(|p| p.time() < from);
        self.points.range(first..)
    }

    /// Points with `from <= time <= until`, oldest first.
    pub fn between(
        &self,
        from: Nanos,
        until: Nanos,
    ) -> impl DoubleEndedIterator<Item = &P> + ExactSizeIterator {
        let first = self.points.partition_point(|p| p.time() < from);
        let end = self
            .points
            .partition_point(|p| p.time() <= until)
            .max(first);
        self.points.range(first..end)
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// Timestamp of the oldest point kept.
    pub fn oldest_time(&self) -> Option<Nanos> {
        self.points.front().map(Timed::time)
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    pub fn capacity_bytes(&self) -> usize {
        self.points.capacity() * std::mem::size_of::<P>()
    }
}

#[derive(Clone, Debug)]
pub enum Samples {
    Scalar(Ring<ScalarPoint>),
    Distribution(Ring<DistributionPoint>),
}

impl Samples {
    pub fn len(&self) -> usize {
        match self {
            Samples::Scalar(ring) => ring.len(),
            Samples::Distribution(ring) => ring.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn oldest_time(&self) -> Option<Nanos> {
        match self {
            Samples::Scalar(ring) => ring.oldest_time(),
            Samples::Distribution(ring) => ring.oldest_time(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Series {
    pub kind: SeriesKind,
    pub samples: Samples,
    /// When this scaler last received a point for the series (its own
    /// clock). Freshness is judged on this, not on point timestamps, so a
    /// pod with a skewed clock is not mistaken for a dead one.
    pub last_seen: Nanos,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(time: Nanos, value: f64) -> ScalarPoint {
        ScalarPoint {
            time,
            start: 0,
            value,
        }
    }

    fn values(ring: &Ring<ScalarPoint>) -> Vec<f64> {
        ring.since(0).map(|p| p.value).collect()
    }

    #[test]
    fn keeps_time_order_whatever_the_arrival_order() {
        let mut ring = Ring::new();
        for (t, v) in [(30, 3.0), (10, 1.0), (20, 2.0), (40, 4.0)] {
            assert!(ring.insert(point(t, v), 10));
        }
        assert_eq!(values(&ring), vec![1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn repeated_timestamp_replaces_instead_of_duplicating() {
        let mut ring = Ring::new();
        ring.insert(point(10, 1.0), 10);
        ring.insert(point(20, 2.0), 10);
        ring.insert(point(10, 1.5), 10);
        assert_eq!(values(&ring), vec![1.5, 2.0]);
    }

    #[test]
    fn capacity_drops_oldest_and_refuses_older_than_kept() {
        let mut ring = Ring::new();
        for t in 1..=5 {
            ring.insert(point(t * 10, t as f64), 3);
        }
        assert_eq!(values(&ring), vec![3.0, 4.0, 5.0]);
        assert!(!ring.insert(point(5, 0.5), 3));
        assert_eq!(values(&ring), vec![3.0, 4.0, 5.0]);
    }

    #[test]
    fn eviction_and_window_use_point_time() {
        let mut ring = Ring::new();
        for t in 1..=5 {
            ring.insert(point(t * 10, t as f64), 10);
        }
        assert_eq!(
            ring.since(35).map(|p| p.value).collect::<Vec<_>>(),
            vec![4.0, 5.0]
        );
        ring.evict_before(30);
        assert_eq!(values(&ring), vec![3.0, 4.0, 5.0]);
    }
}
