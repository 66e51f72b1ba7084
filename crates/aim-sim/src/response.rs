//! Response bodies in vLLM's shapes (its OpenAI-compatible server): whole responses and stream chunks.

use aim_engine::FinishReason;
use serde_json::{Value, json};

use crate::driver::Completion;
use crate::protocol::Endpoint;
use crate::text::OutputPlan;

/// Fields every response and chunk of one request repeats.
pub struct ResponseMeta {
    pub endpoint: Endpoint,
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl ResponseMeta {
    pub fn new(endpoint: Endpoint, request: u64, created: u64, model: &str) -> Self {
        let prefix = match endpoint {
            Endpoint::Completions => "cmpl",
            Endpoint::Chat => "chatcmpl",
        };
        ResponseMeta {
            endpoint,
            id: format!("{prefix}-{request:032x}"),
            created,
            model: model.to_string(),
        }
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.endpoint, chunk) {
            (Endpoint::Completions, _) => "text_completion",
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
        }
    }

    fn envelope(&self, chunk: bool, choices: Value) -> Value {
        json!({
            "id": self.id,
            "object": self.object(chunk),
            "created": self.created,
            "model": self.model,
            "choices": choices,
        })
    }
}

/// `stop_reason` as vLLM reports it: the matched stop string, else null.
fn stop_reason(plan: &OutputPlan, reason: FinishReason) -> Value {
    match (reason, &plan.stop_string) {
        (FinishReason::Stop, Some(s)) => json!(s),
        _ => Value::Null,
    }
}

pub fn usage(done: Completion) -> Value {
    json!({
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.output_tokens,
        "total_tokens": done.prompt_tokens + done.output_tokens,
        "prompt_tokens_details": { "cached_tokens": done.cached_tokens },
    })
}

/// A non-streamed response.
pub fn full(meta: &ResponseMeta, plan: &OutputPlan, done: Completion) -> Value {
    let text = plan.text_of(done.output_tokens);
    let text = text.as_str();
    let finish = done.reason.as_str();
    let choice = match meta.endpoint {
        Endpoint::Completions => json!({
            "index": 0,
            "text": text,
            "logprobs": null,
            "finish_reason": finish,
            "stop_reason": stop_reason(plan, done.reason),
        }),
        Endpoint::Chat => json!({
            "index": 0,
            "message": { "role": "assistant", "content": text, "tool_calls": [] },
            "logprobs": null,
            "finish_reason": finish,
            "stop_reason": stop_reason(plan, done.reason),
        }),
    };
    let mut body = meta.envelope(false, json!([choice]));
    body["usage"] = usage(done);
    body
}

/// The first chat chunk, carrying only the assistant role.
pub fn role_chunk(meta: &ResponseMeta) -> Value {
    meta.envelope(
        true,
        json!([{
            "index": 0,
            "delta": { "role": "assistant", "content": "" },
            "logprobs": null,
            "finish_reason": null,
        }]),
    )
}

/// One token's chunk; the last one carries the finish reason.
pub fn token_chunk(
    meta: &ResponseMeta,
    plan: &OutputPlan,
    piece: &str,
    done: Option<Completion>,
) -> Value {
    let finish = done.map(|d| d.reason.as_str());
    let stop = done.map_or(Value::Null, |d| stop_reason(plan, d.reason));
    let choice = match meta.endpoint {
        Endpoint::Completions => json!({
            "index": 0,
            "text": piece,
            "logprobs": null,
            "finish_reason": finish,
            "stop_reason": stop,
        }),
        Endpoint::Chat => json!({
            "index": 0,
            "delta": { "content": piece },
            "logprobs": null,
            "finish_reason": finish,
            "stop_reason": stop,
        }),
    };
    meta.envelope(true, json!([choice]))
}

/// The chunk sent after the last token when `stream_options.include_usage` is set.
pub fn usage_chunk(meta: &ResponseMeta, done: Completion) -> Value {
    let mut body = meta.envelope(true, json!([]));
    body["usage"] = usage(done);
    body
}

/// Pre-rendered framing of the per-token chunks that do not finish the request: the hot path
/// of streaming, written without building a JSON tree per token.
pub struct TokenFrame {
    prefix: String,
    suffix: &'static str,
}

impl TokenFrame {
    pub fn new(meta: &ResponseMeta) -> Self {
        let head = format!(
            "data: {{\"id\":{},\"object\":\"{}\",\"created\":{},\"model\":{},\"choices\":[{{\"index\":0,",
            json!(meta.id),
            meta.object(true),
            meta.created,
            json!(meta.model)
        );
        let (field, suffix) = match meta.endpoint {
            Endpoint::Completions => (
                "\"text\":",
                ",\"logprobs\":null,\"finish_reason\":null,\"stop_reason\":null}]}\n\n",
            ),
            Endpoint::Chat => (
                "\"delta\":{\"content\":",
                "},\"logprobs\":null,\"finish_reason\":null,\"stop_reason\":null}]}\n\n",
            ),
        };
        TokenFrame {
            prefix: head + field,
            suffix,
        }
    }

    /// One complete SSE event carrying `piece`.
    pub fn render(&self, piece: &str) -> String {
        let escaped = Value::String(piece.to_string()).to_string();
        let mut out = String::with_capacity(self.prefix.len() + escaped.len() + self.suffix.len());
        out.push_str(&self.prefix);
        out.push_str(&escaped);
        out.push_str(self.suffix);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_token_frames_equal_the_json_chunks() {
        let plan = crate::text::OutputPlan::new(crate::text::OutputSpec {
            mode: crate::args::TextMode::Fixed,
            source: "say \"hi\"\n",
            max_tokens: 2,
            ignore_eos: true,
            stop: &[],
            seed: 0,
        });
        for endpoint in [Endpoint::Completions, Endpoint::Chat] {
            let meta = ResponseMeta::new(endpoint, 7, 123, "m\"x");
            let piece = plan.piece(1);
            let fast = TokenFrame::new(&meta).render(&piece);
            let json: Value = serde_json::from_str(
                fast.strip_prefix("data: ")
                    .unwrap()
                    .strip_suffix("\n\n")
                    .unwrap(),
            )
            .unwrap();
            assert_eq!(json, token_chunk(&meta, &plan, &piece, None));
        }
    }
}
