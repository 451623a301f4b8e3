//! The byte tunnel of an upgraded stream (WebSocket, CONNECT): bytes both
//! ways between the downstream connection and the upstream until either
//! side closes, then the stream's stats and access log.

use crate::body::Finish;
use crate::http::conn_manager::stream::Stream;
use hyper_util::rt::TokioIo;
use std::time::Duration;

/// Bytes both ways between the downstream connection (once hyper has
/// written the response and handed it over) and the upstream, then the
/// stream's stats and access log. `bytes_received`/`bytes_sent` count the
/// tunnelled bytes. Cost: the tcp_proxy's two buffers (16 KiB, growing to 64 KiB).
pub(super) async fn tunnel<U: crate::io::Io, G: Send + 'static>(
    mut stream: Box<Stream>,
    down: hyper::upgrade::OnUpgrade,
    up: U,
    guard: G,
    idle: Option<Duration>,
) {
    let (rx, tx, complete) = match down.await {
        Ok(d) => {
            let p = crate::io::pipe::pipe_ends(TokioIo::new(d), up, idle).await;
            if p.timed_out {
                stream.flags = "SI";
                stream.details = "stream_idle_timeout";
            } else {
                // Envoy's flags for a tunnel its upstream, or its
                // downstream, ended.
                stream.flags = if p.upstream_first { "UC" } else { "DC" };
            }
            (p.rx, p.tx, true)
        }
        Err(_) => (0, 0, false),
    };
    drop(guard);
    stream.request_progress = None;
    stream.bytes_received = rx;
    Finish::finish(stream, tx, complete);
}
