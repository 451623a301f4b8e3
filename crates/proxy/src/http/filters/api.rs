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

    /// Which response hooks the chain calls for this filter. Asked once,
    /// when the chain is compiled, so a filter without any costs nothing on
    /// the response.
    fn response_hooks(&self) -> ResponseHooks {
        ResponseHooks::default()
    }

    /// Changes a response (filters run in reverse order, as Envoy's encoder
    /// filters do). Called when `response_hooks().on_response`.
    fn on_response(&self, _state: &ResponseState, _resp: &mut http::Response<ProxyBody>) {}

    /// A header every response gets now. Called when `response_hooks().response_header`.
    fn response_header(&self) -> Option<(&'static str, &'static str)> {
        None
    }

    /// Rewrites the request body as it streams (grpc_web's base64 text).
    /// Called when `response_hooks().request_body`, in chain order.
    fn on_request_body(&self, _state: &ResponseState, body: ProxyBody) -> ProxyBody {
        body
    }

    /// The request body is read whole, at most this many bytes, before it
    /// goes upstream (the buffer filter).
    fn buffer_limit(&self) -> Option<u64> {
        None
    }
}

/// The response hooks a filter has.
#[derive(Debug, Default, Clone, Copy)]
pub struct ResponseHooks {
    /// `on_response` changes responses.
    pub on_response: bool,
    /// `response_header` may add a header to every response.
    pub response_header: bool,
    /// `on_request_body` rewrites request bodies.
    pub request_body: bool,
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
    pub route: [Option<&'a PerFilter>; 2],
    /// A new path for the request (jwt_authn taking out `access_token`).
    pub new_path: Option<String>,
    /// The cluster the matched route names, when it names one (not a
    /// header's or a weighted choice).
    pub cluster: Option<&'a str>,
    /// The downstream protocol's version.
    pub version: http::Version,
}

impl RequestCtx<'_> {
    /// The most specific per-route config of type `T` (the route's, else the
    /// virtual host's).
    pub fn per_route<T: std::any::Any>(&self) -> Option<&T> {
        self.route.iter().flatten().find_map(|p| p.get::<T>())
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
    /// A gRPC-Web request: what its response is turned back into.
    pub grpc_web: Option<crate::http::filters::grpc_web::exchange::Exchange>,
    /// A gRPC request the HTTP/1 bridge saw.
    pub grpc_bridge: Option<crate::http::filters::grpc_http1_bridge::state::Bridged>,
    /// A filter needs this upstream response whole before it changes its
    /// headers (grpc_http1_bridge, grpc_web on a response that is not
    /// gRPC): the router reads the body (and trailers) first when this says so.
    pub whole_response: Option<fn(&http::response::Parts) -> bool>,
}

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
