//! The task that ends staged rollouts: every tick, the rollout in progress
//! (if any) is judged, and promoted or rolled back.

use crate::clock::unix_ms;
use crate::rollouts::judge::{judge, Verdict};
use crate::rollouts::shared::Fleetwide;
use crate::state::controller::Controller;
use std::sync::Arc;
use std::time::Duration;

/// Judges the staged rollout once; true when it ended.
pub fn tick(ctrl: &Controller, now_ms: u64) -> bool {
    let Some(record) = ctrl.staged_rollout() else { return false };
    let fleetwide = Fleetwide::new(ctrl, &record);
    let acks = fleetwide.acks(&record.canary);
    let (promote, reason, evidence) = match judge(&record, acks, &fleetwide, now_ms) {
        Verdict::Wait => return false,
        Verdict::Promote(why, e) => (true, why, e),
        Verdict::RollBack(why, e) => (false, why, e),
    };
    match ctrl.finish_rollout(promote, &reason, evidence) {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!("cannot finish the rollout of revision {}: {e}", record.revision);
            false
        }
    }
}

/// Judges every `period` until the process ends (only the leader acts).
pub fn start(ctrl: Arc<Controller>, period: Duration) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(period.max(Duration::from_millis(20)));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if ctrl.is_leader() && ctrl.staged_rollout().is_some() {
                // The commit goes to the store: off the async workers.
                let c = ctrl.clone();
                let _ = tokio::task::spawn_blocking(move || tick(&c, unix_ms())).await;
            }
        }
    });
}
