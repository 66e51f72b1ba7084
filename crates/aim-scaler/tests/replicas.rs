//! Two scaler replicas fed the same exports give KEDA the same GetMetrics
//! answers through a collector restart: the scenario of `aim scaler
//! bench-replicas` (see `src/bench_replicas.rs`), at 2,000 series of one
//! metric name so a debug build stays within the freshness limit. The
//! bench runs it at 100,000 series in a release build.

use aim_scaler::bench_replicas::{ReplicasBenchArgs, scenario};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_answer_alike_through_a_collector_restart() {
    let args = ReplicasBenchArgs {
        deployments: 20,
        pods_per_deployment: 100,
        freshness: Duration::from_secs(3),
        json: false,
    };
    let report = scenario(&args).await.unwrap();
    let phases: Vec<_> = report.phases.iter().map(|p| (p.phase, p.series)).collect();
    assert_eq!(
        phases,
        vec![
            ("exporting", 2_000),
            ("collector stopped", 0),
            ("restarted", 2_020),
            ("exporting again", 2_020),
            ("gone pods stale", 1_970),
        ]
    );
    // Every query but the valueIfMissing ones failed alike while nothing
    // was exported; all answered with values otherwise.
    let values: Vec<_> = report.phases.iter().map(|p| p.values).collect();
    assert_eq!(values, vec![24, 3, 24, 24, 24]);
    println!("{report:#?}");
}
