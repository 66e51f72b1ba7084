//! The engine's busy time: what a GPU exporter's utilisation is derived
//! from (the share of an interval the engine spent in steps).

use std::time::Duration;

use aim_engine::{Engine, EngineConfig, Profile, Request};

fn tiny() -> Engine {
    Engine::new(EngineConfig::from_profile(Profile::tiny())).unwrap()
}

/// Busy share of `[0, horizon)`, in percent, under requests of
/// `prompt`/`output` tokens arriving every `gap` (open loop, virtual time).
fn busy_percent(gap: Duration, prompt: u32, output: u32, horizon: Duration) -> f64 {
    let mut engine = tiny();
    let mut now = Duration::ZERO;
    let mut next_arrival = Duration::ZERO;
    let mut id = 0;
    while now < horizon {
        while next_arrival <= now {
            engine
                .submit(Request::new(id, prompt, output), next_arrival)
                .unwrap();
            id += 1;
            next_arrival += gap;
        }
        now = match engine.step(now) {
            Some(step) => step.ended,
            // Idle: nothing happens until the next arrival.
            None => next_arrival,
        };
    }
    100.0 * engine.busy_time(horizon).as_secs_f64() / horizon.as_secs_f64()
}

#[test]
fn an_idle_engine_was_never_busy_and_idle_time_adds_nothing() {
    let mut engine = tiny();
    assert_eq!(engine.busy_time(Duration::from_secs(60)), Duration::ZERO);
    engine
        .submit(Request::new(1, 10, 2), Duration::ZERO)
        .unwrap();
    let mut now = Duration::ZERO;
    while let Some(step) = engine.step(now) {
        now = step.ended;
    }
    let served = engine.busy_time(now);
    assert!(served > Duration::ZERO);
    assert_eq!(engine.busy_time(now + Duration::from_secs(3600)), served);
}

#[test]
fn busy_time_is_the_sum_of_steps_and_counts_a_step_in_flight_up_to_now() {
    let mut engine = tiny();
    engine
        .submit(Request::new(1, 100, 3), Duration::from_secs(1))
        .unwrap();
    // Before the request arrives and while it is not yet stepped: nothing.
    assert_eq!(engine.busy_time(Duration::from_secs(1)), Duration::ZERO);
    let first = engine.step(Duration::from_secs(1)).unwrap();
    let half = first.started + first.duration / 2;
    assert_eq!(engine.busy_time(half), first.duration / 2);
    assert_eq!(engine.busy_time(first.ended), first.duration);
    // A later step after an idle gap: the gap does not count.
    let gap = Duration::from_millis(500);
    let second = engine.step(first.ended + gap).unwrap();
    assert_eq!(second.started, first.ended + gap);
    assert_eq!(
        engine.busy_time(second.ended + Duration::from_secs(10)),
        first.duration + second.duration
    );
    // Asked about a time before the step in flight began: only the
    // finished steps count.
    assert_eq!(engine.busy_time(first.ended), first.duration);
}

#[test]
fn a_saturated_engine_is_busy_all_the_time() {
    // Arrivals far faster than the engine can finish them: it never idles.
    let p = busy_percent(Duration::from_millis(1), 200, 50, Duration::from_secs(5));
    assert!(p > 99.0, "saturated: {p}%");
    assert!(p <= 100.0, "never above 100: {p}%");
}

#[test]
fn busy_share_rises_with_load_from_idle_to_saturated() {
    // One request of 100 + 20 tokens on the tiny profile is busy for
    // 1.2 ms (prefill) + 19 × 1.01 ms (decodes) ≈ 20.4 ms, alone.
    let horizon = Duration::from_secs(20);
    let gaps_ms = [1_000, 400, 120, 60, 41, 30, 20, 5];
    let shares: Vec<f64> = gaps_ms
        .iter()
        .map(|&g| busy_percent(Duration::from_millis(g), 100, 20, horizon))
        .collect();
    // A request every 41 ms is about half the time.
    let half = shares[4];
    assert!((40.0..60.0).contains(&half), "half load: {half}%");
    assert!(shares[0] < 5.0, "a request a second: {}%", shares[0]);
    assert!(shares[7] > 99.0, "overload: {}%", shares[7]);
    for pair in shares.windows(2) {
        assert!(pair[0] <= pair[1], "monotone in the load: {shares:?}");
    }
}
