//! Where ingest's CPU and allocations go, on the bench's own workload
//! (`aim scaler bench`'s ingest figures: KServe-shaped requests into a
//! store that already holds every series), for both decode paths in the
//! same binary and the same run:
//!
//! - `prost`: `ExportMetricsServiceRequest::decode`, then `ingest` of the
//!   owned request (what the receivers did before `otlp_wire`);
//! - `wire`: `ingest_protobuf`, the borrowing reader;
//! - `decode`: prost's decode alone.
//!
//! A counting global allocator reports allocations per point; CPU is the
//! calling thread's. `--only wire` (or `prost`) runs one path in a loop,
//! for `perf record`.
//!
//! ```sh
//! cargo run --release -p aim-scaler --example ingest_allocs
//! cargo run --release -p aim-scaler --example ingest_allocs -- --only wire --pods-per-request 1
//! ```

use aim_scaler::bench::{IngestWorkload, thread_cpu};
use aim_scaler::self_metrics::Transport;
use clap::Parser;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use prost::Message;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

/// Counts allocations (and reallocations) made through the global allocator.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static ALLOCATED_BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is passed through to the system allocator unchanged;
// the counters are plain atomics.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc`/`realloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED_BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: aim_scaler::BenchArgs,
    /// Run only this path (`wire`, `prost` or `decode`), 20 times over,
    /// for a profiler.
    #[arg(long)]
    only: Option<String>,
}

#[derive(Clone, Copy, Default)]
struct Figure {
    points_per_cpu_second: f64,
    allocations_per_point: f64,
    bytes_per_point: f64,
}

fn run(path: &str, state: &aim_scaler::state::ScalerState, encoded: &[Vec<u8>]) -> u64 {
    let mut points = 0;
    for bytes in encoded {
        points += match path {
            "wire" => {
                state
                    .ingest_protobuf(bytes, Transport::Grpc)
                    .expect("valid request")
                    .stored
            }
            "prost" => {
                let request = ExportMetricsServiceRequest::decode(&bytes[..]).expect("valid");
                state.ingest(&request, Transport::Grpc).stored
            }
            _ => {
                let request = ExportMetricsServiceRequest::decode(&bytes[..]).expect("valid");
                request.resource_metrics.len() as u64
            }
        };
    }
    points
}

fn measure(
    path: &str,
    state: &aim_scaler::state::ScalerState,
    encoded: &[Vec<u8>],
    points: usize,
) -> Figure {
    let allocations = ALLOCATIONS.load(Ordering::Relaxed);
    let bytes = ALLOCATED_BYTES.load(Ordering::Relaxed);
    let started = thread_cpu();
    run(path, state, encoded);
    let cpu = (thread_cpu() - started).as_secs_f64();
    let points = points as f64;
    Figure {
        points_per_cpu_second: points / cpu,
        allocations_per_point: (ALLOCATIONS.load(Ordering::Relaxed) - allocations) as f64 / points,
        bytes_per_point: (ALLOCATED_BYTES.load(Ordering::Relaxed) - bytes) as f64 / points,
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let args = cli.args;
    println!(
        "{:<10} {:<6} {:>14} {:>14} {:>14}",
        "pods/req", "path", "points/CPU-s", "allocs/point", "bytes/point"
    );
    for &shape in &args.pods_per_request {
        let workload = IngestWorkload::new(&args, shape)?;
        if let Some(only) = &cli.only {
            let (encoded, _) = workload.pass(1);
            for _ in 0..20 {
                run(only, &workload.state, &encoded);
            }
            continue;
        }
        // Three rounds; in each, every path gets a pass of its own (new
        // timestamps, so each appends rather than replaces), in an order
        // that rotates from round to round. Each path's best round counts.
        let paths = ["decode", "prost", "wire"];
        let mut best = [Figure::default(); 3];
        for round in 0..3 {
            for i in 0..paths.len() {
                let i = (i + round) % paths.len();
                let (encoded, points) = workload.pass(1 + round * paths.len() + i);
                let figure = measure(paths[i], &workload.state, &encoded, points);
                if figure.points_per_cpu_second > best[i].points_per_cpu_second {
                    best[i] = figure;
                }
            }
        }
        for (path, figure) in paths.iter().zip(best) {
            println!(
                "{shape:<10} {path:<6} {:>14.0} {:>14.2} {:>14.0}",
                figure.points_per_cpu_second, figure.allocations_per_point, figure.bytes_per_point
            );
        }
    }
    Ok(())
}
