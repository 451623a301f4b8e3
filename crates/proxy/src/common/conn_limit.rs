//! The overload manager's global downstream connection limit
//! (`envoy.resource_monitors.global_downstream_max_connections`): a count
//! shared by every listener and worker that a connection must take a place
//! in when it is accepted, and gives back when it closes. Listeners with
//! `ignore_global_conn_limit` neither take a place nor count.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The limit (none: unlimited) and the connections holding a place.
#[derive(Debug, Default)]
pub struct ConnLimit {
    max: Option<usize>,
    current: AtomicUsize,
}

/// A place held by one connection, given back when dropped.
#[derive(Debug)]
pub struct ConnPlace(Arc<ConnLimit>);

impl Drop for ConnPlace {
    fn drop(&mut self) {
        self.0.current.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConnLimit {
    pub fn new(max: Option<usize>) -> Arc<ConnLimit> {
        Arc::new(ConnLimit { max, current: AtomicUsize::new(0) })
    }

    /// A place for one more connection, if the limit allows it (as Envoy's
    /// `tryAllocateResource`: never over the limit, even with many workers
    /// accepting at once).
    pub fn try_take(self: &Arc<Self>) -> Option<ConnPlace> {
        let Some(max) = self.max else {
            self.current.fetch_add(1, Ordering::AcqRel);
            return Some(ConnPlace(self.clone()));
        };
        self.current
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| ConnPlace(self.clone()))
    }

    /// Whether there is a limit (without one, listeners need not count).
    pub fn is_limited(&self) -> bool {
        self.max.is_some()
    }

    /// Connections holding a place now.
    pub fn current(&self) -> usize {
        self.current.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_never_more_than_the_limit_and_come_back_on_drop() {
        let limit = ConnLimit::new(Some(2));
        let a = limit.try_take().expect("first");
        let _b = limit.try_take().expect("second");
        assert!(limit.try_take().is_none(), "a third over a limit of two");
        drop(a);
        assert_eq!(limit.current(), 1);
        assert!(limit.try_take().is_some(), "a place came back");
        let unlimited = ConnLimit::new(None);
        let held: Vec<_> = (0..1000).filter_map(|_| unlimited.try_take()).collect();
        assert_eq!(held.len(), 1000);
    }
}
