//! Scores of one run (SLO attainment counted from arrival, GPU-hours from
//! pod creation, scale events and flaps) and their spread over seeds.

use crate::sim::{RunResult, Slo};

#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct Score {
    pub requests: usize,
    /// Share meeting TTFT and mean TPOT; dropped or unfinished count as misses.
    pub attainment: f64,
    pub ttft_attainment: f64,
    pub tpot_attainment: f64,
    pub ttft_p50: f64,
    pub ttft_p90: f64,
    pub ttft_p99: f64,
    pub gpu_hours: f64,
    /// Mean provisioned replicas over the episode.
    pub avg_replicas: f64,
    pub scale_events: usize,
    /// Sum of |replica changes|.
    pub replicas_moved: u32,
    /// Direction reversals closer together than the cold start.
    pub flaps: usize,
    pub aborted: usize,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx]
}

pub fn score(run: &RunResult, slo: Slo, cold_start_s: f64) -> Score {
    let n = run.requests.len();
    let (mut both, mut ttft_ok, mut tpot_ok, mut aborted) = (0usize, 0usize, 0usize, 0usize);
    let mut ttfts = Vec::with_capacity(n);
    for r in &run.requests {
        aborted += usize::from(r.aborted);
        if !r.finished {
            continue;
        }
        let t_ok = r.ttft.is_some_and(|t| t <= slo.ttft_s);
        // One-token answers have no TPOT; they cannot miss it.
        let p_ok = r.tpot.is_none_or(|t| t <= slo.tpot_s);
        ttft_ok += usize::from(t_ok);
        tpot_ok += usize::from(p_ok);
        both += usize::from(t_ok && p_ok);
        if let Some(t) = r.ttft {
            ttfts.push(t);
        }
    }
    ttfts.sort_by(f64::total_cmp);
    let mut flaps = 0;
    for pair in run.changes.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        let up_then_down = a.to > a.from && b.to < b.from;
        let down_then_up = a.to < a.from && b.to > b.from;
        if (up_then_down || down_then_up) && b.at - a.at < cold_start_s {
            flaps += 1;
        }
    }
    let share = |k: usize| if n == 0 { 1.0 } else { k as f64 / n as f64 };
    Score {
        requests: n,
        attainment: share(both),
        ttft_attainment: share(ttft_ok),
        tpot_attainment: share(tpot_ok),
        ttft_p50: percentile(&ttfts, 0.5),
        ttft_p90: percentile(&ttfts, 0.9),
        ttft_p99: percentile(&ttfts, 0.99),
        gpu_hours: run.replica_seconds * f64::from(run.gpus_per_replica) / 3600.0,
        avg_replicas: if run.episode_end > 0.0 {
            run.replica_seconds / run.episode_end
        } else {
            0.0
        },
        scale_events: run.changes.len(),
        replicas_moved: run.changes.iter().map(|c| c.from.abs_diff(c.to)).sum(),
        flaps,
        aborted,
    }
}

/// Mean and 95 % confidence half-width (Student t) of a sample.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Estimate {
    pub mean: f64,
    pub half_width: f64,
}

pub fn estimate(xs: &[f64]) -> Estimate {
    let n = xs.len();
    if n == 0 {
        return Estimate {
            mean: f64::NAN,
            half_width: f64::NAN,
        };
    }
    let mean = xs.iter().sum::<f64>() / n as f64;
    if n == 1 {
        return Estimate {
            mean,
            half_width: 0.0,
        };
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    // t(0.975, n − 1); 1.96 beyond the table.
    const T: [f64; 10] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    ];
    let t = T.get(n - 2).copied().unwrap_or(1.96);
    Estimate {
        mean,
        half_width: t * (var / n as f64).sqrt(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{RequestOutcome, ScaleChange};

    fn run(requests: Vec<RequestOutcome>, changes: Vec<ScaleChange>) -> RunResult {
        RunResult {
            requests,
            timeline: vec![],
            changes,
            replica_seconds: 7200.0,
            gpus_per_replica: 2,
            episode_end: 3600.0,
            clipped_prompts: 0,
            simulated_until: 3600.0,
            metric_issues: Default::default(),
        }
    }

    fn done(ttft: f64, tpot: f64) -> RequestOutcome {
        RequestOutcome {
            ttft: Some(ttft),
            tpot: Some(tpot),
            finished: true,
            ..Default::default()
        }
    }

    #[test]
    fn attainment_counts_both_slos_and_misses() {
        let slo = Slo {
            ttft_s: 3.0,
            tpot_s: 0.1,
        };
        let reqs = vec![
            done(1.0, 0.05),
            done(4.0, 0.05),
            done(1.0, 0.2),
            RequestOutcome {
                aborted: true,
                ..Default::default()
            },
        ];
        let s = score(&run(reqs, vec![]), slo, 100.0);
        assert_eq!(s.attainment, 0.25);
        assert_eq!(s.ttft_attainment, 0.5);
        assert_eq!(s.aborted, 1);
        assert_eq!(s.gpu_hours, 4.0);
        assert_eq!(s.avg_replicas, 2.0);
    }

    #[test]
    fn flaps_are_quick_reversals() {
        let c = |at, from, to| ScaleChange { at, from, to };
        let changes = vec![c(0.0, 1, 3), c(50.0, 3, 2), c(400.0, 2, 4), c(410.0, 4, 5)];
        let s = score(
            &run(vec![], changes),
            Slo {
                ttft_s: 1.0,
                tpot_s: 1.0,
            },
            100.0,
        );
        assert_eq!((s.flaps, s.scale_events, s.replicas_moved), (1, 4, 6));
    }

    #[test]
    fn estimate_uses_student_t() {
        let e = estimate(&[1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(e.mean, 3.0);
        assert!((e.half_width - 2.776 * (2.5f64 / 5.0).sqrt()).abs() < 1e-9);
    }
}
