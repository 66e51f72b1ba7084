//! What a caller submits, and the reasons a request ends.

/// Caller-chosen identifier of a request; unique among requests the engine holds.
pub type RequestId = u64;

/// One generation request as the engine sees it: token counts, not text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub id: RequestId,
    /// Prompt length in tokens (at least 1).
    pub prompt_tokens: u32,
    /// The request's `max_tokens`: generation stops with `length` here.
    pub max_tokens: u32,
    /// The model emits end-of-sequence (or hits a stop string) with its token number
    /// `stop_after`, which ends the request with `stop`. The ending token counts, so at least
    /// one token is always generated, as in vLLM. `None` (or a value ≥ `max_tokens`) means it
    /// runs to `max_tokens`, as with `ignore_eos`.
    pub stop_after: Option<u32>,
    /// Chained hashes of the prompt's full blocks, one per `block_size` tokens: hash *i*
    /// identifies the whole prefix up to the end of block *i* (as vLLM's block hashes and
    /// Mooncake trace `hash_ids` do). Empty means the prompt shares nothing.
    pub block_hashes: Vec<u64>,
}

impl Request {
    pub fn new(id: RequestId, prompt_tokens: u32, max_tokens: u32) -> Self {
        Request {
            id,
            prompt_tokens,
            max_tokens,
            stop_after: None,
            block_hashes: Vec::new(),
        }
    }

    pub fn with_stop_after(mut self, tokens: u32) -> Self {
        self.stop_after = Some(tokens);
        self
    }

    pub fn with_block_hashes(mut self, hashes: Vec<u64>) -> Self {
        self.block_hashes = hashes;
        self
    }

    /// How many tokens this request will generate if nothing aborts it, and why it stops.
    pub fn planned_output(&self) -> (u32, FinishReason) {
        match self.stop_after {
            Some(n) if n < self.max_tokens => (n.max(1), FinishReason::Stop),
            _ => (self.max_tokens, FinishReason::Length),
        }
    }
}

/// Why a request ended; the values of vLLM's `finished_reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FinishReason {
    Stop,
    Length,
    Abort,
    Error,
    Repetition,
}

impl FinishReason {
    /// Every reason, in the order vLLM pre-creates its `request_success_total` series.
    pub const ALL: [FinishReason; 5] = [
        FinishReason::Stop,
        FinishReason::Length,
        FinishReason::Abort,
        FinishReason::Error,
        FinishReason::Repetition,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Abort => "abort",
            FinishReason::Error => "error",
            FinishReason::Repetition => "repetition",
        }
    }
}

/// Chains token ids into per-block prefix hashes (only full blocks are hashed, as in vLLM).
/// Equal prefixes give equal hashes, so prompts sharing a system prompt share KV blocks.
pub fn chain_block_hashes(tokens: &[u32], block_size: u32, salt: u64) -> Vec<u64> {
    let mut parent = salt;
    tokens
        .chunks_exact(block_size as usize)
        .map(|block| {
            let mut h = parent ^ 0x9e37_79b9_7f4a_7c15;
            for &t in block {
                h = crate::rng::mix64(h ^ u64::from(t));
            }
            parent = h;
            h
        })
        .collect()
}

/// Expands coarse trace hash ids (for example Mooncake's, one per 512 tokens) into per-block
/// hashes for an engine with a smaller block size, keeping equal prefixes equal.
pub fn expand_coarse_hashes(hash_ids: &[u64], coarse_tokens: u32, block_size: u32) -> Vec<u64> {
    let per = (coarse_tokens / block_size.max(1)).max(1);
    let mut parent = 0u64;
    let mut out = Vec::with_capacity(hash_ids.len() * per as usize);
    for &id in hash_ids {
        for sub in 0..per {
            parent = crate::rng::mix64(parent ^ crate::rng::mix64(id) ^ u64::from(sub));
            out.push(parent);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planned_output_respects_max_tokens() {
        assert_eq!(
            Request::new(1, 5, 10).planned_output(),
            (10, FinishReason::Length)
        );
        assert_eq!(
            Request::new(1, 5, 10).with_stop_after(3).planned_output(),
            (3, FinishReason::Stop)
        );
        assert_eq!(
            Request::new(1, 5, 10).with_stop_after(12).planned_output(),
            (10, FinishReason::Length)
        );
        assert_eq!(
            Request::new(1, 5, 10).with_stop_after(0).planned_output(),
            (1, FinishReason::Stop),
            "the stopping token itself is generated"
        );
    }

    #[test]
    fn block_hashes_share_prefixes_only() {
        let a: Vec<u32> = (0..40).collect();
        let mut b = a.clone();
        b[20] = 999;
        let ha = chain_block_hashes(&a, 16, 7);
        let hb = chain_block_hashes(&b, 16, 7);
        assert_eq!(ha.len(), 2, "only full blocks are hashed");
        assert_eq!(ha[0], hb[0]);
        assert_ne!(ha[1], hb[1]);
        assert_ne!(
            chain_block_hashes(&a, 16, 8)[0],
            ha[0],
            "salt separates models"
        );
    }

    #[test]
    fn coarse_hashes_expand_per_block() {
        let x = expand_coarse_hashes(&[5, 6], 512, 16);
        let y = expand_coarse_hashes(&[5, 7], 512, 16);
        assert_eq!(x.len(), 64);
        assert_eq!(x[..32], y[..32]);
        assert_ne!(x[32], y[32]);
    }
}
