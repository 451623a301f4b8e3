//! Health checks delegated to proxies (Envoy's Health Discovery Service):
//! the proxies that offered to check (their HDS streams) and what they last
//! reported per endpoint. Assignment is `fault::hds`; the stream is
//! `serve::hds`; endpoints reported down leave EDS through
//! `discovery::health` like isolated ones.

use crate::discovery::node::NodeInfo;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// One endpoint's last result.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CheckResult {
    pub service: String,
    /// `address:port`.
    pub endpoint: String,
    pub healthy: bool,
    /// Envoy's `HealthStatus` name as reported (`HEALTHY`, `UNHEALTHY`, `TIMEOUT`...).
    pub status: String,
    /// The node that checked it.
    pub checked_by: String,
    /// When the status last changed (Unix ms).
    pub since_ms: u64,
    #[serde(skip)]
    stream: u64,
}

#[derive(Default)]
struct State {
    /// HDS streams: id to the node on it.
    checkers: BTreeMap<u64, NodeInfo>,
    /// By (service, endpoint).
    results: BTreeMap<(String, String), CheckResult>,
}

/// The checkers and their results.
#[derive(Default)]
pub struct Checks {
    next: AtomicU64,
    state: Mutex<State>,
}

impl Checks {
    /// A proxy opened an HDS stream: its id.
    pub fn connect(&self, node: NodeInfo) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.lock().checkers.insert(id, node);
        id
    }

    /// The stream ended: its results go with it (what it checked is unknown
    /// until another proxy checks it).
    pub fn disconnect(&self, id: u64) {
        let mut s = self.lock();
        s.checkers.remove(&id);
        s.results.retain(|_, r| r.stream != id);
    }

    /// The streams now, by id.
    pub fn checkers(&self) -> BTreeMap<u64, NodeInfo> {
        self.lock().checkers.clone()
    }

    /// Records what stream `id` reports of `endpoint` of `service`.
    pub fn record(&self, id: u64, service: &str, endpoint: &str, status: &str, now_ms: u64) {
        let healthy = matches!(status, "HEALTHY" | "DEGRADED");
        let mut s = self.lock();
        let Some(node) = s.checkers.get(&id).map(|n| n.id.clone()) else { return };
        let key = (service.to_string(), endpoint.to_string());
        let since_ms = match s.results.get(&key) {
            Some(r) if r.healthy == healthy => r.since_ms,
            _ => now_ms,
        };
        let result = CheckResult {
            service: key.0.clone(),
            endpoint: key.1.clone(),
            healthy,
            status: status.to_string(),
            checked_by: node,
            since_ms,
            stream: id,
        };
        s.results.insert(key, result);
    }

    /// Drops results of stream `id` for endpoints it no longer checks.
    pub fn retain(&self, id: u64, assigned: &BTreeSet<(String, String)>) {
        self.lock().results.retain(|k, r| r.stream != id || assigned.contains(k));
    }

    /// Every endpoint's last result.
    pub fn results(&self) -> Vec<CheckResult> {
        self.lock().results.values().cloned().collect()
    }

    /// (service, `address:port`) of the endpoints last reported down.
    pub fn down(&self) -> BTreeSet<(String, String)> {
        self.lock().results.iter().filter(|(_, r)| !r.healthy).map(|(k, _)| k.clone()).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}
