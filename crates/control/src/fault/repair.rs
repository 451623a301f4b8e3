//! The repair planner: a node abnormal for longer than `after` is restarted
//! through its agent (a hot restart), at most `max_concurrent` repairs at a
//! time and at least `interval` between two repairs started, fleet-wide. A
//! node still abnormal `verify` after its restart (or one without a live
//! agent) has failed repair: it stays isolated, is not restarted again, and
//! the `repair_failed` alert metric counts it, until it is normal again.
//!
//! The verify time runs from when the agent reports the restart carried out
//! (its last command is the repair's and its proxy runs again), so a slow
//! start is not taken for a failed repair; an agent that does not carry it
//! out within `verify` fails the repair too.
//!
//! Pure: [`Planner::plan`] takes the abnormal nodes and what their live
//! agents report, and says which to restart; the caller queues the commands
//! and tells the planner their ids ([`Planner::issued`]).

use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Fleet-wide repair settings.
#[derive(Debug, Clone, Copy)]
pub struct RepairSettings {
    /// How long a node is abnormal before it is restarted; None: never.
    pub after: Option<Duration>,
    /// Repairs in progress (restarted, not yet verified) at most.
    pub max_concurrent: usize,
    /// The least time between two repairs started.
    pub interval: Duration,
    /// How long after its restart a node has to be normal again.
    pub verify: Duration,
}

impl Default for RepairSettings {
    fn default() -> Self {
        Self {
            after: Some(Duration::from_secs(60)),
            max_concurrent: 1,
            interval: Duration::from_secs(30),
            verify: Duration::from_secs(60),
        }
    }
}

/// Where a node's repair stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Repair {
    /// Abnormal, not yet due or waiting for a free slot.
    Waiting,
    /// Repairs are off: the node stays isolated until it recovers.
    Off,
    /// Restart queued at `at_ms` as agent command `command`; carried out
    /// (the proxy runs again) at `done_ms`, verified `verify` after that.
    Restarting { at_ms: u64, command: Option<u64>, done_ms: Option<u64> },
    /// A restart did not help, or none was possible.
    Failed { at_ms: u64, reason: String },
}

/// What a node's live agent reports: its last command carried out, and
/// whether its proxy runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AgentProgress {
    pub last_command: Option<u64>,
    pub running: bool,
}

/// A node whose repair is due: restart it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restart {
    pub node: String,
}

/// Repairs in progress and their outcomes.
#[derive(Debug, Default)]
pub struct Planner {
    nodes: BTreeMap<String, Repair>,
    last_started_ms: Option<u64>,
    /// Repairs started, nodes normal again after a restart, repairs failed.
    pub started: u64,
    pub repaired: u64,
    pub failed: u64,
}

impl Planner {
    /// One step: `abnormal` (node to abnormal since, Unix ms), `agents` (the
    /// nodes with an agent that reports, and what it says). Returns the
    /// restarts to send.
    pub fn plan(
        &mut self,
        abnormal: &BTreeMap<String, u64>,
        agents: &BTreeMap<String, AgentProgress>,
        s: &RepairSettings,
        now_ms: u64,
    ) -> Vec<Restart> {
        let recovered: Vec<String> = self.nodes.keys().filter(|n| !abnormal.contains_key(*n)).cloned().collect();
        for node in recovered {
            if let Some(Repair::Restarting { .. }) = self.nodes.remove(&node) {
                self.repaired += 1;
                tracing::info!(node, "repair: the node is normal again after its restart");
            }
        }
        let ms = |d: Duration| d.as_millis() as u64;
        for (node, r) in self.nodes.iter_mut() {
            let Repair::Restarting { at_ms, command, done_ms } = r else { continue };
            let agent = agents.get(node).copied().unwrap_or_default();
            if done_ms.is_none() && agent.running && command.is_some_and(|c| agent.last_command >= Some(c)) {
                *done_ms = Some(now_ms);
            }
            let verify = humantime::format_duration(s.verify);
            let reason = match done_ms {
                Some(done) if now_ms.saturating_sub(*done) >= ms(s.verify) => {
                    format!("still abnormal {verify} after its restart")
                }
                None if now_ms.saturating_sub(*at_ms) >= ms(s.verify) => {
                    format!("its agent did not carry out the restart within {verify}")
                }
                _ => continue,
            };
            tracing::warn!(node = node.as_str(), "repair failed: {reason}");
            *r = Repair::Failed { at_ms: now_ms, reason };
            self.failed += 1;
        }
        let mut restarts = Vec::new();
        let mut busy = self.nodes.values().filter(|r| matches!(r, Repair::Restarting { .. })).count();
        // The longest abnormal first.
        let mut due: Vec<(u64, &String)> = abnormal.iter().map(|(n, since)| (*since, n)).collect();
        due.sort();
        for (since, node) in due {
            let state = self.nodes.entry(node.clone()).or_insert(Repair::Waiting);
            let Some(after) = s.after else {
                *state = Repair::Off;
                continue;
            };
            if !matches!(state, Repair::Waiting | Repair::Off) {
                continue;
            }
            *state = Repair::Waiting;
            let spaced = self.last_started_ms.is_none_or(|t| now_ms.saturating_sub(t) >= ms(s.interval));
            if now_ms.saturating_sub(since) < ms(after) || busy >= s.max_concurrent || !spaced {
                continue;
            }
            if !agents.contains_key(node) {
                *state = Repair::Failed { at_ms: now_ms, reason: "no agent reports for this node".into() };
                self.failed += 1;
                continue;
            }
            *state = Repair::Restarting { at_ms: now_ms, command: None, done_ms: None };
            self.last_started_ms = Some(now_ms);
            self.started += 1;
            busy += 1;
            restarts.push(Restart { node: node.clone() });
        }
        restarts
    }

    /// Records the agent command that carries out `node`'s restart.
    pub fn issued(&mut self, node: &str, id: u64) {
        if let Some(Repair::Restarting { command, .. }) = self.nodes.get_mut(node) {
            *command = Some(id);
        }
    }

    /// A node's repair, if it is abnormal.
    pub fn get(&self, node: &str) -> Option<&Repair> {
        self.nodes.get(node)
    }
}
