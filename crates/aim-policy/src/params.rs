//! Typed reads of a trigger's metadata, with errors that name the key, the
//! bad value and what to write instead.

use std::collections::BTreeMap;

use crate::PolicyError;

pub struct Params<'a> {
    policy: &'static str,
    metadata: &'a BTreeMap<String, String>,
}

impl<'a> Params<'a> {
    pub fn new(policy: &'static str, metadata: &'a BTreeMap<String, String>) -> Self {
        Params { policy, metadata }
    }

    fn invalid(&self, key: &str, value: &str, reason: impl Into<String>) -> PolicyError {
        PolicyError::InvalidParameter {
            policy: self.policy,
            key: key.to_owned(),
            value: value.to_owned(),
            reason: reason.into(),
        }
    }

    fn raw(&self, key: &str) -> Option<&'a str> {
        self.metadata
            .get(key)
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
    }

    /// A finite number within `[lo, hi]`.
    pub fn number(&self, key: &str, default: f64, lo: f64, hi: f64) -> Result<f64, PolicyError> {
        let Some(text) = self.raw(key) else {
            return Ok(default);
        };
        match text.parse::<f64>() {
            Ok(v) if v.is_finite() && (lo..=hi).contains(&v) => Ok(v),
            _ => Err(self.invalid(
                key,
                text,
                format!("expected a number between {lo} and {hi}, e.g. \"{default}\""),
            )),
        }
    }

    /// A duration such as "90s", "2m", "1h", "1d", "1500ms" or plain seconds.
    pub fn seconds(&self, key: &str, default: f64) -> Result<f64, PolicyError> {
        let Some(text) = self.raw(key) else {
            return Ok(default);
        };
        parse_seconds(text).ok_or_else(|| {
            self.invalid(
                key,
                text,
                "expected a duration such as \"90s\", \"2m\", \"1h\", \"1d\" or a number of seconds",
            )
        })
    }

    /// Scheduled floors: `"HH:MM-HH:MM=N,..."` in UTC, e.g. `"08:00-18:00=4"`.
    pub fn schedule(&self, key: &str) -> Result<Vec<ScheduleWindow>, PolicyError> {
        let Some(text) = self.raw(key) else {
            return Ok(Vec::new());
        };
        text.split(',')
            .map(|part| {
                parse_window(part.trim()).ok_or_else(|| {
                    self.invalid(
                        key,
                        part,
                        "expected windows like \"08:00-18:00=4\" (UTC, start-end=replicas), separated by commas",
                    )
                })
            })
            .collect()
    }
}

/// A daily window with a replica floor; `end` before `start` wraps midnight.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScheduleWindow {
    pub start: f64,
    pub end: f64,
    pub replicas: u32,
}

impl ScheduleWindow {
    pub fn contains(&self, second_of_day: f64) -> bool {
        if self.start <= self.end {
            (self.start..self.end).contains(&second_of_day)
        } else {
            second_of_day >= self.start || second_of_day < self.end
        }
    }
}

fn clock(text: &str) -> Option<f64> {
    let (h, m) = text.split_once(':')?;
    let (h, m): (u32, u32) = (h.trim().parse().ok()?, m.trim().parse().ok()?);
    (h <= 24 && m < 60 && h * 60 + m <= 1440).then(|| f64::from(h * 3600 + m * 60))
}

fn parse_window(text: &str) -> Option<ScheduleWindow> {
    let (span, replicas) = text.split_once('=')?;
    let (start, end) = span.split_once('-')?;
    Some(ScheduleWindow {
        start: clock(start)?,
        end: clock(end)?,
        replicas: replicas.trim().parse().ok()?,
    })
}

/// Seconds in `90s`, `1.5m`, `250ms`, `2h` or a bare number: the one
/// duration grammar of policy knobs, trigger keys and load schedules.
/// Negative, non-finite and absurd (≥ 10⁹ s) values are refused.
pub fn parse_seconds(text: &str) -> Option<f64> {
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = text.strip_suffix('h') {
        (n, 3600.0)
    } else if let Some(n) = text.strip_suffix('d') {
        // Seasons are written in days.
        (n, 86_400.0)
    } else {
        (text, 1.0)
    };
    let v = number.trim().parse::<f64>().ok()? * scale;
    (v.is_finite() && (0.0..1e9).contains(&v)).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn bad_values_name_key_and_fix() {
        let m = meta(&[
            ("panicThreshold", "lots"),
            ("stableWindow", "3 weeks"),
            ("schedule", "8-18=4"),
        ]);
        let p = Params::new("stable-panic", &m);
        let e = p
            .number("panicThreshold", 2.0, 1.0, 100.0)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("panicThreshold") && e.contains("lots") && e.contains("between"),
            "{e}"
        );
        let e = p.seconds("stableWindow", 60.0).unwrap_err().to_string();
        assert!(e.contains("stableWindow") && e.contains("90s"), "{e}");
        let e = p.schedule("schedule").unwrap_err().to_string();
        assert!(e.contains("08:00-18:00=4"), "{e}");
    }

    #[test]
    fn defaults_and_parsing() {
        let m = meta(&[("a", "2m"), ("s", "22:00-06:00=2, 09:00-17:30=5")]);
        let p = Params::new("x", &m);
        assert_eq!(p.seconds("a", 1.0).unwrap(), 120.0);
        assert_eq!(p.seconds("missing", 7.0).unwrap(), 7.0);
        assert_eq!(parse_seconds("1d"), Some(86_400.0));
        assert_eq!(parse_seconds("0.5d"), Some(43_200.0));
        let s = p.schedule("s").unwrap();
        assert_eq!(s.len(), 2);
        assert!(
            s[0].contains(23.0 * 3600.0) && s[0].contains(3600.0) && !s[0].contains(12.0 * 3600.0)
        );
        assert!(s[1].contains(17.0 * 3600.0) && !s[1].contains(17.5 * 3600.0));
    }
}
