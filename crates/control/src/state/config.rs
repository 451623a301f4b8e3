//! One immutable revision of everything the control plane serves, and which
//! of it each proxy receives — during a staged rollout, the revision before
//! it for the proxies outside the canary.

use crate::discovery::node::NodeInfo;
use crate::resources::kind::Kind;
use crate::resources::resource::{of_kind, Resource, ResourceMap};
use std::collections::BTreeSet;
use std::sync::Arc;

/// One immutable revision of everything the control plane serves.
#[derive(Default)]
pub struct ConfigState {
    pub revision: u64,
    pub resources: ResourceMap,
    /// A staged rollout: only its canary proxies receive this revision.
    pub staging: Option<Staging>,
}

/// Who receives a staged revision: the canary proxies (by node id); every
/// other proxy keeps being served `previous`.
pub struct Staging {
    pub canary: BTreeSet<String>,
    pub previous: Arc<ConfigState>,
}

impl ConfigState {
    /// The revision `node` is served: this one, or during a staged rollout
    /// the previous one when the node is not in the canary.
    pub fn view(&self, node: &NodeInfo) -> &ConfigState {
        match &self.staging {
            Some(s) if !s.canary.contains(&node.id) => s.previous.view(node),
            _ => self,
        }
    }

    /// The resources of `kind` that `node` receives (from the revision it is served).
    pub fn for_node<'a, 'n>(
        &'a self,
        kind: Kind,
        node: &'n NodeInfo,
    ) -> impl Iterator<Item = &'a Arc<Resource>> + use<'a, 'n> {
        of_kind(&self.view(node).resources, kind).map(|(_, r)| r).filter(move |r| r.nodes.matches(node))
    }
}
