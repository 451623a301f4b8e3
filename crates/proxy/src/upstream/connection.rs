//! Opening an upstream connection (TCP or a Unix socket, then TLS when the cluster has a
//! transport socket, within the connect timeout) and accounting for it until
//! it closes: the cluster's and host's connection counts, the
//! `max_connections` slot, and the idle timeout of its I/O task.

use crate::upstream::breakers::Slot;
use crate::upstream::clock::clock_ms;
use crate::upstream::cluster::Cluster;
use crate::upstream::cluster_stats::ClusterStats;
use crate::upstream::error::UpstreamError;
use crate::upstream::host::Host;
use crate::upstream::worker_pools::ConnState;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// A connection attempt to `host` failed.
fn count_connect_failure(stats: &ClusterStats, host: &Host) {
    stats.upstream_cx_connect_fail.inc();
    host.cx_connect_fail.fetch_add(1, Relaxed);
}

/// `upstream_connection_options.tcp_keepalive`: TCP keepalive on, with
/// the probes, idle time and interval it sets (the system's otherwise).
fn set_keepalive(stream: &tokio::net::TcpStream, k: &legate_api::pb::envoy::config::core::v3::TcpKeepalive) {
    let mut ka = socket2::TcpKeepalive::new();
    if let Some(t) = k.keepalive_time {
        ka = ka.with_time(Duration::from_secs(u64::from(t.value)));
    }
    if let Some(i) = k.keepalive_interval {
        ka = ka.with_interval(Duration::from_secs(u64::from(i.value)));
    }
    if let Some(p) = k.keepalive_probes {
        ka = ka.with_retries(p.value);
    }
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&ka) {
        tracing::debug!("TCP keepalive on an upstream connection: {e}");
    }
}

/// A connection that never connected is destroyed: `side` says by whom.
fn count_never_connected(stats: &ClusterStats, side: &str) {
    stats.upstream_cx_destroy.inc();
    stats.named(side).inc();
}

/// A freshly opened stream to a host: TCP, or a `pipe` endpoint's Unix socket.
enum Opened {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn open(cluster: &Cluster, host: &Host) -> std::io::Result<Opened> {
    match &host.pipe {
        Some(p) => p.connect().map(Opened::Unix),
        None => tokio::net::TcpStream::connect(host.addr).await.map(Opened::Tcp),
    }
    .inspect(|s| {
        if let Opened::Tcp(stream) = s {
            let _ = stream.set_nodelay(true);
            if let Some(k) = cluster.config.upstream_connection_options.as_ref().and_then(|o| o.tcp_keepalive.as_ref())
            {
                set_keepalive(stream, k);
            }
        }
    })
}

async fn connect_raw(cluster: &Cluster, host: &Host) -> Result<(Opened, Slot), UpstreamError> {
    let stats = &cluster.stats;
    // Room was checked (or waived) by the caller; the slot counts the
    // connection for as long as it lives.
    let slot = cluster.breakers.default.connections.acquire_anyway();
    // Every attempt counts as a connection, as Envoy counts a connection
    // when it creates it; one that never connects is destroyed (locally
    // when the connect timeout closes it, remotely when it is refused).
    stats.upstream_cx_total.inc();
    host.cx_total.fetch_add(1, Relaxed);
    let stream = match tokio::time::timeout(cluster.connect_timeout, open(cluster, host)).await {
        Err(_) => {
            stats.upstream_cx_connect_timeout.inc();
            count_connect_failure(stats, host);
            count_never_connected(stats, "upstream_cx_destroy_local");
            return Err(UpstreamError::ConnectTimeout);
        }
        Ok(Err(e)) => {
            count_connect_failure(stats, host);
            count_never_connected(stats, "upstream_cx_destroy_remote");
            return Err(UpstreamError::ConnectFailure(e));
        }
        Ok(Ok(s)) => s,
    };
    stats.upstream_cx_active.inc();
    host.cx_active.fetch_add(1, Relaxed);
    Ok((stream, slot))
}

/// Connects to `host`, with TLS when the cluster has a `transport_socket`
/// (the handshake shares the connect timeout). A plain connection is boxed
/// too: one indirect call per read or write.
pub async fn connect(cluster: &Cluster, host: &Host) -> Result<(crate::io::BoxIo, Slot), UpstreamError> {
    let start = tokio::time::Instant::now();
    let (stream, slot) = connect_raw(cluster, host).await?;
    let io = match stream {
        Opened::Tcp(s) => secure(cluster, host, s, start).await?,
        Opened::Unix(s) => secure(cluster, host, s, start).await?,
    };
    Ok((io, slot))
}

/// TLS over `stream` when the cluster has a `transport_socket`, within
/// what is left of the connect timeout started at `start`.
async fn secure<S: crate::io::Io>(
    cluster: &Cluster,
    host: &Host,
    stream: S,
    start: tokio::time::Instant,
) -> Result<crate::io::BoxIo, UpstreamError> {
    let Some(tls) = &cluster.tls else { return Ok(Box::new(stream)) };
    let stats = &cluster.stats;
    let left = cluster.connect_timeout.saturating_sub(start.elapsed());
    // None only while a secret it names has not arrived.
    let Some(connector) = tls.connector() else {
        if let Some(ssl) = &stats.ssl {
            ssl.connection_error.inc();
        }
        count_connect_failure(stats, host);
        return Err(UpstreamError::Tls(Box::new(std::io::Error::other("TLS secrets not yet available"))));
    };
    let handshake = crate::tls::with_sigalg(connector.connect(tls.server_name(host.addr.ip(), &host.hostname), stream));
    match tokio::time::timeout(left, handshake).await.map(|(r, sigalg)| r.map(|s| (s, sigalg))) {
        Ok(Ok((s, sigalg))) => {
            if let Some(ssl) = &stats.ssl {
                ssl.handshake_done(s.get_ref().1, sigalg);
            }
            Ok(Box::new(s))
        }
        Ok(Err(e)) => {
            if let Some(ssl) = &stats.ssl {
                ssl.failed(&e);
            }
            count_connect_failure(stats, host);
            Err(UpstreamError::Tls(Box::new(e)))
        }
        Err(_) => {
            stats.upstream_cx_connect_timeout.inc();
            count_connect_failure(stats, host);
            Err(UpstreamError::ConnectTimeout)
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
    _slot: Slot,
    /// The worker whose pool counts the connection as open, if pooled.
    pool_worker: Option<usize>,
}

impl Drop for OwnedConn {
    fn drop(&mut self) {
        if let Some(w) = self.pool_worker {
            self.cluster.pools.closed(w, self.host.addr);
        }
        self.cluster.stats.upstream_cx_active.dec();
        self.cluster.stats.upstream_cx_destroy.inc();
        self.host.cx_active.fetch_sub(1, Relaxed);
    }
}

/// Runs a pooled connection's I/O task, closes it once it has been idle for
/// the cluster's idle timeout, and keeps the gauges right when it ends (when
/// the task drops its hold of the accounting, and any upgrade using the
/// connection has dropped its own). Returns a weak handle on the
/// accounting. Cost: one timer per connection, looked at once per idle period.
pub fn spawn_pooled<F>(
    cluster: &Arc<Cluster>,
    host: &Arc<Host>,
    slot: Slot,
    state: Arc<ConnState>,
    conn: F,
) -> Weak<OwnedConn>
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
            Some(idle) => close_when_idle(conn, &state, idle, &cluster.stats).await,
        }
        drop(account);
    });
    weak
}

/// Drives `conn` until it ends, or until it has carried no request for `idle`.
async fn close_when_idle<F>(conn: F, state: &ConnState, idle: Duration, stats: &ClusterStats)
where
    F: std::future::Future<Output = Result<(), hyper::Error>>,
{
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
                    stats.upstream_cx_idle_timeout.inc();
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

/// A new raw connection to `host` for a terminated CONNECT: bytes are
/// tunnelled over it as they come (TLS when the cluster has a transport
/// socket). Counted as any upstream connection until the guard drops.
pub async fn connect_owned(
    cluster: &Arc<Cluster>,
    host: &Arc<Host>,
) -> Result<(crate::io::BoxIo, OwnedConn), UpstreamError> {
    let (io, slot) = connect(cluster, host).await?;
    Ok((io, OwnedConn { cluster: cluster.clone(), host: host.clone(), _slot: slot, pool_worker: None }))
}
