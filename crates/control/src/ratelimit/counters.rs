//! Hits counted in fixed windows: a limit of N per unit allows N hits in
//! each window of the unit's length, windows aligned to the epoch (so every
//! replica agrees where one starts). Kept in memory, by (domain, the
//! descriptor's entries, window); a window's count goes once its window has
//! passed.
//!
//! With several replicas (`shared`), a window's count is this replica's own
//! hits plus the latest counts the other replicas wrote for the same window
//! ([`Counters::set_others`]). Each replica writes its counts every
//! [`super::shared::SYNC_EVERY`] and follows the others' with a watch, so a
//! hit on another replica is seen here within that period plus an etcd round
//! trip: the fleet admits at most the limit plus what the other replicas
//! admit in that time (over-admission bounded by the sync period times the
//! rate of hits on the other replicas), never a limit per replica.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;

/// What one hit found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counted {
    /// The window's count with this hit (this replica's and the others').
    pub total: u64,
    /// Seconds until the window ends.
    pub reset: u64,
}

/// One window's count as a replica shares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// The counter's key (domain and descriptor entries).
    #[serde(rename = "k")]
    pub key: String,
    /// The window's start and end, in seconds since the epoch.
    #[serde(rename = "s")]
    pub start: u64,
    #[serde(rename = "e")]
    pub end: u64,
    /// The replica's own hits in it.
    #[serde(rename = "n")]
    pub count: u64,
}

/// A replica's counts of its windows in progress: the value of its key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub windows: Vec<Window>,
}

/// The most a batch holds (etcd refuses requests past 1.5 MiB by default):
/// past it, a replica's smallest counts are not shared.
pub const BATCH_BYTES: usize = 1 << 20;

/// (key, window start).
type Slot = (String, u64);

#[derive(Default)]
struct Inner {
    /// This replica's hits: slot -> (count, window end).
    own: HashMap<Slot, (u64, u64)>,
    /// Bumped by every hit: the batch written last is current while equal.
    generation: u64,
    /// The other replicas' latest counts, summed per slot.
    others: HashMap<Slot, u64>,
}

/// The counts of the windows in progress.
#[derive(Default)]
pub struct Counters {
    inner: Mutex<Inner>,
}

/// The most windows kept before the ended ones are swept.
const SWEEP_AT: usize = 10_000;

impl Counters {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `hits` to `key`'s window of `window` seconds holding `now` (in
    /// seconds since the epoch).
    pub fn hit(&self, key: &str, window: u64, now: u64, hits: u64) -> Counted {
        let window = window.max(1);
        let start = now - now % window;
        let end = start + window;
        let mut inner = self.lock();
        if inner.own.len() >= SWEEP_AT {
            inner.own.retain(|_, (_, e)| *e > now);
        }
        inner.generation += 1;
        let slot = (key.to_string(), start);
        let own = inner.own.entry(slot.clone()).or_insert((0, end));
        own.0 = own.0.saturating_add(hits);
        let mine = own.0;
        let others = inner.others.get(&slot).copied().unwrap_or(0);
        Counted { total: mine.saturating_add(others), reset: end - now }
    }

    /// This replica's counts of the windows still in progress at `now`, the
    /// largest first (at most [`BATCH_BYTES`] of them), and the generation
    /// they are of.
    pub fn snapshot(&self, now: u64) -> (u64, Batch) {
        let inner = self.lock();
        let mut windows: Vec<Window> = inner
            .own
            .iter()
            .filter(|(_, (_, end))| *end > now)
            .map(|((key, start), (count, end))| Window { key: key.clone(), start: *start, end: *end, count: *count })
            .collect();
        let generation = inner.generation;
        drop(inner);
        windows.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
        let mut bytes = 0;
        windows.retain(|w| {
            bytes += w.key.len() + 64;
            bytes <= BATCH_BYTES
        });
        (generation, Batch { windows })
    }

    /// Takes the other replicas' latest batches (this one's left out by the
    /// caller) as what they have counted.
    pub fn set_others<'a>(&self, batches: impl IntoIterator<Item = &'a Batch>, now: u64) {
        let merged = merge(batches, now);
        self.lock().others = merged;
    }
}

/// The other replicas' counts summed per window, the windows ended at `now`
/// left out.
pub fn merge<'a>(batches: impl IntoIterator<Item = &'a Batch>, now: u64) -> HashMap<(String, u64), u64> {
    let mut sum: HashMap<Slot, u64> = HashMap::new();
    for w in batches.into_iter().flat_map(|b| &b.windows).filter(|w| w.end > now) {
        let n = sum.entry((w.key.clone(), w.start)).or_insert(0);
        *n = n.saturating_add(w.count);
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(key: &str, start: u64, end: u64, count: u64) -> Window {
        Window { key: key.into(), start, end, count }
    }

    #[test]
    fn fixed_windows_aligned_to_the_epoch() {
        let c = Counters::default();
        assert_eq!(c.hit("a", 60, 120, 1), Counted { total: 1, reset: 60 });
        assert_eq!(c.hit("a", 60, 150, 2), Counted { total: 3, reset: 30 });
        assert_eq!(c.hit("b", 60, 150, 1), Counted { total: 1, reset: 30 });
        assert_eq!(c.hit("a", 60, 180, 1), Counted { total: 1, reset: 60 });
    }

    #[test]
    fn the_others_counts_are_summed_per_window_and_ended_ones_dropped() {
        let one = Batch { windows: vec![window("a", 120, 180, 4), window("b", 120, 180, 1), window("a", 60, 120, 9)] };
        let two = Batch { windows: vec![window("a", 120, 180, 3), window("a", 180, 240, 2)] };
        let merged = merge([&one, &two], 150);
        assert_eq!(merged.get(&("a".to_string(), 120)), Some(&7));
        assert_eq!(merged.get(&("b".to_string(), 120)), Some(&1));
        assert_eq!(merged.get(&("a".to_string(), 180)), Some(&2));
        assert_eq!(merged.get(&("a".to_string(), 60)), None, "an ended window is not counted");
        assert_eq!(merged.len(), 3);
    }

    #[test]
    fn a_hit_counts_the_others_for_its_window_only() {
        let c = Counters::default();
        assert_eq!(c.hit("a", 60, 130, 1).total, 1);
        let other = Batch { windows: vec![window("a", 120, 180, 5), window("b", 120, 180, 2)] };
        c.set_others([&other], 130);
        assert_eq!(c.hit("a", 60, 140, 1), Counted { total: 7, reset: 40 }, "2 own + 5 of the other replica");
        assert_eq!(c.hit("b", 60, 140, 1).total, 3);
        assert_eq!(c.hit("a", 60, 180, 1).total, 1, "the next window starts from this replica's hit alone");
        // The others' latest batch replaces what they had written before.
        c.set_others([&Batch::default()], 150);
        assert_eq!(c.hit("b", 60, 150, 1).total, 2);
    }

    #[test]
    fn a_snapshot_holds_the_windows_in_progress_and_changes_with_each_hit() {
        let c = Counters::default();
        c.hit("old", 60, 100, 3);
        c.hit("a", 60, 130, 1);
        c.hit("b", 60, 130, 2);
        let (generation, batch) = c.snapshot(130);
        assert_eq!(batch.windows, [window("b", 120, 180, 2), window("a", 120, 180, 1)]);
        assert_eq!(c.snapshot(131).0, generation, "no hit, no new generation");
        c.hit("a", 60, 131, 1);
        assert_ne!(c.snapshot(131).0, generation);
        // What a replica writes reads back as it was.
        let text = serde_json::to_vec(&batch).expect("json");
        assert_eq!(serde_json::from_slice::<Batch>(&text).expect("batch"), batch);
    }

    #[test]
    fn a_batch_keeps_the_largest_counts_within_its_size() {
        let c = Counters::default();
        let long = "k".repeat(BATCH_BYTES / 2);
        c.hit(&format!("{long}1"), 60, 130, 1);
        c.hit(&format!("{long}2"), 60, 130, 5);
        c.hit(&format!("{long}3"), 60, 130, 3);
        let (_, batch) = c.snapshot(130);
        let counts: Vec<u64> = batch.windows.iter().map(|w| w.count).collect();
        assert_eq!(counts, [5]);
    }
}
