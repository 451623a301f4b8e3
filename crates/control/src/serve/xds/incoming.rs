//! Accepted xDS connections, at most `per_address` open at once from one
//! client address (`--xds-max-connections-per-address`): with the streams
//! per connection bounded (`limits`), this bounds what one client holds. A
//! connection over the bound is closed as it is accepted, before TLS or
//! HTTP/2, and a warning says how many were, at most every 10 s.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::{Connected, TcpConnectInfo};

type Table = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// One open connection's place in its address's count.
struct Slot {
    table: Table,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = t.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                t.remove(&self.ip);
            }
        }
    }
}

/// An accepted connection, counted until it closes.
pub struct Counted {
    inner: TcpStream,
    _slot: Option<Slot>,
}

impl Connected for Counted {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> TcpConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for Counted {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Connections refused since the last warning, and when that was.
#[derive(Default)]
struct Refusals {
    count: AtomicU64,
    warned_ms: AtomicU64,
}

impl Refusals {
    fn note(&self, ip: IpAddr, limit: usize) {
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        let now = crate::clock::unix_ms();
        let last = self.warned_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 10_000
            && self.warned_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            self.count.store(0, Ordering::Relaxed);
            tracing::warn!(
                "xDS: {n} connection(s) closed at accept: {ip} (and maybe others) already has {limit} open \
                 (--xds-max-connections-per-address)"
            );
        }
    }
}

/// The listener's connections, each counted against its address; 0: no bound.
pub fn incoming(listener: TcpListener, per_address: usize) -> impl Stream<Item = io::Result<Counted>> {
    let table: Table = Arc::default();
    let refusals = Refusals::default();
    tokio_stream::wrappers::TcpListenerStream::new(listener).filter_map(move |accepted| {
        let inner = match accepted {
            Ok(s) => s,
            Err(e) => return Some(Err(e)),
        };
        if per_address == 0 {
            return Some(Ok(Counted { inner, _slot: None }));
        }
        let ip = match inner.peer_addr() {
            Ok(a) => a.ip(),
            Err(_) => return None,
        };
        let mut t = table.lock().unwrap_or_else(|e| e.into_inner());
        let open = t.entry(ip).or_insert(0);
        if *open >= per_address {
            drop(t);
            refusals.note(ip, per_address);
            return None;
        }
        *open += 1;
        drop(t);
        Some(Ok(Counted { inner, _slot: Some(Slot { table: table.clone(), ip }) }))
    })
}
