//! The one body type the proxy sends in both directions: nothing, a buffer, or a
//! streamed hyper body. An enum rather than a boxed trait object, so forwarding
//! a request allocates no body wrapper.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};

pin_project_lite::pin_project! {
    #[project = ProxyBodyProj]
    pub enum ProxyBody {
        Empty,
        Full { data: Option<Bytes> },
        Stream { #[pin] body: Incoming },
        /// A streamed request body that counts its bytes and says when it ended.
        Watched { #[pin] body: Incoming, progress: std::sync::Arc<RequestProgress> },
        /// A response body compressed as it streams (compressor filter).
        Compressed { body: Box<CompressedBody> },
    }
}

/// A streaming encoder writing into a buffer the body drains.
pub enum Encoder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(Box<zstd::stream::write::Encoder<'static, Vec<u8>>>),
}

impl Encoder {
    pub fn gzip(level: u32) -> Self {
        Self::Gzip(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level)))
    }

    /// `quality` 0-11, `window_bits` 10-24 (Envoy's defaults: 3 and 18).
    pub fn brotli(quality: u32, window_bits: u32) -> Self {
        Self::Brotli(Box::new(brotli::CompressorWriter::new(Vec::new(), 4096, quality, window_bits)))
    }

    /// `level` 1-22 (Envoy's default 3), a content checksum, and a
    /// strategy (0 leaves zstd's choice). `None` if zstd refuses the settings.
    pub fn zstd(level: i32, checksum: bool, strategy: u32) -> Option<Self> {
        use zstd::stream::raw::CParameter;
        let mut e = zstd::stream::write::Encoder::new(Vec::new(), level).ok()?;
        e.include_checksum(checksum).ok()?;
        if strategy != 0 {
            let s = match strategy {
                1 => zstd::zstd_safe::Strategy::ZSTD_fast,
                2 => zstd::zstd_safe::Strategy::ZSTD_dfast,
                3 => zstd::zstd_safe::Strategy::ZSTD_greedy,
                4 => zstd::zstd_safe::Strategy::ZSTD_lazy,
                5 => zstd::zstd_safe::Strategy::ZSTD_lazy2,
                6 => zstd::zstd_safe::Strategy::ZSTD_btlazy2,
                7 => zstd::zstd_safe::Strategy::ZSTD_btopt,
                8 => zstd::zstd_safe::Strategy::ZSTD_btultra,
                _ => zstd::zstd_safe::Strategy::ZSTD_btultra2,
            };
            e.set_parameter(CParameter::Strategy(s)).ok()?;
        }
        Some(Self::Zstd(Box::new(e)))
    }

    fn write(&mut self, data: &[u8]) {
        use std::io::Write as _;
        // Writing into a Vec cannot fail.
        let _ = match self {
            Self::Gzip(e) => e.write_all(data),
            Self::Brotli(e) => e.write_all(data),
            Self::Zstd(e) => e.write_all(data),
        };
    }

    fn output(&mut self) -> &mut Vec<u8> {
        match self {
            Self::Gzip(e) => e.get_mut(),
            Self::Brotli(e) => e.get_mut(),
            Self::Zstd(e) => e.get_mut(),
        }
    }

    fn finish(self) -> Vec<u8> {
        match self {
            Self::Gzip(e) => e.finish().unwrap_or_default(),
            Self::Brotli(e) => e.into_inner(),
            Self::Zstd(e) => e.finish().unwrap_or_default(),
        }
    }
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
    stats: std::sync::Arc<crate::http::filters::compressor::Stats>,
}

impl CompressedBody {
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
        self.stats.total_uncompressed_bytes.add(self.uncompressed);
        self.stats.total_compressed_bytes.add(self.compressed);
        Bytes::from(out)
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
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

/// How far a downstream request body has been read: the request timeout only
/// runs while it is arriving, and the access log reports its size. Shared by
/// the body and its stream through the one `Arc` each proxied request has.
#[derive(Debug, Default)]
pub struct RequestProgress {
    pub done: AtomicBool,
    pub received: AtomicU64,
}

impl RequestProgress {
    /// The progress of a body that has been read whole: `len` bytes.
    pub fn whole(len: u64) -> Self {
        let progress = Self::default();
        progress.set_whole(len);
        progress
    }

    /// Records that the body has been read whole: `len` bytes.
    pub fn set_whole(&self, len: u64) {
        self.received.store(len, Relaxed);
        self.done.store(true, Relaxed);
    }
}

/// The most of a request body the router holds to send it again (retries)
/// or twice (mirrors): Envoy's default per-request buffer limit, 1 MiB.
pub const RESEND_BUFFER_LIMIT: u64 = 1 << 20;

/// Why a request body could not be read whole.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ReadError {
    /// More than the limit arrived.
    TooLarge,
    /// The client went away (or broke the stream) first.
    Disconnected,
}

impl ProxyBody {
    pub fn full(data: impl Into<Bytes>) -> Self {
        let data: Bytes = data.into();
        if data.is_empty() {
            Self::Empty
        } else {
            Self::Full { data: Some(data) }
        }
    }
    /// `inner` compressed by `encoder` as it streams.
    pub fn compressed(
        inner: ProxyBody,
        encoder: Encoder,
        stats: std::sync::Arc<crate::http::filters::compressor::Stats>,
    ) -> Self {
        Self::Compressed {
            body: Box::new(CompressedBody {
                inner,
                encoder: Some(encoder),
                trailers: None,
                uncompressed: 0,
                compressed: 0,
                stats,
            }),
        }
    }

    pub fn stream(body: Incoming) -> Self {
        Self::Stream { body }
    }
    /// A streamed body made to report its progress; a buffered one is
    /// already whole.
    pub fn watched(self, progress: std::sync::Arc<RequestProgress>) -> Self {
        match self {
            Self::Stream { body } => Self::watch(body, progress),
            other => {
                if !progress.done.swap(true, Relaxed) {
                    progress.received.fetch_add(other.size_hint().exact().unwrap_or(0), Relaxed);
                }
                other
            }
        }
    }

    /// Whether the whole body is known to fit in `limit` bytes before any of
    /// it is read: it has ended already, or its declared `content-length`
    /// is at most `limit`.
    pub fn fits(&self, headers: &http::HeaderMap, limit: u64) -> bool {
        self.is_end_stream()
            || headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .is_some_and(|n| n <= limit)
    }

    /// Reads the body whole; with a `limit`, refuses more than that many
    /// bytes. The one place a request body is buffered (the buffer filter,
    /// retries, mirrors).
    pub async fn read_whole(self, limit: Option<u64>) -> Result<Bytes, ReadError> {
        use http_body_util::BodyExt as _;
        match limit {
            Some(limit) => match http_body_util::Limited::new(self, limit as usize).collect().await {
                Ok(c) => Ok(c.to_bytes()),
                Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(ReadError::TooLarge),
                Err(_) => Err(ReadError::Disconnected),
            },
            None => self.collect().await.map(|c| c.to_bytes()).map_err(|_| ReadError::Disconnected),
        }
    }

    fn watch(body: Incoming, progress: std::sync::Arc<RequestProgress>) -> Self {
        if body.is_end_stream() {
            progress.done.store(true, Relaxed);
        }
        Self::Watched { body, progress }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.project() {
            ProxyBodyProj::Empty => Poll::Ready(None),
            ProxyBodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ProxyBodyProj::Stream { body } => body.poll_frame(cx),
            ProxyBodyProj::Watched { body, progress } => {
                let r = body.poll_frame(cx);
                match &r {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(d) = frame.data_ref() {
                            progress.received.fetch_add(d.len() as u64, Relaxed);
                        }
                    }
                    Poll::Ready(None) | Poll::Ready(Some(Err(_))) => progress.done.store(true, Relaxed),
                    Poll::Pending => {}
                }
                r
            }
            ProxyBodyProj::Compressed { body } => body.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Compressed { body } => body.encoder.is_none() && body.trailers.is_none(),
            Self::Empty => true,
            Self::Full { data } => data.is_none(),
            Self::Stream { body } | Self::Watched { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Empty => SizeHint::with_exact(0),
            Self::Full { data } => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Self::Stream { body } | Self::Watched { body, .. } => body.size_hint(),
            Self::Compressed { .. } => SizeHint::default(),
        }
    }
}

/// Called once when a response body is done (fully sent, or dropped early),
/// with the bytes that went out.
pub trait Finish: Send {
    fn finish(self: Box<Self>, bytes_sent: u64, complete: bool);
}

pin_project_lite::pin_project! {
    /// A response body that counts what it sends and reports when it is done:
    /// that is when Envoy writes the access log and records request timing.
    pub struct TrackedBody {
        #[pin]
        inner: ProxyBody,
        sent: u64,
        done: bool,
        finish: Option<Box<dyn Finish>>,
        // The cluster's `max_stream_duration`, when the response is still
        // streaming at that moment: the stream is reset and counted.
        deadline: Option<(Pin<Box<tokio::time::Sleep>>, std::sync::Arc<crate::stats::Counter>)>,
    }
    impl PinnedDrop for TrackedBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(f) = this.finish.take() {
                // hyper stops polling once `is_end_stream` says so, so a body
                // that reports its end was sent whole.
                let complete = *this.done || this.inner.is_end_stream();
                f.finish(*this.sent, complete);
            }
        }
    }
}

impl TrackedBody {
    pub fn new(inner: ProxyBody, finish: Option<Box<dyn Finish>>) -> Self {
        Self { inner, sent: 0, done: false, finish, deadline: None }
    }

    /// Resets the stream if it has not ended by `at` (counting it in `reached`).
    pub fn with_deadline(mut self, at: tokio::time::Instant, reached: std::sync::Arc<crate::stats::Counter>) -> Self {
        self.deadline = Some((Box::pin(tokio::time::sleep_until(at)), reached));
        self
    }
}

/// Why a response stream was cut short.
#[derive(Debug, thiserror::Error)]
#[error("upstream max stream duration reached")]
pub struct MaxDurationReached;

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        if let Some((sleep, reached)) = this.deadline.as_mut() {
            if sleep.as_mut().poll(cx).is_ready() {
                reached.inc();
                *this.deadline = None;
                return Poll::Ready(Some(Err(Box::new(MaxDurationReached))));
            }
        }
        let r = this.inner.poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    *this.sent += d.len() as u64;
                }
            }
            Poll::Ready(None) => *this.done = true,
            _ => {}
        }
        r.map(|o| o.map(|x| x.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    /// Many small writes, drained as they come, then the end: what came out
    /// decompresses to what went in.
    fn round_trip(mut enc: Encoder, decode: impl Fn(&[u8]) -> Vec<u8>) {
        let input: Vec<u8> = (0..5000u32).flat_map(|i| format!("line {i} of a streamed body\n").into_bytes()).collect();
        let mut out = Vec::new();
        for chunk in input.chunks(1000) {
            enc.write(chunk);
            out.append(enc.output());
        }
        out.extend(enc.finish());
        assert!(out.len() < input.len() / 4, "compressed {} -> {}", input.len(), out.len());
        assert_eq!(decode(&out), input);
    }

    #[test]
    fn gzip_streams() {
        round_trip(Encoder::gzip(6), |b| {
            let mut v = Vec::new();
            flate2::read::GzDecoder::new(b).read_to_end(&mut v).expect("gzip");
            v
        });
    }

    #[test]
    fn brotli_streams() {
        round_trip(Encoder::brotli(3, 18), |b| {
            let mut v = Vec::new();
            brotli::Decompressor::new(b, 4096).read_to_end(&mut v).expect("brotli");
            v
        });
    }
}
