//! Who decides the replica count: a static pool, a precomputed plan (the
//! hindsight plan), or KEDA + HPA with triggers that may run an aim policy — the
//! same `aim_policy` code the live scaler runs.

use std::collections::{BTreeMap, VecDeque};

use aim_policy::hpa::{Hpa, MetricInput, PodSample, SyncInput, SyncOutcome};
use aim_policy::keda::{Keda, KedaAction, ScaledObjectSpec, TriggerSpec};
use aim_policy::{Policy, PolicyError, PolicyInput, Sample};

use crate::metrics::{Operation, Pipeline, Signal};
use crate::prom::{MetricIssues, PromSetup, PromTrigger, Tsdb};

/// One KEDA trigger served by our scaler: the queried signal, reduced over
/// the window, handed to the policy. One signal, because a live trigger's
/// query returns one value.
#[derive(Clone)]
pub struct Trigger {
    pub signal: Signal,
    pub operation: Operation,
    pub window_s: f64,
    pub policy: &'static dyn Policy,
    pub metadata: BTreeMap<String, String>,
    pub spec: TriggerSpec,
    /// A `type: prometheus` trigger: KEDA's own prometheus scaler answers
    /// it from the PromQL query over the scraped samples, and `signal`,
    /// `operation`, `window_s` and `policy` are not read.
    pub prometheus: Option<Box<PromTrigger>>,
}

impl std::fmt::Debug for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trigger")
            .field("signal", &self.signal)
            .field("policy", &self.policy.name())
            .field("metadata", &self.metadata)
            .finish_non_exhaustive()
    }
}

/// KEDA and its HPA, with the scaler-side history each policy reads.
#[derive(Debug, Clone)]
pub struct KedaLoop {
    pub keda: Keda,
    pub hpa: Hpa,
    pub triggers: Vec<Trigger>,
    history: Vec<VecDeque<Sample>>,
    keep: Vec<f64>,
    /// How Prometheus runs when some trigger queries it.
    pub prometheus: Option<PromSetup>,
    /// What went wrong with Prometheus queries from `score_from` on.
    pub issues: MetricIssues,
    /// Internal time from which [`KedaLoop::issues`] are counted (the end
    /// of the pre-roll).
    pub score_from: f64,
}

impl KedaLoop {
    pub fn new(spec: ScaledObjectSpec, triggers: Vec<Trigger>) -> Result<Self, PolicyError> {
        let keep = triggers
            .iter()
            .map(|t| t.policy.history_seconds(&t.metadata))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(KedaLoop {
            hpa: Hpa::new(spec.hpa_spec()),
            keda: Keda::new(spec, 0.0),
            history: vec![VecDeque::new(); triggers.len()],
            keep,
            triggers,
            prometheus: None,
            issues: MetricIssues::default(),
            score_from: 0.0,
        })
    }

    /// Replaces the HPA `behavior` (as KServe's autoscaler config or a live
    /// HPA sets it), keeping everything else of the ScaledObject.
    pub fn set_behavior(&mut self, behavior: aim_policy::hpa::Behavior) {
        self.keda.spec.behavior = behavior;
        self.hpa = Hpa::new(self.keda.spec.hpa_spec());
    }

    /// KServe writes its `autoscaler.scaleDownStabilizationWindowSeconds`
    /// into every ScaledObject it makes.
    pub fn set_scale_down_window(&mut self, seconds: u32) {
        let mut behavior = self.keda.spec.behavior.clone();
        behavior.scale_down.stabilization_window_seconds = seconds;
        self.set_behavior(behavior);
    }

    /// What the scaler answers for trigger `i` now; `None` = missing data
    /// (or, for a Prometheus trigger, KEDA's error).
    fn reading(
        &mut self,
        i: usize,
        pipeline: &Pipeline,
        prometheus: Option<&Tsdb>,
        now: f64,
        ready: u32,
    ) -> Result<Option<f64>, PolicyError> {
        let t = &self.triggers[i];
        if let Some(p) = &t.prometheus {
            // No Prometheus runs: nothing was scraped, so nothing is read.
            let Some(db) = prometheus else {
                return Ok(None);
            };
            let read = p.read(db, now);
            // Before Prometheus has scraped anything every query is empty,
            // live too; that says nothing about the query.
            if now >= self.score_from && (read.series > 0 || db.series().next().is_some()) {
                self.issues.count(&read);
            }
            // KEDA hands the value on as it is, negative or not.
            return Ok(read.value.ok());
        }
        let Some(value) = pipeline.query(t.signal, t.operation, t.window_s, now) else {
            return Ok(None);
        };
        let values = [value];
        let history = self.history[i].make_contiguous();
        let input = PolicyInput {
            values: &values,
            metadata: &t.metadata,
            now,
            history,
            target: t.spec.target,
            ready_replicas: Some(ready),
        };
        let v = t.policy.evaluate(&input)?;
        Ok(Some(v.max(0.0)))
    }

    /// Appends the raw signal values at `now` to each policy's history, as
    /// the live scaler's 15 s re-evaluation would see them.
    pub fn record(&mut self, pipeline: &Pipeline, now: f64) {
        for (i, t) in self.triggers.iter().enumerate() {
            if self.keep[i] <= 0.0 || t.prometheus.is_some() {
                continue;
            }
            if let Some(value) = pipeline.query(t.signal, t.operation, t.window_s, now) {
                let h = &mut self.history[i];
                h.push_back(Sample {
                    at: now,
                    values: vec![value],
                });
                while h.front().is_some_and(|s| s.at < now - self.keep[i]) {
                    h.pop_front();
                }
            }
        }
    }

    pub fn poll(
        &mut self,
        pipeline: &Pipeline,
        prometheus: Option<&Tsdb>,
        now: f64,
        spec: u32,
        ready: u32,
    ) -> Result<Option<u32>, PolicyError> {
        let readings = (0..self.triggers.len())
            .map(|i| self.reading(i, pipeline, prometheus, now, ready))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(match self.keda.poll(now, spec, &readings) {
            KedaAction::Scale(n) => Some(n),
            KedaAction::None | KedaAction::Frozen => None,
        })
    }

    pub fn sync(
        &mut self,
        pipeline: &Pipeline,
        prometheus: Option<&Tsdb>,
        now: f64,
        spec: u32,
        existing: u32,
        ready: u32,
    ) -> Result<Option<u32>, PolicyError> {
        if !self.keda.hpa_enabled() {
            return Ok(None);
        }
        self.record(pipeline, now);
        let mut metrics = Vec::with_capacity(self.triggers.len());
        for i in 0..self.triggers.len() {
            let reading = self.reading(i, pipeline, prometheus, now, ready)?;
            self.keda.record_reading(i, reading.is_some());
            let value = self.keda.hpa_metric(i, reading, spec, ready);
            // Starting pods exist (status.replicas) but are not Ready, so
            // External `Value` metrics do not count them.
            let pods = (0..existing)
                .map(|k| PodSample {
                    ready: k < ready,
                    ..PodSample::ready(0.0)
                })
                .collect();
            metrics.push(value.map(|v| MetricInput {
                target: self.triggers[i].spec.hpa_target(),
                pods,
                value: Some(v),
                cpu_readiness_rules: false,
            }));
        }
        if now >= self.score_from && self.triggers.iter().any(|t| t.prometheus.is_some()) {
            self.issues.hpa_syncs += 1;
            if metrics.iter().any(Option::is_none) {
                self.issues.hpa_syncs_without_metric += 1;
            }
        }
        let input = SyncInput {
            now,
            spec_replicas: spec,
            status_replicas: existing,
            metrics,
        };
        Ok(match self.hpa.sync(&input) {
            SyncOutcome::Scale(n) => Some(n),
            _ => None,
        })
    }
}

/// The replica-count authority of one run.
#[derive(Debug, Clone)]
pub enum Controller {
    Static(u32),
    /// `(from, replicas)` steps, sorted by time.
    Plan(Vec<(f64, u32)>),
    Keda(Box<KedaLoop>),
}
