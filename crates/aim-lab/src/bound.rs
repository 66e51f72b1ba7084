//! A proven lower bound on the replica-seconds (and so GPU-hours) that any
//! autoscaler needs to meet the SLO on a workload, under the lab's own
//! engine model.
//!
//! The argument, for the step-time model `step = β0 + β1·prefill tokens +
//! β2·decoding sequences + β3·KV tokens` with every β ≥ 0:
//!
//! 1. **Busy time.** A replica runs one step at a time, so over any
//!    interval its busy time is at most the interval's length, and the
//!    replica-seconds provisioned (billed from creation, cold start
//!    included) are at least the busy time of all steps run in it.
//! 2. **Work of a request.** A request with `p` prompt tokens and `o`
//!    output tokens needs its uncached prompt tokens prefilled (β1 each)
//!    and `o − 1` decode steps (its first token comes with the prefill),
//!    β2 each. A prompt block counts as cached when any earlier request
//!    carried the same block hash, the most caching any replica could do.
//!    β3 is dropped (it only adds). The fixed β0 of a step is shared by the
//!    sequences it decodes, and a step is limited twice: it decodes at most
//!    `B = min(max_num_seqs, max_num_batched_tokens)` sequences, and their
//!    KV blocks fit in the cache's `C` blocks, a sequence at context `c`
//!    holding at least `c / block_size` blocks of its own (prompt blocks
//!    with a prefix hash may be shared, so they are not counted). So for any λ in [0, 1],
//!    `β0 ≥ β0·(λ·b/B + (1 − λ)·Σ blocks/C)`, and each decode step of a
//!    request can be charged `β0·(λ/B + (1 − λ)·c/(block_size·C))`. Summed
//!    over its decode steps (context `p + 1 … p + o − 1`), that is the
//!    request's share of β0. Every λ gives a valid bound; the lab tries
//!    0, ½ and 1.
//! 3. **Deadlines.** A request that meets its SLO got its first token by
//!    `arrival + TTFT` and its last by `arrival + TTFT + (o − 1)·TPOT` (the
//!    mean TPOT is at most the SLO). All its work lies between its arrival
//!    and that deadline.
//! 4. **Windows.** Cut time into windows of length `L`. The requests that
//!    arrive in a window and whose deadline falls in it must have all their
//!    work done inside it, so the replica-seconds of the window are at
//!    least that work, and at least `min × L` (the replica floor).
//! 5. **Misses.** At an attainment target `A`, up to `(1 − A)·n` requests
//!    may miss and need no work; removing any such set lowers the sum by at
//!    most the work of the `(1 − A)·n` largest requests, which is
//!    subtracted.
//!
//! Every window length gives a valid bound, so the largest over several
//! lengths is one too.

use std::collections::HashSet;

use aim_engine::EngineConfig;

use crate::sim::SimConfig;
use crate::trace::Arrival;

/// Window lengths tried, seconds.
const WINDOWS_S: [f64; 8] = [10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0];

/// The Mooncake traces' prefix-hash block, in tokens.
const HASH_BLOCK_TOKENS: u32 = 512;

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Bound {
    /// Replica-seconds no autoscaler can go below at the target.
    pub replica_seconds: f64,
    pub gpu_hours: f64,
    /// The window length that gave it.
    pub window_s: f64,
}

/// The lengths the engine will run, as the lab clips them (see `sim`).
fn clipped(limit: u32, a: &Arrival) -> (u32, u32) {
    let output = a.output_tokens.min(limit / 2).max(1);
    let prompt = a.prompt_tokens.min(limit - output).max(1);
    (prompt, output)
}

/// Busy seconds each request needs at least, in arrival order, with the
/// step's fixed cost shared by the weight `lambda` (see the module docs).
pub fn work(cfg: &SimConfig, arrivals: &[Arrival], lambda: f64) -> Vec<f64> {
    let p = &cfg.profile;
    let engine = EngineConfig::from_profile(p.clone());
    let batch = f64::from(p.max_num_seqs.min(p.max_num_batched_tokens).max(1));
    let kv_tokens = f64::from(engine.block_size) * f64::from(engine.num_gpu_blocks.max(1));
    let base_s = p.step_base_us * 1e-6;
    let per_decode_s = p.per_decode_seq_us * 1e-6;
    let per_prefill_s = p.per_prefill_token_us * 1e-6;
    let limit = engine.max_request_tokens();
    let mut seen: HashSet<u64> = HashSet::new();
    arrivals
        .iter()
        .map(|a| {
            let (prompt, output) = clipped(limit, a);
            let mut cached = 0u32;
            for (k, h) in a.hash_ids.iter().enumerate() {
                let block_end = ((k as u32 + 1) * HASH_BLOCK_TOKENS).min(prompt);
                let block_start = k as u32 * HASH_BLOCK_TOKENS;
                if block_start >= prompt {
                    break;
                }
                if !seen.insert(*h) {
                    cached += block_end - block_start;
                }
            }
            let uncached = prompt - cached.min(prompt);
            let steps = f64::from(output - 1);
            // Σ over decode steps of the context only this request can
            // hold, p + j for j = 1 … o − 1. Prompt blocks that carry a
            // prefix hash may be shared with other requests, so they are
            // left out.
            let private_prompt = if a.hash_ids.is_empty() {
                f64::from(prompt)
            } else {
                0.0
            };
            let context_sum = steps * private_prompt + steps * (steps + 1.0) / 2.0;
            let shared_base =
                base_s * (lambda * steps / batch + (1.0 - lambda) * context_sum / kv_tokens);
            per_prefill_s * f64::from(uncached) + per_decode_s * steps + shared_base
        })
        .collect()
}

/// The bound for `arrivals` (episode time, t ≥ 0) over `[0, episode_end]`
/// with at least `min` replicas, at attainment `target` (a fraction).
pub fn lower_bound(
    cfg: &SimConfig,
    arrivals: &[Arrival],
    episode_end: f64,
    min: u32,
    target: f64,
) -> Bound {
    let limit = EngineConfig::from_profile(cfg.profile.clone()).max_request_tokens();
    let floor = f64::from(min) * episode_end;
    let misses = ((1.0 - target).max(0.0) * arrivals.len() as f64).floor() as usize;
    let mut best = Bound {
        replica_seconds: floor,
        gpu_hours: 0.0,
        window_s: episode_end,
    };
    for lambda in [0.0, 0.5, 1.0] {
        let w = work(cfg, arrivals, lambda);
        let mut largest = w.clone();
        largest.sort_by(|a, b| b.total_cmp(a));
        let forgiven: f64 = largest.iter().take(misses).sum();
        for window in WINDOWS_S {
            let windows = (episode_end / window).ceil().max(1.0) as usize;
            let mut inside = vec![0.0f64; windows];
            for (a, &wi) in arrivals.iter().zip(&w) {
                let (_, output) = clipped(limit, a);
                let deadline = a.at + cfg.slo.ttft_s + f64::from(output - 1) * cfg.slo.tpot_s;
                let k = (a.at / window).floor() as usize;
                if k < windows && deadline < (k + 1) as f64 * window {
                    inside[k] += wi;
                }
            }
            let total: f64 = inside
                .iter()
                .enumerate()
                .map(|(k, &wk)| {
                    let len = (episode_end - k as f64 * window).min(window);
                    wk.max(f64::from(min) * len)
                })
                .sum();
            let bound = (total - forgiven).max(floor);
            if bound > best.replica_seconds {
                best = Bound {
                    replica_seconds: bound,
                    gpu_hours: 0.0,
                    window_s: window,
                };
            }
        }
    }
    best.gpu_hours = best.replica_seconds * f64::from(cfg.gpus_per_replica) / 3600.0;
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::Controller;
    use crate::score::score;
    use crate::sim::run;
    use aim_engine::Profile;

    fn arrival(at: f64, prompt: u32, output: u32) -> Arrival {
        Arrival {
            at,
            prompt_tokens: prompt,
            output_tokens: output,
            hash_ids: vec![],
        }
    }

    #[test]
    fn work_counts_prefill_and_decode_at_the_best_batch() {
        let cfg = SimConfig::new(Profile::llama_3_1_8b_h100());
        let w = work(&cfg, &[arrival(0.0, 1000, 101)], 1.0);
        // 1000 × 17.25 µs + 100 × (6.00 + 5753 / 1024) µs.
        let expect = 1000.0 * 17.25e-6 + 100.0 * (6.0 + 5753.0 / 1024.0) * 1e-6;
        assert!((w[0] - expect).abs() < 1e-12, "{} vs {expect}", w[0]);
        // Charged by KV share instead: contexts 1001 … 1100 of 29,205 × 16 tokens.
        let w = work(&cfg, &[arrival(0.0, 1000, 101)], 0.0);
        let share = (100.0 * 1000.0 + 100.0 * 101.0 / 2.0) / (29_205.0 * 16.0);
        let expect = 1000.0 * 17.25e-6 + 100.0 * 6.0e-6 + 5753.0e-6 * share;
        assert!((w[0] - expect).abs() < 1e-12, "{} vs {expect}", w[0]);
    }

    #[test]
    fn repeated_prefix_blocks_count_once() {
        let cfg = SimConfig::new(Profile::llama_3_1_8b_h100());
        let with = |hashes: Vec<u64>| Arrival {
            hash_ids: hashes,
            ..arrival(0.0, 1024, 1)
        };
        let w = work(&cfg, &[with(vec![1, 2]), with(vec![1, 3])], 1.0);
        assert!((w[1] - w[0] / 2.0).abs() < 1e-12);
    }

    #[test]
    fn the_floor_holds_when_load_is_light() {
        let cfg = SimConfig::new(Profile::tiny());
        let b = lower_bound(&cfg, &[arrival(1.0, 10, 2)], 100.0, 2, 0.99);
        assert_eq!(b.replica_seconds, 200.0);
    }

    /// The bound must sit below what a pool that meets the target costs:
    /// find the smallest static pool that meets 99 % on a heavy minute and
    /// check the bound against its replica-seconds.
    #[test]
    fn no_pool_that_meets_the_target_costs_less_than_the_bound() {
        let mut cfg = SimConfig::new(Profile::tiny());
        cfg.slo.ttft_s = 0.5;
        cfg.slo.tpot_s = 0.05;
        let arrivals: Vec<Arrival> = (0..6000)
            .map(|k| arrival(f64::from(k) * 0.01, 64, 200))
            .collect();
        let end = 60.0;
        let bound = lower_bound(&cfg, &arrivals, end, 1, 0.99);
        let mut met = None;
        for n in 1..=32 {
            cfg.initial_replicas = n;
            let r = run(&cfg, &arrivals, &mut Controller::Static(n), &mut |_| {}).unwrap();
            if score(&r, cfg.slo, 0.0).attainment >= 0.99 {
                met = Some(r.replica_seconds);
                break;
            }
        }
        let cost = met.expect("some pool meets the target");
        assert!(bound.replica_seconds > 60.0, "the bound binds: {bound:?}");
        assert!(
            bound.replica_seconds <= cost,
            "bound {bound:?} above a feasible pool's {cost}"
        );
    }
}
