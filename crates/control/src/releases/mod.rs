//! Releases: a `Release` moves a Service's traffic from its stable version
//! to a candidate step by step (canary; or blue-green: a preview by header,
//! then all at once), analysing each step against the monitor's figures of
//! the candidate's own cluster.
//!
//! - [`spec`]: the spec as written (checked with field paths; `resources/compile`
//!   calls it), the cluster names (`<service>~<version>`) and the status;
//! - [`strategy`]: canary (steps, optional stickiness), blueGreen (a preview
//!   header, then all at once) or abTest (headers and cookies), checked;
//! - [`analysis`]: one step's figures against the thresholds, behind the
//!   [`analysis::Figures`] trait unit tests feed directly;
//! - [`machine`]: the pure state machine (steps, hold, wait, roll back,
//!   promote) and what operators do (pause, resume, promote, abort);
//! - [`driver`]: the background task: on the leader, every tick, each
//!   running release advanced and its new status committed as a revision
//!   (author `release/NAME`).
//!
//! The status is kept in the Release document (`status`), so every weight
//! change is an ordinary revision, and a restarted control plane continues
//! from the step it was at. `resources/mesh/service` reads it to split the
//! Service into one cluster per version and weight its routes.

pub mod analysis;
pub mod driver;
pub mod gates;
pub mod machine;
pub mod spec;
pub mod strategy;

#[cfg(test)]
mod tests;
