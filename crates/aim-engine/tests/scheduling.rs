//! Scenario tests of the scheduler against hand-computed expectations.

use std::collections::HashMap;
use std::time::Duration;

use aim_engine::{
    Engine, EngineConfig, EventKind, FinishReason, FinishedRequest, Profile, Request, StepOutcome,
    SubmitError,
};

fn tiny(edit: impl FnOnce(&mut EngineConfig)) -> Engine {
    let mut config = EngineConfig::from_profile(Profile::tiny());
    edit(&mut config);
    Engine::new(config).unwrap()
}

/// Drives the engine on virtual time until idle, returning every step.
fn run_to_idle(engine: &mut Engine, mut now: Duration) -> Vec<StepOutcome> {
    let mut steps = Vec::new();
    while let Some(step) = engine.step(now) {
        now = step.ended;
        engine.audit().unwrap();
        steps.push(step);
        assert!(steps.len() < 100_000, "engine does not converge");
    }
    steps
}

fn finished(steps: &[StepOutcome]) -> HashMap<u64, FinishedRequest> {
    steps
        .iter()
        .flat_map(|s| &s.events)
        .filter_map(|e| match &e.kind {
            EventKind::Finished(f) => Some((e.request, (**f).clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn lone_request_follows_the_profile_formula() {
    let mut engine = tiny(|_| {});
    let p = Profile::tiny();
    engine
        .submit(Request::new(7, 100, 5), Duration::ZERO)
        .unwrap();
    let steps = run_to_idle(&mut engine, Duration::ZERO);
    let f = &finished(&steps)[&7];
    let prefill = p.step_base_us + 100.0 * p.per_prefill_token_us;
    let decode = p.step_base_us + p.per_decode_seq_us;
    let us = |d: Duration| d.as_nanos() as f64 / 1e3;
    assert_eq!(steps.len(), 5);
    assert!((us(f.ttft().unwrap()) - prefill).abs() < 1e-3);
    assert!((us(f.e2e()) - (prefill + 4.0 * decode)).abs() < 1e-3);
    assert!((us(f.mean_tpot().unwrap()) - decode).abs() < 1e-3);
    assert_eq!(f.queue_time(), Some(Duration::ZERO));
    assert_eq!(f.reason, FinishReason::Length);
}

#[test]
fn long_prompts_are_prefilled_in_chunks_of_the_token_budget() {
    let mut engine = tiny(|c| c.max_num_batched_tokens = 64);
    engine
        .submit(Request::new(1, 150, 1), Duration::ZERO)
        .unwrap();
    let steps = run_to_idle(&mut engine, Duration::ZERO);
    let chunks: Vec<u32> = steps.iter().map(|s| s.shape.prefill_tokens).collect();
    assert_eq!(chunks, vec![64, 64, 22]);
    assert_eq!(steps.iter().map(|s| s.generation_tokens).sum::<u32>(), 1);
    assert_eq!(
        steps[2].prompt_tokens, 150,
        "prompt tokens count when prefill completes"
    );
}

#[test]
fn decodes_and_prefill_chunks_share_the_budget() {
    let mut engine = tiny(|c| c.max_num_batched_tokens = 32);
    engine
        .submit(Request::new(1, 10, 20), Duration::ZERO)
        .unwrap();
    let first = engine.step(Duration::ZERO).unwrap();
    engine.submit(Request::new(2, 100, 1), first.ended).unwrap();
    let second = engine.step(first.ended).unwrap();
    assert_eq!(second.shape.decode_seqs, 1);
    assert_eq!(
        second.shape.prefill_tokens, 31,
        "the decode took one token of 32"
    );
}

#[test]
fn the_batch_never_exceeds_max_num_seqs_and_the_rest_wait() {
    let mut engine = tiny(|c| c.max_num_seqs = 3);
    for id in 0..5 {
        engine
            .submit(Request::new(id, 8, 4), Duration::ZERO)
            .unwrap();
    }
    let step = engine.step(Duration::ZERO).unwrap();
    assert_eq!(engine.num_running(), 3);
    assert_eq!(engine.num_waiting(), 2);
    let steps = run_to_idle(&mut engine, step.ended);
    let done = finished(&steps);
    assert_eq!(done.len(), 5);
    assert!(
        done[&4].queue_time().unwrap() > Duration::ZERO,
        "the fifth request queued"
    );
}

#[test]
fn running_out_of_blocks_preempts_the_newest_request() {
    // 8 blocks of 16 tokens; two requests that each grow to 64 tokens cannot both fit.
    let mut engine = tiny(|c| c.num_gpu_blocks = 6);
    engine
        .submit(Request::new(1, 32, 32), Duration::ZERO)
        .unwrap();
    engine
        .submit(Request::new(2, 32, 32), Duration::ZERO)
        .unwrap();
    let steps = run_to_idle(&mut engine, Duration::ZERO);
    let preempted: Vec<u64> = steps
        .iter()
        .flat_map(|s| &s.events)
        .filter(|e| e.kind == EventKind::Preempted)
        .map(|e| e.request)
        .collect();
    assert!(!preempted.is_empty());
    assert!(
        preempted.iter().all(|&id| id == 2),
        "the newer request is the victim"
    );
    let done = finished(&steps);
    assert_eq!(done[&1].preemptions, 0);
    assert!(done[&2].preemptions > 0);
    assert_eq!(
        done[&2].output_tokens, 32,
        "recompute keeps the tokens already produced"
    );
    assert_eq!(
        steps.iter().map(|s| s.preemptions).sum::<u32>(),
        preempted.len() as u32
    );
}

#[test]
fn shared_prefixes_are_served_from_the_cache() {
    let mut engine = tiny(|_| {});
    let hashes: Vec<u64> = (100..106).collect(); // 6 full blocks = 96 tokens
    engine
        .submit(
            Request::new(1, 100, 2).with_block_hashes(hashes.clone()),
            Duration::ZERO,
        )
        .unwrap();
    let steps = run_to_idle(&mut engine, Duration::ZERO);
    let now = steps.last().unwrap().ended;
    engine
        .submit(Request::new(2, 100, 2).with_block_hashes(hashes), now)
        .unwrap();
    let first = engine.step(now).unwrap();
    assert_eq!(first.prefix_cache_hits, 96);
    assert_eq!(first.prefix_cache_queries, 100);
    assert_eq!(
        first.shape.prefill_tokens, 4,
        "only the uncached tail is computed"
    );
    let rest = run_to_idle(&mut engine, first.ended);
    assert_eq!(finished(&rest)[&2].cached_tokens, 96);
}

#[test]
fn a_fully_cached_prompt_still_computes_its_last_block() {
    let mut engine = tiny(|_| {});
    let hashes: Vec<u64> = (1..=4).collect(); // exactly 64 tokens
    engine
        .submit(
            Request::new(1, 64, 1).with_block_hashes(hashes.clone()),
            Duration::ZERO,
        )
        .unwrap();
    let now = run_to_idle(&mut engine, Duration::ZERO)
        .last()
        .unwrap()
        .ended;
    engine
        .submit(Request::new(2, 64, 1).with_block_hashes(hashes), now)
        .unwrap();
    let step = engine.step(now).unwrap();
    assert_eq!(step.prefix_cache_hits, 48);
    assert_eq!(step.shape.prefill_tokens, 16);
}

#[test]
fn prefix_caching_can_be_disabled() {
    let mut engine = tiny(|c| c.enable_prefix_caching = false);
    let hashes: Vec<u64> = (1..=4).collect();
    engine
        .submit(
            Request::new(1, 64, 1).with_block_hashes(hashes.clone()),
            Duration::ZERO,
        )
        .unwrap();
    let now = run_to_idle(&mut engine, Duration::ZERO)
        .last()
        .unwrap()
        .ended;
    engine
        .submit(Request::new(2, 64, 1).with_block_hashes(hashes), now)
        .unwrap();
    assert_eq!(engine.step(now).unwrap().prefix_cache_hits, 0);
}

#[test]
fn abort_frees_the_slot_and_blocks_at_once() {
    let mut engine = tiny(|c| c.max_num_seqs = 1);
    engine
        .submit(Request::new(1, 40, 100), Duration::ZERO)
        .unwrap();
    engine
        .submit(Request::new(2, 40, 5), Duration::ZERO)
        .unwrap();
    let step = engine.step(Duration::ZERO).unwrap();
    assert!(engine.kv_blocks_used() > 0);
    let event = engine.abort(1, step.ended).unwrap();
    let EventKind::Finished(f) = event.kind else {
        panic!("abort must finish the request")
    };
    assert_eq!(f.reason, FinishReason::Abort);
    assert_eq!(f.output_tokens, 1);
    assert_eq!(engine.num_running(), 0);
    assert_eq!(engine.kv_blocks_used(), 0);
    assert!(
        engine.abort(1, step.ended).is_none(),
        "a second abort is a no-op"
    );
    // The waiting request takes the freed slot on the next step.
    engine.step(step.ended).unwrap();
    assert_eq!(engine.num_running(), 1);
    // Aborting a waiting request works too.
    engine.submit(Request::new(3, 10, 1), step.ended).unwrap();
    assert!(engine.abort(3, step.ended).is_some());
    assert_eq!(engine.num_waiting(), 0);
    engine.audit().unwrap();
}

#[test]
fn stop_after_ends_with_stop_before_max_tokens() {
    let mut engine = tiny(|_| {});
    engine
        .submit(Request::new(1, 10, 50).with_stop_after(3), Duration::ZERO)
        .unwrap();
    let f = &finished(&run_to_idle(&mut engine, Duration::ZERO))[&1];
    assert_eq!((f.output_tokens, f.reason), (3, FinishReason::Stop));
}

#[test]
fn bad_submissions_are_refused_with_the_reason() {
    let mut engine = tiny(|_| {});
    assert_eq!(
        engine.submit(Request::new(1, 0, 5), Duration::ZERO),
        Err(SubmitError::EmptyPrompt)
    );
    assert_eq!(
        engine.submit(Request::new(1, 5, 0), Duration::ZERO),
        Err(SubmitError::ZeroMaxTokens)
    );
    assert!(matches!(
        engine.submit(Request::new(1, 2000, 100), Duration::ZERO),
        Err(SubmitError::TooLong { limit: 2048, .. })
    ));
    engine
        .submit(Request::new(1, 5, 5), Duration::ZERO)
        .unwrap();
    assert_eq!(
        engine.submit(Request::new(1, 5, 5), Duration::ZERO),
        Err(SubmitError::DuplicateId(1))
    );
}

#[test]
fn a_step_asked_for_early_starts_when_the_previous_one_ends() {
    let mut engine = tiny(|_| {});
    engine
        .submit(Request::new(1, 10, 3), Duration::ZERO)
        .unwrap();
    let first = engine.step(Duration::ZERO).unwrap();
    let second = engine.step(Duration::ZERO).unwrap();
    assert_eq!(second.started, first.ended);
}

#[test]
fn jitter_is_reproducible_for_a_seed_and_differs_across_seeds() {
    let durations = |seed| {
        let mut engine = tiny(|c| {
            c.step_jitter = 0.2;
            c.seed = seed;
        });
        engine
            .submit(Request::new(1, 10, 20), Duration::ZERO)
            .unwrap();
        run_to_idle(&mut engine, Duration::ZERO)
            .iter()
            .map(|s| s.duration)
            .collect::<Vec<_>>()
    };
    assert_eq!(durations(1), durations(1));
    assert_ne!(durations(1), durations(2));
}

/// Leaving out the later tokens' events changes nothing the engine does:
/// the same steps, the same first tokens and the same completions.
#[test]
fn first_token_events_only_change_nothing_but_the_events() {
    let load = |engine: &mut Engine| {
        for id in 0..40u64 {
            let request = Request::new(id, 20 + (id as u32 * 37) % 200, 1 + (id as u32 * 13) % 60);
            engine
                .submit(request, Duration::from_millis(id * 3))
                .unwrap();
        }
    };
    let mut every = tiny(|c| c.step_jitter = 0.2);
    let mut firsts = tiny(|c| c.step_jitter = 0.2);
    firsts.set_every_token_event(false);
    load(&mut every);
    load(&mut firsts);
    let (a, b) = (
        run_to_idle(&mut every, Duration::ZERO),
        run_to_idle(&mut firsts, Duration::ZERO),
    );
    assert_eq!(a.len(), b.len());
    let keep = |s: &StepOutcome| -> Vec<_> {
        s.events
            .iter()
            .filter(|e| !matches!(e.kind, EventKind::Token { index, .. } if index > 0))
            .cloned()
            .collect()
    };
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(
            (x.ended, x.shape, x.generation_tokens),
            (y.ended, y.shape, y.generation_tokens)
        );
        assert_eq!(keep(x), y.events);
    }
    let later_tokens = |steps: &[StepOutcome]| {
        steps
            .iter()
            .flat_map(|s| &s.events)
            .filter(|e| matches!(e.kind, EventKind::Token { index, .. } if index > 0))
            .count()
    };
    assert!(later_tokens(&a) > 100);
    assert_eq!(later_tokens(&b), 0);
}
