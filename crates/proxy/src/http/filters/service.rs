//! What the filters that ask a service share (ext_authz, ratelimit): one
//! request to a host of the service's cluster over its pool within a time
//! limit, a unary gRPC call (`envoy_grpc`) framed on top of it, and a
//! refusal charged to the routed cluster as a response.

use crate::body::ProxyBody;
use crate::upstream::cluster::Cluster;
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue};
use http_body_util::BodyExt as _;
use std::sync::Arc;
use std::time::Duration;

/// One request to a host of the cluster, within `timeout`: its status,
/// headers and whole body, or none when it failed or took too long.
pub(crate) async fn send(
    cluster: &Arc<Cluster>,
    req: http::Request<ProxyBody>,
    timeout: Duration,
) -> Option<(u16, HeaderMap, http_body_util::Collected<Bytes>)> {
    let host = cluster.pick()?;
    let mut held = crate::upstream::pool::Held::default();
    cluster.stats.upstream_rq_active.inc();
    let out = tokio::time::timeout(timeout, async {
        let resp = crate::upstream::pool::send(cluster, &host, req, &mut held).await.ok()?;
        let status = resp.status().as_u16();
        cluster.stats.record_status(status);
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.ok()?;
        Some((status, parts.headers, body))
    })
    .await
    .ok()
    .flatten();
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
    let mut framed = BytesMut::with_capacity(msg.len() + 5);
    framed.put_u8(0);
    framed.put_u32(u32::try_from(msg.len()).ok()?);
    framed.extend_from_slice(msg);
    let mut req = http::Request::new(ProxyBody::full(framed.freeze()));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = format!("http://{authority}{path}").parse::<http::Uri>().ok()?;
    let h = req.headers_mut();
    h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert(http::header::TE, HeaderValue::from_static("trailers"));
    if let Ok(v) = HeaderValue::from_str(&format!("{}m", timeout.as_millis())) {
        h.insert("grpc-timeout", v);
    }
    let (status, head, body) = send(cluster, req, timeout).await?;
    let grpc_status = |m: &HeaderMap| m.get("grpc-status").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let trailers = body.trailers().and_then(grpc_status);
    let bytes = body.to_bytes();
    if status != 200 || grpc_status(&head).or(trailers).as_deref() != Some("0") || bytes.len() < 5 {
        return None;
    }
    let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
    (bytes.len() >= 5 + len).then(|| bytes.slice(5..5 + len))
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
