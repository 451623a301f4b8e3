//! The HTTP connection manager and its router: one downstream request from
//! headers to the last byte of the response.

use crate::access_log::AccessLogger;
use crate::body::{Finish, ProxyBody, TrackedBody};
use crate::common::format::Context;
use crate::http::route::{Action, ClusterChoice, Redirect, Route, RouteAction, RouteTable, VirtualHost};
use crate::stats::{Counter, Gauge, Histogram, StatusClassCounters, Store};
use crate::upstream::cluster::{Cluster, ClusterMap, Host};
use arc_swap::ArcSwap;
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, HOST, LOCATION, SERVER};
use http::{HeaderMap, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use legate_api::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::{CodecType, RouteSpecifier, ServerHeaderTransformation},
    HttpConnectionManager,
};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_ENVOY_EXPECTED_TIMEOUT: HeaderName = HeaderName::from_static("x-envoy-expected-rq-timeout-ms");
static X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName = HeaderName::from_static("x-envoy-upstream-service-time");
static X_ENVOY_ORIGINAL_PATH: HeaderName = HeaderName::from_static("x-envoy-original-path");
static X_ENVOY_EXTERNAL_ADDRESS: HeaderName = HeaderName::from_static("x-envoy-external-address");
const EXTERNAL_STRIPPED: &[&str] = &[
    "x-envoy-retriable-status-codes",
    "x-envoy-retriable-header-names",
    "x-envoy-original-url",
    "x-envoy-hedge-on-per-try-timeout",
    "x-envoy-retry-on",
    "x-envoy-retry-grpc-on",
    "x-envoy-max-retries",
    "x-envoy-upstream-alt-stat-name",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-alt-response",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-force-trace",
    "x-envoy-ip-tags",
];
/// Headers a client may not set on an edge request (use_remote_address):
/// Envoy strips them there and passes them on from internal hops.
const EDGE_STRIPPED: &[&str] = &[
    "x-envoy-decorator-operation",
    "x-envoy-downstream-service-cluster",
    "x-envoy-downstream-service-node",
    "x-envoy-original-path",
];
static X_ENVOY_INTERNAL: HeaderName = HeaderName::from_static("x-envoy-internal");
static X_ENVOY_UPSTREAM_RQ_TIMEOUT: HeaderName = HeaderName::from_static("x-envoy-upstream-rq-timeout-ms");
static X_ENVOY_PER_TRY_TIMEOUT: HeaderName = HeaderName::from_static("x-envoy-upstream-rq-per-try-timeout-ms");
static X_ENVOY_ATTEMPT_COUNT: HeaderName = HeaderName::from_static("x-envoy-attempt-count");
static X_ENVOY_OVERLOADED: HeaderName = HeaderName::from_static("x-envoy-overloaded");
static X_ENVOY_ORIGINAL_HOST: HeaderName = HeaderName::from_static("x-envoy-original-host");
static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// This machine's first non-loopback address of the same family as `like`
/// (Envoy's "local address"), read once.
fn local_address(like: IpAddr) -> IpAddr {
    static V4: std::sync::OnceLock<IpAddr> = std::sync::OnceLock::new();
    static V6: std::sync::OnceLock<IpAddr> = std::sync::OnceLock::new();
    let (cell, v4) = if like.is_ipv4() { (&V4, true) } else { (&V6, false) };
    *cell.get_or_init(|| {
        if_addrs::get_if_addrs()
            .ok()
            .and_then(|ifs| ifs.into_iter().map(|i| i.ip()).find(|ip| !ip.is_loopback() && ip.is_ipv4() == v4))
            .unwrap_or(like)
    })
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Codec {
    Auto,
    Http1,
    Http2,
}

pub struct HcmStats {
    pub downstream_rq_total: Arc<Counter>,
    pub downstream_rq_active: Arc<Gauge>,
    pub downstream_rq_http1_total: Arc<Counter>,
    pub downstream_rq_http2_total: Arc<Counter>,
    pub downstream_rq_class: StatusClassCounters,
    pub downstream_rq_time: Arc<Histogram>,
    pub downstream_rq_completed: Arc<Counter>,
    pub downstream_cx_total: Arc<Counter>,
    pub downstream_cx_active: Arc<Gauge>,
    pub downstream_cx_destroy: Arc<Counter>,
    pub downstream_cx_idle_timeout: Arc<Counter>,
    pub downstream_cx_protocol_error: Arc<Counter>,
    pub downstream_cx_drain_close: Arc<Counter>,
    pub no_route: Arc<Counter>,
    pub no_cluster: Arc<Counter>,
    pub rq_redirect: Arc<Counter>,
    pub rq_direct_response: Arc<Counter>,
    pub rq_total: Arc<Counter>,
    /// 413s for request bodies over the buffer filter's limit.
    pub downstream_rq_too_large: Arc<Counter>,
    /// Upgrades (WebSocket, CONNECT ...) accepted, and those still open.
    pub downstream_cx_upgrades_total: Arc<Counter>,
    pub downstream_cx_upgrades_active: Arc<Gauge>,
    /// Upgrade requests refused with 403 on a route that does not allow them.
    pub downstream_rq_ws_on_non_ws_route: Arc<Counter>,
}

impl HcmStats {
    fn new(store: &Store, prefix: &str) -> Self {
        let p = format!("http.{prefix}.");
        let c = |n: &str| store.counter(&format!("{p}{n}"));
        Self {
            downstream_rq_total: c("downstream_rq_total"),
            downstream_rq_active: store.gauge(&format!("{p}downstream_rq_active")),
            downstream_rq_http1_total: c("downstream_rq_http1_total"),
            downstream_rq_http2_total: c("downstream_rq_http2_total"),
            downstream_rq_class: StatusClassCounters::new(store, &p, "downstream_rq"),
            downstream_rq_time: store.histogram(&format!("{p}downstream_rq_time")),
            downstream_rq_completed: c("downstream_rq_completed"),
            downstream_cx_total: c("downstream_cx_total"),
            downstream_cx_active: store.gauge(&format!("{p}downstream_cx_active")),
            downstream_cx_destroy: c("downstream_cx_destroy"),
            downstream_cx_idle_timeout: c("downstream_cx_idle_timeout"),
            downstream_cx_protocol_error: c("downstream_cx_protocol_error"),
            downstream_cx_drain_close: c("downstream_cx_drain_close"),
            no_route: c("no_route"),
            no_cluster: c("no_cluster"),
            rq_redirect: c("rq_redirect"),
            rq_direct_response: c("rq_direct_response"),
            rq_total: c("rq_total"),
            downstream_rq_too_large: c("downstream_rq_too_large"),
            downstream_cx_upgrades_total: c("downstream_cx_upgrades_total"),
            downstream_cx_upgrades_active: store.gauge(&format!("{p}downstream_cx_upgrades_active")),
            downstream_rq_ws_on_non_ws_route: c("downstream_rq_ws_on_non_ws_route"),
        }
    }
}

/// A compiled `HttpConnectionManager` with the router as its only filter.
pub struct Hcm {
    pub stat_prefix: String,
    pub stats: HcmStats,
    pub codec: Codec,
    /// The route table: inline, or from RDS (empty until it arrives).
    /// Cost per request: one ArcSwap load and an Arc clone.
    routes: crate::http::route::rds::RouteSlot,
    /// The RDS route configuration name, when routes come from RDS.
    rds_name: Option<String>,
    /// HTTP filters before the router.
    filters: crate::http::filters::FilterChain,
    clusters: Arc<ArcSwap<ClusterMap>>,
    use_remote_address: bool,
    xff_trusted_hops: usize,
    skip_xff_append: bool,
    generate_request_id: bool,
    preserve_external_request_id: bool,
    always_set_request_id_in_response: bool,
    server_name: HeaderValue,
    server_transformation: ServerHeaderTransformation,
    access_logs: Vec<AccessLogger>,
    /// Whole-request deadline (Envoy default: none). 408 when it fires first.
    pub request_timeout: Option<Duration>,
    /// No activity on a stream for this long ends it (Envoy default: 5 min).
    pub stream_idle_timeout: Option<Duration>,
    /// A connection with no active stream for this long is closed (default 1 h).
    pub idle_timeout: Option<Duration>,
    /// Time allowed to receive request headers (HTTP/1), off by default.
    pub request_headers_timeout: Option<Duration>,
    /// `internal_address_config.cidr_ranges`: clients treated as internal.
    internal_ranges: Vec<crate::listener::filter_chain::Cidr>,
    /// `forward_client_cert_details` and `set_current_client_cert_details`.
    xfcc: Xfcc,
    /// `upgrade_configs`: (lowercased upgrade type, enabled). A handful at
    /// most: a linear scan, only for requests that ask for an upgrade.
    upgrades: Vec<(String, bool)>,
    /// `http2_protocol_options.allow_connect`: extended CONNECT (RFC 8441)
    /// is offered to HTTP/2 clients, so WebSocket can run over a stream.
    pub allow_connect: bool,
}

/// How `x-forwarded-client-cert` is treated (`forward_client_cert_details`).
#[derive(Debug, Clone, Copy, PartialEq)]
enum XfccMode {
    Sanitize,
    ForwardOnly,
    AppendForward,
    SanitizeSet,
    AlwaysForwardOnly,
}

/// One of `set_current_client_cert_details`, in the order Envoy writes them.
#[derive(Debug, Clone, Copy)]
enum XfccDetail {
    Cert,
    Chain,
    Subject,
    Uri,
    Dns,
}

struct Xfcc {
    mode: XfccMode,
    details: Vec<XfccDetail>,
}

static X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

impl Xfcc {
    fn compile(c: &HttpConnectionManager) -> Result<Self, String> {
        use legate_api::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::ForwardClientCertDetails as F;
        let mode = match F::try_from(c.forward_client_cert_details) {
            Ok(F::Sanitize) => XfccMode::Sanitize,
            Ok(F::ForwardOnly) => XfccMode::ForwardOnly,
            Ok(F::AppendForward) => XfccMode::AppendForward,
            Ok(F::SanitizeSet) => XfccMode::SanitizeSet,
            Ok(F::AlwaysForwardOnly) => XfccMode::AlwaysForwardOnly,
            Err(_) => {
                return Err(format!("forward_client_cert_details: unknown value {}", c.forward_client_cert_details))
            }
        };
        let mut details = Vec::new();
        if let Some(d) = &c.set_current_client_cert_details {
            if d.cert {
                details.push(XfccDetail::Cert);
            }
            if d.chain {
                details.push(XfccDetail::Chain);
            }
            if d.subject.as_ref().is_some_and(|b| b.value) {
                details.push(XfccDetail::Subject);
            }
            if d.uri {
                details.push(XfccDetail::Uri);
            }
            if d.dns {
                details.push(XfccDetail::Dns);
            }
        }
        Ok(Self { mode, details })
    }

    /// Envoy's `mutateXfccRequestHeader`. Cost: nothing for a plain
    /// connection beyond a header removal; with mTLS and a setting mode,
    /// the certificate is parsed once per connection and the value built
    /// per request.
    fn apply(&self, headers: &mut HeaderMap, tls: Option<&crate::tls::peer::TlsConn>) {
        if self.mode == XfccMode::AlwaysForwardOnly {
            return;
        }
        let tls = match tls {
            Some(t) if t.peer_presented() && self.mode != XfccMode::Sanitize => t,
            _ => {
                headers.remove(&X_FORWARDED_CLIENT_CERT);
                return;
            }
        };
        if self.mode == XfccMode::ForwardOnly {
            return;
        }
        // This connection's own element, built once per connection (a
        // connection is served by one HCM); per request a reference-count
        // clone, or one concatenation when appending to a forwarded value.
        let mine = tls.xfcc_element(|| self.element(tls));
        let prev = match self.mode {
            XfccMode::AppendForward => {
                headers.get(&X_FORWARDED_CLIENT_CERT).and_then(|v| v.to_str().ok()).filter(|p| !p.is_empty())
            }
            _ => None,
        };
        let value = match prev {
            Some(prev) => HeaderValue::from_str(&format!("{prev},{}", mine.to_str().unwrap_or_default())).ok(),
            None => Some(mine.clone()),
        };
        headers.remove(&X_FORWARDED_CLIENT_CERT);
        if let Some(v) = value {
            headers.insert(X_FORWARDED_CLIENT_CERT.clone(), v);
        }
    }

    /// `By=...;Hash=...;` and the configured details of this connection.
    fn element(&self, tls: &crate::tls::peer::TlsConn) -> HeaderValue {
        let mut parts: Vec<String> = Vec::new();
        for uri in tls.local_uri_sans.iter() {
            parts.push(format!("By={uri}"));
        }
        let hash = tls.sha256();
        if !hash.is_empty() {
            parts.push(format!("Hash={hash}"));
        }
        for d in &self.details {
            match d {
                XfccDetail::Cert => {
                    let pem = tls.url_encoded_pem();
                    if !pem.is_empty() {
                        parts.push(format!("Cert=\"{pem}\""));
                    }
                }
                XfccDetail::Chain => {
                    let chain = tls.url_encoded_chain();
                    if !chain.is_empty() {
                        parts.push(format!("Chain=\"{chain}\""));
                    }
                }
                // Subject and URI are written even when empty.
                XfccDetail::Subject => parts.push(format!("Subject=\"{}\"", tls.names().subject)),
                XfccDetail::Uri => {
                    let uris = &tls.names().uri;
                    if uris.is_empty() {
                        parts.push("URI=".into());
                    }
                    for u in uris {
                        parts.push(format!("URI={u}"));
                    }
                }
                XfccDetail::Dns => {
                    for d in &tls.names().dns {
                        parts.push(format!("DNS={d}"));
                    }
                }
            }
        }
        HeaderValue::from_str(&parts.join(";")).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}
impl Hcm {
    pub fn compile(c: &HttpConnectionManager, ctx: &crate::http::context::CompileContext) -> Result<Self, String> {
        let store = &ctx.store;
        let clusters = ctx.clusters.clone();
        let codec = match CodecType::try_from(c.codec_type).unwrap_or(CodecType::Auto) {
            CodecType::Auto => Codec::Auto,
            CodecType::Http1 => Codec::Http1,
            CodecType::Http2 => Codec::Http2,
            CodecType::Http3 => return Err("codec_type: HTTP3 is not supported".into()),
        };
        let rds_name = match &c.route_specifier {
            Some(RouteSpecifier::Rds(rds)) => Some(rds.route_config_name.clone()),
            _ => None,
        };
        let routes = match &c.route_specifier {
            Some(RouteSpecifier::RouteConfig(rc)) => {
                let table = RouteTable::compile(rc).map_err(|e| format!("route_config.{e}"))?;
                Arc::new(arc_swap::ArcSwapOption::from_pointee(table))
            }
            Some(RouteSpecifier::Rds(rds)) => {
                if !rds.config_source.as_ref().is_some_and(crate::http::route::rds::is_ads) {
                    return Err("rds.config_source: only ads is supported".into());
                }
                ctx.rds.slot(&rds.route_config_name, &c.stat_prefix)
            }
            Some(_) => return Err("route_specifier: scoped routes are not supported".into()),
            None => return Err("route_specifier is required".into()),
        };
        let filters = crate::http::filters::FilterChain::compile(&c.http_filters, ctx, &c.stat_prefix)?;
        let access_logs = c
            .access_log
            .iter()
            .enumerate()
            .map(|(i, a)| AccessLogger::compile(a).map_err(|e| format!("access_log[{i}].{e}")))
            .collect::<Result<_, _>>()?;
        let server_name = if c.server_name.is_empty() { "envoy" } else { c.server_name.as_str() };
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
        Ok(Self {
            stats: HcmStats::new(store, &c.stat_prefix),
            stat_prefix: c.stat_prefix.clone(),
            codec,
            routes,
            rds_name,
            filters,
            clusters,
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
            request_timeout: c.request_timeout.as_ref().map(legate_api::duration::from_pb).filter(|d| !d.is_zero()),
            stream_idle_timeout: match &c.stream_idle_timeout {
                Some(d) => Some(legate_api::duration::from_pb(d)).filter(|d| !d.is_zero()),
                None => Some(Duration::from_secs(300)),
            },
            idle_timeout: match c.common_http_protocol_options.as_ref().and_then(|o| o.idle_timeout.as_ref()) {
                Some(d) => Some(legate_api::duration::from_pb(d)).filter(|d| !d.is_zero()),
                None => Some(Duration::from_secs(3600)),
            },
            request_headers_timeout: c
                .request_headers_timeout
                .as_ref()
                .map(legate_api::duration::from_pb)
                .filter(|d| !d.is_zero()),
            internal_ranges: match &c.internal_address_config {
                Some(cfg) => cfg
                    .cidr_ranges
                    .iter()
                    .enumerate()
                    .map(|(i, r)| {
                        crate::listener::filter_chain::Cidr::parse(r)
                            .map_err(|e| format!("internal_address_config.cidr_ranges[{i}]: {e}"))
                    })
                    .collect::<Result<_, _>>()?,
                None => Vec::new(),
            },
            xfcc: Xfcc::compile(c)?,
            upgrades,
            allow_connect: c.http2_protocol_options.as_ref().is_some_and(|o| o.allow_connect),
        })
    }
}

impl Hcm {
    /// Whether a request is internal (headers before x-forwarded-for is
    /// appended to). Only called when internal ranges are configured.
    fn is_internal(&self, h: &HeaderMap, peer: SocketAddr) -> bool {
        // The x-forwarded-for entries, counted without collecting them.
        let mut xff = h
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty());
        let trusted = match (self.use_remote_address, xff.next(), xff.next()) {
            // With use_remote_address: the peer, and no x-forwarded-for.
            (true, None, _) => peer.ip(),
            // Behind a trusted proxy: the one x-forwarded-for address.
            (false, Some(only), None) => match only.parse::<IpAddr>() {
                Ok(ip) => ip,
                Err(_) => return false,
            },
            _ => return false,
        };
        self.internal_ranges.iter().any(|c| c.contains(trusted))
    }

    /// The `server` header value this HCM writes.
    pub fn server_name(&self) -> &str {
        self.server_name.to_str().unwrap_or("envoy")
    }

    pub fn rds_name(&self) -> Option<&str> {
        self.rds_name.as_deref()
    }
}

/// What a connection knows about itself.
pub struct ConnInfo {
    pub remote: SocketAddr,
    pub local: SocketAddr,
    /// Streams in flight on this connection, for the connection idle timeout.
    pub active_streams: std::sync::atomic::AtomicUsize,
    /// Signalled when the last active stream ends.
    pub idle: tokio::sync::Notify,
    /// Requests this connection has begun.
    pub requests: std::sync::atomic::AtomicU64,
    /// The connection's listener config is being drained: responses carry
    /// `connection: close` so HTTP/1 clients move to the new config.
    pub draining: std::sync::atomic::AtomicBool,
    /// The first request's head carried both content-length and
    /// transfer-encoding (seen by the connection's read side, which hyper
    /// does not report); Envoy answers such a request with 400.
    pub length_conflict: std::sync::atomic::AtomicBool,
    /// The connection is TLS (terminated here): its scheme is https.
    pub secure: bool,
    /// The TLS connection's peer certificate and local names, when TLS.
    pub tls: Option<Arc<crate::tls::peer::TlsConn>>,
    /// The SNI the TLS inspector read (Envoy's requested server name).
    pub sni: Option<Box<str>>,
    /// The connection switched protocols (101 or CONNECT): what it carries
    /// from now on is not HTTP/1 and is passed through untouched.
    pub upgraded: std::sync::atomic::AtomicBool,
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
            length_conflict: Default::default(),
            secure: false,
            tls: None,
            sni: None,
            upgraded: Default::default(),
        }
    }
}

/// State kept from request to the end of its response, for stats and the
/// access log. Allocated once per request (one Box), only then.
struct Stream {
    hcm: Arc<Hcm>,
    conn: Arc<ConnInfo>,
    start: Instant,
    start_time: SystemTime,
    method: http::Method,
    path: String,
    authority: String,
    protocol: &'static str,
    /// The request headers as received, kept only when something logs them.
    request_headers: Option<HeaderMap>,
    response_headers: Option<HeaderMap>,
    status: u16,
    flags: &'static str,
    details: &'static str,
    bytes_received: u64,
    /// The proxied request body's progress, read for `bytes_received` when
    /// the stream ends.
    request_progress: Option<Arc<crate::body::RequestProgress>>,
    /// The request has a body (it did not end with its headers).
    has_body: bool,
    /// The cluster's `max_requests` slot, held until the response ends.
    rq_slot: crate::upstream::pool::Held,
    client: SocketAddr,
    local: SocketAddr,
    upstream: Option<(Arc<Cluster>, Arc<Host>, Instant)>,
    /// The cluster the route chose, even when no host could be picked.
    cluster: Option<Arc<Cluster>>,
    route_name: String,
    /// What the request filters left for the response (CORS headers).
    filter_state: crate::http::filters::ResponseState,
    /// From an internal address (`internal_address_config`): its
    /// `x-envoy-*` retry and timeout headers are honoured.
    internal: bool,
    /// The stream was accepted as an upgrade (counted in
    /// `downstream_cx_upgrades_active` until it ends).
    upgraded: bool,
    /// The request asked for an upgrade: an HTTP/1 response that does not
    /// switch protocols closes the connection, as Envoy's codec does (what
    /// follows the head may be the other protocol's bytes).
    upgrade_requested: bool,
}

impl Finish for Stream {
    fn finish(self: Box<Self>, bytes_sent: u64, complete: bool) {
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
        let elapsed = self.start.elapsed();
        s.downstream_rq_time.record(elapsed.as_secs_f64() * 1000.0);
        if let Some((cluster, host, started)) = &self.upstream {
            let cs = &cluster.stats;
            cs.upstream_rq_active.dec();
            cs.upstream_rq_completed.inc();
            cs.upstream_rq_time.record(started.elapsed().as_secs_f64() * 1000.0);
            host.rq_active.fetch_sub(1, Relaxed);
            cluster.pools.release();
            if (500..600).contains(&self.status) || !complete {
                host.rq_error.fetch_add(1, Relaxed);
            } else {
                host.rq_success.fetch_add(1, Relaxed);
            }
        }
        if self.hcm.access_logs.is_empty() {
            return;
        }
        let path = self.path.as_str();
        let ctx = Context {
            request: self.request_headers.as_ref(),
            method: self.method.as_str(),
            path,
            authority: &self.authority,
            protocol: self.protocol,
            response: self.response_headers.as_ref(),
            status: Some(self.status),
            response_flags: if !complete && self.flags.is_empty() { "DC" } else { self.flags },
            response_code_details: self.details,
            bytes_received: self.request_progress.as_ref().map_or(self.bytes_received, |p| p.received.load(Relaxed)),
            bytes_sent,
            duration: Some(elapsed),
            start_time: Some(self.start_time),
            upstream_host: self.upstream.as_ref().map(|u| u.1.addr),
            upstream_cluster: self.cluster.as_ref().map_or("", |c| c.name.as_str()),
            route_name: &self.route_name,
            downstream_remote: Some(self.client),
            downstream_local: Some(self.local),
        };
        for log in &self.hcm.access_logs {
            log.log(&ctx);
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

/// Headers that describe one hop and are never forwarded.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    if let Some(conn) = h.get(http::header::CONNECTION).cloned() {
        if let Ok(list) = conn.to_str() {
            for name in list.split(',') {
                let name = name.trim();
                if !name.is_empty() && !name.eq_ignore_ascii_case("close") && !name.eq_ignore_ascii_case("keep-alive") {
                    h.remove(name);
                }
            }
        }
    }
    for name in ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"] {
        h.remove(name);
    }
    if h.get(http::header::TE).is_some_and(|v| v != "trailers") {
        h.remove(http::header::TE);
    }
}

/// The n-th address from the right of the x-forwarded-for list.
fn xff_from_right(h: &HeaderMap, n: usize) -> Option<IpAddr> {
    let all: Vec<&str> = h
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let i = all.len().checked_sub(n + 1)?;
    all[i].parse().ok()
}

pub type ProxyResponse = Response<TrackedBody>;

/// The route table, virtual host and route a request matched.
type Matched<'a> = (&'a RouteTable, &'a VirtualHost, &'a Route);

impl Hcm {
    /// Serves one request. Never fails: every error becomes Envoy's local reply.
    pub async fn handle(self: Arc<Self>, conn: Arc<ConnInfo>, req: Request<Incoming>) -> ProxyResponse {
        let st = &self.stats;
        st.downstream_rq_total.inc();
        st.downstream_rq_active.inc();
        match req.version() {
            http::Version::HTTP_2 => st.downstream_rq_http2_total.inc(),
            _ => st.downstream_rq_http1_total.inc(),
        }
        let (mut parts, body) = req.into_parts();
        // Extended CONNECT (`:protocol`, offered only with allow_connect)
        // is read as the HTTP/1.1 upgrade it stands for, as Envoy's HTTP/2
        // codec does: GET with `upgrade: <protocol>` and `connection: upgrade`.
        let extended = parts.method == http::Method::CONNECT
            && parts.extensions.get::<hyper::ext::Protocol>().is_some_and(|p| {
                match HeaderValue::from_str(p.as_str()) {
                    Ok(v) => {
                        parts.headers.insert(http::header::UPGRADE, v);
                        true
                    }
                    Err(_) => false,
                }
            });
        if extended {
            parts.method = http::Method::GET;
            parts.headers.insert(http::header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        let authority = parts
            .uri
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| parts.headers.get(HOST).and_then(|h| h.to_str().ok()).map(str::to_owned))
            .unwrap_or_default();
        // A CONNECT (authority form) has no path, as in Envoy.
        let no_path = if parts.method == http::Method::CONNECT { "" } else { "/" };
        let path = parts.uri.path_and_query().map_or(no_path, |p| p.as_str()).to_string();

        // Who the client is: the connection's peer, or an address taken from
        // x-forwarded-for as Envoy's use_remote_address / xff_num_trusted_hops say.
        let mut client = conn.remote;
        if self.use_remote_address {
            if self.xff_trusted_hops > 0 {
                if let Some(ip) = xff_from_right(&parts.headers, self.xff_trusted_hops - 1) {
                    client = SocketAddr::new(ip, 0);
                }
            }
        } else if let Some(ip) = xff_from_right(&parts.headers, self.xff_trusted_hops) {
            client = SocketAddr::new(ip, 0);
        }

        conn.active_streams.fetch_add(1, Relaxed);
        conn.requests.fetch_add(1, Relaxed);
        let mut stream = Box::new(Stream {
            hcm: self.clone(),
            conn: conn.clone(),
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
            has_body: !http_body::Body::is_end_stream(&body),
            rq_slot: Default::default(),
            client,
            local: conn.local,
            upstream: None,
            cluster: None,
            route_name: String::new(),
            filter_state: Default::default(),
            internal: false,
            upgraded: false,
            upgrade_requested: false,
        });

        // Protocol errors Envoy answers itself, closing the connection.
        if parts.version == http::Version::HTTP_10 || parts.version == http::Version::HTTP_09 {
            // http_protocol_options.accept_http_10 is off by default.
            let mut r = self.local_reply(stream, 426, "low_version", "", Some("Upgrade Required".into()));
            *r.version_mut() = http::Version::HTTP_11;
            r.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            return r;
        }
        // Both content-length and transfer-encoding (request smuggling's
        // tool): Envoy refuses the request as a codec error.
        if conn.length_conflict.load(Relaxed) && stream.conn.requests.load(Relaxed) == 1 {
            self.stats.downstream_cx_protocol_error.inc();
            let mut r = self.local_reply(
                stream,
                400,
                "http1.content_length_and_chunked_not_allowed",
                "DPE",
                Some("Bad Request".into()),
            );
            r.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            return r;
        }
        if parts.version == http::Version::HTTP_11 && stream.authority.is_empty() {
            let mut r = self.local_reply(stream, 400, "missing_host_header", "", None);
            r.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            return r;
        }

        // Internal or external, as Envoy decides it: the trusted client
        // address must be the only one in x-forwarded-for (or there is none,
        // with use_remote_address) and inside `internal_address_config`;
        // Envoy 1.40 has no internal addresses unless that names some. An
        // external request loses the control headers only internal callers
        // may send; an edge request (use_remote_address) a few more.
        parts.headers.remove(&X_ENVOY_INTERNAL);
        stream.internal = !self.internal_ranges.is_empty() && self.is_internal(&parts.headers, conn.remote);
        let edge = self.use_remote_address && !stream.internal;
        if stream.internal {
            parts.headers.insert(X_ENVOY_INTERNAL.clone(), HeaderValue::from_static("true"));
        } else {
            for h in EXTERNAL_STRIPPED {
                parts.headers.remove(*h);
            }
            if edge {
                for h in EDGE_STRIPPED {
                    parts.headers.remove(*h);
                }
            }
        }

        // Request headers Envoy's connection manager owns.
        if self.use_remote_address {
            if !self.skip_xff_append {
                // A loopback peer (a local sidecar) is recorded as this
                // machine's own address, as Envoy does.
                let hop =
                    if conn.remote.ip().is_loopback() { local_address(conn.remote.ip()) } else { conn.remote.ip() };
                let appended = match parts.headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
                    Some(prev) => format!("{prev},{hop}"),
                    None => hop.to_string(),
                };
                parts.headers.remove(&X_FORWARDED_FOR);
                if let Ok(v) = HeaderValue::from_str(&appended) {
                    parts.headers.insert(X_FORWARDED_FOR.clone(), v);
                }
            }
            // With trusted hops, a downstream's x-forwarded-proto is kept as it
            // is (Envoy 1.40 does not check the value here); otherwise it is
            // this connection's scheme.
            if self.xff_trusted_hops == 0 || !parts.headers.contains_key(&X_FORWARDED_PROTO) {
                parts.headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(conn.scheme()));
            }
            // An edge request is marked with its client address.
            if edge {
                if let Ok(v) = HeaderValue::from_str(&client.ip().to_string()) {
                    parts.headers.insert(X_ENVOY_EXTERNAL_ADDRESS.clone(), v);
                }
            }
        } else if !parts.headers.contains_key(&X_FORWARDED_PROTO) {
            parts.headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(conn.scheme()));
        }
        if self.generate_request_id {
            let regenerate = edge && !self.preserve_external_request_id;
            if regenerate || !parts.headers.contains_key(&X_REQUEST_ID) {
                let id = uuid::Uuid::new_v4();
                let mut buf = [0u8; 36];
                let s = id.hyphenated().encode_lower(&mut buf);
                if let Ok(v) = HeaderValue::from_str(s) {
                    parts.headers.insert(X_REQUEST_ID.clone(), v);
                }
            }
        }
        self.xfcc.apply(&mut parts.headers, conn.tls.as_deref());
        if !self.access_logs.is_empty() {
            stream.request_headers = Some(parts.headers.clone());
        }

        // The route is found before the filters run: they may read its
        // per-filter config, as Envoy's filters read the cached route.
        let table = self.routes.load_full();
        let found = table.as_deref().and_then(|t| {
            t.route(&stream.authority, &stream.path, &parts.headers, parts.method.as_str(), conn.scheme())
        });
        // An upgrade (HTTP/1.1 `Upgrade` with `connection: upgrade`, or
        // CONNECT) is decided before the filters run, as Envoy decides it
        // when it builds the stream's filter chain: the route's
        // `upgrade_configs` override the connection manager's. A refused one
        // on a matched route gets 403 and the connection closes (its bytes
        // after the head may be the other protocol's).
        let mut upgrade = None;
        if let Some(kind) = upgrade_kind(&mut parts, extended) {
            stream.upgrade_requested = parts.version == http::Version::HTTP_11;
            match self.upgrade_decision(kind.as_str(), found.map(|(_, r)| r)) {
                Some(terminate) => {
                    st.downstream_cx_upgrades_total.inc();
                    st.downstream_cx_upgrades_active.inc();
                    stream.upgraded = true;
                    upgrade = Some(Upgrade {
                        target: parts.uri.authority().cloned(),
                        kind,
                        terminate,
                        on_upgrade: parts.extensions.remove::<hyper::upgrade::OnUpgrade>(),
                    });
                }
                None if found.is_some() => {
                    st.downstream_rq_ws_on_non_ws_route.inc();
                    // The route's cluster is known (and logged) by then.
                    if let Some((_, Route { action: Action::Forward(ra), .. })) = found {
                        if let ClusterChoice::Name(n) = &ra.cluster {
                            stream.cluster = self.clusters.load().get(n.as_str()).cloned();
                        }
                    }
                    let mut r = self.local_reply(stream, 403, "upgrade_failed", "", None);
                    if r.version() != http::Version::HTTP_2 && parts.version != http::Version::HTTP_2 {
                        r.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                    }
                    return r;
                }
                None => {}
            }
        }
        let mut body = ProxyBody::stream(body);
        if !self.filters.is_empty() {
            let mut state = crate::http::filters::ResponseState::default();
            let verdict = {
                let mut rq = crate::http::filters::RequestCtx {
                    headers: &mut parts.headers,
                    method: &parts.method,
                    pseudo: crate::common::matcher::Pseudo {
                        method: parts.method.as_str(),
                        path: &stream.path,
                        authority: &stream.authority,
                        scheme: conn.scheme(),
                    },
                    direct_remote: conn.remote.ip(),
                    remote: client.ip(),
                    local: conn.local,
                    tls: conn.tls.as_deref(),
                    sni: conn.sni.as_deref().unwrap_or(""),
                    route: [found.map(|(_, r)| &r.per_filter), found.map(|(vh, _)| &vh.per_filter)],
                    new_path: None,
                };
                let v = self.filters.on_request(&mut rq, &mut state).await;
                (v, rq.new_path)
            };
            let (verdict, new_path) = verdict;
            // The route stays the one found for the original path, as Envoy
            // keeps its cached route unless a filter clears it.
            if let Some(p) = new_path {
                stream.path = p;
            }
            stream.filter_state = state;
            match verdict {
                crate::http::filters::Verdict::Continue => {}
                crate::http::filters::Verdict::Respond(status, headers) => {
                    let mut r = self.local_reply(stream, status, "health_check", "", None);
                    for (k, v) in headers {
                        r.headers_mut().insert(k, v);
                    }
                    return r;
                }
                crate::http::filters::Verdict::Abort { status, body, flag } => {
                    return self.local_reply(stream, status, "fault_filter_abort", flag, Some(body.into()));
                }
                crate::http::filters::Verdict::Limited { status, headers } => {
                    let mut r =
                        self.local_reply(stream, status, "local_rate_limited", "RL", Some("local_rate_limited".into()));
                    for (k, v) in headers {
                        r.headers_mut().insert(k, v);
                    }
                    return r;
                }
                crate::http::filters::Verdict::Reply { status, body, details, flag, headers } => {
                    let body = (!body.is_empty()).then(|| body.to_string());
                    let mut r = self.local_reply(stream, status, details, flag, body);
                    for (k, v) in headers {
                        r.headers_mut().insert(k, v);
                    }
                    return r;
                }
            }
            // The buffer filter: the whole body is read before the request
            // goes on; over the limit Envoy answers 413.
            if let Some(limit) = self.filters.buffer_limit() {
                match read_limited(body, limit).await {
                    Ok(bytes) => {
                        let progress = Arc::new(crate::body::RequestProgress::default());
                        progress.received.store(bytes.len() as u64, Relaxed);
                        progress.done.store(true, Relaxed);
                        stream.request_progress = Some(progress);
                        body = ProxyBody::full(bytes);
                    }
                    Err(too_large) => {
                        let (status, details, text) = if too_large {
                            st.downstream_rq_too_large.inc();
                            (413, "request_payload_too_large", "Payload Too Large")
                        } else {
                            (400, "downstream_remote_disconnect", "")
                        };
                        let text = (!text.is_empty()).then(|| text.to_string());
                        return self.local_reply(stream, status, details, "", text);
                    }
                }
            }
        }
        // The router sees every request that gets this far, routed or not.
        st.rq_total.inc();
        let (Some(table), Some((vh, route))) = (table.as_deref(), found) else {
            st.no_route.inc();
            return self.local_reply(stream, 404, "route_not_found", "NR", None);
        };
        stream.route_name.clone_from(&route.name);
        // Response header values may read the request (%REQ(...)%): keep its
        // headers when some level has response mutations.
        let has_response_mutations =
            !(route.response_headers.is_empty() && vh.response_headers.is_empty() && table.response_headers.is_empty());
        if has_response_mutations && stream.request_headers.is_none() {
            stream.request_headers = Some(parts.headers.clone());
        }
        match &route.action {
            Action::Direct { status, body } => {
                st.rq_direct_response.inc();
                let body = body.clone();
                self.direct_reply(stream, *status, body, (table, vh, route))
            }
            Action::Redirect(rd) => {
                // Envoy counts redirects as direct responses (rq_redirect stays 0).
                st.rq_direct_response.inc();
                let location = redirect_location(rd, route, &stream.authority, &stream.path, self.use_remote_address);
                self.redirect_reply(stream, rd.status, location, (table, vh, route))
            }
            Action::Forward(ra) => self.forward(stream, parts, body, (table, vh, route), ra, upgrade).await,
        }
    }

    fn finish_response(&self, stream: &mut Stream, resp: &mut Response<ProxyBody>, vh: Option<Matched<'_>>) {
        let h = resp.headers_mut();
        match self.server_transformation {
            ServerHeaderTransformation::Overwrite => {
                h.insert(SERVER, self.server_name.clone());
            }
            ServerHeaderTransformation::AppendIfAbsent => {
                if !h.contains_key(SERVER) {
                    h.insert(SERVER, self.server_name.clone());
                }
            }
            ServerHeaderTransformation::PassThrough => {}
        }
        if let Some((table, vh, route)) = vh {
            let mut ctx = self.context(stream, None);
            ctx.status = Some(resp.status().as_u16());
            let levels = [&route.response_headers, &vh.response_headers, &table.response_headers];
            let mut hm = std::mem::take(resp.headers_mut());
            apply_levels(levels, table.most_specific_wins, &mut hm, &ctx);
            *resp.headers_mut() = hm;
        }
        if self.always_set_request_id_in_response {
            if let Some(id) = stream.request_headers.as_ref().and_then(|h| h.get(&X_REQUEST_ID)) {
                resp.headers_mut().insert(X_REQUEST_ID.clone(), id.clone());
            }
        }
        if let Some((k, v)) = self.filters.response_header() {
            resp.headers_mut().insert(k, HeaderValue::from_static(v));
        }
        for (k, v) in &stream.filter_state.headers {
            resp.headers_mut().insert(k.clone(), v.clone());
        }
        if !self.filters.is_empty() {
            self.filters.on_response(&stream.filter_state, resp);
        }
        // An HTTP/1 connection closes after this response when its config
        // drains, or when the request body has not all been read: Envoy does
        // not wait for the rest of a request it has already answered.
        let body_unread = stream.has_body && stream.request_progress.as_ref().is_none_or(|p| !p.done.load(Relaxed));
        if (body_unread || stream.upgrade_requested || stream.conn.draining.load(Relaxed))
            && stream.protocol != "HTTP/2"
        {
            resp.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        stream.status = resp.status().as_u16();
        if !self.access_logs.is_empty() {
            stream.response_headers = Some(resp.headers().clone());
        }
    }

    fn context<'a>(&self, s: &'a Stream, req: Option<&'a HeaderMap>) -> Context<'a> {
        Context {
            request: req.or(s.request_headers.as_ref()),
            method: s.method.as_str(),
            path: &s.path,
            authority: &s.authority,
            protocol: s.protocol,
            downstream_remote: Some(s.client),
            downstream_local: Some(s.local),
            upstream_host: s.upstream.as_ref().map(|u| u.1.addr),
            upstream_cluster: s.cluster.as_ref().map_or("", |c| c.name.as_str()),
            start_time: Some(s.start_time),
            route_name: &s.route_name,
            ..Default::default()
        }
    }

    /// Envoy's local reply: `text/plain` with the body, or no body at all.
    fn local_reply(
        &self,
        stream: Box<Stream>,
        status: u16,
        details: &'static str,
        flags: &'static str,
        body: Option<String>,
    ) -> ProxyResponse {
        self.router_reply(stream, None, status, details, flags, body)
    }

    /// A local reply from the router, once a route matched: Envoy applies the
    /// route's (and its virtual host's and table's) response header
    /// mutations to it, as to an upstream response.
    fn router_reply(
        &self,
        mut stream: Box<Stream>,
        matched: Option<Matched<'_>>,
        status: u16,
        details: &'static str,
        flags: &'static str,
        body: Option<String>,
    ) -> ProxyResponse {
        stream.flags = flags;
        stream.details = details;
        let mut resp = Response::new(ProxyBody::Empty);
        *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        set_text_body(&mut resp, body.map(bytes::Bytes::from));
        self.finish_response(&mut stream, &mut resp, matched);
        resp.map(|b| TrackedBody::new(b, Some(stream)))
    }

    fn direct_reply(
        &self,
        mut stream: Box<Stream>,
        status: u16,
        body: Option<bytes::Bytes>,
        matched: Matched<'_>,
    ) -> ProxyResponse {
        stream.details = "direct_response";
        let mut resp = Response::new(ProxyBody::Empty);
        *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        // Envoy answers a direct 201 with the request's URL as its location.
        if status == 201 {
            if let Ok(v) = HeaderValue::from_str(&format!("http://{}{}", stream.authority, stream.path)) {
                resp.headers_mut().insert(LOCATION, v);
            }
        }
        set_text_body(&mut resp, body);
        self.finish_response(&mut stream, &mut resp, Some(matched));
        resp.map(|b| TrackedBody::new(b, Some(stream)))
    }

    fn redirect_reply(
        &self,
        mut stream: Box<Stream>,
        status: u16,
        location: String,
        matched: Matched<'_>,
    ) -> ProxyResponse {
        stream.details = "direct_response";
        let mut resp = Response::new(ProxyBody::Empty);
        *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
        if let Ok(v) = HeaderValue::from_str(&location) {
            resp.headers_mut().insert(LOCATION, v);
        }
        self.finish_response(&mut stream, &mut resp, Some(matched));
        resp.map(|b| TrackedBody::new(b, Some(stream)))
    }

    /// The route's timeout passed before the response: 504 `UT`.
    fn route_timeout_reply(&self, stream: Box<Stream>, cluster: &Cluster, matched: Matched<'_>) -> ProxyResponse {
        cluster.stats.upstream_rq_timeout.inc();
        cluster.stats.record_status(504);
        self.router_reply(stream, Some(matched), 504, "response_timeout", "UT", Some("upstream request timeout".into()))
    }

    /// A circuit breaker's answer: 503 `UO` with `x-envoy-overloaded`.
    fn overflow_reply(&self, stream: Box<Stream>, cluster: &Cluster, matched: Matched<'_>) -> ProxyResponse {
        cluster.stats.record_status(503);
        let body = crate::upstream::pool::UpstreamError::Overflow.local_reply_body();
        let mut r = self.router_reply(
            stream,
            Some(matched),
            503,
            "upstream_reset_before_response_started{overflow}",
            "UO",
            Some(body),
        );
        r.headers_mut().insert(X_ENVOY_OVERLOADED.clone(), HeaderValue::from_static("true"));
        r
    }

    async fn forward(
        self: &Arc<Self>,
        mut stream: Box<Stream>,
        mut parts: http::request::Parts,
        body: ProxyBody,
        matched: Matched<'_>,
        ra: &RouteAction,
        upgrade: Option<Upgrade>,
    ) -> ProxyResponse {
        let (table, vh, route) = matched;
        let st = &self.stats;
        // Cost: an ArcSwap load and one hash lookup of the cluster name.
        let clusters = self.clusters.load();
        let cluster_name: Option<std::borrow::Cow<'_, str>> = match &ra.cluster {
            ClusterChoice::Name(n) => Some(n.as_str().into()),
            ClusterChoice::Header(h) => parts.headers.get(h).and_then(|v| v.to_str().ok()).map(|s| s.to_owned().into()),
            ClusterChoice::Weighted(list, total) => {
                let mut x = rand::random_range(0..*total);
                list.iter()
                    .find(|(_, w)| {
                        if x < *w as u64 {
                            true
                        } else {
                            x -= *w as u64;
                            false
                        }
                    })
                    .map(|(n, _)| n.as_str().into())
            }
        };
        let Some(cluster) = cluster_name.and_then(|n| clusters.get(n.as_ref()).cloned()) else {
            st.no_cluster.inc();
            return self.router_reply(stream, Some(matched), 503, "cluster_not_found", "NC", None);
        };
        stream.cluster = Some(cluster.clone());
        // Cost when the route hashes: one xxHash64 per policy over the value.
        let hash = if ra.hash_policy.is_empty() {
            None
        } else {
            crate::upstream::lb::hashing::request_hash(
                &ra.hash_policy,
                &parts.headers,
                parts.uri.query(),
                stream.client.ip(),
            )
        };
        let Some(host) = cluster.pick_hashed(hash) else {
            cluster.stats.upstream_cx_none_healthy.inc();
            cluster.stats.record_status(503);
            return self.router_reply(
                stream,
                Some(matched),
                503,
                "no_healthy_upstream",
                "UH",
                Some("no healthy upstream".into()),
            );
        };

        // Build the upstream request.
        strip_hop_by_hop(&mut parts.headers);
        let original_path = stream.path.clone();
        let new_path = route.rewrite_path(ra, &original_path);
        if new_path.is_some() {
            if let Ok(v) = HeaderValue::from_str(&original_path) {
                parts.headers.insert(X_ENVOY_ORIGINAL_PATH.clone(), v);
            }
        }
        let upstream_path = new_path.as_deref().unwrap_or(&original_path);
        // A CONNECT's target replaces this path (see `forward_upgrade`).
        let request_path = if upstream_path.is_empty() { "/" } else { upstream_path };
        let authority = if let Some(h) = &ra.host_rewrite {
            h.clone()
        } else if ra.auto_host_rewrite {
            host.hostname.clone() + &format_port(&host)
        } else {
            stream.authority.clone()
        };
        if authority != stream.authority {
            if let Ok(v) = HeaderValue::from_str(&stream.authority) {
                parts.headers.insert(X_ENVOY_ORIGINAL_HOST.clone(), v);
            }
        }
        if vh.attempt_count_upstream {
            parts.headers.insert(X_ENVOY_ATTEMPT_COUNT.clone(), HeaderValue::from_static("1"));
        }
        // An internal caller's x-envoy-* headers shape this request's
        // timeouts and retries; the router consumes them.
        let mut route_timeout = ra.timeout;
        let mut retry_policy: Option<std::borrow::Cow<'_, crate::http::router::retry::RetryPolicy>> =
            ra.retry.as_ref().map(std::borrow::Cow::Borrowed);
        if stream.internal {
            let ms = |h: &HeaderName| parts.headers.get(h).and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
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
            .any(|h| parts.headers.contains_key(*h));
            if asks_retry || per_try.is_some() {
                let mut p =
                    ra.retry.clone().unwrap_or_else(crate::http::router::retry::RetryPolicy::default_for_headers);
                p.merge_request_headers(&parts.headers);
                if let Some(ms) = per_try {
                    p.per_try_timeout = (ms > 0).then(|| Duration::from_millis(ms));
                }
                retry_policy = Some(std::borrow::Cow::Owned(p));
            }
            parts.headers.remove(&X_ENVOY_UPSTREAM_RQ_TIMEOUT);
            for h in crate::http::router::retry::RETRY_REQUEST_HEADERS {
                parts.headers.remove(*h);
            }
        }
        let per_try = retry_policy.as_ref().and_then(|p| p.per_try_timeout);
        if let Some(ms) = crate::http::router::retry::expected_timeout_ms(route_timeout, per_try, Duration::ZERO) {
            parts.headers.insert(X_ENVOY_EXPECTED_TIMEOUT.clone(), HeaderValue::from(ms));
        }
        {
            // Values may read the request's own headers (%REQ(...)%): a
            // snapshot is taken only when some level has mutations.
            let levels = [&route.request_headers, &vh.request_headers, &table.request_headers];
            let snapshot = if levels.iter().all(|l| l.is_empty()) { None } else { Some(parts.headers.clone()) };
            let ctx = self.context(&stream, snapshot.as_ref());
            apply_levels(levels, table.most_specific_wins, &mut parts.headers, &ctx);
        }
        let uri = if cluster.http2 {
            parts.headers.remove(HOST);
            format!("http://{authority}{request_path}")
        } else {
            if let Ok(v) = HeaderValue::from_str(&authority) {
                parts.headers.insert(HOST, v);
            }
            request_path.to_string()
        };
        match uri.parse() {
            Ok(u) => parts.uri = u,
            Err(_) => return self.router_reply(stream, Some(matched), 400, "invalid_path", "", None),
        }
        // The request counts as received when its body has ended (at once for a
        // request without one): that is what Envoy's request_timeout measures.
        // A buffered body (buffer filter) has been read already.
        let request_done = stream.request_progress.clone().unwrap_or_default();
        stream.request_progress = Some(request_done.clone());
        // The access log sees the request as it goes upstream (rewritten
        // path and host, added headers), as Envoy's does.
        if !self.access_logs.is_empty() {
            stream.request_headers = Some(parts.headers.clone());
            stream.path = upstream_path.to_string();
            stream.authority = authority.clone();
        }
        let cs = &cluster.stats;
        cs.upstream_rq_active.inc();
        host.rq_active.fetch_add(1, Relaxed);
        host.rq_total.fetch_add(1, Relaxed);
        let started = Instant::now();
        stream.upstream = Some((cluster.clone(), host.clone(), started));
        if let Some(up) = upgrade {
            return self.forward_upgrade(stream, parts, matched, ra, cluster, host, up).await;
        }

        // With a retry policy the request body is buffered (up to 1 MiB, as
        // Envoy's default buffer limit) so that it can be sent again.
        let retry = match retry_policy {
            Some(policy) if retryable_body(&parts.headers, &body) => Some(policy.into_owned()),
            _ => None,
        };
        // Mirrors get a copy of the request (its body buffered like a
        // retried one); a body too large for that is not mirrored.
        let mirrors: Vec<(Arc<Cluster>, bool)> = ra
            .mirrors
            .iter()
            .filter(|m| crate::common::fraction::roll(m.per_million))
            .filter_map(|m| clusters.get(&m.cluster).map(|c| (c.clone(), m.keep_host)))
            .collect();
        let buffered = retry.is_some() || (!mirrors.is_empty() && retryable_body(&parts.headers, &body));
        let mut attempts = 1u32;
        let (result, final_host) = match retry {
            None if buffered => {
                let bytes = match http_body_util::BodyExt::collect(body).await {
                    Ok(c) => c.to_bytes(),
                    Err(_) => return self.local_reply(stream, 400, "downstream_remote_disconnect", "DC", None),
                };
                request_done.received.store(bytes.len() as u64, Relaxed);
                request_done.done.store(true, Relaxed);
                for (mc, keep_host) in &mirrors {
                    mirror(mc.clone(), &parts, &authority, *keep_host, bytes.clone());
                }
                let req = Request::from_parts(parts, ProxyBody::full(bytes));
                let mut slot = crate::upstream::pool::Held::default();
                let sent = async { (crate::upstream::pool::send(&cluster, &host, req, &mut slot).await, host.clone()) };
                let waited = self
                    .await_response(sent, ra, route_timeout, cluster.conn_options.max_stream_duration, &request_done)
                    .await;
                stream.rq_slot = slot;
                match waited {
                    Waited::Done(r) => (Waited::Done(r.0), Some(r.1)),
                    other => (other.without_value(), None),
                }
            }
            None => {
                let req = Request::from_parts(parts, body.watched(request_done.clone()));
                let mut slot = crate::upstream::pool::Held::default();
                let sent = async { (crate::upstream::pool::send(&cluster, &host, req, &mut slot).await, host.clone()) };
                let waited = self
                    .await_response(sent, ra, route_timeout, cluster.conn_options.max_stream_duration, &request_done)
                    .await;
                stream.rq_slot = slot;
                match waited {
                    Waited::Done(r) => (Waited::Done(r.0), Some(r.1)),
                    other => (other.without_value(), None),
                }
            }
            Some(policy) => {
                let bytes = match http_body_util::BodyExt::collect(body).await {
                    Ok(c) => c.to_bytes(),
                    Err(_) => return self.local_reply(stream, 400, "downstream_remote_disconnect", "DC", None),
                };
                request_done.received.store(bytes.len() as u64, Relaxed);
                request_done.done.store(true, Relaxed);
                for (mc, keep_host) in &mirrors {
                    mirror(mc.clone(), &parts, &authority, *keep_host, bytes.clone());
                }
                let mut slot = crate::upstream::pool::Held::default();
                let sent = send_with_retries(
                    cluster.clone(),
                    host.clone(),
                    parts,
                    bytes,
                    policy,
                    Attempts { route_timeout, count_header: vh.attempt_count_upstream },
                    &mut slot,
                );
                let waited = self
                    .await_response(sent, ra, route_timeout, cluster.conn_options.max_stream_duration, &request_done)
                    .await;
                stream.rq_slot = slot;
                match waited {
                    Waited::Done(r) => {
                        attempts = r.2;
                        (Waited::Done(r.0), Some(r.1))
                    }
                    other => (other.without_value(), None),
                }
            }
        };
        // The request is the final host's now (for the access log and the
        // active-request count least-request balancing reads).
        if let Some(h) = final_host.filter(|h| !Arc::ptr_eq(h, &host)) {
            host.rq_active.fetch_sub(1, Relaxed);
            h.rq_active.fetch_add(1, Relaxed);
            stream.upstream = Some((cluster.clone(), h, started));
        }
        let result = match result {
            Waited::Done(r) => r,
            Waited::RouteTimeout => {
                return self.route_timeout_reply(stream, &cluster, matched);
            }
            Waited::RequestTimeout => {
                return self.local_reply(stream, 408, "request_overall_timeout", "", Some("request timeout".into()));
            }
            Waited::MaxDuration => {
                // Envoy: 504 once the whole request was received, else 408.
                cs.upstream_rq_max_duration_reached.inc();
                let status = if request_done.done.load(Relaxed) { 504 } else { 408 };
                return self.router_reply(
                    stream,
                    Some(matched),
                    status,
                    "upstream_max_stream_duration_reached",
                    "UMSDR",
                    Some("upstream max stream duration reached".into()),
                );
            }
            Waited::StreamIdle => {
                // Envoy answers 504 once the whole request was received (the
                // wait is the upstream's), 408 while it was still arriving.
                let status = if request_done.done.load(Relaxed) { 504 } else { 408 };
                return self.local_reply(stream, status, "stream_idle_timeout", "SI", Some("stream timeout".into()));
            }
        };
        let upstream_resp = match result {
            Ok(r) => r,
            Err(crate::upstream::pool::UpstreamError::Overflow) => {
                return self.overflow_reply(stream, &cluster, matched)
            }
            // max_connection_pools: Envoy has no pool for the host and
            // answers as when no host is healthy.
            Err(crate::upstream::pool::UpstreamError::PoolOverflow) => {
                cs.record_status(503);
                return self.router_reply(
                    stream,
                    Some(matched),
                    503,
                    "no_healthy_upstream",
                    "UH",
                    Some("no healthy upstream".into()),
                );
            }
            Err(e) => {
                cs.record_status(503);
                if e.response_flag() == "UF" {
                    cs.upstream_rq_pending_failure_eject.inc();
                }
                let details = match e.response_flag() {
                    "UF" => "upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error:_Connection_refused}",
                    "UR" => "upstream_reset_before_response_started{remote_refused_stream_reset}",
                    _ => "upstream_reset_before_response_started{connection_termination}",
                };
                let mut body = e.local_reply_body();
                if attempts > 1 {
                    body = body.replacen("reset reason:", "retried and the latest reset reason:", 1);
                }
                return self.router_reply(stream, Some(matched), 503, details, e.response_flag(), Some(body));
            }
        };
        let status = upstream_resp.status().as_u16();
        cs.record_status(status);
        let (mut rparts, rbody) = upstream_resp.into_parts();
        strip_hop_by_hop(&mut rparts.headers);
        rparts
            .headers
            .insert(X_ENVOY_UPSTREAM_SERVICE_TIME.clone(), HeaderValue::from(started.elapsed().as_millis() as u64));
        rparts.version = http::Version::HTTP_11;
        if vh.attempt_count_response {
            rparts.headers.insert(X_ENVOY_ATTEMPT_COUNT.clone(), HeaderValue::from(attempts));
        }
        let mut resp = Response::from_parts(rparts, ProxyBody::stream(rbody));
        stream.details = "via_upstream";
        self.finish_response(&mut stream, &mut resp, Some(matched));
        // The stream may not outlive the cluster's max_stream_duration
        // (nothing to set up, not even a counter clone, when there is none).
        let max = cluster.conn_options.max_stream_duration;
        resp.map(|b| {
            let body = TrackedBody::new(b, Some(stream));
            match max {
                Some(d) => body.with_deadline(
                    tokio::time::Instant::from_std(started + d),
                    cs.upstream_rq_max_duration_reached.clone(),
                ),
                None => body,
            }
        })
    }
}

/// A generated body: `text/plain` with its length. An empty body gets no
/// header: HTTP/1 then says `content-length: 0` (hyper writes it, except on
/// 204 and 304) and HTTP/2 says nothing, as Envoy does.
fn set_text_body(resp: &mut Response<ProxyBody>, body: Option<bytes::Bytes>) {
    if let Some(b) = body.filter(|b| !b.is_empty()) {
        resp.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(b.len()));
        resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        *resp.body_mut() = ProxyBody::full(b);
    }
}

/// Reads a request body whole, refusing more than `limit` bytes:
/// `Err(true)` when it is too large, `Err(false)` when the client went away.
async fn read_limited(body: ProxyBody, limit: u64) -> Result<bytes::Bytes, bool> {
    use http_body_util::BodyExt as _;
    match http_body_util::Limited::new(body, limit as usize).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => Err(e.downcast_ref::<http_body_util::LengthLimitError>().is_some()),
    }
}

/// Applies route, virtual host and route-configuration mutations in Envoy's
/// order (most specific first, unless `most_specific_header_mutations_wins`).
fn apply_levels(
    levels: [&crate::http::header_mutation::HeaderMutations; 3],
    most_specific_wins: bool,
    h: &mut HeaderMap,
    ctx: &Context<'_>,
) {
    if most_specific_wins {
        for m in levels.iter().rev() {
            m.apply(h, ctx);
        }
    } else {
        for m in levels {
            m.apply(h, ctx);
        }
    }
}

enum Waited<T> {
    Done(T),
    RouteTimeout,
    RequestTimeout,
    StreamIdle,
    /// The cluster's `max_stream_duration` passed before the response.
    MaxDuration,
}

impl<T> Waited<T> {
    /// The same outcome for a timeout, any value dropped.
    fn without_value<U>(self) -> Waited<U> {
        match self {
            Waited::Done(_) | Waited::RouteTimeout => Waited::RouteTimeout,
            Waited::RequestTimeout => Waited::RequestTimeout,
            Waited::StreamIdle => Waited::StreamIdle,
            Waited::MaxDuration => Waited::MaxDuration,
        }
    }
}

/// A body that can be buffered for retries: none, or a declared length of at
/// most 1 MiB.
fn retryable_body(headers: &HeaderMap, body: &ProxyBody) -> bool {
    use http_body::Body as _;
    body.is_end_stream()
        || headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n <= 1 << 20)
}

/// What each attempt of a retried request is told.
struct Attempts {
    route_timeout: Option<Duration>,
    /// Set `x-envoy-attempt-count` on every attempt.
    count_header: bool,
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

/// Sends with the route's retry policy: on a retriable response or failure,
/// waits the jittered back-off and tries again, on another host when the
/// policy avoids previous ones. Returns the last outcome, the host that gave
/// it and the number of attempts.
async fn send_with_retries(
    cluster: Arc<Cluster>,
    first: Arc<Host>,
    parts: http::request::Parts,
    body: bytes::Bytes,
    policy: crate::http::router::retry::RetryPolicy,
    attempts: Attempts,
    rq_slot: &mut crate::upstream::pool::Held,
) -> (Result<Response<Incoming>, crate::upstream::pool::UpstreamError>, Arc<Host>, u32) {
    let route_timeout = attempts.route_timeout;
    let started = Instant::now();
    let mut parts = parts;
    let mut host = first;
    let mut tried: Vec<std::net::SocketAddr> = Vec::new();
    let mut attempt = 0u32;
    loop {
        let mut req = Request::new(ProxyBody::full(body.clone()));
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = parts.uri.clone();
        *req.headers_mut() = parts.headers.clone();
        let sent = crate::upstream::pool::send(&cluster, &host, req, rq_slot);
        let result = match policy.per_try_timeout {
            Some(t) => {
                tokio::time::timeout(t, sent).await.unwrap_or(Err(crate::upstream::pool::UpstreamError::PerTryTimeout))
            }
            None => sent.await,
        };
        let retriable = match &result {
            Ok(r) => policy.retry_response(r.status().as_u16(), r.headers()),
            Err(e) => policy.retry_error(e),
        };
        if !retriable || attempt >= policy.num_retries {
            if retriable {
                cluster.stats.upstream_rq_retry_limit_exceeded.inc();
            }
            if attempt > 0 && retriable_ok(&result, &policy) {
                cluster.stats.upstream_rq_retry_success.inc();
            }
            return (result, host, attempt + 1);
        }
        // A retried response is not counted in upstream_rq_<code>: Envoy
        // counts the response the downstream gets.
        // max_retries: retries in flight across the cluster.
        let Some(_retry_slot) = cluster.breakers.default.try_retry() else {
            cluster.stats.upstream_rq_retry_overflow.inc();
            return (result, host, attempt + 1);
        };
        attempt += 1;
        cluster.stats.upstream_rq_retry.inc();
        tried.push(host.addr);
        drop(result);
        tokio::time::sleep(policy.backoff(attempt)).await;
        if attempts.count_header {
            parts.headers.insert(X_ENVOY_ATTEMPT_COUNT.clone(), HeaderValue::from(attempt + 1));
        }
        // The next attempt is told the time the route's timeout leaves.
        if let Some(ms) =
            crate::http::router::retry::expected_timeout_ms(route_timeout, policy.per_try_timeout, started.elapsed())
        {
            parts.headers.insert(X_ENVOY_EXPECTED_TIMEOUT.clone(), HeaderValue::from(ms));
        }
        // Pick the next host, avoiding earlier ones when asked to.
        let mut next = cluster.pick();
        for _ in 1..policy.host_selection_attempts.max(if policy.avoid_previous_hosts { 3 } else { 1 }) {
            match &next {
                Some(h) if policy.avoid_previous_hosts && tried.contains(&h.addr) => next = cluster.pick(),
                _ => break,
            }
        }
        if let Some(n) = next {
            if !Arc::ptr_eq(&n, &host) {
                n.rq_total.fetch_add(1, Relaxed);
                host = n;
            }
        }
    }
}

/// A final outcome that the policy would not have retried (a success).
fn retriable_ok(
    result: &Result<Response<Incoming>, crate::upstream::pool::UpstreamError>,
    policy: &crate::http::router::retry::RetryPolicy,
) -> bool {
    match result {
        Ok(r) => !policy.retry_response(r.status().as_u16(), r.headers()),
        Err(_) => false,
    }
}

impl Hcm {
    /// Waits for upstream response headers under the route timeout, the HCM's
    /// request timeout (only while the request is still arriving) and the
    /// stream idle timeout (the route's `idle_timeout` when it sets one).
    /// Timers that are off cost nothing.
    async fn await_response<F: std::future::Future>(
        &self,
        fut: F,
        ra: &RouteAction,
        route_timeout: Option<Duration>,
        max_stream: Option<Duration>,
        request_done: &crate::body::RequestProgress,
    ) -> Waited<F::Output> {
        let idle_timeout = ra.idle_timeout.unwrap_or(self.stream_idle_timeout);
        let far = Duration::from_secs(365 * 24 * 3600);
        let route = tokio::time::sleep(route_timeout.unwrap_or(far));
        let request = tokio::time::sleep(self.request_timeout.unwrap_or(far));
        let idle = tokio::time::sleep(idle_timeout.unwrap_or(far));
        let max = tokio::time::sleep(max_stream.unwrap_or(far));
        tokio::pin!(fut, route, request, idle, max);
        loop {
            tokio::select! {
                r = &mut fut => return Waited::Done(r),
                _ = &mut route, if route_timeout.is_some() => return Waited::RouteTimeout,
                _ = &mut request, if self.request_timeout.is_some() => {
                    if !request_done.done.load(Relaxed) {
                        return Waited::RequestTimeout;
                    }
                    request.as_mut().reset(tokio::time::Instant::now() + far);
                }
                _ = &mut idle, if idle_timeout.is_some() => return Waited::StreamIdle,
                _ = &mut max, if max_stream.is_some() => return Waited::MaxDuration,
            }
        }
    }
}

fn format_port(host: &Host) -> String {
    if host.hostname.parse::<IpAddr>().is_ok() {
        format!(":{}", host.addr.port())
    } else {
        String::new()
    }
}

/// The `location` of a redirect, built from the request as Envoy does.
fn redirect_location(rd: &Redirect, route: &Route, authority: &str, path: &str, _edge: bool) -> String {
    let scheme = rd.scheme.as_deref().unwrap_or("http");
    let (req_host, req_port) = match authority.rsplit_once(':') {
        Some((h, p))
            if p.chars().all(|c| c.is_ascii_digit()) && !h.ends_with(']')
                || authority.starts_with('[') && authority.contains("]:") =>
        {
            (h.to_string(), Some(p.to_string()))
        }
        _ => (authority.to_string(), None),
    };
    let host = rd.host.clone().unwrap_or(req_host);
    let port = match (rd.port, &rd.host) {
        (Some(p), _) => Some(p.to_string()),
        // A new host replaces host and port.
        (None, Some(_)) => None,
        // A new scheme keeps the request's port, unless it was the old scheme's default.
        (None, None) if rd.scheme.is_some() => req_port.filter(|p| p != "80"),
        (None, None) => req_port,
    };
    let port = port.filter(|p| !((scheme == "http" && p == "80") || (scheme == "https" && p == "443")));
    let (p, q) = crate::http::route::split_query(path);
    let new_path = if let Some(np) = &rd.path {
        // path_redirect replaces path and query (a query in it is kept as given).
        if np.contains('?') || rd.strip_query {
            np.clone()
        } else {
            format!("{np}{q}")
        }
    } else if let (Some(pr), Some(prefix)) = (&rd.prefix_rewrite, route.prefix()) {
        let rest = path.get(prefix.len()..).unwrap_or("");
        let full = format!("{pr}{rest}");
        if rd.strip_query {
            crate::http::route::split_query(&full).0.to_string()
        } else {
            full
        }
    } else if let Some((re, sub)) = &rd.regex_rewrite {
        let np = re.replace_all(p, sub.as_str()).into_owned();
        if rd.strip_query {
            np
        } else {
            format!("{np}{q}")
        }
    } else if rd.strip_query {
        p.to_string()
    } else {
        path.to_string()
    };
    match port {
        Some(port) => format!("{scheme}://{host}:{port}{new_path}"),
        None => format!("{scheme}://{host}{new_path}"),
    }
}

/// What a request asks to switch to.
enum UpgradeKind {
    /// CONNECT (HTTP/1.1, or HTTP/2 without `:protocol`).
    Connect,
    /// HTTP/1.1 `Upgrade: <value>` with `connection: upgrade`, and the
    /// `connection` value as received (passed on as it is, as Envoy does).
    Header(HeaderValue, HeaderValue),
}

impl UpgradeKind {
    /// The name `upgrade_configs` know it by (compared ignoring case).
    fn as_str(&self) -> &str {
        match self {
            UpgradeKind::Connect => "CONNECT",
            UpgradeKind::Header(v, _) => v.to_str().unwrap_or(""),
        }
    }
}

/// An accepted upgrade, carried from the connection manager to the router.
struct Upgrade {
    kind: UpgradeKind,
    /// `connect_config` on the route: Legate answers the CONNECT itself.
    terminate: bool,
    /// Where the downstream connection (or HTTP/2 stream) is handed over
    /// once the response has been written.
    on_upgrade: Option<hyper::upgrade::OnUpgrade>,
    /// CONNECT's `host:port`.
    target: Option<http::uri::Authority>,
}

/// The upgrade a request asks for, if any. Costs a method compare for
/// ordinary requests, plus one header lookup on HTTP/1.1.
fn upgrade_kind(parts: &mut http::request::Parts, extended: bool) -> Option<UpgradeKind> {
    if parts.method == http::Method::CONNECT {
        // An extended CONNECT (`:protocol`) was read as an upgrade already
        // (`handle`); one left here had an unusable protocol name.
        if parts.extensions.get::<hyper::ext::Protocol>().is_some() {
            return None;
        }
        return Some(UpgradeKind::Connect);
    }
    if parts.version != http::Version::HTTP_11 && !extended {
        return None;
    }
    let value = parts.headers.get(http::header::UPGRADE)?;
    // HTTP/1.1 to h2c is not offered: Envoy drops the upgrade headers
    // (`strip_hop_by_hop` removes `upgrade` and `connection`) and
    // HTTP2-Settings, and serves the request as HTTP/1.1.
    if value.as_bytes().eq_ignore_ascii_case(b"h2c") {
        parts.headers.remove(&HTTP2_SETTINGS);
        return None;
    }
    let connection = parts
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .find(|v| v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade"))))?;
    Some(UpgradeKind::Header(value.clone(), connection.clone()))
}

impl Hcm {
    /// Envoy's rule: a route's `upgrade_configs` entry for the type decides
    /// when present (disabled refuses; enabled allows even when the
    /// connection manager does not list the type); otherwise the connection
    /// manager's entry does. `Some(terminate)` when allowed, where
    /// `terminate` says the route has a `connect_config` for CONNECT.
    fn upgrade_decision(&self, kind: &str, route: Option<&Route>) -> Option<bool> {
        let mut route_enabled = false;
        let mut terminate = false;
        if let Some(Route { action: Action::Forward(ra), .. }) = route {
            if let Some(u) = ra.upgrades.iter().find(|u| u.kind.eq_ignore_ascii_case(kind)) {
                if !u.enabled {
                    return None;
                }
                route_enabled = true;
                terminate = u.terminate_connect && kind.eq_ignore_ascii_case("connect");
            }
        }
        let hcm_enabled = self.upgrades.iter().any(|(k, enabled)| *enabled && k.eq_ignore_ascii_case(kind));
        (route_enabled || hcm_enabled).then_some(terminate)
    }

    /// The router's part of an accepted upgrade. A terminated CONNECT is
    /// answered 200 once a raw connection to the host is up; otherwise the
    /// request goes to the host on a connection of its own (HTTP/1.1, never
    /// pooled), and a 101 (or a 2xx to a CONNECT) switches both sides to a
    /// byte tunnel that lasts until either side closes or the stream idle
    /// timeout passes. Any other answer is proxied as a response.
    #[allow(clippy::too_many_arguments)]
    async fn forward_upgrade(
        self: &Arc<Self>,
        mut stream: Box<Stream>,
        mut parts: http::request::Parts,
        matched: Matched<'_>,
        ra: &RouteAction,
        cluster: Arc<Cluster>,
        host: Arc<Host>,
        up: Upgrade,
    ) -> ProxyResponse {
        let cs = &cluster.stats;
        let idle = ra.idle_timeout.unwrap_or(self.stream_idle_timeout);
        let Some(on_upgrade) = up.on_upgrade else {
            return self.router_reply(stream, Some(matched), 503, "upgrade_failed", "", None);
        };
        let connect = matches!(up.kind, UpgradeKind::Connect);
        if connect && up.terminate {
            return match crate::upstream::pool::connect_owned(&cluster, &host).await {
                Err(e) => {
                    cs.record_status(503);
                    let details = "upstream_reset_before_response_started{remote_connection_failure}";
                    self.router_reply(
                        stream,
                        Some(matched),
                        503,
                        details,
                        e.response_flag(),
                        Some(e.local_reply_body()),
                    )
                }
                Ok((io, guard)) => {
                    cs.upstream_rq_total.inc();
                    cs.record_status(200);
                    stream.details = "via_upstream";
                    let mut resp = Response::new(ProxyBody::Empty);
                    self.finish_response(&mut stream, &mut resp, Some(matched));
                    resp.headers_mut().remove(http::header::CONNECTION);
                    stream.conn.upgraded.store(true, Relaxed);
                    tokio::spawn(tunnel(stream, on_upgrade, io, guard, idle));
                    resp.map(|b| TrackedBody::new(b, None))
                }
            };
        }
        if cluster.http2 {
            // Envoy would carry the upgrade as an extended CONNECT stream;
            // Legate does not speak that upstream.
            return self.router_reply(
                stream,
                Some(matched),
                503,
                "upgrade_failed",
                "",
                Some("upgrades to an HTTP/2 cluster are not supported".into()),
            );
        }
        match &up.kind {
            UpgradeKind::Header(v, connection) => {
                parts.headers.insert(http::header::CONNECTION, connection.clone());
                parts.headers.insert(http::header::UPGRADE, v.clone());
            }
            UpgradeKind::Connect => match up.target.map(http::Uri::from) {
                Some(u) => parts.uri = u,
                None => return self.router_reply(stream, Some(matched), 400, "invalid_path", "", None),
            },
        }
        let req = Request::from_parts(parts, ProxyBody::Empty);
        let request_done = crate::body::RequestProgress::default();
        request_done.done.store(true, Relaxed);
        let mut slot = crate::upstream::pool::Held::default();
        let sent = crate::upstream::pool::send_upgrade(&cluster, &host, req, &mut slot);
        let waited = self.await_response(sent, ra, ra.timeout, None, &request_done).await;
        stream.rq_slot = slot;
        let (upstream_resp, guard) = match waited {
            Waited::Done(Ok(r)) => r,
            Waited::Done(Err(crate::upstream::pool::UpstreamError::Overflow)) => {
                return self.overflow_reply(stream, &cluster, matched)
            }
            Waited::Done(Err(e)) => {
                cs.record_status(503);
                let details = match e.response_flag() {
                    "UF" => "upstream_reset_before_response_started{remote_connection_failure}",
                    _ => "upstream_reset_before_response_started{connection_termination}",
                };
                return self.router_reply(
                    stream,
                    Some(matched),
                    503,
                    details,
                    e.response_flag(),
                    Some(e.local_reply_body()),
                );
            }
            Waited::RouteTimeout | Waited::StreamIdle | Waited::RequestTimeout | Waited::MaxDuration => {
                return self.route_timeout_reply(stream, &cluster, matched);
            }
        };
        let status = upstream_resp.status().as_u16();
        cs.record_status(status);
        let switched = status == 101 || (connect && (200..300).contains(&status));
        let mut upstream_resp = upstream_resp;
        let upstream_upgrade = switched.then(|| hyper::upgrade::on(&mut upstream_resp));
        let (mut rparts, rbody) = upstream_resp.into_parts();
        let upgrade_value = rparts.headers.get(http::header::UPGRADE).cloned();
        strip_hop_by_hop(&mut rparts.headers);
        rparts.version = http::Version::HTTP_11;
        // Envoy sends no x-envoy-upstream-service-time on an upgrade's
        // answer, switched or not.
        let Some(upstream_upgrade) = upstream_upgrade else {
            // Not switched: an ordinary response on the upgrade's own connection.
            let mut resp = Response::from_parts(rparts, ProxyBody::stream(rbody));
            stream.details = "via_upstream";
            self.finish_response(&mut stream, &mut resp, Some(matched));
            drop(guard);
            return resp.map(|b| TrackedBody::new(b, Some(stream)));
        };
        let mut resp = Response::from_parts(rparts, ProxyBody::Empty);
        stream.details = "via_upstream";
        self.finish_response(&mut stream, &mut resp, Some(matched));
        resp.headers_mut().remove(http::header::CONNECTION);
        if stream.protocol == "HTTP/2" {
            // An extended CONNECT is answered 200 (RFC 8441), as Envoy
            // turns the upstream's 101 around.
            *resp.status_mut() = StatusCode::OK;
            resp.headers_mut().remove(http::header::UPGRADE);
            stream.status = 200;
        } else if status == 101 {
            resp.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("upgrade"));
            if let Some(v) = upgrade_value {
                resp.headers_mut().insert(http::header::UPGRADE, v);
            }
        }
        stream.conn.upgraded.store(true, Relaxed);
        tokio::spawn(async move {
            match upstream_upgrade.await {
                Ok(io) => tunnel(stream, on_upgrade, TokioIo::new(io), guard, idle).await,
                Err(_) => {
                    drop(guard);
                    Finish::finish(stream, 0, false);
                }
            }
        });
        resp.map(|b| TrackedBody::new(b, None))
    }
}

/// Bytes both ways between the downstream connection (once hyper has
/// written the response and handed it over) and the upstream, then the
/// stream's stats and access log. `bytes_received`/`bytes_sent` count the
/// tunnelled bytes. Cost: the tcp_proxy's two buffers (16 KiB, growing to 64 KiB).
async fn tunnel<U: crate::tls::Io, G: Send + 'static>(
    mut stream: Box<Stream>,
    down: hyper::upgrade::OnUpgrade,
    up: U,
    guard: G,
    idle: Option<Duration>,
) {
    let (rx, tx, complete) = match down.await {
        Ok(d) => {
            let p = crate::listener::network::tcp_proxy::pipe_ends(TokioIo::new(d), up, idle).await;
            if p.timed_out {
                stream.flags = "SI";
                stream.details = "stream_idle_timeout";
            } else {
                // Envoy's flags for a tunnel its upstream, or its
                // downstream, ended.
                stream.flags = if p.upstream_first { "UC" } else { "DC" };
            }
            (p.rx, p.tx, true)
        }
        Err(_) => (0, 0, false),
    };
    drop(guard);
    stream.request_progress = None;
    stream.bytes_received = rx;
    Finish::finish(stream, tx, complete);
}
