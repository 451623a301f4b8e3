//! Without ADS: one gRPC stream per resource type on the per-type services
//! (CDS, LDS, RDS, EDS, SDS, RTDS), as Envoy opens them for `api_config_source`
//! config sources, behind the shape of one aggregated stream: the session
//! sends every request into one channel and reads every response from one
//! stream. Each type's stream opens with its first request, which names
//! the node; a failed stream ends the session (all reconnect).

use super::{CDS, EDS, LDS, RDS, RTDS, SDS};
use legate_api::pb::envoy::config::core::v3::Node;
use legate_api::pb::envoy::service::cluster::v3::cluster_discovery_service_client::ClusterDiscoveryServiceClient as Cds;
use legate_api::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use legate_api::pb::envoy::service::endpoint::v3::endpoint_discovery_service_client::EndpointDiscoveryServiceClient as Eds;
use legate_api::pb::envoy::service::listener::v3::listener_discovery_service_client::ListenerDiscoveryServiceClient as Lds;
use legate_api::pb::envoy::service::route::v3::route_discovery_service_client::RouteDiscoveryServiceClient as Rds;
use legate_api::pb::envoy::service::runtime::v3::runtime_discovery_service_client::RuntimeDiscoveryServiceClient as Rtds;
use legate_api::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient as Sds;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;
use tonic::{Status, Streaming};

/// The merged responses of every type's stream.
pub(super) type Responses<T> = UnboundedReceiverStream<Result<T, Status>>;

type Opening<T> = Pin<Box<dyn Future<Output = Result<Streaming<T>, Status>> + Send>>;

/// A discovery request of either kind.
pub(super) trait XdsRequest: Send + 'static {
    fn type_url(&self) -> &str;
    fn node_mut(&mut self) -> &mut Option<Node>;
}

impl XdsRequest for DiscoveryRequest {
    fn type_url(&self) -> &str {
        &self.type_url
    }
    fn node_mut(&mut self) -> &mut Option<Node> {
        &mut self.node
    }
}

impl XdsRequest for DeltaDiscoveryRequest {
    fn type_url(&self) -> &str {
        &self.type_url
    }
    fn node_mut(&mut self) -> &mut Option<Node> {
        &mut self.node
    }
}

const MAX_MESSAGE: usize = 64 << 20;

/// State-of-the-world streams on the per-type services.
pub(super) fn sotw(
    channel: Channel,
    requests: mpsc::UnboundedReceiver<DiscoveryRequest>,
    node: Node,
) -> Responses<DiscoveryResponse> {
    split(requests, node, move |ty, reqs| {
        let ch = channel.clone();
        let ty = ty.to_string();
        Box::pin(async move {
            let opened = match ty.as_str() {
                CDS => Cds::new(ch).max_decoding_message_size(MAX_MESSAGE).stream_clusters(reqs).await,
                LDS => Lds::new(ch).max_decoding_message_size(MAX_MESSAGE).stream_listeners(reqs).await,
                RDS => Rds::new(ch).max_decoding_message_size(MAX_MESSAGE).stream_routes(reqs).await,
                EDS => Eds::new(ch).max_decoding_message_size(MAX_MESSAGE).stream_endpoints(reqs).await,
                SDS => Sds::new(ch).max_decoding_message_size(MAX_MESSAGE).stream_secrets(reqs).await,
                RTDS => Rtds::new(ch).max_decoding_message_size(MAX_MESSAGE).stream_runtime(reqs).await,
                other => return Err(Status::unimplemented(format!("no per-type service for {other}"))),
            };
            opened.map(tonic::Response::into_inner)
        })
    })
}

/// Delta streams on the per-type services.
pub(super) fn delta(
    channel: Channel,
    requests: mpsc::UnboundedReceiver<DeltaDiscoveryRequest>,
    node: Node,
) -> Responses<DeltaDiscoveryResponse> {
    split(requests, node, move |ty, reqs| {
        let ch = channel.clone();
        let ty = ty.to_string();
        Box::pin(async move {
            let opened = match ty.as_str() {
                CDS => Cds::new(ch).max_decoding_message_size(MAX_MESSAGE).delta_clusters(reqs).await,
                LDS => Lds::new(ch).max_decoding_message_size(MAX_MESSAGE).delta_listeners(reqs).await,
                RDS => Rds::new(ch).max_decoding_message_size(MAX_MESSAGE).delta_routes(reqs).await,
                EDS => Eds::new(ch).max_decoding_message_size(MAX_MESSAGE).delta_endpoints(reqs).await,
                SDS => Sds::new(ch).max_decoding_message_size(MAX_MESSAGE).delta_secrets(reqs).await,
                RTDS => Rtds::new(ch).max_decoding_message_size(MAX_MESSAGE).delta_runtime(reqs).await,
                other => return Err(Status::unimplemented(format!("no per-type service for {other}"))),
            };
            opened.map(tonic::Response::into_inner)
        })
    })
}

/// Sends each request on its type's stream (opened by `open` with the
/// first, which then names the node); every stream's responses, and its
/// end as an error, come out of the one returned stream. The streams close
/// when the session drops its request sender.
fn split<Req: XdsRequest, Resp: Send + 'static>(
    mut requests: mpsc::UnboundedReceiver<Req>,
    node: Node,
    open: impl Fn(&str, UnboundedReceiverStream<Req>) -> Opening<Resp> + Send + 'static,
) -> Responses<Resp> {
    let (out, merged) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut streams: HashMap<String, mpsc::UnboundedSender<Req>> = HashMap::new();
        // Dropped with this task: every type's stream ends with the session.
        let mut readers = tokio::task::JoinSet::new();
        while let Some(mut req) = requests.recv().await {
            let ty = req.type_url().to_string();
            if !streams.contains_key(&ty) {
                let (tx, rx) = mpsc::unbounded_channel();
                let opening = open(&ty, UnboundedReceiverStream::new(rx));
                let out = out.clone();
                readers.spawn(async move {
                    let mut stream = match opening.await {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = out.send(Err(e));
                            return;
                        }
                    };
                    loop {
                        let item = match stream.message().await {
                            Ok(Some(r)) => Ok(r),
                            Ok(None) => Err(Status::unavailable("closed by the server")),
                            Err(e) => Err(e),
                        };
                        let ended = item.is_err();
                        if out.send(item).is_err() || ended {
                            return;
                        }
                    }
                });
                streams.insert(ty.clone(), tx);
                if req.node_mut().is_none() {
                    *req.node_mut() = Some(node.clone());
                }
            }
            if let Some(tx) = streams.get(&ty) {
                let _ = tx.send(req);
            }
        }
    });
    UnboundedReceiverStream::new(merged)
}
