//! `aim scaler bench`: the scaler at cluster scale, in the shape production
//! has — ONE metric name (`vllm:num_requests_running`, which every KServe
//! pod exports), KServe-shaped labels, 100 pods per deployment — so a
//! query pays for everything else stored under that name.
//!
//! - Ingest: points per CPU-second of decode + conversion + store on the
//!   calling thread, for two batch shapes (many pods per OTLP request, as
//!   a gateway collector sends, and one pod per request, as a sidecar
//!   does), against prost's decode alone (the floor of a receiver that
//!   decodes into owned structs, as this one did before `otlp_wire`).
//! - GetMetrics: p50/p99 over loopback gRPC, and of the evaluation alone
//!   (server-side), at each store size while a thread ingests at the
//!   production rate (every series one point per 5 s scrape).
//! - Memory: growth of resident memory per series as each size fills.
//! - Flood: the same latencies while one thread pushes a burst of new
//!   series of the same metric name (a cardinality flood) as fast as it
//!   can.
//!
//! Only the scaler's public API is used, so the same file measures an
//! older store for a same-session comparison.

use crate::args::ScalerArgs;
use crate::ingest::IngestReport;
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
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Store sizes (live series) at which GetMetrics latency and memory
    /// are measured, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
    pub sizes: Vec<usize>,
    /// Metric names the series are spread over. Production has one: every
    /// KServe pod exports `vllm:num_requests_running`.
    #[arg(long, default_value_t = 1)]
    pub metrics: usize,
    /// Pods per deployment, i.e. series one KServe query selects.
    #[arg(long, default_value_t = 100)]
    pub pods_per_deployment: usize,
    /// Deployments per namespace.
    #[arg(long, default_value_t = 100)]
    pub deployments_per_namespace: usize,
    /// Series behind the ingest throughput figures.
    #[arg(long, default_value_t = 10_000)]
    pub ingest_series: usize,
    /// Batch shapes for the ingest figures: pods per OTLP request,
    /// comma-separated (100: a gateway collector; 1: a sidecar).
    #[arg(long, value_delimiter = ',', default_value = "100,1")]
    pub pods_per_request: Vec<usize>,
    /// Scrapes (points per series) in each timed ingest pass.
    #[arg(long, default_value_t = 6)]
    pub rounds: usize,
    /// Points per series when a store is filled.
    #[arg(long, default_value_t = 4)]
    pub fill_points: usize,
    /// Series behind the memory figure, measured first, in a fresh
    /// process heap (later figures free memory the allocator reuses).
    #[arg(long, default_value_t = 100_000)]
    pub memory_series: usize,
    /// GetMetrics calls per latency figure.
    #[arg(long, default_value_t = 2000)]
    pub queries: usize,
    /// New series pushed during the flood figure; 0 skips it.
    #[arg(long, default_value_t = 1_000_000)]
    pub flood: usize,
    /// Live series (production shape) before the flood starts.
    #[arg(long, default_value_t = 10_000)]
    pub flood_base: usize,
    /// Print the result as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl Default for BenchArgs {
    fn default() -> Self {
        BenchArgs {
            sizes: vec![10_000, 100_000, 1_000_000],
            metrics: 1,
            pods_per_deployment: 100,
            deployments_per_namespace: 100,
            ingest_series: 10_000,
            pods_per_request: vec![100, 1],
            rounds: 6,
            fill_points: 4,
            memory_series: 100_000,
            queries: 2000,
            flood: 1_000_000,
            flood_base: 10_000,
            json: false,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct IngestFigure {
    pub pods_per_request: usize,
    pub points_per_cpu_second: f64,
    pub decode_only_points_per_cpu_second: f64,
    /// Share of the ingest CPU that decoding alone costs.
    pub decode_share: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Latency {
    pub calls: usize,
    /// Calls (GetMetrics and evaluations) that answered an error.
    pub errors: usize,
    pub get_metrics_p50_us: f64,
    pub get_metrics_p99_us: f64,
    /// The evaluation alone (what the server spends), same store.
    pub evaluate_p50_us: f64,
    pub evaluate_p99_us: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct MemoryFigure {
    pub series: usize,
    pub points_per_series: usize,
    pub rss_bytes_per_series: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SizeFigure {
    pub series: usize,
    /// Points per second the background ingest achieved while the
    /// latencies were taken (target: series / 5 s).
    pub background_points_per_second: f64,
    pub latency: Latency,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct FloodFigure {
    pub base_series: usize,
    pub flood_series: usize,
    pub flood_seconds: f64,
    pub flood_series_per_second: f64,
    pub latency: Latency,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    pub memory: MemoryFigure,
    pub ingest: Vec<IngestFigure>,
    /// GetMetrics on a metric with a single series: the RPC floor.
    pub rpc_floor_p50_us: f64,
    pub sizes: Vec<SizeFigure>,
    pub flood: Option<FloodFigure>,
}

const SCRAPE: u64 = 5_000_000_000;
const METRIC: &str = "vllm:num_requests_running";

/// Where the series of a run live: pods numbered from `first_pod`.
#[derive(Clone)]
struct Layout {
    metrics: usize,
    pods: usize,
    first_pod: usize,
    pods_per_deployment: usize,
    deployments_per_namespace: usize,
    /// Namespace prefix, so a flood lands beside the production series.
    prefix: &'static str,
}

impl Layout {
    fn new(args: &BenchArgs, series: usize) -> Layout {
        let metrics = args.metrics.max(1);
        Layout {
            metrics,
            pods: series.div_ceil(metrics),
            first_pod: 0,
            pods_per_deployment: args.pods_per_deployment.max(1),
            deployments_per_namespace: args.deployments_per_namespace.max(1),
            prefix: "ns",
        }
    }

    fn deployment(&self, pod: usize) -> usize {
        pod / self.pods_per_deployment
    }

    fn namespace(&self, deployment: usize) -> String {
        format!(
            "{}-{:03}",
            self.prefix,
            deployment / self.deployments_per_namespace
        )
    }

    fn deployment_name(&self, deployment: usize) -> String {
        format!("isvc-{deployment:05}-predictor")
    }
}

fn metric_name(m: usize) -> String {
    if m == 0 {
        METRIC.to_owned()
    } else {
        format!("vllm:bench_metric_{m:03}")
    }
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

/// What one pod's KServe sidecar sends: the OTel operator's `k8s.*`
/// resource attributes and the Prometheus receiver's own, and on each
/// point vLLM's labels plus the namespace/deployment/pod KServe's
/// transform copies from the resource.
fn pod_metrics(layout: &Layout, pod: usize, time: u64, value: f64) -> ResourceMetrics {
    let deployment = layout.deployment(pod);
    let namespace = layout.namespace(deployment);
    let deployment_name = layout.deployment_name(deployment);
    let pod_name = format!("{deployment_name}-6d9f8b7c5-{pod:07}");
    let resource = Resource {
        attributes: vec![
            string_attribute("k8s.namespace.name", namespace.clone()),
            string_attribute("k8s.deployment.name", deployment_name.clone()),
            string_attribute("k8s.pod.name", pod_name.clone()),
            string_attribute("service.name", "otel-collector".into()),
            string_attribute("service.instance.id", "localhost:8000".into()),
            string_attribute("server.address", "localhost".into()),
            string_attribute("server.port", "8000".into()),
            string_attribute("url.scheme", "http".into()),
        ],
        ..Default::default()
    };
    let metrics = (0..layout.metrics)
        .map(|m| Metric {
            name: metric_name(m),
            data: Some(Data::Gauge(Gauge {
                data_points: vec![NumberDataPoint {
                    attributes: vec![
                        string_attribute("engine", "0".into()),
                        string_attribute("model_name", "Qwen/Qwen3-8B".into()),
                        string_attribute("namespace", namespace.clone()),
                        string_attribute("deployment", deployment_name.clone()),
                        string_attribute("pod", pod_name.clone()),
                    ],
                    time_unix_nano: time,
                    value: Some(number_data_point::Value::AsDouble(value)),
                    ..Default::default()
                }],
            })),
            ..Default::default()
        })
        .collect();
    ResourceMetrics {
        resource: Some(resource),
        scope_metrics: vec![ScopeMetrics {
            metrics,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Pods `from..to` of the layout in one request.
fn export_request(
    layout: &Layout,
    pods: std::ops::Range<usize>,
    time: u64,
) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: pods
            .map(|p| {
                let pod = layout.first_pod + p;
                pod_metrics(layout, pod, time, (pod % 7) as f64)
            })
            .collect(),
    }
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

/// Every pod of the layout once, in requests of `pods_per_request`.
fn for_each_request(
    layout: &Layout,
    pods_per_request: usize,
    time: impl Fn() -> u64,
    mut each: impl FnMut(ExportMetricsServiceRequest),
) {
    let step = pods_per_request.max(1);
    let mut from = 0;
    while from < layout.pods {
        let to = (from + step).min(layout.pods);
        each(export_request(layout, from..to, time()));
        from = to;
    }
}

fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// CPU time of the calling thread; wall time where the kernel does not
/// say (then the figure is per wall-second, an underestimate on a busy
/// machine).
pub fn thread_cpu() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map(Duration::from_nanos)
        .unwrap_or_else(|| {
            static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
            START.get_or_init(Instant::now).elapsed()
        })
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
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

/// The ingest figures' workload, also for tools measuring the same thing
/// another way (`examples/ingest_allocs.rs`): a state that already holds
/// every series, and passes of encoded requests that each add `rounds`
/// more points to every series.
pub struct IngestWorkload {
    layout: Layout,
    first: u64,
    rounds: usize,
    pods_per_request: usize,
    pub state: ScalerState,
}

impl IngestWorkload {
    /// `args.ingest_series` series in requests of `pods_per_request` pods,
    /// filled with one pass (pass 0).
    pub fn new(args: &BenchArgs, pods_per_request: usize) -> anyhow::Result<IngestWorkload> {
        let workload = IngestWorkload {
            layout: Layout::new(args, args.ingest_series),
            first: now_nanos() - (4 * args.rounds as u64 + 1) * SCRAPE,
            rounds: args.rounds,
            pods_per_request,
            state: state_from_args(&bench_args()),
        };
        let (fill, fill_points) = workload.pass(0);
        ingest_encoded(&workload.state, &fill, fill_points)?;
        Ok(workload)
    }

    /// Pass `pass` encoded: requests and the points in them. Passes from
    /// 4 on are stamped ahead of the clock.
    pub fn pass(&self, pass: usize) -> (Vec<Vec<u8>>, usize) {
        let mut encoded = Vec::new();
        let mut points = 0;
        for round in 0..self.rounds {
            let time = self.first + (pass * self.rounds + round) as u64 * SCRAPE;
            for_each_request(
                &self.layout,
                self.pods_per_request,
                || time,
                |request| {
                    points += points_in(&request);
                    encoded.push(request.encode_to_vec());
                },
            );
        }
        (encoded, points)
    }
}

/// Decode + ingest points per CPU-second for one batch shape, best of
/// three passes into a store already holding every series (the machine is
/// shared), decode-only and full passes alternating so drift hits both.
fn measure_ingest(args: &BenchArgs, pods_per_request: usize) -> anyhow::Result<IngestFigure> {
    let workload = IngestWorkload::new(args, pods_per_request)?;
    let state = &workload.state;
    let encode_pass = |pass| workload.pass(pass);
    let mut decode_only: f64 = 0.0;
    let mut full: f64 = 0.0;
    for pass in 1..=3 {
        let (encoded, points) = encode_pass(pass);
        let started = thread_cpu();
        let mut decoded = 0;
        for bytes in &encoded {
            decoded += points_in(&ExportMetricsServiceRequest::decode(&bytes[..])?);
        }
        let cpu = (thread_cpu() - started).as_secs_f64();
        decode_only = decode_only.max(decoded as f64 / cpu);
        let started = thread_cpu();
        ingest_encoded(state, &encoded, points)?;
        let cpu = (thread_cpu() - started).as_secs_f64();
        full = full.max(points as f64 / cpu);
    }
    Ok(IngestFigure {
        pods_per_request,
        points_per_cpu_second: full,
        decode_only_points_per_cpu_second: decode_only,
        decode_share: full / decode_only,
    })
}

pub fn ingest_encoded(
    state: &ScalerState,
    encoded: &[Vec<u8>],
    points: usize,
) -> anyhow::Result<()> {
    let mut stored = 0u64;
    for bytes in encoded {
        stored += ingest_bytes(state, bytes)?.stored;
    }
    anyhow::ensure!(
        stored as usize == points,
        "stored {stored} of {points} points"
    );
    Ok(())
}

/// Decode and ingest of one encoded request, as the OTLP receivers do it.
/// The one function a bench of an older store (which decoded with prost
/// and then ingested the request) has to spell differently.
fn ingest_bytes(state: &ScalerState, bytes: &[u8]) -> anyhow::Result<IngestReport> {
    Ok(state.ingest_protobuf(bytes, Transport::Grpc)?)
}

fn trigger_metadata(query: &str) -> BTreeMap<String, String> {
    [
        ("metricQuery".to_owned(), query.to_owned()),
        ("targetValue".to_owned(), "4".to_owned()),
        ("operationOverTime".to_owned(), "avg".to_owned()),
    ]
    .into_iter()
    .collect()
}

/// KServe's query for up to 100 deployments of the layout, as KEDA polls
/// one ScaledObject after another.
fn kserve_queries(layout: &Layout) -> Vec<String> {
    let deployments = layout.pods.div_ceil(layout.pods_per_deployment);
    let stride = (deployments / 100).max(1);
    (0..deployments)
        .step_by(stride)
        .take(100)
        .map(|d| {
            format!(
                r#"sum({METRIC}{{namespace="{}", deployment="{}"}})"#,
                layout.namespace(d),
                layout.deployment_name(d)
            )
        })
        .collect()
}

/// GetMetrics round trips and evaluations alone, interleaved, cycling over
/// `queries`, until `calls` are made or `until` is set.
async fn measure_latency(
    client: &mut ExternalScalerClient<tonic::transport::Channel>,
    state: &ScalerState,
    queries: &[String],
    calls: usize,
    until: Option<&AtomicBool>,
) -> anyhow::Result<Latency> {
    let mut rpc = Vec::with_capacity(calls.min(100_000));
    let mut eval = Vec::with_capacity(calls.min(100_000));
    let mut errors = 0;
    for i in 0..calls {
        if until.is_some_and(|done| done.load(Ordering::Relaxed)) {
            break;
        }
        let query = &queries[i % queries.len()];
        let metadata = trigger_metadata(query);
        let request = GetMetricsRequest {
            scaled_object_ref: Some(ScaledObjectRef {
                name: "bench-predictor".into(),
                namespace: "bench".into(),
                scaler_metadata: metadata.clone().into_iter().collect::<HashMap<_, _>>(),
            }),
            metric_name: "bench-bench-predictor".into(),
        };
        // A failed call is timed and counted, not fatal: an overloaded
        // store answering "no points in the window" is a finding.
        let started = Instant::now();
        errors += usize::from(client.get_metrics(request).await.is_err());
        rpc.push(started.elapsed());
        let trigger = state.trigger(&metadata)?;
        let started = Instant::now();
        errors += usize::from(trigger.evaluate(&state.store, now_nanos()).is_err());
        eval.push(started.elapsed());
    }
    rpc.sort();
    eval.sort();
    Ok(Latency {
        calls: rpc.len(),
        errors,
        get_metrics_p50_us: percentile(&rpc, 0.5),
        get_metrics_p99_us: percentile(&rpc, 0.99),
        evaluate_p50_us: percentile(&eval, 0.5),
        evaluate_p99_us: percentile(&eval, 0.99),
    })
}

/// A thread re-sending every series of `layout` once per scrape interval,
/// as the pods' sidecars would, until `stop` is set. Returns points sent.
fn background_ingest(
    state: Arc<ScalerState>,
    layout: Layout,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let per_second = (layout.pods * layout.metrics) as f64 / (SCRAPE as f64 / 1e9);
        let started = Instant::now();
        let mut points = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let step = 100;
            let mut from = 0;
            while from < layout.pods && !stop.load(Ordering::Relaxed) {
                let to = (from + step).min(layout.pods);
                let request = export_request(&layout, from..to, now_nanos());
                points += state.ingest(&request, Transport::Grpc).stored;
                sent.store(points, Ordering::Relaxed);
                from = to;
                let due = Duration::from_secs_f64(points as f64 / per_second);
                if let Some(ahead) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(ahead);
                }
            }
        }
    })
}

/// `points` scrapes of every series, a scrape interval apart and ending
/// at the time each request is sent: a fill slower than the query window
/// (an old store at 1M series) must not leave the first series without a
/// point in the window.
fn fill(state: &ScalerState, layout: &Layout, points: usize) {
    let points = points.max(1);
    for round in 0..points {
        let back = (points - 1 - round) as u64 * SCRAPE;
        for_each_request(
            layout,
            100,
            || now_nanos() - back,
            |request| {
                state.ingest(&request, Transport::Grpc);
            },
        );
    }
}

async fn measure_size(args: &BenchArgs, series: usize) -> anyhow::Result<SizeFigure> {
    let running = crate::server::start(&bench_args()).await?;
    let state = running.state.clone();
    let layout = Layout::new(args, series);
    let filler = {
        let state = state.clone();
        let layout = layout.clone();
        let points = args.fill_points;
        tokio::task::spawn_blocking(move || fill(&state, &layout, points))
    };
    filler.await?;
    let stored = state.store.series_count();

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let ingesting = background_ingest(state.clone(), layout.clone(), stop.clone(), sent.clone());
    let mut client =
        ExternalScalerClient::connect(format!("http://{}", running.addresses[0])).await?;
    let queries = kserve_queries(&layout);
    let started = Instant::now();
    measure_latency(&mut client, &state, &queries, 50, None).await?;
    let latency = measure_latency(&mut client, &state, &queries, args.queries, None).await?;
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    tokio::task::spawn_blocking(move || ingesting.join())
        .await?
        .map_err(|_| anyhow::anyhow!("ingest thread panicked"))?;
    running.shutdown().await;
    Ok(SizeFigure {
        series: stored,
        background_points_per_second: sent.load(Ordering::Relaxed) as f64 / elapsed,
        latency,
    })
}

async fn measure_rpc_floor(args: &BenchArgs) -> anyhow::Result<f64> {
    let running = crate::server::start(&bench_args()).await?;
    let layout = Layout {
        pods: 1,
        ..Layout::new(args, 1)
    };
    fill(&running.state, &layout, 1);
    let mut client =
        ExternalScalerClient::connect(format!("http://{}", running.addresses[0])).await?;
    let queries = kserve_queries(&layout);
    let latency = measure_latency(
        &mut client,
        &running.state,
        &queries,
        args.queries.min(500),
        None,
    )
    .await?;
    running.shutdown().await;
    Ok(latency.get_metrics_p50_us)
}

async fn measure_flood(args: &BenchArgs) -> anyhow::Result<FloodFigure> {
    let running = crate::server::start(&bench_args()).await?;
    let state = running.state.clone();
    let layout = Layout::new(args, args.flood_base);
    fill(&state, &layout, args.fill_points);
    let base_series = state.store.series_count();
    // The flood: new pods of the same metric name in other namespaces, as
    // fast as one thread pushes them.
    let flood_layout = Layout {
        pods: args.flood.div_ceil(layout.metrics),
        first_pod: 0,
        prefix: "flood",
        ..layout.clone()
    };
    let done = Arc::new(AtomicBool::new(false));
    let mut client =
        ExternalScalerClient::connect(format!("http://{}", running.addresses[0])).await?;
    let queries = kserve_queries(&layout);
    measure_latency(&mut client, &state, &queries, 50, None).await?;
    let flooding = {
        let state = state.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            for_each_request(&flood_layout, 100, now_nanos, |request| {
                state.ingest(&request, Transport::Grpc);
            });
            done.store(true, Ordering::Relaxed);
            started.elapsed()
        })
    };
    let latency = measure_latency(&mut client, &state, &queries, usize::MAX, Some(&done)).await?;
    let flood_time = tokio::task::spawn_blocking(move || flooding.join())
        .await?
        .map_err(|_| anyhow::anyhow!("flood thread panicked"))?;
    let flood_series = state.store.series_count() - base_series;
    running.shutdown().await;
    Ok(FloodFigure {
        base_series,
        flood_series,
        flood_seconds: flood_time.as_secs_f64(),
        flood_series_per_second: flood_series as f64 / flood_time.as_secs_f64(),
        latency,
    })
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

/// Resident memory growth per series while a fresh store fills.
fn measure_memory(args: &BenchArgs) -> MemoryFigure {
    let state = state_from_args(&bench_args());
    let layout = Layout::new(args, args.memory_series);
    let before = resident_bytes();
    fill(&state, &layout, args.fill_points);
    let after = resident_bytes();
    let series = state.store.series_count();
    MemoryFigure {
        series,
        points_per_series: args.fill_points.max(1),
        rss_bytes_per_series: match (before, after) {
            (Some(b), Some(a)) => a.saturating_sub(b) as f64 / series.max(1) as f64,
            _ => f64::NAN,
        },
    }
}

pub async fn measure(args: &BenchArgs) -> anyhow::Result<BenchReport> {
    anyhow::ensure!(args.ingest_series > 0, "--ingest-series must be positive");
    let memory = {
        let args = args.clone();
        tokio::task::spawn_blocking(move || measure_memory(&args)).await?
    };
    let mut ingest = Vec::new();
    for &shape in &args.pods_per_request {
        let args = args.clone();
        ingest.push(tokio::task::spawn_blocking(move || measure_ingest(&args, shape)).await??);
    }
    let rpc_floor_p50_us = measure_rpc_floor(args).await?;
    let mut sizes = Vec::new();
    for &series in &args.sizes {
        sizes.push(measure_size(args, series).await?);
    }
    let flood = if args.flood > 0 {
        Some(measure_flood(args).await?)
    } else {
        None
    };
    Ok(BenchReport {
        memory,
        ingest,
        rpc_floor_p50_us,
        sizes,
        flood,
    })
}

fn print_latency(label: &str, l: &Latency) {
    println!(
        "{label:<28} {:>8} {:>12.1} {:>12.1} {:>12.1} {:>12.1} {:>7}",
        l.calls,
        l.get_metrics_p50_us,
        l.get_metrics_p99_us,
        l.evaluate_p50_us,
        l.evaluate_p99_us,
        l.errors
    );
}

fn print_table(r: &BenchReport) {
    println!("aim scaler bench: one metric name, KServe-shaped labels");
    println!();
    println!(
        "{:<28} {:>16} {:>16} {:>8}",
        "ingest (one thread)", "points/CPU-s", "decode only", "ratio"
    );
    for f in &r.ingest {
        println!(
            "{:<28} {:>16.0} {:>16.0} {:>8.2}",
            format!("{} pod(s) per request", f.pods_per_request),
            f.points_per_cpu_second,
            f.decode_only_points_per_cpu_second,
            f.decode_share
        );
    }
    println!();
    println!(
        "GetMetrics while ingesting at the scrape rate (µs; RPC floor p50 {:.1})",
        r.rpc_floor_p50_us
    );
    println!(
        "{:<28} {:>8} {:>12} {:>12} {:>12} {:>12} {:>7}",
        "series", "calls", "rpc p50", "rpc p99", "eval p50", "eval p99", "errors"
    );
    for s in &r.sizes {
        print_latency(&s.series.to_string(), &s.latency);
    }
    if let Some(f) = &r.flood {
        print_latency(
            &format!("flood +{} on {}", f.flood_series, f.base_series),
            &f.latency,
        );
        println!(
            "  flood took {:.1} s ({:.0} new series/s)",
            f.flood_seconds, f.flood_series_per_second
        );
    }
    for s in &r.sizes {
        println!(
            "  at {}: background ingest {:.0} points/s",
            s.series, s.background_points_per_second
        );
    }
    println!();
    println!(
        "memory: {:.0} bytes of RSS per series ({} series, {} points each)",
        r.memory.rss_bytes_per_series, r.memory.series, r.memory.points_per_series
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn small_bench_runs_and_reports_consistent_figures() {
        let args = BenchArgs {
            sizes: vec![200, 400],
            pods_per_deployment: 5,
            deployments_per_namespace: 4,
            ingest_series: 100,
            pods_per_request: vec![10, 1],
            rounds: 2,
            fill_points: 2,
            memory_series: 100,
            queries: 20,
            flood: 300,
            flood_base: 50,
            ..BenchArgs::default()
        };
        let report = measure(&args).await.unwrap();
        assert_eq!(report.memory.series, 100);
        assert_eq!(report.ingest.len(), 2);
        assert!(report.ingest.iter().all(|f| f.points_per_cpu_second > 0.0));
        assert_eq!(report.sizes[0].series, 200);
        assert_eq!(report.sizes[1].series, 400);
        for s in &report.sizes {
            assert_eq!(s.latency.calls, 20);
            assert_eq!(s.latency.errors, 0);
            assert!(s.latency.get_metrics_p99_us >= s.latency.get_metrics_p50_us);
        }
        let flood = report.flood.unwrap();
        assert_eq!(flood.base_series, 50);
        assert_eq!(flood.flood_series, 300);
    }

    #[test]
    fn layout_is_kserve_shaped() {
        let args = BenchArgs::default();
        let layout = Layout::new(&args, 10_000);
        let queries = kserve_queries(&layout);
        assert_eq!(queries.len(), 100);
        assert_eq!(
            queries[42],
            r#"sum(vllm:num_requests_running{namespace="ns-000", deployment="isvc-00042-predictor"})"#
        );
        let request = export_request(&layout, 0..100, 1);
        assert_eq!(points_in(&request), 100);
    }
}
