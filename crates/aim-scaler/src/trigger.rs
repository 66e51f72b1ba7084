//! Trigger metadata: what a ScaledObject's `external` trigger sends in
//! `scalerMetadata`, and how it becomes the value KEDA receives.
//!
//! Keys shared with otel-add-on and written by KServe/AIM keep their
//! meaning: `metricQuery`, `targetValue`, `operationOverTime`, `clampMin`,
//! `clampMax`. Added here: `activationThreshold`, `policy`, `window`,
//! `quantile` and `valueIfMissing`. KEDA's own keys (`scalerAddress`,
//! `enableTLS`, `unsafeSsl`, ...) are accepted and ignored.

use crate::history::{self, History, HistoryKey};
use crate::query::{
    EvalError, EvalRequest, Evaluation, Operation, ParseError, Query, evaluate, parse_query,
};
use crate::store::{NANOS_PER_SECOND, Nanos, Store};
use aim_policy::{Policy, PolicyError, PolicyInput, Sample};
use std::collections::BTreeMap;
use std::time::Duration;

pub mod keys {
    pub const METRIC_QUERY: &str = "metricQuery";
    pub const TARGET_VALUE: &str = "targetValue";
    pub const OPERATION_OVER_TIME: &str = "operationOverTime";
    pub const CLAMP_MIN: &str = "clampMin";
    pub const CLAMP_MAX: &str = "clampMax";
    pub const ACTIVATION_THRESHOLD: &str = "activationThreshold";
    pub const POLICY: &str = "policy";
    pub const WINDOW: &str = "window";
    pub const QUANTILE: &str = "quantile";
    pub const VALUE_IF_MISSING: &str = "valueIfMissing";
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TriggerError {
    #[error("trigger metadata is missing required key '{key}': {hint}")]
    MissingKey {
        key: &'static str,
        hint: &'static str,
    },
    #[error("trigger metadata key '{key}' = {value:?} is invalid: {reason}")]
    InvalidValue {
        key: &'static str,
        value: String,
        reason: String,
    },
    #[error("trigger metadata key 'metricQuery': {0}")]
    Query(#[from] ParseError),
    #[error("{0}")]
    Eval(#[from] EvalError),
    #[error("trigger metadata key 'policy': {0}")]
    Policy(#[from] PolicyError),
    #[error(
        "the value computed for KEDA is {value}, which is not a finite number; check the policy and query"
    )]
    NotFinite { value: f64 },
}

/// A parsed trigger.
#[derive(Clone)]
pub struct Trigger {
    pub metadata: BTreeMap<String, String>,
    pub query: Query,
    pub target: f64,
    pub operation: Operation,
    pub clamp_min: Option<f64>,
    pub clamp_max: Option<f64>,
    pub activation_threshold: f64,
    pub policy: &'static dyn Policy,
    /// How far back the policy reads; 0 for stateless policies.
    pub policy_history: Nanos,
    pub window: Nanos,
    pub quantile: Option<f64>,
    pub value_if_missing: Option<f64>,
    /// What the query's compacted history is kept under.
    pub history_key: HistoryKey,
}

impl std::fmt::Debug for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trigger")
            .field("query", &self.query.to_string())
            .field("target", &self.target)
            .field("operation", &self.operation)
            .field("policy", &self.policy.name())
            .finish_non_exhaustive()
    }
}

/// The answer for one evaluation, shared by GetMetrics and IsActive.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TriggerValue {
    /// What KEDA gets: after policy and clamping, never negative.
    pub value: f64,
    pub active: bool,
    /// Series behind the value; 0 when `valueIfMissing` stood in.
    pub series: usize,
    /// The query's value before the policy.
    pub raw: f64,
    /// The policy's state behind the value (stable-panic's "panic").
    pub mode: Option<&'static str>,
}

/// Parses a duration such as "90s", "2m", "1500ms" or a plain number of
/// seconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    // One duration grammar for every policy knob and trigger key.
    aim_policy::parse_seconds(text).map(Duration::from_secs_f64)
}

fn optional_number(
    metadata: &BTreeMap<String, String>,
    key: &'static str,
) -> Result<Option<f64>, TriggerError> {
    let Some(text) = metadata.get(key) else {
        return Ok(None);
    };
    match text.trim().parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(Some(v)),
        _ => Err(TriggerError::InvalidValue {
            key,
            value: text.clone(),
            reason: "expected a decimal number such as \"4\" or \"0.5\"".into(),
        }),
    }
}

impl Trigger {
    /// Parses trigger metadata. `default_window` applies when the trigger
    /// sets no `window`.
    pub fn parse(
        metadata: BTreeMap<String, String>,
        default_window: Duration,
    ) -> Result<Self, TriggerError> {
        let query_text = metadata
            .get(keys::METRIC_QUERY)
            .ok_or(TriggerError::MissingKey {
                key: keys::METRIC_QUERY,
                hint: "set it to a query such as sum(vllm:num_requests_running{namespace=\"ns\"})",
            })?;
        let query = parse_query(query_text)?;

        let target =
            optional_number(&metadata, keys::TARGET_VALUE)?.ok_or(TriggerError::MissingKey {
                key: keys::TARGET_VALUE,
                hint: "set it to the metric value one replica should handle, e.g. \"4\"",
            })?;
        // KEDA would build an HPA with a zero target, which the HPA refuses;
        // failing here names the cause instead.
        if target <= 0.0 {
            return Err(TriggerError::InvalidValue {
                key: keys::TARGET_VALUE,
                value: metadata[keys::TARGET_VALUE].clone(),
                reason: "must be greater than 0 (the HPA divides by it)".into(),
            });
        }

        let operation = match metadata.get(keys::OPERATION_OVER_TIME).map(|s| s.trim()) {
            None | Some("") => Operation::LastOne,
            Some(text) => Operation::parse(text).ok_or_else(|| TriggerError::InvalidValue {
                key: keys::OPERATION_OVER_TIME,
                value: text.to_owned(),
                reason: "use one of last_one, avg, max, min, rate, count".into(),
            })?,
        };

        let clamp_min = optional_number(&metadata, keys::CLAMP_MIN)?;
        let clamp_max = optional_number(&metadata, keys::CLAMP_MAX)?;
        if let (Some(min), Some(max)) = (clamp_min, clamp_max)
            && min > max
        {
            return Err(TriggerError::InvalidValue {
                key: keys::CLAMP_MIN,
                value: metadata[keys::CLAMP_MIN].clone(),
                reason: format!("clampMin must not exceed clampMax ({max})"),
            });
        }

        let activation_threshold =
            optional_number(&metadata, keys::ACTIVATION_THRESHOLD)?.unwrap_or(0.0);
        let policy = aim_policy::lookup(
            metadata
                .get(keys::POLICY)
                .map(|s| s.trim())
                .filter(|s| !s.is_empty())
                .unwrap_or(aim_policy::DEFAULT_POLICY),
        )?;
        // Also validates the policy's own metadata keys, so a typo fails
        // when KEDA first asks rather than at every evaluation.
        let policy_history = policy.history_seconds(&metadata)?;

        let window = match metadata.get(keys::WINDOW) {
            None => default_window,
            Some(text) => match parse_duration(text) {
                Some(d) if d >= Duration::from_millis(1) => d,
                _ => {
                    return Err(TriggerError::InvalidValue {
                        key: keys::WINDOW,
                        value: text.clone(),
                        reason: "expected a positive duration such as \"120s\", \"2m\" or \"90\" (seconds)".into(),
                    });
                }
            },
        };

        let quantile = optional_number(&metadata, keys::QUANTILE)?;
        if let Some(q) = quantile
            && !(0.0..=1.0).contains(&q)
        {
            return Err(TriggerError::InvalidValue {
                key: keys::QUANTILE,
                value: metadata[keys::QUANTILE].clone(),
                reason: "must be between 0 and 1, e.g. 0.95".into(),
            });
        }
        let value_if_missing = optional_number(&metadata, keys::VALUE_IF_MISSING)?;
        let window = window.as_nanos().min(u64::MAX as u128) as u64;
        let history_key = HistoryKey::new(&query, operation, window, quantile);

        Ok(Trigger {
            query,
            target,
            operation,
            clamp_min,
            clamp_max,
            activation_threshold,
            policy,
            policy_history: (policy_history.clamp(0.0, 1e9) * NANOS_PER_SECOND as f64) as Nanos,
            window,
            quantile,
            value_if_missing,
            history_key,
            metadata,
        })
    }

    /// Evaluates the trigger at `now` with the raw store alone: a policy
    /// sees no further back than `--retention`. Missing data is an error
    /// (so KEDA's fallback engages) unless the trigger sets `valueIfMissing`.
    pub fn evaluate(&self, store: &Store, now: Nanos) -> Result<TriggerValue, TriggerError> {
        self.evaluate_with_history(store, None, now)
    }

    /// [`Trigger::evaluate`], with the compacted `history` behind the raw
    /// store: the evaluation registers the query there (so it is recorded
    /// from now on), records the steps due and hands the policy both.
    pub fn evaluate_with_history(
        &self,
        store: &Store,
        history: Option<&History>,
        now: Nanos,
    ) -> Result<TriggerValue, TriggerError> {
        // Before the value: a query that is missing data now is still one
        // KEDA asks about, and its history must keep going.
        let track =
            history.and_then(|h| h.track(&self.history_key, &self.query, self.policy_history, now));
        let mut track = track
            .as_ref()
            .map(|t| t.lock().unwrap_or_else(|e| e.into_inner()));
        if let (Some(history), Some(track)) = (history, track.as_deref_mut()) {
            history.record_due(&self.history_key, track, store, now);
        }
        let request = EvalRequest {
            query: &self.query,
            operation: self.operation,
            window: self.window,
            now,
            quantile: self.quantile,
        };
        let (raw, series) = match evaluate(store, &request) {
            Ok(Evaluation { value, series }) => (value, series),
            Err(e) if e.is_missing_data() && self.value_if_missing.is_some() => {
                (self.value_if_missing.unwrap_or_default(), 0)
            }
            Err(e) => return Err(e.into()),
        };
        let history = match history {
            Some(history) => history.samples(
                store,
                &self.query,
                &self.history_key,
                track.as_deref(),
                self.policy_history,
                now,
            ),
            None => self.policy_history_samples(store, now),
        };
        drop(track);
        let decision = self.policy.decide(&PolicyInput {
            values: &[raw],
            metadata: &self.metadata,
            now: now as f64 / NANOS_PER_SECOND as f64,
            history: &history,
            target: self.target,
            ready_replicas: u32::try_from(series).ok().filter(|&n| n > 0),
        })?;
        let mut value = decision.value;
        if let Some(min) = self.clamp_min {
            value = value.max(min);
        }
        if let Some(max) = self.clamp_max {
            value = value.min(max);
        }
        if !value.is_finite() {
            return Err(TriggerError::NotFinite { value });
        }
        // KEDA (since 2.20.2) turns negatives into 0 and older versions
        // mangle them; send 0 ourselves.
        let value = value.max(0.0);
        Ok(TriggerValue {
            value,
            active: value > self.activation_threshold,
            series,
            raw,
            mode: decision.mode,
        })
    }

    /// The history a policy gets from the raw store alone: the query
    /// re-evaluated at every 15 s step back over the policy's history that
    /// the store still covers with a whole window, oldest first.
    pub fn policy_history_samples(&self, store: &Store, now: Nanos) -> Vec<Sample> {
        history::samples(
            store,
            &self.query,
            &self.history_key,
            None,
            self.policy_history.min(history::DEFAULT_MAX_AGE),
            0,
            now,
        )
    }

    pub fn window_seconds(&self) -> f64 {
        self.window as f64 / NANOS_PER_SECOND as f64
    }
}

/// KEDA reads `*Float` fields when they are > 0 and the int fields
/// otherwise; versions before 2.17 read only the ints. Send both, the int
/// being the ceiling, as otel-add-on does.
pub fn ceil_to_i64(value: f64) -> i64 {
    let ceiled = value.ceil();
    if ceiled >= i64::MAX as f64 {
        i64::MAX
    } else if ceiled <= 0.0 || ceiled.is_nan() {
        0
    } else {
        ceiled as i64
    }
}

/// The metric name otel-add-on reports: `<scaledobject-namespace>-<name>`.
/// KEDA prefixes it with `sN-` for the HPA and strips that again.
pub fn metric_name(namespace: &str, name: &str) -> String {
    format!("{namespace}-{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const WINDOW: Duration = Duration::from_secs(120);

    #[test]
    fn kserve_metadata_parses_with_defaults() {
        let trigger = Trigger::parse(
            metadata(&[
                ("metricQuery", r#"sum(vllm:num_requests_running{namespace="default", deployment="huggingface-fbopt-predictor"})"#),
                ("targetValue", "4"),
                ("scalerAddress", "keda-otel-scaler.keda.svc:4318"),
            ]),
            WINDOW,
        )
        .unwrap();
        assert_eq!(trigger.target, 4.0);
        assert_eq!(trigger.operation, Operation::LastOne);
        assert_eq!(trigger.policy.name(), "passthrough");
        assert_eq!(trigger.window, 120 * NANOS_PER_SECOND);
        assert_eq!(trigger.activation_threshold, 0.0);
    }

    #[test]
    fn bad_metadata_names_the_key() {
        let query = ("metricQuery", "m");
        let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
            (vec![("targetValue", "1")], "'metricQuery'"),
            (vec![query], "'targetValue'"),
            (
                vec![query, ("targetValue", "abc")],
                "'targetValue' = \"abc\"",
            ),
            (vec![query, ("targetValue", "0")], "greater than 0"),
            (
                vec![query, ("targetValue", "1"), ("operationOverTime", "median")],
                "'operationOverTime' = \"median\"",
            ),
            (
                vec![
                    query,
                    ("targetValue", "1"),
                    ("clampMin", "5"),
                    ("clampMax", "2"),
                ],
                "'clampMin'",
            ),
            (
                vec![query, ("targetValue", "1"), ("policy", "nope")],
                "unknown policy 'nope'",
            ),
            (
                vec![
                    query,
                    ("targetValue", "1"),
                    ("policy", "queue"),
                    ("headroom", "lots"),
                ],
                "'headroom' = 'lots'",
            ),
            (
                vec![query, ("targetValue", "1"), ("window", "soon")],
                "'window' = \"soon\"",
            ),
            (
                vec![query, ("targetValue", "1"), ("quantile", "95")],
                "'quantile'",
            ),
            (
                vec![query, ("targetValue", "1"), ("activationThreshold", "x")],
                "'activationThreshold'",
            ),
            (
                vec![("metricQuery", "sum(m"), ("targetValue", "1")],
                "'metricQuery'",
            ),
        ];
        for (pairs, expected) in cases {
            let err = Trigger::parse(metadata(&pairs), WINDOW)
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{pairs:?}: {err}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1500ms"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_duration("x"), None);
    }

    #[test]
    fn ceiling_is_saturating() {
        assert_eq!(ceil_to_i64(0.2), 1);
        assert_eq!(ceil_to_i64(4.0), 4);
        assert_eq!(ceil_to_i64(0.0), 0);
        assert_eq!(ceil_to_i64(1e300), i64::MAX);
    }
}
