//! The metrics pipeline between the replicas and the scaler: pods are
//! scraped (or push over OTel) every `scrape_interval`; the scaler only ever
//! sees those snapshots, so its view lags the truth by up to one interval
//! plus its query window.
//!
//! Every [`Signal`] is something a live deployment exports today, and
//! [`Signal::live_query`] names the scaler query that returns it: a policy
//! in the lab sees exactly one value per trigger, as a live trigger does.

use std::collections::VecDeque;

/// What a trigger queries, in vLLM metric terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Signal {
    /// `sum(vllm:num_requests_running)`.
    Running,
    /// `sum(vllm:num_requests_waiting)`.
    Waiting,
    /// Running plus waiting: one query, the sum of the two gauges' sums.
    InFlight,
    /// `avg(vllm:kv_cache_usage_perc)`.
    KvUsage,
    /// Finished requests per second over the last minute: the rate of
    /// vLLM's `vllm:request_success_total` counter. vLLM counts no
    /// arrivals, so this is the nearest live rate; it trails arrivals by a
    /// request's duration and saturates at what the replicas can finish.
    SuccessRate,
    /// Arrivals per second over the last minute, as a gateway in front of
    /// the pods would count them. No vLLM metric counts arrivals and aim
    /// has no gateway yet, so no live trigger can read this: it exists to
    /// measure what such a component would be worth, and no default row
    /// uses it.
    ArrivalRate,
    /// p90 TTFT over the last minute, seconds, as vLLM measures it (from
    /// when the engine received the request).
    TtftP90,
    /// p90 TPOT over the last minute, seconds.
    TpotP90,
    /// GPU utilisation in percent, averaged over the replicas: the share
    /// of the last scrape interval each replica's engine spent in steps,
    /// as AMD's device-metrics-exporter reports it (`gpu_gfx_activity`;
    /// the bed's pod runner derives it the same way, `docs/simulator.md`).
    GpuUtil,
}

impl Signal {
    /// The scaler trigger that returns this signal live: `metricQuery`,
    /// `operationOverTime` when it is not the trigger's own. `None` when no
    /// live deployment exports it today.
    pub fn live_query(self) -> Option<(&'static str, Option<&'static str>)> {
        Some(match self {
            Signal::ArrivalRate => return None,
            Signal::Running => ("sum(vllm:num_requests_running)", None),
            Signal::Waiting => ("sum(vllm:num_requests_waiting)", None),
            Signal::InFlight => (
                "sum(vllm:num_requests_running) + sum(vllm:num_requests_waiting)",
                None,
            ),
            Signal::KvUsage => ("avg(vllm:kv_cache_usage_perc)", None),
            Signal::SuccessRate => ("sum(vllm:request_success_total)", Some("rate")),
            Signal::TtftP90 => (
                "histogram_quantile(0.9, vllm:time_to_first_token_seconds)",
                Some("rate"),
            ),
            Signal::TpotP90 => (
                "histogram_quantile(0.9, vllm:time_per_output_token_seconds)",
                Some("rate"),
            ),
            Signal::GpuUtil => ("avg(gpu_gfx_activity)", None),
        })
    }
}

/// How the scaler reduces the scrapes inside its window (`operationOverTime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Operation {
    LastOne,
    Avg,
    Max,
}

/// One scrape of every ready pod.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Scrape {
    pub at: f64,
    pub running: f64,
    pub waiting: f64,
    pub kv_usage: f64,
    pub success_rate: f64,
    pub arrival_rate: f64,
    pub ttft_p90: f64,
    pub tpot_p90: f64,
    pub gpu_util: f64,
}

impl Scrape {
    pub fn get(&self, signal: Signal) -> f64 {
        match signal {
            Signal::Running => self.running,
            Signal::Waiting => self.waiting,
            Signal::InFlight => self.running + self.waiting,
            Signal::KvUsage => self.kv_usage,
            Signal::SuccessRate => self.success_rate,
            Signal::ArrivalRate => self.arrival_rate,
            Signal::TtftP90 => self.ttft_p90,
            Signal::TpotP90 => self.tpot_p90,
            Signal::GpuUtil => self.gpu_util,
        }
    }
}

/// Windows of raw observations from which scrapes are built, and the
/// scrapes the scaler holds.
#[derive(Debug, Clone, Default)]
pub struct Pipeline {
    scrapes: VecDeque<Scrape>,
    arrivals: VecDeque<f64>,
    successes: VecDeque<f64>,
    ttfts: VecDeque<(f64, f64)>,
    tpots: VecDeque<(f64, f64)>,
    /// How long the scaler keeps scrapes (its longest query window).
    pub retention: f64,
}

const LATENCY_WINDOW: f64 = 60.0;

pub fn p90(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let idx = ((v.len() as f64 * 0.9).ceil() as usize).clamp(1, v.len()) - 1;
    v[idx]
}

impl Pipeline {
    pub fn new(retention: f64) -> Self {
        Pipeline {
            retention,
            ..Default::default()
        }
    }

    pub fn arrival(&mut self, at: f64) {
        self.arrivals.push_back(at);
    }

    /// A request finished (vLLM's `request_success_total` counts it).
    pub fn success(&mut self, at: f64) {
        self.successes.push_back(at);
    }

    /// Arrivals per second over the last minute, as a gateway's request
    /// counter would give it (no vLLM metric counts arrivals).
    pub fn arrival_rate(&self, now: f64) -> f64 {
        let seen = self
            .arrivals
            .iter()
            .rev()
            .take_while(|&&t| t > now - LATENCY_WINDOW);
        seen.count() as f64 / LATENCY_WINDOW.min(now).max(1e-9)
    }

    pub fn first_token(&mut self, at: f64, ttft: f64) {
        self.ttfts.push_back((at, ttft));
    }

    pub fn finished(&mut self, at: f64, tpot: f64) {
        self.tpots.push_back((at, tpot));
    }

    /// Takes a scrape at `now` from the pods' gauges.
    pub fn scrape(&mut self, now: f64, running: f64, waiting: f64, kv_usage: f64, gpu_util: f64) {
        let from = now - LATENCY_WINDOW;
        while self.arrivals.front().is_some_and(|&t| t <= from) {
            self.arrivals.pop_front();
        }
        while self.successes.front().is_some_and(|&t| t <= from) {
            self.successes.pop_front();
        }
        // A rate over a window longer than the time seen so far divides by
        // the time seen: the pipeline starts at 0, and a rate that divided
        // by the full minute at t = 15 s would read a quarter of the load.
        let seen = LATENCY_WINDOW.min(now).max(1e-9);
        while self.ttfts.front().is_some_and(|p| p.0 <= from) {
            self.ttfts.pop_front();
        }
        while self.tpots.front().is_some_and(|p| p.0 <= from) {
            self.tpots.pop_front();
        }
        self.scrapes.push_back(Scrape {
            at: now,
            running,
            waiting,
            kv_usage,
            success_rate: self.successes.len() as f64 / seen,
            arrival_rate: self.arrivals.len() as f64 / seen,
            ttft_p90: p90(self.ttfts.iter().map(|p| p.1)),
            tpot_p90: p90(self.tpots.iter().map(|p| p.1)),
            gpu_util,
        });
        while self
            .scrapes
            .front()
            .is_some_and(|s| s.at < now - self.retention)
        {
            self.scrapes.pop_front();
        }
    }

    /// The scaler's answer for `signal` at `now`; `None` when no scrape is
    /// inside the window (the scaler reports missing data).
    pub fn query(
        &self,
        signal: Signal,
        operation: Operation,
        window: f64,
        now: f64,
    ) -> Option<f64> {
        let inside = self
            .scrapes
            .iter()
            .rev()
            .take_while(|s| s.at > now - window)
            .map(|s| s.get(signal));
        match operation {
            Operation::LastOne => self
                .scrapes
                .back()
                .filter(|s| s.at > now - window)
                .map(|s| s.get(signal)),
            Operation::Avg => {
                let (sum, n) = inside.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
                (n > 0).then(|| sum / n as f64)
            }
            Operation::Max => inside.reduce(f64::max),
        }
    }

    pub fn last(&self) -> Option<&Scrape> {
        self.scrapes.back()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_sees_only_scrapes_in_the_window() {
        let mut p = Pipeline::new(300.0);
        p.scrape(15.0, 2.0, 0.0, 0.1, 0.0);
        p.scrape(30.0, 4.0, 1.0, 0.2, 0.0);
        p.scrape(45.0, 9.0, 3.0, 0.3, 0.0);
        assert_eq!(
            p.query(Signal::Running, Operation::Avg, 120.0, 45.0),
            Some(5.0)
        );
        assert_eq!(
            p.query(Signal::InFlight, Operation::LastOne, 120.0, 45.0),
            Some(12.0)
        );
        assert_eq!(
            p.query(Signal::Running, Operation::Max, 20.0, 45.0),
            Some(9.0)
        );
        assert_eq!(p.query(Signal::Running, Operation::Avg, 10.0, 60.0), None);
    }

    #[test]
    fn rates_and_latency_percentiles_use_the_last_minute() {
        let mut p = Pipeline::new(300.0);
        for k in 0..120 {
            p.success(f64::from(k));
        }
        for k in 0..10 {
            p.first_token(100.0, f64::from(k));
        }
        p.scrape(119.5, 0.0, 0.0, 0.0, 0.0);
        let s = p.last().unwrap();
        assert!((s.success_rate - 1.0).abs() < 0.02, "{}", s.success_rate);
        assert_eq!(s.ttft_p90, 8.0);
    }

    #[test]
    fn an_early_rate_divides_by_the_time_seen_not_the_whole_window() {
        // One request a second from the start: at 15 s the rate is 1/s,
        // not 15/60.
        let mut p = Pipeline::new(300.0);
        for k in 0..15 {
            p.success(f64::from(k) + 0.5);
            p.arrival(f64::from(k) + 0.5);
        }
        p.scrape(15.0, 0.0, 0.0, 0.0, 0.0);
        assert!((p.last().unwrap().success_rate - 1.0).abs() < 1e-9);
        assert!((p.arrival_rate(15.0) - 1.0).abs() < 1e-9);
    }
}
