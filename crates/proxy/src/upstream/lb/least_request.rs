//! LEAST_REQUEST: with equal weights, the fewest active requests among
//! `choice_count` random samples; when weights differ (or slow start scales
//! them), earliest-deadline-first over weight / (active + 1)^bias. Inside a
//! locality, the better of two random samples.

use crate::common::runtime::RuntimeDouble;
use crate::upstream::clock::clock_ms;
use crate::upstream::host::{Host, SlowStart};
use crate::upstream::lb::edf::Edf;
use crate::upstream::lb::policy::{LoadBalancer, PickContext, Policy};
use legate_api::pb::envoy::config::cluster::v3::{cluster, Cluster as PbCluster};
use legate_api::pb::envoy::extensions::load_balancing_policies::least_request::v3 as typed;
use legate_api::pb::google::protobuf::Any;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

pub const POLICY: Policy = Policy {
    lb_policy: Some(cluster::LbPolicy::LeastRequest),
    type_name: "envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest",
    from_cluster,
    from_typed,
};

pub struct LeastRequest {
    /// Hosts sampled per pick when weights are equal (`choice_count`, default 2).
    choice_count: u32,
    /// How strongly active requests lower a host's weight when weights
    /// differ (`active_request_bias`, default 1).
    active_request_bias: RuntimeDouble,
    slow_start: Option<SlowStart>,
}

impl Default for LeastRequest {
    fn default() -> Self {
        Self { choice_count: 2, active_request_bias: RuntimeDouble::fixed(1.0), slow_start: None }
    }
}

fn from_cluster(c: &PbCluster) -> Result<Box<dyn LoadBalancer>, String> {
    let mut lr = LeastRequest::default();
    if let Some(cluster::LbConfig::LeastRequestLbConfig(l)) = &c.lb_config {
        lr.choice_count = l.choice_count.map_or(2, |v| v.value);
        lr.active_request_bias = RuntimeDouble::double(l.active_request_bias.as_ref(), 1.0);
        lr.slow_start = l.slow_start_config.as_ref().and_then(SlowStart::compile);
    }
    Ok(Box::new(lr))
}

fn from_typed(any: &Any) -> Result<Box<dyn LoadBalancer>, String> {
    let l: typed::LeastRequest = legate_api::any::unpack(any)?;
    Ok(Box::new(LeastRequest {
        choice_count: l.choice_count.map_or(2, |v| v.value),
        active_request_bias: RuntimeDouble::double(l.active_request_bias.as_ref(), 1.0),
        slow_start: l.slow_start_config.as_ref().and_then(SlowStart::compile_typed),
    }))
}

impl LeastRequest {
    /// `choice_count` random samples; the one with the fewest active
    /// requests wins (the earlier sample on a tie).
    fn sampled(&self, hosts: &[Arc<Host>]) -> Arc<Host> {
        let mut best = &hosts[rand::random_range(0..hosts.len())];
        for _ in 1..self.choice_count.max(2) {
            let h = &hosts[rand::random_range(0..hosts.len())];
            if h.rq_active.load(Relaxed) < best.rq_active.load(Relaxed) {
                best = h;
            }
        }
        best.clone()
    }

    /// Weights differ: earliest-deadline-first where a host's weight, taken
    /// each time it is scheduled again, is
    /// weight / (active requests + 1)^active_request_bias.
    fn weighted(&self, at: &PickContext<'_>) -> Option<Arc<Host>> {
        let hosts = &at.level.hosts;
        let bias = self.active_request_bias.value();
        let slow = self.slow_start.as_ref().filter(|_| at.set.in_slow_start());
        let now = if slow.is_some() { clock_ms() } else { 0 };
        let effective = |h: &Host| {
            let active = h.rq_active.load(Relaxed) as f64 + 1.0;
            let w = h.weight as f64;
            let w = if bias == 1.0 {
                w / active
            } else if bias == 0.0 {
                w
            } else {
                w / active.powf(bias)
            };
            match &slow {
                Some(ss) => ss.weight(h, w, now),
                None => w,
            }
        };
        let mut st = at.workers.lock(at.set);
        let edf = st.edf[at.level_index].get_or_insert_with(|| Edf::new(hosts.iter().map(|h| effective(h))));
        edf.pick(|i| effective(&hosts[i])).map(|i| hosts[i].clone())
    }
}

impl LoadBalancer for LeastRequest {
    fn pick(&self, at: &PickContext<'_>) -> Option<Arc<Host>> {
        if at.level.equal_weights && !at.set.in_slow_start() {
            Some(self.sampled(&at.level.hosts))
        } else {
            self.weighted(at)
        }
    }

    fn pick_in_locality(&self, hosts: &[Arc<Host>], _next: &mut usize) -> usize {
        let (a, b) = (rand::random_range(0..hosts.len()), rand::random_range(0..hosts.len()));
        if hosts[b].rq_active.load(Relaxed) < hosts[a].rq_active.load(Relaxed) {
            b
        } else {
            a
        }
    }

    fn slow_start(&self) -> Option<SlowStart> {
        self.slow_start.clone()
    }
}
