//! When requests are due: rate schedules (`--rate "0s:1,30s:8,90s:1"`) with Poisson
//! arrivals, and request traces replayed at a speed-up. Pure: the same flags and seed give
//! the same arrivals, so a test can count what a run should have sent.

use aim_engine::rng::Rng;
use aim_lab::synth::Lengths;
use aim_lab::trace::Arrival;

/// One step of a rate schedule: from `at` seconds on, `rate` requests per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    pub at: f64,
    pub rate: f64,
}

/// A piecewise-constant request rate.
#[derive(Debug, Clone, PartialEq)]
pub struct RateSchedule {
    steps: Vec<Step>,
}

const RATE_EXAMPLE: &str = "e.g. --rate \"0s:1,30s:8,90s:1\" (from 0 s 1 request/s, from 30 s 8/s, from 90 s 1/s) or --rate 5";

impl RateSchedule {
    /// Parses `TIME:RATE` steps separated by commas, or a bare rate for a constant one.
    /// Times take `ms`, `s`, `m` or `h` (a bare number is seconds); the first step starts
    /// at 0 and times increase.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err(format!("--rate is empty; {RATE_EXAMPLE}"));
        }
        if !text.contains(':') {
            let rate = parse_rate(text)
                .map_err(|why| format!("--rate {text:?}: {why}; {RATE_EXAMPLE}"))?;
            return Ok(RateSchedule {
                steps: vec![Step { at: 0.0, rate }],
            });
        }
        let mut steps: Vec<Step> = Vec::new();
        for (i, part) in text.split(',').enumerate() {
            let part = part.trim();
            let bad =
                |why: String| format!("--rate step {} ({part:?}): {why}; {RATE_EXAMPLE}", i + 1);
            let (time, rate) = part
                .split_once(':')
                .ok_or_else(|| bad("expected TIME:RATE".into()))?;
            let at = parse_duration(time).map_err(&bad)?;
            let rate = parse_rate(rate).map_err(&bad)?;
            match steps.last() {
                None if at != 0.0 => {
                    return Err(bad(format!("the first step must start at 0s, not {time}")));
                }
                Some(prev) if at <= prev.at => {
                    return Err(bad(format!(
                        "steps must be in increasing time order, but {time} is not after {}s",
                        prev.at
                    )));
                }
                _ => {}
            }
            steps.push(Step { at, rate });
        }
        Ok(RateSchedule { steps })
    }

    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// Where the schedule ends by itself: the start of a final zero-rate step.
    pub fn natural_end(&self) -> Option<f64> {
        self.steps.last().filter(|s| s.rate == 0.0).map(|s| s.at)
    }

    /// Requests the schedule expects over `[0, end)`: the integral of the rate.
    pub fn expected_count(&self, end: f64) -> f64 {
        self.segments(end)
            .map(|(from, to, rate)| (to - from) * rate)
            .sum()
    }

    /// `(from, to, rate)` for every step, clipped to `[0, end)`.
    fn segments(&self, end: f64) -> impl Iterator<Item = (f64, f64, f64)> + '_ {
        self.steps.iter().enumerate().filter_map(move |(i, s)| {
            let to = self.steps.get(i + 1).map_or(end, |n| n.at).min(end);
            (to > s.at).then_some((s.at, to, s.rate))
        })
    }

    /// Poisson arrivals over `[0, end)`. Exponential gaps are drawn at each step's rate
    /// and restart at the step's boundary, which is exact for a Poisson process because
    /// it is memoryless.
    pub fn poisson(&self, end: f64, lengths: &LengthSource, seed: u64) -> Vec<Arrival> {
        let mut gaps = Rng::new(seed ^ 0x10ad_0001);
        let mut sizes = lengths.sampler(seed);
        let mut out = Vec::new();
        for (from, to, rate) in self.segments(end) {
            if rate <= 0.0 {
                continue;
            }
            let mut t = from;
            loop {
                t += -(1.0 - gaps.next_f64()).ln() / rate;
                if t >= to {
                    break;
                }
                let (prompt_tokens, output_tokens) = sizes.draw();
                out.push(Arrival {
                    at: t,
                    prompt_tokens,
                    output_tokens,
                    hash_ids: Vec::new(),
                });
            }
        }
        out
    }
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 0.0 => Ok(r),
        _ => Err(format!(
            "rate {:?} is not a number of requests per second (0 or more)",
            text.trim()
        )),
    }
}

/// `90s`, `1.5m`, `250ms`, `2h` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<f64, String> {
    // The scaler's and the policies' grammar, so a schedule reads like a
    // trigger's window.
    aim_policy::parse_seconds(text)
        .ok_or_else(|| format!("time {text:?} is not a duration like 30s, 1.5m, 250ms or 2h"))
}

/// Where prompt and output lengths come from when no trace gives them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LengthSource {
    Fixed {
        prompt: u32,
        output: u32,
    },
    /// Drawn from the lab's fits to the Azure traces.
    Sampled(Lengths),
}

/// Draws `(prompt, output)` token counts, seeded.
pub struct LengthSampler {
    source: LengthSource,
    rng: Rng,
}

impl LengthSource {
    pub fn sampler(&self, seed: u64) -> LengthSampler {
        LengthSampler {
            source: *self,
            rng: Rng::new(seed ^ 0x10ad_0002),
        }
    }
}

impl LengthSampler {
    pub fn draw(&mut self) -> (u32, u32) {
        match self.source {
            LengthSource::Fixed { prompt, output } => (prompt, output),
            LengthSource::Sampled(l) => l.sample(&mut self.rng),
        }
    }
}

/// A trace's arrivals replayed `speedup` times faster from its first request on, cut at
/// `duration` wall seconds.
pub fn from_trace(arrivals: Vec<Arrival>, speedup: f64, duration: Option<f64>) -> Vec<Arrival> {
    let origin = arrivals.first().map_or(0.0, |a| a.at);
    arrivals
        .into_iter()
        .map(|a| Arrival {
            at: (a.at - origin) / speedup,
            ..a
        })
        .take_while(|a| duration.is_none_or(|d| a.at < d))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXED: LengthSource = LengthSource::Fixed {
        prompt: 10,
        output: 5,
    };

    #[test]
    fn steps_parse_with_units() {
        let s = RateSchedule::parse("0s:1, 30s:8,1.5m:0.5, 2h:0").unwrap();
        assert_eq!(
            s.steps(),
            &[
                Step { at: 0.0, rate: 1.0 },
                Step {
                    at: 30.0,
                    rate: 8.0
                },
                Step {
                    at: 90.0,
                    rate: 0.5
                },
                Step {
                    at: 7200.0,
                    rate: 0.0
                },
            ]
        );
        assert_eq!(s.natural_end(), Some(7200.0));
        let constant = RateSchedule::parse("5").unwrap();
        assert_eq!(constant.steps(), &[Step { at: 0.0, rate: 5.0 }]);
        assert_eq!(constant.natural_end(), None);
        assert_eq!(
            RateSchedule::parse("0:2,250ms:3").unwrap().steps()[1],
            Step {
                at: 0.25,
                rate: 3.0
            }
        );
    }

    #[test]
    fn garbage_is_refused_with_the_step_and_an_example() {
        for (text, wanted) in [
            ("", "--rate is empty"),
            ("fast", "rate \"fast\" is not a number"),
            ("0s:1,30s", "step 2 (\"30s\"): expected TIME:RATE"),
            ("0s:1,soon:3", "time \"soon\" is not a duration"),
            ("0s:-1", "step 1 (\"0s:-1\"): rate \"-1\""),
            ("0s:1,x:", "step 2"),
            ("5s:1", "the first step must start at 0s"),
            ("0s:1,30s:2,20s:1", "increasing time order"),
            ("0s:1,0s:2", "increasing time order"),
            ("0s:NaN", "is not a number"),
        ] {
            let e = RateSchedule::parse(text).unwrap_err();
            assert!(e.contains(wanted), "{text:?}: {e}");
            assert!(e.contains("e.g. --rate"), "{text:?} gives no example: {e}");
        }
    }

    #[test]
    fn poisson_count_follows_the_integral_of_the_rate() {
        let s = RateSchedule::parse("0s:10,100s:40,200s:0").unwrap();
        let end = s.natural_end().unwrap();
        assert_eq!(s.expected_count(end), 5000.0);
        let a = s.poisson(end, &FIXED, 7);
        // Poisson: σ = √5000 ≈ 71; 4σ either way.
        assert!((a.len() as f64 - 5000.0).abs() < 285.0, "{}", a.len());
        let first = a.iter().filter(|x| x.at < 100.0).count() as f64;
        assert!((first - 1000.0).abs() < 130.0, "first step {first}");
        assert!(a.windows(2).all(|w| w[0].at <= w[1].at));
        assert!(a.iter().all(|x| x.at < 200.0));
        assert!(
            a.iter()
                .all(|x| (x.prompt_tokens, x.output_tokens) == (10, 5))
        );
    }

    #[test]
    fn poisson_gaps_are_exponential() {
        let s = RateSchedule::parse("4").unwrap();
        let a = s.poisson(5000.0, &FIXED, 1);
        let gaps: Vec<f64> = a.windows(2).map(|w| w[1].at - w[0].at).collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
        assert!((mean - 0.25).abs() < 0.01, "mean gap {mean}");
        // An exponential's coefficient of variation is 1; evenly spaced sends would give 0.
        let cv = var.sqrt() / mean;
        assert!((cv - 1.0).abs() < 0.05, "cv {cv}");
    }

    #[test]
    fn seeds_reproduce_and_differ() {
        let s = RateSchedule::parse("0s:5,10s:0").unwrap();
        let lengths = LengthSource::Sampled(Lengths::Conversation);
        assert_eq!(s.poisson(10.0, &lengths, 3), s.poisson(10.0, &lengths, 3));
        assert_ne!(s.poisson(10.0, &lengths, 3), s.poisson(10.0, &lengths, 4));
        let a = s.poisson(10.0, &lengths, 3);
        let distinct: std::collections::BTreeSet<u32> = a.iter().map(|x| x.prompt_tokens).collect();
        assert!(distinct.len() > a.len() / 2, "sampled lengths vary");
    }

    #[test]
    fn zero_rate_steps_send_nothing() {
        let s = RateSchedule::parse("0s:0,10s:3,20s:0").unwrap();
        let a = s.poisson(100.0, &FIXED, 2);
        assert!(!a.is_empty());
        assert!(a.iter().all(|x| (10.0..20.0).contains(&x.at)));
        assert_eq!(s.expected_count(15.0), 15.0);
    }

    #[test]
    fn traces_speed_up_and_cut() {
        let trace: Vec<Arrival> = [100.0, 104.0, 108.0, 112.0]
            .iter()
            .map(|&at| Arrival {
                at,
                prompt_tokens: 7,
                output_tokens: 3,
                hash_ids: vec![1],
            })
            .collect();
        let all = from_trace(trace.clone(), 4.0, None);
        assert_eq!(
            all.iter().map(|a| a.at).collect::<Vec<_>>(),
            [0.0, 1.0, 2.0, 3.0]
        );
        assert_eq!(all[3].hash_ids, vec![1]);
        assert_eq!(from_trace(trace, 2.0, Some(4.0)).len(), 2);
    }
}
