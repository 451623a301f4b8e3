//! One rule's state over time: inactive, pending while the condition has
//! held for less than `for:`, firing once it has held that long, and back to
//! inactive (a resolved notification) when it stops holding. No data (no
//! figures, fewer requests than `min_requests`) is a condition that does not
//! hold.

use crate::alerts::rule::Threshold;
use serde::Serialize;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Inactive,
    Pending,
    Firing,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            Self::Inactive => "inactive",
            Self::Pending => "pending",
            Self::Firing => "firing",
        }
    }
}

/// What one evaluation changed, for notifications and the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    /// Pending long enough (or `for: 0`): notify firing.
    Fired,
    /// Was firing, no longer holds: notify resolved.
    Resolved,
}

/// One rule's state between evaluations (times in Unix milliseconds).
#[derive(Debug, Clone, PartialEq)]
pub struct Tracker {
    pub state: State,
    /// When the current state began.
    pub since_ms: u64,
    /// When the condition began to hold (the alert's `startsAt`).
    pub active_since_ms: Option<u64>,
    /// The last value measured (None: no data).
    pub value: Option<f64>,
    /// When the alert resolved last (its `endsAt`).
    pub resolved_ms: Option<u64>,
}

impl Tracker {
    pub fn new(now_ms: u64) -> Self {
        Self { state: State::Inactive, since_ms: now_ms, active_since_ms: None, value: None, resolved_ms: None }
    }

    /// Takes one measurement in at `now_ms`.
    pub fn step(&mut self, value: Option<f64>, threshold: Threshold, for_: Duration, now_ms: u64) -> Transition {
        self.value = value;
        let holds = value.is_some_and(|v| threshold.breached(v));
        match (self.state, holds) {
            (State::Inactive, true) => {
                self.active_since_ms = Some(now_ms);
                self.enter(State::Pending, now_ms);
                self.fire_if_due(for_, now_ms)
            }
            (State::Pending, true) => self.fire_if_due(for_, now_ms),
            (State::Pending, false) => {
                self.active_since_ms = None;
                self.enter(State::Inactive, now_ms);
                Transition::None
            }
            (State::Firing, false) => {
                self.resolved_ms = Some(now_ms);
                self.enter(State::Inactive, now_ms);
                Transition::Resolved
            }
            (State::Firing, true) | (State::Inactive, false) => Transition::None,
        }
    }

    /// Resolves a firing alert whose rule went away.
    pub fn remove(&mut self, now_ms: u64) -> Transition {
        if self.state != State::Firing {
            return Transition::None;
        }
        self.resolved_ms = Some(now_ms);
        self.enter(State::Inactive, now_ms);
        Transition::Resolved
    }

    fn fire_if_due(&mut self, for_: Duration, now_ms: u64) -> Transition {
        let began = self.active_since_ms.unwrap_or(now_ms);
        if now_ms.saturating_sub(began) >= for_.as_millis() as u64 {
            self.resolved_ms = None;
            self.enter(State::Firing, now_ms);
            Transition::Fired
        } else {
            Transition::None
        }
    }

    fn enter(&mut self, state: State, now_ms: u64) {
        self.state = state;
        self.since_ms = now_ms;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FOR: Duration = Duration::from_secs(10);

    fn run(t: &mut Tracker, th: Threshold, steps: &[(u64, Option<f64>)]) -> Vec<(State, Transition)> {
        steps
            .iter()
            .map(|(at, v)| {
                let tr = t.step(*v, th, FOR, *at);
                (t.state, tr)
            })
            .collect()
    }

    #[test]
    fn pending_then_firing_after_for_then_resolved() {
        let mut t = Tracker::new(0);
        let th = Threshold::Above(0.05);
        let got = run(&mut t, th, &[(1_000, Some(0.2)), (6_000, Some(0.3)), (10_999, Some(0.3)), (11_000, Some(0.3))]);
        assert_eq!(
            got,
            [
                (State::Pending, Transition::None),
                (State::Pending, Transition::None),
                (State::Pending, Transition::None),
                (State::Firing, Transition::Fired),
            ]
        );
        assert_eq!(t.active_since_ms, Some(1_000), "startsAt is when the condition began");
        assert_eq!(t.step(Some(0.5), th, FOR, 12_000), Transition::None, "fires once");
        assert_eq!(t.step(Some(0.01), th, FOR, 13_000), Transition::Resolved);
        assert_eq!((t.state, t.resolved_ms), (State::Inactive, Some(13_000)));
    }

    #[test]
    fn a_dip_before_for_restarts_the_wait() {
        let mut t = Tracker::new(0);
        let th = Threshold::Above(1.0);
        let got = run(&mut t, th, &[(0, Some(2.0)), (9_000, Some(0.5)), (10_000, Some(2.0)), (19_000, Some(2.0))]);
        assert!(got.iter().all(|(_, tr)| *tr == Transition::None), "{got:?}");
        assert_eq!(t.step(Some(2.0), th, FOR, 20_000), Transition::Fired);
    }

    #[test]
    fn below_and_zero_for_fire_at_once() {
        let mut t = Tracker::new(0);
        let th = Threshold::Below(14.0);
        assert_eq!(t.step(Some(20.0), th, Duration::ZERO, 0), Transition::None);
        assert_eq!(t.step(Some(14.0), th, Duration::ZERO, 1), Transition::None, "strictly below");
        assert_eq!(t.step(Some(3.0), th, Duration::ZERO, 2), Transition::Fired);
        assert_eq!(t.state, State::Firing);
    }

    #[test]
    fn no_data_holds_nothing_and_resolves() {
        let mut t = Tracker::new(0);
        let th = Threshold::Above(0.0);
        assert_eq!(t.step(None, th, Duration::ZERO, 0), Transition::None);
        assert_eq!(t.step(Some(1.0), th, Duration::ZERO, 1), Transition::Fired);
        assert_eq!(t.step(None, th, Duration::ZERO, 2), Transition::Resolved);
        assert_eq!(t.remove(3), Transition::None, "already inactive");
        assert_eq!(t.step(Some(1.0), th, Duration::ZERO, 4), Transition::Fired);
        assert_eq!(t.remove(5), Transition::Resolved, "a deleted rule resolves its alert");
    }
}
