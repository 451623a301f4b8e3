//! Outlier detection: hosts that answer with consecutive 5xx (or gateway
//! errors) are ejected for `base_ejection_time` × the times they were
//! ejected (up to `max_ejection_time`), and come back on the `interval` tick
//! after that. Locally originated failures (connect failures, resets) count
//! as 5xx, as in Envoy when `split_external_local_origin_errors` is off.

use crate::cluster::{Cluster, Host};
use crate::stats::{Counter, Gauge, Store};
use legate_api::pb::envoy::config::cluster::v3::OutlierDetection;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

pub struct Outlier {
    consecutive_5xx: u32,
    enforcing_5xx: u32,
    consecutive_gateway: u32,
    enforcing_gateway: u32,
    pub interval: Duration,
    base_ejection: Duration,
    max_ejection: Duration,
    max_ejection_percent: u32,
    ejections_active: Arc<Gauge>,
    enforced_total: Arc<Counter>,
    enforced_5xx: Arc<Counter>,
    enforced_gateway: Arc<Counter>,
}

fn dur(d: &Option<legate_api::pb::google::protobuf::Duration>, default: Duration) -> Duration {
    d.as_ref().map_or(default, |d| Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32))
}

/// A process-wide origin for the ejection times kept in atomics.
fn epoch() -> Instant {
    static E: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *E.get_or_init(Instant::now)
}

impl Outlier {
    pub fn compile(o: &OutlierDetection, store: &Store, cluster: &str) -> Self {
        let p = format!("cluster.{cluster}.outlier_detection.");
        Self {
            consecutive_5xx: o.consecutive_5xx.map_or(5, |v| v.value),
            enforcing_5xx: o.enforcing_consecutive_5xx.map_or(100, |v| v.value),
            consecutive_gateway: o.consecutive_gateway_failure.map_or(5, |v| v.value),
            enforcing_gateway: o.enforcing_consecutive_gateway_failure.map_or(0, |v| v.value),
            interval: dur(&o.interval, Duration::from_secs(10)).max(Duration::from_millis(10)),
            base_ejection: dur(&o.base_ejection_time, Duration::from_secs(30)),
            max_ejection: dur(&o.max_ejection_time, Duration::from_secs(300)),
            max_ejection_percent: o.max_ejection_percent.map_or(10, |v| v.value),
            ejections_active: store.gauge(&format!("{p}ejections_active")),
            enforced_total: store.counter(&format!("{p}ejections_enforced_total")),
            enforced_5xx: store.counter(&format!("{p}ejections_enforced_consecutive_5xx")),
            enforced_gateway: store.counter(&format!("{p}ejections_enforced_consecutive_gateway_failure")),
        }
    }

    /// Records one result from `host` (`None`: a local failure, counted as 503).
    pub fn record(&self, cluster: &Cluster, host: &Host, status: Option<u16>) {
        let status = status.unwrap_or(503);
        if status < 500 {
            host.od_5xx.store(0, Relaxed);
            host.od_gateway.store(0, Relaxed);
            return;
        }
        let n5xx = host.od_5xx.fetch_add(1, Relaxed) + 1;
        let ngw = if matches!(status, 502..=504) { host.od_gateway.fetch_add(1, Relaxed) + 1 } else { 0 };
        if host.ejected.load(Relaxed) {
            return;
        }
        let by_5xx = n5xx >= self.consecutive_5xx && rand::random_range(0..100) < self.enforcing_5xx;
        let by_gateway = ngw >= self.consecutive_gateway && rand::random_range(0..100) < self.enforcing_gateway;
        if !(by_5xx || by_gateway) {
            return;
        }
        let set = cluster.hosts.load();
        let ejected = set.all.iter().filter(|h| h.ejected.load(Relaxed)).count() as u32;
        // An ejection is allowed while the ejected share is under the cap.
        if ejected * 100 >= self.max_ejection_percent * set.all.len() as u32 {
            return;
        }
        let times = host.od_ejections.fetch_add(1, Relaxed) + 1;
        let until = Instant::now() + (self.base_ejection * times).min(self.max_ejection.max(self.base_ejection));
        host.od_until.store(until.duration_since(epoch()).as_millis() as u64, Relaxed);
        host.ejected.store(true, Relaxed);
        host.od_5xx.store(0, Relaxed);
        host.od_gateway.store(0, Relaxed);
        self.enforced_total.inc();
        if by_5xx {
            self.enforced_5xx.inc()
        } else {
            self.enforced_gateway.inc()
        }
        self.ejections_active.set(ejected as i64 + 1);
        cluster.refresh_health();
    }

    /// Brings back hosts whose ejection ran out.
    fn uneject(&self, cluster: &Cluster) {
        let now = Instant::now().duration_since(epoch()).as_millis() as u64;
        let mut changed = false;
        let set = cluster.hosts.load();
        for h in &set.all {
            if h.ejected.load(Relaxed) && h.od_until.load(Relaxed) <= now {
                h.ejected.store(false, Relaxed);
                changed = true;
            }
        }
        if changed {
            self.ejections_active.set(set.all.iter().filter(|h| h.ejected.load(Relaxed)).count() as i64);
            cluster.refresh_health();
        }
    }
}

/// The interval timer of a cluster's outlier detection, until the cluster is gone.
pub async fn run(cluster: Weak<Cluster>) {
    let _ = epoch();
    loop {
        let Some(interval) = cluster.upgrade().and_then(|c| c.outlier.as_ref().map(|o| o.interval)) else { return };
        tokio::time::sleep(interval).await;
        let Some(c) = cluster.upgrade() else { return };
        if let Some(o) = &c.outlier {
            o.uneject(&c);
        }
    }
}
