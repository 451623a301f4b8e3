//! One immutable revision of everything the control plane serves, and which
//! of it each proxy receives.

use crate::discovery::node::NodeInfo;
use crate::resources::kind::Kind;
use crate::resources::resource::{of_kind, Resource, ResourceMap};
use std::sync::Arc;

/// One immutable revision of everything the control plane serves.
#[derive(Default)]
pub struct ConfigState {
    pub revision: u64,
    pub resources: ResourceMap,
}

impl ConfigState {
    /// The resources of `kind` that `node` receives.
    pub fn for_node<'a, 'n>(
        &'a self,
        kind: Kind,
        node: &'n NodeInfo,
    ) -> impl Iterator<Item = &'a Arc<Resource>> + use<'a, 'n> {
        of_kind(&self.resources, kind).map(|(_, r)| r).filter(move |r| r.nodes.matches(node))
    }
}
