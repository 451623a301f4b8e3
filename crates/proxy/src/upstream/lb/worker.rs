//! Per-worker load-balancer state: round-robin positions and
//! earliest-deadline-first schedules, per priority level (and per locality
//! for locality-weighted clusters). Only its own worker touches it, so the
//! mutex around it is never contended (an uncontended lock is ~20 ns); it is
//! rebuilt when the host set changes.

use crate::upstream::host_set::HostSet;
use crate::upstream::lb::edf::Edf;
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Default)]
pub struct WorkerLb {
    /// The host set the state below belongs to (compared by pointer only).
    set: usize,
    /// Per level: the round-robin position and, when weights differ, the
    /// earliest-deadline-first schedule.
    pub rr_next: Vec<usize>,
    pub edf: Vec<Option<Edf>>,
    /// Locality-weighted: per level, the locality schedule and a
    /// round-robin position per locality.
    pub locality_edf: Vec<Option<Edf>>,
    pub locality_rr: Vec<Vec<usize>>,
}

/// One `WorkerLb` per worker (and one for the main thread).
pub struct WorkerStates(Box<[Mutex<WorkerLb>]>);

impl WorkerStates {
    pub fn new(workers: usize) -> Self {
        Self((0..=workers).map(|_| Mutex::new(WorkerLb::default())).collect())
    }

    /// This worker's state, reset when the host set changed.
    pub fn lock(&self, set: &Arc<HostSet>) -> MutexGuard<'_, WorkerLb> {
        let w = crate::stats::worker_index() % self.0.len();
        let mut st = self.0[w].lock().unwrap_or_else(|e| e.into_inner());
        let set_id = Arc::as_ptr(set) as usize;
        if st.set != set_id || st.rr_next.len() != set.levels.len() {
            st.set = set_id;
            st.rr_next = vec![0; set.levels.len()];
            st.edf = (0..set.levels.len()).map(|_| None).collect();
            st.locality_edf = (0..set.levels.len()).map(|_| None).collect();
            st.locality_rr = set.levels.iter().map(|l| vec![0; l.localities.len()]).collect();
        }
        st
    }
}
