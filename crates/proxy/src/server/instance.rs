//! The running server's state, built from a bootstrap: the command-line
//! options, the clusters and listeners compiled from static resources, and
//! what the main thread's parts (admin API, xDS client, signal handling)
//! read and change.

use crate::listener::manager::{ListenerManager, WorkerCmd};
use crate::listener::{ListenerConfig, Phase};
use crate::stats::Store;
use crate::upstream::cluster::{Cluster, ClusterMap};
use arc_swap::ArcSwap;
use legate_api::load::LoadedBootstrap;
use legate_api::pb::envoy::config::bootstrap::v3::Bootstrap;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

/// Envoy's command-line options that shape a running server.
#[derive(Debug, Clone)]
pub struct Options {
    pub concurrency: usize,
    pub drain_time: Duration,
    pub base_id: u64,
    pub log_level: String,
    pub service_node: Option<String>,
    pub service_cluster: Option<String>,
    pub config_path: Option<String>,
    /// `--restart-epoch`: 0 for a first process, N+1 to take over from epoch N.
    pub restart_epoch: u32,
    /// `--disable-hot-restart`: claim no hot restart socket (so any number of
    /// proxies run on one host without distinct base-ids), take over nothing.
    pub hot_restart_disabled: bool,
    /// `--parent-shutdown-time-s`: when a hot restart child asks its parent to exit.
    pub parent_shutdown_time: Duration,
    /// `--drain-strategy gradual` (else `immediate`).
    pub drain_strategy_gradual: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{path}: {reason}")]
    Config { path: String, reason: String },
    #[error("cannot bind {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("runtime: {0}")]
    Runtime(#[from] std::io::Error),
    #[error("{0}")]
    HotRestart(#[from] crate::server::hot_restart::HotRestartError),
}

/// Clusters from CDS: name -> (version, last updated, config).
pub type DynamicClusters = std::collections::BTreeMap<
    String,
    (String, chrono::DateTime<chrono::Utc>, legate_api::pb::envoy::config::cluster::v3::Cluster),
>;

/// Everything the admin endpoint reads.
pub struct Shared {
    pub store: Arc<Store>,
    pub clusters: Arc<ArcSwap<ClusterMap>>,
    pub ctx: crate::http::context::CompileContext,
    pub listeners: Arc<ListenerManager>,
    /// Clusters from CDS with their version and update time (for /config_dump).
    pub dynamic_clusters: std::sync::Mutex<DynamicClusters>,
    /// The typed bootstrap only: its reflective form would keep the API's
    /// descriptor pool alive (see `legate_api::pool`).
    pub bootstrap: Bootstrap,
    pub options: Options,
    pub started: SystemTime,
    pub started_instant: Instant,
    pub healthy: Arc<AtomicBool>,
    pub phase: watch::Sender<Phase>,
    pub quit: tokio::sync::Notify,
    pub admin_addr: std::sync::OnceLock<SocketAddr>,
    /// Raised when a hot restart child takes the admin address over.
    pub admin_stop: watch::Sender<bool>,
    /// Set once the admin listener is closed (or there is none).
    pub admin_closed: AtomicBool,
    /// When epoch 0 started (seconds since the Unix epoch), carried across
    /// hot restarts.
    pub original_start: std::sync::atomic::AtomicU64,
    /// The bootstrap's `layered_runtime` (an empty runtime without one).
    pub runtime: Arc<crate::server::runtime::Loader>,
    /// The overload manager's sampled monitors and actions, taken by the
    /// main thread when it starts (none configured: none).
    pub overload: std::sync::Mutex<Option<crate::server::overload::Manager>>,
}

impl Shared {
    pub fn original_start_time(&self) -> u64 {
        self.original_start.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The bootstrap's `layered_runtime`, loaded and installed.
fn start_runtime(
    b: &Bootstrap,
    options: &Options,
    store: &Store,
) -> Result<Arc<crate::server::runtime::Loader>, ServerError> {
    let service_cluster =
        options.service_cluster.clone().or_else(|| b.node.as_ref().map(|n| n.cluster.clone())).unwrap_or_default();
    crate::server::runtime::Loader::start(b.layered_runtime.as_ref(), store, &service_cluster).map_err(|e| {
        match e.split_once(": ") {
            Some((path, reason)) => ServerError::Config { path: path.to_string(), reason: reason.to_string() },
            None => ServerError::Config { path: "layered_runtime".into(), reason: e },
        }
    })
}

/// Compiles the static config and binds its listeners (or takes those a hot
/// restart parent passed, `inherited`). Errors name the field.
pub fn build(
    bootstrap: LoadedBootstrap,
    options: Options,
    store: Arc<Store>,
    inherited: HashMap<SocketAddr, Vec<std::net::TcpListener>>,
) -> Result<(Arc<Shared>, Vec<tokio::sync::mpsc::UnboundedReceiver<WorkerCmd>>), ServerError> {
    let LoadedBootstrap { bootstrap, .. } = bootstrap;
    let b = &bootstrap;
    // Loaded first: what is compiled next may read it.
    let runtime = start_runtime(b, &options, &store)?;
    let overload =
        crate::server::overload::build(b, &store).map_err(|(path, reason)| ServerError::Config { path, reason })?;
    let mut map = HashMap::new();
    let clusters = Arc::new(ArcSwap::from_pointee(ClusterMap::new()));
    let (listeners, worker_rxs) = ListenerManager::new(options.concurrency);
    listeners.inherit(inherited);
    let secrets = Arc::new(
        crate::tls::sds::SecretManager::new(
            b.static_resources.as_ref().map(|s| s.secrets.as_slice()).unwrap_or_default(),
            {
                let node = b.node.as_ref();
                let id = options.service_node.clone().or_else(|| node.map(|n| n.id.clone())).unwrap_or_default();
                let cluster =
                    options.service_cluster.clone().or_else(|| node.map(|n| n.cluster.clone())).unwrap_or_default();
                !id.is_empty() && !cluster.is_empty()
            },
        )
        .with_stats(store.clone()),
    );
    if let Some(sr) = &b.static_resources {
        for (i, c) in sr.clusters.iter().enumerate() {
            let cluster = Cluster::compile(c, &store, options.concurrency, &secrets)
                .map_err(|reason| ServerError::Config { path: format!("static_resources.clusters[{i}]"), reason })?;
            map.insert(c.name.clone(), cluster);
        }
        clusters.store(Arc::new(map));
    }
    let healthy = Arc::new(AtomicBool::new(true));
    let ctx = crate::http::context::CompileContext {
        store: store.clone(),
        clusters: clusters.clone(),
        rds: Default::default(),
        drain_time: options.drain_time,
        healthy: healthy.clone(),
        local_cluster: options
            .service_cluster
            .clone()
            .or_else(|| b.node.as_ref().map(|n| n.cluster.clone()))
            .and_then(|c| http::HeaderValue::from_str(&c).ok())
            .unwrap_or_else(|| http::HeaderValue::from_static("")),
        local_node: options
            .service_node
            .clone()
            .or_else(|| b.node.as_ref().map(|n| n.id.clone()))
            .and_then(|c| http::HeaderValue::from_str(&c).ok())
            .unwrap_or_else(|| http::HeaderValue::from_static("")),
        jwks_async: Default::default(),
        secrets,
        conn_limit: overload.conn_limit,
        node_id: options.service_node.clone().or_else(|| b.node.as_ref().map(|n| n.id.clone())).unwrap_or_default(),
        zone: b.node.as_ref().and_then(|n| n.locality.as_ref()).map(|l| l.zone.clone()).unwrap_or_default(),
        egress: false,
        buffer_limit: crate::body::RESEND_BUFFER_LIMIT,
        trace_exporters: Default::default(),
    };
    if let Some(sr) = &b.static_resources {
        for (i, l) in sr.listeners.iter().enumerate() {
            let path = format!("static_resources.listeners[{i}]");
            let lc = ListenerConfig::compile(l, &ctx)
                .map_err(|reason| ServerError::Config { path: path.clone(), reason })?;
            listeners.apply(lc, None).map_err(|reason| ServerError::Config { path, reason })?;
        }
    }
    store.gauge("cluster_manager.active_clusters").set(clusters.load().len() as i64);
    store.gauge("listener_manager.total_listeners_active").set(listeners.names().len() as i64);
    store.gauge("server.concurrency").set(options.concurrency as i64);
    store.gauge("server.live").set(1);
    store.gauge("server.state").set(0);
    store.gauge("server.hot_restart_epoch").set(i64::from(options.restart_epoch));
    let (phase, _) = watch::channel(Phase::Running);
    let started = SystemTime::now();
    let since_epoch = started.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    Ok((
        Arc::new(Shared {
            store,
            clusters,
            ctx,
            listeners,
            dynamic_clusters: Default::default(),
            bootstrap,
            options,
            started,
            started_instant: Instant::now(),
            healthy: healthy.clone(),
            phase,
            quit: tokio::sync::Notify::new(),
            admin_addr: std::sync::OnceLock::new(),
            admin_stop: watch::channel(false).0,
            admin_closed: AtomicBool::new(false),
            original_start: since_epoch.into(),
            runtime,
            overload: std::sync::Mutex::new(overload.manager),
        }),
        worker_rxs,
    ))
}
