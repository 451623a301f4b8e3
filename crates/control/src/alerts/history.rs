//! The alerts' history: each firing and resolved, newest last, at most
//! [`LIMIT`] entries. Kept in memory and, when the control plane has a data
//! directory, in `alerts-history.json` there (rewritten whole on each
//! change, read back at start), so it survives a restart of this replica.
//! Replicas on etcd each keep their own.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Mutex;

pub const LIMIT: usize = 500;
pub const FILE: &str = "alerts-history.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub rule: String,
    /// `firing` or `resolved`.
    pub status: String,
    /// RFC 3339.
    pub at: String,
    pub value: Option<f64>,
    pub severity: String,
    #[serde(default)]
    pub metric: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<String>,
}

/// In memory until [`History::keep_in`] names its file.
#[derive(Default)]
pub struct History {
    entries: Mutex<VecDeque<Entry>>,
    file: Mutex<Option<PathBuf>>,
}

impl History {
    /// Keeps the history in `file` from now on, after what it already holds.
    pub fn keep_in(&self, file: PathBuf) {
        let stored: Vec<Entry> =
            std::fs::read(&file).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        {
            let mut entries = self.lock();
            let newer: Vec<Entry> = entries.drain(..).collect();
            entries.extend(stored.into_iter().chain(newer));
            while entries.len() > LIMIT {
                entries.pop_front();
            }
        }
        *self.file.lock().unwrap_or_else(|e| e.into_inner()) = Some(file);
    }

    pub fn push(&self, e: Entry) {
        let file = self.file.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let snapshot = {
            let mut entries = self.lock();
            entries.push_back(e);
            while entries.len() > LIMIT {
                entries.pop_front();
            }
            file.as_ref().map(|_| entries.iter().cloned().collect::<Vec<_>>())
        };
        if let (Some(file), Some(all)) = (&file, snapshot) {
            // Written beside, then renamed: a crash leaves the old file whole.
            let tmp = file.with_extension("json.tmp");
            let written = serde_json::to_vec(&all)
                .map_err(std::io::Error::other)
                .and_then(|b| std::fs::write(&tmp, b))
                .and_then(|_| std::fs::rename(&tmp, file));
            if let Err(err) = written {
                tracing::warn!("cannot keep the alert history in {}: {err}", file.display());
            }
        }
    }

    /// Every entry, oldest first.
    pub fn list(&self) -> Vec<Entry> {
        self.lock().iter().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: usize) -> Entry {
        Entry {
            rule: format!("r{i}"),
            status: "firing".into(),
            at: String::new(),
            value: Some(i as f64),
            severity: "warning".into(),
            metric: "rps".into(),
            subjects: vec![],
        }
    }

    #[test]
    fn bounded_and_kept_in_its_file() {
        let dir =
            std::env::temp_dir().join(format!("legate-alert-history-{}-{}", std::process::id(), rand::random::<u32>()));
        std::fs::create_dir_all(&dir).expect("dir");
        let h = History::default();
        h.keep_in(dir.join(FILE));
        for i in 0..LIMIT + 5 {
            h.push(entry(i));
        }
        let list = h.list();
        assert_eq!((list.len(), list[0].rule.as_str()), (LIMIT, "r5"));
        let again = History::default();
        again.keep_in(dir.join(FILE));
        assert_eq!(again.list(), list, "read back after a restart");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
