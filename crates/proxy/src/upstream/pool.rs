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
use crate::upstream::clock::clock_ms;
use crate::upstream::cluster::Cluster;
use crate::upstream::error::UpstreamError;
use crate::upstream::host::Host;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Most idle HTTP/1.1 connections kept per host per worker.
const MAX_IDLE_PER_HOST: usize = 256;

/// What a connection shares with its I/O task: requests in flight on it,
/// requests it has carried, and since when it has been idle. One Arc per
/// connection; a request costs two relaxed atomic adds on it.
#[derive(Default)]
pub struct ConnState {
    active: AtomicU32,
    served: AtomicU32,
    /// Milliseconds on `clock_ms` since the last request on it ended.
    idle_since: AtomicU64,
}

/// A request's use of a connection: it is busy (not idle) until this is
/// dropped, when the response has ended.
pub struct ConnUse(Arc<ConnState>);

impl ConnUse {
    fn new(state: &Arc<ConnState>) -> Self {
        state.active.fetch_add(1, Relaxed);
        Self(state.clone())
    }
}

impl Drop for ConnUse {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Relaxed) == 1 {
            self.0.idle_since.store(clock_ms(), Relaxed);
        }
    }
}

/// What a request holds until its response has ended: its `max_requests`
/// slot and its use of the connection.
#[derive(Default)]
pub struct Held {
    pub slot: Option<crate::upstream::breakers::Slot>,
    conn: Option<ConnUse>,
}

/// A pooled HTTP/1.1 connection: its sender, its request/idle state, and a
/// weak handle on its accounting, which an upgrade takes a strong hold of so
/// that the connection stays counted while it carries the tunnel.
type H1Conn = (http1::SendRequest<ProxyBody>, Arc<ConnState>, std::sync::Weak<OwnedConn>);

#[derive(Default)]
struct HostPool {
    h1: Vec<H1Conn>,
    h2: Option<(http2::SendRequest<ProxyBody>, Arc<ConnState>)>,
    /// Connections this worker has open to the host.
    open: usize,
    /// The pool's `max_connection_pools` slot, held while it has connections.
    pool_slot: Option<crate::upstream::breakers::Slot>,
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

async fn connect_tcp(
    cluster: &Cluster,
    host: &Host,
) -> Result<(tokio::net::TcpStream, crate::upstream::breakers::Slot), UpstreamError> {
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
) -> Result<(crate::tls::BoxIo, crate::upstream::breakers::Slot), UpstreamError> {
    let start = tokio::time::Instant::now();
    let (stream, slot) = connect_tcp(cluster, host).await?;
    let Some(tls) = &cluster.tls else { return Ok((Box::new(stream), slot)) };
    let left = cluster.connect_timeout.saturating_sub(start.elapsed());
    // None only while a secret it names has not arrived.
    let Some(connector) = tls.connector() else {
        if let Some(ssl) = &cluster.stats.ssl {
            ssl.connection_error.inc();
        }
        cluster.stats.upstream_cx_connect_fail.inc();
        host.cx_connect_fail.fetch_add(1, Relaxed);
        return Err(UpstreamError::Tls(Box::new(std::io::Error::other("TLS secrets not yet available"))));
    };
    let handshake = crate::tls::with_sigalg(connector.connect(tls.server_name(host.addr.ip()), stream));
    match tokio::time::timeout(left, handshake).await.map(|(r, sigalg)| r.map(|s| (s, sigalg))) {
        Ok(Ok((s, sigalg))) => {
            if let Some(ssl) = &cluster.stats.ssl {
                ssl.handshake_done(s.get_ref().1, sigalg);
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

/// Runs a connection's I/O task, closes it once it has been idle for the
/// cluster's idle timeout, and keeps the gauges right when it ends (when the
/// task drops its hold of the accounting, and any upgrade using the
/// connection has dropped its own). Returns a weak handle on the
/// accounting. Cost: one timer per connection, looked at once per idle period.
fn spawn_conn<F>(
    cluster: &Arc<Cluster>,
    host: &Arc<Host>,
    slot: crate::upstream::breakers::Slot,
    state: Arc<ConnState>,
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
    let cluster = cluster.clone();
    state.idle_since.store(clock_ms(), Relaxed);
    tokio::spawn(async move {
        match cluster.conn_options.idle_timeout {
            None => {
                let _ = conn.await;
            }
            Some(idle) => {
                let idle_ms = idle.as_millis() as u64;
                tokio::pin!(conn);
                let mut wait = idle;
                loop {
                    tokio::select! {
                        _ = &mut conn => break,
                        _ = tokio::time::sleep(wait) => {
                            let now = clock_ms();
                            let since = state.idle_since.load(Relaxed);
                            if state.active.load(Relaxed) == 0 && now.saturating_sub(since) >= idle_ms {
                                cluster.stats.upstream_cx_idle_timeout.inc();
                                break;
                            }
                            wait = if state.active.load(Relaxed) == 0 {
                                Duration::from_millis((since + idle_ms).saturating_sub(now).max(1))
                            } else {
                                idle
                            };
                        }
                    }
                }
            }
        }
        drop(account);
    });
    weak
}

/// Makes sure this worker's pool for `host` has its `max_connection_pools`
/// slot before a connection is made; a pool past the limit is an overflow.
fn ensure_pool(cluster: &Cluster, host: &Host) -> Result<(), UpstreamError> {
    let mut pools = cluster.pools.mine();
    let pool = pools.entry(host.addr).or_default();
    if pool.pool_slot.is_some() {
        return Ok(());
    }
    match cluster.breakers.default.connection_pools.try_acquire() {
        Some(s) => {
            pool.pool_slot = Some(s);
            Ok(())
        }
        None => {
            cluster.stats.upstream_cx_pool_overflow.inc();
            Err(UpstreamError::PoolOverflow)
        }
    }
}

/// A connection attempt failed: a pool left without connections goes away.
fn pool_failed(cluster: &Cluster, host: &Host) {
    let mut pools = cluster.pools.mine();
    if let Some(p) = pools.get_mut(&host.addr) {
        if p.open == 0 {
            p.pool_slot = None;
        }
    }
}

/// Counts a request on a connection; true when it is the connection's last
/// (`max_requests_per_connection`), which the caller then stops pooling.
fn count_request(cluster: &Cluster, state: &ConnState) -> bool {
    let served = state.served.fetch_add(1, Relaxed) + 1;
    let last = cluster.conn_options.max_requests.is_some_and(|max| served >= max);
    if last {
        cluster.stats.upstream_cx_max_requests.inc();
    }
    last
}

/// Sends `req` to `host` on a pooled connection (or a new one). Once it has
/// a connection the request takes one of the cluster's `max_requests` slots,
/// left in `rq_slot` for the caller to hold until the response has ended.
pub async fn send(
    cluster: &Arc<Cluster>,
    host: &Arc<Host>,
    req: http::Request<ProxyBody>,
    rq_slot: &mut Held,
) -> Result<http::Response<Incoming>, UpstreamError> {
    let result = if cluster.http2 {
        send_h2(cluster, host, req, rq_slot).await
    } else {
        send_h1(cluster, host, req, rq_slot).await
    };
    // An overflow never reached the host: not its failure.
    if let (Some(o), false) =
        (&cluster.outlier, matches!(result, Err(UpstreamError::Overflow | UpstreamError::PoolOverflow)))
    {
        o.record(&cluster.hosts, host, result.as_ref().ok().map(|r| r.status().as_u16()));
    }
    result
}

/// The request's `max_requests` slot, taken as it is put on a connection
/// (Envoy checks there, after any wait for the connection).
fn take_request_slot(cluster: &Cluster, rq_slot: &mut Held) -> Result<(), UpstreamError> {
    match cluster.breakers.default.requests.try_acquire() {
        Some(s) => {
            rq_slot.slot = Some(s);
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
    rq_slot: &mut Held,
) -> Result<http::Response<Incoming>, UpstreamError> {
    *req.version_mut() = http::Version::HTTP_11;
    let (mut sender, state, account) = match checkout_h1(cluster, host).0 {
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
        return_h1(cluster, host, (sender, state, account));
        return Err(e);
    }
    // Envoy counts a request once it is on a connection (not on connect failure).
    cluster.stats.upstream_rq_total.inc();
    rq_slot.conn = Some(ConnUse::new(&state));
    let last = count_request(cluster, &state);
    let result = sender.send_request(req).await.map_err(UpstreamError::from_request);
    // Back to the pool at once: it becomes ready again when the response body
    // has been read, and checkout skips it until then. A connection that has
    // carried its last request closes once the response is done.
    if result.is_ok() && !sender.is_closed() && !last {
        return_h1(cluster, host, (sender, state, account));
    }
    result
}

/// A ready pooled HTTP/1.1 sender for `host`, and how many connections this
/// worker has open to it.
fn checkout_h1(cluster: &Cluster, host: &Host) -> (Option<H1Conn>, usize) {
    let mut pools = cluster.pools.mine();
    let pool = pools.entry(host.addr).or_default();
    pool.h1.retain(|(s, _, _)| !s.is_closed());
    let ready = pool.h1.iter().position(|(s, _, _)| s.is_ready()).map(|i| pool.h1.swap_remove(i));
    (ready, pool.open)
}

async fn connect_h1(cluster: &Arc<Cluster>, host: &Arc<Host>) -> Result<H1Conn, UpstreamError> {
    ensure_pool(cluster, host)?;
    let (stream, slot) = match connect(cluster, host).await {
        Ok(c) => c,
        Err(e) => {
            pool_failed(cluster, host);
            return Err(e);
        }
    };
    let (sender, conn) = match http1::Builder::new().handshake(TokioIo::new(stream)).await {
        Ok(h) => h,
        Err(e) => {
            pool_failed(cluster, host);
            return Err(UpstreamError::Handshake(e));
        }
    };
    cluster.stats.upstream_cx_http1_total.inc();
    cluster.pools.mine().entry(host.addr).or_default().open += 1;
    let state = Arc::new(ConnState::default());
    // With upgrades: any pooled connection can carry a WebSocket or
    // CONNECT, as Envoy's pool does.
    let weak = spawn_conn(cluster, host, slot, state.clone(), conn.with_upgrades());
    Ok((sender, state, weak))
}

async fn send_h2(
    cluster: &Arc<Cluster>,
    host: &Arc<Host>,
    mut req: http::Request<ProxyBody>,
    rq_slot: &mut Held,
) -> Result<http::Response<Incoming>, UpstreamError> {
    *req.version_mut() = http::Version::HTTP_2;
    let existing = {
        let mut pools = cluster.pools.mine();
        let pool = pools.entry(host.addr).or_default();
        match &pool.h2 {
            Some((s, state)) if !s.is_closed() => Some((s.clone(), state.clone())),
            _ => {
                pool.h2 = None;
                None
            }
        }
    };
    let (mut sender, state) = match existing {
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
            ensure_pool(cluster, host)?;
            let (stream, slot) = match connect(cluster, host).await {
                Ok(c) => c,
                Err(e) => {
                    pool_failed(cluster, host);
                    return Err(e);
                }
            };
            let (sender, conn) = match http2::Builder::new(TokioExecutor::new())
                .keep_alive_interval(None)
                .handshake(TokioIo::new(stream))
                .await
            {
                Ok(h) => h,
                Err(e) => {
                    pool_failed(cluster, host);
                    return Err(UpstreamError::Handshake(e));
                }
            };
            cluster.stats.upstream_cx_http2_total.inc();
            let state = Arc::new(ConnState::default());
            spawn_conn(cluster, host, slot, state.clone(), conn);
            {
                let mut pools = cluster.pools.mine();
                let pool = pools.entry(host.addr).or_default();
                pool.h2 = Some((sender.clone(), state.clone()));
                pool.open += 1;
            }
            (sender, state)
        }
    };
    sender.ready().await.map_err(UpstreamError::from_request)?;
    take_request_slot(cluster, rq_slot)?;
    cluster.stats.upstream_rq_total.inc();
    rq_slot.conn = Some(ConnUse::new(&state));
    if count_request(cluster, &state) {
        // Its last stream: new requests get a new connection, and this one
        // closes when its streams are done.
        let mut pools = cluster.pools.mine();
        if let Some(pool) = pools.get_mut(&host.addr) {
            if pool.h2.as_ref().is_some_and(|(_, s)| Arc::ptr_eq(s, &state)) {
                pool.h2 = None;
            }
        }
    }
    sender.send_request(req).await.map_err(UpstreamError::from_request)
}

impl Pools {
    /// An upstream response has ended: its connection is ready again.
    pub fn release(&self) {
        if self.waiting.load(Relaxed) > 0 {
            self.released.notify_waiters();
        }
    }
}

/// An upstream connection's accounting: it keeps the cluster's and host's
/// connection counts and the `max_connections` slot until the last holder
/// drops it — the connection's I/O task, and an upgrade carried on it until
/// the tunnel ends.
pub struct OwnedConn {
    cluster: Arc<Cluster>,
    host: Arc<Host>,
    _slot: crate::upstream::breakers::Slot,
    /// The worker whose pool counts the connection as open, if pooled.
    pool_worker: Option<usize>,
}

impl Drop for OwnedConn {
    fn drop(&mut self) {
        if let Some(w) = self.pool_worker {
            if let Some(p) = self.cluster.pools.worker(w).get_mut(&self.host.addr) {
                p.open = p.open.saturating_sub(1);
                // A pool without connections is gone: its
                // max_connection_pools slot is free again.
                if p.open == 0 {
                    p.pool_slot = None;
                }
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
    rq_slot: &mut Held,
) -> Result<(http::Response<Incoming>, Arc<OwnedConn>), UpstreamError> {
    *req.version_mut() = http::Version::HTTP_11;
    let pooled = checkout_h1(cluster, host).0.and_then(|(s, st, w)| w.upgrade().map(|a| (s, st, a)));
    let (mut sender, state, account) = match pooled {
        Some(c) => c,
        None => {
            let (s, st, w) = connect_h1(cluster, host).await?;
            let a = w
                .upgrade()
                .ok_or_else(|| UpstreamError::ConnectFailure(std::io::Error::other("the connection closed at once")))?;
            (s, st, a)
        }
    };
    // Busy while the upgrade is asked for and its tunnel runs: never closed
    // as idle under it.
    rq_slot.conn = Some(ConnUse::new(&state));
    take_request_slot(cluster, rq_slot)?;
    cluster.stats.upstream_rq_total.inc();
    let resp = sender.send_request(req).await.map_err(UpstreamError::from_request)?;
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
