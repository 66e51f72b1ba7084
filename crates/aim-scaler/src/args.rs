//! Command-line interface of `aim scaler`.

use crate::bench::BenchArgs;
use crate::ingest::DEFAULT_RESOURCE_ATTRIBUTES;
use crate::trigger::parse_duration;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub(crate) fn duration_arg(text: &str) -> Result<Duration, String> {
    parse_duration(text)
        .ok_or_else(|| format!("{text:?} is not a duration; use e.g. 15s, 2m, 500ms"))
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum ScalerCommand {
    /// Measure ingest throughput, GetMetrics latency and memory per series.
    Bench(BenchArgs),
    /// Measure the compacted history: memory per query and per step, the
    /// snapshot's size, and what a day of history adds to an evaluation.
    BenchHistory(crate::bench_history::HistoryBenchArgs),
    /// Show two replicas fed the same exports give KEDA the same answers
    /// through a collector restart (100k series by default).
    BenchReplicas(crate::bench_replicas::ReplicasBenchArgs),
}

/// KEDA external scaler fed by OpenTelemetry metrics (drop-in for
/// keda-otel-scaler / kedify otel-add-on).
#[derive(Debug, Clone, clap::Args)]
pub struct ScalerArgs {
    #[command(subcommand)]
    pub command: Option<ScalerCommand>,

    /// Addresses that each serve OTLP/gRPC, OTLP/HTTP (POST /v1/metrics)
    /// and KEDA's ExternalScaler. 4317 is the address in the AIM docs and
    /// otel-add-on's OTLP port; 4318 is KServe's default scaler address.
    #[arg(
        long = "listen",
        env = "AIM_SCALER_LISTEN",
        value_delimiter = ',',
        default_value = "0.0.0.0:4317,0.0.0.0:4318"
    )]
    pub listen: Vec<SocketAddr>,

    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "AIM_SCALER_ADMIN_LISTEN", default_value = "0.0.0.0:8080")]
    pub admin_listen: SocketAddr,

    /// How long points are kept (by their own timestamp).
    #[arg(long, env = "AIM_SCALER_RETENTION", default_value = "300s", value_parser = duration_arg)]
    pub retention: Duration,

    /// A series not received for this long stops counting and is dropped:
    /// a dead pod leaves the answer within seconds. Use about 3x the
    /// collector's scrape/export interval.
    #[arg(long, env = "AIM_SCALER_FRESHNESS", default_value = "15s", value_parser = duration_arg)]
    pub freshness: Duration,

    /// After a start, KEDA's metric queries are refused (UNAVAILABLE) for
    /// this long. The store starts empty and fills as each pod's sidecar
    /// exports (once per scrape interval, 5 s with KServe's defaults): a
    /// sum over the pods that happened to export first would under-count
    /// and could scale a loaded service down. KEDA counts the errors toward
    /// its fallback and the HPA holds its replicas meanwhile. 0 turns it off.
    #[arg(long, env = "AIM_SCALER_WARMUP", default_value = "10s", value_parser = duration_arg)]
    pub warmup: Duration,

    /// operationOverTime window for triggers that set no `window` key
    /// (otel-add-on's retention, 120 s).
    #[arg(long, env = "AIM_SCALER_DEFAULT_WINDOW", default_value = "120s", value_parser = duration_arg)]
    pub default_window: Duration,

    /// Most live series; points of further series are rejected and counted
    /// in aim_scaler_points_rejected_total{reason="series_cap"}.
    #[arg(long, env = "AIM_SCALER_MAX_SERIES", default_value_t = 200_000)]
    pub max_series: usize,

    /// Ring buffer size per series.
    #[arg(long, env = "AIM_SCALER_MAX_POINTS_PER_SERIES", default_value_t = 1024)]
    pub max_points_per_series: usize,

    /// Largest OTLP request accepted (gRPC message or HTTP body, after
    /// decompression).
    #[arg(long, env = "AIM_SCALER_MAX_REQUEST_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_request_bytes: usize,

    /// Resource attributes copied into every point's labels.
    #[arg(long, env = "AIM_SCALER_RESOURCE_ATTRIBUTES", value_delimiter = ',', default_values_t = DEFAULT_RESOURCE_ATTRIBUTES.iter().map(|s| s.to_string()))]
    pub resource_attributes: Vec<String>,

    /// How often an open StreamIsActive re-checks when no data arrives.
    #[arg(long, env = "AIM_SCALER_STREAM_INTERVAL", default_value = "1s", value_parser = duration_arg)]
    pub stream_interval: Duration,

    /// How often stale series are removed.
    #[arg(long, env = "AIM_SCALER_SWEEP_INTERVAL", default_value = "1s", value_parser = duration_arg)]
    pub sweep_interval: Duration,

    /// PEM certificate chain: enables TLS on every listener.
    #[arg(long, env = "AIM_SCALER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, env = "AIM_SCALER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA bundle: require client certificates signed by it (mTLS).
    #[arg(long, env = "AIM_SCALER_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Directory where the compacted query history is saved (every
    /// --history-snapshot-interval and at shutdown) and read back at start,
    /// so a restart keeps what history-reading policies (predictive's
    /// season) have learned. Without it the history lives in memory only.
    #[arg(long, env = "AIM_SCALER_HISTORY_DIR")]
    pub history_dir: Option<PathBuf>,

    /// Longest history kept for any query, whatever a policy asks for
    /// (e.g. predictive's `season` plus its smoothing). 0 keeps none
    /// beyond --retention.
    #[arg(long, env = "AIM_SCALER_HISTORY_MAX_AGE", default_value = "192h", value_parser = duration_arg)]
    pub history_max_age: Duration,

    /// Most queries whose history is kept (8 bytes per 15 s step each: a
    /// day is about 46 KB). Further queries get only the raw store's
    /// history and are counted in aim_scaler_history_queries_refused_total.
    #[arg(long, env = "AIM_SCALER_HISTORY_MAX_QUERIES", default_value_t = 256)]
    pub history_max_queries: usize,

    /// A query's history is dropped once no trigger has asked for it for
    /// this long beyond the longest history it was kept for.
    #[arg(long, env = "AIM_SCALER_HISTORY_IDLE", default_value = "1h", value_parser = duration_arg)]
    pub history_idle: Duration,

    /// How often the history is saved to --history-dir.
    #[arg(long, env = "AIM_SCALER_HISTORY_SNAPSHOT_INTERVAL", default_value = "60s", value_parser = duration_arg)]
    pub history_snapshot_interval: Duration,

    /// How often certificate files are checked for changes.
    #[arg(long, env = "AIM_SCALER_TLS_RELOAD_INTERVAL", default_value = "10s", value_parser = duration_arg)]
    pub tls_reload_interval: Duration,
}

impl ScalerArgs {
    /// Defaults as on the command line, for tests and embedding.
    pub fn defaults() -> Self {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: ScalerArgs,
        }
        Wrapper::parse_from(["aim-scaler"]).args
    }
}
