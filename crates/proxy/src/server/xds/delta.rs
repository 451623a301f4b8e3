//! The incremental (delta) ADS session: responses carry what changed and what
//! was removed; the client keeps the versions it holds per resource.

use crate::server::instance::Shared;
use legate_api::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use legate_api::pb::google::protobuf::Any;
use legate_api::pb::google::rpc::Status as RpcStatus;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

use super::*;

pub(super) async fn delta_session(session: Session<'_>, d: &mut Dynamic) -> Result<(), String> {
    let Session { shared, cfg, target, connected } = session;
    let mut conn = Conn::open(cfg, target).await?;
    let (tx, rx) = mpsc::unbounded_channel::<DeltaDiscoveryRequest>();
    let node = node(shared);
    let mut first = true;
    // The first request of a stream names the node.
    let mut send = |mut req: DeltaDiscoveryRequest| {
        if first {
            req.node = Some(node.clone());
            first = false;
        }
        let _ = tx.send(req);
    };
    let since = Instant::now();
    let mut wildcards_sent = rtds_settled(shared, cfg, d, since);
    initial_requests(&mut send, shared, cfg, d, wildcards_sent);
    let mut responses: Incoming<DeltaDiscoveryResponse> = match &mut conn {
        Conn::Ads(client) => Box::pin(
            client
                .delta_aggregated_resources(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
                .await
                .map_err(|e| format!("stream: {e}"))?
                .into_inner(),
        ),
        Conn::PerType(channel) => Box::pin(super::per_type::delta(channel.clone(), rx, super::node(shared))),
        Conn::Rest(_) => return Err("REST sources are polled state of the world, never delta".into()),
    };
    connected.set(1);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        if !wildcards_sent && rtds_settled(shared, cfg, d, since) {
            wildcard_requests(&mut send, cfg, d);
            wildcards_sent = true;
        }
        let Some(resp) = next_response(&mut responses, &mut tick, shared, cfg, d).await? else { continue };
        let Some(ty) = known_type(&resp.type_url) else { continue };
        let to_apply = resources_to_apply(d, ty, &resp);
        let result = if ty == RTDS {
            // A removed layer is empty again; a response of removals alone
            // has nothing else to read.
            for n in &resp.removed_resources {
                shared.runtime.clear_rtds(n);
            }
            if to_apply.is_empty() && !resp.removed_resources.is_empty() {
                Ok(())
            } else {
                d.apply(shared, ty, &to_apply, &resp.system_version_info)
            }
        } else {
            d.apply(shared, ty, &to_apply, &resp.system_version_info)
        };
        note_rtds(shared, d, ty, &result);
        send(ack(d, ty, &resp, result));
        resubscribe(&mut send, shared, d);
    }
}

/// The versions held of a type (after a reconnect).
fn held(d: &Dynamic, ty: &str) -> std::collections::HashMap<String, String> {
    d.delta_versions.get(ty).cloned().unwrap_or_default().into_iter().collect()
}

/// The wildcard types, with the versions held.
fn wildcard_requests(send: &mut impl FnMut(DeltaDiscoveryRequest), cfg: &AdsConfig, d: &Dynamic) {
    for (enabled, ty) in [(cfg.cds, CDS), (cfg.lds, LDS)] {
        if enabled {
            send(DeltaDiscoveryRequest {
                type_url: ty.into(),
                initial_resource_versions: held(d, ty),
                ..Default::default()
            });
        }
    }
}

/// The wildcard types (unless they wait for RTDS), then the named
/// subscriptions held.
fn initial_requests(
    send: &mut impl FnMut(DeltaDiscoveryRequest),
    shared: &Shared,
    cfg: &AdsConfig,
    d: &mut Dynamic,
    wildcards: bool,
) {
    if wildcards {
        wildcard_requests(send, cfg, d);
    }
    for (ty, names) in named_subscriptions(shared, d) {
        if !names.is_empty() {
            d.subscribed.insert(ty, names.clone());
            send(DeltaDiscoveryRequest {
                type_url: ty.into(),
                resource_names_subscribe: names.into_iter().collect(),
                initial_resource_versions: held(d, ty),
                ..Default::default()
            });
        }
    }
}

/// What to apply for a response: the full set after it for the wildcard
/// types (CDS, LDS: what is held, minus the removed, plus the changed); the
/// changed resources for the named types.
fn resources_to_apply(d: &Dynamic, ty: &str, resp: &DeltaDiscoveryResponse) -> Vec<Any> {
    let changed = || resp.resources.iter().filter_map(|r| r.resource.clone());
    if ty != CDS && ty != LDS {
        return changed().collect();
    }
    let current: Vec<(String, Any)> = match ty {
        CDS => d.clusters.values().map(|c| (c.name.clone(), legate_api::any::pack(c))).collect(),
        _ => d.listeners.values().map(|l| (l.name.clone(), legate_api::any::pack(l))).collect(),
    };
    let mut held: BTreeMap<String, Any> = current.into_iter().collect();
    for n in &resp.removed_resources {
        held.remove(n);
    }
    for r in &resp.resources {
        if let Some(any) = &r.resource {
            held.insert(r.name.clone(), any.clone());
        }
    }
    held.into_values().collect()
}

/// The ACK (with the versions now held) or the NACK with the reason.
fn ack(
    d: &mut Dynamic,
    ty: &'static str,
    resp: &DeltaDiscoveryResponse,
    result: Result<(), String>,
) -> DeltaDiscoveryRequest {
    let error_detail = match result {
        Ok(()) => {
            let entry = d.delta_versions.entry(ty).or_default();
            for n in &resp.removed_resources {
                entry.remove(n);
            }
            for r in &resp.resources {
                entry.insert(r.name.clone(), r.version.clone());
            }
            None
        }
        Err(e) => Some(RpcStatus { code: 3, message: e, details: vec![] }),
    };
    DeltaDiscoveryRequest {
        type_url: ty.into(),
        response_nonce: resp.nonce.clone(),
        error_detail,
        ..Default::default()
    }
}

/// New and dropped names for the named types, as clusters and listeners now
/// ask for them.
fn resubscribe(send: &mut impl FnMut(DeltaDiscoveryRequest), shared: &Shared, d: &mut Dynamic) {
    for (sub_ty, names) in named_subscriptions(shared, d) {
        let old = d.subscribed.get(sub_ty).cloned().unwrap_or_default();
        if old != names {
            let subscribe: Vec<String> = names.difference(&old).cloned().collect();
            let unsubscribe: Vec<String> = old.difference(&names).cloned().collect();
            d.subscribed.insert(sub_ty, names);
            send(DeltaDiscoveryRequest {
                type_url: sub_ty.into(),
                resource_names_subscribe: subscribe,
                resource_names_unsubscribe: unsubscribe,
                ..Default::default()
            });
        }
    }
}
