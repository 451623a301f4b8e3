//! A cluster's statistics (`cluster.<name>.*`): the counters and gauges
//! requests, connections and membership changes update, and the per-status
//! counters created on first use as Envoy creates them.

use crate::stats::{Counter, Gauge, Histogram, Store};
use std::sync::{Arc, OnceLock};

/// `cluster.<name>.*`.
pub struct ClusterStats {
    pub upstream_rq_total: Arc<Counter>,
    pub upstream_rq_completed: Arc<Counter>,
    pub upstream_rq_active: Arc<Gauge>,
    pub upstream_rq_timeout: Arc<Counter>,
    pub upstream_rq_time: Arc<Histogram>,
    /// `upstream_rq_1xx`..`5xx`: created on first use, like Envoy's.
    upstream_rq_class: [OnceLock<Arc<Counter>>; 5],
    upstream_rq_code: Box<[OnceLock<Arc<Counter>>]>,
    /// The same under `external.` (every request is external to Envoy 1.40
    /// without internal_address_config), with `external.upstream_rq_completed`.
    external_rq_class: [OnceLock<Arc<Counter>>; 5],
    external_rq_code: Box<[OnceLock<Arc<Counter>>]>,
    external_rq_completed: OnceLock<Arc<Counter>>,
    pub upstream_cx_total: Arc<Counter>,
    pub upstream_cx_active: Arc<Gauge>,
    pub upstream_cx_http1_total: Arc<Counter>,
    pub upstream_cx_http2_total: Arc<Counter>,
    pub upstream_cx_connect_fail: Arc<Counter>,
    pub upstream_cx_connect_timeout: Arc<Counter>,
    pub upstream_cx_destroy: Arc<Counter>,
    pub upstream_rq_pending_total: Arc<Counter>,
    pub upstream_rq_pending_failure_eject: Arc<Counter>,
    pub upstream_cx_none_healthy: Arc<Counter>,
    pub membership_total: Arc<Gauge>,
    pub membership_healthy: Arc<Gauge>,
    pub membership_change: Arc<Counter>,
    pub update_attempt: Arc<Counter>,
    pub update_success: Arc<Counter>,
    pub upstream_rq_retry: Arc<Counter>,
    /// Attempts a retry policy's `per_try_timeout` ended.
    pub upstream_rq_per_try_timeout: Arc<Counter>,
    pub upstream_rq_retry_success: Arc<Counter>,
    pub upstream_rq_retry_limit_exceeded: Arc<Counter>,
    pub upstream_cx_idle_timeout: Arc<Counter>,
    pub upstream_cx_max_requests: Arc<Counter>,
    pub upstream_cx_pool_overflow: Arc<Counter>,
    pub upstream_rq_max_duration_reached: Arc<Counter>,
    pub upstream_rq_pending_overflow: Arc<Counter>,
    pub upstream_rq_active_overflow: Arc<Counter>,
    pub upstream_cx_overflow: Arc<Counter>,
    pub upstream_rq_retry_overflow: Arc<Counter>,
    pub lb_healthy_panic: Arc<Counter>,
    /// `ssl.*`, only for a TLS cluster.
    pub ssl: Option<crate::tls::SslStats>,
    prefix: String,
    store: Arc<Store>,
}

impl ClusterStats {
    /// A rarely used counter of this cluster, created on first use.
    pub fn named(&self, n: &str) -> Arc<Counter> {
        self.store.counter(&format!("{}{n}", self.prefix))
    }

    pub fn new(store: &Arc<Store>, name: &str, tls: bool) -> Self {
        let p = format!("cluster.{name}.");
        let c = |n: &str| store.counter(&format!("{p}{n}"));
        let g = |n: &str| store.gauge(&format!("{p}{n}"));
        Self {
            upstream_rq_total: c("upstream_rq_total"),
            upstream_rq_completed: c("upstream_rq_completed"),
            upstream_rq_active: g("upstream_rq_active"),
            upstream_rq_timeout: c("upstream_rq_timeout"),
            upstream_rq_time: store.histogram(&format!("{p}upstream_rq_time")),
            upstream_rq_class: Default::default(),
            upstream_rq_code: (0..600).map(|_| OnceLock::new()).collect(),
            external_rq_class: Default::default(),
            external_rq_code: (0..600).map(|_| OnceLock::new()).collect(),
            external_rq_completed: OnceLock::new(),
            upstream_cx_total: c("upstream_cx_total"),
            upstream_cx_active: g("upstream_cx_active"),
            upstream_cx_http1_total: c("upstream_cx_http1_total"),
            upstream_cx_http2_total: c("upstream_cx_http2_total"),
            upstream_cx_connect_fail: c("upstream_cx_connect_fail"),
            upstream_cx_connect_timeout: c("upstream_cx_connect_timeout"),
            upstream_cx_destroy: c("upstream_cx_destroy"),
            ssl: tls.then(|| crate::tls::SslStats::new(store, &p)),
            upstream_rq_pending_total: c("upstream_rq_pending_total"),
            upstream_rq_pending_failure_eject: c("upstream_rq_pending_failure_eject"),
            upstream_cx_none_healthy: c("upstream_cx_none_healthy"),
            membership_total: g("membership_total"),
            membership_healthy: g("membership_healthy"),
            membership_change: c("membership_change"),
            update_attempt: c("update_attempt"),
            update_success: c("update_success"),
            upstream_rq_retry: c("upstream_rq_retry"),
            upstream_rq_per_try_timeout: c("upstream_rq_per_try_timeout"),
            upstream_rq_retry_success: c("upstream_rq_retry_success"),
            upstream_rq_retry_limit_exceeded: c("upstream_rq_retry_limit_exceeded"),
            upstream_cx_idle_timeout: c("upstream_cx_idle_timeout"),
            upstream_cx_max_requests: c("upstream_cx_max_requests"),
            upstream_cx_pool_overflow: c("upstream_cx_pool_overflow"),
            upstream_rq_max_duration_reached: c("upstream_rq_max_duration_reached"),
            upstream_rq_pending_overflow: c("upstream_rq_pending_overflow"),
            upstream_rq_active_overflow: c("upstream_rq_active_overflow"),
            upstream_cx_overflow: c("upstream_cx_overflow"),
            upstream_rq_retry_overflow: c("upstream_rq_retry_overflow"),
            lb_healthy_panic: c("lb_healthy_panic"),
            prefix: p,
            store: store.clone(),
        }
    }

    /// `upstream_rq_<code>` and `upstream_rq_<class>xx`, created on first use
    /// like Envoy's (a cluster that never saw a 3xx has no `upstream_rq_3xx`);
    /// afterwards a lock-free `OnceLock` read.
    pub fn record_status(&self, status: u16) {
        let class = (status / 100) as usize;
        if let Some(slot) = class.checked_sub(1).and_then(|i| self.upstream_rq_class.get(i)) {
            slot.get_or_init(|| self.store.counter(&format!("{}upstream_rq_{class}xx", self.prefix))).inc();
        }
        if let Some(slot) = self.upstream_rq_code.get(status as usize) {
            slot.get_or_init(|| self.store.counter(&format!("{}upstream_rq_{status}", self.prefix))).inc();
        }
        if let Some(slot) = class.checked_sub(1).and_then(|i| self.external_rq_class.get(i)) {
            slot.get_or_init(|| self.store.counter(&format!("{}external.upstream_rq_{class}xx", self.prefix))).inc();
        }
        if let Some(slot) = self.external_rq_code.get(status as usize) {
            slot.get_or_init(|| self.store.counter(&format!("{}external.upstream_rq_{status}", self.prefix))).inc();
        }
        self.external_rq_completed
            .get_or_init(|| self.store.counter(&format!("{}external.upstream_rq_completed", self.prefix)))
            .inc();
    }
}
