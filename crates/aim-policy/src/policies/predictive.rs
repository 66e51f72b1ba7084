//! Predictive: forecast the arrival rate one cold start ahead, so replicas
//! are ready when the load arrives rather than a warm-up after it.
//!
//! Forecast at `now + coldStart` = the largest of
//! * the level (mean rate over `smoothing`);
//! * the level plus the linear trend over `trendWindow`, extrapolated;
//! * the seasonal forecast: the level times the ratio between the rate one
//!   season ago at `now + coldStart` and at `now` (needs a season of history).
//!
//! Taking the largest only ever adds capacity ahead of time; scale-down
//! follows the observed rate after `scaleDownDelay`. Scheduled floors apply
//! from `coldStart` before their window opens, so the replicas are warm on
//! time.
//!
//! Value: `[request rate, requests/s]`. vLLM counts no arrivals, so live
//! this is the finished-request rate (`sum(vllm:request_success_total)`
//! with `operationOverTime: rate`), or a gateway's request counter where a
//! gateway runs in front of the pods. Knobs and defaults:
//! `capacity` (requests/s one replica serves within its SLO; default the
//! trigger's `targetValue`), `coldStart` 120s, `smoothing` 60s,
//! `trendWindow` 300s, `season` 24h (0 turns it off), `headroom` 0.1,
//! `scaleDownDelay` = `coldStart`, `schedule` (e.g. "08:00-18:00=4", UTC),
//! `forecastBias` 1.
//!
//! `forecastBias` multiplies the forecast (not the observed rate held over
//! `scaleDownDelay`, which floors the count): 2 forecasts twice the rate the
//! history implies, 0.5 half. It exists to measure how the policy degrades when its forecast
//! is wrong by a known factor (a 2x rate misprediction is the usual robustness test); leave it at 1
//! in production.

use std::collections::BTreeMap;

use super::{mean, per_replica, recent, replica_value, replicas_for, value};
use crate::params::ScheduleWindow;
use crate::{Params, Policy, PolicyError, PolicyInput};

#[derive(Debug, Clone, Copy, Default)]
pub struct Predictive;

const NAME: &str = "predictive";

struct Knobs {
    cold_start: f64,
    smoothing: f64,
    trend_window: f64,
    season: f64,
    headroom: f64,
    scale_down_delay: f64,
    schedule: Vec<ScheduleWindow>,
    forecast_bias: f64,
}

fn knobs(metadata: &BTreeMap<String, String>) -> Result<Knobs, PolicyError> {
    let p = Params::new(NAME, metadata);
    let cold_start = p.seconds("coldStart", 120.0)?;
    Ok(Knobs {
        cold_start,
        smoothing: p.seconds("smoothing", 60.0)?.max(1e-3),
        trend_window: p.seconds("trendWindow", 300.0)?,
        season: p.seconds("season", 86_400.0)?,
        headroom: p.number("headroom", 0.1, 0.0, 10.0)?,
        scale_down_delay: p.seconds("scaleDownDelay", cold_start)?,
        schedule: p.schedule("schedule")?,
        forecast_bias: p.number("forecastBias", 1.0, 0.0, 100.0)?,
    })
}

/// Least-squares slope of `points` (value per second); 0 with < 3 points.
fn slope(points: &[(f64, f64)]) -> f64 {
    if points.len() < 3 {
        return 0.0;
    }
    let n = points.len() as f64;
    let mt = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mv = points.iter().map(|p| p.1).sum::<f64>() / n;
    let cov: f64 = points.iter().map(|p| (p.0 - mt) * (p.1 - mv)).sum();
    let var: f64 = points.iter().map(|p| (p.0 - mt).powi(2)).sum();
    if var > 0.0 { cov / var } else { 0.0 }
}

/// Mean of history values within ±`half` seconds of `at`.
fn around(input: &PolicyInput<'_>, at: f64, half: f64) -> Option<f64> {
    let near: Vec<f64> = input
        .history
        .iter()
        .filter(|s| (s.at - at).abs() <= half)
        .filter_map(|s| s.values.first().copied())
        .collect();
    (!near.is_empty()).then(|| near.iter().sum::<f64>() / near.len() as f64)
}

impl Predictive {
    /// The forecast arrival rate at `now + coldStart`, times `forecastBias`.
    pub fn forecast(&self, input: &PolicyInput<'_>) -> Result<f64, PolicyError> {
        let k = knobs(input.metadata)?;
        value(input, NAME, 0)?;
        let level = mean(&recent(input, 0, k.smoothing));
        let trend = slope(&recent(input, 0, k.trend_window));
        // The level lags the present by half the smoothing window.
        let trended = level + trend * (k.cold_start + k.smoothing / 2.0);
        let seasonal = if k.season > 0.0 {
            let half = k.smoothing.max(30.0);
            match (
                around(input, input.now + k.cold_start - k.season, half),
                around(input, input.now - k.season, half),
            ) {
                (Some(ahead), Some(base)) if base > 0.0 => level * ahead / base,
                _ => 0.0,
            }
        } else {
            0.0
        };
        Ok(level.max(trended).max(seasonal).max(0.0) * k.forecast_bias)
    }

    pub fn desired(&self, input: &PolicyInput<'_>) -> Result<u32, PolicyError> {
        let k = knobs(input.metadata)?;
        let capacity = per_replica(&Params::new(NAME, input.metadata), input, "capacity")?;
        let ahead = replicas_for(self.forecast(input)? * (1.0 + k.headroom), capacity);
        // Hold what the observed rate needed during the scale-down delay.
        let held = recent(input, 0, k.scale_down_delay)
            .iter()
            .map(|p| replicas_for(p.1 * (1.0 + k.headroom), capacity))
            .max()
            .unwrap_or(0);
        let second_of_day = (input.now + k.cold_start).rem_euclid(86_400.0);
        let scheduled = k
            .schedule
            .iter()
            .filter(|w| w.contains(second_of_day))
            .map(|w| w.replicas)
            .max()
            .unwrap_or(0);
        Ok(ahead.max(held).max(scheduled))
    }
}

impl Policy for Predictive {
    fn name(&self) -> &'static str {
        NAME
    }

    fn parameters(&self) -> &'static [&'static str] {
        &[
            "coldStart",
            "smoothing",
            "trendWindow",
            "season",
            "headroom",
            "scaleDownDelay",
            "schedule",
            "forecastBias",
            "capacity",
        ]
    }

    fn evaluate(&self, input: &PolicyInput<'_>) -> Result<f64, PolicyError> {
        Ok(replica_value(self.desired(input)?, input.target))
    }

    fn history_seconds(&self, metadata: &BTreeMap<String, String>) -> Result<f64, PolicyError> {
        let k = knobs(metadata)?;
        let seasonal = if k.season > 0.0 {
            k.season + k.smoothing.max(30.0)
        } else {
            0.0
        };
        Ok(seasonal
            .max(k.trend_window)
            .max(k.scale_down_delay)
            .max(k.smoothing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Sample;
    use crate::policies::testing::{hpa_replicas, meta};

    fn ramp(from: f64, to: f64, step: f64, rate: impl Fn(f64) -> f64) -> Vec<Sample> {
        let mut out = Vec::new();
        let mut t = from;
        while t < to {
            out.push(Sample {
                at: t,
                values: vec![rate(t)],
            });
            t += step;
        }
        out
    }

    #[test]
    fn a_ramp_is_provisioned_one_cold_start_ahead() {
        let m = meta(&[("capacity", "1"), ("headroom", "0"), ("season", "0")]);
        // +1 rps per minute; at 600 s the rate is 10.
        let h = ramp(0.0, 600.0, 15.0, |t| t / 60.0);
        let input = PolicyInput {
            now: 600.0,
            history: &h,
            ..PolicyInput::new(&[10.0], &m)
        };
        let f = Predictive.forecast(&input).unwrap();
        // Level ≈ 9.6 (60 s mean), slope 1/60, extrapolated 150 s → ≈ 12.
        assert!((f - 12.0).abs() < 0.3, "{f}");
        assert_eq!(Predictive.desired(&input).unwrap(), 13);
        assert_eq!(
            hpa_replicas(Predictive.evaluate(&input).unwrap(), 1.0, 10),
            13
        );
    }

    #[test]
    fn seasonality_pre_warms_before_a_repeating_peak() {
        let m = meta(&[
            ("capacity", "1"),
            ("headroom", "0"),
            ("season", "1h"),
            ("trendWindow", "0"),
            ("coldStart", "5m"),
        ]);
        // A square wave: 2 rps, then 10 rps from minute 30 to 40 of each hour.
        let rate = |t: f64| {
            if (1800.0..2400.0).contains(&t.rem_euclid(3600.0)) {
                10.0
            } else {
                2.0
            }
        };
        let h = ramp(0.0, 3600.0 + 1700.0, 15.0, rate);
        let input = PolicyInput {
            now: 3600.0 + 1700.0,
            history: &h,
            ..PolicyInput::new(&[2.0], &m)
        };
        // 5 min ahead (minute 33) lands inside last hour's peak: 2 × 10/2 = 10.
        assert_eq!(Predictive.desired(&input).unwrap(), 10);
        let no_season = meta(&[
            ("capacity", "1"),
            ("headroom", "0"),
            ("season", "0"),
            ("trendWindow", "0"),
            ("coldStart", "5m"),
        ]);
        let flat = PolicyInput {
            metadata: &no_season,
            ..input
        };
        assert_eq!(Predictive.desired(&flat).unwrap(), 2);
    }

    #[test]
    fn schedule_floor_starts_a_cold_start_early() {
        let m = meta(&[
            ("capacity", "1"),
            ("schedule", "09:00-17:00=6"),
            ("coldStart", "5m"),
        ]);
        // Window opens at 09:00; with a 5 min cold start the floor applies from 08:55.
        let before = PolicyInput {
            now: 8.0 * 3600.0 + 56.0 * 60.0,
            ..PolicyInput::new(&[0.0], &m)
        };
        assert_eq!(Predictive.desired(&before).unwrap(), 6);
        let earlier = PolicyInput {
            now: 8.0 * 3600.0 + 54.0 * 60.0,
            ..before
        };
        assert_eq!(Predictive.desired(&earlier).unwrap(), 0);
    }

    #[test]
    fn bad_schedule_is_named() {
        let m = meta(&[("schedule", "nine-to-five")]);
        let e = Predictive
            .evaluate(&PolicyInput::new(&[1.0], &m))
            .unwrap_err()
            .to_string();
        assert!(e.contains("schedule") && e.contains("nine-to-five"), "{e}");
    }

    #[test]
    fn forecast_bias_scales_the_forecast_but_not_the_observed_hold() {
        // A flat 8 rps for ten minutes: the forecast is 8 whatever the bias.
        let h = ramp(0.0, 600.0, 15.0, |_| 8.0);
        let base = [
            ("capacity", "1"),
            ("headroom", "0"),
            ("season", "0"),
            ("scaleDownDelay", "0"),
        ];
        let with_bias = |bias: &str| {
            let mut kv = base.to_vec();
            kv.push(("forecastBias", bias));
            meta(&kv)
        };
        let unbiased = meta(&base);
        let input = PolicyInput {
            now: 600.0,
            history: &h,
            ..PolicyInput::new(&[8.0], &unbiased)
        };
        let f1 = Predictive.forecast(&input).unwrap();
        assert!((f1 - 8.0).abs() < 1e-9, "{f1}");
        assert_eq!(Predictive.desired(&input).unwrap(), 8);

        let double = with_bias("2");
        let over = PolicyInput {
            metadata: &double,
            ..input
        };
        assert!((Predictive.forecast(&over).unwrap() - 16.0).abs() < 1e-9);
        assert_eq!(Predictive.desired(&over).unwrap(), 16);

        let half = with_bias("0.5");
        let under = PolicyInput {
            metadata: &half,
            ..input
        };
        assert!((Predictive.forecast(&under).unwrap() - 4.0).abs() < 1e-9);
        // The observed rate (here the present one; with a scale-down delay,
        // its maximum over the delay) is held unbiased, so an under-forecast
        // cannot take the pool below what the load needs right now.
        assert_eq!(Predictive.desired(&under).unwrap(), 8);
    }

    #[test]
    fn a_negative_forecast_bias_is_refused() {
        let m = meta(&[("forecastBias", "-1")]);
        let e = Predictive
            .evaluate(&PolicyInput::new(&[1.0], &m))
            .unwrap_err()
            .to_string();
        assert!(e.contains("forecastBias"), "{e}");
    }
}
