//! A request's or a response's body after its headers' answer, as its body
//! mode sends it: BUFFERED read whole (to the buffer limit) and sent in one
//! message, BUFFERED_PARTIAL held up to the limit and what is held sent
//! (the rest goes on unprocessed), STREAMED's first chunk. Trailers read
//! with a held body go next when trailers are sent. What is left to do
//! chunk by chunk (STREAMED chunks, trailers at the end) is the streaming
//! task's (`streamed`).

use super::mutation::HeaderList;
use super::session::{Outcome, Phase, Session, Stage};
use super::Body;
use crate::body::ProxyBody;
use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body as _, Frame};
use http_body_util::BodyExt as _;

/// What comes of a body's processing.
pub(super) enum Next {
    /// On; `true` when the rest of the body still goes through the
    /// processor chunk by chunk or for its trailers.
    Go(bool),
    /// Answered in its place.
    Answer(Outcome),
    /// A BUFFERED body over the buffer limit.
    TooLarge,
    /// The body broke off.
    Broken,
}

/// The start of a body, held.
struct Held {
    data: Bytes,
    trailers: Option<HeaderMap>,
    /// The body ended (with or without trailers) within the limit.
    ended: bool,
}

/// Reads the body until it ends or more than `limit` bytes are held.
async fn hold(body: &mut ProxyBody, limit: u64) -> Result<Held, ()> {
    let mut data = BytesMut::new();
    loop {
        if data.len() as u64 > limit {
            return Ok(Held { data: data.freeze(), trailers: None, ended: false });
        }
        match body.frame().await {
            None => return Ok(Held { data: data.freeze(), trailers: None, ended: true }),
            Some(Err(_)) => return Err(()),
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => data.extend_from_slice(&d),
                Err(f) => return Ok(Held { data: data.freeze(), trailers: f.into_trailers().ok(), ended: true }),
            },
        }
        if body.is_end_stream() {
            return Ok(Held { data: data.freeze(), trailers: None, ended: true });
        }
    }
}

fn take(body: &mut ProxyBody) -> ProxyBody {
    std::mem::replace(body, ProxyBody::Empty)
}

/// The body part of a request (`response` false) or a response whose
/// headers went through: `body` becomes what goes on, `headers` take the
/// answers' mutations.
pub(super) async fn process(
    s: &mut Session,
    response: bool,
    headers: &mut HeaderList,
    body: &mut ProxyBody,
    limit: u64,
) -> Next {
    let (phase, trailers_phase) = if response {
        (Phase::ResponseBody, Phase::ResponseTrailers)
    } else {
        (Phase::RequestBody, Phase::RequestTrailers)
    };
    if s.complete || body.is_end_stream() {
        return Next::Go(false);
    }
    let side = s.mode.side(response);
    match side.body {
        Body::None => Next::Go(side.trailers),
        Body::Streamed => first_chunk(s, phase, headers, body).await,
        Body::Buffered | Body::Partial => {
            let Ok(held) = hold(body, limit).await else { return Next::Broken };
            if !held.ended && side.body == Body::Buffered {
                return Next::TooLarge;
            }
            let mut data = Some(held.data);
            let end_of_stream = held.ended && held.trailers.is_none();
            let stage = Stage { phase, headers, body: &mut data, end_of_stream };
            if let o @ Outcome::Immediate { .. } = s.run(stage).await {
                return Next::Answer(o);
            }
            let trailers = match held.trailers {
                Some(t) if s.mode.side(response).trailers && !s.complete => {
                    match trailers_stage(s, trailers_phase, t).await {
                        Ok(t) => Some(t),
                        Err(o) => return Next::Answer(o),
                    }
                }
                t => t,
            };
            let rest = (!held.ended).then(|| take(body));
            let more = rest.is_some() && s.mode.side(response).trailers && !s.complete;
            *body = rebuild(data.unwrap_or_default(), trailers, rest, headers);
            Next::Go(more)
        }
    }
}

/// Trailers through the processor: those its answer leaves.
pub(super) async fn trailers_stage(s: &mut Session, phase: Phase, trailers: HeaderMap) -> Result<HeaderMap, Outcome> {
    let mut list: HeaderList = trailers.iter().map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec())).collect();
    let stage = Stage { phase, headers: &mut list, body: &mut None, end_of_stream: true };
    match s.run(stage).await {
        o @ Outcome::Immediate { .. } => Err(o),
        Outcome::Continue => Ok(super::mutation::to_map(&list)),
    }
}

/// A STREAMED body's first chunk. When it is the whole body it goes now,
/// its answer still changing the headers (as in Envoy, whose headers wait
/// for a body that arrived with them); else it waits at the front of the
/// body for the streaming task.
async fn first_chunk(s: &mut Session, phase: Phase, headers: &mut HeaderList, body: &mut ProxyBody) -> Next {
    let first = match body.frame().await {
        Some(Ok(f)) => f,
        Some(Err(_)) => return Next::Broken,
        None => return Next::Go(false),
    };
    let whole = body.is_end_stream();
    match first.into_data() {
        Ok(d) if whole => {
            let mut data = Some(d);
            let stage = Stage { phase, headers, body: &mut data, end_of_stream: true };
            if let o @ Outcome::Immediate { .. } = s.run(stage).await {
                return Next::Answer(o);
            }
            *body = rebuild(data.unwrap_or_default(), None, None, headers);
            Next::Go(false)
        }
        Ok(d) => {
            *body = prepend(Frame::data(d), take(body));
            Next::Go(true)
        }
        Err(trailers) => {
            *body = prepend(trailers, ProxyBody::Empty);
            Next::Go(true)
        }
    }
}

/// A body rebuilt from its processed start: the data, then the rest of the
/// body or the trailers. Data alone without a `content-length` goes
/// chunked, as Envoy's codec sends a body whose length the headers do not
/// give.
pub(super) fn rebuild(
    data: Bytes,
    trailers: Option<HeaderMap>,
    rest: Option<ProxyBody>,
    list: &HeaderList,
) -> ProxyBody {
    if trailers.is_none() && rest.is_none() && (data.is_empty() || list.iter().any(|(k, _)| k == "content-length")) {
        return ProxyBody::full(data);
    }
    let mut frames: Vec<Result<Frame<Bytes>, crate::body::BodyError>> = Vec::new();
    if !data.is_empty() {
        frames.push(Ok(Frame::data(data)));
    }
    if let Some(t) = trailers {
        frames.push(Ok(Frame::trailers(t)));
    }
    let head = tokio_stream::iter(frames);
    match rest {
        Some(rest) => {
            let rest = http_body_util::BodyStream::new(rest);
            let chained = tokio_stream::StreamExt::chain(head, rest);
            ProxyBody::Rewritten { body: Box::new(http_body_util::StreamBody::new(chained)) }
        }
        None => ProxyBody::Rewritten { body: Box::new(http_body_util::StreamBody::new(head)) },
    }
}

/// A frame already read, then the rest of `body`.
pub(super) fn prepend(first: Frame<Bytes>, body: ProxyBody) -> ProxyBody {
    let first = tokio_stream::iter([Ok(first)]);
    let rest = http_body_util::BodyStream::new(body);
    ProxyBody::Rewritten {
        body: Box::new(http_body_util::StreamBody::new(tokio_stream::StreamExt::chain(first, rest))),
    }
}
