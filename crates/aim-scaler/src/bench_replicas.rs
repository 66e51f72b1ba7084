//! `aim scaler bench-replicas`: two scaler replicas fed the same exports
//! (every export fanned out to both, as docs/scaler.md "Several replicas"
//! asks) give KEDA the same GetMetrics answers through a collector
//! restart, by default at production scale: 100,000 series of ONE metric
//! name (1,000 deployments × 100 pods).
//!
//! Both replicas are real in-process scalers on loopback: exports go
//! through their OTLP/gRPC receivers, questions through KEDA's
//! ExternalScaler gRPC. The collector exports a cumulative counter for
//! every pod, stops (every series goes stale and is swept), then restarts:
//! it replays the export it had queued before it stopped, then exports
//! with a new start time and counters reset, with half the pods of one
//! deployment gone and 20 new pods in another, until the gone pods are
//! stale too. Replica a receives each round in order, replica b in reverse
//! order plus a retried request. After each phase both are asked the same
//! KServe-shaped queries (every `operationOverTime`, `valueIfMissing`,
//! fleet-wide sums and a series count) and must answer identically, value
//! for value and error for error; the values are also checked against what
//! the exports imply, so agreeing on a wrong answer fails too.
//!
//! A debug build is too slow for 100k series within the freshness limit,
//! so `tests/replicas.rs` runs this same scenario at 2,000 series, and
//! this mode runs it at full size in a release build.

use crate::proto::externalscaler::external_scaler_client::ExternalScalerClient;
use crate::proto::externalscaler::{GetMetricsRequest, ScaledObjectRef};
use crate::state::now_nanos;
use crate::{Running, ScalerArgs};
use anyhow::{Context, bail, ensure};
use bytes::{Buf, BufMut, Bytes};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    metric::Data, number_data_point,
};
use prost::Message;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

const S: u64 = 1_000_000_000;
const METRIC: &str = "vllm:request_success_total";
const PODS_PER_REQUEST: usize = 100;
/// Pods added to one deployment by the restart.
const NEW_PODS: usize = 20;
/// Headroom kept between a phase's length and the freshness limit.
const MARGIN: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, clap::Args)]
pub struct ReplicasBenchArgs {
    /// Deployments (at least 4), all exporting the same metric name.
    #[arg(long, default_value_t = 1000)]
    pub deployments: usize,
    /// Pods per deployment (even: the restart loses half of one
    /// deployment's).
    #[arg(long, default_value_t = 100)]
    pub pods_per_deployment: usize,
    /// `--freshness` of both replicas. A round of exports must reach both
    /// well within it, or the replicas may rightly disagree about series
    /// at the edge (see docs/scaler.md "Several replicas").
    #[arg(long, default_value = "5s", value_parser = crate::args::duration_arg)]
    pub freshness: Duration,
    /// Print the result as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl Default for ReplicasBenchArgs {
    fn default() -> Self {
        ReplicasBenchArgs {
            deployments: 1000,
            pods_per_deployment: 100,
            freshness: Duration::from_secs(5),
            json: false,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PhaseReport {
    pub phase: &'static str,
    /// Series each replica held when asked.
    pub series: usize,
    /// Queries asked of both replicas (all answered alike).
    pub queries: usize,
    /// Of those, answered with a value (the rest with the same error).
    pub values: usize,
    pub deliver_seconds: f64,
    pub ask_seconds: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplicasReport {
    pub series: usize,
    pub phases: Vec<PhaseReport>,
    pub seconds: f64,
}

/// Sends pre-encoded OTLP requests, so a round is encoded once for both
/// replicas.
#[derive(Clone, Default)]
struct RawCodec;
struct RawEncoder;
struct RawDecoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

/// An OTLP/gRPC exporter sending pre-encoded requests.
struct Exporter(tonic::client::Grpc<Channel>);

impl Exporter {
    async fn connect(address: SocketAddr) -> anyhow::Result<Exporter> {
        let channel = Channel::from_shared(format!("http://{address}"))?
            .connect()
            .await?;
        Ok(Exporter(tonic::client::Grpc::new(channel)))
    }

    async fn export(&mut self, body: Bytes) -> anyhow::Result<()> {
        self.0.ready().await?;
        let path = http::uri::PathAndQuery::from_static(
            "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
        );
        let response = self
            .0
            .unary(tonic::Request::new(body), path, RawCodec)
            .await?
            .into_inner();
        // An empty response: no partial success, every point stored.
        ensure!(response.is_empty(), "an export was partly rejected");
        Ok(())
    }
}

/// One pod of the fleet.
#[derive(Clone, Copy)]
struct Pod {
    deployment: usize,
    /// Unique across the fleet.
    id: usize,
}

fn namespace(deployment: usize) -> String {
    format!("ns-{:02}", deployment / 100)
}

fn deployment_name(deployment: usize) -> String {
    format!("isvc-{deployment:04}-predictor")
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

/// One round of exports: every pod's counter at `time`, in requests of
/// [`PODS_PER_REQUEST`] pods, each encoded once.
fn round(pods: &[Pod], time: u64, start: u64, value: impl Fn(&Pod) -> f64) -> Vec<Bytes> {
    pods.chunks(PODS_PER_REQUEST)
        .map(|chunk| {
            let resource_metrics = chunk
                .iter()
                .map(|pod| {
                    let deployment = deployment_name(pod.deployment);
                    let point = NumberDataPoint {
                        attributes: vec![
                            string_attribute("namespace", namespace(pod.deployment)),
                            string_attribute("pod", format!("{deployment}-{:06}", pod.id)),
                            string_attribute("deployment", deployment),
                            string_attribute("model_name", "Qwen/Qwen3-8B".into()),
                        ],
                        start_time_unix_nano: start,
                        time_unix_nano: time,
                        value: Some(number_data_point::Value::AsDouble(value(pod))),
                        ..Default::default()
                    };
                    ResourceMetrics {
                        scope_metrics: vec![ScopeMetrics {
                            metrics: vec![Metric {
                                name: METRIC.into(),
                                data: Some(Data::Sum(Sum {
                                    data_points: vec![point],
                                    aggregation_temporality: AggregationTemporality::Cumulative
                                        as i32,
                                    is_monotonic: true,
                                })),
                                ..Default::default()
                            }],
                            ..Default::default()
                        }],
                        ..Default::default()
                    }
                })
                .collect();
            Bytes::from(ExportMetricsServiceRequest { resource_metrics }.encode_to_vec())
        })
        .collect()
}

/// Both replicas' ends: exporters and KEDA clients.
struct Pair {
    export: [Exporter; 2],
    keda: [ExternalScalerClient<Channel>; 2],
}

impl Pair {
    /// Fans a round out to both replicas at once: a in order, b in reverse
    /// order, then b gets request `retry` again (an exporter retrying a
    /// request whose answer it lost). Returns the time it took.
    async fn deliver(&mut self, requests: &[Bytes], retry: usize) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let [a, b] = &mut self.export;
        for (forward, backward) in requests.iter().zip(requests.iter().rev()) {
            let (sent_a, sent_b) =
                tokio::join!(a.export(forward.clone()), b.export(backward.clone()));
            sent_a?;
            sent_b?;
        }
        if !requests.is_empty() {
            b.export(requests[retry % requests.len()].clone()).await?;
        }
        Ok(started.elapsed())
    }
}

type Answer = Result<(f64, i64), (tonic::Code, String)>;

/// What KEDA would poll.
struct Query {
    text: String,
    op: &'static str,
    value_if_missing: bool,
}

/// KEDA's GetMetrics for one query.
async fn get_metrics(client: &mut ExternalScalerClient<Channel>, query: &Query) -> Answer {
    let mut metadata = HashMap::from([
        ("metricQuery".to_owned(), query.text.clone()),
        ("targetValue".to_owned(), "4".to_owned()),
        ("operationOverTime".to_owned(), query.op.to_owned()),
    ]);
    if query.value_if_missing {
        metadata.insert("valueIfMissing".into(), "0".into());
    }
    let reference = ScaledObjectRef {
        name: "chat-predictor".into(),
        namespace: "ns-00".into(),
        scaler_metadata: metadata,
    };
    client
        .get_metrics(GetMetricsRequest {
            scaled_object_ref: Some(reference),
            metric_name: "ns-00-chat-predictor".into(),
        })
        .await
        .map(|r| {
            let value = &r.into_inner().metric_values[0];
            (value.metric_value_float, value.metric_value)
        })
        .map_err(|s| (s.code(), s.message().to_owned()))
}

/// The deployments the queries watch.
#[derive(Clone, Copy)]
struct Watched {
    /// Loses half its pods at the restart.
    shrinking: usize,
    /// Gains [`NEW_PODS`] at the restart.
    growing: usize,
    /// Unchanged.
    steady: usize,
}

const OPS: [&str; 6] = ["last_one", "avg", "max", "min", "rate", "count"];

/// Per watched deployment: every operation, then `last_one` with
/// `valueIfMissing`; then fleet-wide sums (last value, rate) and a count
/// of series.
fn queries(watched: Watched) -> Vec<Query> {
    let mut out = Vec::new();
    for d in [watched.shrinking, watched.growing, watched.steady] {
        let text = format!(
            r#"sum({METRIC}{{namespace="{}", deployment="{}"}})"#,
            namespace(d),
            deployment_name(d)
        );
        for op in OPS {
            out.push(Query {
                text: text.clone(),
                op,
                value_if_missing: false,
            });
        }
        out.push(Query {
            text,
            op: "last_one",
            value_if_missing: true,
        });
    }
    for op in ["last_one", "rate"] {
        out.push(Query {
            text: format!("sum({METRIC})"),
            op,
            value_if_missing: false,
        });
    }
    out.push(Query {
        text: format!(r#"count({METRIC}{{model_name="Qwen/Qwen3-8B"}})"#),
        op: "last_one",
        value_if_missing: false,
    });
    out
}

/// Index of a watched deployment's query in [`queries`].
fn at(deployment: usize, op: &str) -> usize {
    deployment * (OPS.len() + 1) + OPS.iter().position(|o| *o == op).unwrap_or(OPS.len())
}

/// Index of the series count in [`queries`].
const COUNT: usize = 3 * (OPS.len() + 1) + 2;

/// Answers of one phase (replica a's; b's were equal).
struct Answers(Vec<Answer>);

impl Answers {
    fn value(&self, index: usize) -> anyhow::Result<f64> {
        match &self.0[index] {
            Ok((value, _)) => Ok(*value),
            Err(e) => bail!("query {index} answered {e:?}"),
        }
    }

    fn expect(&self, index: usize, expected: f64, what: &str) -> anyhow::Result<()> {
        let value = self.value(index)?;
        ensure!(
            (value - expected).abs() <= 1e-9 * expected.abs().max(1.0),
            "{what}: answered {value}, the exports imply {expected}"
        );
        Ok(())
    }
}

async fn ask_both(
    pair: &mut Pair,
    running: &[Running; 2],
    phase: &'static str,
    watched: Watched,
    deliver: Duration,
    report: &mut Vec<PhaseReport>,
) -> anyhow::Result<Answers> {
    let started = Instant::now();
    let series = running[0].state.store.series_count();
    ensure!(
        series == running[1].state.store.series_count(),
        "{phase}: the replicas hold {series} and {} series",
        running[1].state.store.series_count()
    );
    let mut answers = Vec::new();
    let [a, b] = &mut pair.keda;
    for query in queries(watched) {
        let (from_a, from_b) = tokio::join!(get_metrics(a, &query), get_metrics(b, &query));
        ensure!(
            from_a == from_b,
            "{phase}: {} {} (valueIfMissing: {}): replica a answered {from_a:?}, b {from_b:?}",
            query.text,
            query.op,
            query.value_if_missing
        );
        answers.push(from_a);
    }
    report.push(PhaseReport {
        phase,
        series,
        queries: answers.len(),
        values: answers.iter().filter(|a| a.is_ok()).count(),
        deliver_seconds: deliver.as_secs_f64(),
        ask_seconds: started.elapsed().as_secs_f64(),
    });
    Ok(Answers(answers))
}

async fn start_replica(freshness: Duration) -> anyhow::Result<Running> {
    let mut args = ScalerArgs::defaults();
    let loopback: SocketAddr = "127.0.0.1:0".parse()?;
    args.listen = vec![loopback, loopback];
    args.admin_listen = loopback;
    args.freshness = freshness;
    args.sweep_interval = Duration::from_millis(200);
    args.warmup = Duration::ZERO;
    crate::server::start(&args).await
}

/// Runs the scenario; any disagreement or wrong value is an error.
pub async fn scenario(args: &ReplicasBenchArgs) -> anyhow::Result<ReplicasReport> {
    let deployments = args.deployments;
    let per = args.pods_per_deployment;
    ensure!(deployments >= 4, "--deployments must be at least 4");
    ensure!(
        per >= 2 && per.is_multiple_of(2),
        "--pods-per-deployment must be even"
    );
    let freshness = args.freshness;
    let started = Instant::now();
    let running = [
        start_replica(freshness).await?,
        start_replica(freshness).await?,
    ];
    let result = run_phases(args, &running).await;
    for replica in running {
        replica.shutdown().await;
    }
    let phases = result?;
    Ok(ReplicasReport {
        series: deployments * per,
        phases,
        seconds: started.elapsed().as_secs_f64(),
    })
}

async fn run_phases(
    args: &ReplicasBenchArgs,
    running: &[Running; 2],
) -> anyhow::Result<Vec<PhaseReport>> {
    let (deployments, per, freshness) =
        (args.deployments, args.pods_per_deployment, args.freshness);
    let mut pair = Pair {
        export: [
            Exporter::connect(running[0].addresses[0]).await?,
            Exporter::connect(running[1].addresses[0]).await?,
        ],
        keda: [
            ExternalScalerClient::connect(format!("http://{}", running[0].addresses[1])).await?,
            ExternalScalerClient::connect(format!("http://{}", running[1].addresses[1])).await?,
        ],
    };
    let watched = Watched {
        shrinking: deployments / 8,
        growing: deployments / 2,
        steady: deployments - 1,
    };
    let series = deployments * per;
    let fleet: Vec<Pod> = (0..series)
        .map(|id| Pod {
            deployment: id / per,
            id,
        })
        .collect();
    let pods_of = |pods: &[Pod], d: usize| -> Vec<Pod> {
        pods.iter().copied().filter(|p| p.deployment == d).collect()
    };
    let mut report = Vec::new();
    // Timestamps a minute back: inside the default 120 s window for the
    // whole run, and never near its edge.
    let base = now_nanos() - 60 * S;
    let old_start = base - 3600 * S;
    let before = |round: u64| move |pod: &Pod| (100 * round + (pod.id % 50) as u64) as f64;
    let slow = |phase: &str, took: Duration| {
        anyhow::anyhow!(
            "{phase} took {took:?}, longer than the {freshness:?} freshness limit: \
             series could go stale mid-phase; raise --freshness"
        )
    };

    // Phase 1: the collector exports two rounds.
    let round0 = round(&fleet, base, old_start, before(0));
    let round1 = round(&fleet, base + 5 * S, old_start, before(1));
    let phase = Instant::now();
    let deliver = pair.deliver(&round0, 3).await? + pair.deliver(&round1, 500).await?;
    let answers = ask_both(
        &mut pair,
        running,
        "exporting",
        watched,
        deliver,
        &mut report,
    )
    .await?;
    if phase.elapsed() + MARGIN > freshness {
        return Err(slow("exporting", phase.elapsed()));
    }
    // A watched deployment: last values 100 + id % 50; rate 100 per pod
    // over 5 s; two points per pod. The count is every series.
    let shrinking = pods_of(&fleet, watched.shrinking);
    let last: f64 = shrinking.iter().map(before(1)).sum();
    answers.expect(at(0, "last_one"), last, "last_one before the restart")?;
    answers.expect(at(0, "rate"), per as f64 * 100.0 / 5.0, "rate")?;
    answers.expect(at(0, "count"), 2.0 * per as f64, "points")?;
    answers.expect(COUNT, series as f64, "series")?;

    // Phase 2: the collector stops. Once every series is past freshness
    // and swept, both answer "never received" (NOT_FOUND), and a trigger
    // with valueIfMissing its value.
    tokio::time::sleep(freshness + Duration::from_millis(1500)).await;
    let answers = ask_both(
        &mut pair,
        running,
        "collector stopped",
        watched,
        Duration::ZERO,
        &mut report,
    )
    .await?;
    for (i, query) in queries(watched).iter().enumerate() {
        match (&answers.0[i], query.value_if_missing) {
            (Ok((value, _)), true) if *value == 0.0 => {}
            (Err((tonic::Code::NotFound, _)), false) => {}
            (other, _) => bail!(
                "collector stopped: {} {} answered {other:?}",
                query.text,
                query.op
            ),
        }
    }

    // Phase 3: the collector restarts. It replays the export it had
    // queued (round 1), then exports with a new start time and counters
    // reset; one deployment lost half its pods, another gained some.
    let mut restarted: Vec<Pod> = fleet
        .iter()
        .copied()
        .filter(|p| !(p.deployment == watched.shrinking && p.id % 2 == 1))
        .collect();
    restarted.extend((0..NEW_PODS).map(|i| Pod {
        deployment: watched.growing,
        id: series + i,
    }));
    let new_start = base + 8 * S;
    let after = |round: u64| move |pod: &Pod| (3 * round + (pod.id % 5) as u64) as f64;
    let round2 = round(&restarted, base + 10 * S, new_start, after(1));
    let round3 = round(&restarted, base + 15 * S, new_start, after(2));
    let phase = Instant::now();
    let mut deliver = pair.deliver(&round1, 0).await?;
    // The replay is the last the gone pods ever send.
    let replayed_at = Instant::now();
    deliver += pair.deliver(&round2, 999).await?;
    let answers = ask_both(
        &mut pair,
        running,
        "restarted",
        watched,
        deliver,
        &mut report,
    )
    .await?;
    // The replay brought every old series back for now, gone pods too.
    answers.expect(COUNT, (series + NEW_PODS) as f64, "series after the replay")?;
    let growing = pods_of(&restarted, watched.growing);
    answers.expect(
        at(1, "count"),
        2.0 * per as f64 + NEW_PODS as f64,
        "points of the growing deployment",
    )?;

    // Phase 4: exports go on.
    let deliver = pair.deliver(&round3, 42).await?;
    let answers = ask_both(
        &mut pair,
        running,
        "exporting again",
        watched,
        deliver,
        &mut report,
    )
    .await?;
    if phase.elapsed() + MARGIN > freshness {
        return Err(slow("restarting", phase.elapsed()));
    }
    // A steady deployment: last values 6 + id % 5. Its rate counts the
    // reset (the drop to the new start's first value is all increase),
    // then +3, over the 10 s since the replayed point.
    let steady = pods_of(&restarted, watched.steady);
    let last: f64 = steady.iter().map(after(2)).sum();
    answers.expect(at(2, "last_one"), last, "last_one after the restart")?;
    let rate: f64 = steady.iter().map(|p| after(2)(p) / 10.0).sum();
    answers.expect(at(2, "rate"), rate, "reset-aware rate")?;
    let last: f64 = growing.iter().map(after(2)).sum();
    answers.expect(at(1, "last_one"), last, "last_one with the new pods")?;

    // Phase 5: exports go on every second; the gone pods, last heard of
    // in the replay, go stale and are swept on both replicas.
    let mut rounds = 0u64;
    let mut deliver = Duration::ZERO;
    while replayed_at.elapsed() < freshness + Duration::from_millis(1500) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let next = round(
            &restarted,
            base + (20 + 5 * rounds) * S,
            new_start,
            after(3 + rounds),
        );
        deliver += pair.deliver(&next, rounds as usize).await?;
        rounds += 1;
    }
    let answers = ask_both(
        &mut pair,
        running,
        "gone pods stale",
        watched,
        deliver,
        &mut report,
    )
    .await
    .context("after the gone pods went stale")?;
    answers.expect(
        COUNT,
        (series + NEW_PODS - per / 2) as f64,
        "series once the gone pods are stale",
    )?;
    answers.expect(
        at(0, "count"),
        (per / 2) as f64 * (3 + rounds) as f64,
        "points of the pods left: the replayed one and every later one",
    )?;
    Ok(report)
}

pub async fn run(args: ReplicasBenchArgs) -> anyhow::Result<()> {
    let report = scenario(&args).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "aim scaler bench-replicas: two replicas, {} series of one metric name, freshness {:?}",
        report.series, args.freshness
    );
    println!();
    println!(
        "{:<20} {:>9} {:>8} {:>7} {:>11} {:>9}",
        "phase", "series", "queries", "values", "deliver s", "ask s"
    );
    for p in &report.phases {
        println!(
            "{:<20} {:>9} {:>8} {:>7} {:>11.2} {:>9.2}",
            p.phase, p.series, p.queries, p.values, p.deliver_seconds, p.ask_seconds
        );
    }
    println!();
    println!(
        "every answer alike on both replicas and as the exports imply ({:.1} s)",
        report.seconds
    );
    Ok(())
}
