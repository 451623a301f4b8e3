//! The connection's read side behind the chain's data-checking network
//! filters (`rbac`): as data (or the end of the stream) arrives, the
//! filters run in order; a denied connection reads nothing more, and the
//! data that was denied is not passed on.
//!
//! Cost: a branch per read; the filters' checks when data comes.

use crate::listener::network::api::{ConnCtx, ConnectionFilter, DataVerdict};
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
}

impl<S> Gate<S> {
    pub fn new(inner: S, filters: Arc<[Arc<dyn ConnectionFilter>]>, conn: ConnCtx) -> Self {
        let n = filters.len();
        Self { inner, filters, conn, verdicts: vec![DataVerdict::Unchecked; n] }
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
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            // Data, or the end of the stream: Envoy's onData runs for both.
            Poll::Ready(Ok(())) => {
                if this.on_data() {
                    Poll::Ready(Ok(()))
                } else {
                    // The data read is dropped, not passed on.
                    buf.set_filled(before);
                    Poll::Ready(Err(denied()))
                }
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
