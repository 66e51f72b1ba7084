//! One streamed request: its body (pure), reading its server-sent events (pure), and
//! sending it (the only I/O here).
//!
//! Completions send the prompt as token ids, so a trace's prompt length is exactly what
//! the server prefills (real vLLM takes token-id prompts too). Mooncake traces' prefix
//! blocks become the same 512 token ids wherever the same hash id appears, so prefix
//! caches hit as they did in the traced service. Chat sends words, which the simulator
//! counts as one token each and a real tokenizer only roughly so.

use std::time::Duration;

use aim_engine::rng::mix64;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::stats::{ErrorKind, Outcome};

/// Which OpenAI endpoint to call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Api {
    /// `/v1/completions` with token-id prompts.
    Completions,
    /// `/v1/chat/completions` with one user message.
    Chat,
}

impl Api {
    pub fn path(self) -> &'static str {
        match self {
            Api::Completions => "/v1/completions",
            Api::Chat => "/v1/chat/completions",
        }
    }
}

/// Mooncake's prefix block: 512 tokens per hash id.
pub const HASH_BLOCK_TOKENS: usize = 512;

/// Token ids stay in a range every common vocabulary has, above the special tokens.
fn token(h: u64) -> u32 {
    1000 + (h % 29_000) as u32
}

/// `len` prompt token ids: the blocks named by `hash_ids` first, then tokens unique to
/// `request_key`, so unrelated requests share no prefix.
pub fn prompt_tokens(len: u32, hash_ids: &[u64], request_key: u64) -> Vec<u32> {
    let len = len as usize;
    let mut ids = Vec::with_capacity(len);
    'blocks: for &h in hash_ids {
        for j in 0..HASH_BLOCK_TOKENS as u64 {
            if ids.len() == len {
                break 'blocks;
            }
            ids.push(token(mix64(mix64(h) ^ j)));
        }
    }
    let base = mix64(request_key ^ 0x10ad_0003);
    while ids.len() < len {
        ids.push(token(mix64(base ^ ids.len() as u64)));
    }
    ids
}

/// The JSON body of a streamed request. `ignore_eos` makes the server generate exactly
/// `max_tokens`, so output lengths follow the trace or the flags rather than the model.
pub fn body(api: Api, model: &str, prompt: &[u32], max_tokens: u32) -> Value {
    let mut body = json!({
        "model": model,
        "max_tokens": max_tokens,
        "stream": true,
        "stream_options": {"include_usage": true},
        "ignore_eos": true,
    });
    match api {
        Api::Completions => body["prompt"] = json!(prompt),
        Api::Chat => {
            let words: Vec<String> = prompt.iter().map(|t| format!("w{t}")).collect();
            body["messages"] = json!([{"role": "user", "content": words.join(" ")}]);
        }
    }
    body
}

/// Splits a byte stream into the payloads of its `data:` lines, however the bytes were
/// chunked on the wire.
#[derive(Debug, Default)]
pub struct SseLines {
    buf: Vec<u8>,
}

impl SseLines {
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut consumed = 0;
        while let Some(nl) = self.buf[consumed..].iter().position(|&b| b == b'\n') {
            let line = &self.buf[consumed..consumed + nl];
            consumed += nl + 1;
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if let Some(data) = line.strip_prefix(b"data:") {
                let data = data.strip_prefix(b" ").unwrap_or(data);
                out.push(String::from_utf8_lossy(data).into_owned());
            }
        }
        self.buf.drain(..consumed);
        out
    }
}

/// What one `data:` payload carries.
#[derive(Debug, Default, PartialEq)]
pub struct Frame {
    /// The end marker `[DONE]`.
    pub done: bool,
    /// Non-empty generated text (a chat role chunk with empty content is not a token).
    pub token: bool,
    /// `usage.completion_tokens`, on the usage chunk.
    pub completion_tokens: Option<u64>,
    /// An error frame's message.
    pub error: Option<String>,
}

pub fn frame(api: Api, data: &str) -> Frame {
    if data.trim() == "[DONE]" {
        return Frame {
            done: true,
            ..Frame::default()
        };
    }
    let Ok(v) = serde_json::from_str::<Value>(data) else {
        return Frame {
            error: Some(format!(
                "not JSON: {}",
                data.chars().take(120).collect::<String>()
            )),
            ..Frame::default()
        };
    };
    if let Some(e) = v.get("error").filter(|e| !e.is_null()) {
        let message = e
            .get("message")
            .and_then(Value::as_str)
            .map_or_else(|| e.to_string(), str::to_string);
        return Frame {
            error: Some(message),
            ..Frame::default()
        };
    }
    let text = |choice: &Value| match api {
        Api::Completions => choice.get("text").and_then(Value::as_str).map(str::len),
        Api::Chat => choice
            .get("delta")
            .and_then(|d| d.get("content"))
            .and_then(Value::as_str)
            .map(str::len),
    };
    let token = v
        .get("choices")
        .and_then(Value::as_array)
        .is_some_and(|cs| cs.iter().any(|c| text(c).unwrap_or(0) > 0));
    Frame {
        done: false,
        token,
        completion_tokens: v
            .get("usage")
            .and_then(|u| u.get("completion_tokens"))
            .and_then(Value::as_u64),
        error: None,
    }
}

/// Sends one request and follows its stream to `[DONE]`. Never fails: every way a
/// request can go wrong is an [`Outcome::Failed`] with its kind.
pub async fn send(
    http: &reqwest::Client,
    base_url: &str,
    api: Api,
    body: &Value,
    timeout: Duration,
) -> Outcome {
    let start = Instant::now();
    match tokio::time::timeout(timeout, stream(http, base_url, api, body, start)).await {
        Ok(outcome) => outcome,
        Err(_) => Outcome::Failed(ErrorKind::Timeout),
    }
}

async fn stream(
    http: &reqwest::Client,
    base_url: &str,
    api: Api,
    body: &Value,
    start: Instant,
) -> Outcome {
    use futures::StreamExt as _;

    let failed = Outcome::Failed;
    let response = match http
        .post(format!("{base_url}{}", api.path()))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => return failed(classify(&e)),
    };
    let status = response.status().as_u16();
    if status != 200 {
        return failed(ErrorKind::Status(status));
    }
    let mut bytes = response.bytes_stream();
    let mut lines = SseLines::default();
    let mut ttft = None;
    let mut token_frames = 0u64;
    let mut usage = None;
    while let Some(chunk) = bytes.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) if e.is_timeout() => return failed(ErrorKind::Timeout),
            Err(_) => return failed(ErrorKind::Stream),
        };
        for data in lines.feed(&chunk) {
            let f = frame(api, &data);
            if f.error.is_some() {
                return failed(ErrorKind::Stream);
            }
            if f.token {
                token_frames += 1;
                ttft.get_or_insert_with(|| start.elapsed().as_secs_f64());
            }
            if let Some(n) = f.completion_tokens {
                usage = Some(n);
            }
            if f.done {
                return Outcome::Ok {
                    ttft,
                    e2e: start.elapsed().as_secs_f64(),
                    output_tokens: usage.unwrap_or(token_frames),
                };
            }
        }
    }
    failed(ErrorKind::Stream)
}

fn classify(e: &reqwest::Error) -> ErrorKind {
    if e.is_connect() {
        ErrorKind::Connect
    } else if e.is_timeout() {
        ErrorKind::Timeout
    } else {
        ErrorKind::Stream
    }
}

/// The first model `GET /v1/models` lists.
pub async fn discover_model(http: &reqwest::Client, base_url: &str) -> Result<String, String> {
    let url = format!("{base_url}/v1/models");
    let response = http
        .get(&url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = response.status();
    let text = response
        .text()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    if !status.is_success() {
        return Err(format!("GET {url}: HTTP {status}"));
    }
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("GET {url}: {e}"))?;
    v.get("data")
        .and_then(Value::as_array)
        .and_then(|models| models.first())
        .and_then(|m| m.get("id"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| format!("GET {url} listed no model"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_have_the_asked_length_and_share_only_named_prefixes() {
        let a = prompt_tokens(1200, &[7, 8], 1);
        let b = prompt_tokens(1100, &[7, 9], 2);
        let c = prompt_tokens(30, &[], 3);
        assert_eq!((a.len(), b.len(), c.len()), (1200, 1100, 30));
        // Block 7 is shared, block 8 vs 9 is not.
        assert_eq!(a[..512], b[..512]);
        assert_ne!(a[512..1024], b[512..1024]);
        // Past the blocks, each request's own tokens.
        assert_ne!(a[1024..1100], b[1024..1100]);
        assert_eq!(prompt_tokens(30, &[], 3), c, "reproducible");
        assert_ne!(prompt_tokens(30, &[], 4), c);
        assert!(a.iter().all(|&t| (1000..30_000).contains(&t)));
        // A prompt shorter than its blocks is cut.
        assert_eq!(prompt_tokens(100, &[7, 8], 1), a[..100]);
    }

    #[test]
    fn bodies_stream_and_ignore_eos() {
        let c = body(Api::Completions, "m", &[1001, 1002], 9);
        assert_eq!(c["prompt"], json!([1001, 1002]));
        assert_eq!(
            (c["max_tokens"].as_u64(), c["stream"].as_bool()),
            (Some(9), Some(true))
        );
        assert_eq!(c["ignore_eos"], json!(true));
        assert_eq!(c["stream_options"]["include_usage"], json!(true));
        let chat = body(Api::Chat, "m", &[1001, 1002], 9);
        assert_eq!(chat["messages"][0]["content"], json!("w1001 w1002"));
        assert!(chat.get("prompt").is_none());
    }

    #[test]
    fn sse_lines_survive_any_chunking() {
        let wire = b"data: {\"a\":1}\r\n\r\n: comment\n\ndata: [DONE]\n\n";
        for split in 1..wire.len() {
            let mut sse = SseLines::default();
            let mut got = sse.feed(&wire[..split]);
            got.extend(sse.feed(&wire[split..]));
            assert_eq!(got, ["{\"a\":1}", "[DONE]"], "split at {split}");
        }
    }

    #[test]
    fn frames_tell_tokens_usage_errors_and_done() {
        let comp = frame(
            Api::Completions,
            r#"{"choices":[{"index":0,"text":" fox"}]}"#,
        );
        assert!(comp.token && !comp.done);
        let empty = frame(Api::Completions, r#"{"choices":[{"text":""}]}"#);
        assert!(!empty.token);
        let role = frame(
            Api::Chat,
            r#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#,
        );
        assert!(!role.token, "the chat role chunk is not a token");
        assert!(frame(Api::Chat, r#"{"choices":[{"delta":{"content":"hi"}}]}"#).token);
        let usage = frame(
            Api::Chat,
            r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":7}}"#,
        );
        assert_eq!((usage.token, usage.completion_tokens), (false, Some(7)));
        assert!(frame(Api::Chat, " [DONE]").done);
        assert_eq!(
            frame(
                Api::Completions,
                r#"{"error":{"message":"boom","code":500}}"#
            )
            .error,
            Some("boom".into())
        );
        assert!(frame(Api::Completions, "{truncated").error.is_some());
        assert_eq!(
            frame(
                Api::Completions,
                r#"{"choices":[{"text":"x"}],"error":null}"#
            )
            .error,
            None
        );
    }
}
