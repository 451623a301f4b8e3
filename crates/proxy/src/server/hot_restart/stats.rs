//! Stats carried from parent to child, as Envoy's `StatMerger` does:
//! counters add the parent's increase since the last merge, so the child's
//! totals go on from the parent's; gauges add the parent's current value
//! (`downstream_cx_active` counts both processes' connections while the
//! parent drains) and that contribution is taken back when the parent
//! exits. Gauges Envoy declares `NeverImport` (the server's own state) are
//! not imported. Histograms are not carried, as in Envoy.

use crate::stats::Store;
use std::collections::{BTreeMap, HashMap};

/// Gauges that describe this process only (Envoy's `NeverImport`).
fn never_import(name: &str) -> bool {
    const SERVER_OWN: &[&str] = &[
        "server.concurrency",
        "server.hot_restart_epoch",
        "server.live",
        "server.state",
        "server.uptime",
        "server.initialization_time_ms",
        "server.days_until_first_cert_expiring",
        "server.seconds_until_first_ocsp_response_expiring",
        "cluster_manager.active_clusters",
        "cluster_manager.warming_clusters",
    ];
    SERVER_OWN.contains(&name) || name.starts_with("listener_manager.total_listeners_") || name.starts_with("runtime.")
}

/// What the child has taken from its parent so far.
#[derive(Default)]
pub struct Merger {
    counters: HashMap<String, u64>,
    gauges: HashMap<String, i64>,
}

impl Merger {
    /// Adds the parent's values read now.
    pub fn merge(&mut self, store: &Store, counters: &BTreeMap<String, u64>, gauges: &BTreeMap<String, i64>) {
        for (name, &value) in counters {
            let last = self.counters.entry(name.clone()).or_insert(0);
            // A parent's counter never goes down; a smaller value is ignored.
            let delta = value.saturating_sub(*last);
            if delta > 0 {
                store.counter(name).add(delta);
                *last = value;
            }
        }
        for (name, &value) in gauges {
            if never_import(name) {
                continue;
            }
            let last = self.gauges.entry(name.clone()).or_insert(0);
            store.gauge(name).add(value - *last);
            *last = value;
        }
    }

    /// The parent is gone: its gauge contributions leave with it.
    pub fn finish(&mut self, store: &Store) {
        for (name, value) in self.gauges.drain() {
            store.gauge(&name).add(-value);
        }
    }
}

/// The parent's side: every counter and gauge by name.
pub fn snapshot(store: &Store) -> (BTreeMap<String, u64>, BTreeMap<String, i64>) {
    let (mut counters, mut gauges) = (BTreeMap::new(), BTreeMap::new());
    for (name, stat) in store.all() {
        match stat {
            crate::stats::Stat::Counter(c) => {
                counters.insert(name, c.value());
            }
            crate::stats::Stat::Gauge(g) => {
                gauges.insert(name, g.value());
            }
            crate::stats::Stat::Histogram(_) => {}
        }
    }
    (counters, gauges)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_accumulate_and_gauges_leave_with_the_parent() {
        let child = Store::default();
        child.counter("http.in.downstream_rq_total").add(5);
        child.gauge("http.in.downstream_cx_active").set(2);
        child.gauge("server.live").set(1);
        let mut m = Merger::default();
        let c = |v| BTreeMap::from([("http.in.downstream_rq_total".to_string(), v)]);
        let g = |v| BTreeMap::from([("http.in.downstream_cx_active".to_string(), v), ("server.live".to_string(), 1)]);
        m.merge(&child, &c(100), &g(7));
        assert_eq!(child.counter("http.in.downstream_rq_total").value(), 105);
        assert_eq!(child.gauge("http.in.downstream_cx_active").value(), 9);
        m.merge(&child, &c(130), &g(3));
        assert_eq!(child.counter("http.in.downstream_rq_total").value(), 135);
        assert_eq!(child.gauge("http.in.downstream_cx_active").value(), 5);
        assert_eq!(child.gauge("server.live").value(), 1);
        m.finish(&child);
        assert_eq!(child.counter("http.in.downstream_rq_total").value(), 135);
        assert_eq!(child.gauge("http.in.downstream_cx_active").value(), 2);
    }
}
