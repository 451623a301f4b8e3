//! The overload manager's global downstream connection limit
//! (`envoy.resource_monitors.global_downstream_max_connections`): a count
//! shared by every listener and worker that a connection must take a place
//! in when it is accepted, and gives back when it closes. Listeners with
//! `ignore_global_conn_limit` neither take a place nor count.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The runtime key that limits connections when no resource monitor does
/// (deprecated in Envoy, still honoured).
const RUNTIME_KEY: &str = "overload.global_downstream_max_connections";

/// The limit and the connections holding a place.
#[derive(Debug, Default)]
pub struct ConnLimit {
    max: Limit,
    current: AtomicUsize,
}

#[derive(Debug, Default)]
enum Limit {
    #[default]
    None,
    Fixed(usize),
    /// Whatever the runtime says under this key at each accept (none set:
    /// unlimited).
    Runtime(Box<str>),
}

/// A limit had no place left.
#[derive(Debug)]
pub struct Full;

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
        let max = match max {
            Some(n) => Limit::Fixed(n),
            None if crate::common::runtime::configured() => Limit::Runtime(RUNTIME_KEY.into()),
            None => Limit::None,
        };
        Arc::new(ConnLimit { max, current: AtomicUsize::new(0) })
    }

    /// A listener's own limit, Envoy's runtime key
    /// `envoy.resource_limits.listener.<name>.connection_limit` (none
    /// without runtime layers: nothing could set it).
    pub fn for_listener(name: &str) -> Option<Arc<ConnLimit>> {
        crate::common::runtime::configured().then(|| {
            let key = format!("envoy.resource_limits.listener.{name}.connection_limit");
            Arc::new(ConnLimit { max: Limit::Runtime(key.into()), current: AtomicUsize::new(0) })
        })
    }

    /// A place for one more connection, if the limit allows it (as Envoy's
    /// `tryAllocateResource`: never over the limit, even with many workers
    /// accepting at once).
    pub fn try_take(self: &Arc<Self>) -> Option<ConnPlace> {
        let max = match &self.max {
            Limit::Fixed(n) => *n,
            Limit::Runtime(key) => {
                let n = crate::common::runtime::snapshot().integer(key, u64::MAX);
                usize::try_from(n).unwrap_or(usize::MAX)
            }
            Limit::None => {
                self.current.fetch_add(1, Ordering::AcqRel);
                return Some(ConnPlace(self.clone()));
            }
        };
        self.current
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| ConnPlace(self.clone()))
    }

    /// A place under `limit` when there is one; Err when it is full.
    pub fn admit(limit: Option<&Arc<Self>>) -> Result<Option<ConnPlace>, Full> {
        match limit {
            Some(l) => l.try_take().map(Some).ok_or(Full),
            None => Ok(None),
        }
    }

    /// Whether there is a limit (without one, listeners need not count).
    pub fn is_limited(&self) -> bool {
        !matches!(self.max, Limit::None)
    }

    /// Whether the admin listener takes a place too: Envoy limits it under
    /// the runtime key's limit, not under the resource monitor's.
    pub fn limits_admin(&self) -> bool {
        matches!(self.max, Limit::Runtime(_))
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
