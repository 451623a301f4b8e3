//! What the store keeps and reports, whichever backend: one change of a
//! revision, a revision's summary, an audit entry, and what can go wrong.

use crate::resources::document::Document;
use crate::resources::kind::Kind;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("store: {0}")]
    Io(#[from] std::io::Error),
    #[error("store: etcd: {0}")]
    Etcd(String),
    #[error("revision {0} does not exist")]
    NoRevision(u64),
    #[error("store: corrupt document for {kind}/{name}: {reason}")]
    Corrupt { kind: String, name: String, reason: String },
    #[error("store: another writer committed first (expected revision {expected}, found {found})")]
    Conflict { expected: u64, found: u64 },
    #[error("--store: {0}")]
    Spec(String),
    #[error("store: secrets at rest: {0}")]
    Secret(String),
}

/// A revision to commit: the changes, who made them and why, and the
/// rollout record stored in the same transaction (on etcd; with SQLite one
/// control plane holds the rollout, so it is not stored).
#[derive(Debug, Clone, Copy)]
pub struct Commit<'a> {
    /// The revision the changes were made against: another writer's commit
    /// since is a `Conflict`.
    pub expected: u64,
    pub author: &'a str,
    pub message: &'a str,
    pub changes: &'a [Change],
    pub rollout: Option<&'a str>,
}

impl<'a> Commit<'a> {
    /// `changes` on top of revision `expected`, without a rollout record.
    pub fn new(expected: u64, author: &'a str, message: &'a str, changes: &'a [Change]) -> Self {
        Commit { expected, author, message, changes, rollout: None }
    }
}

/// One change inside a revision.
#[derive(Debug, Clone)]
pub enum Change {
    Apply(Document),
    Delete { kind: Kind, name: String },
}

impl Change {
    /// The kind of resource changed (none for an unknown kind).
    pub fn kind(&self) -> Option<Kind> {
        match self {
            Change::Apply(d) => Kind::parse(&d.kind),
            Change::Delete { kind, .. } => Some(*kind),
        }
    }
}

/// One line of the audit log.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct AuditEntry {
    pub at: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub allowed: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RevisionInfo {
    pub revision: u64,
    pub created_at: String,
    pub author: String,
    pub message: String,
    pub changes: Vec<String>,
}
