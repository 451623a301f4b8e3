//! Sending requests upstream on a cluster's per-worker pools of HTTP/1.1
//! keep-alive and HTTP/2 connections, built on hyper's connection-level
//! client.
//!
//! Each worker has its own pools (Envoy's model; see `worker_pools`).
//! HTTP/1.1: a list of idle senders per host; one that is still busy with a
//! previous response body is skipped. HTTP/2: one multiplexed connection per
//! host.
//!
//! Circuit breakers (see `breakers`): a request that finds no ready
//! connection is pending until it has one, within `max_pending_requests`; a
//! new connection needs room under `max_connections` (counted across
//! workers), except the first to a host in this worker's pool, which Envoy
//! always allows. A pending HTTP/1.1 request past the connection limit waits
//! for one of the host's connections to become ready.

use crate::body::ProxyBody;
use crate::upstream::breakers::Slot;
use crate::upstream::cluster::Cluster;
use crate::upstream::connection::{connect, spawn_pooled};
use crate::upstream::error::UpstreamError;
use crate::upstream::host::Host;
use crate::upstream::worker_pools::{ConnHold, ConnState, ConnUse, H1Conn};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

/// What a request holds until its response has ended: its `max_requests`
/// slot and its use of the connection.
#[derive(Default)]
pub struct Held {
    pub slot: Option<Slot>,
    conn: Option<ConnUse>,
    /// Counted with the cluster's `upstream_rq_total` for each request put
    /// on a connection (a virtual cluster's).
    pub also_total: [Option<Arc<crate::stats::Counter>>; 2],
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
    let timer = cluster.response_timer(host);
    let result = if cluster.http2 {
        send_h2(cluster, host, req, rq_slot).await
    } else {
        send_h1(cluster, host, req, rq_slot).await
    };
    // An overflow never reached the host: not its failure, nor its latency.
    let overflow = matches!(result, Err(UpstreamError::Overflow | UpstreamError::PoolOverflow));
    if let (Some(o), false) = (&cluster.outlier, overflow) {
        o.record(&cluster.hosts, host, result.as_ref().ok().map(|r| r.status().as_u16()));
    }
    if let (Some(t), true) = (timer, overflow) {
        t.cancel();
    }
    result
}

/// A request without a ready connection is pending until it has one, within
/// `max_pending_requests`; the slot is held while it waits.
fn pending(cluster: &Cluster) -> Result<Slot, UpstreamError> {
    let Some(slot) = cluster.breakers.default.pending.try_acquire() else {
        cluster.stats.upstream_rq_pending_overflow.inc();
        return Err(UpstreamError::Overflow);
    };
    cluster.stats.upstream_rq_pending_total.inc();
    Ok(slot)
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

/// `upstream_rq_total`: the request is on a connection.
fn count_total(cluster: &Cluster, rq_slot: &Held) {
    cluster.stats.upstream_rq_total.inc();
    for c in rq_slot.also_total.iter().flatten() {
        c.inc();
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

/// A new connection for this worker's pool of `host`: the pool first needs
/// its `max_connection_pools` slot (past the limit it is an overflow), and a
/// pool left without connections by a failed attempt goes away.
async fn connect_pooled(cluster: &Cluster, host: &Host) -> Result<(crate::io::BoxIo, Slot), UpstreamError> {
    if !cluster.pools.hold_pool_slot(host.addr, &cluster.breakers.default.connection_pools) {
        cluster.stats.upstream_cx_pool_overflow.inc();
        return Err(UpstreamError::PoolOverflow);
    }
    connect(cluster, host).await.inspect_err(|_| cluster.pools.connect_failed(host.addr))
}

/// The protocol handshake on a new pooled connection failed.
fn handshake_failed(cluster: &Cluster, host: &Host, e: hyper::Error) -> UpstreamError {
    cluster.pools.connect_failed(host.addr);
    UpstreamError::Handshake(e)
}

async fn send_h1(
    cluster: &Arc<Cluster>,
    host: &Arc<Host>,
    mut req: http::Request<ProxyBody>,
    rq_slot: &mut Held,
) -> Result<http::Response<Incoming>, UpstreamError> {
    *req.version_mut() = http::Version::HTTP_11;
    let (mut sender, state, account) = match cluster.pools.checkout_h1(host.addr).0 {
        Some(s) => s,
        None => {
            let _pending = pending(cluster)?;
            wait_for_h1(cluster, host).await?
        }
    };
    if let Err(e) = take_request_slot(cluster, rq_slot) {
        cluster.pools.return_h1(host.addr, (sender, state, account));
        return Err(e);
    }
    // Envoy counts a request once it is on a connection (not on connect failure).
    count_total(cluster, rq_slot);
    rq_slot.conn = Some(ConnUse::new(&state));
    let last = count_request(cluster, &state);
    let result = sender.send_request(req).await.map_err(UpstreamError::from_request);
    // Back to the pool at once: it becomes ready again when the response body
    // has been read, and checkout skips it until then. A connection that has
    // carried its last request closes once the response is done.
    if result.is_ok() && !sender.is_closed() && !last {
        cluster.pools.return_h1(host.addr, (sender, state, account));
    }
    result
}

/// A pending HTTP/1.1 request's connection: a pooled one that became ready,
/// or a new one when `max_connections` has room (or this worker has none
/// open to the host); otherwise it waits for a response to end.
async fn wait_for_h1(cluster: &Arc<Cluster>, host: &Arc<Host>) -> Result<H1Conn, UpstreamError> {
    let mut overflow_counted = false;
    loop {
        let (ready, open_here) = cluster.pools.checkout_h1(host.addr);
        if let Some(s) = ready {
            return Ok(s);
        }
        if cluster.breakers.default.connections.can_create() || open_here == 0 {
            return connect_h1(cluster, host).await;
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

async fn connect_h1(cluster: &Arc<Cluster>, host: &Arc<Host>) -> Result<H1Conn, UpstreamError> {
    let (stream, slot) = connect_pooled(cluster, host).await?;
    let mut builder = http1::Builder::new();
    if let Some(limit) = cluster.buffer_limit {
        // hyper refuses less than 8 KiB.
        builder.max_buf_size(limit.max(8192));
    }
    let (sender, conn) =
        builder.handshake(TokioIo::new(stream)).await.map_err(|e| handshake_failed(cluster, host, e))?;
    cluster.stats.upstream_cx_http1_total.inc();
    cluster.pools.opened_h1(host.addr);
    let state = Arc::new(ConnState::default());
    // With upgrades: any pooled connection can carry a WebSocket or
    // CONNECT, as Envoy's pool does.
    let weak = spawn_pooled(cluster, host, slot, state.clone(), conn.with_upgrades());
    Ok((sender, state, weak))
}

async fn send_h2(
    cluster: &Arc<Cluster>,
    host: &Arc<Host>,
    mut req: http::Request<ProxyBody>,
    rq_slot: &mut Held,
) -> Result<http::Response<Incoming>, UpstreamError> {
    *req.version_mut() = http::Version::HTTP_2;
    let (mut sender, state) = match cluster.pools.h2(host.addr) {
        Some(s) => s,
        None => {
            // Pending while the connection is made.
            let _pending = pending(cluster)?;
            if !cluster.breakers.default.connections.can_create() {
                cluster.stats.upstream_cx_overflow.inc();
            }
            connect_h2(cluster, host).await?
        }
    };
    sender.ready().await.map_err(UpstreamError::from_request)?;
    take_request_slot(cluster, rq_slot)?;
    count_total(cluster, rq_slot);
    rq_slot.conn = Some(ConnUse::new(&state));
    if count_request(cluster, &state) {
        // Its last stream: new requests get a new connection, and this one
        // closes when its streams are done.
        cluster.pools.retire_h2(host.addr, &state);
    }
    sender.send_request(req).await.map_err(UpstreamError::from_request)
}

async fn connect_h2(
    cluster: &Arc<Cluster>,
    host: &Arc<Host>,
) -> Result<(http2::SendRequest<ProxyBody>, Arc<ConnState>), UpstreamError> {
    let (stream, slot) = connect_pooled(cluster, host).await?;
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder.timer(hyper_util::rt::TokioTimer::new());
    let h2 = &cluster.h2;
    match &h2.keepalive {
        Some(k) => {
            builder.keep_alive_interval(k.jittered_interval()).keep_alive_timeout(k.timeout).keep_alive_while_idle(true)
        }
        None => builder.keep_alive_interval(None),
    };
    if let Some(w) = h2.stream_window {
        builder.initial_stream_window_size(w);
    }
    if let Some(w) = h2.connection_window {
        builder.initial_connection_window_size(w);
    }
    if let Some(limit) = cluster.buffer_limit {
        builder.max_send_buf_size(limit);
    }
    let (sender, conn) =
        builder.handshake(TokioIo::new(stream)).await.map_err(|e| handshake_failed(cluster, host, e))?;
    cluster.stats.upstream_cx_http2_total.inc();
    let state = Arc::new(ConnState::default());
    spawn_pooled(cluster, host, slot, state.clone(), conn);
    cluster.pools.opened_h2(host.addr, (sender.clone(), state.clone()));
    Ok((sender, state))
}

/// Sends a request that may switch protocols (an HTTP/1.1 `Upgrade`, or a
/// CONNECT passed on to an upstream proxy) on an idle pooled HTTP/1.1
/// connection, or a new one, as Envoy's pool does; the connection is not
/// returned to the pool. Its hyper connection runs with upgrades allowed, so
/// a 101 (or a 2xx to CONNECT) hands the bytes over to
/// `hyper::upgrade::on`; the returned hold on the connection's accounting
/// keeps it counted until the caller drops it. The request takes a
/// `max_requests` slot as any other does.
pub async fn send_upgrade(
    cluster: &Arc<Cluster>,
    host: &Arc<Host>,
    mut req: http::Request<ProxyBody>,
    rq_slot: &mut Held,
) -> Result<(http::Response<Incoming>, ConnHold), UpstreamError> {
    *req.version_mut() = http::Version::HTTP_11;
    let pooled = cluster.pools.checkout_h1(host.addr).0.and_then(|(s, st, w)| w.upgrade().map(|a| (s, st, a)));
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
    count_total(cluster, rq_slot);
    let resp = sender.send_request(req).await.map_err(UpstreamError::from_request)?;
    Ok((resp, account))
}
