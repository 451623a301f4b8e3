//! Listeners: bound per worker with SO_REUSEPORT (Envoy's model). A connection
//! passes the listener filters (TLS inspector), gets its filter chain by
//! Envoy's matching rules, has TLS terminated if the chain says so, and is
//! served by the chain's network filter: the HTTP connection manager or
//! tcp_proxy. A UDP listener (`protocol: UDP`) runs the UDP proxy instead
//! (`udp_proxy`).

pub mod filter_chain;
pub mod inspectors;
pub mod manager;
pub mod network;
pub mod udp_proxy;

use crate::common::conn_limit::ConnLimit;
use crate::http::conn_manager::{ConnInfo, Hcm};
use crate::listener::network::api::{ConnCtx, ConnectionFilter};
use crate::listener::network::http_connection_manager::HttpChain;
use crate::listener::network::NetFilter;
use crate::stats::{Counter, Gauge};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use legate_api::pb::envoy::config::core::v3::{address, socket_address};
use legate_api::pb::envoy::config::listener::v3::{listener_filter, FilterChain, Listener};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub struct ListenerStats {
    pub downstream_cx_total: Arc<Counter>,
    pub downstream_cx_active: Arc<Gauge>,
    pub downstream_cx_destroy: Arc<Counter>,
    pub no_filter_chain_match: Arc<Counter>,
    /// Connections closed at accept: the global connection limit was reached.
    pub downstream_global_cx_overflow: Arc<Counter>,
    /// Connections closed at accept: the listener's own limit was reached.
    pub downstream_cx_overflow: Arc<Counter>,
    /// Closed at accept by the overload manager's `reject_incoming_connections`.
    pub downstream_cx_overload_reject: Arc<Counter>,
    /// `ssl.*`, when a chain terminates TLS.
    pub ssl: Option<crate::tls::SslStats>,
}

/// One filter chain: its TLS termination, if any, the network filters in
/// front, and its terminal network filter.
pub struct Chain {
    tls: Option<Arc<crate::tls::ServerTls>>,
    /// The filters before the last one, in order.
    front: Box<[Arc<dyn ConnectionFilter>]>,
    /// Those of them that check the connection's data (`rbac`), in order.
    data_filters: Arc<[Arc<dyn ConnectionFilter>]>,
    pub filter: NetFilter,
}

pub struct ListenerConfig {
    pub name: String,
    pub address: SocketAddr,
    pub stats: ListenerStats,
    pub config: Listener,
    /// `filter_chains`, in the order `selector` indexes them.
    chains: Vec<Arc<Chain>>,
    default_chain: Option<Arc<Chain>>,
    selector: crate::listener::filter_chain::Selector,
    /// The listener filters, in their configured order.
    listener_filters: Vec<ListenerFilter>,
    /// Raised when this config is replaced or removed: its connections drain.
    draining: watch::Sender<bool>,
    /// How long a draining connection may take (`--drain-time-s`).
    pub drain_time: Duration,
    /// The global connection limit its connections count against (none with
    /// `ignore_global_conn_limit`, or when there is no limit).
    conn_limit: Option<Arc<crate::common::conn_limit::ConnLimit>>,
    /// This listener's own limit, from the runtime.
    own_limit: Option<Arc<crate::common::conn_limit::ConnLimit>>,
    /// A UDP listener's proxy (it has no filter chains).
    pub udp: Option<Arc<crate::listener::udp_proxy::UdpProxy>>,
}

/// `listener.127.0.0.1_10000.` as Envoy names a listener's stats.
pub fn stat_name(addr: &SocketAddr) -> String {
    format!("{}_{}", addr.ip(), addr.port())
}

const TLS_INSPECTOR: &str = "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector";
const HTTP_INSPECTOR: &str = "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector";

/// A listener filter: what it reads from a connection's first bytes.
enum ListenerFilter {
    /// TLS or not; SNI and ALPN from the ClientHello.
    Tls,
    /// HTTP/1.x or HTTP/2 on a cleartext connection, as the application protocol.
    Http(Arc<crate::listener::inspectors::http::Stats>),
}
/// Envoy's `listener_filters_timeout` default.
const LISTENER_FILTERS_TIMEOUT: Duration = Duration::from_secs(15);

impl Chain {
    fn compile(c: &FilterChain, ctx: &crate::http::context::CompileContext) -> Result<Self, String> {
        let tls = c
            .transport_socket
            .as_ref()
            .map(|ts| crate::tls::downstream(ts, &ctx.secrets))
            .transpose()
            .map_err(|e| e.to_string())?;
        // The filters in front, then one terminal filter.
        let filters = crate::listener::network::registry::compile(&c.filters, ctx)?;
        let data_filters = filters.front.iter().filter(|f| f.checks_data()).cloned().collect();
        Ok(Self { tls, front: filters.front.into(), data_filters, filter: filters.terminal })
    }
}

impl ListenerConfig {
    /// Tells every connection opened under this config to finish and close.
    pub fn drain(&self) {
        let _ = self.draining.send(true);
    }

    /// The HTTP connection managers of this listener's chains.
    /// Every TLS context of its chains has its secrets, or stopped waiting
    /// for them (a listener warms until then).
    pub fn tls_ready(&self) -> bool {
        self.chains.iter().chain(self.default_chain.iter()).all(|c| c.tls.as_ref().is_none_or(|t| t.settled()))
    }

    pub fn hcms(&self) -> impl Iterator<Item = &Arc<Hcm>> {
        self.chains.iter().chain(self.default_chain.iter()).filter_map(|c| match &c.filter {
            NetFilter::Http(h) => Some(&h.hcm),
            NetFilter::Tcp(_) => None,
        })
    }

    pub fn compile(l: &Listener, ctx: &crate::http::context::CompileContext) -> Result<Self, String> {
        // `traffic_direction`: an OUTBOUND listener's connection managers
        // trace egress (what Envoy reads it for on the HTTP path).
        let outbound =
            l.traffic_direction == legate_api::pb::envoy::config::core::v3::TrafficDirection::Outbound as i32;
        // `per_connection_buffer_limit_bytes`: what its streams may hold whole.
        let buffer_limit =
            l.per_connection_buffer_limit_bytes.map_or(crate::body::RESEND_BUFFER_LIMIT, |v| u64::from(v.value));
        let ctx = &crate::http::context::CompileContext { egress: outbound, buffer_limit, ..ctx.clone() };
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
        let udp = (sa.protocol == socket_address::Protocol::Udp as i32)
            .then(|| crate::listener::udp_proxy::UdpProxy::from_listener(l, store, ctx.clusters.clone()).map(Arc::new))
            .transpose()?;
        if udp.is_none() && l.filter_chains.is_empty() && l.default_filter_chain.is_none() {
            return Err("filter_chains: a listener needs a filter chain or a default_filter_chain".into());
        }
        let mut listener_filters = Vec::new();
        for (i, lf) in l.listener_filters.iter().enumerate().filter(|_| udp.is_none()) {
            match &lf.config_type {
                Some(listener_filter::ConfigType::TypedConfig(any))
                    if legate_api::any::type_name(any) == TLS_INSPECTOR =>
                {
                    listener_filters.push(ListenerFilter::Tls)
                }
                Some(listener_filter::ConfigType::TypedConfig(any))
                    if legate_api::any::type_name(any) == HTTP_INSPECTOR =>
                {
                    listener_filters
                        .push(ListenerFilter::Http(Arc::new(crate::listener::inspectors::http::Stats::new(store))))
                }
                _ => {
                    return Err(format!(
                    "listener_filters[{i}]: only envoy.filters.listener.tls_inspector and http_inspector are supported"
                ))
                }
            }
        }
        let mut chains = Vec::new();
        let mut matches = Vec::new();
        for (i, c) in l.filter_chains.iter().enumerate() {
            matches.push(
                crate::listener::filter_chain::ChainMatch::compile(c.filter_chain_match.as_ref())
                    .map_err(|e| format!("filter_chains[{i}].filter_chain_match.{e}"))?,
            );
            chains.push(Arc::new(Chain::compile(c, ctx).map_err(|e| format!("filter_chains[{i}].{e}"))?));
        }
        let default_chain = l
            .default_filter_chain
            .as_ref()
            .map(|c| Chain::compile(c, ctx).map(Arc::new))
            .transpose()
            .map_err(|e| format!("default_filter_chain.{e}"))?;
        let selector = crate::listener::filter_chain::Selector::new(matches)?;
        let p = format!("listener.{}.", stat_name(&address));
        let any_tls = chains.iter().chain(default_chain.iter()).any(|c| c.tls.is_some());
        let address_name = address.to_string();
        Ok(Self {
            draining: watch::channel(false).0,
            drain_time: ctx.drain_time,
            // Without a limit nothing is counted at accept.
            conn_limit: (!l.ignore_global_conn_limit && ctx.conn_limit.is_limited()).then(|| ctx.conn_limit.clone()),
            own_limit: crate::common::conn_limit::ConnLimit::for_listener(if l.name.is_empty() {
                &address_name
            } else {
                &l.name
            }),
            name: if l.name.is_empty() { address_name.clone() } else { l.name.clone() },
            address,
            chains,
            default_chain,
            selector,
            listener_filters,
            udp,
            stats: ListenerStats {
                downstream_cx_total: store.counter(&format!("{p}downstream_cx_total")),
                downstream_cx_active: store.gauge(&format!("{p}downstream_cx_active")),
                downstream_cx_destroy: store.counter(&format!("{p}downstream_cx_destroy")),
                no_filter_chain_match: store.counter(&format!("{p}no_filter_chain_match")),
                downstream_global_cx_overflow: store.counter(&format!("{p}downstream_global_cx_overflow")),
                downstream_cx_overflow: store.counter(&format!("{p}downstream_cx_overflow")),
                downstream_cx_overload_reject: store.counter(&format!("{p}downstream_cx_overload_reject")),
                ssl: any_tls.then(|| crate::tls::SslStats::new(store, &p)),
            },
            config: l.clone(),
        })
    }

    /// The chain for a connection, in Envoy's precedence, else the default.
    fn select(&self, facts: &crate::listener::filter_chain::ConnFacts<'_>) -> Option<&Arc<Chain>> {
        match self.selector.select(facts) {
            Some(i) => self.chains.get(i),
            None => self.default_chain.as_ref(),
        }
    }
}

/// Binds one socket for one worker. Every worker binds its own with
/// SO_REUSEPORT so the kernel spreads connections over workers.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let s = bound_reuse_port(addr, socket2::Type::STREAM, socket2::Protocol::TCP)?;
    s.listen(1024)?;
    Ok(s.into())
}

/// A non-blocking socket bound to `addr` with SO_REUSEPORT (IPv6 only for
/// an IPv6 address), for one worker: TCP listeners and UDP listeners alike.
pub fn bound_reuse_port(
    addr: SocketAddr,
    kind: socket2::Type,
    protocol: socket2::Protocol,
) -> std::io::Result<socket2::Socket> {
    let domain = if addr.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
    let s = socket2::Socket::new(domain, kind, Some(protocol))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s)
}

/// What the main thread tells workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    /// Stop accepting; existing connections go on (`/drain_listeners`).
    StopAccepting,
    /// Stop accepting and close connections gracefully, then exit.
    Drain,
    /// A hot restart child took over the sockets: stop accepting. Each
    /// connection is asked to close at a time within the drain time (at
    /// random with `gradual`, at once with `immediate`, as Envoy's
    /// `--drain-strategy`): HTTP/1 by `connection: close` on its next
    /// response rather than by closing it, so a request already on its way
    /// is answered; HTTP/2 by GOAWAY. The process exit closes what is left.
    HotRestartDrain {
        gradual: bool,
    },
}

impl Phase {
    pub fn draining(self) -> bool {
        matches!(self, Phase::Drain | Phase::HotRestartDrain { .. })
    }
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
    // A listener added while the server no longer accepts stays idle.
    if *phase.borrow() != Phase::Running {
        return;
    }
    let Ok(socket) = tokio::net::TcpListener::from_std(socket) else { return };
    // The overload manager's accept-side actions: one relaxed load an
    // accept; a change wakes the loop only when such an action is set.
    let mut overload = crate::common::overload::accept_changes();
    let watched = crate::common::overload::accept_watched();
    let mut state = crate::common::overload::accept_state();
    loop {
        // `stop_accepting_connections` saturated: connections wait in the
        // kernel's backlog until it is not, as behind Envoy's disabled
        // listener.
        let stopped = state.stop_accepting();
        tokio::select! {
            () = crate::common::overload::accept_change(&mut overload, stopped), if stopped || watched => {
                state = crate::common::overload::accept_state();
            }
            accepted = socket.accept(), if !stopped => {
                state = crate::common::overload::accept_state();
                let Ok((stream, remote)) = accepted else {
                    // Out of file descriptors and the like: back off briefly.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let listener = slot.load_full();
                // Over the global limit: closed at once, as Envoy does.
                let Ok(place) = ConnLimit::admit(listener.conn_limit.as_ref()) else {
                    listener.stats.downstream_global_cx_overflow.inc();
                    continue;
                };
                // `reject_incoming_connections`: closed at once, in the
                // action's share, as Envoy does.
                if state.reject() {
                    listener.stats.downstream_cx_overload_reject.inc();
                    continue;
                }
                // Over the listener's own limit: closed too, counted apart.
                let Ok(own) = ConnLimit::admit(listener.own_limit.as_ref()) else {
                    listener.stats.downstream_cx_overflow.inc();
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let local = stream.local_addr().unwrap_or(listener.address);
                let (phase, active) = (phase.clone(), active.clone());
                tokio::spawn(async move {
                    serve_connection(listener, stream, remote, local, phase, active).await;
                    drop((place, own));
                });
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

/// When a connection is asked to close in a hot restart's drain: spread over
/// the first half of the drain time with `gradual` (so the clients reconnect
/// to the new process gradually, and each connection still has time for the
/// response that carries `connection: close`), at once with `immediate`.
fn restart_delay(drain_time: Duration, gradual: bool) -> Duration {
    if gradual {
        drain_time.mul_f64(rand::random::<f64>() * 0.5)
    } else {
        Duration::ZERO
    }
}

/// In a hot restart's drain, sets when the connection is to be asked to
/// close; whether it is.
fn arm_restart_close(phase: Phase, drain_time: Duration, at: std::pin::Pin<&mut tokio::time::Sleep>) -> bool {
    let Phase::HotRestartDrain { gradual } = phase else { return false };
    at.reset(tokio::time::Instant::now() + restart_delay(drain_time, gradual));
    true
}

enum AskToClose {
    /// HTTP/2: send GOAWAY.
    GoAway,
    /// HTTP/1: its next response carries `connection: close`.
    Asked,
    /// No request yet, so the protocol is not known (h2c and HTTP/1 look
    /// alike until then): look again after this long.
    Later(Duration),
}

/// Asks a connection to close in a hot restart's drain.
fn ask_to_close(info: &ConnInfo, alpn_h2: Option<bool>) -> AskToClose {
    info.draining.store(true, Ordering::Relaxed);
    if alpn_h2 == Some(true) || info.http2.load(Ordering::Relaxed) {
        AskToClose::GoAway
    } else if info.requests.load(Ordering::Relaxed) == 0 {
        AskToClose::Later(Duration::from_millis(50))
    } else {
        AskToClose::Asked
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
    phase: watch::Receiver<Phase>,
    active: Arc<AtomicUsize>,
) {
    let ls = &listener.stats;
    ls.downstream_cx_total.inc();
    ls.downstream_cx_active.inc();
    active.fetch_add(1, Ordering::Relaxed);
    dispatch(&listener, stream, remote, local, phase).await;
    active.fetch_sub(1, Ordering::Relaxed);
    ls.downstream_cx_active.dec();
    ls.downstream_cx_destroy.inc();
}

/// Listener filters, filter-chain selection, TLS termination, then the
/// chain's network filter.
async fn dispatch(
    listener: &Arc<ListenerConfig>,
    stream: tokio::net::TcpStream,
    remote: SocketAddr,
    local: SocketAddr,
    phase: watch::Receiver<Phase>,
) {
    // The listener filters share one timeout (Envoy's listener_filters_timeout).
    let deadline = tokio::time::Instant::now() + LISTENER_FILTERS_TIMEOUT;
    let mut hello = crate::listener::inspectors::tls::Hello::default();
    for f in &listener.listener_filters {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match f {
            ListenerFilter::Tls => match crate::listener::inspectors::tls::inspect(&stream, left).await {
                // Plain text leaves what an earlier HTTP inspector found.
                Ok(Some(h)) if !h.tls => {}
                Ok(Some(h)) => hello = h,
                // Closed, or timed out before a hello: Envoy closes too.
                _ => return,
            },
            // A connection found to be TLS is not inspected (Envoy's rule).
            ListenerFilter::Http(_) if hello.tls => {}
            ListenerFilter::Http(stats) => match crate::listener::inspectors::http::inspect(&stream, left, stats).await
            {
                Ok(Some(protocol)) => hello.alpn = vec![protocol.to_string()],
                Ok(None) => {}
                Err(()) => return,
            },
        }
    }
    let facts = crate::listener::filter_chain::ConnFacts {
        local,
        remote,
        sni: hello.sni.as_deref(),
        transport: if hello.tls { "tls" } else { "raw_buffer" },
        alpn: &hello.alpn,
    };
    let Some(chain) = listener.select(&facts).cloned() else {
        listener.stats.no_filter_chain_match.inc();
        return;
    };
    // As in Envoy, the requested server name is what the TLS inspector
    // read; without it a terminated connection has none.
    let sni = hello.sni.map(String::into_boxed_str);
    let Some(tls) = &chain.tls else {
        let conn = ConnCtx { remote, local, tls: None, sni };
        return run_chain(Accepted { listener, chain: &chain, conn, alpn_h2: None, phase }, stream).await;
    };
    // The context's configs as of now; a secret rotation later does not
    // touch this connection. None only while a secret has not arrived: closed.
    let Some(dtls) = tls.current() else {
        if let Some(ssl) = &listener.stats.ssl {
            ssl.connection_error.inc();
        }
        return;
    };
    let (accepted, sigalg) = Box::pin(dtls.accept(stream)).await;
    match accepted {
        Ok(tls) => {
            let server = tls.get_ref().1;
            if let Some(ssl) = &listener.stats.ssl {
                ssl.handshake_done(server, sigalg);
            }
            let h2 = server.alpn_protocol().map(|p| p == b"h2");
            let conn = ConnCtx { remote, local, tls: Some(Arc::new(dtls.conn_facts(server))), sni };
            run_chain(Accepted { listener, chain: &chain, conn, alpn_h2: h2, phase }, tls).await
        }
        Err(e) => {
            if let Some(ssl) = &listener.stats.ssl {
                ssl.failed(&e);
            }
        }
    }
}

/// A connection whose filter chain is chosen (and whose TLS, if any, is
/// done): what running the chain needs besides the byte stream.
struct Accepted<'a> {
    listener: &'a Arc<ListenerConfig>,
    chain: &'a Chain,
    conn: ConnCtx,
    /// The negotiated ALPN said h2 (Some(true)), something else, or nothing.
    alpn_h2: Option<bool>,
    phase: watch::Receiver<Phase>,
}

async fn run_chain<S: crate::io::Io>(a: Accepted<'_>, io: S) {
    // A connection a filter refuses (the rate limit) is closed unread.
    if !a.chain.front.iter().all(|f| f.on_new_connection()) {
        return;
    }
    if a.chain.data_filters.is_empty() {
        return serve_filter(a, io).await;
    }
    // Network RBAC checks the connection when its data comes; the gated
    // stream is boxed so the terminal filters are built once for it.
    let gate = crate::listener::network::read_gate::Gate::new(io, a.chain.data_filters.clone(), a.conn.clone());
    let gated: crate::io::BoxIo = Box::new(gate);
    serve_filter(a, gated).await
}

async fn serve_filter<S: crate::io::Io>(a: Accepted<'_>, io: S) {
    // Each terminal filter's future is boxed: a connection's task is as
    // large as the largest of its futures, so unboxed, every connection
    // would keep room for the largest filter, whichever it runs.
    match &a.chain.filter {
        NetFilter::Tcp(t) => Box::pin(t.serve(io, a.conn.remote, a.conn.local)).await,
        NetFilter::Http(h) => Box::pin(serve_http(a.listener, h, io, a.conn, a.alpn_h2, a.phase)).await,
    }
}

/// What the connection manager answers one request with, boxed.
/// Its error resets the request's HTTP/2 stream (`ResetStream`).
type RequestFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<crate::http::conn_manager::ProxyResponse, h2::Error>> + Send>,
>;

/// What the connection manager knows of an accepted connection.
fn conn_info_of(conn: ConnCtx) -> Arc<ConnInfo> {
    let mut info = ConnInfo::new(conn.remote, conn.local);
    info.secure = conn.tls.is_some();
    info.tls = conn.tls;
    info.sni = conn.sni;
    Arc::new(info)
}

/// One request through the connection manager; a response it marks
/// `ResetStream` resets the HTTP/2 stream instead of being sent.
fn serve_request(hcm: Arc<Hcm>, info: Arc<ConnInfo>, req: http::Request<hyper::body::Incoming>) -> RequestFuture {
    Box::pin(async move {
        let resp = hcm.handle(info, req).await;
        if let Some(reset) = resp.extensions().get::<crate::http::conn_manager::ResetStream>() {
            return Err(h2::Error::from(reset.0));
        }
        Ok(resp)
    })
}

async fn serve_http<S: crate::io::Io>(
    listener: &Arc<ListenerConfig>,
    http: &HttpChain,
    stream: S,
    conn: ConnCtx,
    alpn_h2: Option<bool>,
    mut phase: watch::Receiver<Phase>,
) {
    let hs = &http.hcm.stats;
    hs.downstream_cx_total.inc();
    hs.downstream_cx_active.inc();
    let info = conn_info_of(conn);
    let conn_info = info.clone();
    let hcm = http.hcm.clone();
    // A request's future is boxed: hyper keeps room for one in every
    // connection (idle ones too), and the request path's future is large.
    let svc = service_fn(move |req| serve_request(hcm.clone(), info.clone(), req));
    let mut config_drain = listener.draining.subscribe();
    let io = crate::http::h1_errors::EnvoyErrors::new(
        stream,
        http.hcm.server_name(),
        hs.downstream_cx_protocol_error.clone(),
        conn_info.clone(),
    )
    .serving_http_10(http.hcm.accepts_http_10())
    .head_timeout(http.hcm.request_headers_timeout, hs.downstream_rq_header_timeout.clone())
    .counting_refused_heads(http.refused_head.clone());
    let builder = http.builder_for(alpn_h2);
    // With upgrades: a 101 (or a 2xx to CONNECT) hands the connection to the
    // connection manager's tunnel.
    // Boxed, so that the connection's task holds only what this protocol
    // needs, not room for the largest of every path that leads here.
    let io = crate::http::h2_frames::H2Frames::new(io);
    let mut conn = Box::pin(builder.serve_connection_with_upgrades(TokioIo::new(io), svc));
    let mut draining = *phase.borrow() == Phase::Drain;
    if draining {
        conn.as_mut().graceful_shutdown();
    }
    // The connection idle timeout runs while no stream is active; a stream
    // ending re-arms it.
    // (scaled by the overload manager's `reduce_timeouts` when configured).
    let mut idle_timer = crate::common::overload::IdleTimer::new(http.hcm.idle_timeout);
    let far = Duration::from_secs(365 * 24 * 3600);
    let idle = tokio::time::sleep_until(idle_timer.arm());
    tokio::pin!(idle);
    // A draining connection gets the drain time to finish, then is closed.
    let deadline = tokio::time::sleep(if draining { listener.drain_time } else { far });
    tokio::pin!(deadline);
    // A hot restart's drain: when this connection is asked to close.
    let restart_close = tokio::time::sleep(far);
    tokio::pin!(restart_close);
    let now = *phase.borrow();
    let mut restart_pending = arm_restart_close(now, listener.drain_time, restart_close.as_mut());
    loop {
        let was_draining = draining;
        tokio::select! {
            _ = conn.as_mut() => break,
            _ = &mut deadline, if draining => {
                hs.downstream_cx_drain_close.inc();
                break;
            }
            _ = conn_info.close_asked.notified(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = conn_info.idle.notified() => idle.as_mut().reset(idle_timer.arm()),
            () = idle_timer.changed(), if idle_timer.scaled() && !draining => idle.as_mut().reset(idle_timer.deadline()),
            _ = &mut idle, if idle_timer.is_set() && !draining => {
                if conn_info.active_streams.load(Ordering::Relaxed) == 0 {
                    hs.downstream_cx_idle_timeout.inc();
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                } else {
                    idle.as_mut().reset(idle_timer.arm());
                }
            }
            _ = config_drain.wait_for(|d| *d), if !draining => {
                draining = true;
                if begin_drain(&conn_info) {
                    conn.as_mut().graceful_shutdown();
                }
            }
            _ = &mut restart_close, if restart_pending => match ask_to_close(&conn_info, alpn_h2) {
                AskToClose::GoAway => {
                    restart_pending = false;
                    conn.as_mut().graceful_shutdown();
                }
                AskToClose::Asked => restart_pending = false,
                AskToClose::Later(t) => restart_close.as_mut().reset(tokio::time::Instant::now() + t),
            },
            changed = phase.changed(), if !draining => {
                let now = if changed.is_err() { Phase::Drain } else { *phase.borrow() };
                if now == Phase::Drain {
                    draining = true;
                    if begin_drain(&conn_info) {
                        conn.as_mut().graceful_shutdown();
                    }
                } else if !restart_pending {
                    restart_pending = arm_restart_close(now, listener.drain_time, restart_close.as_mut());
                }
            }
        }
        if draining && !was_draining {
            deadline.as_mut().reset(tokio::time::Instant::now() + listener.drain_time);
        }
    }
    // hyper hands an upgraded connection over and is done with it; the
    // connection lives on as the tunnel, counted as active until the
    // tunnel's stream ends (bounded by the stream idle timeout).
    if conn_info.upgraded.load(Ordering::Relaxed) {
        while conn_info.active_streams.load(Ordering::Relaxed) > 0 {
            conn_info.idle.notified().await;
        }
    }
    hs.downstream_cx_active.dec();
    hs.downstream_cx_destroy.inc();
}
