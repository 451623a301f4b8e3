//! The published configuration and the controller that changes it.

use crate::discovery::fleet::Fleet;
use crate::discovery::node::NodeInfo;
use crate::discovery::registry::{Instance, Registration, Registry, RegistryError};
use crate::resources::compile::compile;
use crate::resources::diff::{self, ResourceChange};
use crate::resources::document::Document;
use crate::resources::expand::expand;
use crate::resources::kind::Kind;
use crate::resources::resource::{DocError, Resource, ResourceMap};
use crate::store::{Change, RevisionInfo, Store, StoreError};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// One immutable revision of everything the control plane serves.
#[derive(Default)]
pub struct ConfigState {
    pub revision: u64,
    pub resources: ResourceMap,
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

/// How often a change is recomputed when another replica committed first.
const COMMIT_ATTEMPTS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum RegistryOpError {
    #[error(transparent)]
    Invalid(#[from] RegistryError),
    #[error(transparent)]
    Store(#[from] StoreError),
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
    pub diff: Vec<ResourceChange>,
    /// Connected proxies (node ids) that receive something from the change.
    pub proxies: Vec<String>,
}

pub struct Controller {
    store: Store,
    /// What is published: the stored resources plus what the registry adds.
    state: watch::Sender<Arc<ConfigState>>,
    /// The committed resources (the latest revision).
    stored: Mutex<Arc<ConfigState>>,
    pub registry: Mutex<Registry>,
    /// Serializes changes: validate, commit, publish happen as one step.
    apply_lock: Mutex<()>,
    pub fleet: Fleet,
    /// This replica's name (in etcd's leader key and `/v1/replica`).
    replica_id: String,
    /// Whether this replica expires registry instances (always, on SQLite).
    leader: AtomicBool,
}

impl Controller {
    pub fn open(store: Store) -> Result<Arc<Self>, StoreError> {
        let (revision, docs) = store.load_current()?;
        let stored = Arc::new(ConfigState { revision, resources: compile_stored(docs) });
        let leader = store.etcd().is_none();
        let replica_id = format!("{}-{:08x}", std::process::id(), rand::random::<u32>());
        let (state, _) = watch::channel(stored.clone());
        let ctrl = Arc::new(Self {
            store,
            state,
            stored: Mutex::new(stored),
            registry: Mutex::new(Default::default()),
            apply_lock: Mutex::new(()),
            fleet: Fleet::default(),
            replica_id,
            leader: AtomicBool::new(leader),
        });
        ctrl.publish();
        Ok(ctrl)
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

    /// What `resources` publish with the registry's instances as they are now.
    fn expand(&self, resources: &ResourceMap) -> Result<ResourceMap, Vec<DocError>> {
        let instances = self.registry.lock().unwrap_or_else(|e| e.into_inner()).list();
        expand(resources, &instances)
    }

    /// Publishes the stored resources with everything they compile to.
    pub fn publish(&self) {
        let stored = self.stored();
        let resources = match self.expand(&stored.resources) {
            Ok(r) => r,
            Err(e) => {
                // Validated at apply; only the registry can change underneath.
                tracing::error!("cannot compile the configuration: {e:?}");
                return;
            }
        };
        self.state.send_replace(Arc::new(ConfigState { revision: stored.revision, resources }));
    }

    /// Loads the latest committed revision when it is newer than the one
    /// held (another replica committed it); returns its number if so.
    pub fn reload(&self) -> Result<Option<u64>, StoreError> {
        let _guard = self.apply_lock.lock().unwrap_or_else(|e| e.into_inner());
        let (revision, docs) = self.store.load_current()?;
        if revision <= self.stored().revision {
            return Ok(None);
        }
        self.set_stored(ConfigState { revision, resources: compile_stored(docs) });
        Ok(Some(revision))
    }

    /// Runs `attempt` again after loading what another replica committed,
    /// when that replica's commit got in first.
    fn retrying<T>(&self, mut attempt: impl FnMut() -> Result<T, ApplyError>) -> Result<T, ApplyError> {
        for _ in 1..COMMIT_ATTEMPTS {
            match attempt() {
                Err(ApplyError::Store(StoreError::Conflict { expected, found })) => {
                    tracing::info!("revision {expected} was superseded by {found} from another replica; retrying");
                    self.reload()?;
                }
                other => return other,
            }
        }
        attempt()
    }

    pub fn replica_id(&self) -> &str {
        &self.replica_id
    }

    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.store(leader, Ordering::Relaxed);
    }

    /// Registers an instance (in the shared store when there is one) and
    /// publishes its endpoints.
    pub fn register(&self, service: &str, r: Registration) -> Result<Instance, RegistryOpError> {
        let inst = Registry::instance(service, r)?;
        if let Some(etcd) = self.store.etcd() {
            etcd.put_instance(&inst.record())?;
        }
        self.mirror_registry(|reg| reg.insert(inst.clone()));
        Ok(inst)
    }

    /// Extends an instance's life; false when it is not (or no longer) registered.
    pub fn heartbeat(&self, service: &str, id: &str) -> Result<bool, StoreError> {
        let Some(etcd) = self.store.etcd() else {
            return Ok(self.registry.lock().unwrap_or_else(|e| e.into_inner()).heartbeat(service, id));
        };
        let Some(rec) = etcd.heartbeat_instance(service, id)? else { return Ok(false) };
        let inst = Instance::from_record(rec);
        self.registry.lock().unwrap_or_else(|e| e.into_inner()).insert(inst);
        Ok(true)
    }

    pub fn deregister(&self, service: &str, id: &str) -> Result<bool, StoreError> {
        let removed = match self.store.etcd() {
            Some(etcd) => etcd.delete_instance(service, id)?,
            None => false,
        };
        let mut local = false;
        self.mirror_registry(|reg| local = reg.deregister(service, id));
        Ok(removed || local)
    }

    pub fn instances(&self) -> Vec<Instance> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner()).list()
    }

    /// Changes the registry and republishes.
    pub fn mirror_registry(&self, f: impl FnOnce(&mut Registry)) {
        f(&mut self.registry.lock().unwrap_or_else(|e| e.into_inner()));
        self.publish();
    }

    /// Drops expired registry instances and republishes if any went. On etcd
    /// the leader does this in the store instead (see `replication`).
    pub fn expire_instances(&self) {
        if self.store.etcd().is_some() {
            return;
        }
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
        self.apply_with_deletes(docs, &[], author, message, dry_run)
    }

    /// Like `apply`, with deletions in the same revision (a watched folder
    /// that lost a resource).
    pub fn apply_with_deletes(
        &self,
        docs: &[Document],
        deletes: &[(Kind, String)],
        author: &str,
        message: &str,
        dry_run: bool,
    ) -> Result<ApplyOutcome, ApplyError> {
        self.retrying(|| self.try_apply(docs, deletes, author, message, dry_run))
    }

    fn try_apply(
        &self,
        docs: &[Document],
        deletes: &[(Kind, String)],
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
        for (kind, name) in deletes {
            if next.remove(&(*kind, name.clone())).is_some() {
                outcome.deleted.push(format!("{}/{name}", kind.name()));
                changes.push(Change::Delete { kind: *kind, name: name.clone() });
            }
        }
        // References (a route to an unknown service, a subset that does not
        // exist, two gateways on one address) and what Services and Gateways
        // compile to are checked before anything is committed.
        self.expand(&next).map_err(ApplyError::Invalid)?;
        let before: Vec<Document> = current.resources.values().map(|r| r.doc.clone()).collect();
        let after: Vec<Document> = next.values().map(|r| r.doc.clone()).collect();
        outcome.diff = diff::diff(&before, &after);
        outcome.proxies = self.affected(&current, &next);
        if dry_run || changes.is_empty() {
            return Ok(outcome);
        }
        let rev = self.store.commit(current.revision, author, message, &changes)?;
        outcome.revision = Some(rev);
        self.set_stored(ConfigState { revision: rev, resources: next });
        Ok(outcome)
    }

    pub fn delete(&self, kind: Kind, name: &str, author: &str, message: &str) -> Result<ApplyOutcome, ApplyError> {
        self.retrying(|| self.try_delete(kind, name, author, message))
    }

    fn try_delete(&self, kind: Kind, name: &str, author: &str, message: &str) -> Result<ApplyOutcome, ApplyError> {
        let _guard = self.apply_lock.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.stored();
        let key = (kind, name.to_string());
        if !current.resources.contains_key(&key) {
            return Err(ApplyError::NotFound(format!("{}/{name}", kind.name())));
        }
        let mut next = current.resources.clone();
        next.remove(&key);
        self.expand(&next).map_err(ApplyError::Invalid)?;
        let rev =
            self.store.commit(current.revision, author, message, &[Change::Delete { kind, name: name.to_string() }])?;
        self.set_stored(ConfigState { revision: rev, resources: next });
        Ok(ApplyOutcome {
            revision: Some(rev),
            created: vec![],
            updated: vec![],
            unchanged: vec![],
            deleted: vec![format!("{}/{name}", kind.name())],
            dry_run: false,
            diff: vec![ResourceChange {
                resource: format!("{}/{name}", kind.name()),
                change: "removed",
                fields: vec![],
            }],
            proxies: vec![],
        })
    }

    /// Connected proxies that receive something different in `next`.
    fn affected(&self, current: &ConfigState, next: &ResourceMap) -> Vec<String> {
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
    pub fn diff(&self, from: u64, to: Option<u64>) -> Result<Vec<ResourceChange>, ApplyError> {
        let a = self.store.state_at(from)?;
        let b = match to {
            Some(r) => self.store.state_at(r)?,
            None => self.documents(),
        };
        Ok(diff::diff(&a, &b))
    }

    /// A new revision whose state is revision `rev`'s.
    pub fn rollback(&self, rev: u64, author: &str, message: &str) -> Result<ApplyOutcome, ApplyError> {
        self.retrying(|| self.try_rollback(rev, author, message))
    }

    fn try_rollback(&self, rev: u64, author: &str, message: &str) -> Result<ApplyOutcome, ApplyError> {
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
        let diff = diff::diff(&before, &target);
        let proxies = self.affected(&current, &compiled);
        let message = if message.is_empty() { format!("rollback to revision {rev}") } else { message.to_string() };
        let revision = if changes.is_empty() {
            None
        } else {
            let n = self.store.commit(current.revision, author, &message, &changes)?;
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

/// Compiles stored documents; one that no longer validates is logged and left out.
fn compile_stored(docs: Vec<Document>) -> ResourceMap {
    let mut resources = BTreeMap::new();
    for d in docs {
        match compile(&d) {
            Ok(r) => {
                resources.insert((r.kind, r.name.clone()), Arc::new(r));
            }
            Err(e) => tracing::error!("stored resource {}/{} no longer validates: {:?}", d.kind, d.metadata.name, e),
        }
    }
    resources
}
