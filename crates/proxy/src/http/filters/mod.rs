//! The HTTP filter chain in front of the router. Filters run in order on the
//! request; one may answer it locally. The router is last, always. On the
//! way back, `finish_response` lets the filters change the response (CORS
//! headers, compression).

pub mod compressor;
pub mod cors;
pub mod fault;
pub mod jwt;
pub mod local_ratelimit;
pub mod rbac;

use crate::common::matcher::{HeaderMatch, Pseudo};
use legate_api::pb::envoy::extensions::filters::http::health_check::v3::HealthCheck;
use legate_api::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_filter, HttpFilter as PbFilter,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub const ROUTER_TYPE: &str = "envoy.extensions.filters.http.router.v3.Router";
pub const HEALTH_CHECK_TYPE: &str = "envoy.extensions.filters.http.health_check.v3.HealthCheck";
pub const FAULT_TYPE: &str = "envoy.extensions.filters.http.fault.v3.HTTPFault";
pub const LOCAL_RATELIMIT_TYPE: &str = "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";
pub const RBAC_TYPE: &str = "envoy.extensions.filters.http.rbac.v3.RBAC";
pub const RBAC_PER_ROUTE_TYPE: &str = "envoy.extensions.filters.http.rbac.v3.RBACPerRoute";
pub const CORS_TYPE: &str = "envoy.extensions.filters.http.cors.v3.Cors";
pub const CORS_POLICY_TYPE: &str = "envoy.extensions.filters.http.cors.v3.CorsPolicy";
pub const COMPRESSOR_TYPE: &str = "envoy.extensions.filters.http.compressor.v3.Compressor";
pub const JWT_TYPE: &str = "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication";
pub const BUFFER_TYPE: &str = "envoy.extensions.filters.http.buffer.v3.Buffer";

// Fractions (percentages, enabled/enforced shares) and the draw against them.
pub(crate) use crate::common::fraction::{per_million, roll};

enum Filter {
    /// Answers health checks itself (non-pass-through mode): 200 while the
    /// server is healthy, 503 after `/healthcheck/fail`.
    /// `cluster` is this proxy's cluster, sent back as
    /// `x-envoy-upstream-healthchecked-cluster`.
    HealthCheck { headers: Vec<HeaderMatch>, cluster: http::HeaderValue },
    /// `envoy.filters.http.fault`: delays and aborts, fixed or asked for by
    /// request headers, each with its probability.
    Fault(Box<fault::Fault>),
    /// `envoy.filters.http.local_ratelimit`: a token bucket in front of the router.
    RateLimit(Box<local_ratelimit::RateLimitFilter>),
    /// `envoy.filters.http.rbac`: 403 unless the rules allow the request.
    Rbac(Box<rbac::Rbac>),
    /// `envoy.filters.http.cors`: the policies live on routes and virtual hosts.
    Cors(Box<cors::Stats>),
    /// `envoy.filters.http.buffer`: the whole request body is read (at most
    /// this many bytes) before it goes upstream.
    Buffer(u64),
    /// `envoy.filters.http.compressor` (gzip): works on the response.
    Compressor(Box<compressor::Compressor>),
    /// `envoy.filters.http.jwt_authn` with local JWKS.
    Jwt(Box<jwt::JwtAuthn>),
}

/// What the request filters see of a request.
pub struct RequestCtx<'a> {
    pub headers: &'a mut http::HeaderMap,
    pub method: &'a http::Method,
    pub pseudo: Pseudo<'a>,
    /// The connection's peer.
    pub direct_remote: std::net::IpAddr,
    /// The client, after x-forwarded-for.
    pub remote: std::net::IpAddr,
    pub local: std::net::SocketAddr,
    /// The connection's TLS facts (peer certificate), None for plain TCP.
    pub tls: Option<&'a crate::tls::peer::TlsConn>,
    /// The SNI the client asked for, "" without one.
    pub sni: &'a str,
    /// The matched route's and virtual host's per-filter configs, most specific first.
    pub route: [Option<&'a crate::http::route::PerFilter>; 2],
    /// A new path for the request (jwt_authn taking out `access_token`).
    pub new_path: Option<String>,
}

/// What the request filters leave for the response. Per request: empty
/// (no allocation) unless a filter has something to add.
#[derive(Default)]
pub struct ResponseState {
    /// Headers every response to this request gets (CORS).
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// The request's `accept-encoding`, kept when the chain compresses
    /// (a reference-counted copy of the value).
    pub accept_encoding: Option<http::HeaderValue>,
}

/// What a filter decided for a request.
pub enum Verdict {
    Continue,
    /// Answer with this status and these headers, no body.
    Respond(u16, Vec<(&'static str, http::HeaderValue)>),
    /// Answer with this status and a text body; `flag` for the access log.
    Abort {
        status: u16,
        body: &'static str,
        flag: &'static str,
    },
    /// Rate limited: this status, body `local_rate_limited`, these headers.
    Limited {
        status: u16,
        headers: Vec<(http::HeaderName, http::HeaderValue)>,
    },
    /// A local reply: status, `text/plain` body (none when empty), response
    /// code details and flag for the access log, extra headers.
    Reply {
        status: u16,
        body: &'static str,
        details: &'static str,
        flag: &'static str,
        headers: Vec<(http::HeaderName, http::HeaderValue)>,
    },
}

static DEFAULT_CORS: std::sync::LazyLock<cors::Policy> = std::sync::LazyLock::new(cors::Policy::default);

pub struct FilterChain {
    filters: Vec<Filter>,
    healthy: Arc<AtomicBool>,
}

impl FilterChain {
    /// `ctx` gives the server's health-check state, stats store and cluster.
    pub fn compile(
        pb: &[PbFilter],
        ctx: &crate::http::context::CompileContext,
        stat_prefix: &str,
    ) -> Result<Self, String> {
        let (healthy, store) = (ctx.healthy.clone(), &*ctx.store);
        fn type_of(f: &PbFilter) -> Option<&legate_api::pb::google::protobuf::Any> {
            match &f.config_type {
                Some(http_filter::ConfigType::TypedConfig(a)) => Some(a),
                _ => None,
            }
        }
        let Some((last, rest)) = pb.split_last() else {
            return Err("http_filters: the router is required as the last filter".into());
        };
        if type_of(last).is_none_or(|a| legate_api::any::type_name(a) != ROUTER_TYPE) {
            return Err("http_filters: the last filter must be envoy.filters.http.router".into());
        }
        let mut filters = Vec::new();
        for (i, f) in rest.iter().enumerate() {
            let Some(any) = type_of(f) else { return Err(format!("http_filters[{i}].typed_config is required")) };
            match legate_api::any::type_name(any) {
                HEALTH_CHECK_TYPE => {
                    let hc: HealthCheck = legate_api::any::unpack(any)?;
                    if hc.pass_through_mode.is_some_and(|b| b.value) {
                        return Err(format!(
                            "http_filters[{i}].typed_config.pass_through_mode: only false is supported"
                        ));
                    }
                    let headers = hc.headers.iter().map(HeaderMatch::new).collect::<Result<_, _>>()?;
                    filters.push(Filter::HealthCheck { headers, cluster: ctx.local_cluster.clone() });
                }
                FAULT_TYPE => {
                    let f = legate_api::any::unpack(any)?;
                    filters.push(Filter::Fault(Box::new(fault::Fault::compile(&f, store, stat_prefix, i)?)));
                }
                LOCAL_RATELIMIT_TYPE => {
                    let l = legate_api::any::unpack(any)?;
                    filters.push(Filter::RateLimit(Box::new(local_ratelimit::RateLimitFilter::compile(
                        &l, &ctx.store, i,
                    )?)));
                }
                RBAC_TYPE => {
                    let c: rbac::Config = legate_api::any::unpack(any)?;
                    let r = rbac::Rbac::compile(&c, store, stat_prefix)
                        .map_err(|e| format!("http_filters[{i}].typed_config.{e}"))?;
                    filters.push(Filter::Rbac(Box::new(r)));
                }
                CORS_TYPE => filters.push(Filter::Cors(Box::new(cors::Stats::new(store, stat_prefix)))),
                COMPRESSOR_TYPE => {
                    let c: legate_api::pb::envoy::extensions::filters::http::compressor::v3::Compressor =
                        legate_api::any::unpack(any)?;
                    let c = compressor::Compressor::compile(&c, store, stat_prefix)
                        .map_err(|e| format!("http_filters[{i}].typed_config.{e}"))?;
                    // Envoy negotiates among all compressors of a chain;
                    // Legate does not yet, so it takes one.
                    if filters.iter().any(|f| matches!(f, Filter::Compressor(_))) {
                        return Err(format!(
                            "http_filters[{i}]: more than one compressor filter in a chain is not supported"
                        ));
                    }
                    filters.push(Filter::Compressor(Box::new(c)));
                }
                JWT_TYPE => {
                    let c: legate_api::pb::envoy::extensions::filters::http::jwt_authn::v3::JwtAuthentication =
                        legate_api::any::unpack(any)?;
                    let j = jwt::JwtAuthn::compile(&c, store, stat_prefix, ctx)
                        .map_err(|e| format!("http_filters[{i}].typed_config.{e}"))?;
                    filters.push(Filter::Jwt(Box::new(j)));
                }
                BUFFER_TYPE => {
                    use legate_api::pb::envoy::extensions::filters::http::buffer::v3::Buffer;
                    let b: Buffer = legate_api::any::unpack(any)?;
                    let max = b
                        .max_request_bytes
                        .as_ref()
                        .ok_or(format!("http_filters[{i}].typed_config.max_request_bytes is required"))?;
                    filters.push(Filter::Buffer(u64::from(max.value)));
                }
                other => return Err(format!("http_filters[{i}]: filter {other} is not supported")),
            }
        }
        Ok(Self { filters, healthy })
    }

    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// Headers the filters add to every response: while health checks fail,
    /// the health check filter marks all responses so downstream proxies stop
    /// sending at once.
    pub fn response_header(&self) -> Option<(&'static str, &'static str)> {
        let failing = !self.healthy.load(Ordering::Relaxed);
        (failing && self.filters.iter().any(|f| matches!(f, Filter::HealthCheck { .. })))
            .then_some(("x-envoy-immediate-health-check-fail", "true"))
    }

    /// Lets the filters change a response, in reverse order as Envoy's
    /// encoder filters run. Cost: a scan of the chain; nothing else unless a
    /// compressor is configured.
    pub fn on_response(&self, state: &ResponseState, resp: &mut http::Response<crate::body::ProxyBody>) {
        for f in self.filters.iter().rev() {
            if let Filter::Compressor(c) = f {
                c.on_response(state.accept_encoding.as_ref(), resp);
            }
        }
    }

    /// The smallest `max_request_bytes` of the buffer filters: the request
    /// body is read whole before routing when there is one.
    pub fn buffer_limit(&self) -> Option<u64> {
        self.filters.iter().filter_map(|f| if let Filter::Buffer(n) = f { Some(*n) } else { None }).min()
    }

    /// Runs the request filters. Cost: nothing when the chain has only the router.
    pub async fn on_request(&self, rq: &mut RequestCtx<'_>, state: &mut ResponseState) -> Verdict {
        for f in &self.filters {
            let (headers, pseudo) = (&*rq.headers, &rq.pseudo);
            match f {
                Filter::Compressor(c) => state.accept_encoding = c.on_request(rq.headers),
                Filter::Jwt(j) => {
                    if let Err(e) = j.on_request(rq.headers, &rq.pseudo, &mut rq.new_path).await {
                        let headers = jwt::www_authenticate(e, rq.pseudo.authority, rq.pseudo.path)
                            .map(|v| (http::header::WWW_AUTHENTICATE, v))
                            .into_iter()
                            .collect();
                        return Verdict::Reply {
                            status: e.status(),
                            body: e.message(),
                            details: e.details(),
                            flag: "",
                            headers,
                        };
                    }
                }
                Filter::Rbac(r) => {
                    let subject = rbac::Subject {
                        headers,
                        pseudo,
                        http: true,
                        tls: rq.tls,
                        sni: rq.sni,
                        direct_remote: rq.direct_remote,
                        remote: rq.remote,
                        local: rq.local,
                    };
                    let per_route = rq.route.iter().flatten().find_map(|p| p.rbac.as_deref());
                    if !r.check(&subject, per_route) {
                        return Verdict::Reply {
                            status: 403,
                            body: "RBAC: access denied",
                            details: "rbac_access_denied_matched_policy[none]",
                            flag: "",
                            headers: Vec::new(),
                        };
                    }
                }
                Filter::Cors(stats) => {
                    let mut policies: [&cors::Policy; 2] = [&DEFAULT_CORS; 2];
                    let mut n = 0;
                    for p in rq.route.iter().flatten().filter_map(|p| p.cors.as_deref()) {
                        policies[n] = p;
                        n += 1;
                    }
                    match cors::decide(&policies[..n], rq.method, headers, stats) {
                        cors::Decision::Pass => {}
                        cors::Decision::Actual(h) => state.headers.extend(h),
                        cors::Decision::Preflight(h) => {
                            return Verdict::Reply {
                                status: 200,
                                body: "",
                                details: "cors_response",
                                flag: "",
                                headers: h,
                            }
                        }
                    }
                }
                Filter::Buffer(_) => {}
                Filter::RateLimit(rl) => {
                    if let Some(v) = rl.on_request(rq) {
                        return v;
                    }
                }
                Filter::Fault(fault) => {
                    if let Some(v) = fault.on_request(headers, pseudo).await {
                        return v;
                    }
                }
                Filter::HealthCheck { headers: want, cluster } => {
                    if want.iter().all(|m| m.matches(headers, pseudo)) {
                        let named = ("x-envoy-upstream-healthchecked-cluster", cluster.clone());
                        return if self.healthy.load(Ordering::Relaxed) {
                            Verdict::Respond(200, vec![named])
                        } else {
                            let fail = ("x-envoy-immediate-health-check-fail", http::HeaderValue::from_static("true"));
                            Verdict::Respond(503, vec![named, fail])
                        };
                    }
                }
            }
        }
        Verdict::Continue
    }
}
