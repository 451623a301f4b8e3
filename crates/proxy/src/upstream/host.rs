//! One upstream endpoint (`Host`): its address, weight and place in the
//! load assignment, its request and connection counters, and its health as
//! active checks and outlier detection see it; and slow start, which scales
//! the weight of a host that became healthy recently.

use crate::common::metadata::Map;
use crate::io::unix::UnixAddr;
use crate::upstream::clock::clock_ms;
use crate::upstream::lb::peak_ewma::PeakEwma;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// What a host carries besides its address, name, weight and placement:
/// `LbEndpoint.metadata`, `Endpoint.health_check_config`, and the Unix
/// socket of an endpoint whose address is a `pipe`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Extra {
    pub metadata: Option<Arc<Map>>,
    pub health_check: Option<Arc<HealthCheckTarget>>,
    pub pipe: Option<Arc<UnixAddr>>,
}

/// `Endpoint.health_check_config`: where and how active health checks reach
/// the host.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HealthCheckTarget {
    /// `address` (an IP, as Envoy expects), with its port.
    pub address: Option<SocketAddr>,
    /// `port_value`: the port checked instead of the host's (0: the host's).
    pub port: u16,
    /// `hostname`: the HTTP check's host header, gRPC's authority.
    pub hostname: String,
    /// `disable_active_health_check`: never checked, always healthy.
    pub disabled: bool,
}

impl HealthCheckTarget {
    /// The address the checks of a host at `addr` connect to.
    pub fn address_for(&self, addr: SocketAddr) -> SocketAddr {
        let base = self.address.unwrap_or(addr);
        if self.port == 0 {
            base
        } else {
            SocketAddr::new(base.ip(), self.port)
        }
    }
}

/// Where an endpoint sits in its load assignment: its priority, and its
/// locality (the index of its `LocalityLbEndpoints`) with that locality's
/// `load_balancing_weight` (0 when unset).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Placement {
    pub priority: u32,
    pub locality: u32,
    pub locality_weight: u32,
}

impl From<u32> for Placement {
    fn from(priority: u32) -> Self {
        Self { priority, ..Default::default() }
    }
}

/// One upstream endpoint.
pub struct Host {
    pub addr: SocketAddr,
    /// Envoy's host name: `Endpoint.hostname`, else (DNS clusters) the name
    /// it was resolved from; empty for an IP endpoint without one.
    pub hostname: String,
    /// `LbEndpoint.metadata`, by namespace.
    pub metadata: Option<Arc<Map>>,
    /// `Endpoint.health_check_config`.
    pub health_check: Option<Arc<HealthCheckTarget>>,
    /// A `pipe` endpoint's Unix socket (its `addr` is then a stand-in,
    /// `endpoints::PIPE_STAND_IN`).
    pub pipe: Option<Arc<UnixAddr>>,
    pub weight: u32,
    pub priority: u32,
    pub locality: u32,
    pub locality_weight: u32,
    pub rq_active: AtomicU64,
    pub cx_active: AtomicU64,
    pub rq_total: AtomicU64,
    pub rq_error: AtomicU64,
    pub rq_success: AtomicU64,
    pub cx_total: AtomicU64,
    pub cx_connect_fail: AtomicU64,
    /// Active health checking's verdict (true when the cluster has none).
    pub hc_healthy: AtomicBool,
    /// Consecutive check results, for the thresholds.
    pub hc_fails: AtomicU32,
    pub hc_passes: AtomicU32,
    /// True until the first check has answered.
    pub hc_pending: AtomicBool,
    /// When its next active check is due, on `upstream::clock::clock_ms`
    /// (0: at once).
    pub hc_due: AtomicU64,
    /// Outlier detection: ejected now, consecutive failures, times ejected,
    /// and until when (on `upstream::clock::clock_ms`).
    pub ejected: AtomicBool,
    pub od_5xx: AtomicU32,
    pub od_gateway: AtomicU32,
    pub od_ejections: AtomicU32,
    pub od_until: AtomicU64,
    /// Results in the current outlier-detection interval: all, and successes.
    pub od_interval_rq: AtomicU64,
    pub od_interval_ok: AtomicU64,
    /// Consecutive local-origin failures (split mode).
    pub od_local: AtomicU32,
    /// When the host last became healthy (Envoy's last HC pass time), on
    /// `upstream::clock::clock_ms`; 0 until then. Slow start counts from it.
    pub healthy_since: AtomicU64,
    /// Its peak-EWMA latency, kept when the cluster balances by least
    /// response time.
    pub latency: PeakEwma,
}

impl Host {
    pub fn placement(&self) -> Placement {
        Placement { priority: self.priority, locality: self.locality, locality_weight: self.locality_weight }
    }

    /// A host of a health-checked cluster waits for its first check.
    pub fn mark_pending(&self) {
        self.hc_healthy.store(false, Relaxed);
        self.hc_pending.store(true, Relaxed);
    }

    pub fn new(addr: SocketAddr, hostname: String, weight: u32, placement: impl Into<Placement>) -> Self {
        let placement = placement.into();
        Self {
            addr,
            hostname,
            metadata: None,
            health_check: None,
            pipe: None,
            weight: weight.max(1),
            priority: placement.priority,
            locality: placement.locality,
            locality_weight: placement.locality_weight,
            rq_active: AtomicU64::new(0),
            cx_active: AtomicU64::new(0),
            rq_total: AtomicU64::new(0),
            rq_error: AtomicU64::new(0),
            rq_success: AtomicU64::new(0),
            cx_total: AtomicU64::new(0),
            cx_connect_fail: AtomicU64::new(0),
            hc_healthy: AtomicBool::new(true),
            hc_fails: Default::default(),
            hc_passes: Default::default(),
            hc_pending: AtomicBool::new(false),
            hc_due: AtomicU64::new(0),
            ejected: AtomicBool::new(false),
            od_5xx: Default::default(),
            od_gateway: Default::default(),
            od_ejections: Default::default(),
            od_until: AtomicU64::new(0),
            od_interval_rq: AtomicU64::new(0),
            od_interval_ok: AtomicU64::new(0),
            od_local: Default::default(),
            healthy_since: AtomicU64::new(0),
            latency: PeakEwma::default(),
        }
    }

    /// The same host with this `LbEndpoint.metadata` and health check target.
    pub fn with_extra(mut self, extra: Extra) -> Self {
        self.metadata = extra.metadata;
        self.health_check = extra.health_check;
        self.pipe = extra.pipe;
        self
    }

    /// Its address as Envoy prints it: `ip:port`, or a Unix socket's path.
    pub fn address_string(&self) -> String {
        match &self.pipe {
            Some(p) => p.to_string(),
            None => self.addr.to_string(),
        }
    }

    /// Whether active health checks check it (not `disable_active_health_check`).
    pub fn actively_checked(&self) -> bool {
        !self.health_check.as_ref().is_some_and(|c| c.disabled)
    }

    /// Where its active health checks connect.
    pub fn health_check_address(&self) -> SocketAddr {
        self.health_check.as_ref().map_or(self.addr, |c| c.address_for(self.addr))
    }

    /// Stamps the host as healthy from now (an active check's pass).
    pub fn mark_healthy_now(&self) {
        self.healthy_since.store(clock_ms(), Relaxed);
    }
}

/// `slow_start_config`: a host that became healthy less than `window_ms`
/// ago gets its weight scaled by max(min_weight, (t / window)^(1/aggression)).
#[derive(Debug, Clone)]
pub struct SlowStart {
    pub window_ms: u64,
    pub aggression: crate::common::runtime::RuntimeDouble,
    pub min_weight: f64,
}

impl SlowStart {
    pub fn compile(c: &legate_api::pb::envoy::config::cluster::v3::cluster::SlowStartConfig) -> Option<Self> {
        Self::from_parts(c.slow_start_window.as_ref(), c.aggression.as_ref(), c.min_weight_percent.as_ref())
    }

    /// The same, from a `load_balancing_policy` extension's config.
    pub fn compile_typed(
        c: &legate_api::pb::envoy::extensions::load_balancing_policies::common::v3::SlowStartConfig,
    ) -> Option<Self> {
        Self::from_parts(c.slow_start_window.as_ref(), c.aggression.as_ref(), c.min_weight_percent.as_ref())
    }

    fn from_parts(
        window: Option<&legate_api::pb::google::protobuf::Duration>,
        aggression: Option<&legate_api::pb::envoy::config::core::v3::RuntimeDouble>,
        min_weight: Option<&legate_api::pb::envoy::r#type::v3::Percent>,
    ) -> Option<Self> {
        let window_ms = window.map_or(0, |d| legate_api::duration::from_pb(d).as_millis() as u64);
        Some(Self {
            window_ms,
            aggression: crate::common::runtime::RuntimeDouble::double(aggression, 1.0),
            min_weight: min_weight.map_or(10.0, |p| p.value) / 100.0,
        })
        .filter(|s| s.window_ms > 0)
    }

    /// A host's weight now: scaled while it is inside the window.
    pub fn weight(&self, h: &Host, weight: f64, now_ms: u64) -> f64 {
        let since = h.healthy_since.load(Relaxed);
        if since == 0 || !h.hc_healthy.load(Relaxed) {
            return weight;
        }
        let in_window = now_ms.saturating_sub(since);
        if in_window >= self.window_ms {
            return weight;
        }
        let t = in_window.max(1) as f64 / self.window_ms as f64;
        // Envoy falls back to 1.0 for a value that is not positive.
        let a = Some(self.aggression.value()).filter(|a| *a > 0.0 && a.is_finite()).unwrap_or(1.0);
        let f = if a == 1.0 { t } else { t.powf(1.0 / a) };
        weight * f.max(self.min_weight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_start_scales_weight_over_the_window() {
        let ss = SlowStart {
            window_ms: 10_000,
            aggression: crate::common::runtime::RuntimeDouble::fixed(1.0),
            min_weight: 0.1,
        };
        let h = Host::new("127.0.0.1:1".parse().unwrap(), "h".into(), 1, 0);
        // Not yet healthy-stamped: full weight.
        assert_eq!(ss.weight(&h, 4.0, 5_000), 4.0);
        h.healthy_since.store(1_000, Relaxed);
        // Early in the window the floor (min_weight_percent) holds.
        assert!((ss.weight(&h, 4.0, 1_500) - 0.4).abs() < 1e-9);
        // Linear with aggression 1: half the window, half the weight.
        assert!((ss.weight(&h, 4.0, 6_000) - 2.0).abs() < 1e-9);
        // Past the window: the weight as configured.
        assert_eq!(ss.weight(&h, 4.0, 11_000), 4.0);
        // Aggression 2 ramps faster: (t/window)^(1/2).
        let fast = SlowStart { aggression: crate::common::runtime::RuntimeDouble::fixed(2.0), ..ss.clone() };
        assert!((fast.weight(&h, 1.0, 3_500) - 0.5).abs() < 1e-9);
        // An unhealthy host is not scaled.
        h.hc_healthy.store(false, Relaxed);
        assert_eq!(ss.weight(&h, 4.0, 6_000), 4.0);
    }
}
