//! SDS from a server that is not the ADS one: `sds_config.api_config_source`
//! (`api_type` GRPC or DELTA_GRPC, `envoy_grpc.cluster_name`), as SPIRE's
//! agent serves workloads their certificates over a Unix socket. One
//! stream per source (cluster, SotW or delta) on the SecretDiscoveryService
//! asks for the names the TLS contexts using that source need, again when
//! they change; what arrives is checked and installed as ADS secrets are
//! (`apply::set_secrets`), and ACKed or NACKed with the reason. A broken
//! stream is opened again after a jittered backoff. Listeners and clusters
//! wait for these secrets as they do for ADS ones (the secret slots'
//! `settled`).

use crate::server::instance::Shared;
use crate::server::xds::apply::set_secrets;
use crate::server::xds::{channel, decode_all, node, Target, SDS};
use crate::tls::sds::Source;
use legate_api::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use legate_api::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use legate_api::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient as Sds;
use legate_api::pb::google::rpc::Status as RpcStatus;
use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

/// How often the names each source's contexts need, and new sources, are
/// looked at.
const LOOK: Duration = Duration::from_millis(250);

const MAX_MESSAGE: usize = 64 << 20;

/// Starts a stream for every gRPC SDS source a TLS context uses, now and
/// as listeners and clusters come (runs on the main thread for ever).
pub async fn run(shared: Arc<Shared>) {
    let mut started: HashSet<(String, bool)> = HashSet::new();
    let mut tick = tokio::time::interval(LOOK);
    loop {
        tick.tick().await;
        for (cluster, delta) in shared.ctx.secrets.grpc_sources() {
            if started.insert((cluster.clone(), delta)) {
                tokio::spawn(source(shared.clone(), Source::Grpc { cluster, delta }));
            }
        }
    }
}

/// One source's stream, opened again whenever it breaks.
async fn source(shared: Arc<Shared>, source: Source) {
    let Source::Grpc { cluster, delta } = &source else { return };
    let mut backoff = Duration::from_millis(500);
    loop {
        let result = match Target::pick(&shared, cluster) {
            None => Err(format!("cluster '{cluster}' has no host")),
            Some(target) => {
                let up = if *delta {
                    delta_stream(&shared, &source, &target).await
                } else {
                    sotw_stream(&shared, &source, &target).await
                };
                up.map_err(|(e, was_up)| {
                    if was_up {
                        backoff = Duration::from_millis(500);
                    }
                    e
                })
            }
        };
        if let Err(e) = result {
            tracing::warn!("SDS stream to cluster '{cluster}' ended: {e}");
        }
        tokio::time::sleep(backoff.mul_f64(rand::random_range(0.5..1.0))).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// An error, and whether the stream had received a response first.
type Ended = (String, bool);

/// Decodes and installs a response's secrets; the NACK's reason if refused.
fn install(
    shared: &Shared,
    source: &Source,
    resources: &[legate_api::pb::google::protobuf::Any],
    version: &str,
) -> Result<(), String> {
    let secrets: Vec<Secret> = decode_all(resources, SDS)?;
    set_secrets(shared, source, secrets, version)
}

/// Counts the request of each name in `now` not in `before`.
fn asked(shared: &Shared, now: &BTreeSet<String>, before: &BTreeSet<String>) {
    for n in now.difference(before) {
        shared.ctx.secrets.count_request(n);
    }
}

fn nack(e: String) -> Option<RpcStatus> {
    Some(RpcStatus { code: 3, message: e, details: vec![] })
}

async fn sotw_stream(shared: &Shared, source: &Source, target: &Target) -> Result<(), Ended> {
    let mut client = Sds::new(channel(target).await.map_err(|e| (e, false))?).max_decoding_message_size(MAX_MESSAGE);
    let (tx, rx) = mpsc::unbounded_channel();
    let mut names: BTreeSet<String> = shared.ctx.secrets.names_of(source);
    let request = |version: &str, nonce: &str, names: &BTreeSet<String>, error: Option<RpcStatus>| DiscoveryRequest {
        version_info: version.to_string(),
        resource_names: names.iter().cloned().collect(),
        type_url: SDS.to_string(),
        response_nonce: nonce.to_string(),
        error_detail: error,
        ..Default::default()
    };
    let _ = tx.send(DiscoveryRequest { node: Some(node(shared)), ..request("", "", &names, None) });
    asked(shared, &names, &BTreeSet::new());
    let mut responses = client
        .stream_secrets(UnboundedReceiverStream::new(rx))
        .await
        .map_err(|e| (format!("stream: {e}"), false))?
        .into_inner();
    let (mut version, mut nonce, mut was_up) = (String::new(), String::new(), false);
    let mut tick = tokio::time::interval(LOOK);
    loop {
        tokio::select! {
            m = responses.message() => {
                let resp = match m {
                    Ok(Some(r)) => r,
                    Ok(None) => return Err(("closed by the server".into(), was_up)),
                    Err(e) => return Err((e.to_string(), was_up)),
                };
                was_up = true;
                nonce = resp.nonce.clone();
                let error = match install(shared, source, &resp.resources, &resp.version_info) {
                    Ok(()) => {
                        version = resp.version_info.clone();
                        None
                    }
                    Err(e) => nack(e),
                };
                let _ = tx.send(request(&version, &nonce, &names, error));
            }
            _ = tick.tick() => {
                let now = shared.ctx.secrets.names_of(source);
                if now != names {
                    asked(shared, &now, &names);
                    names = now;
                    let _ = tx.send(request(&version, &nonce, &names, None));
                }
            }
        }
    }
}

async fn delta_stream(shared: &Shared, source: &Source, target: &Target) -> Result<(), Ended> {
    let mut client = Sds::new(channel(target).await.map_err(|e| (e, false))?).max_decoding_message_size(MAX_MESSAGE);
    let (tx, rx) = mpsc::unbounded_channel();
    let mut names: BTreeSet<String> = shared.ctx.secrets.names_of(source);
    let _ = tx.send(DeltaDiscoveryRequest {
        node: Some(node(shared)),
        type_url: SDS.to_string(),
        resource_names_subscribe: names.iter().cloned().collect(),
        ..Default::default()
    });
    asked(shared, &names, &BTreeSet::new());
    let mut responses = client
        .delta_secrets(UnboundedReceiverStream::new(rx))
        .await
        .map_err(|e| (format!("stream: {e}"), false))?
        .into_inner();
    let mut was_up = false;
    let mut tick = tokio::time::interval(LOOK);
    loop {
        tokio::select! {
            m = responses.message() => {
                let resp = match m {
                    Ok(Some(r)) => r,
                    Ok(None) => return Err(("closed by the server".into(), was_up)),
                    Err(e) => return Err((e.to_string(), was_up)),
                };
                was_up = true;
                let resources: Vec<_> = resp.resources.iter().filter_map(|r| r.resource.clone()).collect();
                let error = install(shared, source, &resources, &resp.system_version_info).err().and_then(nack);
                let _ = tx.send(DeltaDiscoveryRequest {
                    type_url: SDS.to_string(),
                    response_nonce: resp.nonce.clone(),
                    error_detail: error,
                    ..Default::default()
                });
            }
            _ = tick.tick() => {
                let now = shared.ctx.secrets.names_of(source);
                if now != names {
                    asked(shared, &now, &names);
                    let _ = tx.send(DeltaDiscoveryRequest {
                        type_url: SDS.to_string(),
                        resource_names_subscribe: now.difference(&names).cloned().collect(),
                        resource_names_unsubscribe: names.difference(&now).cloned().collect(),
                        ..Default::default()
                    });
                    names = now;
                }
            }
        }
    }
}
