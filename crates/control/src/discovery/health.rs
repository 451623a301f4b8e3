//! What the control plane holds against endpoints when it compiles EDS: the
//! nodes found abnormal (`fault/`), with when each became so, and the
//! endpoints found down. Set by the fault evaluator, read by
//! `resources::isolate` when load assignments are built.

use std::collections::BTreeMap;

/// Abnormal nodes (node id to when it became abnormal, Unix ms).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointHealth {
    pub abnormal: BTreeMap<String, u64>,
}

impl EndpointHealth {
    pub fn is_empty(&self) -> bool {
        self.abnormal.is_empty()
    }
}
