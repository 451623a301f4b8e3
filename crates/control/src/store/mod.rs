//! Persistence behind one interface: committed revisions (and their history),
//! API tokens and the audit log live either in an embedded SQLite file (one
//! control plane, the default) or in etcd (several replicas sharing state).
//! The rest of the control plane does not care which.

pub mod etcd;
pub mod etcd_tls;
pub mod records;
pub mod sealed;
pub mod spec;
pub mod sqlite;

use crate::resources::document::Document;

pub use etcd::EtcdStore;
pub use records::{AuditEntry, Change, Commit, RevisionInfo, StoreError};
pub use spec::StoreSpec;
pub use sqlite::SqliteStore;

/// The two backends behind one set of calls.
enum Backend {
    Sqlite(SqliteStore),
    Etcd(Box<EtcdStore>),
}

/// A backend, and the key secret material is encrypted with at rest
/// (`sealed`), when one was given.
pub struct Store {
    backend: Backend,
    key: Option<sealed::SecretKey>,
}

/// What opening a store needs besides where it is.
#[derive(Debug, Clone, Default)]
pub struct StoreSettings {
    /// Client TLS for `etcds://`.
    pub etcd_tls: etcd_tls::EtcdTlsFiles,
    /// The key secret material is encrypted with at rest (`--secret-key-file`).
    pub secret_key_file: Option<std::path::PathBuf>,
}

impl Store {
    /// The default: SQLite in `dir`.
    pub fn open(dir: &std::path::Path) -> Result<Self, StoreError> {
        Ok(Store { backend: Backend::Sqlite(SqliteStore::open(dir)?), key: None })
    }

    pub fn open_spec(spec: &StoreSpec) -> Result<Self, StoreError> {
        Self::open_with(spec, &StoreSettings::default())
    }

    /// Opens the store `spec` names; an etcd that cannot be reached (or
    /// refuses the TLS handshake) is reported with the store's URL.
    pub fn open_with(spec: &StoreSpec, settings: &StoreSettings) -> Result<Self, StoreError> {
        let key = settings.secret_key_file.as_deref().map(sealed::SecretKey::from_file).transpose()?;
        let named = |e: StoreError| match e {
            StoreError::Etcd(m) => StoreError::Etcd(format!("{}: {m}", spec.url())),
            other => other,
        };
        let backend = match spec {
            StoreSpec::Sqlite(dir) => Backend::Sqlite(SqliteStore::open(dir)?),
            StoreSpec::Etcd(endpoints) => Backend::Etcd(Box::new(EtcdStore::connect(endpoints, None).map_err(named)?)),
            StoreSpec::EtcdTls(endpoints) => {
                Backend::Etcd(Box::new(EtcdStore::connect(endpoints, Some(&settings.etcd_tls)).map_err(named)?))
            }
        };
        Ok(Store { backend, key })
    }

    /// The etcd backend, when that is what this is (replication needs it).
    pub fn etcd(&self) -> Option<&EtcdStore> {
        match &self.backend {
            Backend::Etcd(e) => Some(e),
            Backend::Sqlite(_) => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match &self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Etcd(_) => "etcd",
        }
    }

    /// The latest revision number, every current resource, and (on etcd)
    /// the last staged rollout's record.
    pub fn load_current(&self) -> Result<(u64, Vec<Document>, Option<String>), StoreError> {
        let (rev, mut docs, rollout) = match &self.backend {
            Backend::Sqlite(s) => s.load_current().map(|(r, d)| (r, d, None))?,
            Backend::Etcd(e) => e.load_current()?,
        };
        sealed::open_docs(self.key.as_ref(), &mut docs)?;
        Ok((rev, docs, rollout))
    }

    /// Commits `c.changes` as revision `c.expected + 1`; `Conflict` when
    /// another writer committed since `c.expected` was read.
    pub fn commit(&self, c: Commit<'_>) -> Result<u64, StoreError> {
        let changes = sealed::seal_changes(self.key.as_ref(), c.changes)?;
        let c = Commit { changes: &changes, ..c };
        match &self.backend {
            Backend::Sqlite(s) => s.commit(&c),
            Backend::Etcd(e) => e.commit(&c),
        }
    }

    /// Every resource as it stood right after revision `rev`.
    pub fn state_at(&self, rev: u64) -> Result<Vec<Document>, StoreError> {
        let mut docs = match &self.backend {
            Backend::Sqlite(s) => s.state_at(rev)?,
            Backend::Etcd(e) => e.state_at(rev)?,
        };
        sealed::open_docs(self.key.as_ref(), &mut docs)?;
        Ok(docs)
    }

    pub fn token_count(&self) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.token_count(),
            Backend::Etcd(e) => e.token_count(),
        }
    }

    pub fn add_token(&self, id: &str, name: &str, role: &str, secret_sha256: &str) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.add_token(id, name, role, secret_sha256),
            Backend::Etcd(e) => e.add_token(id, name, role, secret_sha256),
        }
    }

    /// (name, role, secret hash) of a token id.
    pub fn token(&self, id: &str) -> Result<Option<(String, String, String)>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.token(id),
            Backend::Etcd(e) => e.token(id),
        }
    }

    /// (id, name, role, created_at) of every token.
    pub fn tokens(&self) -> Result<Vec<(String, String, String, String)>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.tokens(),
            Backend::Etcd(e) => e.tokens(),
        }
    }

    pub fn revoke_token(&self, id: &str) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.revoke_token(id),
            Backend::Etcd(e) => e.revoke_token(id),
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
        match &self.backend {
            Backend::Sqlite(s) => s.audit(&entry),
            Backend::Etcd(e) => e.audit(&entry),
        }
    }

    /// The newest audit entries first.
    pub fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.audit_log(limit),
            Backend::Etcd(e) => e.audit_log(limit),
        }
    }

    /// The most recent revisions, newest first.
    pub fn history(&self, limit: usize) -> Result<Vec<RevisionInfo>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.history(limit),
            Backend::Etcd(e) => e.history(limit),
        }
    }
}
