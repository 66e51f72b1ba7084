//! `aim load` against real simulators started in this process: where requests go, what
//! the servers saw, and whether the loader's figures agree with the servers' own metrics.

use std::path::PathBuf;
use std::time::Duration;

use aim_load::{LoadArgs, Plan, Report, execute};
use aim_sim::{RunningSim, SimArgs, TextMode};
use clap::Parser;
use tokio::net::TcpListener;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: LoadArgs,
}

/// `time_scale` below 1 runs a simulator slower than real time, so one request lasts long
/// enough to tell its first token from its end and to keep several in flight.
async fn start_sims(n: usize, time_scale: f64) -> Vec<RunningSim> {
    let mut sims = Vec::new();
    for _ in 0..n {
        let mut args = SimArgs::for_tests();
        args.mode = TextMode::Fixed;
        args.fixed_text = "one two three four five".into();
        args.time_scale = time_scale;
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        sims.push(
            aim_sim::start(args, listener)
                .await
                .expect("simulator starts"),
        );
    }
    sims
}

fn url(sim: &RunningSim) -> String {
    format!("http://{}", sim.addr())
}

fn urls(sims: &[RunningSim]) -> String {
    sims.iter().map(|s| format!("--url {} ", url(s))).collect()
}

fn plan(flags: &str) -> Result<Plan, String> {
    let argv = std::iter::once("aim-load").chain(flags.split_whitespace());
    let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
    cli.args.plan().map_err(|e| e.to_string())
}

async fn run(flags: &str) -> Report {
    let plan = plan(flags).unwrap_or_else(|e| panic!("{flags}: {e}"));
    execute(&plan, None, std::future::pending())
        .await
        .unwrap_or_else(|e| panic!("{flags}: {e}"))
}

/// The sum of every series of one metric family (all label values).
async fn metric(sim: &RunningSim, name: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", url(sim)))
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("metrics body");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| series.split('{').next() == Some(name))
        .map(|(_, v)| v.parse::<f64>().expect("a number"))
        .sum()
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("aim-load-{}-{name}", std::process::id()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_spreads_over_every_endpoint_and_measures_ttft() {
    let time_scale = 0.1;
    let sims = start_sims(3, time_scale).await;
    let json = temp_path("spread.json");
    let flags = format!(
        "{} --rate 0s:30,2s:0 --seed 1 --prompt-tokens 40 --output-tokens 16 --model sim-model --quiet --json-out {}",
        urls(&sims),
        json.display()
    );
    let scheduled = plan(&flags)
        .unwrap()
        .shape
        .arrivals(1)
        .unwrap()
        .unwrap()
        .len() as u64;
    let report = run(&flags).await;
    let s = &report.summary;

    // Every scheduled request went out and came back whole.
    assert_eq!(s.counts.sent, scheduled);
    assert!(
        (30..=90).contains(&scheduled),
        "2 s at 30/s gave {scheduled}"
    );
    assert_eq!(
        (s.counts.completed, s.errors_total, s.counts.dropped),
        (scheduled, 0, 0)
    );
    assert_eq!(s.counts.output_tokens, 16 * scheduled);

    // Round robin: each simulator answered a third, and saw the asked lengths.
    let mut answered = 0.0;
    for sim in &sims {
        let n = metric(sim, "vllm:request_success_total").await;
        assert!(
            (n - scheduled as f64 / 3.0).abs() <= 1.0,
            "{} answered {n} of {scheduled}",
            sim.addr()
        );
        answered += n;
        assert_eq!(
            metric(sim, "vllm:request_prompt_tokens_sum").await,
            40.0 * n
        );
        assert_eq!(
            metric(sim, "vllm:request_generation_tokens_sum").await,
            16.0 * n
        );
    }
    assert_eq!(answered, scheduled as f64);

    // TTFT is the first token, not the end: the servers' own TTFT (simulated seconds,
    // so divided by the time scale) bounds it from below, the client adds only the trip
    // (a 40 ms Nagle stall would show), and the end comes much later.
    let mut server_ttft = 0.0;
    for sim in &sims {
        server_ttft += metric(sim, "vllm:time_to_first_token_seconds_sum").await;
    }
    let server_mean_ms = server_ttft / time_scale / scheduled as f64 * 1e3;
    let client_mean_ms = s.ttft.mean_ms.expect("TTFT measured");
    assert_eq!(s.ttft.count as u64, scheduled);
    assert!(
        client_mean_ms >= 0.9 * server_mean_ms && client_mean_ms <= server_mean_ms + 30.0,
        "client TTFT {client_mean_ms:.1} ms vs server {server_mean_ms:.1} ms"
    );
    let (ttft_p50, e2e_p50) = (s.ttft.p50_ms.unwrap(), s.e2e.p50_ms.unwrap());
    assert!(
        e2e_p50 > 3.0 * ttft_p50,
        "e2e p50 {e2e_p50} vs ttft p50 {ttft_p50}"
    );

    // --json-out holds the per-second samples and the summary.
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("--json-out written")).unwrap();
    std::fs::remove_file(&json).ok();
    let samples = written["samples"].as_array().expect("samples");
    assert!(samples.len() >= 2, "{samples:?}");
    let sent: u64 = samples.iter().map(|x| x["sent"].as_u64().unwrap()).sum();
    assert_eq!(sent, scheduled, "the samples add up to the run");
    assert!(samples.iter().any(|x| x["ttft_p99_ms"].as_f64().is_some()));
    assert_eq!(written["summary"]["sent"].as_u64(), Some(scheduled));
    assert_eq!(written["model"], "sim-model");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_gives_arrivals_lengths_and_shared_prefixes() {
    let sims = start_sims(1, 1.0).await;
    let trace = temp_path("trace.jsonl");
    // Ten requests over 1.8 s of trace time; all share prefix block 1 (512 tokens).
    let lines: Vec<String> = (0..10)
        .map(|i| {
            format!(
                r#"{{"timestamp": {}, "input_length": {}, "output_length": {}, "hash_ids": [1, {}]}}"#,
                i * 200,
                600 + i,
                3 + i,
                100 + i
            )
        })
        .collect();
    std::fs::write(&trace, lines.join("\n")).unwrap();
    let report = run(&format!(
        "{} --trace {} --speedup 4 --quiet",
        urls(&sims),
        trace.display()
    ))
    .await;
    std::fs::remove_file(&trace).ok();
    let s = &report.summary;
    assert_eq!((s.counts.sent, s.counts.completed), (10, 10));
    assert_eq!(report.model, "sim-model", "discovered from /v1/models");
    let prompt: u32 = (0..10).map(|i| 600 + i).sum();
    let output: u32 = (0..10).map(|i| 3 + i).sum();
    assert_eq!(
        metric(&sims[0], "vllm:request_prompt_tokens_sum").await,
        f64::from(prompt)
    );
    assert_eq!(
        metric(&sims[0], "vllm:request_generation_tokens_sum").await,
        f64::from(output)
    );
    assert_eq!(s.counts.output_tokens, u64::from(output));
    // The shared 512-token block is a prefix-cache hit after the first request.
    let hits = metric(&sims[0], "vllm:prefix_cache_hits_total").await;
    assert!(hits >= 9.0 * 496.0, "prefix cache hits {hits}");
    // 1.8 s of trace at 4x is 0.45 s of sending.
    assert!(s.duration_s < 1.5, "ran {} s", s.duration_s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_keeps_exactly_n_in_flight() {
    let sims = start_sims(2, 0.1).await;
    let flags = format!(
        "{} --concurrency 5 --duration 2s --output-tokens 40 --model sim-model --quiet",
        urls(&sims)
    );
    let plan = plan(&flags).unwrap();
    let started = std::time::Instant::now();
    let run = tokio::spawn(async move { execute(&plan, None, std::future::pending()).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Between the clients' start-up and the 2 s deadline, after which they stop.
    let mut seen = Vec::new();
    while started.elapsed() < Duration::from_millis(1800) {
        seen.push(sims.iter().map(RunningSim::in_flight).sum::<usize>());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let report = run.await.unwrap().unwrap();
    let at_five = seen.iter().filter(|&&n| n == 5).count();
    assert_eq!(seen.iter().max(), Some(&5), "{seen:?}");
    assert!(
        at_five * 10 >= seen.len() * 9,
        "5 in flight only {at_five} of {} times: {seen:?}",
        seen.len()
    );
    assert_eq!(report.summary.max_in_flight, 5);
    assert!(report.samples.iter().all(|s| s.max_in_flight <= 5));
    assert!(
        report.summary.counts.completed >= 10,
        "{:?}",
        report.summary
    );
    assert_eq!(report.summary.errors_total, 0);
    for sim in &sims {
        assert!(metric(sim, "vllm:request_success_total").await >= 5.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_counts_connect_errors_and_the_run_goes_on() {
    let sims = start_sims(2, 1.0).await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let report = run(&format!(
        "{} --url {dead} --rate 0s:30,1s:0 --seed 3 --output-tokens 4 --model sim-model --quiet",
        urls(&sims)
    ))
    .await;
    let s = &report.summary;
    let connect = s.counts.errors.get("connect").copied().unwrap_or(0);
    let to_dead = s
        .endpoints
        .iter()
        .find(|e| e.url == dead)
        .expect("dead endpoint listed");
    assert!(connect > 0, "{s:?}");
    assert_eq!(
        (to_dead.sent, to_dead.errors, to_dead.completed),
        (connect, connect, 0)
    );
    assert_eq!(s.errors_total, connect, "only connect errors");
    assert_eq!(s.counts.completed + connect, s.counts.sent);
    let mut answered = 0.0;
    for sim in &sims {
        answered += metric(sim, "vllm:request_success_total").await;
    }
    assert_eq!(answered, s.counts.completed as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_flight_cap_drops_and_counts_instead_of_slowing_down() {
    // 0.05x: each 64-token request lasts over a second, longer than the whole schedule.
    let sims = start_sims(1, 0.05).await;
    let flags = format!(
        "{} --rate 0s:40,1s:0 --seed 5 --max-in-flight 3 --model sim-model --quiet",
        urls(&sims)
    );
    let scheduled = plan(&flags)
        .unwrap()
        .shape
        .arrivals(5)
        .unwrap()
        .unwrap()
        .len() as u64;
    let report = run(&flags).await;
    let s = &report.summary;
    assert!(scheduled > 20, "{scheduled}");
    assert_eq!(s.counts.sent, 3);
    assert_eq!(s.counts.dropped, scheduled - 3);
    assert_eq!(s.max_in_flight, 3);
    assert_eq!(s.counts.completed, 3, "the three sent still finish");
    let per_second: u64 = report.samples.iter().map(|x| x.counts.dropped).sum();
    assert_eq!(
        per_second, s.counts.dropped,
        "drops show in the live figures"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_with_a_discovered_model() {
    let sims = start_sims(1, 1.0).await;
    let report = run(&format!(
        "{} --api chat --concurrency 2 --duration 500ms --prompt-tokens 12 --output-tokens 5 --quiet",
        urls(&sims)
    ))
    .await;
    let s = &report.summary;
    assert_eq!(report.model, "sim-model");
    assert!(s.counts.completed > 0 && s.errors_total == 0, "{s:?}");
    assert_eq!(
        s.ttft.count as u64, s.counts.completed,
        "chat tokens are seen"
    );
    assert_eq!(s.counts.output_tokens, 5 * s.counts.completed);
    assert_eq!(
        metric(&sims[0], "vllm:request_success_total").await,
        s.counts.completed as f64
    );
}

#[tokio::test]
async fn failures_before_sending_say_what_to_do() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    for (flags, wanted) in [
        (
            "--url http://a --rate garbage --duration 5s",
            "--rate \"garbage\"",
        ),
        ("--rate 1 --duration 5s", "no target"),
        (
            "--url http://a --service s --rate 1 --duration 5s",
            "--url and --service both given",
        ),
    ] {
        let e = plan(flags).expect_err(flags);
        assert!(e.contains(wanted), "{flags}: {e}");
    }
    let no_model = plan(&format!("--url {dead} --rate 1 --duration 1s --quiet")).unwrap();
    let e = execute(&no_model, None, std::future::pending())
        .await
        .expect_err("no model to discover")
        .to_string();
    assert!(e.contains("pass --model") && e.contains(&dead), "{e}");
    let bad_out = plan(&format!(
        "--url {dead} --rate 1 --duration 1s --model m --json-out {}",
        temp_path("no-such-dir/out.json").display()
    ))
    .unwrap();
    let e = execute(&bad_out, None, std::future::pending())
        .await
        .expect_err("unwritable --json-out")
        .to_string();
    assert!(
        e.starts_with("--json-out") && e.contains("no-such-dir"),
        "{e}"
    );
}
