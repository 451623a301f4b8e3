//! Everything a set of stored resources publishes: the explicit resources as
//! they are, what the higher-level kinds compile to, and the registry's
//! endpoints, each compiled like any document.

use crate::discovery::health::EndpointHealth;
use crate::discovery::registry::Instance;
use crate::resources::compile::compile;
use crate::resources::isolate;
use crate::resources::kind::Kind;
use crate::resources::mesh::generate::generate;
use crate::resources::registered;
use crate::resources::resource::{of_kind, DocError, ResourceMap};
use std::sync::Arc;

/// The Envoy resources that `resources` publish: explicit ones as they
/// are, then what Services and Gateways compile to, then one
/// ClusterLoadAssignment per registry service. An explicit resource wins
/// over a generated one of the same name. Endpoints of the abnormal nodes in
/// `health` are left out as each service's isolation policy says. Errors
/// name the resource.
pub fn expand(
    resources: &ResourceMap,
    instances: &[Instance],
    health: &EndpointHealth,
) -> Result<ResourceMap, Vec<DocError>> {
    let (generated, problems) = generate(resources, instances, health);
    let mut errors: Vec<DocError> =
        problems.into_iter().map(|(resource, path, reason)| DocError { resource, path, reason }).collect();
    let mut out = resources.clone();
    isolate_assignments(resources, health, &mut out, &mut errors);
    for doc in generated.into_iter().chain(registered::assignments(instances, health)) {
        let Some(kind) = Kind::parse(&doc.kind) else { continue };
        let key = (kind, doc.metadata.name.clone());
        if out.contains_key(&key) {
            continue;
        }
        match compile(&doc) {
            Ok(r) => {
                out.insert(key, Arc::new(r));
            }
            Err(e) => errors.extend(e.into_iter().map(|mut d| {
                d.resource = format!("{} (compiled)", d.resource);
                d
            })),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Hand-written ClusterLoadAssignments whose endpoints name their node
/// (`isolate::assignment`): published without those of abnormal nodes.
fn isolate_assignments(
    resources: &ResourceMap,
    health: &EndpointHealth,
    out: &mut ResourceMap,
    errors: &mut Vec<DocError>,
) {
    if health.abnormal.is_empty() {
        return;
    }
    for (name, r) in of_kind(resources, Kind::ClusterLoadAssignment) {
        let Some((spec, decision)) = isolate::assignment(&r.doc.spec, health) else { continue };
        if decision.isolated.is_empty() {
            continue;
        }
        let mut doc = r.doc.clone();
        doc.spec = spec;
        match compile(&doc) {
            Ok(c) => {
                out.insert((Kind::ClusterLoadAssignment, name.clone()), Arc::new(c));
            }
            Err(e) => errors.extend(e),
        }
    }
}
