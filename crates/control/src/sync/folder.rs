//! A watched folder of resource files (GitOps style): every change to the
//! `.yaml`/`.yml`/`.json` files becomes one revision; a resource that
//! disappears from the files is deleted in that revision. Polled every half
//! second, so a saved file reaches the proxies within about a second. With a
//! `Rollout` policy named `default`, a change is staged on a canary as an
//! API apply is; while a rollout is staged, the files wait and are applied
//! once it ends.

use crate::resources::document::parse_documents;
use crate::resources::kind::Kind;
use crate::state::apply::{ApplyError, ApplyOptions};
use crate::state::controller::Controller;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// (file list with sizes and modification times): changes when any file does.
fn fingerprint(dir: &Path) -> Option<Vec<(PathBuf, u64, std::time::SystemTime)>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if !p.extension().is_some_and(|x| x == "yaml" || x == "yml" || x == "json") {
            continue;
        }
        let m = e.metadata().ok()?;
        v.push((p, m.len(), m.modified().ok()?));
    }
    v.sort();
    Some(v)
}

/// Applies the folder once. Returns the resources it now owns.
pub fn sync_once(
    ctrl: &Controller,
    dir: &Path,
    owned: &BTreeSet<(Kind, String)>,
) -> Result<BTreeSet<(Kind, String)>, SyncError> {
    let unreadable = |e: String| SyncError::Invalid(e);
    let mut files: Vec<PathBuf> = fingerprint(dir)
        .ok_or_else(|| unreadable(format!("cannot read {}", dir.display())))?
        .into_iter()
        .map(|f| f.0)
        .collect();
    files.sort();
    let mut docs = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).map_err(|e| unreadable(format!("{}: {e}", f.display())))?;
        docs.extend(parse_documents(&text).map_err(|e| unreadable(format!("{}: {e}", f.display())))?);
    }
    let now: BTreeSet<(Kind, String)> =
        docs.iter().filter_map(|d| Kind::parse(&d.kind).map(|k| (k, d.metadata.name.clone()))).collect();
    let gone: Vec<(Kind, String)> = owned.difference(&now).cloned().collect();
    let names: Vec<String> =
        files.iter().filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned())).collect();
    let author = format!("watch:{}", dir.display());
    let message = format!("files: {}", names.join(", "));
    // Staged like an API apply when a `Rollout` policy named default exists.
    let policy = ctrl.default_rollout_policy();
    let opts = ApplyOptions { policy: policy.as_ref(), deletes: &gone, ..Default::default() };
    match ctrl.apply_with(&docs, &author, &message, opts) {
        Ok(o) => {
            match (o.revision, &o.rollout) {
                (Some(rev), Some(r)) if !r.canary.is_empty() => {
                    tracing::info!("{}: revision {rev}, staged on {}", dir.display(), r.canary.join(", "))
                }
                (Some(rev), _) => tracing::info!("{}: revision {rev}", dir.display()),
                _ => {}
            }
            Ok(now)
        }
        Err(ApplyError::Invalid(errs)) => {
            let list: Vec<String> = errs.iter().map(|e| format!("{}: {}: {}", e.resource, e.path, e.reason)).collect();
            Err(SyncError::Invalid(format!("not applied, the files are invalid:\n  {}", list.join("\n  "))))
        }
        Err(ApplyError::Dangling(errs)) => {
            let list: Vec<String> = errs.iter().map(|e| format!("{}: {}: {}", e.resource, e.path, e.reason)).collect();
            Err(SyncError::Invalid(format!("not applied, unresolved references:\n  {}", list.join("\n  "))))
        }
        // A staged rollout holds changes: the files are applied again once it ends.
        Err(ApplyError::Busy(why)) => Err(SyncError::Wait(why)),
        Err(e) => Err(SyncError::Invalid(e.to_string())),
    }
}

/// Why the folder was not applied.
#[derive(Debug)]
pub enum SyncError {
    /// For good, until the files change.
    Invalid(String),
    /// For now (a staged rollout in progress): tried again.
    Wait(String),
}

impl std::fmt::Display for SyncError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SyncError::Invalid(m) => f.write_str(m),
            SyncError::Wait(m) => write!(f, "waiting: {m}"),
        }
    }
}

/// Watches `dir` until the process ends. Invalid files are reported and the
/// last good state stays.
pub async fn watch(ctrl: Arc<Controller>, dir: PathBuf) {
    let mut last = None;
    let mut owned = BTreeSet::new();
    let mut waiting = None;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let fp = fingerprint(&dir);
        if fp.is_none() || fp == last {
            continue;
        }
        // The apply commits to the store: off the async workers.
        let (c, d, o) = (ctrl.clone(), dir.clone(), owned.clone());
        let Ok(result) = tokio::task::spawn_blocking(move || sync_once(&c, &d, &o)).await else { continue };
        match result {
            Ok(now) => (owned, last) = (now, fp),
            Err(SyncError::Wait(why)) => {
                if waiting.as_ref() != Some(&why) {
                    tracing::info!("{}: not applied yet: {why}", dir.display());
                }
                waiting = Some(why);
            }
            Err(e) => {
                tracing::error!("{}: {e}", dir.display());
                last = fp;
            }
        }
    }
}
