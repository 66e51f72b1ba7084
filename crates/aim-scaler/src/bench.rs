//! `aim scaler bench`: ingest throughput, GetMetrics latency and memory
//! per series, each next to a baseline measured in the same run.
//!
//! - Ingest: protobuf decode + conversion + store, on the calling thread
//!   (one core), against decode alone — the floor any OTLP receiver pays.
//! - GetMetrics: real gRPC calls over loopback for a KServe-shaped query
//!   while the store holds `--series` series, against the same call on a
//!   metric with a single series (the RPC floor).
//! - Memory: growth of resident memory while the store fills, against the
//!   raw size of the data (label bytes plus 24 bytes per point).

use crate::args::ScalerArgs;
use crate::proto::externalscaler::external_scaler_client::ExternalScalerClient;
use crate::proto::externalscaler::{GetMetricsRequest, ScaledObjectRef};
use crate::self_metrics::Transport;
use crate::server::state_from_args;
use crate::state::{ScalerState, now_nanos};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric::Data, number_data_point,
};
use prost::Message;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Live series in the store (metrics x pods).
    #[arg(long, default_value_t = 10_000)]
    pub series: usize,
    /// Distinct metric names; pods = series / metrics.
    #[arg(long, default_value_t = 20)]
    pub metrics: usize,
    /// Pods per deployment, i.e. series one KServe query selects per metric.
    #[arg(long, default_value_t = 25)]
    pub pods_per_deployment: usize,
    /// Scrapes (points per series) ingested for the throughput figure.
    #[arg(long, default_value_t = 12)]
    pub rounds: usize,
    /// Pods per OTLP export request.
    #[arg(long, default_value_t = 10)]
    pub pods_per_request: usize,
    /// GetMetrics calls per latency figure.
    #[arg(long, default_value_t = 2000)]
    pub queries: usize,
    /// Print the result as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    pub series: usize,
    pub ingest_points_per_second: f64,
    pub decode_only_points_per_second: f64,
    pub ingest_vs_decode_ratio: f64,
    pub get_metrics_p50_us: f64,
    pub get_metrics_p99_us: f64,
    pub baseline_get_metrics_p50_us: f64,
    pub baseline_get_metrics_p99_us: f64,
    pub get_metrics_p50_ratio: f64,
    pub get_metrics_p99_ratio: f64,
    pub evaluate_only_p50_us: f64,
    pub rss_bytes_per_10k_series: f64,
    pub raw_bytes_per_10k_series: f64,
    pub rss_vs_raw_ratio: f64,
    pub points_per_series_at_rss: usize,
}

const SCRAPE: u64 = 5_000_000_000;

struct Layout {
    metrics: usize,
    pods: usize,
    pods_per_deployment: usize,
}

fn string_attribute(key: &str, value: String) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value)),
        }),
        ..Default::default()
    }
}

fn metric_name(m: usize) -> String {
    format!("vllm:bench_metric_{m:03}")
}

/// One export per group of pods, as a collector sidecar batch would be.
fn export_requests(
    layout: &Layout,
    pods_per_request: usize,
    time: u64,
    value: f64,
) -> Vec<ExportMetricsServiceRequest> {
    (0..layout.pods)
        .collect::<Vec<_>>()
        .chunks(pods_per_request.max(1))
        .map(|pods| {
            let metrics = (0..layout.metrics)
                .map(|m| Metric {
                    name: metric_name(m),
                    data: Some(Data::Gauge(Gauge {
                        data_points: pods
                            .iter()
                            .map(|&pod| NumberDataPoint {
                                attributes: vec![
                                    string_attribute("namespace", "bench".into()),
                                    string_attribute(
                                        "deployment",
                                        format!(
                                            "deployment-{:04}-predictor",
                                            pod / layout.pods_per_deployment
                                        ),
                                    ),
                                    string_attribute("pod", format!("deployment-pod-{pod:06}")),
                                ],
                                time_unix_nano: time,
                                value: Some(number_data_point::Value::AsDouble(value + pod as f64)),
                                ..Default::default()
                            })
                            .collect(),
                    })),
                    ..Default::default()
                })
                .collect();
            ExportMetricsServiceRequest {
                resource_metrics: vec![ResourceMetrics {
                    scope_metrics: vec![ScopeMetrics {
                        metrics,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            }
        })
        .collect()
}

fn points_in(request: &ExportMetricsServiceRequest) -> usize {
    request
        .resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .map(|m| match &m.data {
            Some(Data::Gauge(g)) => g.data_points.len(),
            _ => 0,
        })
        .sum()
}

fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1e6
}

fn bench_args() -> ScalerArgs {
    let mut args = ScalerArgs::defaults();
    args.listen = vec!["127.0.0.1:0".parse().expect("loopback address")];
    args.admin_listen = "127.0.0.1:0".parse().expect("loopback address");
    args.max_series = usize::MAX;
    args.warmup = Duration::ZERO;
    // Benchmarks run longer than the default freshness.
    args.freshness = Duration::from_secs(3600);
    args.retention = Duration::from_secs(3600);
    args
}

/// Points/s of protobuf decoding alone: the floor of any OTLP receiver.
fn measure_decode(encoded: &[Vec<u8>]) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut decoded_points = 0;
    for bytes in encoded {
        decoded_points += points_in(&ExportMetricsServiceRequest::decode(&bytes[..])?);
    }
    Ok(decoded_points as f64 / started.elapsed().as_secs_f64())
}

/// Points/s of decode + conversion + store, on the calling thread.
fn measure_ingest(state: &ScalerState, encoded: &[Vec<u8>], points: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut stored = 0u64;
    for bytes in encoded {
        let request = ExportMetricsServiceRequest::decode(&bytes[..])?;
        stored += state.ingest(&request, Transport::Grpc).stored;
    }
    let full = stored as f64 / started.elapsed().as_secs_f64();
    anyhow::ensure!(
        stored as usize == points,
        "stored {stored} of {points} points"
    );
    Ok(full)
}

async fn measure_get_metrics(
    client: &mut ExternalScalerClient<tonic::transport::Channel>,
    query: &str,
    calls: usize,
) -> anyhow::Result<Vec<Duration>> {
    let reference = ScaledObjectRef {
        name: "bench-predictor".into(),
        namespace: "bench".into(),
        scaler_metadata: HashMap::from([
            ("metricQuery".to_owned(), query.to_owned()),
            ("targetValue".to_owned(), "4".to_owned()),
            ("operationOverTime".to_owned(), "avg".to_owned()),
        ]),
    };
    let mut latencies = Vec::with_capacity(calls);
    for _ in 0..calls {
        let request = GetMetricsRequest {
            scaled_object_ref: Some(reference.clone()),
            metric_name: "bench-bench-predictor".into(),
        };
        let started = Instant::now();
        client.get_metrics(request).await?;
        latencies.push(started.elapsed());
    }
    latencies.sort();
    Ok(latencies)
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let report = measure(&args).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

pub async fn measure(args: &BenchArgs) -> anyhow::Result<BenchReport> {
    anyhow::ensure!(
        args.metrics > 0 && args.series >= args.metrics,
        "--series must be at least --metrics"
    );
    let layout = Layout {
        metrics: args.metrics,
        pods: args.series / args.metrics,
        pods_per_deployment: args.pods_per_deployment.max(1),
    };
    let series = layout.metrics * layout.pods;
    let now = now_nanos();
    // Fill plus three timed passes, all in the past.
    let first = now - 4 * args.rounds as u64 * SCRAPE;

    // Requests are encoded before anything is measured, so neither their
    // buffers nor their encoding count.
    let encode_rounds = |from_round: usize| -> (Vec<Vec<u8>>, usize) {
        let mut encoded = Vec::new();
        let mut points = 0;
        for round in from_round..from_round + args.rounds {
            let time = first + round as u64 * SCRAPE;
            for request in export_requests(&layout, args.pods_per_request, time, round as f64) {
                points += points_in(&request);
                encoded.push(request.encode_to_vec());
            }
        }
        (encoded, points)
    };
    let (fill, fill_points) = encode_rounds(0);
    let passes: Vec<(Vec<Vec<u8>>, usize)> = (1..=3)
        .map(|pass| encode_rounds(pass * args.rounds))
        .collect();
    let state = Arc::new(state_from_args(&bench_args()));
    // A decode pass first: its transient allocations are then reused by the
    // allocator, so the RSS growth below is the store's.
    measure_decode(&fill)?;
    let rss_before = resident_bytes();
    measure_ingest(&state, &fill, fill_points)?;
    let rss_after = resident_bytes();
    // Throughput with every series live: further scrapes into the filled
    // store, best of three passes each (the machine is shared), decode-only
    // and full ingest alternating so drift hits both.
    let mut decode_only: f64 = 0.0;
    let mut full: f64 = 0.0;
    for (encoded, points) in &passes {
        decode_only = decode_only.max(measure_decode(encoded)?);
        full = full.max(measure_ingest(&state, encoded, *points)?);
    }
    drop((fill, passes));
    let mut label_bytes = 0usize;
    state.store.visit_metric(&metric_name(0), now, |labels, _| {
        label_bytes += labels.heap_bytes()
    });
    let raw_per_series = label_bytes as f64 / layout.pods as f64 + 24.0 * args.rounds as f64;
    let rss_per_series = match (rss_before, rss_after) {
        (Some(before), Some(after)) => after.saturating_sub(before) as f64 / series as f64,
        _ => f64::NAN,
    };

    // GetMetrics over loopback gRPC against this store.
    let running_args = bench_args();
    let running = crate::server::start(&running_args).await?;
    // Re-ingest into the served state (start() builds its own).
    for round in 0..args.rounds {
        for request in export_requests(
            &layout,
            args.pods_per_request,
            // The last `rounds` scrapes up to now, inside the query window.
            now - (args.rounds - round) as u64 * SCRAPE,
            round as f64,
        ) {
            running.state.ingest(&request, Transport::Grpc);
        }
    }
    let single = export_requests(
        &Layout {
            metrics: 1,
            pods: 1,
            pods_per_deployment: 1,
        },
        1,
        now,
        1.0,
    );
    let mut baseline_request = single[0].clone();
    if let Some(Data::Gauge(g)) =
        &mut baseline_request.resource_metrics[0].scope_metrics[0].metrics[0].data
    {
        g.data_points[0].attributes[1] =
            string_attribute("deployment", "baseline-predictor".into());
    }
    baseline_request.resource_metrics[0].scope_metrics[0].metrics[0].name =
        "vllm:bench_baseline".into();
    running.state.ingest(&baseline_request, Transport::Grpc);

    let mut client =
        ExternalScalerClient::connect(format!("http://{}", running.addresses[0])).await?;
    // A metric and deployment from the middle of the layout.
    let query = format!(
        r#"sum({}{{namespace="bench", deployment="deployment-{:04}-predictor"}})"#,
        metric_name(layout.metrics / 2),
        layout.pods / layout.pods_per_deployment / 2
    );
    let query = query.as_str();
    let baseline_query =
        r#"sum(vllm:bench_baseline{namespace="bench", deployment="baseline-predictor"})"#;
    // Warm up connections and caches, then interleave to share any drift.
    measure_get_metrics(&mut client, query, 50).await?;
    measure_get_metrics(&mut client, baseline_query, 50).await?;
    let loaded = measure_get_metrics(&mut client, query, args.queries).await?;
    let baseline = measure_get_metrics(&mut client, baseline_query, args.queries).await?;

    let trigger = running.state.trigger(
        &[
            ("metricQuery".to_owned(), query.to_owned()),
            ("targetValue".to_owned(), "4".to_owned()),
            ("operationOverTime".to_owned(), "avg".to_owned()),
        ]
        .into_iter()
        .collect(),
    )?;
    let mut evaluate_only = Vec::with_capacity(args.queries);
    for _ in 0..args.queries {
        let started = Instant::now();
        trigger.evaluate(&running.state.store, now_nanos())?;
        evaluate_only.push(started.elapsed());
    }
    evaluate_only.sort();
    running.shutdown().await;

    let p50 = percentile(&loaded, 0.5);
    let p99 = percentile(&loaded, 0.99);
    let base50 = percentile(&baseline, 0.5);
    let base99 = percentile(&baseline, 0.99);
    Ok(BenchReport {
        series,
        ingest_points_per_second: full,
        decode_only_points_per_second: decode_only,
        ingest_vs_decode_ratio: full / decode_only,
        get_metrics_p50_us: p50,
        get_metrics_p99_us: p99,
        baseline_get_metrics_p50_us: base50,
        baseline_get_metrics_p99_us: base99,
        get_metrics_p50_ratio: p50 / base50,
        get_metrics_p99_ratio: p99 / base99,
        evaluate_only_p50_us: percentile(&evaluate_only, 0.5),
        rss_bytes_per_10k_series: rss_per_series * 10_000.0,
        raw_bytes_per_10k_series: raw_per_series * 10_000.0,
        rss_vs_raw_ratio: rss_per_series / raw_per_series,
        points_per_series_at_rss: args.rounds,
    })
}

fn print_table(r: &BenchReport) {
    println!("aim scaler bench: {} live series", r.series);
    println!(
        "{:<44} {:>16} {:>16} {:>8}",
        "figure", "measured", "baseline", "ratio"
    );
    println!(
        "{:<44} {:>16.0} {:>16.0} {:>8.2}",
        "OTLP ingest, points/s (one core) vs decode",
        r.ingest_points_per_second,
        r.decode_only_points_per_second,
        r.ingest_vs_decode_ratio
    );
    println!(
        "{:<44} {:>16.1} {:>16.1} {:>8.2}",
        "GetMetrics p50 µs vs 1-series metric",
        r.get_metrics_p50_us,
        r.baseline_get_metrics_p50_us,
        r.get_metrics_p50_ratio
    );
    println!(
        "{:<44} {:>16.1} {:>16.1} {:>8.2}",
        "GetMetrics p99 µs vs 1-series metric",
        r.get_metrics_p99_us,
        r.baseline_get_metrics_p99_us,
        r.get_metrics_p99_ratio
    );
    println!(
        "{:<44} {:>16.1}",
        "  of which query evaluation p50 µs", r.evaluate_only_p50_us
    );
    println!(
        "{:<44} {:>16.0} {:>16.0} {:>8.2}",
        format!(
            "RSS bytes per 10k series ({} points each) vs raw",
            r.points_per_series_at_rss
        ),
        r.rss_bytes_per_10k_series,
        r.raw_bytes_per_10k_series,
        r.rss_vs_raw_ratio
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn small_bench_runs_and_reports_consistent_figures() {
        let args = BenchArgs {
            series: 200,
            metrics: 4,
            pods_per_deployment: 5,
            rounds: 3,
            pods_per_request: 10,
            queries: 20,
            json: true,
        };
        let report = measure(&args).await.unwrap();
        assert_eq!(report.series, 200);
        assert!(report.ingest_points_per_second > 0.0);
        assert!(report.get_metrics_p99_us >= report.get_metrics_p50_us);
        assert!(
            (report.ingest_vs_decode_ratio
                - report.ingest_points_per_second / report.decode_only_points_per_second)
                .abs()
                < 1e-9
        );
    }
}
