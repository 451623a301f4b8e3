//! What the control plane holds against endpoints when it compiles EDS: the
//! nodes found abnormal (`fault/`), with when each became so, and the
//! endpoints proxies found down for it (HDS, `discovery::checks`). Set by
//! the fault evaluator, read by `resources::isolate` and
//! `resources::mesh::service` when load assignments are built.

use std::collections::{BTreeMap, BTreeSet};

/// Abnormal nodes (node id to when it became abnormal, Unix ms), and the
/// endpoints of services checked through HDS that were reported down.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EndpointHealth {
    pub abnormal: BTreeMap<String, u64>,
    /// (service, `address:port`).
    pub down: BTreeSet<(String, String)>,
}

impl EndpointHealth {
    pub fn is_empty(&self) -> bool {
        self.abnormal.is_empty() && self.down.is_empty()
    }
}
