//! A body decompressed as it streams, in either direction: each data frame
//! goes through the decoder and what it gives goes on; the stream ends with
//! trailers naming the bytes before and after, as Envoy's filter adds them
//! (an HTTP/1 peer gets them only where trailers are declared, as with Envoy).

use super::decoder::Inflater;
use crate::body::{BodyError, ProxyBody};
use crate::stats::Counter;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Body, Frame};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// One direction's byte counters and the trailers' names.
pub struct Totals {
    pub compressed: Arc<Counter>,
    pub uncompressed: Arc<Counter>,
    pub compressed_trailer: HeaderName,
    pub uncompressed_trailer: HeaderName,
}

pub struct DecompressedBody {
    inner: ProxyBody,
    inflater: Inflater,
    totals: Arc<Totals>,
    compressed: u64,
    uncompressed: u64,
    /// The trailers went out: the stream is over.
    done: bool,
}

impl DecompressedBody {
    pub fn new(inner: ProxyBody, inflater: Inflater, totals: Arc<Totals>) -> Self {
        Self { inner, inflater, totals, compressed: 0, uncompressed: 0, done: false }
    }

    fn inflate(&mut self, data: &[u8]) -> Bytes {
        let out = self.inflater.decompress(data);
        self.compressed += data.len() as u64;
        self.uncompressed += out.len() as u64;
        self.totals.compressed.add(data.len() as u64);
        self.totals.uncompressed.add(out.len() as u64);
        Bytes::from(out)
    }

    /// The byte totals added to `trailers`.
    fn report(&mut self, mut trailers: HeaderMap) -> Frame<Bytes> {
        self.done = true;
        let t = &self.totals;
        trailers.append(t.compressed_trailer.clone(), HeaderValue::from(self.compressed));
        trailers.append(t.uncompressed_trailer.clone(), HeaderValue::from(self.uncompressed));
        Frame::trailers(trailers)
    }

    fn next_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        let out = self.inflate(&data);
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    Err(frame) => {
                        let trailers = frame.into_trailers().unwrap_or_default();
                        return Poll::Ready(Some(Ok(self.report(trailers))));
                    }
                },
                Poll::Ready(None) => {
                    self.inflater.end();
                    return Poll::Ready(Some(Ok(self.report(HeaderMap::new()))));
                }
                other => return other,
            }
        }
    }
}

impl Body for DecompressedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.get_mut().next_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}
