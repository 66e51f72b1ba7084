//! `aim gateway --ext-proc-listen` against a tonic client generated from the
//! same vendored upstream Envoy protos, sending what Envoy sends for one
//! HTTP request (request headers with the pseudo-headers, body, end of
//! stream, then the response's headers and body), with real `aim sim`
//! processes as the endpoints: the destination header and the `envoy.lb`
//! metadata name the picker's choice, the pick counts in flight until the
//! response ends, saturation holds the answer, a full queue answers an
//! ImmediateResponse 429, and bad input gets a gRPC error naming what was
//! wrong.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc as std_mpsc};
use std::time::{Duration, Instant};

use aim_epp::proto::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use aim_epp::proto::envoy::service::ext_proc::v3::{
    HttpBody, HttpHeaders, ProcessingRequest, ProcessingResponse, ProtocolConfiguration,
    body_mutation, external_processor_client::ExternalProcessorClient, processing_request,
    processing_response,
};
use prost_types::value::Kind;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};

const AIM: &str = env!("CARGO_BIN_EXE_aim");

/// A child process whose stderr is kept for failure messages; killed on drop.
struct Proc {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// Starts `aim ARGS` and waits for a log line containing `ready`.
    fn start(args: &[String], ready: &str) -> Proc {
        let mut child = Command::new(AIM)
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting aim");
        let stderr = child.stderr.take().expect("piped");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std_mpsc::channel();
        let (kept, wanted) = (log.clone(), ready.to_string());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                kept.lock().unwrap().push_str(&line);
                kept.lock().unwrap().push('\n');
                if line.contains(&wanted) {
                    let _ = tx.send(());
                }
            }
        });
        let p = Proc { child, log };
        rx.recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("aim {args:?} did not log `{ready}`:\n{}", p.log()));
        p
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The value of ` key=` on the first log line that has it.
    fn field(&self, key: &str) -> String {
        let log = self.log();
        let at = log
            .find(&format!(" {key}="))
            .unwrap_or_else(|| panic!("no {key} in the log:\n{log}"));
        log[at + key.len() + 2..]
            .split_whitespace()
            .next()
            .unwrap()
            .trim_matches('"')
            .to_string()
    }
}

struct Sim {
    _proc: Proc,
    /// `127.0.0.1:PORT`
    addr: String,
}

fn sim(extra: &[&str]) -> Sim {
    let mut args: Vec<String> = ["sim", "--host", "127.0.0.1", "--port", "0", "--model", "m"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    let p = Proc::start(&args, "simulator listening");
    let addr = p.field("addr");
    Sim { _proc: p, addr }
}

struct Gateway {
    proc: Proc,
    url: String,
    admin: String,
    ext_proc: SocketAddr,
}

fn gateway(sims: &[&Sim], extra: &[&str]) -> Gateway {
    let mut args: Vec<String> = [
        "gateway",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--ext-proc-listen",
        "127.0.0.1:0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for s in sims {
        args.push("--endpoint".into());
        args.push(format!("http://{}", s.addr));
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let proc = Proc::start(&args, "ext_proc endpoint picker listening");
    let url = format!("http://{}", proc.field("addr"));
    let admin = format!("http://{}", proc.field("admin_addr"));
    let ext_proc = proc.field("ext_proc_addr").parse().unwrap();
    Gateway {
        proc,
        url,
        admin,
        ext_proc,
    }
}

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// The gateway's /metrics sample `series` (labels as written).
async fn metric(g: &Gateway, series: &str) -> Option<f64> {
    let text = http()
        .get(format!("{}/metrics", g.admin))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

fn in_flight(s: &Sim) -> String {
    format!(
        "aim_gateway_endpoint_in_flight{{service=\"default\",endpoint=\"http://{}\"}}",
        s.addr
    )
}

const DEPTH: &str = "aim_gateway_queue_depth{service=\"default\"}";

async fn eventually(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn sim_waiting(s: &Sim) -> f64 {
    let text = http()
        .get(format!("http://{}/metrics", s.addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with("vllm:num_requests_waiting"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

fn completion(max_tokens: u32) -> String {
    format!(
        r#"{{"model":"m","prompt":"hello envoy","max_tokens":{max_tokens},"ignore_eos":true,"stream":true}}"#
    )
}

/// One ext_proc stream, as Envoy opens one per HTTP request.
struct Stream {
    tx: Option<mpsc::Sender<ProcessingRequest>>,
    rx: Streaming<ProcessingResponse>,
}

use processing_request::Request as Req;
use processing_response::Response as Resp;

impl Stream {
    async fn open(addr: SocketAddr) -> Stream {
        let mut client = ExternalProcessorClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(16);
        let rx = client
            .process(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Stream { tx: Some(tx), rx }
    }

    async fn send(&self, r: Req) {
        self.send_raw(ProcessingRequest {
            request: Some(r),
            ..Default::default()
        })
        .await;
    }

    async fn send_raw(&self, m: ProcessingRequest) {
        self.tx.as_ref().unwrap().send(m).await.unwrap();
    }

    /// The request's headers as Envoy sends them in full-duplex mode (the
    /// mode the extension's own Envoy configuration uses), with the
    /// protocol configuration on this first message.
    async fn request_headers(&self, method: &str, path: &str, extra: &[(&str, &str)], eos: bool) {
        let mut pairs = vec![
            (":method", method),
            (":path", path),
            (":authority", "inference.example"),
            (":scheme", "http"),
            ("content-type", "application/json"),
        ];
        pairs.extend_from_slice(extra);
        self.send_raw(ProcessingRequest {
            request: Some(Req::RequestHeaders(HttpHeaders {
                headers: Some(aim_epp::map::header_map(&pairs)),
                end_of_stream: eos,
                ..Default::default()
            })),
            protocol_config: Some(ProtocolConfiguration {
                request_body_mode: BodySendMode::FullDuplexStreamed as i32,
                response_body_mode: BodySendMode::FullDuplexStreamed as i32,
                send_body_without_waiting_for_header_response: false,
            }),
            ..Default::default()
        })
        .await;
    }

    async fn body(&self, request: bool, bytes: &[u8], eos: bool) {
        let b = HttpBody {
            body: bytes.to_vec(),
            end_of_stream: eos,
            ..Default::default()
        };
        self.send(if request {
            Req::RequestBody(b)
        } else {
            Req::ResponseBody(b)
        })
        .await;
    }

    /// The next answer, or `None` when none came within `within`.
    async fn next(&mut self, within: Duration) -> Option<Result<ProcessingResponse, Status>> {
        match tokio::time::timeout(within, self.rx.message()).await {
            Err(_) => None,
            Ok(Ok(Some(m))) => Some(Ok(m)),
            Ok(Ok(None)) => panic!("the stream ended without an answer"),
            Ok(Err(s)) => Some(Err(s)),
        }
    }

    async fn answer(&mut self) -> Resp {
        self.next(Duration::from_secs(10))
            .await
            .expect("an answer within 10 s")
            .expect("an answer, not an error")
            .response
            .expect("a response phase")
    }

    async fn error(&mut self) -> Status {
        match self.next(Duration::from_secs(10)).await {
            Some(Err(s)) => s,
            other => panic!("expected a gRPC error, got {other:?}"),
        }
    }

    /// Reads the answer to the request headers: the endpoint the header
    /// mutation and the `envoy.lb` metadata both name.
    async fn destination(&mut self) -> String {
        let m = self
            .next(Duration::from_secs(10))
            .await
            .expect("an answer")
            .expect("not an error");
        let Some(Resp::RequestHeaders(h)) = &m.response else {
            panic!("expected the request headers' answer, got {m:?}");
        };
        let common = h.response.as_ref().unwrap();
        assert!(common.clear_route_cache, "the route must see the header");
        let set = &common.header_mutation.as_ref().unwrap().set_headers;
        let header = set
            .iter()
            .map(|o| o.header.as_ref().unwrap())
            .find(|h| h.key == "x-gateway-destination-endpoint")
            .expect("the destination header");
        let from_header = String::from_utf8(header.raw_value.clone()).unwrap();
        let md = m.dynamic_metadata.as_ref().expect("dynamic metadata");
        let Some(Kind::StructValue(lb)) = &md.fields["envoy.lb"].kind else {
            panic!("envoy.lb is not a struct: {md:?}");
        };
        let Some(Kind::StringValue(from_md)) = &lb.fields["x-gateway-destination-endpoint"].kind
        else {
            panic!("no destination in envoy.lb: {lb:?}");
        };
        assert_eq!(&from_header, from_md, "header and metadata must agree");
        from_header
    }

    /// Expects the echo of a full-duplex body chunk.
    async fn echoed(&mut self, request: bool) -> (Vec<u8>, bool) {
        let b = match (self.answer().await, request) {
            (Resp::RequestBody(b), true) | (Resp::ResponseBody(b), false) => b,
            (other, _) => panic!("expected a body answer, got {other:?}"),
        };
        match b.response.unwrap().body_mutation.unwrap().mutation.unwrap() {
            body_mutation::Mutation::StreamedResponse(s) => (s.body, s.end_of_stream),
            other => panic!("expected a streamed body, got {other:?}"),
        }
    }

    /// Envoy closes its side when the HTTP request is over.
    fn close(&mut self) {
        self.tx = None;
    }
}

/// Plays Envoy for one completion: picks over ext_proc, sends the body
/// the processor echoed to the endpoint it named, and passes the streamed
/// response back through the processor. Returns the endpoint and the
/// number of response chunks.
async fn through_envoy(g: &Gateway, max_tokens: u32) -> (String, usize) {
    let mut s = Stream::open(g.ext_proc).await;
    let body = completion(max_tokens);
    s.request_headers("POST", "/v1/completions", &[], false)
        .await;
    s.body(true, body.as_bytes(), true).await;
    let endpoint = s.destination().await;
    let (echo, eos) = s.echoed(true).await;
    assert_eq!((echo.as_slice(), eos), (body.as_bytes(), true));
    let mut response = http()
        .post(format!("http://{endpoint}/v1/completions"))
        .header("content-type", "application/json")
        .body(echo)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    s.send(Req::ResponseHeaders(HttpHeaders {
        headers: Some(aim_epp::map::header_map(&[
            (":status", "200"),
            ("content-type", "text/event-stream"),
        ])),
        end_of_stream: false,
        ..Default::default()
    }))
    .await;
    assert!(matches!(s.answer().await, Resp::ResponseHeaders(_)));
    let mut chunks = 0;
    while let Some(c) = response.chunk().await.unwrap() {
        s.body(false, &c, false).await;
        assert_eq!(s.echoed(false).await.0, c.to_vec());
        chunks += 1;
    }
    s.body(false, b"", true).await;
    assert_eq!(s.echoed(false).await, (Vec::new(), true));
    s.close();
    (endpoint, chunks)
}

#[tokio::test]
async fn the_pick_names_the_less_loaded_sim_and_counts_in_flight_until_the_response_ends() {
    let busy = sim(&["--max-num-seqs", "1"]);
    let idle = sim(&["--max-num-seqs", "1"]);
    let g = gateway(&[&busy, &idle], &[]);
    // Three long requests straight to one simulator: one runs, two wait
    // there (below the saturation threshold of five).
    let mut preload = Vec::new();
    for _ in 0..3 {
        let (c, addr) = (http(), busy.addr.clone());
        preload.push(tokio::spawn(async move {
            let mut r = c
                .post(format!("http://{addr}/v1/completions"))
                .body(completion(400))
                .send()
                .await
                .unwrap();
            while let Ok(Some(_)) = r.chunk().await {}
        }));
    }
    eventually(
        "two waiting on the busy sim",
        Duration::from_secs(10),
        async || sim_waiting(&busy).await == 2.0,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    // What Envoy does for one request, end to end: the idle sim is named
    // and serves the completion through the echoed body.
    for _ in 0..3 {
        let (endpoint, chunks) = through_envoy(&g, 5).await;
        assert_eq!(endpoint, idle.addr, "{}", g.proc.log());
        assert!(chunks >= 2, "{chunks} response chunks");
    }
    assert_eq!(metric(&g, &in_flight(&idle)).await, Some(0.0));

    // The pick counts in flight on its endpoint from the answer until the
    // response's last chunk.
    let mut s = Stream::open(g.ext_proc).await;
    s.request_headers("POST", "/v1/chat/completions", &[], false)
        .await;
    s.body(true, b"{\"model\":\"m\",\"messages\":[]}", true)
        .await;
    assert_eq!(s.destination().await, idle.addr);
    let _ = s.echoed(true).await;
    assert_eq!(metric(&g, &in_flight(&idle)).await, Some(1.0));
    s.send(Req::ResponseHeaders(HttpHeaders {
        headers: Some(aim_epp::map::header_map(&[(":status", "200")])),
        ..Default::default()
    }))
    .await;
    let _ = s.answer().await;
    s.body(false, b"data: [DONE]\n\n", false).await;
    let _ = s.echoed(false).await;
    assert_eq!(
        metric(&g, &in_flight(&idle)).await,
        Some(1.0),
        "not ended yet"
    );
    s.body(false, b"", true).await;
    let _ = s.echoed(false).await;
    eventually("the place given back", Duration::from_secs(2), async || {
        metric(&g, &in_flight(&idle)).await == Some(0.0)
    })
    .await;

    // A stream that closes before any response gives its place back too
    // (Envoy's request was reset).
    let mut s = Stream::open(g.ext_proc).await;
    s.request_headers("POST", "/v1/completions", &[], false)
        .await;
    s.body(true, completion(5).as_bytes(), true).await;
    assert_eq!(s.destination().await, idle.addr);
    assert_eq!(metric(&g, &in_flight(&idle)).await, Some(1.0));
    drop(s);
    eventually(
        "the place given back on close",
        Duration::from_secs(2),
        async || metric(&g, &in_flight(&idle)).await == Some(0.0),
    )
    .await;

    // A request without a body that is not an inference request goes to
    // the best endpoint at once, as the proxy sends it.
    let mut s = Stream::open(g.ext_proc).await;
    s.request_headers("GET", "/v1/models", &[], true).await;
    assert_eq!(s.destination().await, idle.addr);
    for p in preload {
        p.abort();
    }
}

#[tokio::test]
async fn saturation_holds_the_answer_and_a_full_queue_answers_429_for_proxy_and_ext_proc_alike() {
    let s = sim(&[]);
    let g = gateway(
        &[&s],
        &[
            "--max-in-flight-per-endpoint",
            "1",
            "--queue-capacity",
            "1",
            "--queue-timeout",
            "20s",
        ],
    );
    eventually("the endpoint scraped", Duration::from_secs(5), async || {
        metric(
            &g,
            &format!(
                "aim_gateway_endpoint_report_age_seconds{{service=\"default\",endpoint=\"http://{}\"}}",
                s.addr
            ),
        )
        .await
        .is_some()
    })
    .await;
    // An ext_proc request takes the only place.
    let mut first = Stream::open(g.ext_proc).await;
    first
        .request_headers("POST", "/v1/completions", &[], false)
        .await;
    first.body(true, completion(5).as_bytes(), true).await;
    assert_eq!(first.destination().await, s.addr);
    let _ = first.echoed(true).await;

    // The next one is held: no answer while the endpoint is saturated.
    let mut held = Stream::open(g.ext_proc).await;
    held.request_headers("POST", "/v1/completions", &[], false)
        .await;
    held.body(true, completion(5).as_bytes(), true).await;
    assert!(
        held.next(Duration::from_millis(500)).await.is_none(),
        "answered while the only endpoint is at its cap"
    );
    assert_eq!(metric(&g, DEPTH).await, Some(1.0));

    // The queue is the proxy's too: with one held, a proxied request and
    // another ext_proc request both find it full.
    let r = http()
        .post(format!("{}/v1/completions", g.url))
        .body(completion(5))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let proxied: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    let mut full = Stream::open(g.ext_proc).await;
    full.request_headers("POST", "/v1/completions", &[], false)
        .await;
    full.body(true, completion(5).as_bytes(), true).await;
    let Resp::ImmediateResponse(i) = full.answer().await else {
        panic!("expected an ImmediateResponse");
    };
    assert_eq!(i.status.unwrap().code, 429);
    let body: serde_json::Value = serde_json::from_slice(&i.body).unwrap();
    assert_eq!(body["error"]["code"], "queue_full");
    assert_eq!(body["error"]["type"], proxied["error"]["type"]);
    assert_eq!(body["error"]["code"], proxied["error"]["code"]);
    let headers: Vec<(String, String)> = i
        .headers
        .unwrap()
        .set_headers
        .into_iter()
        .map(|o| {
            let h = o.header.unwrap();
            (h.key, String::from_utf8(h.raw_value).unwrap())
        })
        .collect();
    assert!(headers.contains(&("content-type".into(), "application/json".into())));
    let retry: u64 = headers
        .iter()
        .find(|(n, _)| n == "retry-after")
        .expect("retry-after")
        .1
        .parse()
        .unwrap();
    assert!(retry >= 1);
    assert_eq!(i.details, "aim_queue_full");
    assert_eq!(
        metric(
            &g,
            "aim_gateway_rejections_total{service=\"default\",reason=\"queue_full\"}"
        )
        .await,
        Some(2.0)
    );

    // The first response ends: the held request gets its answer.
    let released = Instant::now();
    first
        .send(Req::ResponseHeaders(HttpHeaders {
            headers: Some(aim_epp::map::header_map(&[(":status", "200")])),
            end_of_stream: true,
            ..Default::default()
        }))
        .await;
    assert!(matches!(first.answer().await, Resp::ResponseHeaders(_)));
    assert_eq!(held.destination().await, s.addr);
    assert!(released.elapsed() < Duration::from_secs(2));
    // Its body, received while it was held, follows the headers' answer.
    let (echo, eos) = held.echoed(true).await;
    assert_eq!((echo, eos), (completion(5).into_bytes(), true));
    assert_eq!(metric(&g, DEPTH).await, Some(0.0));
    let waited = metric(
        &g,
        "aim_gateway_queue_wait_seconds_sum{service=\"default\"}",
    )
    .await
    .unwrap();
    assert!(waited > 0.4, "held {waited} s");
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_the_server_goes_on() {
    let s = sim(&[]);
    let g = gateway(&[&s], &[]);

    // A body before any headers.
    let mut x = Stream::open(g.ext_proc).await;
    x.body(true, b"{}", true).await;
    let e = x.error().await;
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message()
            .contains("request_body arrived before request_headers"),
        "{e:?}"
    );

    // A message that sets no phase (as a newer Envoy's unknown phase reads).
    let mut x = Stream::open(g.ext_proc).await;
    x.send_raw(ProcessingRequest::default()).await;
    let e = x.error().await;
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("sets none of request_headers"),
        "{e:?}"
    );

    // Headers without :path.
    let mut x = Stream::open(g.ext_proc).await;
    x.send(Req::RequestHeaders(HttpHeaders {
        headers: Some(aim_epp::map::header_map(&[(":method", "POST")])),
        ..Default::default()
    }))
    .await;
    let e = x.error().await;
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("no `:path` header"), "{e:?}");

    // Response headers before the request had its endpoint.
    let mut x = Stream::open(g.ext_proc).await;
    x.send(Req::ResponseHeaders(HttpHeaders::default())).await;
    let e = x.error().await;
    assert!(
        e.message()
            .contains("response_headers arrived before request_headers"),
        "{e:?}"
    );

    // An inference request whose headers end it: no body to serve.
    let mut x = Stream::open(g.ext_proc).await;
    x.request_headers("POST", "/v1/completions", &[], true)
        .await;
    let Resp::ImmediateResponse(i) = x.answer().await else {
        panic!("expected an ImmediateResponse");
    };
    assert_eq!(i.status.unwrap().code, 400);
    let body: serde_json::Value = serde_json::from_slice(&i.body).unwrap();
    assert_eq!(body["error"]["code"], "missing_body");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("needs its JSON body"),
        "{body}"
    );

    // Bytes that are not a ProcessingRequest: a raw gRPC frame whose field
    // 2 (request_headers) claims more bytes than there are.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let frame: &[u8] = &[0, 0, 0, 0, 3, 0x12, 0x7f, 0x01];
    let req = http::Request::post(format!(
        "http://{}/envoy.service.ext_proc.v3.ExternalProcessor/Process",
        g.ext_proc
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(http_body_util::Full::new(bytes::Bytes::from_static(frame)))
    .unwrap();
    let response = client.request(req).await.unwrap();
    let (parts, body) = response.into_parts();
    use http_body_util::BodyExt;
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let status = trailers
        .get("grpc-status")
        .or_else(|| parts.headers.get("grpc-status"))
        .expect("a grpc-status");
    assert_ne!(status, "0", "a malformed message must not end OK");
    let message = trailers
        .get("grpc-message")
        .or_else(|| parts.headers.get("grpc-message"))
        .map(|m| m.to_str().unwrap().to_string())
        .unwrap_or_default();
    assert!(message.contains("decode"), "{message}");

    // None of that hurt the server: a good request is answered.
    let mut ok = Stream::open(g.ext_proc).await;
    ok.request_headers("POST", "/v1/completions", &[], false)
        .await;
    ok.body(true, completion(1).as_bytes(), true).await;
    assert_eq!(ok.destination().await, s.addr);
    assert!(!g.proc.log().contains("panicked"), "{}", g.proc.log());
}

#[test]
fn ext_proc_with_kubernetes_is_refused_naming_the_flags() {
    let out = Command::new(AIM)
        .args([
            "gateway",
            "--kubernetes",
            "--ext-proc-listen",
            "127.0.0.1:0",
        ])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--ext-proc-listen") && err.contains("--kubernetes"),
        "{err}"
    );
}
