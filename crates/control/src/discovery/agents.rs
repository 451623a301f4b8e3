//! Node agents (`legate agent`): what each reports of the proxy process it
//! supervises, and the commands waiting for it. An agent reports every few
//! seconds and takes its pending commands in the answer, so a node needs no
//! inbound port. Kept in memory, per replica, as the fleet is: an agent's
//! next report fills it again after a restart of the control plane.

use crate::clock::now;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// What an agent says about its proxy process.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AgentReport {
    /// `starting`, `running`, `restarting`, `crash-loop`, `draining` or `stopped`.
    pub state: String,
    /// The proxy's pid, when one runs.
    #[serde(default)]
    pub pid: Option<u32>,
    /// Restarts since the agent started (crashes, failed health checks, hot restarts).
    #[serde(default)]
    pub restarts: u64,
    /// The hot restart epoch of the running process.
    #[serde(default)]
    pub epoch: u32,
    /// The hot restart family (Envoy's `--base-id`).
    #[serde(default)]
    pub base_id: u64,
    /// How the last process ended: `exit code N`, `signal N`, `health check`...
    #[serde(default)]
    pub last_exit: Option<String>,
    /// Seconds since the running process started.
    #[serde(default)]
    pub uptime_s: u64,
    /// `legate` or `envoy`.
    #[serde(default)]
    pub proxy: String,
    #[serde(default)]
    pub version: String,
    /// The node's cluster.
    #[serde(default)]
    pub cluster: String,
    /// The id of the last command the agent carried out.
    #[serde(default)]
    pub last_command: Option<u64>,
    /// How often the agent reports, in milliseconds.
    #[serde(default)]
    pub interval_ms: u64,
}

/// An action asked of an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// A hot restart: epoch N+1 takes the sockets over from epoch N.
    Restart,
    /// Fail the proxy's health checks so traffic moves away.
    Drain,
}

impl Action {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "restart" => Some(Self::Restart),
            "drain" => Some(Self::Drain),
            _ => None,
        }
    }
}

/// A command waiting for (or delivered to) an agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentCommand {
    pub id: u64,
    pub action: Action,
    pub requested_by: String,
    pub at: String,
}

/// One node's agent as the control plane knows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentStatus {
    #[serde(flatten)]
    pub report: AgentReport,
    pub reported_at: String,
    /// No report for three of the agent's intervals (at least 10 s): the
    /// agent (or its host, or the way to it) is down, and what it said last
    /// may no longer hold.
    pub stale: bool,
    /// Commands not yet handed to the agent.
    pub pending: Vec<AgentCommand>,
    #[serde(skip)]
    received: Option<std::time::Instant>,
}

impl AgentStatus {
    fn with_staleness(mut self) -> Self {
        let limit = std::time::Duration::from_millis(self.report.interval_ms.saturating_mul(3)).max(STALE_AFTER);
        self.stale = self.received.is_none_or(|t| t.elapsed() > limit);
        self
    }
}

/// The least time without a report before an agent is shown stale.
const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Default)]
pub struct Agents {
    next: AtomicU64,
    nodes: Mutex<BTreeMap<String, AgentStatus>>,
}

impl Agents {
    /// Records `report` for `node` and hands over the commands waiting for it.
    pub fn report(&self, node: &str, report: AgentReport) -> Vec<AgentCommand> {
        let mut nodes = self.lock();
        let entry = nodes.entry(node.to_string()).or_insert_with(|| AgentStatus {
            report: AgentReport::default(),
            reported_at: String::new(),
            stale: false,
            pending: Vec::new(),
            received: None,
        });
        entry.report = report;
        entry.reported_at = now();
        entry.received = Some(std::time::Instant::now());
        std::mem::take(&mut entry.pending)
    }

    /// Queues `action` for `node`'s agent: its id, or None when no agent of
    /// that node has reported.
    pub fn command(&self, node: &str, action: Action, by: &str) -> Option<u64> {
        let mut nodes = self.lock();
        let entry = nodes.get_mut(node)?;
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        entry.pending.push(AgentCommand { id, action, requested_by: by.to_string(), at: now() });
        Some(id)
    }

    pub fn get(&self, node: &str) -> Option<AgentStatus> {
        self.lock().get(node).cloned().map(AgentStatus::with_staleness)
    }

    /// Every node with an agent, by node id.
    pub fn list(&self) -> BTreeMap<String, AgentStatus> {
        self.lock().iter().map(|(k, v)| (k.clone(), v.clone().with_staleness())).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, AgentStatus>> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_wait_for_the_next_report_and_are_handed_over_once() {
        let agents = Agents::default();
        assert_eq!(agents.command("n1", Action::Restart, "me"), None, "no agent has reported yet");
        let report = AgentReport { state: "running".into(), pid: Some(42), ..Default::default() };
        assert!(agents.report("n1", report.clone()).is_empty());
        let id = agents.command("n1", Action::Restart, "me").expect("queued");
        assert_eq!(agents.get("n1").map(|a| a.pending.len()), Some(1));
        let handed = agents.report("n1", report.clone());
        assert_eq!(handed.len(), 1);
        assert_eq!((handed[0].id, handed[0].action), (id, Action::Restart));
        assert!(agents.report("n1", report).is_empty());
        assert_eq!(agents.get("n1").and_then(|a| a.report.pid), Some(42));
        assert_eq!(agents.get("n1").map(|a| a.stale), Some(false));
    }
}
