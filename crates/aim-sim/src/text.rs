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

/// Where the text of a request is cut by a stop string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cut {
    /// Token whose piece holds the first byte of the stop string.
    token: u32,
    /// Bytes of that piece kept.
    keep: usize,
}

/// What one request will output, computed lazily: the word of token *i* is a pure function
/// of the mode, the source and the seed, so nothing proportional to `max_tokens` is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputPlan {
    mode: TextMode,
    source: Vec<String>,
    seed: u64,
    /// Tokens the request will generate unless aborted.
    planned: u32,
    cut: Option<Cut>,
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
        let source: Vec<String> = match spec.mode {
            TextMode::Random => Vec::new(),
            _ => words(spec.source).map(str::to_string).collect(),
        };
        let seed = mix64(spec.seed);
        // Where the model would emit end-of-sequence, if not told to ignore it.
        let natural = match spec.mode {
            TextMode::Echo | TextMode::Fixed => source.len().max(1) as u32,
            TextMode::Random => {
                Rng::new(seed).range_u32(1, spec.max_tokens.min(RANDOM_DEFAULT_LIMIT))
            }
        };
        let planned = if spec.ignore_eos {
            spec.max_tokens
        } else {
            natural.min(spec.max_tokens)
        };
        let mut plan = OutputPlan {
            mode: spec.mode,
            source,
            seed,
            planned,
            cut: None,
            stop_after: (!spec.ignore_eos && natural < spec.max_tokens).then_some(natural),
            stop_string: None,
        };
        plan.apply_stop_strings(spec.stop);
        plan
    }

    fn word(&self, index: u32) -> &str {
        match self.mode {
            TextMode::Random => {
                let pick = mix64(self.seed ^ u64::from(index).wrapping_mul(0x9e37_79b9));
                RANDOM_WORDS[pick as usize % RANDOM_WORDS.len()]
            }
            _ if self.source.is_empty() => ".",
            _ => &self.source[index as usize % self.source.len()],
        }
    }

    /// Scans the planned text for the earliest stop string, keeping only a window as long
    /// as the longest stop string, so a long output costs time but no memory.
    fn apply_stop_strings(&mut self, stops: &[String]) {
        let stops: Vec<&str> = stops
            .iter()
            .map(String::as_str)
            .filter(|s| !s.is_empty())
            .collect();
        let Some(longest) = stops.iter().map(|s| s.len()).max() else {
            return;
        };
        let mut window = String::new();
        let mut window_start = 0usize; // absolute offset of window[0]
        let mut starts: std::collections::VecDeque<(usize, u32)> = Default::default();
        for i in 0..self.planned {
            let abs = window_start + window.len();
            starts.push_back((abs, i));
            if i > 0 {
                window.push(' ');
            }
            window.push_str(self.word(i));
            if let Some((at, stop)) = find_stop(&window, &stops) {
                let cut_abs = window_start + at;
                let &(piece_start, token) = starts
                    .iter()
                    .rev()
                    .find(|(start, _)| *start <= cut_abs)
                    .expect("in window");
                self.cut = Some(Cut {
                    token,
                    keep: cut_abs - piece_start,
                });
                self.stop_after = Some(i + 1);
                self.stop_string = Some(stop.to_string());
                return;
            }
            // Keep just enough text for a stop string to straddle the next piece.
            if window.len() > longest {
                let mut drop = window.len() - longest;
                while !window.is_char_boundary(drop) {
                    drop -= 1;
                }
                window.drain(..drop);
                window_start += drop;
                while starts.len() > 1 && starts[1].0 <= window_start {
                    starts.pop_front();
                }
            }
        }
    }

    /// Writes the text of token `index` (empty past the end of the planned text).
    pub fn push_piece(&self, index: u32, out: &mut String) {
        if index >= self.planned {
            return;
        }
        let mut piece = String::new();
        if index > 0 {
            piece.push(' ');
        }
        piece.push_str(self.word(index));
        match self.cut {
            Some(cut) if index > cut.token => {}
            Some(cut) if index == cut.token => out.push_str(&piece[..cut.keep]),
            _ => out.push_str(&piece),
        }
    }

    /// The text of token `index`.
    pub fn piece(&self, index: u32) -> String {
        let mut out = String::new();
        self.push_piece(index, &mut out);
        out
    }

    /// The text of the first `tokens` tokens.
    pub fn text_of(&self, tokens: u32) -> String {
        let mut out = String::new();
        for i in 0..tokens {
            self.push_piece(i, &mut out);
        }
        out
    }
}

fn find_stop<'s>(text: &str, stops: &[&'s str]) -> Option<(usize, &'s str)> {
    stops
        .iter()
        .filter_map(|s| text.find(s).map(|at| (at, *s)))
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
    fn a_stop_string_straddling_pieces_cuts_in_the_earlier_piece() {
        let p = plan(TextMode::Fixed, "ab cd ef gh", 10, true, &["b cd e"]);
        assert_eq!(
            p.stop_after,
            Some(3),
            "the stop string completes in the third token"
        );
        assert_eq!(p.text_of(3), "a");
        let pieces: Vec<String> = (0..3).map(|i| p.piece(i)).collect();
        assert_eq!(pieces, vec!["a", "", ""]);
    }

    #[test]
    fn stop_strings_are_found_far_into_a_long_output() {
        let p = plan(TextMode::Fixed, "a b c", 100_000, true, &["c a b c a"]);
        assert_eq!(p.stop_after, Some(7));
        let far = plan(TextMode::Random, "", 50_000, true, &["never-a-word"]);
        assert_eq!(far.stop_after, None);
        assert!(!far.piece(49_999).trim().is_empty());
    }

    #[test]
    fn random_text_is_seeded_and_bounded() {
        let a = plan(TextMode::Random, "", 20, false, &[]);
        let b = plan(TextMode::Random, "", 20, false, &[]);
        assert_eq!(a.text_of(20), b.text_of(20));
        let n = a.stop_after.unwrap_or(20);
        assert!((1..=20).contains(&n));
        assert_eq!(words(&a.text_of(n)).count() as u32, n);
    }

    #[test]
    fn chat_template_adds_overhead_per_message() {
        let ids = chat_token_ids([("system", "be brief"), ("user", "hi there")].into_iter());
        // Four words, three template tokens per message, the generation header.
        assert_eq!(ids.len(), 4 + 2 * 3 + GENERATION_PROMPT_TOKENS);
    }
}
