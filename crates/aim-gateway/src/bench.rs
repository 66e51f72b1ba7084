//! `aim gateway bench`: what the gateway adds to a streamed completion,
//! against a direct connection to the same simulators, in one run.
//!
//! `--endpoints` simulators (`aim sim`, the production profile by default)
//! run in this process on a thread of their own; an `aim gateway` process
//! with its default flags fronts them. For each level of concurrent streams,
//! closed-loop clients (each sends a streamed completion, reads it to the
//! end, and sends the next over the same keep-alive connection) run once
//! straight at the simulators (client `i` at simulator `i mod n`) and once
//! through the gateway, alternating which goes first over `--rounds`
//! rounds so drift in the host's load falls on both alike. Reported per
//! level:
//!
//! - time to first token (request written to first token frame read), p50
//!   and p99, both ways, and the difference and ratio;
//! - how much of the difference is the flow-control queue (the gateway's
//!   own queue-wait histogram over the gateway's measured windows);
//! - the gateway process's CPU per 1,000 streamed tokens (from `/proc`);
//! - its resident memory per in-flight stream (growth over its idle size
//!   with the level's streams open).
//!
//! Linux only for CPU and memory (they read `/proc`). The host's cores are
//! shared by the clients, the simulators and the gateway: on a small host
//! the figures include their contention, the same in both columns.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aim_engine::Profile;
use aim_sim::{SimArgs, TextMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::args::duration_arg;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Levels of concurrent streams.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 64, 1024])]
    pub streams: Vec<usize>,
    /// Simulators behind the gateway.
    #[arg(long, default_value_t = 4)]
    pub endpoints: usize,
    /// The simulators' latency profile.
    #[arg(long, default_value = "qwen3-32b-2xh100")]
    pub profile: String,
    /// Tokens per streamed completion.
    #[arg(long, default_value_t = 128)]
    pub max_tokens: u32,
    /// Words in each prompt (about as many tokens).
    #[arg(long, default_value_t = 256)]
    pub prompt_words: usize,
    /// Per phase: time to open the streams (spread evenly) before measuring.
    #[arg(long, default_value = "3s", value_parser = duration_arg)]
    pub warmup: Duration,
    /// Per phase: the measured window.
    #[arg(long, default_value = "10s", value_parser = duration_arg)]
    pub measure: Duration,
    /// Direct and gateway phases per level, alternating which goes first.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// The `aim` binary to run the gateway from (default: this one).
    #[arg(long)]
    pub aim_binary: Option<PathBuf>,
    /// A flag for the gateway (repeat), e.g. `--gateway-arg=--saturation-queue-depth=100000`
    /// to take flow control out of the figures.
    #[arg(long = "gateway-arg", allow_hyphen_values = true)]
    pub gateway_args: Vec<String>,
}

/// What one phase measured.
#[derive(Default)]
struct Phase {
    ttft: Vec<f64>,
    tokens: u64,
    errors: u64,
    /// Through the gateway: its CPU seconds, queue-wait sum and count over
    /// the measured window, and its resident size in the middle of it.
    cpu: f64,
    wait_sum: f64,
    wait_count: f64,
    rss: u64,
}

#[derive(Default)]
struct Shared {
    ttft: Mutex<Vec<f64>>,
    tokens: AtomicU64,
    errors: AtomicU64,
}

/// Finds `needle` in `hay`, counting only matches that end after `from`
/// (those that began in the carried-over bytes were counted already).
fn count_after(hay: &[u8], needle: &[u8], from: usize) -> usize {
    hay.windows(needle.len())
        .enumerate()
        .filter(|(i, w)| *w == needle && i + needle.len() > from)
        .count()
}

const TOKEN_MARK: &[u8] = b"\"text\":\"";
const DONE_MARK: &[u8] = b"data: [DONE]";
const LAST_CHUNK: &[u8] = b"\r\n0\r\n\r\n";

/// One closed-loop client over one keep-alive HTTP/1.1 connection: raw
/// bytes, so the client's own cost stays small and equal both ways.
async fn client(
    addr: SocketAddr,
    request: Arc<Vec<u8>>,
    start_at: Instant,
    window: (Instant, Instant),
    shared: Arc<Shared>,
) {
    tokio::time::sleep_until(start_at.into()).await;
    let (from, until) = window;
    let mut socket: Option<TcpStream> = None;
    let mut buf = vec![0u8; 16 * 1024];
    let mut carry: Vec<u8> = Vec::with_capacity(64);
    while Instant::now() < until {
        let s = match socket.as_mut() {
            Some(s) => s,
            None => match TcpStream::connect(addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    socket.insert(s)
                }
                Err(_) => {
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let sent = Instant::now();
        if s.write_all(&request).await.is_err() {
            socket = None;
            continue;
        }
        carry.clear();
        let (mut first, mut done, mut ok) = (None, false, true);
        let mut status_checked = false;
        loop {
            let n = match s.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    ok = false;
                    break;
                }
                Ok(n) => n,
            };
            let now = Instant::now();
            let keep = carry.len();
            carry.extend_from_slice(&buf[..n]);
            if !status_checked && carry.len() >= 12 {
                status_checked = true;
                if !carry.starts_with(b"HTTP/1.1 200") {
                    ok = false;
                    break;
                }
            }
            let tokens = count_after(&carry, TOKEN_MARK, keep);
            if tokens > 0 {
                if first.is_none() {
                    first = Some(now - sent);
                }
                if now >= from && now < until {
                    shared.tokens.fetch_add(tokens as u64, Ordering::Relaxed);
                }
            }
            done = done || count_after(&carry, DONE_MARK, keep) > 0;
            if done && carry.ends_with(LAST_CHUNK) {
                break;
            }
            if first.is_some() && now >= until {
                // The window is over and this request's first token is in:
                // nothing more to learn from it.
                if sent >= from {
                    shared
                        .ttft
                        .lock()
                        .unwrap()
                        .push(first.unwrap_or_default().as_secs_f64());
                }
                return;
            }
            // Keep just enough to find a mark cut in two.
            let tail = carry.len().saturating_sub(16);
            carry.drain(..tail);
        }
        if !ok || first.is_none() {
            shared.errors.fetch_add(1, Ordering::Relaxed);
            socket = None;
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        if sent >= from && sent < until {
            shared
                .ttft
                .lock()
                .unwrap()
                .push(first.unwrap_or_default().as_secs_f64());
        }
    }
}

/// Runs `streams` clients against `targets` (client `i` at `targets[i mod
/// n]`); with `gateway`, reads its CPU, queue waits and memory over the
/// measured window.
async fn phase(
    targets: &[SocketAddr],
    streams: usize,
    request: &Arc<Vec<u8>>,
    warmup: Duration,
    measure: Duration,
    gateway: Option<&GatewayProcess>,
) -> Phase {
    let shared = Arc::new(Shared::default());
    let start = Instant::now();
    let window = (start + warmup, start + warmup + measure);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..streams {
        // Spread the starts over most of the warm-up, not all at once.
        let offset = warmup.mul_f64(0.8 * i as f64 / streams as f64);
        set.spawn(client(
            targets[i % targets.len()],
            request.clone(),
            start + offset,
            window,
            shared.clone(),
        ));
    }
    let mut phase = Phase::default();
    tokio::time::sleep_until(window.0.into()).await;
    let before = match gateway {
        Some(g) => Some((g.cpu_seconds(), g.queue_wait().await)),
        None => None,
    };
    tokio::time::sleep_until((window.0 + measure / 2).into()).await;
    if let Some(g) = gateway {
        phase.rss = g.resident_bytes().unwrap_or(0);
    }
    tokio::time::sleep_until(window.1.into()).await;
    if let (Some(g), Some((cpu0, (s0, c0)))) = (gateway, before) {
        let (s1, c1) = g.queue_wait().await;
        phase.cpu = match (cpu0, g.cpu_seconds()) {
            (Some(a), Some(b)) => b - a,
            _ => f64::NAN,
        };
        phase.wait_sum = s1 - s0;
        phase.wait_count = c1 - c0;
    }
    // Requests sent in the window report their first token; give them time.
    let grace = tokio::time::sleep(Duration::from_secs(30));
    tokio::pin!(grace);
    loop {
        tokio::select! {
            next = set.join_next() => if next.is_none() { break },
            () = &mut grace => {
                set.abort_all();
                while set.join_next().await.is_some() {}
                break;
            }
        }
    }
    phase.ttft = std::mem::take(&mut *shared.ttft.lock().unwrap());
    phase.tokens = shared.tokens.load(Ordering::Relaxed);
    phase.errors = shared.errors.load(Ordering::Relaxed);
    phase
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The gateway process, its addresses, and `/proc` readings of it.
struct GatewayProcess {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
}

impl GatewayProcess {
    fn start(binary: &PathBuf, endpoints: &[SocketAddr], extra: &[String]) -> anyhow::Result<Self> {
        use std::io::{BufRead, BufReader};
        let mut cmd = Command::new(binary);
        cmd.args([
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ]);
        for e in endpoints {
            cmd.args(["--endpoint", &format!("http://{e}")]);
        }
        cmd.args(extra);
        let mut child = cmd
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {} gateway: {e}", binary.display()))?;
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent && line.contains("gateway listening") {
                    let _ = tx.send(line);
                    sent = true;
                }
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| anyhow::anyhow!("the gateway did not start (see its log above)"))?;
        let field = |key: &str| -> anyhow::Result<SocketAddr> {
            let plain: String = line.chars().filter(|c| !c.is_control()).collect();
            let at = plain
                .find(&format!(" {key}="))
                .ok_or_else(|| anyhow::anyhow!("no {key} in `{plain}`"))?;
            let value = plain[at + key.len() + 2..]
                .split_whitespace()
                .next()
                .unwrap_or("");
            Ok(value.parse()?)
        };
        Ok(GatewayProcess {
            addr: field("addr")?,
            admin: field("admin_addr")?,
            child,
        })
    }

    /// User and system CPU seconds so far (`/proc/PID/stat`, in the kernel's
    /// fixed 100 ticks per second).
    fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        // Fields after the command name, which is in parentheses.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        Some((utime + stime) / 100.0)
    }

    fn resident_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib * 1024)
    }

    /// The queue-wait histogram's sum and count.
    async fn queue_wait(&self) -> (f64, f64) {
        let Ok(mut s) = TcpStream::connect(self.admin).await else {
            return (f64::NAN, f64::NAN);
        };
        let _ = s
            .write_all(b"GET /metrics HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n")
            .await;
        let mut text = String::new();
        let _ = s.read_to_string(&mut text).await;
        let read = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.rsplit(' ').next()?.parse().ok())
                .unwrap_or(f64::NAN)
        };
        (
            read("aim_gateway_queue_wait_seconds_sum"),
            read("aim_gateway_queue_wait_seconds_count"),
        )
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The simulators, on a runtime and OS thread of their own.
struct Simulators {
    addrs: Vec<SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Simulators {
    fn start(n: usize, profile: Profile, streams: usize) -> anyhow::Result<Self> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("bench-sims".into())
            .spawn(move || {
                let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                runtime.block_on(async move {
                    let mut sims = Vec::new();
                    for i in 0..n {
                        let mut args = SimArgs::for_tests();
                        args.profile = profile.clone();
                        args.model = "bench".into();
                        args.mode = TextMode::Fixed;
                        args.fixed_text = "token".into();
                        args.seed = i as u64;
                        // Room for every stream on any one simulator.
                        args.max_waiting_queue_length = streams * 2;
                        let started = async {
                            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                            aim_sim::start(args, listener).await
                        };
                        match started.await {
                            Ok(sim) => sims.push(sim),
                            Err(e) => {
                                let _ = ready_tx.send(Err(e));
                                return;
                            }
                        }
                    }
                    let _ = ready_tx.send(Ok(sims.iter().map(|s| s.addr()).collect()));
                    let _ = stop_rx.await;
                    drop(sims);
                });
            })?;
        let addrs = ready_rx.recv()??;
        Ok(Simulators {
            addrs,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Simulators {
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
    let profile = Profile::named(&args.profile).ok_or_else(|| {
        let known: Vec<&str> = Profile::builtin().iter().map(|p| p.name).collect();
        anyhow::anyhow!(
            "--profile: unknown profile `{}`; known: {}",
            args.profile,
            known.join(", ")
        )
    })?;
    anyhow::ensure!(
        !args.streams.is_empty() && !args.streams.contains(&0),
        "--streams must list levels of at least 1"
    );
    anyhow::ensure!(args.endpoints > 0, "--endpoints must be at least 1");
    anyhow::ensure!(args.rounds > 0, "--rounds must be at least 1");
    anyhow::ensure!(args.max_tokens > 0, "--max-tokens must be at least 1");
    anyhow::ensure!(
        !args.measure.is_zero(),
        "--measure must be longer than zero"
    );
    let binary = match &args.aim_binary {
        Some(p) => p.clone(),
        None => std::env::current_exe()?,
    };
    let most = args.streams.iter().copied().max().unwrap_or(1);
    let sims = Simulators::start(args.endpoints, profile.clone(), most)?;
    let gateway = GatewayProcess::start(&binary, &sims.addrs, &args.gateway_args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(levels(&args, &profile, &sims, &gateway))
}

async fn levels(
    args: &BenchArgs,
    profile: &Profile,
    sims: &Simulators,
    gateway: &GatewayProcess,
) -> anyhow::Result<()> {
    // Let the gateway scrape every endpoint once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss = gateway.resident_bytes();
    let prompt: Vec<&str> = std::iter::repeat_n("word", args.prompt_words).collect();
    let body = format!(
        r#"{{"model":"bench","prompt":"{}","max_tokens":{},"ignore_eos":true,"stream":true}}"#,
        prompt.join(" "),
        args.max_tokens
    );
    let request = Arc::new(
        format!(
            "POST /v1/completions HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    );
    println!(
        "aim gateway bench: {} simulators ({}), {} tokens per completion, {}-word prompts; \
         per phase {:?} warm-up and {:?} measured, {} round(s) each way, alternating",
        args.endpoints,
        profile.name,
        args.max_tokens,
        args.prompt_words,
        args.warmup,
        args.measure,
        args.rounds
    );
    let flags = if args.gateway_args.is_empty() {
        "default flags".to_string()
    } else {
        format!("default flags but {}", args.gateway_args.join(" "))
    };
    println!(
        "gateway: {flags}, pid {}, idle RSS {:.1} MiB",
        gateway.child.id(),
        idle_rss.unwrap_or(0) as f64 / 1048576.0
    );
    println!();
    println!(
        "| streams | direct TTFT p50 / p99 ms | gateway TTFT p50 / p99 ms | added p50 / p99 ms | ratio p50 / p99 | of which queued (mean ms) | gateway CPU ms per 1,000 tokens | gateway RSS KiB per stream | completions direct / gateway | errors direct / gateway |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for &streams in &args.streams {
        let (mut direct, mut via) = (Phase::default(), Phase::default());
        for round in 0..args.rounds {
            // Round 0: direct first; round 1: gateway first; and so on.
            for through_gateway in [round % 2 == 1, round % 2 == 0] {
                if through_gateway {
                    let p = phase(
                        &[gateway.addr],
                        streams,
                        &request,
                        args.warmup,
                        args.measure,
                        Some(gateway),
                    )
                    .await;
                    merge(&mut via, p);
                } else {
                    let p = phase(
                        &sims.addrs,
                        streams,
                        &request,
                        args.warmup,
                        args.measure,
                        None,
                    )
                    .await;
                    merge(&mut direct, p);
                }
            }
        }
        let (cpu, wait_sum, wait_count, rss_peak) =
            (via.cpu, via.wait_sum, via.wait_count, via.rss);
        direct.ttft.sort_by(f64::total_cmp);
        via.ttft.sort_by(f64::total_cmp);
        let ms = |v: f64| v * 1e3;
        let (d50, d99) = (quantile(&direct.ttft, 0.5), quantile(&direct.ttft, 0.99));
        let (g50, g99) = (quantile(&via.ttft, 0.5), quantile(&via.ttft, 0.99));
        let cpu_per_k = if via.tokens > 0 {
            cpu / via.tokens as f64 * 1e3
        } else {
            f64::NAN
        };
        let rss_per_stream =
            rss_peak.saturating_sub(idle_rss.unwrap_or(0)) as f64 / 1024.0 / streams as f64;
        println!(
            "| {streams} | {:.1} / {:.1} | {:.1} / {:.1} | {:+.1} / {:+.1} | {:.2} / {:.2} | {:.1} | {:.1} | {:.1} | {} / {} | {} / {} |",
            ms(d50),
            ms(d99),
            ms(g50),
            ms(g99),
            ms(g50 - d50),
            ms(g99 - d99),
            g50 / d50,
            g99 / d99,
            if wait_count > 0.0 {
                ms(wait_sum / wait_count)
            } else {
                0.0
            },
            ms(cpu_per_k),
            rss_per_stream,
            direct.ttft.len(),
            via.ttft.len(),
            direct.errors,
            via.errors
        );
    }
    Ok(())
}

fn merge(into: &mut Phase, p: Phase) {
    into.ttft.extend(p.ttft);
    into.tokens += p.tokens;
    into.errors += p.errors;
    into.cpu += p.cpu;
    into.wait_sum += p.wait_sum;
    into.wait_count += p.wait_count;
    into.rss = into.rss.max(p.rss);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_counted_once_across_reads() {
        let carry = b"xx\"text\":\"a".to_vec();
        // The match lies wholly in the carried bytes: counted before.
        assert_eq!(count_after(&carry, TOKEN_MARK, carry.len()), 0);
        let mut joined = b"data: {\"te".to_vec();
        let keep = joined.len();
        joined.extend_from_slice(b"xt\":\"b\"}");
        assert_eq!(count_after(&joined, TOKEN_MARK, keep), 1);
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert!(quantile(&[], 0.5).is_nan());
    }
}
