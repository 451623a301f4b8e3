//! A staged rollout over several replicas sharing etcd. The rollout's
//! record is in the store (`state::staged`), so every replica serves the
//! canary the staged revision and the others the previous one; what only
//! one replica knows — which proxies stream from it, their ACKs, what they
//! reported since the staging — each replica writes to the store every
//! 250 ms (`sync::replication`), and the leader judges on all of it. On
//! SQLite there are no other replicas and this is the controller's own view.

use crate::rollouts::board::{AckState, Record, ReplicaReport, SharedRollout};
use crate::rollouts::judge::{acks, ProxyFigures};
use crate::state::controller::Controller;

/// What this replica tells the others now.
pub fn local_report(ctrl: &Controller) -> ReplicaReport {
    let fleet = ctrl.fleet.list();
    let rollout = ctrl.staged_rollout().map(|r| {
        let here: Vec<String> = r.canary.iter().filter(|c| fleet.iter().any(|p| &p.node.id == *c)).cloned().collect();
        SharedRollout {
            revision: r.revision,
            acks: acks(&here, &fleet, r.revision),
            figures: ctrl.monitor.mark_by_node(r.revision),
        }
    });
    let ids = |keep: fn(&crate::discovery::fleet::ProxyStatus) -> bool| -> Vec<String> {
        let mut v: Vec<String> = fleet.iter().filter(|p| keep(p)).map(|p| p.node.id.clone()).collect();
        v.dedup();
        v
    };
    let (nacked, lagging) = (ids(|p| p.nacked()), ids(|p| p.lagging()));
    let heard = ctrl.monitor.last_heard(&fleet);
    let mut proxies: Vec<_> = fleet.into_iter().map(|p| p.node).collect();
    proxies.sort_by(|a, b| a.id.cmp(&b.id));
    proxies.dedup_by(|a, b| a.id == b.id);
    let at_ms = crate::clock::unix_ms();
    ReplicaReport { replica: ctrl.replica_id().to_string(), at_ms, proxies, rollout, nacked, lagging, heard }
}

/// Every replica's view of one staged rollout: this replica's fleet and
/// monitor, and the other replicas' reports as last written.
pub struct Fleetwide<'a> {
    ctrl: &'a Controller,
    revision: u64,
    remote: Vec<SharedRollout>,
}

impl<'a> Fleetwide<'a> {
    pub fn new(ctrl: &'a Controller, record: &Record) -> Self {
        let remote = ctrl
            .remote_reports()
            .into_iter()
            .filter_map(|r| r.rollout)
            .filter(|r| r.revision == record.revision)
            .collect();
        Self { ctrl, revision: record.revision, remote }
    }

    /// Each canary proxy's ACK state: from this replica when it streams
    /// here, else from the replica it streams from.
    pub fn acks(&self, canary: &[String]) -> Vec<AckState> {
        let local = acks(canary, &self.ctrl.fleet.list(), self.revision);
        local
            .into_iter()
            .map(|a| {
                if a.nack.as_deref() != Some("not connected") {
                    return a;
                }
                self.remote.iter().flat_map(|r| r.acks.iter()).find(|r| r.node == a.node).cloned().unwrap_or(a)
            })
            .collect()
    }
}

impl ProxyFigures for Fleetwide<'_> {
    /// What `nodes` reported since the staging, to any replica (each
    /// report reaches one replica, so the sums do not overlap).
    fn group(&self, nodes: &[String]) -> (u64, u64, Option<f64>) {
        let mut agg = self.ctrl.monitor.since_mark(self.revision, nodes);
        for r in &self.remote {
            for n in nodes {
                if let Some(a) = r.figures.get(n) {
                    agg.add(a);
                }
            }
        }
        (agg.requests, agg.errors, agg.latency.quantile(0.99))
    }
}
