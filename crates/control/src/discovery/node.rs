//! What the control plane knows of a connected node: who it says it is.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What the control plane knows of a connected node.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: String,
    pub cluster: String,
    pub metadata: BTreeMap<String, String>,
    pub user_agent: String,
}

impl NodeInfo {
    pub fn from_node(n: &legate_api::pb::envoy::config::core::v3::Node) -> Self {
        use legate_api::pb::envoy::config::core::v3::node::UserAgentVersionType;
        use legate_api::pb::google::protobuf::value::Kind as V;
        let metadata = n
            .metadata
            .as_ref()
            .map(|s| {
                s.fields
                    .iter()
                    .filter_map(|(k, v)| match &v.kind {
                        Some(V::StringValue(s)) => Some((k.clone(), s.clone())),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let version = match &n.user_agent_version_type {
            Some(UserAgentVersionType::UserAgentVersion(v)) => v.clone(),
            Some(UserAgentVersionType::UserAgentBuildVersion(b)) => b
                .version
                .as_ref()
                .map(|v| format!("{}.{}.{}", v.major_number, v.minor_number, v.patch))
                .unwrap_or_default(),
            None => String::new(),
        };
        Self {
            id: n.id.clone(),
            cluster: n.cluster.clone(),
            metadata,
            user_agent: format!("{} {}", n.user_agent_name, version).trim().to_string(),
        }
    }
}
