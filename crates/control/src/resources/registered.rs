//! The registry's live instances as the proxies see them: one
//! ClusterLoadAssignment per service, named after it (unless one is applied
//! explicitly under that name), so a change reaches the proxies' EDS with the
//! next push.

use crate::discovery::registry::Instance;
use crate::resources::document::{Document, NodeSelector};
use crate::resources::mesh::envoy::{document, lb_endpoint, load_assignment};
use std::collections::BTreeMap;

/// One ClusterLoadAssignment document per service with live instances.
pub fn assignments(instances: &[Instance]) -> Vec<Document> {
    let mut by_service: BTreeMap<&str, Vec<&Instance>> = BTreeMap::new();
    for i in instances {
        by_service.entry(&i.service).or_default().push(i);
    }
    by_service
        .into_iter()
        .map(|(svc, insts)| {
            let endpoints = insts.iter().map(|i| lb_endpoint(&i.address, i.port)).collect();
            document("ClusterLoadAssignment", svc, &NodeSelector::default(), load_assignment(svc, endpoints))
        })
        .collect()
}
