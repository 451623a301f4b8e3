//! A validated resource, ready to publish, and what is wrong with a document
//! that is not one.

use crate::resources::document::{Document, NodeSelector};
use crate::resources::kind::Kind;
use legate_api::pb::google::protobuf::Any;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Resources by kind and name.
pub type ResourceMap = BTreeMap<(Kind, String), Arc<Resource>>;

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

/// A stable 64-bit FNV-1a hash, hex: equal content, equal version, across restarts.
pub fn content_hash(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

/// The resources of one kind, by name (in name order).
pub fn of_kind(resources: &ResourceMap, kind: Kind) -> impl Iterator<Item = (&String, &Arc<Resource>)> {
    resources.range((kind, String::new())..).take_while(move |((k, _), _)| *k == kind).map(|((_, name), r)| (name, r))
}

impl Resource {
    /// A kind that is not itself an Envoy resource (a `Service`, a
    /// `Release`, ...): the document, at `version`.
    pub fn from_document(kind: Kind, doc: &Document, version: String) -> Resource {
        Resource {
            kind,
            name: doc.metadata.name.clone(),
            nodes: doc.metadata.nodes.clone(),
            doc: doc.clone(),
            any: Any::default(),
            version,
        }
    }

    /// True when `other` would publish exactly what this does: the same
    /// content to the same proxies.
    pub fn publishes_same(&self, other: &Resource) -> bool {
        self.version == other.version && self.nodes == other.nodes
    }
}

/// The documents the resources were compiled from, in key order.
pub fn documents(resources: &ResourceMap) -> Vec<Document> {
    resources.values().map(|r| r.doc.clone()).collect()
}
