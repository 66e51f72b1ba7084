//! Synthetic workloads: a rate envelope λ(t), Gamma
//! renewal arrivals inside it, and fitted length distributions; plus the
//! llm-d staged-ramp episode (llm-d's published autoscaling benchmark),
//! and the adversarial shapes.

use aim_engine::rng::Rng;

use crate::trace::Arrival;

/// Log-normal fits to the Azure 2023 hours (their published percentiles): the median is
/// the p50 and σ follows from mean = median·exp(σ²/2). Clipped at the
/// observed maxima.
#[derive(Debug, Clone, Copy, PartialEq, clap::ValueEnum)]
pub enum Lengths {
    /// Azure conversation: input p50 1,020 / mean 1,155; output p50 129 / mean 211.
    Conversation,
    /// Azure code: input p50 1,469 / mean 2,048; output p50 13 / mean 28.
    Code,
    /// llm-d "Prefill-Heavy": 4,000 in, 1,000 out.
    PrefillHeavy,
}

struct LogNormal {
    median: f64,
    sigma: f64,
    max: f64,
}

impl LogNormal {
    fn fit(median: f64, mean: f64, max: f64) -> Self {
        LogNormal {
            median,
            sigma: (2.0 * (mean / median).ln()).sqrt(),
            max,
        }
    }

    fn sample(&self, rng: &mut Rng) -> u32 {
        let v = self.median * (self.sigma * rng.normal()).exp();
        v.round().clamp(1.0, self.max) as u32
    }
}

impl Lengths {
    /// A request arriving at `at` with lengths drawn from this mix.
    pub fn arrival(self, at: f64, rng: &mut Rng) -> Arrival {
        let (prompt_tokens, output_tokens) = self.sample(rng);
        Arrival {
            at,
            prompt_tokens,
            output_tokens,
            hash_ids: Vec::new(),
        }
    }

    pub fn sample(self, rng: &mut Rng) -> (u32, u32) {
        match self {
            Lengths::Conversation => (
                LogNormal::fit(1020.0, 1155.0, 14_050.0).sample(rng),
                LogNormal::fit(129.0, 211.0, 1000.0).sample(rng),
            ),
            Lengths::Code => (
                LogNormal::fit(1469.0, 2048.0, 7437.0).sample(rng),
                LogNormal::fit(13.0, 28.0, 1899.0).sample(rng),
            ),
            Lengths::PrefillHeavy => (4000, 1000),
        }
    }
}

/// Gamma(shape, 1/shape): mean 1, coefficient of variation 1/√shape.
/// Marsaglia–Tsang, with the U^(1/k) boost for shape < 1.
pub fn gamma_unit_mean(shape: f64, rng: &mut Rng) -> f64 {
    fn standard(k: f64, rng: &mut Rng) -> f64 {
        if k < 1.0 {
            let u = rng.next_f64().max(f64::MIN_POSITIVE);
            return standard(k + 1.0, rng) * u.powf(1.0 / k);
        }
        let d = k - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = rng.normal();
            let v = (1.0 + c * x).powi(3);
            if v <= 0.0 {
                continue;
            }
            let u = rng.next_f64().max(f64::MIN_POSITIVE);
            if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
                return d * v;
            }
        }
    }
    standard(shape, rng) / shape
}

/// A sinusoidal daily envelope with the given mean and peak/trough ratio,
/// troughs at t = 0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Envelope {
    pub mean_rps: f64,
    pub peak_to_trough: f64,
    pub period_s: f64,
}

impl Envelope {
    pub fn rate(&self, t: f64) -> f64 {
        let a = (self.peak_to_trough - 1.0) / (self.peak_to_trough + 1.0);
        let phase = 2.0 * std::f64::consts::PI * t / self.period_s;
        self.mean_rps * (1.0 - a * phase.cos())
    }
}

/// Gamma renewal arrivals, time-rescaled by the envelope: unit-mean gaps
/// in "operational time" are stretched by 1/λ(t), so the rate follows λ
/// and the burstiness (CV of gaps) stays `cv`.
pub fn enveloped_gamma(
    envelope: Envelope,
    duration_s: f64,
    cv: f64,
    lengths: Lengths,
    seed: u64,
) -> Vec<Arrival> {
    let mut rng = Rng::new(seed ^ 0xd1a7_0001);
    let shape = 1.0 / (cv * cv).max(1e-6);
    let mut out = Vec::new();
    let mut t = 0.0;
    loop {
        t += gamma_unit_mean(shape, &mut rng) / envelope.rate(t).max(1e-9);
        if t >= duration_s {
            return out;
        }
        out.push(lengths.arrival(t, &mut rng));
    }
}

/// llm-d's staged ramp: 2 → 4 → 6 → 8 → 10 → 4 → 1 rps over stages of
/// 330/360/360/360/360/360/300 s (12,480 requests expected), Poisson
/// arrivals, 4,000/1,000 tokens.
pub fn llmd_ramp(seed: u64) -> Vec<Arrival> {
    const STAGES: [(f64, f64); 7] = [
        (2.0, 330.0),
        (4.0, 360.0),
        (6.0, 360.0),
        (8.0, 360.0),
        (10.0, 360.0),
        (4.0, 360.0),
        (1.0, 300.0),
    ];
    let mut rng = Rng::new(seed ^ 0x11d0_0002);
    let mut out = Vec::new();
    let mut start = 0.0;
    for (rate, length) in STAGES {
        let mut t = start;
        loop {
            t += gamma_unit_mean(1.0, &mut rng) / rate;
            if t >= start + length {
                break;
            }
            out.push(Arrival {
                at: t,
                prompt_tokens: 4000,
                output_tokens: 1000,
                hash_ids: Vec::new(),
            });
        }
        start += length;
    }
    out
}

/// Workloads built to break autoscalers rather than to imitate a trace:
/// each is a rate shape λ(t) over the episode, scaled so its mean is the
/// asked rate, with Poisson arrivals (thinning) and the asked lengths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Adversarial {
    /// A sudden 4× step up at a third of the episode, and down at two thirds.
    Step,
    /// 30 s bursts at 4× the base rate every 300 s: shorter than a cold start.
    ShortBursts,
    /// A whole day (night trough, morning rise, midday dip, evening peak)
    /// compressed into the episode.
    CompressedDay,
    /// Linear ramps between plateaus: up in two stages, then down in two.
    PlateauRamp,
}

impl Adversarial {
    /// The shape at `x` = t / duration, before scaling to the mean.
    fn shape(self, x: f64, duration_s: f64) -> f64 {
        match self {
            Adversarial::Step => {
                if (1.0 / 3.0..2.0 / 3.0).contains(&x) {
                    4.0
                } else {
                    1.0
                }
            }
            Adversarial::ShortBursts => {
                if (x * duration_s).rem_euclid(300.0) >= 270.0 {
                    4.0
                } else {
                    1.0
                }
            }
            Adversarial::CompressedDay => {
                let phase = 2.0 * std::f64::consts::PI * x;
                (1.0 - 0.55 * phase.cos() - 0.25 * (2.0 * phase).cos()).max(0.05)
            }
            Adversarial::PlateauRamp => {
                const KNOTS: [(f64, f64); 9] = [
                    (0.0, 0.3),
                    (0.1, 0.3),
                    (0.2, 1.0),
                    (0.35, 1.0),
                    (0.45, 1.8),
                    (0.6, 1.8),
                    (0.7, 0.8),
                    (0.85, 0.8),
                    (1.0, 0.3),
                ];
                let i = KNOTS
                    .partition_point(|k| k.0 <= x)
                    .clamp(1, KNOTS.len() - 1);
                let ((x0, y0), (x1, y1)) = (KNOTS[i - 1], KNOTS[i]);
                y0 + (y1 - y0) * ((x - x0) / (x1 - x0)).clamp(0.0, 1.0)
            }
        }
    }

    /// The arrivals: mean `mean_rps` over `duration_s`, drawn from `seed`.
    pub fn arrivals(
        self,
        mean_rps: f64,
        duration_s: f64,
        lengths: Lengths,
        seed: u64,
    ) -> Vec<Arrival> {
        const GRID: usize = 3600;
        let grid: Vec<f64> = (0..GRID)
            .map(|k| self.shape((k as f64 + 0.5) / GRID as f64, duration_s))
            .collect();
        let mean_shape = grid.iter().sum::<f64>() / GRID as f64;
        let peak_shape = grid.iter().copied().fold(0.0, f64::max);
        let scale = mean_rps / mean_shape;
        let max_rate = peak_shape * scale;
        let mut rng = Rng::new(seed ^ 0xad5e_0003);
        let mut out = Vec::new();
        let mut t = 0.0;
        loop {
            t += gamma_unit_mean(1.0, &mut rng) / max_rate;
            if t >= duration_s {
                return out;
            }
            // Thinning: keep a candidate with probability λ(t) / λ_max.
            let keep = self.shape(t / duration_s, duration_s) * scale / max_rate;
            if rng.next_f64() >= keep {
                continue;
            }
            out.push(lengths.arrival(t, &mut rng));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cv(gaps: &[f64]) -> f64 {
        let m = gaps.iter().sum::<f64>() / gaps.len() as f64;
        let v = gaps.iter().map(|g| (g - m).powi(2)).sum::<f64>() / gaps.len() as f64;
        v.sqrt() / m
    }

    #[test]
    fn gamma_has_unit_mean_and_the_asked_cv() {
        for target in [0.5, 1.0, 3.0] {
            let mut rng = Rng::new(3);
            let xs: Vec<f64> = (0..40_000)
                .map(|_| gamma_unit_mean(1.0 / (target * target), &mut rng))
                .collect();
            let mean = xs.iter().sum::<f64>() / xs.len() as f64;
            assert!((mean - 1.0).abs() < 0.05, "mean {mean}");
            assert!(
                (cv(&xs) - target).abs() < 0.1 * target,
                "cv {} vs {target}",
                cv(&xs)
            );
        }
    }

    #[test]
    fn envelope_shapes_the_rate() {
        let env = Envelope {
            mean_rps: 5.0,
            peak_to_trough: 4.0,
            period_s: 3600.0,
        };
        let a = enveloped_gamma(env, 3600.0, 1.0, Lengths::Conversation, 1);
        let trough = a.iter().filter(|x| x.at < 300.0 || x.at > 3300.0).count() as f64 / 600.0;
        let peak = a
            .iter()
            .filter(|x| (1500.0..2100.0).contains(&x.at))
            .count() as f64
            / 600.0;
        assert!((a.len() as f64 / 3600.0 - 5.0).abs() < 0.5, "{}", a.len());
        assert!(peak / trough > 3.0, "peak {peak} trough {trough}");
    }

    #[test]
    fn fitted_lengths_match_their_medians() {
        let mut rng = Rng::new(9);
        let mut inputs: Vec<u32> = (0..20_001)
            .map(|_| Lengths::Conversation.sample(&mut rng).0)
            .collect();
        inputs.sort_unstable();
        let median = f64::from(inputs[10_000]);
        assert!((median - 1020.0).abs() < 40.0, "{median}");
    }

    fn rate_between(a: &[Arrival], from: f64, to: f64) -> f64 {
        a.iter().filter(|x| x.at >= from && x.at < to).count() as f64 / (to - from)
    }

    #[test]
    fn adversarial_shapes_have_the_asked_mean_and_their_shape() {
        let d = 3600.0;
        for kind in [
            Adversarial::Step,
            Adversarial::ShortBursts,
            Adversarial::CompressedDay,
            Adversarial::PlateauRamp,
        ] {
            let a = kind.arrivals(4.0, d, Lengths::Conversation, 7);
            let mean = a.len() as f64 / d;
            assert!((mean - 4.0).abs() < 0.25, "{kind:?}: mean {mean}");
            assert_eq!(
                a,
                kind.arrivals(4.0, d, Lengths::Conversation, 7),
                "reproducible"
            );
        }
        let step = Adversarial::Step.arrivals(4.0, d, Lengths::Conversation, 1);
        let ratio = rate_between(&step, 1300.0, 2300.0) / rate_between(&step, 0.0, 1100.0);
        assert!((3.0..5.0).contains(&ratio), "step ratio {ratio}");
        let bursts = Adversarial::ShortBursts.arrivals(4.0, d, Lengths::Conversation, 1);
        let (inside, outside): (Vec<_>, Vec<_>) =
            bursts.iter().partition(|x| x.at.rem_euclid(300.0) >= 270.0);
        let ratio = (inside.len() as f64 / 360.0) / (outside.len() as f64 / 3240.0);
        assert!((3.0..5.0).contains(&ratio), "burst ratio {ratio}");
    }

    #[test]
    fn ramp_has_the_published_request_count() {
        let n = llmd_ramp(5).len() as f64;
        assert!((n - 12_480.0).abs() < 3.0 * 12_480f64.sqrt(), "{n}");
    }
}
