//! The bodies gRPC-Web rewrites as they stream: a `grpc-web-text` request's
//! base64 decoded on its way upstream, and a response's frames (base64 for
//! a text response) with its trailers turned into a trailer frame at the
//! end of the body.

use super::stats::GrpcStats;
use crate::body::{BodyError, ProxyBody};
use base64::Engine as _;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};

/// The flag byte of a gRPC-Web trailer frame.
pub const TRAILER_FLAG: u8 = 0x80;

/// Why a `grpc-web-text` request body was refused (Envoy's response code
/// details).
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum Base64Error {
    /// The body did not end on a multiple of 4 characters (padding is mandatory).
    #[error("grpc_base_64_decode_failed_bad_size")]
    BadSize,
    /// A group of 4 characters is not base64.
    #[error("grpc_base_64_decode_failed")]
    BadData,
}

/// Envoy's base64 decoding: whole groups of four, `=` padding only at the
/// end of what is decoded at once.
fn decode(text: &[u8]) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(text).ok().filter(|d| !d.is_empty())
}

/// A `grpc-web-text` request body decoded as it arrives: each complete group
/// of four characters goes upstream decoded; a trailing partial group waits
/// for the next chunk. A failure is recorded in `failed` (the response
/// becomes Envoy's local reply) and ends the body with an error, which
/// resets the upstream stream.
pub struct TextRequestBody {
    inner: ProxyBody,
    pending: BytesMut,
    failed: Arc<Failure>,
    done: bool,
}

/// Whether, and why, a text request body was refused.
#[derive(Debug, Default)]
pub struct Failure {
    set: AtomicBool,
    bad_size: AtomicBool,
}

impl Failure {
    fn record(&self, e: Base64Error) {
        self.bad_size.store(e == Base64Error::BadSize, Relaxed);
        self.set.store(true, Relaxed);
    }

    /// The failure, once one happened.
    pub fn get(&self) -> Option<Base64Error> {
        self.set.load(Relaxed).then(|| {
            if self.bad_size.load(Relaxed) {
                Base64Error::BadSize
            } else {
                Base64Error::BadData
            }
        })
    }
}

impl TextRequestBody {
    pub fn new(inner: ProxyBody, failed: Arc<Failure>) -> Self {
        Self { inner, pending: BytesMut::new(), failed, done: false }
    }

    fn fail(&mut self, e: Base64Error) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.failed.record(e);
        self.done = true;
        Poll::Ready(Some(Err(Box::new(e))))
    }

    /// Decodes the complete groups of what has arrived.
    fn decode_ready(&mut self) -> Result<Option<Bytes>, Base64Error> {
        let whole = self.pending.len() / 4 * 4;
        if whole == 0 {
            return Ok(None);
        }
        let text = self.pending.split_to(whole);
        decode(&text).map(|d| Some(Bytes::from(d))).ok_or(Base64Error::BadData)
    }

    fn next_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        self.pending.extend_from_slice(&data);
                        match self.decode_ready() {
                            Ok(Some(d)) => return Poll::Ready(Some(Ok(Frame::data(d)))),
                            Ok(None) => {}
                            Err(e) => return self.fail(e),
                        }
                    }
                    Err(trailers) => {
                        if !self.pending.is_empty() {
                            return self.fail(Base64Error::BadSize);
                        }
                        self.done = true;
                        return Poll::Ready(Some(Ok(trailers)));
                    }
                },
                Poll::Ready(None) => {
                    if !self.pending.is_empty() {
                        return self.fail(Base64Error::BadSize);
                    }
                    self.done = true;
                    return Poll::Ready(None);
                }
                other => return other,
            }
        }
    }
}

impl Body for TextRequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.get_mut().next_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

/// The trailer frame: flag 0x80, the length, then `name:value\r\n` for
/// each trailer (names are lower case in HTTP/2 and in `HeaderMap`).
pub fn trailer_frame(trailers: &HeaderMap) -> Bytes {
    let mut block = BytesMut::new();
    for (k, v) in trailers {
        block.put_slice(k.as_str().as_bytes());
        block.put_u8(b':');
        block.put_slice(v.as_bytes());
        block.put_slice(b"\r\n");
    }
    let mut out = BytesMut::with_capacity(5 + block.len());
    out.put_u8(TRAILER_FLAG);
    out.put_u32(block.len() as u32);
    out.put_slice(&block);
    out.freeze()
}

fn base64(data: &[u8]) -> Bytes {
    Bytes::from(base64::engine::general_purpose::STANDARD.encode(data))
}

/// A gRPC response on its way to a gRPC-Web client: data as it is (binary)
/// or each complete gRPC frame in base64 on its own (text, as Envoy encodes
/// them; a partial frame waits for the rest), and the trailers as a trailer
/// frame closing the body. The trailers' `grpc-status` is counted.
pub struct WebResponseBody {
    inner: ProxyBody,
    text: bool,
    /// Text: the bytes of a frame not yet complete.
    partial: BytesMut,
    /// The trailer frame, sent after the data that came with it.
    last: Option<Bytes>,
    stats: Option<Arc<GrpcStats>>,
    done: bool,
}

impl WebResponseBody {
    pub fn new(inner: ProxyBody, text: bool, stats: Option<Arc<GrpcStats>>) -> Self {
        Self { inner, text, partial: BytesMut::new(), last: None, stats, done: false }
    }

    /// Text: the complete frames of what has arrived, each in base64.
    fn encode_frames(&mut self) -> Bytes {
        let mut out = BytesMut::new();
        while self.partial.len() >= 5 {
            let len = (&self.partial[1..5]).get_u32() as usize;
            if self.partial.len() < 5 + len {
                break;
            }
            let frame = self.partial.split_to(5 + len);
            out.put_slice(&base64(&frame));
        }
        out.freeze()
    }

    fn trailers(&mut self, trailers: &HeaderMap) -> Bytes {
        if let Some(s) = &self.stats {
            s.charge(trailers.get("grpc-status"));
        }
        let frame = trailer_frame(trailers);
        if self.text {
            base64(&frame)
        } else {
            frame
        }
    }

    fn next_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        loop {
            if let Some(last) = self.last.take() {
                self.done = true;
                return Poll::Ready(Some(Ok(Frame::data(last))));
            }
            if self.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if !self.text => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(data) => {
                        self.partial.extend_from_slice(&data);
                        let out = self.encode_frames();
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    Err(frame) => {
                        let trailers = frame.into_trailers().unwrap_or_default();
                        self.last = Some(self.trailers(&trailers));
                    }
                },
                Poll::Ready(None) => {
                    self.done = true;
                    return Poll::Ready(None);
                }
                other => return other,
            }
        }
    }
}

impl Body for WebResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.get_mut().next_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.last.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    fn collect(b: impl Body<Data = Bytes, Error = BodyError> + Send) -> Result<Bytes, BodyError> {
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        rt.block_on(async { b.collect().await.map(|c| c.to_bytes()) })
    }

    #[test]
    fn text_is_decoded_whole_groups_at_a_time() {
        let failed = Arc::new(Failure::default());
        let body = TextRequestBody::new(ProxyBody::full(&b"AAAAAAJoaQ=="[..]), failed.clone());
        assert_eq!(collect(body).ok(), Some(Bytes::from_static(b"\0\0\0\0\x02hi")));
        assert_eq!(failed.get(), None);
        let body = TextRequestBody::new(ProxyBody::full(&b"AAAAAAJoa"[..]), failed.clone());
        assert!(collect(body).is_err());
        assert_eq!(failed.get(), Some(Base64Error::BadSize));
        let failed = Arc::new(Failure::default());
        let body = TextRequestBody::new(ProxyBody::full(&b"AA!AAAJoaQ=="[..]), failed.clone());
        assert!(collect(body).is_err());
        assert_eq!(failed.get(), Some(Base64Error::BadData));
    }

    #[test]
    fn trailers_become_the_last_frame() {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", http::HeaderValue::from_static("0"));
        t.insert("x-a", http::HeaderValue::from_static("b"));
        assert_eq!(&trailer_frame(&t)[..], b"\x80\0\0\0\x16grpc-status:0\r\nx-a:b\r\n");
    }
}
