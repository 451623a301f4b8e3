//! A watched folder of resource files (GitOps style): every change to the
//! `.yaml`/`.yml`/`.json` files becomes one revision; a resource that
//! disappears from the files is deleted in that revision. Polled every half
//! second, so a saved file reaches the proxies within about a second.

use crate::resources::document::parse_documents;
use crate::resources::kind::Kind;
use crate::state::apply::ApplyError;
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
) -> Result<BTreeSet<(Kind, String)>, String> {
    let mut files: Vec<PathBuf> =
        fingerprint(dir).ok_or_else(|| format!("cannot read {}", dir.display()))?.into_iter().map(|f| f.0).collect();
    files.sort();
    let mut docs = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
        docs.extend(parse_documents(&text).map_err(|e| format!("{}: {e}", f.display()))?);
    }
    let now: BTreeSet<(Kind, String)> =
        docs.iter().filter_map(|d| Kind::parse(&d.kind).map(|k| (k, d.metadata.name.clone()))).collect();
    let gone: Vec<(Kind, String)> = owned.difference(&now).cloned().collect();
    let names: Vec<String> =
        files.iter().filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned())).collect();
    let author = format!("watch:{}", dir.display());
    match ctrl.apply_with_deletes(&docs, &gone, &author, &format!("files: {}", names.join(", ")), false) {
        Ok(o) => {
            if let Some(rev) = o.revision {
                tracing::info!("{}: revision {rev}", dir.display());
            }
            Ok(now)
        }
        Err(ApplyError::Invalid(errs)) => {
            let list: Vec<String> = errs.iter().map(|e| format!("{}: {}: {}", e.resource, e.path, e.reason)).collect();
            Err(format!("not applied, the files are invalid:\n  {}", list.join("\n  ")))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Watches `dir` until the process ends. Invalid files are reported and the
/// last good state stays.
pub async fn watch(ctrl: Arc<Controller>, dir: PathBuf) {
    let mut last = None;
    let mut owned = BTreeSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let fp = fingerprint(&dir);
        if fp.is_none() || fp == last {
            continue;
        }
        last = fp;
        match sync_once(&ctrl, &dir, &owned) {
            Ok(now) => owned = now,
            Err(e) => tracing::error!("{}: {e}", dir.display()),
        }
    }
}
