//! Legate's control plane: an xDS server with a persistent configuration store,
//! a fleet view of connected proxies, and a REST API.
//!
//! From the ground up, each layer using only those below it:
//! - [`clock`]: the time stamps everything records.
//! - [`discovery`]: who is out there: connected proxies, registered instances.
//! - [`monitor`]: what every proxy reports, as time series and figures.
//! - [`resources`]: the resource model and its compilation into Envoy resources.
//! - [`store`]: committed revisions, tokens and the audit log, in SQLite or etcd.
//! - [`state`]: the controller: validate, commit, publish.
//! - [`fault`]: abnormal nodes detected with their causes, isolated from EDS, repaired through their agents.
//! - [`alerts`]: AlertRules evaluated against all of the above; webhooks and Alertmanagers notified.
//! - [`releases`]: Releases driven step by step, analysed against the monitor's figures.
//! - [`rollouts`]: staged config rollouts: the canary's ACKs and figures against the other proxies'.
//! - [`serve`](mod@serve): xDS and CSDS to the proxies, the REST API to people and tools.
//! - [`sync`]: state from outside the API: other replicas, a watched folder.

// The project keeps functions under about 100 lines (threshold in clippy.toml).
#![warn(clippy::too_many_lines)]

pub mod alerts;
pub mod clock;
pub mod discovery;
pub mod fault;
pub mod monitor;
pub mod ratelimit;
pub mod releases;
pub mod remote;
pub mod resources;
pub mod rollouts;
pub mod serve;
pub mod state;
pub mod store;
pub mod sync;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct Options {
    pub xds_addr: SocketAddr,
    pub api_addr: SocketAddr,
    pub data_dir: PathBuf,
    /// Where state lives: SQLite in `data_dir` (the default) or etcd.
    pub store: Option<store::StoreSpec>,
    /// etcd's client TLS and the key secrets are encrypted with at rest.
    pub store_settings: store::StoreSettings,
    /// A folder of resource files to apply whenever they change.
    pub watch: Option<PathBuf>,
    /// TLS (and optional client certificates) on both listeners.
    pub tls: Option<serve::tls::TlsFiles>,
    /// How often alert rules are evaluated (default: every second).
    pub alert_period: Option<std::time::Duration>,
    /// How often proxies that do not stream metrics are scraped (default 5 s).
    pub scrape_period: Option<std::time::Duration>,
    /// How long the fleet's series are kept, at which resolutions.
    pub metrics_retention: monitor::Retention,
    /// Detection thresholds and repair settings.
    pub fault: fault::Settings,
    /// Failed authentications from one address before it is locked out.
    pub auth_lockout: serve::api::guard::Lockout,
    /// CA certificates (PEM) that https webhooks (alert receivers,
    /// Alertmanagers, release gates) are verified against (default: the
    /// built-in Mozilla roots).
    pub webhook_ca: Option<PathBuf>,
    /// Connections one client address may hold open to the xDS address
    /// (0: no bound).
    pub xds_max_connections_per_address: usize,
    /// `HOST:PORT` the other replicas reach this one's API at (default: the
    /// API address, 127.0.0.1 for an unspecified one).
    pub advertise_api: Option<String>,
    /// CA certificates (PEM) the other replicas' TLS APIs are verified
    /// against (default: the client CA).
    pub peer_ca: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("cannot bind {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("xDS server: {0}")]
    Xds(#[from] tonic::transport::Error),
    #[error("API server: {0}")]
    Api(std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
}

/// Runs the control plane until the process ends.
pub async fn run(opts: Options) -> Result<(), ControlError> {
    let spec = opts.store.clone().unwrap_or_else(|| store::StoreSpec::Sqlite(opts.data_dir.clone()));
    let ctrl = controller_with(&spec, &opts.store_settings)?;
    serve(ctrl, opts).await
}

/// Serves xDS and the API for an existing controller (the demo applies its
/// example config first).
pub async fn serve(ctrl: Arc<state::controller::Controller>, opts: Options) -> Result<(), ControlError> {
    let xds_listener = tokio::net::TcpListener::bind(opts.xds_addr)
        .await
        .map_err(|source| ControlError::Bind { addr: opts.xds_addr, source })?;
    let api_listener = tokio::net::TcpListener::bind(opts.api_addr)
        .await
        .map_err(|source| ControlError::Bind { addr: opts.api_addr, source })?;
    let spec = opts.store.clone().unwrap_or_else(|| store::StoreSpec::Sqlite(opts.data_dir.clone()));
    let _ = ctrl.xds_addr.set(xds_listener.local_addr().unwrap_or(opts.xds_addr));
    tracing::info!(
        "control plane: xDS on {}, API on http://{}, state in {}, revision {}",
        opts.xds_addr,
        opts.api_addr,
        spec.describe(),
        ctrl.current().revision
    );
    if ctrl.store().etcd().is_some() {
        announce_as(&ctrl, &opts, api_listener.local_addr().unwrap_or(opts.api_addr))?;
        // Other replicas' commits and registry changes arrive by etcd watch;
        // the elected leader expires instances.
        sync::replication::start(&ctrl);
    } else {
        // Registry instances whose TTL lapsed leave EDS within a quarter second.
        let expiring = ctrl.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
            loop {
                tick.tick().await;
                expiring.expire_instances();
            }
        });
    }
    fault::start(ctrl.clone(), opts.fault);
    start_alerts(&ctrl, &opts);
    start_monitoring(&ctrl, &opts);
    remote::webhook::configure(opts.webhook_ca.as_deref()).map_err(ControlError::Tls)?;
    // Releases advance twice a second (only the leader acts).
    releases::driver::start(ctrl.clone(), std::time::Duration::from_millis(500));
    // A staged rollout is judged as soon as its hold is over.
    rollouts::driver::start(ctrl.clone(), std::time::Duration::from_millis(100));
    if let Some(dir) = &opts.watch {
        tokio::spawn(sync::folder::watch(ctrl.clone(), dir.clone()));
    }
    let router = serve::api::router(ctrl.clone(), opts.auth_lockout);
    let xds_tls = match &opts.tls {
        Some(files) => Some(serve::tls::xds_config(files).map_err(ControlError::Tls)?),
        None => None,
    };
    let xds = serve::xds::server::serve(ctrl.clone(), xds_listener, xds_tls, opts.xds_max_connections_per_address);
    match &opts.tls {
        Some(files) => {
            let cfg = serve::tls::api_config(files).map_err(ControlError::Tls)?;
            tokio::select! {
                r = xds => r?,
                _ = serve::tls::serve_api_tls(api_listener, router, cfg) => {}
            }
        }
        None => {
            let api = axum::serve(api_listener, router.into_make_service_with_connect_info::<SocketAddr>());
            tokio::select! {
                r = xds => r?,
                r = api => r.map_err(ControlError::Api)?,
            }
        }
    }
    Ok(())
}

/// What this replica tells the others: its id and API address. Over TLS
/// it reaches the others' APIs verifying them against `--peer-ca` (or the
/// client CA), presenting its own certificate; with neither CA the
/// replicas do not ask each other (each answers for its own proxies).
fn announce_as(
    ctrl: &Arc<state::controller::Controller>,
    opts: &Options,
    bound: SocketAddr,
) -> Result<(), ControlError> {
    if let Some(files) = &opts.tls {
        let Some(ca) = opts.peer_ca.as_ref().or(files.client_ca.as_ref()) else {
            tracing::warn!("API over TLS without --peer-ca: fleet queries answer for this replica's proxies only");
            return Ok(());
        };
        ctrl.replicas.set_client_tls(serve::tls::peer_client(files, ca).map_err(ControlError::Tls)?);
    }
    let api = opts.advertise_api.clone().unwrap_or_else(|| {
        let ip = if bound.ip().is_unspecified() { std::net::Ipv4Addr::LOCALHOST.into() } else { bound.ip() };
        SocketAddr::new(ip, bound.port()).to_string()
    });
    let tls = opts.tls.is_some();
    ctrl.replicas.set_me(discovery::replicas::Replica { id: ctrl.replica_id().to_string(), api, tls });
    Ok(())
}

/// Starts alert evaluation; its history is kept in the data directory.
fn start_alerts(ctrl: &Arc<state::controller::Controller>, opts: &Options) {
    if std::fs::create_dir_all(&opts.data_dir).is_ok() {
        ctrl.alerts.history.keep_in(opts.data_dir.join(alerts::history::FILE));
    }
    let scheme = if opts.tls.is_some() { "https" } else { "http" };
    let settings = alerts::Settings {
        period: opts.alert_period.unwrap_or(alerts::Settings::default().period),
        external_url: format!("{scheme}://{}", opts.api_addr),
    };
    alerts::start(ctrl.clone(), settings);
}

/// The fleet's series: kept in `data_dir` (read back first), written every
/// 10 s; proxies that do not stream are scraped.
fn start_monitoring(ctrl: &Arc<state::controller::Controller>, opts: &Options) {
    ctrl.monitor.configure(opts.metrics_retention);
    match ctrl.monitor.attach_disk(&opts.data_dir) {
        Ok(n) => tracing::info!("monitor: {n} stored slots read from {}", opts.data_dir.display()),
        Err(e) => tracing::warn!("monitor: series are not kept across restarts: {e}"),
    }
    let monitor = ctrl.monitor.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
        loop {
            tick.tick().await;
            let m = monitor.clone();
            match tokio::task::spawn_blocking(move || m.flush()).await {
                Ok(Err(e)) => tracing::warn!("monitor: {e}"),
                Err(e) => tracing::warn!("monitor: {e}"),
                Ok(Ok(())) => {}
            }
        }
    });
    tokio::spawn(serve::metrics::scrape::run(
        ctrl.clone(),
        opts.scrape_period.unwrap_or(serve::metrics::scrape::EVERY),
    ));
}

/// Opens the SQLite store in `data_dir` and the controller on it.
pub fn controller(data_dir: &std::path::Path) -> Result<Arc<state::controller::Controller>, ControlError> {
    Ok(state::controller::Controller::open(store::Store::open(data_dir)?)?)
}

/// Opens the store `spec` names and the controller on it.
pub fn controller_on(spec: &store::StoreSpec) -> Result<Arc<state::controller::Controller>, ControlError> {
    controller_with(spec, &store::StoreSettings::default())
}

/// Opens the store `spec` names with `settings` (etcd's TLS, the key
/// secrets are encrypted with at rest) and the controller on it.
pub fn controller_with(
    spec: &store::StoreSpec,
    settings: &store::StoreSettings,
) -> Result<Arc<state::controller::Controller>, ControlError> {
    Ok(state::controller::Controller::open(store::Store::open_with(spec, settings)?)?)
}
