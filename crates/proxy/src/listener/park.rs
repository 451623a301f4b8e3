//! Releasing an idle HTTP/1 keep-alive connection's buffers.
//!
//! hyper keeps a read and a write buffer (8 KiB each) in every HTTP/1
//! connection for its whole life, idle ones too; Envoy frees its buffers
//! once they are drained. A connection that has had no request for
//! [`PARK_AFTER`], with nothing of a next request read, is parked: hyper is
//! asked to close it (an idle HTTP/1 connection closes at once, and a
//! response still going out finishes first), and [`Parking`], the stream
//! hyper was given, hands the stream back instead of shutting it down.
//! hyper's connection, and its buffers, are then dropped. The next byte the
//! client sends resumes the connection on a new hyper connection, that byte
//! first. The client sees nothing of it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How long an HTTP/1 connection goes without a request before it is parked.
pub const PARK_AFTER: Duration = Duration::from_secs(1);

/// Connections parked since [`take_parked`] was last called.
static PARKED: AtomicUsize = AtomicUsize::new(0);

/// Counts a parked connection (its buffers went back to the allocator).
pub fn count_parked() {
    PARKED.fetch_add(1, Ordering::Relaxed);
}

/// How many connections were parked since the last call.
pub fn take_parked() -> usize {
    PARKED.swap(0, Ordering::Relaxed)
}

/// Whether a connection may be parked now: its hyper connection has served
/// HTTP/1 requests (it has begun `min_requests` in all), none is in flight,
/// nothing of a next one has been read, and it was not handed to a tunnel.
/// (hyper closes only a connection that completed a request at once; it
/// would answer a first request with `connection: close`.)
pub fn parkable(conn: &crate::http::conn_manager::ConnInfo, min_requests: u64) -> bool {
    conn.requests.load(Ordering::Relaxed) >= min_requests
        && conn.active_streams.load(Ordering::Relaxed) == 0
        && !conn.http2.load(Ordering::Relaxed)
        && !conn.upgraded.load(Ordering::Relaxed)
        && !conn.mid_request.load(Ordering::Relaxed)
}

/// What a connection's parking timer knows of its requests.
pub struct Idling {
    /// The requests begun when the timer last fired.
    seen_requests: u64,
    /// When the last stream ended.
    pub last_idle: tokio::time::Instant,
    /// The requests begun once the current hyper connection may be parked.
    min_requests: u64,
}

impl Default for Idling {
    fn default() -> Self {
        Self { seen_requests: 0, last_idle: tokio::time::Instant::now(), min_requests: 1 }
    }
}

impl Idling {
    /// The timer fired: `None` when the connection is to be parked now,
    /// else when to look again (`PARK_AFTER` after its last stream ended,
    /// or later while one is in flight).
    pub fn check(&mut self, conn: &crate::http::conn_manager::ConnInfo) -> Option<tokio::time::Instant> {
        let requests = conn.requests.load(Ordering::Relaxed);
        if requests == self.seen_requests && parkable(conn, self.min_requests) {
            return None;
        }
        self.seen_requests = requests;
        let now = tokio::time::Instant::now();
        if conn.active_streams.load(Ordering::Relaxed) > 0 {
            return Some(now + PARK_AFTER);
        }
        Some((self.last_idle + PARK_AFTER).max(now + PARK_AFTER / 16))
    }

    /// A parked connection resumed on a new hyper connection.
    pub fn resumed(&mut self, conn: &crate::http::conn_manager::ConnInfo) {
        self.min_requests = conn.requests.load(Ordering::Relaxed) + 1;
    }
}

/// Where a parking connection's stream is handed back.
pub struct Slot<T> {
    /// The next shutdown hyper asks for parks the stream instead.
    wanted: AtomicBool,
    // Boxed: the slot is kept for the connection's life, the stream only
    // while parked.
    io: Mutex<Option<Box<T>>>,
}

impl<T> Slot<T> {
    pub fn new() -> Arc<Self> {
        Arc::new(Self { wanted: AtomicBool::new(false), io: Mutex::new(None) })
    }

    /// Asks that hyper's next shutdown park the stream.
    pub fn want(&self) {
        self.wanted.store(true, Ordering::Relaxed);
    }

    /// The parked stream, once hyper's connection has ended by parking it.
    pub fn take(&self) -> Option<Box<T>> {
        self.wanted.store(false, Ordering::Relaxed);
        self.io.lock().ok().and_then(|mut io| io.take())
    }
}

/// The stream a connection's hyper connection runs on: passes everything
/// through, but for a shutdown asked through its [`Slot`], and begins with
/// the byte that resumed a parked connection.
pub struct Parking<T> {
    inner: Option<T>,
    first: Option<u8>,
    slot: Arc<Slot<T>>,
}

impl<T: AsyncRead + AsyncWrite + Unpin> Parking<T> {
    pub fn new(inner: T, slot: Arc<Slot<T>>) -> Self {
        Self { inner: Some(inner), first: None, slot }
    }

    /// A parked stream resumed by `first`, which is read first.
    pub fn resumed(inner: T, first: u8, slot: Arc<Slot<T>>) -> Self {
        Self { inner: Some(inner), first: Some(first), slot }
    }
}

/// Polls the future in `f`, if any (a parked connection has no hyper
/// connection to poll).
pub fn poll_some<F: Future + Unpin>(f: &mut Option<F>, cx: &mut Context<'_>) -> Poll<F::Output> {
    f.as_mut().map_or(Poll::Pending, |f| Pin::new(f).poll(cx))
}

/// [`poll_first_byte`] on the parked stream, if any.
pub fn poll_parked<T: AsyncRead + Unpin>(
    io: &mut Option<Box<T>>,
    cx: &mut Context<'_>,
) -> Poll<io::Result<Option<u8>>> {
    io.as_mut().map_or(Poll::Pending, |io| poll_first_byte(&mut **io, cx))
}

/// Waits, holding no buffer, for a parked stream's next byte (`None` at
/// the end of the stream).
pub fn poll_first_byte<T: AsyncRead + Unpin>(io: &mut T, cx: &mut Context<'_>) -> Poll<io::Result<Option<u8>>> {
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    ready!(Pin::new(io).poll_read(cx, &mut buf))?;
    Poll::Ready(Ok(buf.filled().first().copied()))
}

impl<T: AsyncRead + Unpin> AsyncRead for Parking<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() > 0 {
            if let Some(b) = this.first.take() {
                buf.put_slice(&[b]);
                return Poll::Ready(Ok(()));
            }
        }
        match this.inner.as_mut() {
            Some(io) => Pin::new(io).poll_read(cx, buf),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Parking<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut().inner.as_mut() {
            Some(io) => Pin::new(io).poll_write(cx, buf),
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().inner.as_mut() {
            Some(io) => Pin::new(io).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(io) = this.inner.as_mut() else { return Poll::Ready(Ok(())) };
        if !this.slot.wanted.load(Ordering::Relaxed) {
            return Pin::new(io).poll_shutdown(cx);
        }
        // Parking: what hyper wrote goes out, the stream stays open.
        ready!(Pin::new(io).poll_flush(cx))?;
        if let (Some(io), Ok(mut slot)) = (this.inner.take(), this.slot.io.lock()) {
            *slot = Some(Box::new(io));
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_parked_stream_comes_back_open_and_resumes_with_its_next_byte() {
        let (near, mut far) = tokio::io::duplex(64);
        let slot = Slot::new();
        let mut io = Parking::new(near, slot.clone());
        io.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        slot.want();
        io.shutdown().await.unwrap();
        drop(io);
        let near = slot.take().expect("the stream was parked, not shut down");
        let mut head = [0u8; 19];
        far.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200 OK\r\n\r\n");

        let mut near = *near;
        far.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let first = std::future::poll_fn(|cx| poll_first_byte(&mut near, cx)).await.unwrap();
        assert_eq!(first, Some(b'G'));
        let mut io = Parking::resumed(near, b'G', slot.clone());
        let mut line = [0u8; 16];
        io.read_exact(&mut line).await.unwrap();
        assert_eq!(&line, b"GET / HTTP/1.1\r\n");

        // Without a parking asked, a shutdown shuts the stream down.
        io.shutdown().await.unwrap();
        assert!(slot.take().is_none());
        let mut rest = Vec::new();
        far.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn the_end_of_a_parked_stream_ends_it() {
        let (mut near, far) = tokio::io::duplex(64);
        drop(far);
        let first = std::future::poll_fn(|cx| poll_first_byte(&mut near, cx)).await.unwrap();
        assert_eq!(first, None);
    }
}
