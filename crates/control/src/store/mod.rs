//! Persistence behind one interface: committed revisions (and their history),
//! API tokens and the audit log live either in an embedded SQLite file (one
//! control plane, the default) or in etcd (several replicas sharing state).
//! The rest of the control plane does not care which.

pub mod etcd;
pub mod records;
pub mod spec;
pub mod sqlite;

use crate::resources::document::Document;

pub use etcd::EtcdStore;
pub use records::{AuditEntry, Change, RevisionInfo, StoreError};
pub use spec::StoreSpec;
pub use sqlite::SqliteStore;

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

    /// The latest revision number, every current resource, and (on etcd)
    /// the last staged rollout's record.
    pub fn load_current(&self) -> Result<(u64, Vec<Document>, Option<String>), StoreError> {
        match self {
            Store::Sqlite(s) => s.load_current().map(|(r, d)| (r, d, None)),
            Store::Etcd(e) => e.load_current(),
        }
    }

    /// Commits `changes` as revision `expected + 1`; `Conflict` when another
    /// writer committed since `expected` was read.
    pub fn commit(&self, expected: u64, author: &str, message: &str, changes: &[Change]) -> Result<u64, StoreError> {
        self.commit_rollout(expected, author, message, changes, None)
    }

    /// Like `commit`, with the rollout record (`state::staged`) in the same
    /// transaction when given; on SQLite, where one control plane holds the
    /// rollout, it is not stored.
    pub fn commit_rollout(
        &self,
        expected: u64,
        author: &str,
        message: &str,
        changes: &[Change],
        rollout: Option<&str>,
    ) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => s.commit(expected, author, message, changes),
            Store::Etcd(e) => e.commit(expected, author, message, changes, rollout),
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
        let entry = AuditEntry {
            at: crate::clock::now(),
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            allowed,
            detail: detail.into(),
        };
        match self {
            Store::Sqlite(s) => s.audit(&entry),
            Store::Etcd(e) => e.audit(&entry),
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
