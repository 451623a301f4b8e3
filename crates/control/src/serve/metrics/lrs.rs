//! `envoy.service.load_stats.v3.LoadReportingService/StreamLoadStats`: the
//! control plane asks for every cluster (`send_all_clusters`) every
//! [`INTERVAL`], per endpoint, and keeps each report on the monitor's load
//! board (`GET /v1/load`).

use crate::monitor::load::{ClusterLoad, EndpointLoad, LoadBoard, LocalityLoad, Requests};
use crate::monitor::Monitor;
use legate_api::pb::envoy::config::core::v3::{address::Address as Addr, Address};
use legate_api::pb::envoy::config::endpoint::v3::ClusterStats;
use legate_api::pb::envoy::service::load_stats::v3::{
    load_reporting_service_server::LoadReportingService, LoadStatsRequest, LoadStatsResponse,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// How often proxies report load.
pub const INTERVAL: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct LoadServer {
    monitor: Arc<Monitor>,
}

impl LoadServer {
    pub fn new(monitor: Arc<Monitor>) -> Self {
        Self { monitor }
    }
}

fn address(a: Option<&Address>) -> String {
    match a.and_then(|a| a.address.as_ref()) {
        Some(Addr::SocketAddress(s)) => {
            use legate_api::pb::envoy::config::core::v3::socket_address::PortSpecifier;
            match s.port_specifier {
                Some(PortSpecifier::PortValue(p)) => format!("{}:{p}", s.address),
                Some(PortSpecifier::NamedPort(ref n)) => format!("{}:{n}", s.address),
                None => s.address.clone(),
            }
        }
        Some(Addr::Pipe(p)) => p.path.clone(),
        Some(Addr::EnvoyInternalAddress(i)) => format!("{i:?}"),
        None => String::new(),
    }
}

pub fn cluster_load(node: &str, c: &ClusterStats) -> ClusterLoad {
    let localities = c
        .upstream_locality_stats
        .iter()
        .map(|l| {
            let loc = l.locality.clone().unwrap_or_default();
            LocalityLoad {
                region: loc.region,
                zone: loc.zone,
                sub_zone: loc.sub_zone,
                priority: l.priority,
                last: Requests {
                    success: l.total_successful_requests,
                    error: l.total_error_requests,
                    issued: l.total_issued_requests,
                    in_progress: l.total_requests_in_progress,
                },
                total: Requests::default(),
                endpoints: l
                    .upstream_endpoint_stats
                    .iter()
                    .map(|e| EndpointLoad {
                        address: address(e.address.as_ref()),
                        last: Requests {
                            success: e.total_successful_requests,
                            error: e.total_error_requests,
                            issued: e.total_issued_requests,
                            in_progress: e.total_requests_in_progress,
                        },
                        total: Requests::default(),
                    })
                    .collect(),
            }
        })
        .collect();
    ClusterLoad {
        node: node.to_string(),
        cluster: c.cluster_name.clone(),
        service_name: c.cluster_service_name.clone(),
        reported_ms: crate::clock::unix_ms(),
        interval_ms: c
            .load_report_interval
            .as_ref()
            .map_or(0, |d| (d.seconds * 1000 + i64::from(d.nanos) / 1_000_000).max(0) as u64),
        dropped_last: c.total_dropped_requests,
        dropped_total: 0,
        localities,
    }
}

async fn serve(
    board: Arc<Monitor>,
    mut stream: Streaming<LoadStatsRequest>,
    tx: mpsc::Sender<Result<LoadStatsResponse, Status>>,
) {
    let mut node = String::new();
    let mut asked = false;
    while let Ok(Some(req)) = stream.message().await {
        if let Some(n) = &req.node {
            node.clone_from(&n.id);
        }
        if !asked {
            asked = true;
            let resp = LoadStatsResponse {
                send_all_clusters: true,
                load_reporting_interval: Some(legate_api::pb::google::protobuf::Duration {
                    seconds: INTERVAL.as_secs() as i64,
                    nanos: 0,
                }),
                report_endpoint_granularity: true,
                ..Default::default()
            };
            if tx.send(Ok(resp)).await.is_err() {
                return;
            }
        }
        let loads: &LoadBoard = &board.load;
        for c in &req.cluster_stats {
            loads.record(cluster_load(&node, c));
        }
    }
}

#[tonic::async_trait]
impl LoadReportingService for LoadServer {
    type StreamLoadStatsStream = ReceiverStream<Result<LoadStatsResponse, Status>>;

    async fn stream_load_stats(
        &self,
        req: Request<Streaming<LoadStatsRequest>>,
    ) -> Result<Response<Self::StreamLoadStatsStream>, Status> {
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(serve(self.monitor.clone(), req.into_inner(), tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
