//! A release's state machine: start at the first step, hold, analyse,
//! go to the next step, promote after the last, roll back at the first
//! failed analysis; and what operators do (pause, resume, promote, abort).
//! Pure: the time and the figures come in, the next status goes out.

use crate::releases::analysis::{analyse, Figures, Verdict};
use crate::releases::spec::{Phase, Release, Status};
use std::time::Duration;

/// The next status of a running release, or None when nothing changes now.
/// A release starts (its first weights) only once `ready`: the proxies hold
/// its version clusters.
pub fn advance(release: &Release, status: &Status, figures: &dyn Figures, now_ms: u64, ready: bool) -> Option<Status> {
    if status.phase != Phase::Progressing {
        return None;
    }
    let first = *release.steps.first()?;
    if status.step_started_ms == 0 {
        if !ready {
            return None;
        }
        let mut next = status.clone();
        (next.step, next.weight, next.step_started_ms) = (0, first, now_ms);
        next.message = format!("step 1 of {}: {first}% to the candidate", release.steps.len());
        return Some(next);
    }
    let analyse_at = status.step_started_ms.saturating_add(release.hold.as_millis() as u64);
    if now_ms < analyse_at {
        return None;
    }
    let mut next = status.clone();
    // Only this step's traffic: a window reaching back before the step
    // started would judge the candidate on the previous weight's (or a
    // previous release's) requests.
    let window = release.window.min(Duration::from_millis(now_ms.saturating_sub(status.step_started_ms)));
    match analyse(release, figures, window, status.step, status.weight, now_ms) {
        Verdict::Wait(seen) => {
            if now_ms < analyse_at.saturating_add(release.max_wait.as_millis() as u64) {
                return None;
            }
            next.phase = Phase::Paused;
            next.message = format!(
                "paused: {seen} candidate requests in the window after waiting {:?}, {} needed",
                release.max_wait, release.min_requests
            );
        }
        Verdict::Failed(a) => {
            next.phase = Phase::RolledBack;
            next.weight = 0;
            next.message = format!("rolled back at step {}: {}", status.step + 1, a.reason);
            next.analyses.push(a);
        }
        Verdict::Passed(a) => {
            next.analyses.push(a);
            match release.steps.get(status.step + 1) {
                Some(w) => {
                    (next.step, next.weight, next.step_started_ms) = (status.step + 1, *w, now_ms);
                    next.message = format!("step {} of {}: {w}% to the candidate", next.step + 1, release.steps.len());
                }
                None => {
                    next.phase = Phase::Promoted;
                    next.weight = 100;
                    next.message = "promoted: every step passed".into();
                }
            }
        }
    }
    Some(next)
}

/// What an operator asks of a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pause,
    Resume,
    Promote,
    Abort,
}

impl Action {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pause" => Self::Pause,
            "resume" => Self::Resume,
            "promote" => Self::Promote,
            "abort" => Self::Abort,
            _ => return None,
        })
    }
}

/// The status after `action`, or why it cannot be done now.
pub fn act(status: &Status, action: Action, now_ms: u64) -> Result<Status, String> {
    let mut next = status.clone();
    match (action, status.phase) {
        (_, p) if p.is_final() => return Err(format!("the release is already {p:?}")),
        (Action::Pause, Phase::Progressing) => {
            next.phase = Phase::Paused;
            next.message = format!("paused by an operator at {}%", status.weight);
        }
        (Action::Resume, Phase::Paused) => {
            next.phase = Phase::Progressing;
            // The step is held (and analysed) again from now.
            if status.step_started_ms != 0 {
                next.step_started_ms = now_ms;
            }
            next.message = format!("resumed at {}%", status.weight);
        }
        (Action::Pause, _) => return Err("the release is already paused".into()),
        (Action::Resume, _) => return Err("the release is not paused".into()),
        (Action::Promote, _) => {
            (next.phase, next.weight) = (Phase::Promoted, 100);
            next.message = "promoted by an operator".into();
        }
        (Action::Abort, _) => {
            (next.phase, next.weight) = (Phase::Aborted, 0);
            next.message = "aborted by an operator: all traffic to stable".into();
        }
    }
    Ok(next)
}
