//! Staged rollouts of a configuration change: the new revision is committed
//! and served only to the canary proxies, every other proxy keeps the
//! previous one (`ConfigState::view`); the rollout task then promotes it to
//! everyone (a revision with the same resources) or gives the canary the
//! previous revision back (a revision restoring it). No other change is
//! committed meanwhile. The record of each rollout is on `Controller::rollouts`.

use crate::clock::unix_ms;
use crate::resources::kind::Kind;
use crate::resources::resource::ResourceMap;
use crate::rollouts::board::{check_document, Evidence, Policy, Record, ReplicaReport, RolloutState, POLICY_NAME};
use crate::state::apply::ApplyError;
use crate::state::config::{ConfigState, Staging};
use crate::state::controller::Controller;
use crate::state::stage::{Staged, STAGED_PREFIX};
use crate::store::{Change, Commit};
use std::collections::BTreeSet;
use std::sync::Arc;

impl Controller {
    /// The rollout in progress, if any.
    pub fn staged_rollout(&self) -> Option<Record> {
        self.staged.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|s| s.record.clone())
    }

    /// The policy of the `Rollout` resource named `default`, when there is
    /// one: applies that give none (through the API, or from the watched
    /// folder) are staged with it.
    pub fn default_rollout_policy(&self) -> Option<Policy> {
        let state = self.stored();
        let r = state.resources.get(&(Kind::Rollout, POLICY_NAME.to_string()))?;
        check_document(&r.doc).ok()
    }

    /// The staging to publish with the stored revision: the canary, and the
    /// previous revision expanded as it is served now.
    pub(super) fn staging(&self) -> Option<Staging> {
        let (previous, canary) = {
            let s = self.staged.lock().unwrap_or_else(|e| e.into_inner());
            let s = s.as_ref()?;
            (s.previous.clone(), s.record.canary.iter().cloned().collect::<BTreeSet<String>>())
        };
        let resources = match self.expand(&previous.resources) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("cannot compile the previous revision of a staged rollout: {e:?}");
                previous.resources.clone()
            }
        };
        let previous = Arc::new(ConfigState { revision: previous.revision, resources, staging: None });
        Some(Staging { canary, previous })
    }

    /// Refuses a change while a rollout is staged (its comparison needs
    /// the two revisions to stay as they are).
    pub(super) fn refuse_while_staged(&self) -> Result<(), ApplyError> {
        match self.staged_rollout() {
            Some(r) => Err(ApplyError::Busy(format!(
                "revision {} is being rolled out to {} (hold {} ms); changes wait until it is promoted or rolled back",
                r.revision,
                r.canary.join(", "),
                r.policy.hold_ms
            ))),
            None => Ok(()),
        }
    }

    /// The record of revision `rev`, about to be committed over `current`
    /// and staged for `canary` among `receivers`.
    pub(super) fn staged_record(
        &self,
        current: &ConfigState,
        rev: u64,
        author: &str,
        policy: &Policy,
        canary: Vec<String>,
        receivers: &[String],
    ) -> Record {
        let others = receivers.iter().filter(|p| !canary.contains(p)).cloned().collect();
        Record {
            revision: rev,
            previous: current.revision,
            state: RolloutState::Staged,
            author: author.to_string(),
            canary,
            others,
            policy: policy.clone(),
            started_ms: unix_ms(),
            decided_ms: None,
            final_revision: None,
            reason: String::new(),
            evidence: None,
        }
    }

    /// Holds `record` as the rollout in progress, `previous` being what the
    /// other proxies keep; the monitor counts the rollout's figures from now.
    /// Called under the apply lock, before the staged revision is published.
    pub(super) fn install_staged(&self, previous: ResourceMap, record: Record) {
        self.monitor.set_mark(record.revision);
        let previous = Arc::new(ConfigState { revision: record.previous, resources: previous, staging: None });
        *self.staged.lock().unwrap_or_else(|e| e.into_inner()) = Some(Staged { previous, record });
    }

    /// Takes the rollout record the store holds with revision `rev` (loaded
    /// from the store, another replica may have written it): a rollout
    /// staged at `rev` is served as this replica's own (the previous
    /// revision read from the store), one that ended is kept in the
    /// history and no longer served. Called under the apply lock, before
    /// `rev` is published.
    pub(super) fn adopt_rollout(&self, rev: u64, text: Option<&str>) {
        let record = text.and_then(|t| match serde_json::from_str::<Record>(t) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::error!("unreadable rollout record in the store: {e}");
                None
            }
        });
        let held = self.staged_rollout().map(|r| r.revision);
        match record {
            Some(r) if r.state == RolloutState::Staged && r.revision == rev => {
                if held == Some(rev) {
                    return;
                }
                match self.store.state_at(r.previous) {
                    Ok(docs) => {
                        tracing::info!("revision {rev} is staged on {} (rollout from the store)", r.canary.join(", "));
                        self.install_staged(super::controller::compile_stored(docs), r);
                    }
                    Err(e) => tracing::error!("cannot read revision {} for the staged rollout: {e}", r.previous),
                }
            }
            other => {
                if let Some(r) = other.filter(|r| r.state != RolloutState::Staged) {
                    self.rollouts.push_new(r);
                }
                if let Some(h) = held {
                    self.monitor.clear_mark(h);
                    *self.staged.lock().unwrap_or_else(|e| e.into_inner()) = None;
                }
            }
        }
    }

    /// The other replicas' reports (none on SQLite, or when the store
    /// cannot be read: then only this replica's proxies are known).
    pub fn remote_reports(&self) -> Vec<ReplicaReport> {
        let Some(etcd) = self.store.etcd() else { return Vec::new() };
        match etcd.replica_reports() {
            Ok(raw) => raw
                .iter()
                .filter_map(|r| serde_json::from_slice::<ReplicaReport>(r).ok())
                .filter(|r| r.replica != self.replica_id())
                .collect(),
            Err(e) => {
                tracing::warn!("cannot read the other replicas' reports: {e}");
                Vec::new()
            }
        }
    }

    /// The record of a staged apply that nobody needed to wait for
    /// (`reason`): promoted at once.
    pub(super) fn unstaged(&self, rev: u64, previous: u64, author: &str, policy: &Policy, reason: &str) -> Record {
        let now = unix_ms();
        let record = Record {
            revision: rev,
            previous,
            state: RolloutState::Promoted,
            author: author.to_string(),
            canary: Vec::new(),
            others: Vec::new(),
            policy: policy.clone(),
            started_ms: now,
            decided_ms: Some(now),
            final_revision: Some(rev),
            reason: reason.to_string(),
            evidence: None,
        };
        self.rollouts.push(record.clone());
        record
    }

    /// Ends the staged rollout: `promote` serves its revision to every proxy
    /// (a new revision with the same resources), otherwise the previous
    /// revision's resources come back (a new revision restoring them).
    pub fn finish_rollout(&self, promote: bool, reason: &str, evidence: Evidence) -> Result<Record, ApplyError> {
        let _guard = self.apply_lock.lock().unwrap_or_else(|e| e.into_inner());
        let Some(staged) = self.staged.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|s| s.previous.clone())
        else {
            return Err(ApplyError::NotFound("a staged rollout".into()));
        };
        let current = self.stored();
        let record = self.staged_rollout().ok_or_else(|| ApplyError::NotFound("a staged rollout".into()))?;
        let (resources, changes, message) = if promote {
            let m = format!("rollout of revision {} promoted to every proxy: {reason}", record.revision);
            (current.resources.clone(), Vec::new(), m)
        } else {
            let m = format!(
                "rollout of revision {} rolled back to revision {}: {reason}",
                record.revision, record.previous
            );
            (staged.resources.clone(), changes_to(&current.resources, &staged.resources), m)
        };
        let mut done = record;
        done.state = if promote { RolloutState::Promoted } else { RolloutState::RolledBack };
        (done.decided_ms, done.final_revision) = (Some(unix_ms()), Some(current.revision + 1));
        done.reason = reason.to_string();
        done.evidence = Some(evidence);
        let text = serde_json::to_string(&done).map_err(|e| ApplyError::Busy(format!("rollout record: {e}")))?;
        let rev = self
            .store
            .commit(Commit { rollout: Some(&text), ..Commit::new(current.revision, "rollout", &message, &changes) })?;
        // Into the history before it stops being the current rollout, so a
        // reader of `/v1/rollouts/{rev}` always finds it in one or the other.
        self.rollouts.push(done.clone());
        *self.staged.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.monitor.clear_mark(done.revision);
        self.set_stored(ConfigState { revision: rev, resources, staging: None });
        tracing::info!("{message}");
        Ok(done)
    }

    /// At start: a latest revision that is an unfinished staged rollout
    /// (the control plane stopped during its hold) is rolled back, since
    /// its evidence is gone and every proxy would otherwise receive it.
    pub(super) fn undo_unfinished_rollout(&self) {
        let Ok(latest) = self.history(1) else { return };
        let Some(last) = latest.first() else { return };
        if !last.message.starts_with(STAGED_PREFIX) || last.revision < 2 {
            return;
        }
        let message = format!(
            "rollout of revision {} rolled back to revision {}: the control plane restarted during its hold",
            last.revision,
            last.revision - 1
        );
        match self.rollback(last.revision - 1, "rollout", &message) {
            Ok(_) => tracing::warn!("{message}"),
            Err(e) => tracing::error!("cannot roll back the unfinished rollout of revision {}: {e}", last.revision),
        }
    }
}

/// The store changes that turn `from` into `to`.
pub(super) fn changes_to(from: &ResourceMap, to: &ResourceMap) -> Vec<Change> {
    let mut changes: Vec<Change> = to
        .iter()
        .filter(|(k, r)| from.get(*k).is_none_or(|old| !old.publishes_same(r) || old.doc.status != r.doc.status))
        .map(|(_, r)| Change::Apply(r.doc.clone()))
        .collect();
    for (kind, name) in from.keys() {
        if !to.contains_key(&(*kind, name.clone())) {
            changes.push(Change::Delete { kind: *kind, name: name.clone() });
        }
    }
    changes
}
