//! Properties of the HPA arithmetic and of the policy → HPA hand-off.

use aim_policy::hpa::behavior::{Recommendation, stabilize};
use aim_policy::hpa::calculator::proposal;
use aim_policy::hpa::{
    Behavior, Hpa, HpaSpec, MetricInput, MetricTarget, PodSample, SyncInput, SyncOutcome,
    Tolerances,
};
use aim_policy::replica_value;
use proptest::prelude::*;

fn external(value: f64, per_pod: f64, ready: u32) -> MetricInput {
    MetricInput {
        target: MetricTarget::AverageValue { per_pod },
        pods: (0..ready).map(|_| PodSample::ready(0.0)).collect(),
        value: Some(value),
        cpu_readiness_rules: false,
    }
}

proptest! {
    #[test]
    fn hpa_never_leaves_its_bounds(
        min in 1u32..5,
        span in 0u32..30,
        start in 0u32..60,
        loads in prop::collection::vec(0.0f64..500.0, 1..60),
    ) {
        let max = min + span;
        let mut hpa = Hpa::new(HpaSpec { min_replicas: min, max_replicas: max, behavior: Behavior::default() });
        let mut replicas = start.max(1);
        for (k, load) in loads.iter().enumerate() {
            let input = SyncInput {
                now: k as f64 * 15.0,
                spec_replicas: replicas,
                status_replicas: replicas,
                metrics: vec![Some(external(*load, 3.0, replicas))],
            };
            if let SyncOutcome::Scale(n) = hpa.sync(&input) {
                prop_assert!((min..=max).contains(&n), "{n} outside [{min}, {max}]");
                replicas = n;
            }
        }
    }

    #[test]
    fn longer_down_window_never_scales_lower(
        recs in prop::collection::vec((0.0f64..600.0, 0u32..40), 0..30),
        current in 1u32..40,
        desired in 0u32..40,
        short in 0u32..300,
        extra in 0u32..300,
    ) {
        let mut recs: Vec<Recommendation> = recs.into_iter().map(|(at, replicas)| Recommendation { at, replicas }).collect();
        recs.sort_by(|a, b| a.at.total_cmp(&b.at));
        let mut b = Behavior::default();
        b.scale_down.stabilization_window_seconds = short;
        let with_short = stabilize(&recs, 600.0, current, desired, &b);
        b.scale_down.stabilization_window_seconds = short + extra;
        let with_long = stabilize(&recs, 600.0, current, desired, &b);
        prop_assert!(with_long >= with_short);
        // And a longer up window never scales higher.
        let mut b = Behavior::default();
        b.scale_up.stabilization_window_seconds = short;
        let up_short = stabilize(&recs, 600.0, current, desired, &b);
        b.scale_up.stabilization_window_seconds = short + extra;
        prop_assert!(stabilize(&recs, 600.0, current, desired, &b) <= up_short);
    }

    #[test]
    fn policy_value_lands_the_hpa_on_the_policy_count(
        desired in 0u32..500,
        current in 1u32..500,
        target_milli in 1u32..1_000_000,
    ) {
        // Targets are Kubernetes quantities: whole milli-units.
        let target = f64::from(target_milli) / 1000.0;
        let value = replica_value(desired, target);
        let got = proposal(&external(value, target, current), current, current, Tolerances::default()).unwrap();
        let ratio = f64::from(desired) / f64::from(current);
        if Tolerances::default().is_within(ratio) {
            prop_assert_eq!(got, current);
        } else {
            prop_assert_eq!(got, desired);
        }
    }
}
