//! Persistence behind one interface: committed revisions (and their history),
//! API tokens and the audit log live either in an embedded SQLite file (one
//! control plane, the default) or in etcd (several replicas sharing state).
//! The rest of the control plane does not care which.

pub mod etcd;
pub mod sqlite;

use crate::model::{Document, Kind};
use serde::Serialize;
use std::path::PathBuf;

pub use etcd::EtcdStore;
pub use sqlite::SqliteStore;

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
}

/// One change inside a revision.
#[derive(Debug, Clone)]
pub enum Change {
    Apply(Document),
    Delete { kind: Kind, name: String },
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

/// Where the state lives, as given on the command line.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreSpec {
    /// A SQLite file in this folder.
    Sqlite(PathBuf),
    /// These etcd endpoints (host:port), tried in turn.
    Etcd(Vec<String>),
}

impl StoreSpec {
    /// `etcd://host:port[,host:port...]` or `sqlite:DIR` (`sqlite://DIR`).
    pub fn parse(s: &str) -> Result<StoreSpec, StoreError> {
        if let Some(rest) = s.strip_prefix("etcd://") {
            let endpoints: Vec<String> = rest
                .trim_end_matches('/')
                .split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(String::from)
                .collect();
            if endpoints.is_empty() {
                return Err(StoreError::Spec("etcd:// needs at least one host:port".into()));
            }
            for e in &endpoints {
                let ok = e.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
                if !ok {
                    return Err(StoreError::Spec(format!("'{e}' is not host:port")));
                }
            }
            return Ok(StoreSpec::Etcd(endpoints));
        }
        if let Some(rest) = s.strip_prefix("sqlite:") {
            let dir = rest.strip_prefix("//").unwrap_or(rest);
            if dir.is_empty() {
                return Err(StoreError::Spec("sqlite: needs a folder".into()));
            }
            return Ok(StoreSpec::Sqlite(PathBuf::from(dir)));
        }
        Err(StoreError::Spec(format!("'{s}': expected etcd://host:port[,host:port...] or sqlite:DIR")))
    }

    /// For logs.
    pub fn describe(&self) -> String {
        match self {
            StoreSpec::Sqlite(dir) => format!("SQLite in {}", dir.display()),
            StoreSpec::Etcd(eps) => format!("etcd at {}", eps.join(",")),
        }
    }
}

/// The two backends behind one set of calls.
pub enum Store {
    Sqlite(SqliteStore),
    Etcd(Box<EtcdStore>),
}

impl Store {
    /// The default: SQLite in `dir`.
    pub fn open(dir: &std::path::Path) -> Result<Self, StoreError> {
        Ok(Store::Sqlite(SqliteStore::open(dir)?))
    }

    pub fn open_spec(spec: &StoreSpec) -> Result<Self, StoreError> {
        match spec {
            StoreSpec::Sqlite(dir) => Self::open(dir),
            StoreSpec::Etcd(endpoints) => Ok(Store::Etcd(Box::new(EtcdStore::connect(endpoints)?))),
        }
    }

    /// The etcd backend, when that is what this is (replication needs it).
    pub fn etcd(&self) -> Option<&EtcdStore> {
        match self {
            Store::Etcd(e) => Some(e),
            Store::Sqlite(_) => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Etcd(_) => "etcd",
        }
    }

    /// The latest revision number and every current resource.
    pub fn load_current(&self) -> Result<(u64, Vec<Document>), StoreError> {
        match self {
            Store::Sqlite(s) => s.load_current(),
            Store::Etcd(e) => e.load_current(),
        }
    }

    /// Commits `changes` as revision `expected + 1`; `Conflict` when another
    /// writer committed since `expected` was read.
    pub fn commit(&self, expected: u64, author: &str, message: &str, changes: &[Change]) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => s.commit(expected, author, message, changes),
            Store::Etcd(e) => e.commit(expected, author, message, changes),
        }
    }

    /// Every resource as it stood right after revision `rev`.
    pub fn state_at(&self, rev: u64) -> Result<Vec<Document>, StoreError> {
        match self {
            Store::Sqlite(s) => s.state_at(rev),
            Store::Etcd(e) => e.state_at(rev),
        }
    }

    pub fn token_count(&self) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => s.token_count(),
            Store::Etcd(e) => e.token_count(),
        }
    }

    pub fn add_token(&self, id: &str, name: &str, role: &str, secret_sha256: &str) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.add_token(id, name, role, secret_sha256),
            Store::Etcd(e) => e.add_token(id, name, role, secret_sha256),
        }
    }

    /// (name, role, secret hash) of a token id.
    pub fn token(&self, id: &str) -> Result<Option<(String, String, String)>, StoreError> {
        match self {
            Store::Sqlite(s) => s.token(id),
            Store::Etcd(e) => e.token(id),
        }
    }

    /// (id, name, role, created_at) of every token.
    pub fn tokens(&self) -> Result<Vec<(String, String, String, String)>, StoreError> {
        match self {
            Store::Sqlite(s) => s.tokens(),
            Store::Etcd(e) => e.tokens(),
        }
    }

    pub fn revoke_token(&self, id: &str) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(s) => s.revoke_token(id),
            Store::Etcd(e) => e.revoke_token(id),
        }
    }

    pub fn audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        allowed: bool,
        detail: &str,
    ) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.audit(actor, action, target, allowed, detail),
            Store::Etcd(e) => e.audit(actor, action, target, allowed, detail),
        }
    }

    /// The newest audit entries first.
    pub fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        match self {
            Store::Sqlite(s) => s.audit_log(limit),
            Store::Etcd(e) => e.audit_log(limit),
        }
    }

    /// The most recent revisions, newest first.
    pub fn history(&self, limit: usize) -> Result<Vec<RevisionInfo>, StoreError> {
        match self {
            Store::Sqlite(s) => s.history(limit),
            Store::Etcd(e) => e.history(limit),
        }
    }
}

pub(crate) fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_store_specs() {
        assert_eq!(
            StoreSpec::parse("etcd://127.0.0.1:2379,127.0.0.1:22379").ok(),
            Some(StoreSpec::Etcd(vec!["127.0.0.1:2379".into(), "127.0.0.1:22379".into()]))
        );
        assert_eq!(StoreSpec::parse("sqlite:./d").ok(), Some(StoreSpec::Sqlite("./d".into())));
        assert!(StoreSpec::parse("etcd://").is_err());
        assert!(StoreSpec::parse("etcd://host").is_err());
        assert!(StoreSpec::parse("redis://x:1").is_err());
    }
}
