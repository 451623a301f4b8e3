//! The request path (Envoy's `ActiveStream::decodeHeaders`): one downstream
//! request from its head through the protocol checks, the connection
//! manager's headers, the route lookup, an upgrade's acceptance and the
//! HTTP filters, to the router (`crate::http::router`), its last filter.

use super::stream::Stream;
use super::{answered, step, ConnInfo, Found, Hcm, ProxyResponse, Step};
use crate::body::{ProxyBody, ReadError, RequestProgress};
use crate::http::filters::{RequestCtx, ResponseState, Verdict};
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
        let mut resp = self.serve(conn, req).await;
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
        let stream = Stream::begin(self.clone(), conn, &parts, client, has_body);
        let mut stream = step!(self.reject_malformed(stream, &mut parts));
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
        let found = table.as_deref().and_then(|t| {
            t.route(&stream.authority, &stream.path, &parts.headers, parts.method.as_str(), stream.conn.scheme())
        });
        if self.tracing.is_some() {
            self.start_trace(&mut stream, &mut parts.headers, found);
            if stream.response_request_id.is_some() {
                stream.response_request_id = parts.headers.get(&crate::trace::X_REQUEST_ID).cloned();
            }
        }
        let (stream, upgrade) = step!(self.accept_upgrade(stream, &mut parts, extended, found));
        let body = ProxyBody::stream(body);
        let (stream, body) = if self.filters.is_empty() {
            (stream, body)
        } else {
            let stream = step!(self.run_filters(stream, &mut parts, found).await);
            let body = self.filters.on_request_body(&stream.filter_state, body);
            match self.filters.buffer_limit() {
                // Boxed: reading a whole body allocates anyway; its state
                // stays out of every request's future.
                Some(limit) => step!(Box::pin(self.buffer_body(stream, body, limit)).await),
                None => (stream, body),
            }
        };
        let (stream, parts, matched, ra) = step!(self.route_request(stream, parts, table.as_deref(), found));
        answered(self.forward(stream, parts, body, matched, ra, upgrade).await)
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
        // Both content-length and transfer-encoding (request smuggling's
        // tool): Envoy refuses the request as a codec error.
        if stream.conn.length_conflict.load(Relaxed) && stream.conn.requests.load(Relaxed) == 1 {
            self.stats.downstream_cx_protocol_error.inc();
            let details = "http1.content_length_and_chunked_not_allowed";
            return close(self.local_reply(stream, 400, details, "DPE", Some("Bad Request".into())));
        }
        if parts.version != Version::HTTP_2 && stream.authority.is_empty() {
            return close(self.local_reply(stream, 400, "missing_host_header", "", None));
        }
        Continue(stream)
    }

    /// The HTTP filters before the router. A filter may answer the request,
    /// or give it a new path.
    async fn run_filters(&self, mut stream: Box<Stream>, parts: &mut Parts, found: Found<'_>) -> Step<Box<Stream>> {
        let mut state = ResponseState::default();
        let (verdict, new_path) = {
            let conn = &*stream.conn;
            let mut rq = RequestCtx {
                headers: &mut parts.headers,
                method: &parts.method,
                pseudo: crate::common::matcher::Pseudo {
                    method: parts.method.as_str(),
                    path: &stream.path,
                    authority: &stream.authority,
                    scheme: conn.scheme(),
                },
                direct_remote: conn.remote.ip(),
                remote: stream.client.ip(),
                local: conn.local,
                tls: conn.tls.as_deref(),
                sni: conn.sni.as_deref().unwrap_or(""),
                route: [found.map(|(_, r)| &r.per_filter), found.map(|(vh, _)| &vh.per_filter)],
                new_path: None,
                cluster: found.and_then(|(_, r)| named_cluster(r)),
                version: parts.version,
            };
            let v = self.filters.on_request(&mut rq, &mut state).await;
            (v, rq.new_path)
        };
        // The route stays the one found for the original path, as Envoy
        // keeps its cached route unless a filter clears it.
        if let Some(p) = new_path {
            stream.path = p;
        }
        stream.filter_state = state;
        self.filter_verdict(stream, verdict)
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
            Verdict::Reply { status, body, details, flag, headers } => {
                let body = (!body.is_empty()).then(|| body.to_string());
                with_headers(self.local_reply(stream, status, details, flag, body), headers)
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
fn with_headers<K: IntoHeaderName>(mut r: ProxyResponse, headers: Vec<(K, HeaderValue)>) -> ProxyResponse {
    for (k, v) in headers {
        r.headers_mut().insert(k, v);
    }
    r
}
