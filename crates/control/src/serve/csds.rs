//! Client Status Discovery Service: what each connected proxy was sent, and
//! whether it ACKed or NACKed it, for standard tools.

use crate::discovery::fleet::TypeStatus;
use crate::resources::kind::Kind;
use crate::state::controller::Controller;
use legate_api::pb::envoy::admin::v3::ClientResourceStatus;
use legate_api::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use legate_api::pb::envoy::service::status::v3::{
    client_config::GenericXdsConfig, client_status_discovery_service_server::ClientStatusDiscoveryService,
    ClientConfig, ClientStatusRequest, ClientStatusResponse, ConfigStatus,
};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

#[derive(Clone)]
pub struct Csds {
    ctrl: Arc<Controller>,
}

impl Csds {
    pub fn new(ctrl: Arc<Controller>) -> Self {
        Self { ctrl }
    }

    fn status(&self, req: &ClientStatusRequest) -> ClientStatusResponse {
        let state = self.ctrl.current();
        let mut config = Vec::new();
        for p in self.ctrl.fleet.list() {
            let id_ok =
                req.node_matchers.iter().all(|m| match m.node_id.as_ref().and_then(|s| s.match_pattern.as_ref()) {
                    Some(MatchPattern::Exact(e)) => p.node.id == *e,
                    Some(MatchPattern::Prefix(x)) => p.node.id.starts_with(x.as_str()),
                    Some(MatchPattern::Suffix(x)) => p.node.id.ends_with(x.as_str()),
                    Some(MatchPattern::Contains(x)) => p.node.id.contains(x.as_str()),
                    _ => true,
                });
            if !id_ok {
                continue;
            }
            let mut generic = Vec::new();
            for (kind_name, t) in &p.types {
                let Some(kind) = Kind::parse(kind_name) else { continue };
                let (config_status, client_status) = statuses(t);
                for name in &t.names {
                    let resource = state.view(&p.node).resources.get(&(kind, name.clone()));
                    generic.push(GenericXdsConfig {
                        type_url: kind.type_url().to_string(),
                        name: name.clone(),
                        version_info: t.sent_version.clone(),
                        xds_config: if req.exclude_resource_contents { None } else { resource.map(|r| r.any.clone()) },
                        config_status: config_status as i32,
                        client_status: client_status as i32,
                        ..Default::default()
                    });
                }
            }
            config.push(ClientConfig { node: p.raw_node.clone(), generic_xds_configs: generic, ..Default::default() });
        }
        ClientStatusResponse { config }
    }
}

/// Where a type stands on one proxy: NACKed (an error), ACKed at the version
/// sent (synced), or sent and not yet answered (stale, requested).
fn statuses(t: &TypeStatus) -> (ConfigStatus, ClientResourceStatus) {
    if t.last_nack.is_some() && t.acked_version != t.sent_version {
        (ConfigStatus::Error, ClientResourceStatus::Nacked)
    } else if t.acked_version == t.sent_version {
        (ConfigStatus::Synced, ClientResourceStatus::Acked)
    } else {
        (ConfigStatus::Stale, ClientResourceStatus::Requested)
    }
}

#[tonic::async_trait]
impl ClientStatusDiscoveryService for Csds {
    type StreamClientStatusStream = ReceiverStream<Result<ClientStatusResponse, Status>>;

    async fn stream_client_status(
        &self,
        req: Request<Streaming<ClientStatusRequest>>,
    ) -> Result<Response<Self::StreamClientStatusStream>, Status> {
        let (tx, rx) = mpsc::channel(4);
        let this = self.clone();
        let mut incoming = req.into_inner();
        tokio::spawn(async move {
            while let Ok(Some(r)) = incoming.message().await {
                if tx.send(Ok(this.status(&r))).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn fetch_client_status(
        &self,
        req: Request<ClientStatusRequest>,
    ) -> Result<Response<ClientStatusResponse>, Status> {
        Ok(Response::new(self.status(req.get_ref())))
    }
}
