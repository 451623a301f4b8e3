//! A staged rollout's state as the controller holds it (apart from the
//! controller's methods in `staged`, so the controller and `apply` need not
//! import them).

use crate::rollouts::board::Record;
use crate::state::config::ConfigState;
use std::sync::Arc;

/// Commit messages of staged revisions start with this (a restarted
/// control plane finds an unfinished one by it).
pub const STAGED_PREFIX: &str = "staged rollout";

/// The rollout in progress: the revision the other proxies keep, and its record.
pub struct Staged {
    pub previous: Arc<ConfigState>,
    pub record: Record,
}
