//! Fleet monitoring: what every proxy reports (metrics-service streams, load
//! reports, admin scrapes) turned into time series, and the figures read
//! from them (`figures`): per service (an upstream cluster), per proxy.
//!
//! Every source converts what it receives into a [`Report`] of Envoy stat
//! names and values; [`Monitor::ingest`] is the one way in. Counters are
//! cumulative as the proxy keeps them; rates come from differences (a counter
//! that goes down is a restart, not a negative rate). Latency percentiles come
//! from histogram buckets merged across proxies.

pub mod figures;

pub use figures::{Metric, Point, ProxyFigures, ServiceFigures};

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
#[derive(Default)]
pub struct Monitor {}

impl Monitor {
    /// Takes one report in.
    pub fn ingest(&self, _report: Report) {}

    /// Every service seen in the window, with its figures.
    pub fn services(&self, _window: Duration) -> Vec<ServiceFigures> {
        Vec::new()
    }

    /// One service's figures over the window.
    pub fn service(&self, name: &str, window: Duration) -> Option<ServiceFigures> {
        self.services(window).into_iter().find(|s| s.service == name)
    }

    /// Every proxy that reported in the window.
    pub fn proxies(&self, _window: Duration) -> Vec<ProxyFigures> {
        Vec::new()
    }

    /// `metric` of `service` over the window, one point per `step`.
    pub fn series(&self, _service: &str, _metric: Metric, _window: Duration, _step: Duration) -> Vec<Point> {
        Vec::new()
    }
}
