//! The gRPC stream to the external processor:
//! `envoy.service.ext_proc.v3.ExternalProcessor/Process` on a host of the
//! `envoy_grpc` cluster (its HTTP/2 pool), one per HTTP request. A task of
//! its own carries the call: it sends what the filter queues and hands back
//! each `ProcessingResponse` as it arrives, then the status the stream ended
//! with. Dropping the stream ends the call (Envoy's `close()`: the request
//! side closed and the stream reset).

use crate::body::{BodyError, ProxyBody};
use crate::upstream::cluster::{Cluster, ClusterMap};
use arc_swap::ArcSwap;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::HeaderValue;
use http_body::{Body, Frame};
use http_body_util::BodyExt as _;
use legate_api::pb::envoy::service::ext_proc::v3::{ProcessingRequest, ProcessingResponse};
use prost::Message as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

const PROCESS_PATH: &str = "/envoy.service.ext_proc.v3.ExternalProcessor/Process";

/// gRPC status codes the stream may end with.
pub(super) const OK: u32 = 0;
const UNKNOWN: u32 = 2;
const INTERNAL: u32 = 13;
const UNAVAILABLE: u32 = 14;

/// What arrives from the processor.
pub(super) enum Event {
    Message(Box<ProcessingResponse>),
    /// The stream ended with this gRPC status (0: the processor closed it).
    Closed(u32),
}

/// One open stream.
pub(super) struct Stream {
    tx: Option<mpsc::UnboundedSender<Bytes>>,
    rx: mpsc::UnboundedReceiver<Event>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.tx = None;
        self.task.abort();
    }
}

impl Stream {
    /// Starts the call on a host of `cluster`. A cluster that is unknown or
    /// has no host ends the stream at once with `UNAVAILABLE`.
    pub(super) fn open(clusters: &ArcSwap<ClusterMap>, cluster: &str) -> Stream {
        let (tx, body_rx) = mpsc::unbounded_channel();
        let (events, rx) = mpsc::unbounded_channel();
        let found = clusters.load().get(cluster).cloned();
        let req = request(cluster, body_rx);
        let task = tokio::spawn(async move {
            let status = match (found, req) {
                (Some(c), Some(req)) => call(c, req, &events).await,
                _ => UNAVAILABLE,
            };
            let _ = events.send(Event::Closed(status));
        });
        Stream { tx: Some(tx), rx, task }
    }

    /// Queues a message; a stream that ended drops it (its end is told by `next`).
    pub(super) fn send(&mut self, msg: &ProcessingRequest) {
        let m = msg.encode_to_vec();
        let mut framed = BytesMut::with_capacity(m.len() + 5);
        framed.put_u8(0);
        framed.put_u32(m.len() as u32);
        framed.extend_from_slice(&m);
        if let Some(tx) = &self.tx {
            let _ = tx.send(framed.freeze());
        }
    }

    /// The next message or the stream's end.
    pub(super) async fn next(&mut self) -> Event {
        self.rx.recv().await.unwrap_or(Event::Closed(INTERNAL))
    }
}

/// The `Process` request, its body fed from `body`.
fn request(cluster: &str, body: mpsc::UnboundedReceiver<Bytes>) -> Option<http::Request<ProxyBody>> {
    let mut req = http::Request::new(ProxyBody::Rewritten { body: Box::new(Outgoing(body)) });
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = format!("http://{cluster}{PROCESS_PATH}").parse().ok()?;
    let h = req.headers_mut();
    h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert(http::header::TE, HeaderValue::from_static("trailers"));
    Some(req)
}

/// Counts the call on the cluster as a request for as long as it runs
/// (the task may be aborted anywhere).
struct Charged {
    cluster: Arc<Cluster>,
    held: crate::upstream::pool::Held,
}

impl Drop for Charged {
    fn drop(&mut self) {
        self.cluster.stats.upstream_rq_active.dec();
        self.cluster.stats.upstream_rq_completed.inc();
        self.held = Default::default();
        self.cluster.pools.release();
    }
}

/// Runs the call: every message to `events`, and the status it ended with.
async fn call(cluster: Arc<Cluster>, req: http::Request<ProxyBody>, events: &mpsc::UnboundedSender<Event>) -> u32 {
    let Some(host) = cluster.pick() else { return UNAVAILABLE };
    cluster.stats.upstream_rq_active.inc();
    let mut charged = Charged { cluster: cluster.clone(), held: Default::default() };
    let resp = match crate::upstream::pool::send(&cluster, &host, req, &mut charged.held).await {
        Ok(r) => r,
        Err(_) => return UNAVAILABLE,
    };
    let status = resp.status().as_u16();
    cluster.stats.record_status(status);
    if status != 200 {
        return http_to_grpc(status);
    }
    let (parts, mut body) = resp.into_parts();
    // Trailers-only: the status in the headers.
    if let Some(s) = grpc_status(&parts.headers) {
        return s;
    }
    let mut buf = BytesMut::new();
    loop {
        match body.frame().await {
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => {
                    buf.extend_from_slice(&d);
                    if let Err(s) = deliver(&mut buf, events) {
                        return s;
                    }
                }
                Err(f) => return f.trailers_ref().and_then(grpc_status).unwrap_or(INTERNAL),
            },
            Some(Err(_)) => return UNAVAILABLE,
            None => return INTERNAL,
        }
    }
}

/// Hands on every whole message in `buf`; a message that does not decode
/// (or is compressed, which the call never asked for) ends the stream.
fn deliver(buf: &mut BytesMut, events: &mpsc::UnboundedSender<Event>) -> Result<(), u32> {
    while buf.len() >= 5 {
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if buf.len() < 5 + len {
            break;
        }
        if buf[0] != 0 {
            return Err(INTERNAL);
        }
        buf.advance(5);
        let msg = buf.split_to(len);
        let decoded = ProcessingResponse::decode(msg.freeze()).map_err(|_| INTERNAL)?;
        let _ = events.send(Event::Message(Box::new(decoded)));
    }
    Ok(())
}

fn grpc_status(h: &http::HeaderMap) -> Option<u32> {
    h.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
}

/// Envoy's `httpToGrpcStatus`, for an answer that is not 200.
fn http_to_grpc(status: u16) -> u32 {
    match status {
        400 => INTERNAL,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502..=504 => UNAVAILABLE,
        _ => UNKNOWN,
    }
}

/// The request body: each queued message, until the stream is dropped.
struct Outgoing(mpsc::UnboundedReceiver<Bytes>);

impl Body for Outgoing {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.0.poll_recv(cx).map(|m| m.map(|b| Ok(Frame::data(b))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use legate_api::pb::envoy::service::ext_proc::v3::processing_response::Response;
    use legate_api::pb::envoy::service::ext_proc::v3::HeadersResponse;

    #[test]
    fn whole_messages_are_delivered_and_a_partial_one_waits() {
        let msg = ProcessingResponse {
            response: Some(Response::RequestHeaders(HeadersResponse::default())),
            ..Default::default()
        };
        let m = msg.encode_to_vec();
        let mut buf = BytesMut::new();
        for _ in 0..2 {
            buf.put_u8(0);
            buf.put_u32(m.len() as u32);
            buf.extend_from_slice(&m);
        }
        let cut = buf.len() - 1;
        let rest = buf.split_off(cut);
        let (tx, mut rx) = mpsc::unbounded_channel();
        assert!(deliver(&mut buf, &tx).is_ok());
        assert!(matches!(rx.try_recv(), Ok(Event::Message(_))));
        assert!(rx.try_recv().is_err());
        buf.extend_from_slice(&rest);
        assert!(deliver(&mut buf, &tx).is_ok());
        assert!(matches!(rx.try_recv(), Ok(Event::Message(_))));
        assert!(buf.is_empty());
        let compressed = [1u8, 0, 0, 0, 0];
        let mut buf = BytesMut::from(&compressed[..]);
        assert_eq!(deliver(&mut buf, &tx), Err(INTERNAL));
    }
}
