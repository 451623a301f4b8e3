//! Delta streams: each response carries only the resources that changed and
//! the names of those removed, per resource version.

use crate::resources::kind::Kind;
use crate::resources::resource::Resource;
use crate::serve::xds::limits::{footprint, StreamCharge};
use crate::serve::xds::stream::{Peer, Session, PUSH_ORDER};
use crate::state::config::ConfigState;
use crate::state::controller::Controller;
use legate_api::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource as DeltaResource,
};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use tokio::sync::mpsc;
use tonic::Status;

/// The order in which removals follow, once everything new has been sent.
const REMOVE_ORDER: [Kind; 6] =
    [Kind::RouteConfiguration, Kind::Listener, Kind::Cluster, Kind::ClusterLoadAssignment, Kind::Secret, Kind::Runtime];

/// What one type's subscription holds on a stream.
#[derive(Default)]
struct DeltaType {
    wildcard: bool,
    names: BTreeSet<String>,
    /// What the proxy holds: name -> version.
    sent: HashMap<String, String>,
    nonce: String,
    responded: bool,
    /// The count and charged bytes of the `initial_resource_versions` the
    /// proxy gave (`limits`).
    initial: (usize, usize),
}

pub struct DeltaSession {
    peer: Peer<DeltaDiscoveryResponse>,
    types: HashMap<Kind, DeltaType>,
}

impl DeltaSession {
    pub fn new(
        ctrl: Arc<Controller>,
        tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
        charge: StreamCharge,
    ) -> Self {
        Self { peer: Peer::new(ctrl, tx, charge), types: HashMap::new() }
    }

    /// Charges the stream's subscriptions against the bounds (`limits`).
    fn charge(&mut self) -> Result<(), Status> {
        let (mut count, mut bytes) = (0, 0);
        for t in self.types.values() {
            let (c, b) = footprint(t.names.iter());
            count += c + t.initial.0;
            bytes += b + t.initial.1;
        }
        self.peer.charge.set_names(count, bytes)
    }

    /// Sends what changed for `kind`; with `defer_removals`, removals wait for
    /// a later call (make before break).
    async fn push(&mut self, kind: Kind, state: &ConfigState, defer_removals: bool) -> Result<(), Status> {
        let Some(node) = &self.peer.node else { return Ok(()) };
        let Some(ts) = self.types.get_mut(&kind) else { return Ok(()) };
        // During a staged rollout a proxy outside the canary keeps the previous revision.
        let state = state.view(node);
        let in_scope: Vec<&Arc<Resource>> =
            state.for_node(kind, node).filter(|r| ts.wildcard || ts.names.contains(&r.name)).collect();
        let updated: Vec<&Arc<Resource>> =
            in_scope.iter().copied().filter(|r| ts.sent.get(&r.name) != Some(&r.version)).collect();
        let present: BTreeSet<&str> = in_scope.iter().map(|r| r.name.as_str()).collect();
        let removed: Vec<String> = if defer_removals {
            Vec::new()
        } else {
            ts.sent.keys().filter(|n| !present.contains(n.as_str())).cloned().collect()
        };
        if updated.is_empty() && removed.is_empty() && ts.responded {
            self.peer.at_revision(kind, state.revision);
            return Ok(());
        }
        let nonce = self.peer.next_nonce();
        let resp = DeltaDiscoveryResponse {
            system_version_info: state.revision.to_string(),
            resources: updated
                .iter()
                .map(|r| DeltaResource {
                    name: r.name.clone(),
                    version: r.version.clone(),
                    resource: Some(r.any.clone()),
                    ..Default::default()
                })
                .collect(),
            type_url: kind.type_url().to_string(),
            removed_resources: removed.clone(),
            nonce: nonce.clone(),
            ..Default::default()
        };
        for r in &updated {
            ts.sent.insert(r.name.clone(), r.version.clone());
        }
        for n in &removed {
            ts.sent.remove(n);
        }
        ts.nonce = nonce;
        ts.responded = true;
        let mut names: Vec<String> = ts.sent.keys().cloned().collect();
        names.sort();
        self.peer.sent(kind, state.revision.to_string(), ts.sent.len(), names);
        self.peer.at_revision(kind, state.revision);
        self.peer.send(resp).await
    }
}

impl Session for DeltaSession {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;

    fn peer(&self) -> &Peer<DeltaDiscoveryResponse> {
        &self.peer
    }

    async fn on_request(&mut self, req: DeltaDiscoveryRequest, state: &ConfigState) -> Result<(), Status> {
        self.peer.identify(req.node.as_ref(), "delta")?;
        let Some(kind) = Kind::from_type_url(&req.type_url) else { return Ok(()) };
        let first = !self.types.contains_key(&kind);
        let ts = self.types.entry(kind).or_default();
        if first {
            ts.wildcard = kind.is_wildcard() && req.resource_names_subscribe.is_empty();
            ts.initial = footprint(req.initial_resource_versions.keys());
            ts.sent.extend(req.initial_resource_versions.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        if !req.response_nonce.is_empty() && req.response_nonce == ts.nonce {
            match &req.error_detail {
                Some(err) => self.peer.nack(kind, ts.nonce.clone(), &err.message),
                None => self.peer.ack(kind, state.revision.to_string()),
            }
        }
        for n in &req.resource_names_subscribe {
            if n == "*" {
                ts.wildcard = true;
            } else {
                ts.names.insert(n.clone());
            }
        }
        for n in &req.resource_names_unsubscribe {
            if n == "*" {
                ts.wildcard = false;
            } else {
                ts.names.remove(n);
                ts.sent.remove(n);
            }
        }
        self.charge()?;
        self.push(kind, state, false).await
    }

    /// Make before break: additions and updates in order, then the removals
    /// of clusters and their endpoints. A stream that fails ends with its
    /// next request.
    async fn on_update(&mut self, _last: &ConfigState, state: &ConfigState) -> bool {
        let mut failed = false;
        for kind in PUSH_ORDER {
            if self.types.contains_key(&kind) && self.push(kind, state, true).await.is_err() {
                failed = true;
                break;
            }
        }
        for kind in REMOVE_ORDER {
            if failed || (self.types.contains_key(&kind) && self.push(kind, state, false).await.is_err()) {
                break;
            }
        }
        true
    }
}
