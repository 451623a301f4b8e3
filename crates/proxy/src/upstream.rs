//! Upstream connections: per-worker pools of HTTP/1.1 keep-alive and HTTP/2
//! connections, built on hyper's connection-level client.
//!
//! Each worker has its own pools (Envoy's model): the pool map of a cluster is
//! indexed by worker, so its mutex is only ever taken by one thread. HTTP/1.1:
//! a list of idle senders per host; one that is still busy with a previous
//! response body is skipped. HTTP/2: one multiplexed connection per host.

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

#[derive(Default)]
struct HostPool {
    h1: Vec<http1::SendRequest<ProxyBody>>,
    h2: Option<http2::SendRequest<ProxyBody>>,
}

pub struct Pools {
    per_worker: Box<[Mutex<HashMap<SocketAddr, HostPool>>]>,
}

impl Pools {
    pub fn new(workers: usize) -> Self {
        Self { per_worker: (0..=workers).map(|_| Mutex::new(HashMap::new())).collect() }
    }

    fn mine(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, HostPool>> {
        let w = crate::stats::worker_index() % self.per_worker.len();
        self.per_worker[w].lock().unwrap_or_else(|e| e.into_inner())
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
        }
    }
    /// Envoy's response flag: UF (connect failure) or UC (connection termination).
    pub fn response_flag(&self) -> &'static str {
        match self {
            Self::ConnectTimeout | Self::ConnectFailure(_) => "UF",
            Self::Handshake(_) | Self::Reset(_) => "UC",
            Self::PerTryTimeout => "UT",
        }
    }
}

async fn connect_tcp(cluster: &Cluster, host: &Host) -> Result<tokio::net::TcpStream, UpstreamError> {
    let stats = &cluster.stats;
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
    Ok(stream)
}

/// Runs a connection's I/O task and keeps the gauges right when it ends.
fn spawn_conn<F>(cluster: &Arc<Cluster>, host: &Arc<Host>, conn: F)
where
    F: std::future::Future<Output = Result<(), hyper::Error>> + Send + 'static,
{
    let (cluster, host) = (cluster.clone(), host.clone());
    tokio::spawn(async move {
        let _ = conn.await;
        cluster.stats.upstream_cx_active.dec();
        cluster.stats.upstream_cx_destroy.inc();
        host.cx_active.fetch_sub(1, Relaxed);
    });
}

/// Sends `req` to `host` on a pooled connection (or a new one).
pub async fn send(
    cluster: &Arc<Cluster>,
    host: &Arc<Host>,
    req: http::Request<ProxyBody>,
) -> Result<http::Response<Incoming>, UpstreamError> {
    let result = if cluster.http2 { send_h2(cluster, host, req).await } else { send_h1(cluster, host, req).await };
    if let Some(o) = &cluster.outlier {
        o.record(cluster, host, result.as_ref().ok().map(|r| r.status().as_u16()));
    }
    result
}

async fn send_h1(
    cluster: &Arc<Cluster>,
    host: &Arc<Host>,
    mut req: http::Request<ProxyBody>,
) -> Result<http::Response<Incoming>, UpstreamError> {
    *req.version_mut() = http::Version::HTTP_11;
    let pooled = {
        let mut pools = cluster.pools.mine();
        let pool = pools.entry(host.addr).or_default();
        pool.h1.retain(|s| !s.is_closed());
        pool.h1.iter().position(|s| s.is_ready()).map(|i| pool.h1.swap_remove(i))
    };
    let mut sender = match pooled {
        Some(s) => s,
        None => {
            let stream = connect_tcp(cluster, host).await?;
            let (sender, conn) =
                http1::Builder::new().handshake(TokioIo::new(stream)).await.map_err(UpstreamError::Handshake)?;
            cluster.stats.upstream_cx_http1_total.inc();
            spawn_conn(cluster, host, conn);
            sender
        }
    };
    // Envoy counts a request once it is on a connection (not on connect failure).
    cluster.stats.upstream_rq_total.inc();
    let result = sender.send_request(req).await.map_err(UpstreamError::Reset);
    // Back to the pool at once: it becomes ready again when the response body
    // has been read, and checkout skips it until then.
    if result.is_ok() && !sender.is_closed() {
        let mut pools = cluster.pools.mine();
        let pool = pools.entry(host.addr).or_default();
        if pool.h1.len() < MAX_IDLE_PER_HOST {
            pool.h1.push(sender);
        }
    }
    result
}

async fn send_h2(
    cluster: &Arc<Cluster>,
    host: &Arc<Host>,
    mut req: http::Request<ProxyBody>,
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
            let stream = connect_tcp(cluster, host).await?;
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .keep_alive_interval(None)
                .handshake(TokioIo::new(stream))
                .await
                .map_err(UpstreamError::Handshake)?;
            cluster.stats.upstream_cx_http2_total.inc();
            spawn_conn(cluster, host, conn);
            cluster.pools.mine().entry(host.addr).or_default().h2 = Some(sender.clone());
            sender
        }
    };
    sender.ready().await.map_err(UpstreamError::Reset)?;
    cluster.stats.upstream_rq_total.inc();
    sender.send_request(req).await.map_err(UpstreamError::Reset)
}

/// How long an idle pool may keep connections (Envoy's default upstream idle timeout is 1h).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
