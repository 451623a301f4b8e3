//! The Health Discovery Service client (bootstrap `hds_config`), as Envoy's
//! `HdsDelegate`: a `HealthCheckRequest` with the node and the protocols it
//! checks opens the stream; each `HealthCheckSpecifier` replaces the set of
//! clusters to check (their endpoints and health check); every `interval`
//! of the specifier an `EndpointHealthResponse` says each endpoint's health.
//!
//! Each specified cluster is compiled as a static cluster of its endpoints
//! and checked by the same `upstream::health` checker clusters use, on its
//! own task, with its own stats store (these clusters carry no traffic and
//! are not in the cluster map). An endpoint is reported once its first
//! check has answered.

use crate::server::instance::Shared;
use crate::server::xds::{channel, node, Target};
use crate::stats::Store;
use crate::tls::sds::SecretManager;
use crate::upstream::cluster::Cluster;
use crate::upstream::health::HealthChecker;
use legate_api::pb::envoy::config::cluster::v3::Cluster as PbCluster;
use legate_api::pb::envoy::config::core::v3::{address, socket_address, Address, HealthStatus, SocketAddress};
use legate_api::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints};
use legate_api::pb::envoy::service::health::v3::capability::Protocol;
use legate_api::pb::envoy::service::health::v3::health_check_request_or_endpoint_health_response::RequestType;
use legate_api::pb::envoy::service::health::v3::health_discovery_service_client::HealthDiscoveryServiceClient;
use legate_api::pb::envoy::service::health::v3::{
    Capability, ClusterEndpointsHealth, ClusterHealthCheck, EndpointHealth, EndpointHealthResponse, HealthCheckRequest,
    HealthCheckRequestOrEndpointHealthResponse, HealthCheckSpecifier, LocalityEndpointsHealth,
};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// The shortest reporting interval honoured.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// Runs the client forever: stream, and open it again after a backoff.
pub async fn run(shared: Arc<Shared>, cluster: String) {
    super::keep_open(shared, cluster, "health discovery", "hds_delegate.errors", None, session).await;
}

/// One cluster to check, and the task checking it.
struct Checked {
    cluster: Arc<Cluster>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Checked {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn session(shared: &Shared, target: &Target) -> Result<(), String> {
    let mut client = HealthDiscoveryServiceClient::new(channel(target).await?);
    let (tx, rx) = mpsc::unbounded_channel();
    let send = |r: RequestType| {
        tx.send(HealthCheckRequestOrEndpointHealthResponse { request_type: Some(r) })
            .map_err(|_| "stream closed".to_string())
    };
    let protocols = [Protocol::Http, Protocol::Tcp].map(|p| p as i32).to_vec();
    let capability = Capability { health_check_protocols: protocols };
    send(RequestType::HealthCheckRequest(HealthCheckRequest {
        node: Some(node(shared)),
        capability: Some(capability),
    }))?;
    let mut specifiers = client
        .stream_health_check(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await
        .map_err(|e| format!("stream: {e}"))?
        .into_inner();
    let mut checked: Vec<Checked> = Vec::new();
    let timer = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(timer);
    let mut interval = None;
    loop {
        tokio::select! {
            r = specifiers.message() => {
                let spec = r.map_err(|e| e.to_string())?.ok_or("closed by the server")?;
                shared.store.counter("hds_delegate.requests").inc();
                checked = compile(shared, &spec);
                let every = spec.interval.as_ref().map_or(Duration::from_secs(1), legate_api::duration::from_pb);
                interval = Some(every.max(MIN_INTERVAL));
            }
            _ = &mut timer, if interval.is_some() => {
                send(RequestType::EndpointHealthResponse(report(&checked)))?;
                shared.store.counter("hds_delegate.responses").inc();
            }
        }
        if let Some(every) = interval {
            if timer.is_elapsed() || timer.deadline() > tokio::time::Instant::now() + every {
                timer.as_mut().reset(tokio::time::Instant::now() + every);
            }
        }
    }
}

/// The specifier's clusters, each compiled and its checks started; one that
/// does not compile is logged and left out (Envoy rejects it the same way).
fn compile(shared: &Shared, spec: &HealthCheckSpecifier) -> Vec<Checked> {
    let mut out = Vec::new();
    for c in &spec.cluster_health_checks {
        match checker(c, &shared.ctx.secrets) {
            Ok((cluster, checker)) => {
                let hosts = cluster.clone();
                let task = tokio::spawn(async move {
                    loop {
                        // Checked as a cluster with traffic: at `interval`.
                        checker.round(&hosts.hosts, true).await;
                        tokio::time::sleep(checker.next_wait(&hosts.hosts)).await;
                    }
                });
                out.push(Checked { cluster, task });
            }
            Err(e) => tracing::warn!("health discovery: cluster '{}' is not checked: {e}", c.cluster_name),
        }
    }
    out
}

/// A specified cluster compiled, and its checker, with their own stats (a
/// health-checked cluster's hosts start pending: unknown until checked).
fn checker(c: &ClusterHealthCheck, secrets: &Arc<SecretManager>) -> Result<(Arc<Cluster>, HealthChecker), String> {
    let store = Arc::new(Store::default());
    let cluster = Cluster::compile(&as_cluster(c), &store, 1, secrets)?;
    let checker = HealthChecker::compile(&c.health_checks, &store, &c.cluster_name)?
        .ok_or_else(|| "no health check".to_string())?;
    Ok((cluster, checker))
}

/// A static cluster of the specified endpoints with the specified checks.
fn as_cluster(c: &ClusterHealthCheck) -> PbCluster {
    use legate_api::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
    let endpoints = c
        .locality_endpoints
        .iter()
        .map(|l| LocalityLbEndpoints {
            locality: l.locality.clone(),
            lb_endpoints: l
                .endpoints
                .iter()
                .map(|e| LbEndpoint {
                    host_identifier: Some(
                        legate_api::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier::Endpoint(e.clone()),
                    ),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .collect();
    PbCluster {
        name: c.cluster_name.clone(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        connect_timeout: Some(legate_api::pb::google::protobuf::Duration { seconds: 1, nanos: 0 }),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: c.cluster_name.clone(),
            endpoints,
            ..Default::default()
        }),
        health_checks: c.health_checks.clone(),
        ..Default::default()
    }
}

/// Each checked endpoint's health, per cluster and locality; endpoints not
/// checked yet are left out.
fn report(checked: &[Checked]) -> EndpointHealthResponse {
    let cluster_endpoints_health = checked
        .iter()
        .map(|c| {
            let set = c.cluster.hosts.load();
            let endpoints_health = set
                .all
                .iter()
                .filter(|h| !h.hc_pending.load(Relaxed))
                .map(|h| EndpointHealth {
                    endpoint: Some(Endpoint { address: Some(address_of(h.addr)), ..Default::default() }),
                    health_status: if h.hc_healthy.load(Relaxed) {
                        HealthStatus::Healthy as i32
                    } else {
                        HealthStatus::Unhealthy as i32
                    },
                    ..Default::default()
                })
                .collect();
            ClusterEndpointsHealth {
                cluster_name: c.cluster.name.clone(),
                locality_endpoints_health: vec![LocalityEndpointsHealth { locality: None, endpoints_health }],
            }
        })
        .collect();
    EndpointHealthResponse { cluster_endpoints_health, ..Default::default() }
}

fn address_of(addr: std::net::SocketAddr) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: addr.ip().to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(addr.port()))),
            ..Default::default()
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use legate_api::pb::envoy::service::health::v3::LocalityEndpoints;

    fn endpoint(port: u16) -> Endpoint {
        Endpoint { address: Some(address_of(([127, 0, 0, 1], port).into())), ..Default::default() }
    }

    #[tokio::test]
    async fn a_specified_cluster_is_checked_and_reported_per_endpoint() {
        let up = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let open = up.local_addr().expect("addr").port();
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let text = legate_api::load::parse_text(
            "{timeout: 1s, interval: 1s, unhealthy_threshold: 1, healthy_threshold: 1, tcp_health_check: {}}",
        )
        .expect("yaml");
        let (hc, _) = legate_api::load::decode_typed(text).expect("health check");
        let spec = ClusterHealthCheck {
            cluster_name: "web".into(),
            health_checks: vec![hc],
            locality_endpoints: vec![LocalityEndpoints {
                locality: None,
                endpoints: vec![endpoint(open), endpoint(closed)],
            }],
            ..Default::default()
        };
        let (cluster, checker) = checker(&spec, &Arc::new(SecretManager::default())).expect("compiles");
        let task = tokio::spawn(async {});
        let checked = vec![Checked { cluster: cluster.clone(), task }];
        assert!(
            report(&checked).cluster_endpoints_health[0].locality_endpoints_health[0].endpoints_health.is_empty(),
            "nothing checked yet"
        );
        checker.round(&cluster.hosts, true).await;
        let r = report(&checked);
        assert_eq!(r.cluster_endpoints_health[0].cluster_name, "web");
        let health: Vec<(Option<Address>, i32)> = r.cluster_endpoints_health[0].locality_endpoints_health[0]
            .endpoints_health
            .iter()
            .map(|e| (e.endpoint.as_ref().and_then(|e| e.address.clone()), e.health_status))
            .collect();
        assert_eq!(
            health,
            [
                (endpoint(open).address, HealthStatus::Healthy as i32),
                (endpoint(closed).address, HealthStatus::Unhealthy as i32)
            ]
        );
        drop(up);
    }
}
