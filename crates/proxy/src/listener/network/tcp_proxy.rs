//! `envoy.filters.network.tcp_proxy`: a connection's bytes to one upstream
//! host of a cluster and back, with half-close, an idle timeout, several
//! connect attempts, access logs and Envoy's `tcp.<stat_prefix>.*` stats.

use crate::access_log::AccessLogger;
use crate::http::context::CompileContext;
use crate::io::Io;
use crate::stats::{Counter, Gauge, Store};
use crate::upstream::cluster::ClusterMap;
use arc_swap::ArcSwap;
use legate_api::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy::ClusterSpecifier, TcpProxy};
use legate_api::pb::google::protobuf::Any;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

pub const TYPE: &str = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";

/// Envoy's default idle timeout for tcp_proxy: one hour.
const DEFAULT_IDLE: Duration = Duration::from_secs(3600);

/// Envoy's `tcp.<stat_prefix>.*`. The buffered and flush stats are created
/// (and stay 0) so that the stat list reads as Envoy's: Legate does not
/// buffer beyond one read, nor flush after a close.
pub struct TcpStats {
    pub downstream_cx_total: Arc<Counter>,
    pub downstream_cx_no_route: Arc<Counter>,
    pub downstream_cx_rx_bytes_total: Arc<Counter>,
    pub downstream_cx_tx_bytes_total: Arc<Counter>,
    pub downstream_cx_tx_bytes_buffered: Arc<Gauge>,
    pub idle_timeout: Arc<Counter>,
    pub upstream_flush_total: Arc<Counter>,
    pub upstream_flush_active: Arc<Gauge>,
}

pub struct TcpProxyConfig {
    /// (cluster, weight); one entry with `cluster`.
    clusters: Vec<(String, u64)>,
    total_weight: u64,
    idle_timeout: Option<Duration>,
    max_connect_attempts: u32,
    access_logs: Vec<AccessLogger>,
    pub stats: TcpStats,
    cluster_map: Arc<ArcSwap<ClusterMap>>,
}

impl TcpProxyConfig {
    /// The terminal filter from its `typed_config`; `path` names it in errors.
    pub fn compile_filter(any: &Any, ctx: &CompileContext, path: &str) -> Result<Self, String> {
        let t = legate_api::any::unpack(any)?;
        Self::compile(&t, &ctx.store, ctx.clusters.clone()).map_err(|e| format!("{path}.{e}"))
    }

    pub fn compile(t: &TcpProxy, store: &Store, cluster_map: Arc<ArcSwap<ClusterMap>>) -> Result<Self, String> {
        let clusters = match &t.cluster_specifier {
            Some(ClusterSpecifier::Cluster(c)) => vec![(c.clone(), 1)],
            Some(ClusterSpecifier::WeightedClusters(w)) => {
                w.clusters.iter().map(|c| (c.name.clone(), u64::from(c.weight))).collect()
            }
            None => return Err("cluster_specifier: cluster or weighted_clusters is required".into()),
        };
        let total_weight = clusters.iter().map(|(_, w)| w).sum();
        if total_weight == 0 {
            return Err("weighted_clusters: the weights add up to 0".into());
        }
        let idle_timeout = match &t.idle_timeout {
            None => Some(DEFAULT_IDLE),
            Some(d) if d.seconds == 0 && d.nanos == 0 => None,
            Some(d) => Some(legate_api::duration::from_pb(d)),
        };
        let access_logs = t
            .access_log
            .iter()
            .enumerate()
            .map(|(i, a)| AccessLogger::compile(a).map_err(|e| format!("access_log[{i}].{e}")))
            .collect::<Result<_, _>>()?;
        let p = format!("tcp.{}.", t.stat_prefix);
        let c = |n: &str| store.counter(&format!("{p}{n}"));
        let g = |n: &str| store.gauge(&format!("{p}{n}"));
        Ok(Self {
            clusters,
            total_weight,
            idle_timeout,
            max_connect_attempts: t.max_connect_attempts.map_or(1, |v| v.value.max(1)),
            access_logs,
            stats: TcpStats {
                downstream_cx_total: c("downstream_cx_total"),
                downstream_cx_no_route: c("downstream_cx_no_route"),
                downstream_cx_rx_bytes_total: c("downstream_cx_rx_bytes_total"),
                downstream_cx_tx_bytes_total: c("downstream_cx_tx_bytes_total"),
                downstream_cx_tx_bytes_buffered: g("downstream_cx_tx_bytes_buffered"),
                idle_timeout: c("idle_timeout"),
                upstream_flush_total: c("upstream_flush_total"),
                upstream_flush_active: g("upstream_flush_active"),
            },
            cluster_map,
        })
    }

    fn pick_cluster(&self) -> &str {
        if self.clusters.len() == 1 {
            return &self.clusters[0].0;
        }
        let mut draw = rand::random_range(0..self.total_weight);
        for (name, w) in &self.clusters {
            if draw < *w {
                return name;
            }
            draw -= w;
        }
        &self.clusters[0].0
    }

    /// Proxies one downstream connection until both directions are done,
    /// the idle timeout passes, or no upstream can be reached.
    pub async fn serve<D: Io>(&self, down: D, remote: SocketAddr, local: SocketAddr) {
        let start = Instant::now();
        let start_time = SystemTime::now();
        self.stats.downstream_cx_total.inc();
        let name = self.pick_cluster().to_string();
        let cluster = self.cluster_map.load().get(&name).cloned();
        // An unknown cluster is logged as `-`, as Envoy logs it.
        let logged_cluster = if cluster.is_some() { name.as_str() } else { "" };
        let mut log = LogFacts { flags: "", host: None, rx: 0, tx: 0 };
        match cluster {
            None => {
                self.stats.downstream_cx_no_route.inc();
                log.flags = "NC";
            }
            Some(cluster) => {
                let mut up = None;
                for attempt in 1..=self.max_connect_attempts {
                    let Some(host) = cluster.pick() else {
                        cluster.stats.upstream_cx_none_healthy.inc();
                        log.flags = "UH";
                        break;
                    };
                    log.host = Some(host.clone());
                    match crate::upstream::connection::connect(&cluster, &host).await {
                        Ok(conn) => {
                            up = Some((conn, host));
                            break;
                        }
                        Err(_) => {
                            log.flags = "UF";
                            // Envoy marks running out of attempts (even of one)
                            // as a retry limit exceeded.
                            if attempt == self.max_connect_attempts {
                                log.flags = "UF,URX";
                                cluster.stats.named("upstream_cx_connect_attempts_exceeded").inc();
                            }
                        }
                    }
                }
                if let Some(((up, slot), host)) = up {
                    log.flags = "";
                    let (rx, tx, idle) = pipe(down, up, self.idle_timeout).await;
                    if idle {
                        self.stats.idle_timeout.inc();
                    }
                    (log.rx, log.tx) = (rx, tx);
                    self.stats.downstream_cx_rx_bytes_total.add(rx);
                    self.stats.downstream_cx_tx_bytes_total.add(tx);
                    cluster.stats.upstream_cx_active.dec();
                    cluster.stats.upstream_cx_destroy.inc();
                    host.cx_active.fetch_sub(1, Relaxed);
                    drop(slot);
                }
            }
        }
        if !self.access_logs.is_empty() {
            let ctx = crate::common::format::Context {
                response_flags: log.flags,
                bytes_received: log.rx,
                bytes_sent: log.tx,
                duration: Some(start.elapsed()),
                start_time: Some(start_time),
                upstream_host: log.host.as_ref().map(|h| h.addr),
                upstream_hostname: log.host.as_ref().map_or("", |h| h.hostname.as_str()),
                upstream_pipe: log.host.as_ref().and_then(|h| h.pipe.as_deref()).map_or("", |p| p.as_str()),
                upstream_metadata: log.host.as_ref().and_then(|h| h.metadata.as_deref()),
                upstream_cluster: logged_cluster,
                downstream_remote: Some(remote),
                downstream_local: Some(local),
                ..Default::default()
            };
            for l in &self.access_logs {
                l.log(&ctx);
            }
        }
    }
}

struct LogFacts {
    flags: &'static str,
    host: Option<Arc<crate::upstream::host::Host>>,
    rx: u64,
    tx: u64,
}

/// Copies both ways. A side that ends its writes (FIN) is half-closed on the
/// other side, as Envoy's tcp_proxy does. Returns (bytes from downstream,
/// bytes to downstream, whether the idle timeout ended it). Cost: two
/// buffers per connection, 16 KiB each growing to 64 KiB under bulk
/// transfer; activity is one relaxed store per read.
async fn pipe<D: Io, U: Io>(down: D, up: U, idle: Option<Duration>) -> (u64, u64, bool) {
    let p = crate::io::pipe::pipe_ends(down, up, idle).await;
    (p.rx, p.tx, p.timed_out)
}
