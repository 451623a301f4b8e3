//! The listener manager: adds, replaces and removes listeners while serving.
//!
//! Every worker has a command channel. Adding a listener binds one socket per
//! worker (SO_REUSEPORT) on the main thread — so a bind failure rejects the
//! update before any worker sees it — and hands each worker its socket. A
//! listener's config lives in an `ArcSwap` slot read once per accepted
//! connection: replacing it (same address) makes new connections use the new
//! filter chains at once, while connections already open keep the config they
//! started with and are told to drain.

use crate::listener::{accept_loop, bind, ListenerConfig, Phase};
use arc_swap::ArcSwap;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};

pub enum WorkerCmd {
    Add { slot: Arc<ArcSwap<ListenerConfig>>, socket: std::net::TcpListener, stop: watch::Receiver<bool> },
}

struct Active {
    slot: Arc<ArcSwap<ListenerConfig>>,
    stop: watch::Sender<bool>,
    /// From xDS (with its version), or static.
    version: Option<String>,
    last_updated: chrono::DateTime<chrono::Utc>,
}

/// A listener as the admin shows it.
pub struct ListenerView {
    pub config: Arc<ListenerConfig>,
    pub version: Option<String>,
    pub last_updated: chrono::DateTime<chrono::Utc>,
}

pub struct ListenerManager {
    workers: Vec<mpsc::UnboundedSender<WorkerCmd>>,
    active: Mutex<BTreeMap<String, Active>>,
}

impl ListenerManager {
    /// A manager for `n` workers, with each worker's command receiver.
    pub fn new(n: usize) -> (Arc<Self>, Vec<mpsc::UnboundedReceiver<WorkerCmd>>) {
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..n).map(|_| mpsc::unbounded_channel()).unzip();
        (Arc::new(Self { workers: txs, active: Mutex::new(BTreeMap::new()) }), rxs)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Active>> {
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds or replaces the listener named `config.name`.
    pub fn apply(&self, config: ListenerConfig, version: Option<String>) -> Result<(), String> {
        let config = Arc::new(config);
        let mut active = self.lock();
        if let Some(a) = active.get_mut(&config.name) {
            let old = a.slot.load_full();
            if old.address == config.address {
                a.slot.store(config);
                a.version = version;
                a.last_updated = chrono::Utc::now();
                old.drain();
                return Ok(());
            }
        }
        // New address (or new listener): bind first, then retire the old one.
        let mut sockets = Vec::with_capacity(self.workers.len());
        for _ in &self.workers {
            sockets.push(bind(config.address).map_err(|e| format!("cannot bind '{}': {e}", config.address))?);
        }
        if let Some(old) = active.remove(&config.name) {
            retire(old);
        }
        let slot = Arc::new(ArcSwap::from(config.clone()));
        let (stop, stop_rx) = watch::channel(false);
        for (w, socket) in self.workers.iter().zip(sockets) {
            let _ = w.send(WorkerCmd::Add { slot: slot.clone(), socket, stop: stop_rx.clone() });
        }
        active.insert(config.name.clone(), Active { slot, stop, version, last_updated: chrono::Utc::now() });
        Ok(())
    }

    /// Removes a listener: it stops accepting and its connections drain.
    pub fn remove(&self, name: &str) -> bool {
        match self.lock().remove(name) {
            Some(a) => {
                retire(a);
                true
            }
            None => false,
        }
    }

    pub fn names(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    pub fn list(&self) -> Vec<ListenerView> {
        self.lock()
            .values()
            .map(|a| ListenerView {
                config: a.slot.load_full(),
                version: a.version.clone(),
                last_updated: a.last_updated,
            })
            .collect()
    }
}

fn retire(a: Active) {
    let _ = a.stop.send(true);
    a.slot.load().drain();
}

/// A worker's life: accept on the listeners it is given until the server drains.
pub async fn worker(
    mut commands: mpsc::UnboundedReceiver<WorkerCmd>,
    phase: watch::Receiver<Phase>,
    active: Arc<AtomicUsize>,
    drain_time: std::time::Duration,
) {
    let mut phase_rx = phase.clone();
    loop {
        tokio::select! {
            cmd = commands.recv() => match cmd {
                Some(WorkerCmd::Add { slot, socket, stop }) => {
                    tokio::spawn(accept_loop(slot, socket, phase.clone(), stop, active.clone()));
                }
                None => break,
            },
            changed = phase_rx.changed() => {
                if changed.is_err() || *phase_rx.borrow() == Phase::Drain {
                    break;
                }
            }
        }
    }
    // Give open connections the drain time; the process exits when the main
    // thread is done waiting for them.
    tokio::time::sleep(drain_time).await;
}
