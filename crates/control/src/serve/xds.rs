//! The xDS server: ADS and the per-type services, state of the world and delta.
//!
//! Each stream is one task. It holds what it sent per type (version, nonce,
//! per-resource versions for delta) and wakes on two things: a request from the
//! proxy (subscription, ACK, NACK) and a new published revision. Pushes go out
//! in make-before-break order: secrets, clusters, endpoints, listeners, routes.

use crate::clock::now;
use crate::discovery::fleet::Nack;
use crate::discovery::node::NodeInfo;
use crate::resources::kind::Kind;
use crate::resources::resource::{content_hash, Resource};
use crate::state::config::ConfigState;
use crate::state::controller::Controller;
use legate_api::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_server::AggregatedDiscoveryService, DeltaDiscoveryRequest, DeltaDiscoveryResponse,
    DiscoveryRequest, DiscoveryResponse, Resource as DeltaResource,
};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// The order in which a change is pushed on an aggregated stream.
pub const PUSH_ORDER: [Kind; 5] =
    [Kind::Secret, Kind::Cluster, Kind::ClusterLoadAssignment, Kind::Listener, Kind::RouteConfiguration];

/// Changes that arrive within this window are pushed together.
const DEBOUNCE: Duration = Duration::from_millis(20);

#[derive(Clone)]
pub struct XdsServer {
    ctrl: Arc<Controller>,
}

impl XdsServer {
    pub fn new(ctrl: Arc<Controller>) -> Self {
        Self { ctrl }
    }
}

type SotwStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
type DeltaStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

/// Resources of `kind` for `node`, restricted to `names` when given.
fn select<'a>(
    state: &'a ConfigState,
    kind: Kind,
    node: &'a NodeInfo,
    names: Option<&'a BTreeSet<String>>,
) -> Vec<&'a Arc<Resource>> {
    state.for_node(kind, node).filter(|r| names.is_none_or(|n| n.contains(&r.name))).collect()
}

fn set_version(resources: &[&Arc<Resource>]) -> String {
    let mut text = String::new();
    for r in resources {
        text.push_str(&r.name);
        text.push('=');
        text.push_str(&r.version);
        text.push(';');
    }
    content_hash(text.as_bytes())
}

// ---------------------------------------------------------------- SotW

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

struct SotwSession {
    ctrl: Arc<Controller>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    node: Option<NodeInfo>,
    fleet_id: Option<u64>,
    types: HashMap<Kind, SotwType>,
    nonce: u64,
}

impl SotwSession {
    async fn on_request(&mut self, req: DiscoveryRequest, state: &ConfigState) -> Result<(), Status> {
        if self.node.is_none() {
            let node =
                req.node.as_ref().ok_or_else(|| Status::invalid_argument("the first request must carry node"))?;
            let info = NodeInfo::from_node(node);
            self.fleet_id = Some(self.ctrl.fleet.connect(info.clone(), node.clone(), "sotw"));
            self.node = Some(info);
        }
        let Some(kind) = Kind::from_type_url(&req.type_url) else {
            tracing::debug!("ignoring request for unsupported type {}", req.type_url);
            return Ok(());
        };
        let fleet_id = self.fleet_id.unwrap_or(0);
        let ts = self.types.entry(kind).or_default();
        if !req.response_nonce.is_empty() {
            if req.response_nonce != ts.nonce {
                // A stale nonce: the proxy answers a response it has since been superseded by.
                return Ok(());
            }
            match &req.error_detail {
                Some(err) => {
                    let nack = Nack {
                        version: ts.sent_version.clone().unwrap_or_default(),
                        error: err.message.clone(),
                        at: now(),
                    };
                    tracing::warn!(node = ?self.node.as_ref().map(|n| &n.id), kind = kind.name(), "NACK: {}", err.message);
                    self.ctrl.fleet.update(fleet_id, kind.name(), |t| t.last_nack = Some(nack));
                }
                None => {
                    let v = req.version_info.clone();
                    self.ctrl.fleet.update(fleet_id, kind.name(), |t| t.acked_version = v);
                }
            }
        }
        let names: Option<BTreeSet<String>> =
            if kind.is_wildcard() && (req.resource_names.is_empty() || req.resource_names.iter().any(|n| n == "*")) {
                None
            } else {
                Some(req.resource_names.iter().cloned().collect())
            };
        let first = ts.nonce.is_empty();
        let changed = ts.names != names;
        ts.names = names;
        if first || changed {
            self.push(kind, state, true, None).await?;
        }
        Ok(())
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
        let Some(node) = &self.node else { return Ok(()) };
        let Some(ts) = self.types.get_mut(&kind) else { return Ok(()) };
        let mut resources = select(state, kind, node, ts.names.as_ref());
        if let Some(prev) = keep_from {
            let present: BTreeSet<String> = resources.iter().map(|r| r.name.clone()).collect();
            resources
                .extend(select(prev, kind, node, ts.names.as_ref()).into_iter().filter(|r| !present.contains(&r.name)));
            resources.sort_by(|a, b| a.name.cmp(&b.name));
        }
        let version = set_version(&resources);
        if !force && ts.sent_version.as_deref() == Some(version.as_str()) {
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
            return Ok(());
        }
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        let resp = DiscoveryResponse {
            version_info: version.clone(),
            resources: to_send.iter().map(|r| r.any.clone()).collect(),
            type_url: kind.type_url().to_string(),
            nonce: nonce.clone(),
            ..Default::default()
        };
        ts.sent_version = Some(version.clone());
        ts.nonce = nonce;
        self.ctrl.fleet.update(self.fleet_id.unwrap_or(0), kind.name(), |t| {
            t.sent_version = version;
            t.resources = count;
            t.names = names;
        });
        self.tx.send(Ok(resp)).await.map_err(|_| Status::cancelled("stream closed"))
    }
}

async fn run_sotw(
    ctrl: Arc<Controller>,
    mut requests: Streaming<DiscoveryRequest>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
) {
    let mut updates = ctrl.subscribe();
    let mut last = updates.borrow().clone();
    let mut s = SotwSession { ctrl: ctrl.clone(), tx, node: None, fleet_id: None, types: HashMap::new(), nonce: 0 };
    loop {
        tokio::select! {
            msg = requests.message() => {
                let req = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) | Err(_) => break,
                };
                let state = updates.borrow().clone();
                if let Err(e) = s.on_request(req, &state).await {
                    let _ = s.tx.send(Err(e)).await;
                    break;
                }
            }
            changed = updates.changed() => {
                if changed.is_err() { break; }
                tokio::time::sleep(DEBOUNCE).await;
                let state = updates.borrow_and_update().clone();
                // Make before break: first everything new or changed (clusters
                // keep those being removed), then the removals.
                let mut failed = false;
                for kind in PUSH_ORDER {
                    let keep = (kind == Kind::Cluster).then_some(&*last);
                    if s.types.contains_key(&kind) && s.push(kind, &state, false, keep).await.is_err() {
                        failed = true;
                        break;
                    }
                }
                if !failed && s.types.contains_key(&Kind::Cluster) && s.push(Kind::Cluster, &state, false, None).await.is_err() {
                    break;
                }
                last = state;
            }
        }
    }
    if let Some(id) = s.fleet_id {
        ctrl.fleet.disconnect(id);
    }
}

// ---------------------------------------------------------------- delta

#[derive(Default)]
struct DeltaType {
    wildcard: bool,
    names: BTreeSet<String>,
    /// What the proxy holds: name -> version.
    sent: HashMap<String, String>,
    nonce: String,
    responded: bool,
}

struct DeltaSession {
    ctrl: Arc<Controller>,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    node: Option<NodeInfo>,
    fleet_id: Option<u64>,
    types: HashMap<Kind, DeltaType>,
    nonce: u64,
}

impl DeltaSession {
    async fn on_request(&mut self, req: DeltaDiscoveryRequest, state: &ConfigState) -> Result<(), Status> {
        if self.node.is_none() {
            let node =
                req.node.as_ref().ok_or_else(|| Status::invalid_argument("the first request must carry node"))?;
            let info = NodeInfo::from_node(node);
            self.fleet_id = Some(self.ctrl.fleet.connect(info.clone(), node.clone(), "delta"));
            self.node = Some(info);
        }
        let Some(kind) = Kind::from_type_url(&req.type_url) else { return Ok(()) };
        let fleet_id = self.fleet_id.unwrap_or(0);
        let first = !self.types.contains_key(&kind);
        let ts = self.types.entry(kind).or_default();
        if first {
            ts.wildcard = kind.is_wildcard() && req.resource_names_subscribe.is_empty();
            ts.sent.extend(req.initial_resource_versions.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        if !req.response_nonce.is_empty() && req.response_nonce == ts.nonce {
            match &req.error_detail {
                Some(err) => {
                    let nack = Nack { version: ts.nonce.clone(), error: err.message.clone(), at: now() };
                    tracing::warn!(node = ?self.node.as_ref().map(|n| &n.id), kind = kind.name(), "NACK: {}", err.message);
                    self.ctrl.fleet.update(fleet_id, kind.name(), |t| t.last_nack = Some(nack));
                }
                None => {
                    let v = state.revision.to_string();
                    self.ctrl.fleet.update(fleet_id, kind.name(), |t| t.acked_version = v);
                }
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
        self.push(kind, state, false).await
    }

    /// Sends what changed for `kind`; with `defer_removals`, removals wait for
    /// a later call (make before break).
    async fn push(&mut self, kind: Kind, state: &ConfigState, defer_removals: bool) -> Result<(), Status> {
        let Some(node) = &self.node else { return Ok(()) };
        let Some(ts) = self.types.get_mut(&kind) else { return Ok(()) };
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
            return Ok(());
        }
        self.nonce += 1;
        let nonce = self.nonce.to_string();
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
        let (count, version) = (ts.sent.len(), state.revision.to_string());
        let mut names: Vec<String> = ts.sent.keys().cloned().collect();
        names.sort();
        self.ctrl.fleet.update(self.fleet_id.unwrap_or(0), kind.name(), |t| {
            t.sent_version = version;
            t.resources = count;
            t.names = names;
        });
        self.tx.send(Ok(resp)).await.map_err(|_| Status::cancelled("stream closed"))
    }
}

async fn run_delta(
    ctrl: Arc<Controller>,
    mut requests: Streaming<DeltaDiscoveryRequest>,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
) {
    let mut updates = ctrl.subscribe();
    let mut s = DeltaSession { ctrl: ctrl.clone(), tx, node: None, fleet_id: None, types: HashMap::new(), nonce: 0 };
    loop {
        tokio::select! {
            msg = requests.message() => {
                let req = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) | Err(_) => break,
                };
                let state = updates.borrow().clone();
                if let Err(e) = s.on_request(req, &state).await {
                    let _ = s.tx.send(Err(e)).await;
                    break;
                }
            }
            changed = updates.changed() => {
                if changed.is_err() { break; }
                tokio::time::sleep(DEBOUNCE).await;
                let state = updates.borrow_and_update().clone();
                // Make before break: additions and updates in order, then the
                // removals of clusters and their endpoints.
                let mut failed = false;
                for kind in PUSH_ORDER {
                    if s.types.contains_key(&kind) && s.push(kind, &state, true).await.is_err() {
                        failed = true;
                        break;
                    }
                }
                for kind in [Kind::RouteConfiguration, Kind::Listener, Kind::Cluster, Kind::ClusterLoadAssignment, Kind::Secret] {
                    if failed || (s.types.contains_key(&kind) && s.push(kind, &state, false).await.is_err()) {
                        break;
                    }
                }
            }
        }
    }
    if let Some(id) = s.fleet_id {
        ctrl.fleet.disconnect(id);
    }
}

fn start_sotw(ctrl: &Arc<Controller>, req: Request<Streaming<DiscoveryRequest>>) -> Response<SotwStream> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(run_sotw(ctrl.clone(), req.into_inner(), tx));
    Response::new(ReceiverStream::new(rx))
}

fn start_delta(ctrl: &Arc<Controller>, req: Request<Streaming<DeltaDiscoveryRequest>>) -> Response<DeltaStream> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(run_delta(ctrl.clone(), req.into_inner(), tx));
    Response::new(ReceiverStream::new(rx))
}

/// The unary Fetch* calls: everything of one type the node receives, now.
fn fetch(ctrl: &Arc<Controller>, kind: Kind, req: DiscoveryRequest) -> Result<Response<DiscoveryResponse>, Status> {
    let node = req.node.as_ref().map(NodeInfo::from_node).unwrap_or_default();
    let state = ctrl.current();
    let names: Option<BTreeSet<String>> =
        if req.resource_names.is_empty() { None } else { Some(req.resource_names.iter().cloned().collect()) };
    let resources = select(&state, kind, &node, names.as_ref());
    Ok(Response::new(DiscoveryResponse {
        version_info: set_version(&resources),
        resources: resources.iter().map(|r| r.any.clone()).collect(),
        type_url: kind.type_url().to_string(),
        ..Default::default()
    }))
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for XdsServer {
    type StreamAggregatedResourcesStream = SotwStream;
    type DeltaAggregatedResourcesStream = DeltaStream;

    async fn stream_aggregated_resources(
        &self,
        req: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<SotwStream>, Status> {
        Ok(start_sotw(&self.ctrl, req))
    }

    async fn delta_aggregated_resources(
        &self,
        req: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaStream>, Status> {
        Ok(start_delta(&self.ctrl, req))
    }
}

/// The non-aggregated services share the stream code: a stream only ever asks
/// for its own type.
macro_rules! per_type_service {
    ($trait:path, $kind:expr, $sotw_ty:ident, $sotw:ident, $delta_ty:ident, $delta:ident, $fetch:ident) => {
        #[tonic::async_trait]
        impl $trait for XdsServer {
            type $sotw_ty = SotwStream;
            type $delta_ty = DeltaStream;
            async fn $sotw(&self, req: Request<Streaming<DiscoveryRequest>>) -> Result<Response<SotwStream>, Status> {
                Ok(start_sotw(&self.ctrl, req))
            }
            async fn $delta(
                &self,
                req: Request<Streaming<DeltaDiscoveryRequest>>,
            ) -> Result<Response<DeltaStream>, Status> {
                Ok(start_delta(&self.ctrl, req))
            }
            async fn $fetch(&self, req: Request<DiscoveryRequest>) -> Result<Response<DiscoveryResponse>, Status> {
                fetch(&self.ctrl, $kind, req.into_inner())
            }
        }
    };
}

use legate_api::pb::envoy::service;
per_type_service!(
    service::cluster::v3::cluster_discovery_service_server::ClusterDiscoveryService,
    Kind::Cluster,
    StreamClustersStream,
    stream_clusters,
    DeltaClustersStream,
    delta_clusters,
    fetch_clusters
);
per_type_service!(
    service::listener::v3::listener_discovery_service_server::ListenerDiscoveryService,
    Kind::Listener,
    StreamListenersStream,
    stream_listeners,
    DeltaListenersStream,
    delta_listeners,
    fetch_listeners
);
per_type_service!(
    service::route::v3::route_discovery_service_server::RouteDiscoveryService,
    Kind::RouteConfiguration,
    StreamRoutesStream,
    stream_routes,
    DeltaRoutesStream,
    delta_routes,
    fetch_routes
);
per_type_service!(
    service::endpoint::v3::endpoint_discovery_service_server::EndpointDiscoveryService,
    Kind::ClusterLoadAssignment,
    StreamEndpointsStream,
    stream_endpoints,
    DeltaEndpointsStream,
    delta_endpoints,
    fetch_endpoints
);
per_type_service!(
    service::secret::v3::secret_discovery_service_server::SecretDiscoveryService,
    Kind::Secret,
    StreamSecretsStream,
    stream_secrets,
    DeltaSecretsStream,
    delta_secrets,
    fetch_secrets
);

/// Serves every xDS service on `addr` until the future is dropped.
pub async fn serve(
    ctrl: Arc<Controller>,
    listener: tokio::net::TcpListener,
    tls: Option<tonic::transport::ServerTlsConfig>,
) -> Result<(), tonic::transport::Error> {
    use service::cluster::v3::cluster_discovery_service_server::ClusterDiscoveryServiceServer;
    use service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
    use service::endpoint::v3::endpoint_discovery_service_server::EndpointDiscoveryServiceServer;
    use service::listener::v3::listener_discovery_service_server::ListenerDiscoveryServiceServer;
    use service::route::v3::route_discovery_service_server::RouteDiscoveryServiceServer;
    use service::secret::v3::secret_discovery_service_server::SecretDiscoveryServiceServer;
    use service::status::v3::client_status_discovery_service_server::ClientStatusDiscoveryServiceServer;
    let csds = crate::serve::csds::Csds::new(ctrl.clone());
    let server = XdsServer::new(ctrl);
    let mut builder = tonic::transport::Server::builder();
    if let Some(cfg) = tls {
        builder = builder.tls_config(cfg)?;
    }
    builder
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(AggregatedDiscoveryServiceServer::new(server.clone()))
        .add_service(ClusterDiscoveryServiceServer::new(server.clone()))
        .add_service(ListenerDiscoveryServiceServer::new(server.clone()))
        .add_service(RouteDiscoveryServiceServer::new(server.clone()))
        .add_service(EndpointDiscoveryServiceServer::new(server.clone()))
        .add_service(SecretDiscoveryServiceServer::new(server))
        .add_service(ClientStatusDiscoveryServiceServer::new(csds))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await
}
