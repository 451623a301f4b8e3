//! Listeners: bound per worker with SO_REUSEPORT (Envoy's model), each with its
//! filter chain: the HTTP connection manager.

use crate::hcm::{Codec, ConnInfo, Hcm};
use crate::stats::{Counter, Gauge};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use legate_api::pb::envoy::config::core::v3::{address, socket_address};
use legate_api::pb::envoy::config::listener::v3::{filter, Listener};
use legate_api::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub const HCM_TYPE: &str = legate_api::semantic::HCM_TYPE;

pub struct ListenerStats {
    pub downstream_cx_total: Arc<Counter>,
    pub downstream_cx_active: Arc<Gauge>,
    pub downstream_cx_destroy: Arc<Counter>,
}

pub struct ListenerConfig {
    pub name: String,
    pub address: SocketAddr,
    pub hcm: Arc<Hcm>,
    pub stats: ListenerStats,
    pub config: Listener,
    /// The HTTP server settings for this listener's connections.
    builder: auto::Builder<TokioExecutor>,
    /// Raised when this config is replaced or removed: its connections drain.
    draining: watch::Sender<bool>,
    /// How long a draining connection may take (`--drain-time-s`).
    pub drain_time: Duration,
}

/// `listener.127.0.0.1_10000.` as Envoy names a listener's stats.
pub fn stat_name(addr: &SocketAddr) -> String {
    format!("{}_{}", addr.ip(), addr.port())
}

impl ListenerConfig {
    /// Tells every connection opened under this config to finish and close.
    pub fn drain(&self) {
        let _ = self.draining.send(true);
    }

    pub fn compile(l: &Listener, ctx: &crate::rds::CompileContext) -> Result<Self, String> {
        let store = &ctx.store;
        let Some(address::Address::SocketAddress(sa)) = l.address.as_ref().and_then(|a| a.address.as_ref()) else {
            return Err("address: only socket_address is supported".into());
        };
        let Some(socket_address::PortSpecifier::PortValue(port)) = sa.port_specifier else {
            return Err("address.socket_address.port_value is required".into());
        };
        let ip: std::net::IpAddr =
            sa.address.parse().map_err(|_| format!("address: malformed IP address: {}", sa.address))?;
        let address = SocketAddr::new(ip, u16::try_from(port).map_err(|_| "port out of range")?);
        let [chain] = l.filter_chains.as_slice() else {
            return Err("filter_chains: exactly one filter chain is supported".into());
        };
        let [f] = chain.filters.as_slice() else {
            return Err(
                "filter_chains[0].filters: exactly one network filter (http_connection_manager) is supported".into()
            );
        };
        let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
            return Err("filter_chains[0].filters[0].typed_config is required".into());
        };
        if legate_api::any::type_name(any) != HCM_TYPE {
            return Err(format!(
                "filter_chains[0].filters[0]: network filter {} is not supported",
                legate_api::any::type_name(any)
            ));
        }
        let hcm: HttpConnectionManager = legate_api::any::unpack(any)?;
        let hcm = Hcm::compile(&hcm, ctx).map_err(|e| format!("filter_chains[0].filters[0].typed_config.{e}"))?;
        let p = format!("listener.{}.", stat_name(&address));
        let hcm = Arc::new(hcm);
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new()).keep_alive(true).header_read_timeout(hcm.request_headers_timeout);
        builder.http2().timer(TokioTimer::new()).max_concurrent_streams(Some(2147483647));
        let builder = match hcm.codec {
            Codec::Auto => builder,
            Codec::Http1 => builder.http1_only(),
            Codec::Http2 => builder.http2_only(),
        };
        Ok(Self {
            builder,
            draining: watch::channel(false).0,
            drain_time: ctx.drain_time,
            name: if l.name.is_empty() { address.to_string() } else { l.name.clone() },
            address,
            hcm,
            stats: ListenerStats {
                downstream_cx_total: store.counter(&format!("{p}downstream_cx_total")),
                downstream_cx_active: store.gauge(&format!("{p}downstream_cx_active")),
                downstream_cx_destroy: store.counter(&format!("{p}downstream_cx_destroy")),
            },
            config: l.clone(),
        })
    }
}

/// Binds one socket for one worker. Every worker binds its own with
/// SO_REUSEPORT so the kernel spreads connections over workers.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let domain = if addr.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

/// What the main thread tells workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    /// Stop accepting; existing connections go on (`/drain_listeners`).
    StopAccepting,
    /// Stop accepting and close connections gracefully, then exit.
    Drain,
}

/// Accepts on one worker's socket of one listener until it is removed or the
/// server stops accepting. Each connection takes the listener's current config.
pub async fn accept_loop(
    slot: Arc<arc_swap::ArcSwap<ListenerConfig>>,
    socket: std::net::TcpListener,
    mut phase: watch::Receiver<Phase>,
    mut stop: watch::Receiver<bool>,
    active: Arc<AtomicUsize>,
) {
    let Ok(socket) = tokio::net::TcpListener::from_std(socket) else { return };
    loop {
        tokio::select! {
            accepted = socket.accept() => {
                let Ok((stream, remote)) = accepted else {
                    // Out of file descriptors and the like: back off briefly.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let listener = slot.load_full();
                let local = stream.local_addr().unwrap_or(listener.address);
                tokio::spawn(serve_connection(listener, stream, remote, local, phase.clone(), active.clone()));
            }
            changed = phase.changed() => {
                if changed.is_err() || *phase.borrow() != Phase::Running {
                    return;
                }
            }
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return;
                }
            }
        }
    }
}

/// Begins draining a connection as Envoy does: responses from now on carry
/// `connection: close`; a connection that already served requests is closed
/// gracefully now (in-flight requests finish), while one that has not sent its
/// first request yet gets to send it (bounded by the drain time). Returns
/// whether to shut down now.
fn begin_drain(info: &ConnInfo) -> bool {
    info.draining.store(true, Ordering::Relaxed);
    info.requests.load(Ordering::Relaxed) > 0
}

async fn serve_connection(
    listener: Arc<ListenerConfig>,
    stream: tokio::net::TcpStream,
    remote: SocketAddr,
    local: SocketAddr,
    mut phase: watch::Receiver<Phase>,
    active: Arc<AtomicUsize>,
) {
    let ls = &listener.stats;
    let hs = &listener.hcm.stats;
    ls.downstream_cx_total.inc();
    ls.downstream_cx_active.inc();
    hs.downstream_cx_total.inc();
    hs.downstream_cx_active.inc();
    active.fetch_add(1, Ordering::Relaxed);
    let info = Arc::new(ConnInfo::new(remote, local));
    let conn_info = info.clone();
    let hcm = listener.hcm.clone();
    let svc = service_fn(move |req| {
        let hcm = hcm.clone();
        let info = info.clone();
        async move { Ok::<_, Infallible>(hcm.handle(info, req).await) }
    });
    let mut config_drain = listener.draining.subscribe();
    let io = crate::h1_errors::EnvoyErrors::new(
        stream,
        listener.hcm.server_name(),
        hs.downstream_cx_protocol_error.clone(),
        conn_info.clone(),
    );
    let conn = listener.builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let mut draining = *phase.borrow() == Phase::Drain;
    if draining {
        conn.as_mut().graceful_shutdown();
    }
    // The connection idle timeout runs while no stream is active; a stream
    // ending re-arms it.
    let idle_timeout = listener.hcm.idle_timeout;
    let far = Duration::from_secs(365 * 24 * 3600);
    let idle = tokio::time::sleep(idle_timeout.unwrap_or(far));
    tokio::pin!(idle);
    // A draining connection gets the drain time to finish, then is closed.
    let deadline = tokio::time::sleep(if draining { listener.drain_time } else { far });
    tokio::pin!(deadline);
    loop {
        let was_draining = draining;
        tokio::select! {
            _ = conn.as_mut() => break,
            _ = &mut deadline, if draining => {
                listener.hcm.stats.downstream_cx_drain_close.inc();
                break;
            }
            _ = conn_info.idle.notified() => {
                idle.as_mut().reset(tokio::time::Instant::now() + idle_timeout.unwrap_or(far));
            }
            _ = &mut idle, if idle_timeout.is_some() && !draining => {
                if conn_info.active_streams.load(Ordering::Relaxed) == 0 {
                    listener.hcm.stats.downstream_cx_idle_timeout.inc();
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                } else {
                    idle.as_mut().reset(tokio::time::Instant::now() + idle_timeout.unwrap_or(far));
                }
            }
            _ = config_drain.wait_for(|d| *d), if !draining => {
                draining = true;
                if begin_drain(&conn_info) {
                    conn.as_mut().graceful_shutdown();
                }
            }
            changed = phase.changed(), if !draining => {
                if changed.is_err() || *phase.borrow() == Phase::Drain {
                    draining = true;
                    if begin_drain(&conn_info) {
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        }
        if draining && !was_draining {
            deadline.as_mut().reset(tokio::time::Instant::now() + listener.drain_time);
        }
    }
    active.fetch_sub(1, Ordering::Relaxed);
    ls.downstream_cx_active.dec();
    ls.downstream_cx_destroy.inc();
    hs.downstream_cx_active.dec();
    hs.downstream_cx_destroy.inc();
}
