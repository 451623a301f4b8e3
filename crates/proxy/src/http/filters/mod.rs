//! The HTTP filter chain in front of the router. Filters run in order on the
//! request; one may answer it locally. The router is last, always. On the
//! way back, `on_response` lets the filters change the response (CORS
//! headers, compression).
//!
//! Each filter is one module behind the `HttpFilter` trait (`api`), found by
//! its config type in `registry`; the chain knows none of them by name.

pub mod api;
pub mod buffer;
pub mod compressor;
pub mod cors;
pub mod fault;
pub mod health_check;
pub mod jwt;
pub mod local_ratelimit;
pub mod rbac;
pub mod registry;

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
    /// The smallest `buffer_limit` of the filters.
    buffer_limit: Option<u64>,
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
        if type_of(last).is_none_or(|a| legate_api::any::type_name(a) != ROUTER_TYPE) {
            return Err("http_filters: the last filter must be envoy.filters.http.router".into());
        }
        let mut filters = Vec::new();
        // The kinds a chain may hold only one of, once seen.
        let mut seen_once: Vec<&str> = Vec::new();
        for (i, f) in rest.iter().enumerate() {
            let Some(any) = type_of(f) else { return Err(format!("http_filters[{i}].typed_config is required")) };
            let type_url = legate_api::any::type_name(any);
            let Some(entry) = registry::find(type_url) else {
                return Err(format!("http_filters[{i}]: filter {type_url} is not supported"));
            };
            let ctx = FilterContext { index: i, stat_prefix, server };
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
        Ok(Self {
            response_filters: with_hook(|h| h.on_response),
            header_filters: with_hook(|h| h.response_header),
            buffer_limit: filters.iter().filter_map(|f| f.buffer_limit()).min(),
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

    /// The smallest `max_request_bytes` of the buffer filters: the request
    /// body is read whole before routing when there is one.
    pub fn buffer_limit(&self) -> Option<u64> {
        self.buffer_limit
    }

    /// Runs the request filters. Cost: nothing when the chain has only the
    /// router; a box only for a filter that waits.
    pub async fn on_request(&self, rq: &mut RequestCtx<'_>, state: &mut ResponseState) -> Verdict {
        for f in &self.filters {
            let verdict = match f.on_request(rq, state) {
                FilterStatus::Continue => continue,
                FilterStatus::Done(v) => v,
                FilterStatus::Wait(work) => work.await,
            };
            if !matches!(verdict, Verdict::Continue) {
                return verdict;
            }
        }
        Verdict::Continue
    }
}
