//! The HTTP filter chain in front of the router. Filters run in order on the
//! request; one may answer it locally. The router is last, always. On the
//! way back, `on_response` lets the filters change the response (CORS
//! headers, compression).
//!
//! Each filter is one module behind the `HttpFilter` trait (`api`), found by
//! its config type in `registry`; the chain knows none of them by name.

pub mod api;
pub mod buffer;
pub mod cache;
pub mod compressor;
pub mod cors;
pub mod csrf;
pub mod decompressor;
pub mod dynamic_forward_proxy;
pub mod ext_authz;
pub mod ext_proc;
pub mod fault;
pub mod grpc_http1_bridge;
pub mod grpc_web;
pub mod header_to_metadata;
pub mod health_check;
pub mod jwt;
pub mod local_ratelimit;
pub mod lua;
pub mod ratelimit;
pub mod rbac;
pub mod registry;
pub(crate) mod service;
pub mod wasm;

pub use api::{FilterStatus, HttpFilter, RequestCtx, ResponseState, ServerParts, Verdict};

use api::FilterContext;
use legate_api::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_filter, HttpFilter as PbFilter,
};

pub const ROUTER_TYPE: &str = "envoy.extensions.filters.http.router.v3.Router";

pub struct FilterChain {
    filters: Vec<Box<dyn HttpFilter>>,
    /// The filters with an `on_response` hook, by index, in chain order.
    response_filters: Vec<usize>,
    /// The filters that may add a header to every response, by index.
    header_filters: Vec<usize>,
    /// The filters with an `on_response_wait` hook, by index.
    wait_filters: Vec<usize>,
    /// The filters that rewrite request bodies as they stream, by index,
    /// in chain order.
    body_rewriters: Vec<usize>,
    /// The smallest `buffer_limit` of the filters.
    buffer_limit: Option<u64>,
    /// The filters that may read the body before they run, by index.
    body_filters: Vec<usize>,
    /// The router's `suppress_envoy_headers`: it adds none of its own
    /// `x-envoy-*` headers (the expected timeout upstream, the service time
    /// and `x-envoy-overloaded` downstream).
    pub suppress_envoy_headers: bool,
    /// The router's `dynamic_stats` (default true): without them the
    /// cluster's `upstream_rq_completed`, `upstream_rq_<code>` and
    /// `_<class>` (with their `external.` twins) and `upstream_rq_time` are
    /// not charged.
    pub dynamic_stats: bool,
    /// The router's `start_child_span`: each upstream request gets its own
    /// span, a child of the connection manager's.
    pub start_child_span: bool,
}

impl FilterChain {
    /// Compiles `http_filters`: the router last, the others found in the
    /// registry by their config type. `server` (the compile context) gives
    /// the stats store, the health-check state, the clusters and this
    /// proxy's cluster.
    pub fn compile<'a>(pb: &[PbFilter], server: impl Into<ServerParts<'a>>, stat_prefix: &str) -> Result<Self, String> {
        let server = server.into();
        fn type_of(f: &PbFilter) -> Option<&legate_api::pb::google::protobuf::Any> {
            match &f.config_type {
                Some(http_filter::ConfigType::TypedConfig(a)) => Some(a),
                _ => None,
            }
        }
        let Some((last, rest)) = pb.split_last() else {
            return Err("http_filters: the router is required as the last filter".into());
        };
        let Some(router) = type_of(last).filter(|a| legate_api::any::type_name(a) == ROUTER_TYPE) else {
            return Err("http_filters: the last filter must be envoy.filters.http.router".into());
        };
        let router: legate_api::pb::envoy::extensions::filters::http::router::v3::Router =
            legate_api::any::unpack(router).map_err(|e| format!("http_filters[{}]: {e}", pb.len() - 1))?;
        let mut filters = Vec::new();
        // The kinds a chain may hold only one of, once seen.
        let mut seen_once: Vec<&str> = Vec::new();
        for (i, f) in rest.iter().enumerate() {
            let Some(any) = type_of(f) else { return Err(format!("http_filters[{i}].typed_config is required")) };
            let type_url = legate_api::any::type_name(any);
            let Some(entry) = registry::find(type_url) else {
                return Err(format!("http_filters[{i}]: filter {type_url} is not supported"));
            };
            let ctx = FilterContext { index: i, name: &f.name, stat_prefix, server };
            let filter = (entry.compile)(any, &ctx)?;
            if let Some(kind) = entry.one_per_chain {
                // Envoy negotiates among all compressors of a chain; Legate
                // does not yet, so it takes one.
                if seen_once.contains(&kind) {
                    return Err(format!("http_filters[{i}]: more than one {kind} filter in a chain is not supported"));
                }
                seen_once.push(kind);
            }
            filters.push(filter);
        }
        let with_hook = |hook: fn(api::ResponseHooks) -> bool| {
            filters.iter().enumerate().filter(|(_, f)| hook(f.response_hooks())).map(|(i, _)| i).collect()
        };
        let body_filters =
            filters.iter().enumerate().filter(|(_, f)| f.response_hooks().request_body).map(|(i, _)| i).collect();
        // Deprecated for the connection manager's `spawn_upstream_span`, yet
        // Envoy 1.40 honours it (Envoy's own examples set it).
        #[allow(deprecated)]
        let start_child_span = router.start_child_span;
        Ok(Self {
            response_filters: with_hook(|h| h.on_response),
            header_filters: with_hook(|h| h.response_header),
            wait_filters: with_hook(|h| h.wait),
            body_rewriters: with_hook(|h| h.rewrites_request_body),
            buffer_limit: filters.iter().filter_map(|f| f.buffer_limit()).min(),
            body_filters,
            suppress_envoy_headers: router.suppress_envoy_headers,
            dynamic_stats: router.dynamic_stats.is_none_or(|v| v.value),
            start_child_span,
            filters,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// Headers the filters add to every response: while health checks fail,
    /// the health check filter marks all responses so downstream proxies stop
    /// sending at once.
    pub fn response_header(&self) -> Option<(&'static str, &'static str)> {
        self.header_filters.iter().find_map(|&i| self.filters[i].response_header())
    }

    /// Lets the filters change a response, in reverse order as Envoy's
    /// encoder filters run. Cost: nothing unless a filter has the hook
    /// (the compressor).
    pub fn on_response(&self, state: &ResponseState, resp: &mut http::Response<crate::body::ProxyBody>) {
        for &i in self.response_filters.iter().rev() {
            self.filters[i].on_response(state, resp);
        }
    }

    /// Whether a filter changes proxied responses and may wait for it.
    pub fn waits_on_response(&self) -> bool {
        !self.wait_filters.is_empty()
    }

    /// Lets the filters that may wait change a proxied response before it
    /// goes downstream, in reverse order.
    pub async fn on_response_wait(&self, state: &mut ResponseState, resp: &mut http::Response<crate::body::ProxyBody>) {
        for &i in self.wait_filters.iter().rev() {
            if let Some(work) = self.filters[i].on_response_wait(state, resp) {
                work.await;
            }
        }
    }

    /// Lets the filters rewrite the request body as it streams, in chain
    /// order. Cost: nothing unless a filter has the hook (grpc_web).
    pub fn on_request_body(&self, state: &ResponseState, mut body: crate::body::ProxyBody) -> crate::body::ProxyBody {
        for &i in &self.body_rewriters {
            body = self.filters[i].on_request_body(state, body);
        }
        body
    }

    /// The smallest `max_request_bytes` of the buffer filters: the request
    /// body is read whole before routing when there is one.
    pub fn buffer_limit(&self) -> Option<u64> {
        self.buffer_limit
    }

    /// How much of the body the filters read before they run for this
    /// request: the most any of them asks for (partial only if all allow it).
    pub fn request_body(&self, rq: &RequestCtx<'_>) -> Option<api::BodyWant> {
        self.body_filters
            .iter()
            .filter_map(|&i| self.filters[i].request_body(rq))
            .reduce(|a, b| api::BodyWant { max: a.max.max(b.max), partial: a.partial && b.partial })
    }

    /// Runs the request filters. Cost: nothing when the chain has only the
    /// router; a box only for a filter that waits.
    pub async fn on_request(&self, rq: &mut RequestCtx<'_>, state: &mut ResponseState) -> Verdict {
        for (i, f) in self.filters.iter().enumerate() {
            let verdict = match f.on_request(rq, state) {
                FilterStatus::Continue => continue,
                FilterStatus::Done(v) => v,
                FilterStatus::Wait(work) => work.await,
            };
            if !matches!(verdict, Verdict::Continue) {
                for &later in self.wait_filters.iter().filter(|&&j| j > i) {
                    self.filters[later].on_request_skipped(rq, state);
                }
                return verdict;
            }
        }
        Verdict::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use legate_api::any::pack;
    use legate_api::pb::envoy::config::core::v3::TypedExtensionConfig;
    use legate_api::pb::envoy::extensions::compression::gzip::compressor::v3::Gzip;
    use legate_api::pb::envoy::extensions::filters::http::buffer::v3::Buffer;
    use legate_api::pb::envoy::extensions::filters::http::compressor::v3::Compressor;
    use legate_api::pb::envoy::extensions::filters::http::health_check::v3::HealthCheck;
    use legate_api::pb::envoy::extensions::filters::http::router::v3::Router;
    use legate_api::pb::google::protobuf::{Any, UInt32Value};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    /// What the server gives a chain, owned by the test.
    struct Server {
        store: Arc<crate::stats::Store>,
        healthy: Arc<AtomicBool>,
        local_cluster: http::HeaderValue,
        clusters: Arc<arc_swap::ArcSwap<crate::upstream::cluster::ClusterMap>>,
        jwks_async: Arc<Mutex<Vec<std::sync::Weak<jwt::RemoteJwks>>>>,
    }

    impl Default for Server {
        fn default() -> Self {
            Self {
                store: Default::default(),
                healthy: Arc::new(AtomicBool::new(true)),
                local_cluster: http::HeaderValue::from_static("local"),
                clusters: Default::default(),
                jwks_async: Default::default(),
            }
        }
    }

    impl Server {
        fn compile(&self, filters: Vec<PbFilter>) -> Result<FilterChain, String> {
            let parts = ServerParts {
                store: &self.store,
                healthy: &self.healthy,
                local_cluster: &self.local_cluster,
                clusters: &self.clusters,
                jwks_async: &self.jwks_async,
            };
            FilterChain::compile(&filters, parts, "test")
        }
    }

    fn filter(any: Any) -> PbFilter {
        PbFilter {
            name: "f".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(any)),
            ..Default::default()
        }
    }

    fn router() -> PbFilter {
        filter(pack(&Router::default()))
    }

    fn buffer(max: u32) -> PbFilter {
        filter(pack(&Buffer { max_request_bytes: Some(UInt32Value { value: max }) }))
    }

    fn gzip() -> PbFilter {
        let library = TypedExtensionConfig { name: "gzip".into(), typed_config: Some(pack(&Gzip::default())) };
        filter(pack(&Compressor { compressor_library: Some(library), ..Default::default() }))
    }

    fn error(server: &Server, filters: Vec<PbFilter>) -> String {
        server.compile(filters).err().unwrap_or_default()
    }

    #[test]
    fn the_router_is_required_and_last() {
        let s = Server::default();
        assert_eq!(error(&s, vec![]), "http_filters: the router is required as the last filter");
        assert_eq!(
            error(&s, vec![router(), buffer(1)]),
            "http_filters: the last filter must be envoy.filters.http.router"
        );
        assert!(s.compile(vec![router()]).is_ok_and(|c| c.is_empty()));
    }

    #[test]
    fn errors_name_the_filter() {
        let s = Server::default();
        assert_eq!(error(&s, vec![PbFilter::default(), router()]), "http_filters[0].typed_config is required");
        assert_eq!(
            error(&s, vec![buffer(1), filter(pack(&Gzip::default())), router()]),
            "http_filters[1]: filter envoy.extensions.compression.gzip.compressor.v3.Gzip is not supported"
        );
        let no_max = filter(pack(&Buffer::default()));
        assert_eq!(error(&s, vec![no_max, router()]), "http_filters[0].typed_config.max_request_bytes is required");
    }

    #[test]
    fn one_compressor_per_chain() {
        let s = Server::default();
        assert!(s.compile(vec![gzip(), router()]).is_ok());
        assert_eq!(
            error(&s, vec![gzip(), buffer(1), gzip(), router()]),
            "http_filters[2]: more than one compressor filter in a chain is not supported"
        );
    }

    #[test]
    fn buffer_limit_and_health_check_header() {
        let s = Server::default();
        let hc = filter(pack(&HealthCheck::default()));
        let chain = s.compile(vec![buffer(100), hc, buffer(50), router()]).expect("compiles");
        assert_eq!(chain.buffer_limit(), Some(50));
        assert_eq!(chain.response_header(), None);
        s.healthy.store(false, Ordering::Relaxed);
        assert_eq!(chain.response_header(), Some(("x-envoy-immediate-health-check-fail", "true")));
        let plain = s.compile(vec![buffer(10), router()]).expect("compiles");
        assert_eq!(plain.response_header(), None);
    }
}
