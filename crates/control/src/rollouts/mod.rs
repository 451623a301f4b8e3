//! Staged rollouts of configuration changes (`ctl apply --canary 10%
//! --hold 30s`): the new revision goes to a canary share (or named set) of
//! the proxies that would receive it while the others keep the previous
//! one; after the hold it goes to all, or the canary gets the previous
//! revision back.
//!
//! - [`board`]: the policy (checked with field paths), the record of each
//!   rollout and the last ones kept (a leaf the controller holds);
//! - [`judge`]: the canary's ACKs and figures against the other proxies'
//!   (pure, behind the [`judge::ProxyFigures`] trait);
//! - [`driver`]: the task that judges and ends the rollout in progress;
//! - [`shared`]: the rollout over several replicas: each replica's
//!   proxies, ACKs and figures, merged for the leader's judge.
//!
//! Serving two revisions at once is `state::config::ConfigState::view`;
//! staging, promoting and rolling back are `state::staged`.

pub mod board;
pub mod driver;
pub mod judge;
pub mod shared;

#[cfg(test)]
mod tests;
