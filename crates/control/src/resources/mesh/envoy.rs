//! Builders for the pieces of Envoy JSON the generated resources share:
//! endpoints, load assignments, listeners and the ADS config source.

use crate::resources::document::{Document, Metadata, NodeSelector};
use serde_json::{json, Value};

/// A generated document of an Envoy `kind`, for the proxies `nodes` selects.
pub fn document(kind: &str, name: &str, nodes: &NodeSelector, spec: Value) -> Document {
    Document { kind: kind.into(), metadata: Metadata { name: name.into(), nodes: nodes.clone() }, spec, status: None }
}

/// The config source that says "over this ADS stream".
pub fn ads() -> Value {
    json!({"ads": {}, "resource_api_version": "V3"})
}

/// One `lb_endpoints` entry: an address and port.
pub fn lb_endpoint(address: &str, port: u16) -> Value {
    json!({"endpoint": {"address": {"socket_address": {"address": address, "port_value": port}}}})
}

/// A ClusterLoadAssignment with one locality of `lb_endpoints`.
pub fn load_assignment(cluster_name: &str, lb_endpoints: Vec<Value>) -> Value {
    json!({"cluster_name": cluster_name, "endpoints": [{"lb_endpoints": lb_endpoints}]})
}

/// A Listener on `address:port` whose one filter chain is the network filter
/// `filter` configured by `typed_config`.
pub fn listener(name: &str, address: &str, port: u16, filter: &str, typed_config: Value) -> Value {
    json!({
        "name": name,
        "address": {"socket_address": {"address": address, "port_value": port}},
        "filter_chains": [{"filters": [{"name": filter, "typed_config": typed_config}]}]
    })
}
