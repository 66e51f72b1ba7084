//! `aim sim fidelity`: closed-loop concurrency sweeps of a profile on virtual time, beside the
//! published vLLM measurements for the same model and hardware.
//!
//! Runs the engine model directly (no HTTP, no wall clock), so the figures are exactly
//! reproducible for a seed and take well under a second.

use std::time::{Duration, Instant};

use aim_engine::rng::Rng;
use aim_engine::{Engine, EngineConfig, EventKind, Profile, Request};

#[derive(Debug, Clone, clap::Args)]
pub struct FidelityArgs {
    /// Profile to sweep.
    #[arg(long, default_value = "llama-3.1-8b-h100")]
    pub profile: String,
    /// Concurrency levels (closed loop: each client sends its next request when one ends).
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    pub concurrency: Vec<u32>,
    /// Prompt length of every request, in tokens.
    #[arg(long, default_value_t = 512)]
    pub prompt_tokens: u32,
    /// Output length of every request, in tokens.
    #[arg(long, default_value_t = 256)]
    pub output_tokens: u32,
    /// Requests each client sends (the first per client are counted too).
    #[arg(long, default_value_t = 50)]
    pub requests_per_client: u32,
    /// Spread of request lengths: each prompt and output is drawn uniformly from
    /// length × [1 − spread, 1 + spread]. 0 keeps every request the same shape, which makes
    /// closed-loop clients move in lockstep.
    #[arg(long, default_value_t = 0.0)]
    pub length_spread: f64,
    /// Relative noise on step durations (0 = the profile's formula exactly).
    #[arg(long, default_value_t = 0.0)]
    pub step_jitter: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Results of one closed-loop run.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepPoint {
    pub concurrency: u32,
    pub requests: u64,
    pub ttft_p50_ms: f64,
    pub ttft_p99_ms: f64,
    pub tpot_p50_ms: f64,
    pub output_tokens_per_s: f64,
    /// Simulated time covered.
    pub simulated: Duration,
    /// Wall time the simulation took.
    pub wall: Duration,
}

/// Published measurements to compare against: (concurrency, TTFT p50, TTFT p99, TPOT p50 in
/// ms, output tok/s).
type Published = (u32, f64, f64, f64, f64);

/// Llama-3.1-8B-Instruct on 1×H100-80GB, vLLM 0.21.0, "short chat" closed-loop sweep
/// (the "concurrency-sweep" recipe published on yobitelcomm.github.io, 2026-05-16).
pub const LLAMA_8B_H100_SWEEP: &[Published] = &[
    (1, 14.0, 15.0, 6.5, 122.0),
    (4, 22.8, 32.2, 6.6, 580.0),
    (16, 41.7, 64.7, 10.9, 1384.0),
    (64, 86.9, 464.7, 46.9, 1312.0),
];

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // Nearest-rank, as benchmark tools report.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// The shape of the requests a closed loop sends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Workload {
    pub prompt_tokens: u32,
    pub output_tokens: u32,
    pub length_spread: f64,
    pub seed: u64,
}

impl Workload {
    pub fn fixed(prompt_tokens: u32, output_tokens: u32) -> Self {
        Workload {
            prompt_tokens,
            output_tokens,
            length_spread: 0.0,
            seed: 0,
        }
    }
}

fn spread(rng: &mut Rng, mean: u32, spread: f64) -> u32 {
    let lo = (f64::from(mean) * (1.0 - spread)).round().max(1.0) as u32;
    let hi = (f64::from(mean) * (1.0 + spread)).round() as u32;
    rng.range_u32(lo, hi)
}

/// Runs `concurrency` clients in a closed loop until each has sent `per_client` requests.
pub fn closed_loop(
    config: EngineConfig,
    concurrency: u32,
    workload: Workload,
    per_client: u32,
) -> anyhow::Result<SweepPoint> {
    let started = Instant::now();
    let mut engine = Engine::new(config)?;
    let total = u64::from(concurrency) * u64::from(per_client);
    let mut next_id = 0u64;
    let mut now = Duration::ZERO;
    let mut rng = Rng::new(workload.seed);
    let mut submit = |engine: &mut Engine, id: &mut u64, at: Duration| -> anyhow::Result<()> {
        let prompt = spread(&mut rng, workload.prompt_tokens, workload.length_spread);
        let output = spread(&mut rng, workload.output_tokens, workload.length_spread);
        engine.submit(Request::new(*id, prompt, output), at)?;
        *id += 1;
        Ok(())
    };
    for _ in 0..concurrency.min(total as u32) {
        submit(&mut engine, &mut next_id, now)?;
    }
    let (mut ttft, mut tpot) = (Vec::new(), Vec::new());
    let mut generated = 0u64;
    let mut finished = 0u64;
    while let Some(step) = engine.step(now) {
        now = step.ended;
        generated += u64::from(step.generation_tokens);
        for event in &step.events {
            if let EventKind::Finished(f) = &event.kind {
                finished += 1;
                ttft.extend(f.ttft().map(|d| d.as_secs_f64() * 1e3));
                tpot.extend(f.mean_tpot().map(|d| d.as_secs_f64() * 1e3));
                if next_id < total {
                    submit(&mut engine, &mut next_id, now)?;
                }
            }
        }
    }
    anyhow::ensure!(finished == total, "{finished} of {total} requests finished");
    ttft.sort_by(f64::total_cmp);
    tpot.sort_by(f64::total_cmp);
    Ok(SweepPoint {
        concurrency,
        requests: finished,
        ttft_p50_ms: percentile(&ttft, 50.0),
        ttft_p99_ms: percentile(&ttft, 99.0),
        tpot_p50_ms: percentile(&tpot, 50.0),
        output_tokens_per_s: generated as f64 / now.as_secs_f64(),
        simulated: now,
        wall: started.elapsed(),
    })
}

fn error_pct(sim: f64, published: f64) -> String {
    let e = (sim - published) / published * 100.0;
    let flag = if e.abs() <= 10.0 { "" } else { " *" };
    format!("{e:+.0}%{flag}")
}

/// Prints the sweep as a Markdown table (with published figures when there are any).
pub fn run(args: FidelityArgs) -> anyhow::Result<()> {
    let profile = Profile::named(&args.profile)
        .ok_or_else(|| anyhow::anyhow!("--profile: unknown profile `{}`", args.profile))?;
    let mut config = EngineConfig::from_profile(profile.clone());
    config.step_jitter = args.step_jitter;
    config.seed = args.seed;
    let published = (profile.name == "llama-3.1-8b-h100").then_some(LLAMA_8B_H100_SWEEP);
    println!(
        "profile {} ({}), {} prompt / {} output tokens (spread {}), {} requests per client, jitter {}",
        profile.name,
        profile.source,
        args.prompt_tokens,
        args.output_tokens,
        args.length_spread,
        args.requests_per_client,
        args.step_jitter
    );
    let workload = Workload {
        prompt_tokens: args.prompt_tokens,
        output_tokens: args.output_tokens,
        length_spread: args.length_spread,
        seed: args.seed,
    };
    println!();
    println!(
        "| conc. | TTFT p50 ms (pub.) | TTFT p99 ms (pub.) | TPOT p50 ms (pub.) | out tok/s (pub.) |"
    );
    println!("|---|---|---|---|---|");
    for &c in &args.concurrency {
        let p = closed_loop(config.clone(), c, workload, args.requests_per_client)?;
        let reference = published.and_then(|rows| rows.iter().find(|r| r.0 == c));
        let cell = |sim: f64, pick: fn(&Published) -> f64| match reference {
            Some(r) => format!("{sim:.1} ({:.1}, {})", pick(r), error_pct(sim, pick(r))),
            None => format!("{sim:.1}"),
        };
        println!(
            "| {c} | {} | {} | {} | {} |",
            cell(p.ttft_p50_ms, |r| r.1),
            cell(p.ttft_p99_ms, |r| r.2),
            cell(p.tpot_p50_ms, |r| r.3),
            cell(p.output_tokens_per_s, |r| r.4),
        );
    }
    if published.is_some() {
        println!();
        println!("(pub.) = published vLLM measurement; * = more than 10 % off.");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
    }

    #[test]
    fn a_single_client_sees_the_lone_request_formula() {
        let profile = Profile::tiny();
        let p = closed_loop(
            EngineConfig::from_profile(profile.clone()),
            1,
            Workload::fixed(100, 11),
            3,
        )
        .unwrap();
        let prefill_ms = (profile.step_base_us + 100.0 * profile.per_prefill_token_us) / 1e3;
        let decode_ms = (profile.step_base_us + profile.per_decode_seq_us) / 1e3;
        assert!((p.ttft_p50_ms - prefill_ms).abs() < 1e-6);
        assert!((p.tpot_p50_ms - decode_ms).abs() < 1e-6);
        assert_eq!(p.requests, 3);
        let expected_rate = 11.0 / ((prefill_ms + 10.0 * decode_ms) / 1e3);
        assert!((p.output_tokens_per_s - expected_rate).abs() / expected_rate < 1e-9);
    }

    #[test]
    fn more_clients_raise_throughput_and_queueing() {
        let config = EngineConfig::from_profile(Profile::llama_3_1_8b_h100());
        let one = closed_loop(config.clone(), 1, Workload::fixed(256, 64), 4).unwrap();
        let many = closed_loop(config, 32, Workload::fixed(256, 64), 4).unwrap();
        assert!(many.output_tokens_per_s > 10.0 * one.output_tokens_per_s);
        assert!(many.ttft_p99_ms > one.ttft_p99_ms);
    }
}
