//! HTTP/2 load over keep-alive connections that behaves as production HTTP/2
//! clients do when a server drains: a request the server provably did not
//! process is sent again on a new connection, and every other failure counts.
//!
//! RFC 9113 §8.7: a stream refused with `REFUSED_STREAM`, a stream above the
//! last stream id of a GOAWAY, and a request the client could not open on a
//! connection that is going away were not processed, and "can be safely
//! retried". h2load counts such a request as failed when a GOAWAY arrives in
//! the same read as the response that made it queue its next request (a race
//! inside the client: the proxy never saw that request), so a drain test with
//! h2load fails now and then for what no server can prevent. Here those
//! requests are counted apart (`unprocessed`), and a request that reached the
//! server and did not get a 2xx back — reset, connection lost, timed out,
//! another status — is `failed`.

use h2::client::SendRequest;
use h2::Reason;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::time::Instant;

/// What one run counted.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct H2Figures {
    /// Requests answered with a 2xx and a whole body.
    pub ok: u64,
    /// Requests the server received that did not end in a 2xx.
    pub failed: u64,
    /// Requests the server did not process (sent again on a new connection).
    pub unprocessed: u64,
    /// Connections that could not be opened or set up.
    pub connect_errors: u64,
    /// Connections opened, the first ones included.
    pub connections: u64,
}

#[derive(Default)]
struct Counters {
    ok: AtomicU64,
    failed: AtomicU64,
    unprocessed: AtomicU64,
    connect_errors: AtomicU64,
    connections: AtomicU64,
}

/// An h2c load on `127.0.0.1:port`, `GET /load` with host `app`, running on
/// its own thread.
pub struct H2Load {
    thread: JoinHandle<H2Figures>,
}

/// Starts `connections` connections with `streams` requests in flight on
/// each, for `duration`; no request is started after that.
pub fn spawn_h2_load(port: u16, connections: usize, streams: usize, duration: Duration) -> H2Load {
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(run(port, connections, streams, duration))
    });
    H2Load { thread }
}

impl H2Load {
    /// Waits for the run to end: its figures.
    pub fn finish(self) -> H2Figures {
        self.thread.join().expect("h2 load thread")
    }
}

/// How long one request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

async fn run(port: u16, connections: usize, streams: usize, duration: Duration) -> H2Figures {
    let counts = Arc::new(Counters::default());
    let end = Instant::now() + duration;
    let slots: Vec<_> =
        (0..connections).map(|_| tokio::spawn(connection_slot(port, streams, end, counts.clone()))).collect();
    for slot in slots {
        let _ = slot.await;
    }
    H2Figures {
        ok: counts.ok.load(Ordering::Relaxed),
        failed: counts.failed.load(Ordering::Relaxed),
        unprocessed: counts.unprocessed.load(Ordering::Relaxed),
        connect_errors: counts.connect_errors.load(Ordering::Relaxed),
        connections: counts.connections.load(Ordering::Relaxed),
    }
}

/// One connection at a time until the end: when the server closes or drains
/// it, a new one takes its place.
async fn connection_slot(port: u16, streams: usize, end: Instant, counts: Arc<Counters>) {
    while Instant::now() < end {
        let Some(send) = connect(port, &counts).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let workers: Vec<_> = (0..streams).map(|_| tokio::spawn(requests(send.clone(), end, counts.clone()))).collect();
        for w in workers {
            let _ = w.await;
        }
    }
}

async fn connect(port: u16, counts: &Counters) -> Option<SendRequest<bytes::Bytes>> {
    counts.connections.fetch_add(1, Ordering::Relaxed);
    let tcp = match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
        Ok(t) => t,
        Err(_) => {
            counts.connect_errors.fetch_add(1, Ordering::Relaxed);
            return None;
        }
    };
    let _ = tcp.set_nodelay(true);
    match h2::client::handshake(tcp).await {
        Ok((send, conn)) => {
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Some(send)
        }
        Err(_) => {
            counts.connect_errors.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// How a request ended.
enum Outcome {
    Ok,
    Failed,
    /// Not processed by the server.
    Unprocessed,
    /// The connection takes no new streams; nothing was sent.
    Closed,
}

/// Requests back to back on one connection until the end or until the
/// connection takes no more.
async fn requests(mut send: SendRequest<bytes::Bytes>, end: Instant, counts: Arc<Counters>) {
    while Instant::now() < end {
        let outcome = match tokio::time::timeout(REQUEST_TIMEOUT, one_request(&mut send)).await {
            Ok(o) => o,
            Err(_) => Outcome::Failed,
        };
        match outcome {
            Outcome::Ok => counts.ok.fetch_add(1, Ordering::Relaxed),
            Outcome::Failed => counts.failed.fetch_add(1, Ordering::Relaxed),
            // Sent again: the next request on this connection, or on the
            // next connection when this one is going away.
            Outcome::Unprocessed => counts.unprocessed.fetch_add(1, Ordering::Relaxed),
            Outcome::Closed => return,
        };
    }
}

async fn one_request(send: &mut SendRequest<bytes::Bytes>) -> Outcome {
    // `ready` fails once the connection is going away: nothing was sent.
    let mut ready = match send.clone().ready().await {
        Ok(r) => r,
        Err(_) => return Outcome::Closed,
    };
    let req = http::Request::get("http://app/load").body(()).expect("request");
    let (response, _) = match ready.send_request(req, true) {
        Ok(r) => r,
        Err(_) => return Outcome::Closed,
    };
    let response = match response.await {
        Ok(r) => r,
        Err(e) => return classify(&e),
    };
    let ok = response.status().is_success();
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        match chunk {
            Ok(c) => {
                let _ = body.flow_control().release_capacity(c.len());
            }
            Err(e) => return classify(&e),
        }
    }
    if ok {
        Outcome::Ok
    } else {
        Outcome::Failed
    }
}

/// A stream error: unprocessed when the server refused the stream or its
/// GOAWAY's last stream id is below it; a failure otherwise.
fn classify(e: &h2::Error) -> Outcome {
    let refused = e.reason() == Some(Reason::REFUSED_STREAM) && e.is_remote();
    let above_goaway = e.is_go_away() && e.is_remote();
    if refused || above_goaway {
        Outcome::Unprocessed
    } else {
        Outcome::Failed
    }
}
