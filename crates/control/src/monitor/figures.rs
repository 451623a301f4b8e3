//! The figures the API, the CLI, alerts and releases read. Their JSON is the
//! REST API's (`/v1/top/services`, `/v1/top/proxies`, `/v1/series`).

use serde::{Deserialize, Serialize};

/// What a window of requests came to: the figures a service and a route
/// share (flattened into each one's JSON).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RequestFigures {
    /// Requests completed in the window (exact: a counter difference).
    pub requests: u64,
    /// 5xx responses in the window.
    pub errors: u64,
    pub rq_2xx: u64,
    pub rq_4xx: u64,
    pub rq_5xx: u64,
    pub rps: f64,
    /// errors / requests (0 without requests).
    pub error_rate: f64,
    /// Upstream latency percentiles from merged buckets; None without samples.
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub retries: u64,
    pub timeouts: u64,
}

/// One service (an upstream cluster, summed over every proxy) over a window.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ServiceFigures {
    pub service: String,
    #[serde(flatten)]
    pub traffic: RequestFigures,
    /// Latest gauges, summed over proxies.
    pub active_rq: f64,
    pub active_cx: f64,
    /// Hosts ejected by outlier detection, hosts failing health checks (latest).
    pub ejected: f64,
    pub unhealthy: f64,
    /// How many proxies reported this service in the window.
    pub proxies: usize,
}

/// One proxy over a window: its traffic (downstream, summed over its
/// connection managers) and when it last reported.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ProxyFigures {
    pub node: String,
    pub node_cluster: String,
    pub requests: u64,
    pub errors: u64,
    pub rps: f64,
    pub error_rate: f64,
    pub p99_ms: Option<f64>,
    pub active_cx: f64,
    pub active_rq: f64,
    /// Unix milliseconds of the last report, and how it came (`stream`, `scrape`).
    pub last_report_ms: u64,
    pub source: String,
    /// Restarts seen (a counter that went down).
    pub resets: u64,
}

/// One virtual cluster of one virtual host, or one route with a
/// `stat_prefix` (summed over every proxy) over a window: what Envoy counts
/// in `vhost.<vh>.vcluster.<vc>.*` or `vhost.<vh>.route.<stat_prefix>.*`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RouteFigures {
    pub virtual_host: String,
    /// Empty on a route's row.
    pub virtual_cluster: String,
    /// The route's `stat_prefix`; empty on a virtual cluster's row.
    #[serde(default)]
    pub route: String,
    #[serde(flatten)]
    pub traffic: RequestFigures,
}

/// What a series or an alert rule measures.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Rps,
    ErrorRate,
    P50Ms,
    P90Ms,
    P99Ms,
    Requests,
    Errors,
}

impl std::str::FromStr for Metric {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        serde_json::from_value(serde_json::Value::String(s.to_string()))
            .map_err(|_| format!("unknown metric {s:?} (rps, error_rate, p50_ms, p90_ms, p99_ms, requests, errors)"))
    }
}

/// One point of a series: Unix milliseconds and a value (None: no data).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Point {
    pub t: u64,
    pub v: Option<f64>,
}
