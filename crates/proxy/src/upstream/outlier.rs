//! Outlier detection: hosts that answer with consecutive 5xx (or gateway
//! errors), or whose success rate over an interval falls far below the
//! others' (`success_rate_*`) or whose failure share passes a threshold
//! (`failure_percentage_*`), are ejected for `base_ejection_time` × the times
//! they were ejected (up to `max_ejection_time`), and come back on the
//! `interval` tick after that. Locally originated failures (connect
//! failures, resets) count as 5xx, as in Envoy when
//! `split_external_local_origin_errors` is off.
//!
//! Per request: two relaxed adds on the host (interval volume and successes)
//! besides the consecutive counters; the statistics run on the interval tick
//! (the timer is in `tasks`).

use crate::stats::{Counter, Gauge, Store};
use crate::upstream::clock::clock_ms;
use crate::upstream::host::Host;
use crate::upstream::membership::Membership;
use legate_api::pb::envoy::config::cluster::v3::OutlierDetection;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

pub struct Outlier {
    /// `split_external_local_origin_errors`: connect failures, timeouts and
    /// resets count toward `consecutive_local_origin_failure`, not 5xx.
    split_local: bool,
    consecutive_local: u32,
    enforcing_local: u32,
    detected_local: Arc<Counter>,
    enforced_local: Arc<Counter>,
    consecutive_5xx: u32,
    enforcing_5xx: u32,
    consecutive_gateway: u32,
    enforcing_gateway: u32,
    pub interval: Duration,
    base_ejection: Duration,
    max_ejection: Duration,
    max_ejection_percent: u32,
    success_rate: Statistic,
    failure_percentage: Statistic,
    ejections_active: Arc<Gauge>,
    /// Ejections the `max_ejection_percent` cap stopped.
    ejections_overflow: Arc<Counter>,
    enforced_total: Arc<Counter>,
    enforced_5xx: Arc<Counter>,
    enforced_gateway: Arc<Counter>,
    detected_5xx: Arc<Counter>,
    detected_gateway: Arc<Counter>,
}

/// The settings of one interval statistic (success rate or failure percentage).
struct Statistic {
    minimum_hosts: u64,
    request_volume: u64,
    enforcing: u32,
    /// Success rate: the stdev factor (÷ 1000); failure percentage: the threshold.
    parameter: f64,
    detected: Arc<Counter>,
    enforced: Arc<Counter>,
}

impl Outlier {
    pub fn compile(o: &OutlierDetection, store: &Store, cluster: &str) -> Self {
        let p = format!("cluster.{cluster}.outlier_detection.");
        Self {
            split_local: o.split_external_local_origin_errors,
            consecutive_local: o.consecutive_local_origin_failure.map_or(5, |v| v.value),
            enforcing_local: o.enforcing_consecutive_local_origin_failure.map_or(100, |v| v.value),
            detected_local: store.counter(&format!("{p}ejections_detected_consecutive_local_origin_failure")),
            enforced_local: store.counter(&format!("{p}ejections_enforced_consecutive_local_origin_failure")),
            consecutive_5xx: o.consecutive_5xx.map_or(5, |v| v.value),
            enforcing_5xx: o.enforcing_consecutive_5xx.map_or(100, |v| v.value),
            consecutive_gateway: o.consecutive_gateway_failure.map_or(5, |v| v.value),
            enforcing_gateway: o.enforcing_consecutive_gateway_failure.map_or(0, |v| v.value),
            interval: legate_api::duration::or(o.interval.as_ref(), Duration::from_secs(10))
                .max(Duration::from_millis(10)),
            base_ejection: legate_api::duration::or(o.base_ejection_time.as_ref(), Duration::from_secs(30)),
            max_ejection: legate_api::duration::or(o.max_ejection_time.as_ref(), Duration::from_secs(300)),
            max_ejection_percent: o.max_ejection_percent.map_or(10, |v| v.value),
            success_rate: Statistic {
                minimum_hosts: o.success_rate_minimum_hosts.map_or(5, |v| u64::from(v.value)),
                request_volume: o.success_rate_request_volume.map_or(100, |v| u64::from(v.value)),
                enforcing: o.enforcing_success_rate.map_or(100, |v| v.value),
                parameter: o.success_rate_stdev_factor.map_or(1900, |v| v.value) as f64 / 1000.0,
                detected: store.counter(&format!("{p}ejections_detected_success_rate")),
                enforced: store.counter(&format!("{p}ejections_enforced_success_rate")),
            },
            failure_percentage: Statistic {
                minimum_hosts: o.failure_percentage_minimum_hosts.map_or(5, |v| u64::from(v.value)),
                request_volume: o.failure_percentage_request_volume.map_or(50, |v| u64::from(v.value)),
                enforcing: o.enforcing_failure_percentage.map_or(0, |v| v.value),
                parameter: o.failure_percentage_threshold.map_or(85, |v| v.value) as f64,
                detected: store.counter(&format!("{p}ejections_detected_failure_percentage")),
                enforced: store.counter(&format!("{p}ejections_enforced_failure_percentage")),
            },
            ejections_active: store.gauge(&format!("{p}ejections_active")),
            ejections_overflow: store.counter(&format!("{p}ejections_overflow")),
            enforced_total: store.counter(&format!("{p}ejections_enforced_total")),
            enforced_5xx: store.counter(&format!("{p}ejections_enforced_consecutive_5xx")),
            enforced_gateway: store.counter(&format!("{p}ejections_enforced_consecutive_gateway_failure")),
            detected_5xx: store.counter(&format!("{p}ejections_detected_consecutive_5xx")),
            detected_gateway: store.counter(&format!("{p}ejections_detected_consecutive_gateway_failure")),
        }
    }

    /// Ejects `host` if the cap allows (and the enforcing draw says so);
    /// returns whether it did.
    fn eject(&self, hosts: &Membership, host: &Host, enforcing: u32) -> bool {
        if host.ejected.load(Relaxed) {
            return false;
        }
        let set = hosts.load();
        let ejected = set.all.iter().filter(|h| h.ejected.load(Relaxed)).count() as u32;
        // An ejection is allowed while the ejected share is under the cap;
        // one the cap stops is counted, as Envoy does, before the
        // enforcing draw.
        if ejected * 100 >= self.max_ejection_percent * set.all.len() as u32 {
            self.ejections_overflow.inc();
            return false;
        }
        if rand::random_range(0..100) >= enforcing {
            return false;
        }
        let times = host.od_ejections.fetch_add(1, Relaxed) + 1;
        let ejection = (self.base_ejection * times).min(self.max_ejection.max(self.base_ejection));
        host.od_until.store(clock_ms() + ejection.as_millis() as u64, Relaxed);
        host.ejected.store(true, Relaxed);
        host.od_5xx.store(0, Relaxed);
        host.od_gateway.store(0, Relaxed);
        self.enforced_total.inc();
        self.ejections_active.set(ejected as i64 + 1);
        true
    }

    /// A detector found `host` an outlier: counted as detected, and as
    /// enforced when it is ejected; returns whether it was.
    fn detect(&self, hosts: &Membership, host: &Host, enforcing: u32, detected: &Counter, enforced: &Counter) -> bool {
        detected.inc();
        let ejected = self.eject(hosts, host, enforcing);
        if ejected {
            enforced.inc();
        }
        ejected
    }

    /// The interval's success-rate and failure-percentage ejections, from
    /// the results each host saw since the last tick (then reset).
    fn interval_statistics(&self, hosts: &Membership) {
        let set = hosts.load();
        // (host, requests, success percent) of hosts not ejected.
        let rates: Vec<(&Arc<Host>, u64, f64)> = set
            .all
            .iter()
            .map(|h| {
                let rq = h.od_interval_rq.swap(0, Relaxed);
                let ok = h.od_interval_ok.swap(0, Relaxed);
                (h, rq, if rq == 0 { 100.0 } else { ok as f64 * 100.0 / rq as f64 })
            })
            .filter(|(h, _, _)| !h.ejected.load(Relaxed))
            .collect();
        let mut changed = false;
        // Success rate: below mean - factor × stdev of the hosts with volume.
        let sr = &self.success_rate;
        let valid: Vec<&(&Arc<Host>, u64, f64)> = rates.iter().filter(|(_, rq, _)| *rq >= sr.request_volume).collect();
        if valid.len() as u64 >= sr.minimum_hosts.max(1) {
            let n = valid.len() as f64;
            let mean = valid.iter().map(|(_, _, r)| r).sum::<f64>() / n;
            let stdev = (valid.iter().map(|(_, _, r)| (r - mean).powi(2)).sum::<f64>() / n).sqrt();
            let threshold = mean - stdev * sr.parameter;
            for (h, _, r) in valid {
                if *r < threshold {
                    changed |= self.detect(hosts, h, sr.enforcing, &sr.detected, &sr.enforced);
                }
            }
        }
        // Failure percentage: at or over the threshold.
        let fp = &self.failure_percentage;
        let valid: Vec<&(&Arc<Host>, u64, f64)> = rates.iter().filter(|(_, rq, _)| *rq >= fp.request_volume).collect();
        if valid.len() as u64 >= fp.minimum_hosts.max(1) {
            for (h, _, r) in valid {
                if 100.0 - r >= fp.parameter {
                    changed |= self.detect(hosts, h, fp.enforcing, &fp.detected, &fp.enforced);
                }
            }
        }
        if changed {
            hosts.refresh_health();
        }
    }

    /// Records one result from `host` (`None`: a local failure, counted as 503).
    pub fn record(&self, hosts: &Membership, host: &Host, status: Option<u16>) {
        if self.split_local {
            match status {
                // A local-origin failure: its own consecutive count only.
                None => {
                    host.od_interval_rq.fetch_add(1, Relaxed);
                    let n = host.od_local.fetch_add(1, Relaxed) + 1;
                    if n == self.consecutive_local
                        && !host.ejected.load(Relaxed)
                        && self.detect(hosts, host, self.enforcing_local, &self.detected_local, &self.enforced_local)
                    {
                        host.od_local.store(0, Relaxed);
                        hosts.refresh_health();
                    }
                    return;
                }
                // A response arrived: the connection worked.
                Some(_) => host.od_local.store(0, Relaxed),
            }
        }
        let status = status.unwrap_or(503);
        host.od_interval_rq.fetch_add(1, Relaxed);
        if status < 500 {
            host.od_interval_ok.fetch_add(1, Relaxed);
            host.od_5xx.store(0, Relaxed);
            host.od_gateway.store(0, Relaxed);
            return;
        }
        let n5xx = host.od_5xx.fetch_add(1, Relaxed) + 1;
        let ngw = if matches!(status, 502..=504) { host.od_gateway.fetch_add(1, Relaxed) + 1 } else { 0 };
        if host.ejected.load(Relaxed) {
            return;
        }
        // Consecutive 5xx first, then consecutive gateway failures, as Envoy checks them.
        let mut ejected = false;
        if n5xx == self.consecutive_5xx {
            ejected = self.detect(hosts, host, self.enforcing_5xx, &self.detected_5xx, &self.enforced_5xx);
        }
        if !ejected && ngw == self.consecutive_gateway {
            ejected = self.detect(hosts, host, self.enforcing_gateway, &self.detected_gateway, &self.enforced_gateway);
        }
        if ejected {
            hosts.refresh_health();
        }
    }

    /// The interval tick: hosts whose ejection ran out come back, then the
    /// interval's statistics may eject others.
    pub fn tick(&self, hosts: &Membership) {
        self.uneject(hosts);
        self.interval_statistics(hosts);
    }

    /// Brings back hosts whose ejection ran out.
    fn uneject(&self, hosts: &Membership) {
        let now = clock_ms();
        let mut changed = false;
        let set = hosts.load();
        for h in &set.all {
            if h.ejected.load(Relaxed) && h.od_until.load(Relaxed) <= now {
                h.ejected.store(false, Relaxed);
                changed = true;
            }
        }
        if changed {
            self.ejections_active.set(set.all.iter().filter(|h| h.ejected.load(Relaxed)).count() as i64);
            hosts.refresh_health();
        }
    }
}
