//! Least response time (`legate.lb.v1.LeastResponseTime`, Legate's own
//! policy): power of two choices over each host's cost, its peak-EWMA
//! latency (`peak_ewma`) times its requests in flight plus one, divided by
//! its weight. Two distinct hosts are drawn at random and the cheaper one
//! wins, as tower's `p2c` balancer and linkerd2-proxy do; a host that
//! answers slowly costs more at once, one left alone decays back toward
//! the others and is tried again.
//!
//! tower's `PeakEwma` is not used as a crate: it wraps one `tower::Service`
//! per endpoint and measures through its response futures, while Legate's
//! pick runs over the host set's shared `Host`s, synchronously, with the
//! requests in flight already counted on each host. The maths is the same,
//! written in `peak_ewma`.

use crate::upstream::host::Host;
use crate::upstream::lb::peak_ewma::Params;
use crate::upstream::lb::policy::{LoadBalancer, PickContext, Policy};
use legate_api::legate::lb::v1::LeastResponseTime as Config;
use legate_api::pb::envoy::config::cluster::v3::Cluster as PbCluster;
use legate_api::pb::google::protobuf::Any;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const POLICY: Policy =
    Policy { lb_policy: None, type_name: "legate.lb.v1.LeastResponseTime", from_cluster, from_typed };

/// Defaults: an observation 10 s old weighs 1/e of a new one (Finagle's
/// and linkerd2-proxy's decay); a host not yet heard from is assumed to
/// answer in 30 ms (linkerd2-proxy's default).
pub const DEFAULT_DECAY: Duration = Duration::from_secs(10);
pub const DEFAULT_RTT: Duration = Duration::from_millis(30);

pub struct LeastResponseTime {
    params: Params,
}

impl LeastResponseTime {
    pub fn new(decay: Duration, default_rtt: Duration) -> Self {
        let params = Params { decay_ns: nanos(decay).max(1.0), default_rtt_ns: nanos(default_rtt).max(1.0) };
        Self { params }
    }

    fn cost(&self, h: &Host, now: Instant) -> f64 {
        h.latency.cost(h.rq_active.load(Relaxed), now, self.params) / h.weight.max(1) as f64
    }

    /// The cheaper of two distinct hosts drawn at random (the first on a tie).
    fn p2c(&self, hosts: &[Arc<Host>]) -> usize {
        let n = hosts.len();
        let a = rand::random_range(0..n);
        if n < 2 {
            return a;
        }
        // A second index among the other n - 1.
        let b = (a + 1 + rand::random_range(0..n - 1)) % n;
        let now = Instant::now();
        if self.cost(&hosts[b], now) < self.cost(&hosts[a], now) {
            b
        } else {
            a
        }
    }
}

fn nanos(d: Duration) -> f64 {
    d.as_nanos() as f64
}

fn from_typed(any: &Any) -> Result<Box<dyn LoadBalancer>, String> {
    let c: Config = legate_api::any::unpack(any)?;
    let decay = legate_api::duration::or(c.decay.as_ref(), DEFAULT_DECAY);
    let default_rtt = legate_api::duration::or(c.default_rtt.as_ref(), DEFAULT_RTT);
    if decay.is_zero() || default_rtt.is_zero() {
        return Err("legate.lb.v1.LeastResponseTime: decay and default_rtt must be greater than 0".into());
    }
    Ok(Box::new(LeastResponseTime::new(decay, default_rtt)))
}

/// Never called: `lb_policy` has no value for this policy.
fn from_cluster(_: &PbCluster) -> Result<Box<dyn LoadBalancer>, String> {
    Err("lb_policy: least response time is named only in load_balancing_policy".into())
}

impl LoadBalancer for LeastResponseTime {
    fn pick(&self, at: &PickContext<'_>) -> Option<Arc<Host>> {
        let hosts = &at.level.hosts;
        hosts.get(self.p2c(hosts)).cloned()
    }

    fn pick_in_locality(&self, hosts: &[Arc<Host>], _next: &mut usize) -> usize {
        self.p2c(hosts)
    }

    fn times_responses(&self) -> bool {
        true
    }

    fn observe(&self, host: &Host, rtt: Duration, now: Instant) {
        host.latency.observe(nanos(rtt), now, self.params);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(n: u16) -> Vec<Arc<Host>> {
        (0..n).map(|i| Arc::new(Host::new(([127, 0, 0, 1], 1000 + i).into(), String::new(), 1, 0))).collect()
    }

    fn shares(lb: &LeastResponseTime, hs: &[Arc<Host>], picks: usize) -> Vec<usize> {
        let mut n = vec![0; hs.len()];
        (0..picks).for_each(|_| n[lb.p2c(hs)] += 1);
        n
    }

    #[test]
    fn a_slow_host_loses_every_draw() {
        let lb = LeastResponseTime::new(DEFAULT_DECAY, DEFAULT_RTT);
        let hs = hosts(3);
        let now = Instant::now();
        lb.observe(&hs[0], Duration::from_millis(50), now);
        lb.observe(&hs[1], Duration::from_millis(1), now);
        lb.observe(&hs[2], Duration::from_millis(1), now);
        // Two distinct hosts are drawn: the slow one always loses.
        let n = shares(&lb, &hs, 3000);
        assert_eq!(n[0], 0, "{n:?}");
        assert!(n[1] > 300 && n[2] > 300, "both fast ones are picked: {n:?}");
    }

    #[test]
    fn requests_in_flight_weigh_against_a_fast_host() {
        let lb = LeastResponseTime::new(DEFAULT_DECAY, DEFAULT_RTT);
        let hs = hosts(2);
        let now = Instant::now();
        lb.observe(&hs[0], Duration::from_millis(10), now);
        lb.observe(&hs[1], Duration::from_millis(30), now);
        // 10 ms x (4 + 1) = 50 > 30 ms x 1: the slower, idle host wins.
        hs[0].rq_active.store(4, Relaxed);
        assert_eq!(shares(&lb, &hs, 200), vec![0, 200]);
        // 10 ms x (1 + 1) = 20 < 30: the fast one again.
        hs[0].rq_active.store(1, Relaxed);
        assert_eq!(shares(&lb, &hs, 200), vec![200, 0]);
    }

    #[test]
    fn weight_divides_the_cost() {
        let lb = LeastResponseTime::new(DEFAULT_DECAY, DEFAULT_RTT);
        let mut hs = hosts(2);
        hs[1] = Arc::new(Host::new(([127, 0, 0, 1], 2000).into(), String::new(), 4, 0));
        let now = Instant::now();
        lb.observe(&hs[0], Duration::from_millis(10), now);
        lb.observe(&hs[1], Duration::from_millis(30), now);
        // 30 ms / 4 < 10 ms / 1.
        assert_eq!(shares(&lb, &hs, 100), vec![0, 100]);
    }

    #[test]
    fn config_defaults_and_refusals() {
        use legate_api::pb::google::protobuf::Duration as PbDuration;
        let ok = legate_api::any::pack(&Config::default());
        assert!(from_typed(&ok).is_ok());
        let zero = Config { decay: Some(PbDuration { seconds: 0, nanos: 0 }), default_rtt: None };
        assert!(from_typed(&legate_api::any::pack(&zero)).is_err());
        let other = legate_api::any::pack(&legate_api::pb::google::protobuf::Duration::default());
        assert!(from_typed(&other).is_err());
    }
}
