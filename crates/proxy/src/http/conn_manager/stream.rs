//! One request's state from its headers to the last byte of its response
//! (Envoy's `ActiveStream`), and what is recorded when it ends: the
//! connection manager's and the upstream's stats, and the access log.

use super::{ConnInfo, Hcm};
use crate::body::{Finish, RequestProgress};
use crate::common::format::Context;
use crate::upstream::cluster::Cluster;
use crate::upstream::host::Host;
use http::HeaderMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// State kept from request to the end of its response, for stats and the
/// access log. Allocated once per request (one Box), only then.
pub(in crate::http) struct Stream {
    pub(in crate::http) hcm: Arc<Hcm>,
    pub(in crate::http) conn: Arc<ConnInfo>,
    pub(in crate::http) start: Instant,
    pub(in crate::http) start_time: SystemTime,
    pub(in crate::http) method: http::Method,
    pub(in crate::http) path: String,
    pub(in crate::http) authority: String,
    pub(in crate::http) protocol: &'static str,
    /// The request headers as received, kept only when something logs them.
    pub(in crate::http) request_headers: Option<HeaderMap>,
    pub(in crate::http) response_headers: Option<HeaderMap>,
    pub(in crate::http) status: u16,
    pub(in crate::http) flags: &'static str,
    pub(in crate::http) details: &'static str,
    pub(in crate::http) bytes_received: u64,
    /// The proxied request body's progress, read for `bytes_received` when
    /// the stream ends.
    pub(in crate::http) request_progress: Option<Arc<RequestProgress>>,
    /// The request has a body (it did not end with its headers).
    pub(in crate::http) has_body: bool,
    /// The request is gRPC (by its content type as it arrived): local
    /// replies to it are trailers-only gRPC answers.
    pub(in crate::http) grpc: bool,
    /// The cluster's `max_requests` slot, held until the response ends.
    pub(in crate::http) rq_slot: crate::upstream::pool::Held,
    pub(in crate::http) client: SocketAddr,
    pub(in crate::http) local: SocketAddr,
    pub(in crate::http) upstream: Option<(Arc<Cluster>, Arc<Host>, Instant)>,
    /// The cluster the route chose, even when no host could be picked.
    pub(in crate::http) cluster: Option<Arc<Cluster>>,
    pub(in crate::http) route_name: String,
    /// What the request filters left for the response (CORS headers).
    pub(in crate::http) filter_state: crate::http::filters::ResponseState,
    /// From an internal address (`internal_address_config`): its
    /// `x-envoy-*` retry and timeout headers are honoured.
    pub(in crate::http) internal: bool,
    /// The stream was accepted as an upgrade (counted in
    /// `downstream_cx_upgrades_active` until it ends).
    pub(in crate::http) upgraded: bool,
    /// The request asked for an upgrade: an HTTP/1 response that does not
    /// switch protocols closes the connection, as Envoy's codec does (what
    /// follows the head may be the other protocol's bytes).
    pub(in crate::http) upgrade_requested: bool,
    /// The request id to send back (`always_set_request_id_in_response`, or
    /// a request that forced its trace with `x-envoy-force-trace`).
    pub(in crate::http) response_request_id: Option<http::HeaderValue>,
    /// The stream's spans, when its connection manager traces.
    pub(in crate::http) trace: Option<Box<super::stream_trace::StreamTrace>>,
    /// A cookie the route's hash policy generated (a cookie policy with a
    /// `ttl` and no cookie in the request): set on the upstream's response.
    pub(in crate::http) set_cookie: Option<http::HeaderValue>,
    /// The virtual cluster the router counts the request in, when its
    /// virtual host has `virtual_clusters`.
    pub(in crate::http) charged: crate::http::route::virtual_cluster::Charged,
}

impl Stream {
    /// A stream begins on `conn` (counted there) for a request with these
    /// parts, from `client`.
    pub(super) fn begin(
        hcm: Arc<Hcm>,
        conn: Arc<ConnInfo>,
        parts: &http::request::Parts,
        client: SocketAddr,
        has_body: bool,
        overload: crate::common::overload::RequestState,
    ) -> Box<Self> {
        let authority = parts
            .uri
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| parts.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()).map(str::to_owned))
            .unwrap_or_default();
        // A CONNECT (authority form) has no path, as in Envoy.
        let no_path = if parts.method == http::Method::CONNECT { "" } else { "/" };
        let path = parts.uri.path_and_query().map_or(no_path, |p| p.as_str()).to_string();
        conn.active_streams.fetch_add(1, Relaxed);
        // Marked before the request is counted: a hot restart drain reads
        // a counted request without the mark as HTTP/1.
        if parts.version == http::Version::HTTP_2 {
            conn.http2.store(true, Relaxed);
        }
        let served = conn.requests.fetch_add(1, Relaxed) + 1;
        // As Envoy: the request that reaches the limit drains the
        // connection (HTTP/1: `connection: close` on its response; HTTP/2:
        // GOAWAY), and each request at or past it is counted.
        let max_reached = hcm.max_requests_per_connection.is_some_and(|max| served >= max);
        if max_reached {
            hcm.stats.downstream_cx_max_requests_reached.inc();
        }
        // The overload manager's `disable_http_keepalive` drains the
        // connection the same way, counted once a connection as Envoy does.
        let overload = !overload.idle() && overload.disable_keepalive() && !conn.draining.load(Relaxed);
        if overload {
            hcm.stats.downstream_cx_overload_disable_keepalive.inc();
        }
        if max_reached || overload {
            conn.draining.store(true, Relaxed);
            if parts.version == http::Version::HTTP_2 {
                conn.close_asked.notify_one();
            }
        }
        let local = conn.local;
        Box::new(Stream {
            hcm,
            conn,
            start: Instant::now(),
            start_time: SystemTime::now(),
            method: parts.method.clone(),
            path,
            authority,
            protocol: protocol_name(parts.version),
            request_headers: None,
            response_headers: None,
            status: 0,
            flags: "",
            details: "",
            bytes_received: 0,
            request_progress: None,
            has_body,
            grpc: crate::http::grpc::grpc_content_type(&parts.headers),
            rq_slot: Default::default(),
            client,
            local,
            upstream: None,
            cluster: None,
            route_name: String::new(),
            filter_state: Default::default(),
            internal: false,
            upgraded: false,
            upgrade_requested: false,
            set_cookie: None,
            charged: Default::default(),
            response_request_id: None,
            trace: None,
        })
    }

    /// What header formatters (`%REQ(...)%`, `%UPSTREAM_HOST%` ...) read of
    /// this stream; `req` stands for the request headers when given.
    pub(in crate::http) fn context<'a>(&'a self, req: Option<&'a HeaderMap>) -> Context<'a> {
        Context {
            request: req.or(self.request_headers.as_ref()),
            method: self.method.as_str(),
            path: &self.path,
            authority: &self.authority,
            protocol: self.protocol,
            downstream_remote: Some(self.client),
            downstream_local: Some(self.local),
            upstream_host: self.upstream.as_ref().map(|u| u.1.addr),
            upstream_hostname: self.upstream.as_ref().map_or("", |u| u.1.hostname.as_str()),
            upstream_pipe: self.upstream.as_ref().and_then(|u| u.1.pipe.as_deref()).map_or("", |p| p.as_str()),
            upstream_metadata: self.upstream.as_ref().and_then(|u| u.1.metadata.as_deref()),
            upstream_cluster: self.cluster.as_ref().map_or("", |c| c.name.as_str()),
            start_time: Some(self.start_time),
            route_name: &self.route_name,
            ..Default::default()
        }
    }

    /// The stream's end in the connection's, the connection manager's and
    /// the upstream's counters.
    fn record_stats(&self, elapsed: Duration) {
        if self.conn.active_streams.fetch_sub(1, Relaxed) == 1 {
            self.conn.idle.notify_one();
        }
        let s = &self.hcm.stats;
        if self.upgraded {
            s.downstream_cx_upgrades_active.dec();
        }
        s.downstream_rq_active.dec();
        s.downstream_rq_completed.inc();
        s.downstream_rq_class.record(self.status);
        s.downstream_rq_time.record(elapsed.as_secs_f64() * 1000.0);
    }

    /// The upstream request's end in its cluster's and host's counters.
    fn record_upstream(&self, complete: bool) {
        let Some((cluster, host, started)) = &self.upstream else { return };
        let cs = &cluster.stats;
        cs.upstream_rq_active.dec();
        if self.hcm.dynamic_stats() {
            cs.upstream_rq_completed.inc();
            cs.upstream_rq_time.record(started.elapsed().as_secs_f64() * 1000.0);
            // Envoy times a virtual cluster's request only when the
            // upstream's response ended.
            if complete && self.details == "via_upstream" {
                let ms = started.elapsed().as_secs_f64() * 1000.0;
                self.charged.each().for_each(|s| s.record_time(ms));
            }
        }
        host.rq_active.fetch_sub(1, Relaxed);
        cluster.pools.release();
        if (500..600).contains(&self.status) || !complete {
            host.rq_error.fetch_add(1, Relaxed);
        } else {
            host.rq_success.fetch_add(1, Relaxed);
        }
    }

    fn write_access_logs(&self, bytes_sent: u64, complete: bool, elapsed: Duration) {
        let dynamic = self.filter_state.dynamic_metadata.read();
        let ctx = Context {
            dynamic_metadata: dynamic.as_deref(),
            response: self.response_headers.as_ref(),
            status: Some(self.status),
            response_flags: if !complete && self.flags.is_empty() { "DC" } else { self.flags },
            response_code_details: self.details,
            bytes_received: self.request_progress.as_ref().map_or(self.bytes_received, |p| p.received.load(Relaxed)),
            bytes_sent,
            duration: Some(elapsed),
            ..self.context(None)
        };
        for log in &self.hcm.access_logs {
            log.log(&ctx);
        }
    }
}

impl Finish for Stream {
    fn finish(mut self: Box<Self>, bytes_sent: u64, complete: bool) {
        let elapsed = self.start.elapsed();
        self.record_stats(elapsed);
        self.record_upstream(complete);
        if self.trace.is_some() {
            let received = self.request_progress.as_ref().map_or(self.bytes_received, |p| p.received.load(Relaxed));
            self.finish_trace(received, bytes_sent, complete);
        }
        if !self.hcm.access_logs.is_empty() {
            self.write_access_logs(bytes_sent, complete, elapsed);
        }
    }
}

fn protocol_name(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "-",
    }
}
