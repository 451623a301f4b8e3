//! One request through the router (Envoy's `Router::Filter`): pick the
//! cluster and host, build the upstream request, send it (once, or under
//! its retry policy, with mirrors), wait under its timeouts, and pass the
//! response downstream.

use super::mirror;
use super::retry::{send_with_retries, Attempts, RetryPolicy, X_ENVOY_ATTEMPT_COUNT};
use super::timeout::{TimedOut, Timers};
use super::upstream_request::{Prepared, Target};
use crate::body::{ProxyBody, TrackedBody};
use crate::http::conn_manager::headers::strip_hop_by_hop;
use crate::http::conn_manager::stream::Stream;
use crate::http::conn_manager::upgrade::Upgrade;
use crate::http::conn_manager::{Hcm, Matched, ProxyResponse, Step};
use crate::http::route::{ClusterChoice, RouteAction, WeightedValue};
use crate::trace::Upstream;
use crate::upstream::cluster::{Cluster, ClusterMap};
use crate::upstream::error::UpstreamError;
use crate::upstream::host::Host;
use crate::upstream::pool::Held;
use http::header::{HeaderName, HeaderValue};
use http::request::Parts;
use http::{HeaderMap, Request, Response};
use hyper::body::Incoming;
use std::borrow::Cow;
use std::ops::ControlFlow::{Break, Continue};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

static X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName = HeaderName::from_static("x-envoy-upstream-service-time");

/// How the request goes upstream.
enum Outgoing {
    /// Once, its body streamed (or buffered already).
    Once(Request<ProxyBody>),
    /// Under its retry policy, its body buffered to be sent again.
    Retried { parts: Parts, body: bytes::Bytes, policy: RetryPolicy },
}

/// What came back: the response or failure of the last attempt, the host
/// that gave it, and the number of attempts.
type Sent = (Result<Response<Incoming>, UpstreamError>, Arc<Host>, u32);

impl Hcm {
    /// The router's part of a request whose route forwards it.
    pub(in crate::http) async fn forward(
        &self,
        mut stream: Box<Stream>,
        mut parts: Parts,
        body: ProxyBody,
        matched: Matched<'_>,
        ra: &RouteAction,
        upgrade: Option<Upgrade>,
    ) -> Step<ProxyResponse> {
        // Cost: an ArcSwap load and one hash lookup of the cluster name.
        let clusters = self.clusters.load();
        // Only a virtual host with virtual clusters pays for the pick.
        if let Some(vcs) = &matched.1.virtual_clusters {
            stream.charged.set_virtual_cluster(pick_vcluster(vcs, &stream, &parts).clone());
        }
        if let Some(s) = &matched.2.stats {
            stream.charged.set_route(s.clone());
        }
        let (mut stream, cluster, host) = self.pick_upstream(stream, &parts, matched, ra, &clusters)?;
        let Some(prepared) = self.prepare_request(&stream, &mut parts, matched, ra, &cluster, &host) else {
            return Break(self.router_reply(stream, Some(matched), 400, "invalid_path", "", None));
        };
        let Prepared { authority, new_path, route_timeout, retry, stream_limit, grpc_timeout_header } = prepared;
        let stream_deadline = stream_limit.map(|d| tokio::time::Instant::from_std(stream.start + d));
        if stream.trace.is_some() {
            let path = new_path.clone().unwrap_or_else(|| stream.path.clone());
            let up = Upstream { address: Some(host.addr.to_string()), authority: &authority, path: &path };
            self.start_upstream_span(&mut stream, &mut parts.headers, &cluster.name, &up);
        }
        let target = self.begin_upstream(&mut stream, &parts.headers, new_path, authority, cluster, host);
        if let Some(up) = upgrade {
            // Boxed: an upgrade's state stays out of every forwarded request's future.
            return Box::pin(self.forward_upgrade(stream, parts, matched, ra, &target, up)).await;
        }
        let mirrors = mirror::chosen(ra, &clusters, &parts.headers);
        let retry = resend_policy(&parts, &body, retry, self.buffer_limit);
        let (mut stream, outgoing) = if retry.is_some() || mirrored(&parts, &body, &mirrors, self.buffer_limit) {
            // Boxed: buffering for retries or mirrors allocates anyway, and
            // its state stays out of the plain request's future.
            Box::pin(self.buffered(stream, parts, body, &target, retry, &mirrors)).await?
        } else {
            (stream, Outgoing::Once(Request::from_parts(parts, body.watched(target.request_done.clone()))))
        };
        let (_, vh, _) = matched;
        let attempts = Attempts {
            route_timeout,
            count_header: vh.attempt_count_upstream,
            timeout_header: !self.suppress_envoy_headers(),
            grpc_timeout_header,
            charged: stream.charged.clone(),
        };
        let sent = self.send(&mut stream, outgoing, &target, ra, attempts, stream_deadline).await;
        let (result, last_host, attempts) = match sent {
            Ok(sent) => sent,
            Err(timed_out) => {
                return Break(self.timed_out_reply(stream, timed_out, &target.cluster, matched, &target.request_done))
            }
        };
        move_to_host(&mut stream, &target, last_host);
        match result {
            Ok(resp) => {
                let resp = match stream.filter_state.whole_response {
                    // Boxed: reading a whole response stays out of every request's future.
                    Some(wants) if wants(&resp_parts(&resp)) => {
                        match Box::pin(read_response(resp, self.buffer_limit)).await {
                            Ok(resp) => resp,
                            Err(status) => {
                                let details = "upstream_reset_after_response_started";
                                return Break(self.router_reply(stream, Some(matched), status, details, "UR", None));
                            }
                        }
                    }
                    _ => resp.map(ProxyBody::stream),
                };
                Continue(self.upstream_response(stream, resp, matched, &target, (attempts, stream_deadline)).await)
            }
            Err(e) => Break(self.upstream_failure_reply(stream, e, &target.cluster, matched, attempts)),
        }
    }

    /// The route's cluster, and one of its hosts (by the route's hash
    /// policy, when it has one).
    fn pick_upstream(
        &self,
        mut stream: Box<Stream>,
        parts: &Parts,
        matched: Matched<'_>,
        ra: &RouteAction,
        clusters: &ClusterMap,
    ) -> Step<(Box<Stream>, Arc<Cluster>, Arc<Host>)> {
        // Cost when the route hashes: one xxHash64 per policy over the value.
        use crate::http::route::hash_policy::{request_hash, Conn};
        let conn = Conn { client: stream.client.ip(), remote: stream.conn.remote, local: stream.conn.local };
        let mut hash = if ra.hash_policy.is_empty() {
            None
        } else {
            request_hash(&ra.hash_policy, &parts.headers, parts.uri.query(), &conn, false).0
        };
        let Some(cluster) = cluster_name(ra, &parts.headers, hash).and_then(|n| clusters.get(n.as_ref()).cloned())
        else {
            self.stats.no_cluster.inc();
            let status = ra.cluster_not_found_status;
            return Break(self.router_reply(stream, Some(matched), status, "cluster_not_found", "NC", None));
        };
        // A hashing balancer's host pick may make a cookie (Envoy's
        // `addDownstreamSetCookie`), set on the response.
        if !ra.hash_policy.is_empty() && cluster.hashes() {
            let (h, set_cookie) = request_hash(&ra.hash_policy, &parts.headers, parts.uri.query(), &conn, true);
            (hash, stream.set_cookie) = (h, set_cookie);
        }
        stream.cluster = Some(cluster.clone());
        let Some(host) = cluster.pick_for(&stream.authority, hash) else {
            cluster.stats.upstream_cx_none_healthy.inc();
            return Break(self.no_healthy_upstream_reply(stream, &cluster, matched));
        };
        Continue((stream, cluster, host))
    }

    /// The upstream request begins: counted on its cluster and host, and
    /// recorded on the stream; the access log sees the request as it goes
    /// upstream (rewritten path and host, added headers), as Envoy's does.
    fn begin_upstream(
        &self,
        stream: &mut Stream,
        headers: &HeaderMap,
        new_path: Option<String>,
        authority: String,
        cluster: Arc<Cluster>,
        host: Arc<Host>,
    ) -> Target {
        // The request counts as received when its body has ended (at once for a
        // request without one): that is what Envoy's request_timeout measures.
        // A buffered body (buffer filter) has been read already.
        let request_done = stream.request_progress.clone().unwrap_or_default();
        stream.request_progress = Some(request_done.clone());
        if !self.access_logs.is_empty() {
            stream.request_headers = Some(headers.clone());
            if let Some(path) = new_path {
                stream.path = path;
            }
            stream.authority = authority.clone();
        }
        cluster.stats.upstream_rq_active.inc();
        host.rq_active.fetch_add(1, Relaxed);
        host.rq_total.fetch_add(1, Relaxed);
        let started = Instant::now();
        stream.upstream = Some((cluster.clone(), host.clone(), started));
        Target { cluster, host, authority, started, request_done }
    }

    /// The request buffered (for retries, or for mirrors), the mirrors sent
    /// a copy; a body that breaks off while being read is answered 400.
    async fn buffered(
        &self,
        stream: Box<Stream>,
        parts: Parts,
        body: ProxyBody,
        target: &Target,
        retry: Option<RetryPolicy>,
        mirrors: &[(Arc<Cluster>, bool)],
    ) -> Step<(Box<Stream>, Outgoing)> {
        let Ok(bytes) = body.read_whole(None).await else {
            return Break(self.local_reply(stream, 400, "downstream_remote_disconnect", "DC", None));
        };
        target.request_done.set_whole(bytes.len() as u64);
        mirror::send_all(mirrors, &parts, &target.authority, &bytes);
        let outgoing = match retry {
            Some(policy) => Outgoing::Retried { parts, body: bytes, policy },
            None => Outgoing::Once(Request::from_parts(parts, ProxyBody::full(bytes))),
        };
        Continue((stream, outgoing))
    }

    /// Sends the request and waits for the response headers; the stream
    /// holds the request's `max_requests` slot from then on.
    async fn send(
        &self,
        stream: &mut Stream,
        outgoing: Outgoing,
        target: &Target,
        ra: &RouteAction,
        attempts: Attempts,
        stream_deadline: Option<tokio::time::Instant>,
    ) -> Result<Sent, TimedOut> {
        let Target { cluster, host, .. } = target;
        let route_timeout = attempts.route_timeout;
        let mut slot = Held::default();
        slot.also_total = stream.charged.totals();
        let sent = async {
            match outgoing {
                Outgoing::Once(req) => {
                    (crate::upstream::pool::send(cluster, host, req, &mut slot).await, host.clone(), 1)
                }
                Outgoing::Retried { parts, body, policy } => {
                    // Boxed: the retry loop's state stays out of the plain request's future.
                    Box::pin(send_with_retries(cluster.clone(), host.clone(), parts, body, policy, attempts, &mut slot))
                        .await
                }
            }
        };
        let timers =
            Timers { route: route_timeout, max_stream: cluster.conn_options.max_stream_duration, stream_deadline };
        let waited = self.await_response(sent, ra, timers, &target.request_done).await;
        stream.rq_slot = slot;
        waited
    }

    /// The upstream's response on its way downstream. Its body may not
    /// outlive the cluster's `max_stream_duration`.
    async fn upstream_response(
        &self,
        mut stream: Box<Stream>,
        upstream_resp: Response<ProxyBody>,
        matched: Matched<'_>,
        target: &Target,
        (attempts, stream_deadline): (u32, Option<tokio::time::Instant>),
    ) -> ProxyResponse {
        let cs = &target.cluster.stats;
        self.charge_status(&stream, cs, upstream_resp.status().as_u16());
        let (mut rparts, rbody) = upstream_resp.into_parts();
        strip_hop_by_hop(&mut rparts.headers);
        let service_time = target.started.elapsed().as_millis() as u64;
        if !self.suppress_envoy_headers() {
            rparts.headers.insert(X_ENVOY_UPSTREAM_SERVICE_TIME.clone(), HeaderValue::from(service_time));
        }
        rparts.version = http::Version::HTTP_11;
        let (_, vh, _) = matched;
        if vh.attempt_count_response {
            rparts.headers.insert(X_ENVOY_ATTEMPT_COUNT.clone(), HeaderValue::from(attempts));
        }
        if let Some(cookie) = stream.set_cookie.take() {
            rparts.headers.append(http::header::SET_COOKIE, cookie);
        }
        let mut resp = Response::from_parts(rparts, rbody);
        if self.filters.waits_on_response() {
            // Boxed: only chains with such a filter carry its state.
            Box::pin(self.filters.on_response_wait(&mut stream.filter_state, &mut resp)).await;
            resp.extensions_mut().insert(crate::http::filters::api::ResponseHooksRan);
        }
        stream.details = "via_upstream";
        self.finish_response(&mut stream, &mut resp, Some(matched));
        // Nothing to set up, not even a counter clone, when there is no
        // max_stream_duration.
        let max = target.cluster.conn_options.max_stream_duration;
        let started = target.started;
        let cluster_deadline = max.map(|d| tokio::time::Instant::from_std(started + d));
        // The earlier of the cluster's and the route's limits cuts the body.
        let deadline = match (cluster_deadline, stream_deadline) {
            (Some(c), Some(s)) if s < c => Some((s, self.stats.downstream_rq_max_duration_reached.clone())),
            (Some(c), _) => Some((c, cs.upstream_rq_max_duration_reached.clone())),
            (None, Some(s)) => Some((s, self.stats.downstream_rq_max_duration_reached.clone())),
            (None, None) => None,
        };
        resp.map(|b| {
            let body = TrackedBody::new(b, Some(stream));
            match deadline {
                Some((at, reached)) => body.with_deadline(at, reached),
                None => body,
            }
        })
    }
}

/// The request's virtual cluster (Envoy picks it before any rewrite).
fn pick_vcluster<'v>(
    vcs: &'v crate::http::route::virtual_cluster::VirtualClusters,
    stream: &Stream,
    parts: &Parts,
) -> &'v Arc<crate::http::route::virtual_cluster::VirtualClusterStats> {
    let pseudo = crate::common::matcher::Pseudo {
        method: parts.method.as_str(),
        path: &stream.path,
        authority: &stream.authority,
        scheme: stream.conn.scheme(),
    };
    vcs.pick(&parts.headers, &pseudo)
}

/// A response's head without its body, for a filter to decide on.
fn resp_parts(resp: &Response<Incoming>) -> http::response::Parts {
    let mut head = Response::new(());
    *head.status_mut() = resp.status();
    *head.headers_mut() = resp.headers().clone();
    head.into_parts().0
}

/// Reads an upstream response whole, for a filter that changes its headers
/// by what follows them: the body (at most the listener's buffer limit,
/// else 500 as Envoy's buffer overflow) and its trailers, kept as a
/// `WholeResponse` extension. A body that breaks off is a 503.
async fn read_response(resp: Response<Incoming>, limit: u64) -> Result<Response<ProxyBody>, u16> {
    use http_body_util::BodyExt as _;
    let (mut parts, body) = resp.into_parts();
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let collected = match http_body_util::Limited::new(body, limit).collect().await {
        Ok(c) => c,
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => return Err(500),
        Err(_) => return Err(503),
    };
    let trailers = collected.trailers().cloned();
    parts.extensions.insert(crate::http::filters::api::WholeResponse { trailers });
    Ok(Response::from_parts(parts, ProxyBody::full(collected.to_bytes())))
}

/// The name of the cluster the route sends this request to: its own, the
/// one a request header names, the one its cluster specifier plugin names,
/// or a weighted pick (by a random number, a header's number, or the
/// route's hash `hash`, as the route says).
fn cluster_name<'a>(
    ra: &'a RouteAction,
    headers: &'a HeaderMap,
    hash: Option<u64>,
) -> Option<std::borrow::Cow<'a, str>> {
    use std::borrow::Cow::{Borrowed, Owned};
    match &ra.cluster {
        ClusterChoice::Name(n) => Some(Borrowed(n.as_str())),
        ClusterChoice::Header(h) => headers.get(h).and_then(|v| v.to_str().ok()).map(Borrowed),
        ClusterChoice::Plugin(p) => Some(Owned(p.cluster(headers))),
        ClusterChoice::Weighted(list, total, from) => {
            let value = match from {
                WeightedValue::Random => None,
                WeightedValue::Header(h) => header_number(headers, h),
                WeightedValue::HashPolicy => hash,
            };
            pick_weighted(list, *total, value.unwrap_or_else(|| rand::random_range(0..*total))).map(Borrowed)
        }
    }
}

/// A single-valued header holding an unsigned 64-bit number (Envoy's
/// `SimpleAtoi`: surrounding spaces and a leading `+` allowed).
fn header_number(headers: &HeaderMap, name: &http::HeaderName) -> Option<u64> {
    let mut values = headers.get_all(name).iter();
    let (Some(v), None) = (values.next(), values.next()) else { return None };
    let text = v.to_str().ok()?.trim_matches(|c: char| c.is_ascii_whitespace());
    text.strip_prefix('+').unwrap_or(text).parse().ok()
}

/// Envoy's pick among weighted clusters: `value` modulo the total falls in
/// one cluster's interval, `[0, w1)`, `[w1, w1 + w2)`, ...
fn pick_weighted(list: &[(String, u32)], total: u64, value: u64) -> Option<&str> {
    let mut x = value % total.max(1);
    list.iter()
        .find(|(_, w)| {
            if x < *w as u64 {
                true
            } else {
                x -= *w as u64;
                false
            }
        })
        .map(|(n, _)| n.as_str())
}

/// The request is the last attempt's host's now (for the access log and
/// the active-request count least-request balancing reads).
fn move_to_host(stream: &mut Stream, target: &Target, last: Arc<Host>) {
    if !Arc::ptr_eq(&last, &target.host) {
        target.host.rq_active.fetch_sub(1, Relaxed);
        last.rq_active.fetch_add(1, Relaxed);
        stream.upstream = Some((target.cluster.clone(), last, target.started));
    }
}

/// The retry policy the request is sent under, when its body can be sent
/// again: with a retry policy the body is buffered, up to the listener's
/// buffer limit (1 MiB by default); a larger one goes once, without retries.
fn resend_policy(
    parts: &Parts,
    body: &ProxyBody,
    retry: Option<Cow<'_, RetryPolicy>>,
    limit: u64,
) -> Option<RetryPolicy> {
    retry.filter(|_| body.fits(&parts.headers, limit)).map(Cow::into_owned)
}

/// Whether mirrors get a copy of the request: its body is buffered like a
/// retried one, and a body too large for that is not mirrored.
fn mirrored(parts: &Parts, body: &ProxyBody, mirrors: &[(Arc<Cluster>, bool)], limit: u64) -> bool {
    !mirrors.is_empty() && body.fits(&parts.headers, limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_picks_follow_envoys_intervals() {
        let list = vec![("stable".to_string(), 80), ("candidate".to_string(), 20)];
        assert_eq!(pick_weighted(&list, 100, 0), Some("stable"));
        assert_eq!(pick_weighted(&list, 100, 79), Some("stable"));
        assert_eq!(pick_weighted(&list, 100, 80), Some("candidate"));
        assert_eq!(pick_weighted(&list, 100, 199), Some("candidate"), "modulo the total");
        // A value on the candidate stays there as its weight grows (it is last).
        let later = vec![("stable".to_string(), 50), ("candidate".to_string(), 50)];
        assert!((0..1000u64)
            .all(|v| pick_weighted(&list, 100, v) != Some("candidate")
                || pick_weighted(&later, 100, v) == Some("candidate")));
    }

    #[test]
    fn the_random_value_header_is_one_unsigned_number() {
        let name = http::HeaderName::from_static("x-rv");
        let mut h = HeaderMap::new();
        assert_eq!(header_number(&h, &name), None);
        h.insert(&name, http::HeaderValue::from_static(" +42 "));
        assert_eq!(header_number(&h, &name), Some(42));
        h.append(&name, http::HeaderValue::from_static("7"));
        assert_eq!(header_number(&h, &name), None, "several values: none");
        h.insert(&name, http::HeaderValue::from_static("-1"));
        assert_eq!(header_number(&h, &name), None);
    }
}
