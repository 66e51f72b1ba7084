//! Wire-level behaviour: stream framing, bad input, queue limit, disconnects, readiness and
//! draining.

mod common;

use std::time::Duration;

use common::{eventually, get_text, metric, post, start_sim, url};
use futures::StreamExt;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Opens a streaming request and returns the response once its headers arrived.
async fn open_stream(sim: &aim_sim::RunningSim, body: &str) -> reqwest::Response {
    let response = reqwest::Client::new()
        .post(url(sim, "/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    response
}

/// Reads a whole SSE body into its `data:` payloads.
async fn frames(response: reqwest::Response) -> Vec<String> {
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        body.extend_from_slice(&chunk.unwrap());
    }
    String::from_utf8(body)
        .unwrap()
        .split("\n\n")
        .filter(|f| !f.is_empty())
        .map(|f| {
            f.strip_prefix("data: ")
                .expect("every event is a data line")
                .to_string()
        })
        .collect()
}

const LONG_CHAT: &str = r#"{"model":"sim-model","messages":[{"role":"user","content":"go"}],
    "max_tokens":1500,"ignore_eos":true,"stream":true}"#;

#[tokio::test]
async fn chat_stream_frames_follow_vllm_order() {
    let sim = start_sim(|_| {}).await;
    let response = open_stream(
        &sim,
        r#"{"model":"sim-model","messages":[{"role":"user","content":"hi"}],"max_tokens":3,
            "stream":true,"stream_options":{"include_usage":true}}"#,
    )
    .await;
    let frames = frames(response).await;
    assert_eq!(
        frames.len(),
        1 + 3 + 1 + 1,
        "role, three tokens, usage, done: {frames:?}"
    );
    let json: Vec<Value> = frames[..5]
        .iter()
        .map(|f| serde_json::from_str(f).unwrap())
        .collect();
    assert_eq!(json[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(json[0]["object"], "chat.completion.chunk");
    assert!(json[1]["choices"][0]["finish_reason"].is_null());
    assert_eq!(json[3]["choices"][0]["finish_reason"], "length");
    assert_eq!(json[4]["choices"], Value::Array(vec![]));
    assert_eq!(json[4]["usage"]["completion_tokens"], 3);
    assert_eq!(frames[5], "[DONE]");
    let ids: Vec<&Value> = json.iter().map(|j| &j["id"]).collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "one id per stream");
}

#[tokio::test]
async fn completion_stream_without_usage_has_no_usage_chunk() {
    let sim = start_sim(|_| {}).await;
    let response = reqwest::Client::new()
        .post(url(&sim, "/v1/completions"))
        .body(r#"{"model":"sim-model","prompt":"x","max_tokens":2,"stream":true}"#)
        .send()
        .await
        .unwrap();
    let frames = frames(response).await;
    assert_eq!(frames.len(), 3, "two tokens and done: {frames:?}");
    let last: Value = serde_json::from_str(&frames[1]).unwrap();
    assert_eq!(last["object"], "text_completion");
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert!(last.get("usage").is_none());
}

/// One bad request: where to send it, what to send, the status and the `param` expected.
struct Bad {
    path: &'static str,
    body: String,
    status: u16,
    param: Option<&'static str>,
    message_has: &'static str,
}

#[tokio::test]
async fn bad_input_gets_openai_errors_naming_the_problem() {
    let sim = start_sim(|a| a.max_model_len = Some(64)).await;
    let long_prompt = "word ".repeat(80);
    let cases = [
        Bad { path: "/v1/completions", body: "{\"model\": ".into(), status: 400, param: None, message_has: "Malformed JSON" },
        Bad { path: "/v1/chat/completions", body: "[1,2".into(), status: 400, param: None, message_has: "Malformed JSON" },
        Bad { path: "/v1/completions", body: r#"{"prompt":"hi"}"#.into(), status: 400, param: Some("model"), message_has: "model" },
        Bad { path: "/v1/chat/completions", body: r#"{"messages":[{"role":"user","content":"hi"}]}"#.into(), status: 400, param: Some("model"), message_has: "model" },
        // vLLM answers an unknown model with 404 NotFoundError; so does the simulator.
        Bad { path: "/v1/completions", body: r#"{"model":"other","prompt":"hi"}"#.into(), status: 404, param: Some("model"), message_has: "`other` does not exist" },
        Bad { path: "/v1/completions", body: format!(r#"{{"model":"sim-model","prompt":"{long_prompt}"}}"#), status: 400, param: Some("prompt"), message_has: "maximum context length is 64" },
        Bad { path: "/v1/chat/completions", body: format!(r#"{{"model":"sim-model","messages":[{{"role":"user","content":"{long_prompt}"}}]}}"#), status: 400, param: Some("messages"), message_has: "maximum context length" },
        Bad { path: "/v1/completions", body: r#"{"model":"sim-model","prompt":"hi","max_tokens":-5}"#.into(), status: 400, param: Some("max_tokens"), message_has: "at least 1, got -5" },
        Bad { path: "/v1/chat/completions", body: r#"{"model":"sim-model","messages":[{"role":"user","content":"hi"}],"max_tokens":-1}"#.into(), status: 400, param: Some("max_tokens"), message_has: "at least 1" },
        Bad { path: "/v1/completions", body: r#"{"model":"sim-model","prompt":"hi","max_tokens":100}"#.into(), status: 400, param: Some("max_tokens"), message_has: "maximum context length" },
        Bad { path: "/v1/completions", body: r#"{"model":"sim-model","prompt":"hi","max_tokens":"ten"}"#.into(), status: 400, param: Some("max_tokens"), message_has: "max_tokens" },
        Bad { path: "/v1/completions", body: r#"{"model":"sim-model"}"#.into(), status: 400, param: Some("prompt"), message_has: "prompt" },
    ];
    for case in cases {
        let (status, body) = post(&sim, case.path, &case.body).await;
        let error = &body["error"];
        assert_eq!(status, case.status, "{}: {body}", case.body);
        assert_eq!(error["code"], case.status, "{body}");
        assert_eq!(error["param"].as_str(), case.param, "{}: {body}", case.body);
        let expected_type = if case.status == 404 {
            "NotFoundError"
        } else {
            "BadRequestError"
        };
        assert_eq!(error["type"], expected_type);
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains(case.message_has),
            "{message:?} lacks {:?}",
            case.message_has
        );
    }
    assert_eq!(
        metric(&sim, "vllm:num_requests_waiting").await,
        0.0,
        "nothing bad was queued"
    );
}

#[tokio::test]
async fn a_full_waiting_queue_answers_429() {
    let sim = start_sim(|a| {
        a.max_num_seqs = Some(1);
        a.max_waiting_queue_length = 1;
    })
    .await;
    let running = open_stream(&sim, LONG_CHAT).await;
    eventually("the first request runs", || async {
        metric(&sim, "vllm:num_requests_running").await == 1.0
    })
    .await;
    let waiting = open_stream(&sim, LONG_CHAT).await;
    eventually("the second request waits", || async {
        metric(&sim, "vllm:num_requests_waiting").await == 1.0
    })
    .await;
    let (status, body) = post(
        &sim,
        "/v1/completions",
        r#"{"model":"sim-model","prompt":"hi","max_tokens":1}"#,
    )
    .await;
    assert_eq!(status, 429);
    assert_eq!(body["error"]["type"], "RateLimitError");
    drop(running);
    drop(waiting);
    eventually("both are aborted", || async {
        metric(&sim, "vllm:request_success_total|finished_reason=\"abort\"").await == 2.0
    })
    .await;
    let (status, _) = post(
        &sim,
        "/v1/completions",
        r#"{"model":"sim-model","prompt":"hi","max_tokens":1}"#,
    )
    .await;
    assert_eq!(status, 200, "the queue has room again");
}

#[tokio::test]
async fn a_streaming_client_disconnect_frees_its_slot() {
    let sim = start_sim(|_| {}).await;
    let response = open_stream(&sim, LONG_CHAT).await;
    let mut stream = response.bytes_stream();
    stream.next().await.unwrap().unwrap();
    eventually("the request holds KV blocks", || async {
        metric(&sim, "vllm:kv_cache_usage_perc").await > 0.0
    })
    .await;
    drop(stream);
    eventually("the slot and blocks are freed", || async {
        metric(&sim, "vllm:num_requests_running").await == 0.0
            && metric(&sim, "vllm:kv_cache_usage_perc").await == 0.0
            && metric(&sim, "vllm:request_success_total|finished_reason=\"abort\"").await == 1.0
    })
    .await;
    assert_eq!(sim.in_flight(), 0);
}

#[tokio::test]
async fn a_non_streaming_client_disconnect_frees_its_slot() {
    let sim = start_sim(|_| {}).await;
    let body = r#"{"model":"sim-model","prompt":"go","max_tokens":1500,"ignore_eos":true}"#;
    let mut socket = tokio::net::TcpStream::connect(sim.addr()).await.unwrap();
    let request = format!(
        "POST /v1/completions HTTP/1.1\r\nhost: sim\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    eventually("the request runs", || async {
        metric(&sim, "vllm:num_requests_running").await == 1.0
    })
    .await;
    drop(socket);
    eventually("the request is aborted", || async {
        metric(&sim, "vllm:request_success_total|finished_reason=\"abort\"").await == 1.0
            && metric(&sim, "vllm:num_requests_running").await == 0.0
    })
    .await;
}

#[tokio::test]
async fn health_is_503_until_the_model_has_loaded() {
    let sim = start_sim(|a| a.startup_delay = 0.4).await;
    let (status, _) = get_text(&sim, "/health").await;
    assert_eq!(status, 503);
    let (status, body) = post(
        &sim,
        "/v1/completions",
        r#"{"model":"sim-model","prompt":"hi","max_tokens":1}"#,
    )
    .await;
    assert_eq!(status, 503);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("loading")
    );
    eventually("ready", || async {
        get_text(&sim, "/health").await.0 == 200
    })
    .await;
    let (status, _) = post(
        &sim,
        "/v1/completions",
        r#"{"model":"sim-model","prompt":"hi","max_tokens":1}"#,
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn draining_refuses_new_requests_and_finishes_in_flight_ones() {
    let sim = start_sim(|_| {}).await;
    let addr = sim.addr();
    let in_flight = open_stream(
        &sim,
        r#"{"model":"sim-model","messages":[{"role":"user","content":"go"}],"max_tokens":300,
            "ignore_eos":true,"stream":true}"#,
    )
    .await;
    let health = format!("http://{addr}/health");
    let completions = format!("http://{addr}/v1/completions");
    let shutdown = tokio::spawn(sim.shutdown());
    // New work is refused while the stream is still going.
    let mut refused = false;
    for _ in 0..100 {
        if reqwest::get(&health).await.unwrap().status() == 503 {
            let response = reqwest::Client::new()
                .post(&completions)
                .body(r#"{"model":"sim-model","prompt":"hi","max_tokens":1}"#)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 503);
            let body: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("shutting down")
            );
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        refused,
        "draining must turn /health and new requests to 503"
    );
    let frames = frames(in_flight).await;
    assert_eq!(
        frames.last().map(String::as_str),
        Some("[DONE]"),
        "the in-flight stream completes"
    );
    let last: Value = serde_json::from_str(&frames[frames.len() - 2]).unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    shutdown.await.unwrap().unwrap();
    let mut probe = tokio::net::TcpStream::connect(addr).await;
    if let Ok(socket) = probe.as_mut() {
        // A connection accepted just before close must at least see EOF.
        let mut buf = [0u8; 1];
        let _ = socket
            .write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
            .await;
        assert_eq!(
            socket.read(&mut buf).await.unwrap_or(0),
            0,
            "the server has stopped"
        );
    }
}

#[tokio::test]
async fn version_and_models_answer() {
    let sim = start_sim(|_| {}).await;
    let (status, body) = get_text(&sim, "/version").await;
    assert_eq!(status, 200);
    let version: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(version["version"], aim_sim::VLLM_COMPAT_VERSION);
    let (_, body) = get_text(&sim, "/v1/models").await;
    let models: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(models["data"][0]["id"], "sim-model");
    assert_eq!(models["data"][0]["max_model_len"], 2048);
}

#[tokio::test]
async fn each_token_leaves_as_soon_as_it_is_made() {
    // Without TCP_NODELAY, Nagle held a small write back until the client acknowledged
    // the previous one, and clients delay acknowledgements by up to 40 ms: on a reused
    // connection the next response's first token waited behind that, so a streaming
    // client saw a TTFT ~40 ms longer than the engine's, most of a 60-token stream.
    let sim = start_sim(|_| {}).await;
    let client = reqwest::Client::new();
    for round in 0..4 {
        let started = tokio::time::Instant::now();
        let response = client
            .post(url(&sim, "/v1/completions"))
            .header("content-type", "application/json")
            .body(r#"{"model":"sim-model","prompt":"go","max_tokens":60,"ignore_eos":true,"stream":true}"#)
            .send()
            .await
            .unwrap();
        let mut stream = response.bytes_stream();
        let mut first_token = None;
        while let Some(chunk) = stream.next().await {
            if first_token.is_none()
                && String::from_utf8_lossy(&chunk.unwrap()).contains("\"text\"")
            {
                first_token = Some(started.elapsed());
            }
        }
        let (first, total) = (first_token.expect("a token streamed"), started.elapsed());
        // The first round also sets up the connection.
        if round > 0 {
            assert!(
                first * 4 < total,
                "round {round}: first token after {first:?} of a {total:?} stream"
            );
        }
    }
}
