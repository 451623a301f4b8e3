//! REST-JSON xDS (`api_type: REST`): instead of a stream, each type is
//! polled. Every `refresh_delay` (plus up to one more as jitter, counted from
//! the end of the last poll) a host of the source's cluster gets a `POST
//! /v3/discovery:<type>` whose JSON body is the type's `DiscoveryRequest`
//! (the node, the names asked for, the last accepted version); a 200 carries
//! a JSON `DiscoveryResponse`, a 304 says nothing changed. Behind the shape
//! of one aggregated stream, as the per-type gRPC streams: the session sends
//! its requests (first asks and ACKs/NACKs) into one channel and reads the
//! responses from one stream. As in Envoy, a poll repeats the last accepted
//! version and carries no nonce nor error detail; `update_attempt` counts
//! each poll, `update_failure` one that got no answer or not a 200 or 304,
//! `update_rejected` an answer that is not a `DiscoveryResponse` (and, in
//! the session, one whose resources are refused).

use super::per_type::Responses;
use super::{Target, CDS, EDS, LDS, RDS, RTDS, SDS};
use crate::common::config_source::RestTiming;
use crate::server::instance::Shared;
use bytes::Bytes;
use http_body_util::BodyExt;
use legate_api::pb::envoy::config::core::v3::Node;
use legate_api::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;

/// A REST source's timing per type, and for types no source names (EDS and
/// RDS asked for by clusters and listeners): the first source's.
#[derive(Debug, Clone)]
pub struct RestTimings {
    pub default: RestTiming,
    pub per_type: HashMap<&'static str, RestTiming>,
}

impl RestTimings {
    fn of(&self, ty: &str) -> RestTiming {
        self.per_type.get(ty).copied().unwrap_or(self.default)
    }
}

/// The path of a type's REST endpoint (the `google.api.http` rule of its
/// discovery service's `Fetch` method).
fn path(ty: &str) -> Option<&'static str> {
    Some(match ty {
        CDS => "/v3/discovery:clusters",
        LDS => "/v3/discovery:listeners",
        RDS => "/v3/discovery:routes",
        EDS => "/v3/discovery:endpoints",
        SDS => "/v3/discovery:secrets",
        RTDS => "/v3/discovery:runtime",
        _ => return None,
    })
}

/// One type's poll state: the request it repeats and when it is due.
struct Polled {
    request: DiscoveryRequest,
    due: Instant,
}

/// What one poll brought.
enum Outcome {
    Update(DiscoveryResponse),
    Unchanged,
    Failed(String),
    Rejected(String),
}

/// Polls every type the session asks for on the hosts of `cluster`.
pub(super) fn sotw(
    shared: Arc<Shared>,
    cluster: String,
    mut requests: mpsc::UnboundedReceiver<DiscoveryRequest>,
    node: Node,
    timings: RestTimings,
) -> Responses<DiscoveryResponse> {
    let (out, merged) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut polled: Vec<Polled> = Vec::new();
        loop {
            let next = polled.iter().map(|p| p.due).min();
            let far = Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                r = requests.recv() => match r {
                    // The session ended.
                    None => return,
                    Some(r) => note(&mut polled, r, &node),
                },
                _ = tokio::time::sleep_until(next.unwrap_or(far)), if next.is_some() => {
                    for p in polled.iter_mut().filter(|p| p.due <= Instant::now()) {
                        let timing = timings.of(&p.request.type_url);
                        if let Some(resp) = poll(&shared, &cluster, timing, &p.request).await {
                            if out.send(Ok(resp)).is_err() {
                                return;
                            }
                        }
                        let jitter = timing.refresh.mul_f64(rand::random::<f64>());
                        p.due = Instant::now() + timing.refresh + jitter;
                    }
                }
            }
        }
    });
    UnboundedReceiverStream::new(merged)
}

/// Takes a request of the session into its type's poll state: a new type is
/// polled at once; a known one keeps its time and repeats from now on the
/// version and names the session last sent.
fn note(polled: &mut Vec<Polled>, r: DiscoveryRequest, node: &Node) {
    if path(&r.type_url).is_none() {
        tracing::warn!("REST xDS: no REST endpoint for {}", r.type_url);
        return;
    }
    // A rejected response leaves the version where it was: the error
    // detail and the nonce are for gRPC streams only.
    let request = DiscoveryRequest {
        version_info: r.version_info,
        node: Some(node.clone()),
        resource_names: r.resource_names,
        type_url: r.type_url,
        ..Default::default()
    };
    match polled.iter_mut().find(|p| p.request.type_url == request.type_url) {
        Some(p) => p.request = request,
        None => polled.push(Polled { request, due: Instant::now() }),
    }
}

/// One poll of a type, counted as Envoy counts it; the response when it
/// brought one.
async fn poll(shared: &Shared, cluster: &str, timing: RestTiming, req: &DiscoveryRequest) -> Option<DiscoveryResponse> {
    let stat = super::apply::stat_prefix(&req.type_url);
    let count = |what: &str| {
        if let Some(stat) = stat {
            shared.store.counter(&format!("{stat}.{what}")).inc();
        }
    };
    count("update_attempt");
    // The JSON is written and read outside the request's time: only the
    // exchange is bounded by `request_timeout`, as in Envoy.
    let outcome = match legate_api::load::to_dynamic(req).map(|d| legate_api::convert::to_json(&d).to_string()) {
        None => Outcome::Failed("cannot write the request as JSON".into()),
        Some(body) => match tokio::time::timeout(timing.timeout, fetch(shared, cluster, &req.type_url, body)).await {
            Ok(Ok(Some(body))) => decode(&body),
            Ok(Ok(None)) => Outcome::Unchanged,
            Ok(Err(e)) => Outcome::Failed(e),
            Err(_) => Outcome::Failed(format!("no answer within {:?}", timing.timeout)),
        },
    };
    let path = path(&req.type_url).unwrap_or_default();
    match outcome {
        Outcome::Update(resp) => return Some(resp),
        Outcome::Unchanged => {}
        Outcome::Failed(e) => {
            tracing::warn!("REST update for {path} failed: {e}");
            count("update_failure");
        }
        Outcome::Rejected(e) => {
            tracing::warn!("REST config for {path} rejected: {e}");
            count("update_rejected");
        }
    }
    None
}

/// POSTs the JSON request `body` of `type_url` to a host of `cluster`: the
/// answer's body on a 200, `None` on a 304.
async fn fetch(shared: &Shared, cluster: &str, type_url: &str, body: String) -> Result<Option<Bytes>, String> {
    let Some(target) = Target::pick(shared, cluster) else {
        return Err(format!("cluster '{cluster}' has no host"));
    };
    if target.pipe.is_some() || target.cluster.tls.is_some() {
        return Err("REST xDS over TLS or a Unix socket is not implemented by Legate".into());
    }
    let stream =
        tokio::net::TcpStream::connect(target.addr).await.map_err(|e| format!("connect to {}: {e}", target.addr))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let request = http::Request::post(path(type_url).unwrap_or("/"))
        .header(http::header::HOST, cluster)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(crate::body::ProxyBody::Full { data: Some(body.into()) })
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(request).await.map_err(|e| e.to_string())?;
    match resp.status().as_u16() {
        304 => return Ok(None),
        200 => {}
        other => return Err(format!("status {other}")),
    }
    resp.into_body().collect().await.map(|b| Some(b.to_bytes())).map_err(|e| e.to_string())
}

/// A JSON `DiscoveryResponse`, its resources `Any`s named by `@type`.
fn decode(body: &[u8]) -> Outcome {
    let value: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return Outcome::Rejected(format!("not JSON: {e}")),
    };
    match legate_api::load::decode_typed::<DiscoveryResponse>(value) {
        Ok((resp, _)) => Outcome::Update(resp),
        Err(errors) => {
            let list: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
            Outcome::Rejected(list.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_response_decodes_with_its_resources() {
        let body = br#"{"version_info": "1", "type_url": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            "resources": [{"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "c", "connect_timeout": "1s"}]}"#;
        let Outcome::Update(resp) = decode(body) else { panic!("not decoded") };
        assert_eq!(resp.version_info, "1");
        let c: legate_api::pb::envoy::config::cluster::v3::Cluster =
            legate_api::any::unpack(&resp.resources[0]).expect("a cluster");
        assert_eq!(c.name, "c");
        assert!(matches!(decode(b"{\"resources\": [{\"name\": 1}]}"), Outcome::Rejected(_)));
        assert!(matches!(decode(b"<html>"), Outcome::Rejected(_)));
    }

    #[test]
    fn a_poll_repeats_the_accepted_version_without_nonce_or_error() {
        let mut polled = Vec::new();
        let node = Node { id: "n".into(), ..Default::default() };
        note(&mut polled, DiscoveryRequest { type_url: CDS.into(), ..Default::default() }, &node);
        let due = polled[0].due;
        let nack = DiscoveryRequest {
            type_url: CDS.into(),
            version_info: "3".into(),
            response_nonce: "x".into(),
            error_detail: Some(Default::default()),
            ..Default::default()
        };
        note(&mut polled, nack, &node);
        assert_eq!(polled.len(), 1);
        assert_eq!(polled[0].due, due);
        let r = &polled[0].request;
        assert_eq!((r.version_info.as_str(), r.response_nonce.as_str()), ("3", ""));
        assert!(r.error_detail.is_none() && r.node.as_ref().is_some_and(|n| n.id == "n"));
        note(&mut polled, DiscoveryRequest { type_url: "unknown".into(), ..Default::default() }, &node);
        assert_eq!(polled.len(), 1);
    }
}
