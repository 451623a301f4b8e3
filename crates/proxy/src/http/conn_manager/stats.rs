//! The connection manager's counters, gauges and histograms
//! (`http.<stat_prefix>.*`).

use crate::stats::{Counter, Gauge, Histogram, StatusClassCounters, Store};
use std::sync::Arc;

pub struct HcmStats {
    pub downstream_rq_total: Arc<Counter>,
    pub downstream_rq_active: Arc<Gauge>,
    pub downstream_rq_http1_total: Arc<Counter>,
    pub downstream_rq_http2_total: Arc<Counter>,
    pub downstream_rq_class: StatusClassCounters,
    pub downstream_rq_time: Arc<Histogram>,
    pub downstream_rq_completed: Arc<Counter>,
    pub downstream_cx_total: Arc<Counter>,
    pub downstream_cx_active: Arc<Gauge>,
    pub downstream_cx_destroy: Arc<Counter>,
    pub downstream_cx_idle_timeout: Arc<Counter>,
    pub downstream_cx_max_requests_reached: Arc<Counter>,
    /// Requests the overload manager answered 503 (`stop_accepting_requests`).
    pub downstream_rq_overload_close: Arc<Counter>,
    /// Connections the overload manager drained (`disable_http_keepalive`).
    pub downstream_cx_overload_disable_keepalive: Arc<Counter>,
    pub downstream_cx_protocol_error: Arc<Counter>,
    pub downstream_cx_drain_close: Arc<Counter>,
    pub no_route: Arc<Counter>,
    pub no_cluster: Arc<Counter>,
    pub rq_redirect: Arc<Counter>,
    pub rq_direct_response: Arc<Counter>,
    pub rq_total: Arc<Counter>,
    /// 413s for request bodies over the buffer filter's limit.
    pub downstream_rq_too_large: Arc<Counter>,
    /// Upgrades (WebSocket, CONNECT ...) accepted, and those still open.
    pub downstream_cx_upgrades_total: Arc<Counter>,
    pub downstream_cx_upgrades_active: Arc<Gauge>,
    /// Upgrade requests refused with 403 on a route that does not allow them.
    pub downstream_rq_ws_on_non_ws_route: Arc<Counter>,
    /// Streams ended by their route's `max_stream_duration`.
    pub downstream_rq_max_duration_reached: Arc<Counter>,
    /// Streams reset (an HTTP/2 request over the header limits).
    pub downstream_rq_rx_reset: Arc<Counter>,
    /// Paths refused (400) or redirected (307) by the path options.
    pub downstream_rq_failed_path_normalization: Arc<Counter>,
    pub downstream_rq_redirected_with_normalized_path: Arc<Counter>,
    /// Requests ended by `request_headers_timeout`, `request_timeout` and
    /// the stream idle timeout.
    pub downstream_rq_header_timeout: Arc<Counter>,
    pub downstream_rq_timeout: Arc<Counter>,
    pub downstream_rq_idle_timeout: Arc<Counter>,
}

impl HcmStats {
    pub(super) fn new(store: &Store, prefix: &str) -> Self {
        let p = format!("http.{prefix}.");
        let c = |n: &str| store.counter(&format!("{p}{n}"));
        Self {
            downstream_rq_total: c("downstream_rq_total"),
            downstream_rq_active: store.gauge(&format!("{p}downstream_rq_active")),
            downstream_rq_http1_total: c("downstream_rq_http1_total"),
            downstream_rq_http2_total: c("downstream_rq_http2_total"),
            downstream_rq_class: StatusClassCounters::new(store, &p, "downstream_rq"),
            downstream_rq_time: store.histogram(&format!("{p}downstream_rq_time")),
            downstream_rq_completed: c("downstream_rq_completed"),
            downstream_cx_total: c("downstream_cx_total"),
            downstream_cx_active: store.gauge(&format!("{p}downstream_cx_active")),
            downstream_cx_destroy: c("downstream_cx_destroy"),
            downstream_cx_idle_timeout: c("downstream_cx_idle_timeout"),
            downstream_cx_max_requests_reached: c("downstream_cx_max_requests_reached"),
            downstream_rq_overload_close: c("downstream_rq_overload_close"),
            downstream_cx_overload_disable_keepalive: c("downstream_cx_overload_disable_keepalive"),
            downstream_cx_protocol_error: c("downstream_cx_protocol_error"),
            downstream_cx_drain_close: c("downstream_cx_drain_close"),
            no_route: c("no_route"),
            no_cluster: c("no_cluster"),
            rq_redirect: c("rq_redirect"),
            rq_direct_response: c("rq_direct_response"),
            rq_total: c("rq_total"),
            downstream_rq_too_large: c("downstream_rq_too_large"),
            downstream_cx_upgrades_total: c("downstream_cx_upgrades_total"),
            downstream_cx_upgrades_active: store.gauge(&format!("{p}downstream_cx_upgrades_active")),
            downstream_rq_ws_on_non_ws_route: c("downstream_rq_ws_on_non_ws_route"),
            downstream_rq_max_duration_reached: c("downstream_rq_max_duration_reached"),
            downstream_rq_rx_reset: c("downstream_rq_rx_reset"),
            downstream_rq_failed_path_normalization: c("downstream_rq_failed_path_normalization"),
            downstream_rq_redirected_with_normalized_path: c("downstream_rq_redirected_with_normalized_path"),
            downstream_rq_header_timeout: c("downstream_rq_header_timeout"),
            downstream_rq_timeout: c("downstream_rq_timeout"),
            downstream_rq_idle_timeout: c("downstream_rq_idle_timeout"),
        }
    }
}
