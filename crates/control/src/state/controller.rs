//! The controller: the store, the committed revision, what is published from
//! it (with the registry's endpoints), the fleet of connected proxies, and
//! this replica's place among others.

use crate::discovery::agents::Agents;
use crate::discovery::fleet::Fleet;
use crate::discovery::health::EndpointHealth;
use crate::discovery::registry::Registry;
use crate::monitor::Monitor;
use crate::resources::compile::compile;
use crate::resources::diff::{self, ResourceChange};
use crate::resources::document::Document;
use crate::resources::expand::expand;
use crate::resources::resource::{documents, DocError, ResourceMap};
use crate::state::config::ConfigState;
use crate::store::{RevisionInfo, Store, StoreError};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;

pub struct Controller {
    pub(super) store: Store,
    /// What is published: the stored resources plus what the registry adds.
    state: watch::Sender<Arc<ConfigState>>,
    /// The committed resources (the latest revision).
    stored: Mutex<Arc<ConfigState>>,
    pub(super) registry: Mutex<Registry>,
    /// Serializes changes: validate, commit, publish happen as one step.
    pub(super) apply_lock: Mutex<()>,
    pub fleet: Fleet,
    /// Node agents: the proxy processes they supervise, commands for them.
    pub agents: Agents,
    /// Where this control plane serves xDS (the bootstraps it hands out point there).
    pub xds_addr: std::sync::OnceLock<std::net::SocketAddr>,
    /// What the proxies report about their traffic.
    pub monitor: Arc<Monitor>,
    /// Alert rules' states, their history and notifications.
    pub alerts: crate::alerts::board::Alerts,
    /// A staged rollout in progress (see `state::staged`).
    pub(super) staged: Mutex<Option<crate::state::stage::Staged>>,
    /// Finished staged rollouts, for the API.
    pub rollouts: crate::rollouts::board::History,
    /// Proxies checking endpoints for the control plane (HDS), and their results.
    pub checks: crate::discovery::checks::Checks,
    /// Abnormal nodes with their causes and repairs, as last evaluated.
    pub faults: crate::fault::board::Faults,
    /// What EDS holds against endpoints (abnormal nodes), set by `fault/`.
    health: Mutex<Arc<EndpointHealth>>,
    /// This replica's name (in etcd's leader key and `/v1/replica`).
    replica_id: String,
    /// The other replicas on the same store (their API addresses).
    pub replicas: crate::discovery::replicas::Replicas,
    /// Whether this replica expires registry instances (always, on SQLite).
    leader: AtomicBool,
    /// The rate limit service's counts (`ratelimit::shared` adds the other
    /// replicas').
    pub rate_counters: Arc<crate::ratelimit::counters::Counters>,
}

impl Controller {
    pub fn open(store: Store) -> Result<Arc<Self>, StoreError> {
        let (revision, docs, rollout) = store.load_current()?;
        let stored = Arc::new(ConfigState { revision, resources: compile_stored(docs), staging: None });
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
            agents: Agents::default(),
            xds_addr: std::sync::OnceLock::new(),
            monitor: Arc::new(Monitor::default()),
            alerts: Default::default(),
            staged: Mutex::new(None),
            rollouts: Default::default(),
            faults: Default::default(),
            checks: Default::default(),
            health: Mutex::new(Arc::new(EndpointHealth::default())),
            replica_id,
            replicas: Default::default(),
            leader: AtomicBool::new(leader),
            rate_counters: Arc::default(),
        });
        ctrl.adopt_rollout(revision, rollout.as_deref());
        ctrl.publish();
        if leader {
            ctrl.undo_unfinished_rollout();
        }
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

    /// Makes `state` the committed revision and publishes it.
    pub(super) fn set_stored(&self, state: ConfigState) {
        *self.stored.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(state);
        self.publish();
    }

    pub(super) fn lock_registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What `resources` publish with the registry's instances as they are now.
    pub(super) fn expand(&self, resources: &ResourceMap) -> Result<ResourceMap, Vec<DocError>> {
        let instances = self.lock_registry().list();
        expand(resources, &instances, &self.health())
    }

    /// What EDS holds against endpoints now.
    pub fn health(&self) -> Arc<EndpointHealth> {
        self.health.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Sets what EDS holds against endpoints and, when it changed,
    /// publishes again (proxies get the new load assignments).
    pub fn set_health(&self, health: EndpointHealth) {
        {
            let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
            if **h == health {
                return;
            }
            *h = Arc::new(health);
        }
        let _guard = self.apply_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.publish();
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
        let staging = self.staging();
        self.state.send_replace(Arc::new(ConfigState { revision: stored.revision, resources, staging }));
    }

    /// Loads the latest committed revision when it is newer than the one
    /// held (another replica committed it); returns its number if so.
    pub fn reload(&self) -> Result<Option<u64>, StoreError> {
        let _guard = self.apply_lock.lock().unwrap_or_else(|e| e.into_inner());
        let (revision, docs, rollout) = self.store.load_current()?;
        if revision <= self.stored().revision {
            return Ok(None);
        }
        // The rollout first: a proxy outside a staged rollout's canary is
        // never published the staged revision.
        self.adopt_rollout(revision, rollout.as_deref());
        self.set_stored(ConfigState { revision, resources: compile_stored(docs), staging: None });
        Ok(Some(revision))
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

    /// The store, for tokens and the audit log.
    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn history(&self, limit: usize) -> Result<Vec<RevisionInfo>, StoreError> {
        self.store.history(limit)
    }

    /// Every current resource as a document.
    pub fn documents(&self) -> Vec<Document> {
        documents(&self.stored().resources)
    }

    /// The difference between revision `from` and revision `to` (or now).
    pub fn diff(&self, from: u64, to: Option<u64>) -> Result<Vec<ResourceChange>, StoreError> {
        let a = self.store.state_at(from)?;
        let b = match to {
            Some(r) => self.store.state_at(r)?,
            None => self.documents(),
        };
        Ok(diff::diff(&a, &b))
    }
}

/// Compiles stored documents; one that no longer validates is logged and left out.
pub(super) fn compile_stored(docs: Vec<Document>) -> ResourceMap {
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
