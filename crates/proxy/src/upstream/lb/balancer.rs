//! A cluster's balancer: its policy and each worker's state, and the pick
//! every request makes — a priority level by its load, then (for
//! locality-weighted clusters) a locality by earliest-deadline-first over
//! the localities' effective weights, then a host by the policy.

use crate::stats::Counter;
use crate::upstream::host::Host;
use crate::upstream::host_set::{HostSet, Level};
use crate::upstream::lb::edf::Edf;
use crate::upstream::lb::policy::{LoadBalancer, PickContext};
use crate::upstream::lb::worker::WorkerStates;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Balancer {
    policy: Box<dyn LoadBalancer>,
    workers: WorkerStates,
    /// `lb_healthy_panic`: picks from a level in panic.
    healthy_panic: Arc<Counter>,
}

impl Balancer {
    pub fn new(policy: Box<dyn LoadBalancer>, workers: usize, healthy_panic: Arc<Counter>) -> Self {
        Self { policy, workers: WorkerStates::new(workers), healthy_panic }
    }

    /// A host of `set` for a request, or `None` when there is none. Cost: a
    /// draw for the priority level when load is split across levels, plus
    /// the policy's own work.
    /// Whether the policy picks hosts by the request's hash (ring hash, Maglev).
    pub fn hashes(&self) -> bool {
        self.policy.hashing().is_some()
    }

    /// Whether the policy learns from response times.
    pub fn times_responses(&self) -> bool {
        self.policy.times_responses()
    }

    /// A response (or failure) from `host`, `rtt` after the request was sent.
    pub fn observe(&self, host: &Host, rtt: Duration, now: Instant) {
        self.policy.observe(host, rtt, now);
    }

    pub fn pick(&self, set: &Arc<HostSet>, hash: Option<u64>) -> Option<Arc<Host>> {
        let (li, level) = set.level(hash)?;
        if level.panic {
            self.healthy_panic.inc();
        }
        if !level.localities.is_empty() {
            return self.pick_in_locality(set, li, level);
        }
        let hosts = &level.hosts;
        if hosts.len() <= 1 {
            return hosts.first().cloned();
        }
        self.policy.pick(&PickContext { set, level, level_index: li, hash, workers: &self.workers })
    }

    /// Locality-weighted pick: a locality by earliest-deadline-first over
    /// the effective weights, then a host in it as the policy picks there.
    fn pick_in_locality(&self, set: &Arc<HostSet>, li: usize, level: &Level) -> Option<Arc<Host>> {
        let mut st = self.workers.lock(set);
        let localities = &level.localities;
        let edf = st.locality_edf[li].get_or_insert_with(|| Edf::new(localities.iter().map(|l| l.weight)));
        let index = edf.pick(|i| localities[i].weight)?;
        let hosts = &localities[index].hosts;
        let i = self.policy.pick_in_locality(hosts, &mut st.locality_rr[li][index]);
        hosts.get(i).cloned()
    }
}
