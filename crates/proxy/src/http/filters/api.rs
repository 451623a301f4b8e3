//! What an HTTP filter is: the `HttpFilter` trait, what it sees of a
//! request (`RequestCtx`), what it may leave for the response
//! (`ResponseState`), what it decides (`FilterStatus`, `Verdict`), and what
//! compiling it gets (`FilterContext`) and how it is registered
//! (`Registration`).

use crate::body::ProxyBody;
use crate::common::matcher::Pseudo;
use crate::http::filters::jwt::remote_jwks::RemoteJwks;
use crate::http::route::per_filter::{PerFilter, PerRouteConfig};
use crate::stats::Store;
use crate::upstream::cluster::ClusterMap;
use arc_swap::ArcSwap;
use legate_api::pb::google::protobuf::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, Weak};

/// One HTTP filter of a chain, compiled from its config. Filters run in
/// order on the request; the chain calls the response hooks a filter asks
/// for (see `response_hooks`).
pub trait HttpFilter: Send + Sync {
    /// Runs on a request. A filter that has to wait (a remote JWKS fetch, a
    /// fault delay) returns its work as a future; every other outcome is
    /// returned without allocating.
    fn on_request<'r>(&'r self, rq: &'r mut RequestCtx<'_>, state: &'r mut ResponseState) -> FilterStatus<'r>;

    /// Called, instead of `on_request`, on a filter with a waiting response
    /// hook when a filter before it answered the request: Envoy's encoder
    /// filters all see a local reply, so its hook may still run on it.
    fn on_request_skipped(&self, _rq: &RequestCtx<'_>, _state: &mut ResponseState) {}

    /// Which response hooks the chain calls for this filter. Asked once,
    /// when the chain is compiled, so a filter without any costs nothing on
    /// the response.
    fn response_hooks(&self) -> ResponseHooks {
        ResponseHooks::default()
    }

    /// Changes a response (filters run in reverse order, as Envoy's encoder
    /// filters do). Called when `response_hooks().on_response`.
    fn on_response(&self, _state: &ResponseState, _resp: &mut http::Response<ProxyBody>) {}

    /// Changes a proxied response before its headers go downstream, waiting
    /// as long as it needs (a script reading the whole body, or calling
    /// out). Runs before `on_response`, in reverse order. Called when
    /// `response_hooks().wait`.
    fn on_response_wait<'r>(
        &'r self,
        _state: &'r mut ResponseState,
        _resp: &'r mut http::Response<ProxyBody>,
    ) -> Option<Pin<Box<dyn Future<Output = ()> + Send + 'r>>> {
        None
    }

    /// A header every response gets now. Called when `response_hooks().response_header`.
    fn response_header(&self) -> Option<(&'static str, &'static str)> {
        None
    }

    /// Rewrites the request body as it streams (grpc_web's base64 text).
    /// Called when `response_hooks().rewrites_request_body`, in chain order.
    fn on_request_body(&self, _state: &ResponseState, body: ProxyBody) -> ProxyBody {
        body
    }

    /// The request body is read whole, at most this many bytes, before it
    /// goes upstream (the buffer filter).
    fn buffer_limit(&self) -> Option<u64> {
        None
    }

    /// The request body this filter reads before it runs (ext_authz's
    /// `with_request_body`), for this request; `RequestCtx::read_body` then
    /// holds it.
    fn request_body(&self, _rq: &RequestCtx<'_>) -> Option<BodyWant> {
        None
    }
}

/// How much of a request body a filter reads before it runs.
#[derive(Debug, Clone, Copy)]
pub struct BodyWant {
    /// At most this many bytes.
    pub max: u64,
    /// A longer body goes on with its first `max` bytes read (else it is
    /// refused with 413).
    pub partial: bool,
}

/// The part of a request body read before the filters ran.
pub use crate::body::ReadBody;

/// The response hooks a filter has.
#[derive(Debug, Default, Clone, Copy)]
pub struct ResponseHooks {
    /// `on_response` changes responses.
    pub on_response: bool,
    /// `response_header` may add a header to every response.
    pub response_header: bool,
    /// `request_body` may ask for the request body.
    pub request_body: bool,
    /// `on_response_wait` changes proxied responses and may wait.
    pub wait: bool,
    /// `on_request_body` rewrites request bodies as they stream.
    pub rewrites_request_body: bool,
}

/// What a filter's request hook decided.
pub enum FilterStatus<'r> {
    /// On to the next filter.
    Continue,
    /// Stop here (unless the verdict is `Verdict::Continue`).
    Done(Verdict),
    /// Wait for this, then take its verdict.
    Wait(Pin<Box<dyn Future<Output = Verdict> + Send + 'r>>),
}

/// What the request filters see of a request.
pub struct RequestCtx<'a> {
    pub headers: &'a mut http::HeaderMap,
    pub method: &'a http::Method,
    pub version: http::Version,
    pub pseudo: Pseudo<'a>,
    /// `HTTP/1.1`, `HTTP/2` ... as the access log names it.
    pub protocol: &'static str,
    /// The request body; a filter may read it whole and put it back.
    pub body: &'a mut ProxyBody,
    /// The connection's peer, with its port.
    pub peer: std::net::SocketAddr,
    /// The client, after x-forwarded-for, with the peer's port.
    pub client: std::net::SocketAddr,
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
    pub route: [Option<&'a PerFilter>; 2],
    /// A new path for the request (jwt_authn taking out `access_token`).
    pub new_path: Option<String>,
    /// A new host for the request (the dynamic forward proxy's host
    /// rewrite; the filter sets the `host` header too).
    pub new_authority: Option<String>,
    /// The cluster the matched route names (a single `cluster`), for the
    /// stats filters charge to it.
    pub route_cluster: Option<&'a str>,
    /// The body a filter asked for (`HttpFilter::request_body`), read
    /// before the filters run.
    pub read_body: Option<ReadBody>,
    /// The listener's `per_connection_buffer_limit_bytes`: the most of a
    /// body a filter may hold whole (a Lua script's `body()`).
    pub buffer_limit: u64,
    /// The route is to be found again after the filters (Envoy's
    /// `clearRouteCache`: a Lua script changed the request's headers).
    pub clear_route_cache: bool,
}

impl RequestCtx<'_> {
    /// The most specific per-route config of type `T` (the route's, else the
    /// virtual host's).
    pub fn per_route<T: std::any::Any>(&self) -> Option<&T> {
        self.route.iter().flatten().find_map(|p| p.get::<T>())
    }

    /// The request's headers as scripts and plugins see them (Envoy's
    /// header map): `:authority`, `:path`, `:method`, `:scheme`, then the
    /// rest (`host` is `:authority`).
    pub fn header_list(&self) -> Vec<(String, Vec<u8>)> {
        let p = &self.pseudo;
        let mut list = vec![
            (":authority".to_string(), p.authority.as_bytes().to_vec()),
            (":path".to_string(), p.path.as_bytes().to_vec()),
            (":method".to_string(), p.method.as_bytes().to_vec()),
            (":scheme".to_string(), p.scheme.as_bytes().to_vec()),
        ];
        list.extend(
            self.headers
                .iter()
                .filter(|(k, _)| *k != http::header::HOST)
                .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec())),
        );
        list
    }
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
    /// Headers added to the response beside any of the same name (ext_authz's
    /// `response_headers_to_add`).
    pub appended: Vec<(http::HeaderName, http::HeaderValue)>,
    /// What a filter carries from the request to its response hooks (the
    /// Lua filter's script, stream facts and dynamic metadata); each filter
    /// finds its own by type.
    pub carried: Vec<std::sync::Arc<dyn std::any::Any + Send + Sync>>,
    /// A gRPC-Web request: what its response is turned back into.
    pub grpc_web: Option<crate::http::filters::grpc_web::exchange::Exchange>,
    /// A gRPC request the HTTP/1 bridge saw.
    pub grpc_bridge: Option<crate::http::filters::grpc_http1_bridge::state::Bridged>,
    /// A filter needs this upstream response whole before it changes its
    /// headers (grpc_http1_bridge, grpc_web on a response that is not
    /// gRPC): the router reads the body (and trailers) first when this says so.
    pub whole_response: Option<fn(&http::response::Parts) -> bool>,
    /// The request's dynamic metadata: filters write it (on the request
    /// and on the response), access logs read it.
    pub dynamic_metadata: crate::common::metadata::Dynamic,
}

/// Marks a response the waiting response hooks have already seen (in a
/// response's extensions, never sent).
#[derive(Clone, Copy, Debug)]
pub struct ResponseHooksRan;

/// On a response read whole (see `ResponseState::whole_response`): its
/// trailers, the body being `ProxyBody::Full`.
#[derive(Debug, Clone, Default)]
pub struct WholeResponse {
    pub trailers: Option<http::HeaderMap>,
}

/// Marks a response the proxy wrote itself (a local reply), for filters
/// that answer such replies in their own protocol (grpc_web).
#[derive(Debug, Clone, Copy)]
pub struct LocalReply;

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
    /// A local reply a filter made whole (a script's `respond()`): status,
    /// these headers, a `text/plain` body when there is one.
    Local {
        status: u16,
        headers: Vec<(http::HeaderName, http::HeaderValue)>,
        body: Option<bytes::Bytes>,
        details: &'static str,
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
    /// Denied by an authorization service: its status, body (`text/plain`
    /// unless its headers say otherwise; none when empty) and headers, which
    /// replace the reply's own of the same names (ext_authz). Flag `UAEX`.
    Denied {
        status: u16,
        body: String,
        details: &'static str,
        headers: Vec<(http::HeaderName, http::HeaderValue)>,
    },
    /// A whole response a filter serves itself (the cache's hits), sent as
    /// it is, through the response hooks like a proxied one.
    Serve(http::Response<ProxyBody>),
}

/// What filters take from the server: the part of the compile context they
/// need (`CompileContext` converts into it).
#[derive(Clone, Copy)]
pub struct ServerParts<'a> {
    pub store: &'a Arc<Store>,
    /// The server's health-check state (`/healthcheck/ok|fail`).
    pub healthy: &'a Arc<AtomicBool>,
    /// This proxy's cluster, which the health check filter names.
    pub local_cluster: &'a http::HeaderValue,
    /// The clusters remote JWKS are fetched over.
    pub clusters: &'a Arc<ArcSwap<ClusterMap>>,
    /// Where remote JWKS with `async_fetch` wait to be started.
    pub jwks_async: &'a Arc<Mutex<Vec<Weak<RemoteJwks>>>>,
}

/// What compiling one filter gets.
#[derive(Clone, Copy)]
pub struct FilterContext<'a> {
    /// The filter's index in `http_filters`, for error paths.
    pub index: usize,
    /// The filter's `name` (route metadata is read under it).
    pub name: &'a str,
    /// The connection manager's `stat_prefix`.
    pub stat_prefix: &'a str,
    pub server: ServerParts<'a>,
}

/// Compiles a filter's `typed_config`; errors carry their field path.
pub type CompileFilter = fn(&Any, &FilterContext<'_>) -> Result<Box<dyn HttpFilter>, String>;

/// Compiles a per-route config from its `Any`, with the path errors name
/// (`typed_per_filter_config["<name>"]`).
pub type CompilePerRoute = fn(&Any, &str) -> Result<PerRouteConfig, String>;

/// A filter's entry in the registry: the type of its config and how it is
/// compiled, and the same for its per-route config if it reads one.
pub struct Registration {
    /// The type URL of its `typed_config`.
    pub type_url: &'static str,
    pub compile: CompileFilter,
    /// Its `typed_per_filter_config` on routes and virtual hosts.
    pub per_route: Option<PerRouteRegistration>,
    /// A chain may hold only one filter of this kind: the word the error uses.
    pub one_per_chain: Option<&'static str>,
}

/// A per-route config type and how it is compiled.
pub struct PerRouteRegistration {
    pub type_url: &'static str,
    pub compile: CompilePerRoute,
}
