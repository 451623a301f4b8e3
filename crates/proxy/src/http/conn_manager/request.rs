//! The request path (Envoy's `ActiveStream::decodeHeaders`): one downstream
//! request from its head through the protocol checks, the connection
//! manager's headers, the route lookup, an upgrade's acceptance and the
//! HTTP filters, to the router (`crate::http::router`), its last filter.

use super::limits::Breach;
use super::path::PathAction;
use super::stream::Stream;
use super::{answered, step, ConnInfo, Found, Hcm, ProxyResponse, Step};
use crate::body::{ProxyBody, ReadError, RequestProgress};
use crate::http::filters::{RequestCtx, ResponseState, Verdict};
use crate::http::h1_framing::Refusal;
use http::header::{HeaderValue, IntoHeaderName};
use http::request::Parts;
use http::{Request, Version};
use hyper::body::Incoming;
use std::ops::ControlFlow::{Break, Continue};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

impl Hcm {
    /// Serves one request, step by step; a step that answers ends it. Never
    /// fails: every error becomes Envoy's local reply.
    pub async fn handle(self: Arc<Self>, conn: Arc<ConnInfo>, req: Request<Incoming>) -> ProxyResponse {
        // An HTTP/1.0 connection is used once unless the client asks to keep it.
        let http_10_close = req.version() == Version::HTTP_10
            && !req
                .headers()
                .get(http::header::CONNECTION)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"keep-alive"));
        let h1 = req.version() != Version::HTTP_2;
        let mut resp = self.clone().serve(conn.clone(), req).await;
        // The body broke Envoy's chunked framing (a chunk size not hex, or
        // too large): Envoy answers with its codec's 400, not the router's
        // failure, and closes. Over HTTP/1 the request is the connection's
        // latest one.
        let broken = || conn.refused.of(conn.requests.load(Relaxed)) == Some(Refusal::ChunkSize);
        if h1 && resp.status().is_server_error() && broken() {
            self.stats.downstream_cx_protocol_error.inc();
            codec_error(&mut resp, &self.server_name);
        }
        if http_10_close {
            resp.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }

    async fn serve(self: Arc<Self>, conn: Arc<ConnInfo>, req: Request<Incoming>) -> ProxyResponse {
        self.count_request(req.version());
        let (mut parts, body) = req.into_parts();
        let extended = read_extended_connect(&mut parts);
        let client = self.client_address(conn.remote, &parts.headers);
        let has_body = !http_body::Body::is_end_stream(&body);
        let overload = crate::common::overload::request_state();
        let stream = Stream::begin(self.clone(), conn, &parts, client, has_body, overload);
        // Envoy drops a new request under `stop_accepting_requests` as soon
        // as its headers are decoded, before any other check.
        if !overload.idle() && overload.stop_request() {
            self.stats.downstream_rq_overload_close.inc();
            return self.local_reply(stream, 503, "overload", "OM", Some("envoy overloaded".into()));
        }
        let stream = step!(self.reject_malformed(stream, &mut parts));
        let mut stream = step!(self.normalize_path(stream, &mut parts));
        self.strip_host_port(&mut stream, &mut parts);
        self.set_request_headers(&mut stream, &mut parts.headers);
        if self.always_set_request_id_in_response || parts.headers.contains_key(&crate::trace::X_ENVOY_FORCE_TRACE) {
            stream.response_request_id = parts.headers.get(&crate::trace::X_REQUEST_ID).cloned();
        }
        if !self.access_logs.is_empty() {
            stream.request_headers = Some(parts.headers.clone());
        }
        // The route is found before the filters run: they may read its
        // per-filter config, as Envoy's filters read the cached route.
        let table = self.routes.load_full();
        let mut found = table.as_deref().and_then(|t| {
            t.route(&stream.authority, &stream.path, &parts.headers, parts.method.as_str(), stream.conn.scheme())
        });
        if self.tracing.is_some() {
            self.start_trace(&mut stream, &mut parts.headers, found);
            if stream.response_request_id.is_some() {
                stream.response_request_id = parts.headers.get(&crate::trace::X_REQUEST_ID).cloned();
            }
        }
        let (stream, upgrade) = step!(self.accept_upgrade(stream, &mut parts, extended, found));
        let mut body = ProxyBody::stream(body);
        let (stream, body) = if self.filters.is_empty() {
            (stream, body)
        } else {
            let (stream, clear_route) = step!(self.run_filters(stream, &mut parts, &mut body, found).await);
            // A filter changed what routing reads (a script's headers): the
            // route is found again, as after Envoy's `clearRouteCache`.
            if clear_route {
                found = table.as_deref().and_then(|t| {
                    t.route(
                        &stream.authority,
                        &stream.path,
                        &parts.headers,
                        parts.method.as_str(),
                        stream.conn.scheme(),
                    )
                });
            }
            let body = self.filters.on_request_body(&stream.filter_state, body);
            match self.filters.buffer_limit() {
                // Boxed: reading a whole body allocates anyway; its state
                // stays out of every request's future.
                Some(limit) => step!(Box::pin(self.buffer_body(stream, body, limit)).await),
                None => (stream, body),
            }
        };
        let (stream, parts, matched, ra) = if self.filters.waits_on_response() {
            step!(Box::pin(self.route_request_through_filters(stream, parts, table.as_deref(), found)).await)
        } else {
            step!(self.route_request(stream, parts, table.as_deref(), found))
        };
        if !self.filters.waits_on_response() || stream.filter_state.carried.is_empty() {
            return answered(self.forward(stream, parts, body, matched, ra, upgrade).await);
        }
        // The router's own replies (503, 504 ...) go through the waiting
        // response hooks too; a proxied response has been through them.
        let carried = stream.filter_state.carried.clone();
        let resp = answered(self.forward(stream, parts, body, matched, ra, upgrade).await);
        if resp.extensions().get::<crate::http::filters::api::ResponseHooksRan>().is_some() {
            return resp;
        }
        Box::pin(self.reply_through_filters(resp, carried)).await
    }

    fn count_request(&self, version: Version) {
        let st = &self.stats;
        st.downstream_rq_total.inc();
        st.downstream_rq_active.inc();
        match version {
            Version::HTTP_2 => st.downstream_rq_http2_total.inc(),
            _ => st.downstream_rq_http1_total.inc(),
        }
    }

    /// Protocol errors Envoy answers itself, closing the connection.
    fn reject_malformed(&self, mut stream: Box<Stream>, parts: &mut Parts) -> Step<Box<Stream>> {
        let close = |mut r: ProxyResponse| {
            r.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            Break(r)
        };
        if parts.version == Version::HTTP_10 || parts.version == Version::HTTP_09 {
            if !self.accept_http_10 {
                let mut r = self.local_reply(stream, 426, "low_version", "", Some("Upgrade Required".into()));
                *r.version_mut() = Version::HTTP_11;
                return close(r);
            }
            // An HTTP/1.0 request without a host takes the configured one.
            if let Some(host) = self.default_host_for_http_10.as_ref().filter(|_| stream.authority.is_empty()) {
                stream.authority = host.to_str().unwrap_or_default().to_string();
                parts.headers.insert(http::header::HOST, host.clone());
            }
        }
        // A head Envoy's codec refuses (request smuggling's tools among
        // them: both content-length and transfer-encoding, two lengths, a
        // coding other than chunked), on any request of the connection.
        let refusal = match parts.version {
            Version::HTTP_2 => None,
            _ => stream.conn.refused.of(stream.conn.requests.load(Relaxed)).filter(|r| r.at_head()),
        };
        if let Some(r) = refusal {
            self.stats.downstream_cx_protocol_error.inc();
            return close(self.local_reply(stream, r.status(), r.details(), "DPE", Some(r.reason().into())));
        }
        if let Err(breach) = self.header_limits.check(parts) {
            if parts.version == Version::HTTP_2 {
                // Envoy's HTTP/2 codec resets the stream; nothing is answered.
                return Break(self.reset_stream(stream, breach));
            }
            self.stats.downstream_cx_protocol_error.inc();
            let (status, details, body) = match breach {
                Breach::TooLarge | Breach::TooMany => {
                    (431, "http1.headers_too_large", "Request Header Fields Too Large")
                }
                Breach::Underscore => (400, "http1.unexpected_underscore", "Bad Request"),
            };
            return close(self.local_reply(stream, status, details, "DPE", Some(body.into())));
        }
        if parts.version != Version::HTTP_2 && stream.authority.is_empty() {
            return close(self.local_reply(stream, 400, "missing_host_header", "", None));
        }
        Continue(stream)
    }

    /// The path options, before routing: the path routes match and the
    /// upstream gets, or Envoy's 400 or 307.
    fn normalize_path(&self, mut stream: Box<Stream>, parts: &mut Parts) -> Step<Box<Stream>> {
        if !self.path_options.active() || parts.method == http::Method::CONNECT {
            return Continue(stream);
        }
        let details = "path_normalization_failed";
        match self.path_options.apply(&stream.path, stream.grpc) {
            PathAction::Continue(None) => Continue(stream),
            PathAction::Continue(Some(p)) => {
                let mut uri = http::uri::Builder::new();
                if let (Some(scheme), Some(authority)) = (parts.uri.scheme(), parts.uri.authority()) {
                    uri = uri.scheme(scheme.clone()).authority(authority.clone());
                }
                if let Ok(u) = uri.path_and_query(p.as_str()).build() {
                    parts.uri = u;
                }
                stream.path = p;
                Continue(stream)
            }
            PathAction::Reject => {
                self.stats.downstream_rq_failed_path_normalization.inc();
                Break(self.local_reply(stream, 400, details, "", None))
            }
            PathAction::Redirect(p) => {
                self.stats.downstream_rq_redirected_with_normalized_path.inc();
                let mut r = self.local_reply(stream, 307, details, "", None);
                if let Ok(v) = HeaderValue::from_str(&p) {
                    r.headers_mut().insert(http::header::LOCATION, v);
                }
                Break(r)
            }
        }
    }

    /// The HTTP filters before the router. A filter may answer the request,
    /// or give it a new path; one may read (part of) the body first.
    async fn run_filters(
        &self,
        mut stream: Box<Stream>,
        parts: &mut Parts,
        body: &mut ProxyBody,
        found: Found<'_>,
    ) -> Step<(Box<Stream>, bool)> {
        let mut state = ResponseState::default();
        let route_cluster = found.and_then(|(_, r)| named_cluster(r));
        let (verdict, new_path, clear_route) = {
            let conn = &*stream.conn;
            let mut rq = RequestCtx {
                headers: &mut parts.headers,
                method: &parts.method,
                version: parts.version,
                pseudo: crate::common::matcher::Pseudo {
                    method: parts.method.as_str(),
                    path: &stream.path,
                    authority: &stream.authority,
                    scheme: conn.scheme(),
                },
                protocol: stream.protocol,
                body,
                peer: conn.remote,
                client: stream.client,
                direct_remote: conn.remote.ip(),
                remote: stream.client.ip(),
                local: conn.local,
                tls: conn.tls.as_deref(),
                sni: conn.sni.as_deref().unwrap_or(""),
                route: [found.map(|(_, r)| &r.per_filter), found.map(|(vh, _)| &vh.per_filter)],
                new_path: None,
                new_authority: None,
                route_cluster,
                read_body: None,
                buffer_limit: self.buffer_limit,
                clear_route_cache: false,
            };
            let want = if http_body::Body::is_end_stream(&*rq.body) || rq.headers.contains_key(http::header::UPGRADE) {
                None
            } else {
                self.filters.request_body(&rq)
            };
            if let Some(want) = want {
                let whole = std::mem::replace(&mut *rq.body, ProxyBody::Empty);
                match crate::body::read_prefix(whole, want.max, want.partial).await {
                    Ok((read, rest)) => {
                        rq.read_body = Some(read);
                        *rq.body = rest;
                    }
                    Err(e) => {
                        drop(rq);
                        return Break(self.body_read_failed(stream, e));
                    }
                }
            }
            let v = self.filters.on_request(&mut rq, &mut state).await;
            (v, (rq.new_path, rq.new_authority), rq.clear_route_cache)
        };
        let (new_path, new_authority) = new_path;
        if let Some(a) = new_authority {
            stream.authority = a;
        }
        // The route stays the one found for the original path, as Envoy
        // keeps its cached route unless a filter clears it.
        if let Some(p) = new_path {
            stream.path = p;
        }
        // A filter's reply goes through the response hooks that wait, as
        // Envoy's encoder filters see a local reply.
        let carried = match verdict {
            Verdict::Continue => Vec::new(),
            _ => std::mem::take(&mut state.carried),
        };
        stream.filter_state = state;
        match self.filter_verdict(stream, verdict) {
            Break(resp) if !carried.is_empty() => Break(Box::pin(self.reply_through_filters(resp, carried)).await),
            Break(resp) => Break(resp),
            Continue(stream) => Continue((stream, clear_route)),
        }
    }

    /// The router's first step when response hooks wait: a direct
    /// response, redirect or 404 goes through them, as through Envoy's
    /// encoder filters.
    async fn route_request_through_filters<'t>(
        &self,
        mut stream: Box<Stream>,
        parts: Parts,
        table: Option<&'t crate::http::route::RouteTable>,
        found: Found<'t>,
    ) -> Step<(Box<Stream>, Parts, super::Matched<'t>, &'t crate::http::route::RouteAction)> {
        let carried = std::mem::take(&mut stream.filter_state.carried);
        match self.route_request(stream, parts, table, found) {
            Continue((mut stream, parts, matched, ra)) => {
                stream.filter_state.carried = carried;
                Continue((stream, parts, matched, ra))
            }
            Break(resp) if carried.is_empty() => Break(resp),
            Break(resp) => Break(self.reply_through_filters(resp, carried).await),
        }
    }

    /// A filter's local reply through the filters' waiting response hooks.
    async fn reply_through_filters(
        &self,
        resp: ProxyResponse,
        carried: Vec<Arc<dyn std::any::Any + Send + Sync>>,
    ) -> ProxyResponse {
        let mut state = ResponseState { carried, ..ResponseState::default() };
        let (parts, mut tracked) = resp.into_parts();
        let mut resp = http::Response::from_parts(parts, std::mem::replace(tracked.inner_mut(), ProxyBody::Empty));
        self.filters.on_response_wait(&mut state, &mut resp).await;
        let (parts, body) = resp.into_parts();
        *tracked.inner_mut() = body;
        http::Response::from_parts(parts, tracked)
    }

    /// A body a filter had to read whole was too large (413) or cut off.
    fn body_read_failed(&self, stream: Box<Stream>, e: ReadError) -> ProxyResponse {
        match e {
            ReadError::TooLarge => {
                self.stats.downstream_rq_too_large.inc();
                let body = Some("Payload Too Large".into());
                self.local_reply(stream, 413, "request_payload_too_large", "", body)
            }
            ReadError::Disconnected => self.local_reply(stream, 400, "downstream_remote_disconnect", "", None),
        }
    }

    /// Goes on, or answers as the filter asked.
    fn filter_verdict(&self, stream: Box<Stream>, verdict: Verdict) -> Step<Box<Stream>> {
        Break(match verdict {
            Verdict::Continue => return Continue(stream),
            Verdict::Respond(status, headers) => {
                with_headers(self.local_reply(stream, status, "health_check", "", None), headers)
            }
            Verdict::Abort { status, body, flag } => {
                self.local_reply(stream, status, "fault_filter_abort", flag, Some(body.into()))
            }
            Verdict::Limited { status, headers } => {
                let body = Some("local_rate_limited".into());
                with_headers(self.local_reply(stream, status, "local_rate_limited", "RL", body), headers)
            }
            Verdict::Local { status, headers, body, details } => {
                let body = body.map(|b| String::from_utf8_lossy(&b).into_owned());
                let mut r = self.local_reply(stream, status, details, "", body);
                let mut seen = Vec::new();
                for (k, v) in headers {
                    // The script's headers replace the reply's own; a name
                    // given twice keeps both values.
                    if seen.contains(&k) {
                        r.headers_mut().append(k, v);
                    } else {
                        seen.push(k.clone());
                        r.headers_mut().insert(k, v);
                    }
                }
                r
            }
            Verdict::Reply { status, body, details, flag, headers } => {
                let body = (!body.is_empty()).then(|| body.to_string());
                with_headers(self.local_reply(stream, status, details, flag, body), headers)
            }
            Verdict::Serve(resp) => self.served_reply(stream, resp, "cache_response"),
            Verdict::Denied { status, body, details, headers } => {
                let body = (!body.is_empty()).then_some(body);
                denied_headers(self.local_reply(stream, status, details, "UAEX", body), headers)
            }
        })
    }

    /// The buffer filter: the whole body is read before the request goes
    /// on; over the limit Envoy answers 413.
    async fn buffer_body(
        &self,
        mut stream: Box<Stream>,
        body: ProxyBody,
        limit: u64,
    ) -> Step<(Box<Stream>, ProxyBody)> {
        match body.read_whole(Some(limit)).await {
            Ok(bytes) => {
                stream.request_progress = Some(Arc::new(RequestProgress::whole(bytes.len() as u64)));
                Continue((stream, ProxyBody::full(bytes)))
            }
            Err(ReadError::TooLarge) => {
                self.stats.downstream_rq_too_large.inc();
                let body = Some("Payload Too Large".into());
                Break(self.local_reply(stream, 413, "request_payload_too_large", "", body))
            }
            Err(ReadError::Disconnected) => {
                Break(self.local_reply(stream, 400, "downstream_remote_disconnect", "", None))
            }
        }
    }
}

/// Extended CONNECT (`:protocol`, offered only with allow_connect) is read
/// as the HTTP/1.1 upgrade it stands for, as Envoy's HTTP/2 codec does: GET
/// with `upgrade: <protocol>` and `connection: upgrade`. Says whether the
/// request was one.
fn read_extended_connect(parts: &mut Parts) -> bool {
    let extended = parts.method == http::Method::CONNECT
        && parts.extensions.get::<hyper::ext::Protocol>().is_some_and(|p| match HeaderValue::from_str(p.as_str()) {
            Ok(v) => {
                parts.headers.insert(http::header::UPGRADE, v);
                true
            }
            Err(_) => false,
        });
    if extended {
        parts.method = http::Method::GET;
        parts.headers.insert(http::header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    extended
}

/// The cluster a route names outright.
fn named_cluster(r: &crate::http::route::Route) -> Option<&str> {
    use crate::http::route::{Action, ClusterChoice};
    match &r.action {
        Action::Forward(a) => match &a.cluster {
            ClusterChoice::Name(n) => Some(n.as_str()),
            _ => None,
        },
        _ => None,
    }
}

/// A filter's reply with the headers it asked for.
/// A denial's headers as Envoy's local reply writes them: the service's
/// first, in its order (its `content-length` given the reply's length),
/// then the reply's length and `content-type` where the service gave none,
/// then the rest of the reply's.
fn denied_headers(mut r: ProxyResponse, headers: Vec<(http::HeaderName, HeaderValue)>) -> ProxyResponse {
    use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
    let mut own = std::mem::take(r.headers_mut());
    let mut out = http::HeaderMap::with_capacity(own.len() + headers.len());
    let length = own.remove(CONTENT_LENGTH);
    for (k, _) in &headers {
        own.remove(k);
    }
    for (k, v) in headers {
        let v = if k == CONTENT_LENGTH { length.clone().unwrap_or(v) } else { v };
        out.append(k, v);
    }
    if let Some(l) = length.filter(|_| !out.contains_key(CONTENT_LENGTH)) {
        out.insert(CONTENT_LENGTH, l);
    }
    if let Some(t) = own.remove(CONTENT_TYPE).filter(|_| !out.contains_key(CONTENT_TYPE)) {
        out.insert(CONTENT_TYPE, t);
    }
    for (k, v) in own.drain().filter_map(|(k, v)| k.map(|k| (k, v))) {
        out.append(k, v);
    }
    *r.headers_mut() = out;
    r
}

fn with_headers<K: IntoHeaderName>(mut r: ProxyResponse, headers: Vec<(K, HeaderValue)>) -> ProxyResponse {
    for (k, v) in headers {
        r.headers_mut().insert(k, v);
    }
    r
}

/// `resp` made Envoy's answer to a request its codec refused after the
/// head: 400 `Bad Request` in `text/plain`, the connection closed.
fn codec_error(resp: &mut ProxyResponse, server: &HeaderValue) {
    let reason = Refusal::ChunkSize.reason();
    *resp.status_mut() = http::StatusCode::BAD_REQUEST;
    let h = resp.headers_mut();
    h.clear();
    h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(reason.len()));
    h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    h.insert(http::header::SERVER, server.clone());
    h.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    *resp.body_mut().inner_mut() = crate::body::ProxyBody::full(reason);
}
