//! Request mirroring (`request_mirror_policies`, Envoy's shadow writer): a
//! copy of the request, its body buffered, goes to another cluster; the
//! answer is counted there and dropped.

use crate::body::ProxyBody;
use crate::http::route::{MirrorTarget, RouteAction};
use crate::upstream::cluster::{Cluster, ClusterMap};
use http::header::{HeaderValue, HOST};
use http::Request;
use std::sync::Arc;

/// The mirrors this request goes to (each policy's share rolled once),
/// with their `keep_host`.
pub(super) fn chosen(ra: &RouteAction, clusters: &ClusterMap, headers: &http::HeaderMap) -> Vec<(Arc<Cluster>, bool)> {
    ra.mirrors
        .iter()
        .filter(|m| m.chance.as_ref().is_none_or(|c| c.roll()))
        .filter_map(|m| {
            let name = match &m.cluster {
                MirrorTarget::Named(n) => n.as_str(),
                MirrorTarget::Header(h) => headers.get(h)?.to_str().ok()?,
            };
            clusters.get(name).map(|c| (c.clone(), m.keep_host))
        })
        .collect()
}

/// Sends the request to each chosen mirror.
pub(super) fn send_all(
    mirrors: &[(Arc<Cluster>, bool)],
    parts: &http::request::Parts,
    authority: &str,
    body: &bytes::Bytes,
) {
    for (cluster, keep_host) in mirrors {
        mirror(cluster.clone(), parts, authority, *keep_host, body.clone());
    }
}

/// Sends a copy of the request to a mirror cluster and forgets it: the
/// answer is counted in the mirror cluster's stats and dropped. The host is
/// `<host>-shadow` (before any port), as Envoy sends it.
fn mirror(cluster: Arc<Cluster>, parts: &http::request::Parts, authority: &str, keep_host: bool, body: bytes::Bytes) {
    let Some(host) = cluster.pick() else {
        cluster.stats.upstream_cx_none_healthy.inc();
        return;
    };
    let shadow = if keep_host {
        authority.to_string()
    } else {
        match authority.rsplit_once(':').filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit())) {
            Some((h, port)) => format!("{h}-shadow:{port}"),
            None => format!("{authority}-shadow"),
        }
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut headers = parts.headers.clone();
    let uri = if cluster.http2 {
        headers.remove(HOST);
        format!("http://{shadow}{path}")
    } else {
        if let Ok(v) = HeaderValue::from_str(&shadow) {
            headers.insert(HOST, v);
        }
        path.to_string()
    };
    let Ok(uri) = uri.parse::<http::Uri>() else { return };
    let mut req = Request::new(ProxyBody::full(body));
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    tokio::spawn(async move {
        let mut slot = crate::upstream::pool::Held::default();
        cluster.stats.upstream_rq_active.inc();
        let result = crate::upstream::pool::send(&cluster, &host, req, &mut slot).await;
        let status = match result {
            Ok(resp) => {
                let status = resp.status().as_u16();
                // Read the answer to its end so the connection can be reused.
                let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
                status
            }
            Err(_) => 503,
        };
        cluster.stats.record_status(status);
        cluster.stats.upstream_rq_completed.inc();
        cluster.stats.upstream_rq_active.dec();
        cluster.pools.release();
    });
}
