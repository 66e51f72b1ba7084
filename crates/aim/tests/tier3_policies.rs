//! Tier 3: aim's policies act live, not just in the lab. Each service is
//! deployed from an AIMService whose `autoScaling.policy` names the policy
//! (the operator writes the ScaledObject), and scaled by the real KEDA and
//! HPA in the bed (`common::bed`) on the simulators' metrics:
//!
//! * `predictive` scales ahead of a ramp before the reactive passthrough
//!   (the same metric and target, deployed by KServe) does;
//! * `cost` scales down after its own keep-alive where passthrough, under
//!   KServe's shipped 300 s scale-down window, holds the replicas;
//! * `stable-panic` enters panic on a step (the scaler says so) and holds
//!   its replicas through the stable window.
//!
//! Every run prints its decision times.
//!
//! ```sh
//! AIM_TEST_CLUSTER=<name> cargo test -p aim --test tier3_policies -- --nocapture --test-threads=1
//! ```

mod common;

use std::time::{Duration, Instant};

use common::bed::{
    Bed, BedConfig, Lags, Load, SERVICE, WAIT, desired, is_ready, predictor_pods, stop,
};

/// The bed's service with `metric` (a pod metric block's `metric:` body)
/// and `target`, and aim's extension lines (already indented) if any.
fn service_yaml(max: i32, metric: &str, target: &str, extension: &str) -> String {
    format!(
        r#"apiVersion: aim.eai.amd.com/v1alpha1
kind: AIMService
metadata: {{name: {SERVICE}}}
spec:
  model: {{name: qwen-qwen3-32b}}
  template: {{name: qwen3-32b-latency}}
  minReplicas: 1
  maxReplicas: {max}
  autoScaling:
    metrics:
      - type: PodMetric
        podmetric:
          metric: {metric}
          target: {{type: Value, value: "{target}"}}
{extension}"#
    )
}

const RUNNING: &str = "{backend: opentelemetry, metricNames: [vllm:num_requests_running], query: vllm:num_requests_running, operationOverTime: avg}";
const SUCCESS_RATE: &str = "{backend: opentelemetry, metricNames: [vllm:request_success_total], query: vllm:request_success_total, operationOverTime: rate}";

/// What the HPA wants, how many pods are Ready, and what the scaler last
/// answered (replicas asked, the policy's state).
#[derive(Clone, Debug, PartialEq)]
struct Seen {
    /// The trigger's query value at the scaler's last answer.
    raw: Option<f64>,
    wants: i32,
    ready: usize,
    pods: usize,
    asks: Option<u32>,
    mode: Option<&'static str>,
}

async fn look(bed: &Bed) -> Seen {
    let hpa = bed.hpas.get_opt(&bed.hpa_name).await.unwrap();
    let pods = predictor_pods(&bed.pods, &bed.isvc).await;
    let decision = bed.scaler.as_ref().and_then(|s| {
        s.state
            .decisions()
            .into_iter()
            .find(|d| d.namespace == bed.ns && d.scaledobject == bed.predictor)
    });
    Seen {
        raw: decision.as_ref().map(|d| (d.raw * 10.0).round() / 10.0),
        wants: hpa.as_ref().map(desired).unwrap_or(0),
        ready: pods.iter().filter(|p| is_ready(p)).count(),
        pods: pods.len(),
        asks: decision
            .as_ref()
            .map(|d| aim_policy::replicas_asked(d.value, d.target)),
        mode: decision.and_then(|d| d.mode),
    }
}

/// Everything seen, with its time, when it changed.
#[derive(Default)]
struct Timeline {
    rows: Vec<(Duration, Seen)>,
}

impl Timeline {
    fn note(&mut self, at: Duration, seen: &Seen) {
        if self.rows.last().is_none_or(|(_, s)| s != seen) {
            self.rows.push((at, seen.clone()));
        }
    }

    /// When the HPA first wanted at least `n`.
    fn first_wants(&self, n: i32) -> Option<Duration> {
        self.rows
            .iter()
            .find(|(_, s)| s.wants >= n)
            .map(|(t, _)| *t)
    }

    fn print(&self, title: &str) {
        println!("  {title}:");
        for (t, s) in &self.rows {
            println!(
                "    +{:6.1} s  HPA wants {}  pods {} ({} ready)  query {}  scaler asks {}{}",
                t.as_secs_f64(),
                s.wants,
                s.pods,
                s.ready,
                s.raw.map_or("-".into(), |r| format!("{r:.1}")),
                s.asks.map_or("-".into(), |a| a.to_string()),
                s.mode.map_or(String::new(), |m| format!(" ({m})"))
            );
        }
    }
}

async fn start(prefix: &str, yaml: String, metric: &str) -> Bed {
    start_with_idle(prefix, yaml, metric, true).await
}

/// `idle: false` for a policy that keeps a replica's worth of value at no
/// load (the bed's idle check wants 0): then it waits for one Ready pod and
/// an HPA reading the metric itself.
async fn start_with_idle(prefix: &str, yaml: String, metric: &str, idle: bool) -> Bed {
    let bed = Bed::start_with(BedConfig {
        prefix: prefix.into(),
        service_yaml: yaml,
        runtime_config: None,
        idle,
        metric: metric.into(),
        sim_args: Vec::new(),
        prometheus: false,
        admin_at_chart_pods: false,
    })
    .await;
    if idle {
        return bed;
    }
    let began = Instant::now();
    loop {
        let reads = bed
            .hpas
            .get_opt(&bed.hpa_name)
            .await
            .unwrap()
            .and_then(|h| h.status?.current_metrics)
            .is_some_and(|m| !m.is_empty());
        if reads && bed.ready_pods().await == 1 {
            break;
        }
        assert!(began.elapsed() < WAIT, "{prefix}: no idle loop");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bed
}

/// A rising open-loop load: 0.5 → 4.5 requests/s over 80 s, short
/// answers (20 tokens, a quarter of a second), so finished requests follow
/// arrivals closely.
fn ramp() -> Load {
    Load::Ramp {
        from_rps: 0.5,
        to_rps: 4.5,
        over: RAMP,
        prompt: "Tell me a story.".into(),
        max_tokens: 20,
    }
}

const RAMP: Duration = Duration::from_secs(80);

/// Runs the ramp against one service and returns what was seen.
async fn ramp_run(prefix: &str, extension: &str) -> Timeline {
    let bed = start(
        prefix,
        service_yaml(4, SUCCESS_RATE, "1", extension),
        "vllm:request_success_total",
    )
    .await;
    let began = Instant::now();
    let load = bed.drive(ramp());
    let mut timeline = Timeline::default();
    while began.elapsed() < RAMP + Duration::from_secs(10) {
        timeline.note(began.elapsed(), &look(&bed).await);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stop(load);
    bed.finish().await;
    timeline
}

/// `predictive` on the finished-request rate (capacity 1 request/s per
/// replica, cold start 20 s, a 30 s trend, no season) against the same
/// metric and target as KServe deploys it (passthrough). The rate rises
/// 0.05 requests/s every second: passthrough asks for replicas as the
/// measured rate crosses each whole number, a scrape and a window after
/// the arrivals did; predictive asks for them a cold start ahead.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn predictive_scales_ahead_of_a_ramp_before_passthrough() {
    let reactive = ramp_run("t3-ramp-pass", "").await;
    let predictive = ramp_run(
        "t3-ramp-pred",
        "    policy: {name: predictive, params: {coldStart: 20s, trendWindow: 30s, smoothing: 10s, season: \"0\", headroom: \"0.1\", scaleDownDelay: 20s}}\n",
    )
    .await;
    reactive.print("passthrough (KServe's ScaledObject), from the ramp's start");
    predictive.print("predictive (the operator's ScaledObject), from the ramp's start");
    let mut rows = Vec::new();
    let mut ahead = Vec::new();
    for n in 2..=4 {
        let (p, r) = (predictive.first_wants(n), reactive.first_wants(n));
        println!(
            "  HPA first wants {n}: predictive {}, passthrough {}",
            p.map_or("never".into(), |t| format!("{:.1} s", t.as_secs_f64())),
            r.map_or("never".into(), |t| format!("{:.1} s", t.as_secs_f64()))
        );
        if let Some(p) = p {
            rows.push((format!("ramp start → predictive wants {n}"), p));
        }
        if let Some(r) = r {
            rows.push((format!("ramp start → passthrough wants {n}"), r));
        }
        if let (Some(p), Some(r)) = (p, r) {
            ahead.push((n, r.as_secs_f64() - p.as_secs_f64()));
        }
    }
    Lags { rows }.print("tier-3 policy: predictive vs passthrough on a ramp");
    // The first step (2 replicas) comes from the level alone: a fresh
    // service has no trend yet, because the history a policy reads is one
    // point per 15 s. From the second step on, the trend puts predictive
    // a cold start ahead.
    let later: Vec<_> = ahead.iter().filter(|(n, _)| *n >= 3).collect();
    assert!(
        later.len() == 2,
        "both should reach 3 and 4 replicas on the ramp: {ahead:?}"
    );
    for (n, lead) in later {
        assert!(
            *lead >= 5.0,
            "predictive should want {n} replicas at least 5 s before passthrough; it led by {lead:.1} s"
        );
    }
}

/// Drives `load` until the HPA wants at least `n` and as many pods are
/// Ready, keeps it on for `hold`, stops it, and notes everything until
/// `until` says done (or `WAIT` passes, which fails the test with `what`).
/// Times are from the load's stop.
///
/// At least `n`: on the way up, a trigger that averages each pod's series
/// over a window and then sums them counts a request twice while it moves
/// to a new pod (the old pod's average still carries it), so a
/// passthrough service under 3 clients can be asked for 4 for a while,
/// and then holds 4. Which it reaches depends on timing; what the tests
/// compare is what each does after the load.
async fn up_then_watch(
    bed: &Bed,
    load: Load,
    n: i32,
    hold: Duration,
    what: &str,
    mut until: impl FnMut(Duration, &Seen) -> bool,
) -> (Timeline, Timeline) {
    let began = Instant::now();
    let running = bed.drive(load);
    let mut up = Timeline::default();
    loop {
        let seen = look(bed).await;
        up.note(began.elapsed(), &seen);
        if seen.wants >= n && seen.ready == seen.wants as usize {
            break;
        }
        assert!(
            began.elapsed() < WAIT,
            "{what}: no scale-up to {n} or more: {seen:?}\n{}",
            aim_testkit::events_of(&bed.admin, &bed.ns).await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let held = Instant::now();
    while held.elapsed() < hold {
        up.note(began.elapsed(), &look(bed).await);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stop(running);
    let stopped = Instant::now();
    let mut down = Timeline::default();
    loop {
        let seen = look(bed).await;
        down.note(stopped.elapsed(), &seen);
        if until(stopped.elapsed(), &seen) {
            break;
        }
        assert!(
            stopped.elapsed() < WAIT,
            "{what}: not done after the stop: {seen:?}\n{}",
            aim_testkit::events_of(&bed.admin, &bed.ns).await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    (up, down)
}

/// `cost` with `sloWeight: 0` keeps a replica for half a cold start after
/// its load goes (10 s here) and then lets it go: the service's
/// `behavior` sets the HPA's scale-down window to 0, because the policy
/// does the holding. Passthrough on the same metric and target, with the
/// scale-down window KServe ships (300 s), holds its replicas far longer.
/// Same load (3 closed-loop clients), same signal (running requests).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cost_scales_down_where_passthrough_holds() {
    let cost = start_with_idle(
        "t3-cost",
        service_yaml(
            4,
            RUNNING,
            "1",
            "    policy: {name: cost, params: {sloWeight: \"0\", coldStart: 20s}}\n    behavior:\n      scaleDown: {stabilizationWindowSeconds: 0}\n",
        ),
        "vllm:num_requests_running",
        false,
    )
    .await;
    let (cost_up, cost_down) = up_then_watch(
        &cost,
        Load::seed(),
        3,
        Duration::from_secs(10),
        "cost",
        |_, s| s.wants == 1 && s.pods == 1,
    )
    .await;
    let cost_back = cost_down.rows.last().map(|(t, _)| *t).unwrap();
    cost.finish().await;

    // Passthrough under KServe's shipped default, watched for as long as
    // cost took to come back, and 20 s more.
    let watch_for = cost_back + Duration::from_secs(20);
    let pass = start(
        "t3-cost-pass",
        service_yaml(
            4,
            RUNNING,
            "1",
            "    behavior:\n      scaleDown: {stabilizationWindowSeconds: 300}\n",
        ),
        "vllm:num_requests_running",
    )
    .await;
    let (pass_up, pass_down) = up_then_watch(
        &pass,
        Load::seed(),
        3,
        Duration::from_secs(10),
        "passthrough",
        |t, _| t >= watch_for,
    )
    .await;
    pass.finish().await;

    cost_up.print("cost, from the load step");
    cost_down.print("cost, from the load's stop");
    pass_up.print("passthrough (300 s scale-down window), from the load step");
    pass_down.print("passthrough, from the load's stop");
    Lags {
        rows: vec![
            ("cost: load stopped → 1 pod".into(), cost_back),
            ("passthrough: watched after the stop".into(), watch_for),
        ],
    }
    .print("tier-3 policy: cost vs passthrough after the load");
    assert!(
        cost_back < Duration::from_secs(60),
        "cost should let its replicas go within a minute of the load: {cost_back:?}"
    );
    // Whatever passthrough reached (3, or 4 after a transient double
    // count), it holds it through the whole watch.
    let pass_peak = pass_up.rows.last().map(|(_, s)| s.wants).unwrap();
    assert!(pass_peak >= 3, "{:?}", pass_up.rows);
    assert!(
        pass_down.rows.iter().all(|(_, s)| s.wants == pass_peak),
        "passthrough should hold its {pass_peak} replicas while cost scales down: {:?}",
        pass_down.rows
    );
}

/// `stable-panic` on a step: 4 clients arrive at once at a service on 1
/// replica with a 40 s stable window and a 10 s panic window, after a
/// stable window of idling. (The policy keeps no state: a past point is a
/// burst when its demand reached twice what the stable window wanted at
/// that moment, so it needs that much history before the step. A scaler
/// younger than the window cannot tell a step from a steady load; seen
/// live: panic for one decision only.) The panic
/// window's demand reaches twice the replicas at once: the scaler reports
/// `panic`, and the HPA is asked for twice the replicas per decision
/// (`maxScaleUpRate` 2) up to 4. After the load the replicas hold while
/// the step is inside the stable window, then the policy returns to
/// `stable` and scales down.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stable_panic_enters_panic_on_a_step() {
    let bed = start(
        "t3-panic",
        service_yaml(
            4,
            RUNNING,
            "1",
            "    policy: {name: stable-panic, params: {stableWindow: 40s, panicWindow: 10s, panicThreshold: \"2\"}}\n",
        ),
        "vllm:num_requests_running",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(45)).await;
    let (up, down) = up_then_watch(
        &bed,
        Load::Closed {
            clients: 4,
            prompt: "Tell me a story.".into(),
            max_tokens: 150,
        },
        4,
        Duration::from_secs(10),
        "stable-panic",
        |_, s| s.wants == 1 && s.pods == 1 && s.mode == Some("stable"),
    )
    .await;
    bed.finish().await;
    up.print("stable-panic, from the load step");
    down.print("stable-panic, from the load's stop");
    let panic_at = up
        .rows
        .iter()
        .find(|(_, s)| s.mode == Some("panic"))
        .map(|(t, _)| *t);
    let calm_at = down
        .rows
        .iter()
        .find(|(_, s)| s.mode == Some("stable"))
        .map(|(t, _)| *t);
    let mut rows = vec![];
    if let Some(t) = panic_at {
        rows.push(("load step → scaler reports panic".to_string(), t));
    }
    if let Some(t) = up.first_wants(2) {
        rows.push(("load step → HPA wants 2".into(), t));
    }
    if let Some(t) = up.first_wants(4) {
        rows.push(("load step → HPA wants 4".into(), t));
    }
    if let Some(t) = calm_at {
        rows.push(("load stopped → scaler reports stable".into(), t));
    }
    rows.push((
        "load stopped → 1 pod".into(),
        down.rows.last().map(|(t, _)| *t).unwrap(),
    ));
    Lags { rows }.print("tier-3 policy: stable-panic on a step");
    assert!(panic_at.is_some(), "the scaler never reported panic");
    // In panic the count never drops.
    let mut highest = 0;
    for (t, s) in &down.rows {
        if s.mode == Some("panic") {
            assert!(
                s.wants >= highest,
                "the HPA dropped to {} in panic at +{t:?}",
                s.wants
            );
        }
        highest = highest.max(s.wants);
    }
    let calm_at = calm_at.expect("the policy returned to stable");
    assert!(
        calm_at >= Duration::from_secs(20),
        "panic should hold while the step is inside the 40 s stable window; it ended {calm_at:?} after the load"
    );
}

/// A policy change on the AIMService reaches the live loop: the operator
/// rewrites its ScaledObject, KEDA rebuilds its scaler client from it, and
/// the scaler's next answer runs the new policy. Printed: how long each
/// hop took.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_policy_change_reaches_the_live_loop() {
    let bed = start(
        "t3-change",
        service_yaml(4, RUNNING, "1", "    policy: {name: passthrough}\n"),
        "vllm:num_requests_running",
    )
    .await;
    let policy_of = |bed: &Bed| {
        bed.scaler.as_ref().and_then(|s| {
            s.state
                .decisions()
                .into_iter()
                .find(|d| d.namespace == bed.ns && d.scaledobject == bed.predictor)
                .map(|d| (d.policy, d.at))
        })
    };
    assert_eq!(policy_of(&bed).map(|p| p.0), Some("passthrough"));
    let changed = Instant::now();
    let wall = aim_scaler::state::now_nanos() as f64 / 1e9;
    bed.services
        .patch(
            SERVICE,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({
                "spec": {"autoScaling": {"policy": {"name": "queue", "params": {"headroom": "0.2"}}}}
            })),
        )
        .await
        .unwrap();
    let mut rewritten = None;
    let live = loop {
        if rewritten.is_none() {
            let so = bed.scaled_object().await;
            if so.data["spec"]["triggers"][0]["metadata"]["policy"] == "queue" {
                rewritten = Some(changed.elapsed());
            }
        }
        if let Some(("queue", at)) = policy_of(&bed)
            && at > wall
        {
            break changed.elapsed();
        }
        assert!(
            changed.elapsed() < WAIT,
            "the scaler never answered with the new policy\n{}",
            aim_testkit::events_of(&bed.admin, &bed.ns).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    Lags {
        rows: vec![
            (
                "policy changed → ScaledObject rewritten".into(),
                rewritten.unwrap_or(live),
            ),
            ("policy changed → the scaler answers with it".into(), live),
        ],
    }
    .print("tier-3 policy: a change on the AIMService, to the live loop");
    // KEDA asks every HPA sync (5 s on the bed, 15 s by default) once it
    // has rebuilt its client.
    assert!(live < Duration::from_secs(30), "{live:?}");
    bed.finish().await;
}
