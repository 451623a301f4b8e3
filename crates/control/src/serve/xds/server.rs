//! The gRPC services: ADS and the per-type discovery services (each a stream
//! of one session kind, plus the unary Fetch calls), with CSDS beside them on
//! one listener, and the metrics and load-reporting services (`serve::metrics`).

use crate::discovery::node::NodeInfo;
use crate::resources::kind::Kind;
use crate::serve::csds::Csds;
use crate::serve::xds::delta::DeltaSession;
use crate::serve::xds::limits::{self, Budget};
use crate::serve::xds::sotw::SotwSession;
use crate::serve::xds::stream::{select, serve_stream, set_version};
use crate::state::controller::Controller;
use legate_api::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_server::AggregatedDiscoveryService, DeltaDiscoveryRequest, DeltaDiscoveryResponse,
    DiscoveryRequest, DiscoveryResponse,
};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

#[derive(Clone)]
pub struct XdsServer {
    ctrl: Arc<Controller>,
    budget: Arc<Budget>,
}

impl XdsServer {
    pub fn new(ctrl: Arc<Controller>) -> Self {
        Self { ctrl, budget: Arc::new(Budget::default()) }
    }
}

type SotwStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
type DeltaStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

fn start_sotw(s: &XdsServer, req: Request<Streaming<DiscoveryRequest>>) -> Result<Response<SotwStream>, Status> {
    let charge = s.budget.open_stream()?;
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(serve_stream(s.ctrl.clone(), req.into_inner(), SotwSession::new(s.ctrl.clone(), tx, charge)));
    Ok(Response::new(ReceiverStream::new(rx)))
}

fn start_delta(s: &XdsServer, req: Request<Streaming<DeltaDiscoveryRequest>>) -> Result<Response<DeltaStream>, Status> {
    let charge = s.budget.open_stream()?;
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(serve_stream(s.ctrl.clone(), req.into_inner(), DeltaSession::new(s.ctrl.clone(), tx, charge)));
    Ok(Response::new(ReceiverStream::new(rx)))
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
        start_sotw(self, req)
    }

    async fn delta_aggregated_resources(
        &self,
        req: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaStream>, Status> {
        start_delta(self, req)
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
                start_sotw(self, req)
            }
            async fn $delta(
                &self,
                req: Request<Streaming<DeltaDiscoveryRequest>>,
            ) -> Result<Response<DeltaStream>, Status> {
                start_delta(self, req)
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
per_type_service!(
    service::runtime::v3::runtime_discovery_service_server::RuntimeDiscoveryService,
    Kind::Runtime,
    StreamRuntimeStream,
    stream_runtime,
    DeltaRuntimeStream,
    delta_runtime,
    fetch_runtime
);

/// A service with the request size bound (`limits::MAX_MESSAGE_BYTES`).
macro_rules! bounded {
    ($svc:expr) => {
        $svc.max_decoding_message_size(limits::MAX_MESSAGE_BYTES)
    };
}

/// Serves every xDS service on `listener` until the future is dropped, at
/// most `per_address` connections from one client address (0: no bound).
pub async fn serve(
    ctrl: Arc<Controller>,
    listener: tokio::net::TcpListener,
    tls: Option<tonic::transport::ServerTlsConfig>,
    per_address: usize,
) -> Result<(), tonic::transport::Error> {
    use crate::serve::metrics::{lrs::LoadServer, stream::MetricsServer};
    use service::cluster::v3::cluster_discovery_service_server::ClusterDiscoveryServiceServer;
    use service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
    use service::endpoint::v3::endpoint_discovery_service_server::EndpointDiscoveryServiceServer;
    use service::health::v3::health_discovery_service_server::HealthDiscoveryServiceServer;
    use service::listener::v3::listener_discovery_service_server::ListenerDiscoveryServiceServer;
    use service::load_stats::v3::load_reporting_service_server::LoadReportingServiceServer;
    use service::metrics::v3::metrics_service_server::MetricsServiceServer;
    use service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
    use service::route::v3::route_discovery_service_server::RouteDiscoveryServiceServer;
    use service::runtime::v3::runtime_discovery_service_server::RuntimeDiscoveryServiceServer;
    use service::secret::v3::secret_discovery_service_server::SecretDiscoveryServiceServer;
    use service::status::v3::client_status_discovery_service_server::ClientStatusDiscoveryServiceServer;
    let metrics = MetricsServer::new(ctrl.monitor.clone());
    let load = LoadServer::new(ctrl.monitor.clone());
    let csds = Csds::new(ctrl.clone());
    let hds = crate::serve::hds::HdsServer::new(ctrl.clone());
    let rls = crate::ratelimit::service::RlsServer::new(ctrl.clone());
    let server = XdsServer::new(ctrl);
    let mut builder = tonic::transport::Server::builder();
    if let Some(cfg) = tls {
        builder = builder.tls_config(cfg)?;
    }
    // Bounds on what one client can make the server hold (`limits`).
    builder
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .max_concurrent_streams(limits::MAX_STREAMS_PER_CONNECTION)
        .http2_max_header_list_size(limits::MAX_HEADER_LIST_BYTES)
        .http2_max_pending_accept_reset_streams(Some(limits::MAX_PENDING_RESETS))
        .add_service(bounded!(AggregatedDiscoveryServiceServer::new(server.clone())))
        .add_service(bounded!(ClusterDiscoveryServiceServer::new(server.clone())))
        .add_service(bounded!(ListenerDiscoveryServiceServer::new(server.clone())))
        .add_service(bounded!(RouteDiscoveryServiceServer::new(server.clone())))
        .add_service(bounded!(EndpointDiscoveryServiceServer::new(server.clone())))
        .add_service(bounded!(SecretDiscoveryServiceServer::new(server.clone())))
        .add_service(bounded!(RuntimeDiscoveryServiceServer::new(server)))
        .add_service(bounded!(ClientStatusDiscoveryServiceServer::new(csds)))
        .add_service(bounded!(MetricsServiceServer::new(metrics)))
        .add_service(bounded!(LoadReportingServiceServer::new(load)))
        .add_service(bounded!(HealthDiscoveryServiceServer::new(hds)))
        .add_service(bounded!(RateLimitServiceServer::new(rls)))
        .serve_with_incoming(crate::serve::xds::incoming::incoming(listener, per_address))
        .await
}
