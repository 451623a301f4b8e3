//! A virtual host's `virtual_clusters`: requests picked out by header
//! matchers (the first that matches wins; a request matching none counts in
//! the catch-all `other`) and counted in `vhost.<vh>.vcluster.<vc>.*`, as
//! Envoy 1.40 counts them. Only a virtual host that defines virtual clusters
//! has any: the router looks them up once per forwarded request and charges
//! them where it charges the cluster. A route's `stat_prefix` counts the
//! same stats under `vhost.<vh>.route.<stat_prefix>.*`; a request may be
//! charged to both ([`Charged`]).

use crate::common::matcher::{HeaderMatch, Pseudo};
use crate::stats::{Counter, Histogram, Store};
use legate_api::pb::envoy::config::route::v3 as rpb;
use std::sync::{Arc, OnceLock};

/// The virtual clusters of one virtual host, and its `other`.
pub struct VirtualClusters {
    list: Vec<(Vec<HeaderMatch>, Arc<VirtualClusterStats>)>,
    other: Arc<VirtualClusterStats>,
}

impl VirtualClusters {
    /// `None` for a virtual host without `virtual_clusters` (Envoy then
    /// has no `other` either).
    pub fn compile(vh: &rpb::VirtualHost, store: &Arc<Store>) -> Result<Option<Self>, String> {
        if vh.virtual_clusters.is_empty() {
            return Ok(None);
        }
        let mut list = Vec::with_capacity(vh.virtual_clusters.len());
        for (i, vc) in vh.virtual_clusters.iter().enumerate() {
            if vc.name.is_empty() {
                return Err(format!("virtual_clusters[{i}].name: must not be empty"));
            }
            let headers = vc
                .headers
                .iter()
                .enumerate()
                .map(|(j, h)| HeaderMatch::new(h).map_err(|e| format!("virtual_clusters[{i}].headers[{j}]: {e}")))
                .collect::<Result<_, _>>()?;
            list.push((headers, VirtualClusterStats::new(store, format!("vhost.{}.vcluster.{}.", vh.name, vc.name))));
        }
        let other = VirtualClusterStats::new(store, format!("vhost.{}.vcluster.other.", vh.name));
        Ok(Some(Self { list, other }))
    }

    /// The first virtual cluster whose header matchers all match, else `other`.
    pub fn pick(&self, headers: &http::HeaderMap, pseudo: &Pseudo<'_>) -> &Arc<VirtualClusterStats> {
        self.list.iter().find(|(m, _)| m.iter().all(|h| h.matches(headers, pseudo))).map_or(&self.other, |(_, s)| s)
    }
}

/// The stats a request is charged to beside its cluster's: its virtual
/// cluster's and its route's (`stat_prefix`), each when there is one.
#[derive(Clone, Default)]
pub struct Charged([Option<Arc<VirtualClusterStats>>; 2]);

impl Charged {
    pub fn set_virtual_cluster(&mut self, s: Arc<VirtualClusterStats>) {
        self.0[0] = Some(s);
    }

    pub fn set_route(&mut self, s: Arc<VirtualClusterStats>) {
        self.0[1] = Some(s);
    }

    pub fn each(&self) -> impl Iterator<Item = &Arc<VirtualClusterStats>> {
        self.0.iter().flatten()
    }

    /// Their `upstream_rq_total` counters (for the pool to count a request
    /// put on a connection).
    pub fn totals(&self) -> [Option<Arc<Counter>>; 2] {
        self.0.clone().map(|s| s.map(|s| s.upstream_rq_total.clone()))
    }
}

/// `vhost.<vh>.vcluster.<vc>.*` (or `vhost.<vh>.route.<stat_prefix>.*`):
/// the counters Envoy creates with the route table, and the per-status
/// counters and the time histogram it creates on first use.
pub struct VirtualClusterStats {
    pub upstream_rq_total: Arc<Counter>,
    pub upstream_rq_timeout: Arc<Counter>,
    pub upstream_rq_retry: Arc<Counter>,
    pub upstream_rq_retry_success: Arc<Counter>,
    pub upstream_rq_retry_limit_exceeded: Arc<Counter>,
    pub upstream_rq_retry_overflow: Arc<Counter>,
    completed: OnceLock<Arc<Counter>>,
    class: [OnceLock<Arc<Counter>>; 5],
    /// Codes 100..599 by `code - 100`.
    code: Box<[OnceLock<Arc<Counter>>]>,
    time: OnceLock<Arc<Histogram>>,
    prefix: String,
    store: Arc<Store>,
}

impl VirtualClusterStats {
    /// The stats under `prefix` (ending in a dot).
    pub fn new(store: &Arc<Store>, prefix: String) -> Arc<Self> {
        let c = |n: &str| store.counter(&format!("{prefix}{n}"));
        Arc::new(Self {
            upstream_rq_total: c("upstream_rq_total"),
            upstream_rq_timeout: c("upstream_rq_timeout"),
            upstream_rq_retry: c("upstream_rq_retry"),
            upstream_rq_retry_success: c("upstream_rq_retry_success"),
            upstream_rq_retry_limit_exceeded: c("upstream_rq_retry_limit_exceeded"),
            upstream_rq_retry_overflow: c("upstream_rq_retry_overflow"),
            completed: OnceLock::new(),
            class: Default::default(),
            code: (100..600).map(|_| OnceLock::new()).collect(),
            time: OnceLock::new(),
            prefix,
            store: store.clone(),
        })
    }

    /// The status the downstream gets from the router (an upstream's, or
    /// the router's own for a failed or timed-out upstream request):
    /// `upstream_rq_<code>`, `upstream_rq_<class>xx`, `upstream_rq_completed`.
    pub fn record_status(&self, status: u16) {
        let class = (status / 100) as usize;
        if let Some(slot) = class.checked_sub(1).and_then(|i| self.class.get(i)) {
            slot.get_or_init(|| self.store.counter(&format!("{}upstream_rq_{class}xx", self.prefix))).inc();
        }
        if let Some(slot) = (status as usize).checked_sub(100).and_then(|i| self.code.get(i)) {
            slot.get_or_init(|| self.store.counter(&format!("{}upstream_rq_{status}", self.prefix))).inc();
        }
        self.completed.get_or_init(|| self.store.counter(&format!("{}upstream_rq_completed", self.prefix))).inc();
    }

    /// `upstream_rq_time`, for an upstream response that ended.
    pub fn record_time(&self, ms: f64) {
        self.time.get_or_init(|| self.store.histogram(&format!("{}upstream_rq_time", self.prefix))).record(ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vhost(yaml: &str) -> rpb::VirtualHost {
        let v = legate_api::load::parse_text(yaml).unwrap();
        legate_api::load::decode_typed::<rpb::VirtualHost>(v).unwrap().0
    }

    #[test]
    fn first_match_wins_and_the_rest_is_other() {
        let store = Arc::new(Store::default());
        let vh = vhost(
            r#"
name: shop
domains: ["*"]
virtual_clusters:
- { name: ok, headers: [{ name: ":path", string_match: { prefix: "/ok" } }] }
- { name: dup, headers: [{ name: ":path", string_match: { prefix: "/o" } }] }
"#,
        );
        let vcs = VirtualClusters::compile(&vh, &store).unwrap().unwrap();
        let h = http::HeaderMap::new();
        let pick = |path: &str| {
            let p = Pseudo { method: "GET", path, authority: "a", scheme: "http" };
            vcs.pick(&h, &p).prefix.clone()
        };
        assert_eq!(pick("/ok/1"), "vhost.shop.vcluster.ok.");
        assert_eq!(pick("/other"), "vhost.shop.vcluster.dup.");
        assert_eq!(pick("/x"), "vhost.shop.vcluster.other.");
        let names: Vec<String> = store.all().into_iter().map(|(n, _)| n).collect();
        assert!(names.contains(&"vhost.shop.vcluster.other.upstream_rq_total".to_string()), "{names:?}");
        assert!(!names.iter().any(|n| n.ends_with("upstream_rq_completed")), "created on first use: {names:?}");
        let none = vhost("{ name: plain, domains: [\"*\"] }");
        assert!(VirtualClusters::compile(&none, &store).unwrap().is_none());
    }
}
