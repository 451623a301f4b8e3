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
    /// Where the node runs (`node.locality` of its bootstrap).
    pub locality: Locality,
}

/// Envoy's `Locality`: region, zone and sub-zone, each empty when unknown.
/// A node says it in its bootstrap (`node.locality`); an endpoint of a
/// `Service` or registry instance by its labels `region`, `zone` and
/// `sub_zone`.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub sub_zone: String,
}

impl Locality {
    /// The locality an endpoint's labels give.
    pub fn from_labels(labels: &BTreeMap<String, String>) -> Self {
        let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
        Self { region: get("region"), zone: get("zone"), sub_zone: get("sub_zone") }
    }

    pub fn is_empty(&self) -> bool {
        self.region.is_empty() && self.zone.is_empty() && self.sub_zone.is_empty()
    }

    /// How near a node at `self` is to an endpoint at `other`: 3 the same
    /// sub-zone, 2 the same zone, 1 the same region, 0 otherwise (or when
    /// the endpoint's locality is unknown).
    pub fn closeness(&self, other: &Locality) -> u8 {
        if other.is_empty() || self.region != other.region {
            0
        } else if self.zone != other.zone {
            1
        } else if self.sub_zone != other.sub_zone {
            2
        } else {
            3
        }
    }
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
            locality: n
                .locality
                .as_ref()
                .map(|l| Locality { region: l.region.clone(), zone: l.zone.clone(), sub_zone: l.sub_zone.clone() })
                .unwrap_or_default(),
        }
    }
}
