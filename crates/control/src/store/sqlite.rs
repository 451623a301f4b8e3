//! The embedded store: every change is one revision, committed in one SQLite
//! transaction (WAL, synchronous=FULL) before it is published, so a crash never
//! loses a revision that was reported committed, nor leaves half of one.

use crate::clock;
use crate::resources::document::Document;
use crate::resources::kind::Kind;
use crate::store::records::{AuditEntry, Change, Commit, RevisionInfo, StoreError};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use std::sync::Mutex;

pub struct SqliteStore {
    conn: Mutex<Connection>,
}

impl SqliteStore {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)?;
        let conn = Connection::open(dir.join("legate.db"))?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=FULL;
             CREATE TABLE IF NOT EXISTS revisions (
                rev INTEGER PRIMARY KEY AUTOINCREMENT,
                created_at TEXT NOT NULL,
                author TEXT NOT NULL,
                message TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS changes (
                rev INTEGER NOT NULL REFERENCES revisions(rev),
                seq INTEGER NOT NULL,
                op TEXT NOT NULL,
                kind TEXT NOT NULL,
                name TEXT NOT NULL,
                doc TEXT,
                PRIMARY KEY (rev, seq));
             CREATE TABLE IF NOT EXISTS tokens (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                role TEXT NOT NULL,
                secret_sha256 TEXT NOT NULL,
                created_at TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS audit (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                at TEXT NOT NULL,
                actor TEXT NOT NULL,
                action TEXT NOT NULL,
                target TEXT NOT NULL,
                allowed INTEGER NOT NULL,
                detail TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS resources (
                kind TEXT NOT NULL,
                name TEXT NOT NULL,
                doc TEXT NOT NULL,
                rev INTEGER NOT NULL,
                PRIMARY KEY (kind, name));",
        )?;
        Ok(Self { conn: Mutex::new(conn) })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The latest revision number and every current resource.
    pub fn load_current(&self) -> Result<(u64, Vec<Document>), StoreError> {
        let conn = self.conn();
        let rev: Option<i64> = conn.query_row("SELECT MAX(rev) FROM revisions", [], |r| r.get(0)).optional()?.flatten();
        let mut stmt = conn.prepare("SELECT kind, name, doc FROM resources ORDER BY kind, name")?;
        let rows =
            stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)))?;
        let mut docs = Vec::new();
        for row in rows {
            let (kind, name, doc) = row?;
            let d: Document =
                serde_json::from_str(&doc).map_err(|e| StoreError::Corrupt { kind, name, reason: e.to_string() })?;
            docs.push(d);
        }
        Ok((rev.unwrap_or(0) as u64, docs))
    }

    /// Commits `changes` as one revision and returns its number, unless the
    /// latest revision is no longer `expected`.
    pub fn commit(&self, c: &Commit<'_>) -> Result<u64, StoreError> {
        let Commit { expected, author, message, changes, .. } = *c;
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let latest: Option<i64> = tx.query_row("SELECT MAX(rev) FROM revisions", [], |r| r.get(0))?;
        let latest = latest.unwrap_or(0) as u64;
        if latest != expected {
            return Err(StoreError::Conflict { expected, found: latest });
        }
        let now = clock::now();
        tx.execute(
            "INSERT INTO revisions (created_at, author, message) VALUES (?1, ?2, ?3)",
            params![now, author, message],
        )?;
        let rev = tx.last_insert_rowid();
        for (seq, change) in changes.iter().enumerate() {
            match change {
                Change::Apply(doc) => {
                    let kind = Kind::parse(&doc.kind).map_or(doc.kind.clone(), |k| k.name().to_string());
                    let text = serde_json::to_string(doc).unwrap_or_default();
                    tx.execute(
                        "INSERT INTO changes (rev, seq, op, kind, name, doc) VALUES (?1, ?2, 'apply', ?3, ?4, ?5)",
                        params![rev, seq as i64, kind, doc.metadata.name, text],
                    )?;
                    tx.execute(
                        "INSERT INTO resources (kind, name, doc, rev) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT(kind, name) DO UPDATE SET doc = excluded.doc, rev = excluded.rev",
                        params![kind, doc.metadata.name, text, rev],
                    )?;
                }
                Change::Delete { kind, name } => {
                    tx.execute(
                        "INSERT INTO changes (rev, seq, op, kind, name, doc) VALUES (?1, ?2, 'delete', ?3, ?4, NULL)",
                        params![rev, seq as i64, kind.name(), name],
                    )?;
                    tx.execute("DELETE FROM resources WHERE kind = ?1 AND name = ?2", params![kind.name(), name])?;
                }
            }
        }
        tx.commit()?;
        Ok(rev as u64)
    }

    /// Every resource as it stood right after revision `rev` (replaying the
    /// changes up to it).
    pub fn state_at(&self, rev: u64) -> Result<Vec<Document>, StoreError> {
        let conn = self.conn();
        let exists: Option<i64> =
            conn.query_row("SELECT rev FROM revisions WHERE rev = ?1", params![rev as i64], |r| r.get(0)).optional()?;
        if exists.is_none() {
            return Err(StoreError::NoRevision(rev));
        }
        let mut stmt = conn.prepare("SELECT op, kind, name, doc FROM changes WHERE rev <= ?1 ORDER BY rev, seq")?;
        let rows = stmt.query_map(params![rev as i64], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, Option<String>>(3)?))
        })?;
        let mut state: std::collections::BTreeMap<(String, String), Document> = Default::default();
        for row in rows {
            let (op, kind, name, doc) = row?;
            if op == "delete" {
                state.remove(&(kind, name));
                continue;
            }
            let text = doc.unwrap_or_default();
            let d: Document = serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
                kind: kind.clone(),
                name: name.clone(),
                reason: e.to_string(),
            })?;
            state.insert((kind, name), d);
        }
        Ok(state.into_values().collect())
    }

    pub fn token_count(&self) -> Result<u64, StoreError> {
        Ok(self.conn().query_row("SELECT COUNT(*) FROM tokens", [], |r| r.get::<_, i64>(0))? as u64)
    }

    pub fn add_token(&self, id: &str, name: &str, role: &str, secret_sha256: &str) -> Result<(), StoreError> {
        let now = clock::now();
        self.conn().execute(
            "INSERT INTO tokens (id, name, role, secret_sha256, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, name, role, secret_sha256, now],
        )?;
        Ok(())
    }

    /// (name, role, secret hash) of a token id.
    pub fn token(&self, id: &str) -> Result<Option<(String, String, String)>, StoreError> {
        Ok(self
            .conn()
            .query_row("SELECT name, role, secret_sha256 FROM tokens WHERE id = ?1", params![id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?)
    }

    /// (id, name, role, created_at) of every token.
    pub fn tokens(&self) -> Result<Vec<(String, String, String, String)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT id, name, role, created_at FROM tokens ORDER BY created_at")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn revoke_token(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.conn().execute("DELETE FROM tokens WHERE id = ?1", params![id])? > 0)
    }

    pub fn audit(&self, e: &AuditEntry) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO audit (at, actor, action, target, allowed, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![e.at, e.actor, e.action, e.target, e.allowed as i64, e.detail],
        )?;
        Ok(())
    }

    /// The newest audit entries first.
    pub fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT at, actor, action, target, allowed, detail FROM audit ORDER BY seq DESC LIMIT ?1")?;
        let rows = stmt.query_map(params![limit as i64], |r| {
            Ok(AuditEntry {
                at: r.get(0)?,
                actor: r.get(1)?,
                action: r.get(2)?,
                target: r.get(3)?,
                allowed: r.get::<_, i64>(4)? != 0,
                detail: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The most recent revisions, newest first.
    pub fn history(&self, limit: usize) -> Result<Vec<RevisionInfo>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT rev, created_at, author, message FROM revisions ORDER BY rev DESC LIMIT ?1")?;
        let revs: Vec<(i64, String, String, String)> = stmt
            .query_map(params![limit as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<Result<_, _>>()?;
        let mut out = Vec::new();
        let mut cstmt = conn.prepare("SELECT op, kind, name FROM changes WHERE rev = ?1 ORDER BY seq")?;
        for (rev, created_at, author, message) in revs {
            let changes = cstmt
                .query_map(params![rev], |r| {
                    Ok(format!("{} {}/{}", r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
                })?
                .collect::<Result<_, _>>()?;
            out.push(RevisionInfo { revision: rev as u64, created_at, author, message, changes });
        }
        Ok(out)
    }
}
