//! The HTTP connection manager (Envoy's `HttpConnectionManager`): its
//! compiled configuration, what a connection tells it about itself, and
//! the types the request path's steps share. `Hcm::handle` (request.rs)
//! serves one request from its headers to the last byte of its response;
//! the router (`crate::http::router`) is the last step of that path.

pub(in crate::http) mod headers;
mod limits;
mod local_reply;
pub(in crate::http) mod path;
mod request;
mod response;
mod stats;
pub(in crate::http) mod stream;
mod stream_trace;
pub(in crate::http) mod tracing;
pub(in crate::http) mod upgrade;
mod xfcc;

pub use limits::ResetStream;
pub use stats::HcmStats;

use crate::access_log::AccessLogger;
use crate::body::TrackedBody;
use crate::common::cidr::Cidr;
use crate::http::context::CompileContext;
use crate::http::route::rds::RouteSlot;
use crate::http::route::{Route, RouteTable, VirtualHost};
use crate::upstream::cluster::ClusterMap;
use arc_swap::ArcSwap;
use http::header::HeaderValue;
use http::Response;
use legate_api::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::{CodecType, RouteSpecifier, ServerHeaderTransformation},
    HttpConnectionManager,
};
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::time::Duration;
use xfcc::Xfcc;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Codec {
    Auto,
    Http1,
    Http2,
}

/// A compiled `HttpConnectionManager` with the router as its last filter.
pub struct Hcm {
    pub stat_prefix: String,
    pub stats: HcmStats,
    pub codec: Codec,
    /// The route table: inline, or from RDS (empty until it arrives).
    /// Cost per request: one ArcSwap load and an Arc clone.
    routes: RouteSlot,
    /// The RDS route configuration name, when routes come from RDS.
    rds_name: Option<String>,
    /// HTTP filters before the router.
    pub(in crate::http) filters: crate::http::filters::FilterChain,
    pub(in crate::http) clusters: Arc<ArcSwap<ClusterMap>>,
    use_remote_address: bool,
    xff_trusted_hops: usize,
    skip_xff_append: bool,
    generate_request_id: bool,
    preserve_external_request_id: bool,
    always_set_request_id_in_response: bool,
    server_name: HeaderValue,
    server_transformation: ServerHeaderTransformation,
    pub(in crate::http) access_logs: Vec<AccessLogger>,
    /// Whole-request deadline (Envoy default: none). 408 when it fires first.
    pub request_timeout: Option<Duration>,
    /// No activity on a stream for this long ends it (Envoy default: 5 min).
    pub stream_idle_timeout: Option<Duration>,
    /// A connection with no active stream for this long is closed (default 1 h).
    pub idle_timeout: Option<Duration>,
    /// `common_http_protocol_options.max_requests_per_connection`: the
    /// request that reaches it drains the connection (none: unlimited).
    pub max_requests_per_connection: Option<u64>,
    /// The listener's `per_connection_buffer_limit_bytes`: the most of a
    /// body a stream holds whole.
    pub buffer_limit: u64,
    /// Time allowed to receive request headers (HTTP/1), off by default.
    pub request_headers_timeout: Option<Duration>,
    /// `internal_address_config.cidr_ranges`: clients treated as internal.
    internal_ranges: Vec<Cidr>,
    /// `forward_client_cert_details` and `set_current_client_cert_details`.
    xfcc: Xfcc,
    /// `upgrade_configs`: (lowercased upgrade type, enabled). A handful at
    /// most: a linear scan, only for requests that ask for an upgrade.
    pub(in crate::http) upgrades: Vec<(String, bool)>,
    /// `http2_protocol_options.allow_connect`: extended CONNECT (RFC 8441)
    /// is offered to HTTP/2 clients, so WebSocket can run over a stream.
    pub allow_connect: bool,
    /// `tracing`, on the listener's `traffic_direction`.
    pub(in crate::http) tracing: Option<crate::trace::Tracing>,
    /// `http_protocol_options.accept_http_10`: HTTP/1.0 requests are
    /// served (else answered 426).
    pub(in crate::http) accept_http_10: bool,
    /// `http_protocol_options.default_host_for_http_10`: the host of an
    /// HTTP/1.0 request that names none.
    pub(in crate::http) default_host_for_http_10: Option<HeaderValue>,
    /// `add_user_agent`: this proxy's cluster and node, which requests
    /// carry on as the downstream service's (and as their user agent when
    /// they name none).
    add_user_agent: Option<(HeaderValue, HeaderValue)>,
    /// `max_request_headers_kb`, `max_headers_count` and
    /// `headers_with_underscores_action`.
    pub(in crate::http) header_limits: limits::HeaderLimits,
    /// `normalize_path`, `merge_slashes`, `path_with_escaped_slashes_action`.
    pub(in crate::http) path_options: path::PathOptions,
    /// `via`: appended to the `via` header of requests and responses.
    via: Option<HeaderValue>,
    /// `strip_any_host_port` / `strip_matching_host_port`.
    strip_port: headers::StripPort,
}

pub type ProxyResponse = Response<TrackedBody>;

/// The route table, virtual host and route a request matched.
pub(in crate::http) type Matched<'a> = (&'a RouteTable, &'a VirtualHost, &'a Route);

/// The virtual host and route a request matched, if any.
pub(in crate::http) type Found<'a> = Option<(&'a VirtualHost, &'a Route)>;

/// One step of the request path: `Continue` with what the next step needs,
/// or `Break` with the response when the step has answered the request.
pub(in crate::http) type Step<T> = ControlFlow<ProxyResponse, T>;

/// `?` for a step inside a function that returns the response itself: a
/// step that answered returns its answer. (The request path returns the
/// response directly rather than a `Step` so that no wrapper future holds,
/// and moves, the whole request's state.)
macro_rules! step {
    ($e:expr) => {
        match $e {
            std::ops::ControlFlow::Continue(v) => v,
            std::ops::ControlFlow::Break(answer) => return answer,
        }
    };
}
pub(in crate::http) use step;

/// The response of a path whose steps may answer early.
pub(in crate::http) fn answered(step: Step<ProxyResponse>) -> ProxyResponse {
    match step {
        ControlFlow::Continue(r) | ControlFlow::Break(r) => r,
    }
}

impl Hcm {
    pub fn compile(c: &HttpConnectionManager, ctx: &CompileContext) -> Result<Self, String> {
        use legate_api::duration::{from_pb, or};
        let codec = compile_codec(c)?;
        let (routes, rds_name) = compile_routes(c, ctx)?;
        let filters = crate::http::filters::FilterChain::compile(&c.http_filters, ctx, &c.stat_prefix)?;
        let access_logs = c
            .access_log
            .iter()
            .enumerate()
            .map(|(i, a)| AccessLogger::compile(a).map_err(|e| format!("access_log[{i}].{e}")))
            .collect::<Result<_, _>>()?;
        let server_name = if c.server_name.is_empty() { "envoy" } else { c.server_name.as_str() };
        let upgrades = compile_upgrades(c)?;
        let idle_timeout = c.common_http_protocol_options.as_ref().and_then(|o| o.idle_timeout.as_ref());
        let tracing = compile_tracing(c, ctx, filters.start_child_span)?;
        Ok(Self {
            stats: HcmStats::new(&ctx.store, &c.stat_prefix),
            header_limits: limits::HeaderLimits::compile(c, &ctx.store),
            path_options: path::PathOptions::compile(c),
            via: Some(c.via.as_str())
                .filter(|v| !v.is_empty())
                .map(HeaderValue::from_str)
                .transpose()
                .map_err(|_| "via: invalid header value")?,
            strip_port: headers::StripPort::compile(c),
            stat_prefix: c.stat_prefix.clone(),
            codec,
            routes,
            rds_name,
            filters,
            clusters: ctx.clusters.clone(),
            use_remote_address: c.use_remote_address.is_some_and(|b| b.value),
            xff_trusted_hops: c.xff_num_trusted_hops as usize,
            skip_xff_append: c.skip_xff_append,
            generate_request_id: c.generate_request_id.is_none_or(|b| b.value),
            preserve_external_request_id: c.preserve_external_request_id,
            always_set_request_id_in_response: c.always_set_request_id_in_response,
            server_name: HeaderValue::from_str(server_name).map_err(|_| "server_name: invalid header value")?,
            server_transformation: ServerHeaderTransformation::try_from(c.server_header_transformation)
                .unwrap_or(ServerHeaderTransformation::Overwrite),
            access_logs,
            request_timeout: c.request_timeout.as_ref().map(from_pb).filter(|d| !d.is_zero()),
            stream_idle_timeout: Some(or(c.stream_idle_timeout.as_ref(), Duration::from_secs(300)))
                .filter(|d| !d.is_zero()),
            idle_timeout: Some(or(idle_timeout, Duration::from_secs(3600))).filter(|d| !d.is_zero()),
            max_requests_per_connection: c
                .common_http_protocol_options
                .as_ref()
                .and_then(|o| o.max_requests_per_connection)
                .map(|v| u64::from(v.value))
                .filter(|n| *n > 0),
            buffer_limit: ctx.buffer_limit,
            request_headers_timeout: c.request_headers_timeout.as_ref().map(from_pb).filter(|d| !d.is_zero()),
            internal_ranges: compile_internal_ranges(c)?,
            xfcc: Xfcc::compile(c)?,
            upgrades,
            allow_connect: c.http2_protocol_options.as_ref().is_some_and(|o| o.allow_connect),
            tracing,
            accept_http_10: c.http_protocol_options.as_ref().is_some_and(|o| o.accept_http_10),
            add_user_agent: c
                .add_user_agent
                .is_some_and(|b| b.value)
                .then(|| (ctx.local_cluster.clone(), ctx.local_node.clone())),
            default_host_for_http_10: match c
                .http_protocol_options
                .as_ref()
                .map(|o| o.default_host_for_http_10.as_str())
            {
                Some(h) if !h.is_empty() => Some(
                    HeaderValue::from_str(h)
                        .map_err(|_| "http_protocol_options.default_host_for_http_10: invalid host")?,
                ),
                _ => None,
            },
        })
    }

    /// A response status in the cluster's code and class counters, unless
    /// the router's `dynamic_stats` is off.
    /// The status the router answers with (an upstream's or its own), in
    /// the cluster's stats and the stream's virtual cluster's.
    pub(in crate::http) fn charge_status(
        &self,
        stream: &stream::Stream,
        stats: &crate::upstream::cluster_stats::ClusterStats,
        status: u16,
    ) {
        if self.filters.dynamic_stats {
            stats.record_status(status);
            stream.charged.each().for_each(|s| s.record_status(status));
        }
    }

    /// The router's `dynamic_stats`.
    pub(in crate::http) fn dynamic_stats(&self) -> bool {
        self.filters.dynamic_stats
    }

    /// The router's `suppress_envoy_headers`.
    pub(in crate::http) fn suppress_envoy_headers(&self) -> bool {
        self.filters.suppress_envoy_headers
    }

    /// The `server` header value this HCM writes.
    pub fn server_name(&self) -> &str {
        self.server_name.to_str().unwrap_or("envoy")
    }

    /// `http_protocol_options.accept_http_10`.
    pub fn accepts_http_10(&self) -> bool {
        self.accept_http_10
    }

    /// The HTTP/1 parser's header count and buffer, and HTTP/2's header
    /// list size, for the server this connection manager's connections
    /// are served with.
    pub fn parser_limits(&self) -> (usize, usize, u32) {
        let l = &self.header_limits;
        (l.max_count, l.h1_buffer(), l.h2_list_size())
    }

    pub fn rds_name(&self) -> Option<&str> {
        self.rds_name.as_deref()
    }
}

fn compile_codec(c: &HttpConnectionManager) -> Result<Codec, String> {
    Ok(match CodecType::try_from(c.codec_type).unwrap_or(CodecType::Auto) {
        CodecType::Auto => Codec::Auto,
        CodecType::Http1 => Codec::Http1,
        CodecType::Http2 => Codec::Http2,
        CodecType::Http3 => return Err("codec_type: HTTP3 is not supported".into()),
    })
}

/// `tracing`, with the listener's direction and the server's exporters.
fn compile_tracing(
    c: &HttpConnectionManager,
    ctx: &CompileContext,
    start_child_span: bool,
) -> Result<Option<crate::trace::Tracing>, String> {
    let Some(t) = &c.tracing else { return Ok(None) };
    let local_cluster = ctx.local_cluster.to_str().unwrap_or_default();
    let dctx = crate::trace::driver::DriverContext {
        store: &ctx.store,
        clusters: &ctx.clusters,
        local_cluster,
        node_id: &ctx.node_id,
        zone: &ctx.zone,
        exporters: &ctx.trace_exporters,
    };
    crate::trace::Tracing::compile(t, ctx.egress, start_child_span, &dctx, &c.stat_prefix).map(Some)
}

/// The route table's slot (inline, or RDS's) and the RDS name, if any.
fn compile_routes(c: &HttpConnectionManager, ctx: &CompileContext) -> Result<(RouteSlot, Option<String>), String> {
    let rds_name = match &c.route_specifier {
        Some(RouteSpecifier::Rds(rds)) => Some(rds.route_config_name.clone()),
        _ => None,
    };
    let routes = match &c.route_specifier {
        Some(RouteSpecifier::RouteConfig(rc)) => {
            let table = RouteTable::compile(rc, &ctx.store).map_err(|e| format!("route_config.{e}"))?;
            Arc::new(arc_swap::ArcSwapOption::from_pointee(table))
        }
        Some(RouteSpecifier::Rds(rds)) => {
            if !rds.config_source.as_ref().is_some_and(crate::common::config_source::is_dynamic) {
                return Err("rds.config_source: only ads or a gRPC api_config_source is supported".into());
            }
            ctx.rds.slot(&rds.route_config_name, &c.stat_prefix)
        }
        Some(_) => return Err("route_specifier: scoped routes are not supported".into()),
        None => return Err("route_specifier is required".into()),
    };
    Ok((routes, rds_name))
}

/// `upgrade_configs` as (lowercased type, enabled).
fn compile_upgrades(c: &HttpConnectionManager) -> Result<Vec<(String, bool)>, String> {
    let mut upgrades: Vec<(String, bool)> = Vec::new();
    for (i, u) in c.upgrade_configs.iter().enumerate() {
        let kind = u.upgrade_type.to_ascii_lowercase();
        if upgrades.iter().any(|(k, _)| *k == kind) {
            // Envoy's wording for the same mistake.
            return Err(format!(
                "upgrade_configs[{i}]: Error: multiple upgrade configs with the same name: '{}'",
                u.upgrade_type
            ));
        }
        if !u.filters.is_empty() {
            return Err(format!("upgrade_configs[{i}].filters: upgrade-specific filter chains are not supported"));
        }
        upgrades.push((kind, u.enabled.is_none_or(|b| b.value)));
    }
    Ok(upgrades)
}

fn compile_internal_ranges(c: &HttpConnectionManager) -> Result<Vec<Cidr>, String> {
    match &c.internal_address_config {
        Some(cfg) => cfg
            .cidr_ranges
            .iter()
            .enumerate()
            .map(|(i, r)| Cidr::parse(r).map_err(|e| format!("internal_address_config.cidr_ranges[{i}]: {e}")))
            .collect(),
        None => Ok(Vec::new()),
    }
}

/// What a connection knows about itself.
pub struct ConnInfo {
    pub remote: SocketAddr,
    pub local: SocketAddr,
    /// Streams in flight on this connection, for the connection idle timeout.
    pub active_streams: AtomicUsize,
    /// Signalled when the last active stream ends.
    pub idle: tokio::sync::Notify,
    /// Requests this connection has begun.
    pub requests: AtomicU64,
    /// The connection's listener config is being drained: responses carry
    /// `connection: close` so HTTP/1 clients move to the new config.
    pub draining: AtomicBool,
    /// The first request Envoy's HTTP/1 codec would refuse and why (seen
    /// by the connection's read side; hyper does not report it).
    pub refused: crate::http::h1_framing::Refused,
    /// The connection is TLS (terminated here): its scheme is https.
    pub secure: bool,
    /// The TLS connection's peer certificate and local names, when TLS.
    pub tls: Option<Arc<crate::tls::peer::TlsConn>>,
    /// The SNI the TLS inspector read (Envoy's requested server name).
    pub sni: Option<Box<str>>,
    /// The connection switched protocols (101 or CONNECT): what it carries
    /// from now on is not HTTP/1 and is passed through untouched.
    pub upgraded: AtomicBool,
    /// A request came over HTTP/2 (a hot restart drain sends it GOAWAY).
    pub http2: AtomicBool,
    /// The request path asks the connection to close (an HTTP/2 connection
    /// that reached `max_requests_per_connection` gets its GOAWAY).
    pub close_asked: tokio::sync::Notify,
}

impl ConnInfo {
    /// `http` or `https`, as `x-forwarded-proto` gives this connection's scheme.
    pub fn scheme(&self) -> &'static str {
        if self.secure {
            "https"
        } else {
            "http"
        }
    }

    pub fn new(remote: SocketAddr, local: SocketAddr) -> Self {
        Self {
            remote,
            local,
            active_streams: Default::default(),
            idle: tokio::sync::Notify::new(),
            requests: Default::default(),
            draining: Default::default(),
            refused: Default::default(),
            secure: false,
            tls: None,
            sni: None,
            upgraded: Default::default(),
            http2: Default::default(),
            close_asked: tokio::sync::Notify::new(),
        }
    }
}
