//! Circuit breakers: a cluster's limits on connections, pending requests,
//! requests and retries in flight, as Envoy's `circuit_breakers.thresholds`
//! define them (defaults 1024 / 1024 / 1024 / 3).
//!
//! Each limit is one atomic counter shared by every worker (Envoy's resource
//! manager is per cluster, not per worker). Taking a slot is one `fetch_add`
//! (and a `fetch_sub` when over the limit); the slot gives it back when
//! dropped. The `circuit_breakers.<priority>.*_open` gauges (and, with
//! `track_remaining`, `remaining_*`) follow every change.

use crate::stats::{Gauge, Store};
use legate_api::pb::envoy::config::cluster::v3::CircuitBreakers as PbCircuitBreakers;
use legate_api::pb::envoy::config::core::v3::RoutingPriority;
use std::sync::atomic::{
    AtomicU64,
    Ordering::{AcqRel, Acquire},
};
use std::sync::Arc;

/// One limited resource.
pub struct Resource {
    max: u64,
    current: AtomicU64,
    open: Arc<Gauge>,
    remaining: Option<Arc<Gauge>>,
}

impl Resource {
    fn new(max: u64, open: Arc<Gauge>, remaining: Option<Arc<Gauge>>) -> Arc<Self> {
        // As Envoy: `remaining_*` starts at the limit; `*_open` is left
        // untouched (unused, so stats sinks skip it) until traffic moves it.
        if let Some(rem) = &remaining {
            rem.set(max as i64);
        }
        if max == 0 {
            open.set(1);
        }
        Arc::new(Self { max, current: AtomicU64::new(0), open, remaining })
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// Whether one more would fit now.
    pub fn can_create(&self) -> bool {
        self.current.load(Acquire) < self.max
    }

    /// A slot, or `None` when the limit is reached (the caller counts the overflow).
    pub fn try_acquire(self: &Arc<Self>) -> Option<Slot> {
        self.try_acquire_within(self.max)
    }

    /// A slot under a limit computed now (a retry budget) instead of `max`.
    pub fn try_acquire_within(self: &Arc<Self>, max: u64) -> Option<Slot> {
        let before = self.current.fetch_add(1, AcqRel);
        if before >= max {
            self.current.fetch_sub(1, AcqRel);
            return None;
        }
        self.show(before + 1);
        Some(Slot(self.clone()))
    }

    /// A slot even past the limit: Envoy opens a connection to a host that
    /// has none at all, whatever the connection limit says.
    pub fn acquire_anyway(self: &Arc<Self>) -> Slot {
        let now = self.current.fetch_add(1, AcqRel) + 1;
        self.show(now);
        Slot(self.clone())
    }

    fn show(&self, now: u64) {
        self.open.set(i64::from(now >= self.max));
        if let Some(r) = &self.remaining {
            r.set(self.max.saturating_sub(now) as i64);
        }
    }
}

/// A taken unit of a resource, given back on drop.
pub struct Slot(Arc<Resource>);

impl Drop for Slot {
    fn drop(&mut self) {
        let now = self.0.current.fetch_sub(1, AcqRel).saturating_sub(1);
        self.0.show(now);
    }
}

/// The limits of one routing priority.
pub struct Thresholds {
    pub connections: Arc<Resource>,
    pub pending: Arc<Resource>,
    pub requests: Arc<Resource>,
    pub retries: Arc<Resource>,
    /// `max_connection_pools` (unlimited by default): a pool is a worker's
    /// connections to one host, and exists while it has any.
    pub connection_pools: Arc<Resource>,
    /// `retry_budget`: (percent of active and pending requests, minimum
    /// concurrency); replaces `max_retries` when set.
    pub retry_budget: Option<(f64, u64)>,
}

impl Thresholds {
    /// A slot for one retry, under the retry budget when there is one.
    pub fn try_retry(&self) -> Option<Slot> {
        match self.retry_budget {
            None => self.retries.try_acquire(),
            Some((percent, min)) => {
                let active = self.requests.current.load(Acquire) + self.pending.current.load(Acquire);
                let budget = ((active as f64 * percent / 100.0) as u64).max(min);
                self.retries.try_acquire_within(budget)
            }
        }
    }
}

/// A cluster's breakers: `default` is what routes use (Legate routes at the
/// default priority); `high` is kept for `/clusters` and its gauges.
pub struct CircuitBreakers {
    pub default: Thresholds,
    pub high: Thresholds,
}

impl CircuitBreakers {
    pub fn compile(pb: Option<&PbCircuitBreakers>, store: &Store, cluster: &str) -> Self {
        let find = |p: RoutingPriority| pb.and_then(|cb| cb.thresholds.iter().find(|t| t.priority == p as i32));
        let build = |p: RoutingPriority, name: &str| {
            let t = find(p);
            let value = |v: Option<u32>, default: u64| v.map_or(default, u64::from);
            let track = t.is_some_and(|t| t.track_remaining);
            let prefix = format!("cluster.{cluster}.circuit_breakers.{name}.");
            let res = |max: u64, open: &str, remaining: &str| {
                let remaining = track.then(|| store.gauge(&format!("{prefix}{remaining}")));
                Resource::new(max, store.gauge(&format!("{prefix}{open}")), remaining)
            };
            Thresholds {
                connections: res(
                    value(t.and_then(|t| t.max_connections.map(|v| v.value)), 1024),
                    "cx_open",
                    "remaining_cx",
                ),
                pending: res(
                    value(t.and_then(|t| t.max_pending_requests.map(|v| v.value)), 1024),
                    "rq_pending_open",
                    "remaining_pending",
                ),
                requests: res(value(t.and_then(|t| t.max_requests.map(|v| v.value)), 1024), "rq_open", "remaining_rq"),
                retries: res(
                    value(t.and_then(|t| t.max_retries.map(|v| v.value)), 3),
                    "rq_retry_open",
                    "remaining_retries",
                ),
                connection_pools: res(
                    value(t.and_then(|t| t.max_connection_pools.map(|v| v.value)), u64::from(u32::MAX)),
                    "cx_pool_open",
                    "remaining_cx_pools",
                ),
                retry_budget: t.and_then(|t| t.retry_budget.as_ref()).map(|b| {
                    (
                        b.budget_percent.as_ref().map_or(20.0, |p| p.value),
                        b.min_retry_concurrency.map_or(3, |v| u64::from(v.value)),
                    )
                }),
            }
        };
        Self { default: build(RoutingPriority::Default, "default"), high: build(RoutingPriority::High, "high") }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_limited_and_given_back() {
        let store = Store::default();
        let open = store.gauge("open");
        let r = Resource::new(2, open.clone(), Some(store.gauge("remaining")));
        let a = r.try_acquire().expect("first");
        let b = r.try_acquire().expect("second");
        assert!(r.try_acquire().is_none(), "third is over the limit");
        assert_eq!(open.value(), 1);
        drop(a);
        assert_eq!(open.value(), 0);
        assert!(r.can_create());
        let c = r.try_acquire().expect("freed slot");
        let forced = r.acquire_anyway();
        assert!(!r.can_create());
        drop((b, c, forced));
        assert_eq!(store.gauge("remaining").value(), 2);
    }

    #[test]
    fn retry_budget_scales_with_requests_in_flight() {
        let store = Store::default();
        let pb: PbCircuitBreakers = legate_api::load::decode_typed(
            legate_api::load::parse_text(
                "thresholds: [{ retry_budget: { budget_percent: { value: 25 }, min_retry_concurrency: 2 } }]",
            )
            .unwrap(),
        )
        .unwrap()
        .0;
        let cb = CircuitBreakers::compile(Some(&pb), &store, "c");
        let t = &cb.default;
        // Nothing in flight: the minimum concurrency, 2.
        let (a, b) = (t.try_retry().unwrap(), t.try_retry().unwrap());
        assert!(t.try_retry().is_none());
        drop((a, b));
        // 20 requests in flight: 25 % of them, 5 retries.
        let rqs: Vec<Slot> = (0..20).map(|_| t.requests.try_acquire().unwrap()).collect();
        let retries: Vec<Slot> = (0..5).map(|_| t.try_retry().unwrap()).collect();
        assert!(t.try_retry().is_none());
        drop((rqs, retries));
    }
}
