//! Compacted history: a policy's seasonal term sees further back than the
//! raw store holds, and a restarted scaler reads back what it saved.

mod common;

use aim_scaler::history::{History, HistoryConfig, snapshot};
use aim_scaler::labels::LabelSet;
use aim_scaler::proto::externalscaler::GetMetricsRequest;
use aim_scaler::proto::externalscaler::ScaledObjectRef;
use aim_scaler::server::HistoryLoad;
use aim_scaler::store::{
    NANOS_PER_SECOND, Nanos, PointData, ScalarPoint, SeriesKind, Store, StoreConfig,
};
use aim_scaler::trigger::Trigger;
use common::otlp::{gauge, now, number_point, request};
use common::{http_request, keda_client, push, scaled_object, start_scaler};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

const S: Nanos = NANOS_PER_SECOND;
/// Midnight UTC, so the time of day is plain to read.
const DAY0: Nanos = 1_700_006_400 * S;
const DAY: Nanos = 86_400 * S;

fn meta(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Requests per second: 2, and 10 from 12:00 to 13:00 UTC every day.
fn daily_rate(t: Nanos) -> f64 {
    let second_of_day = (t / S) % 86_400;
    if (43_200..46_800).contains(&second_of_day) {
        10.0
    } else {
        2.0
    }
}

#[test]
fn a_predictive_season_reads_a_day_of_history_the_raw_store_no_longer_holds() {
    // The raw store keeps five minutes, as --retention does by default.
    let store = Store::new(StoreConfig {
        retention: 300 * S,
        freshness: 15 * S,
        max_series: 10,
        max_points_per_series: 1024,
    });
    let history = History::new(HistoryConfig {
        max_age: aim_scaler::history::DEFAULT_MAX_AGE,
        max_queries: 16,
        idle: 3600 * S,
        retention: 300 * S,
        raw_since: 0,
    });
    // Predictive with its default 24 h season and a 5 min cold start.
    let trigger = Trigger::parse(
        meta(&[
            ("metricQuery", r#"sum(request_rate{deployment="chat"})"#),
            ("targetValue", "1"),
            ("policy", "predictive"),
            ("capacity", "1"),
            ("headroom", "0"),
            ("coldStart", "5m"),
            ("trendWindow", "0"),
            ("window", "30s"),
        ]),
        Duration::from_secs(120),
    )
    .unwrap();
    assert_eq!(trigger.policy_history, 86_460 * S, "season + smoothing");
    let labels = LabelSet::from_pairs([("deployment", "chat"), ("pod", "p")]);
    // A day and a half of exports every 15 s; the background pass runs at
    // each step and KEDA polls once an hour, which keeps the query tracked.
    let end = DAY0 + DAY + 11 * 3600 * S + 57 * 60 * S;
    let mut t = DAY0;
    while t <= end {
        store.append(
            "request_rate",
            labels.clone(),
            &SeriesKind::Gauge,
            PointData::Scalar(ScalarPoint {
                time: t,
                start: 0,
                value: daily_rate(t),
            }),
            t,
        );
        if (t - DAY0).is_multiple_of(3600 * S) {
            trigger
                .evaluate_with_history(&store, Some(&history), t)
                .unwrap();
        }
        history.record_all(&store, t);
        t += 15 * S;
    }
    let now = end;
    assert_eq!(daily_rate(now), 2.0, "11:57: still the quiet rate");
    assert_eq!(daily_rate(now + 300 * S), 10.0, "12:02, a cold start ahead");

    let track = history
        .track(
            &trigger.history_key,
            &trigger.query,
            trigger.policy_history,
            now,
        )
        .unwrap();
    let samples = {
        let track = track.lock().unwrap();
        history.samples(
            &store,
            &trigger.query,
            &trigger.history_key,
            Some(&track),
            trigger.policy_history,
            now,
        )
    };
    let earliest_age = now as f64 / 1e9 - samples[0].at;
    println!(
        "{} history points; the earliest is {earliest_age} s old (raw store: 300 s)",
        samples.len()
    );
    assert_eq!(earliest_age, 86_460.0, "the whole season and its smoothing");
    assert_eq!(samples.len(), 5764, "one point per 15 s step, no gaps");
    // The raw store alone reaches back less than its retention.
    let raw_only = trigger.policy_history_samples(&store, now);
    assert!(now as f64 / 1e9 - raw_only[0].at < 300.0);

    // Yesterday's noon peak, a cold start ahead, is in the answer only with
    // the compacted history: 2 × 10/2 = 10 replicas' worth.
    let with_history = trigger
        .evaluate_with_history(&store, Some(&history), now)
        .unwrap()
        .value;
    let raw = trigger.evaluate(&store, now).unwrap().value;
    assert!((with_history - 10.0).abs() < 0.01, "{with_history}");
    assert!((raw - 2.0).abs() < 0.01, "{raw}");
}

/// Trigger metadata of a predictive trigger that holds, for 5 min, the
/// replicas the highest value seen needed.
fn holding_trigger() -> HashMap<String, String> {
    [
        (
            "metricQuery",
            r#"sum(request_rate{namespace="ml", deployment="chat"})"#,
        ),
        ("targetValue", "1"),
        ("policy", "predictive"),
        ("capacity", "1"),
        ("headroom", "0"),
        ("coldStart", "10s"),
        ("smoothing", "1s"),
        ("season", "0"),
        ("trendWindow", "0"),
        ("scaleDownDelay", "300s"),
        ("window", "1s"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn rate_export(
    value: f64,
) -> opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest {
    request(vec![gauge(
        "request_rate",
        vec![number_point(
            &[("namespace", "ml"), ("deployment", "chat"), ("pod", "p")],
            now(),
            0,
            value,
        )],
    )])
}

async fn get_metrics(address: std::net::SocketAddr, reference: &ScaledObjectRef) -> f64 {
    let mut client = keda_client(address).await;
    client
        .get_metrics(GetMetricsRequest {
            scaled_object_ref: Some(reference.clone()),
            metric_name: String::new(),
        })
        .await
        .expect("GetMetrics answers")
        .into_inner()
        .metric_values[0]
        .metric_value_float
}

async fn admin_metrics(address: std::net::SocketAddr) -> String {
    let (status, _, body) = http_request(address, "GET", "/metrics", &[], Vec::new()).await;
    assert_eq!(status, 200);
    String::from_utf8(body).unwrap()
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{series} not in\n{text}"))
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("aim-history-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_scaler_answers_from_the_history_the_old_one_saved() {
    let dir = temp_dir("restart");
    let with_dir = |dir: &Path| {
        let dir = dir.to_path_buf();
        move |args: &mut aim_scaler::ScalerArgs| {
            args.history_dir = Some(dir);
            // Only the shutdown writes a snapshot in this test.
            args.history_snapshot_interval = Duration::from_secs(3600);
        }
    };
    let reference = scaled_object("ml", "chat", holding_trigger());

    // The old scaler sees 8 requests/s until its history holds a step of it
    // (steps settle 5 s after each multiple of 15 s; at most ~35 s here).
    let old = start_scaler(with_dir(&dir)).await;
    let started = std::time::Instant::now();
    loop {
        push(old.addresses[0], rate_export(8.0)).await;
        get_metrics(old.addresses[1], &reference).await;
        if old.state.history.stats().points > 0 && old.state.history.export()[0].ring.points() > 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no history recorded"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Then the load drops to 1; the policy holds what 8 needed.
    push(old.addresses[0], rate_export(1.0)).await;
    let old_answer = get_metrics(old.addresses[1], &reference).await;
    assert!((old_answer - 8.0).abs() < 0.01, "{old_answer}");
    let text = admin_metrics(old.admin_address).await;
    assert_eq!(metric(&text, "aim_scaler_history_queries"), 1.0);
    assert!(metric(&text, "aim_scaler_history_points") >= 1.0);
    assert_eq!(
        metric(&text, "aim_scaler_history_snapshots_total{outcome=\"ok\"}"),
        0.0
    );
    old.shutdown().await;
    assert!(snapshot::path_in(&dir).exists(), "shutdown saves");

    // A new scaler on the same directory, whose raw store has only the
    // current 1 request/s, answers as the old one did.
    let new = start_scaler(with_dir(&dir)).await;
    assert!(
        matches!(
            new.history_load,
            Some(HistoryLoad::Loaded { queries: 1, .. })
        ),
        "{:?}",
        new.history_load
    );
    push(new.addresses[0], rate_export(1.0)).await;
    let new_answer = get_metrics(new.addresses[1], &reference).await;
    // A fresh scaler without the directory, fed the same, cannot.
    let fresh = start_scaler(|_| {}).await;
    push(fresh.addresses[0], rate_export(1.0)).await;
    let fresh_answer = get_metrics(fresh.addresses[1], &reference).await;
    println!("old {old_answer}, restarted {new_answer}, fresh {fresh_answer}");
    assert_eq!(new_answer, old_answer);
    assert!((fresh_answer - 1.0).abs() < 0.01, "{fresh_answer}");

    // The new one saves on: a snapshot on demand is counted.
    let size = aim_scaler::server::save_history(&new.state, &dir).unwrap();
    let text = admin_metrics(new.admin_address).await;
    assert_eq!(
        metric(&text, "aim_scaler_history_snapshots_total{outcome=\"ok\"}"),
        1.0
    );
    assert_eq!(
        metric(&text, "aim_scaler_history_snapshot_bytes"),
        size as f64
    );
    assert!(
        metric(
            &text,
            "aim_scaler_history_snapshot_last_success_timestamp_seconds"
        ) > 1.7e9
    );
    new.shutdown().await;
    fresh.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Log lines of this test binary, for the tests that check a warning.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .with_writer(move || Writer(sink.clone()))
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        logs
    })
    .clone()
}

struct Writer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Writer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_snapshot_is_moved_aside_with_a_warning_and_the_scaler_serves() {
    let logs = captured_logs();
    let dir = temp_dir("corrupt");
    std::fs::create_dir_all(&dir).unwrap();
    let file = snapshot::path_in(&dir);
    // A snapshot damaged on disk: valid header, one byte of data changed.
    let mut bytes = snapshot::encode(&snapshot::Snapshot {
        saved_at: now(),
        tracks: Vec::new(),
    });
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&file, &bytes).unwrap();

    let scaler = start_scaler(|args| args.history_dir = Some(dir.clone())).await;
    let aside = dir.join(format!("{}.corrupt", snapshot::FILE_NAME));
    match &scaler.history_load {
        Some(HistoryLoad::Rejected { reason, moved_to }) => {
            assert!(reason.contains("checksum mismatch"), "{reason}");
            assert_eq!(moved_to.as_ref(), Some(&aside));
        }
        other => panic!("{other:?}"),
    }
    assert!(!file.exists());
    assert_eq!(std::fs::read(&aside).unwrap(), bytes, "kept as it was");
    let logged = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    let line = logged
        .lines()
        .find(|l| l.contains(&file.display().to_string()))
        .unwrap_or_else(|| panic!("no warning naming {}:\n{logged}", file.display()));
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("checksum mismatch"), "{line}");
    assert!(line.contains(&aside.display().to_string()), "{line}");
    assert!(line.contains("starting with an empty history"), "{line}");
    let text = admin_metrics(scaler.admin_address).await;
    assert_eq!(
        metric(&text, "aim_scaler_history_snapshots_rejected_total"),
        1.0
    );

    // It serves: data in, an answer out.
    let reference = scaled_object("ml", "chat", holding_trigger());
    push(scaler.addresses[0], rate_export(3.0)).await;
    let answer = get_metrics(scaler.addresses[1], &reference).await;
    assert!((answer - 3.0).abs() < 0.01, "{answer}");
    // And its next snapshot is a good one again.
    scaler.shutdown().await;
    assert!(matches!(snapshot::load(&dir), snapshot::Loaded::Read(_)));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_zero_snapshot_interval_is_refused_naming_the_flag() {
    let mut args = aim_scaler::ScalerArgs::defaults();
    args.listen = vec!["127.0.0.1:0".parse().unwrap()];
    args.admin_listen = "127.0.0.1:0".parse().unwrap();
    args.history_dir = Some(temp_dir("zero-interval"));
    args.history_snapshot_interval = Duration::ZERO;
    let err = aim_scaler::start(&args).await.err().expect("refused");
    assert!(
        err.to_string()
            .contains("--history-snapshot-interval must be longer than 0 (e.g. 60s)"),
        "{err}"
    );
    // Without a directory nothing is saved, so the interval does not matter.
    args.history_dir = None;
    aim_scaler::start(&args).await.unwrap().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_history_dir_is_reported_and_counted_while_the_scaler_serves() {
    // A file where the directory should be: nothing can be read or written.
    let blocker = temp_dir("blocked");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let dir = blocker.join("history");
    let scaler = start_scaler(|args| args.history_dir = Some(dir.clone())).await;
    match &scaler.history_load {
        Some(HistoryLoad::Rejected { reason, moved_to }) => {
            assert!(reason.contains("cannot be read"), "{reason}");
            assert_eq!(moved_to, &None);
        }
        other => panic!("{other:?}"),
    }
    let err = aim_scaler::server::save_history(&scaler.state, &dir).unwrap_err();
    assert!(!err.to_string().is_empty());
    let text = admin_metrics(scaler.admin_address).await;
    assert_eq!(
        metric(
            &text,
            "aim_scaler_history_snapshots_total{outcome=\"failed\"}"
        ),
        1.0
    );
    let reference = scaled_object("ml", "chat", holding_trigger());
    push(scaler.addresses[0], rate_export(2.0)).await;
    let answer = get_metrics(scaler.addresses[1], &reference).await;
    assert!((answer - 2.0).abs() < 0.01, "{answer}");
    scaler.shutdown().await;
    let _ = std::fs::remove_file(&blocker);
}
