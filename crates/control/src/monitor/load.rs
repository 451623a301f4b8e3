//! Load reports (LRS): what each proxy sent per cluster, locality and
//! endpoint over its last interval, and the sums since it connected.

use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Requests over one interval (LRS counts are per interval, not cumulative).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Requests {
    pub success: u64,
    pub error: u64,
    pub issued: u64,
    /// In flight at the end of the interval (a gauge).
    pub in_progress: u64,
}

impl Requests {
    fn add(&mut self, o: &Requests) {
        self.success += o.success;
        self.error += o.error;
        self.issued += o.issued;
        self.in_progress = o.in_progress;
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EndpointLoad {
    pub address: String,
    pub last: Requests,
    pub total: Requests,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LocalityLoad {
    pub region: String,
    pub zone: String,
    pub sub_zone: String,
    pub priority: u32,
    pub last: Requests,
    pub total: Requests,
    pub endpoints: Vec<EndpointLoad>,
}

/// One cluster's load as one proxy reports it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ClusterLoad {
    pub node: String,
    pub cluster: String,
    pub service_name: String,
    /// Unix milliseconds of the last report, and the interval it covers.
    pub reported_ms: u64,
    pub interval_ms: u64,
    pub dropped_last: u64,
    pub dropped_total: u64,
    pub localities: Vec<LocalityLoad>,
}

/// The latest load per (node, cluster, service name), with running sums.
#[derive(Default)]
pub struct LoadBoard {
    by: Mutex<BTreeMap<(String, String, String), ClusterLoad>>,
}

impl LoadBoard {
    /// Takes one cluster's report in (its `last` figures filled, `total` empty).
    pub fn record(&self, mut load: ClusterLoad) {
        let mut by = self.by.lock().unwrap_or_else(|e| e.into_inner());
        let key = (load.node.clone(), load.cluster.clone(), load.service_name.clone());
        if let Some(prev) = by.get(&key) {
            load.dropped_total = prev.dropped_total;
            for loc in &mut load.localities {
                let old = prev.localities.iter().find(|l| {
                    (&l.region, &l.zone, &l.sub_zone, l.priority)
                        == (&loc.region, &loc.zone, &loc.sub_zone, loc.priority)
                });
                let Some(old) = old else { continue };
                loc.total = old.total.clone();
                for ep in &mut loc.endpoints {
                    if let Some(o) = old.endpoints.iter().find(|e| e.address == ep.address) {
                        ep.total = o.total.clone();
                    }
                }
            }
        }
        load.dropped_total += load.dropped_last;
        for loc in &mut load.localities {
            let last = loc.last.clone();
            loc.total.add(&last);
            for ep in &mut loc.endpoints {
                let last = ep.last.clone();
                ep.total.add(&last);
            }
        }
        by.insert(key, load);
    }

    pub fn list(&self) -> Vec<ClusterLoad> {
        self.by.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }
}
