//! Latency percentiles: over a sliding window for the live figures, and over the whole
//! run for the summary.

use std::collections::VecDeque;

/// The nearest-rank percentile (`p` in 0..=100) of sorted values; `None` when empty.
/// Nearest rank always returns a value that was observed, so a p99 of ten samples is the
/// largest one rather than an interpolation nobody measured.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Values observed in the last `span` seconds.
#[derive(Debug, Clone)]
pub struct Window {
    span: f64,
    samples: VecDeque<(f64, f64)>,
}

impl Window {
    pub fn new(span: f64) -> Self {
        Window {
            span,
            samples: VecDeque::new(),
        }
    }

    /// Records `value` seen at time `t` (seconds; callers pass non-decreasing times, and a
    /// slightly older one only lingers until the next eviction passes it).
    pub fn push(&mut self, t: f64, value: f64) {
        self.samples.push_back((t, value));
    }

    /// Drops what is older than the span as seen at `now`, then gives the percentiles.
    pub fn percentiles(&mut self, now: f64, ps: &[f64]) -> Vec<Option<f64>> {
        while self
            .samples
            .front()
            .is_some_and(|&(t, _)| t <= now - self.span)
        {
            self.samples.pop_front();
        }
        let mut values: Vec<f64> = self.samples.iter().map(|&(_, v)| v).collect();
        values.sort_by(f64::total_cmp);
        ps.iter().map(|&p| percentile(&values, p)).collect()
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[3.0], 99.0), Some(3.0));
        // Ten samples: p99 is the largest, p50 the fifth.
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&ten, 99.0), Some(10.0));
        assert_eq!(percentile(&ten, 50.0), Some(5.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn the_window_forgets_old_values() {
        let mut w = Window::new(10.0);
        // Seconds 0..9 are slow (100), 10..19 fast (1).
        for i in 0..10 {
            w.push(f64::from(i), 100.0);
        }
        assert_eq!(
            w.percentiles(9.5, &[50.0, 99.0]),
            [Some(100.0), Some(100.0)]
        );
        for i in 10..20 {
            w.push(f64::from(i), 1.0);
        }
        // At 19.5 only 10..19 remain.
        assert_eq!(w.percentiles(19.5, &[50.0, 99.0]), [Some(1.0), Some(1.0)]);
        assert_eq!(w.len(), 10);
        assert_eq!(w.percentiles(40.0, &[50.0]), [None]);
        assert!(w.is_empty());
    }

    #[test]
    fn unsorted_arrivals_are_sorted_for_percentiles() {
        let mut w = Window::new(5.0);
        for (i, v) in [5.0, 1.0, 4.0, 2.0, 3.0].into_iter().enumerate() {
            w.push(i as f64 * 0.1, v);
        }
        assert_eq!(
            w.percentiles(1.0, &[20.0, 50.0, 100.0]),
            [Some(1.0), Some(3.0), Some(5.0)]
        );
    }
}
