//! `aim sim bench`: how much load one simulator process can carry.
//!
//! Three figures:
//! - **simulated requests/s on virtual time**: the engine model alone, as the lab runs it;
//! - **concurrent streams per core**: the HTTP server runs on a single-threaded runtime on its
//!   own OS thread, so it can use at most one core; `streams` clients hold streaming requests
//!   open while tokens flow, and the server thread's CPU time over a window gives
//!   streams ÷ (CPU seconds ÷ wall seconds);
//! - **memory per in-flight request**: growth of the process's resident memory with those
//!   streams open, divided by their number. The bench's own clients live in the same process,
//!   so this is an upper bound.
//!
//! Linux only for the CPU and memory figures (they read `/proc`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aim_engine::{EngineConfig, Profile};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::args::{SimArgs, TextMode};
use crate::fidelity::{Workload, closed_loop};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Concurrent streaming requests to hold open.
    #[arg(long, default_value_t = 2000)]
    pub streams: usize,
    /// Seconds over which CPU and token rates are measured once all streams are open.
    #[arg(long, default_value_t = 10.0)]
    pub window: f64,
    /// Profile for the HTTP part (its step times pace the token streams).
    #[arg(long, default_value = "llama-3.1-8b-h100")]
    pub profile: String,
    /// Concurrency of the virtual-time engine run.
    #[arg(long, default_value_t = 256)]
    pub engine_concurrency: u32,
    /// Requests per client in the virtual-time engine run.
    #[arg(long, default_value_t = 200)]
    pub engine_requests_per_client: u32,
}

/// CPU time (ns) consumed so far by the calling thread, from the scheduler's accounting.
fn thread_cpu_ns() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

fn resident_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// One raw HTTP/1.1 streaming client: sends the request and counts SSE frames until told to
/// stop. Small buffers keep its own memory out of the way of the measurement.
async fn stream_client(addr: std::net::SocketAddr, body: Arc<String>, frames: Arc<AtomicU64>) {
    let Ok(mut socket) = TcpStream::connect(addr).await else {
        return;
    };
    let request = format!(
        "POST /v1/completions HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    if socket.write_all(request.as_bytes()).await.is_err() {
        return;
    }
    let mut buf = [0u8; 1024];
    loop {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let count = buf[..n].windows(6).filter(|w| w == b"data: ").count();
                frames.fetch_add(count as u64, Ordering::Relaxed);
            }
        }
    }
}

struct ServerThread {
    addr: std::net::SocketAddr,
    cpu_ns: Arc<AtomicU64>,
    sample: tokio::sync::mpsc::UnboundedSender<()>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServerThread {
    /// Starts the simulator on a current-thread runtime on a dedicated OS thread.
    fn start(args: SimArgs) -> anyhow::Result<Self> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (sample, mut sample_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let cpu_ns = Arc::new(AtomicU64::new(0));
        let cpu = cpu_ns.clone();
        let thread = std::thread::Builder::new()
            .name("sim-server".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                let Ok(runtime) = runtime else { return };
                runtime.block_on(async move {
                    let started = async {
                        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                        crate::start(args, listener).await
                    };
                    let sim = match started.await {
                        Ok(sim) => sim,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(sim.addr()));
                    let mut stop_rx = stop_rx;
                    loop {
                        tokio::select! {
                            Some(()) = sample_rx.recv() => {
                                cpu.store(thread_cpu_ns().unwrap_or(0), Ordering::Release);
                            }
                            _ = &mut stop_rx => break,
                        }
                    }
                    drop(sim);
                });
            })?;
        let addr = ready_rx.recv()??;
        Ok(ServerThread {
            addr,
            cpu_ns,
            sample,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The server thread's CPU time, sampled on that thread.
    async fn cpu_ns(&self) -> u64 {
        let before = self.cpu_ns.load(Ordering::Acquire);
        let _ = self.sample.send(());
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let now = self.cpu_ns.load(Ordering::Acquire);
            if now != before {
                return now;
            }
        }
        self.cpu_ns.load(Ordering::Acquire)
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let profile = Profile::named(&args.profile)
        .ok_or_else(|| anyhow::anyhow!("--profile: unknown profile `{}`", args.profile))?;
    anyhow::ensure!(args.streams > 0, "--streams must be at least 1");
    anyhow::ensure!(args.window > 0.0, "--window must be positive");

    // 1. The engine model alone, on virtual time.
    let point = closed_loop(
        EngineConfig::from_profile(profile.clone()),
        args.engine_concurrency,
        Workload {
            prompt_tokens: 512,
            output_tokens: 128,
            length_spread: 0.5,
            seed: 1,
        },
        args.engine_requests_per_client,
    )?;
    let engine_rate = point.requests as f64 / point.wall.as_secs_f64();
    println!(
        "engine (virtual time, {} clients, {}): {} requests in {:.3} s wall = {:.0} simulated requests/s \
         ({:.0}x faster than real time)",
        args.engine_concurrency,
        profile.name,
        point.requests,
        point.wall.as_secs_f64(),
        engine_rate,
        point.simulated.as_secs_f64() / point.wall.as_secs_f64()
    );

    // 2 and 3. The HTTP server with many open streams.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(http_bench(args, profile))
}

async fn http_bench(args: BenchArgs, profile: Profile) -> anyhow::Result<()> {
    let mut sim_args = SimArgs::for_tests();
    sim_args.profile = profile.clone();
    sim_args.mode = TextMode::Fixed;
    sim_args.fixed_text = "token".into();
    // Every stream decodes at once: the hardest case for the server, one frame per stream
    // per step.
    sim_args.max_num_seqs = Some(args.streams as u32);
    sim_args.max_waiting_queue_length = args.streams * 2;
    let max_tokens = 100_000u32.min(sim_args.engine_config().max_request_tokens() - 64);
    let server = ServerThread::start(sim_args)?;
    let baseline_rss = resident_bytes().unwrap_or(0);

    let body = Arc::new(format!(
        r#"{{"model":"sim-model","prompt":"bench","max_tokens":{max_tokens},"ignore_eos":true,"stream":true}}"#
    ));
    let frames = Arc::new(AtomicU64::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..args.streams {
        clients.spawn(stream_client(server.addr, body.clone(), frames.clone()));
    }
    // Wait until every stream has produced tokens (each sends at least one frame).
    let open_deadline = Instant::now() + Duration::from_secs(60);
    while frames.load(Ordering::Relaxed) < 2 * args.streams as u64 && Instant::now() < open_deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rss = resident_bytes().unwrap_or(0);
    let cpu_before = server.cpu_ns().await;
    let frames_before = frames.load(Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(args.window)).await;
    let cpu_after = server.cpu_ns().await;
    let wall = started.elapsed().as_secs_f64();
    let frames_in_window = frames.load(Ordering::Relaxed) - frames_before;
    clients.abort_all();
    while clients.join_next().await.is_some() {}

    let cpu = (cpu_after - cpu_before) as f64 / 1e9;
    let cores = cpu / wall;
    let expected_step = profile
        .step_duration(aim_engine::StepShape {
            decode_seqs: args.streams as u32,
            ..Default::default()
        })
        .as_secs_f64();
    let expected_rate = args.streams as f64 / expected_step;
    println!(
        "http ({} streams, {}): server thread used {:.2} cores over {:.1} s -> {:.0} concurrent streams per core",
        args.streams,
        profile.name,
        cores,
        wall,
        args.streams as f64 / cores.max(1e-9)
    );
    let delivered = frames_in_window as f64 / wall;
    println!(
        "  tokens delivered {:.0}/s (engine pace for this batch: {:.0}/s, {:.0}% of it)",
        delivered,
        expected_rate,
        100.0 * delivered / expected_rate
    );
    // When the host is oversubscribed the server falls behind the engine's pace; the CPU cost
    // per delivered token then gives the streams one core could carry at full pace.
    let cpu_per_token = cpu / (frames_in_window.max(1) as f64);
    println!(
        "  server CPU {:.2} us per streamed token -> {:.0} streams per core at full engine pace",
        cpu_per_token * 1e6,
        args.streams as f64 / (cpu_per_token * expected_rate)
    );
    println!(
        "  resident memory +{:.1} MiB with {} streams open = {:.1} KiB per in-flight request (bench clients included)",
        (rss.saturating_sub(baseline_rss)) as f64 / 1048576.0,
        args.streams,
        (rss.saturating_sub(baseline_rss)) as f64 / 1024.0 / args.streams as f64
    );
    drop(server);
    Ok(())
}
