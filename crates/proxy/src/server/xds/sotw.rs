//! The state-of-the-world ADS session: every response carries a type's whole
//! set (or the named resources asked for); the ACK repeats its version.

use legate_api::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use legate_api::pb::google::rpc::Status as RpcStatus;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

use super::*;

pub(super) async fn sotw_session(session: Session<'_>, d: &mut Dynamic) -> Result<(), String> {
    let Session { shared, cfg, target, connected } = session;
    let mut conn = Conn::open(cfg, target).await?;
    let (tx, rx) = mpsc::unbounded_channel::<DiscoveryRequest>();
    let node = node(shared);
    let mut first = true;
    let mut send = |type_url: &str, version: String, nonce: String, names: Vec<String>, error: Option<String>| {
        let req = DiscoveryRequest {
            version_info: version,
            node: if first { Some(node.clone()) } else { None },
            resource_names: names,
            type_url: type_url.to_string(),
            response_nonce: nonce,
            error_detail: error.map(|m| RpcStatus { code: 3, message: m, details: vec![] }),
            ..Default::default()
        };
        first = false;
        let _ = tx.send(req);
    };
    // Initial requests: the wildcard types (once RTDS is settled), then any
    // named subscriptions held.
    let since = Instant::now();
    let mut wildcards_sent = false;
    let wildcards = |d: &Dynamic| -> Vec<(&'static str, String)> {
        [(cfg.cds, CDS), (cfg.lds, LDS)]
            .into_iter()
            .filter(|(enabled, _)| *enabled)
            .map(|(_, ty)| (ty, d.versions.get(ty).cloned().unwrap_or_default()))
            .collect()
    };
    if rtds_settled(shared, cfg, d, since) {
        for (ty, version) in wildcards(d) {
            send(ty, version, String::new(), vec![], None);
        }
        wildcards_sent = true;
    }
    for (ty, names) in named_subscriptions(shared, d) {
        if !names.is_empty() {
            d.subscribed.insert(ty, names.clone());
            send(ty, d.versions.get(ty).cloned().unwrap_or_default(), String::new(), names.into_iter().collect(), None);
        }
    }
    let mut responses: Incoming<DiscoveryResponse> = match &mut conn {
        Conn::Ads(client) => Box::pin(
            client
                .stream_aggregated_resources(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
                .await
                .map_err(|e| format!("stream: {e}"))?
                .into_inner(),
        ),
        Conn::PerType(channel) => Box::pin(super::per_type::sotw(channel.clone(), rx, super::node(shared))),
        Conn::Rest(timings) => Box::pin(super::rest::sotw(
            shared.clone(),
            target.cluster.name.clone(),
            rx,
            super::node(shared),
            timings.clone(),
        )),
    };
    connected.set(1);
    let mut nonces: HashMap<&'static str, String> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        if !wildcards_sent && rtds_settled(shared, cfg, d, since) {
            for (ty, version) in wildcards(d) {
                send(ty, version, String::new(), vec![], None);
            }
            wildcards_sent = true;
        }
        let Some(resp) = next_response(&mut responses, &mut tick, shared, cfg, d).await? else { continue };
        let Some(ty) = known_type(&resp.type_url) else { continue };
        nonces.insert(ty, resp.nonce.clone());
        let names = d.subscribed.get(ty).map(|s| s.iter().cloned().collect()).unwrap_or_default();
        let result = d.apply(shared, ty, &resp.resources, &resp.version_info);
        note_rtds(shared, d, ty, &result);
        match result {
            Ok(()) => {
                d.versions.insert(ty, resp.version_info.clone());
                send(ty, resp.version_info.clone(), resp.nonce.clone(), names, None);
            }
            Err(e) => {
                let last = d.versions.get(ty).cloned().unwrap_or_default();
                send(ty, last, resp.nonce.clone(), names, Some(e));
            }
        }
        // New named subscriptions follow from clusters and listeners.
        for (sub_ty, names) in named_subscriptions(shared, d) {
            if d.subscribed.get(sub_ty) != Some(&names) && (!names.is_empty() || d.subscribed.contains_key(sub_ty)) {
                d.subscribed.insert(sub_ty, names.clone());
                let version = d.versions.get(sub_ty).cloned().unwrap_or_default();
                let nonce = nonces.get(sub_ty).cloned().unwrap_or_default();
                send(sub_ty, version, nonce, names.into_iter().collect(), None);
            }
        }
    }
}
