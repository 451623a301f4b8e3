//! What state-of-the-world and delta streams share: the task that serves one
//! stream (requests from the proxy, new revisions from the controller), the
//! proxy at the other end as the fleet records it, and the resources and
//! versions a node is sent.

use crate::clock::now;
use crate::discovery::fleet::Nack;
use crate::discovery::node::NodeInfo;
use crate::resources::kind::Kind;
use crate::resources::resource::{content_hash, Resource};
use crate::serve::xds::limits::StreamCharge;
use crate::state::config::ConfigState;
use crate::state::controller::Controller;
use legate_api::pb::envoy::config::core::v3::Node;
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

/// The order in which a change is pushed on an aggregated stream.
pub const PUSH_ORDER: [Kind; 6] =
    [Kind::Runtime, Kind::Secret, Kind::Cluster, Kind::ClusterLoadAssignment, Kind::Listener, Kind::RouteConfiguration];

/// Changes that arrive within this window are pushed together.
const DEBOUNCE: Duration = Duration::from_millis(20);

/// Resources of `kind` for `node`, restricted to `names` when given.
pub fn select<'a>(
    state: &'a ConfigState,
    kind: Kind,
    node: &NodeInfo,
    names: Option<&BTreeSet<String>>,
) -> Vec<&'a Arc<Resource>> {
    state.for_node(kind, node).filter(|r| names.is_none_or(|n| n.contains(&r.name))).collect()
}

/// The version of a set of resources: a hash of their names and versions.
pub fn set_version(resources: &[&Arc<Resource>]) -> String {
    let mut text = String::new();
    for r in resources {
        text.push_str(&r.name);
        text.push('=');
        text.push_str(&r.version);
        text.push(';');
    }
    content_hash(text.as_bytes())
}

/// The proxy at the other end of a stream: who it is (from its first
/// request), its entry in the fleet, and the channel its responses go out on.
pub struct Peer<R> {
    ctrl: Arc<Controller>,
    tx: mpsc::Sender<Result<R, Status>>,
    /// The node, once its first request named it.
    pub node: Option<NodeInfo>,
    fleet_id: Option<u64>,
    nonce: u64,
    /// What the stream holds of the server's bounds (`limits`).
    pub charge: StreamCharge,
}

impl<R> Peer<R> {
    pub fn new(ctrl: Arc<Controller>, tx: mpsc::Sender<Result<R, Status>>, charge: StreamCharge) -> Self {
        Self { ctrl, tx, node: None, fleet_id: None, nonce: 0, charge }
    }

    /// Takes the node from the stream's first request and joins the fleet
    /// (as a `mode` stream); later requests need not repeat it.
    pub fn identify(&mut self, node: Option<&Node>, mode: &'static str) -> Result<(), Status> {
        if self.node.is_none() {
            let node = node.ok_or_else(|| Status::invalid_argument("the first request must carry node"))?;
            let info = NodeInfo::from_node(node);
            self.fleet_id = Some(self.ctrl.fleet.connect(info.clone(), node.clone(), mode));
            self.node = Some(info);
        }
        Ok(())
    }

    /// The nonce of the next response on this stream.
    pub fn next_nonce(&mut self) -> String {
        self.nonce += 1;
        self.nonce.to_string()
    }

    /// Records that the proxy accepted `version` of `kind`.
    pub fn ack(&self, kind: Kind, version: String) {
        self.ctrl.fleet.update(self.fleet_id.unwrap_or(0), kind.name(), |t| {
            t.acked_version = version;
            t.acked_revision = t.sent_revision;
            t.acked_at_ms = crate::clock::unix_ms();
            t.awaiting = false;
        });
    }

    /// Records (and logs) that the proxy refused `version` of `kind`.
    pub fn nack(&self, kind: Kind, version: String, message: &str) {
        let nack = Nack { version, error: message.to_string(), at: now() };
        tracing::warn!(node = ?self.node.as_ref().map(|n| &n.id), kind = kind.name(), "NACK: {message}");
        self.ctrl.fleet.update(self.fleet_id.unwrap_or(0), kind.name(), |t| {
            t.last_nack = Some(nack);
            t.awaiting = false;
        });
    }

    /// Records what the proxy was last sent of `kind`.
    pub fn sent(&self, kind: Kind, version: String, resources: usize, names: Vec<String>) {
        self.ctrl.fleet.update(self.fleet_id.unwrap_or(0), kind.name(), |t| {
            t.sent_version = version;
            t.resources = resources;
            t.names = names;
            t.awaiting = true;
        });
    }

    /// Records that `kind`'s config for the proxy is what `revision` gives
    /// (just sent, or unchanged); it holds that revision already when
    /// nothing it was sent waits for an answer and what it last accepted is
    /// what it was sent (after a NACK it still holds the earlier revision).
    pub fn at_revision(&self, kind: Kind, revision: u64) {
        self.ctrl.fleet.update(self.fleet_id.unwrap_or(0), kind.name(), |t| {
            t.sent_revision = revision;
            if !t.awaiting && t.acked_version == t.sent_version {
                t.acked_revision = revision;
            }
        });
    }

    /// Sends a response; an error when the stream is gone.
    pub async fn send(&self, resp: R) -> Result<(), Status> {
        self.tx.send(Ok(resp)).await.map_err(|_| Status::cancelled("stream closed"))
    }
}

/// One kind of stream (state of the world or delta) as the serving task
/// drives it.
pub trait Session: Send {
    type Request: Send;
    type Response: Send;

    fn peer(&self) -> &Peer<Self::Response>;

    /// A request from the proxy: a subscription, an ACK or a NACK.
    fn on_request(
        &mut self,
        req: Self::Request,
        state: &ConfigState,
    ) -> impl Future<Output = Result<(), Status>> + Send;

    /// A new published revision (after `last`); false when the stream should end.
    fn on_update(&mut self, last: &ConfigState, state: &ConfigState) -> impl Future<Output = bool> + Send;
}

/// Serves one stream until the proxy leaves or it fails; the proxy then
/// leaves the fleet.
pub async fn serve_stream<S: Session>(ctrl: Arc<Controller>, mut requests: Streaming<S::Request>, mut s: S) {
    let mut updates = ctrl.subscribe();
    let mut last = updates.borrow().clone();
    loop {
        tokio::select! {
            msg = requests.message() => {
                let req = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    Err(status) => {
                        // A request that does not decode (or is over the size
                        // bound) ends the stream with its status; never waits
                        // on a client that does not read.
                        let _ = s.peer().tx.try_send(Err(status));
                        break;
                    }
                };
                let state = updates.borrow().clone();
                if let Err(e) = s.on_request(req, &state).await {
                    let _ = s.peer().tx.send(Err(e)).await;
                    break;
                }
            }
            changed = updates.changed() => {
                if changed.is_err() { break; }
                tokio::time::sleep(DEBOUNCE).await;
                let state = updates.borrow_and_update().clone();
                if !s.on_update(&last, &state).await {
                    break;
                }
                last = state;
            }
        }
    }
    if let Some(id) = s.peer().fleet_id {
        ctrl.fleet.disconnect(id);
    }
}
