//! Everything the higher-level kinds stand for, compiled together so that
//! their references (a route to a service, a Route to a gateway) are checked.

use crate::discovery::health::EndpointHealth;
use crate::discovery::registry::Instance;
use crate::resources::document::Document;
use crate::resources::mesh::gateway::{check_route_gateways, compile_gateways};
use crate::resources::mesh::service::compile_services;
use crate::resources::mesh::spec::RefProblems;
use crate::resources::resource::ResourceMap;

/// The Envoy documents the higher-level resources in `resources` stand for, and
/// the problems found in their references (`(resource, path, reason)`).
pub fn generate(
    resources: &ResourceMap,
    instances: &[Instance],
    health: &EndpointHealth,
) -> (Vec<Document>, RefProblems) {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    let services = compile_services(resources, instances, health, &mut out, &mut problems);
    compile_gateways(resources, &services, &mut out, &mut problems);
    check_route_gateways(resources, &mut problems);
    (out, problems)
}
