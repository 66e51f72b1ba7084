//! Latency profiles: how long one engine step takes, and how big the KV cache is.
//!
//! A step's duration is linear in what the step does, as in the BLIS "blackbox" fits
//! (the BLIS simulator's published per-model coefficients):
//!
//! ```text
//! step = β0 + β1 · prefill tokens + β2 · decoding sequences + β3 · KV tokens read by decodes
//! ```
//!
//! β3 is zero in the published fits; it is there for profiles that want decode cost to grow
//! with context length (the Dynamo mocker's KV term).

use std::time::Duration;

/// Coefficients and capacity of one model on one hardware configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// Stable identifier used on the command line (`--profile`).
    pub name: &'static str,
    /// Human-readable provenance of the numbers.
    pub source: &'static str,
    /// Fixed cost of every step, in microseconds (β0).
    pub step_base_us: f64,
    /// Cost per prefill token computed in the step, in microseconds (β1).
    pub per_prefill_token_us: f64,
    /// Cost per sequence decoding one token in the step, in microseconds (β2).
    pub per_decode_seq_us: f64,
    /// Cost per KV-cache token attended to by decoding sequences, in microseconds (β3).
    pub per_kv_token_us: f64,
    /// KV-cache capacity in blocks.
    pub num_gpu_blocks: u32,
    /// Scheduler defaults vLLM would pick on this hardware (its engine arguments'
    /// defaults for a large GPU: 1,024 sequences, 8,192 batched tokens).
    pub max_num_seqs: u32,
    pub max_num_batched_tokens: u32,
    /// Context window of the model.
    pub max_model_len: u32,
}

/// What a step did, as far as its duration is concerned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepShape {
    pub prefill_tokens: u32,
    pub decode_seqs: u32,
    pub decode_kv_tokens: u64,
}

impl Profile {
    /// The step duration for a batch of this shape, rounded to whole nanoseconds so that
    /// virtual-time runs are exactly reproducible.
    pub fn step_duration(&self, shape: StepShape) -> Duration {
        let micros = self.step_base_us
            + self.per_prefill_token_us * f64::from(shape.prefill_tokens)
            + self.per_decode_seq_us * f64::from(shape.decode_seqs)
            + self.per_kv_token_us * shape.decode_kv_tokens as f64;
        Duration::from_nanos((micros * 1_000.0).round() as u64)
    }

    /// Looks a built-in profile up by name.
    pub fn named(name: &str) -> Option<Profile> {
        Self::builtin().into_iter().find(|p| p.name == name)
    }

    /// Every built-in profile.
    pub fn builtin() -> Vec<Profile> {
        vec![
            Self::llama_3_1_8b_h100(),
            Self::llama_3_3_70b_4xh100(),
            Self::qwen3_32b_2xh100(),
            Self::tiny(),
        ]
    }

    /// Llama-3.1-8B on one H100: BLIS blackbox fit for vLLM 0.8.4.
    pub fn llama_3_1_8b_h100() -> Profile {
        Profile {
            name: "llama-3.1-8b-h100",
            source: "BLIS blackbox fit (vLLM 0.8.4), Llama-3.1-8B, 1xH100, TP1",
            step_base_us: 5_753.0,
            per_prefill_token_us: 17.25,
            per_decode_seq_us: 6.00,
            per_kv_token_us: 0.0,
            num_gpu_blocks: 29_205,
            max_num_seqs: 1024,
            max_num_batched_tokens: 8192,
            max_model_len: 131_072,
        }
    }

    /// Llama-3.3-70B on four H100s: BLIS blackbox fit for vLLM 0.8.4.
    pub fn llama_3_3_70b_4xh100() -> Profile {
        Profile {
            name: "llama-3.3-70b-4xh100",
            source: "BLIS blackbox fit (vLLM 0.8.4), Llama-3.3-70B, 4xH100, TP4",
            step_base_us: 12_601.0,
            per_prefill_token_us: 76.42,
            per_decode_seq_us: 66.84,
            per_kv_token_us: 0.0,
            num_gpu_blocks: 128_273,
            max_num_seqs: 1024,
            max_num_batched_tokens: 8192,
            max_model_len: 131_072,
        }
    }

    /// Qwen3-32B on two H100s (TP2). No published fit exists, so the coefficients are
    /// interpolated between the two Llama fits by per-GPU work: β0 by weight bytes per GPU
    /// (16 GB → 5.75 ms, 35 GB → 12.6 ms; Qwen3-32B TP2 holds 32 GB), β1 and β2 by parameters
    /// per GPU the same way. KV capacity: 64 layers × 8 KV heads × 128 dims × 2 (K,V) × 2 bytes
    /// = 256 KiB per token; 2 × 72 GB usable − 64 GB weights ≈ 76 GB → ≈18,000 blocks.
    pub fn qwen3_32b_2xh100() -> Profile {
        Profile {
            name: "qwen3-32b-2xh100",
            source: "interpolated from the Llama-3.1-8B/1xH100 and Llama-3.3-70B/4xH100 BLIS fits by per-GPU weights",
            step_base_us: 11_520.0,
            per_prefill_token_us: 67.1,
            per_decode_seq_us: 57.2,
            per_kv_token_us: 0.0,
            num_gpu_blocks: 18_000,
            max_num_seqs: 1024,
            max_num_batched_tokens: 8192,
            max_model_len: 40_960,
        }
    }

    /// A small, fast profile for tests: 1 ms steps and a KV cache small enough that
    /// preemption is easy to provoke.
    pub fn tiny() -> Profile {
        Profile {
            name: "tiny",
            source: "synthetic, for tests",
            step_base_us: 1_000.0,
            per_prefill_token_us: 2.0,
            per_decode_seq_us: 10.0,
            per_kv_token_us: 0.0,
            num_gpu_blocks: 256,
            max_num_seqs: 16,
            max_num_batched_tokens: 256,
            max_model_len: 2048,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_worked_examples_hold() {
        // BLIS's worked examples: single-stream step ≈ 5.76 ms, 64 decodes ≈ 6.14 ms, 1,000-token prefill ≈ 23 ms.
        let p = Profile::llama_3_1_8b_h100();
        let ms = |shape| p.step_duration(shape).as_secs_f64() * 1e3;
        let one = ms(StepShape {
            decode_seqs: 1,
            ..Default::default()
        });
        let batch = ms(StepShape {
            decode_seqs: 64,
            ..Default::default()
        });
        let prefill = ms(StepShape {
            prefill_tokens: 1000,
            ..Default::default()
        });
        assert!((one - 5.76).abs() < 0.01, "{one}");
        assert!((batch - 6.14).abs() < 0.01, "{batch}");
        assert!((prefill - 23.0).abs() < 0.1, "{prefill}");
    }

    #[test]
    fn every_builtin_is_found_by_name() {
        for p in Profile::builtin() {
            assert_eq!(Profile::named(p.name).as_ref(), Some(&p));
        }
        assert!(Profile::named("gpt-5").is_none());
    }
}
