//! The connection's read side behind the chain's data-checking network
//! filters (`rbac`): as data (or the end of the stream) arrives, the
//! filters run in order; a denied connection reads nothing more, and the
//! data that was denied is not passed on.
//!
//! A filter whose check waits (ext_authz) is asked once, when the first
//! data arrives: that data is held here until the check answers.
//!
//! Cost: a branch per read; the filters' checks when data comes.

use crate::listener::network::api::{Check, ConnCtx, ConnectionFilter, DataVerdict};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A stream whose reads pass the filters first.
pub struct Gate<S> {
    inner: S,
    filters: Arc<[Arc<dyn ConnectionFilter>]>,
    conn: ConnCtx,
    /// Per filter: its verdict so far.
    verdicts: Vec<DataVerdict>,
    /// The waiting checks, in filter order, once the first data came.
    waiting: Option<Vec<Check>>,
    /// Data read while the checks wait, and whether the stream ended then.
    held: Option<(Vec<u8>, bool)>,
    /// The waiting checks were asked for (once, at the first data).
    asked: bool,
}

impl<S> Gate<S> {
    pub fn new(inner: S, filters: Arc<[Arc<dyn ConnectionFilter>]>, conn: ConnCtx) -> Self {
        let n = filters.len();
        Self {
            inner,
            filters,
            conn,
            verdicts: vec![DataVerdict::Unchecked; n],
            waiting: None,
            held: None,
            asked: false,
        }
    }

    /// Polls the waiting checks in order: Ready(true) when all allowed.
    fn poll_checks(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        let Some(checks) = self.waiting.as_mut() else { return Poll::Ready(true) };
        while let Some(first) = checks.first_mut() {
            match first.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(false) => {
                    self.verdicts.fill(DataVerdict::Denied);
                    return Poll::Ready(false);
                }
                Poll::Ready(true) => {
                    drop(checks.remove(0));
                }
            }
        }
        self.waiting = None;
        Poll::Ready(true)
    }

    /// Gives held data (or the end it saw) to the reader once the checks allowed.
    fn release_held(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        let Some((data, _ended)) = self.held.as_mut() else { return false };
        let n = data.len().min(buf.remaining());
        buf.put_slice(&data[..n]);
        data.drain(..n);
        if data.is_empty() {
            self.held = None;
        }
        true
    }

    /// Runs the filters in order as data arrives. False: close the connection.
    fn on_data(&mut self) -> bool {
        for (f, verdict) in self.filters.iter().zip(self.verdicts.iter_mut()) {
            *verdict = f.on_data(&self.conn, *verdict);
            if *verdict == DataVerdict::Denied {
                return false;
            }
        }
        true
    }
}

/// The error a denied connection's reads get (the only data-checking filter is RBAC).
fn denied() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::PermissionDenied, "rbac: connection denied")
}

impl<S: AsyncRead + Unpin> AsyncRead for Gate<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.verdicts.contains(&DataVerdict::Denied) {
            return Poll::Ready(Err(denied()));
        }
        match this.poll_checks(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(false) => {
                this.held = None;
                return Poll::Ready(Err(denied()));
            }
            Poll::Ready(true) => {}
        }
        if this.release_held(buf) {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            // Data, or the end of the stream: Envoy's onData runs for both.
            Poll::Ready(Ok(())) => {
                if !this.on_data() {
                    // The data read is dropped, not passed on.
                    buf.set_filled(before);
                    return Poll::Ready(Err(denied()));
                }
                if !this.asked {
                    this.asked = true;
                    let checks: Vec<Check> =
                        this.filters.iter().filter_map(|f| f.check_first_data(&this.conn)).collect();
                    if !checks.is_empty() {
                        let data = buf.filled()[before..].to_vec();
                        let ended = data.is_empty();
                        buf.set_filled(before);
                        this.held = Some((data, ended));
                        this.waiting = Some(checks);
                        return Pin::new(this).poll_read(cx, buf);
                    }
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Gate<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A filter whose check waits `delay`, then answers `allow`; it counts
    /// how often it was asked.
    struct Waits {
        allow: bool,
        asked: std::sync::atomic::AtomicUsize,
    }

    impl ConnectionFilter for Waits {
        fn checks_data(&self) -> bool {
            true
        }
        fn check_first_data(&self, _: &ConnCtx) -> Option<Check> {
            self.asked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let allow = self.allow;
            Some(Box::pin(async move {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                allow
            }))
        }
    }

    fn gate(allow: bool) -> (Gate<tokio::io::DuplexStream>, tokio::io::DuplexStream, Arc<Waits>) {
        let (a, b) = tokio::io::duplex(64);
        let f = Arc::new(Waits { allow, asked: Default::default() });
        let filters: Arc<[Arc<dyn ConnectionFilter>]> = Arc::new([f.clone() as Arc<dyn ConnectionFilter>]);
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], 1).into();
        (Gate::new(a, filters, ConnCtx { remote: addr, local: addr, tls: None, sni: None }), b, f)
    }

    #[tokio::test]
    async fn the_first_data_waits_for_the_check_which_is_asked_once() {
        let (mut g, mut peer, f) = gate(true);
        peer.write_all(b"hello").await.expect("write");
        let mut buf = [0u8; 16];
        let n = g.read(&mut buf).await.expect("allowed");
        assert_eq!(&buf[..n], b"hello");
        peer.write_all(b"more").await.expect("write");
        let n = g.read(&mut buf).await.expect("allowed");
        assert_eq!(&buf[..n], b"more");
        assert_eq!(f.asked.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_denied_check_drops_the_held_data() {
        let (mut g, mut peer, _) = gate(false);
        peer.write_all(b"hello").await.expect("write");
        let mut buf = [0u8; 16];
        assert!(g.read(&mut buf).await.is_err());
        assert!(g.read(&mut buf).await.is_err());
    }
}
