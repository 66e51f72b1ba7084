//! The ext_proc server: one stream per HTTP request, driven through its
//! phases.
//!
//! 1. `request_headers`: the request is handed to the [`Pick`]er at once
//!    (aim picks by load and flow control, which need no body). The answer
//!    to the headers is withheld until the pick is made, so a request the
//!    flow-control queue holds is held in Envoy; a refusal is answered with
//!    an `ImmediateResponse` and the stream ends.
//! 2. Body and trailer messages that arrive while the pick is pending are
//!    kept and answered, in order, right after the headers' answer (the
//!    protocol requires headers, then body, then trailers).
//! 3. The response phases are answered without change; the picked
//!    endpoint's guard is kept until the response ends (its last body
//!    chunk, trailers, or headers that end it) or the stream closes.
//!
//! Out-of-order or unknown messages end the stream with `INVALID_ARGUMENT`
//! and a message naming what was wrong.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

use crate::map::{self, Modes, RequestInfo, Side};
use crate::proto::envoy::service::ext_proc::v3::{
    HttpBody, ProcessingRequest, ProcessingResponse,
    external_processor_server::{ExternalProcessor, ExternalProcessorServer},
    processing_request,
};

/// A request's endpoint and its place there (dropped when the response
/// ends or the stream closes).
pub struct Picked<G> {
    /// `IP:PORT`, as the protocol carries it.
    pub endpoint: String,
    pub guard: G,
}

/// A request refused instead of picked: answered as Envoy's local reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub status: u16,
    /// A short stable name of the cause (the JSON body's `code`).
    pub code: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

pub type PickFuture<G> = Pin<Box<dyn Future<Output = Result<Picked<G>, Refusal>> + Send>>;

/// Chooses an endpoint for a request; may wait (flow control) before it
/// answers. Dropping the future gives up the wait.
pub trait Pick: Send + Sync + 'static {
    type Guard: Send + 'static;
    /// `peer`: the address of the ext_proc client (Envoy), for requests
    /// that name no client of their own.
    fn pick(&self, request: RequestInfo, peer: Option<SocketAddr>) -> PickFuture<Self::Guard>;
}

/// Body bytes kept while a pick is pending; beyond this the stream ends
/// (a held request is not a place to park large uploads).
const MAX_HELD_BODY: usize = 16 << 20;

/// Envoy's `ExternalProcessor` service over a [`Pick`]er.
pub struct ExtProc<P> {
    picker: Arc<P>,
}

impl<P: Pick> ExtProc<P> {
    pub fn new(picker: Arc<P>) -> Self {
        ExtProc { picker }
    }
}

#[tonic::async_trait]
impl<P: Pick> ExternalProcessor for ExtProc<P> {
    type ProcessStream = ReceiverStream<Result<ProcessingResponse, Status>>;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        let peer = request.remote_addr();
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(run_stream(self.picker.clone(), inbound, tx, peer));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Serves ext_proc (gRPC over h2c) on `listener` until `shutdown` resolves;
/// open streams then run to their end.
pub async fn serve<P: Pick>(
    listener: TcpListener,
    picker: Arc<P>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(ExternalProcessorServer::new(ExtProc::new(picker)))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing seen yet.
    Start,
    /// Headers seen, the pick pending.
    Picking,
    /// The destination is sent; the request and response flow.
    Routed,
}

/// A message that came while the pick was pending, answered after it.
enum Early {
    Body(HttpBody),
    Trailers,
}

struct StreamState<G> {
    phase: Phase,
    modes: Modes,
    early: Vec<Early>,
    early_bytes: usize,
    guard: Option<G>,
}

/// What a message asks the loop to do.
enum Step {
    /// Send these answers (possibly none) and go on.
    Send(Vec<ProcessingResponse>),
    /// Start picking for this request.
    Pick(RequestInfo),
}

async fn run_stream<P: Pick>(
    picker: Arc<P>,
    mut inbound: Streaming<ProcessingRequest>,
    tx: mpsc::Sender<Result<ProcessingResponse, Status>>,
    peer: Option<SocketAddr>,
) {
    let mut st = StreamState {
        phase: Phase::Start,
        modes: Modes::default(),
        early: Vec::new(),
        early_bytes: 0,
        guard: None,
    };
    let mut pick: Option<PickFuture<P::Guard>> = None;
    loop {
        let step = tokio::select! {
            picked = pending_or(&mut pick) => {
                pick = None;
                match picked {
                    Ok(p) => {
                        tracing::debug!(endpoint = %p.endpoint, "ext_proc: picked");
                        st.guard = Some(p.guard);
                        st.phase = Phase::Routed;
                        let mut out = vec![map::destination(&p.endpoint)];
                        for e in std::mem::take(&mut st.early) {
                            out.push(match e {
                                Early::Body(b) => map::body_reply(Side::Request, st.modes.request, b),
                                Early::Trailers => map::trailers_reply(Side::Request),
                            });
                        }
                        Step::Send(out)
                    }
                    Err(r) => {
                        tracing::debug!(status = r.status, code = %r.code, "ext_proc: refused");
                        let _ = tx.send(Ok(map::immediate(&r))).await;
                        // Envoy answers the client itself and ends the stream.
                        return;
                    }
                }
            }
            message = inbound.message() => match message {
                Ok(Some(m)) => match on_message(&mut st, m) {
                    Ok(step) => step,
                    Err(status) => {
                        tracing::debug!(error = %status.message(), "ext_proc: bad message");
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                },
                // Envoy closed its side (the HTTP request is over) or the
                // connection broke: a held request leaves the queue and the
                // guard gives its place back as they drop.
                Ok(None) => return,
                // A message that does not decode, or a broken connection:
                // the status goes back to the client (tonic's decode error
                // names the failing field), and the stream ends.
                Err(e) => {
                    tracing::debug!(error = %e, "ext_proc: the stream broke");
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            },
            () = tx.closed() => return,
        };
        match step {
            Step::Pick(info) => {
                pick = Some(picker.pick(info, peer));
            }
            Step::Send(answers) => {
                for a in answers {
                    if tx.send(Ok(a)).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// Waits for the pick when one is pending, else forever.
async fn pending_or<F: Future + Unpin>(f: &mut Option<F>) -> F::Output {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

fn out_of_order(what: &str, phase: Phase) -> Status {
    let now = match phase {
        Phase::Start => "before request_headers",
        Phase::Picking => "while the request waits for its endpoint",
        Phase::Routed => "after the request got its endpoint",
    };
    Status::invalid_argument(format!(
        "{what} arrived {now}; an ext_proc stream carries one HTTP request: request_headers first, \
         then its body and trailers, then the response's headers, body and trailers"
    ))
}

fn on_message<G>(st: &mut StreamState<G>, m: ProcessingRequest) -> Result<Step, Status> {
    use processing_request::Request as R;
    if st.phase == Phase::Start {
        st.modes = Modes::from_config(m.protocol_config.as_ref());
    }
    if m.observability_mode {
        return Err(Status::invalid_argument(
            "observability_mode is set: Envoy ignores every answer in that mode, so no endpoint \
             can be picked; turn observability_mode off in the ext_proc filter",
        ));
    }
    let Some(request) = m.request else {
        return Err(Status::invalid_argument(
            "the ProcessingRequest sets none of request_headers, request_body, request_trailers, \
             response_headers, response_body, response_trailers (a phase this server does not \
             know); send one of them",
        ));
    };
    match request {
        R::RequestHeaders(h) => {
            if st.phase != Phase::Start {
                return Err(out_of_order("a second request_headers", st.phase));
            }
            let info = map::request_info(&h).map_err(Status::invalid_argument)?;
            st.phase = Phase::Picking;
            Ok(Step::Pick(info))
        }
        R::RequestBody(b) => match st.phase {
            Phase::Start => Err(out_of_order("request_body", st.phase)),
            Phase::Picking => {
                st.early_bytes += b.body.len();
                if st.early_bytes > MAX_HELD_BODY {
                    return Err(Status::resource_exhausted(format!(
                        "the request body passed {MAX_HELD_BODY} bytes while the request waited \
                         for an endpoint; send smaller requests"
                    )));
                }
                st.early.push(Early::Body(b));
                Ok(Step::Send(Vec::new()))
            }
            Phase::Routed => Ok(Step::Send(vec![map::body_reply(
                Side::Request,
                st.modes.request,
                b,
            )])),
        },
        R::RequestTrailers(_) => match st.phase {
            Phase::Start => Err(out_of_order("request_trailers", st.phase)),
            Phase::Picking => {
                st.early.push(Early::Trailers);
                Ok(Step::Send(Vec::new()))
            }
            Phase::Routed => Ok(Step::Send(vec![map::trailers_reply(Side::Request)])),
        },
        R::ResponseHeaders(h) => {
            if st.phase != Phase::Routed {
                return Err(out_of_order("response_headers", st.phase));
            }
            if h.end_of_stream {
                st.guard = None;
            }
            Ok(Step::Send(vec![map::response_headers_reply()]))
        }
        R::ResponseBody(b) => {
            if st.phase != Phase::Routed {
                return Err(out_of_order("response_body", st.phase));
            }
            if b.end_of_stream || b.end_of_stream_without_message {
                st.guard = None;
            }
            Ok(Step::Send(vec![map::body_reply(
                Side::Response,
                st.modes.response,
                b,
            )]))
        }
        R::ResponseTrailers(_) => {
            if st.phase != Phase::Routed {
                return Err(out_of_order("response_trailers", st.phase));
            }
            st.guard = None;
            Ok(Step::Send(vec![map::trailers_reply(Side::Response)]))
        }
    }
}
