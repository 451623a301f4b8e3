//! `envoy.filters.udp_listener.udp_proxy` (`UdpProxyConfig`) on a UDP
//! listener: each downstream peer gets a session with an upstream socket of
//! its own, connected to a host the cluster's load balancer picked (hashed
//! by `hash_policies` when set: the peer's IP or a fixed key, as Envoy's
//! `HashPolicyImpl`). Datagrams go both ways until the session has been
//! idle for `idle_timeout` (60 s by default). The route is `cluster` or a
//! `matcher` whose `on_no_match` names the cluster (the form Envoy's
//! examples use). Stats as Envoy names them: `udp.<stat_prefix>.*` and
//! `cluster.<name>.udp.*`.
//!
//! Allocation: one receive buffer per socket (the listener's and each
//! session's), reused for every datagram; a session costs its socket, a
//! task and a map entry.

use crate::stats::{Counter, Gauge, Store};
use crate::upstream::cluster::ClusterMap;
use arc_swap::ArcSwap;
use legate_api::pb::envoy::config::listener::v3::Listener;
use legate_api::pb::envoy::extensions::filters::udp::udp_proxy::v3::{
    udp_proxy_config::{hash_policy::PolicySpecifier, RouteSpecifier},
    Route, UdpProxyConfig,
};
use std::collections::hash_map::{Entry, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use xxhash_rust::xxh64::xxh64;

pub const TYPE: &str = "envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig";
const ROUTE_TYPE: &str = "envoy.extensions.filters.udp.udp_proxy.v3.Route";
/// The largest datagram read (Envoy's `MAX_UDP_PACKET_SIZE`).
const MAX_DATAGRAM: usize = 64 * 1024;

/// `udp.<stat_prefix>.*`.
struct DownstreamStats {
    no_route: Arc<Counter>,
    rx_bytes: Arc<Counter>,
    rx_datagrams: Arc<Counter>,
    rx_errors: Arc<Counter>,
    total: Arc<Counter>,
    tx_bytes: Arc<Counter>,
    tx_datagrams: Arc<Counter>,
    tx_errors: Arc<Counter>,
    idle_timeout: Arc<Counter>,
    active: Arc<Gauge>,
}

/// `cluster.<name>.udp.*`.
struct UpstreamStats {
    rx_datagrams: Arc<Counter>,
    rx_errors: Arc<Counter>,
    tx_datagrams: Arc<Counter>,
    tx_errors: Arc<Counter>,
}

impl UpstreamStats {
    fn new(store: &Store, cluster: &str) -> Self {
        let c = |n: &str| store.counter(&format!("cluster.{cluster}.udp.{n}"));
        Self {
            rx_datagrams: c("sess_rx_datagrams"),
            rx_errors: c("sess_rx_errors"),
            tx_datagrams: c("sess_tx_datagrams"),
            tx_errors: c("sess_tx_errors"),
        }
    }
}

/// A compiled UDP proxy.
pub struct UdpProxy {
    cluster: String,
    idle_timeout: Duration,
    /// `hash_policies`: the peer's IP, or a fixed key.
    hash: Option<HashBy>,
    stats: DownstreamStats,
    upstream: UpstreamStats,
    clusters: Arc<ArcSwap<ClusterMap>>,
}

enum HashBy {
    SourceIp,
    Key(u64),
}

impl UdpProxy {
    /// Compiles the listener filter's config; errors name the field.
    pub fn compile(c: &UdpProxyConfig, store: &Store, clusters: Arc<ArcSwap<ClusterMap>>) -> Result<Self, String> {
        if c.use_original_src_ip {
            return Err("use_original_src_ip: not implemented by Legate".into());
        }
        #[allow(deprecated)]
        let cluster = match &c.route_specifier {
            Some(RouteSpecifier::Cluster(name)) => name.clone(),
            Some(RouteSpecifier::Matcher(m)) => on_no_match_cluster(m)?,
            None => return Err("route_specifier: cluster or matcher is required".into()),
        };
        let hash = match c.hash_policies.first().and_then(|h| h.policy_specifier.as_ref()) {
            _ if c.hash_policies.len() > 1 => return Err("hash_policies: at most one policy is supported".into()),
            Some(PolicySpecifier::SourceIp(true)) => Some(HashBy::SourceIp),
            Some(PolicySpecifier::Key(k)) => Some(HashBy::Key(xxh64(k.as_bytes(), 0))),
            _ => None,
        };
        let idle_timeout = c.idle_timeout.as_ref().map_or(Duration::from_secs(60), legate_api::duration::from_pb);
        let p = format!("udp.{}.", c.stat_prefix);
        let counter = |n: &str| store.counter(&format!("{p}{n}"));
        Ok(Self {
            stats: DownstreamStats {
                no_route: counter("downstream_sess_no_route"),
                rx_bytes: counter("downstream_sess_rx_bytes"),
                rx_datagrams: counter("downstream_sess_rx_datagrams"),
                rx_errors: counter("downstream_sess_rx_errors"),
                total: counter("downstream_sess_total"),
                tx_bytes: counter("downstream_sess_tx_bytes"),
                tx_datagrams: counter("downstream_sess_tx_datagrams"),
                tx_errors: counter("downstream_sess_tx_errors"),
                idle_timeout: counter("idle_timeout"),
                active: store.gauge(&format!("{p}downstream_sess_active")),
            },
            upstream: UpstreamStats::new(store, &cluster),
            cluster,
            idle_timeout,
            hash,
            clusters,
        })
    }

    /// The UDP proxy of a UDP listener: its one listener filter.
    pub fn from_listener(l: &Listener, store: &Store, clusters: Arc<ArcSwap<ClusterMap>>) -> Result<Self, String> {
        use legate_api::pb::envoy::config::listener::v3::listener_filter::ConfigType;
        if !l.filter_chains.is_empty() || l.default_filter_chain.is_some() {
            return Err("filter_chains: a UDP listener takes no filter chains".into());
        }
        let [lf] = &l.listener_filters[..] else {
            return Err("listener_filters: a UDP listener needs exactly one filter, the udp_proxy".into());
        };
        match &lf.config_type {
            Some(ConfigType::TypedConfig(any)) if legate_api::any::type_name(any) == TYPE => {
                let c: UdpProxyConfig =
                    legate_api::any::unpack(any).map_err(|e| format!("listener_filters[0].typed_config: {e}"))?;
                Self::compile(&c, store, clusters).map_err(|e| format!("listener_filters[0].typed_config.{e}"))
            }
            _ => Err(format!("listener_filters[0]: only {TYPE} is implemented on a UDP listener")),
        }
    }

    fn hash_of(&self, peer: SocketAddr) -> Option<u64> {
        match self.hash.as_ref()? {
            HashBy::SourceIp => Some(xxh64(peer.ip().to_string().as_bytes(), 0)),
            HashBy::Key(k) => Some(*k),
        }
    }
}

/// The cluster of a matcher that only has `on_no_match` with a `Route`
/// action (a matcher with match rules is refused by name).
fn on_no_match_cluster(m: &legate_api::pb::xds::r#type::matcher::v3::Matcher) -> Result<String, String> {
    use legate_api::pb::xds::r#type::matcher::v3::matcher::{on_match::OnMatch, MatcherType};
    if m.matcher_type.is_some() {
        let kind = match &m.matcher_type {
            Some(MatcherType::MatcherList(_)) => "matcher_list",
            _ => "matcher_tree",
        };
        return Err(format!("matcher.{kind}: not implemented by Legate (only on_no_match)"));
    }
    let on = m.on_no_match.as_ref().ok_or("matcher.on_no_match: is required")?;
    let Some(OnMatch::Action(action)) = &on.on_match else {
        return Err("matcher.on_no_match: only an action is implemented by Legate".into());
    };
    let any = action.typed_config.as_ref().ok_or("matcher.on_no_match.action.typed_config: is required")?;
    if legate_api::any::type_name(any) != ROUTE_TYPE {
        return Err(format!("matcher.on_no_match.action.typed_config: expected {ROUTE_TYPE}"));
    }
    let r: Route = legate_api::any::unpack(any).map_err(|e| format!("matcher.on_no_match.action: {e}"))?;
    Ok(r.cluster)
}

/// One downstream peer's session: its upstream socket and when it last
/// carried a datagram (milliseconds since `epoch`).
struct Session {
    upstream: Arc<UdpSocket>,
    last: Arc<AtomicU64>,
    /// The task carrying answers back: stopped with the session (when the
    /// listener stops, its sessions end at once).
    carrier: tokio::task::AbortHandle,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.carrier.abort();
    }
}

/// Serves one UDP listener socket until `stop` turns true. `current` gives
/// the listener's config as it now is (a replaced config applies to new
/// sessions; a datagram arriving while the listener has none is dropped).
pub async fn serve<F>(current: F, socket: std::net::UdpSocket, mut stop: watch::Receiver<bool>)
where
    F: Fn() -> Option<Arc<UdpProxy>>,
{
    let Ok(socket) = UdpSocket::from_std(socket) else { return };
    let socket = Arc::new(socket);
    let mut last_config = current();
    let epoch = Instant::now();
    let mut sessions: HashMap<SocketAddr, Session> = HashMap::new();
    let (ended_tx, mut ended) = mpsc::unbounded_channel::<(SocketAddr, Arc<Gauge>)>();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                let Some(p) = current() else { continue };
                last_config = Some(p.clone());
                match r {
                    Ok((n, peer)) => {
                        if let Entry::Vacant(v) = sessions.entry(peer) {
                            match open(&p, &socket, peer, epoch, &ended_tx).await {
                                Some(s) => { v.insert(s); }
                                None => continue,
                            }
                        }
                        // Counted in a session only, as Envoy does (not
                        // when there is no route or no host).
                        if let Some(s) = sessions.get(&peer) {
                            p.stats.rx_bytes.add(n as u64);
                            p.stats.rx_datagrams.inc();
                            s.last.store(epoch.elapsed().as_millis() as u64, Relaxed);
                            match s.upstream.send(&buf[..n]).await {
                                Ok(_) => p.upstream.tx_datagrams.inc(),
                                Err(_) => p.upstream.tx_errors.inc(),
                            }
                        }
                    }
                    Err(_) => p.stats.rx_errors.inc(),
                }
            }
            Some((peer, active)) = ended.recv() => {
                if sessions.remove(&peer).is_some() {
                    active.dec();
                }
            }
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
        }
    }
    if let Some(p) = last_config {
        p.stats.active.add(-(sessions.len() as i64));
    }
}

/// A new session for `peer`: a host picked, a socket connected to it, and
/// the task that carries its answers back; None (counted) when there is no
/// cluster or no host.
async fn open(
    p: &Arc<UdpProxy>,
    downstream: &Arc<UdpSocket>,
    peer: SocketAddr,
    epoch: Instant,
    ended: &mpsc::UnboundedSender<(SocketAddr, Arc<Gauge>)>,
) -> Option<Session> {
    let Some(cluster) = p.clusters.load().get(&p.cluster).cloned() else {
        p.stats.no_route.inc();
        return None;
    };
    let Some(host) = cluster.pick_hashed(p.hash_of(peer)) else {
        cluster.stats.upstream_cx_none_healthy.inc();
        return None;
    };
    let any: SocketAddr = if host.addr.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let upstream = match UdpSocket::bind(any).await {
        Ok(s) if s.connect(host.addr).await.is_ok() => Arc::new(s),
        _ => {
            p.upstream.tx_errors.inc();
            return None;
        }
    };
    p.stats.total.inc();
    p.stats.active.inc();
    let last = Arc::new(AtomicU64::new(epoch.elapsed().as_millis() as u64));
    let carrier = tokio::spawn(carry_back(
        p.clone(),
        upstream.clone(),
        downstream.clone(),
        peer,
        epoch,
        last.clone(),
        ended.clone(),
    ))
    .abort_handle();
    Some(Session { upstream, last, carrier })
}

/// A session's answers from upstream to its peer, until it has been idle
/// for the idle timeout (counted in `idle_timeout`).
async fn carry_back(
    p: Arc<UdpProxy>,
    upstream: Arc<UdpSocket>,
    downstream: Arc<UdpSocket>,
    peer: SocketAddr,
    epoch: Instant,
    last: Arc<AtomicU64>,
    ended: mpsc::UnboundedSender<(SocketAddr, Arc<Gauge>)>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let idle_at = epoch + Duration::from_millis(last.load(Relaxed)) + p.idle_timeout;
        if Instant::now() >= idle_at {
            p.stats.idle_timeout.inc();
            break;
        }
        tokio::select! {
            r = upstream.recv(&mut buf) => match r {
                Ok(n) => {
                    p.upstream.rx_datagrams.inc();
                    last.store(epoch.elapsed().as_millis() as u64, Relaxed);
                    match downstream.send_to(&buf[..n], peer).await {
                        Ok(_) => {
                            p.stats.tx_bytes.add(n as u64);
                            p.stats.tx_datagrams.inc();
                        }
                        Err(_) => p.stats.tx_errors.inc(),
                    }
                }
                // An ICMP refusal of an earlier datagram.
                Err(_) => p.upstream.rx_errors.inc(),
            },
            _ = tokio::time::sleep_until(idle_at.into()) => {}
        }
    }
    let _ = ended.send((peer, p.stats.active.clone()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(yaml: &str) -> Result<UdpProxy, String> {
        let v = legate_api::load::parse_text(yaml).map_err(|e| e.to_string())?;
        let (c, _) = legate_api::load::decode_typed::<UdpProxyConfig>(v).map_err(|e| format!("{e:?}"))?;
        UdpProxy::compile(&c, &Store::default(), Arc::new(ArcSwap::from_pointee(ClusterMap::default())))
    }

    #[test]
    fn the_cluster_comes_from_on_no_match_or_the_cluster_field() {
        let on_no_match = "stat_prefix: s\nmatcher: { on_no_match: { action: { name: route, typed_config: { '@type': type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.Route, cluster: up } } } }";
        let p = compile(on_no_match).expect("compiles");
        assert_eq!((p.cluster.as_str(), p.idle_timeout), ("up", Duration::from_secs(60)));
        let p = compile("stat_prefix: s\ncluster: old\nidle_timeout: 2s").expect("compiles");
        assert_eq!((p.cluster.as_str(), p.idle_timeout), ("old", Duration::from_secs(2)));
    }

    #[test]
    fn what_is_not_built_is_refused_by_name() {
        let e = compile("stat_prefix: s\ncluster: up\nuse_original_src_ip: true").err().unwrap_or_default();
        assert!(e.starts_with("use_original_src_ip:"), "{e}");
        let list = "stat_prefix: s\nmatcher: { matcher_list: { matchers: [{ predicate: { single_predicate: { input: { name: i, typed_config: { '@type': type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.SourceIPInput } }, value_match: { exact: x } } }, on_match: { action: { name: r, typed_config: { '@type': type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.Route, cluster: up } } } }] } }";
        let e = compile(list).err().unwrap_or_default();
        assert!(e.starts_with("matcher.matcher_list:"), "{e}");
    }

    #[test]
    fn source_ip_hashes_the_peer_address_and_a_key_is_fixed() {
        let p = compile("stat_prefix: s\ncluster: up\nhash_policies: [{ source_ip: true }]").expect("compiles");
        let a: SocketAddr = ([127, 0, 0, 1], 1000).into();
        let b: SocketAddr = ([127, 0, 0, 1], 2000).into();
        assert_eq!(p.hash_of(a), Some(xxh64(b"127.0.0.1", 0)));
        assert_eq!(p.hash_of(a), p.hash_of(b));
        let p = compile("stat_prefix: s\ncluster: up\nhash_policies: [{ key: k }]").expect("compiles");
        assert_eq!(p.hash_of(a), Some(xxh64(b"k", 0)));
    }
}
