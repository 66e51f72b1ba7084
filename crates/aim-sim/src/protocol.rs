//! Request bodies of the OpenAI-compatible endpoints, and their validation into what the
//! engine needs. Unknown fields (temperature, top_p, seed, …) are accepted and ignored, as
//! sampling does not change the simulated timing.

use serde::Deserialize;

use crate::error::ApiError;
use crate::text::{chat_token_ids, token_id, words};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Completions,
    Chat,
}

#[derive(Debug, Default, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
struct ContentPart {
    #[serde(default)]
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Message {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

/// Fields shared by both endpoints, plus the endpoint-specific input.
#[derive(Debug, Deserialize)]
struct Body {
    model: Option<String>,
    prompt: Option<Prompt>,
    messages: Option<Vec<Message>>,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    ignore_eos: bool,
    stop: Option<Stop>,
    n: Option<i64>,
}

/// What the server knows about the model when validating.
pub struct ModelLimits<'a> {
    pub served_name: &'a str,
    /// Prompt plus output may not exceed this many tokens.
    pub max_tokens_total: u32,
}

/// A validated generation request.
#[derive(Debug, Clone)]
pub struct Generation {
    pub prompt_token_ids: Vec<u32>,
    /// The text echo mode repeats: the prompt, or the last message.
    pub echo_source: String,
    pub max_tokens: u32,
    pub stream: bool,
    pub include_usage: bool,
    pub ignore_eos: bool,
    pub stop: Vec<String>,
}

/// Parses and validates a request body, naming the offending field on error.
pub fn parse(
    endpoint: Endpoint,
    body: &[u8],
    limits: &ModelLimits,
) -> Result<Generation, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("Malformed JSON body: {e}"), None))?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "The request body must be a JSON object.",
            None,
        ));
    }
    let body: Body = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        ApiError::bad_request(
            format!("Invalid value for `{path}`: {}", e.into_inner()),
            Some(&path),
        )
    })?;

    let model = body
        .model
        .as_deref()
        .ok_or_else(|| ApiError::bad_request("The `model` field is required.", Some("model")))?;
    if model != limits.served_name {
        return Err(ApiError::model_not_found(model));
    }
    if let Some(n) = body.n
        && n != 1
    {
        return Err(ApiError::bad_request(
            format!("`n` must be 1 in this simulator, got {n}."),
            Some("n"),
        ));
    }

    let (input_field, prompt_token_ids, echo_source) = match endpoint {
        Endpoint::Completions => {
            let prompt = body.prompt.ok_or_else(|| {
                ApiError::bad_request("The `prompt` field is required.", Some("prompt"))
            })?;
            let (ids, text) = completion_prompt(prompt)?;
            ("prompt", ids, text)
        }
        Endpoint::Chat => {
            let messages = body.messages.ok_or_else(|| {
                ApiError::bad_request("The `messages` field is required.", Some("messages"))
            })?;
            if messages.is_empty() {
                return Err(ApiError::bad_request(
                    "`messages` must contain at least one message.",
                    Some("messages"),
                ));
            }
            let texts: Vec<(String, String)> = messages
                .into_iter()
                .map(|m| (m.role, content_text(m.content)))
                .collect();
            let ids = chat_token_ids(texts.iter().map(|(r, c)| (r.as_str(), c.as_str())));
            let last = texts.last().map(|(_, c)| c.clone()).unwrap_or_default();
            ("messages", ids, last)
        }
    };

    let prompt_tokens = prompt_token_ids.len() as u64;
    let limit = u64::from(limits.max_tokens_total);
    if prompt_tokens >= limit {
        return Err(ApiError::bad_request(
            format!(
                "This model's maximum context length is {limit} tokens. However, your {input_field} \
                 has {prompt_tokens} tokens, which leaves no room for output. Please shorten it."
            ),
            Some(input_field),
        ));
    }

    let (max_field, requested) = match (endpoint, body.max_completion_tokens, body.max_tokens) {
        (Endpoint::Chat, Some(v), _) => ("max_completion_tokens", Some(v)),
        (_, _, v) => ("max_tokens", v),
    };
    let max_tokens = match requested {
        None => limit - prompt_tokens,
        Some(v) if v < 1 => {
            return Err(ApiError::bad_request(
                format!("`{max_field}` must be at least 1, got {v}."),
                Some(max_field),
            ));
        }
        Some(v) => {
            let v = v as u64;
            if prompt_tokens + v > limit {
                return Err(ApiError::bad_request(
                    format!(
                        "This model's maximum context length is {limit} tokens. However, you \
                         requested {} tokens ({prompt_tokens} in the {input_field}, {v} in the \
                         completion). Please reduce the length of the {input_field} or `{max_field}`.",
                        prompt_tokens + v
                    ),
                    Some(max_field),
                ));
            }
            v
        }
    };

    let stop = match body.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    Ok(Generation {
        prompt_token_ids,
        echo_source,
        max_tokens: max_tokens as u32,
        stream: body.stream,
        include_usage: body.stream_options.unwrap_or_default().include_usage,
        ignore_eos: body.ignore_eos,
        stop,
    })
}

/// Takes the single prompt out of a batch; batched prompts are not simulated.
fn single<T>(mut batch: Vec<T>) -> Result<T, ApiError> {
    match batch.len() {
        1 => Ok(batch.remove(0)),
        n => Err(ApiError::bad_request(
            format!("`prompt` must hold exactly one prompt in this simulator, got {n}."),
            Some("prompt"),
        )),
    }
}

fn completion_prompt(prompt: Prompt) -> Result<(Vec<u32>, String), ApiError> {
    let (mut ids, text) = match prompt {
        Prompt::Text(t) => (words(&t).map(token_id).collect::<Vec<_>>(), t),
        Prompt::Texts(v) => {
            let t = single(v)?;
            (words(&t).map(token_id).collect(), t)
        }
        Prompt::Tokens(ids) => (ids, String::new()),
        Prompt::TokenLists(v) => (single(v)?, String::new()),
    };
    if ids.is_empty() {
        // The beginning-of-sequence token: an empty prompt still costs one token.
        ids.push(token_id("<s>"));
    }
    Ok((ids, text))
}

fn content_text(content: Option<Content>) -> String {
    match content {
        None => String::new(),
        Some(Content::Text(t)) => t,
        Some(Content::Parts(parts)) => parts
            .into_iter()
            .filter_map(|p| p.text)
            .collect::<Vec<_>>()
            .join(" "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ModelLimits = ModelLimits {
        served_name: "m",
        max_tokens_total: 100,
    };

    fn err(endpoint: Endpoint, body: &str) -> ApiError {
        parse(endpoint, body.as_bytes(), &LIMITS).unwrap_err()
    }

    #[test]
    fn valid_requests_parse() {
        let g = parse(
            Endpoint::Completions,
            br#"{"model":"m","prompt":"a b c","max_tokens":5,"stop":"x","stream":true,
                "stream_options":{"include_usage":true},"temperature":0.2}"#,
            &LIMITS,
        )
        .unwrap();
        assert_eq!((g.prompt_token_ids.len(), g.max_tokens), (3, 5));
        assert!(g.stream && g.include_usage);
        assert_eq!(g.stop, vec!["x".to_string()]);
        let chat = parse(
            Endpoint::Chat,
            br#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hi you"}]}]}"#,
            &LIMITS,
        )
        .unwrap();
        assert_eq!(chat.echo_source, "hi you");
        assert_eq!(chat.max_tokens as usize, 100 - chat.prompt_token_ids.len());
    }

    #[test]
    fn each_bad_input_names_its_field() {
        assert_eq!(err(Endpoint::Completions, "{not json").param, None);
        assert!(
            err(Endpoint::Completions, "{not json")
                .message
                .contains("Malformed JSON")
        );
        assert_eq!(
            err(Endpoint::Completions, r#"{"prompt":"a"}"#)
                .param
                .as_deref(),
            Some("model")
        );
        assert_eq!(
            err(Endpoint::Completions, r#"{"model":"x","prompt":"a"}"#).status,
            404
        );
        let neg = err(
            Endpoint::Completions,
            r#"{"model":"m","prompt":"a","max_tokens":-1}"#,
        );
        assert_eq!(neg.param.as_deref(), Some("max_tokens"));
        let long = "w ".repeat(100);
        let too_long = err(
            Endpoint::Completions,
            &format!(r#"{{"model":"m","prompt":"{long}"}}"#),
        );
        assert_eq!(too_long.param.as_deref(), Some("prompt"));
        let over = err(
            Endpoint::Completions,
            r#"{"model":"m","prompt":"a","max_tokens":100}"#,
        );
        assert_eq!(over.param.as_deref(), Some("max_tokens"));
        let typed = err(
            Endpoint::Completions,
            r#"{"model":"m","prompt":"a","max_tokens":"5"}"#,
        );
        assert_eq!(typed.param.as_deref(), Some("max_tokens"));
        assert_eq!(
            err(Endpoint::Chat, r#"{"model":"m"}"#).param.as_deref(),
            Some("messages")
        );
        assert_eq!(
            err(Endpoint::Chat, r#"{"model":"m","messages":[{"role":"user","content":"a"}],"max_completion_tokens":0}"#)
                .param
                .as_deref(),
            Some("max_completion_tokens")
        );
    }
}
