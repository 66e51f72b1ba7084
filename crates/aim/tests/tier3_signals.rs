//! Tier 3: one AIMService per vLLM signal, scaled 1 → N → 1 by the real
//! KServe, KEDA and HPA in the bed (`common::bed`).
//!
//! Each service names its signal in `autoScaling.metrics` (a pod metric
//! from the OpenTelemetry backend: `metricNames`, `query`,
//! `operationOverTime`, `target`); KServe turns it into the ScaledObject's
//! trigger `sum(<query>{namespace, deployment})`, the sidecar the pod
//! runner plays exports what `metricNames` lets through, and the HPA asks
//! for the sum ÷ target replicas. The simulator's settings and the load
//! are chosen so that the signal itself crosses the target: the
//! arithmetic is beside each case. Every test drives the load until the
//! HPA wants N and N pods are Ready, holds it for two HPA syncs (N must
//! hold, and is never exceeded), stops it and waits for 1 pod. It prints
//! when the HPA decided, when the pods were Ready, and the per-pod values
//! the HPA read.
//!
//! ```sh
//! AIM_TEST_CLUSTER=<name> cargo test -p aim --test tier3_signals -- --nocapture --test-threads=1
//! ```

mod common;

use std::time::{Duration, Instant};

use common::bed::{
    Bed, BedConfig, Lags, Load, SERVICE, WAIT, await_events, desired, is_ready, predictor_pods,
    stop,
};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;

/// How long the load goes on once N pods are Ready: two of the bed's 5 s
/// HPA syncs, so the HPA reads the signal as N pods make it.
const HOLD: Duration = Duration::from_secs(10);

/// One signal's 1 → N → 1 run.
struct Case {
    /// What the run shows, for the printout.
    title: &'static str,
    prefix: &'static str,
    /// The service's `query` (a metric name; KServe adds the selector).
    query: &'static str,
    /// The service's `metricNames`: what the sidecar lets through.
    metric_names: &'static [&'static str],
    operation: &'static str,
    /// Per replica.
    target: &'static str,
    max_replicas: i32,
    sim_args: &'static [&'static str],
    load: Load,
    /// Replicas the HPA must settle at under the load, and never exceed.
    n: i32,
    /// aim's `autoScaling.policy`, as a YAML flow mapping, or "" for none
    /// (then KServe writes the ScaledObject).
    policy: &'static str,
}

fn service_yaml(case: &Case) -> String {
    let names: Vec<String> = case
        .metric_names
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect();
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
          metric:
            backend: opentelemetry
            metricNames: [{names}]
            query: "{query}"
            operationOverTime: {operation}
          target:
            type: Value
            value: "{target}"
{policy}"#,
        policy = if case.policy.is_empty() {
            String::new()
        } else {
            format!("    policy: {}\n", case.policy)
        },
        max = case.max_replicas,
        names = names.join(", "),
        query = case.query,
        operation = case.operation,
        target = case.target,
    )
}

/// A Kubernetes quantity as the HPA writes metric values ("2700m", "85").
fn quantity(text: &str) -> Option<f64> {
    let (number, scale) = match text.char_indices().last()? {
        (i, 'm') => (&text[..i], 1e-3),
        (i, 'k') => (&text[..i], 1e3),
        (i, 'M') => (&text[..i], 1e6),
        _ => (text, 1.0),
    };
    number.parse::<f64>().ok().map(|v| v * scale)
}

/// The per-pod value the HPA last read for its (only) external metric.
fn hpa_reading(hpa: &HorizontalPodAutoscaler) -> Option<f64> {
    let metric = hpa.status.as_ref()?.current_metrics.as_ref()?.first()?;
    let current = &metric.external.as_ref()?.current;
    quantity(&current.average_value.as_ref()?.0)
}

/// One row of what the test saw, kept when something in it changed.
#[derive(Clone, Copy, PartialEq)]
struct Seen {
    hpa_reads: Option<f64>,
    wants: i32,
    pods: usize,
    ready: usize,
}

/// What the HPA reads and wants and how many pods there are, noted in
/// `timeline` (time since `since`) when it changed.
async fn watch(bed: &Bed, since: Instant, timeline: &mut Vec<(Duration, Seen)>) -> Seen {
    let hpa = bed.hpas.get_opt(&bed.hpa_name).await.unwrap();
    let current = predictor_pods(&bed.pods, &bed.isvc).await;
    let seen = Seen {
        hpa_reads: hpa.as_ref().and_then(hpa_reading),
        wants: hpa.as_ref().map(desired).unwrap_or(0),
        pods: current.len(),
        ready: current.iter().filter(|p| is_ready(p)).count(),
    };
    if timeline.last().is_none_or(|(_, last)| *last != seen) {
        timeline.push((since.elapsed(), seen));
    }
    seen
}

async fn run(case: Case) -> Bed {
    let begun = Instant::now();
    let bed = Bed::start_with(BedConfig {
        prefix: case.prefix.into(),
        service_yaml: service_yaml(&case),
        runtime_config: None,
        idle: true,
        metric: case.query.into(),
        sim_args: case.sim_args.iter().map(|a| a.to_string()).collect(),
        prometheus: false,
        admin_at_chart_pods: false,
    })
    .await;
    // The trigger carries the service's signal as written.
    let so = bed.scaled_object().await;
    let trigger = &so.data["spec"]["triggers"][0]["metadata"];
    assert_eq!(trigger["operationOverTime"], case.operation, "{trigger}");
    assert_eq!(trigger["targetValue"], case.target, "{trigger}");
    let n = case.n;
    let mut timeline: Vec<(Duration, Seen)> = Vec::new();
    // The load step: up to N, never beyond.
    let loaded = Instant::now();
    let load = bed.drive(case.load.clone());
    let (mut decided, mut max_wanted) = (None, 1);
    let to_n = loop {
        let seen = watch(&bed, loaded, &mut timeline).await;
        max_wanted = max_wanted.max(seen.wants);
        if decided.is_none() && seen.wants > 1 {
            decided = Some(loaded.elapsed());
        }
        if seen.wants == n && seen.ready == n as usize {
            break loaded.elapsed();
        }
        assert!(
            loaded.elapsed() < WAIT,
            "{}: no scale-up to {n}: HPA wants {}, {} ready pods\n{}",
            case.title,
            seen.wants,
            seen.ready,
            aim_testkit::events_of(&bed.admin, &bed.ns).await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let ups = await_events(&bed.admin, &bed.ns, "ScaledUp", |m| {
        m.starts_with("desired replicas 1 → ")
    })
    .await;
    assert!(
        max_wanted <= n,
        "{}: the HPA overshot to {max_wanted} (expected {n})",
        case.title
    );
    // N holds while the load lasts: two HPA syncs at N pods, each reading
    // the signal as N pods make it, and not one of them wanting another N.
    let held = Instant::now();
    while held.elapsed() < HOLD {
        let seen = watch(&bed, loaded, &mut timeline).await;
        assert_eq!(
            (seen.wants, seen.ready),
            (n, n as usize),
            "{}: N did not hold under the load\n{}",
            case.title,
            aim_testkit::events_of(&bed.admin, &bed.ns).await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let up_rows = timeline.len();
    // How the sum at N splits over the pods, as the scaler holds it.
    let mut per_pod = Vec::new();
    for pod in predictor_pods(&bed.pods, &bed.isvc).await {
        let name = kube::ResourceExt::name_any(&pod);
        per_pod.push(bed.query(Some(&name)).await);
    }
    let sum_at_n = bed.scaler_value().await;

    // The load stops: back to 1.
    let stopped = Instant::now();
    stop(load);
    let mut down_timeline: Vec<(Duration, Seen)> = Vec::new();
    let mut decided_down = None;
    let to_one = loop {
        let seen = watch(&bed, stopped, &mut down_timeline).await;
        if decided_down.is_none() && seen.wants < n {
            decided_down = Some(stopped.elapsed());
        }
        if seen.wants == 1 && seen.pods == 1 {
            break stopped.elapsed();
        }
        assert!(
            stopped.elapsed() < WAIT,
            "{}: no scale-down: HPA wants {}, {} pods\n{}",
            case.title,
            seen.wants,
            seen.pods,
            aim_testkit::events_of(&bed.admin, &bed.ns).await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let downs = await_events(&bed.admin, &bed.ns, "ScaledDown", |m| m.contains(" → 1: ")).await;

    let at = |d: Option<Duration>| d.unwrap_or_default();
    let mut rows = bed.milestones.clone();
    rows.extend([
        ("load step → HPA wants > 1".into(), at(decided)),
        (format!("load step → HPA wants {n}, {n} pods Ready"), to_n),
        (format!("{n} pods held under the load"), HOLD),
        ("load stopped → HPA wants fewer".into(), at(decided_down)),
        ("load stopped → 1 pod".into(), to_one),
        ("whole test, bed setup included".into(), begun.elapsed()),
    ]);
    Lags { rows }.print(&format!(
        "tier-3 signal: {} ({} over {}, target {} per pod, max {})",
        case.title, case.query, case.operation, case.target, case.max_replicas
    ));
    let shown: Vec<String> = per_pod
        .iter()
        .map(|v| v.as_ref().map_or_else(|e| e.clone(), |v| format!("{v:.3}")))
        .collect();
    println!(
        "  at the scaler after the hold: sum {}, per pod [{}]",
        sum_at_n.map_or_else(|e| e, |v| format!("{v:.3}")),
        shown.join(", ")
    );
    println!("  what the HPA read (per pod) and did, from the load step / the stop:");
    for (i, (t, s)) in timeline.iter().chain(down_timeline.iter()).enumerate() {
        if i == up_rows {
            println!("    -- load stopped --");
        }
        let reads = s.hpa_reads.map_or("-".to_string(), |v| format!("{v:.3}"));
        println!(
            "    +{:>5.1} s  reads {reads:>9}  wants {}  pods {} ({} ready)",
            t.as_secs_f64(),
            s.wants,
            s.pods,
            s.ready
        );
    }
    println!("  ScaledUp events:   {ups:?}");
    println!("  ScaledDown events: {downs:?}");
    assert!(
        !downs.iter().any(|m| m.contains(" → 0")),
        "no decision below the minimum: {downs:?}"
    );
    bed
}

/// Waiting requests. One request at a time per pod (`max-num-seqs 1`), 6
/// closed-loop clients: a pod with k clients has k − 1 waiting, so the
/// sum is 6 − (pods with a client) ≥ 6 − N. At 1 pod it is 5 → the HPA
/// wants 5, capped at 3; at 3 pods it is still ≥ 3 → 3 holds. The bound
/// is maxReplicas because a queue has no level to settle at: scaling out
/// empties it (at 4 pods it would be 2, at 2 pods 4), so the test holds
/// the HPA where the queue alone keeps it. Running requests stay at one
/// per pod throughout: only the queue moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiting_requests_scale_1_to_n_and_back() {
    let bed = run(Case {
        title: "waiting requests",
        prefix: "t3-waiting",
        query: "vllm:num_requests_waiting",
        metric_names: &["vllm:num_requests_waiting"],
        operation: "avg",
        target: "1",
        max_replicas: 3,
        sim_args: &["--max-num-seqs=1"],
        load: Load::Closed {
            clients: 6,
            prompt: "Tell me a story.".into(),
            max_tokens: 100,
        },
        n: 3,
        policy: "",
    })
    .await;
    bed.finish().await;
}

/// KV-cache usage. 100 KV blocks per pod (1,600 tokens), no prefix
/// caching (the prompts are identical and would share blocks), 3
/// closed-loop clients with 400-word prompts and 100 output tokens: each
/// request holds 25 to 32 blocks, so the three hold 0.75–0.96 of one pod's
/// cache wherever they run. Summed over the pods that is the same at any
/// N: 0.75–0.96 ÷ 0.34 per pod → 3 replicas, from the first decision on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kv_cache_usage_scales_1_to_n_and_back() {
    let bed = run(Case {
        title: "KV-cache usage",
        prefix: "t3-kv",
        query: "vllm:kv_cache_usage_perc",
        metric_names: &["vllm:kv_cache_usage_perc"],
        operation: "avg",
        target: "0.34",
        max_replicas: 4,
        sim_args: &[
            "--num-gpu-blocks-override=100",
            "--no-enable-prefix-caching",
        ],
        load: Load::Closed {
            clients: 3,
            prompt: vec!["word"; 400].join(" "),
            max_tokens: 100,
        },
        n: 3,
        policy: "",
    })
    .await;
    bed.finish().await;
}

/// Generation-token throughput: the rate of the counter
/// `vllm:generation_tokens_total`. A decode step of the Qwen3-32B profile
/// takes about 11.6 ms at these batch sizes, so each closed-loop client
/// gets about 86 tokens/s wherever it runs; 3 clients make about 255
/// tokens/s in all, ÷ 100 per pod → 3 replicas at any N.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn generation_token_throughput_scales_1_to_n_and_back() {
    let bed = run(Case {
        title: "generation-token throughput",
        prefix: "t3-tokens",
        query: "vllm:generation_tokens_total",
        metric_names: &["vllm:generation_tokens_total"],
        operation: "rate",
        target: "100",
        max_replicas: 4,
        sim_args: &[],
        load: Load::Closed {
            clients: 3,
            prompt: "Tell me a story.".into(),
            max_tokens: 150,
        },
        n: 3,
        policy: "",
    })
    .await;
    bed.finish().await;
}

/// GPU utilisation (AMD's `gpu_gfx_activity`, which the pod runner derives
/// from the simulator's busy time). An open loop: one 25-token request
/// every 360 ms. Alone on the Qwen3-32B profile such a request keeps the
/// engine busy 0.29 s (one prefill step and 24 decode steps of about
/// 11.6 ms), so the load is 0.8 of a GPU: about 80 % busy summed over the
/// pods at any N (the requests never overlap), ÷ 35 % per pod → 3
/// replicas. Short, frequent requests keep each 5 s scrape interval's
/// share close to the mean. Right after a scale-up the sum reads high for
/// a window (seen: 99 at 3 pods): the old pods' points from before still
/// carry the whole load, and the new pod's add its share again; the
/// HPA's 10 % tolerance (up to 115 here) keeps it from a fourth replica.
/// NVIDIA's `DCGM_FI_DEV_GPU_UTIL` is exported beside it and reads the
/// same.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gpu_utilisation_scales_1_to_n_and_back() {
    let bed = run(Case {
        title: "GPU utilisation",
        prefix: "t3-gpu",
        query: "gpu_gfx_activity",
        metric_names: &["gpu_gfx_activity", "DCGM_FI_DEV_GPU_UTIL"],
        operation: "avg",
        target: "35",
        max_replicas: 4,
        sim_args: &[],
        load: Load::Open {
            every: Duration::from_millis(360),
            prompt: "Tell me a story.".into(),
            max_tokens: 25,
        },
        n: 3,
        policy: "",
    })
    .await;
    // Both exporters' names carry the same utilisation to the scaler.
    let dcgm = format!(
        "sum(DCGM_FI_DEV_GPU_UTIL{{namespace=\"{}\", deployment=\"{}\"}})",
        bed.ns, bed.predictor
    );
    let mut pairs = Vec::new();
    for _ in 0..5 {
        let amd = bed.scaler_value().await;
        let nvidia = bed.ask(Some(&dcgm)).await;
        pairs.push((amd.clone(), nvidia.clone()));
        if amd.is_ok() && amd == nvidia {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (amd, nvidia) = pairs.last().unwrap();
    assert!(
        amd.is_ok() && amd == nvidia,
        "AMD's and NVIDIA's names differ at the scaler: {pairs:?}"
    );
    bed.finish().await;
}

/// A TTFT quantile: p90 of vLLM's `vllm:time_to_first_token_seconds`
/// histogram over the window (`operationOverTime: rate` takes the buckets'
/// increase), target 0.5 s. KServe writes the trigger as `sum(<query>{…})`
/// and has no field for a quantile, so the service names it in aim's
/// `policy.params` (`passthrough`: the quantile itself goes to KEDA) and
/// the operator writes the ScaledObject. `valueIfMissing: "0"`: once the
/// load stops no request starts, the window holds no observation, and the
/// answer is 0 rather than an error.
///
/// The simulators run one sequence at a time (`--max-num-seqs=1`), so a
/// request waits behind the others on its pod: 4 closed-loop clients of
/// 150-token answers (about 1.7 s each) give a p90 of several seconds on
/// one pod, and still about 1.7 s with 3 pods (one pod serves two
/// clients), ÷ 0.5 → more than 3: the HPA wants maxReplicas and holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ttft_quantile_scales_1_to_n_and_back() {
    let bed = run(Case {
        title: "TTFT p90",
        prefix: "t3-ttft",
        query: "vllm:time_to_first_token_seconds",
        metric_names: &["vllm:time_to_first_token_seconds"],
        operation: "rate",
        target: "0.5",
        max_replicas: 3,
        sim_args: &["--max-num-seqs=1"],
        load: Load::Closed {
            clients: 4,
            prompt: "Tell me a story.".into(),
            max_tokens: 150,
        },
        n: 3,
        policy: r#"{name: passthrough, params: {quantile: "0.9", valueIfMissing: "0"}}"#,
    })
    .await;
    let so = bed.scaled_object().await;
    let trigger = &so.data["spec"]["triggers"][0]["metadata"];
    assert_eq!(trigger["quantile"], "0.9", "{trigger}");
    let owner = &so.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(owner.kind, "AIMService", "the operator writes this one");
    bed.finish().await;
}
