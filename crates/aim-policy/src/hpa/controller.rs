//! One HPA sync (`reconcileAutoscaler`), and the history the controller
//! keeps between syncs: raw recommendations for stabilization and the
//! replica changes it made for the rate policies.

use super::behavior::{
    Behavior, Recommendation, ScaleEvent, scale_down_limit, scale_up_limit, stabilize,
};
use super::calculator::{MetricInput, proposal};

/// The parts of an HPA spec the controller acts on.
#[derive(Debug, Clone, PartialEq)]
pub struct HpaSpec {
    /// `minReplicas`; 0 only with the HPAScaleToZero gate.
    pub min_replicas: u32,
    pub max_replicas: u32,
    pub behavior: Behavior,
}

/// What the controller observes at one sync.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncInput {
    /// The caller's clock, in seconds.
    pub now: f64,
    /// The scale target's `spec.replicas`.
    pub spec_replicas: u32,
    /// The scale target's `status.replicas` (pods that exist).
    pub status_replicas: u32,
    /// One entry per metric; `None` marks a metric that failed to fetch.
    pub metrics: Vec<Option<MetricInput>>,
}

/// The result of one sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncOutcome {
    /// Set `spec.replicas` to this value.
    Scale(u32),
    /// Leave the target as it is.
    Hold,
    /// `spec.replicas` is 0 while `minReplicas` > 0: the HPA is inactive
    /// (`ScalingActive=False`) until someone scales the target up.
    Inactive,
    /// No valid metric, or some invalid and the valid ones say scale down.
    MetricsUnavailable,
}

/// One HorizontalPodAutoscaler with its controller-side memory.
#[derive(Debug, Clone)]
pub struct Hpa {
    pub spec: HpaSpec,
    recommendations: Vec<Recommendation>,
    scale_ups: Vec<ScaleEvent>,
    scale_downs: Vec<ScaleEvent>,
    initialized: bool,
}

impl Hpa {
    pub fn new(spec: HpaSpec) -> Self {
        Hpa {
            spec,
            recommendations: Vec::new(),
            scale_ups: Vec::new(),
            scale_downs: Vec::new(),
            initialized: false,
        }
    }

    /// The per-metric proposals reduced the way `computeReplicasForMetrics`
    /// does: the largest wins; a scale-down on partial metrics is refused.
    pub fn metric_recommendation(&self, input: &SyncInput) -> Option<u32> {
        let tolerances = self.spec.behavior.tolerances();
        let mut best: Option<u32> = None;
        let mut invalid = 0usize;
        for metric in &input.metrics {
            match metric
                .as_ref()
                .map(|m| proposal(m, input.spec_replicas, input.status_replicas, tolerances))
            {
                Some(Ok(replicas)) => best = Some(best.map_or(replicas, |b| b.max(replicas))),
                _ => invalid += 1,
            }
        }
        let best = best?;
        if invalid > 0 && best < input.spec_replicas {
            return None;
        }
        Some(best)
    }

    pub fn sync(&mut self, input: &SyncInput) -> SyncOutcome {
        let current = input.spec_replicas;
        let (min, max) = (self.spec.min_replicas, self.spec.max_replicas);
        let desired = if current == 0 && min != 0 {
            return SyncOutcome::Inactive;
        } else if current > max {
            max
        } else if current < min {
            min
        } else {
            let Some(raw) = self.metric_recommendation(input) else {
                return SyncOutcome::MetricsUnavailable;
            };
            self.normalize(input.now, current, raw)
        };
        if desired == current {
            return SyncOutcome::Hold;
        }
        self.record_scale(input.now, current, desired);
        SyncOutcome::Scale(desired)
    }

    /// `normalizeDesiredReplicasWithBehaviors`: stabilize, then rate-limit,
    /// then bound.
    fn normalize(&mut self, now: f64, current: u32, raw: u32) -> u32 {
        let behavior = self.spec.behavior.clone();
        if !self.initialized {
            // maybeInitScaleDownStabilizationWindow: a fresh controller acts as
            // if the current count had just been recommended.
            if behavior.scale_down.stabilization_window_seconds > 0 {
                self.recommendations.push(Recommendation {
                    at: now,
                    replicas: current,
                });
            }
            self.initialized = true;
        }
        let stabilized = stabilize(&self.recommendations, now, current, raw, &behavior);
        self.remember(now, raw);
        let (min, max) = (self.spec.min_replicas, self.spec.max_replicas);
        if stabilized > current {
            let limit = scale_up_limit(
                current,
                &self.scale_ups,
                &self.scale_downs,
                &behavior.scale_up,
                now,
            )
            .max(current);
            stabilized.min(max.min(limit))
        } else if stabilized < current {
            let limit = scale_down_limit(
                current,
                &self.scale_ups,
                &self.scale_downs,
                &behavior.scale_down,
                now,
            )
            .min(current);
            stabilized.max(min.max(limit))
        } else {
            stabilized
        }
    }

    /// Records a raw recommendation, reusing a slot that has aged out of
    /// both windows as the controller does, so memory stays bounded.
    fn remember(&mut self, now: f64, raw: u32) {
        let b = &self.spec.behavior;
        let up_cutoff = now - f64::from(b.scale_up.stabilization_window_seconds);
        let down_cutoff = now - f64::from(b.scale_down.stabilization_window_seconds);
        let old = self
            .recommendations
            .iter()
            .rposition(|r| r.at < up_cutoff && r.at < down_cutoff);
        let rec = Recommendation {
            at: now,
            replicas: raw,
        };
        match old {
            Some(i) => self.recommendations[i] = rec,
            None => self.recommendations.push(rec),
        }
    }

    fn record_scale(&mut self, now: f64, from: u32, to: u32) {
        let longest = |rules: &super::ScalingRules| {
            rules
                .policies
                .iter()
                .map(|p| p.period_seconds)
                .max()
                .unwrap_or(0)
        };
        let keep_up = f64::from(longest(&self.spec.behavior.scale_up));
        let keep_down = f64::from(longest(&self.spec.behavior.scale_down));
        self.scale_ups.retain(|e| e.at > now - keep_up);
        self.scale_downs.retain(|e| e.at > now - keep_down);
        if to > from {
            self.scale_ups.push(ScaleEvent {
                at: now,
                change: to - from,
            });
        } else {
            self.scale_downs.push(ScaleEvent {
                at: now,
                change: from - to,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hpa::{MetricTarget, PodSample};

    fn queue(value: f64, ready: u32) -> Option<MetricInput> {
        Some(MetricInput {
            target: MetricTarget::AverageValue { per_pod: 1.0 },
            pods: (0..ready).map(|_| PodSample::ready(0.0)).collect(),
            value: Some(value),
            cpu_readiness_rules: false,
        })
    }

    fn hpa(min: u32, max: u32) -> Hpa {
        Hpa::new(HpaSpec {
            min_replicas: min,
            max_replicas: max,
            behavior: Behavior::default(),
        })
    }

    fn at(now: f64, replicas: u32, metrics: Vec<Option<MetricInput>>) -> SyncInput {
        SyncInput {
            now,
            spec_replicas: replicas,
            status_replicas: replicas,
            metrics,
        }
    }

    #[test]
    fn largest_metric_wins() {
        let mut h = hpa(1, 50);
        let out = h.sync(&at(0.0, 2, vec![queue(3.0, 2), queue(7.0, 2)]));
        assert_eq!(out, SyncOutcome::Scale(6)); // 7 wanted, capped at 2 + 4
    }

    #[test]
    fn partial_metrics_block_scale_down_but_not_up() {
        let mut h = hpa(1, 50);
        assert_eq!(
            h.sync(&at(0.0, 5, vec![queue(1.0, 5), None])),
            SyncOutcome::MetricsUnavailable
        );
        assert_eq!(
            h.sync(&at(15.0, 5, vec![queue(9.0, 5), None])),
            SyncOutcome::Scale(9)
        );
        assert_eq!(
            h.sync(&at(30.0, 9, vec![None, None])),
            SyncOutcome::MetricsUnavailable
        );
    }

    #[test]
    fn scale_down_waits_for_the_window() {
        let mut h = hpa(1, 50);
        let mut replicas = 8;
        let mut first_drop = None;
        for k in 0..40 {
            let now = f64::from(k) * 15.0;
            if let SyncOutcome::Scale(n) = h.sync(&at(now, replicas, vec![queue(2.0, replicas)])) {
                first_drop.get_or_insert(now);
                replicas = n;
            }
        }
        assert_eq!(replicas, 2);
        // The initial recommendation (8 at t = 0) leaves the 300 s window when
        // the cutoff reaches it: "after the cutoff" is strict, so at 300 s.
        assert_eq!(first_drop, Some(300.0));
    }

    #[test]
    fn inactive_at_zero_with_positive_min() {
        let mut h = hpa(1, 5);
        assert_eq!(
            h.sync(&at(0.0, 0, vec![queue(9.0, 0)])),
            SyncOutcome::Inactive
        );
    }

    #[test]
    fn out_of_bounds_current_is_pulled_in() {
        let mut h = hpa(2, 5);
        assert_eq!(
            h.sync(&at(0.0, 9, vec![queue(9.0, 9)])),
            SyncOutcome::Scale(5)
        );
        assert_eq!(
            h.sync(&at(15.0, 1, vec![queue(0.0, 1)])),
            SyncOutcome::Scale(2)
        );
    }
}
