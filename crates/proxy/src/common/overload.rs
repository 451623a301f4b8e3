//! The overload manager's actions as the request and accept paths read
//! them. The manager (`server/overload`) samples its resource monitors on
//! the main thread and writes each action's state here; a request reads one
//! word and an accept another, each with one relaxed load, so without an
//! overload manager (both words 0) the cost is that load and nothing more.
//!
//! A state is Envoy's `OverloadActionState` in 16 bits: 0 inactive,
//! [`SATURATED`] saturated, in between a scaled trigger's value. Actions that
//! Envoy applies to a fraction of requests or connections (`bernoulli` on the
//! value) do so here too.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::LazyLock;
use tokio::sync::watch;

/// A saturated action's state.
pub const SATURATED: u16 = u16::MAX;

/// The actions Legate takes, each with its place in its word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `envoy.overload_actions.stop_accepting_requests` (request word).
    StopAcceptingRequests,
    /// `envoy.overload_actions.disable_http_keepalive` (request word).
    DisableHttpKeepalive,
    /// `envoy.overload_actions.stop_accepting_connections` (accept word).
    StopAcceptingConnections,
    /// `envoy.overload_actions.reject_incoming_connections` (accept word).
    RejectIncomingConnections,
    /// `envoy.overload_actions.shrink_heap` (the manager's own).
    ShrinkHeap,
}

impl Action {
    /// Every action, in the order of [`Action::NAMES`].
    pub const ALL: [Action; 5] = [
        Action::StopAcceptingRequests,
        Action::DisableHttpKeepalive,
        Action::StopAcceptingConnections,
        Action::RejectIncomingConnections,
        Action::ShrinkHeap,
    ];

    /// Envoy's names, in the order of [`Action::ALL`].
    pub const NAMES: [&'static str; 5] = [
        "envoy.overload_actions.stop_accepting_requests",
        "envoy.overload_actions.disable_http_keepalive",
        "envoy.overload_actions.stop_accepting_connections",
        "envoy.overload_actions.reject_incoming_connections",
        "envoy.overload_actions.shrink_heap",
    ];

    pub fn from_name(name: &str) -> Option<Action> {
        Self::NAMES.iter().position(|n| *n == name).map(|i| Self::ALL[i])
    }

    /// The word and the shift of this action's state (none: not read on
    /// the request or accept path).
    fn place(self) -> Option<(&'static AtomicU64, u32)> {
        match self {
            Action::StopAcceptingRequests => Some((&REQUEST, 0)),
            Action::DisableHttpKeepalive => Some((&REQUEST, 16)),
            Action::StopAcceptingConnections => Some((&ACCEPT, 0)),
            Action::RejectIncomingConnections => Some((&ACCEPT, 16)),
            Action::ShrinkHeap => None,
        }
    }
}

static REQUEST: AtomicU64 = AtomicU64::new(0);
/// An accept-side action is configured: accept loops watch for changes.
static ACCEPT_WATCHED: AtomicBool = AtomicBool::new(false);
static ACCEPT: AtomicU64 = AtomicU64::new(0);
/// Raised whenever the accept word changes: a listener that stopped
/// accepting waits on it.
static ACCEPT_CHANGED: LazyLock<watch::Sender<u64>> = LazyLock::new(|| watch::channel(0).0);

/// The manager has an accept-side action (set before the workers start).
pub fn watch_accepts() {
    ACCEPT_WATCHED.store(true, Relaxed);
}

/// Whether accept loops must watch for the accept word's changes.
pub fn accept_watched() -> bool {
    ACCEPT_WATCHED.load(Relaxed)
}

/// Sets an action's state (the manager, after each sampling).
pub fn set(action: Action, state: u16) {
    let Some((word, shift)) = action.place() else { return };
    let mask = !(0xffff_u64 << shift);
    let old = word.load(Relaxed);
    let new = (old & mask) | (u64::from(state) << shift);
    if old != new {
        word.store(new, Relaxed);
        if std::ptr::eq(word, &ACCEPT) {
            ACCEPT_CHANGED.send_replace(new);
        }
    }
}

/// The request path's word: one relaxed load per request.
#[derive(Debug, Clone, Copy)]
pub struct RequestState(u64);

/// The accept path's word: one relaxed load per accept.
#[derive(Debug, Clone, Copy)]
pub struct AcceptState(u64);

pub fn request_state() -> RequestState {
    RequestState(REQUEST.load(Relaxed))
}

pub fn accept_state() -> AcceptState {
    AcceptState(ACCEPT.load(Relaxed))
}

fn field(word: u64, shift: u32) -> u16 {
    (word >> shift) as u16
}

/// Envoy's `bernoulli(value)`: always when saturated, never when inactive,
/// else at random with the state's probability.
fn bernoulli(state: u16) -> bool {
    match state {
        0 => false,
        SATURATED => true,
        v => rand::random::<u16>() < v,
    }
}

impl RequestState {
    /// No request-side action is active (the usual case).
    pub fn idle(self) -> bool {
        self.0 == 0
    }

    /// `stop_accepting_requests`: this request is answered 503.
    pub fn stop_request(self) -> bool {
        bernoulli(field(self.0, 0))
    }

    /// `disable_http_keepalive`: this request's connection is drained.
    pub fn disable_keepalive(self) -> bool {
        bernoulli(field(self.0, 16))
    }
}

impl AcceptState {
    /// `stop_accepting_connections` is saturated: listeners stop accepting
    /// (Envoy disables them; connections wait in the kernel's backlog).
    pub fn stop_accepting(self) -> bool {
        field(self.0, 0) == SATURATED
    }

    /// `reject_incoming_connections`: this accepted connection is closed.
    pub fn reject(self) -> bool {
        bernoulli(field(self.0, 16))
    }
}

/// A receiver that sees each change of the accept word.
pub fn accept_changes() -> watch::Receiver<u64> {
    ACCEPT_CHANGED.subscribe()
}

/// Waits for the accept word to change: while stopped, until
/// `stop_accepting_connections` is no longer saturated. Never returns once
/// the manager is gone.
pub async fn accept_change(rx: &mut watch::Receiver<u64>, stopped: bool) {
    loop {
        if stopped {
            rx.mark_unchanged();
            if !accept_state().stop_accepting() {
                return;
            }
        }
        if rx.changed().await.is_err() {
            return std::future::pending().await;
        }
        if !stopped {
            return;
        }
    }
}

/// A state from a trigger value in [0, 1] (1 and over: saturated).
pub fn encode(value: f64) -> u16 {
    if value >= 1.0 {
        SATURATED
    } else if value <= 0.0 {
        0
    } else {
        // Never rounded up to saturated, nor down to inactive.
        ((value * f64::from(SATURATED)) as u16).clamp(1, SATURATED - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_encode_and_draw_as_envoys() {
        assert_eq!(encode(0.0), 0);
        assert_eq!(encode(1.0), SATURATED);
        assert_eq!(encode(0.999_999_9), SATURATED - 1);
        assert_eq!(encode(1e-9), 1);
        assert!(!bernoulli(0));
        assert!(bernoulli(SATURATED));
        let hits = (0..10_000).filter(|_| bernoulli(encode(0.5))).count();
        assert!((4_000..6_000).contains(&hits), "{hits}");
    }
}
