//! `aim scaler bench-history`: what the compacted history costs.
//!
//! - Memory: resident memory gained while `--queries` queries each record
//!   `--span` of steps through the real path (one export per 15 s per
//!   query, a recording pass per step), per step slot and per query,
//!   against the same number of values in plain `Vec<f64>`s filled in the
//!   same process (the floor: 8 bytes a value).
//! - Snapshot: its size per slot, and the time to write and read it back.
//! - Evaluation: a `predictive` trigger whose season spans the history,
//!   evaluated with the compacted history against the same trigger with
//!   the raw store alone (five minutes), in the same run.

use crate::history::{History, HistoryConfig, HistoryKey, STEP, snapshot};
use crate::labels::LabelSet;
use crate::query::{Operation, parse_query};
use crate::store::{
    NANOS_PER_SECOND, Nanos, PointData, ScalarPoint, SeriesKind, Store, StoreConfig,
};
use crate::trigger::{Trigger, parse_duration};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn duration_arg(text: &str) -> Result<Duration, String> {
    parse_duration(text).ok_or_else(|| format!("{text:?} is not a duration; use e.g. 24h, 90m"))
}

#[derive(Debug, Clone, clap::Args)]
pub struct HistoryBenchArgs {
    /// Queries whose history is kept.
    #[arg(long, default_value_t = 100)]
    pub queries: usize,
    /// History each query keeps (predictive's default season is a day).
    #[arg(long, default_value = "24h", value_parser = duration_arg)]
    pub span: Duration,
    /// Evaluations timed for each evaluation figure.
    #[arg(long, default_value_t = 200)]
    pub evaluations: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct HistoryBenchReport {
    pub queries: usize,
    pub span_seconds: f64,
    /// Step slots held over all queries.
    pub slots: usize,
    pub history_rss_bytes_per_slot: f64,
    pub history_rss_bytes_per_query: f64,
    pub plain_vec_rss_bytes_per_value: f64,
    /// History bytes per slot ÷ plain `Vec<f64>` bytes per value.
    pub memory_ratio: f64,
    pub snapshot_bytes: usize,
    pub snapshot_bytes_per_slot: f64,
    pub snapshot_write_ms: f64,
    pub snapshot_read_ms: f64,
    /// History points the policy received in the evaluation figure.
    pub policy_history_points: usize,
    pub evaluate_with_history_us: f64,
    pub evaluate_raw_only_us: f64,
    pub evaluation_ratio: f64,
}

const S: Nanos = NANOS_PER_SECOND;
/// A step boundary well after any real timestamp the store would reject.
const T0: Nanos = 1_700_006_400 * S;

fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn growth(before: Option<u64>, after: Option<u64>) -> f64 {
    match (before, after) {
        (Some(b), Some(a)) => a.saturating_sub(b) as f64,
        _ => f64::NAN,
    }
}

fn query_text(i: usize) -> String {
    format!(r#"sum(request_rate{{deployment="d{i}"}})"#)
}

pub fn run(args: HistoryBenchArgs) -> anyhow::Result<()> {
    let report = measure(&args)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

pub fn measure(args: &HistoryBenchArgs) -> anyhow::Result<HistoryBenchReport> {
    anyhow::ensure!(args.queries > 0, "--queries must be positive");
    let span = args.span.as_nanos().min(u64::MAX as u128) as u64;
    anyhow::ensure!(span >= 2 * STEP, "--span must be at least 30s");
    let retention = 300 * S;
    let store = Store::new(StoreConfig {
        retention,
        freshness: 15 * S,
        max_series: args.queries + 10,
        max_points_per_series: 1024,
    });
    let history = History::new(HistoryConfig {
        max_age: span,
        max_queries: args.queries + 1,
        idle: 3600 * S,
        retention,
        raw_since: 0,
    });
    let queries: Vec<_> = (0..args.queries)
        .map(|i| parse_query(&query_text(i)).expect("bench query parses"))
        .collect();
    let keys: Vec<HistoryKey> = queries
        .iter()
        .map(|q| HistoryKey::new(q, Operation::LastOne, 30 * S, None))
        .collect();
    let labels: Vec<LabelSet> = (0..args.queries)
        .map(|i| LabelSet::from_pairs([("deployment", format!("d{i}")), ("pod", "p".into())]))
        .collect();

    // History first, in a fresh heap: memory freed later would be reused.
    let before = resident_bytes();
    for (key, query) in keys.iter().zip(&queries) {
        history.track(key, query, span, T0);
    }
    let steps = span / STEP + 2;
    let mut now = T0;
    for step in 0..steps {
        now = T0 + step * STEP;
        for (i, labels) in labels.iter().enumerate() {
            store.append(
                "request_rate",
                labels.clone(),
                &SeriesKind::Gauge,
                PointData::Scalar(ScalarPoint {
                    time: now,
                    start: 0,
                    value: 1.0 + (step % 97) as f64 + i as f64,
                }),
                now,
            );
        }
        history.record_all(&store, now);
    }
    let after = resident_bytes();
    let slots = history.stats().points;
    let history_bytes = growth(before, after);

    // The floor, in the same process: the same number of f64s in plain
    // vectors, one per query.
    let per_query = slots / args.queries;
    let before = resident_bytes();
    let plain: Vec<Vec<f64>> = (0..args.queries)
        .map(|q| (0..per_query).map(|i| (i + q) as f64).collect())
        .collect();
    let after = resident_bytes();
    let plain_bytes = growth(before, after);
    let plain_values: usize = plain.iter().map(Vec::len).sum();
    std::hint::black_box(&plain);
    drop(plain);

    // Snapshot.
    let dir = std::env::temp_dir().join(format!("aim-bench-history-{}", std::process::id()));
    let started = Instant::now();
    let bytes = snapshot::encode(&snapshot::Snapshot {
        saved_at: now,
        tracks: history.export(),
    });
    snapshot::write_atomically(&dir, &bytes)?;
    let write = started.elapsed();
    let started = Instant::now();
    let loaded = match snapshot::load(&dir) {
        snapshot::Loaded::Read(s) => s,
        other => anyhow::bail!("reading the bench snapshot back failed: {other:?}"),
    };
    let reread = History::new(history.config().clone());
    let taken = reread.import(loaded.tracks, now);
    let read = started.elapsed();
    let _ = std::fs::remove_dir_all(&dir);
    anyhow::ensure!(
        taken == args.queries,
        "read back {taken} of {} queries",
        args.queries
    );

    // Evaluation: predictive whose season fills the span.
    let season = (span / S).saturating_sub(60).max(1);
    let metadata: BTreeMap<String, String> = [
        ("metricQuery", query_text(0)),
        ("targetValue", "1".to_owned()),
        ("policy", "predictive".to_owned()),
        ("window", "30s".to_owned()),
        ("season", format!("{season}s")),
        ("smoothing", "60s".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let trigger = Trigger::parse(metadata, Duration::from_secs(120))?;
    let track = history.track(
        &trigger.history_key,
        &trigger.query,
        trigger.policy_history,
        now,
    );
    let policy_history_points = {
        let track = track
            .as_ref()
            .map(|t| t.lock().unwrap_or_else(|e| e.into_inner()));
        history
            .samples(
                &store,
                &trigger.query,
                &trigger.history_key,
                track.as_deref(),
                trigger.policy_history,
                now,
            )
            .len()
    };
    let time = |with_history: bool| -> anyhow::Result<f64> {
        let started = Instant::now();
        for _ in 0..args.evaluations {
            let value = if with_history {
                trigger.evaluate_with_history(&store, Some(&history), now)
            } else {
                trigger.evaluate(&store, now)
            };
            std::hint::black_box(value?);
        }
        Ok(started.elapsed().as_secs_f64() * 1e6 / args.evaluations.max(1) as f64)
    };
    // Alternate, so drift on a shared machine hits both alike.
    let (mut with, mut raw) = (0.0, 0.0);
    for _ in 0..2 {
        with += time(true)? / 2.0;
        raw += time(false)? / 2.0;
    }

    let history_per_slot = history_bytes / slots.max(1) as f64;
    let plain_per_value = plain_bytes / plain_values.max(1) as f64;
    Ok(HistoryBenchReport {
        queries: args.queries,
        span_seconds: span as f64 / 1e9,
        slots,
        history_rss_bytes_per_slot: history_per_slot,
        history_rss_bytes_per_query: history_bytes / args.queries as f64,
        plain_vec_rss_bytes_per_value: plain_per_value,
        memory_ratio: history_per_slot / plain_per_value,
        snapshot_bytes: bytes.len(),
        snapshot_bytes_per_slot: bytes.len() as f64 / slots.max(1) as f64,
        snapshot_write_ms: write.as_secs_f64() * 1e3,
        snapshot_read_ms: read.as_secs_f64() * 1e3,
        policy_history_points,
        evaluate_with_history_us: with,
        evaluate_raw_only_us: raw,
        evaluation_ratio: with / raw,
    })
}

fn print_report(r: &HistoryBenchReport) {
    println!(
        "aim scaler bench-history: {} queries, {} s of history each ({} step slots)",
        r.queries, r.span_seconds, r.slots
    );
    println!();
    println!(
        "memory (RSS)     {:.2} B per slot, {:.0} B per query; plain Vec<f64> {:.2} B per value; ratio {:.2}",
        r.history_rss_bytes_per_slot,
        r.history_rss_bytes_per_query,
        r.plain_vec_rss_bytes_per_value,
        r.memory_ratio
    );
    println!(
        "snapshot         {} B ({:.2} B per slot); write {:.1} ms, read back {:.1} ms",
        r.snapshot_bytes, r.snapshot_bytes_per_slot, r.snapshot_write_ms, r.snapshot_read_ms
    );
    println!(
        "evaluation       predictive with {} history points {:.1} µs; raw store only {:.1} µs; ratio {:.1}",
        r.policy_history_points,
        r.evaluate_with_history_us,
        r.evaluate_raw_only_us,
        r.evaluation_ratio
    );
}
