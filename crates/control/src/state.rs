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
    /// Field by field, what the change does.
    pub diff: Vec<crate::diff::ResourceChange>,
    /// Connected proxies (node ids) that receive something from the change.
    pub proxies: Vec<String>,
}

pub struct Controller {
    store: Store,
    /// What is published: the stored resources plus what the registry adds.
    state: watch::Sender<Arc<ConfigState>>,
    /// The committed resources (the latest revision).
    stored: Mutex<Arc<ConfigState>>,
    pub registry: Mutex<crate::registry::Registry>,
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
        let stored = Arc::new(ConfigState { revision, resources });
        let (state, _) = watch::channel(stored.clone());
        Ok(Arc::new(Self {
            store,
            state,
            stored: Mutex::new(stored),
            registry: Mutex::new(Default::default()),
            apply_lock: Mutex::new(()),
            fleet: Fleet::default(),
        }))
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<ConfigState>> {
        self.state.subscribe()
    }

    /// What proxies are served now.
    pub fn current(&self) -> Arc<ConfigState> {
        self.state.borrow().clone()
    }

    /// The committed resources, without what the registry adds.
    pub fn stored(&self) -> Arc<ConfigState> {
        self.stored.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_stored(&self, state: ConfigState) {
        *self.stored.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(state);
        self.publish();
    }

    /// Publishes the stored resources plus one ClusterLoadAssignment per
    /// registry service (an applied one of the same name wins).
    pub fn publish(&self) {
        let stored = self.stored();
        let generated = self.registry.lock().unwrap_or_else(|e| e.into_inner()).assignments();
        if generated.is_empty() {
            self.state.send_replace(stored);
            return;
        }
        let mut resources = stored.resources.clone();
        for doc in generated {
            let key = (Kind::ClusterLoadAssignment, doc.metadata.name.clone());
            if resources.contains_key(&key) {
                continue;
            }
            if let Ok(r) = compile(&doc) {
                resources.insert(key, Arc::new(r));
            }
        }
        self.state.send_replace(Arc::new(ConfigState { revision: stored.revision, resources }));
    }

    /// Drops expired registry instances and republishes if any went.
    pub fn expire_instances(&self) {
        let changed = self.registry.lock().unwrap_or_else(|e| e.into_inner()).expire(std::time::Instant::now());
        if changed {
            self.publish();
        }
    }

    /// The store, for tokens and the audit log.
    pub fn store(&self) -> &Store {
        &self.store
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
        let current = self.stored();
        let mut outcome = ApplyOutcome {
            revision: None,
            created: vec![],
            updated: vec![],
            unchanged: vec![],
            deleted: vec![],
            dry_run,
            diff: vec![],
            proxies: vec![],
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
        let before: Vec<Document> = current.resources.values().map(|r| r.doc.clone()).collect();
        let after: Vec<Document> = next.values().map(|r| r.doc.clone()).collect();
        outcome.diff = crate::diff::diff(&before, &after);
        outcome.proxies = self.affected(&current, &next);
        if dry_run || changes.is_empty() {
            return Ok(outcome);
        }
        let rev = self.store.commit(author, message, &changes)?;
        outcome.revision = Some(rev);
        self.set_stored(ConfigState { revision: rev, resources: next });
        Ok(outcome)
    }

    pub fn delete(&self, kind: Kind, name: &str, author: &str, message: &str) -> Result<ApplyOutcome, ApplyError> {
        let _guard = self.apply_lock.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.stored();
        let key = (kind, name.to_string());
        if !current.resources.contains_key(&key) {
            return Err(ApplyError::NotFound(format!("{}/{name}", kind.name())));
        }
        let rev = self.store.commit(author, message, &[Change::Delete { kind, name: name.to_string() }])?;
        let mut next = current.resources.clone();
        next.remove(&key);
        self.set_stored(ConfigState { revision: rev, resources: next });
        Ok(ApplyOutcome {
            revision: Some(rev),
            created: vec![],
            updated: vec![],
            unchanged: vec![],
            deleted: vec![format!("{}/{name}", kind.name())],
            dry_run: false,
            diff: vec![crate::diff::ResourceChange {
                resource: format!("{}/{name}", kind.name()),
                change: "removed",
                fields: vec![],
            }],
            proxies: vec![],
        })
    }

    /// Connected proxies that receive something different in `next`.
    fn affected(&self, current: &ConfigState, next: &BTreeMap<(Kind, String), Arc<Resource>>) -> Vec<String> {
        let changed: Vec<&Arc<Resource>> = next
            .iter()
            .filter(|(k, r)| {
                current.resources.get(*k).is_none_or(|old| old.version != r.version || old.nodes != r.nodes)
            })
            .map(|(_, r)| r)
            .chain(current.resources.iter().filter(|(k, _)| !next.contains_key(*k)).map(|(_, r)| r))
            .collect();
        let mut ids: Vec<String> = self
            .fleet
            .list()
            .into_iter()
            .filter(|p| changed.iter().any(|r| r.nodes.matches(&p.node)))
            .map(|p| p.node.id)
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// Every current resource as a document.
    pub fn documents(&self) -> Vec<Document> {
        self.stored().resources.values().map(|r| r.doc.clone()).collect()
    }

    /// The difference between revision `from` and revision `to` (or now).
    pub fn diff(&self, from: u64, to: Option<u64>) -> Result<Vec<crate::diff::ResourceChange>, ApplyError> {
        let a = self.store.state_at(from)?;
        let b = match to {
            Some(r) => self.store.state_at(r)?,
            None => self.documents(),
        };
        Ok(crate::diff::diff(&a, &b))
    }

    /// A new revision whose state is revision `rev`'s.
    pub fn rollback(&self, rev: u64, author: &str, message: &str) -> Result<ApplyOutcome, ApplyError> {
        let target = self.store.state_at(rev)?;
        let mut compiled = BTreeMap::new();
        let mut errors = Vec::new();
        for d in &target {
            match compile(d) {
                Ok(r) => {
                    compiled.insert((r.kind, r.name.clone()), Arc::new(r));
                }
                Err(e) => errors.extend(e),
            }
        }
        if !errors.is_empty() {
            return Err(ApplyError::Invalid(errors));
        }
        let _guard = self.apply_lock.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.stored();
        let mut changes = Vec::new();
        for (k, r) in &compiled {
            if current.resources.get(k).is_none_or(|old| old.version != r.version || old.nodes != r.nodes) {
                changes.push(Change::Apply(r.doc.clone()));
            }
        }
        for (kind, name) in current.resources.keys() {
            if !compiled.contains_key(&(*kind, name.clone())) {
                changes.push(Change::Delete { kind: *kind, name: name.clone() });
            }
        }
        let before: Vec<Document> = current.resources.values().map(|r| r.doc.clone()).collect();
        let diff = crate::diff::diff(&before, &target);
        let proxies = self.affected(&current, &compiled);
        let message = if message.is_empty() { format!("rollback to revision {rev}") } else { message.to_string() };
        let revision = if changes.is_empty() {
            None
        } else {
            let n = self.store.commit(author, &message, &changes)?;
            self.set_stored(ConfigState { revision: n, resources: compiled });
            Some(n)
        };
        Ok(ApplyOutcome {
            revision,
            created: vec![],
            updated: vec![],
            unchanged: vec![],
            deleted: vec![],
            dry_run: false,
            diff,
            proxies,
        })
    }
}
