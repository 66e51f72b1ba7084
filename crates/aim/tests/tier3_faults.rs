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
//! * **A node removed under load.** Kubernetes' pod garbage collector
//!   deletes the pods bound to it, the Deployment replaces them on the
//!   nodes left, and the service is back at its replicas with nothing
//!   duplicated. The node is put back afterwards, whatever happens.
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

/// Puts a deleted bed node back (from the bed's own fleet) when dropped,
/// even when the test fails: later tests share the cluster's nodes.
struct RestoreNode {
    client: kube::Client,
    name: String,
}

impl RestoreNode {
    async fn restore(client: &kube::Client, name: &str) {
        let spec = aim_devcluster::default_fleet()
            .into_iter()
            .find(|n| n.name == name)
            .expect("a node of the bed's fleet");
        let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client.clone());
        match nodes
            .create(&kube::api::PostParams::default(), &spec.to_node())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => panic!("restoring node {name}: {e}"),
        }
    }
}

impl Drop for RestoreNode {
    fn drop(&mut self) {
        let (client, name) = (self.client.clone(), self.name.clone());
        // Drop cannot await: a thread with a runtime of its own does it.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(RestoreNode::restore(&client, &name));
        })
        .join();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_removed_under_load_has_its_pods_rescheduled_and_the_service_recovers() {
    use common::bed::{is_ready, predictor_pods, stop};
    let bed = Bed::start("node", None, true).await;
    let load = bed.load();
    bed.await_scale(3, "scale-out under the seed's load").await;
    let pods = predictor_pods(&bed.pods, &bed.isvc).await;
    let node = pods
        .iter()
        .find_map(|p| p.spec.as_ref()?.node_name.clone())
        .expect("a scheduled pod");
    let lost: Vec<String> = pods
        .iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node.as_str()))
        .map(|p| p.name_any())
        .collect();

    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(bed.admin.clone());
    let _restore = RestoreNode {
        client: bed.admin.clone(),
        name: node.clone(),
    };
    nodes.delete(&node, &DeleteParams::default()).await.unwrap();
    let removed_at = Instant::now();
    // Kubernetes' pod garbage collector deletes pods bound to a node that
    // no longer exists (after its 40 s quarantine); the Deployment
    // replaces them on the nodes left.
    let deadline = Instant::now() + WAIT;
    loop {
        let now = predictor_pods(&bed.pods, &bed.isvc).await;
        let on_gone = now.iter().any(|p| lost.contains(&p.name_any()));
        let ready = now.iter().filter(|p| is_ready(p)).count();
        if !on_gone && ready == 3 {
            // Exactly the replicas asked for: nothing duplicated.
            assert_eq!(
                now.len(),
                3,
                "pods: {:?}",
                now.iter().map(|p| p.name_any()).collect::<Vec<_>>()
            );
            assert!(now.iter().all(|p| {
                p.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(node.as_str())
            }));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after removing node {node}: {} pods, {ready} ready, lost ones left: {on_gone}\n{}",
            now.len(),
            aim_testkit::events_of(&bed.admin, &bed.ns).await
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "node {node} removed under load with {} of 3 pods: 3 Ready pods again after {:.1} s",
        lost.len(),
        removed_at.elapsed().as_secs_f64()
    );
    stop(load);
    drop(_restore);
    aim_testkit::await_object(&nodes, &node, "the node back and Ready", WAIT, |n| {
        n.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    })
    .await;
    bed.finish().await;
}
