//! The series on disk: `monitor.db` (SQLite) in the control plane's data
//! directory, beside the store, one row per (tier, slot, name) with the
//! slot's sums as JSON. Written every few seconds (the slots that can still
//! change), trimmed to the retention, read back at start.

use super::ingest::State;
use super::series::{Agg, Tier};
use rusqlite::{params, Connection};
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("monitor database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("monitor database: {0}")]
    Io(#[from] std::io::Error),
}

pub struct Disk {
    conn: Connection,
    /// Slots that start before this were written and no longer change.
    written_to_ms: u64,
}

/// How far before the last write a report may still land (a slot of the
/// one-second tier changes for longer than two of its slots).
const LATE_MS: u64 = 20_000;

/// The tiers by number in the table.
const TIERS: [&str; 4] = ["fine", "coarse", "proxies", "recent"];

fn tier_mut(st: &mut State, i: usize) -> &mut Tier {
    match i {
        0 => &mut st.fine,
        1 => &mut st.coarse,
        2 => &mut st.proxies,
        _ => &mut st.recent,
    }
}

fn tier(st: &State, i: usize) -> &Tier {
    match i {
        0 => &st.fine,
        1 => &st.coarse,
        2 => &st.proxies,
        _ => &st.recent,
    }
}

impl Disk {
    pub fn open(dir: &Path) -> Result<Self, PersistError> {
        std::fs::create_dir_all(dir)?;
        let conn = Connection::open(dir.join("monitor.db"))?;
        // Figures can be rebuilt from the next reports, so a crash may lose
        // the last writes (NORMAL), unlike the config store (FULL).
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS slots (
                tier INTEGER NOT NULL, start_ms INTEGER NOT NULL, name TEXT NOT NULL, agg TEXT NOT NULL,
                PRIMARY KEY (tier, start_ms, name));",
        )?;
        Ok(Self { conn, written_to_ms: 0 })
    }

    /// Reads the kept slots into `st` (older than the retention left out).
    pub fn load(&mut self, st: &mut State, now_ms: u64) -> Result<usize, PersistError> {
        let mut stmt = self.conn.prepare("SELECT tier, start_ms, name, agg FROM slots ORDER BY start_ms")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?))
        })?;
        let mut n = 0;
        for row in rows {
            let (t, start, name, json) = row?;
            let (Ok(t), Ok(start)) = (usize::try_from(t), u64::try_from(start)) else { continue };
            let Ok(agg) = serde_json::from_str::<Agg>(&json) else { continue };
            if t >= TIERS.len() {
                continue;
            }
            let name = st.intern(&name);
            let agg = st.shared_bounds(agg);
            tier_mut(st, t).add(start, &name, &agg);
            n += 1;
        }
        for t in 0..TIERS.len() {
            tier_mut(st, t).prune(now_ms);
        }
        self.written_to_ms = now_ms;
        Ok(n)
    }

    /// The rows to write now: every slot that may have changed since the
    /// last write (reports land in the current slot, a few in the one before).
    pub fn pending(&self, st: &State) -> Vec<(usize, u64, Arc<str>, Agg)> {
        let mut out = Vec::new();
        for t in 0..TIERS.len() {
            let tr = tier(st, t);
            let from = self.written_to_ms.saturating_sub((2 * tr.resolution_ms).max(LATE_MS));
            for slot in tr.range(from, u64::MAX) {
                out.extend(slot.by.iter().map(|(n, a)| (t, slot.start_ms, n.clone(), a.clone())));
            }
        }
        out
    }

    /// Writes `rows` and drops what is past each tier's retention.
    pub fn write(
        &mut self,
        rows: &[(usize, u64, Arc<str>, Agg)],
        retention_ms: [u64; TIERS.len()],
        now_ms: u64,
    ) -> Result<(), PersistError> {
        let tx = self.conn.transaction()?;
        {
            let mut put =
                tx.prepare_cached("INSERT OR REPLACE INTO slots (tier, start_ms, name, agg) VALUES (?1, ?2, ?3, ?4)")?;
            for (t, start, name, agg) in rows {
                let json = serde_json::to_string(agg).unwrap_or_default();
                put.execute(params![*t as i64, *start as i64, name.as_ref(), json])?;
            }
            let mut drop = tx.prepare_cached("DELETE FROM slots WHERE tier = ?1 AND start_ms < ?2")?;
            for (t, keep) in retention_ms.iter().enumerate() {
                drop.execute(params![t as i64, now_ms.saturating_sub(*keep) as i64])?;
            }
        }
        tx.commit()?;
        self.written_to_ms = now_ms;
        Ok(())
    }
}

impl super::Monitor {
    /// Keeps the series in `dir` from now on, after reading what is there.
    pub fn attach_disk(&self, dir: &Path) -> Result<usize, PersistError> {
        let mut disk = Disk::open(dir)?;
        let n = disk.load(&mut self.lock(), crate::clock::unix_ms())?;
        *self.disk.lock().unwrap_or_else(|e| e.into_inner()) = Some(disk);
        Ok(n)
    }

    /// Writes what changed since the last call (no-op without a disk).
    pub fn flush(&self) -> Result<(), PersistError> {
        let mut guard = self.disk.lock().unwrap_or_else(|e| e.into_inner());
        let Some(disk) = guard.as_mut() else { return Ok(()) };
        let (rows, keep) = {
            let st = self.lock();
            (
                disk.pending(&st),
                [st.fine.retention_ms, st.coarse.retention_ms, st.proxies.retention_ms, st.recent.retention_ms],
            )
        };
        disk.write(&rows, keep, crate::clock::unix_ms())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Monitor, Report, Retention};
    use std::time::Duration;

    #[test]
    fn a_restart_keeps_the_history() {
        let dir = std::env::temp_dir().join(format!("legate-monitor-{}-{}", std::process::id(), rand::random::<u32>()));
        let now = crate::clock::unix_ms();
        let report = |at_ms, v| Report {
            node: "n".into(),
            at_ms,
            counters: vec![("cluster.web.upstream_rq_completed".into(), v)],
            ..Default::default()
        };
        let m = Monitor::new(Retention::default());
        m.attach_disk(&dir).expect("opens");
        m.ingest(report(now - 20_000, 5));
        m.ingest(report(now - 10_000, 25));
        m.flush().expect("writes");
        let again = Monitor::new(Retention::default());
        assert!(again.attach_disk(&dir).expect("reads") >= 2);
        let s = again.service("web", Duration::from_secs(60)).map(|s| s.traffic.requests);
        assert_eq!(s, Some(20));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
