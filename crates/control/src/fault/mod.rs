//! Fault tolerance: abnormal nodes detected, isolated and repaired.
//!
//! - [`detect`]: which nodes are abnormal and why (down, crash-looping,
//!   NACKing, lagging, silent, error-rate outlier), with evidence;
//! - [`repair`]: which abnormal nodes to restart through their agents, rate
//!   limited, and which repairs failed;
//! - [`board`]: what the controller holds and the API and alerts read.
//!
//! Every `period` (one second) the evaluator observes the fleet, agents and
//! monitor, hands the abnormal nodes to the controller (which leaves their
//! endpoints out of EDS as each service's isolation policy says, see
//! `resources::isolate`), and on the leader queues the restarts the planner
//! says are due. With several replicas on etcd the leader evaluates what
//! every replica sees and the others follow its board ([`shared`]).

pub mod board;
pub mod detect;
pub mod hds;
pub mod repair;
pub mod shared;
#[cfg(test)]
mod tests;

use crate::discovery::agents::Action;
use crate::discovery::health::EndpointHealth;
use crate::discovery::registry::Instance;
use crate::resources::isolate::Decision;
use crate::resources::kind::Kind;
use crate::resources::resource::of_kind;
use crate::resources::{mesh, registered};
use crate::state::controller::Controller;
use board::{NodeView, RepairCounts};
use detect::{Detector, Finding, Observation, Thresholds};
use repair::{AgentProgress, Planner, RepairSettings};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// The window over which proxies' error rates are compared.
pub const OUTLIER_WINDOW: Duration = Duration::from_secs(60);

/// How detection and repair run.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub period: Duration,
    pub thresholds: Thresholds,
    pub repair: RepairSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self { period: Duration::from_secs(1), thresholds: Thresholds::default(), repair: RepairSettings::default() }
    }
}

/// The fleet, agents and monitor now.
pub fn observe(ctrl: &Controller, now_ms: u64) -> Observation {
    Observation {
        now_ms,
        proxies: ctrl.fleet.list(),
        left: ctrl.fleet.left(detect::FORGET_AFTER),
        agents: ctrl.agents.list(),
        last_report_ms: ctrl.monitor.reporting(detect::FORGET_AFTER).into_iter().map(|(n, _, at)| (n, at)).collect(),
        figures: ctrl.monitor.proxies(OUTLIER_WINDOW),
        down: ctrl.checks.down(),
    }
}

/// Detection, isolation and repair between evaluations.
#[derive(Default)]
pub struct Evaluator {
    detector: Detector,
    planner: Planner,
    relay: shared::Relay,
}

impl Evaluator {
    /// One evaluation: the abnormal nodes' views and the restarts to send
    /// (only when `leader`).
    pub fn tick(
        &mut self,
        o: &Observation,
        isolation: &dyn Fn(&EndpointHealth) -> Vec<(String, Decision)>,
        s: &Settings,
        leader: bool,
    ) -> (EndpointHealth, Vec<NodeView>, Vec<repair::Restart>) {
        let findings = self.detector.observe(o, &s.thresholds);
        let health = EndpointHealth {
            abnormal: findings.iter().map(|f| (f.node.clone(), f.since_ms())).collect(),
            down: o.down.clone(),
        };
        let restarts = if leader {
            let agents: BTreeMap<String, AgentProgress> = o
                .agents
                .iter()
                .filter(|(_, a)| !a.stale)
                .map(|(n, a)| {
                    let progress =
                        AgentProgress { last_command: a.report.last_command, running: a.report.state == "running" };
                    (n.clone(), progress)
                })
                .collect();
            self.planner.plan(&health.abnormal, &agents, &s.repair, o.now_ms)
        } else {
            Vec::new()
        };
        let views = self.views(&findings, &isolation(&health));
        (health, views, restarts)
    }

    fn views(&self, findings: &[Finding], decisions: &[(String, Decision)]) -> Vec<NodeView> {
        let mut views: Vec<NodeView> = findings
            .iter()
            .map(|f| NodeView::new(f, self.planner.get(&f.node).cloned().unwrap_or(repair::Repair::Waiting)))
            .collect();
        for (service, d) in decisions {
            for (list, out) in [(&d.isolated, true), (&d.held, false)] {
                for (node, endpoint) in list {
                    if let Some(v) = views.iter_mut().find(|v| &v.node == node) {
                        let entry = format!("{service} {endpoint}");
                        if out {
                            v.isolated.push(entry)
                        } else {
                            v.held.push(entry)
                        }
                    }
                }
            }
        }
        views
    }

    /// Records the agent command queued for `node`'s repair.
    pub fn issued(&mut self, node: &str, id: u64) {
        self.planner.issued(node, id);
    }

    pub fn counts(&self) -> RepairCounts {
        RepairCounts { started: self.planner.started, repaired: self.planner.repaired, failed: self.planner.failed }
    }
}

/// What isolation does to every service now: the Services' endpoints, then
/// registry services no Service covers.
fn isolation(ctrl: &Controller, instances: &[Instance], health: &EndpointHealth) -> Vec<(String, Decision)> {
    let stored = ctrl.stored();
    let mut out = mesh::service::decisions(&stored.resources, instances, health);
    let services: BTreeSet<&String> = of_kind(&stored.resources, Kind::Service).map(|(n, _)| n).collect();
    for (svc, _, d) in registered::decisions(instances, health) {
        if !services.contains(&svc) {
            out.push((svc, d));
        }
    }
    for (name, r) in of_kind(&stored.resources, Kind::ClusterLoadAssignment) {
        if let Some((_, d)) = crate::resources::isolate::assignment(&r.doc.spec, health) {
            out.push((name.clone(), d));
        }
    }
    out
}

/// Evaluates every `settings.period` until the process ends.
pub fn start(ctrl: Arc<Controller>, settings: Settings) {
    tokio::spawn(async move {
        let mut evaluator = Evaluator::default();
        let mut tick = tokio::time::interval(settings.period.max(Duration::from_millis(50)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            evaluate(&ctrl, &mut evaluator, &settings).await;
        }
    });
}

/// One evaluation: of what this replica sees (SQLite), or with several
/// replicas on etcd, of what all of them see on the leader, the others
/// taking the leader's board (see `shared`).
async fn evaluate(ctrl: &Arc<Controller>, evaluator: &mut Evaluator, settings: &Settings) {
    let now = crate::clock::unix_ms();
    let local = observe(ctrl, now);
    let leader = ctrl.is_leader();
    let etcd = ctrl.store().etcd().is_some();
    let o = if etcd {
        let (key, slice) = (shared::slice_key(ctrl.replica_id()), serde_json::to_vec(&shared::Slice::of(&local)));
        if let Ok(slice) = slice {
            shared::on_store(ctrl, move |s| s.put_value(key, slice)).await;
        }
        evaluator.relay.serve(ctrl, now).await;
        if leader {
            let slices = shared::on_store(ctrl, |s| s.values_under(shared::slices_prefix())).await.unwrap_or_default();
            let slices = slices.iter().filter_map(|v| serde_json::from_slice(v).ok()).collect();
            shared::merge(slices, now)
        } else {
            let board = shared::on_store(ctrl, |s| s.value(shared::board_key())).await.flatten();
            let board = board.and_then(|v| serde_json::from_slice::<shared::Board>(&v).ok());
            if let Some(b) = board.and_then(|b| shared::fresh_board(b, now)) {
                ctrl.set_health(b.health);
                ctrl.faults.set(b.views, b.counts);
                return;
            }
            local
        }
    } else {
        local
    };
    if etcd && leader {
        for (node, id) in evaluator.relay.answers(ctrl).await {
            evaluator.issued(&node, id);
        }
    }
    let instances = ctrl.instances();
    let isolate = |h: &EndpointHealth| isolation(ctrl, &instances, h);
    let (health, views, restarts) = evaluator.tick(&o, &isolate, settings, leader);
    if etcd && leader {
        let board = shared::Board {
            at_ms: now,
            leader: ctrl.replica_id().to_string(),
            health: health.clone(),
            views: views.clone(),
            counts: evaluator.counts(),
        };
        if let Ok(v) = serde_json::to_vec(&board) {
            shared::on_store(ctrl, move |s| s.put_value(shared::board_key(), v)).await;
        }
    }
    ctrl.set_health(health);
    ctrl.faults.set(views, evaluator.counts());
    for r in restarts {
        if etcd && !shared::Relay::is_local(ctrl, &r.node) {
            tracing::warn!(node = r.node, "repair: asking the replica its agent reports to for a restart");
            evaluator.relay.request(ctrl, &r.node, now).await;
            let _ = ctrl.store().audit("repair", "restart", &r.node, true, "abnormal node (another replica's agent)");
            continue;
        }
        let id = ctrl.agents.command(&r.node, Action::Restart, "repair");
        tracing::warn!(node = r.node, command = ?id, "repair: restarting an abnormal node through its agent");
        if let Some(id) = id {
            evaluator.issued(&r.node, id);
        }
        let _ = ctrl.store().audit("repair", "restart", &r.node, id.is_some(), "abnormal node");
    }
}
