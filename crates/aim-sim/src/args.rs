//! Command-line options of `aim sim`. Names follow vLLM's and llm-d-inference-sim's flags
//! where one exists, so manifests written for either read naturally.

use std::net::IpAddr;
use std::time::Duration;

use aim_engine::{EngineConfig, Profile};

/// How the simulator makes up output text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TextMode {
    /// Repeat the prompt (completions) or the last message (chat).
    Echo,
    /// Random words from a built-in list, seeded.
    Random,
    /// The text given by `--fixed-text`.
    Fixed,
}

#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0", env = "AIM_SIM_HOST")]
    pub host: IpAddr,
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 8000, env = "AIM_SIM_PORT")]
    pub port: u16,
    /// Model name clients must send and the `model_name` metric label.
    #[arg(long, default_value = "Qwen/Qwen3-32B", env = "AIM_SIM_MODEL")]
    pub model: String,
    /// Name to serve the model under instead of `--model`.
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Latency profile: llama-3.1-8b-h100, llama-3.3-70b-4xh100, qwen3-32b-2xh100 or tiny.
    #[arg(long, default_value = "qwen3-32b-2xh100", value_parser = parse_profile)]
    pub profile: Profile,
    /// Most requests in a batch (default: the profile's).
    #[arg(long)]
    pub max_num_seqs: Option<u32>,
    /// Token budget of one engine step (default: the profile's).
    #[arg(long)]
    pub max_num_batched_tokens: Option<u32>,
    /// Context window (default: the profile's).
    #[arg(long)]
    pub max_model_len: Option<u32>,
    /// KV-cache capacity in 16-token blocks (default: the profile's).
    #[arg(long)]
    pub num_gpu_blocks_override: Option<u32>,
    /// Turn prefix caching off.
    #[arg(long)]
    pub no_enable_prefix_caching: bool,
    /// Relative standard deviation of noise on each step's duration (0 = exact formula).
    #[arg(long, default_value_t = 0.0)]
    pub step_jitter: f64,
    /// Waiting requests beyond this are refused with 429.
    #[arg(long, default_value_t = 1000)]
    pub max_waiting_queue_length: usize,
    /// How output text is made.
    #[arg(long, value_enum, default_value_t = TextMode::Random)]
    pub mode: TextMode,
    /// The text for `--mode fixed`.
    #[arg(long, default_value = "The quick brown fox jumps over the lazy dog.")]
    pub fixed_text: String,
    /// Seed for output lengths, words and step noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Seconds before /health turns ready, emulating model load (scaled by --time-scale).
    #[arg(long, default_value_t = 0.0)]
    pub startup_delay: f64,
    /// Simulated seconds per wall-clock second: 10 runs everything ten times faster.
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// On SIGTERM, wait at most this many seconds for in-flight requests.
    #[arg(long, default_value_t = 30.0)]
    pub drain_timeout: f64,
    /// Drain and exit (as on SIGTERM) when process PID, which started this
    /// one, dies, however it dies: the pod runner sets it so that a killed
    /// runner leaves no simulator holding a pod's address. Linux only.
    #[arg(long, value_name = "PID")]
    pub parent_pid: Option<u32>,
}

fn parse_profile(name: &str) -> Result<Profile, String> {
    Profile::named(name).ok_or_else(|| {
        let known: Vec<&str> = Profile::builtin().iter().map(|p| p.name).collect();
        format!("unknown profile `{name}`; known: {}", known.join(", "))
    })
}

impl SimArgs {
    /// Defaults for tests and embedding: loopback, a free port, the tiny profile.
    pub fn for_tests() -> Self {
        SimArgs {
            host: IpAddr::from([127, 0, 0, 1]),
            port: 0,
            model: "sim-model".into(),
            served_model_name: None,
            profile: Profile::tiny(),
            max_num_seqs: None,
            max_num_batched_tokens: None,
            max_model_len: None,
            num_gpu_blocks_override: None,
            no_enable_prefix_caching: false,
            step_jitter: 0.0,
            max_waiting_queue_length: 1000,
            mode: TextMode::Random,
            fixed_text: "The quick brown fox jumps over the lazy dog.".into(),
            seed: 0,
            startup_delay: 0.0,
            time_scale: 1.0,
            drain_timeout: 30.0,
            parent_pid: None,
        }
    }

    /// The name clients use and metrics carry.
    pub fn served_name(&self) -> &str {
        self.served_model_name.as_deref().unwrap_or(&self.model)
    }

    pub fn engine_config(&self) -> EngineConfig {
        let mut config = EngineConfig::from_profile(self.profile.clone());
        if let Some(v) = self.max_num_seqs {
            config.max_num_seqs = v;
        }
        if let Some(v) = self.max_num_batched_tokens {
            config.max_num_batched_tokens = v;
        }
        if let Some(v) = self.max_model_len {
            config.max_model_len = v;
        }
        if let Some(v) = self.num_gpu_blocks_override {
            config.num_gpu_blocks = v;
        }
        config.enable_prefix_caching = !self.no_enable_prefix_caching;
        config.step_jitter = self.step_jitter;
        config.seed = self.seed;
        config
    }

    /// Checks option values that clap cannot, naming the option at fault.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.time_scale.is_finite() && self.time_scale > 0.0,
            "--time-scale must be a positive number, got {}",
            self.time_scale
        );
        anyhow::ensure!(
            self.startup_delay.is_finite() && self.startup_delay >= 0.0,
            "--startup-delay must be zero or more seconds, got {}",
            self.startup_delay
        );
        anyhow::ensure!(
            self.drain_timeout.is_finite() && self.drain_timeout >= 0.0,
            "--drain-timeout must be zero or more seconds, got {}",
            self.drain_timeout
        );
        self.engine_config()
            .validate()
            .map_err(|e| anyhow::anyhow!("engine options: {e}"))?;
        Ok(())
    }

    /// A simulated duration as wall-clock time.
    pub fn wall(&self, simulated_secs: f64) -> Duration {
        Duration::from_secs_f64(simulated_secs / self.time_scale)
    }
}
