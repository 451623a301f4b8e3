//! Hits counted in fixed windows: a limit of N per unit allows N hits in
//! each window of the unit's length, windows aligned to the epoch (so every
//! replica agrees where one starts). Kept in memory, by (domain, the
//! descriptor's entries, window); a window's count goes once its window has
//! passed.

use std::collections::HashMap;
use std::sync::Mutex;

/// What one hit found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counted {
    /// The window's count with this hit.
    pub total: u64,
    /// Seconds until the window ends.
    pub reset: u64,
}

/// The counts of the windows in progress.
#[derive(Default)]
pub struct Counters {
    /// (key, window start in seconds) -> (count, window end).
    windows: Mutex<HashMap<(String, u64), (u64, u64)>>,
}

/// The most windows kept before the ended ones are swept.
const SWEEP_AT: usize = 10_000;

impl Counters {
    /// Adds `hits` to `key`'s window of `window` seconds holding `now` (in
    /// seconds since the epoch).
    pub fn hit(&self, key: &str, window: u64, now: u64, hits: u64) -> Counted {
        let window = window.max(1);
        let start = now - now % window;
        let end = start + window;
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if windows.len() >= SWEEP_AT {
            windows.retain(|_, (_, e)| *e > now);
        }
        let slot = windows.entry((key.to_string(), start)).or_insert((0, end));
        slot.0 = slot.0.saturating_add(hits);
        Counted { total: slot.0, reset: end - now }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_windows_aligned_to_the_epoch() {
        let c = Counters::default();
        assert_eq!(c.hit("a", 60, 120, 1), Counted { total: 1, reset: 60 });
        assert_eq!(c.hit("a", 60, 150, 2), Counted { total: 3, reset: 30 });
        assert_eq!(c.hit("b", 60, 150, 1), Counted { total: 1, reset: 30 });
        assert_eq!(c.hit("a", 60, 180, 1), Counted { total: 1, reset: 60 });
    }
}
