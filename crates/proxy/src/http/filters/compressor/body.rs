//! A response body compressed as it streams: each data frame goes through
//! the encoder and what it has produced so far goes out; the stream's end
//! (or its trailers) closes the compressed stream.

use super::encoder::Encoder;
use crate::body::ProxyBody;
use crate::stats::Counter;
use bytes::Bytes;
use http_body::{Body, Frame};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// `total_uncompressed_bytes` and `total_compressed_bytes`, added to when a
/// compressed body ends.
pub struct ByteTotals {
    pub uncompressed: Arc<Counter>,
    pub compressed: Arc<Counter>,
}

/// Compresses the frames of `inner` as they arrive: each data frame is
/// written to the encoder and what it has produced so far goes out; the
/// stream's end follows the last frame. Per response: one encoder (zlib
/// state ~256 KiB at gzip level 6; brotli's window at its quality) and its
/// output buffer.
pub struct CompressedBody {
    inner: ProxyBody,
    encoder: Option<Encoder>,
    /// A trailers frame held back until the gzip stream is closed.
    trailers: Option<Frame<Bytes>>,
    uncompressed: u64,
    compressed: u64,
    totals: Arc<ByteTotals>,
}

impl CompressedBody {
    /// `inner` compressed by `encoder` as it streams.
    pub fn new(inner: ProxyBody, encoder: Encoder, totals: Arc<ByteTotals>) -> Self {
        Self { inner, encoder: Some(encoder), trailers: None, uncompressed: 0, compressed: 0, totals }
    }

    /// Takes what the encoder has written so far.
    fn drain(&mut self) -> Bytes {
        let out = self.encoder.as_mut().map(|e| std::mem::take(e.output())).unwrap_or_default();
        self.compressed += out.len() as u64;
        Bytes::from(out)
    }

    /// Closes the compressed stream: its last bytes.
    fn finish(&mut self) -> Bytes {
        let out = self.encoder.take().map(Encoder::finish).unwrap_or_default();
        self.compressed += out.len() as u64;
        self.totals.uncompressed.add(self.uncompressed);
        self.totals.compressed.add(self.compressed);
        Bytes::from(out)
    }

    fn next_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, crate::body::BodyError>>> {
        loop {
            if self.encoder.is_none() {
                return Poll::Ready(self.trailers.take().map(Ok));
            }
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        self.uncompressed += data.len() as u64;
                        if let Some(e) = self.encoder.as_mut() {
                            e.write(&data);
                        }
                        let out = self.drain();
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    Err(trailers) => {
                        self.trailers = Some(trailers);
                        let out = self.finish();
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                },
                Poll::Ready(None) => {
                    let out = self.finish();
                    return Poll::Ready((!out.is_empty()).then(|| Ok(Frame::data(out))));
                }
                other => return other,
            }
        }
    }
}

impl Body for CompressedBody {
    type Data = Bytes;
    type Error = crate::body::BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, crate::body::BodyError>>> {
        self.get_mut().next_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.encoder.is_none() && self.trailers.is_none()
    }
}
