//! Upstream connections: per-worker pools of HTTP/1.1 keep-alive and HTTP/2
//! connections, built on hyper's connection-level client.
//!
//! Each worker has its own pools (Envoy's model): the pool map of a cluster is
//! indexed by worker, so its mutex is only ever taken by one thread. HTTP/1.1:
//! a list of idle senders per host; one that is still busy with a previous
//! response body is skipped. HTTP/2: one multiplexed connection per host.
//!
//! Circuit breakers (see `breakers`): a request that finds no ready
//! connection is pending until it has one, within `max_pending_requests`; a
//! new connection needs room under `max_connections` (counted across
//! workers), except the first to a host in this worker's pool, which Envoy
//! always allows. A pending HTTP/1.1 request past the connection limit waits
//! for one of the host's connections to become ready.

use crate::body::ProxyBody;
use crate::cluster::{Cluster, Host};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Most idle HTTP/1.1 connections kept per host per worker.
const MAX_IDLE_PER_HOST: usize = 256;

/// A pooled HTTP/1.1 connection: its sender, and a weak handle on its
/// accounting, which an upgrade takes a strong hold of so that the
/// connection stays counted while it carries the tunnel.
type H1Conn = (http1::SendRequest<ProxyBody>, std::sync::Weak<OwnedConn>);

#[derive(Default)]
struct HostPool {
    h1: Vec<H1Conn>,
    h2: Option<http2::SendRequest<ProxyBody>>,
    /// Connections this worker has open to the host.
    open: usize,
}

pub struct Pools {
    per_worker: Box<[Mutex<HashMap<SocketAddr, HostPool>>]>,
    /// Woken when an upstream response ends, so that requests pending for a
    /// connection look again; `waiting` counts them so that the common case
    /// (nobody waiting) costs one atomic load, not the Notify's lock.
    pub released: tokio::sync::Notify,
    pub waiting: std::sync::atomic::AtomicUsize,
}

impl Pools {
    pub fn new(workers: usize) -> Self {
        Self {
            per_worker: (0..=workers).map(|_| Mutex::new(HashMap::new())).collect(),
            released: tokio::sync::Notify::new(),
            waiting: Default::default(),
        }
    }

    fn mine(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, HostPool>> {
        self.worker(crate::stats::worker_index())
    }

    fn worker(&self, w: usize) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, HostPool>> {
        self.per_worker[w % self.per_worker.len()].lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Why an upstream request failed before a response arrived.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect timeout")]
    ConnectTimeout,
    #[error("connect failure: {0}")]
    ConnectFailure(std::io::Error),
    #[error("handshake: {0}")]
    Handshake(hyper::Error),
    #[error("reset: {0}")]
    Reset(hyper::Error),
    /// A retry policy's per_try_timeout ran out on the last attempt.
    #[error("per-try timeout")]
    PerTryTimeout,
    /// A circuit breaker is open (pending requests or requests).
    #[error("overflow")]
    Overflow,
    /// The TLS handshake with the upstream failed (bad certificate, ...).
    #[error("TLS: {0}")]
    Tls(Box<dyn std::error::Error + Send + Sync>),
}

impl UpstreamError {
    /// Envoy's local-reply body for this failure (before response headers).
    pub fn local_reply_body(&self) -> String {
        match self {
            Self::ConnectTimeout => {
                "upstream connect error or disconnect/reset before headers. reset reason: connection timeout".into()
            }
            Self::ConnectFailure(_) => {
                "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure"
                    .into()
            }
            Self::Handshake(_) | Self::Reset(_) => {
                "upstream connect error or disconnect/reset before headers. reset reason: connection termination".into()
            }
            Self::PerTryTimeout => "upstream request timeout".into(),
            Self::Overflow => {
                "upstream connect error or disconnect/reset before headers. reset reason: overflow".into()
            }
            // Envoy keeps the TLS reason for the access log's details.
            Self::Tls(_) => {
                "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure"
                    .into()
            }
        }
    }
    /// Envoy's response flag: UF (connect failure) or UC (connection termination).
    pub fn response_flag(&self) -> &'static str {
        match self {
            Self::ConnectTimeout | Self::ConnectFailure(_) | Self::Tls(_) => "UF",
            Self::Handshake(_) | Self::Reset(_) => "UC",
            Self::PerTryTimeout => "UT",
            Self::Overflow => "UO",
        }
    }
}

async fn connect_tcp(
    cluster: &Cluster,
    host: &Host,
) -> Result<(tokio::net::TcpStream, crate::breakers::Slot), UpstreamError> {
    let stats = &cluster.stats;
    // Room was checked (or waived) by the caller; the slot counts the
    // connection for as long as it lives.
    let slot = cluster.breakers.default.connections.acquire_anyway();
    let stream = match tokio::time::timeout(cluster.connect_timeout, tokio::net::TcpStream::connect(host.addr)).await {
        Err(_) => {
            stats.upstream_cx_connect_timeout.inc();
            stats.upstream_cx_connect_fail.inc();
            host.cx_connect_fail.fetch_add(1, Relaxed);
            return Err(UpstreamError::ConnectTimeout);
        }
        Ok(Err(e)) => {
            stats.upstream_cx_connect_fail.inc();
            host.cx_connect_fail.fetch_add(1, Relaxed);
            return Err(UpstreamError::ConnectFailure(e));
        }
        Ok(Ok(s)) => s,
    };
    let _ = stream.set_nodelay(true);
    stats.upstream_cx_total.inc();
    stats.upstream_cx_active.inc();
    host.cx_total.fetch_add(1, Relaxed);
    host.cx_active.fetch_add(1, Relaxed);
    Ok((stream, slot))
}

/// Connects to `host`, with TLS when the cluster has a `transport_socket`
/// (the handshake shares the connect timeout). A plain connection is boxed
/// too: one indirect call per read or write.
pub async fn connect(
    cluster: &Cluster,
    host: &Host,
) -> Result<(crate::tls::BoxIo, crate::breakers::Slot), UpstreamError> {
    let start = tokio::time::Instant::now();
    let (stream, slot) = connect_tcp(cluster, host).await?;
    let Some(tls) = &cluster.tls else { return Ok((Box::new(stream), slot)) };
    let left = cluster.connect_timeout.saturating_sub(start.elapsed());
    let handshake = tls.connector.connect(tls.server_name(host.addr.ip()), stream);
    match tokio::time::timeout(left, handshake).await {
        Ok(Ok(s)) => {
            if let Some(ssl) = &cluster.stats.ssl {
                ssl.handshake.inc();
            }
            Ok((Box::new(s), slot))
        }
        Ok(Err(e)) => {
            if let Some(ssl) = &cluster.stats.ssl {
                ssl.failed(&e);
            }
            cluster.stats.upstream_cx_connect_fail.inc();
            host.cx_connect_fail.fetch_add(1, Relaxed);
            Err(UpstreamError::Tls(Box::new(e)))
        }
        Err(_) => {
            cluster.stats.upstream_cx_connect_timeout.inc();
            cluster.stats.upstream_cx_connect_fail.inc();
            host.cx_connect_fail.fetch_add(1, Relaxed);
            Err(UpstreamError::ConnectTimeout)
        }
    }
}

/// Runs a connection's I/O task and keeps the gauges right when it ends
/// (when the task drops its hold of the accounting, and any upgrade using
/// the connection has dropped its own). Returns a weak handle on it.
fn spawn_conn<F>(
    cluster: &Arc<Cluster>,
    host: &Arc<Host>,
    slot: crate::breakers::Slot,
    conn: F,
) -> std::sync::Weak<OwnedConn>
where
    F: std::future::Future<Output = Result<(), hyper::Error>> + Send + 'static,
{
    let account = Arc::new(OwnedConn {
        cluster: cluster.clone(),
        host: host.clone(),
        _slot: slot,
        pool_worker: Some(crate::stats::worker_index()),
    });
    let weak = Arc::downgrade(&account);
    tokio::spawn(async move {
        let _ = conn.await;
        drop(account);
    });
    weak
}

/// Sends `req` to `host` on a pooled connection (or a new one). Once it has
/// a connection the request takes one of the cluster's `max_requests` slots,
/// left in `rq_slot` for the caller to hold until the response has ended.
pub async fn send(
    cluster: &Arc<Cluster>,
    host: &Arc<Host>,
    req: http::Request<ProxyBody>,
    rq_slot: &mut Option<crate::breakers::Slot>,
) -> Result<http::Response<Incoming>, UpstreamError> {
    let result = if cluster.http2 {
        send_h2(cluster, host, req, rq_slot).await
    } else {
        send_h1(cluster, host, req, rq_slot).await
    };
    // An overflow never reached the host: not its failure.
    if let (Some(o), false) = (&cluster.outlier, matches!(result, Err(UpstreamError::Overflow))) {
        o.record(cluster, host, result.as_ref().ok().map(|r| r.status().as_u16()));
    }
    result
}

/// The request's `max_requests` slot, taken as it is put on a connection
/// (Envoy checks there, after any wait for the connection).
fn take_request_slot(cluster: &Cluster, rq_slot: &mut Option<crate::breakers::Slot>) -> Result<(), UpstreamError> {
    match cluster.breakers.default.requests.try_acquire() {
        Some(s) => {
            *rq_slot = Some(s);
            Ok(())
        }
        None => {
            cluster.stats.upstream_rq_active_overflow.inc();
            Err(UpstreamError::Overflow)
        }
    }
}

fn return_h1(cluster: &Cluster, host: &Host, conn: H1Conn) {
    let mut pools = cluster.pools.mine();
    let pool = pools.entry(host.addr).or_default();
    if pool.h1.len() < MAX_IDLE_PER_HOST {
        pool.h1.push(conn);
    }
}

async fn send_h1(
    cluster: &Arc<Cluster>,
    host: &Arc<Host>,
    mut req: http::Request<ProxyBody>,
    rq_slot: &mut Option<crate::breakers::Slot>,
) -> Result<http::Response<Incoming>, UpstreamError> {
    *req.version_mut() = http::Version::HTTP_11;
    let (mut sender, account) = match checkout_h1(cluster, host).0 {
        Some(s) => s,
        None => {
            // No ready connection: the request is pending until it has one.
            let Some(_pending) = cluster.breakers.default.pending.try_acquire() else {
                cluster.stats.upstream_rq_pending_overflow.inc();
                return Err(UpstreamError::Overflow);
            };
            cluster.stats.upstream_rq_pending_total.inc();
            let mut overflow_counted = false;
            loop {
                let (ready, open_here) = checkout_h1(cluster, host);
                if let Some(s) = ready {
                    break s;
                }
                if cluster.breakers.default.connections.can_create() || open_here == 0 {
                    break connect_h1(cluster, host).await?;
                }
                if !overflow_counted {
                    cluster.stats.upstream_cx_overflow.inc();
                    overflow_counted = true;
                }
                // Wait for a response to end somewhere in the cluster; look
                // again now and then in case the wake-up raced the check.
                cluster.pools.waiting.fetch_add(1, Relaxed);
                tokio::select! {
                    _ = cluster.pools.released.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                }
                cluster.pools.waiting.fetch_sub(1, Relaxed);
            }
        }
    };
    if let Err(e) = take_request_slot(cluster, rq_slot) {
        return_h1(cluster, host, (sender, account));
        return Err(e);
    }
    // Envoy counts a request once it is on a connection (not on connect failure).
    cluster.stats.upstream_rq_total.inc();
    let result = sender.send_request(req).await.map_err(reset);
    // Back to the pool at once: it becomes ready again when the response body
    // has been read, and checkout skips it until then.
    if result.is_ok() && !sender.is_closed() {
        return_h1(cluster, host, (sender, account));
    }
    result
}

/// A ready pooled HTTP/1.1 sender for `host`, and how many connections this
/// worker has open to it.
fn checkout_h1(cluster: &Cluster, host: &Host) -> (Option<H1Conn>, usize) {
    let mut pools = cluster.pools.mine();
    let pool = pools.entry(host.addr).or_default();
    pool.h1.retain(|(s, _)| !s.is_closed());
    let ready = pool.h1.iter().position(|(s, _)| s.is_ready()).map(|i| pool.h1.swap_remove(i));
    (ready, pool.open)
}

async fn connect_h1(cluster: &Arc<Cluster>, host: &Arc<Host>) -> Result<H1Conn, UpstreamError> {
    let (stream, slot) = connect(cluster, host).await?;
    let (sender, conn) =
        http1::Builder::new().handshake(TokioIo::new(stream)).await.map_err(UpstreamError::Handshake)?;
    cluster.stats.upstream_cx_http1_total.inc();
    cluster.pools.mine().entry(host.addr).or_default().open += 1;
    // With upgrades: any pooled connection can carry a WebSocket or
    // CONNECT, as Envoy's pool does.
    let weak = spawn_conn(cluster, host, slot, conn.with_upgrades());
    Ok((sender, weak))
}

async fn send_h2(
    cluster: &Arc<Cluster>,
    host: &Arc<Host>,
    mut req: http::Request<ProxyBody>,
    rq_slot: &mut Option<crate::breakers::Slot>,
) -> Result<http::Response<Incoming>, UpstreamError> {
    *req.version_mut() = http::Version::HTTP_2;
    let existing = {
        let mut pools = cluster.pools.mine();
        let pool = pools.entry(host.addr).or_default();
        match &pool.h2 {
            Some(s) if !s.is_closed() => Some(s.clone()),
            _ => {
                pool.h2 = None;
                None
            }
        }
    };
    let mut sender = match existing {
        Some(s) => s,
        None => {
            // Pending while the connection is made.
            let Some(_pending) = cluster.breakers.default.pending.try_acquire() else {
                cluster.stats.upstream_rq_pending_overflow.inc();
                return Err(UpstreamError::Overflow);
            };
            cluster.stats.upstream_rq_pending_total.inc();
            if !cluster.breakers.default.connections.can_create() {
                cluster.stats.upstream_cx_overflow.inc();
            }
            let (stream, slot) = connect(cluster, host).await?;
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .keep_alive_interval(None)
                .handshake(TokioIo::new(stream))
                .await
                .map_err(UpstreamError::Handshake)?;
            cluster.stats.upstream_cx_http2_total.inc();
            spawn_conn(cluster, host, slot, conn);
            {
                let mut pools = cluster.pools.mine();
                let pool = pools.entry(host.addr).or_default();
                pool.h2 = Some(sender.clone());
                pool.open += 1;
            }
            sender
        }
    };
    sender.ready().await.map_err(reset)?;
    take_request_slot(cluster, rq_slot)?;
    cluster.stats.upstream_rq_total.inc();
    sender.send_request(req).await.map_err(reset)
}

/// A request failed on its connection. With TLS 1.3 a server refuses a
/// client certificate only after the client's handshake is done, so the
/// refusal (an alert) arrives with the first request: Envoy reports that as
/// a connect failure, and so does this. Walks the error's sources only on
/// failure.
fn reset(e: hyper::Error) -> UpstreamError {
    if crate::tls::is_tls_error(&e) {
        UpstreamError::Tls(Box::new(e))
    } else {
        UpstreamError::Reset(e)
    }
}

impl Pools {
    /// An upstream response has ended: its connection is ready again.
    pub fn release(&self) {
        if self.waiting.load(Relaxed) > 0 {
            self.released.notify_waiters();
        }
    }
}

/// How long an idle pool may keep connections (Envoy's default upstream idle timeout is 1h).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// An upstream connection's accounting: it keeps the cluster's and host's
/// connection counts and the `max_connections` slot until the last holder
/// drops it — the connection's I/O task, and an upgrade carried on it until
/// the tunnel ends.
pub struct OwnedConn {
    cluster: Arc<Cluster>,
    host: Arc<Host>,
    _slot: crate::breakers::Slot,
    /// The worker whose pool counts the connection as open, if pooled.
    pool_worker: Option<usize>,
}

impl Drop for OwnedConn {
    fn drop(&mut self) {
        if let Some(w) = self.pool_worker {
            if let Some(p) = self.cluster.pools.worker(w).get_mut(&self.host.addr) {
                p.open = p.open.saturating_sub(1);
            }
        }
        self.cluster.stats.upstream_cx_active.dec();
        self.cluster.stats.upstream_cx_destroy.inc();
        self.host.cx_active.fetch_sub(1, Relaxed);
    }
}

/// Sends a request that may switch protocols (an HTTP/1.1 `Upgrade`, or a
/// CONNECT passed on to an upstream proxy) on an idle pooled HTTP/1.1
/// connection, or a new one, as Envoy's pool does; the connection is not
/// returned to the pool. Its hyper connection runs with upgrades allowed, so
/// a 101 (or a 2xx to CONNECT) hands the bytes over to
/// `hyper::upgrade::on`; the returned accounting keeps the connection
/// counted until the caller drops it. The request takes a `max_requests`
/// slot as any other does.
pub async fn send_upgrade(
    cluster: &Arc<Cluster>,
    host: &Arc<Host>,
    mut req: http::Request<ProxyBody>,
    rq_slot: &mut Option<crate::breakers::Slot>,
) -> Result<(http::Response<Incoming>, Arc<OwnedConn>), UpstreamError> {
    *req.version_mut() = http::Version::HTTP_11;
    let pooled = checkout_h1(cluster, host).0.and_then(|(s, w)| w.upgrade().map(|a| (s, a)));
    let (mut sender, account) = match pooled {
        Some(c) => c,
        None => {
            let (s, w) = connect_h1(cluster, host).await?;
            let a = w
                .upgrade()
                .ok_or_else(|| UpstreamError::ConnectFailure(std::io::Error::other("the connection closed at once")))?;
            (s, a)
        }
    };
    take_request_slot(cluster, rq_slot)?;
    cluster.stats.upstream_rq_total.inc();
    let resp = sender.send_request(req).await.map_err(reset)?;
    Ok((resp, account))
}

/// A new raw connection to `host` for a terminated CONNECT: bytes are
/// tunnelled over it as they come (TLS when the cluster has a transport
/// socket). Counted as any upstream connection until the guard drops.
pub async fn connect_owned(
    cluster: &Arc<Cluster>,
    host: &Arc<Host>,
) -> Result<(crate::tls::BoxIo, OwnedConn), UpstreamError> {
    let (io, slot) = connect(cluster, host).await?;
    Ok((io, OwnedConn { cluster: cluster.clone(), host: host.clone(), _slot: slot, pool_worker: None }))
}
