//! Connected proxies and what each has been sent, ACKed and NACKed.

use crate::clock::now;
use crate::discovery::node::NodeInfo;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct Nack {
    pub version: String,
    pub error: String,
    pub at: String,
}

#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct TypeStatus {
    /// The names of the resources last sent (what the proxy holds if it ACKed).
    pub names: Vec<String>,
    pub sent_version: String,
    pub acked_version: String,
    pub resources: usize,
    pub last_nack: Option<Nack>,
    /// The revision whose config for this type was last sent (or found
    /// unchanged, so what was sent before still stands for it).
    pub sent_revision: u64,
    /// The revision whose config for this type the proxy holds: the sent
    /// revision once it ACKed the last response.
    pub acked_revision: u64,
    /// When the proxy last ACKed this type (Unix ms; 0: never).
    pub acked_at_ms: u64,
    /// A response not yet ACKed or NACKed.
    #[serde(skip)]
    pub awaiting: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProxyStatus {
    pub stream: u64,
    pub node: NodeInfo,
    pub mode: &'static str,
    pub connected_since: String,
    /// The same, in Unix milliseconds.
    #[serde(skip)]
    pub connected_ms: u64,
    /// By resource kind name (Cluster, Listener, ...).
    pub types: BTreeMap<String, TypeStatus>,
    /// The node as the proxy described itself (for CSDS).
    #[serde(skip)]
    pub raw_node: Option<legate_api::pb::envoy::config::core::v3::Node>,
}

impl ProxyStatus {
    /// Some type's last response was NACKed (and nothing newer was ACKed).
    pub fn nacked(&self) -> bool {
        self.types.values().any(|t| t.last_nack.is_some() && t.acked_version != t.sent_version)
    }

    /// Some type's ACKed revision is behind the one last sent, or its
    /// version differs.
    pub fn lagging(&self) -> bool {
        self.types.values().any(|t| t.acked_revision < t.sent_revision || t.acked_version != t.sent_version)
    }
}

#[derive(Default)]
pub struct Fleet {
    next: AtomicU64,
    streams: Mutex<HashMap<u64, ProxyStatus>>,
    /// Node id to (cluster, Unix ms) of its last stream's end: a proxy that
    /// connects and dies between two looks of the fault detector is still
    /// known to be down.
    left: Mutex<HashMap<String, (String, u64)>>,
}

/// The most departed nodes remembered; the oldest go first.
const MAX_LEFT: usize = 10_000;

impl Fleet {
    pub fn connect(
        &self,
        node: NodeInfo,
        raw_node: legate_api::pb::envoy::config::core::v3::Node,
        mode: &'static str,
    ) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let status = ProxyStatus {
            stream: id,
            node,
            mode,
            connected_since: now(),
            connected_ms: crate::clock::unix_ms(),
            types: BTreeMap::new(),
            raw_node: Some(raw_node),
        };
        self.left_lock().remove(&status.node.id);
        self.lock().insert(id, status);
        id
    }

    pub fn disconnect(&self, id: u64) {
        let Some(gone) = self.lock().remove(&id) else { return };
        let mut left = self.left_lock();
        if left.len() >= MAX_LEFT && !left.contains_key(&gone.node.id) {
            if let Some(oldest) = left.iter().min_by_key(|(_, (_, at))| *at).map(|(n, _)| n.clone()) {
                left.remove(&oldest);
            }
        }
        left.insert(gone.node.id, (gone.node.cluster, crate::clock::unix_ms()));
    }

    /// Nodes whose last stream ended within `max_age`: node id to (cluster,
    /// Unix ms of the end). A node connected again is not among them.
    pub fn left(&self, max_age: std::time::Duration) -> BTreeMap<String, (String, u64)> {
        let now = crate::clock::unix_ms();
        let mut left = self.left_lock();
        left.retain(|_, (_, at)| now.saturating_sub(*at) < max_age.as_millis() as u64);
        left.iter().map(|(n, v)| (n.clone(), v.clone())).collect()
    }

    pub fn update(&self, id: u64, kind: &str, f: impl FnOnce(&mut TypeStatus)) {
        if let Some(p) = self.lock().get_mut(&id) {
            f(p.types.entry(kind.to_string()).or_default());
        }
    }

    pub fn list(&self) -> Vec<ProxyStatus> {
        let mut v: Vec<_> = self.lock().values().cloned().collect();
        v.sort_by(|a, b| a.node.id.cmp(&b.node.id).then(a.stream.cmp(&b.stream)));
        v
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, ProxyStatus>> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn left_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, u64)>> {
        self.left.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn node(id: &str) -> NodeInfo {
        NodeInfo { id: id.into(), cluster: "web".into(), ..Default::default() }
    }

    #[test]
    fn a_node_whose_stream_ends_is_remembered_until_it_connects_again() {
        let fleet = Fleet::default();
        let id = fleet.connect(node("a"), Default::default(), "sotw");
        assert!(fleet.left(Duration::from_secs(60)).is_empty());
        fleet.disconnect(id);
        let left = fleet.left(Duration::from_secs(60));
        assert_eq!(left.get("a").map(|(c, _)| c.as_str()), Some("web"), "{left:?}");
        assert!(fleet.list().is_empty());
        fleet.connect(node("a"), Default::default(), "sotw");
        assert!(fleet.left(Duration::from_secs(60)).is_empty(), "connected again");
        fleet.disconnect(id);
        assert!(fleet.left(Duration::from_secs(60)).is_empty(), "an unknown stream leaves nothing");
    }
}
