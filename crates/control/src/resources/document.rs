//! A resource as users write it (`kind`, `metadata`, `spec`), which proxies it
//! is for, and the YAML/JSON streams documents come in.

use crate::discovery::node::NodeInfo;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Which proxies get a resource. Empty selector: every proxy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSelector {
    /// Node ids (exact).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<String>,
    /// Node clusters (exact).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<String>,
    /// Node metadata string fields that must all match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

impl NodeSelector {
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty() && self.clusters.is_empty() && self.metadata.is_empty()
    }

    pub fn matches(&self, node: &NodeInfo) -> bool {
        (self.ids.is_empty() || self.ids.contains(&node.id))
            && (self.clusters.is_empty() || self.clusters.contains(&node.cluster))
            && self.metadata.iter().all(|(k, v)| node.metadata.get(k) == Some(v))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
    #[serde(default, skip_serializing_if = "NodeSelector::is_empty")]
    pub nodes: NodeSelector,
}

/// A resource as users write it (`kind`, `metadata`, `spec`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    pub kind: String,
    pub metadata: Metadata,
    pub spec: serde_json::Value,
    /// What the control plane records about the resource (a Release's phase,
    /// step and analysis); written by the control plane, never by users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

/// Parses a YAML/JSON stream of documents (`---` separated, or a JSON array).
pub fn parse_documents(text: &str) -> Result<Vec<Document>, String> {
    let mut docs = Vec::new();
    for (i, part) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let v = serde_json::Value::deserialize(part).map_err(|e| format!("document {i}: {e}"))?;
        match v {
            serde_json::Value::Null => continue,
            serde_json::Value::Array(items) => {
                for item in items {
                    docs.push(serde_json::from_value(item).map_err(|e| format!("document {i}: {e}"))?);
                }
            }
            other => docs.push(serde_json::from_value(other).map_err(|e| format!("document {i}: {e}"))?),
        }
    }
    Ok(docs)
}
