//! Property tests: invariants that must hold for any workload.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use aim_engine::{Engine, EngineConfig, EventKind, FinishReason, Profile, Request};
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct Arrival {
    at_us: u64,
    prompt: u32,
    max_tokens: u32,
    stop_after: Option<u32>,
    /// Index into a small set of shared prefixes, so prefix caching is exercised.
    prefix: Option<u8>,
    abort_after_us: Option<u64>,
}

fn arrival() -> impl Strategy<Value = Arrival> {
    (
        0u64..50_000,
        1u32..400,
        1u32..120,
        proptest::option::of(0u32..120),
        proptest::option::of(0u8..3),
        proptest::option::weighted(0.2, 0u64..30_000),
    )
        .prop_map(
            |(at_us, prompt, max_tokens, stop_after, prefix, abort_after_us)| Arrival {
                at_us,
                prompt,
                max_tokens,
                stop_after,
                prefix,
                abort_after_us,
            },
        )
}

fn config() -> impl Strategy<Value = EngineConfig> {
    (1u32..12, 16u32..300, 40u32..200, any::<bool>(), 0u64..4).prop_map(
        |(seqs, budget, blocks, caching, seed)| {
            let mut c = EngineConfig::from_profile(Profile::tiny());
            c.max_num_seqs = seqs;
            c.max_num_batched_tokens = budget;
            c.num_gpu_blocks = blocks;
            c.enable_prefix_caching = caching;
            c.step_jitter = if seed % 2 == 0 { 0.0 } else { 0.1 };
            c.seed = seed;
            c
        },
    )
}

fn hashes_for(a: &Arrival, id: u64) -> Vec<u64> {
    let full = a.prompt / 16;
    (0..full)
        .map(|b| match a.prefix {
            // Requests with the same prefix share their first blocks, then diverge.
            Some(p) if b < 4 => 1_000 * u64::from(p) + u64::from(b),
            _ => (id << 32) | u64::from(b),
        })
        .collect()
}

/// What the run observed, per request.
#[derive(Default, Debug)]
struct Ledger {
    token_indices: HashMap<u64, Vec<u32>>,
    finishes: HashMap<u64, (FinishReason, u32)>,
    generation_tokens: u64,
}

/// Replays arrivals and aborts on virtual time, checking per-step invariants as it goes.
fn simulate(config: EngineConfig, arrivals: &[Arrival]) -> (Ledger, Vec<Request>) {
    let mut engine = Engine::new(config.clone()).unwrap();
    let mut timeline: BTreeMap<(u64, u8, u64), ()> = BTreeMap::new();
    let mut accepted = Vec::new();
    for (id, a) in arrivals.iter().enumerate() {
        timeline.insert((a.at_us, 0, id as u64), ());
        if let Some(after) = a.abort_after_us {
            timeline.insert((a.at_us + after, 1, id as u64), ());
        }
    }
    let mut ledger = Ledger::default();
    let record = |ledger: &mut Ledger, events: &[aim_engine::Event]| {
        for e in events {
            match &e.kind {
                EventKind::Token { index, .. } => ledger
                    .token_indices
                    .entry(e.request)
                    .or_default()
                    .push(*index),
                EventKind::Finished(f) => {
                    let previous = ledger
                        .finishes
                        .insert(e.request, (f.reason, f.output_tokens));
                    assert!(previous.is_none(), "request {} finished twice", e.request);
                }
                _ => {}
            }
        }
    };
    let mut now = Duration::ZERO;
    let mut pending = timeline.into_keys().peekable();
    loop {
        while let Some(&(at_us, kind, id)) = pending.peek() {
            let at = Duration::from_micros(at_us);
            if at > now && !engine.is_idle() {
                break;
            }
            now = now.max(at);
            pending.next();
            let a = &arrivals[id as usize];
            if kind == 0 {
                let mut req =
                    Request::new(id, a.prompt, a.max_tokens).with_block_hashes(hashes_for(a, id));
                req.stop_after = a.stop_after;
                if engine.submit(req.clone(), now).is_ok() {
                    accepted.push(req);
                }
            } else if let Some(event) = engine.abort(id, now) {
                record(&mut ledger, &[event]);
            }
        }
        let Some(step) = engine.step(now) else {
            assert!(engine.is_idle(), "a busy engine must always make progress");
            if pending.peek().is_none() {
                break;
            }
            continue;
        };
        now = step.ended;
        engine.audit().unwrap();
        assert!(engine.kv_blocks_used() <= config.num_gpu_blocks);
        assert!(engine.num_running() <= config.max_num_seqs as usize);
        assert!(
            step.shape.prefill_tokens + step.shape.decode_seqs <= config.max_num_batched_tokens
        );
        assert!(step.duration > Duration::ZERO);
        ledger.generation_tokens += u64::from(step.generation_tokens);
        record(&mut ledger, &step.events);
    }
    assert!(engine.is_idle());
    assert_eq!(
        engine.kv_blocks_used(),
        0,
        "all blocks are returned at the end"
    );
    (ledger, accepted)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn every_request_ends_once_and_tokens_are_conserved(
        config in config(),
        arrivals in proptest::collection::vec(arrival(), 1..40),
    ) {
        let (ledger, accepted) = simulate(config, &arrivals);
        let mut emitted = 0u64;
        for req in &accepted {
            let (reason, output) = *ledger.finishes.get(&req.id)
                .unwrap_or_else(|| panic!("request {} never finished", req.id));
            let indices = ledger.token_indices.get(&req.id).cloned().unwrap_or_default();
            // Tokens arrive once each, in order, and the finish reports exactly them.
            prop_assert_eq!(&indices, &(0..output).collect::<Vec<_>>());
            emitted += u64::from(output);
            if reason != FinishReason::Abort {
                prop_assert_eq!((output, reason), req.planned_output());
            } else {
                prop_assert!(output <= req.planned_output().0);
            }
        }
        prop_assert_eq!(ledger.finishes.len(), accepted.len());
        prop_assert_eq!(ledger.generation_tokens, emitted);
    }

    #[test]
    fn a_lone_request_takes_exactly_the_profile_time(
        prompt in 1u32..1500,
        max_tokens in 1u32..200,
        budget in 16u32..600,
        per_kv in 0.0f64..0.5,
    ) {
        let mut profile = Profile::tiny();
        profile.per_kv_token_us = per_kv;
        let mut config = EngineConfig::from_profile(profile.clone());
        config.max_num_batched_tokens = budget;
        let mut engine = Engine::new(config).unwrap();
        engine.submit(Request::new(1, prompt, max_tokens), Duration::ZERO).unwrap();
        let mut now = Duration::ZERO;
        let mut finished = None;
        while let Some(step) = engine.step(now) {
            now = step.ended;
            for e in step.events {
                if let EventKind::Finished(f) = e.kind { finished = Some(*f); }
            }
        }
        let f = finished.expect("the request finishes");
        // The formula, evaluated independently of the engine: full chunks of the budget,
        // then one decode step per further token attending to prompt + tokens so far.
        let ns = |us: f64| (us * 1_000.0).round() as u64;
        let full_chunks = u64::from(prompt / budget);
        let last_chunk = prompt % budget;
        let mut ttft = full_chunks * ns(profile.step_base_us + profile.per_prefill_token_us * f64::from(budget));
        if last_chunk > 0 {
            ttft += ns(profile.step_base_us + profile.per_prefill_token_us * f64::from(last_chunk));
        }
        let decode: u64 = (1..max_tokens)
            .map(|k| ns(profile.step_base_us + profile.per_decode_seq_us
                + profile.per_kv_token_us * f64::from(prompt + k)))
            .sum();
        prop_assert_eq!(f.ttft(), Some(Duration::from_nanos(ttft)));
        prop_assert_eq!(f.e2e(), Duration::from_nanos(ttft + decode));
        prop_assert_eq!(f.output_tokens, max_tokens);
    }

    #[test]
    fn runs_are_deterministic_for_a_seed(
        config in config(),
        arrivals in proptest::collection::vec(arrival(), 1..20),
    ) {
        let (a, _) = simulate(config.clone(), &arrivals);
        let (b, _) = simulate(config, &arrivals);
        prop_assert_eq!(a.finishes, b.finishes);
        prop_assert_eq!(a.token_indices, b.token_indices);
    }
}
