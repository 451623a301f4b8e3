//! Time series as rings of slots: one slot per `resolution`, kept for
//! `retention`, empty slots not stored. Everything in a slot adds up
//! (counter differences, bucket counts), so a coarser tier is the finer one
//! summed: each difference is added to every tier as it arrives, and a
//! window or a step is the sum of its slots, exact to the request.

use super::buckets::Buckets;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// What one service (or proxy) added in one slot.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Agg {
    pub requests: u64,
    pub errors: u64,
    pub rq_2xx: u64,
    pub rq_4xx: u64,
    pub rq_5xx: u64,
    pub retries: u64,
    pub timeouts: u64,
    pub latency: Buckets,
}

impl Agg {
    pub fn add(&mut self, o: &Agg) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.rq_2xx += o.rq_2xx;
        self.rq_4xx += o.rq_4xx;
        self.rq_5xx += o.rq_5xx;
        self.retries += o.retries;
        self.timeouts += o.timeouts;
        self.latency.merge(&o.latency);
    }

    pub fn is_empty(&self) -> bool {
        self.requests == 0
            && self.errors == 0
            && self.rq_2xx == 0
            && self.rq_4xx == 0
            && self.rq_5xx == 0
            && self.retries == 0
            && self.timeouts == 0
            && self.latency.is_empty()
    }
}

/// One slot: what each name (service or proxy) added from `start_ms` on.
#[derive(Debug, Clone, Default)]
pub struct Slot {
    pub start_ms: u64,
    pub by: BTreeMap<Arc<str>, Agg>,
}

/// One resolution of one kind of series (services or proxies).
#[derive(Debug, Clone)]
pub struct Tier {
    pub resolution_ms: u64,
    pub retention_ms: u64,
    slots: VecDeque<Slot>,
}

impl Tier {
    pub fn new(resolution_ms: u64, retention_ms: u64) -> Self {
        Self { resolution_ms: resolution_ms.max(1), retention_ms, slots: VecDeque::new() }
    }

    fn start_of(&self, at_ms: u64) -> u64 {
        at_ms - at_ms % self.resolution_ms
    }

    /// Adds `agg` to `name` in the slot holding `at_ms`.
    pub fn add(&mut self, at_ms: u64, name: &Arc<str>, agg: &Agg) {
        let start = self.start_of(at_ms);
        // Reports arrive in time order but for a few; search from the back.
        let pos = self.slots.iter().rposition(|s| s.start_ms <= start);
        let idx = match pos {
            Some(i) if self.slots[i].start_ms == start => i,
            Some(i) => {
                self.slots.insert(i + 1, Slot { start_ms: start, by: BTreeMap::new() });
                i + 1
            }
            None => {
                self.slots.push_front(Slot { start_ms: start, by: BTreeMap::new() });
                0
            }
        };
        self.slots[idx].by.entry(name.clone()).or_default().add(agg);
    }

    /// Drops the slots older than the retention.
    pub fn prune(&mut self, now_ms: u64) {
        let oldest = now_ms.saturating_sub(self.retention_ms);
        while self.slots.front().is_some_and(|s| s.start_ms + self.resolution_ms <= oldest) {
            self.slots.pop_front();
        }
    }

    /// The slots that start in `[from_ms, to_ms)`.
    pub fn range(&self, from_ms: u64, to_ms: u64) -> impl Iterator<Item = &Slot> {
        self.slots.iter().filter(move |s| s.start_ms >= from_ms && s.start_ms < to_ms)
    }

    /// The first slot start at or after `at_ms`: where a window beginning
    /// at `at_ms` starts counting (whole slots only, so sums stay exact).
    pub fn align_up(&self, at_ms: u64) -> u64 {
        at_ms.div_ceil(self.resolution_ms) * self.resolution_ms
    }

    pub fn slots(&self) -> impl Iterator<Item = &Slot> {
        self.slots.iter()
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agg(requests: u64) -> Agg {
        Agg { requests, ..Default::default() }
    }

    #[test]
    fn downsampling_sums_fine_slots_into_coarse_ones_exactly() {
        let name: Arc<str> = Arc::from("web");
        let mut fine = Tier::new(10_000, 3_600_000);
        let mut coarse = Tier::new(300_000, 86_400_000);
        // One report every 5 s for 20 minutes, 1..=240 requests each.
        for i in 0..240u64 {
            let at = 1_000_000_000 + i * 5_000;
            fine.add(at, &name, &agg(i + 1));
            coarse.add(at, &name, &agg(i + 1));
        }
        let total: u64 = (1..=240).sum();
        let sum = |t: &Tier| t.slots().map(|s| s.by[&name].requests).sum::<u64>();
        assert_eq!(sum(&fine), total);
        assert_eq!(sum(&coarse), total);
        assert_eq!(fine.len(), 120);
        assert!(coarse.len() <= 5, "{}", coarse.len());
        // Each coarse slot is exactly its fine slots.
        for c in coarse.slots() {
            let fine_sum: u64 = fine.range(c.start_ms, c.start_ms + 300_000).map(|s| s.by[&name].requests).sum();
            assert_eq!(fine_sum, c.by[&name].requests);
        }
    }

    #[test]
    fn retention_drops_old_slots_and_late_reports_land_in_order() {
        let name: Arc<str> = Arc::from("web");
        let mut t = Tier::new(10_000, 60_000);
        t.add(100_000, &name, &agg(1));
        t.add(120_000, &name, &agg(1));
        t.add(110_000, &name, &agg(1));
        let starts: Vec<u64> = t.slots().map(|s| s.start_ms).collect();
        assert_eq!(starts, vec![100_000, 110_000, 120_000]);
        t.prune(181_000);
        let starts: Vec<u64> = t.slots().map(|s| s.start_ms).collect();
        assert_eq!(starts, vec![120_000]);
    }
}
