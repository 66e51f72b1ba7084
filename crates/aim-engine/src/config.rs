//! Engine configuration: a profile plus the vLLM scheduler knobs that may override it.

use crate::profile::Profile;

/// vLLM's KV block size in tokens.
pub const DEFAULT_BLOCK_SIZE: u32 = 16;

#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    pub profile: Profile,
    /// Most requests in the running batch (`--max-num-seqs`).
    pub max_num_seqs: u32,
    /// Token budget of one step, shared by decodes and prefill chunks (`--max-num-batched-tokens`).
    pub max_num_batched_tokens: u32,
    /// Context window: prompt plus output may not exceed it (`--max-model-len`).
    pub max_model_len: u32,
    /// KV-cache capacity in blocks (`--num-gpu-blocks-override`).
    pub num_gpu_blocks: u32,
    pub block_size: u32,
    pub enable_prefix_caching: bool,
    /// Relative standard deviation of multiplicative noise on each step's duration. Zero
    /// makes steps follow the profile's formula exactly.
    pub step_jitter: f64,
    /// Seed for the jitter; equal seeds and inputs give identical runs.
    pub seed: u64,
}

/// A configuration that cannot describe a working engine.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("{field} must be at least 1")]
    Zero { field: &'static str },
    #[error("step_jitter must be between 0 and 1, got {0}")]
    Jitter(f64),
}

impl EngineConfig {
    /// The configuration vLLM would run with for this profile's model and hardware.
    pub fn from_profile(profile: Profile) -> Self {
        EngineConfig {
            max_num_seqs: profile.max_num_seqs,
            max_num_batched_tokens: profile.max_num_batched_tokens,
            max_model_len: profile.max_model_len,
            num_gpu_blocks: profile.num_gpu_blocks,
            block_size: DEFAULT_BLOCK_SIZE,
            enable_prefix_caching: true,
            step_jitter: 0.0,
            seed: 0,
            profile,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, value) in [
            ("max_num_seqs", self.max_num_seqs),
            ("max_num_batched_tokens", self.max_num_batched_tokens),
            ("max_model_len", self.max_model_len),
            ("num_gpu_blocks", self.num_gpu_blocks),
            ("block_size", self.block_size),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero { field });
            }
        }
        if !(0.0..1.0).contains(&self.step_jitter) {
            return Err(ConfigError::Jitter(self.step_jitter));
        }
        Ok(())
    }

    /// Blocks needed to hold `tokens` tokens.
    pub fn blocks_for(&self, tokens: u32) -> u32 {
        tokens.div_ceil(self.block_size)
    }

    /// The most tokens one request may occupy: the context window, or the whole cache if
    /// that is smaller (a request that cannot fit alone could never finish).
    pub fn max_request_tokens(&self) -> u32 {
        self.max_model_len
            .min(self.num_gpu_blocks.saturating_mul(self.block_size))
    }
}
