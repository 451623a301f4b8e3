//! Changing the configuration: apply, delete and rollback each validate
//! everything first (all or nothing), commit one revision, then publish it;
//! a commit that another replica got in before is recomputed on its state.

use crate::resources::compile::{compile, release_version};
use crate::resources::diff::{self, ResourceChange};
use crate::resources::document::Document;
use crate::resources::kind::Kind;
use crate::resources::references;
use crate::resources::resource::{documents, DocError, Resource, ResourceMap};
use crate::rollouts::board::{Policy, Record};
use crate::state::config::ConfigState;
use crate::state::controller::Controller;
use crate::state::stage::STAGED_PREFIX;
use crate::store::{Change, Commit, StoreError};
use serde::Serialize;
use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

/// How often a change is recomputed when another replica committed first.
const COMMIT_ATTEMPTS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("invalid resources")]
    Invalid(Vec<DocError>),
    /// References the change leaves unresolved (`resources/references`);
    /// a forced apply accepts them.
    #[error("unresolved references")]
    Dangling(Vec<DocError>),
    #[error("{0} not found")]
    NotFound(String),
    /// A staged rollout is in progress (or cannot be staged here).
    #[error("{0}")]
    Busy(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Default, Serialize)]
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
    /// A staged apply: the rollout (its canary, or why nothing was staged).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Record>,
}

impl Controller {
    /// Validates every document (all or nothing), commits one revision, publishes.
    pub fn apply(
        &self,
        docs: &[Document],
        author: &str,
        message: &str,
        dry_run: bool,
    ) -> Result<ApplyOutcome, ApplyError> {
        self.apply_with(docs, author, message, ApplyOptions { dry_run, ..Default::default() })
    }

    /// `apply` as `opts` says: deletions in the same revision, staged to a
    /// canary, forced past unresolved references, or a dry run.
    pub fn apply_with(
        &self,
        docs: &[Document],
        author: &str,
        message: &str,
        opts: ApplyOptions<'_>,
    ) -> Result<ApplyOutcome, ApplyError> {
        self.retrying(|| self.try_apply(docs, author, message, opts))
    }

    pub fn delete(&self, kind: Kind, name: &str, author: &str, message: &str) -> Result<ApplyOutcome, ApplyError> {
        self.retrying(|| self.try_delete(kind, name, author, message))
    }

    /// A new revision whose state is revision `rev`'s.
    pub fn rollback(&self, rev: u64, author: &str, message: &str) -> Result<ApplyOutcome, ApplyError> {
        self.retrying(|| self.try_rollback(rev, author, message))
    }

    /// Records a resource's `status` (a Release's step) as a new revision.
    pub fn set_status(
        &self,
        kind: Kind,
        name: &str,
        status: serde_json::Value,
        author: &str,
        message: &str,
    ) -> Result<ApplyOutcome, ApplyError> {
        self.retrying(|| {
            let _guard = self.apply_lock.lock().unwrap_or_else(|e| e.into_inner());
            self.refuse_while_staged()?;
            let current = self.stored();
            let key = (kind, name.to_string());
            let old =
                current.resources.get(&key).ok_or_else(|| ApplyError::NotFound(format!("{}/{name}", kind.name())))?;
            let mut doc = old.doc.clone();
            doc.status = Some(status.clone());
            let r = compile(&doc).map_err(ApplyError::Invalid)?;
            let mut next = current.resources.clone();
            next.insert(key, Arc::new(r));
            self.expand(&next).map_err(ApplyError::Invalid)?;
            let mut outcome = ApplyOutcome {
                diff: diff::diff(&documents(&current.resources), &documents(&next)),
                proxies: self.affected(&current, &next),
                updated: vec![format!("{}/{name}", kind.name())],
                ..Default::default()
            };
            let rev = self.store.commit(Commit::new(current.revision, author, message, &[Change::Apply(doc)]))?;
            outcome.revision = Some(rev);
            self.set_stored(ConfigState { revision: rev, resources: next, staging: None });
            Ok(outcome)
        })
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

    fn try_apply(
        &self,
        docs: &[Document],
        author: &str,
        message: &str,
        opts: ApplyOptions<'_>,
    ) -> Result<ApplyOutcome, ApplyError> {
        let ApplyOptions { dry_run, policy, force, deletes } = opts;
        let compiled = compile_unique(docs)?;
        let _guard = self.apply_lock.lock().unwrap_or_else(|e| e.into_inner());
        if !dry_run {
            self.refuse_while_staged()?;
        }
        let current = self.stored();
        let mut outcome = ApplyOutcome { dry_run, ..Default::default() };
        let mut changes = Vec::new();
        let mut next = current.resources.clone();
        for mut r in compiled {
            if r.kind == Kind::Release {
                // The status belongs to the control plane: a user's apply keeps it.
                let old = current.resources.get(&(r.kind, r.name.clone()));
                r.doc.status = old.and_then(|o| o.doc.status.clone());
                r.version = release_version(&r.doc);
            } else {
                // Only a Release has a status; what a user sends is dropped.
                r.doc.status = None;
            }
            let label = format!("{}/{}", r.kind.name(), r.name);
            match current.resources.get(&(r.kind, r.name.clone())) {
                Some(old) if old.publishes_same(&r) => {
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
        let published = self.expand(&next).map_err(ApplyError::Invalid)?;
        if !force {
            // References between raw Envoy resources: only those this change
            // could have broken are judged.
            let touched: BTreeSet<(Kind, String)> = changes
                .iter()
                .filter_map(|c| match c {
                    Change::Apply(d) => Kind::parse(&d.kind).map(|k| (k, d.metadata.name.clone())),
                    Change::Delete { kind, name } => Some((*kind, name.clone())),
                })
                .collect();
            let dangling = references::dangling(&next, &published, &touched, &self.connected_nodes());
            if !dangling.is_empty() {
                return Err(ApplyError::Dangling(dangling));
            }
        }
        outcome.diff = diff::diff(&documents(&current.resources), &documents(&next));
        outcome.proxies = self.affected(&current, &next);
        if dry_run || changes.is_empty() {
            return Ok(outcome);
        }
        // A change of the rollout policy alone is never staged.
        let policy = policy.filter(|_| !changes.iter().all(|c| c.kind() == Some(Kind::Rollout)));
        let canary = policy.map(|p| (p, p.pick(&outcome.proxies, current.revision + 1)));
        if let Some((p, c)) = &canary {
            if c.is_empty() && !p.nodes.is_empty() {
                return Err(ApplyError::Busy(format!(
                    "none of the named proxies ({}) is connected and receives the change (it goes to: {})",
                    p.nodes.join(", "),
                    outcome.proxies.join(", ")
                )));
            }
        }
        let message = match &canary {
            Some((p, c)) if !c.is_empty() => format!(
                "{STAGED_PREFIX} to {} of {} proxies ({}), hold {} ms: {message}",
                c.len(),
                outcome.proxies.len(),
                c.join(", "),
                p.hold_ms
            ),
            _ => message.to_string(),
        };
        let staged = match &canary {
            Some((p, c)) if !c.is_empty() => {
                Some(self.staged_record(&current, current.revision + 1, author, p, c.clone(), &outcome.proxies))
            }
            _ => None,
        };
        let text =
            staged.as_ref().map(serde_json::to_string).transpose().map_err(|e| ApplyError::Busy(e.to_string()))?;
        let rev = self
            .store
            .commit(Commit { rollout: text.as_deref(), ..Commit::new(current.revision, author, &message, &changes) })?;
        outcome.revision = Some(rev);
        if let Some(record) = staged {
            self.install_staged(current.resources.clone(), record.clone());
            outcome.rollout = Some(record);
        } else if let Some((p, _)) = canary {
            outcome.rollout =
                Some(self.unstaged(rev, current.revision, author, p, "no connected proxy receives the change"));
        }
        self.set_stored(ConfigState { revision: rev, resources: next, staging: None });
        Ok(outcome)
    }

    fn try_delete(&self, kind: Kind, name: &str, author: &str, message: &str) -> Result<ApplyOutcome, ApplyError> {
        let _guard = self.apply_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.refuse_while_staged()?;
        let current = self.stored();
        let key = (kind, name.to_string());
        if !current.resources.contains_key(&key) {
            return Err(ApplyError::NotFound(format!("{}/{name}", kind.name())));
        }
        let mut next = current.resources.clone();
        next.remove(&key);
        self.expand(&next).map_err(ApplyError::Invalid)?;
        let rev = self.store.commit(Commit::new(
            current.revision,
            author,
            message,
            &[Change::Delete { kind, name: name.to_string() }],
        ))?;
        self.set_stored(ConfigState { revision: rev, resources: next, staging: None });
        Ok(ApplyOutcome {
            revision: Some(rev),
            deleted: vec![format!("{}/{name}", kind.name())],
            diff: vec![ResourceChange {
                resource: format!("{}/{name}", kind.name()),
                change: "removed",
                fields: vec![],
            }],
            ..Default::default()
        })
    }

    fn try_rollback(&self, rev: u64, author: &str, message: &str) -> Result<ApplyOutcome, ApplyError> {
        let target = self.store.state_at(rev)?;
        let (compiled, errors) = compile_each(&target);
        if !errors.is_empty() {
            return Err(ApplyError::Invalid(errors));
        }
        let compiled: ResourceMap = compiled.into_iter().map(|r| ((r.kind, r.name.clone()), Arc::new(r))).collect();
        let _guard = self.apply_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.refuse_while_staged()?;
        let current = self.stored();
        let mut changes = Vec::new();
        for (k, r) in &compiled {
            if current.resources.get(k).is_none_or(|old| !old.publishes_same(r)) {
                changes.push(Change::Apply(r.doc.clone()));
            }
        }
        for (kind, name) in current.resources.keys() {
            if !compiled.contains_key(&(*kind, name.clone())) {
                changes.push(Change::Delete { kind: *kind, name: name.clone() });
            }
        }
        let diff = diff::diff(&documents(&current.resources), &target);
        let proxies = self.affected(&current, &compiled);
        let message = if message.is_empty() { format!("rollback to revision {rev}") } else { message.to_string() };
        let revision = if changes.is_empty() {
            None
        } else {
            let n = self.store.commit(Commit::new(current.revision, author, &message, &changes))?;
            self.set_stored(ConfigState { revision: n, resources: compiled, staging: None });
            Some(n)
        };
        Ok(ApplyOutcome { revision, diff, proxies, ..Default::default() })
    }

    /// The connected proxies, this replica's and (on etcd) the others'.
    fn connected_nodes(&self) -> Vec<crate::discovery::node::NodeInfo> {
        let remote = self.remote_reports().into_iter().flat_map(|r| r.proxies);
        self.fleet.list().into_iter().map(|p| p.node).chain(remote).collect()
    }

    /// Connected proxies that receive something different in `next`.
    fn affected(&self, current: &ConfigState, next: &ResourceMap) -> Vec<String> {
        let changed: Vec<&Arc<Resource>> = next
            .iter()
            .filter(|(k, r)| current.resources.get(*k).is_none_or(|old| !old.publishes_same(r)))
            .map(|(_, r)| r)
            .chain(current.resources.iter().filter(|(k, _)| !next.contains_key(*k)).map(|(_, r)| r))
            .collect();
        // On etcd, the proxies of the other replicas too.
        let remote = self.remote_reports().into_iter().flat_map(|r| r.proxies);
        let mut ids: Vec<String> = self
            .fleet
            .list()
            .into_iter()
            .map(|p| p.node)
            .chain(remote)
            .filter(|n| changed.iter().any(|r| r.nodes.matches(n)))
            .map(|n| n.id)
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }
}

/// How an apply goes.
#[derive(Clone, Copy, Default)]
pub struct ApplyOptions<'a> {
    /// Validate and show the change; commit nothing.
    pub dry_run: bool,
    /// Staged: the new revision goes to the canary this policy picks among
    /// the connected proxies that would receive it; the others keep the
    /// current revision until the rollout task decides.
    pub policy: Option<&'a Policy>,
    /// References the change leaves unresolved (a route to a cluster no
    /// resource defines, ...) are accepted.
    pub force: bool,
    /// Resources deleted in the same revision (a watched folder that lost one).
    pub deletes: &'a [(Kind, String)],
}

/// Compiles every document: the resources that compiled, and the problems
/// of those that did not.
fn compile_each(docs: &[Document]) -> (Vec<Resource>, Vec<DocError>) {
    let mut compiled = Vec::new();
    let mut errors = Vec::new();
    for d in docs {
        match compile(d) {
            Ok(r) => compiled.push(r),
            Err(e) => errors.extend(e),
        }
    }
    (compiled, errors)
}

/// Compiles the documents of one apply, where a resource may appear once.
fn compile_unique(docs: &[Document]) -> Result<Vec<Resource>, ApplyError> {
    let (compiled, mut errors) = compile_each(docs);
    let mut seen = HashSet::new();
    for r in &compiled {
        if !seen.insert((r.kind, r.name.clone())) {
            errors.push(DocError {
                resource: format!("{}/{}", r.kind.name(), r.name),
                path: "metadata.name".into(),
                reason: "appears twice in one apply".into(),
            });
        }
    }
    if errors.is_empty() {
        Ok(compiled)
    } else {
        Err(ApplyError::Invalid(errors))
    }
}
