//! A cluster's hosts as they change: the current `HostSet`, replaced whole
//! when DNS or EDS sends new hosts and rebuilt when a host's health changes
//! (active checks, outlier ejection), with the membership stats that follow
//! it. Requests read it with one `ArcSwap` load.

use crate::stats::{Counter, Gauge};
use crate::upstream::cluster_stats::ClusterStats;
use crate::upstream::endpoints::HostEntry;
use crate::upstream::host::Host;
use crate::upstream::host_set::{HostSet, LbParams};
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

pub struct Membership {
    set: ArcSwap<HostSet>,
    params: LbParams,
    /// The cluster has active health checks: a new host waits for its first.
    health_checked: bool,
    total: Arc<Gauge>,
    healthy: Arc<Gauge>,
    change: Arc<Counter>,
    update_attempt: Arc<Counter>,
    update_success: Arc<Counter>,
}

impl Membership {
    /// The cluster's first hosts (its static ones, or none).
    pub fn new(hosts: Vec<Arc<Host>>, params: LbParams, health_checked: bool, stats: &ClusterStats) -> Self {
        if health_checked {
            for h in hosts.iter().filter(|h| h.actively_checked()) {
                h.mark_pending();
            }
        }
        let set = HostSet::new(hosts, &params);
        stats.membership_total.set(set.all.len() as i64);
        stats.membership_healthy.set(set.healthy as i64);
        Self {
            set: ArcSwap::from_pointee(set),
            params,
            health_checked,
            total: stats.membership_total.clone(),
            healthy: stats.membership_healthy.clone(),
            change: stats.membership_change.clone(),
            update_attempt: stats.update_attempt.clone(),
            update_success: stats.update_success.clone(),
        }
    }

    /// The current host set.
    pub fn load(&self) -> arc_swap::Guard<Arc<HostSet>> {
        self.set.load()
    }

    pub fn load_full(&self) -> Arc<HostSet> {
        self.set.load_full()
    }

    /// Installs `set` as it is (a cluster taking over its predecessor's hosts).
    pub fn store(&self, set: Arc<HostSet>) {
        self.set.store(set);
    }

    /// Replaces the host set, keeping the existing `Host` (and its counters) of
    /// every address that stays.
    pub fn update(&self, new_hosts: Vec<HostEntry>) {
        let old = self.set.load();
        let by_addr: HashMap<SocketAddr, &Arc<Host>> = old.all.iter().map(|h| (h.addr, h)).collect();
        let mut changed = new_hosts.len() != old.all.len();
        let hosts: Vec<Arc<Host>> = new_hosts
            .into_iter()
            .map(|(addr, name, w, p, extra)| match by_addr.get(&addr) {
                Some(h)
                    if h.weight == w.max(1)
                        && h.placement() == p
                        && h.hostname == name
                        && h.metadata == extra.metadata
                        && h.health_check == extra.health_check
                        && h.pipe == extra.pipe =>
                {
                    (*h).clone()
                }
                _ => {
                    changed = true;
                    let h = Arc::new(Host::new(addr, name, w, p).with_extra(extra));
                    if self.health_checked && h.actively_checked() {
                        h.mark_pending();
                    }
                    h
                }
            })
            .collect();
        self.update_attempt.inc();
        self.update_success.inc();
        if !changed {
            return;
        }
        self.change.inc();
        self.total.set(hosts.len() as i64);
        let set = HostSet::new(hosts, &self.params);
        self.healthy.set(set.healthy as i64);
        self.set.store(Arc::new(set));
    }

    /// Rebuilds the set requests go to after a host's health changed.
    pub fn refresh_health(&self) {
        let set = HostSet::new(self.set.load().all.clone(), &self.params);
        self.healthy.set(set.healthy as i64);
        self.set.store(Arc::new(set));
    }
}
