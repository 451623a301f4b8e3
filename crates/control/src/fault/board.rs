//! What the controller holds of faults and the API and alerts read: every
//! abnormal node as last evaluated, with its causes, where it is isolated
//! and its repair. A leaf: the evaluator (`fault/mod.rs`) reads the
//! controller, the controller holds this.

use super::detect::Finding;
use super::repair::Repair;
use serde::{Deserialize, Serialize};
use std::sync::Mutex;

/// One cause as `GET /v1/abnormal` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CauseView {
    pub cause: String,
    /// When the condition was first seen (RFC 3339).
    pub since: String,
    pub evidence: String,
}

/// One abnormal node as `GET /v1/abnormal` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeView {
    pub node: String,
    pub cluster: String,
    /// When it became abnormal: its oldest cause (RFC 3339).
    pub since: String,
    pub causes: Vec<CauseView>,
    /// `service address:port` of its endpoints out of EDS.
    pub isolated: Vec<String>,
    /// `service address:port` of its endpoints kept in: the service's cap was
    /// reached, or its isolation is off.
    pub held: Vec<String>,
    pub repair: Repair,
}

impl NodeView {
    pub fn new(f: &Finding, repair: Repair) -> Self {
        Self {
            node: f.node.clone(),
            cluster: f.cluster.clone(),
            since: crate::clock::rfc3339(f.since_ms()),
            causes: f
                .causes
                .iter()
                .map(|c| CauseView {
                    cause: c.cause.name().to_string(),
                    since: crate::clock::rfc3339(c.since_ms),
                    evidence: c.evidence.clone(),
                })
                .collect(),
            isolated: Vec::new(),
            held: Vec::new(),
            repair,
        }
    }

    pub fn repair_failed(&self) -> bool {
        matches!(self.repair, Repair::Failed { .. })
    }
}

/// Repair counts since this control plane started.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RepairCounts {
    pub started: u64,
    pub repaired: u64,
    pub failed: u64,
}

/// What the API and alerts read.
#[derive(Default)]
pub struct Faults {
    state: Mutex<(Vec<NodeView>, RepairCounts)>,
}

impl Faults {
    /// The abnormal nodes, by node id, and the repair counts.
    pub fn get(&self) -> (Vec<NodeView>, RepairCounts) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn nodes(&self) -> Vec<NodeView> {
        self.get().0
    }

    pub(super) fn set(&self, nodes: Vec<NodeView>, counts: RepairCounts) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = (nodes, counts);
    }
}
