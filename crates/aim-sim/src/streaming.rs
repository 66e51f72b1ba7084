//! Server-sent events in vLLM's order: (chat) a role chunk, one chunk per token with the
//! finish reason on the last, a usage chunk if asked for, then `data: [DONE]`.
//!
//! The request's [`Ticket`] lives inside the stream, so when the client disconnects and the
//! body is dropped, the request is aborted in the engine at once.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::driver::{Completion, Update};
use crate::protocol::Endpoint;
use crate::response::{self, ResponseMeta, TokenFrame};
use crate::server::Ticket;
use crate::text::OutputPlan;

enum Phase {
    Role,
    Tokens,
    Usage(Completion),
    Done,
    Closed,
}

struct SseStream {
    meta: ResponseMeta,
    token_frame: TokenFrame,
    plan: OutputPlan,
    include_usage: bool,
    updates: mpsc::UnboundedReceiver<Update>,
    ticket: Ticket,
    phase: Phase,
}

fn frame(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

impl SseStream {
    async fn next_frame(&mut self) -> Option<Bytes> {
        match self.phase {
            Phase::Role => {
                self.phase = Phase::Tokens;
                Some(frame(&response::role_chunk(&self.meta)))
            }
            Phase::Tokens => match self.updates.recv().await {
                Some(Update::Token { index, done }) => {
                    if let Some(done) = done {
                        self.ticket.finish();
                        self.phase = if self.include_usage {
                            Phase::Usage(done)
                        } else {
                            Phase::Done
                        };
                    }
                    let piece = self.plan.piece(index);
                    if done.is_none() {
                        return Some(Bytes::from(self.token_frame.render(&piece)));
                    }
                    Some(frame(&response::token_chunk(
                        &self.meta, &self.plan, &piece, done,
                    )))
                }
                Some(Update::Rejected) | None => {
                    // Mid-stream failure: one error frame, then the end marker.
                    self.ticket.finish();
                    self.phase = Phase::Done;
                    let error = crate::error::ApiError {
                        status: axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        message: "The engine dropped the request.".into(),
                        param: None,
                    };
                    Some(frame(&error.body()))
                }
            },
            Phase::Usage(done) => {
                self.phase = Phase::Done;
                Some(frame(&response::usage_chunk(&self.meta, done)))
            }
            Phase::Done => {
                self.phase = Phase::Closed;
                Some(Bytes::from_static(b"data: [DONE]\n\n"))
            }
            Phase::Closed => None,
        }
    }
}

pub(crate) fn response(
    meta: ResponseMeta,
    plan: OutputPlan,
    include_usage: bool,
    updates: mpsc::UnboundedReceiver<Update>,
    ticket: Ticket,
) -> Response {
    let phase = match meta.endpoint {
        Endpoint::Chat => Phase::Role,
        Endpoint::Completions => Phase::Tokens,
    };
    let token_frame = TokenFrame::new(&meta);
    let state = SseStream {
        meta,
        token_frame,
        plan,
        include_usage,
        updates,
        ticket,
        phase,
    };
    let stream = futures::stream::unfold(state, |mut state| async move {
        let frame = state.next_frame().await?;
        Some((Ok::<_, Infallible>(frame), state))
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}
