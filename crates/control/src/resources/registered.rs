//! The registry's live instances as the proxies see them: one
//! ClusterLoadAssignment per service, named after it (unless one is applied
//! explicitly under that name), so a change reaches the proxies' EDS with the
//! next push.

use crate::discovery::registry::Instance;
use crate::resources::document::{Document, Metadata};
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
            let eps: Vec<serde_json::Value> = insts
                .iter()
                .map(|i| {
                    serde_json::json!({"endpoint": {"address": {"socket_address": {"address": i.address, "port_value": i.port}}}})
                })
                .collect();
            Document {
                kind: "ClusterLoadAssignment".into(),
                metadata: Metadata { name: svc.to_string(), ..Default::default() },
                spec: serde_json::json!({"cluster_name": svc, "endpoints": [{"lb_endpoints": eps}]}),
            }
        })
        .collect()
}
