//! Several replicas on etcd decide as one: each replica writes what it sees
//! of its own proxies and agents (its [`Slice`]: xDS status, agent reports,
//! metrics reports, per-proxy figures, HDS results) under
//! `/legate/fault/slices/<replica>` every evaluation; the leader merges the
//! fresh slices into one [`Observation`], evaluates it, and writes the
//! [`Board`] (abnormal nodes with since, endpoints down, the views and the
//! repair counts) to `/legate/fault/board`; the other replicas isolate and
//! show what the board says. A slice older than [`FRESH`] is left out (its
//! replica is gone: its proxies count as down until they reconnect
//! elsewhere); without a fresh board a replica evaluates what it sees.
//!
//! Repairs: a restart the leader plans for a node whose agent reports to
//! another replica is asked through the store (`restarts/<node>`); the
//! replica the agent reports to queues the agent command and answers with
//! its id (`issued/<node>`), which the leader's planner then follows in the
//! agent's reports, as for its own agents ([`Relay`]).

use super::board::{NodeView, RepairCounts};
use super::detect::Observation;
use crate::discovery::agents::Action;
use crate::discovery::agents::AgentStatus;
use crate::discovery::fleet::{ProxyStatus, TypeStatus};
use crate::discovery::health::EndpointHealth;
use crate::discovery::node::NodeInfo;
use crate::monitor::ProxyFigures;
use crate::state::controller::Controller;
use crate::store::etcd::FAULT_PREFIX;
use crate::store::{EtcdStore, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// How old a slice or board may be and still count.
pub const FRESH: Duration = Duration::from_secs(5);

/// One proxy stream as a slice carries it: what the detector reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SharedProxy {
    pub node: NodeInfo,
    pub types: BTreeMap<String, TypeStatus>,
}

/// What one replica sees, at `at_ms`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Slice {
    pub at_ms: u64,
    pub proxies: Vec<SharedProxy>,
    /// Nodes whose last stream on this replica ended (see `Observation::left`).
    #[serde(default)]
    pub left: BTreeMap<String, (String, u64)>,
    pub agents: BTreeMap<String, AgentStatus>,
    pub last_report_ms: BTreeMap<String, u64>,
    pub figures: Vec<ProxyFigures>,
    pub down: BTreeSet<(String, String)>,
}

impl Slice {
    pub fn of(o: &Observation) -> Self {
        Slice {
            at_ms: o.now_ms,
            proxies: o.proxies.iter().map(|p| SharedProxy { node: p.node.clone(), types: p.types.clone() }).collect(),
            left: o.left.clone(),
            agents: o.agents.clone(),
            last_report_ms: o.last_report_ms.clone(),
            figures: o.figures.clone(),
            down: o.down.clone(),
        }
    }
}

/// What the leader decided, at `at_ms`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Board {
    pub at_ms: u64,
    pub leader: String,
    pub health: EndpointHealth,
    pub views: Vec<NodeView>,
    pub counts: RepairCounts,
}

pub fn slice_key(replica: &str) -> String {
    format!("{FAULT_PREFIX}slices/{replica}")
}

pub fn slices_prefix() -> String {
    format!("{FAULT_PREFIX}slices/")
}

pub fn board_key() -> String {
    format!("{FAULT_PREFIX}board")
}

fn fresh(at_ms: u64, now_ms: u64) -> bool {
    now_ms.saturating_sub(at_ms) <= FRESH.as_millis() as u64
}

/// The board, when it is fresh.
pub fn fresh_board(b: Board, now_ms: u64) -> Option<Board> {
    fresh(b.at_ms, now_ms).then_some(b)
}

/// The fresh slices as one observation at `now_ms`: every replica's
/// streams, the freshest live report of each agent, each node's latest
/// metrics report, all figures, every endpoint reported down.
pub fn merge(slices: Vec<Slice>, now_ms: u64) -> Observation {
    let mut o = Observation { now_ms, ..Default::default() };
    for s in slices.into_iter().filter(|s| fresh(s.at_ms, now_ms)) {
        for p in s.proxies {
            o.proxies.push(ProxyStatus {
                stream: 0,
                node: p.node,
                mode: "shared",
                connected_since: String::new(),
                connected_ms: 0,
                types: p.types,
                raw_node: None,
            });
        }
        for (node, a) in s.agents {
            let better = match o.agents.get(&node) {
                None => true,
                Some(have) => (!a.stale, &a.reported_at) > (!have.stale, &have.reported_at),
            };
            if better {
                o.agents.insert(node, a);
            }
        }
        for (node, (cluster, at)) in s.left {
            let e = o.left.entry(node).or_insert((cluster.clone(), at));
            if e.1 < at {
                *e = (cluster, at);
            }
        }
        for (node, at) in s.last_report_ms {
            let e = o.last_report_ms.entry(node).or_insert(at);
            *e = (*e).max(at);
        }
        o.figures.extend(s.figures);
        o.down.extend(s.down);
    }
    o
}

/// `f` on the etcd store, off this runtime (its calls block); `None` when
/// it fails (logged) or the store is not etcd.
pub async fn on_store<T: Send + 'static>(
    ctrl: &Arc<Controller>,
    f: impl FnOnce(&EtcdStore) -> Result<T, StoreError> + Send + 'static,
) -> Option<T> {
    let c = ctrl.clone();
    match tokio::task::spawn_blocking(move || c.store().etcd().map(f)).await {
        Ok(Some(Ok(v))) => Some(v),
        Ok(Some(Err(e))) => {
            tracing::warn!("fault: shared state: {e}");
            None
        }
        _ => None,
    }
}

/// A restart the leader asks of the replica `node`'s agent reports to.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RestartRequest {
    node: String,
    seq: u64,
}

/// That replica's answer: the agent command carrying it out.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RestartIssued {
    node: String,
    seq: u64,
    command: u64,
}

/// Restarts relayed between replicas.
#[derive(Default)]
pub struct Relay {
    /// On the leader: node to the request it is waiting on.
    requested: BTreeMap<String, u64>,
    /// On each replica: node to the last request it carried out.
    handled: BTreeMap<String, u64>,
}

fn local_agent(ctrl: &Controller, node: &str) -> bool {
    ctrl.agents.list().get(node).is_some_and(|a| !a.stale)
}

impl Relay {
    /// On the leader: asks for `node`'s restart (its agent reports elsewhere).
    pub async fn request(&mut self, ctrl: &Arc<Controller>, node: &str, now_ms: u64) {
        let req = RestartRequest { node: node.to_string(), seq: now_ms };
        let (key, Ok(v)) = (format!("{FAULT_PREFIX}restarts/{node}"), serde_json::to_vec(&req)) else { return };
        on_store(ctrl, move |s| s.put_value(key, v)).await;
        self.requested.insert(node.to_string(), now_ms);
    }

    /// On every replica: queues the fresh requests for agents reporting here
    /// and answers each with the command's id.
    pub async fn serve(&mut self, ctrl: &Arc<Controller>, now_ms: u64) {
        let values = on_store(ctrl, |s| s.values_under(format!("{FAULT_PREFIX}restarts/"))).await.unwrap_or_default();
        for r in values.iter().filter_map(|v| serde_json::from_slice::<RestartRequest>(v).ok()) {
            if !fresh(r.seq, now_ms) || self.handled.get(&r.node) == Some(&r.seq) || !local_agent(ctrl, &r.node) {
                continue;
            }
            self.handled.insert(r.node.clone(), r.seq);
            let Some(command) = ctrl.agents.command(&r.node, Action::Restart, "repair") else { continue };
            tracing::warn!(node = r.node, command, "repair: restarting a node for the leader through its agent");
            let answer = RestartIssued { node: r.node.clone(), seq: r.seq, command };
            let (key, Ok(v)) = (format!("{FAULT_PREFIX}issued/{}", r.node), serde_json::to_vec(&answer)) else {
                continue;
            };
            on_store(ctrl, move |s| s.put_value(key, v)).await;
        }
    }

    /// On the leader: the commands other replicas queued for its requests,
    /// as (node, command id).
    pub async fn answers(&mut self, ctrl: &Arc<Controller>) -> Vec<(String, u64)> {
        if self.requested.is_empty() {
            return Vec::new();
        }
        let values = on_store(ctrl, |s| s.values_under(format!("{FAULT_PREFIX}issued/"))).await.unwrap_or_default();
        let mut out = Vec::new();
        for a in values.iter().filter_map(|v| serde_json::from_slice::<RestartIssued>(v).ok()) {
            if self.requested.get(&a.node) == Some(&a.seq) {
                self.requested.remove(&a.node);
                out.push((a.node, a.command));
            }
        }
        out
    }

    /// Whether `node`'s agent reports to this replica.
    pub fn is_local(ctrl: &Controller, node: &str) -> bool {
        local_agent(ctrl, node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::fleet::Nack;

    fn slice(at_ms: u64, node: &str, nack: bool) -> Slice {
        let mut t = TypeStatus { sent_version: "2".into(), acked_version: "1".into(), ..Default::default() };
        if nack {
            t.last_nack = Some(Nack { version: "2".into(), error: "cannot bind".into(), at: String::new() });
        }
        let node = NodeInfo { id: node.into(), ..Default::default() };
        Slice {
            at_ms,
            proxies: vec![SharedProxy { node, types: [("Listener".to_string(), t)].into_iter().collect() }],
            last_report_ms: [("n".to_string(), at_ms)].into_iter().collect(),
            ..Default::default()
        }
    }

    #[test]
    fn fresh_slices_merge_and_a_stale_one_is_left_out() {
        let now = 100_000;
        let text = serde_json::to_vec(&slice(now - 1_000, "a", true)).expect("json");
        let a: Slice = serde_json::from_slice(&text).expect("back");
        let o = merge(vec![a, slice(now - 500, "b", false), slice(now - 60_000, "gone", false)], now);
        let nodes: Vec<&str> = o.proxies.iter().map(|p| p.node.id.as_str()).collect();
        assert_eq!(nodes, ["a", "b"]);
        assert!(o.proxies[0].types["Listener"].last_nack.is_some(), "the NACK survives the store");
        assert_eq!(o.last_report_ms["n"], now - 500, "the latest report");
    }
}
