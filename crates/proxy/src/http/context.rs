//! What compiling a listener's filters needs from the server: the stats
//! store, the clusters, the RDS registry, the drain time, the health-check
//! flag, this proxy's cluster name and node id, the JWKS waiting to be
//! fetched, the secrets, the listener's traffic direction and the span
//! exporters waiting to be started.

use crate::http::route::rds::RdsRegistry;
use crate::stats::Store;
use crate::upstream::cluster::ClusterMap;
use arc_swap::ArcSwap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, Weak};

/// What compiling a listener or an HCM needs from the server.
#[derive(Clone)]
pub struct CompileContext {
    pub store: Arc<Store>,
    pub clusters: Arc<ArcSwap<ClusterMap>>,
    pub rds: Arc<RdsRegistry>,
    /// How long draining connections may take (`--drain-time-s`).
    pub drain_time: std::time::Duration,
    /// The server's health-check state (`/healthcheck/ok|fail`).
    pub healthy: Arc<AtomicBool>,
    /// This proxy's cluster (`--service-cluster`, else `node.cluster`), which
    /// the health check filter names in its answers.
    pub local_cluster: http::HeaderValue,
    /// This proxy's node (`--service-node`, else `node.id`).
    pub local_node: http::HeaderValue,
    /// Remote JWKS with `async_fetch` compiled since the last call to
    /// `filters::jwt::start_async_fetches`, which starts their fetching.
    pub jwks_async: Arc<Mutex<Vec<Weak<crate::http::filters::jwt::remote_jwks::RemoteJwks>>>>,
    /// Secrets for TLS contexts (static, files, ADS).
    pub secrets: Arc<crate::tls::sds::SecretManager>,
    /// The overload manager's global downstream connection limit.
    pub conn_limit: Arc<crate::common::conn_limit::ConnLimit>,
    /// This proxy's node id (`--service-node`, else `node.id`): the spans'
    /// `node_id` tag.
    pub node_id: String,
    /// `node.locality.zone`: the spans' `zone` tag.
    pub zone: String,
    /// The listener being compiled is OUTBOUND (`traffic_direction`): its
    /// connection managers trace egress.
    pub egress: bool,
    /// The listener's `per_connection_buffer_limit_bytes` (Envoy's default,
    /// 1 MiB): the most of a request or response body a stream holds whole
    /// (for retries and mirrors, a Lua script, a filter needing a whole
    /// response).
    pub buffer_limit: u64,
    /// Span exporters compiled since `trace::export::start_exporters` was
    /// last called, which starts their sending.
    pub trace_exporters: Arc<Mutex<Vec<Weak<crate::trace::export::Exporter>>>>,
}

/// The part of the context HTTP filters are compiled with.
impl<'a> From<&'a CompileContext> for crate::http::filters::ServerParts<'a> {
    fn from(ctx: &'a CompileContext) -> Self {
        Self {
            store: &ctx.store,
            healthy: &ctx.healthy,
            local_cluster: &ctx.local_cluster,
            clusters: &ctx.clusters,
            jwks_async: &ctx.jwks_async,
        }
    }
}
