//! What the servers share: the store, configuration, metrics and the
//! signal that new data arrived.

use crate::history::History;
use crate::ingest::{IngestConfig, IngestReport, ingest};
use crate::self_metrics::{SelfMetrics, Transport};
use crate::store::{Nanos, Store};
use crate::trigger::{Trigger, TriggerError};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

pub fn now_nanos() -> Nanos {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos().min(u64::MAX as u128) as u64)
        .unwrap_or(0)
}

/// Parsed triggers kept by their metadata; KEDA sends the same map on
/// every call, and regexes are worth compiling once.
const TRIGGER_CACHE_ENTRIES: usize = 4096;

pub struct ScalerState {
    pub store: Store,
    /// Compacted history behind the store, for policies that look back.
    pub history: History,
    pub ingest_config: IngestConfig,
    pub metrics: SelfMetrics,
    pub default_window: Duration,
    /// How often an open StreamIsActive re-evaluates without new data (the
    /// window slides and pods go stale even when nothing arrives).
    pub stream_interval: Duration,
    /// Bumped after every export, waking StreamIsActive streams.
    ingested: watch::Sender<u64>,
    /// Until when queries are refused (`--warmup`), and from when.
    started: std::time::Instant,
    warm_at: std::time::Instant,
    triggers: Mutex<HashMap<BTreeMap<String, String>, Arc<Trigger>>>,
    /// The last answer per ScaledObject, for `/debug/decisions` and the
    /// per-ScaledObject self-metrics.
    decisions: Mutex<BTreeMap<(String, String), Decision>>,
}

/// Most ScaledObjects whose last decision is kept; past it the oldest go.
const DECISIONS_KEPT: usize = 10_000;

/// What the scaler last answered KEDA for one ScaledObject.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Decision {
    pub namespace: String,
    pub scaledobject: String,
    pub policy: &'static str,
    /// The policy's state, e.g. stable-panic's `panic` or `stable`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<&'static str>,
    /// The query's value before the policy.
    pub raw: f64,
    /// What KEDA got.
    pub value: f64,
    pub target: f64,
    /// Unix seconds.
    pub at: f64,
}

impl ScalerState {
    pub fn new(
        store: Store,
        history: History,
        ingest_config: IngestConfig,
        default_window: Duration,
        stream_interval: Duration,
    ) -> Self {
        ScalerState {
            store,
            history,
            ingest_config,
            metrics: SelfMetrics::default(),
            default_window,
            stream_interval,
            ingested: watch::Sender::new(0),
            triggers: Mutex::new(HashMap::new()),
            decisions: Mutex::new(BTreeMap::new()),
            started: std::time::Instant::now(),
            warm_at: std::time::Instant::now(),
        }
    }

    /// Refuse queries for `warmup` from now (see `--warmup`).
    pub fn with_warmup(mut self, warmup: Duration) -> Self {
        self.started = std::time::Instant::now();
        self.warm_at = self.started + warmup;
        self
    }

    /// While warming up: how long the scaler has run, and the warm-up.
    pub fn warming_up(&self) -> Option<(Duration, Duration)> {
        let now = std::time::Instant::now();
        (now < self.warm_at).then(|| (now - self.started, self.warm_at - self.started))
    }

    pub fn ingest(
        &self,
        request: &ExportMetricsServiceRequest,
        transport: Transport,
    ) -> IngestReport {
        let report = ingest(&self.store, request, &self.ingest_config, now_nanos());
        self.after_ingest(transport, &report);
        report
    }

    /// Decodes and ingests a binary OTLP request, reading it in place (see
    /// [`crate::otlp_wire`]). A malformed request stores nothing and is
    /// prost's error; the caller reports it.
    pub fn ingest_protobuf(
        &self,
        bytes: &[u8],
        transport: Transport,
    ) -> Result<IngestReport, prost::DecodeError> {
        let report = crate::otlp_wire::ingest_protobuf(
            &self.store,
            bytes,
            &self.ingest_config,
            now_nanos(),
        )?;
        self.after_ingest(transport, &report);
        Ok(report)
    }

    fn after_ingest(&self, transport: Transport, report: &IngestReport) {
        self.metrics.record_ingest(transport, report);
        if report.stored > 0 {
            self.ingested
                .send_modify(|generation| *generation = generation.wrapping_add(1));
        }
    }

    /// Evaluates `trigger` now, with the compacted history.
    pub fn evaluate(
        &self,
        trigger: &Trigger,
    ) -> Result<crate::trigger::TriggerValue, TriggerError> {
        trigger.evaluate_with_history(&self.store, Some(&self.history), now_nanos())
    }

    /// Keeps `value` as the last decision for the ScaledObject.
    pub fn record_decision(
        &self,
        namespace: &str,
        scaledobject: &str,
        trigger: &Trigger,
        value: &crate::trigger::TriggerValue,
    ) {
        let decision = Decision {
            namespace: namespace.to_string(),
            scaledobject: scaledobject.to_string(),
            policy: trigger.policy.name(),
            mode: value.mode,
            raw: value.raw,
            value: value.value,
            target: trigger.target,
            at: now_nanos() as f64 / 1e9,
        };
        let mut decisions = self.decisions.lock().unwrap_or_else(|e| e.into_inner());
        if decisions.len() >= DECISIONS_KEPT
            && !decisions.contains_key(&(decision.namespace.clone(), decision.scaledobject.clone()))
            && let Some(oldest) = decisions
                .iter()
                .min_by(|a, b| a.1.at.total_cmp(&b.1.at))
                .map(|(k, _)| k.clone())
        {
            decisions.remove(&oldest);
        }
        decisions.insert(
            (decision.namespace.clone(), decision.scaledobject.clone()),
            decision,
        );
    }

    /// The last decision per ScaledObject, by namespace and name.
    pub fn decisions(&self) -> Vec<Decision> {
        let decisions = self.decisions.lock().unwrap_or_else(|e| e.into_inner());
        decisions.values().cloned().collect()
    }

    pub fn subscribe_ingest(&self) -> watch::Receiver<u64> {
        self.ingested.subscribe()
    }

    pub fn trigger(
        &self,
        metadata: &BTreeMap<String, String>,
    ) -> Result<Arc<Trigger>, TriggerError> {
        let mut cache = self.triggers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(trigger) = cache.get(metadata) {
            return Ok(trigger.clone());
        }
        let trigger = Arc::new(Trigger::parse(metadata.clone(), self.default_window)?);
        if cache.len() >= TRIGGER_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(metadata.clone(), trigger.clone());
        Ok(trigger)
    }
}
