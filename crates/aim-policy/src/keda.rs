//! KEDA's half of the loop (`pkg/scaling/executor/scale_scaledobjects.go`
//! and the metrics adapter): polling, activation, 0↔1, cooldown to zero,
//! fallback and the pause annotations. The generated HPA ([`crate::hpa`])
//! does 1↔N.

use crate::hpa::{Behavior, HpaSpec, MetricTarget, SelectPolicy};

/// The trigger's `metricType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MetricType {
    #[default]
    AverageValue,
    Value,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TriggerSpec {
    pub metric_type: MetricType,
    /// The trigger's target (`targetValue` / `threshold`).
    pub target: f64,
    /// `activationThreshold`: active only when the value is strictly above.
    pub activation: f64,
}

impl TriggerSpec {
    pub fn hpa_target(&self) -> MetricTarget {
        match self.metric_type {
            MetricType::AverageValue => MetricTarget::AverageValue {
                per_pod: self.target,
            },
            MetricType::Value => MetricTarget::Value { value: self.target },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FallbackBehavior {
    #[default]
    Static,
    CurrentReplicas,
    CurrentReplicasIfHigher,
    CurrentReplicasIfLower,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Fallback {
    pub failure_threshold: u32,
    pub replicas: u32,
    pub behavior: FallbackBehavior,
}

/// The `autoscaling.keda.sh/*` annotations that change scaling.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Annotations {
    pub paused: bool,
    pub paused_replicas: Option<u32>,
    pub paused_scale_in: bool,
    pub paused_scale_out: bool,
    pub force_activation: bool,
}

/// A ScaledObject, with KEDA's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaledObjectSpec {
    pub polling_interval_seconds: f64,
    pub cooldown_period_seconds: f64,
    pub initial_cooldown_period_seconds: f64,
    pub min_replica_count: u32,
    pub max_replica_count: u32,
    pub idle_replica_count: Option<u32>,
    pub fallback: Option<Fallback>,
    pub triggers: Vec<TriggerSpec>,
    /// `advanced.horizontalPodAutoscalerConfig.behavior`, copied verbatim.
    pub behavior: Behavior,
    pub annotations: Annotations,
}

impl Default for ScaledObjectSpec {
    fn default() -> Self {
        ScaledObjectSpec {
            polling_interval_seconds: 30.0,
            cooldown_period_seconds: 300.0,
            initial_cooldown_period_seconds: 0.0,
            min_replica_count: 0,
            max_replica_count: 100,
            idle_replica_count: None,
            fallback: None,
            triggers: Vec::new(),
            behavior: Behavior::default(),
            annotations: Annotations::default(),
        }
    }
}

impl ScaledObjectSpec {
    /// The HPA KEDA generates: `minReplicas` = max(1, minReplicaCount); the
    /// scale-in/out pause annotations disable that direction.
    pub fn hpa_spec(&self) -> HpaSpec {
        let mut behavior = self.behavior.clone();
        if self.annotations.paused_scale_in {
            behavior.scale_down.select = SelectPolicy::Disabled;
        }
        if self.annotations.paused_scale_out {
            behavior.scale_up.select = SelectPolicy::Disabled;
        }
        HpaSpec {
            min_replicas: self.min_replica_count.max(1),
            max_replicas: self.max_replica_count,
            behavior,
        }
    }
}

/// One poll's answer from a trigger's scaler.
pub type Reading = Option<f64>;

/// What the operator does after one poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KedaAction {
    /// Set `spec.replicas`.
    Scale(u32),
    /// Nothing for KEDA to do; the HPA owns 1↔N.
    None,
    /// Paused: neither KEDA nor the HPA may change the count.
    Frozen,
}

/// The operator's memory for one ScaledObject.
#[derive(Debug, Clone)]
pub struct Keda {
    pub spec: ScaledObjectSpec,
    created_at: f64,
    last_active: Option<f64>,
    failures: Vec<u32>,
}

impl Keda {
    pub fn new(spec: ScaledObjectSpec, created_at: f64) -> Self {
        let failures = vec![0; spec.triggers.len()];
        Keda {
            spec,
            created_at,
            last_active: None,
            failures,
        }
    }

    /// Whether the HPA may act at all (both pause annotations stop it).
    pub fn hpa_enabled(&self) -> bool {
        !self.spec.annotations.paused && self.spec.annotations.paused_replicas.is_none()
    }

    /// One `pollingInterval` tick: `readings[i]` is trigger i's value, `None`
    /// when its scaler errored.
    pub fn poll(&mut self, now: f64, current: u32, readings: &[Reading]) -> KedaAction {
        let a = &self.spec.annotations;
        if let Some(n) = a.paused_replicas {
            // paused-replicas wins over paused: scale to N, then freeze.
            return if current == n {
                KedaAction::Frozen
            } else {
                KedaAction::Scale(n)
            };
        }
        if a.paused {
            return KedaAction::Frozen;
        }
        for (i, reading) in readings.iter().enumerate() {
            if let Some(f) = self.failures.get_mut(i) {
                *f = if reading.is_some() {
                    0
                } else {
                    f.saturating_add(1)
                };
            }
        }
        let active = a.force_activation
            || readings
                .iter()
                .zip(&self.spec.triggers)
                .any(|(r, t)| r.is_some_and(|v| v > t.activation));
        let error = readings.iter().any(Option::is_none);
        let min = self.spec.min_replica_count;
        if active {
            self.last_active = Some(now);
            let below_idle_min = self.spec.idle_replica_count.is_some() && current < min;
            if (current == 0 || below_idle_min) && !a.paused_scale_out {
                // From zero KEDA ignores the magnitude: min, or 1.
                return KedaAction::Scale(min.max(1));
            }
            return KedaAction::None;
        }
        if error
            && let Some(fb) = &self.spec.fallback
            && fb.replicas != 0
            && self.fallback_engaged()
        {
            return KedaAction::Scale(fallback_replicas(fb, current));
        }
        let to_zero_target = self.spec.idle_replica_count.unwrap_or(0);
        let can_idle = match self.spec.idle_replica_count {
            Some(idle) => current > idle,
            None => current > 0 && min == 0,
        };
        if can_idle {
            if a.paused_scale_in {
                return KedaAction::None;
            }
            // scaleToZeroOrIdle: past creation + initialCooldownPeriod, and
            // never active or past lastActiveTime + cooldownPeriod (strictly).
            let created_ok = now > self.created_at + self.spec.initial_cooldown_period_seconds;
            let cooled = self
                .last_active
                .is_none_or(|t| now > t + self.spec.cooldown_period_seconds);
            if created_ok && cooled {
                return KedaAction::Scale(to_zero_target);
            }
            return KedaAction::None;
        }
        if current < min && self.spec.idle_replica_count.is_none() {
            return KedaAction::Scale(min);
        }
        KedaAction::None
    }

    fn fallback_engaged(&self) -> bool {
        let Some(fb) = &self.spec.fallback else {
            return false;
        };
        self.failures.iter().any(|&f| f > fb.failure_threshold)
    }

    /// The metric the metrics adapter serves the HPA for trigger `index`:
    /// the reading, or, past the failure threshold, the synthetic value that
    /// lands the HPA on `fallback.replicas`. `None` leaves the HPA's metric
    /// unknown (KEDA's default on error).
    pub fn hpa_metric(
        &self,
        index: usize,
        reading: Reading,
        current: u32,
        ready: u32,
    ) -> Option<f64> {
        if reading.is_some() {
            return reading;
        }
        let fb = self.spec.fallback.as_ref()?;
        if self.failures.get(index).copied().unwrap_or(0) <= fb.failure_threshold {
            return None;
        }
        let trigger = self.spec.triggers.get(index)?;
        let replicas = f64::from(fallback_replicas(fb, current));
        Some(match trigger.metric_type {
            MetricType::AverageValue => trigger.target * replicas,
            MetricType::Value => trigger.target * replicas / f64::from(ready.max(1)),
        })
    }

    /// Counts a failed or successful metrics-adapter query, for callers that
    /// serve the HPA between polls.
    pub fn record_reading(&mut self, index: usize, ok: bool) {
        if let Some(f) = self.failures.get_mut(index) {
            *f = if ok { 0 } else { f.saturating_add(1) };
        }
    }
}

fn fallback_replicas(fb: &Fallback, current: u32) -> u32 {
    match fb.behavior {
        FallbackBehavior::Static => fb.replicas,
        FallbackBehavior::CurrentReplicas => current,
        FallbackBehavior::CurrentReplicasIfHigher => current.max(fb.replicas),
        FallbackBehavior::CurrentReplicasIfLower => current.min(fb.replicas),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(min: u32) -> ScaledObjectSpec {
        ScaledObjectSpec {
            min_replica_count: min,
            max_replica_count: 10,
            triggers: vec![TriggerSpec {
                metric_type: MetricType::AverageValue,
                target: 5.0,
                activation: 10.0,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn activation_is_strictly_above_threshold_and_from_zero_ignores_magnitude() {
        let mut k = Keda::new(spec(0), 0.0);
        assert_eq!(k.poll(0.0, 0, &[Some(10.0)]), KedaAction::None);
        assert_eq!(k.poll(30.0, 0, &[Some(500.0)]), KedaAction::Scale(1));
        let mut k = Keda::new(spec(3), 0.0);
        assert_eq!(k.poll(0.0, 0, &[Some(11.0)]), KedaAction::Scale(3));
    }

    #[test]
    fn cooldown_counts_from_last_activity() {
        let mut k = Keda::new(spec(0), 0.0);
        assert_eq!(k.poll(0.0, 0, &[Some(50.0)]), KedaAction::Scale(1));
        assert_eq!(k.poll(30.0, 2, &[Some(0.0)]), KedaAction::None);
        assert_eq!(k.poll(299.0, 2, &[Some(0.0)]), KedaAction::None);
        assert_eq!(k.poll(300.0, 2, &[Some(0.0)]), KedaAction::None);
        assert_eq!(k.poll(330.0, 2, &[Some(0.0)]), KedaAction::Scale(0));
    }

    #[test]
    fn never_active_uses_creation_plus_initial_cooldown() {
        let mut s = spec(0);
        s.initial_cooldown_period_seconds = 120.0;
        let mut k = Keda::new(s, 10.0);
        assert_eq!(k.poll(100.0, 1, &[Some(0.0)]), KedaAction::None);
        assert_eq!(k.poll(130.0, 1, &[Some(0.0)]), KedaAction::None);
        assert_eq!(k.poll(131.0, 1, &[Some(0.0)]), KedaAction::Scale(0));
    }

    #[test]
    fn min_above_zero_is_restored_when_inactive() {
        let mut k = Keda::new(spec(2), 0.0);
        assert_eq!(k.poll(0.0, 1, &[Some(0.0)]), KedaAction::Scale(2));
    }

    #[test]
    fn fallback_after_threshold_and_hpa_metric() {
        let mut s = spec(1);
        s.fallback = Some(Fallback {
            failure_threshold: 2,
            replicas: 6,
            behavior: FallbackBehavior::Static,
        });
        let mut k = Keda::new(s, 0.0);
        assert_eq!(k.poll(0.0, 3, &[None]), KedaAction::None);
        assert_eq!(k.poll(30.0, 3, &[None]), KedaAction::None);
        assert_eq!(k.hpa_metric(0, None, 3, 3), None);
        assert_eq!(k.poll(60.0, 3, &[None]), KedaAction::Scale(6));
        assert_eq!(k.hpa_metric(0, None, 3, 3), Some(30.0)); // 5 × 6
        let mut value = k.spec.clone();
        value.triggers[0].metric_type = MetricType::Value;
        let mut kv = Keda::new(value, 0.0);
        for t in 0..3 {
            kv.poll(f64::from(t) * 30.0, 3, &[None]);
        }
        assert_eq!(kv.hpa_metric(0, None, 3, 3), Some(10.0)); // 5 × 6 / 3
    }

    #[test]
    fn pause_annotations() {
        let mut s = spec(0);
        s.annotations.paused = true;
        let mut k = Keda::new(s.clone(), 0.0);
        assert_eq!(k.poll(0.0, 0, &[Some(99.0)]), KedaAction::Frozen);
        assert!(!k.hpa_enabled());
        s.annotations.paused_replicas = Some(4);
        let mut k = Keda::new(s.clone(), 0.0);
        assert_eq!(k.poll(0.0, 1, &[Some(99.0)]), KedaAction::Scale(4));
        assert_eq!(k.poll(30.0, 4, &[Some(99.0)]), KedaAction::Frozen);
        let mut s = spec(0);
        s.annotations.paused_scale_in = true;
        s.annotations.paused_scale_out = true;
        assert_eq!(
            s.hpa_spec().behavior.scale_down.select,
            SelectPolicy::Disabled
        );
        let mut k = Keda::new(s, 0.0);
        assert_eq!(k.poll(0.0, 0, &[Some(99.0)]), KedaAction::None);
        assert_eq!(k.poll(1000.0, 2, &[Some(0.0)]), KedaAction::None);
    }

    #[test]
    fn generated_hpa_min_is_at_least_one() {
        assert_eq!(spec(0).hpa_spec().min_replicas, 1);
        assert_eq!(spec(3).hpa_spec().min_replicas, 3);
    }
}
