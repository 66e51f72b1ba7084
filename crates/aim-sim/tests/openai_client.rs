//! The simulator through a real OpenAI client crate, streamed and not.

mod common;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::types::chat::{
    ChatCompletionRequestMessage, ChatCompletionRequestUserMessage, ChatCompletionStreamOptions,
    CreateChatCompletionRequestArgs, FinishReason, Role,
};
use async_openai::types::completions::CreateCompletionRequestArgs;
use common::start_sim;
use futures::StreamExt;

fn client(sim: &aim_sim::RunningSim) -> Client<OpenAIConfig> {
    Client::with_config(
        OpenAIConfig::new()
            .with_api_base(common::url(sim, "/v1"))
            .with_api_key("unused"),
    )
}

fn user(text: &str) -> Vec<ChatCompletionRequestMessage> {
    vec![ChatCompletionRequestMessage::User(
        ChatCompletionRequestUserMessage::from(text),
    )]
}

#[tokio::test]
async fn chat_completion_non_streamed() {
    let sim = start_sim(|_| {}).await;
    let request = CreateChatCompletionRequestArgs::default()
        .model("sim-model")
        .messages(user("hello there"))
        .max_completion_tokens(3u32)
        .build()
        .unwrap();
    let response = client(&sim).chat().create(request).await.unwrap();
    assert_eq!(response.object, "chat.completion");
    assert_eq!(response.model, "sim-model");
    let choice = &response.choices[0];
    assert_eq!(choice.message.role, Role::Assistant);
    assert_eq!(choice.message.content.as_deref(), Some("one two three"));
    assert_eq!(choice.finish_reason, Some(FinishReason::Length));
    let usage = response.usage.unwrap();
    // Two words plus the chat template (3 per message, 3 for the generation header).
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (8, 3));
    assert_eq!(usage.total_tokens, 11);
}

#[tokio::test]
async fn chat_completion_streamed_with_usage() {
    let sim = start_sim(|_| {}).await;
    let request = CreateChatCompletionRequestArgs::default()
        .model("sim-model")
        .messages(user("hello there"))
        .max_completion_tokens(50u32)
        .stream_options(ChatCompletionStreamOptions {
            include_usage: Some(true),
            ..Default::default()
        })
        .build()
        .unwrap();
    let mut stream = client(&sim).chat().create_stream(request).await.unwrap();
    let mut chunks = Vec::new();
    while let Some(chunk) = stream.next().await {
        chunks.push(chunk.unwrap());
    }
    assert_eq!(
        chunks[0].choices[0].delta.role,
        Some(Role::Assistant),
        "role chunk first"
    );
    let text: String = chunks
        .iter()
        .flat_map(|c| &c.choices)
        .filter_map(|c| c.delta.content.clone())
        .collect();
    assert_eq!(
        text, "one two three four five",
        "the fixed text ends on its own"
    );
    let finishes: Vec<_> = chunks
        .iter()
        .flat_map(|c| &c.choices)
        .filter_map(|c| c.finish_reason)
        .collect();
    assert_eq!(finishes, vec![FinishReason::Stop]);
    let last = chunks.last().unwrap();
    assert!(last.choices.is_empty(), "the usage chunk has no choices");
    assert_eq!(last.usage.as_ref().unwrap().completion_tokens, 5);
}

#[tokio::test]
async fn completion_non_streamed_echoes_the_prompt() {
    let sim = start_sim(|a| a.mode = aim_sim::TextMode::Echo).await;
    let request = CreateCompletionRequestArgs::default()
        .model("sim-model")
        .prompt("alpha beta gamma")
        .max_tokens(2u32)
        .build()
        .unwrap();
    let response = client(&sim).completions().create(request).await.unwrap();
    assert_eq!(response.object, "text_completion");
    assert_eq!(response.choices[0].text, "alpha beta");
    let usage = response.usage.unwrap();
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (3, 2));
}

#[tokio::test]
async fn completion_streamed_honours_stop_and_ignore_eos() {
    let sim = start_sim(|_| {}).await;
    let request = CreateCompletionRequestArgs::default()
        .model("sim-model")
        .prompt("count")
        .max_tokens(20u32)
        .stop(vec!["four".to_string()])
        .build()
        .unwrap();
    let mut stream = client(&sim)
        .completions()
        .create_stream(request)
        .await
        .unwrap();
    let mut text = String::new();
    let mut finish = None;
    while let Some(chunk) = stream.next().await {
        for choice in chunk.unwrap().choices {
            text.push_str(&choice.text);
            finish = choice.finish_reason.or(finish);
        }
    }
    assert_eq!(text, "one two three ");
    assert_eq!(format!("{finish:?}"), "Some(Stop)");

    // ignore_eos runs past the end of the fixed text, up to max_tokens.
    let (status, body) = common::post(
        &sim,
        "/v1/completions",
        r#"{"model":"sim-model","prompt":"count","max_tokens":7,"ignore_eos":true}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        body["choices"][0]["text"],
        "one two three four five one two"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["completion_tokens"], 7);
}

#[tokio::test]
async fn models_lists_the_served_name() {
    let sim = start_sim(|a| a.served_model_name = Some("served".into())).await;
    let models = client(&sim).models().list().await.unwrap();
    let ids: Vec<&str> = models.data.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, vec!["served"]);
}
