//! Named autoscaling configurations to compare on one trace.
//!
//! The KEDA rows are exactly what the seeds deploy; our policies run as a
//! plain KEDA trigger with `policy: <name>` through the same HPA.

use std::collections::BTreeMap;

use aim_policy::hpa::{Behavior, PolicyKind, RatePolicy};
use aim_policy::keda::{MetricType, ScaledObjectSpec, TriggerSpec};
use aim_policy::{PolicyError, lookup};

use crate::capacity::Capacity;
use crate::control::{Controller, KedaLoop, Trigger};
use crate::metrics::{Operation, Signal};
use crate::prom::{PromSetup, PromTrigger};

/// What a configuration may be tuned from: measured per-replica capacity,
/// the cold start, and the bounds.
#[derive(Debug, Clone)]
pub struct Context {
    pub capacity: Capacity,
    pub cold_start_s: f64,
    pub min: u32,
    pub max: u32,
    /// KEDA + aim-scaler query window (`AIM_SCALER_DEFAULT_WINDOW`).
    pub window_s: f64,
    pub ttft_s: f64,
    pub tpot_s: f64,
}

pub const SCENARIOS: &[(&str, &str)] = &[
    (
        "keda-seed",
        "KEDA + HPA as seeds 000/001 deploy: avg(sum running) over 120 s, Value target 1",
    ),
    (
        "keda-seed-2",
        "as seed 002 (KServe): running requests, Value target 2",
    ),
    (
        "keda-tuned",
        "KEDA + HPA tuned: in-flight per replica (AverageValue) at the measured concurrency, 30 s window, 120 s down window",
    ),
    (
        "aibrix",
        "stable-panic at AIBrix KPA defaults (180 s / 60 s, panic 2.0, ×2 rates)",
    ),
    ("queue", "aim queue policy"),
    (
        "slo",
        "aim SLO-aware policy on p90 TTFT (llm-d law), with an in-flight floor as a second trigger",
    ),
    (
        "predictive",
        "aim predictive policy on the finished-request rate (trend + season, pre-warm by cold start)",
    ),
    ("cost", "aim cost-aware policy (sloWeight 0.5)"),
    (
        "passthrough",
        "plain KEDA (AverageValue) on one signal: passthrough[signal=success-rate;target=6;window=60;operation=avg;downWindow=300]",
    ),
    (
        "prom",
        "KEDA's prometheus trigger on a PromQL query over Prometheus' scrapes: prom[like=keda-a31-p30-c300-s300;scrape=5] is that KEDA row over Prometheus; prom[query=sum(vllm:num_requests_waiting);threshold=5;polling=15;cooldown=60;downWindow=300;scrape=15] sets each knob",
    ),
];

/// One point of the seed-style KEDA grid: the seeds' trigger (the summed
/// running requests, averaged over the scaler window) with the knobs a
/// user of those seeds can turn. Two families:
/// `keda-a<target>-p<pollingInterval>-c<cooldownPeriod>-s<scaleDown window>`
/// is an `AverageValue` target, what KServe deploys for the seeds (the
/// point with their knobs is `keda-seed`); `keda-t…` is a `Value` target,
/// which only a ScaledObject written directly can have.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KedaKnobs {
    /// `Value` (ready × sum / target) or `AverageValue` (sum / target).
    pub metric_type: MetricType,
    /// The target on the summed running requests across pods.
    pub target: f64,
    /// `pollingInterval`, seconds.
    pub polling_s: f64,
    /// `cooldownPeriod`, seconds.
    pub cooldown_s: f64,
    /// HPA `behavior.scaleDown.stabilizationWindowSeconds`.
    pub down_window_s: u32,
}

impl KedaKnobs {
    /// What seeds 000/001 deploy through KServe: target 1 as
    /// `AverageValue`, KEDA and HPA defaults.
    pub const SEED: KedaKnobs = KedaKnobs {
        metric_type: MetricType::AverageValue,
        target: 1.0,
        polling_s: 30.0,
        cooldown_s: 300.0,
        down_window_s: 300,
    };

    pub fn name(&self) -> String {
        let family = match self.metric_type {
            MetricType::Value => "t",
            _ => "a",
        };
        format!(
            "keda-{family}{}-p{}-c{}-s{}",
            self.target, self.polling_s, self.cooldown_s, self.down_window_s
        )
    }

    /// The knobs named by [`KedaKnobs::name`], or `None` for any other name.
    pub fn parse(name: &str) -> Option<KedaKnobs> {
        let (metric_type, rest) = match name.strip_prefix("keda-t") {
            Some(rest) => (MetricType::Value, rest),
            None => (MetricType::AverageValue, name.strip_prefix("keda-a")?),
        };
        let (target, rest) = rest.split_once("-p")?;
        let (polling, rest) = rest.split_once("-c")?;
        let (cooldown, window) = rest.split_once("-s")?;
        let knobs = KedaKnobs {
            metric_type,
            target: target.parse().ok()?,
            polling_s: polling.parse().ok()?,
            cooldown_s: cooldown.parse().ok()?,
            down_window_s: window.parse().ok()?,
        };
        let positive = |v: f64| v.is_finite() && v > 0.0;
        (positive(knobs.target) && positive(knobs.polling_s) && knobs.cooldown_s >= 0.0)
            .then_some(knobs)
    }

    fn spec(&self, ctx: &Context) -> ScaledObjectSpec {
        let mut spec = keda_defaults(ctx);
        spec.polling_interval_seconds = self.polling_s;
        spec.cooldown_period_seconds = self.cooldown_s;
        spec.behavior.scale_down.stabilization_window_seconds = self.down_window_s;
        spec
    }
}

fn meta(pairs: &[(&str, String)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn keda_defaults(ctx: &Context) -> ScaledObjectSpec {
    ScaledObjectSpec {
        min_replica_count: ctx.min,
        max_replica_count: ctx.max,
        ..Default::default()
    }
}

/// HPA behavior for triggers whose policy already decides the count: no
/// extra stabilization and a zero tolerance (KEP-4951), so the HPA lands on
/// the policy's number; rate limits stay at the defaults.
pub fn follow_policy_behavior() -> Behavior {
    let mut b = Behavior::default();
    b.scale_down.stabilization_window_seconds = 0;
    b.scale_up.tolerance = Some(0.0);
    b.scale_down.tolerance = Some(0.0);
    b
}

fn policy_trigger(
    name: &str,
    signal: Signal,
    metadata: BTreeMap<String, String>,
) -> Result<Trigger, PolicyError> {
    Ok(Trigger {
        signal,
        operation: Operation::LastOne,
        window_s: 30.0,
        policy: lookup(name)?,
        metadata,
        spec: TriggerSpec {
            metric_type: MetricType::AverageValue,
            target: 1.0,
            activation: 0.0,
        },
        prometheus: None,
    })
}

/// Splits `name[key=value;key=value]` into the scenario and its own
/// metadata overrides, so one comparison can hold several settings of one
/// policy (a tuning grid).
pub fn split_params(label: &str) -> Result<(&str, BTreeMap<String, String>), PolicyError> {
    let Some((name, rest)) = label.split_once('[') else {
        return Ok((label, BTreeMap::new()));
    };
    let bad = |reason: &str| PolicyError::InvalidParameter {
        policy: "lab",
        key: label.to_owned(),
        value: rest.to_owned(),
        reason: reason.to_owned(),
    };
    let inner = rest
        .strip_suffix(']')
        .ok_or_else(|| bad("write NAME[key=value;key=value], closed by ']'"))?;
    let mut params = BTreeMap::new();
    for pair in inner.split(';').filter(|p| !p.trim().is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| bad("each parameter is key=value, separated by ';'"))?;
        params.insert(k.trim().to_owned(), v.trim().to_owned());
    }
    Ok((name, params))
}

/// Builds the controller for a named scenario, plus any `key=value`
/// metadata overrides for policy triggers. The name may carry its own
/// overrides as `name[key=value;…]`, which win over `overrides`.
pub fn build(
    label: &str,
    ctx: &Context,
    overrides: &BTreeMap<String, String>,
) -> Result<Controller, PolicyError> {
    let (name, own) = split_params(label)?;
    let mut merged = overrides.clone();
    merged.extend(own);
    // `floor=N`: a second trigger on in-flight requests at N per replica,
    // so the HPA never goes below what the queue needs whatever the
    // policy's own signal says (live: two triggers of one ScaledObject).
    let floor = merged.remove("floor");
    let wait_floor = merged.remove("waitFloor");
    let controller = build_named(name, ctx, &merged)?;
    if floor.is_none() && wait_floor.is_none() {
        return Ok(controller);
    }
    let Controller::Keda(k) = controller else {
        return Ok(controller);
    };
    let per_replica = |key: &str, text: &str| {
        text.parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v > 0.0)
            .ok_or_else(|| PolicyError::InvalidParameter {
                policy: "lab",
                key: key.into(),
                value: text.to_owned(),
                reason: "requests per replica, a number above 0".into(),
            })
    };
    let prometheus = k.prometheus.clone();
    let mut triggers = k.triggers.clone();
    // `waitFloor=N`: the same on waiting requests only. Waiting is zero
    // until the replicas are full, so this trigger is silent in normal
    // operation and takes over in overload, where a rate signal saturates
    // at what the replicas can finish.
    for (key, text, signal) in [
        ("floor", floor, Signal::InFlight),
        ("waitFloor", wait_floor, Signal::Waiting),
    ] {
        let Some(text) = text else { continue };
        triggers.push(Trigger {
            signal,
            operation: Operation::LastOne,
            window_s: 30.0,
            policy: lookup("passthrough")?,
            metadata: BTreeMap::new(),
            spec: TriggerSpec {
                metric_type: MetricType::AverageValue,
                target: per_replica(key, &text)?,
                activation: 0.0,
            },
            prometheus: None,
        });
    }
    let mut with_floor = KedaLoop::new(k.keda.spec.clone(), triggers)?;
    with_floor.prometheus = prometheus;
    Ok(Controller::Keda(Box::new(with_floor)))
}

/// The keys of a `prom[…]` row.
const PROM_KEYS: [&str; 9] = [
    "like",
    "query",
    "threshold",
    "activation",
    "polling",
    "cooldown",
    "downWindow",
    "scrape",
    "ignoreNullValues",
];

/// `prom[…]`: a ScaledObject with one KEDA `prometheus` trigger, over
/// Prometheus scraping the pods every `scrape` seconds (the run's
/// `--scrape-interval` by default). `like=<KEDA row>` takes that row's
/// target, polling, cooldown and scale-down window, and its signal as
/// PromQL: the summed running requests averaged over the scaler window,
/// `sum(avg_over_time(vllm:num_requests_running[<window>s]))`; each key
/// given overrides.
fn prom_row(ctx: &Context, params: &BTreeMap<String, String>) -> Result<Controller, PolicyError> {
    let bad = |key: &str, value: &str, reason: &str| PolicyError::InvalidParameter {
        policy: "prom",
        key: key.into(),
        value: value.into(),
        reason: reason.into(),
    };
    if let Some((k, v)) = params
        .iter()
        .find(|(k, _)| !PROM_KEYS.contains(&k.as_str()))
    {
        return Err(bad(
            k,
            v,
            &format!("not a key of a prom row; use {}", PROM_KEYS.join(", ")),
        ));
    }
    let knobs = match params.get("like").map(String::as_str) {
        None | Some("keda-seed") => KedaKnobs::SEED,
        Some(row) => KedaKnobs::parse(row).ok_or_else(|| {
            bad(
                "like",
                row,
                "keda-seed or a KEDA grid row, keda-a<target>-p<polling s>-c<cooldown s>-s<scale-down window s>",
            )
        })?,
    };
    let number = |key: &str, default: f64| -> Result<f64, PolicyError> {
        match params.get(key) {
            None => Ok(default),
            Some(text) => text
                .trim()
                .trim_end_matches('s')
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| bad(key, text, "a number of 0 or more")),
        }
    };
    let threshold = number("threshold", knobs.target)?;
    if threshold <= 0.0 {
        return Err(bad("threshold", &threshold.to_string(), "must be above 0"));
    }
    let scrape = params
        .get("scrape")
        .map(|_| number("scrape", 0.0))
        .transpose()?;
    if scrape == Some(0.0) {
        return Err(bad("scrape", "0", "a scrape interval above 0 seconds"));
    }
    let polling = number("polling", knobs.polling_s)?;
    if polling <= 0.0 {
        return Err(bad("polling", &polling.to_string(), "must be above 0"));
    }
    let down_window = number("downWindow", f64::from(knobs.down_window_s))?;
    if down_window > 3600.0 {
        return Err(bad(
            "downWindow",
            &down_window.to_string(),
            "at most 3600 seconds (the HPA API's limit)",
        ));
    }
    let query = params.get("query").cloned().unwrap_or_else(|| {
        format!(
            "sum(avg_over_time(vllm:num_requests_running[{}s]))",
            ctx.window_s
        )
    });
    let mut metadata = meta(&[
        // Where KEDA would send the query; the lab's Prometheus answers.
        (
            "serverAddress",
            "http://prometheus.monitoring.svc:9090".into(),
        ),
        ("query", query),
        ("threshold", threshold.to_string()),
    ]);
    if let Some(v) = params.get("ignoreNullValues") {
        metadata.insert("ignoreNullValues".into(), v.clone());
    }
    let trigger = PromTrigger::from_metadata(&metadata, "prom").map_err(|(path, why)| {
        let key = path.rsplit('.').next().unwrap_or("query").to_owned();
        let value = metadata.get(&key).cloned().unwrap_or_default();
        bad(&key, &value, &why)
    })?;
    let mut spec = knobs.spec(ctx);
    spec.polling_interval_seconds = polling;
    spec.cooldown_period_seconds = number("cooldown", knobs.cooldown_s)?;
    spec.behavior.scale_down.stabilization_window_seconds = down_window.round() as u32;
    let trigger_spec = TriggerSpec {
        metric_type: knobs.metric_type,
        target: threshold,
        activation: number("activation", 0.0)?,
    };
    spec.triggers = vec![trigger_spec.clone()];
    let mut k = KedaLoop::new(
        spec,
        vec![Trigger {
            // Not read for a Prometheus trigger.
            signal: Signal::Running,
            operation: Operation::LastOne,
            window_s: 0.0,
            policy: lookup("passthrough")?,
            metadata,
            spec: trigger_spec,
            prometheus: Some(Box::new(trigger)),
        }],
    )?;
    k.prometheus = Some(PromSetup {
        scrape_interval_s: scrape,
        namespace: "default".into(),
        isvc: Some("lab".into()),
        pod_prefix: "lab-predictor".into(),
    });
    Ok(Controller::Keda(Box::new(k)))
}

fn build_named(
    name: &str,
    ctx: &Context,
    overrides: &BTreeMap<String, String>,
) -> Result<Controller, PolicyError> {
    if name == "prom" {
        return prom_row(ctx, overrides);
    }
    let c = &ctx.capacity;
    let passthrough =
        |signal, metric_type, target, window_s, operation| -> Result<Trigger, PolicyError> {
            Ok(Trigger {
                signal,
                operation,
                window_s,
                policy: lookup("passthrough")?,
                metadata: BTreeMap::new(),
                spec: TriggerSpec {
                    metric_type,
                    target,
                    activation: 0.0,
                },
                prometheus: None,
            })
        };
    let (spec, triggers) = match name {
        grid if KedaKnobs::parse(grid).is_some() => {
            let knobs = KedaKnobs::parse(grid).unwrap_or(KedaKnobs::SEED);
            (
                knobs.spec(ctx),
                vec![passthrough(
                    Signal::Running,
                    knobs.metric_type,
                    knobs.target,
                    ctx.window_s,
                    Operation::Avg,
                )?],
            )
        }
        "keda-seed" | "keda-seed-2" => {
            let target = if name == "keda-seed" { 1.0 } else { 2.0 };
            (
                keda_defaults(ctx),
                // The seeds write `type: Value`, but KServe sets no
                // metricType on the trigger, so KEDA's AverageValue applies
                // (see manifest.rs).
                vec![passthrough(
                    Signal::Running,
                    MetricType::AverageValue,
                    target,
                    ctx.window_s,
                    Operation::Avg,
                )?],
            )
        }
        "passthrough" => {
            // Plain KEDA on any one signal: isolates what a signal is worth
            // from what a policy does with it.
            let bad = |key: &str, value: &str, reason: &str| PolicyError::InvalidParameter {
                policy: "passthrough",
                key: key.into(),
                value: value.into(),
                reason: reason.into(),
            };
            let get = |key: &str, default: &str| {
                overrides
                    .get(key)
                    .cloned()
                    .unwrap_or_else(|| default.to_owned())
            };
            let signal_name = get("signal", "running");
            let signal = <Signal as clap::ValueEnum>::from_str(&signal_name, true).map_err(|_| {
                bad(
                    "signal",
                    &signal_name,
                    "one of running, waiting, in-flight, kv-usage, success-rate, ttft-p90, tpot-p90",
                )
            })?;
            let op_name = get("operation", "avg");
            let operation = <Operation as clap::ValueEnum>::from_str(&op_name, true)
                .map_err(|_| bad("operation", &op_name, "one of last-one, avg, max"))?;
            let number = |key: &str, default: &str| -> Result<f64, PolicyError> {
                let text = get(key, default);
                let text = text.trim_end_matches('s');
                text.parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite() && *v >= 0.0)
                    .ok_or_else(|| bad(key, text, "a number of 0 or more"))
            };
            let target = number("target", "1")?;
            if target <= 0.0 {
                return Err(bad("target", &target.to_string(), "must be above 0"));
            }
            let mut spec = keda_defaults(ctx);
            spec.behavior.scale_down.stabilization_window_seconds =
                number("downWindow", "300")?.round() as u32;
            (
                spec,
                vec![passthrough(
                    signal,
                    MetricType::AverageValue,
                    target,
                    number("window", &ctx.window_s.to_string())?,
                    operation,
                )?],
            )
        }
        "keda-tuned" => {
            let mut spec = keda_defaults(ctx);
            spec.behavior.scale_down.stabilization_window_seconds = ctx.cold_start_s.round() as u32;
            spec.behavior.scale_down.policies = vec![RatePolicy {
                kind: PolicyKind::Percent,
                value: 50,
                period_seconds: 30,
            }];
            let target = overrides
                .get("target")
                .and_then(|t| t.parse().ok())
                .unwrap_or((c.in_flight * 0.8).max(1.0));
            (
                spec,
                vec![passthrough(
                    Signal::InFlight,
                    MetricType::AverageValue,
                    target,
                    30.0,
                    Operation::Avg,
                )?],
            )
        }
        "aibrix" => {
            let mut m = meta(&[("perReplica", format!("{:.3}", c.in_flight))]);
            m.extend(overrides.clone());
            let mut spec = keda_defaults(ctx);
            spec.behavior = follow_policy_behavior();
            (
                spec,
                vec![policy_trigger("stable-panic", Signal::InFlight, m)?],
            )
        }
        "queue" | "predictive" | "cost" => {
            let t_w = format!("{}s", ctx.cold_start_s);
            let (signal, mut m) = match name {
                "queue" => (
                    Signal::InFlight,
                    meta(&[
                        ("perReplica", format!("{:.3}", c.in_flight)),
                        ("headroom", "0.15".into()),
                        ("scaleDownDelay", t_w),
                    ]),
                ),
                "predictive" => (
                    Signal::SuccessRate,
                    meta(&[
                        ("capacity", format!("{:.4}", c.rps)),
                        ("coldStart", t_w),
                        ("headroom", "0.15".into()),
                    ]),
                ),
                _ => (
                    Signal::InFlight,
                    meta(&[
                        ("perReplica", format!("{:.3}", c.in_flight)),
                        ("coldStart", t_w),
                        ("idleToZero", "0".into()),
                    ]),
                ),
            };
            m.extend(overrides.clone());
            // `signal=…` swaps the policy's input, for experiments that
            // isolate what a signal is worth.
            let signal = match m.remove("signal") {
                Some(text) => <Signal as clap::ValueEnum>::from_str(&text, true).map_err(|_| {
                    PolicyError::InvalidParameter {
                        policy: "lab",
                        key: "signal".into(),
                        value: text.clone(),
                        reason: "one of running, waiting, in-flight, kv-usage, success-rate, arrival-rate, ttft-p90, tpot-p90".into(),
                    }
                })?,
                None => signal,
            };
            let mut spec = keda_defaults(ctx);
            spec.behavior = follow_policy_behavior();
            (spec, vec![policy_trigger(name, signal, m)?])
        }
        "slo" => {
            // Live, one trigger passes one value, so the latency law and its
            // leading queue floor are two triggers of one ScaledObject: the
            // HPA scales to the larger of their counts.
            let mut m = meta(&[
                ("ttft", format!("{}s", ctx.ttft_s)),
                ("tpot", format!("{}s", ctx.tpot_s)),
            ]);
            m.extend(overrides.clone());
            let per_replica = overrides
                .get("perReplica")
                .and_then(|v| v.parse().ok())
                .unwrap_or(c.in_flight);
            let mut spec = keda_defaults(ctx);
            spec.behavior = follow_policy_behavior();
            (
                spec,
                vec![
                    policy_trigger("slo", Signal::TtftP90, m)?,
                    passthrough(
                        Signal::InFlight,
                        MetricType::AverageValue,
                        per_replica,
                        30.0,
                        Operation::LastOne,
                    )?,
                ],
            )
        }
        other => {
            return Err(PolicyError::Unknown {
                name: other.to_owned(),
                known: SCENARIOS
                    .iter()
                    .map(|s| s.0)
                    .chain([
                        "static-peak",
                        "hindsight",
                        "keda-a<target>-p<polling s>-c<cooldown s>-s<scale-down window s> (AverageValue; keda-t… for Value)",
                    ])
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    };
    Ok(Controller::Keda(Box::new(KedaLoop::new(spec, triggers)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context {
        Context {
            capacity: Capacity {
                rps: 1.5,
                in_flight: 12.0,
            },
            cold_start_s: 100.0,
            min: 1,
            max: 16,
            window_s: 120.0,
            ttft_s: 3.0,
            tpot_s: 0.1,
        }
    }

    #[test]
    fn a_floor_is_a_second_trigger_on_in_flight_requests() {
        let Controller::Keda(k) = build("predictive[floor=40]", &ctx(), &BTreeMap::new()).unwrap()
        else {
            panic!("a policy row is a KEDA loop");
        };
        assert_eq!(k.triggers.len(), 2);
        assert_eq!(k.triggers[1].signal, Signal::InFlight);
        assert_eq!(k.triggers[1].spec.target, 40.0);
        assert!(!k.triggers[0].metadata.contains_key("floor"));
        let err = build("queue[floor=zero]", &ctx(), &BTreeMap::new())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("floor"), "{err}");
        let Controller::Keda(k) =
            build("predictive[waitFloor=5]", &ctx(), &BTreeMap::new()).unwrap()
        else {
            panic!("a policy row is a KEDA loop");
        };
        assert_eq!(
            (k.triggers[1].signal, k.triggers[1].spec.target),
            (Signal::Waiting, 5.0)
        );
        assert!(!k.triggers[0].metadata.contains_key("waitFloor"));
    }

    #[test]
    fn a_bad_passthrough_signal_or_target_is_named() {
        for (label, key) in [
            ("passthrough[signal=latency]", "signal"),
            ("passthrough[operation=median]", "operation"),
            ("passthrough[target=0]", "target"),
            ("predictive[signal=arrivals]", "signal"),
        ] {
            let e = build(label, &ctx(), &BTreeMap::new())
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains(key), "{label}: {e}");
        }
        assert!(
            build(
                "passthrough[signal=success-rate;target=6]",
                &ctx(),
                &BTreeMap::new()
            )
            .is_ok()
        );
    }

    #[test]
    fn a_name_carries_its_own_parameters() {
        let (name, params) = split_params("queue[headroom=0.3; perReplica=20]").unwrap();
        assert_eq!(name, "queue");
        assert_eq!(params["headroom"], "0.3");
        assert_eq!(params["perReplica"], "20");
        assert_eq!(split_params("queue").unwrap().1.len(), 0);
    }

    #[test]
    fn its_parameters_reach_the_policy_and_bad_ones_are_named() {
        let Controller::Keda(k) = build("queue[headroom=0.4]", &ctx(), &BTreeMap::new()).unwrap()
        else {
            panic!("a policy row is a KEDA loop");
        };
        assert_eq!(k.triggers[0].metadata["headroom"], "0.4");
        let err = build("queue[headroom=-1]", &ctx(), &BTreeMap::new())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("headroom"), "{err}");
        let err = build("queue[headroom=0.4", &ctx(), &BTreeMap::new())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("closed by ']'"), "{err}");
    }

    /// A live trigger's query returns one value: every lab trigger reads
    /// one signal, and the slo row's floor is a second trigger.
    #[test]
    fn every_policy_row_reads_what_a_live_trigger_can() {
        for name in ["aibrix", "queue", "slo", "predictive", "cost", "keda-tuned"] {
            let Controller::Keda(k) = build(name, &ctx(), &BTreeMap::new()).unwrap() else {
                panic!("{name} is a KEDA loop");
            };
            for t in &k.triggers {
                let (query, _) = t.signal.live_query().expect("a live signal");
                assert!(query.contains("vllm:"), "{name}: {query}");
            }
        }
        let Controller::Keda(slo) = build("slo", &ctx(), &BTreeMap::new()).unwrap() else {
            unreachable!()
        };
        assert_eq!(slo.triggers.len(), 2);
        let Controller::Keda(p) = build("predictive", &ctx(), &BTreeMap::new()).unwrap() else {
            unreachable!()
        };
        assert_eq!(p.triggers[0].signal, Signal::SuccessRate);
    }

    #[test]
    fn a_prom_row_is_that_keda_row_over_prometheus_and_bad_keys_are_named() {
        let Controller::Keda(k) = build(
            "prom[like=keda-a31-p30-c300-s120;scrape=5]",
            &ctx(),
            &BTreeMap::new(),
        )
        .unwrap() else {
            panic!("a prom row is a KEDA loop");
        };
        let p = k.triggers[0]
            .prometheus
            .as_ref()
            .expect("a prometheus trigger");
        assert_eq!(
            p.query.text,
            "sum(avg_over_time(vllm:num_requests_running[120s]))"
        );
        assert_eq!(k.triggers[0].spec.target, 31.0);
        assert_eq!(
            k.keda.spec.behavior.scale_down.stabilization_window_seconds,
            120
        );
        assert_eq!(k.prometheus.as_ref().unwrap().scrape_interval_s, Some(5.0));
        // The run's --scrape-interval unless the row sets one.
        let Controller::Keda(k) = build("prom", &ctx(), &BTreeMap::new()).unwrap() else {
            unreachable!()
        };
        assert_eq!(k.prometheus.as_ref().unwrap().scrape_interval_s, None);
        // A floor keeps the row on Prometheus.
        let Controller::Keda(k) = build("prom[floor=40]", &ctx(), &BTreeMap::new()).unwrap() else {
            unreachable!()
        };
        assert!(k.prometheus.is_some() && k.triggers[0].prometheus.is_some());
        for (label, key) in [
            ("prom[scrape=0]", "scrape"),
            ("prom[threshold=0]", "threshold"),
            ("prom[like=keda-fast]", "like"),
            ("prom[qurey=sum(vllm:num_requests_running)]", "qurey"),
            (
                "prom[query=sum by (pod) (vllm:num_requests_running)]",
                "query",
            ),
            ("prom[ignoreNullValues=perhaps]", "ignoreNullValues"),
            ("prom[downWindow=4000]", "downWindow"),
        ] {
            let e = build(label, &ctx(), &BTreeMap::new())
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains(key), "{label}: {e}");
        }
    }
}
