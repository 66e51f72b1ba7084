//! `operationOverTime`: reduces one series' points inside the query window
//! to one number. Computed at query time, so a window always ends "now"
//! rather than at the series' last write as in otel-add-on.

use crate::store::{DistributionPoint, NANOS_PER_SECOND, ScalarPoint, Temporality};
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Operation {
    /// The point with the latest timestamp.
    #[default]
    LastOne,
    Avg,
    Max,
    Min,
    /// Increase per second over the window, counter resets handled.
    Rate,
    /// Number of points in the window (not number of series).
    Count,
}

impl Operation {
    pub const ALL: [Operation; 6] = [
        Operation::LastOne,
        Operation::Avg,
        Operation::Max,
        Operation::Min,
        Operation::Rate,
        Operation::Count,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Operation::LastOne => "last_one",
            Operation::Avg => "avg",
            Operation::Max => "max",
            Operation::Min => "min",
            Operation::Rate => "rate",
            Operation::Count => "count",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Operation::ALL.into_iter().find(|op| op.name() == text)
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn seconds(nanos: u64) -> f64 {
    nanos as f64 / NANOS_PER_SECOND as f64
}

/// Applies `op` to points already cut to the window, oldest first. `None`
/// when the window holds no point, so the series does not take part.
pub fn reduce(op: Operation, points: &[ScalarPoint], temporality: Temporality) -> Option<f64> {
    let last = points.last()?;
    let values = points.iter().map(|p| p.value);
    Some(match op {
        Operation::LastOne => last.value,
        Operation::Avg => values.sum::<f64>() / points.len() as f64,
        Operation::Max => values.fold(f64::NEG_INFINITY, f64::max),
        Operation::Min => values.fold(f64::INFINITY, f64::min),
        Operation::Count => points.len() as f64,
        Operation::Rate => match temporality {
            Temporality::Cumulative => cumulative_rate(points),
            Temporality::Delta => delta_rate(points),
        },
    })
}

/// Whether `current` starts a new counter run after `previous`: the value
/// went down, or the exporter reported a new start time. Prometheus-fed
/// collectors do not always set start times, so the drop check matters.
fn is_reset(previous: &ScalarPoint, current: &ScalarPoint) -> bool {
    current.value < previous.value
        || (previous.start != 0 && current.start != 0 && current.start != previous.start)
}

/// otel-add-on's (v0.1.4) definition: the sum of increases between
/// consecutive points, a reset counting its new value as the increase,
/// divided by the time between first and last point. Zero with fewer than
/// two points or no elapsed time. Unlike otel-add-on the time is exact, not
/// truncated to whole seconds.
fn cumulative_rate(points: &[ScalarPoint]) -> f64 {
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        return 0.0;
    };
    let span = seconds(last.time.saturating_sub(first.time));
    if points.len() < 2 || span <= 0.0 {
        return 0.0;
    }
    let increase: f64 = points
        .windows(2)
        .map(|pair| {
            if is_reset(&pair[0], &pair[1]) {
                pair[1].value
            } else {
                pair[1].value - pair[0].value
            }
        })
        .sum();
    increase / span
}

/// Delta points are increases over `[start, time]`. When every point says
/// when its interval started, all of them count over the covered time;
/// otherwise the first point's interval is unknown and it is left out, as
/// for a cumulative series.
fn delta_rate(points: &[ScalarPoint]) -> f64 {
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        return 0.0;
    };
    let all_have_start = points.iter().all(|p| p.start != 0 && p.start <= p.time);
    let (increase, span) = if all_have_start {
        (
            points.iter().map(|p| p.value).sum::<f64>(),
            seconds(last.time.saturating_sub(first.start)),
        )
    } else {
        (
            points.iter().skip(1).map(|p| p.value).sum::<f64>(),
            seconds(last.time.saturating_sub(first.time)),
        )
    };
    if span <= 0.0 { 0.0 } else { increase / span }
}

/// Histogram bucket counts for a quantile: either as of the latest point
/// (`last_one`) or the observations made inside the window (`rate`).
pub fn bucket_counts(
    op: Operation,
    points: &[&DistributionPoint],
    temporality: Temporality,
) -> Option<Vec<f64>> {
    let last = points.last()?;
    match op {
        Operation::LastOne => Some(last.buckets.iter().map(|&c| c as f64).collect()),
        Operation::Rate => {
            let mut total = vec![0.0; last.buckets.len()];
            match temporality {
                Temporality::Delta => {
                    let width = total.len();
                    for point in points.iter().filter(|p| p.buckets.len() == width) {
                        add_into(&mut total, point.buckets.iter().map(|&c| c as f64));
                    }
                }
                Temporality::Cumulative => {
                    for pair in points.windows(2) {
                        let (previous, current) = (pair[0], pair[1]);
                        if current.buckets.len() != total.len() {
                            continue;
                        }
                        let reset = current.count < previous.count
                            || previous.buckets.len() != current.buckets.len()
                            || current
                                .buckets
                                .iter()
                                .zip(previous.buckets.iter())
                                .any(|(c, p)| c < p)
                            || (previous.start != 0
                                && current.start != 0
                                && previous.start != current.start);
                        if reset {
                            add_into(&mut total, current.buckets.iter().map(|&c| c as f64));
                        } else {
                            add_into(
                                &mut total,
                                current
                                    .buckets
                                    .iter()
                                    .zip(previous.buckets.iter())
                                    .map(|(c, p)| (c - p) as f64),
                            );
                        }
                    }
                }
            }
            Some(total)
        }
        _ => None,
    }
}

fn add_into(total: &mut [f64], values: impl Iterator<Item = f64>) {
    for (slot, value) in total.iter_mut().zip(values) {
        *slot += value;
    }
}

/// Prometheus-style quantile over explicit buckets: linear interpolation
/// inside the bucket holding the rank, the first bucket starting at 0 and
/// the +Inf bucket answered by the highest finite bound. `None` when there
/// are no observations.
pub fn quantile_from_buckets(q: f64, bounds: &[f64], counts: &[f64]) -> Option<f64> {
    let total: f64 = counts.iter().sum();
    if total <= 0.0 || counts.len() != bounds.len() + 1 {
        return None;
    }
    let rank = q * total;
    let mut cumulative = 0.0;
    for (i, &count) in counts.iter().enumerate() {
        let before = cumulative;
        cumulative += count;
        if count <= 0.0 || cumulative < rank {
            continue;
        }
        let Some(&upper) = bounds.get(i) else {
            return bounds.last().copied();
        };
        let lower = match i {
            0 if upper > 0.0 => 0.0,
            0 => upper,
            _ => bounds[i - 1],
        };
        return Some(lower + (upper - lower) * ((rank - before) / count));
    }
    bounds.last().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = NANOS_PER_SECOND;

    fn series(values: &[f64], step_seconds: u64) -> Vec<ScalarPoint> {
        values
            .iter()
            .enumerate()
            .map(|(i, &value)| ScalarPoint {
                time: 1000 * S + i as u64 * step_seconds * S,
                start: 0,
                value,
            })
            .collect()
    }

    #[test]
    fn reference_rate_example_with_reset() {
        // The case from otel-add-on's tests: 1,3,4,6,7,9,10,0,1 ten seconds
        // apart is 10 of increase over 80 s.
        let points = series(&[1., 3., 4., 6., 7., 9., 10., 0., 1.], 10);
        assert_eq!(
            reduce(Operation::Rate, &points, Temporality::Cumulative),
            Some(0.125)
        );
    }

    #[test]
    fn every_operation_on_a_gauge() {
        let points = series(&[4., 2., 9., 5.], 5);
        let gauge = Temporality::Cumulative;
        assert_eq!(reduce(Operation::LastOne, &points, gauge), Some(5.0));
        assert_eq!(reduce(Operation::Avg, &points, gauge), Some(5.0));
        assert_eq!(reduce(Operation::Max, &points, gauge), Some(9.0));
        assert_eq!(reduce(Operation::Min, &points, gauge), Some(2.0));
        assert_eq!(reduce(Operation::Count, &points, gauge), Some(4.0));
        // Increases 0 (reset to 2 counts 2), 7, reset to 5 counts 5: 14 over 15 s.
        assert_eq!(reduce(Operation::Rate, &points, gauge), Some(14.0 / 15.0));
        assert_eq!(reduce(Operation::Avg, &[], gauge), None);
    }

    #[test]
    fn single_point_series_is_well_defined() {
        // otel-add-on errors on min of a one-sample series; here it is the value.
        let points = series(&[-3.0], 5);
        assert_eq!(
            reduce(Operation::Min, &points, Temporality::Cumulative),
            Some(-3.0)
        );
        assert_eq!(
            reduce(Operation::Max, &points, Temporality::Cumulative),
            Some(-3.0)
        );
        assert_eq!(
            reduce(Operation::Rate, &points, Temporality::Cumulative),
            Some(0.0)
        );
    }

    #[test]
    fn reset_detected_from_start_time_without_a_drop() {
        let mut points = series(&[100., 110., 120.], 10);
        for p in &mut points[..2] {
            p.start = 1;
        }
        // The counter restarted at 2 and had already reached 120 when scraped.
        points[2].start = 2;
        assert_eq!(
            reduce(Operation::Rate, &points, Temporality::Cumulative),
            Some((10.0 + 120.0) / 20.0)
        );
    }

    #[test]
    fn delta_rate_with_and_without_start_times() {
        let mut points = series(&[3., 4., 5.], 10);
        assert_eq!(
            reduce(Operation::Rate, &points, Temporality::Delta),
            Some(9.0 / 20.0)
        );
        for p in &mut points {
            p.start = p.time - 10 * S;
        }
        assert_eq!(
            reduce(Operation::Rate, &points, Temporality::Delta),
            Some(12.0 / 30.0)
        );
        assert_eq!(
            reduce(Operation::Avg, &points, Temporality::Delta),
            Some(4.0)
        );
    }

    #[test]
    fn quantile_interpolates_like_prometheus() {
        let bounds = [0.1, 0.5, 1.0];
        // 10 in (0,0.1], 30 in (0.1,0.5], 50 in (0.5,1], 10 above 1.
        let counts = [10.0, 30.0, 50.0, 10.0];
        assert_eq!(quantile_from_buckets(0.1, &bounds, &counts), Some(0.1));
        let p50 = quantile_from_buckets(0.5, &bounds, &counts).unwrap();
        assert!((p50 - (0.5 + 0.5 * 10.0 / 50.0)).abs() < 1e-12, "{p50}");
        assert_eq!(quantile_from_buckets(0.95, &bounds, &counts), Some(1.0));
        assert_eq!(quantile_from_buckets(0.5, &bounds, &[0.0; 4]), None);
        assert_eq!(
            quantile_from_buckets(0.5, &bounds, &[1.0; 3]),
            None,
            "layout mismatch"
        );
    }

    fn hist(time: u64, start: u64, buckets: &[u64]) -> DistributionPoint {
        DistributionPoint {
            time,
            start,
            count: buckets.iter().sum::<u64>() as f64,
            sum: 0.0,
            buckets: buckets.into(),
            quantiles: Box::new([]),
        }
    }

    #[test]
    fn bucket_increase_over_window_handles_reset() {
        let a = hist(10 * S, 1, &[1, 1, 0]);
        let b = hist(20 * S, 1, &[3, 2, 0]);
        let c = hist(30 * S, 2, &[1, 0, 1]);
        let points = [&a, &b, &c];
        assert_eq!(
            bucket_counts(Operation::Rate, &points, Temporality::Cumulative),
            Some(vec![3.0, 1.0, 1.0])
        );
        assert_eq!(
            bucket_counts(Operation::LastOne, &points, Temporality::Cumulative),
            Some(vec![1.0, 0.0, 1.0])
        );
        assert_eq!(
            bucket_counts(Operation::Rate, &points, Temporality::Delta),
            Some(vec![5.0, 3.0, 1.0])
        );
        assert_eq!(
            bucket_counts(Operation::Avg, &points, Temporality::Cumulative),
            None
        );
    }
}
