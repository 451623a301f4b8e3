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
        /// A response body rewritten as it streams (the compressor filter's).
        Rewritten { body: RewrittenBody },
    }
}

/// A body another module rewrites as it streams (the compressor's), behind
/// one box so that `ProxyBody` does not name the modules that make one. The
/// box is the one allocation such a response had before; each frame costs an
/// indirect call.
pub type RewrittenBody = Box<dyn Body<Data = Bytes, Error = BodyError> + Send + Sync + Unpin>;

/// Why a body stopped: the peer's stream broke (hyper), or a filter could
/// not rewrite what arrived (grpc_web's base64).
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// How far a downstream request body has been read: the request timeout only
/// runs while it is arriving, and the access log reports its size. Shared by
/// the body and its stream through the one `Arc` each proxied request has.
#[derive(Debug, Default)]
pub struct RequestProgress {
    pub done: AtomicBool,
    pub received: AtomicU64,
    /// When body data last arrived, in ms from [`clock_base`] (0: never):
    /// the stream idle timeout runs from it.
    last_data_ms: AtomicU64,
}

/// The moment body arrival times are counted from.
fn clock_base() -> std::time::Instant {
    static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *BASE.get_or_init(std::time::Instant::now)
}

impl RequestProgress {
    /// Records that body data arrived now.
    fn data_arrived(&self) {
        self.last_data_ms.store(clock_base().elapsed().as_millis() as u64 + 1, Relaxed);
    }

    /// When body data last arrived.
    pub fn last_data(&self) -> Option<std::time::Instant> {
        let ms = self.last_data_ms.load(Relaxed);
        (ms > 0).then(|| clock_base() + std::time::Duration::from_millis(ms - 1))
    }

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

/// The part of a request body a filter read before it ran.
pub struct ReadBody {
    /// At most `BodyWant::max` bytes.
    pub bytes: bytes::Bytes,
    /// More arrived than `bytes` holds.
    pub partial: bool,
    /// How many bytes arrived before the filters ran.
    pub received: u64,
}

/// Reads the start of a request body for a filter that looks at it before
/// the request goes on (ext_authz's `with_request_body`): the whole body up
/// to `max` bytes (more is `TooLarge`), or with `partial` whatever arrived
/// once `max` bytes did. Gives the bytes read (at most `max`) and the body
/// to send on, whole again.
pub async fn read_prefix(body: ProxyBody, max: u64, partial: bool) -> Result<(ReadBody, ProxyBody), ReadError> {
    use http_body_util::BodyExt as _;
    if !partial {
        let bytes = body.read_whole(Some(max)).await?;
        return Ok((
            ReadBody { received: bytes.len() as u64, bytes: bytes.clone(), partial: false },
            ProxyBody::full(bytes),
        ));
    }
    let mut body = body;
    let mut read = bytes::BytesMut::new();
    let mut ended = false;
    while (read.len() as u64) < max {
        match body.frame().await {
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => read.extend_from_slice(&d),
                // Trailers end the body.
                Err(_) => {
                    ended = true;
                    break;
                }
            },
            Some(Err(_)) => return Err(ReadError::Disconnected),
            None => {
                ended = true;
                break;
            }
        }
    }
    let read = read.freeze();
    let cut = read.slice(..read.len().min(max as usize));
    let seen = ReadBody { partial: cut.len() < read.len(), received: read.len() as u64, bytes: cut };
    let rest = if ended || body.is_end_stream() {
        ProxyBody::full(read)
    } else {
        ProxyBody::Rewritten { body: Box::new(Prefixed { prefix: Some(read), rest: body }) }
    };
    Ok((seen, rest))
}

/// Bytes already read, then the rest of the body.
struct Prefixed {
    prefix: Option<Bytes>,
    rest: ProxyBody,
}

impl Body for Prefixed {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Some(p) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(p))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.rest.is_end_stream()
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.project() {
            ProxyBodyProj::Empty => Poll::Ready(None),
            ProxyBodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ProxyBodyProj::Stream { body } => body.poll_frame(cx).map_err(Into::into),
            ProxyBodyProj::Watched { body, progress } => {
                let r = body.poll_frame(cx);
                match &r {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(d) = frame.data_ref() {
                            progress.received.fetch_add(d.len() as u64, Relaxed);
                            progress.data_arrived();
                        }
                    }
                    Poll::Ready(None) | Poll::Ready(Some(Err(_))) => progress.done.store(true, Relaxed),
                    Poll::Pending => {}
                }
                r.map_err(Into::into)
            }
            ProxyBodyProj::Rewritten { body } => Pin::new(&mut **body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Rewritten { body } => body.is_end_stream(),
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
            Self::Rewritten { body } => body.size_hint(),
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

    /// The body inside, before it is sent (a filter rewriting a reply).
    pub fn inner_mut(&mut self) -> &mut ProxyBody {
        &mut self.inner
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
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
