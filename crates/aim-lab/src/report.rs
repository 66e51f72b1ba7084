//! Tables and charts of an [`Outcome`](crate::experiment::Outcome).

use std::fmt::Write;

use crate::chart::{PALETTE, Panel, Series, render};
use crate::experiment::{Outcome, Row};
use crate::score::{Estimate, estimate};

fn est(row: &Row, f: impl Fn(&crate::score::Score) -> f64) -> Estimate {
    estimate(&row.scores.iter().map(f).collect::<Vec<_>>())
}

fn pm(e: Estimate, scale: f64, digits: usize) -> String {
    if e.half_width > 0.0 {
        format!(
            "{:.digits$} ± {:.digits$}",
            e.mean * scale,
            e.half_width * scale
        )
    } else {
        format!("{:.digits$}", e.mean * scale)
    }
}

/// The lower bound's GPU-hours, averaged over seeds.
pub fn bound_gpu_hours(outcome: &Outcome) -> f64 {
    let n = outcome.bounds.len().max(1) as f64;
    outcome.bounds.iter().map(|b| b.gpu_hours).sum::<f64>() / n
}

/// A Markdown table: attainment, TTFT percentiles, GPU-hours and their
/// ratios to the lower bound, the hindsight plan and static peak, scale
/// events and flaps.
pub fn table(outcome: &Outcome) -> String {
    let gpu = |name: &str| {
        outcome
            .rows
            .iter()
            .find(|r| r.name == name)
            .map(|r| est(r, |s| s.gpu_hours).mean)
            .unwrap_or(f64::NAN)
    };
    let (bound, hindsight, peak) = (
        bound_gpu_hours(outcome),
        gpu("hindsight"),
        gpu("static-peak"),
    );
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| policy | SLO attainment % | TTFT ok % | TPOT ok % | TTFT p50 / p90 / p99 s | GPU-hours | × bound | × hindsight | × static peak | avg replicas | scale events | flaps |"
    );
    let _ = writeln!(
        s,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for row in &outcome.rows {
        let g = est(row, |s| s.gpu_hours);
        let flag = if issues_of(row).any() { " ⚠" } else { "" };
        let _ = writeln!(
            s,
            "| {}{flag} | {} | {:.2} | {:.2} | {:.2} / {:.2} / {:.2} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} | {:.1} |",
            row.name,
            pm(est(row, |s| s.attainment), 100.0, 2),
            est(row, |s| s.ttft_attainment).mean * 100.0,
            est(row, |s| s.tpot_attainment).mean * 100.0,
            est(row, |s| s.ttft_p50).mean,
            est(row, |s| s.ttft_p90).mean,
            est(row, |s| s.ttft_p99).mean,
            pm(g, 1.0, 2),
            g.mean / bound,
            g.mean / hindsight,
            g.mean / peak,
            est(row, |s| s.avg_replicas).mean,
            est(row, |s| s.scale_events as f64).mean,
            est(row, |s| s.flaps as f64).mean,
        );
    }
    s
}

/// A row's Prometheus query issues, summed over its seeds.
fn issues_of(row: &Row) -> crate::prom::MetricIssues {
    let mut all = crate::prom::MetricIssues::default();
    for i in &row.issues {
        all.add(i);
    }
    all
}

/// What a ⚠ in the table means, row by row: KEDA could not read a
/// Prometheus query (so the HPA got no metric and held its replicas), or
/// read an empty result as 0. Empty when no row has an issue.
pub fn warnings(outcome: &Outcome) -> String {
    let mut s = String::new();
    for row in &outcome.rows {
        let i = issues_of(row);
        if !i.any() {
            continue;
        }
        let query = if row.queries.is_empty() {
            String::new()
        } else {
            format!(" `{}`", row.queries.join("`, `"))
        };
        let _ = write!(s, "\n⚠ **{}** (all seeds, scored episode):", row.name);
        if i.several_series > 0 {
            let _ = write!(
                s,
                " the query{query} returned up to {} series at {} of {} queries; KEDA's prometheus scaler refuses more than one (\"returned multiple elements\"), so the HPA got no metric at {} of {} syncs and held its replicas — aggregate the query (e.g. sum(…)).",
                i.most_series, i.several_series, i.queries, i.hpa_syncs_without_metric, i.hpa_syncs
            );
        } else if i.hpa_syncs_without_metric > 0 {
            let _ = write!(
                s,
                " the HPA got no metric at {} of {} syncs and held its replicas.",
                i.hpa_syncs_without_metric, i.hpa_syncs
            );
        }
        if i.empty > 0 {
            let _ = write!(
                s,
                " The query{query} returned no series at {} of {} queries (read as 0 while ignoreNullValues is true, else an error): check its selectors against the pods' labels.",
                i.empty, i.queries
            );
        }
        if i.other_errors > 0 {
            let _ = write!(
                s,
                " {} queries failed otherwise (an infinite value with ignoreNullValues false, or duplicate series in a vector match).",
                i.other_errors
            );
        }
        if i.nan > 0 {
            let _ = write!(
                s,
                " {} queries returned NaN, which KEDA hands on and the HPA reads as a huge negative number (down to its minimum).",
                i.nan
            );
        }
        s.push('\n');
    }
    s
}

/// Per-configuration chart: load, replicas (with the hindsight plan), queue
/// depth and p90 TTFT over time, for seed 1.
pub fn policy_chart(outcome: &Outcome, row: &Row, ttft_slo: f64) -> String {
    let tl = &row.example.timeline;
    let pts = |f: &dyn Fn(&crate::sim::TimelinePoint) -> f64| {
        tl.iter().map(|p| (p.at, f(p))).collect::<Vec<_>>()
    };
    let hindsight: Vec<(f64, f64)> = outcome
        .hindsight_plan
        .steps
        .iter()
        .map(|&(t, n)| (t.max(0.0), f64::from(n)))
        .chain(std::iter::once((
            row.example.episode_end,
            f64::from(outcome.hindsight_plan.at(row.example.episode_end)),
        )))
        .collect();
    let panels = [
        Panel {
            title: "load (requests/s, 10 s bins)",
            series: vec![Series {
                label: "arrivals",
                color: PALETTE[0],
                points: pts(&|p| p.load_rps),
                step: false,
            }],
            reference: None,
        },
        Panel {
            title: "replicas",
            series: vec![
                Series {
                    label: "provisioned",
                    color: PALETTE[1],
                    points: pts(&|p| f64::from(p.provisioned)),
                    step: true,
                },
                Series {
                    label: "ready",
                    color: PALETTE[2],
                    points: pts(&|p| f64::from(p.ready)),
                    step: true,
                },
                Series {
                    label: "hindsight plan",
                    color: PALETTE[7],
                    points: hindsight,
                    step: true,
                },
            ],
            reference: None,
        },
        Panel {
            title: "queue depth (waiting, incl. gateway)",
            series: vec![Series {
                label: "waiting",
                color: PALETTE[4],
                points: pts(&|p| f64::from(p.waiting)),
                step: false,
            }],
            reference: None,
        },
        Panel {
            title: "TTFT p90 over the last minute (s)",
            series: vec![Series {
                label: "ttft p90",
                color: PALETTE[3],
                points: pts(&|p| p.ttft_p90),
                step: false,
            }],
            reference: Some((ttft_slo, "SLO")),
        },
    ];
    render(
        &format!("{} (seed 1)", row.name),
        row.example.episode_end,
        &panels,
    )
}

/// All configurations' provisioned replicas on one panel, over the load.
pub fn compare_chart(outcome: &Outcome, title: &str) -> String {
    let Some(first) = outcome.rows.first() else {
        return render(title, 1.0, &[]);
    };
    let load: Vec<(f64, f64)> = first
        .example
        .timeline
        .iter()
        .map(|p| (p.at, p.load_rps))
        .collect();
    let series: Vec<Series<'_>> = outcome
        .rows
        .iter()
        .enumerate()
        .map(|(i, r)| Series {
            label: &r.name,
            color: PALETTE[i % PALETTE.len()],
            points: r
                .example
                .timeline
                .iter()
                .map(|p| (p.at, f64::from(p.provisioned)))
                .collect(),
            step: true,
        })
        .collect();
    let panels = [
        Panel {
            title: "load (requests/s)",
            series: vec![Series {
                label: "arrivals",
                color: "#444",
                points: load,
                step: false,
            }],
            reference: None,
        },
        Panel {
            title: "provisioned replicas",
            series,
            reference: None,
        },
    ];
    render(title, first.example.episode_end, &panels)
}
