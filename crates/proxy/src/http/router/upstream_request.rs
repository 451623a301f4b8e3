//! The upstream request built from the downstream one (Envoy's
//! `UpstreamRequest` and `FilterUtility::finalTimeout`): hop-by-hop headers
//! out, path and host rewrites, the timeouts and retries an internal
//! caller asks for, `x-envoy-expected-rq-timeout-ms`, the route levels'
//! request header mutations, the URI.

use super::retry::{
    expected_timeout_ms, RetryPolicy, RETRY_REQUEST_HEADERS, X_ENVOY_ATTEMPT_COUNT, X_ENVOY_EXPECTED_TIMEOUT,
};
use crate::body::RequestProgress;
use crate::http::conn_manager::headers::{apply_levels, strip_hop_by_hop};
use crate::http::conn_manager::stream::Stream;
use crate::http::conn_manager::{Hcm, Matched};
use crate::http::route::{stream_timeouts, HostRewrite, RouteAction};
use crate::upstream::cluster::Cluster;
use crate::upstream::host::Host;
use http::header::{HeaderName, HeaderValue, EXPECT, HOST};
use http::request::Parts;
use http::HeaderMap;
use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

static X_ENVOY_ORIGINAL_PATH: HeaderName = HeaderName::from_static("x-envoy-original-path");
static X_ENVOY_ORIGINAL_HOST: HeaderName = HeaderName::from_static("x-envoy-original-host");
static X_ENVOY_UPSTREAM_RQ_TIMEOUT: HeaderName = HeaderName::from_static("x-envoy-upstream-rq-timeout-ms");
static X_ENVOY_PER_TRY_TIMEOUT: HeaderName = HeaderName::from_static("x-envoy-upstream-rq-per-try-timeout-ms");

/// What building the upstream request settled besides its head.
pub(super) struct Prepared<'r> {
    /// The `host` / `:authority` the request carries upstream.
    pub(super) authority: String,
    /// The path after the route's rewrite, when it rewrites it.
    pub(super) new_path: Option<String>,
    pub(super) route_timeout: Option<Duration>,
    pub(super) retry: Option<Cow<'r, RetryPolicy>>,
    /// The stream's duration limit under the route's `max_stream_duration`.
    pub(super) stream_limit: Option<Duration>,
    /// The route writes each attempt's expected timeout into `grpc-timeout`.
    pub(super) grpc_timeout_header: bool,
}

/// Where one request goes upstream, from the moment it is counted there.
pub(super) struct Target {
    pub(super) cluster: Arc<Cluster>,
    pub(super) host: Arc<Host>,
    /// The `host` / `:authority` the request carries upstream.
    pub(super) authority: String,
    /// When the upstream request began.
    pub(super) started: Instant,
    /// How far the downstream request body has arrived.
    pub(super) request_done: Arc<RequestProgress>,
}

impl Hcm {
    /// Turns the downstream request's head into the upstream one for
    /// `host` of `cluster`. `None` when the result is no valid URI.
    pub(super) fn prepare_request<'r>(
        &self,
        stream: &Stream,
        parts: &mut Parts,
        matched: Matched<'r>,
        ra: &'r RouteAction,
        cluster: &Cluster,
        host: &Host,
    ) -> Option<Prepared<'r>> {
        let (table, vh, route) = matched;
        strip_hop_by_hop(&mut parts.headers);
        // `Expect: 100-continue` is the proxy's to answer (hyper sends the
        // 100 as the body is first read), not the upstream's: Envoy drops it.
        if parts.headers.get(EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue")) {
            parts.headers.remove(EXPECT);
        }
        let new_path = route.rewrite_path(ra, &stream.path);
        if new_path.is_some() {
            original_path(stream, &mut parts.headers);
        }
        let authority = upstream_authority(stream, &mut parts.headers, ra, host);
        if vh.attempt_count_upstream {
            parts.headers.insert(X_ENVOY_ATTEMPT_COUNT.clone(), HeaderValue::from_static("1"));
        }
        let timeouts = &ra.stream_timeouts;
        let grpc = stream_timeouts::is_grpc(&parts.headers);
        let stream_limit = timeouts.stream_limit(&parts.headers);
        timeouts.set_stream_grpc_timeout(&mut parts.headers, stream_limit, grpc);
        let configured = timeouts.route_timeout(ra.timeout, &parts.headers, grpc);
        let (route_timeout, retry) = if stream.internal {
            internal_overrides(&mut parts.headers, configured, ra)
        } else {
            (configured, ra.retry.as_ref().map(Cow::Borrowed))
        };
        let per_try = retry.as_ref().and_then(|p| p.per_try_timeout);
        let grpc_timeout_header = timeouts.rewrites_grpc_timeout(grpc);
        if let Some(ms) = expected_timeout_ms(route_timeout, per_try, Duration::ZERO) {
            if !self.suppress_envoy_headers() {
                parts.headers.insert(X_ENVOY_EXPECTED_TIMEOUT.clone(), HeaderValue::from(ms));
            }
            if grpc_timeout_header {
                stream_timeouts::set_grpc_timeout(&mut parts.headers, Duration::from_millis(ms));
            }
        }
        {
            // Values may read the request's own headers (%REQ(...)%): a
            // snapshot is taken only when some level has mutations.
            let levels = [&route.request_headers, &vh.request_headers, &table.request_headers];
            let snapshot = if levels.iter().all(|l| l.is_empty()) { None } else { Some(parts.headers.clone()) };
            let ctx = stream.context(snapshot.as_ref());
            apply_levels(levels, table.most_specific_wins, &mut parts.headers, &ctx);
        }
        // As Envoy's `finalizeRequestHeaders`: `path_rewrite` is rendered
        // after the header mutations, on the headers they leave; an empty
        // result leaves the path as it was.
        let new_path = match &ra.path_rewrite {
            Some(format) => {
                let path = format.render_string(&stream.context(Some(&parts.headers)));
                if path.is_empty() {
                    new_path
                } else {
                    original_path(stream, &mut parts.headers);
                    Some(format!("{path}{}", crate::http::route::split_query(&stream.path).1))
                }
            }
            None => new_path,
        };
        let upstream_path = new_path.as_deref().unwrap_or(&stream.path);
        if !set_uri(parts, cluster.http2, &authority, upstream_path) {
            return None;
        }
        Some(Prepared { authority, new_path, route_timeout, retry, stream_limit, grpc_timeout_header })
    }
}

/// `x-envoy-original-path`: the request's path before a rewrite.
fn original_path(stream: &Stream, headers: &mut HeaderMap) {
    if let Ok(v) = HeaderValue::from_str(&stream.path) {
        headers.insert(X_ENVOY_ORIGINAL_PATH.clone(), v);
    }
}

/// The `host` / `:authority` for upstream: the route's host rewrite, the
/// host's own name (`auto_host_rewrite`), or the request's. A changed one
/// keeps the request's in `x-envoy-original-host`, and with
/// `append_x_forwarded_host` at the end of `x-forwarded-host` (Envoy's
/// `updateAuthority`).
fn upstream_authority(stream: &Stream, headers: &mut HeaderMap, ra: &RouteAction, host: &Host) -> String {
    let rewritten = match &ra.host_rewrite {
        Some(HostRewrite::Literal(h)) => Some(h.clone()),
        Some(HostRewrite::Header(name)) => {
            headers.get(name).and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty()).map(str::to_string)
        }
        Some(HostRewrite::PathRegex(re, with)) => {
            Some(re.replace_all(crate::http::route::split_query(&stream.path).0, with.as_str()).into_owned())
        }
        // As Envoy: the host's name as it is; a host without one (an IP
        // endpoint without `hostname`) leaves the request's.
        None if ra.auto_host_rewrite && !host.hostname.is_empty() => Some(host.hostname.clone()),
        None => None,
    };
    let Some(authority) = rewritten else { return stream.authority.clone() };
    if ra.append_x_forwarded_host && !stream.authority.is_empty() {
        append_forwarded_host(headers, &stream.authority);
    }
    if authority != stream.authority {
        if let Ok(v) = HeaderValue::from_str(&stream.authority) {
            headers.insert(X_ENVOY_ORIGINAL_HOST.clone(), v);
        }
    }
    authority
}

/// `host` added to `x-forwarded-host`, comma-separated after what it holds.
fn append_forwarded_host(headers: &mut HeaderMap, host: &str) {
    static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
    let joined = match headers.get(&X_FORWARDED_HOST).and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty()) {
        Some(before) => format!("{before},{host}"),
        None => host.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&joined) {
        headers.insert(X_FORWARDED_HOST.clone(), v);
    }
}

/// An internal caller's x-envoy-* headers shape this request's timeouts
/// and retries: the route timeout and retry policy they leave. The router
/// consumes them.
fn internal_overrides<'r>(
    headers: &mut HeaderMap,
    configured: Option<Duration>,
    ra: &'r RouteAction,
) -> (Option<Duration>, Option<Cow<'r, RetryPolicy>>) {
    let mut route_timeout = configured;
    let mut retry_policy = ra.retry.as_ref().map(Cow::Borrowed);
    let ms = |h: &HeaderName| headers.get(h).and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    if let Some(ms) = ms(&X_ENVOY_UPSTREAM_RQ_TIMEOUT) {
        route_timeout = (ms > 0).then(|| Duration::from_millis(ms));
    }
    let per_try = ms(&X_ENVOY_PER_TRY_TIMEOUT);
    let asks_retry = [
        "x-envoy-retry-on",
        "x-envoy-retry-grpc-on",
        "x-envoy-retriable-status-codes",
        "x-envoy-retriable-header-names",
    ]
    .iter()
    .any(|h| headers.contains_key(*h));
    if asks_retry || per_try.is_some() {
        let mut p = ra.retry.clone().unwrap_or_else(RetryPolicy::default_for_headers);
        p.merge_request_headers(headers);
        if let Some(ms) = per_try {
            p.per_try_timeout = (ms > 0).then(|| Duration::from_millis(ms));
        }
        retry_policy = Some(Cow::Owned(p));
    }
    headers.remove(&X_ENVOY_UPSTREAM_RQ_TIMEOUT);
    for h in RETRY_REQUEST_HEADERS {
        headers.remove(*h);
    }
    (route_timeout, retry_policy)
}

/// The upstream URI: absolute for an HTTP/2 cluster (no `host` header),
/// the path alone with `host` for HTTP/1. False when it is no valid URI.
fn set_uri(parts: &mut Parts, http2: bool, authority: &str, upstream_path: &str) -> bool {
    // A CONNECT's target replaces this path (see `forward_upgrade`).
    let request_path = if upstream_path.is_empty() { "/" } else { upstream_path };
    let uri = if http2 {
        parts.headers.remove(HOST);
        format!("http://{authority}{request_path}")
    } else {
        if let Ok(v) = HeaderValue::from_str(authority) {
            parts.headers.insert(HOST, v);
        }
        request_path.to_string()
    };
    match uri.parse() {
        Ok(u) => {
            parts.uri = u;
            true
        }
        Err(_) => false,
    }
}
