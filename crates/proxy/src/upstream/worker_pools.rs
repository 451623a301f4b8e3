//! Each worker's connection pools of one cluster: per host, the pooled
//! HTTP/1.1 senders, the HTTP/2 connection, how many connections the worker
//! has open and the pool's `max_connection_pools` slot; and the state a
//! connection shares with the requests on it.
//!
//! The pool map is indexed by worker (Envoy's model), so its mutex is only
//! ever taken by one thread; every operation here takes it once.

use crate::body::ProxyBody;
use crate::upstream::breakers::{Resource, Slot};
use crate::upstream::clock::clock_ms;
use hyper::client::conn::{http1, http2};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

/// Most idle HTTP/1.1 connections kept per host per worker.
const MAX_IDLE_PER_HOST: usize = 256;

/// What a connection shares with its I/O task: requests in flight on it,
/// requests it has carried, and since when it has been idle. One Arc per
/// connection; a request costs two relaxed atomic adds on it.
#[derive(Default)]
pub struct ConnState {
    pub active: AtomicU32,
    pub served: AtomicU32,
    /// Milliseconds on `clock_ms` since the last request on it ended.
    pub idle_since: AtomicU64,
}

/// A request's use of a connection: it is busy (not idle) until this is
/// dropped, when the response has ended.
pub struct ConnUse(Arc<ConnState>);

impl ConnUse {
    pub fn new(state: &Arc<ConnState>) -> Self {
        state.active.fetch_add(1, Relaxed);
        Self(state.clone())
    }
}

impl Drop for ConnUse {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Relaxed) == 1 {
            self.0.idle_since.store(clock_ms(), Relaxed);
        }
    }
}

/// A strong hold on a connection's accounting (the connection module's
/// `OwnedConn`): the connection stays counted while one is held. Only held
/// and dropped, so its type is left open here.
pub type ConnHold = Arc<dyn Send + Sync>;

/// A pooled HTTP/1.1 connection: its sender, its request/idle state, and a
/// weak handle on its accounting, which an upgrade takes a strong hold of so
/// that the connection stays counted while it carries the tunnel.
pub type H1Conn = (http1::SendRequest<ProxyBody>, Arc<ConnState>, Weak<dyn Send + Sync>);

/// A pooled HTTP/2 connection: its sender and its request/idle state.
pub type H2Conn = (http2::SendRequest<ProxyBody>, Arc<ConnState>);

#[derive(Default)]
struct HostPool {
    h1: Vec<H1Conn>,
    h2: Option<H2Conn>,
    /// Connections this worker has open to the host.
    open: usize,
    /// The pool's `max_connection_pools` slot, held while it has connections.
    pool_slot: Option<Slot>,
}

pub struct Pools {
    per_worker: Box<[Mutex<HashMap<SocketAddr, HostPool>>]>,
    /// Woken when an upstream response ends, so that requests pending for a
    /// connection look again; `waiting` counts them so that the common case
    /// (nobody waiting) costs one atomic load, not the Notify's lock.
    pub released: tokio::sync::Notify,
    pub waiting: AtomicUsize,
}

impl Pools {
    pub fn new(workers: usize) -> Self {
        Self {
            per_worker: (0..=workers).map(|_| Mutex::new(HashMap::new())).collect(),
            released: tokio::sync::Notify::new(),
            waiting: Default::default(),
        }
    }

    fn mine(&self) -> MutexGuard<'_, HashMap<SocketAddr, HostPool>> {
        self.worker(crate::stats::worker_index())
    }

    fn worker(&self, w: usize) -> MutexGuard<'_, HashMap<SocketAddr, HostPool>> {
        self.per_worker[w % self.per_worker.len()].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An upstream response has ended: its connection is ready again.
    pub fn release(&self) {
        if self.waiting.load(Relaxed) > 0 {
            self.released.notify_waiters();
        }
    }

    /// A ready pooled HTTP/1.1 sender for `addr`, and how many connections
    /// this worker has open to it.
    pub fn checkout_h1(&self, addr: SocketAddr) -> (Option<H1Conn>, usize) {
        let mut pools = self.mine();
        let pool = pools.entry(addr).or_default();
        pool.h1.retain(|(s, _, _)| !s.is_closed());
        let ready = pool.h1.iter().position(|(s, _, _)| s.is_ready()).map(|i| pool.h1.swap_remove(i));
        (ready, pool.open)
    }

    /// Puts an HTTP/1.1 connection back, unless the host has enough idle ones.
    pub fn return_h1(&self, addr: SocketAddr, conn: H1Conn) {
        let mut pools = self.mine();
        let pool = pools.entry(addr).or_default();
        if pool.h1.len() < MAX_IDLE_PER_HOST {
            pool.h1.push(conn);
        }
    }

    /// Counts a new HTTP/1.1 connection to `addr` as open in this worker.
    pub fn opened_h1(&self, addr: SocketAddr) {
        self.mine().entry(addr).or_default().open += 1;
    }

    /// The HTTP/2 connection to `addr`, unless it has closed (then it is forgotten).
    pub fn h2(&self, addr: SocketAddr) -> Option<H2Conn> {
        let mut pools = self.mine();
        let pool = pools.entry(addr).or_default();
        match &pool.h2 {
            Some((s, state)) if !s.is_closed() => Some((s.clone(), state.clone())),
            _ => {
                pool.h2 = None;
                None
            }
        }
    }

    /// Installs a new HTTP/2 connection to `addr`, counted as open.
    pub fn opened_h2(&self, addr: SocketAddr, conn: H2Conn) {
        let mut pools = self.mine();
        let pool = pools.entry(addr).or_default();
        pool.h2 = Some(conn);
        pool.open += 1;
    }

    /// Stops handing out the HTTP/2 connection whose state is `state`
    /// (it has carried its last stream).
    pub fn retire_h2(&self, addr: SocketAddr, state: &Arc<ConnState>) {
        let mut pools = self.mine();
        if let Some(pool) = pools.get_mut(&addr) {
            if pool.h2.as_ref().is_some_and(|(_, s)| Arc::ptr_eq(s, state)) {
                pool.h2 = None;
            }
        }
    }

    /// Makes sure this worker's pool for `addr` holds a `max_connection_pools`
    /// slot, taking one from `limit`; false when none is left.
    pub fn hold_pool_slot(&self, addr: SocketAddr, limit: &Arc<Resource>) -> bool {
        let mut pools = self.mine();
        let pool = pools.entry(addr).or_default();
        if pool.pool_slot.is_some() {
            return true;
        }
        match limit.try_acquire() {
            Some(s) => {
                pool.pool_slot = Some(s);
                true
            }
            None => false,
        }
    }

    /// A connection attempt failed: a pool left without connections goes away.
    pub fn connect_failed(&self, addr: SocketAddr) {
        let mut pools = self.mine();
        if let Some(p) = pools.get_mut(&addr) {
            if p.open == 0 {
                p.pool_slot = None;
            }
        }
    }

    /// A connection of worker `w`'s pool for `addr` has closed.
    pub fn closed(&self, w: usize, addr: SocketAddr) {
        if let Some(p) = self.worker(w).get_mut(&addr) {
            p.open = p.open.saturating_sub(1);
            // A pool without connections is gone: its
            // max_connection_pools slot is free again.
            if p.open == 0 {
                p.pool_slot = None;
            }
        }
    }
}
