//! A body sent STREAMED: each chunk goes to the processor as it arrives
//! and on as the processor's answer changed it, in order; and trailers sent
//! to the processor (trailer mode SEND), its answer changing them. A task
//! of its own carries the session meanwhile and, for a request, puts it
//! back for the response side once the body has ended.

use super::mutation::HeaderList;
use super::session::{Outcome, Phase, Session, Stage};
use super::Body as BodyMode;
use crate::body::{BodyError, ProxyBody};
use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt as _;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// Where the session goes back for the response side.
pub(super) type Slot = Arc<Mutex<Option<Session>>>;

/// The body to send on: `body` chunk by chunk through the processor (the
/// response's when `response`). The session is put in `slot` at the end
/// (when `keep`).
pub(super) fn body(s: Session, body: ProxyBody, response: bool, slot: Slot, keep: bool) -> ProxyBody {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(pump(s, body, response, slot, keep, tx));
    ProxyBody::Rewritten { body: Box::new(Chunks(rx)) }
}

type Item = Result<Frame<Bytes>, BodyError>;

async fn pump(mut s: Session, mut body: ProxyBody, response: bool, slot: Slot, keep: bool, tx: mpsc::Sender<Item>) {
    let put_back = |s: Session| {
        if keep {
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(s);
        }
    };
    loop {
        let (data, end) = match body.frame().await {
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => {
                    let end = body.is_end_stream();
                    (d, end)
                }
                // Trailers end the body.
                Err(trailers) => {
                    let out = trailers_frame(&mut s, response, trailers).await;
                    put_back(s);
                    let _ = tx.send(out).await;
                    return;
                }
            },
            Some(Err(e)) => {
                put_back(s);
                let _ = tx.send(Err(e)).await;
                return;
            }
            // The body ended after its last chunk: an empty one says so.
            None => (Bytes::new(), true),
        };
        let out = chunk(&mut s, response, data, end).await;
        if end {
            put_back(s);
            if let Some(item) = out.filter(|i| !matches!(i, Ok(f) if f.data_ref().is_some_and(|d| d.is_empty()))) {
                let _ = tx.send(item).await;
            }
            return;
        }
        if let Some(item) = out {
            if tx.send(item).await.is_err() {
                return;
            }
        }
    }
}

/// One chunk through the processor when the body is STREAMED; once
/// processing is over, or in another mode, unchanged. A failure the
/// request cannot be answered for any more (its headers went on) breaks
/// the body.
async fn chunk(s: &mut Session, response: bool, data: Bytes, end: bool) -> Option<Item> {
    if s.complete || s.mode.side(response).body != BodyMode::Streamed {
        return Some(Ok(Frame::data(data)));
    }
    let mut headers = HeaderList::new();
    let mut body = Some(data);
    let phase = if response { Phase::ResponseBody } else { Phase::RequestBody };
    let stage = Stage { phase, headers: &mut headers, body: &mut body, end_of_stream: end };
    match s.run(stage).await {
        Outcome::Continue => Some(Ok(Frame::data(body.unwrap_or_default()))),
        Outcome::Immediate { .. } => Some(Err("the external processor failed on a streamed body".into())),
    }
}

/// The trailers, through the processor when they are sent.
async fn trailers_frame(s: &mut Session, response: bool, frame: Frame<Bytes>) -> Item {
    if s.complete || !s.mode.side(response).trailers {
        return Ok(frame);
    }
    let Ok(trailers) = frame.into_trailers() else { return Err("a body frame neither data nor trailers".into()) };
    let phase = if response { Phase::ResponseTrailers } else { Phase::RequestTrailers };
    match super::bodies::trailers_stage(s, phase, trailers).await {
        Ok(t) => Ok(Frame::trailers(t)),
        Err(_) => Err("the external processor failed on the trailers".into()),
    }
}

/// The processed chunks, as the request body.
struct Chunks(mpsc::Receiver<Item>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        self.0.poll_recv(cx)
    }
}
