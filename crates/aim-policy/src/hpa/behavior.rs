//! `spec.behavior`: stabilization windows, then Pods/Percent rate policies
//! (`horizontal.go`: `stabilizeRecommendationWithBehaviors`,
//! `calculateScaleUpLimitWithScalingRules`,
//! `calculateScaleDownLimitWithBehaviors`).

use super::calculator::Tolerances;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    Pods,
    Percent,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RatePolicy {
    pub kind: PolicyKind,
    pub value: u32,
    /// At most 1800 (API validation).
    pub period_seconds: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SelectPolicy {
    /// The policy allowing the most change (the default).
    #[default]
    Max,
    Min,
    Disabled,
}

/// One direction of `behavior`.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalingRules {
    pub stabilization_window_seconds: u32,
    pub select: SelectPolicy,
    pub policies: Vec<RatePolicy>,
    /// `tolerance` (KEP-4951); `None` uses the cluster's 0.1.
    pub tolerance: Option<f64>,
}

/// `spec.behavior` after API defaulting.
#[derive(Debug, Clone, PartialEq)]
pub struct Behavior {
    pub scale_up: ScalingRules,
    pub scale_down: ScalingRules,
}

impl Default for Behavior {
    /// What `autoscaling/v2` defaulting fills in: up 0 s window,
    /// max(+4 pods, +100 %) per 15 s; down 300 s window, −100 % per 15 s.
    fn default() -> Self {
        Behavior {
            scale_up: ScalingRules {
                stabilization_window_seconds: 0,
                select: SelectPolicy::Max,
                policies: vec![
                    RatePolicy {
                        kind: PolicyKind::Pods,
                        value: 4,
                        period_seconds: 15,
                    },
                    RatePolicy {
                        kind: PolicyKind::Percent,
                        value: 100,
                        period_seconds: 15,
                    },
                ],
                tolerance: None,
            },
            scale_down: ScalingRules {
                stabilization_window_seconds: super::DEFAULT_DOWNSCALE_STABILIZATION_SECONDS as u32,
                select: SelectPolicy::Max,
                policies: vec![RatePolicy {
                    kind: PolicyKind::Percent,
                    value: 100,
                    period_seconds: 15,
                }],
                tolerance: None,
            },
        }
    }
}

impl Behavior {
    pub fn tolerances(&self) -> Tolerances {
        let default = Tolerances::default();
        Tolerances {
            scale_up: self.scale_up.tolerance.unwrap_or(default.scale_up),
            scale_down: self.scale_down.tolerance.unwrap_or(default.scale_down),
        }
    }
}

/// A replica change the HPA made, kept for the rate policies' periods.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScaleEvent {
    pub at: f64,
    pub change: u32,
}

/// A raw (pre-stabilization) recommendation with its time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Recommendation {
    pub at: f64,
    pub replicas: u32,
}

/// Clamps `current` into [min of the up window, max of the down window],
/// where the windows include the new recommendation `desired`.
pub fn stabilize(
    history: &[Recommendation],
    now: f64,
    current: u32,
    desired: u32,
    behavior: &Behavior,
) -> u32 {
    let up_cutoff = now - f64::from(behavior.scale_up.stabilization_window_seconds);
    let down_cutoff = now - f64::from(behavior.scale_down.stabilization_window_seconds);
    let mut up = desired;
    let mut down = desired;
    for rec in history {
        // Go's `timestamp.After(cutoff)`: strictly newer than the cutoff.
        if rec.at > up_cutoff {
            up = up.min(rec.replicas);
        }
        if rec.at > down_cutoff {
            down = down.max(rec.replicas);
        }
    }
    current.max(up).min(down)
}

fn changed_within(events: &[ScaleEvent], now: f64, period_seconds: u32) -> i64 {
    let cutoff = now - f64::from(period_seconds);
    events
        .iter()
        .filter(|e| e.at > cutoff)
        .map(|e| i64::from(e.change))
        .sum()
}

/// The most replicas the scale-up policies allow now.
pub fn scale_up_limit(
    current: u32,
    ups: &[ScaleEvent],
    downs: &[ScaleEvent],
    rules: &ScalingRules,
    now: f64,
) -> u32 {
    let pick: fn(i64, i64) -> i64 = match rules.select {
        SelectPolicy::Disabled => return current,
        SelectPolicy::Min => i64::min,
        SelectPolicy::Max => i64::max,
    };
    let mut result: Option<i64> = None;
    for policy in &rules.policies {
        let start = i64::from(current) - changed_within(ups, now, policy.period_seconds)
            + changed_within(downs, now, policy.period_seconds);
        let proposed = match policy.kind {
            PolicyKind::Pods => start + i64::from(policy.value),
            PolicyKind::Percent => {
                (start as f64 * (1.0 + f64::from(policy.value) / 100.0)).ceil() as i64
            }
        };
        result = Some(result.map_or(proposed, |r| pick(r, proposed)));
    }
    // No policies: nothing limits (the API never defaults to an empty list).
    result.map_or(u32::MAX, |r| r.clamp(0, i64::from(u32::MAX)) as u32)
}

/// The fewest replicas the scale-down policies allow now.
pub fn scale_down_limit(
    current: u32,
    ups: &[ScaleEvent],
    downs: &[ScaleEvent],
    rules: &ScalingRules,
    now: f64,
) -> u32 {
    let pick: fn(i64, i64) -> i64 = match rules.select {
        SelectPolicy::Disabled => return current,
        // Min selects the least change: the highest floor.
        SelectPolicy::Min => i64::max,
        SelectPolicy::Max => i64::min,
    };
    let mut result: Option<i64> = None;
    for policy in &rules.policies {
        let start = i64::from(current) - changed_within(ups, now, policy.period_seconds)
            + changed_within(downs, now, policy.period_seconds);
        let proposed = match policy.kind {
            PolicyKind::Pods => start - i64::from(policy.value),
            // Truncation: the count removed rounds up (80 → 72 at 10 %).
            PolicyKind::Percent => (start as f64 * (1.0 - f64::from(policy.value) / 100.0)) as i64,
        };
        result = Some(result.map_or(proposed, |r| pick(r, proposed)));
    }
    result.map_or(0, |r| r.clamp(0, i64::from(u32::MAX)) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(select: SelectPolicy, policies: Vec<RatePolicy>) -> ScalingRules {
        ScalingRules {
            stabilization_window_seconds: 0,
            select,
            policies,
            tolerance: None,
        }
    }

    #[test]
    fn default_scale_up_goes_1_5_10_20() {
        let b = Behavior::default();
        let mut current = 1;
        let mut seen = vec![current];
        for _ in 0..3 {
            current = scale_up_limit(current, &[], &[], &b.scale_up, 0.0);
            seen.push(current);
        }
        assert_eq!(seen, vec![1, 5, 10, 20]);
    }

    #[test]
    fn percent_scale_down_truncates() {
        let r = rules(
            SelectPolicy::Max,
            vec![RatePolicy {
                kind: PolicyKind::Percent,
                value: 10,
                period_seconds: 60,
            }],
        );
        assert_eq!(scale_down_limit(80, &[], &[], &r, 0.0), 72);
        assert_eq!(scale_down_limit(5, &[], &[], &r, 0.0), 4); // 4.5 → 4
    }

    #[test]
    fn events_inside_the_period_count_against_the_limit() {
        let r = rules(
            SelectPolicy::Max,
            vec![RatePolicy {
                kind: PolicyKind::Pods,
                value: 2,
                period_seconds: 60,
            }],
        );
        let ups = [ScaleEvent {
            at: 100.0,
            change: 2,
        }];
        // At 130 s the 2 added at 100 s still count: start = 4 − 2 → limit 4.
        assert_eq!(scale_up_limit(4, &ups, &[], &r, 130.0), 4);
        // At exactly 160 s the event has left the period (After, strictly).
        assert_eq!(scale_up_limit(4, &ups, &[], &r, 160.0), 6);
    }

    #[test]
    fn select_min_and_disabled() {
        let two = vec![
            RatePolicy {
                kind: PolicyKind::Pods,
                value: 4,
                period_seconds: 15,
            },
            RatePolicy {
                kind: PolicyKind::Percent,
                value: 100,
                period_seconds: 15,
            },
        ];
        assert_eq!(
            scale_up_limit(10, &[], &[], &rules(SelectPolicy::Min, two.clone()), 0.0),
            14
        );
        assert_eq!(
            scale_up_limit(10, &[], &[], &rules(SelectPolicy::Max, two.clone()), 0.0),
            20
        );
        assert_eq!(
            scale_up_limit(
                10,
                &[],
                &[],
                &rules(SelectPolicy::Disabled, two.clone()),
                0.0
            ),
            10
        );
        assert_eq!(
            scale_down_limit(10, &[], &[], &rules(SelectPolicy::Min, two.clone()), 0.0),
            6
        );
        assert_eq!(
            scale_down_limit(10, &[], &[], &rules(SelectPolicy::Max, two), 0.0),
            0
        );
    }

    #[test]
    fn stabilization_takes_the_window_extremes() {
        let b = Behavior::default();
        let history = [
            Recommendation {
                at: 0.0,
                replicas: 8,
            },
            Recommendation {
                at: 100.0,
                replicas: 3,
            },
        ];
        // Down window 300 s still holds the 8: stay at 8 even though 2 is asked.
        assert_eq!(stabilize(&history, 200.0, 8, 2, &b), 8);
        // At 301 s the 8 has aged out; the 3 at 100 s is the highest left.
        assert_eq!(stabilize(&history, 301.0, 8, 2, &b), 3);
        // Scale-up with a 0 s window follows at once.
        assert_eq!(stabilize(&history, 200.0, 3, 9, &b), 9);
    }
}
