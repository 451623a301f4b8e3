//! A cluster (`Cluster`): what it is compiled from and what it is made of —
//! its hosts (`membership`), balancer (`lb`), connection pools, circuit
//! breakers, stats, TLS, DNS settings, health checker and outlier detector —
//! and the pick a request makes. The cluster manager's map of them by name.

use crate::stats::Store;
use crate::upstream::cluster_stats::ClusterStats;
use crate::upstream::dns::Dns;
use crate::upstream::endpoints::{eds_hosts, endpoints, Endpoint, HostEntry};
use crate::upstream::host::Host;
use crate::upstream::host_set::LbParams;
use crate::upstream::lb::balancer::Balancer;
use crate::upstream::membership::Membership;
use legate_api::pb::envoy::config::cluster::v3::{cluster, Cluster as PbCluster};
use legate_api::pb::envoy::config::core::v3::Locality;
use legate_api::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Where a cluster's hosts come from (`type`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Discovery {
    Static,
    StrictDns,
    LogicalDns,
    /// Endpoints come from EDS (over ADS) under `eds_service_name`.
    Eds,
    /// `envoy.clusters.dynamic_forward_proxy`: a host per request name,
    /// from the cluster's DNS cache.
    DynamicForwardProxy,
}

impl Discovery {
    fn compile(c: &PbCluster) -> Result<Self, String> {
        Ok(match &c.cluster_discovery_type {
            None => Self::Static,
            Some(cluster::ClusterDiscoveryType::Type(t)) => match cluster::DiscoveryType::try_from(*t) {
                Ok(cluster::DiscoveryType::Static) => Self::Static,
                Ok(cluster::DiscoveryType::StrictDns) => Self::StrictDns,
                Ok(cluster::DiscoveryType::LogicalDns) => Self::LogicalDns,
                Ok(cluster::DiscoveryType::Eds) => Self::Eds,
                _ => return Err("type: only STATIC, STRICT_DNS and LOGICAL_DNS clusters are supported".into()),
            },
            Some(cluster::ClusterDiscoveryType::ClusterType(t)) => {
                if crate::upstream::dfp::cluster::is_dfp(t) {
                    Self::DynamicForwardProxy
                } else {
                    return Err(format!(
                        "cluster_type: the custom cluster type {} is not supported (only envoy.clusters.dynamic_forward_proxy)",
                        t.name
                    ));
                }
            }
        })
    }

    /// STRICT_DNS or LOGICAL_DNS: hosts come from resolving the load assignment.
    pub fn uses_dns(self) -> bool {
        matches!(self, Self::StrictDns | Self::LogicalDns)
    }
}

/// An upstream cluster. Shared (`Arc`) by the workers, the main thread's
/// tasks and every connection it has open.
pub struct Cluster {
    /// Active health checking, when configured.
    pub health_check: Option<crate::upstream::health::HealthChecker>,
    /// Outlier detection, when configured.
    pub outlier: Option<crate::upstream::outlier::Outlier>,
    pub name: String,
    pub discovery: Discovery,
    pub hosts: Membership,
    pub connect_timeout: Duration,
    pub http2: bool,
    /// `http2_protocol_options` for its HTTP/2 connections.
    pub h2: crate::upstream::protocol::H2Options,
    /// The cluster's `transport_socket` (TLS), when it has one.
    pub tls: Option<crate::tls::UpstreamTls>,
    pub stats: ClusterStats,
    pub breakers: crate::upstream::breakers::CircuitBreakers,
    pub pools: crate::upstream::worker_pools::Pools,
    /// `common_http_protocol_options` for upstream connections.
    pub conn_options: crate::upstream::protocol::ConnOptions,
    /// `per_connection_buffer_limit_bytes`: the most an upstream connection
    /// buffers in each direction (HTTP/1.1: hyper's read and write buffers,
    /// at least its 8 KiB floor; HTTP/2: data queued to send).
    pub buffer_limit: Option<usize>,
    /// The load-balancing policy and each worker's state.
    lb: Balancer,
    /// For DNS clusters: what to resolve, and how often.
    pub dns: Dns,
    /// A dynamic forward proxy cluster's DNS cache.
    pub dfp: Option<crate::upstream::dfp::cluster::DfpCluster>,
    /// For EDS clusters: the ClusterLoadAssignment name that feeds them.
    pub eds_service_name: String,
    /// The load assignment's localities by index (`Host::locality`), for
    /// load reports.
    pub localities: arc_swap::ArcSwap<Vec<Locality>>,
    pub config: PbCluster,
}

impl Cluster {
    /// Compiles a cluster, in the order its errors are reported: discovery
    /// type, load balancing, protocol, load assignment, EDS config, priority
    /// and locality settings, TLS, health checks.
    pub fn compile(
        c: &PbCluster,
        store: &Arc<Store>,
        workers: usize,
        secrets: &Arc<crate::tls::sds::SecretManager>,
    ) -> Result<Arc<Self>, String> {
        let discovery = Discovery::compile(c)?;
        let dfp = crate::upstream::dfp::cluster::DfpCluster::compile(c, store)?;
        let policy = match &dfp {
            // The cluster picks by the request's name; its balancer is never asked.
            Some(_) => crate::upstream::lb::compile(&PbCluster::default())?,
            None => crate::upstream::lb::compile(c)?,
        };
        let protocol = crate::upstream::protocol::HttpProtocol::compile(c)?;
        let (static_hosts, dns_targets) = initial_hosts(c, discovery)?;
        let eds_service_name = eds_service_name(c, discovery)?;
        let lb_params = LbParams::compile(c, policy.hashing(), policy.slow_start())?;
        let tls = c
            .transport_socket
            .as_ref()
            .map(|ts| crate::tls::upstream(ts, protocol.http2, secrets))
            .transpose()
            .map_err(|e| e.to_string())?;
        let stats = ClusterStats::new(store, &c.name, tls.is_some());
        let health_check = crate::upstream::health::HealthChecker::compile(&c.health_checks, store, &c.name)?;
        let hosts = Membership::new(static_hosts, lb_params, health_check.is_some(), &stats);
        let outlier =
            c.outlier_detection.as_ref().map(|o| crate::upstream::outlier::Outlier::compile(o, store, &c.name));
        let lb = Balancer::new(policy, workers, stats.lb_healthy_panic.clone());
        Ok(Arc::new(Self {
            health_check,
            outlier,
            name: c.name.clone(),
            discovery,
            hosts,
            connect_timeout: legate_api::duration::or(c.connect_timeout.as_ref(), Duration::from_secs(5)),
            http2: protocol.http2,
            h2: protocol.h2,
            tls,
            breakers: crate::upstream::breakers::CircuitBreakers::compile(c.circuit_breakers.as_ref(), store, &c.name),
            stats,
            pools: crate::upstream::worker_pools::Pools::new(workers),
            conn_options: protocol.conn_options,
            buffer_limit: c.per_connection_buffer_limit_bytes.map(|v| v.value as usize),
            lb,
            dns: Dns::compile(c, dns_targets, discovery == Discovery::LogicalDns)?,
            dfp,
            eds_service_name,
            localities: arc_swap::ArcSwap::from_pointee(c.load_assignment.as_ref().map(localities).unwrap_or_default()),
            config: c.clone(),
        }))
    }

    /// Replaces the host set (from DNS or EDS), keeping the existing `Host`
    /// (and its counters) of every address that stays.
    pub fn update_hosts(&self, new_hosts: Vec<HostEntry>) {
        self.hosts.update(new_hosts);
    }

    /// Records the localities of the load assignment EDS sent.
    pub fn set_localities(&self, la: &ClusterLoadAssignment) {
        self.localities.store(Arc::new(localities(la)));
    }

    /// Picks a host for a request, or `None` when the cluster has none.
    /// Cost: an `ArcSwap` load (no lock), a draw for the priority level when
    /// load is split across levels, plus the policy's own work.
    pub fn pick(&self) -> Option<Arc<Host>> {
        self.pick_hashed(None)
    }

    /// Picks a host; hashing clusters look `hash` up in their ring or table
    /// (a request without a hash gets a random one, as in Envoy).
    /// Whether the balancer picks hosts by the request's hash (then a cookie
    /// hash policy with a `ttl` makes its cookie, as Envoy's does).
    pub fn hashes(&self) -> bool {
        self.lb.hashes()
    }

    /// When the balancer learns from response times, a timer for a request
    /// to `host` that tells it when dropped (response head, failure, or the
    /// request given up), as tower's `PeakEwma` handle does.
    pub fn response_timer(self: &Arc<Self>, host: &Arc<Host>) -> Option<ResponseTimer> {
        self.lb.times_responses().then(|| ResponseTimer {
            cluster: self.clone(),
            host: host.clone(),
            sent: std::time::Instant::now(),
            armed: true,
        })
    }

    pub fn pick_hashed(&self, hash: Option<u64>) -> Option<Arc<Host>> {
        self.lb.pick(&self.hosts.load(), hash)
    }

    /// The router's pick for a request to `authority`: a dynamic forward
    /// proxy cluster's host for that name (None until its DNS cache has
    /// resolved it), any other cluster's balancer's pick.
    pub fn pick_for(&self, authority: &str, hash: Option<u64>) -> Option<Arc<Host>> {
        match &self.dfp {
            Some(d) => d.cache.host_for(authority, d.default_port),
            None => self.pick_hashed(hash),
        }
    }
}

/// A request's response time, told to the balancer when dropped.
pub struct ResponseTimer {
    cluster: Arc<Cluster>,
    host: Arc<Host>,
    sent: std::time::Instant,
    armed: bool,
}

impl ResponseTimer {
    /// The request never reached the host (a circuit breaker refused it):
    /// nothing to learn.
    pub fn cancel(mut self) {
        self.armed = false;
    }
}

impl Drop for ResponseTimer {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let now = std::time::Instant::now();
        self.cluster.lb.observe(&self.host, now.saturating_duration_since(self.sent), now);
    }
}

fn localities(la: &ClusterLoadAssignment) -> Vec<Locality> {
    la.endpoints.iter().map(|l| l.locality.clone().unwrap_or_default()).collect()
}

/// The load assignment's endpoints: the hosts of a STATIC cluster, or what
/// any other cluster resolves through DNS.
fn initial_hosts(c: &PbCluster, discovery: Discovery) -> Result<(Vec<Arc<Host>>, Vec<Endpoint>), String> {
    let Some(la) = &c.load_assignment else { return Ok(Default::default()) };
    if discovery != Discovery::Static {
        let all = endpoints(la)?;
        if all.iter().any(|e| e.4.extra.pipe.is_some()) {
            return Err("load_assignment: a pipe address needs a STATIC cluster".into());
        }
        return Ok((Vec::new(), all));
    }
    let entries = eds_hosts(la)?;
    if !c.health_checks.is_empty() && entries.iter().any(|e| e.4.pipe.is_some()) {
        return Err("health_checks: active health checks of a pipe endpoint are not implemented by Legate".into());
    }
    let hosts = entries
        .into_iter()
        .map(|(addr, name, w, p, extra)| Arc::new(Host::new(addr, name, w, p).with_extra(extra)))
        .collect();
    Ok((hosts, Vec::new()))
}

/// The ClusterLoadAssignment name an EDS cluster follows (its own name by
/// default); empty for other clusters.
fn eds_service_name(c: &PbCluster, discovery: Discovery) -> Result<String, String> {
    match (discovery, &c.eds_cluster_config) {
        (Discovery::Eds, Some(eds)) => {
            if !eds.eds_config.as_ref().is_some_and(crate::common::config_source::is_dynamic) {
                return Err("eds_cluster_config.eds_config: only ads or a gRPC api_config_source is supported".into());
            }
            Ok(if eds.service_name.is_empty() { c.name.clone() } else { eds.service_name.clone() })
        }
        (Discovery::Eds, None) => Err("eds_cluster_config is required for an EDS cluster".into()),
        _ => Ok(String::new()),
    }
}

/// The cluster manager's view: every cluster by name.
pub type ClusterMap = HashMap<String, Arc<Cluster>>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;

    fn cluster(lb: &str, weights: &[u32]) -> Arc<Cluster> {
        cluster_with(lb, weights, "")
    }

    /// A cluster of 127.0.0.N:80 hosts with these weights; `extra` adds
    /// cluster fields (one YAML line each).
    fn cluster_with(lb: &str, weights: &[u32], extra: &str) -> Arc<Cluster> {
        let eps: Vec<String> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                format!(
                    "{{endpoint: {{address: {{socket_address: {{address: 127.0.0.{}, port_value: 80}}}}}}, load_balancing_weight: {w}}}",
                    i + 1
                )
            })
            .collect();
        let yaml = format!(
            "name: c\nconnect_timeout: 1s\nlb_policy: {lb}\n{extra}load_assignment: {{cluster_name: c, endpoints: [{{lb_endpoints: [{}]}}]}}",
            eps.join(",")
        );
        let (pb, _) =
            legate_api::load::decode_typed::<PbCluster>(legate_api::load::parse_text(&yaml).unwrap()).unwrap();
        Cluster::compile(&pb, &Arc::new(Store::default()), 1, &Default::default()).unwrap()
    }

    fn counts(c: &Cluster, n: usize) -> Vec<usize> {
        let mut counts = vec![0; c.hosts.load().all.len()];
        for _ in 0..n {
            let h = c.pick().unwrap();
            counts[(h.addr.ip().to_string().rsplit('.').next().unwrap().parse::<usize>().unwrap()) - 1] += 1;
        }
        counts
    }

    #[test]
    fn round_robin_rotates_evenly() {
        assert_eq!(counts(&cluster("ROUND_ROBIN", &[1, 1, 1]), 300), vec![100, 100, 100]);
    }

    #[test]
    fn weighted_round_robin_follows_weights_exactly() {
        assert_eq!(counts(&cluster("ROUND_ROBIN", &[1, 2, 5]), 800), vec![100, 200, 500]);
    }

    #[test]
    fn random_and_least_request_spread_over_all_hosts() {
        for lb in ["RANDOM", "LEAST_REQUEST"] {
            let c = counts(&cluster(lb, &[1, 1, 1, 1]), 4000);
            for n in c {
                assert!((800..1200).contains(&n), "{lb}: {n} of 4000 not near 1000");
            }
        }
    }

    #[test]
    fn least_request_prefers_the_idle_host() {
        let c = cluster("LEAST_REQUEST", &[1, 1]);
        c.hosts.load().all[0].rq_active.store(100, Relaxed);
        let picks = counts(&c, 1000);
        // P2C picks the busy host only when both choices land on it (1/4).
        assert!(picks[1] > 700, "{picks:?}");
    }

    fn least_request(weights: &[u32], lb_config: &str) -> Arc<Cluster> {
        cluster_with("LEAST_REQUEST", weights, &format!("least_request_lb_config: {lb_config}\n"))
    }

    #[test]
    fn least_request_choice_count_samples_more_hosts() {
        // Four busy hosts and one idle: with 2 samples the idle one wins
        // 1-(4/5)^2 = 36 % of picks; with 8 samples, 1-(4/5)^8 = 83 %.
        let share = |choices: u32| {
            let c = least_request(&[1, 1, 1, 1, 1], &format!("{{choice_count: {choices}}}"));
            for h in &c.hosts.load().all[1..] {
                h.rq_active.store(5, Relaxed);
            }
            counts(&c, 4000)[0] as f64 / 4000.0
        };
        let (two, eight) = (share(2), share(8));
        assert!((0.30..0.42).contains(&two), "choice_count 2: {two}");
        assert!((0.78..0.88).contains(&eight), "choice_count 8: {eight}");
    }

    #[test]
    fn weighted_least_request_divides_weight_by_active_requests() {
        // Idle: the weights (1:3) alone decide.
        let c = least_request(&[1, 3], "{}");
        assert_eq!(counts(&c, 400), vec![100, 300]);
        // The heavy host has 5 active requests: 3/6 against 1/1, so the
        // light one now takes two picks in three.
        let c = least_request(&[1, 3], "{}");
        c.hosts.load().all[1].rq_active.store(5, Relaxed);
        assert_eq!(counts(&c, 300), vec![200, 100]);
        // active_request_bias 0: active requests are ignored.
        let c = least_request(&[1, 3], "{active_request_bias: {default_value: 0, runtime_key: lb.bias}}");
        c.hosts.load().all[1].rq_active.store(5, Relaxed);
        assert_eq!(counts(&c, 400), vec![100, 300]);
    }
}
