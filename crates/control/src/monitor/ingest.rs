//! A report into the series: differences per stat (`rates`), summed per
//! service and for the proxy, added to every tier and to the running totals;
//! gauges kept as the latest per proxy.

use super::buckets::Buckets;
use super::rates::Baseline;
use super::retention::Retention;
use super::series::{Agg, Tier};
use super::stat::{self, CounterStat, GaugeStat, Target};
use super::Report;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// The latest gauges of one service (or of the proxy itself) on one proxy.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Gauges {
    pub active_rq: f64,
    pub active_cx: f64,
    pub ejected: f64,
    pub healthy: f64,
    pub membership: f64,
}

impl Gauges {
    fn set(&mut self, g: GaugeStat, v: f64) {
        match g {
            GaugeStat::ActiveRq => self.active_rq += v,
            GaugeStat::ActiveCx => self.active_cx += v,
            GaugeStat::Ejected => self.ejected += v,
            GaugeStat::Healthy => self.healthy += v,
            GaugeStat::Membership => self.membership += v,
        }
    }
}

/// What the last report of a proxy said, beside its differences; services
/// by interned name here, by plain name in a shard (`LatestData`).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Latest<Name: Ord = Arc<str>> {
    pub node_cluster: String,
    pub at_ms: u64,
    pub source: String,
    pub resets: u64,
    pub proxy: Gauges,
    pub services: BTreeMap<Name, Gauges>,
}

impl<Name: Ord> Latest<Name> {
    /// The same report with each service's name turned by `rename`.
    pub fn renamed<To: Ord>(&self, mut rename: impl FnMut(&Name) -> To) -> Latest<To> {
        Latest {
            node_cluster: self.node_cluster.clone(),
            at_ms: self.at_ms,
            source: self.source.clone(),
            resets: self.resets,
            proxy: self.proxy,
            services: self.services.iter().map(|(s, g)| (rename(s), *g)).collect(),
        }
    }
}

pub struct State {
    pub(super) baselines: HashMap<String, Baseline>,
    pub(super) latest: HashMap<Arc<str>, Latest>,
    /// Services at the fine and the coarse resolution; proxies at the fine one.
    pub(super) fine: Tier,
    pub(super) coarse: Tier,
    pub(super) proxies: Tier,
    /// Services at one second for a few minutes (short windows).
    pub(super) recent: Tier,
    /// Everything since this control plane started (`/metrics` counters).
    pub(super) totals: BTreeMap<Arc<str>, Agg>,
    pub(super) proxy_totals: BTreeMap<Arc<str>, Agg>,
    names: HashSet<Arc<str>>,
    bounds: Vec<Arc<[f64]>>,
    /// When proxies gone quiet were last forgotten.
    forgotten_ms: u64,
    /// When this monitor started: a proxy that started later is counted from zero.
    started_ms: u64,
    /// Per-proxy sums of every report taken in since a mark was set (a
    /// staged rollout's window starts at its staging), by the mark's id.
    pub(super) marks: BTreeMap<u64, BTreeMap<Arc<str>, Agg>>,
}

/// One service's (or the proxy's) differences in one report.
#[derive(Default)]
struct Pending {
    completed: Option<u64>,
    total: u64,
    agg: Agg,
}

impl Pending {
    fn count(&mut self, stat: CounterStat, v: u64) {
        let a = &mut self.agg;
        match stat {
            CounterStat::Completed => self.completed = Some(self.completed.unwrap_or(0) + v),
            CounterStat::Total => self.total += v,
            CounterStat::Rq2xx => a.rq_2xx += v,
            CounterStat::Rq4xx => a.rq_4xx += v,
            CounterStat::Rq5xx => {
                a.rq_5xx += v;
                a.errors += v;
            }
            CounterStat::Retry => a.retries += v,
            CounterStat::Timeout => a.timeouts += v,
        }
    }

    /// `requests` counts completed requests (what the response classes
    /// count); `*_rq_total` only for a proxy that does not report them.
    fn finish(mut self) -> Agg {
        self.agg.requests = self.completed.unwrap_or(self.total);
        self.agg
    }
}

/// Whether the reporting proxy started after `started_ms`, by its
/// `server.uptime` gauge. The gauge is in whole seconds, and Envoy's is the
/// difference of two wall-clock seconds, so it may be up to a second more
/// than the time since the proxy started: a second of slack, so a proxy
/// started just after us is never taken for one running before us (whose
/// first report only sets the baseline, and would lose what it counted).
/// One that started up to a second before us may count as after, which
/// counts at most that second's traffic.
fn started_after(r: &Report, started_ms: u64) -> bool {
    let uptime = r.gauges.iter().find(|(n, _)| n == "server.uptime").map(|(_, v)| *v);
    uptime.is_some_and(|s| s >= 0.0 && (r.at_ms + UPTIME_SLACK_MS).saturating_sub((s * 1000.0) as u64) >= started_ms)
}

/// How much more than the true time since start an uptime gauge may say.
const UPTIME_SLACK_MS: u64 = 1_000;

impl State {
    pub fn new(r: Retention) -> Self {
        let ms = |d: std::time::Duration| d.as_millis() as u64;
        Self::with_tiers(
            Tier::new(ms(r.fine.0), ms(r.fine.1)),
            Tier::new(ms(r.coarse.0), ms(r.coarse.1)),
            Tier::new(ms(r.fine.0), ms(r.proxies)),
            Tier::new(ms(r.recent.0), ms(r.recent.1)),
        )
    }

    pub(super) fn with_tiers(fine: Tier, coarse: Tier, proxies: Tier, recent: Tier) -> Self {
        Self {
            started_ms: crate::clock::unix_ms(),
            baselines: HashMap::new(),
            latest: HashMap::new(),
            fine,
            coarse,
            proxies,
            recent,
            totals: BTreeMap::new(),
            proxy_totals: BTreeMap::new(),
            names: HashSet::new(),
            bounds: Vec::new(),
            forgotten_ms: 0,
            marks: BTreeMap::new(),
        }
    }

    /// One shared copy of each name and each set of bucket bounds.
    pub(super) fn intern(&mut self, name: &str) -> Arc<str> {
        if let Some(n) = self.names.get(name) {
            return n.clone();
        }
        let n: Arc<str> = Arc::from(name);
        self.names.insert(n.clone());
        n
    }

    pub(super) fn shared_bounds(&mut self, mut agg: Agg) -> Agg {
        if agg.latency.counts.is_empty() {
            return agg;
        }
        match self.bounds.iter().find(|b| **b == agg.latency.bounds) {
            Some(b) => agg.latency.bounds = b.clone(),
            None if self.bounds.len() < 16 => self.bounds.push(agg.latency.bounds.clone()),
            None => {}
        }
        agg.latency = agg.latency.trimmed();
        agg
    }

    pub fn ingest(&mut self, r: &Report) {
        let base = self.baselines.entry(r.node.clone()).or_default();
        if base.first() && started_after(r, self.started_ms) {
            base.count_from_zero();
        }
        // Services by cluster name; routes by their key (`stat::route_key`).
        let mut services: BTreeMap<std::borrow::Cow<'_, str>, Pending> = BTreeMap::new();
        let mut proxy = Pending::default();
        let mut reset = false;
        for (name, v) in &r.counters {
            let Some((target, s)) = stat::counter(name) else { continue };
            let d = base.counter(name, *v);
            reset |= d.reset;
            match target {
                Target::Service(svc) => services.entry(svc.into()).or_default().count(s, d.value),
                Target::Route(vh, vc) => services.entry(stat::route_key(vh, vc).into()).or_default().count(s, d.value),
                Target::Proxy => proxy.count(s, d.value),
            }
        }
        for (name, h) in &r.histograms {
            let Some(target) = stat::histogram(name) else { continue };
            let d = if r.histograms_per_interval {
                Buckets::from_cumulative(h)
            } else {
                let (d, rs) = base.histogram(name, h);
                reset |= rs;
                let Some(d) = d else { continue };
                d
            };
            match target {
                Target::Service(svc) => services.entry(svc.into()).or_default().agg.latency.merge(&d),
                Target::Route(vh, vc) => {
                    services.entry(stat::route_key(vh, vc).into()).or_default().agg.latency.merge(&d)
                }
                Target::Proxy => proxy.agg.latency.merge(&d),
            }
        }
        base.seen();
        let node = self.intern(&r.node);
        self.set_latest(r, &node, reset);
        for (svc, p) in services {
            let agg = p.finish();
            if agg.is_empty() {
                continue;
            }
            let (name, agg) = (self.intern(&svc), self.shared_bounds(agg));
            self.recent.add(r.at_ms, &name, &agg);
            self.fine.add(r.at_ms, &name, &agg);
            self.coarse.add(r.at_ms, &name, &agg);
            self.totals.entry(name).or_default().add(&agg);
        }
        let agg = proxy.finish();
        if !agg.is_empty() {
            let agg = self.shared_bounds(agg);
            self.proxies.add(r.at_ms, &node, &agg);
            self.proxy_totals.entry(node.clone()).or_default().add(&agg);
            for by in self.marks.values_mut() {
                by.entry(node.clone()).or_default().add(&agg);
            }
        }
        let now = crate::clock::unix_ms().max(r.at_ms);
        self.recent.prune(now);
        self.fine.prune(now);
        self.coarse.prune(now);
        self.proxies.prune(now);
        self.forget_quiet(now);
    }

    /// Once a minute: proxies silent for longer than their series are kept
    /// are forgotten (their baseline, last gauges and names), so a fleet
    /// whose node ids change does not grow the monitor for ever.
    fn forget_quiet(&mut self, now_ms: u64) {
        if now_ms < self.forgotten_ms + 60_000 {
            return;
        }
        self.forgotten_ms = now_ms;
        let since = now_ms.saturating_sub(self.proxies.retention_ms);
        let quiet: Vec<Arc<str>> =
            self.latest.iter().filter(|(_, l)| l.at_ms < since).map(|(n, _)| n.clone()).collect();
        for node in quiet {
            self.latest.remove(&node);
            self.baselines.remove(node.as_ref());
            self.proxy_totals.remove(&node);
        }
        // Names no series, total or proxy still holds.
        let held = |n: &Arc<str>| Arc::strong_count(n) > 1;
        self.names.retain(held);
    }

    fn set_latest(&mut self, r: &Report, node: &Arc<str>, reset: bool) {
        let mut services: BTreeMap<Arc<str>, Gauges> = BTreeMap::new();
        let mut proxy = Gauges::default();
        for (name, v) in &r.gauges {
            match stat::gauge(name) {
                Some((Target::Service(svc), g)) => {
                    let svc = self.intern(svc);
                    services.entry(svc).or_default().set(g, *v);
                }
                Some((Target::Proxy, g)) => proxy.set(g, *v),
                Some((Target::Route(..), _)) | None => {}
            }
        }
        let latest = self.latest.entry(node.clone()).or_default();
        latest.node_cluster.clone_from(&r.node_cluster);
        latest.at_ms = r.at_ms;
        latest.source.clone_from(&r.source);
        latest.resets += u64::from(reset);
        latest.proxy = proxy;
        latest.services = services;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxies_gone_quiet_are_forgotten() {
        let now = crate::clock::unix_ms();
        let mut st = State::new(Retention::default());
        let report = |node: &str, at_ms| Report {
            node: node.into(),
            at_ms,
            counters: vec![("http.ingress.downstream_rq_completed".into(), 1)],
            ..Default::default()
        };
        st.ingest(&report("old", now - 2 * 3_600_000));
        st.forgotten_ms = 0;
        st.ingest(&report("new", now));
        assert_eq!(st.baselines.len(), 1);
        assert!(st.latest.keys().all(|n| n.as_ref() == "new"));
        assert!(!st.names.iter().any(|n| n.as_ref() == "old"));
    }

    /// A proxy that started after the control plane is counted from zero;
    /// one that was already running (or says nothing of its uptime) sets
    /// the baseline with its first report.
    #[test]
    fn a_proxy_started_after_us_counts_from_zero() {
        let mut st = State::new(Retention::default());
        st.started_ms = 1_000_000;
        let report = |node: &str, uptime_s: Option<f64>| Report {
            node: node.into(),
            at_ms: 1_030_000,
            counters: vec![("cluster.web.upstream_rq_completed".into(), 7)],
            gauges: uptime_s.map(|s| ("server.uptime".to_string(), s)).into_iter().collect(),
            ..Default::default()
        };
        let mut deltas = |r: &Report| {
            let base = st.baselines.entry(r.node.clone()).or_default();
            if base.first() && started_after(r, 1_000_000) {
                base.count_from_zero();
            }
            base.counter("cluster.web.upstream_rq_completed", 7).value
        };
        assert_eq!(deltas(&report("young", Some(10.0))), 7, "started 20 s after us");
        // We started at 1000.5 s, the proxy at 1000.9 s; at 1030.1 s Envoy's
        // uptime (whole wall-clock seconds subtracted: 1030 - 1000) says 30,
        // more than the 29.2 s it has run.
        let just_after = Report { at_ms: 1_030_100, ..report("just after", Some(30.0)) };
        assert!(started_after(&just_after, 1_000_500), "started just after us");
        assert_eq!(deltas(&report("old", Some(100.0))), 0, "running before us: baseline");
        assert_eq!(deltas(&report("silent", None)), 0, "no uptime: baseline");
    }
}
