//! The resources users manage: Envoy resources as documents, validated with the
//! proxy's own loader before anything is stored or published.

use legate_api::pb::envoy::config::cluster::v3::Cluster;
use legate_api::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use legate_api::pb::envoy::config::listener::v3::Listener;
use legate_api::pb::envoy::config::route::v3::RouteConfiguration;
use legate_api::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use legate_api::pb::google::protobuf::Any;
use legate_api::FieldError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    Cluster,
    ClusterLoadAssignment,
    Listener,
    RouteConfiguration,
    Secret,
    /// Higher-level kinds, compiled into the Envoy kinds above (see `services`).
    Service,
    Gateway,
    Route,
}

pub const ALL_KINDS: [Kind; 5] =
    [Kind::Cluster, Kind::ClusterLoadAssignment, Kind::Listener, Kind::RouteConfiguration, Kind::Secret];

impl Kind {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "cluster" | "clusters" | "cds" => Self::Cluster,
            "clusterloadassignment" | "clusterloadassignments" | "endpoints" | "eds" => Self::ClusterLoadAssignment,
            "listener" | "listeners" | "lds" => Self::Listener,
            "routeconfiguration" | "routeconfigurations" | "routes" | "rds" => Self::RouteConfiguration,
            "secret" | "secrets" | "sds" => Self::Secret,
            "service" | "services" | "svc" => Self::Service,
            "gateway" | "gateways" | "gw" => Self::Gateway,
            "route" | "httproute" => Self::Route,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Cluster => "Cluster",
            Self::ClusterLoadAssignment => "ClusterLoadAssignment",
            Self::Listener => "Listener",
            Self::RouteConfiguration => "RouteConfiguration",
            Self::Secret => "Secret",
            Self::Service => "Service",
            Self::Gateway => "Gateway",
            Self::Route => "Route",
        }
    }

    /// True for the kinds that are sent over xDS as they are.
    pub fn is_envoy(self) -> bool {
        !matches!(self, Self::Service | Self::Gateway | Self::Route)
    }

    pub fn type_url(self) -> &'static str {
        match self {
            Self::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            Self::ClusterLoadAssignment => "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            Self::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            Self::RouteConfiguration => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            Self::Secret => "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
            Self::Service | Self::Gateway | Self::Route => "",
        }
    }

    pub fn from_type_url(url: &str) -> Option<Self> {
        ALL_KINDS.into_iter().find(|k| k.type_url() == url)
    }

    /// Listener and Cluster are wildcard types in xDS; the others are named.
    pub fn is_wildcard(self) -> bool {
        matches!(self, Self::Cluster | Self::Listener)
    }
}

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

/// What the control plane knows of a connected node.
#[derive(Debug, Clone, Default, Serialize)]
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
}

/// A validated resource, ready to publish.
#[derive(Debug, Clone)]
pub struct Resource {
    pub kind: Kind,
    pub name: String,
    pub nodes: NodeSelector,
    pub doc: Document,
    pub any: Any,
    /// A content hash: the resource's xDS version.
    pub version: String,
}

/// A problem with one document: which resource, where, and why.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DocError {
    pub resource: String,
    pub path: String,
    pub reason: String,
}

fn decode<T: prost::Message + prost::Name + Default>(doc: &Document) -> Result<(T, Any), Vec<FieldError>> {
    let (msg, _) = legate_api::load::decode_typed::<T>(doc.spec.clone())?;
    let any = Any { type_url: T::type_url(), value: msg.encode_to_vec() };
    Ok((msg, any))
}

/// Validates a document with the proxy's own loader (one parser, one validator).
pub fn compile(doc: &Document) -> Result<Resource, Vec<DocError>> {
    let label = format!("{}/{}", doc.kind, doc.metadata.name);
    let err = |path: &str, reason: String| vec![DocError { resource: label.clone(), path: path.to_string(), reason }];
    let Some(kind) = Kind::parse(&doc.kind) else {
        return Err(err(
            "kind",
            format!(
                "unknown kind '{}': expected Listener, Cluster, RouteConfiguration, ClusterLoadAssignment or Secret",
                doc.kind
            ),
        ));
    };
    if doc.metadata.name.is_empty() {
        return Err(err("metadata.name", "value is required".into()));
    }
    let to_doc_errors = |errs: Vec<FieldError>| -> Vec<DocError> {
        errs.into_iter()
            .map(|e| DocError {
                resource: label.clone(),
                path: if e.path.is_empty() { "spec".into() } else { format!("spec.{}", e.path) },
                reason: e.reason,
            })
            .collect()
    };
    if !kind.is_envoy() {
        return crate::services::check(kind, doc).map_err(|errs| {
            errs.into_iter().map(|(path, reason)| DocError { resource: label.clone(), path, reason }).collect()
        });
    }
    let (own_name, any) = match kind {
        Kind::Cluster => decode::<Cluster>(doc).map(|(m, a)| (m.name, a)),
        Kind::ClusterLoadAssignment => decode::<ClusterLoadAssignment>(doc).map(|(m, a)| (m.cluster_name, a)),
        Kind::Listener => decode::<Listener>(doc).map(|(m, a)| (m.name, a)),
        Kind::RouteConfiguration => decode::<RouteConfiguration>(doc).map(|(m, a)| (m.name, a)),
        Kind::Secret => decode::<Secret>(doc).map(|(m, a)| (m.name, a)),
        Kind::Service | Kind::Gateway | Kind::Route => Err(vec![FieldError::new("kind", "not an Envoy resource kind")]),
    }
    .map_err(to_doc_errors)?;
    if kind == Kind::Secret {
        // The PEM a secret carries inline must read, or every proxy would NACK it.
        if let Some((path, reason)) = crate::certinfo::check(&any) {
            return Err(err(&path, reason));
        }
    }
    if own_name != doc.metadata.name {
        let field = if kind == Kind::ClusterLoadAssignment { "spec.cluster_name" } else { "spec.name" };
        return Err(err(field, format!("must equal metadata.name '{}' (is '{own_name}')", doc.metadata.name)));
    }
    let version = content_hash(&any.value);
    Ok(Resource {
        kind,
        name: doc.metadata.name.clone(),
        nodes: doc.metadata.nodes.clone(),
        doc: doc.clone(),
        any,
        version,
    })
}

/// A stable 64-bit FNV-1a hash, hex: equal content, equal version, across restarts.
pub fn content_hash(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
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
