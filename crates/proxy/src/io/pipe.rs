//! Two byte streams joined: what `tcp_proxy` and an upgraded or CONNECT HTTP
//! stream do once their upstream connection is up. Cost: two buffers per
//! connection, 16 KiB each growing to 64 KiB under bulk transfer; activity is
//! one relaxed store per read.

use super::Io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How a [`pipe_ends`] ended.
pub struct Piped {
    /// Bytes from downstream, and to it.
    pub rx: u64,
    pub tx: u64,
    /// The idle timeout ended it.
    pub timed_out: bool,
    /// The upstream finished sending before the downstream did.
    pub upstream_first: bool,
}

/// Copies both ways. A side that ends its writes (FIN) is half-closed on the
/// other side, as Envoy's tcp_proxy does; the idle timeout, when set, ends
/// both. Tells which side finished first (an upgraded HTTP stream
/// logs `UC` when the upstream closed it).
pub async fn pipe_ends<D: Io, U: Io>(down: D, up: U, idle: Option<Duration>) -> Piped {
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let (rx, tx) = (AtomicU64::new(0), AtomicU64::new(0));
    // 0: neither side has finished; 1: downstream first; 2: upstream first.
    let first = std::sync::atomic::AtomicU8::new(0);
    let (mut dr, mut dw) = tokio::io::split(down);
    let (mut ur, mut uw) = tokio::io::split(up);
    let both = async {
        tokio::join!(
            async {
                copy(&mut dr, &mut uw, &rx, &last, start).await;
                let _ = first.compare_exchange(0, 1, Relaxed, Relaxed);
            },
            async {
                copy(&mut ur, &mut dw, &tx, &last, start).await;
                let _ = first.compare_exchange(0, 2, Relaxed, Relaxed);
            }
        );
    };
    let watchdog = async {
        let Some(idle) = idle else { return std::future::pending::<()>().await };
        loop {
            let since = Duration::from_millis(last.load(Relaxed));
            let quiet = start.elapsed().saturating_sub(since);
            if quiet >= idle {
                return;
            }
            tokio::time::sleep(idle - quiet).await;
        }
    };
    let timed_out = tokio::select! {
        _ = both => false,
        _ = watchdog => true,
    };
    Piped { rx: rx.load(Relaxed), tx: tx.load(Relaxed), timed_out, upstream_first: first.load(Relaxed) == 2 }
}

/// A direction's buffer starts small and grows, while reads fill it, up to
/// this: a bulk transfer moves 64 KiB per read and write (about a third more
/// throughput through a tunnel than 16 KiB in `bench/tunnel.py`), while an
/// interactive or idle connection keeps 16 KiB per direction.
const MAX_COPY_BUFFER: usize = 64 * 1024;

/// One direction: reads until EOF or error, writes everything to the other
/// side, then ends the other side's writes.
async fn copy<R, W>(r: &mut R, w: &mut W, count: &AtomicU64, last: &AtomicU64, start: Instant)
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if n == buf.len() && buf.len() < MAX_COPY_BUFFER {
            buf.resize(buf.len() * 2, 0);
        }
        last.store(start.elapsed().as_millis() as u64, Relaxed);
        if w.write_all(&buf[..n]).await.is_err() {
            break;
        }
        count.fetch_add(n as u64, Relaxed);
    }
    let _ = w.shutdown().await;
}
