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

use crate::stats::Counter;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, LazyLock, OnceLock};
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
    /// `envoy.overload_actions.reduce_timeouts` (request word): the
    /// connection idle timer scaled.
    ReduceTimeouts,
    /// `envoy.overload_actions.stop_accepting_connections` (accept word).
    StopAcceptingConnections,
    /// `envoy.overload_actions.reject_incoming_connections` (accept word).
    RejectIncomingConnections,
    /// `envoy.overload_actions.shrink_heap` (the manager's own).
    ShrinkHeap,
    /// The load shed point `envoy.load_shed_points.tcp_listener_accept`
    /// (accept word): an accepted connection closed, as
    /// `reject_incoming_connections` does.
    ShedListenerAccept,
    /// The load shed point
    /// `envoy.load_shed_points.http_connection_manager_decode_headers`
    /// (request word): a new request answered 503, as
    /// `stop_accepting_requests` does.
    ShedDecodeHeaders,
}

impl Action {
    /// Every action, in the order of [`Action::NAMES`].
    pub const ALL: [Action; 6] = [
        Action::StopAcceptingRequests,
        Action::DisableHttpKeepalive,
        Action::ReduceTimeouts,
        Action::StopAcceptingConnections,
        Action::RejectIncomingConnections,
        Action::ShrinkHeap,
    ];

    /// Envoy's names, in the order of [`Action::ALL`].
    pub const NAMES: [&'static str; 6] = [
        "envoy.overload_actions.stop_accepting_requests",
        "envoy.overload_actions.disable_http_keepalive",
        "envoy.overload_actions.reduce_timeouts",
        "envoy.overload_actions.stop_accepting_connections",
        "envoy.overload_actions.reject_incoming_connections",
        "envoy.overload_actions.shrink_heap",
    ];

    pub fn from_name(name: &str) -> Option<Action> {
        Self::NAMES.iter().position(|n| *n == name).map(|i| Self::ALL[i])
    }

    /// The load shed points Legate has, with Envoy's names.
    pub const POINTS: [(Action, &'static str); 2] = [
        (Action::ShedListenerAccept, "envoy.load_shed_points.tcp_listener_accept"),
        (Action::ShedDecodeHeaders, "envoy.load_shed_points.http_connection_manager_decode_headers"),
    ];

    pub fn from_point_name(name: &str) -> Option<Action> {
        Self::POINTS.iter().find(|(_, n)| *n == name).map(|(a, _)| *a)
    }

    /// Counts each time this load shed point sheds (the manager, once).
    pub fn count_sheds(self, counter: Arc<Counter>) {
        if let Some(i) = Self::POINTS.iter().position(|(a, _)| *a == self) {
            let _ = SHED_COUNTS[i].set(counter);
        }
    }

    /// The word and the shift of this action's state (none: not read on
    /// the request or accept path).
    fn place(self) -> Option<(&'static AtomicU64, u32)> {
        match self {
            Action::StopAcceptingRequests => Some((&REQUEST, 0)),
            Action::DisableHttpKeepalive => Some((&REQUEST, 16)),
            Action::ReduceTimeouts => Some((&REQUEST, 32)),
            Action::StopAcceptingConnections => Some((&ACCEPT, 0)),
            Action::RejectIncomingConnections => Some((&ACCEPT, 16)),
            Action::ShedListenerAccept => Some((&ACCEPT, 32)),
            Action::ShedDecodeHeaders => Some((&REQUEST, 48)),
            Action::ShrinkHeap => None,
        }
    }
}

static REQUEST: AtomicU64 = AtomicU64::new(0);
/// Each load shed point's `shed_load_count`, in the order of
/// [`Action::POINTS`] (set by the manager when the point is configured).
static SHED_COUNTS: [OnceLock<Arc<Counter>>; 2] = [OnceLock::new(), OnceLock::new()];
/// An accept-side action is configured: accept loops watch for changes.
static ACCEPT_WATCHED: AtomicBool = AtomicBool::new(false);
static ACCEPT: AtomicU64 = AtomicU64::new(0);
/// `reduce_timeouts`' floor for the connection idle timer, when that
/// action scales it.
static IDLE_MIN: OnceLock<IdleMin> = OnceLock::new();
/// Raised whenever `reduce_timeouts` changes (connections re-time their
/// idle timers, as Envoy's scaled range timers follow the action).
static TIMEOUTS_CHANGED: LazyLock<watch::Sender<u16>> = LazyLock::new(|| watch::channel(0).0);

/// Where a scaled timer stops shrinking (`ScaleTimer.overload_adjust`).
#[derive(Debug, Clone, Copy)]
pub enum IdleMin {
    /// `min_timeout`.
    Timeout(std::time::Duration),
    /// `min_scale`: this fraction of the timer's own duration.
    Scale(f64),
}

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
        } else if action == Action::ReduceTimeouts {
            TIMEOUTS_CHANGED.send_replace(state);
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

/// A load shed point's draw; a shed is counted in its `shed_load_count`.
fn shed(state: u16, point: usize) -> bool {
    let fired = bernoulli(state);
    if fired {
        if let Some(c) = SHED_COUNTS[point].get() {
            c.inc();
        }
    }
    fired
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

    /// `stop_accepting_requests`, then the decode-headers load shed point
    /// (each drawn on its own, as Envoy's): this request is answered 503.
    pub fn stop_request(self) -> bool {
        bernoulli(field(self.0, 0)) || shed(field(self.0, 48), 1)
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

    /// `reject_incoming_connections`, then the listener-accept load shed
    /// point (each drawn on its own): this accepted connection is closed.
    pub fn reject(self) -> bool {
        bernoulli(field(self.0, 16)) || shed(field(self.0, 32), 0)
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

/// `reduce_timeouts` scales the connection idle timer down to `min` (set
/// once, by the manager, before the workers start).
pub fn scale_idle_timer(min: IdleMin) {
    let _ = IDLE_MIN.set(min);
}

/// An HTTP connection's idle timer: its timeout, scaled by
/// `reduce_timeouts` when that action is configured (and then re-timed
/// whenever the action changes, from when it was armed, as Envoy's scaled
/// range timer follows the action).
pub struct IdleTimer {
    max: Option<std::time::Duration>,
    changes: Option<watch::Receiver<u16>>,
    armed: tokio::time::Instant,
}

/// What an unset timer waits: as good as for ever.
const FAR: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

impl IdleTimer {
    pub fn new(max: Option<std::time::Duration>) -> Self {
        let changes = max.and(IDLE_MIN.get()).map(|_| TIMEOUTS_CHANGED.subscribe());
        IdleTimer { max, changes, armed: tokio::time::Instant::now() }
    }

    /// There is an idle timeout.
    pub fn is_set(&self) -> bool {
        self.max.is_some()
    }

    /// The timeout follows `reduce_timeouts`.
    pub fn scaled(&self) -> bool {
        self.changes.is_some()
    }

    /// Armed from now: when it fires.
    pub fn arm(&mut self) -> tokio::time::Instant {
        self.armed = tokio::time::Instant::now();
        self.deadline()
    }

    /// When it fires, armed when it last was.
    pub fn deadline(&self) -> tokio::time::Instant {
        let timeout = match (self.max, IDLE_MIN.get()) {
            (Some(max), Some(min)) if self.scaled() => {
                scaled(max, *min, f64::from(field(REQUEST.load(Relaxed), 32)) / f64::from(SATURATED))
            }
            (Some(max), _) => max,
            (None, _) => FAR,
        };
        self.armed + timeout
    }

    /// Returns when `reduce_timeouts` changes (never when not scaled).
    pub async fn changed(&mut self) {
        let Some(rx) = self.changes.as_mut() else { return std::future::pending().await };
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// `max` scaled towards its floor by an action value: the floor plus the
/// rest of the range times one less the value.
fn scaled(max: std::time::Duration, min: IdleMin, value: f64) -> std::time::Duration {
    let min = match min {
        IdleMin::Timeout(d) => d.min(max),
        IdleMin::Scale(f) => max.mul_f64(f.clamp(0.0, 1.0)),
    };
    min + (max - min).mul_f64(1.0 - value.clamp(0.0, 1.0))
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
        let (max, s) = (std::time::Duration::from_secs(10), std::time::Duration::from_secs);
        assert_eq!(scaled(max, IdleMin::Timeout(s(2)), 0.0), max);
        assert_eq!(scaled(max, IdleMin::Timeout(s(2)), 0.5), s(6));
        assert_eq!(scaled(max, IdleMin::Timeout(s(2)), 1.0), s(2));
        assert_eq!(scaled(max, IdleMin::Scale(0.5), 1.0), s(5));
    }
}
