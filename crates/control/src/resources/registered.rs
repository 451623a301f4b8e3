//! The registry's live instances as the proxies see them: one
//! ClusterLoadAssignment per service, named after it (unless one is applied
//! explicitly under that name), so a change reaches the proxies' EDS with the
//! next push.

use crate::discovery::health::EndpointHealth;
use crate::discovery::registry::Instance;
use crate::resources::document::{Document, NodeSelector};
use crate::resources::isolate::{self, Decision, IsolationSpec};
use crate::resources::mesh::envoy::{document, lb_endpoint, load_assignment};
use std::collections::BTreeMap;

/// One ClusterLoadAssignment document per service with live instances,
/// without the instances of abnormal nodes (the default isolation policy).
pub fn assignments(instances: &[Instance], health: &EndpointHealth) -> Vec<Document> {
    decisions(instances, health)
        .into_iter()
        .map(|(svc, insts, decision)| {
            let endpoints = isolate::kept(&insts, &decision).iter().map(|i| lb_endpoint(&i.address, i.port)).collect();
            document("ClusterLoadAssignment", &svc, &NodeSelector::default(), load_assignment(&svc, endpoints))
        })
        .collect()
}

/// Per registry service: its instances and what isolation does to them.
pub fn decisions<'a>(instances: &'a [Instance], health: &EndpointHealth) -> Vec<(String, Vec<&'a Instance>, Decision)> {
    let mut by_service: BTreeMap<&str, Vec<&Instance>> = BTreeMap::new();
    for i in instances {
        by_service.entry(&i.service).or_default().push(i);
    }
    by_service
        .into_iter()
        .map(|(svc, insts)| {
            let eps: Vec<_> = insts.iter().map(|i| (i.address.clone(), i.port, i.labels.clone())).collect();
            let decision = isolate::decide(&IsolationSpec::default(), &eps, health);
            (svc.to_string(), insts, decision)
        })
        .collect()
}
