//! Trace fidelity: the statistics that say whether a
//! synthetic workload stresses an autoscaler the way its source trace does.
//!
//! An autoscaler sees arrivals through windows (a scrape interval, a query
//! window, a cold start), so what matters is how the request count varies
//! at each of those time scales, how the load at one minute predicts the
//! next, and how much work each request carries. Two traces with the same
//! mean rate can differ in every one of these, and a policy tuned on one
//! then fails on the other.
//!
//! Conventions: counts are taken over whole windows from the first arrival;
//! the partial window at the end is left out, because a window that is
//! only partly observed is not a sample of the same quantity and, being
//! short, inflates the variance. Variances are population variances.

use crate::trace::Arrival;

/// Windows (seconds) for the index of dispersion: a second (what a
/// replica's batch sees), 10 s (a scrape), a minute (a query window, a
/// `rate()`), ten minutes (longer than any cold start).
pub const DISPERSION_WINDOWS_S: [f64; 4] = [1.0, 10.0, 60.0, 600.0];

/// Lags (minutes) for the autocorrelation of per-minute counts: the next
/// minute (what a reactive policy bets on), the next hour (what a
/// predictive policy's forecast horizon and a T_w-long plan rely on), the
/// same minute tomorrow (the seasonal term).
pub const AUTOCORRELATION_LAGS_MIN: [usize; 3] = [1, 60, 1440];

/// The per-minute counts' extremes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Minutes {
    /// Whole minutes observed.
    pub count: usize,
    pub peak: u64,
    /// The quietest minute; 0 when some minute had no requests.
    pub trough: u64,
    pub mean: f64,
}

impl Minutes {
    /// Peak over mean: the headroom a static pool sized at the peak
    /// carries on average, so the most any autoscaler can save.
    pub fn peak_to_mean(&self) -> f64 {
        self.peak as f64 / self.mean
    }

    /// Peak over trough, or `None` for "∞" when a minute is empty: how far
    /// the pool has to travel between its smallest and largest size. An
    /// empty minute next to a busy one is the scale-from-low case that
    /// costs SLO, which is why it is reported as such rather than hidden
    /// in a large finite ratio.
    pub fn peak_to_trough(&self) -> Option<f64> {
        (self.trough > 0).then(|| self.peak as f64 / self.trough as f64)
    }
}

/// Mean and two quantiles of a length distribution, for reading next to
/// the KS distance (which says *that* two distributions differ, not how).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LengthSummary {
    pub mean: f64,
    pub p50: u32,
    pub p90: u32,
}

impl LengthSummary {
    fn of(mut values: Vec<u32>) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        values.sort_unstable();
        let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / values.len() as f64;
        Some(LengthSummary {
            mean,
            p50: quantile(&values, 0.5),
            p90: quantile(&values, 0.9),
        })
    }
}

/// Nearest-rank quantile of sorted, non-empty values.
fn quantile(sorted: &[u32], q: f64) -> u32 {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The fidelity statistics of one set of arrivals.
#[derive(Debug, Clone, PartialEq)]
pub struct Fidelity {
    pub requests: usize,
    /// First to last arrival, seconds.
    pub span_s: f64,
    /// Requests over the span; `None` when the span is 0.
    pub mean_rps: Option<f64>,
    /// Standard deviation over mean of the gaps between arrivals. 1 for
    /// Poisson; far above 1 means requests come in clumps that a
    /// per-minute average hides. `None` with fewer than 3 arrivals or no
    /// time between them.
    pub interarrival_cv: Option<f64>,
    /// Variance over mean of the request count per window, for each of
    /// [`DISPERSION_WINDOWS_S`]. 1 at every window for Poisson; growing
    /// with the window means the rate itself drifts (a doubly stochastic
    /// process), which is what makes a scaler's window choice matter.
    /// `None` with fewer than two whole windows.
    pub dispersion: [Option<f64>; 4],
    /// `None` with fewer than two whole minutes.
    pub minutes: Option<Minutes>,
    /// Autocorrelation of per-minute counts at each of
    /// [`AUTOCORRELATION_LAGS_MIN`]: near 1, the recent past predicts the
    /// load (reactive and predictive policies work); near 0, it does not;
    /// negative, the load swings back. `None` unless the trace spans at
    /// least twice the lag (so at least half the minutes have a partner)
    /// and the counts vary at all.
    pub autocorrelation: [Option<f64>; 3],
    /// Prompt tokens: they set prefill time, hence TTFT, and KV usage.
    pub input: Option<LengthSummary>,
    /// Output tokens: they set how long a request holds a batch slot.
    pub output: Option<LengthSummary>,
}

impl Fidelity {
    pub fn of(arrivals: &[Arrival]) -> Self {
        let mut times: Vec<f64> = arrivals.iter().map(|a| a.at).collect();
        times.sort_by(f64::total_cmp);
        let span_s = match (times.first(), times.last()) {
            (Some(first), Some(last)) => last - first,
            _ => 0.0,
        };
        let per_minute = window_counts(&times, 60.0);
        Fidelity {
            requests: arrivals.len(),
            span_s,
            mean_rps: (span_s > 0.0).then(|| arrivals.len() as f64 / span_s),
            interarrival_cv: interarrival_cv(&times),
            dispersion: DISPERSION_WINDOWS_S.map(|w| dispersion(&window_counts(&times, w))),
            minutes: (per_minute.len() >= 2).then(|| Minutes {
                count: per_minute.len(),
                peak: per_minute.iter().copied().max().unwrap_or(0),
                trough: per_minute.iter().copied().min().unwrap_or(0),
                mean: per_minute.iter().sum::<u64>() as f64 / per_minute.len() as f64,
            }),
            autocorrelation: AUTOCORRELATION_LAGS_MIN.map(|lag| autocorrelation(&per_minute, lag)),
            input: LengthSummary::of(arrivals.iter().map(|a| a.prompt_tokens).collect()),
            output: LengthSummary::of(arrivals.iter().map(|a| a.output_tokens).collect()),
        }
    }

    /// A one-column markdown table.
    pub fn markdown(&self, label: &str) -> String {
        let mut out = format!("| statistic | {label} |\n| --- | --- |\n");
        for (name, value) in self.rows() {
            out.push_str(&format!("| {name} | {value} |\n"));
        }
        out
    }

    /// (statistic, formatted value) in the order of the tables.
    fn rows(&self) -> Vec<(String, String)> {
        let mut rows = vec![
            ("requests".to_string(), thousands(self.requests)),
            ("span".into(), format!("{:.1} min", self.span_s / 60.0)),
            ("mean rate (requests/s)".into(), opt(self.mean_rps, fixed2)),
            ("inter-arrival CV".into(), opt(self.interarrival_cv, sig)),
        ];
        for (w, d) in DISPERSION_WINDOWS_S.iter().zip(self.dispersion) {
            rows.push((
                format!("index of dispersion (var/mean), {w} s windows"),
                d.map_or_else(|| "n/a (< 2 whole windows)".into(), sig),
            ));
        }
        let m = self.minutes;
        rows.push((
            "per-minute peak / mean".into(),
            m.map_or_else(
                || "n/a (< 2 whole minutes)".into(),
                |m| fixed2(m.peak_to_mean()),
            ),
        ));
        rows.push((
            "per-minute peak / trough".into(),
            m.map_or_else(
                || "n/a (< 2 whole minutes)".into(),
                |m| match m.peak_to_trough() {
                    Some(r) => format!("{} ({} / {})", fixed2(r), m.peak, m.trough),
                    None => format!("∞ ({} / 0: an empty minute)", m.peak),
                },
            ),
        ));
        for (lag, r) in AUTOCORRELATION_LAGS_MIN.iter().zip(self.autocorrelation) {
            let name = if lag % 60 == 0 {
                format!("autocorrelation of per-minute counts, lag {} h", lag / 60)
            } else {
                format!("autocorrelation of per-minute counts, lag {lag} min")
            };
            let needs = if lag % 60 == 0 {
                format!("{} h", 2 * lag / 60)
            } else {
                format!("{} min", 2 * lag)
            };
            rows.push((
                name,
                r.map_or_else(|| format!("n/a (needs ≥ {needs})"), fixed2),
            ));
        }
        let lengths = |s: Option<LengthSummary>| {
            s.map_or_else(
                || "n/a".into(),
                |s| format!("{:.0} / {} / {}", s.mean, s.p50, s.p90),
            )
        };
        rows.push(("input tokens mean / p50 / p90".into(), lengths(self.input)));
        rows.push((
            "output tokens mean / p50 / p90".into(),
            lengths(self.output),
        ));
        rows
    }
}

/// A synthetic set next to its source.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub source: Fidelity,
    pub synthetic: Fidelity,
    /// Two-sample KS distance D between the prompt-token distributions.
    pub ks_input: Option<f64>,
    /// Two-sample KS distance D between the output-token distributions.
    pub ks_output: Option<f64>,
}

impl Comparison {
    pub fn new(source: &[Arrival], synthetic: &[Arrival]) -> Self {
        let tokens =
            |set: &[Arrival], f: fn(&Arrival) -> u32| set.iter().map(f).collect::<Vec<_>>();
        Comparison {
            source: Fidelity::of(source),
            synthetic: Fidelity::of(synthetic),
            ks_input: ks_distance(
                &tokens(source, |a| a.prompt_tokens),
                &tokens(synthetic, |a| a.prompt_tokens),
            ),
            ks_output: ks_distance(
                &tokens(source, |a| a.output_tokens),
                &tokens(synthetic, |a| a.output_tokens),
            ),
        }
    }

    /// A two-column markdown table; the KS rows have their value in the
    /// synthetic column (a distance *to* the source).
    pub fn markdown(&self, source_label: &str, synthetic_label: &str) -> String {
        let mut out =
            format!("| statistic | {source_label} | {synthetic_label} |\n| --- | --- | --- |\n");
        for ((name, source), (_, synthetic)) in
            self.source.rows().into_iter().zip(self.synthetic.rows())
        {
            out.push_str(&format!("| {name} | {source} | {synthetic} |\n"));
        }
        for (name, d) in [
            ("input tokens", self.ks_input),
            ("output tokens", self.ks_output),
        ] {
            out.push_str(&format!(
                "| KS distance D to the source, {name} | — | {} |\n",
                opt(d, fixed2)
            ));
        }
        out
    }
}

/// Request counts in whole `window_s` windows from the first arrival;
/// `times` sorted.
fn window_counts(times: &[f64], window_s: f64) -> Vec<u64> {
    let (Some(&first), Some(&last)) = (times.first(), times.last()) else {
        return Vec::new();
    };
    let whole = ((last - first) / window_s).floor() as usize;
    let mut counts = vec![0u64; whole];
    for &t in times {
        let i = ((t - first) / window_s).floor() as usize;
        if let Some(c) = counts.get_mut(i) {
            *c += 1;
        }
    }
    counts
}

fn mean_and_variance(xs: impl ExactSizeIterator<Item = f64> + Clone) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.clone().sum::<f64>() / n;
    let variance = xs.map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    (mean, variance)
}

fn dispersion(counts: &[u64]) -> Option<f64> {
    if counts.len() < 2 {
        return None;
    }
    let (mean, variance) = mean_and_variance(counts.iter().map(|&c| c as f64));
    (mean > 0.0).then(|| variance / mean)
}

fn interarrival_cv(times: &[f64]) -> Option<f64> {
    if times.len() < 3 {
        return None;
    }
    let gaps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    let (mean, variance) = mean_and_variance(gaps.iter().copied());
    (mean > 0.0).then(|| variance.sqrt() / mean)
}

/// The correlation between each minute's count and the count `lag`
/// minutes later (Pearson over the n − lag pairs). Unlike the textbook
/// estimator Σ (x_t − m)(x_{t+k} − m) / Σ (x_t − m)², it is not shrunk by
/// (n − k)/n, so a one-hour source and a two-day synthetic are compared on
/// the same footing.
fn autocorrelation(series: &[u64], lag: usize) -> Option<f64> {
    // Twice the lag, so at least half the minutes have a partner; less one
    // minute, because a trace that lasts exactly twice the lag loses its
    // last, partial minute.
    if lag == 0 || series.len() + 1 < 2 * lag || series.len() < lag + 2 {
        return None;
    }
    let xs: Vec<f64> = series.iter().map(|&c| c as f64).collect();
    let (early, late) = (&xs[..xs.len() - lag], &xs[lag..]);
    let (mean_e, var_e) = mean_and_variance(early.iter().copied());
    let (mean_l, var_l) = mean_and_variance(late.iter().copied());
    if var_e <= 0.0 || var_l <= 0.0 {
        return None;
    }
    let covariance = early
        .iter()
        .zip(late)
        .map(|(e, l)| (e - mean_e) * (l - mean_l))
        .sum::<f64>()
        / early.len() as f64;
    Some(covariance / (var_e * var_l).sqrt())
}

/// Two-sample Kolmogorov–Smirnov statistic: the largest gap between the
/// two empirical CDFs, 0 for identical samples and 1 for samples that do
/// not overlap. It catches differences in shape (a step, a cap, a heavy
/// tail) that matching means and medians would miss. `None` if either
/// sample is empty.
pub fn ks_distance(a: &[u32], b: &[u32]) -> Option<f64> {
    if a.is_empty() || b.is_empty() {
        return None;
    }
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    a.sort_unstable();
    b.sort_unstable();
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let (mut i, mut j, mut d) = (0, 0, 0.0f64);
    while i < a.len() && j < b.len() {
        // Step both CDFs past every copy of the smaller value before
        // comparing them, so tied values count at once on both sides.
        let v = a[i].min(b[j]);
        while i < a.len() && a[i] == v {
            i += 1;
        }
        while j < b.len() && b[j] == v {
            j += 1;
        }
        d = d.max((i as f64 / na - j as f64 / nb).abs());
    }
    Some(d)
}

fn opt(v: Option<f64>, f: fn(f64) -> String) -> String {
    v.map_or_else(|| "n/a".into(), f)
}

fn fixed2(v: f64) -> String {
    format!("{v:.2}")
}

/// About three significant figures, as the reference quotes them.
fn sig(v: f64) -> String {
    match v.abs() {
        x if x >= 100.0 => format!("{v:.0}"),
        x if x >= 10.0 => format!("{v:.1}"),
        _ => format!("{v:.2}"),
    }
}

fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use aim_engine::rng::Rng;

    fn at(times: impl IntoIterator<Item = f64>) -> Vec<Arrival> {
        times
            .into_iter()
            .map(|t| Arrival {
                at: t,
                prompt_tokens: 100,
                output_tokens: 10,
                hash_ids: Vec::new(),
            })
            .collect()
    }

    fn poisson(rate: f64, duration: f64, seed: u64) -> Vec<Arrival> {
        let mut rng = Rng::new(seed);
        let mut t = 0.0;
        let mut times = Vec::new();
        loop {
            t += -(1.0 - rng.next_f64()).ln() / rate;
            if t >= duration {
                return at(times);
            }
            times.push(t);
        }
    }

    /// `per_minute[k]` arrivals spread evenly over minute k.
    fn minutes(per_minute: &[u32]) -> Vec<Arrival> {
        at(per_minute.iter().enumerate().flat_map(|(k, &n)| {
            (0..n).map(move |i| 60.0 * k as f64 + 60.0 * (f64::from(i) + 0.5) / f64::from(n))
        }))
    }

    #[test]
    fn poisson_is_cv_one_and_dispersion_one_at_every_window() {
        let f = Fidelity::of(&poisson(5.0, 40_000.0, 11));
        let cv = f.interarrival_cv.unwrap();
        assert!((cv - 1.0).abs() < 0.03, "cv {cv}");
        assert!((f.mean_rps.unwrap() - 5.0).abs() < 0.1);
        // Looser at long windows: 600 s gives only 66 windows.
        for ((w, d), tolerance) in DISPERSION_WINDOWS_S
            .iter()
            .zip(f.dispersion)
            .zip([0.05, 0.1, 0.25, 0.5])
        {
            let d = d.unwrap();
            assert!((d - 1.0).abs() < tolerance, "{w} s: {d}");
        }
        let r1 = f.autocorrelation[0].unwrap();
        assert!(r1.abs() < 0.15, "lag 1: {r1}");
        assert!(f.minutes.unwrap().peak_to_trough().is_some());
    }

    #[test]
    fn busy_and_empty_minutes_are_overdispersed_with_an_empty_trough() {
        // 300 requests in every even minute, none in the odd ones, 2 h.
        let counts: Vec<u32> = (0..120).map(|k| if k % 2 == 0 { 300 } else { 0 }).collect();
        let f = Fidelity::of(&minutes(&counts));
        let d = f.dispersion;
        // At 1 s: 5 or 0 per second → var/mean 2.5; at 60 s: 300 or 0 → 150;
        // at 600 s every window holds five busy minutes → 0.
        assert!((d[0].unwrap() - 2.5).abs() < 0.1, "{d:?}");
        assert!((d[2].unwrap() - 150.0).abs() < 3.0, "{d:?}");
        assert!(d[3].unwrap() < 0.1, "{d:?}");
        let m = f.minutes.unwrap();
        assert_eq!((m.peak, m.trough), (300, 0));
        assert_eq!(m.peak_to_trough(), None);
        assert!((m.peak_to_mean() - 2.0).abs() < 0.05);
        assert!(f.autocorrelation[0].unwrap() < -0.9, "{f:?}");
        assert!(f.markdown("x").contains("∞"));
        // The gaps alternate between 0.2 s and a minute: very bursty.
        assert!(f.interarrival_cv.unwrap() > 3.0);
    }

    #[test]
    fn autocorrelation_follows_a_periodic_load() {
        // A two-hour period over six hours: lag 1 min is nearly the same
        // load (positive), lag 60 min is half a period (negative).
        let counts: Vec<u32> = (0..360)
            .map(|k| (200.0 + 150.0 * (2.0 * std::f64::consts::PI * k as f64 / 120.0).sin()) as u32)
            .collect();
        let f = Fidelity::of(&minutes(&counts));
        let [lag1, lag60, lag24h] = f.autocorrelation;
        assert!(lag1.unwrap() > 0.9, "{lag1:?}");
        assert!(lag60.unwrap() < -0.95, "{lag60:?}");
        assert_eq!(lag24h, None, "six hours cannot show a 24 h lag");
        assert!(f.markdown("x").contains("n/a (needs ≥ 48 h)"));
        // Two days of a daily cycle: an hour later is nearly the same load
        // (cos 15° ≈ 0.97), and so is the same minute tomorrow.
        let days: Vec<u32> = (0..2880)
            .map(|k| (20.0 + 15.0 * (2.0 * std::f64::consts::PI * k as f64 / 1440.0).sin()) as u32)
            .collect();
        let [_, lag60, lag24h] = Fidelity::of(&minutes(&days)).autocorrelation;
        assert!(lag60.unwrap() > 0.9, "{lag60:?}");
        assert!(lag24h.unwrap() > 0.95, "{lag24h:?}");
    }

    #[test]
    fn the_partial_last_window_is_left_out() {
        // Two full minutes of 60, then one request 30 s into the third.
        let mut a = minutes(&[60, 60]);
        a.extend(at([150.0]));
        let f = Fidelity::of(&a);
        let m = f.minutes.unwrap();
        assert_eq!((m.count, m.peak, m.trough), (2, 60, 60));
        assert_eq!(f.dispersion[2], Some(0.0));
        assert_eq!(f.dispersion[3], None, "no whole 600 s window");
    }

    #[test]
    fn ks_distance_of_identical_disjoint_and_tied_samples() {
        let a = [5, 1, 3, 3, 9];
        assert_eq!(ks_distance(&a, &a), Some(0.0));
        assert_eq!(ks_distance(&[1, 2, 3], &[10, 20]), Some(1.0));
        assert_eq!(ks_distance(&[1, 2, 3, 4], &[3, 4, 5, 6]), Some(0.5));
        // Ties: F_a(1) = 2/3, F_b(1) = 1/3, equal from 2 on.
        let d = ks_distance(&[1, 1, 2], &[1, 2, 2]).unwrap();
        assert!((d - 1.0 / 3.0).abs() < 1e-12, "{d}");
        assert_eq!(ks_distance(&[], &[1]), None);
    }

    #[test]
    fn comparison_puts_the_ks_distances_in_the_table() {
        let source = poisson(2.0, 600.0, 1);
        let mut synthetic = poisson(2.0, 600.0, 2);
        for a in &mut synthetic {
            a.output_tokens = 1000;
        }
        let c = Comparison::new(&source, &synthetic);
        assert_eq!(c.ks_input, Some(0.0));
        assert_eq!(c.ks_output, Some(1.0));
        let table = c.markdown("src", "syn");
        assert!(table.starts_with("| statistic | src | syn |"), "{table}");
        assert!(
            table.contains("| KS distance D to the source, output tokens | — | 1.00 |"),
            "{table}"
        );
        assert_eq!(
            table.lines().count(),
            2 + c.source.rows().len() + 2,
            "{table}"
        );
    }

    #[test]
    fn too_short_traces_say_not_available() {
        let f = Fidelity::of(&at([0.0, 1.0]));
        assert_eq!(f.interarrival_cv, None);
        assert_eq!(f.minutes, None);
        assert_eq!(f.dispersion[1], None);
        assert!(f.markdown("x").contains("n/a (< 2 whole minutes)"));
        assert_eq!(thousands(19_366), "19,366");
        assert_eq!(thousands(999), "999");
    }
}
