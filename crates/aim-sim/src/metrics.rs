//! vLLM V1's `vllm:` metrics, derived from engine events and written in the Prometheus text
//! format with vLLM's names, types, labels (`model_name`, `engine`) and bucket boundaries
//! (vLLM's `vllm/v1/metrics/loggers.py`). Values are observed where vLLM observes them
//! (`vllm/v1/metrics/stats.py`): TTFT and ITL when
//! tokens appear, the per-request histograms when a request finishes, gauges every step.

use std::fmt::Write;

use aim_engine::{Engine, Event, EventKind, FinishReason, FinishedRequest, StepOutcome};

const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
const ITL_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
const REQUEST_LATENCY_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];
const PARAMS_N_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0];
const ITERATION_TOKENS_BUCKETS: &[f64] = &[
    1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0,
];

/// vLLM's `build_1_2_5_buckets(max_model_len)`: 1, 2, 5, 10, 20, 50, … up to the limit.
pub fn one_two_five_buckets(max: u32) -> Vec<f64> {
    let mut out = Vec::new();
    let mut exponent = 0u32;
    loop {
        for mantissa in [1u64, 2, 5] {
            let value = mantissa * 10u64.pow(exponent);
            if value > u64::from(max) {
                return out;
            }
            out.push(value as f64);
        }
        exponent += 1;
    }
}

#[derive(Debug, Clone)]
struct Histogram {
    bounds: Vec<f64>,
    /// Per-bucket (not cumulative) counts; the last is the +Inf overflow.
    counts: Vec<u64>,
    sum: f64,
}

impl Histogram {
    fn new(bounds: &[f64]) -> Self {
        Histogram {
            bounds: bounds.to_vec(),
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
        }
    }

    fn observe(&mut self, v: f64) {
        let i = self.bounds.partition_point(|&b| b < v);
        self.counts[i] += 1;
        self.sum += v;
    }
}

/// Accumulated metric state of one simulated engine.
#[derive(Debug, Clone)]
pub struct Metrics {
    labels: String,
    cache_info_labels: String,
    running: usize,
    waiting: usize,
    kv_usage: f64,
    prompt_tokens: u64,
    generation_tokens: u64,
    preemptions: u64,
    prefix_queries: u64,
    prefix_hits: u64,
    success: [u64; FinishReason::ALL.len()],
    ttft: Histogram,
    itl: Histogram,
    tpot_request: Histogram,
    e2e: Histogram,
    queue: Histogram,
    inference: Histogram,
    prefill: Histogram,
    decode: Histogram,
    prompt_len: Histogram,
    generation_len: Histogram,
    max_generation_len: Histogram,
    params_max_tokens: Histogram,
    params_n: Histogram,
    iteration_tokens: Histogram,
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Formats a number as Python's prometheus_client does: integral floats keep a `.0`.
fn py_float(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else if v.fract() == 0.0 && v.abs() < 1e16 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

impl Metrics {
    pub fn new(engine: &Engine, model_name: &str) -> Self {
        let config = engine.config();
        let tokens = one_two_five_buckets(config.max_model_len);
        Metrics {
            labels: format!("model_name=\"{}\",engine=\"0\"", escape(model_name)),
            cache_info_labels: format!(
                "block_size=\"{}\",cache_dtype=\"auto\",enable_prefix_caching=\"{}\",\
                 gpu_memory_utilization=\"0.9\",num_cpu_blocks=\"None\",num_gpu_blocks=\"{}\",\
                 num_gpu_blocks_override=\"None\",engine=\"0\"",
                config.block_size,
                if config.enable_prefix_caching {
                    "True"
                } else {
                    "False"
                },
                config.num_gpu_blocks
            ),
            running: 0,
            waiting: 0,
            kv_usage: 0.0,
            prompt_tokens: 0,
            generation_tokens: 0,
            preemptions: 0,
            prefix_queries: 0,
            prefix_hits: 0,
            success: [0; FinishReason::ALL.len()],
            ttft: Histogram::new(TTFT_BUCKETS),
            itl: Histogram::new(ITL_BUCKETS),
            tpot_request: Histogram::new(ITL_BUCKETS),
            e2e: Histogram::new(REQUEST_LATENCY_BUCKETS),
            queue: Histogram::new(REQUEST_LATENCY_BUCKETS),
            inference: Histogram::new(REQUEST_LATENCY_BUCKETS),
            prefill: Histogram::new(REQUEST_LATENCY_BUCKETS),
            decode: Histogram::new(REQUEST_LATENCY_BUCKETS),
            prompt_len: Histogram::new(&tokens),
            generation_len: Histogram::new(&tokens),
            max_generation_len: Histogram::new(&tokens),
            params_max_tokens: Histogram::new(&tokens),
            params_n: Histogram::new(PARAMS_N_BUCKETS),
            iteration_tokens: Histogram::new(ITERATION_TOKENS_BUCKETS),
        }
    }

    /// Refreshes the gauges from the engine, as vLLM does from scheduler stats.
    pub fn observe_engine(&mut self, engine: &Engine) {
        self.running = engine.num_running();
        self.waiting = engine.num_waiting();
        self.kv_usage = engine.kv_usage();
    }

    /// Folds one step's counters in; its events go through [`observe_event`](Self::observe_event).
    pub fn observe_step(&mut self, step: &StepOutcome) {
        self.prompt_tokens += step.prompt_tokens;
        self.generation_tokens += u64::from(step.generation_tokens);
        self.preemptions += u64::from(step.preemptions);
        self.prefix_queries += step.prefix_cache_queries;
        self.prefix_hits += step.prefix_cache_hits;
        if step.generation_tokens > 0 || step.prompt_tokens > 0 {
            self.iteration_tokens
                .observe((step.prompt_tokens + u64::from(step.generation_tokens)) as f64);
        }
    }

    pub fn observe_event(&mut self, event: &Event) {
        match &event.kind {
            // TTFT is first token − arrival, so queueing is included.
            EventKind::Token {
                index: 0,
                since_arrival,
                ..
            } => self.ttft.observe(since_arrival.as_secs_f64()),
            EventKind::Token { gap, .. } => {
                if let Some(gap) = gap {
                    self.itl.observe(gap.as_secs_f64());
                }
            }
            EventKind::Finished(f) => self.observe_finished(f),
            EventKind::Arrived | EventKind::Scheduled { .. } | EventKind::Preempted => {}
        }
    }

    fn observe_finished(&mut self, f: &FinishedRequest) {
        let reason = FinishReason::ALL
            .iter()
            .position(|r| *r == f.reason)
            .expect("known reason");
        self.success[reason] += 1;
        self.e2e.observe(f.e2e().as_secs_f64());
        if let Some(q) = f.queue_time() {
            self.queue.observe(q.as_secs_f64());
        }
        if let Some(v) = f.prefill_time() {
            self.prefill.observe(v.as_secs_f64());
        }
        if let Some(v) = f.decode_time() {
            self.decode.observe(v.as_secs_f64());
        }
        if let Some(v) = f.inference_time() {
            self.inference.observe(v.as_secs_f64());
        }
        // vLLM records 0 for requests with fewer than two tokens.
        self.tpot_request
            .observe(f.mean_tpot().map_or(0.0, |d| d.as_secs_f64()));
        self.prompt_len.observe(f64::from(f.prompt_tokens));
        self.generation_len.observe(f64::from(f.output_tokens));
        self.max_generation_len.observe(f64::from(f.output_tokens));
        self.params_max_tokens.observe(f64::from(f.max_tokens));
        self.params_n.observe(1.0);
    }

    /// The exposition text, in the order vLLM registers its metrics.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(32 * 1024);
        let l = &self.labels;
        self.gauge(
            &mut out,
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            self.running as f64,
        );
        self.gauge(
            &mut out,
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            self.waiting as f64,
        );
        header(
            &mut out,
            "vllm:engine_sleep_state",
            "Engine sleep state; awake = 0 means engine is sleeping; awake = 1 means engine is awake; weights_offloaded = 1 means sleep level 1; discard_all = 1 means sleep level 2.",
            "gauge",
        );
        for (state, value) in [
            ("awake", 1.0),
            ("weights_offloaded", 0.0),
            ("discard_all", 0.0),
        ] {
            let _ = writeln!(
                out,
                "vllm:engine_sleep_state{{{l},sleep_state=\"{state}\"}} {}",
                py_float(value)
            );
        }
        self.gauge(
            &mut out,
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            self.kv_usage,
        );
        self.counter(
            &mut out,
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            self.prefix_queries,
        );
        self.counter(
            &mut out,
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens.",
            self.prefix_hits,
        );
        self.counter(&mut out, "vllm:external_prefix_cache_queries", "External prefix cache queries from KV connector cross-instance cache sharing, in terms of number of queried tokens.", 0);
        self.counter(&mut out, "vllm:external_prefix_cache_hits", "External prefix cache hits from KV connector cross-instance cache sharing, in terms of number of cached tokens.", 0);
        self.counter(
            &mut out,
            "vllm:mm_cache_queries",
            "Multi-modal cache queries, in terms of number of queried items.",
            0,
        );
        self.counter(
            &mut out,
            "vllm:mm_cache_hits",
            "Multi-modal cache hits, in terms of number of cached items.",
            0,
        );
        self.counter(
            &mut out,
            "vllm:num_preemptions",
            "Cumulative number of preemption from the engine.",
            self.preemptions,
        );
        self.counter(
            &mut out,
            "vllm:prompt_tokens",
            "Number of prefill tokens processed.",
            self.prompt_tokens,
        );
        self.counter(
            &mut out,
            "vllm:generation_tokens",
            "Number of generation tokens processed.",
            self.generation_tokens,
        );
        header(
            &mut out,
            "vllm:request_success_total",
            "Count of successfully processed requests.",
            "counter",
        );
        for (reason, count) in FinishReason::ALL.iter().zip(self.success) {
            let _ = writeln!(
                out,
                "vllm:request_success_total{{{l},finished_reason=\"{}\"}} {}",
                reason.as_str(),
                py_float(count as f64)
            );
        }
        self.histogram(
            &mut out,
            "vllm:request_prompt_tokens",
            "Number of prefill tokens processed.",
            &self.prompt_len,
        );
        self.histogram(
            &mut out,
            "vllm:request_generation_tokens",
            "Number of generation tokens processed.",
            &self.generation_len,
        );
        self.histogram(
            &mut out,
            "vllm:iteration_tokens_total",
            "Histogram of number of tokens per engine_step.",
            &self.iteration_tokens,
        );
        self.histogram(
            &mut out,
            "vllm:request_max_num_generation_tokens",
            "Histogram of maximum number of requested generation tokens.",
            &self.max_generation_len,
        );
        self.histogram(
            &mut out,
            "vllm:request_params_n",
            "Histogram of the n request parameter.",
            &self.params_n,
        );
        self.histogram(
            &mut out,
            "vllm:request_params_max_tokens",
            "Histogram of the max_tokens request parameter.",
            &self.params_max_tokens,
        );
        self.histogram(
            &mut out,
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            &self.ttft,
        );
        self.histogram(
            &mut out,
            "vllm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            &self.itl,
        );
        self.histogram(
            &mut out,
            "vllm:request_time_per_output_token_seconds",
            "Histogram of time_per_output_token_seconds per request.",
            &self.tpot_request,
        );
        self.histogram(
            &mut out,
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            &self.e2e,
        );
        self.histogram(
            &mut out,
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            &self.queue,
        );
        self.histogram(
            &mut out,
            "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.",
            &self.inference,
        );
        self.histogram(
            &mut out,
            "vllm:request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request.",
            &self.prefill,
        );
        self.histogram(
            &mut out,
            "vllm:request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request.",
            &self.decode,
        );
        header(
            &mut out,
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig",
            "gauge",
        );
        let _ = writeln!(
            out,
            "vllm:cache_config_info{{{}}} 1.0",
            self.cache_info_labels
        );
        out
    }

    fn gauge(&self, out: &mut String, name: &str, help: &str, value: f64) {
        header(out, name, help, "gauge");
        let _ = writeln!(out, "{name}{{{}}} {}", self.labels, py_float(value));
    }

    /// Counters are named without `_total` and exposed with it, as prometheus_client does.
    fn counter(&self, out: &mut String, name: &str, help: &str, value: u64) {
        let exposed = format!("{name}_total");
        header(out, &exposed, help, "counter");
        let _ = writeln!(
            out,
            "{exposed}{{{}}} {}",
            self.labels,
            py_float(value as f64)
        );
    }

    fn histogram(&self, out: &mut String, name: &str, help: &str, h: &Histogram) {
        header(out, name, help, "histogram");
        let l = &self.labels;
        let mut cumulative = 0u64;
        for (bound, count) in h
            .bounds
            .iter()
            .chain(std::iter::once(&f64::INFINITY))
            .zip(&h.counts)
        {
            cumulative += count;
            let _ = writeln!(
                out,
                "{name}_bucket{{{l},le=\"{}\"}} {}",
                py_float(*bound),
                py_float(cumulative as f64)
            );
        }
        let _ = writeln!(out, "{name}_count{{{l}}} {}", py_float(cumulative as f64));
        let _ = writeln!(out, "{name}_sum{{{l}}} {}", py_float(h.sum));
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_two_five_series_stops_at_the_limit() {
        assert_eq!(
            one_two_five_buckets(1024),
            vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0]
        );
        assert_eq!(
            one_two_five_buckets(2000),
            vec![
                1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0
            ]
        );
    }

    #[test]
    fn histogram_buckets_are_upper_inclusive() {
        let mut h = Histogram::new(&[1.0, 2.0]);
        for v in [0.5, 1.0, 1.5, 3.0] {
            h.observe(v);
        }
        assert_eq!(h.counts, vec![2, 1, 1]);
        assert_eq!(h.sum, 6.0);
    }

    #[test]
    fn numbers_print_like_python() {
        assert_eq!(py_float(10.0), "10.0");
        assert_eq!(py_float(0.001), "0.001");
        assert_eq!(py_float(f64::INFINITY), "+Inf");
    }
}
