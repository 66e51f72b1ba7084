//! Tokens and text: a word-level stand-in tokenizer, and the output a request will produce.
//!
//! The simulator has no real tokenizer (no model files can be fetched), so one token is one
//! whitespace-separated word, as llm-d-inference-sim's fallback tokenizer roughly does.
//! Output text is decided up front, so stop strings can be found before generation starts
//! and the engine told when the request will stop.

use aim_engine::rng::{Rng, mix64};

use crate::args::TextMode;

/// Words of `text`, each a token.
pub fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split_whitespace()
}

/// A stable id per word, so equal prompts hash to equal KV blocks.
pub fn token_id(word: &str) -> u32 {
    // FNV-1a: tiny, stable across runs and platforms.
    let mut h: u32 = 0x811c_9dc5;
    for b in word.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Tokens of the assistant header a chat template appends for generation.
const GENERATION_PROMPT_TOKENS: usize = 3;

/// Token ids of a chat conversation rendered through a ChatML-like template.
pub fn chat_token_ids<'a>(messages: impl Iterator<Item = (&'a str, &'a str)>) -> Vec<u32> {
    let mut ids = Vec::new();
    for (role, content) in messages {
        // Chat-template overhead per message: start marker, role, end marker.
        ids.push(token_id("<|im_start|>"));
        ids.push(token_id(role));
        ids.extend(words(content).map(token_id));
        ids.push(token_id("<|im_end|>"));
    }
    ids.extend(std::iter::repeat_n(
        token_id("<|assistant|>"),
        GENERATION_PROMPT_TOKENS,
    ));
    ids
}

const RANDOM_WORDS: &[&str] = &[
    "the",
    "model",
    "serves",
    "tokens",
    "quickly",
    "and",
    "scales",
    "with",
    "demand",
    "while",
    "every",
    "replica",
    "keeps",
    "its",
    "cache",
    "warm",
    "under",
    "load",
    "requests",
    "arrive",
    "in",
    "bursts",
    "so",
    "batching",
    "helps",
    "throughput",
    "latency",
    "stays",
    "low",
    "until",
    "queues",
    "grow",
    "then",
    "autoscaling",
    "adds",
    "capacity",
    "a",
    "cluster",
    "of",
    "GPUs",
    "answers",
    "questions",
    "about",
    "kubernetes",
    "operators",
    "metrics",
    "prometheus",
    "keda",
];

/// What one request will output: its text cut into per-token pieces, and whether (and where)
/// it stops before `max_tokens`.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputPlan {
    text: String,
    /// End offset in `text` of each token's piece.
    ends: Vec<u32>,
    /// Token count at which generation stops on its own (EOS or a stop string).
    pub stop_after: Option<u32>,
    /// The stop string that ended generation, reported as `stop_reason`.
    pub stop_string: Option<String>,
}

/// Inputs of [`OutputPlan::new`].
pub struct OutputSpec<'a> {
    pub mode: TextMode,
    /// Text echoed in echo mode, or the fixed text in fixed mode.
    pub source: &'a str,
    pub max_tokens: u32,
    pub ignore_eos: bool,
    pub stop: &'a [String],
    /// Per-request seed, so each request gets its own random text, reproducibly.
    pub seed: u64,
}

/// Without `max_tokens`, random mode ends naturally within this many tokens.
const RANDOM_DEFAULT_LIMIT: u32 = 128;

impl OutputPlan {
    pub fn new(spec: OutputSpec<'_>) -> Self {
        let mut rng = Rng::new(mix64(spec.seed));
        let source: Vec<&str> = words(spec.source).collect();
        // Where the model would emit end-of-sequence, if not told to ignore it.
        let natural = match spec.mode {
            TextMode::Echo | TextMode::Fixed => source.len().max(1) as u32,
            TextMode::Random => rng.range_u32(1, spec.max_tokens.min(RANDOM_DEFAULT_LIMIT.max(1))),
        };
        let planned = if spec.ignore_eos {
            spec.max_tokens
        } else {
            natural.min(spec.max_tokens)
        };

        let mut text = String::new();
        let mut ends = Vec::with_capacity(planned as usize);
        let mut stop_after = (!spec.ignore_eos && natural < spec.max_tokens).then_some(natural);
        let mut stop_string = None;
        for i in 0..planned as usize {
            let word = match spec.mode {
                TextMode::Random => RANDOM_WORDS[rng.next_u64() as usize % RANDOM_WORDS.len()],
                _ if source.is_empty() => ".",
                _ => source[i % source.len()],
            };
            if i > 0 {
                text.push(' ');
            }
            text.push_str(word);
            ends.push(text.len() as u32);
            if let Some((at, s)) = find_stop(&text, spec.stop) {
                // vLLM drops the stop string from the output; the token that completed it
                // still counts as generated.
                text.truncate(at);
                for end in &mut ends {
                    *end = (*end).min(at as u32);
                }
                stop_after = Some(i as u32 + 1);
                stop_string = Some(s.to_string());
                break;
            }
        }
        OutputPlan {
            text,
            ends,
            stop_after,
            stop_string,
        }
    }

    /// The text of token `index` (empty past the end of the planned text).
    pub fn piece(&self, index: u32) -> &str {
        let i = index as usize;
        let Some(&end) = self.ends.get(i) else {
            return "";
        };
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.text[start as usize..end as usize]
    }

    /// The text of the first `tokens` tokens.
    pub fn text_of(&self, tokens: u32) -> &str {
        match tokens as usize {
            0 => "",
            n => &self.text[..self.ends[(n - 1).min(self.ends.len() - 1)] as usize],
        }
    }
}

fn find_stop<'s>(text: &str, stops: &'s [String]) -> Option<(usize, &'s str)> {
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()).map(|at| (at, s.as_str())))
        .min_by_key(|&(at, _)| at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(mode: TextMode, source: &str, max: u32, ignore_eos: bool, stop: &[&str]) -> OutputPlan {
        let stop: Vec<String> = stop.iter().map(|s| s.to_string()).collect();
        OutputPlan::new(OutputSpec {
            mode,
            source,
            max_tokens: max,
            ignore_eos,
            stop: &stop,
            seed: 1,
        })
    }

    #[test]
    fn echo_returns_the_prompt_capped_by_max_tokens() {
        let p = plan(TextMode::Echo, "one two three", 10, false, &[]);
        assert_eq!(p.text_of(3), "one two three");
        assert_eq!(p.stop_after, Some(3));
        let capped = plan(TextMode::Echo, "one two three", 2, false, &[]);
        assert_eq!(capped.text_of(2), "one two");
        assert_eq!(
            capped.stop_after, None,
            "hitting max_tokens is a length finish"
        );
    }

    #[test]
    fn ignore_eos_runs_to_max_tokens() {
        let p = plan(TextMode::Fixed, "a b", 5, true, &[]);
        assert_eq!(p.stop_after, None);
        assert_eq!(p.text_of(5), "a b a b a");
        assert_eq!(p.piece(1), " b");
    }

    #[test]
    fn stop_strings_cut_the_text_and_end_generation() {
        let p = plan(
            TextMode::Fixed,
            "alpha beta gamma delta",
            10,
            true,
            &["gam", "zzz"],
        );
        assert_eq!(p.stop_after, Some(3));
        assert_eq!(p.stop_string.as_deref(), Some("gam"));
        assert_eq!(p.text_of(3), "alpha beta ");
        let streamed: String = (0..3).map(|i| p.piece(i)).collect();
        assert_eq!(streamed, "alpha beta ");
    }

    #[test]
    fn random_text_is_seeded_and_bounded() {
        let a = plan(TextMode::Random, "", 20, false, &[]);
        let b = plan(TextMode::Random, "", 20, false, &[]);
        assert_eq!(a, b);
        let n = a.stop_after.unwrap_or(20);
        assert!((1..=20).contains(&n));
        assert_eq!(words(a.text_of(n)).count() as u32, n);
    }

    #[test]
    fn chat_template_adds_overhead_per_message() {
        let ids = chat_token_ids([("system", "be brief"), ("user", "hi there")].into_iter());
        // Four words, three template tokens per message, the generation header.
        assert_eq!(ids.len(), 4 + 2 * 3 + GENERATION_PROMPT_TOKENS);
    }
}
