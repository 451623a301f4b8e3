//! ROUND_ROBIN: hosts in turn; when their weights differ, or slow start
//! scales them, earliest-deadline-first over the weights. Inside a locality
//! (locality-weighted clusters), plain turns.

use crate::upstream::clock::clock_ms;
use crate::upstream::host::{Host, SlowStart};
use crate::upstream::lb::edf::Edf;
use crate::upstream::lb::policy::{LoadBalancer, PickContext, Policy};
use legate_api::pb::envoy::config::cluster::v3::{cluster, Cluster as PbCluster};
use legate_api::pb::envoy::extensions::load_balancing_policies::round_robin::v3 as typed;
use legate_api::pb::google::protobuf::Any;
use std::sync::Arc;

pub const POLICY: Policy = Policy {
    lb_policy: Some(cluster::LbPolicy::RoundRobin),
    type_name: "envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin",
    from_cluster,
    from_typed,
};

pub struct RoundRobin {
    slow_start: Option<SlowStart>,
}

fn from_cluster(c: &PbCluster) -> Result<Box<dyn LoadBalancer>, String> {
    let slow_start = match &c.lb_config {
        Some(cluster::LbConfig::RoundRobinLbConfig(r)) => r.slow_start_config.as_ref().and_then(SlowStart::compile),
        _ => None,
    };
    Ok(Box::new(RoundRobin { slow_start }))
}

fn from_typed(any: &Any) -> Result<Box<dyn LoadBalancer>, String> {
    let r: typed::RoundRobin = legate_api::any::unpack(any)?;
    Ok(Box::new(RoundRobin { slow_start: r.slow_start_config.as_ref().and_then(SlowStart::compile_typed) }))
}

impl LoadBalancer for RoundRobin {
    fn pick(&self, at: &PickContext<'_>) -> Option<Arc<Host>> {
        let (li, hosts) = (at.level_index, &at.level.hosts);
        let slow = self.slow_start.as_ref().filter(|_| at.set.in_slow_start());
        let mut st = at.workers.lock(at.set);
        if at.level.equal_weights && slow.is_none() {
            let i = st.rr_next[li] % hosts.len();
            st.rr_next[li] = st.rr_next[li].wrapping_add(1);
            return Some(hosts[i].clone());
        }
        // Weights differ, or slow start scales them: each host's weight is
        // taken when it is scheduled (again), as in Envoy.
        let now = if slow.is_some() { clock_ms() } else { 0 };
        let weight = |h: &Host| match &slow {
            Some(ss) => ss.weight(h, h.weight as f64, now),
            None => h.weight as f64,
        };
        let edf = st.edf[li].get_or_insert_with(|| Edf::new(hosts.iter().map(|h| weight(h))));
        edf.pick(|i| weight(&hosts[i])).map(|i| hosts[i].clone())
    }

    fn pick_in_locality(&self, hosts: &[Arc<Host>], next: &mut usize) -> usize {
        *next = next.wrapping_add(1);
        (*next - 1) % hosts.len()
    }

    fn slow_start(&self) -> Option<SlowStart> {
        self.slow_start.clone()
    }
}
