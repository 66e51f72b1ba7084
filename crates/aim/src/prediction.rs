//! The lab's prediction of a demo run, beside what the live loop did: the
//! same arrivals, the same AIMService, the HPA behaviour read from the live
//! HPA, the bed's sync period, the sidecar's scrape interval and the
//! scaler's window, on virtual time. Both sides are reduced to figures by
//! the same code ([`episode`]), so the gap is the model's, not the
//! measurement's.

use aim_engine::Profile;
use aim_lab::control::Controller;
use aim_lab::sim::{Router, RunResult, SimConfig};
use aim_lab::trace::Arrival;
use aim_policy::hpa::Behavior;

/// One look at the replica counts, live (every 2 s) or in the lab (every 1 s).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Seconds since the load step began.
    pub t: f64,
    /// Pods that exist and are not being deleted (billed), ready or not.
    pub pods: u32,
    pub ready: u32,
    /// The HPA's desired replicas.
    pub desired: u32,
}

/// What one episode (load step, then quiet) came to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    pub first_scale_up_s: Option<f64>,
    pub peak_ready: u32,
    pub peak_ready_at_s: Option<f64>,
    pub back_to_one_s: Option<f64>,
    /// ∫ (pods − 1) dt until back at one pod: what the step cost above the floor.
    pub extra_replica_seconds: f64,
    pub completed: u64,
    pub failed: u64,
    pub ttft_p50_ms: Option<f64>,
    pub ttft_p99_ms: Option<f64>,
}

/// Replica figures of a sample series; the load stops at `load_for`.
pub fn episode(samples: &[Sample], load_for: f64) -> Figures {
    let mut f = Figures {
        peak_ready: samples.first().map_or(0, |s| s.ready),
        ..Default::default()
    };
    for (i, s) in samples.iter().enumerate() {
        if f.first_scale_up_s.is_none() && s.desired > 1 {
            f.first_scale_up_s = Some(s.t);
        }
        if s.ready > f.peak_ready {
            f.peak_ready = s.ready;
            f.peak_ready_at_s = Some(s.t);
        }
        if let Some(next) = samples.get(i + 1) {
            f.extra_replica_seconds += f64::from(s.pods.saturating_sub(1)) * (next.t - s.t);
        }
        let scaled_out = f.peak_ready > 1;
        if s.t >= load_for && scaled_out && s.desired == 1 && s.ready == 1 && s.pods == 1 {
            f.back_to_one_s = Some(s.t);
            break;
        }
    }
    f
}

/// Nearest-rank percentile of `values` (unsorted), `q` in [0, 1].
fn percentile(values: &mut [f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    Some(values[rank - 1])
}

/// The lab run's figures, measured as the live run's are.
pub fn figures_of_lab(run: &RunResult, load_for: f64) -> Figures {
    let samples: Vec<Sample> = run
        .timeline
        .iter()
        .map(|p| Sample {
            t: p.at,
            pods: p.provisioned,
            ready: p.ready,
            desired: p.spec,
        })
        .collect();
    let mut f = episode(&samples, load_for);
    let mut ttft_ms: Vec<f64> = run
        .requests
        .iter()
        .filter_map(|r| r.ttft.map(|t| t * 1000.0))
        .collect();
    f.ttft_p50_ms = percentile(&mut ttft_ms, 0.5);
    f.ttft_p99_ms = percentile(&mut ttft_ms, 0.99);
    f.completed = run.requests.iter().filter(|r| r.finished).count() as u64;
    f.failed = run.requests.len() as u64 - f.completed;
    f
}

/// The live HPA's `behavior` as the lab runs it: the shared translation's
/// reading, with the API server's defaults where a field is left out.
pub use aim_scaling::behavior_of;

/// Everything about the live loop the lab needs to replay it.
#[derive(Debug, Clone)]
pub struct LiveLoop {
    /// The AIMService manifest the demo applied.
    pub manifest: String,
    /// The live HPA's behaviour.
    pub behavior: Behavior,
    /// The aim-engine profile every simulator runs.
    pub profile: String,
    pub cold_start_s: f64,
    /// kube-controller-manager's HPA sync period.
    pub hpa_sync_s: f64,
    /// The scrape interval: the sidecar's (the OpenTelemetryCollector's),
    /// or the PodMonitor's on the Prometheus path.
    pub scrape_interval_s: f64,
    /// The metric goes through Prometheus (KEDA's prometheus scaler). Live,
    /// Prometheus scrapes each pod at a phase of its own; the lab draws
    /// those phases from the run's seed, so each draw takes another seed.
    pub prometheus: bool,
    /// The scaler's averaging window.
    pub scaler_window_s: f64,
    pub load_for_s: f64,
    /// How long the live view watched after the load stopped.
    pub watch_after_s: f64,
}

/// How many scrape/sync phase pairs [`predict_phases`] tries.
pub const PHASE_DRAWS: usize = 9;

/// Runs the lab on the live run's arrivals with the live loop's settings,
/// at `draws` phases of the first scrape and the first
/// HPA sync, spread evenly over their periods (a live cluster's phases are
/// whatever the processes' start times made them): the range of the
/// prediction, and the run of the middle draw for the chart.
pub fn predict_phases(
    live: &LiveLoop,
    arrivals: &[Arrival],
    draws: usize,
) -> anyhow::Result<(Vec<Figures>, RunResult)> {
    let draws = draws.max(1);
    let mut figures = Vec::with_capacity(draws);
    let mut middle = None;
    for i in 0..draws {
        // Two interleaved even spreads, so the pairs cover the square of
        // (scrape phase, sync phase) rather than its diagonal.
        let sync = (i as f64 + 0.5) / draws as f64;
        let scrape = ((i * 5 % draws) as f64 + 0.5) / draws as f64;
        let ticks = (scrape * live.scrape_interval_s, sync * live.hpa_sync_s);
        let (f, run) = predict_at(live, arrivals, Some(ticks), i as u64 + 1)?;
        figures.push(f);
        if i == draws / 2 {
            middle = Some(run);
        }
    }
    Ok((figures, middle.expect("at least one draw")))
}

/// One lab run of the live loop; `first_ticks` `None` aligns the scrape
/// and the HPA sync (the lab's default).
fn predict_at(
    live: &LiveLoop,
    arrivals: &[Arrival],
    first_ticks: Option<(f64, f64)>,
    draw: u64,
) -> anyhow::Result<(Figures, RunResult)> {
    let profile = Profile::named(&live.profile)
        .ok_or_else(|| anyhow::anyhow!("the lab has no profile {:?}", live.profile))?;
    let mut keda = aim_lab::manifest::parse(&live.manifest, live.scaler_window_s)?;
    keda.set_behavior(live.behavior.clone());
    let mut cfg = SimConfig::new(profile);
    cfg.cold_start_s = live.cold_start_s;
    // Every simulator waits exactly its startup delay.
    cfg.cold_start_jitter = 0.0;
    cfg.hpa_sync_s = live.hpa_sync_s;
    cfg.scrape_interval_s = live.scrape_interval_s;
    // The pod runner stops a simulator as soon as its pod is being deleted.
    cfg.drain_grace_s = 0.0;
    // `aim load` spreads requests round-robin over the ready endpoints.
    cfg.router = Router::RoundRobin;
    cfg.initial_replicas = 1;
    cfg.sample_interval_s = 1.0;
    cfg.first_ticks = first_ticks;
    if live.prometheus {
        cfg.seed = draw;
    }
    let last = arrivals.last().map_or(0.0, |a| a.at);
    cfg.tail_s = (live.load_for_s + live.watch_after_s - last).max(0.0);
    let run = aim_lab::sim::run(
        &cfg,
        arrivals,
        &mut Controller::Keda(Box::new(keda)),
        &mut |_| {},
    )?;
    Ok((figures_of_lab(&run, live.load_for_s), run))
}

/// The median of the draws' values and their range, e.g. "16 s (11–19)";
/// draws where the figure never happened are counted.
fn spread(values: &[Option<f64>], unit: &str) -> String {
    let mut seen: Vec<f64> = values.iter().flatten().copied().collect();
    let never = values.len() - seen.len();
    let Some(median) = percentile(&mut seen, 0.5) else {
        return "never".into();
    };
    let (lo, hi) = (seen[0], seen[seen.len() - 1]);
    let mut text = if lo == hi {
        format!("{median:.0}{unit}")
    } else {
        format!("{median:.0}{unit} ({lo:.0}–{hi:.0})")
    };
    if never > 0 {
        text.push_str(&format!(", never in {never}"));
    }
    text
}

/// The two columns, one figure per line: the lab's median over its phase
/// draws with their range, and the live run's figure.
pub fn side_by_side(lab: &[Figures], live: &Figures) -> String {
    let secs = |v: Option<f64>| v.map_or("never".to_string(), |v| format!("{v:.0} s"));
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0} ms"));
    let each = |f: fn(&Figures) -> Option<f64>| lab.iter().map(f).collect::<Vec<_>>();
    let rows = [
        (
            "load step → first scale-up decision",
            spread(&each(|f| f.first_scale_up_s), " s"),
            secs(live.first_scale_up_s),
        ),
        (
            "peak Ready replicas",
            spread(&each(|f| Some(f64::from(f.peak_ready))), ""),
            live.peak_ready.to_string(),
        ),
        (
            "load step → peak Ready",
            spread(&each(|f| f.peak_ready_at_s), " s"),
            secs(live.peak_ready_at_s),
        ),
        (
            "load step → back to 1 replica",
            spread(&each(|f| f.back_to_one_s), " s"),
            secs(live.back_to_one_s),
        ),
        (
            "replica-seconds above 1",
            spread(&each(|f| Some(f.extra_replica_seconds)), ""),
            format!("{:.0}", live.extra_replica_seconds),
        ),
        (
            "requests failed",
            spread(&each(|f| Some(f.failed as f64)), ""),
            format!("{} (of {})", live.failed, live.completed + live.failed),
        ),
        (
            "TTFT p50",
            spread(&each(|f| f.ttft_p50_ms), " ms"),
            ms(live.ttft_p50_ms),
        ),
        (
            "TTFT p99",
            spread(&each(|f| f.ttft_p99_ms), " ms"),
            ms(live.ttft_p99_ms),
        ),
    ];
    let mut out = format!(
        "    {:<38} {:>24} {:>12}\n",
        "",
        format!("lab, median (range of {})", lab.len()),
        "live"
    );
    for (what, l, r) in rows {
        out.push_str(&format!("    {what:<38} {l:>24} {r:>12}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::autoscaling::v2::HPAScalingPolicy;

    fn s(t: f64, pods: u32, ready: u32, desired: u32) -> Sample {
        Sample {
            t,
            pods,
            ready,
            desired,
        }
    }

    #[test]
    fn an_episode_is_read_off_its_samples() {
        let samples = [
            s(0.0, 1, 1, 1),
            s(2.0, 1, 1, 1),
            s(4.0, 3, 1, 3),
            s(6.0, 3, 2, 3),
            s(8.0, 3, 3, 3),
            s(20.0, 3, 3, 1),
            s(22.0, 1, 1, 1),
            s(24.0, 1, 1, 1),
        ];
        let f = episode(&samples, 10.0);
        assert_eq!(f.first_scale_up_s, Some(4.0));
        assert_eq!((f.peak_ready, f.peak_ready_at_s), (3, Some(8.0)));
        assert_eq!(f.back_to_one_s, Some(22.0));
        // Two extra pods from 4 s to 22 s.
        assert_eq!(f.extra_replica_seconds, 36.0);
        // One replica before the load ends is not "back": it never left.
        let flat = episode(&[s(0.0, 1, 1, 1), s(30.0, 1, 1, 1)], 10.0);
        assert_eq!((flat.first_scale_up_s, flat.back_to_one_s), (None, None));
        // Still scaled out when the view ends.
        let stuck = episode(&samples[..6], 10.0);
        assert_eq!(stuck.back_to_one_s, None);
    }

    #[test]
    fn a_spread_is_the_median_and_range_and_counts_the_nevers() {
        assert_eq!(
            spread(&[Some(12.0), Some(9.0), Some(15.0)], " s"),
            "12 s (9–15)"
        );
        assert_eq!(spread(&[Some(3.0), Some(3.0)], ""), "3");
        assert_eq!(spread(&[Some(20.0), None], " s"), "20 s, never in 1");
        assert_eq!(spread(&[None, None], " s"), "never");
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentile(&mut v, 0.5), Some(50.0));
        assert_eq!(percentile(&mut v, 0.99), Some(99.0));
        assert_eq!(percentile(&mut [], 0.5), None);
    }

    #[test]
    fn a_live_behavior_becomes_the_labs() {
        use aim_policy::hpa::{PolicyKind, RatePolicy, SelectPolicy};
        use k8s_openapi::api::autoscaling::v2::{HPAScalingRules, HorizontalPodAutoscalerBehavior};
        let live = HorizontalPodAutoscalerBehavior {
            scale_down: Some(HPAScalingRules {
                stabilization_window_seconds: Some(10),
                select_policy: Some("Min".into()),
                policies: Some(vec![HPAScalingPolicy {
                    type_: "Pods".into(),
                    value: 2,
                    period_seconds: 30,
                }]),
                ..Default::default()
            }),
            scale_up: None,
        };
        let b = behavior_of(Some(&live));
        assert_eq!(b.scale_down.stabilization_window_seconds, 10);
        assert_eq!(b.scale_down.select, SelectPolicy::Min);
        assert_eq!(
            b.scale_down.policies,
            vec![RatePolicy {
                kind: PolicyKind::Pods,
                value: 2,
                period_seconds: 30
            }]
        );
        assert_eq!(b.scale_up, Behavior::default().scale_up);
        assert_eq!(behavior_of(None), Behavior::default());
    }

    /// The bed's loop on a step that needs about three replicas: the lab
    /// scales out after the step, within the manifest's bounds, and back to
    /// one after it.
    #[test]
    fn the_bed_loop_scales_a_step_out_and_back() {
        let manifest = include_str!("../../../examples/seeds/aim-basic-autoscaling.yaml");
        let mut behavior = Behavior::default();
        behavior.scale_down.stabilization_window_seconds = 10;
        let live = LiveLoop {
            manifest: manifest.into(),
            behavior,
            profile: "qwen3-32b-2xh100".into(),
            cold_start_s: 10.0,
            hpa_sync_s: 5.0,
            scrape_interval_s: 5.0,
            prometheus: false,
            scaler_window_s: 10.0,
            load_for_s: 90.0,
            watch_after_s: 120.0,
        };
        // One request every 2 s, each holding a slot for ~several seconds.
        let arrivals: Vec<Arrival> = (0..45)
            .flat_map(|i| {
                (0..3).map(move |k| Arrival {
                    at: f64::from(i) * 2.0 + f64::from(k) * 0.5,
                    prompt_tokens: 256,
                    output_tokens: 200,
                    hash_ids: vec![],
                })
            })
            .collect();
        let (f, run) = predict_at(&live, &arrivals, None, 1).unwrap();
        // Unaligned phases can only make the HPA read older data: the
        // spread of first decisions starts no earlier than the aligned one.
        let (draws, _) = predict_phases(&live, &arrivals, 5).unwrap();
        assert_eq!(draws.len(), 5);
        let earliest = draws
            .iter()
            .filter_map(|d| d.first_scale_up_s)
            .fold(f64::INFINITY, f64::min);
        assert!(
            earliest + 5.0 >= f.first_scale_up_s.unwrap(),
            "phase draws decided at {earliest} s, aligned at {:?}",
            f.first_scale_up_s
        );
        let up = f.first_scale_up_s.expect("never scaled out");
        assert!(up > 0.0 && up < 30.0, "first scale-up at {up} s");
        assert!((2..=4).contains(&f.peak_ready), "peak {}", f.peak_ready);
        let back = f.back_to_one_s.expect("never back at one replica");
        assert!(back > 90.0 && back < 210.0, "back at one at {back} s");
        assert!(run.timeline.iter().all(|p| p.spec <= 4));
        assert_eq!(f.completed + f.failed, arrivals.len() as u64);
    }
}
