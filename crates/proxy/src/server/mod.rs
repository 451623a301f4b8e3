//! The server: bootstrap in, workers and the admin endpoint running.
//!
//! Threads as in Envoy: the main thread runs admin, DNS and signal handling on
//! a current-thread runtime; `--concurrency N` workers each run their own
//! current-thread runtime with their own listener sockets and upstream pools.

pub mod admin;
mod admin_log;
pub mod hot_restart;
pub mod instance;
pub mod memory;
mod overload;
pub mod runtime;
pub mod sinks;
mod stats_matcher;
pub mod xds;

pub use instance::{build, DynamicClusters, Options, ServerError, Shared};

use crate::listener::Phase;
use legate_api::load::LoadedBootstrap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Claims this process's hot restart socket (first: a second process on the
/// same base-id and epoch stops here) and connects to the parent, if any;
/// nothing with `--disable-hot-restart`.
fn claim_hot_restart(
    options: &Options,
    restart: hot_restart::RestartOptions,
) -> Result<(Option<std::os::unix::net::UnixListener>, Option<hot_restart::child::Child>), ServerError> {
    if options.hot_restart_disabled {
        return Ok((None, None));
    }
    let own_socket = hot_restart::listen(&restart)?;
    Ok((Some(own_socket), hot_restart::child::Child::connect(restart)?))
}

/// The main thread's work before traffic (first DNS answers, first health
/// checks, JWKS, the admin listener), then the xDS client and the stats
/// sinks on `main_rt`.
fn start_main_thread(main_rt: &tokio::runtime::Runtime, shared: &Arc<Shared>) -> Result<(), ServerError> {
    main_rt.block_on(async {
        // First DNS resolution and first health check round before traffic,
        // as Envoy's init manager waits for them.
        for c in shared.clusters.load().values() {
            crate::upstream::tasks::start_before_traffic(c).await;
        }
        // JWKS with async_fetch are fetched before traffic (unless
        // fast_listener), as Envoy's init manager waits for them.
        crate::http::filters::jwt::start_async_fetches(&shared.ctx.jwks_async).await;
        crate::trace::export::start_exporters(&shared.ctx.trace_exporters);
        crate::server::admin::start(shared.clone()).await
    })?;
    let ads = crate::server::xds::ads_config(&shared.bootstrap)
        .map_err(|reason| ServerError::Config { path: "dynamic_resources".into(), reason })?;
    if let Some(cfg) = ads {
        if !shared.clusters.load().contains_key(&cfg.cluster) {
            return Err(ServerError::Config {
                path: "dynamic_resources.ads_config".into(),
                reason: format!("unknown gRPC client cluster '{}'", cfg.cluster),
            });
        }
        main_rt.spawn(crate::server::xds::run(shared.clone(), cfg));
    }
    main_rt.spawn(crate::server::xds::run_sds_sources(shared.clone()));
    let sinks = sinks::SinksConfig::read(&shared.bootstrap)
        .and_then(|cfg| {
            let _runtime = main_rt.enter();
            sinks::start(shared, cfg)
        })
        .map_err(|e| ServerError::Config { path: e.path, reason: e.reason });
    sinks?;
    Ok(())
}

/// Runs the server until SIGTERM (drain, then exit), SIGINT, `/quitquitquit`
/// or, after a hot restart, its child's request to exit.
pub fn run(bootstrap: LoadedBootstrap, options: Options) -> Result<(), ServerError> {
    crate::stats::set_concurrency(options.concurrency);
    let store = Arc::new(stats_matcher::store(&bootstrap.bootstrap)?);
    let restart = hot_restart::RestartOptions {
        base_id: options.base_id,
        epoch: options.restart_epoch,
        parent_shutdown_time: options.parent_shutdown_time,
    };
    let (own_socket, mut child) = claim_hot_restart(&options, restart)?;
    let inherited = match child.as_mut() {
        Some(c) => c.take_sockets()?,
        None => Default::default(),
    };
    let (shared, worker_rxs) = build(bootstrap, options, store, inherited)?;
    if let Some(c) = child.as_mut() {
        let start = c.shutdown_parent_admin()?;
        shared.original_start.store(start, Ordering::Relaxed);
    }
    let workers = shared.options.concurrency;

    let main_rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    start_main_thread(&main_rt, &shared)?;

    let active = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for (i, commands) in worker_rxs.into_iter().enumerate() {
        let phase = shared.phase.subscribe();
        let active = active.clone();
        let drain_time = shared.options.drain_time;
        handles.push(std::thread::Builder::new().name(format!("wrk:worker_{i}")).spawn(move || {
            crate::stats::set_worker_index(i + 1);
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("worker {i}: cannot start runtime: {e}");
                    return;
                }
            };
            rt.block_on(crate::listener::manager::worker(commands, phase, active, drain_time));
        })?);
    }

    tracing::info!("all listeners started; {} worker(s)", workers);
    if let Some(socket) = own_socket {
        hot_restart::parent::spawn(socket, shared.clone(), restart.epoch)?;
    }
    // The workers accept on the parent's sockets now: the parent may stop.
    if let Some(c) = child {
        c.spawn(shared.clone())?;
    }
    // Once the workers have built their listeners, the API's descriptor pool
    // is dropped and what startup freed goes back to the kernel; later
    // readings (xDS, SDS files, config dumps) decode the pool again.
    main_rt.spawn(crate::server::memory::keep_lean());
    main_rt.spawn(shared.runtime.clone().watch_disk());
    if let Some(overload) = shared.overload.lock().ok().and_then(|mut m| m.take()) {
        main_rt.spawn(overload.run());
    }
    main_rt.block_on(async {
        let flusher = tokio::spawn(async {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                crate::access_log::flush_all();
            }
        });
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        let drain = tokio::select! {
            _ = term.recv() => { tracing::info!("caught SIGTERM: draining"); true }
            _ = int.recv() => { tracing::info!("caught SIGINT: exiting"); false }
            _ = shared.quit.notified() => { tracing::info!("asked to exit (/quitquitquit, or a hot restart child): exiting"); false }
        };
        if drain {
            shared.store.gauge("server.state").set(2);
            let _ = shared.phase.send(Phase::Drain);
            let deadline = Instant::now() + shared.options.drain_time;
            while active.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        flusher.abort();
        crate::access_log::flush_all();
        Ok::<_, std::io::Error>(())
    })?;
    // Workers' threads end with the process; draining already waited for them.
    drop(handles);
    Ok(())
}
