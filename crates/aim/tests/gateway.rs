//! `aim gateway` against real `aim sim` processes on loopback: streaming
//! passes through token by token (HTTP/1.1 and h2c), load-aware picking,
//! the flow-control queue (holding while every endpoint is saturated, fair
//! release, the bound's 429 and the timeout's 503), draining, graceful
//! shutdown, and the refusal of bad flags.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

const AIM: &str = env!("CARGO_BIN_EXE_aim");

/// A child process whose stderr is kept (ANSI colours stripped) for the
/// failure message, killed when dropped.
struct Proc {
    name: String,
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // ESC [ … final byte in @–~
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The value of `key=` on a log line.
fn field(line: &str, key: &str) -> Option<String> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    Some(
        line[at..]
            .split_whitespace()
            .next()?
            .trim_matches('"')
            .to_string(),
    )
}

impl Proc {
    /// Starts `aim ARGS` and waits for a log line containing `ready`.
    fn start(name: &str, args: &[String], ready: &str) -> (Proc, String) {
        let mut child = Command::new(AIM)
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let stderr = child.stderr.take().expect("piped");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let (kept, wanted) = (log.clone(), ready.to_string());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let line = strip_ansi(&line);
                kept.lock().unwrap().push_str(&line);
                kept.lock().unwrap().push('\n');
                if line.contains(&wanted) {
                    let _ = tx.send(line);
                }
            }
        });
        let proc = Proc {
            name: name.into(),
            child,
            log,
        };
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("{name} did not log `{ready}`:\n{}", proc.log()));
        (proc, line)
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

struct Sim {
    /// Kept so the process stops when the test ends.
    _proc: Proc,
    url: String,
}

/// `aim sim` on a free loopback port; the qwen3-32b profile decodes a token
/// about every 12 ms.
fn sim(extra: &[&str]) -> Sim {
    let mut args: Vec<String> = ["sim", "--host", "127.0.0.1", "--port", "0", "--model", "m"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    let (proc, line) = Proc::start("aim sim", &args, "simulator listening");
    let addr = field(&line, "addr").expect("the listening line names its address");
    Sim {
        _proc: proc,
        url: format!("http://{addr}"),
    }
}

struct Gateway {
    proc: Proc,
    url: String,
    admin: String,
}

fn gateway(extra: &[String]) -> Gateway {
    let mut args: Vec<String> = [
        "gateway",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().cloned());
    let (proc, line) = Proc::start("aim gateway", &args, "gateway listening");
    let addr: SocketAddr = field(&line, "addr").unwrap().parse().unwrap();
    let admin: SocketAddr = field(&line, "admin_addr").unwrap().parse().unwrap();
    Gateway {
        proc,
        url: format!("http://{addr}"),
        admin: format!("http://{admin}"),
    }
}

fn endpoint_flags(sims: &[&Sim]) -> Vec<String> {
    sims.iter()
        .flat_map(|s| ["--endpoint".to_string(), s.url.clone()])
        .collect()
}

fn flags(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn completion(max_tokens: u32, stream: bool) -> String {
    format!(
        r#"{{"model":"m","prompt":"hello gateway","max_tokens":{max_tokens},"ignore_eos":true,"stream":{stream}}}"#
    )
}

fn http() -> reqwest::Client {
    // reqwest is built without a default TLS provider; plain HTTP needs none,
    // but building a client asks for one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// A streamed completion: when the response headers came, when each
/// chunk came, and the SSE events.
struct Streamed {
    status: u16,
    /// When the response headers came (the gateway forwards a held request
    /// when it dispatches it, and the simulator answers at once).
    headers_came: Instant,
    chunk_times: Vec<Duration>,
    events: Vec<String>,
}

impl Streamed {
    fn tokens(&self) -> usize {
        self.events
            .iter()
            .filter(|e| e.contains("\"text\""))
            .count()
    }

    fn done(&self) -> bool {
        self.events.last().is_some_and(|e| e == "[DONE]")
    }
}

fn sse_events(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

async fn stream_from(
    client: &reqwest::Client,
    url: &str,
    body: String,
    headers: &[(&str, &str)],
) -> Streamed {
    let start = Instant::now();
    let mut req = client
        .post(format!("{url}/v1/completions"))
        .header("content-type", "application/json")
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut response = req.send().await.unwrap();
    let headers_came = Instant::now();
    let status = response.status().as_u16();
    let (mut chunk_times, mut text) = (Vec::new(), String::new());
    while let Some(chunk) = response.chunk().await.unwrap() {
        chunk_times.push(start.elapsed());
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    Streamed {
        status,
        headers_came,
        chunk_times,
        events: sse_events(&text),
    }
}

/// The gateway's /metrics sample `name{…labels…}` (labels as written, in order).
async fn metric(g: &Gateway, series: &str) -> Option<f64> {
    let text = http()
        .get(format!("{}/metrics", g.admin))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

async fn sim_gauge(s: &Sim, name: &str) -> f64 {
    let text = http()
        .get(format!("{}/metrics", s.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

async fn eventually(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn requests_to(s: &Sim) -> String {
    format!(
        "aim_gateway_endpoint_requests_total{{service=\"default\",endpoint=\"{}\"}}",
        s.url
    )
}

#[tokio::test]
async fn streams_pass_through_token_by_token_over_http1_and_h2c() {
    let s = sim(&[]);
    let g = gateway(&endpoint_flags(&[&s]));
    // 80 tokens at about 12 ms each: about a second of stream.
    let via = stream_from(&http(), &g.url, completion(80, true), &[]).await;
    assert_eq!(via.status, 200, "{}", g.proc.log());
    assert_eq!(via.tokens(), 80);
    assert!(via.done());
    let (first, last) = (via.chunk_times[0], *via.chunk_times.last().unwrap());
    // The first token reaches the client while the rest is still being
    // generated: nothing waits for the end of the stream.
    assert!(
        via.chunk_times.len() >= 40,
        "{} chunks",
        via.chunk_times.len()
    );
    assert!(
        last - first > Duration::from_millis(500),
        "first {first:?}, last {last:?}"
    );
    assert!(first < last / 3, "first {first:?}, last {last:?}");

    // The same over HTTP/2 with prior knowledge (h2c).
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let req = http::Request::post(format!("{}/v1/completions", g.url))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(completion(80, true))))
        .unwrap();
    let start = Instant::now();
    let response = client.request(req).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);
    let mut body = response.into_body();
    let (mut times, mut text) = (Vec::new(), String::new());
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            times.push(start.elapsed());
            text.push_str(&String::from_utf8_lossy(&data));
        }
    }
    let events = sse_events(&text);
    assert_eq!(events.iter().filter(|e| e.contains("\"text\"")).count(), 80);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert!(times.len() >= 40, "{} frames over h2", times.len());
    assert!(times[0] < *times.last().unwrap() / 3, "{times:?}");

    // Non-streamed requests and other paths pass too.
    let r = http()
        .post(format!("{}/v1/completions", g.url))
        .body(completion(3, false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("\"completion_tokens\":3"));
    let models = http()
        .get(format!("{}/v1/models", g.url))
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), 200);
}

#[tokio::test]
async fn requests_go_to_the_less_loaded_endpoint() {
    let busy = sim(&["--max-num-seqs", "1"]);
    let idle = sim(&["--max-num-seqs", "1"]);
    let g = gateway(&endpoint_flags(&[&busy, &idle]));
    // Three long requests straight to one simulator: one runs, two wait
    // there, below the saturation threshold of five.
    let direct = http();
    let mut preload = Vec::new();
    for _ in 0..3 {
        let (c, url) = (direct.clone(), busy.url.clone());
        preload.push(tokio::spawn(async move {
            stream_from(&c, &url, completion(400, true), &[]).await
        }));
    }
    eventually(
        "the busy simulator to report two waiting",
        Duration::from_secs(10),
        async || sim_gauge(&busy, "vllm:num_requests_waiting").await == 2.0,
    )
    .await;
    // Let a scrape see it (every 50 ms).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let c = http();
    for _ in 0..6 {
        let r = stream_from(&c, &g.url, completion(2, true), &[]).await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(
        metric(&g, &requests_to(&idle)).await,
        Some(6.0),
        "{}",
        g.proc.log()
    );
    assert_eq!(metric(&g, &requests_to(&busy)).await, Some(0.0));
    // Concurrent requests spread by the gateway's in-flight counts even
    // before a scrape can show them.
    let fresh_a = sim(&[]);
    let fresh_b = sim(&[]);
    let g2 = gateway(&endpoint_flags(&[&fresh_a, &fresh_b]));
    // Until the first scrape of an endpoint its load is unknown and it
    // takes nothing.
    eventually("both endpoints scraped", Duration::from_secs(5), async || {
        let age = |s: &Sim| format!("aim_gateway_endpoint_report_age_seconds{{service=\"default\",endpoint=\"{}\"}}", s.url);
        metric(&g2, &age(&fresh_a)).await.is_some() && metric(&g2, &age(&fresh_b)).await.is_some()
    })
    .await;
    let mut streams = Vec::new();
    for _ in 0..8 {
        let (c, url) = (c.clone(), g2.url.clone());
        streams.push(tokio::spawn(async move {
            stream_from(&c, &url, completion(60, true), &[]).await
        }));
    }
    for s in streams {
        assert_eq!(s.await.unwrap().status, 200);
    }
    let a = metric(&g2, &requests_to(&fresh_a)).await.unwrap();
    let b = metric(&g2, &requests_to(&fresh_b)).await.unwrap();
    assert_eq!(a + b, 8.0);
    assert_eq!((a, b), (4.0, 4.0));
    for p in preload {
        p.abort();
    }
}

#[tokio::test]
async fn the_queue_holds_while_every_endpoint_is_saturated() {
    // One running request at a time; five waiting saturate.
    let s = sim(&["--max-num-seqs", "1"]);
    let g = gateway(&endpoint_flags(&[&s]));
    let direct = http();
    let mut preload = Vec::new();
    for k in 0..6 {
        let (c, url) = (direct.clone(), s.url.clone());
        preload.push(tokio::spawn(async move {
            let r = stream_from(&c, &url, completion(80, true), &[]).await;
            (k, Instant::now(), r)
        }));
        // In order, so the first one is the running one.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    eventually(
        "five waiting in the simulator",
        Duration::from_secs(10),
        async || sim_gauge(&s, "vllm:num_requests_waiting").await == 5.0,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let c = http();
    let url = g.url.clone();
    let held = tokio::spawn(async move {
        (
            stream_from(&c, &url, completion(5, true), &[]).await,
            Instant::now(),
        )
    });
    let depth = "aim_gateway_queue_depth{service=\"default\"}";
    eventually(
        "the request to be held",
        Duration::from_secs(5),
        async || metric(&g, depth).await == Some(1.0),
    )
    .await;
    // Still held while the simulator's queue stays at five.
    assert_eq!(metric(&g, depth).await, Some(1.0));
    let (first_done_at, first) = {
        let (k, at, r) = preload.remove(0).await.unwrap();
        assert_eq!(k, 0);
        (at, r)
    };
    assert!(first.done());
    let (r, _) = held.await.unwrap();
    assert_eq!(r.status, 200);
    assert!(r.done());
    assert_eq!(metric(&g, depth).await, Some(0.0));
    // It left the queue only once the first request had finished and the
    // simulator's queue fell below five: its wait shows in the histogram.
    let waited = metric(
        &g,
        "aim_gateway_queue_wait_seconds_sum{service=\"default\"}",
    )
    .await
    .unwrap();
    assert!(
        waited > 0.3,
        "waited {waited} s; first finished {first_done_at:?}"
    );
    for p in preload {
        p.abort();
    }
}

/// A backlog held at the gateway goes out as the endpoints make room, at
/// most five requests per scrape and endpoint, never all at once onto the
/// first endpoint whose report shows room.
#[tokio::test]
async fn a_held_backlog_leaves_no_faster_than_the_endpoints_make_room() {
    let sims = [sim(&["--max-num-seqs", "1"]), sim(&["--max-num-seqs", "1"])];
    let g = gateway(&endpoint_flags(&[&sims[0], &sims[1]]));
    let direct = http();
    let mut preload = Vec::new();
    for s in &sims {
        // One running (about 2 s) and five waiting on each: both saturated
        // until the backlog below is held.
        for k in 0..6 {
            let (c, url) = (direct.clone(), s.url.clone());
            let tokens = if k == 0 { 150 } else { 30 };
            preload.push(tokio::spawn(async move {
                stream_from(&c, &url, completion(tokens, true), &[]).await
            }));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for s in &sims {
        eventually("five waiting", Duration::from_secs(10), async || {
            sim_gauge(s, "vllm:num_requests_waiting").await == 5.0
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut backlog = Vec::new();
    for _ in 0..10 {
        let (c, url) = (http(), g.url.clone());
        backlog.push(tokio::spawn(async move {
            stream_from(&c, &url, completion(10, true), &[]).await
        }));
    }
    let depth = "aim_gateway_queue_depth{service=\"default\"}";
    eventually(
        "the backlog to be held",
        Duration::from_secs(5),
        async || metric(&g, depth).await == Some(10.0),
    )
    .await;
    // Watch both simulators' queues until the whole backlog has run.
    let mut most = 0.0f64;
    while !backlog.iter().all(|b| b.is_finished()) {
        for s in &sims {
            most = most.max(sim_gauge(s, "vllm:num_requests_waiting").await);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Four reported waiting, then five released: nine at most (all ten at
    // once would make fourteen).
    assert!(most <= 9.0, "a simulator had {most} waiting");
    for b in backlog {
        let r = b.await.unwrap();
        assert_eq!((r.status, r.done()), (200, true));
    }
    for p in preload {
        assert!(p.await.unwrap().done());
    }
}

#[tokio::test]
async fn held_requests_leave_in_turns_across_clients() {
    let s = sim(&[]);
    // One request at a time on the endpoint, so each release is visible.
    let mut f = endpoint_flags(&[&s]);
    f.extend(flags(&["--max-in-flight-per-endpoint", "1"]));
    let g = gateway(&f);
    let start = Instant::now();
    let mut handles = Vec::new();
    // Client a sends four, then client b two. a1 (150 tokens, about 2 s)
    // holds the endpoint until all the others are held; they take 0.4 s each.
    let plan = [("a", 1), ("a", 2), ("a", 3), ("a", 4), ("b", 1), ("b", 2)];
    for (client, n) in plan {
        let (c, url) = (http(), g.url.clone());
        let tokens = if n == 1 && client == "a" { 150 } else { 30 };
        handles.push(tokio::spawn(async move {
            let r = stream_from(
                &c,
                &url,
                completion(tokens, true),
                &[("x-gateway-inference-fairness-id", client)],
            )
            .await;
            (format!("{client}{n}"), r)
        }));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let depth = metric(&g, "aim_gateway_queue_depth{service=\"default\"}")
        .await
        .unwrap();
    assert_eq!(depth, 5.0, "held after {:?}", start.elapsed());
    let mut done = Vec::new();
    for h in handles {
        let (name, r) = h.await.unwrap();
        assert_eq!(r.status, 200, "{name}");
        assert!(r.done(), "{name}");
        done.push((r.headers_came, name));
    }
    done.sort();
    let order: Vec<&str> = done.iter().map(|(_, n)| n.as_str()).collect();
    // a1 runs; a2…a4 and b1, b2 are held; a and b then take turns.
    assert_eq!(order, ["a1", "a2", "b1", "a3", "b2", "a4"], "{done:?}");
}

#[tokio::test]
async fn higher_priority_objectives_leave_the_queue_first() {
    let s = sim(&[]);
    let mut f = endpoint_flags(&[&s]);
    f.extend(flags(&[
        "--max-in-flight-per-endpoint",
        "1",
        "--objective",
        "premium=10",
        "--objective",
        "batch=-1",
    ]));
    let g = gateway(&f);
    let mut handles = Vec::new();
    // The first holds the endpoint; then batch, an unknown objective (0)
    // and premium arrive in that order.
    let plan = [
        ("first", "premium", 150),
        ("batch", "batch", 20),
        ("unknown", "nightly", 20),
        ("premium", "premium", 20),
    ];
    for (name, objective, tokens) in plan {
        let (c, url) = (http(), g.url.clone());
        handles.push(tokio::spawn(async move {
            let r = stream_from(
                &c,
                &url,
                completion(tokens, true),
                &[("x-gateway-inference-objective", objective)],
            )
            .await;
            (r.headers_came, name, r.status)
        }));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut done = Vec::new();
    for h in handles {
        done.push(h.await.unwrap());
    }
    done.sort();
    let order: Vec<(&str, u16)> = done.iter().map(|(_, n, s)| (*n, *s)).collect();
    assert_eq!(
        order,
        [
            ("first", 200),
            ("premium", 200),
            ("unknown", 200),
            ("batch", 200)
        ]
    );
}

#[tokio::test]
async fn a_full_queue_answers_429_and_a_timeout_503() {
    let s = sim(&[]);
    let mut f = endpoint_flags(&[&s]);
    f.extend(flags(&[
        "--max-in-flight-per-endpoint",
        "1",
        "--queue-capacity",
        "2",
        "--queue-timeout",
        "1s",
    ]));
    let g = gateway(&f);
    let c = http();
    let url = g.url.clone();
    // About 4 s of stream holds the endpoint.
    let long = tokio::spawn({
        let (c, url) = (c.clone(), url.clone());
        async move { stream_from(&c, &url, completion(300, true), &[]).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let (c, url) = (c.clone(), url.clone());
        held.push(tokio::spawn(async move {
            let r = c
                .post(format!("{url}/v1/completions"))
                .body(completion(5, false))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.text().await.unwrap())
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    let full = c
        .post(format!("{url}/v1/completions"))
        .body(completion(5, false))
        .send()
        .await
        .unwrap();
    assert_eq!(full.status(), 429);
    assert!(t.elapsed() < Duration::from_millis(500), "refused at once");
    let retry_after: u64 = full.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    let body: serde_json::Value = serde_json::from_str(&full.text().await.unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "queue_full");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("queue is full (2 requests held)"),
        "{body}"
    );
    for h in held {
        let (status, text) = h.await.unwrap();
        assert_eq!(status, 503, "{text}");
        let body: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["error"]["code"], "queue_timeout");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("the endpoint stayed saturated"),
            "{body}"
        );
    }
    let long = long.await.unwrap();
    assert_eq!((long.status, long.tokens(), long.done()), (200, 300, true));
    for (reason, n) in [
        ("queue_full", 1.0),
        ("queue_timeout", 2.0),
        ("flow_full", 0.0),
    ] {
        let series =
            format!("aim_gateway_rejections_total{{service=\"default\",reason=\"{reason}\"}}");
        assert_eq!(metric(&g, &series).await, Some(n), "{reason}");
    }

    // A client's share of the queue.
    let mut f = endpoint_flags(&[&s]);
    f.extend(flags(&[
        "--max-in-flight-per-endpoint",
        "1",
        "--queue-per-client",
        "1",
    ]));
    let g = gateway(&f);
    let long = tokio::spawn({
        let (c, url) = (c.clone(), g.url.clone());
        async move { stream_from(&c, &url, completion(100, true), &[]).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let send = |client: &'static str| {
        let (c, url) = (c.clone(), g.url.clone());
        tokio::spawn(async move {
            c.post(format!("{url}/v1/completions"))
                .header("x-gateway-inference-fairness-id", client)
                .body(completion(2, false))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    let a1 = send("a");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let a2 = send("a").await.unwrap();
    assert_eq!(a2, 429, "a's second held request is over its share");
    let b1 = send("b");
    assert_eq!((a1.await.unwrap(), b1.await.unwrap()), (200, 200));
    assert!(long.await.unwrap().done());
}

#[tokio::test]
async fn a_draining_endpoint_finishes_its_streams_and_gets_nothing_new() {
    let a = sim(&[]);
    let b = sim(&[]);
    let dir = std::env::temp_dir().join(format!("aim-gateway-drain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("endpoints");
    std::fs::write(&file, format!("{}\n{}\n", a.url, b.url)).unwrap();
    let f = flags(&[
        "--endpoints-file",
        file.to_str().unwrap(),
        "--endpoints-refresh",
        "100ms",
        "--queue-timeout",
        "1s",
    ]);
    let g = gateway(&f);
    let c = http();
    // 150 tokens: about 2 s of stream.
    let long = tokio::spawn({
        let (c, url) = (c.clone(), g.url.clone());
        async move { stream_from(&c, &url, completion(150, true), &[]).await }
    });
    let in_flight = |s: &Sim| {
        format!(
            "aim_gateway_endpoint_in_flight{{service=\"default\",endpoint=\"{}\"}}",
            s.url
        )
    };
    let mut on = None;
    eventually("the stream to start", Duration::from_secs(5), async || {
        for s in [&a, &b] {
            if metric(&g, &in_flight(s)).await == Some(1.0) {
                on = Some(s);
                return true;
            }
        }
        false
    })
    .await;
    let (draining, other) = if on.unwrap().url == a.url {
        (&a, &b)
    } else {
        (&b, &a)
    };
    std::fs::write(&file, format!("{} draining\n{}\n", draining.url, other.url)).unwrap();
    let flag = format!(
        "aim_gateway_endpoint_draining{{service=\"default\",endpoint=\"{}\"}}",
        draining.url
    );
    eventually(
        "the endpoint to drain",
        Duration::from_secs(5),
        async || metric(&g, &flag).await == Some(1.0),
    )
    .await;
    for _ in 0..5 {
        assert_eq!(
            stream_from(&c, &g.url, completion(2, true), &[])
                .await
                .status,
            200
        );
    }
    assert_eq!(
        metric(&g, &requests_to(draining)).await,
        Some(1.0),
        "nothing new on the draining endpoint"
    );
    assert_eq!(metric(&g, &requests_to(other)).await, Some(5.0));
    let long = long.await.unwrap();
    assert_eq!((long.status, long.tokens(), long.done()), (200, 150, true));

    // Removed from the file with a stream in flight: the stream finishes,
    // the endpoint leaves once it has, and with no endpoint left a request
    // waits out the timeout.
    let long = tokio::spawn({
        let (c, url) = (c.clone(), g.url.clone());
        async move { stream_from(&c, &url, completion(100, true), &[]).await }
    });
    eventually(
        "the second stream to start",
        Duration::from_secs(5),
        async || metric(&g, &in_flight(other)).await == Some(1.0),
    )
    .await;
    std::fs::write(&file, "# nothing\n").unwrap();
    eventually(
        "the endpoint to stop taking requests",
        Duration::from_secs(5),
        async || {
            metric(
                &g,
                &format!(
                    "aim_gateway_endpoint_draining{{service=\"default\",endpoint=\"{}\"}}",
                    other.url
                ),
            )
            .await
                == Some(1.0)
        },
    )
    .await;
    let r = c
        .post(format!("{}/v1/completions", g.url))
        .body(completion(2, false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("no endpoint was ready"));
    let long = long.await.unwrap();
    assert_eq!((long.status, long.tokens(), long.done()), (200, 100, true));
    eventually(
        "the removed endpoint to leave",
        Duration::from_secs(5),
        async || metric(&g, &in_flight(other)).await.is_none(),
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn sigterm_lets_streams_finish_and_refuses_new_connections() {
    let s = sim(&[]);
    let mut g = gateway(&endpoint_flags(&[&s]));
    let c = http();
    let long = tokio::spawn({
        let (c, url) = (c.clone(), g.url.clone());
        async move { stream_from(&c, &url, completion(120, true), &[]).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed = Command::new("kill")
        .args(["-TERM", &g.proc.pid().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    eventually("readiness to fail", Duration::from_secs(5), async || {
        http()
            .get(format!("{}/readyz", g.admin))
            .send()
            .await
            .is_ok_and(|r| r.status() == 503)
    })
    .await;
    assert!(
        http()
            .post(format!("{}/v1/completions", g.url))
            .body(completion(1, false))
            .send()
            .await
            .is_err()
    );
    let long = long.await.unwrap();
    assert_eq!((long.status, long.tokens(), long.done()), (200, 120, true));
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = g.proc.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway did not exit:\n{}",
            g.proc.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}:\n{}", g.proc.log());
    assert_eq!(g.proc.name, "aim gateway");
}

/// Runs `aim gateway ARGS`, which must fail; returns its stderr.
fn refused(args: &[&str]) -> String {
    let out = Command::new(AIM)
        .arg("gateway")
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(!out.status.success(), "{args:?} was accepted");
    strip_ansi(&String::from_utf8_lossy(&out.stderr))
}

#[test]
fn bad_flags_are_refused_naming_the_flag() {
    let e = "--endpoint=http://127.0.0.1:9";
    let cases: &[(&[&str], &str)] = &[
        (&[], "--endpoint http://HOST:PORT"),
        (
            &["--endpoint", "localhost:8000"],
            "--endpoint `localhost:8000`",
        ),
        (&[e, "--weight-queue", "-2"], "--weight-queue must be"),
        (
            &[e, "--saturation-kv-cache", "0"],
            "--saturation-kv-cache must be",
        ),
        (&[e, "--scrape-interval", "1s"], "--metrics-staleness"),
        (&[e, "--queue-timeout", "soon"], "--queue-timeout"),
        (&[e, "--objective", "gold"], "--objective `gold`"),
        (
            &["--endpoints-file", "/nonexistent/aim-endpoints"],
            "--endpoints-file /nonexistent/aim-endpoints",
        ),
        (&["--gateway", "infra/aim"], "--gateway needs --kubernetes"),
        (
            &["--kubernetes", "--gateway", "aim"],
            "--gateway `aim`: use NAMESPACE/NAME",
        ),
        (&["--kubernetes", e], "--kubernetes takes backends"),
    ];
    for (args, wanted) in cases {
        let stderr = refused(args);
        assert!(stderr.contains(wanted), "{args:?}: {stderr}");
    }
    let file = std::env::temp_dir().join(format!("aim-gateway-bad-{}", std::process::id()));
    std::fs::write(&file, "http://127.0.0.1:9\nhttp://127.0.0.1:10 drained\n").unwrap();
    let stderr = refused(&["--endpoints-file", file.to_str().unwrap()]);
    assert!(stderr.contains(":2: `drained` after the URL"), "{stderr}");
    let _ = std::fs::remove_file(&file);

    // --kubernetes with no cluster to reach says how to give one.
    let out = Command::new(AIM)
        .args(["gateway", "--kubernetes"])
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .env("KUBECONFIG", "/nonexistent/aim-kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = strip_ansi(&String::from_utf8_lossy(&out.stderr));
    assert!(
        stderr.contains("--kubernetes: no cluster to follow (set KUBECONFIG"),
        "{stderr}"
    );
}

/// The scaler's trigger on the gateway's queue for `service`, as the
/// operator writes it for a service that scales from zero.
fn queue_trigger(service: &str) -> aim_scaler::proto::externalscaler::ScaledObjectRef {
    aim_scaler::proto::externalscaler::ScaledObjectRef {
        name: "chat-predictor".into(),
        namespace: "ml".into(),
        scaler_metadata: [
            (
                "metricQuery",
                format!("sum(aim_gateway_queue_depth{{service=\"{service}\"}})"),
            ),
            ("targetValue", "5".into()),
            ("activationThreshold", "0".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
    }
}

/// A loopback port nothing listens on.
fn closed_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_requests_reach_the_scaler_over_otlp_and_wake_the_trigger() {
    use aim_scaler::proto::externalscaler::GetMetricsRequest;
    use aim_scaler::proto::externalscaler::external_scaler_client::ExternalScalerClient;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut args = aim_scaler::ScalerArgs::defaults();
    args.listen = vec!["127.0.0.1:0".parse().unwrap()];
    args.admin_listen = "127.0.0.1:0".parse().unwrap();
    args.warmup = Duration::ZERO;
    let scaler = aim_scaler::start(&args).await.unwrap();
    let scaler_addr = scaler.addresses[0];
    // The one endpoint never answers a scrape, so it is saturated (stale)
    // and every inference request is held: a service with no replica up.
    // The push interval is long, so a prompt activation can only come from
    // the push on a change of depth.
    let g = gateway(&flags(&[
        "--endpoint",
        &format!("http://{}", closed_port()),
        "--otlp-endpoint",
        &scaler_addr.to_string(),
        "--otlp-interval",
        "30s",
        "--queue-timeout",
        "60s",
    ]));
    let mut keda = ExternalScalerClient::connect(format!("http://{scaler_addr}"))
        .await
        .unwrap();
    let trigger = queue_trigger("default");
    let mut active = keda
        .stream_is_active(trigger.clone())
        .await
        .unwrap()
        .into_inner();
    let next = async |stream: &mut tonic::Streaming<_>| -> bool {
        let message: Option<aim_scaler::proto::externalscaler::IsActiveResponse> =
            tokio::time::timeout(Duration::from_secs(15), stream.message())
                .await
                .expect("the scaler pushed no state in 15 s")
                .unwrap();
        message.expect("the stream ended").result
    };
    // The first push (at start) says nothing is held.
    assert!(!next(&mut active).await, "active with nothing held");

    let held_at = Instant::now();
    let url = g.url.clone();
    let client = tokio::spawn(async move {
        stream_from(&http(), &url, completion(10, true), &[]).await;
    });
    assert!(next(&mut active).await, "a held request did not activate");
    let woke = held_at.elapsed();
    println!("request held → scaler pushes active to KEDA: {woke:?}");
    assert!(
        woke < Duration::from_secs(10),
        "activation took {woke:?}: it waited for the 30 s interval, not the change"
    );
    // The value KEDA's HPA would read: one request held.
    let spec = keda
        .get_metric_spec(trigger.clone())
        .await
        .unwrap()
        .into_inner();
    let value = keda
        .get_metrics(GetMetricsRequest {
            scaled_object_ref: Some(trigger.clone()),
            metric_name: spec.metric_specs[0].metric_name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(value.metric_values[0].metric_value_float, 1.0);

    // The client goes away: the queue empties and the trigger goes idle.
    client.abort();
    assert!(!next(&mut active).await, "still active with nothing held");
    let ok = metric(&g, "aim_gateway_otlp_exports_total{result=\"ok\"}")
        .await
        .unwrap();
    assert!(ok >= 3.0, "{ok} pushes counted, expected at least 3");
    scaler.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_scaler_is_counted_and_the_gateway_keeps_serving() {
    let s = sim(&[]);
    let mut extra = endpoint_flags(&[&s]);
    extra.extend(flags(&[
        "--otlp-endpoint",
        &closed_port().to_string(),
        "--otlp-interval",
        "200ms",
    ]));
    let g = gateway(&extra);
    eventually(
        "a failed push counted",
        Duration::from_secs(15),
        async || {
            metric(&g, "aim_gateway_otlp_exports_total{result=\"failed\"}")
                .await
                .is_some_and(|n| n >= 2.0)
        },
    )
    .await;
    assert_eq!(
        metric(&g, "aim_gateway_otlp_exports_total{result=\"ok\"}").await,
        Some(0.0)
    );
    let through = stream_from(&http(), &g.url, completion(5, true), &[]).await;
    assert_eq!(through.status, 200);
    assert!(through.done());
    assert!(
        g.proc.log().contains("OTLP push failed"),
        "{}",
        g.proc.log()
    );
}
