//! State-of-the-world streams: every response carries a type's whole set
//! (wildcard types) or what changed of the subscribed names (named types),
//! versioned by a hash of the set.

use crate::resources::kind::Kind;
use crate::resources::resource::Resource;
use crate::serve::xds::limits::{footprint, StreamCharge};
use crate::serve::xds::stream::{select, set_version, Peer, Session, PUSH_ORDER};
use crate::state::config::ConfigState;
use crate::state::controller::Controller;
use legate_api::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use tokio::sync::mpsc;
use tonic::Status;

/// What one type's subscription holds on a stream.
#[derive(Default)]
struct SotwType {
    /// `None`: wildcard.
    names: Option<BTreeSet<String>>,
    sent_version: Option<String>,
    nonce: String,
    /// Named types: the version of each resource last sent, so a change sends
    /// only what changed (SotW allows a subset for RDS/EDS; absent ones stay).
    sent: HashMap<String, String>,
}

pub struct SotwSession {
    peer: Peer<DiscoveryResponse>,
    types: HashMap<Kind, SotwType>,
}

impl SotwSession {
    pub fn new(
        ctrl: Arc<Controller>,
        tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
        charge: StreamCharge,
    ) -> Self {
        Self { peer: Peer::new(ctrl, tx, charge), types: HashMap::new() }
    }

    /// Charges the stream's subscriptions, with `names` for `kind`, against
    /// the bounds (`limits`).
    fn charge(&mut self, kind: Kind, names: Option<&BTreeSet<String>>) -> Result<(), Status> {
        let (mut count, mut bytes) = names.map_or((0, 0), |n| footprint(n.iter()));
        for (k, t) in &self.types {
            if let (true, Some(n)) = (*k != kind, &t.names) {
                let (c, b) = footprint(n.iter());
                (count, bytes) = (count + c, bytes + b);
            }
        }
        self.peer.charge.set_names(count, bytes)
    }

    /// Pushes `kind` if what the proxy should hold changed. With `keep_from`,
    /// resources of that earlier state that the new one drops are still
    /// included: removals wait until what replaces them has been sent.
    async fn push(
        &mut self,
        kind: Kind,
        state: &ConfigState,
        force: bool,
        keep_from: Option<&ConfigState>,
    ) -> Result<(), Status> {
        let Some(node) = &self.peer.node else { return Ok(()) };
        let Some(ts) = self.types.get_mut(&kind) else { return Ok(()) };
        // During a staged rollout a proxy outside the canary keeps the previous revision.
        let state = state.view(node);
        let keep_from = keep_from.map(|prev| prev.view(node));
        let mut resources = select(state, kind, node, ts.names.as_ref());
        if let Some(prev) = keep_from {
            let present: BTreeSet<String> = resources.iter().map(|r| r.name.clone()).collect();
            resources
                .extend(select(prev, kind, node, ts.names.as_ref()).into_iter().filter(|r| !present.contains(&r.name)));
            resources.sort_by(|a, b| a.name.cmp(&b.name));
        }
        let version = set_version(&resources);
        if !force && ts.sent_version.as_deref() == Some(version.as_str()) {
            self.peer.at_revision(kind, state.revision);
            return Ok(());
        }
        let count = resources.len();
        let names: Vec<String> = resources.iter().map(|r| r.name.clone()).collect();
        // Wildcard types carry the full set (absence means deletion); named
        // types carry only what changed, unless the subscription changed.
        let to_send: Vec<&Arc<Resource>> = if kind.is_wildcard() || force {
            resources
        } else {
            resources.into_iter().filter(|r| ts.sent.get(&r.name) != Some(&r.version)).collect()
        };
        if !kind.is_wildcard() {
            if force {
                ts.sent.clear();
            }
            for r in &to_send {
                ts.sent.insert(r.name.clone(), r.version.clone());
            }
        }
        if to_send.is_empty() && !force && !kind.is_wildcard() {
            ts.sent_version = Some(version);
            self.peer.at_revision(kind, state.revision);
            return Ok(());
        }
        let nonce = self.peer.next_nonce();
        let resp = DiscoveryResponse {
            version_info: version.clone(),
            resources: to_send.iter().map(|r| r.any.clone()).collect(),
            type_url: kind.type_url().to_string(),
            nonce: nonce.clone(),
            ..Default::default()
        };
        ts.sent_version = Some(version.clone());
        ts.nonce = nonce;
        self.peer.sent(kind, version, count, names);
        self.peer.at_revision(kind, state.revision);
        self.peer.send(resp).await
    }
}

impl Session for SotwSession {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;

    fn peer(&self) -> &Peer<DiscoveryResponse> {
        &self.peer
    }

    async fn on_request(&mut self, req: DiscoveryRequest, state: &ConfigState) -> Result<(), Status> {
        self.peer.identify(req.node.as_ref(), "sotw")?;
        let Some(kind) = Kind::from_type_url(&req.type_url) else {
            tracing::debug!("ignoring request for unsupported type {}", req.type_url);
            return Ok(());
        };
        let names: Option<BTreeSet<String>> =
            if kind.is_wildcard() && (req.resource_names.is_empty() || req.resource_names.iter().any(|n| n == "*")) {
                None
            } else {
                Some(req.resource_names.iter().cloned().collect())
            };
        self.charge(kind, names.as_ref())?;
        let ts = self.types.entry(kind).or_default();
        if !req.response_nonce.is_empty() {
            if req.response_nonce != ts.nonce {
                // A stale nonce: the proxy answers a response it has since been superseded by.
                return Ok(());
            }
            match &req.error_detail {
                Some(err) => self.peer.nack(kind, ts.sent_version.clone().unwrap_or_default(), &err.message),
                None => self.peer.ack(kind, req.version_info.clone()),
            }
        }
        let first = ts.nonce.is_empty();
        let changed = ts.names != names;
        ts.names = names;
        if first || changed {
            self.push(kind, state, true, None).await?;
        }
        Ok(())
    }

    /// Make before break: first everything new or changed (clusters keep
    /// those being removed), then the removals.
    async fn on_update(&mut self, last: &ConfigState, state: &ConfigState) -> bool {
        let mut failed = false;
        for kind in PUSH_ORDER {
            let keep = (kind == Kind::Cluster).then_some(last);
            if self.types.contains_key(&kind) && self.push(kind, state, false, keep).await.is_err() {
                failed = true;
                break;
            }
        }
        let clusters = !failed && self.types.contains_key(&Kind::Cluster);
        !(clusters && self.push(Kind::Cluster, state, false, None).await.is_err())
    }
}
