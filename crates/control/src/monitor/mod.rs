//! Fleet monitoring: what every proxy reports (metrics-service streams, load
//! reports, admin scrapes) turned into time series, and the figures read
//! from them (`figures`): per service (an upstream cluster), per proxy.
//!
//! Every source converts what it receives into a [`Report`] of Envoy stat
//! names and values; [`Monitor::ingest`] is the one way in. Counters are
//! cumulative as the proxy keeps them; rates come from differences (a counter
//! that goes down is a restart, not a negative rate). Latency percentiles come
//! from histogram buckets merged across proxies.
//!
//! One job per module: `stat` (which Envoy stats count, by name), `rates`
//! (cumulative to differences, restarts), `buckets` (histogram merge and
//! percentiles), `series` (slots, tiers, downsampling), `retention`,
//! `ingest` (a report into the series), `query` (figures and series out),
//! `exposition` (Prometheus text out), `promtext` (Prometheus text in),
//! `persist` (the series on disk), `load` (load reports, kept as they came),
//! `shard` (one replica's raw part of the fleet, merged across replicas).

pub mod buckets;
pub mod exposition;
pub mod figures;
mod ingest;
pub mod load;
pub mod persist;
pub mod promtext;
mod query;
pub mod rates;
pub mod retention;
pub mod series;
pub mod shard;
pub mod stat;
#[cfg(test)]
mod test_report {
    //! A report of one service, `web`, for the monitor's unit tests.
    use super::{Histogram, Report};

    pub fn report(node: &str, at_ms: u64, total: u64, errors: u64, fast: u64) -> Report {
        Report {
            node: node.into(),
            node_cluster: "edge".into(),
            at_ms,
            counters: vec![
                ("cluster.web.upstream_rq_completed".into(), total),
                ("cluster.web.upstream_rq_5xx".into(), errors),
            ],
            histograms: vec![(
                "cluster.web.upstream_rq_time".into(),
                Histogram {
                    bounds: vec![1.0, 10.0, 100.0],
                    cumulative: vec![fast, total, total],
                    count: total,
                    sum: 0.0,
                },
            )],
            source: "stream".into(),
            ..Default::default()
        }
    }
}

pub use figures::{Metric, Point, ProxyFigures, RequestFigures, RouteFigures, ServiceFigures};
pub use retention::Retention;
pub use shard::Shard;

use ingest::State;
use series::Agg;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// One proxy's stats at one moment, as any source delivers them.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The node id the proxy announced.
    pub node: String,
    /// The node's cluster (its service), as announced.
    pub node_cluster: String,
    /// When the proxy took the figures (Unix milliseconds).
    pub at_ms: u64,
    /// Cumulative counters by Envoy stat name (`cluster.checkout.upstream_rq_5xx`).
    pub counters: Vec<(String, u64)>,
    pub gauges: Vec<(String, f64)>,
    pub histograms: Vec<(String, Histogram)>,
    /// How it came: `stream` (metrics service) or `scrape` (admin endpoint).
    pub source: String,
    /// Histograms hold only the samples since the proxy's last report (the
    /// metrics service sends each flush interval's, as Envoy does), not
    /// since its start (a Prometheus scrape).
    pub histograms_per_interval: bool,
}

/// A cumulative histogram as Envoy's metrics service and Prometheus carry it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// Upper bounds (milliseconds for timings), ascending, without +Inf.
    pub bounds: Vec<f64>,
    /// Cumulative counts per bound (samples <= bound); same length as `bounds`.
    pub cumulative: Vec<u64>,
    pub count: u64,
    pub sum: f64,
}

/// The fleet's figures over time.
pub struct Monitor {
    state: Mutex<State>,
    /// Where the series are kept across restarts, once attached.
    disk: Mutex<Option<persist::Disk>>,
    /// Load reports (LRS), latest per node and cluster.
    pub load: load::LoadBoard,
}

impl Default for Monitor {
    fn default() -> Self {
        Self::new(Retention::default())
    }
}

impl Monitor {
    pub fn new(retention: Retention) -> Self {
        Self { state: Mutex::new(State::new(retention)), disk: Mutex::new(None), load: Default::default() }
    }

    /// Sets the retention (before anything is ingested: the series start empty).
    pub fn configure(&self, retention: Retention) {
        *self.lock() = State::new(retention);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one report in.
    pub fn ingest(&self, report: Report) {
        self.lock().ingest(&report);
    }

    /// Every service seen in the window, with its figures.
    pub fn services(&self, window: Duration) -> Vec<ServiceFigures> {
        self.lock().services(crate::clock::unix_ms(), window)
    }

    /// One service's figures over the window.
    pub fn service(&self, name: &str, window: Duration) -> Option<ServiceFigures> {
        self.services(window).into_iter().find(|s| s.service == name)
    }

    /// Every virtual cluster of every virtual host counted in the window.
    pub fn routes(&self, window: Duration) -> Vec<RouteFigures> {
        self.lock().routes(crate::clock::unix_ms(), window)
    }

    /// Every proxy that reported in the window.
    pub fn proxies(&self, window: Duration) -> Vec<ProxyFigures> {
        self.lock().proxies(crate::clock::unix_ms(), window)
    }

    /// Requests, errors and p99 of the proxies `nodes` together over the window.
    pub fn proxy_group(&self, nodes: &[String], window: Duration) -> (u64, u64, Option<f64>) {
        self.lock().proxy_group(crate::clock::unix_ms(), window, nodes)
    }

    /// Starts counting every proxy's reports from now under `id` (a staged
    /// rollout's revision); a mark already set is kept as it is.
    pub fn set_mark(&self, id: u64) {
        self.lock().marks.entry(id).or_default();
    }

    /// Stops counting under `id`.
    pub fn clear_mark(&self, id: u64) {
        self.lock().marks.remove(&id);
    }

    /// What the proxies `nodes` reported together since mark `id` was set
    /// (empty when it is not set).
    pub fn since_mark(&self, id: u64, nodes: &[String]) -> Agg {
        let state = self.lock();
        let mut agg = Agg::default();
        if let Some(by) = state.marks.get(&id) {
            for n in nodes {
                if let Some(a) = by.get(n.as_str()) {
                    agg.add(a);
                }
            }
        }
        agg
    }

    /// Each proxy's sum since mark `id` was set.
    pub fn mark_by_node(&self, id: u64) -> std::collections::BTreeMap<String, Agg> {
        let state = self.lock();
        state.marks.get(&id).map(|by| by.iter().map(|(n, a)| (n.to_string(), a.clone())).collect()).unwrap_or_default()
    }

    /// `metric` of `service` over the window, one point per `step`.
    pub fn series(&self, service: &str, metric: Metric, window: Duration, step: Duration) -> Vec<Point> {
        self.lock().series(crate::clock::unix_ms(), service, metric, window, step)
    }

    /// The fleet's totals in Prometheus' text format (`GET /metrics`).
    pub fn prometheus(&self) -> String {
        exposition::render(&self.lock())
    }

    /// This replica's part of the fleet's series over the last `window`
    /// (and one slot more), of the services `only` (all when empty), as raw
    /// data another replica merges.
    pub fn shard(&self, window: Duration, only: &[String]) -> Shard {
        self.lock().shard(crate::clock::unix_ms(), window.as_millis() as u64, only)
    }

    /// A monitor holding this replica's shard over `window` and `peers`
    /// merged: every figure of it is the fleet's.
    pub fn merged(&self, window: Duration, peers: &[Shard]) -> Monitor {
        let (mine, mut state) = {
            let st = self.lock();
            (st.shard(crate::clock::unix_ms(), window.as_millis() as u64, &[]), st.empty_like())
        };
        state.absorb(&mine);
        for p in peers {
            state.absorb(p);
        }
        Monitor { state: Mutex::new(state), disk: Mutex::new(None), load: Default::default() }
    }

    /// When each of `proxies` was last heard of: its last metrics report,
    /// or its connection when later (Unix ms), by node id.
    pub fn last_heard(
        &self,
        proxies: &[crate::discovery::fleet::ProxyStatus],
    ) -> std::collections::BTreeMap<String, u64> {
        let st = self.lock();
        proxies
            .iter()
            .map(|p| {
                let reported = st.latest.get(p.node.id.as_str()).map_or(0, |l| l.at_ms);
                (p.node.id.clone(), reported.max(p.connected_ms))
            })
            .collect()
    }

    /// The proxies (node id, last report) that reported within `within`.
    pub fn reporting(&self, within: Duration) -> Vec<(String, String, u64)> {
        self.lock().reporting(crate::clock::unix_ms(), within)
    }
}
