//! The published configuration and the controller that changes it.

use crate::fleet::Fleet;
use crate::model::{compile, DocError, Document, Kind, NodeInfo, Resource};
use crate::store::{Change, RevisionInfo, Store, StoreError};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// One immutable revision of everything the control plane serves.
#[derive(Default)]
pub struct ConfigState {
    pub revision: u64,
    pub resources: BTreeMap<(Kind, String), Arc<Resource>>,
}

impl ConfigState {
    /// The resources of `kind` that `node` receives.
    pub fn for_node<'a>(&'a self, kind: Kind, node: &'a NodeInfo) -> impl Iterator<Item = &'a Arc<Resource>> + 'a {
        self.resources
            .range((kind, String::new())..)
            .take_while(move |((k, _), _)| *k == kind)
            .map(|(_, r)| r)
            .filter(move |r| r.nodes.matches(node))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("invalid resources")]
    Invalid(Vec<DocError>),
    #[error("{0} not found")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Serialize)]
pub struct ApplyOutcome {
    /// The new revision, or none when nothing changed (or a dry run).
    pub revision: Option<u64>,
    pub created: Vec<String>,
    pub updated: Vec<String>,
    pub unchanged: Vec<String>,
    pub deleted: Vec<String>,
    pub dry_run: bool,
}

pub struct Controller {
    store: Store,
    state: watch::Sender<Arc<ConfigState>>,
    /// Serializes changes: validate, commit, publish happen as one step.
    apply_lock: Mutex<()>,
    pub fleet: Fleet,
}

impl Controller {
    pub fn open(store: Store) -> Result<Arc<Self>, StoreError> {
        let (revision, docs) = store.load_current()?;
        let mut resources = BTreeMap::new();
        for d in docs {
            match compile(&d) {
                Ok(r) => {
                    resources.insert((r.kind, r.name.clone()), Arc::new(r));
                }
                Err(e) => {
                    tracing::error!("stored resource {}/{} no longer validates: {:?}", d.kind, d.metadata.name, e)
                }
            }
        }
        let (state, _) = watch::channel(Arc::new(ConfigState { revision, resources }));
        Ok(Arc::new(Self { store, state, apply_lock: Mutex::new(()), fleet: Fleet::default() }))
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<ConfigState>> {
        self.state.subscribe()
    }

    pub fn current(&self) -> Arc<ConfigState> {
        self.state.borrow().clone()
    }

    pub fn history(&self, limit: usize) -> Result<Vec<RevisionInfo>, StoreError> {
        self.store.history(limit)
    }

    /// Validates every document (all or nothing), commits one revision, publishes.
    pub fn apply(
        &self,
        docs: &[Document],
        author: &str,
        message: &str,
        dry_run: bool,
    ) -> Result<ApplyOutcome, ApplyError> {
        let mut compiled = Vec::new();
        let mut errors = Vec::new();
        for d in docs {
            match compile(d) {
                Ok(r) => compiled.push(r),
                Err(e) => errors.extend(e),
            }
        }
        let mut seen = std::collections::HashSet::new();
        for r in &compiled {
            if !seen.insert((r.kind, r.name.clone())) {
                errors.push(DocError {
                    resource: format!("{}/{}", r.kind.name(), r.name),
                    path: "metadata.name".into(),
                    reason: "appears twice in one apply".into(),
                });
            }
        }
        if !errors.is_empty() {
            return Err(ApplyError::Invalid(errors));
        }
        let _guard = self.apply_lock.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.current();
        let mut outcome = ApplyOutcome {
            revision: None,
            created: vec![],
            updated: vec![],
            unchanged: vec![],
            deleted: vec![],
            dry_run,
        };
        let mut changes = Vec::new();
        let mut next = current.resources.clone();
        for r in compiled {
            let label = format!("{}/{}", r.kind.name(), r.name);
            match current.resources.get(&(r.kind, r.name.clone())) {
                Some(old) if old.version == r.version && old.nodes == r.nodes => {
                    outcome.unchanged.push(label);
                    continue;
                }
                Some(_) => outcome.updated.push(label),
                None => outcome.created.push(label),
            }
            changes.push(Change::Apply(r.doc.clone()));
            next.insert((r.kind, r.name.clone()), Arc::new(r));
        }
        if dry_run || changes.is_empty() {
            return Ok(outcome);
        }
        let rev = self.store.commit(author, message, &changes)?;
        outcome.revision = Some(rev);
        self.state.send_replace(Arc::new(ConfigState { revision: rev, resources: next }));
        Ok(outcome)
    }

    pub fn delete(&self, kind: Kind, name: &str, author: &str, message: &str) -> Result<ApplyOutcome, ApplyError> {
        let _guard = self.apply_lock.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.current();
        let key = (kind, name.to_string());
        if !current.resources.contains_key(&key) {
            return Err(ApplyError::NotFound(format!("{}/{name}", kind.name())));
        }
        let rev = self.store.commit(author, message, &[Change::Delete { kind, name: name.to_string() }])?;
        let mut next = current.resources.clone();
        next.remove(&key);
        self.state.send_replace(Arc::new(ConfigState { revision: rev, resources: next }));
        Ok(ApplyOutcome {
            revision: Some(rev),
            created: vec![],
            updated: vec![],
            unchanged: vec![],
            deleted: vec![format!("{}/{name}", kind.name())],
            dry_run: false,
        })
    }
}
