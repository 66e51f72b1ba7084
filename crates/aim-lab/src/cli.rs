//! `aim lab run | compare | bench | tune-keda | fidelity`.

use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};

use aim_engine::Profile;

use crate::experiment::{Entry, Setup, compare};
use crate::sim::{Router, SimConfig, Slo};
use crate::synth::{Adversarial, Envelope, Lengths, enveloped_gamma, llmd_ramp};
use crate::trace::{Arrival, TraceFormat, block_bootstrap, load, scale_rate, slice};
use crate::{LabError, report};

#[derive(Debug, clap::Args)]
pub struct LabArgs {
    #[command(subcommand)]
    pub command: LabCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum LabCommand {
    /// Score one policy (or an AIMService manifest's autoscaling) on a workload.
    Run(RunArgs),
    /// Score several policies on the same workload, with the hindsight plan, static peak and lower bound.
    Compare(CompareArgs),
    /// Lab speed: simulated time over wall time on a trace.
    Bench(BenchArgs),
    /// Grid-search the seed-style KEDA knobs and pick "KEDA tuned as well as you can".
    TuneKeda(TuneArgs),
    /// Grid-search one aim policy's knobs the same way, and pick its
    /// cheapest setting that reaches the goal.
    TunePolicy(TunePolicyArgs),
    /// Trace-fidelity statistics: a synthetic workload next to its
    /// source trace (dispersion vs window, per-minute peak/mean and
    /// peak/trough, inter-arrival CV, KS distances on lengths, autocorrelation).
    Fidelity(FidelityArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Synthetic {
    /// A day-shaped sinusoidal envelope with near-Poisson arrivals (CV 1.1).
    Diurnal,
    /// The same envelope with bursty Gamma arrivals (CV 3).
    Bursty,
    /// llm-d's staged ramp: 2 → 10 → 1 rps, 4000/1000 tokens.
    LlmdRamp,
    /// Adversarial: a sudden 4× step up at a third of --duration, down at two thirds.
    Step,
    /// Adversarial: 30 s bursts at 4× every 300 s, shorter than a cold start.
    ShortBursts,
    /// Adversarial: a whole day's shape compressed into --duration.
    CompressedDay,
    /// Adversarial: linear ramps between plateaus, up in two stages and down in two.
    PlateauRamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Resample {
    Block,
    Jitter,
}

fn span(text: &str) -> Result<(f64, f64), String> {
    let (from, to) = text
        .split_once(':')
        .ok_or_else(|| format!("--span takes FROM:TO in seconds, e.g. 1800:3600, got {text:?}"))?;
    let parse = |v: &str| {
        v.trim()
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite() && *x >= 0.0)
    };
    match (parse(from), parse(to)) {
        (Some(f), Some(t)) if t > f => Ok((f, t)),
        _ => Err(format!(
            "--span takes FROM:TO with 0 ≤ FROM < TO seconds, e.g. 1800:3600, got {text:?}"
        )),
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct WorkloadArgs {
    /// A trace file: Azure CSV or Mooncake JSONL (e.g. traces/azure-llm-2023-conv.csv).
    #[arg(long, conflicts_with = "synthetic")]
    pub trace: Option<PathBuf>,
    #[arg(long, value_enum)]
    pub format: Option<TraceFormat>,
    /// A synthetic workload instead of a trace.
    #[arg(long, value_enum)]
    pub synthetic: Option<Synthetic>,
    /// Multiply the arrival rate (copies of each request, ±0.5 s), keeping time uncompressed.
    #[arg(long, default_value_t = 1.0)]
    pub rate_scale: f64,
    /// Only this part of the workload, FROM:TO in seconds (e.g. 0:1800 to
    /// tune on the first half-hour, 1800:3600 to score on the second).
    #[arg(long, value_parser = span)]
    pub span: Option<(f64, f64)>,
    /// How seeds after the first resample a trace: `block` is a local block
    /// bootstrap (60 s blocks, each drawn from its ±2 neighbours); `jitter`
    /// only shifts each request by up to ±0.5 s, as every seed of a trace
    /// does. Seed 1 is the trace as recorded (with that jitter).
    #[arg(long, value_enum, default_value_t = Resample::Block)]
    pub resample: Resample,
    /// Synthetic: length of the episode in seconds.
    #[arg(long, default_value_t = 7200.0)]
    pub duration: f64,
    /// Synthetic: mean requests/s.
    #[arg(long, default_value_t = 6.0)]
    pub mean_rps: f64,
    /// Synthetic: peak/trough ratio of the envelope.
    #[arg(long, default_value_t = 4.0)]
    pub peak_to_trough: f64,
    /// Synthetic: envelope period in seconds (a "day"; see docs/lab.md on compression).
    #[arg(long, default_value_t = 7200.0)]
    pub period: f64,
    #[arg(long, value_enum, default_value_t = Lengths::Conversation)]
    pub lengths: Lengths,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArgs {
    /// aim-engine latency profile of one replica.
    #[arg(long, default_value = "qwen3-32b-2xh100")]
    pub profile: String,
    /// Pod creation to Ready, seconds (T_w).
    #[arg(long, default_value_t = 100.0)]
    pub cold_start: f64,
    /// Cold-start spread: each pod's T_w is drawn uniformly within ± this fraction.
    #[arg(long, default_value_t = 0.1)]
    pub cold_start_jitter: f64,
    /// Metrics scrape interval, seconds: the OpenTelemetry collector's
    /// scrape of each pod, and Prometheus' (a ServiceMonitor's
    /// `interval`) for `type: prometheus` triggers and `prom[…]` rows
    /// that set no `scrape`.
    #[arg(long, default_value_t = 15.0)]
    pub scrape_interval: f64,
    /// HPA sync period, seconds: kube-controller-manager's
    /// --horizontal-pod-autoscaler-sync-period.
    #[arg(long, default_value_t = 15.0)]
    pub hpa_sync: f64,
    /// Seconds a removed pod's in-flight requests get to finish before they are aborted.
    #[arg(long, default_value_t = 120.0)]
    pub drain_grace: f64,
    /// Keep the loop running this long after the last arrival (timeline and
    /// billing included), to watch the scale-down.
    #[arg(long, default_value_t = 0.0)]
    pub tail: f64,
    /// With -f: the HPA scale-down stabilization window KServe writes into the
    /// ScaledObject (its inferenceservice-config `autoscaler.scaleDownStabilizationWindowSeconds`,
    /// 300 by default).
    #[arg(long, default_value_t = 300)]
    pub scale_down_window: u32,
    #[arg(long, default_value_t = 1)]
    pub min: u32,
    #[arg(long, default_value_t = 16)]
    pub max: u32,
    /// TTFT SLO, seconds.
    #[arg(long, default_value_t = 3.0)]
    pub ttft: f64,
    /// TPOT SLO, seconds.
    #[arg(long, default_value_t = 0.1)]
    pub tpot: f64,
    #[arg(long, value_enum, default_value_t = Router::LeastOutstanding)]
    pub router: Router,
    /// Seeds (arrival resampling, cold-start jitter); ≥ 5 gives confidence intervals worth reading.
    #[arg(long, default_value_t = 5)]
    pub seeds: u64,
    /// The first seed. Synthetic workloads draw new arrivals per seed, so
    /// tuning on seeds 1–5 and scoring on 6–10 (--first-seed 6) is a
    /// held-out evaluation.
    #[arg(long, default_value_t = 1)]
    pub first_seed: u64,
    /// Pre-roll before the scored episode, seconds: the workload's first
    /// WARMUP seconds mirrored in time run through the loop first, so
    /// engines, metrics and controllers start scoring warm. 0 starts cold.
    #[arg(long, default_value_t = 600.0)]
    pub warmup: f64,
    /// Scaler query window, seconds (aim-scaler's default).
    #[arg(long, default_value_t = 120.0)]
    pub window: f64,
    /// Reuse a measured per-replica capacity (requests/s) instead of measuring it.
    #[arg(long)]
    pub capacity_rps: Option<f64>,
    /// With --capacity-rps: requests in flight per replica at that rate.
    #[arg(long, requires = "capacity_rps")]
    pub capacity_in_flight: Option<f64>,
    /// Skip the hindsight plan's search and row (tuning grids, where only
    /// the grid's own rows are compared).
    #[arg(long)]
    pub no_hindsight: bool,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub workload: WorkloadArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// A scenario name (see `aim lab compare --help`) or an aim policy scenario.
    #[arg(long, default_value = "queue", conflicts_with = "file")]
    pub policy: String,
    /// A manifest whose autoscaling is scored: an AIMService (as the
    /// operator deploys it), a KEDA ScaledObject, or a KServe
    /// InferenceService with `autoscalerClass: keda` (as KServe builds its
    /// ScaledObject). `type: prometheus` triggers query the lab's
    /// Prometheus, scraping every --scrape-interval.
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Policy metadata overrides, `key=value`, repeatable.
    #[arg(long = "meta", value_parser = key_value)]
    pub meta: Vec<(String, String)>,
    /// Directory for the table and SVG charts.
    #[arg(long, default_value = "lab-out")]
    pub out: PathBuf,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// What a scoring command prints: the files under --out are written either
/// way.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct OutputArgs {
    /// stdout: `table`, the markdown table (as table.md), or `json`, every
    /// policy's per-seed scores (as scores.json), for scripts.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// No progress on stderr (a bar on a terminal, a line per finished run
    /// otherwise) and no "wrote" line; errors still print.
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    #[default]
    Table,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    #[command(flatten)]
    pub workload: WorkloadArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Scenarios: keda-seed, keda-seed-2, keda-tuned, aibrix, queue, slo, predictive, cost.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "keda-seed,keda-seed-2,keda-tuned,aibrix,queue,slo,predictive,cost"
    )]
    pub policies: Vec<String>,
    #[arg(long = "meta", value_parser = key_value)]
    pub meta: Vec<(String, String)>,
    #[arg(long, default_value = "lab-out")]
    pub out: PathBuf,
    /// A title for the report and charts.
    #[arg(long)]
    pub title: Option<String>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GridMetric {
    Value,
    AverageValue,
}

#[derive(Debug, clap::Args)]
pub struct TuneArgs {
    #[command(flatten)]
    pub workload: WorkloadArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// `Value` targets on the summed running requests (the seeds' trigger);
    /// `xK` means K × the in-flight requests one replica holds at c*.
    #[arg(long, value_delimiter = ',', default_value = "x1,x2,x3,x4,x6")]
    pub targets: Vec<String>,
    /// KEDA `pollingInterval` values, seconds.
    #[arg(long, value_delimiter = ',', default_value = "30")]
    pub polling: Vec<f64>,
    /// The trigger's target type: `value` (ready × sum / target, only on a
    /// ScaledObject written directly) or `average-value` (sum / target, what
    /// KServe deploys for the seeds).
    #[arg(long, value_enum, default_value_t = GridMetric::Value)]
    pub metric_type: GridMetric,
    /// KEDA `cooldownPeriod` values, seconds.
    #[arg(long, value_delimiter = ',', default_value = "300")]
    pub cooldown: Vec<f64>,
    /// HPA `behavior.scaleDown.stabilizationWindowSeconds` values.
    #[arg(long, value_delimiter = ',', default_value = "0,100,300")]
    pub down_window: Vec<u32>,
    #[command(flatten)]
    pub select: SelectArgs,
}

/// How a tuning grid picks its row, and where it writes.
#[derive(Debug, Clone, clap::Args)]
pub struct SelectArgs {
    /// Selection: the cheapest setting with at least this mean SLO
    /// attainment (percent); if none reaches it, the best attainment.
    #[arg(long, default_value_t = 99.0)]
    pub goal: f64,
    #[arg(long, default_value = "lab-out")]
    pub out: PathBuf,
    #[arg(long)]
    pub title: Option<String>,
}

/// Prints the row a tuning grid chose and writes it to `selected.txt`,
/// where `dev/lab-tables` reads it.
fn report_selected(chosen: &crate::experiment::Row, goal: f64, out: &Path) -> Result<(), LabError> {
    let mean = |f: fn(&crate::score::Score) -> f64| {
        chosen.scores.iter().map(f).sum::<f64>() / chosen.scores.len().max(1) as f64
    };
    let line = format!(
        "selected: {} ({:.2} % attainment, {:.2} GPU-hours; rule: fewest GPU-hours at ≥ {goal} % mean attainment, else best attainment)\n",
        chosen.name,
        mean(|s| s.attainment) * 100.0,
        mean(|s| s.gpu_hours),
    );
    print!("{line}");
    write(&out.join("selected.txt"), &line)
}

/// A grid target: a number, or `xK` = K × `in_flight` (one decimal).
fn grid_target(text: &str, in_flight: f64) -> Result<f64, LabError> {
    let bad = || LabError::Input(format!("--targets: expected a number or xK, got {text:?}"));
    let value = match text.trim().strip_prefix('x') {
        Some(k) => (k.parse::<f64>().map_err(|_| bad())? * in_flight * 10.0).round() / 10.0,
        None => text.trim().parse::<f64>().map_err(|_| bad())?,
    };
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(bad())
    }
}

fn tune(a: &TuneArgs) -> Result<(), LabError> {
    let capacity = measured_capacity(&a.workload, &a.cluster)?;
    let mut entries = Vec::new();
    for t in &a.targets {
        let target = grid_target(t, capacity.in_flight)?;
        for &polling_s in &a.polling {
            for &cooldown_s in &a.cooldown {
                for &down_window_s in &a.down_window {
                    let knobs = crate::scenario::KedaKnobs {
                        metric_type: match a.metric_type {
                            GridMetric::Value => aim_policy::keda::MetricType::Value,
                            GridMetric::AverageValue => aim_policy::keda::MetricType::AverageValue,
                        },
                        target,
                        polling_s,
                        cooldown_s,
                        down_window_s,
                    };
                    let name = knobs.name();
                    if crate::scenario::KedaKnobs::parse(&name) != Some(knobs) {
                        return Err(LabError::Input(format!(
                            "grid point {name} is not valid (targets and polling must be above 0)"
                        )));
                    }
                    if !entries.iter().any(|e: &Entry| e.label() == name) {
                        entries.push(Entry::Named(name));
                    }
                }
            }
        }
    }
    let cluster = ClusterArgs {
        capacity_rps: Some(capacity.rps),
        capacity_in_flight: Some(capacity.in_flight),
        ..a.cluster.clone()
    };
    let title = a.select.title.clone().unwrap_or_else(|| "KEDA grid".into());
    let outcome = run_compare(
        &a.workload,
        &cluster,
        entries,
        &[],
        &a.select.out,
        &title,
        &OutputArgs::default(),
    )?;
    let chosen = crate::experiment::select_tuned(&outcome.rows, a.select.goal / 100.0)
        .ok_or_else(|| LabError::Input("the grid is empty".into()))?;
    report_selected(chosen, a.select.goal, &a.select.out)
}

#[derive(Debug, clap::Args)]
pub struct TunePolicyArgs {
    #[command(flatten)]
    pub workload: WorkloadArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The policy scenario to tune: aibrix, queue, slo, predictive, cost, keda-tuned.
    #[arg(long)]
    pub policy: String,
    /// One knob and its values, KEY=V1,V2,…; repeat for a grid (every
    /// combination is run). `xK` values mean K × the in-flight requests one
    /// replica holds at c*, `cK` values K × c* in requests/s.
    #[arg(long = "grid", value_parser = key_value)]
    pub grid: Vec<(String, String)>,
    #[command(flatten)]
    pub select: SelectArgs,
}

fn measured_capacity(
    w: &WorkloadArgs,
    c: &ClusterArgs,
) -> Result<crate::capacity::Capacity, LabError> {
    Ok(match c.capacity_rps {
        Some(rps) => crate::capacity::Capacity {
            rps,
            in_flight: c.capacity_in_flight.unwrap_or(rps * 10.0),
        },
        None => {
            eprintln!("measuring c* ...");
            crate::experiment::measure_capacity(&sim_config(c)?, &workload(w)?(1))
        }
    })
}

/// Every combination of the grid's values, as `policy[k=v;…]` labels.
/// `xK` is K × the in-flight requests one replica holds at c*, `cK` is
/// K × c* (requests/s).
fn grid_labels(
    policy: &str,
    grid: &[(String, String)],
    capacity: &crate::capacity::Capacity,
) -> Result<Vec<String>, LabError> {
    let mut labels = vec![Vec::<String>::new()];
    for (key, values) in grid {
        let mut next = Vec::new();
        for v in values.split(',').map(str::trim).filter(|v| !v.is_empty()) {
            let v = if v.starts_with('x') {
                let value = grid_target(v, capacity.in_flight).map_err(|_| {
                    LabError::Input(format!(
                        "--grid {key}: expected a number, xK or cK, got {v:?}"
                    ))
                })?;
                format!("{value}")
            } else if let Some(k) = v.strip_prefix('c') {
                let k: f64 = k
                    .parse()
                    .ok()
                    .filter(|k: &f64| k.is_finite() && *k > 0.0)
                    .ok_or_else(|| {
                        LabError::Input(format!(
                            "--grid {key}: expected a number, xK or cK, got {v:?}"
                        ))
                    })?;
                format!("{:.4}", k * capacity.rps)
            } else {
                v.to_owned()
            };
            for l in &labels {
                let mut l = l.clone();
                l.push(format!("{key}={v}"));
                next.push(l);
            }
        }
        if next.is_empty() {
            return Err(LabError::Input(format!(
                "--grid {key}= has no values; write KEY=V1,V2"
            )));
        }
        labels = next;
    }
    Ok(labels
        .into_iter()
        .map(|l| {
            if l.is_empty() {
                policy.to_owned()
            } else {
                format!("{policy}[{}]", l.join(";"))
            }
        })
        .collect())
}

fn tune_policy(a: &TunePolicyArgs) -> Result<(), LabError> {
    let capacity = measured_capacity(&a.workload, &a.cluster)?;
    let labels = grid_labels(&a.policy, &a.grid, &capacity)?;
    // Fail on a bad knob before hours of runs, naming it.
    let ctx = crate::scenario::Context {
        capacity: capacity.clone(),
        cold_start_s: a.cluster.cold_start,
        min: a.cluster.min,
        max: a.cluster.max,
        window_s: a.cluster.window,
        ttft_s: a.cluster.ttft,
        tpot_s: a.cluster.tpot,
    };
    for l in &labels {
        crate::scenario::build(l, &ctx, &BTreeMap::new())?;
    }
    let cluster = ClusterArgs {
        capacity_rps: Some(capacity.rps),
        capacity_in_flight: Some(capacity.in_flight),
        ..a.cluster.clone()
    };
    let title = a
        .select
        .title
        .clone()
        .unwrap_or_else(|| format!("{} grid", a.policy));
    let entries: Vec<Entry> = labels.iter().cloned().map(Entry::Named).collect();
    let outcome = run_compare(
        &a.workload,
        &cluster,
        entries,
        &[],
        &a.select.out,
        &title,
        &OutputArgs::default(),
    )?;
    let candidates: Vec<_> = outcome
        .rows
        .iter()
        .filter(|r| labels.contains(&r.name))
        .cloned()
        .collect();
    let chosen = crate::experiment::select_cheapest(&candidates, a.select.goal / 100.0)
        .ok_or_else(|| LabError::Input("the grid is empty".into()))?;
    report_selected(chosen, a.select.goal, &a.select.out)
}

/// Here `--trace` is the source and the synthetic flags describe what is
/// compared with it, so the two are given together: the workload's
/// "one or the other" rule is lifted.
#[derive(Debug, clap::Args)]
#[command(mut_arg("trace", |a| a
    .conflicts_with(clap::builder::Resettable::Reset)
    .help("The source trace: Azure CSV or Mooncake JSONL (e.g. traces/azure-llm-2023-conv.csv)")))]
#[command(mut_arg("synthetic", |a| a
    .help("The synthetic workload compared with the source (with the other synthetic flags)")))]
// Without the other commands' per-seed ±0.5 s jitter: it would blur the
// 1 s statistics that are being measured.
#[command(mut_arg("rate_scale", |a| a
    .help("Multiply the arrival rate of both columns (copies of each request, no jitter)")))]
pub struct FidelityArgs {
    #[command(flatten)]
    pub workload: WorkloadArgs,
    /// Seed of the synthetic workload.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// The fidelity table: source vs synthetic, or whichever one was given.
fn fidelity(a: &FidelityArgs) -> Result<String, LabError> {
    use crate::fidelity::{Comparison, Fidelity};
    let w = &a.workload;
    let source = match &w.trace {
        Some(path) => {
            let base = load(path, w.format)?;
            if !(w.rate_scale.is_finite() && w.rate_scale > 0.0) {
                return Err(LabError::Input(format!(
                    "--rate-scale must be above 0, got {}",
                    w.rate_scale
                )));
            }
            let name = path.file_name().map_or_else(
                || path.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            Some((name, scale_rate(&base, w.rate_scale, 0)))
        }
        None => None,
    };
    let synthetic = match w.synthetic {
        Some(kind) => {
            let only_synthetic = WorkloadArgs {
                trace: None,
                ..w.clone()
            };
            let arrivals = workload(&only_synthetic)?(a.seed);
            if arrivals.is_empty() {
                return Err(LabError::Input(format!(
                    "--synthetic {} produced no requests (--duration {} s at --mean-rps {}); raise --duration or --mean-rps",
                    synthetic_name(kind),
                    w.duration,
                    w.mean_rps
                )));
            }
            Some((
                format!("synthetic {}, seed {}", synthetic_name(kind), a.seed),
                arrivals,
            ))
        }
        None => None,
    };
    Ok(match (source, synthetic) {
        (Some((sl, s)), Some((yl, y))) => Comparison::new(&s, &y).markdown(&sl, &yl),
        (Some((label, set)), None) | (None, Some((label, set))) => {
            Fidelity::of(&set).markdown(&label)
        }
        (None, None) => {
            return Err(LabError::Input(
                "give --trace FILE (the source, e.g. traces/azure-llm-2023-conv.csv), --synthetic diurnal|bursty|llmd-ramp, or both".into(),
            ));
        }
    })
}

fn synthetic_name(kind: Synthetic) -> &'static str {
    match kind {
        Synthetic::Diurnal => "diurnal",
        Synthetic::Bursty => "bursty",
        Synthetic::LlmdRamp => "llmd-ramp",
        Synthetic::Step => "step",
        Synthetic::ShortBursts => "short-bursts",
        Synthetic::CompressedDay => "compressed-day",
        Synthetic::PlateauRamp => "plateau-ramp",
    }
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[arg(long, default_value = "traces/azure-llm-2023-conv.csv")]
    pub trace: PathBuf,
    /// Multiply the trace's arrival rate. The default, 8, is the heaviest
    /// load the docs' tables replay, where the lab is slowest.
    #[arg(long, default_value_t = 8.0)]
    pub rate_scale: f64,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("expected key=value, got {s:?}"))
}

fn sim_config(c: &ClusterArgs) -> Result<SimConfig, LabError> {
    let profile = Profile::named(&c.profile).ok_or_else(|| {
        LabError::Input(format!(
            "unknown --profile {:?}; known: {}",
            c.profile,
            Profile::builtin()
                .iter()
                .map(|p| p.name)
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    if c.min == 0 || c.min > c.max {
        return Err(LabError::Input(format!(
            "--min {} must be at least 1 and at most --max {} (scale-from-zero needs a gateway that holds requests, which the lab's KEDA rows do not model)",
            c.min, c.max
        )));
    }
    for (name, v) in [
        ("--cold-start", c.cold_start),
        ("--scrape-interval", c.scrape_interval),
        ("--hpa-sync", c.hpa_sync),
        ("--ttft", c.ttft),
        ("--tpot", c.tpot),
        ("--window", c.window),
    ] {
        if !(v.is_finite() && v >= 0.0) || (name != "--cold-start" && v == 0.0) {
            return Err(LabError::Input(format!(
                "{name} must be a positive number of seconds, got {v}"
            )));
        }
    }
    for (name, v) in [
        ("--drain-grace", c.drain_grace),
        ("--tail", c.tail),
        ("--warmup", c.warmup),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            return Err(LabError::Input(format!(
                "{name} must be 0 or more seconds, got {v}"
            )));
        }
    }
    if !(0.0..1.0).contains(&c.cold_start_jitter) {
        return Err(LabError::Input(format!(
            "--cold-start-jitter is a fraction of --cold-start from 0 up to (not including) 1, got {}",
            c.cold_start_jitter
        )));
    }
    if c.scale_down_window > 3600 {
        return Err(LabError::Input(format!(
            "--scale-down-window is at most 3600 seconds (the HPA API's limit), got {}",
            c.scale_down_window
        )));
    }
    let mut cfg = SimConfig::new(profile);
    cfg.cold_start_s = c.cold_start;
    cfg.cold_start_jitter = c.cold_start_jitter;
    cfg.scrape_interval_s = c.scrape_interval;
    cfg.hpa_sync_s = c.hpa_sync;
    cfg.drain_grace_s = c.drain_grace;
    cfg.tail_s = c.tail;
    cfg.warmup_s = c.warmup;
    cfg.slo = Slo {
        ttft_s: c.ttft,
        tpot_s: c.tpot,
    };
    cfg.router = c.router;
    Ok(cfg)
}

/// The workload for a seed.
fn workload(w: &WorkloadArgs) -> Result<Box<dyn Fn(u64) -> Vec<Arrival>>, LabError> {
    if !(w.rate_scale.is_finite() && w.rate_scale > 0.0) {
        return Err(LabError::Input(format!(
            "--rate-scale must be above 0, got {}",
            w.rate_scale
        )));
    }
    let scale = w.rate_scale;
    let base: Box<dyn Fn(u64) -> Vec<Arrival>> = match (&w.trace, w.synthetic) {
        (Some(path), _) => {
            let trace = load(path, w.format)?;
            Box::new(move |_| trace.clone())
        }
        (None, Some(Synthetic::LlmdRamp)) => Box::new(llmd_ramp),
        (None, Some(kind @ (Synthetic::Step | Synthetic::ShortBursts | Synthetic::CompressedDay | Synthetic::PlateauRamp))) => {
            let shape = match kind {
                Synthetic::Step => Adversarial::Step,
                Synthetic::ShortBursts => Adversarial::ShortBursts,
                Synthetic::CompressedDay => Adversarial::CompressedDay,
                _ => Adversarial::PlateauRamp,
            };
            let (mean, duration, lengths) = (w.mean_rps, w.duration, w.lengths);
            if !(duration > 0.0 && mean > 0.0) {
                return Err(LabError::Input("--duration and --mean-rps must be above 0".into()));
            }
            Box::new(move |seed| shape.arrivals(mean, duration, lengths, seed))
        }
        (None, Some(kind)) => {
            let env = Envelope { mean_rps: w.mean_rps, peak_to_trough: w.peak_to_trough, period_s: w.period };
            let cv = if kind == Synthetic::Bursty { 3.0 } else { 1.1 };
            let (duration, lengths) = (w.duration, w.lengths);
            if !(duration > 0.0 && w.mean_rps > 0.0 && w.peak_to_trough >= 1.0 && w.period > 0.0) {
                return Err(LabError::Input("--duration, --mean-rps and --period must be above 0 and --peak-to-trough at least 1".into()));
            }
            Box::new(move |seed| enveloped_gamma(env, duration, cv, lengths, seed))
        }
        (None, None) => return Err(LabError::Input("give a workload: --trace traces/azure-llm-2023-conv.csv, or --synthetic diurnal|bursty|llmd-ramp|step|short-bursts|compressed-day|plateau-ramp".into())),
    };
    let (span, resample, synthetic) = (w.span, w.resample, w.synthetic.is_some());
    Ok(Box::new(move |seed| {
        let mut arrivals = base(seed);
        if let Some((from, to)) = span {
            arrivals = slice(&arrivals, from, to);
        }
        // Synthetic workloads are drawn anew for every seed already.
        let jitter_seed = if synthetic { 0 } else { seed };
        arrivals = scale_rate(&arrivals, scale, jitter_seed);
        if seed > 1 && !synthetic && resample == Resample::Block {
            arrivals = block_bootstrap(&arrivals, 60.0, 2, seed);
        }
        arrivals
    }))
}

/// A one-line progress bar on stderr when it is a terminal; through a pipe
/// or into a log, one plain line per finished run instead of redrawn frames.
fn progress_bar(total_runs: u64, quiet: bool) -> impl FnMut(&str, u64, f64) {
    let terminal = std::io::stderr().is_terminal();
    let mut done_runs = 0u64;
    let mut last_name = String::new();
    let mut last_seed = 0;
    let mut last_drawn = -1i64;
    move |name: &str, seed: u64, fraction: f64| {
        if quiet {
            return;
        }
        if name != last_name || seed != last_seed {
            if !last_name.is_empty() && seed != 0 {
                done_runs += 1;
                if !terminal {
                    eprintln!("done {last_name} seed {last_seed} ({done_runs}/{total_runs})");
                }
            }
            last_name = name.to_owned();
            last_seed = seed;
        }
        if !terminal {
            return;
        }
        let overall = ((done_runs as f64 + fraction) / total_runs.max(1) as f64).min(1.0);
        let cells = (overall * 30.0) as i64;
        let key = cells * 1000 + (fraction * 10.0) as i64;
        if key != last_drawn {
            last_drawn = key;
            let bar: String = (0..30).map(|i| if i < cells { '#' } else { '.' }).collect();
            eprint!(
                "\r[{bar}] {:>3.0}%  {name:<14} seed {seed}   ",
                overall * 100.0
            );
            let _ = std::io::stderr().flush();
        }
    }
}

fn write(path: &Path, text: &str) -> Result<(), LabError> {
    std::fs::write(path, text).map_err(|e| LabError::Output {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

fn run_compare(
    workload_args: &WorkloadArgs,
    cluster: &ClusterArgs,
    entries: Vec<Entry>,
    meta: &[(String, String)],
    out: &Path,
    title: &str,
    output: &OutputArgs,
) -> Result<crate::experiment::Outcome, LabError> {
    let sim = sim_config(cluster)?;
    let make = workload(workload_args)?;
    let setup = Setup {
        sim: sim.clone(),
        min: cluster.min,
        max: cluster.max,
        window_s: cluster.window,
        seeds: cluster.seeds.max(1),
        first_seed: cluster.first_seed.max(1),
        overrides: meta.iter().cloned().collect::<BTreeMap<_, _>>(),
        workload: &*make,
        hindsight: !cluster.no_hindsight,
        capacity: cluster.capacity_rps.map(|rps| crate::capacity::Capacity {
            rps,
            in_flight: cluster.capacity_in_flight.unwrap_or(rps * 10.0),
        }),
    };
    let total = (entries.len() as u64 + 3) * setup.seeds;
    let outcome = compare(&setup, &entries, &mut progress_bar(total, output.quiet))?;
    if !output.quiet && std::io::stderr().is_terminal() {
        // Ends the bar's line.
        eprintln!();
    }
    std::fs::create_dir_all(out).map_err(|e| LabError::Output {
        path: out.display().to_string(),
        reason: e.to_string(),
    })?;
    let table = report::table(&outcome) + &report::warnings(&outcome);
    let header = format!(
        "## {title}\n\nc* = {:.3} requests/s per replica ({:.1} in flight); peak need {} replicas; lower bound {:.2} GPU-hours at 99 %; hindsight plan {} steps ({} search runs); {} seed(s); T_w {} s; pre-roll {} s; SLO TTFT ≤ {} s, TPOT ≤ {} s.\n\n",
        outcome.capacity.rps,
        outcome.capacity.in_flight,
        outcome.peak_need,
        report::bound_gpu_hours(&outcome),
        outcome.hindsight_plan.steps.len(),
        outcome.hindsight_plan.trials,
        setup.seeds,
        sim.cold_start_s,
        sim.warmup_s,
        sim.slo.ttft_s,
        sim.slo.tpot_s
    );
    write(&out.join("table.md"), &format!("{header}{table}"))?;
    for row in &outcome.rows {
        write(
            &out.join(format!("{}.svg", row.name)),
            &report::policy_chart(&outcome, row, sim.slo.ttft_s),
        )?;
    }
    write(
        &out.join("compare.svg"),
        &report::compare_chart(&outcome, title),
    )?;
    let json = scores_json(&outcome);
    write(&out.join("scores.json"), &json)?;
    match output.output {
        OutputFormat::Table => println!("{header}{table}"),
        OutputFormat::Json => println!("{json}"),
    }
    if !output.quiet {
        eprintln!("wrote {}", out.display());
    }
    Ok(outcome)
}

/// Every policy's per-seed scores, as scores.json holds them and
/// `-o json` prints them.
fn scores_json(outcome: &crate::experiment::Outcome) -> String {
    let json: Vec<_> = outcome
        .rows
        .iter()
        .map(|r| serde_json::json!({"policy": r.name, "seeds": r.scores}))
        .collect();
    serde_json::to_string_pretty(&json).unwrap_or_default()
}

pub fn run(args: LabArgs) -> Result<(), LabError> {
    match args.command {
        LabCommand::Run(a) => {
            let entry = match &a.file {
                Some(path) => {
                    let text = std::fs::read_to_string(path).map_err(|e| {
                        LabError::Input(format!("cannot read {}: {e}", path.display()))
                    })?;
                    // The cluster's KServe window applies where the
                    // manifest sets no behaviour of its own.
                    let kserve = aim_scaling::KServeAutoscaler {
                        scale_down_stabilization_s: Some(a.cluster.scale_down_window as i32),
                        ..Default::default()
                    };
                    let k = crate::manifest::parse_any(&text, a.cluster.window, &kserve)?;
                    let cluster = ClusterArgs {
                        min: k.keda.spec.min_replica_count.max(1),
                        max: k.keda.spec.max_replica_count,
                        ..a.cluster.clone()
                    };
                    let name = path
                        .file_stem()
                        .map_or("manifest".into(), |s| s.to_string_lossy().into_owned());
                    return run_compare(
                        &a.workload,
                        &cluster,
                        vec![Entry::Manifest(
                            name.clone(),
                            crate::control::Controller::Keda(Box::new(k)),
                        )],
                        &a.meta,
                        &a.out,
                        &name,
                        &a.output,
                    )
                    .map(drop);
                }
                None => Entry::Named(a.policy.clone()),
            };
            run_compare(
                &a.workload,
                &a.cluster,
                vec![entry],
                &a.meta,
                &a.out,
                &a.policy,
                &a.output,
            )
            .map(drop)
        }
        LabCommand::Compare(a) => {
            let title = a.title.clone().unwrap_or_else(|| "comparison".into());
            let entries = a
                .policies
                .iter()
                .map(|p| Entry::Named(p.trim().to_owned()))
                .collect();
            run_compare(
                &a.workload,
                &a.cluster,
                entries,
                &a.meta,
                &a.out,
                &title,
                &a.output,
            )
            .map(drop)
        }
        LabCommand::Bench(a) => bench(&a),
        LabCommand::TuneKeda(a) => tune(&a),
        LabCommand::TunePolicy(a) => tune_policy(&a),
        LabCommand::Fidelity(a) => {
            print!("{}", fidelity(&a)?);
            Ok(())
        }
    }
}

/// Simulated seconds per wall second for a static pool (engines only) and
/// for the full KEDA loop, on the same trace in the same process; the
/// ratio between them is the control loop's overhead.
fn bench(a: &BenchArgs) -> Result<(), LabError> {
    let sim = sim_config(&a.cluster)?;
    if !(a.rate_scale.is_finite() && a.rate_scale > 0.0) {
        return Err(LabError::Input(format!(
            "--rate-scale must be above 0, got {}",
            a.rate_scale
        )));
    }
    let arrivals = scale_rate(&load(&a.trace, None)?, a.rate_scale, 1);
    let span = arrivals.last().map_or(0.0, |x| x.at);
    let capacity = crate::capacity::Capacity {
        rps: a.cluster.capacity_rps.unwrap_or(1.0),
        in_flight: a.cluster.capacity_in_flight.unwrap_or(8.0),
    };
    let peak = *crate::capacity::need(&arrivals, capacity.rps, a.cluster.min, a.cluster.max)
        .iter()
        .max()
        .unwrap_or(&1);
    let ctx = crate::scenario::Context {
        capacity,
        cold_start_s: sim.cold_start_s,
        min: a.cluster.min,
        max: a.cluster.max,
        window_s: a.cluster.window,
        ttft_s: sim.slo.ttft_s,
        tpot_s: sim.slo.tpot_s,
    };
    println!("| run | simulated s | wall s | simulated / wall |\n| --- | --- | --- | --- |");
    let mut walls = Vec::new();
    for (label, mut controller) in [
        (
            "static peak (engines only)",
            crate::control::Controller::Static(peak),
        ),
        (
            "keda-seed loop",
            crate::scenario::build("keda-seed", &ctx, &BTreeMap::new())?,
        ),
        (
            "queue policy loop",
            crate::scenario::build("queue", &ctx, &BTreeMap::new())?,
        ),
    ] {
        let mut cfg = sim.clone();
        cfg.initial_replicas = peak.min(a.cluster.max);
        let started = std::time::Instant::now();
        let result = crate::sim::run(&cfg, &arrivals, &mut controller, &mut |_| {})?;
        let wall = started.elapsed().as_secs_f64();
        walls.push(wall);
        // The pre-roll is simulated too.
        let simulated = result.episode_end.max(span) + cfg.warmup_s;
        println!(
            "| {label} | {simulated:.0} | {wall:.2} | {:.0}× |",
            simulated / wall.max(1e-9)
        );
    }
    println!(
        "\ncontrol-loop overhead (keda-seed wall / static wall, same run): {:.2}×",
        walls[1] / walls[0].max(1e-9)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        cluster: ClusterArgs,
    }

    fn cluster(args: &[&str]) -> ClusterArgs {
        Cli::try_parse_from(std::iter::once("lab").chain(args.iter().copied()))
            .unwrap()
            .cluster
    }

    #[test]
    fn the_loop_timings_reach_the_simulation() {
        let cfg = sim_config(&cluster(&[
            "--hpa-sync",
            "5",
            "--drain-grace",
            "0",
            "--cold-start",
            "10",
            "--cold-start-jitter",
            "0",
            "--scrape-interval",
            "5",
        ]))
        .unwrap();
        assert_eq!(
            (
                cfg.hpa_sync_s,
                cfg.drain_grace_s,
                cfg.cold_start_s,
                cfg.cold_start_jitter,
                cfg.scrape_interval_s
            ),
            (5.0, 0.0, 10.0, 0.0, 5.0)
        );
        let defaults = sim_config(&cluster(&[])).unwrap();
        assert_eq!((defaults.hpa_sync_s, defaults.drain_grace_s), (15.0, 120.0));
    }

    #[test]
    fn bad_loop_timings_name_the_flag() {
        for (args, flag) in [
            (&["--hpa-sync", "0"][..], "--hpa-sync"),
            (&["--hpa-sync", "NaN"][..], "--hpa-sync"),
            (&["--drain-grace=-1"][..], "--drain-grace"),
            (&["--tail=-5"][..], "--tail"),
            (&["--cold-start-jitter", "1"][..], "--cold-start-jitter"),
            (&["--cold-start-jitter=-0.1"][..], "--cold-start-jitter"),
            (&["--scale-down-window", "3601"][..], "--scale-down-window"),
            (&["--warmup=-1"][..], "--warmup"),
        ] {
            let e = sim_config(&cluster(args)).unwrap_err().to_string();
            assert!(e.contains(flag), "{args:?}: {e}");
        }
    }

    #[test]
    fn a_bad_span_names_the_flag_and_the_form() {
        assert_eq!(span("1800:3600"), Ok((1800.0, 3600.0)));
        for bad in ["1800", "3600:1800", "a:b", "-5:10", "10:10"] {
            let e = span(bad).unwrap_err();
            assert!(e.contains("--span") && e.contains("FROM:TO"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_bad_grid_names_the_knob() {
        let capacity = crate::capacity::Capacity {
            rps: 2.0,
            in_flight: 10.0,
        };
        let grid = |k: &str, v: &str| vec![(k.to_owned(), v.to_owned())];
        let labels = grid_labels("queue", &grid("perReplica", "x0.5,c1,4"), &capacity).unwrap();
        assert_eq!(
            labels,
            vec![
                "queue[perReplica=5]",
                "queue[perReplica=2.0000]",
                "queue[perReplica=4]"
            ]
        );
        for (key, values) in [
            ("perReplica", ""),
            ("capacity", "cfast"),
            ("perReplica", "xbig"),
        ] {
            let e = grid_labels("queue", &grid(key, values), &capacity)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(key) || e.contains("--targets"),
                "{key}={values}: {e}"
            );
        }
    }

    #[derive(Parser)]
    struct FidelityCli {
        #[command(flatten)]
        fidelity: FidelityArgs,
    }

    fn fidelity_of(args: &[&str]) -> Result<String, LabError> {
        let cli = FidelityCli::try_parse_from(std::iter::once("lab").chain(args.iter().copied()))
            .map_err(|e| LabError::Input(e.to_string()))?;
        fidelity(&cli.fidelity)
    }

    /// A three-minute Azure-format trace (two whole minutes from the first request) in the temp directory.
    fn small_trace(name: &str) -> PathBuf {
        let mut text = String::from("TIMESTAMP,ContextTokens,GeneratedTokens\n");
        for i in 0..360 {
            text.push_str(&format!(
                "2023-11-16 18:{:02}:{:02}.5000000,{},{}\n",
                i / 120,
                (i / 2) % 60,
                100 + i,
                10
            ));
        }
        let path = std::env::temp_dir().join(format!("aim-lab-{}-{name}.csv", std::process::id()));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn fidelity_takes_a_trace_and_a_synthetic_together() {
        let path = small_trace("both");
        let table = fidelity_of(&[
            "--trace",
            path.to_str().unwrap(),
            "--synthetic",
            "diurnal",
            "--duration",
            "600",
            "--mean-rps",
            "2",
            "--seed",
            "3",
        ])
        .unwrap();
        std::fs::remove_file(&path).ok();
        assert!(
            table.starts_with(&format!(
                "| statistic | {} | synthetic diurnal, seed 3 |",
                path.file_name().unwrap().to_string_lossy()
            )),
            "{table}"
        );
        assert!(
            table.contains("KS distance D to the source, input tokens"),
            "{table}"
        );
        // Same seed, same table; another seed, another synthetic set.
        let synthetic = |seed| {
            fidelity_of(&["--synthetic", "bursty", "--duration", "600", "--seed", seed]).unwrap()
        };
        assert_eq!(synthetic("4"), synthetic("4"));
        assert_ne!(synthetic("4"), synthetic("5"));
    }

    #[test]
    fn fidelity_with_only_a_trace_prints_its_column() {
        let path = small_trace("only");
        let table = fidelity_of(&["--trace", path.to_str().unwrap()]).unwrap();
        std::fs::remove_file(&path).ok();
        let header = table.lines().next().unwrap();
        assert_eq!(header.matches('|').count(), 3, "{table}");
        assert!(!table.contains("KS distance"), "{table}");
        // Two requests a second for three minutes.
        assert!(table.contains("| requests | 360 |"), "{table}");
        assert!(
            table.contains("| per-minute peak / mean | 1.00 |"),
            "{table}"
        );
    }

    #[test]
    fn bad_fidelity_input_names_the_flag() {
        for (args, expected) in [
            (&[][..], "--trace FILE"),
            (&["--trace", "no-such-trace.csv"][..], "--trace"),
            (&["--trace", "no-such-trace.csv"][..], "no-such-trace.csv"),
            (
                &[
                    "--synthetic",
                    "diurnal",
                    "--duration",
                    "1",
                    "--mean-rps",
                    "0.001",
                ][..],
                "--synthetic diurnal produced no requests",
            ),
            (
                &["--synthetic", "diurnal", "--duration", "0"][..],
                "--duration",
            ),
            (
                &["--synthetic", "bursty", "--rate-scale", "0"][..],
                "--rate-scale",
            ),
        ] {
            let e = fidelity_of(args).unwrap_err().to_string();
            assert!(e.contains(expected), "{args:?}: {e}");
        }
        let path = small_trace("scale");
        let e = fidelity_of(&["--trace", path.to_str().unwrap(), "--rate-scale=-1"])
            .unwrap_err()
            .to_string();
        std::fs::remove_file(&path).ok();
        assert!(e.contains("--rate-scale"), "{e}");
    }
}
