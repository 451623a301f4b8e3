//! `envoy.service.health.v3.HealthDiscoveryService/StreamHealthCheck` on the
//! xDS address: a proxy whose bootstrap has `hds_config` offers to check
//! endpoints; it is sent its share (`fault::hds::assign`) of the services
//! with `health_check.hds: true` as a `HealthCheckSpecifier` (again when the
//! share changes), and reports each endpoint's health every [`INTERVAL`].
//! Results land in `Controller::checks`; endpoints reported down leave EDS
//! for the whole fleet (see `fault` and `resources::mesh::service`).

use crate::discovery::node::NodeInfo;
use crate::fault::hds::{assign, Share};
use crate::resources::mesh::service::hds_targets;
use crate::state::controller::Controller;
use legate_api::pb::envoy::config::core::v3::{address::Address as Addr, socket_address::PortSpecifier};
use legate_api::pb::envoy::config::core::v3::{Address, HealthCheck, HealthStatus, SocketAddress};
use legate_api::pb::envoy::config::endpoint::v3::Endpoint;
use legate_api::pb::envoy::service::health::v3::health_check_request_or_endpoint_health_response::RequestType;
use legate_api::pb::envoy::service::health::v3::health_discovery_service_server::HealthDiscoveryService;
use legate_api::pb::envoy::service::health::v3::{
    ClusterHealthCheck, EndpointHealthResponse, HealthCheckRequestOrEndpointHealthResponse, HealthCheckSpecifier,
    LocalityEndpoints,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// How often checkers report.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// How often a stream's share is recomputed.
const RECHECK: Duration = Duration::from_millis(500);

#[derive(Clone)]
pub struct HdsServer {
    ctrl: Arc<Controller>,
    shares: Arc<Shares>,
}

impl HdsServer {
    pub fn new(ctrl: Arc<Controller>) -> Self {
        Self { ctrl, shares: Arc::default() }
    }
}

/// The assignment of every stream, computed once for all streams at most
/// every [`RECHECK`] (and when the checkers change), not once per stream.
#[derive(Default)]
struct Shares {
    last: std::sync::Mutex<Option<Computed>>,
}

/// When the shares were computed, for which streams, and the shares.
type Computed = (std::time::Instant, Vec<u64>, BTreeMap<u64, Share>);

impl Shares {
    /// Stream `id`'s share now.
    fn of(&self, ctrl: &Controller, id: u64) -> Share {
        let checkers = ctrl.checks.checkers();
        let ids: Vec<u64> = checkers.keys().copied().collect();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = last.as_ref().is_some_and(|(at, c, _)| at.elapsed() < RECHECK && *c == ids);
        if !fresh {
            let targets = hds_targets(&ctrl.stored().resources, &ctrl.instances());
            let shares = assign(&targets, &checkers);
            *last = Some((std::time::Instant::now(), ids, shares));
        }
        last.as_ref().and_then(|(_, _, shares)| shares.get(&id).cloned()).unwrap_or_default()
    }
}

/// The (service, `address:port`) pairs of a share.
fn keys(share: &Share) -> BTreeSet<(String, String)> {
    share.iter().flat_map(|(t, eps)| eps.iter().map(|(a, p)| (t.service.clone(), format!("{a}:{p}")))).collect()
}

/// A share as Envoy's `HealthCheckSpecifier`; a service whose health check
/// does not decode is left out (it was validated when applied).
fn specifier(share: &Share) -> HealthCheckSpecifier {
    let cluster_health_checks = share
        .iter()
        .filter_map(|(t, eps)| {
            let hc = match legate_api::convert::decode_typed::<HealthCheck>(t.health_check.clone()) {
                Ok((hc, _)) => hc,
                Err(e) => {
                    tracing::error!(service = t.service, "HDS: the health check does not decode: {e:?}");
                    return None;
                }
            };
            let endpoints = eps.iter().map(|(a, p)| endpoint(a, *p)).collect();
            Some(ClusterHealthCheck {
                cluster_name: t.service.clone(),
                health_checks: vec![hc],
                locality_endpoints: vec![LocalityEndpoints { locality: None, endpoints }],
                ..Default::default()
            })
        })
        .collect();
    let interval = legate_api::pb::google::protobuf::Duration { seconds: INTERVAL.as_secs() as i64, nanos: 0 };
    HealthCheckSpecifier { cluster_health_checks, interval: Some(interval) }
}

fn endpoint(address: &str, port: u16) -> Endpoint {
    let socket = SocketAddress {
        address: address.to_string(),
        port_specifier: Some(PortSpecifier::PortValue(u32::from(port))),
        ..Default::default()
    };
    Endpoint { address: Some(Address { address: Some(Addr::SocketAddress(socket)) }), ..Default::default() }
}

fn address(e: &Endpoint) -> Option<String> {
    match e.address.as_ref()?.address.as_ref()? {
        Addr::SocketAddress(s) => match s.port_specifier {
            Some(PortSpecifier::PortValue(p)) => Some(format!("{}:{p}", s.address)),
            _ => None,
        },
        _ => None,
    }
}

/// Records a report: only endpoints of the stream's share count; UNKNOWN
/// (not checked yet) is no result.
fn record(ctrl: &Controller, id: u64, r: &EndpointHealthResponse, assigned: &BTreeSet<(String, String)>) {
    let now = crate::clock::unix_ms();
    for c in &r.cluster_endpoints_health {
        for l in &c.locality_endpoints_health {
            for e in &l.endpoints_health {
                let Some(addr) = e.endpoint.as_ref().and_then(address) else { continue };
                let status = HealthStatus::try_from(e.health_status).unwrap_or(HealthStatus::Unknown);
                if status == HealthStatus::Unknown || !assigned.contains(&(c.cluster_name.clone(), addr.clone())) {
                    continue;
                }
                ctrl.checks.record(id, &c.cluster_name, &addr, status.as_str_name(), now);
            }
        }
    }
}

async fn serve(
    ctrl: Arc<Controller>,
    shares: Arc<Shares>,
    mut stream: Streaming<HealthCheckRequestOrEndpointHealthResponse>,
    tx: mpsc::Sender<Result<HealthCheckSpecifier, Status>>,
) {
    let node = match stream.message().await {
        Ok(Some(HealthCheckRequestOrEndpointHealthResponse {
            request_type: Some(RequestType::HealthCheckRequest(r)),
        })) => r.node.as_ref().map(NodeInfo::from_node).unwrap_or_default(),
        _ => return,
    };
    let id = ctrl.checks.connect(node.clone());
    tracing::info!(node = node.id, "HDS: a proxy offers to check endpoints");
    let mut sent: Option<Share> = None;
    let mut assigned = BTreeSet::new();
    let mut tick = tokio::time::interval(RECHECK);
    loop {
        tokio::select! {
            msg = stream.message() => match msg {
                Ok(Some(HealthCheckRequestOrEndpointHealthResponse {
                    request_type: Some(RequestType::EndpointHealthResponse(r)),
                })) => record(&ctrl, id, &r, &assigned),
                Ok(Some(_)) => {}
                _ => break,
            },
            _ = tick.tick() => {
                let now = shares.of(&ctrl, id);
                if sent.as_ref() != Some(&now) {
                    assigned = keys(&now);
                    ctrl.checks.retain(id, &assigned);
                    if tx.send(Ok(specifier(&now))).await.is_err() {
                        break;
                    }
                    sent = Some(now);
                }
            }
        }
    }
    ctrl.checks.disconnect(id);
    tracing::info!(node = node.id, "HDS: the stream ended; its checks go to other proxies");
}

#[tonic::async_trait]
impl HealthDiscoveryService for HdsServer {
    type StreamHealthCheckStream = ReceiverStream<Result<HealthCheckSpecifier, Status>>;

    async fn stream_health_check(
        &self,
        req: Request<Streaming<HealthCheckRequestOrEndpointHealthResponse>>,
    ) -> Result<Response<Self::StreamHealthCheckStream>, Status> {
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(serve(self.ctrl.clone(), self.shares.clone(), req.into_inner(), tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn fetch_health_check(
        &self,
        _req: Request<HealthCheckRequestOrEndpointHealthResponse>,
    ) -> Result<Response<HealthCheckSpecifier>, Status> {
        Err(Status::unimplemented("HDS is served on StreamHealthCheck only"))
    }
}
