//! Tier 3: faults the autoscaling loop must survive, with the bed's real
//! KServe, KEDA and HPA.
//!
//! * **A scaler unreachable when KEDA builds the HPA.** KEDA asks the
//!   scaler for each trigger's metric spec when it builds the HPA; a
//!   scaler it cannot reach then contributes no metric, the API server
//!   defaults the empty HPA to 80 % CPU, and KEDA does not ask again. The
//!   operator must see it, say so on the service (`HPAReady=False`,
//!   `HPAWithoutMetrics`) and have KEDA rebuild the HPA once the scaler is
//!   back. The test prints the time to recover.
//!
//! ```sh
//! AIM_TEST_CLUSTER=<name> cargo test -p aim --test tier3_faults -- --nocapture
//! ```

mod common;

use std::time::{Duration, Instant};

use common::bed::{Bed, WAIT, start_scaler};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::ResourceExt;
use kube::api::DeleteParams;

/// External metrics of the HPA (KEDA's metric per trigger).
fn external_metrics(hpa: &HorizontalPodAutoscaler) -> usize {
    hpa.spec
        .as_ref()
        .and_then(|s| s.metrics.as_ref())
        .map_or(0, |m| m.iter().filter(|m| m.type_ == "External").count())
}

fn scaling_active(hpa: &HorizontalPodAutoscaler) -> bool {
    hpa.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == "ScalingActive" && c.status == "True")
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_metricless_hpa_is_found_and_rebuilt_once_the_scaler_is_back() {
    let mut bed = Bed::start("faults", None, true).await;
    let before = bed.hpas.get(&bed.hpa_name).await.unwrap();
    assert_eq!(external_metrics(&before), 1, "{:?}", before.spec);

    // The scaler goes away, and KEDA rebuilds the HPA meanwhile (here
    // because the HPA was deleted; a KEDA restart does the same).
    bed.scaler.take().unwrap().shutdown().await;
    bed.hpas
        .delete(&bed.hpa_name, &DeleteParams::default())
        .await
        .unwrap();
    let broken_at = Instant::now();
    let broken = aim_testkit::await_object(
        &bed.hpas,
        &bed.hpa_name.clone(),
        "KEDA's HPA rebuilt without the scaler's metric",
        WAIT,
        |h| h.uid() != before.uid() && external_metrics(h) == 0,
    )
    .await;
    println!(
        "scaler down: KEDA rebuilt the HPA with metrics {:?}",
        broken
            .spec
            .as_ref()
            .and_then(|s| s.metrics.as_ref())
            .map(|m| m.iter().map(|m| m.type_.clone()).collect::<Vec<_>>())
    );
    // The service says so while it waits.
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some((status, reason)) = bed.condition("HPAReady").await
            && status == "False"
            && reason == "HPAWithoutMetrics"
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the service never reported the metricless HPA: {:?}",
            bed.condition("HPAReady").await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let reported = broken_at.elapsed();

    // The scaler comes back at the same addresses.
    let back_at = Instant::now();
    bed.scaler = Some(start_scaler(&bed.scaler_args).await);
    let deadline = Instant::now() + WAIT;
    let fixed = loop {
        let hpa = bed.hpas.get_opt(&bed.hpa_name).await.unwrap();
        if let Some(h) = hpa.filter(|h| external_metrics(h) == 1 && scaling_active(h)) {
            break h;
        }
        assert!(
            Instant::now() < deadline,
            "the HPA never got the scaler's metric back; service HPAReady {:?}\n{}",
            bed.condition("HPAReady").await,
            aim_testkit::events_of(&bed.admin, &bed.ns).await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let recovered = back_at.elapsed();
    assert_ne!(
        fixed.uid(),
        broken.uid(),
        "the metricless HPA was not rebuilt"
    );
    let deadline = Instant::now() + WAIT;
    while bed.condition("HPAReady").await.map(|(s, _)| s) != Some("True".into()) {
        assert!(
            Instant::now() < deadline,
            "HPAReady stayed {:?}",
            bed.condition("HPAReady").await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!(
        "metricless HPA: reported on the service {:.1} s after KEDA built it; scaler back → HPA rebuilt and reading its metric: {:.1} s",
        reported.as_secs_f64(),
        recovered.as_secs_f64()
    );
    bed.finish().await;
}
