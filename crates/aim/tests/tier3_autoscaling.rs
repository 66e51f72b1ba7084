//! Tier 3: the whole autoscaling loop, every part real.
//!
//! The operator (in-process, as the Helm chart's ServiceAccount) turns the
//! seed's autoscaling AIMService into an InferenceService; KServe's real
//! controller makes the Deployment, the ScaledObject and the
//! OpenTelemetryCollector; the pod runner gives each KWOK pod an `aim sim`
//! process and plays its OTel sidecar into an in-process `aim scaler`;
//! real KEDA and the real HPA controller scale the Deployment 1 → N under
//! load and back to 1 after it. The service's status and events follow.
//!
//! Bed settings that make it take seconds rather than minutes (all said
//! where they are set): the HPA controller syncs every 5 s, KServe's
//! scale-down stabilisation is 10 s (bed config map), and the scaler's
//! `operationOverTime` window is 10 s (upstream 120 s).
//!
//! ```sh
//! cargo test -p aim --test tier3_autoscaling -- --nocapture
//! ```

mod common;

use std::time::{Duration, Instant};

use aim_testkit::await_object;
use common::bed::{
    Bed, CONCURRENCY, Lags, SERVICE, WAIT, await_events, is_ready, predictor_pods, runtime,
    start_scaler, stop,
};
use kube::ResourceExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_seed_service_scales_1_to_n_and_back_with_real_kserve_and_keda() {
    let bed = Bed::start("tier3-loop", None, true).await;
    let n = CONCURRENCY as i32;

    // Load step: CONCURRENCY requests always in flight.
    let loaded = Instant::now();
    let load = bed.load();
    let (mut at_scaler, mut decided, mut created, mut second_ready) = (None, None, None, None);
    let mut max_desired = 1;
    loop {
        if at_scaler.is_none() && bed.scaler_value().await.is_ok_and(|v| v >= 1.0) {
            at_scaler = Some(loaded.elapsed());
        }
        let d = bed.desired().await.unwrap_or(0);
        max_desired = max_desired.max(d);
        if decided.is_none() && d > 1 {
            decided = Some(loaded.elapsed());
        }
        let current = predictor_pods(&bed.pods, &bed.isvc).await;
        if created.is_none() && current.len() > 1 {
            created = Some(loaded.elapsed());
        }
        let ready = current.iter().filter(|p| is_ready(p)).count() as i32;
        if second_ready.is_none() && ready > 1 {
            second_ready = Some(loaded.elapsed());
        }
        if ready == n && d == n {
            break;
        }
        assert!(
            loaded.elapsed() < WAIT,
            "no scale-up to {n}: HPA wants {d}, {ready} ready pods\n{}",
            aim_testkit::events_of(&bed.admin, &bed.ns).await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let to_n = loaded.elapsed();
    // The service reports what the HPA decided.
    let svc = await_object(&bed.services, SERVICE, "status.runtime at N", WAIT, |s| {
        runtime(s).is_some_and(|r| r.desired_replicas == Some(n) && r.current_replicas == Some(n))
    })
    .await;
    let status_runtime = runtime(&svc).unwrap();
    assert_eq!(status_runtime.min_replicas, Some(1));
    assert_eq!(status_runtime.max_replicas, Some(4));
    // A decision up from 1, with the metric value behind it (KEDA names
    // the HPA's metric after the ScaledObject: s0-<namespace>-…-predictor).
    let ups = await_events(&bed.admin, &bed.ns, "ScaledUp", |m| {
        m.starts_with("desired replicas 1 → ") && m.contains("target 1 per pod")
    })
    .await;
    assert!(
        max_desired <= n,
        "the HPA overshot to {max_desired} for {n} running requests"
    );

    // The load stops: back to min.
    let stopped_at = Instant::now();
    stop(load);
    let (mut scaler_zero, mut decided_down) = (None, None);
    loop {
        if scaler_zero.is_none() && bed.scaler_value().await.is_ok_and(|v| v < 1.0) {
            scaler_zero = Some(stopped_at.elapsed());
        }
        let d = bed.desired().await.unwrap_or(0);
        if decided_down.is_none() && d < n {
            decided_down = Some(stopped_at.elapsed());
        }
        let count = predictor_pods(&bed.pods, &bed.isvc).await.len();
        if d == 1 && count == 1 {
            break;
        }
        assert!(
            stopped_at.elapsed() < WAIT,
            "no scale-down: HPA wants {d}, {count} pods\n{}",
            aim_testkit::events_of(&bed.admin, &bed.ns).await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let to_one = stopped_at.elapsed();
    await_object(
        &bed.services,
        SERVICE,
        "status.runtime back at 1",
        WAIT,
        |s| {
            runtime(s)
                .is_some_and(|r| r.desired_replicas == Some(1) && r.current_replicas == Some(1))
        },
    )
    .await;
    let downs = await_events(&bed.admin, &bed.ns, "ScaledDown", |m| {
        m.contains(" → 1: ") && m.contains("target 1 per pod")
    })
    .await;
    assert!(
        !downs.iter().any(|m| m.contains(" → 0")),
        "no decision below the minimum: {downs:?}"
    );

    let secs = |d: Option<Duration>| d.unwrap_or_default();
    let mut rows = bed.milestones.clone();
    rows.extend([
        (
            format!("load step ({CONCURRENCY} in flight) → metric ≥ 1 at the scaler"),
            secs(at_scaler),
        ),
        ("load step → HPA decides > 1".into(), secs(decided)),
        ("load step → new pod created".into(), secs(created)),
        ("load step → second pod Ready".into(), secs(second_ready)),
        (format!("load step → {n} pods Ready"), to_n),
        (
            "load stopped → metric < 1 at the scaler".into(),
            secs(scaler_zero),
        ),
        ("load stopped → HPA decides down".into(), secs(decided_down)),
        ("load stopped → 1 pod".into(), to_one),
    ]);
    Lags { rows }
        .print("tier-3 whole loop (AIMService → KServe → KEDA → HPA; pods, sidecars, scaler):");
    println!("  ScaledUp events:   {ups:?}");
    println!("  ScaledDown events: {downs:?}");
    bed.finish().await;
}

/// The cost guard with real KEDA: a namespace runtime config starts the
/// service paused (KServe creates the ScaledObject paused, KEDA makes no
/// HPA, load changes nothing); `aim resume` brings the HPA and scaling
/// back; `aim pause` removes the HPA again and holds the replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pause_and_resume_switch_real_kedas_hpa_off_and_on() {
    let config = "apiVersion: aim.eai.amd.com/v1alpha1\nkind: AIMRuntimeConfig\nmetadata: {name: default}\nspec:\n  autoscaling: {pausedByDefault: true}\n";
    let bed = Bed::start("tier3-pause", Some(config), false).await;
    let so = bed.scaled_object().await;
    assert_eq!(
        so.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("autoscaling.keda.sh/paused")),
        Some(&"true".to_string()),
        "KServe created the ScaledObject paused"
    );
    await_object(
        &bed.services,
        SERVICE,
        "HPAReady ScalingPaused, runtime paused",
        WAIT,
        |s| {
            let paused = runtime(s).and_then(|r| r.paused) == Some(true);
            let reason = s.status.as_ref().and_then(|st| {
                st.conditions
                    .iter()
                    .find(|c| c.type_ == "HPAReady")
                    .map(|c| c.reason.clone())
            });
            paused && reason.as_deref() == Some("ScalingPaused")
        },
    )
    .await;
    // One pod, Ready; load arrives, and nothing scales.
    let load = bed.load();
    let until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < until {
        assert_eq!(
            bed.desired().await,
            None,
            "KEDA made an HPA for a paused ScaledObject"
        );
        let d = bed.deployments.get(&bed.predictor).await.unwrap();
        assert_eq!(
            d.spec.and_then(|s| s.replicas),
            Some(1),
            "a paused service scaled"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        bed.scaler_value().await.is_ok_and(|v| v >= 1.0),
        "the load shows at the scaler"
    );

    // Resume: KEDA makes the HPA, and the waiting load scales the service.
    let resumed = Instant::now();
    aim_operator::cost_guard::set_paused(&bed.admin, &bed.ns, SERVICE, false)
        .await
        .unwrap();
    await_object(&bed.hpas, &bed.hpa_name, "the HPA back", WAIT, |_| true).await;
    let to_hpa = resumed.elapsed();
    bed.await_scale(CONCURRENCY as i32, "scaling after resume")
        .await;
    let to_n = resumed.elapsed();
    await_object(
        &bed.services,
        SERVICE,
        "runtime no longer paused",
        WAIT,
        |s| {
            runtime(s).is_some_and(|r| {
                r.paused != Some(true) && r.desired_replicas == Some(CONCURRENCY as i32)
            })
        },
    )
    .await;
    assert_ne!(
        bed.condition("HPAReady").await.map(|c| c.1).as_deref(),
        Some("ScalingPaused")
    );

    // Pause again mid-load: the HPA goes, the replicas stay.
    let paused = Instant::now();
    aim_operator::cost_guard::set_paused(&bed.admin, &bed.ns, SERVICE, true)
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while bed.desired().await.is_some() {
        assert!(
            Instant::now() < deadline,
            "KEDA kept the HPA of a paused ScaledObject"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let to_gone = paused.elapsed();
    stop(load);
    await_object(
        &bed.services,
        SERVICE,
        "HPAReady ScalingPaused again",
        WAIT,
        |s| {
            runtime(s).and_then(|r| r.paused) == Some(true)
                && s.status.as_ref().is_some_and(|st| {
                    st.conditions
                        .iter()
                        .any(|c| c.type_ == "HPAReady" && c.reason == "ScalingPaused")
                })
        },
    )
    .await;
    // No load and no HPA: the replicas stay where the pause found them.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let d = bed.deployments.get(&bed.predictor).await.unwrap();
    assert_eq!(
        d.spec.and_then(|s| s.replicas),
        Some(CONCURRENCY as i32),
        "paused: the replicas stay"
    );
    Lags {
        rows: vec![
            ("resume → KEDA's HPA exists".into(), to_hpa),
            (
                format!("resume → {CONCURRENCY} pods Ready under the waiting load"),
                to_n,
            ),
            ("pause → KEDA's HPA gone".into(), to_gone),
        ],
    }
    .print("tier-3 cost guard with real KEDA:");
    bed.finish().await;
}

/// A pod killed mid-load: the runner stops its simulator and sidecar, the
/// pod's series stops counting at the scaler once it goes stale
/// (`--freshness`, 15 s), and the Deployment's replacement joins the loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pod_killed_mid_load_stops_counting_and_is_replaced() {
    let bed = Bed::start("tier3-kill", None, true).await;
    let load = bed.load();
    let n = CONCURRENCY as i32;
    bed.await_scale(n, "scale-up before the kill").await;
    let victim = predictor_pods(&bed.pods, &bed.isvc).await[0].name_any();
    assert!(
        bed.query(Some(&victim)).await.is_ok(),
        "the victim's series counts"
    );

    let killed = Instant::now();
    bed.pods
        .delete(&victim, &kube::api::DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let mut gone_from_scaler = None;
    let mut replaced = None;
    let mut min_desired = n;
    let mut last_answer = Ok(0.0);
    loop {
        let answer = bed.query(Some(&victim)).await;
        if gone_from_scaler.is_none() && answer.is_err() {
            gone_from_scaler = Some(killed.elapsed());
        }
        if gone_from_scaler.is_none() {
            last_answer = answer.clone();
        }
        min_desired = min_desired.min(bed.desired().await.unwrap_or(0));
        if replaced.is_none() && bed.ready_pods().await == n {
            replaced = Some(killed.elapsed());
        }
        if gone_from_scaler.is_some() && replaced.is_some() {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "after the kill: victim's series {answer:?}, {} ready pods",
            bed.ready_pods().await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let gone = gone_from_scaler.unwrap();
    // The scaler keeps a silent series for --freshness (15 s), then drops it.
    assert!(
        gone <= bed.scaler_args.freshness + Duration::from_secs(5),
        "the dead pod still counted after {gone:?}"
    );
    assert_eq!(min_desired, n, "the kill never made the HPA scale down");
    stop(load);
    Lags {
        rows: vec![
            (
                "pod deleted → its series stops counting at the scaler".into(),
                gone,
            ),
            ("pod deleted → replacement Ready".into(), replaced.unwrap()),
        ],
    }
    .print("tier-3 pod killed mid-load:");
    println!("  the victim's series answered {last_answer:?} until it went stale");
    bed.finish().await;
}

/// The scaler restarted mid-load with an empty store: KEDA gets errors
/// (never a zero, never the partial sum of the pods that exported first)
/// for the scaler's `--warmup` (10 s, two of KServe's 5 s scrapes), so the
/// HPA holds its replicas until the sidecars have refilled the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scaler_restart_mid_load_never_answers_zero() {
    let mut bed = Bed::start("tier3-restart", None, true).await;
    let load = bed.load();
    let n = CONCURRENCY as i32;
    bed.await_scale(n, "scale-up before the restart").await;

    let restarted = Instant::now();
    bed.scaler.take().unwrap().shutdown().await;
    bed.scaler = Some(start_scaler(&bed.scaler_args).await);
    let mut answers: Vec<(Duration, Result<f64, String>)> = Vec::new();
    let mut min_desired = n;
    let mut back = None;
    while restarted.elapsed() < Duration::from_secs(30) {
        let answer = bed.scaler_value().await;
        if back.is_none() && answer.as_ref().is_ok_and(|v| *v >= n as f64 - 0.5) {
            back = Some(restarted.elapsed());
        }
        answers.push((restarted.elapsed(), answer));
        min_desired = min_desired.min(bed.desired().await.unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!("tier-3 scaler restart mid-load: what KEDA was answered");
    let mut last = String::new();
    for (at, answer) in &answers {
        let text = match answer {
            Ok(v) => format!("{v}"),
            Err(e) => format!("error: {}", e.chars().take(90).collect::<String>()),
        };
        if text != last {
            println!("  +{:>5.1} s  {text}", at.as_secs_f64());
            last = text;
        }
    }
    // During the warm-up only refusals; the first value is the whole sum,
    // not the part of it whose pods happened to export first.
    let warmup = bed.scaler_args.warmup;
    assert!(
        answers
            .iter()
            .filter(|(at, _)| *at < warmup)
            .all(|(_, a)| a.is_err()),
        "the scaler answered during its warm-up"
    );
    let first_value = answers.iter().find_map(|(_, a)| a.as_ref().ok());
    assert!(
        first_value.is_some_and(|v| *v >= n as f64 - 0.5),
        "the first value after the restart was partial: {first_value:?}"
    );
    assert!(
        !answers
            .iter()
            .any(|(_, a)| a.as_ref().is_ok_and(|v| *v == 0.0)),
        "the restarted scaler answered 0 under load"
    );
    assert_eq!(min_desired, n, "the restart made the HPA scale down");
    let back = back.expect("the sidecars refilled the scaler within 30 s");
    println!("  restart → full value again: {:.1} s", back.as_secs_f64());
    stop(load);
    bed.finish().await;
}
