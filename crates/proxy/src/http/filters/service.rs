//! What the filters that ask a service share (ext_authz, ratelimit): one
//! request to a host of the service's cluster over its pool within a time
//! limit, a unary gRPC call framed on top of it to a `GrpcService`'s target
//! (an `envoy_grpc` cluster, or a `google_grpc` target's private cluster,
//! `upstream/google_grpc`), and a refusal charged to the routed cluster as a
//! response.

use crate::body::ProxyBody;
use crate::stats::Store;
use crate::upstream::cluster::{Cluster, ClusterMap};
use crate::upstream::google_grpc::GoogleGrpc;
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body_util::BodyExt as _;
use legate_api::pb::envoy::config::core::v3::grpc_service::TargetSpecifier;
use legate_api::pb::envoy::config::core::v3::GrpcService;
use std::sync::Arc;
use std::time::Duration;

/// Why a request got no answer.
pub(crate) enum Failure {
    /// None came within the time limit.
    Timeout,
    /// No host, or the request failed.
    Failed,
}

/// One request to a host of the cluster, within `timeout`: its status,
/// headers and whole body, or none when it failed or took too long.
pub(crate) async fn send(
    cluster: &Arc<Cluster>,
    req: http::Request<ProxyBody>,
    timeout: Duration,
) -> Option<(u16, HeaderMap, http_body_util::Collected<Bytes>)> {
    send_within(cluster, req, timeout).await.ok()
}

async fn send_within(
    cluster: &Arc<Cluster>,
    req: http::Request<ProxyBody>,
    timeout: Duration,
) -> Result<(u16, HeaderMap, http_body_util::Collected<Bytes>), Failure> {
    let host = cluster.pick().ok_or(Failure::Failed)?;
    let mut held = crate::upstream::pool::Held::default();
    cluster.stats.upstream_rq_active.inc();
    let out = tokio::time::timeout(timeout, async {
        let resp = crate::upstream::pool::send(cluster, &host, req, &mut held).await.map_err(|_| Failure::Failed)?;
        let status = resp.status().as_u16();
        cluster.stats.record_status(status);
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|_| Failure::Failed)?;
        Ok((status, parts.headers, body))
    })
    .await
    .unwrap_or(Err(Failure::Timeout));
    cluster.stats.upstream_rq_active.dec();
    cluster.stats.upstream_rq_completed.inc();
    drop(held);
    cluster.pools.release();
    out
}

/// A unary gRPC call of `path` (`/package.Service/Method`) with the
/// encoded message `msg` to the cluster named `authority`; `grpc-timeout`
/// is `timeout`. The answer's encoded message, or none on any failure: a
/// transport error, a status other than 200, a `grpc-status` other than 0,
/// no message.
pub(crate) async fn unary(
    cluster: &Arc<Cluster>,
    authority: &str,
    path: &str,
    msg: &[u8],
    timeout: Duration,
) -> Option<Bytes> {
    call(cluster, authority, &[], path, msg, timeout).await.ok()
}

/// The call `unary` makes, with `metadata` added to its headers; a failure
/// is the gRPC status the call closed with.
async fn call(
    cluster: &Arc<Cluster>,
    authority: &str,
    metadata: &[(HeaderName, HeaderValue)],
    path: &str,
    msg: &[u8],
    timeout: Duration,
) -> Result<Bytes, u32> {
    use crate::upstream::google_grpc::{DEADLINE_EXCEEDED, INTERNAL};
    let mut framed = BytesMut::with_capacity(msg.len() + 5);
    framed.put_u8(0);
    framed.put_u32(u32::try_from(msg.len()).map_err(|_| INTERNAL)?);
    framed.extend_from_slice(msg);
    let mut req = http::Request::new(ProxyBody::full(framed.freeze()));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = format!("http://{authority}{path}").parse::<http::Uri>().map_err(|_| INTERNAL)?;
    let h = req.headers_mut();
    for (k, v) in metadata {
        h.append(k.clone(), v.clone());
    }
    h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert(http::header::TE, HeaderValue::from_static("trailers"));
    if let Ok(v) = HeaderValue::from_str(&format!("{}m", timeout.as_millis())) {
        h.insert("grpc-timeout", v);
    }
    let (status, head, body) = send_within(cluster, req, timeout).await.map_err(|f| match f {
        Failure::Timeout => DEADLINE_EXCEEDED,
        Failure::Failed => INTERNAL,
    })?;
    if status != 200 {
        return Err(status_from_http(status));
    }
    let grpc_status = |m: &HeaderMap| m.get("grpc-status").and_then(|v| v.to_str().ok()?.parse::<u32>().ok());
    let code = grpc_status(&head).or_else(|| body.trailers().and_then(grpc_status));
    let bytes = body.to_bytes();
    match code {
        Some(0) => {}
        Some(c) => return Err(c),
        None => return Err(INTERNAL),
    }
    if bytes.len() < 5 {
        return Err(INTERNAL);
    }
    let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
    if bytes.len() < 5 + len {
        return Err(INTERNAL);
    }
    Ok(bytes.slice(5..5 + len))
}

/// The gRPC status of an answer that is not HTTP 200 (gRPC's
/// `http-grpc-status-mapping`).
fn status_from_http(status: u16) -> u32 {
    match status {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

/// Where a filter's gRPC calls go (`GrpcService`): a cluster of the
/// bootstrap (`envoy_grpc`, found by name at each call) or a `google_grpc`
/// target's own; and the `initial_metadata` every call carries.
pub(crate) struct GrpcTarget {
    dest: Dest,
    metadata: Vec<(HeaderName, HeaderValue)>,
}

enum Dest {
    Cluster(String),
    Google(Arc<GoogleGrpc>),
}

impl GrpcTarget {
    /// Compiles `g`; errors name fields under it. A `google_grpc` target's
    /// client stats go to `store`.
    pub(crate) fn compile(g: &GrpcService, store: &Store) -> Result<Self, String> {
        let dest = match &g.target_specifier {
            Some(TargetSpecifier::EnvoyGrpc(eg)) => Dest::Cluster(eg.cluster_name.clone()),
            Some(TargetSpecifier::GoogleGrpc(gg)) => Dest::Google(
                GoogleGrpc::compile(gg, store, crate::stats::workers()).map_err(|e| format!("google_grpc.{e}"))?,
            ),
            None => return Err("one of envoy_grpc or google_grpc is required".into()),
        };
        let metadata = g
            .initial_metadata
            .iter()
            .enumerate()
            .map(|(i, h)| metadata_entry(&h.key, &h.value).map_err(|e| format!("initial_metadata[{i}]: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(Self { dest, metadata })
    }

    /// A unary call (as `unary`): its answer's message, or none.
    pub(crate) async fn unary(
        &self,
        clusters: &ClusterMap,
        path: &str,
        msg: &[u8],
        timeout: Duration,
    ) -> Option<Bytes> {
        match &self.dest {
            Dest::Cluster(name) => {
                let cluster = clusters.get(name)?;
                call(cluster, name, &self.metadata, path, msg, timeout).await.ok()
            }
            Dest::Google(g) => {
                g.started();
                let out = call(&g.cluster, &g.authority, &self.metadata, path, msg, timeout).await;
                g.closed(out.as_ref().err().copied().unwrap_or(0));
                out.ok()
            }
        }
    }
}

/// One `initial_metadata` entry, checked as Envoy checks it: a key of
/// gRPC's header characters (upper case lowered), and a printable ASCII
/// value unless the key ends in `-bin`.
fn metadata_entry(key: &str, value: &str) -> Result<(HeaderName, HeaderValue), String> {
    let key = key.to_ascii_lowercase();
    let key_ok =
        !key.is_empty() && key.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase() || b"_.-".contains(&b));
    if !key_ok {
        return Err(format!("Illegal characters in gRPC initial metadata header key: {key}."));
    }
    if !key.ends_with("-bin") && !value.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return Err(format!("Illegal ASCII value for gRPC initial metadata header key: {key}."));
    }
    let name = HeaderName::from_bytes(key.as_bytes()).map_err(|e| e.to_string())?;
    let value = HeaderValue::from_str(value).map_err(|e| e.to_string())?;
    Ok((name, value))
}

/// A request the filter refused, charged to the routed cluster `cluster`
/// as a response with `status` from an internal request (Envoy's
/// `chargeResponseStat`).
pub(crate) fn charge_response(store: &crate::stats::Store, cluster: &str, status: u16) {
    let class = status / 100;
    for name in [
        "upstream_rq_completed".to_string(),
        format!("upstream_rq_{class}xx"),
        format!("upstream_rq_{status}"),
        format!("internal.upstream_rq_{class}xx"),
        format!("internal.upstream_rq_{status}"),
        "internal.upstream_rq_completed".to_string(),
    ] {
        store.counter(&format!("cluster.{cluster}.{name}")).inc();
    }
}
