//! The listener manager: adds, replaces and removes listeners while serving.
//!
//! Every worker has a command channel. Adding a listener binds one socket per
//! worker (SO_REUSEPORT) on the main thread — so a bind failure rejects the
//! update before any worker sees it — and hands each worker its socket. A
//! listener's config lives in an `ArcSwap` slot read once per accepted
//! connection: replacing it (same address) makes new connections use the new
//! filter chains at once, while connections already open keep the config they
//! started with and are told to drain.
//!
//! A listener that warms (waiting for its routes or secrets) binds its
//! sockets when it is added, as Envoy does (`reserve`), so a bind failure
//! rejects the LDS update that brought it, not the later update it waited
//! for; the sockets wait, reserved by the listener's name, until it is put
//! into service.
//!
//! Hot restart: a child process starts with the sockets its parent listens
//! on (`inherit`); a listener on one of those addresses takes the parent's
//! sockets instead of binding, so connections queued on them carry over.

use crate::listener::{accept_loop, bind, ListenerConfig, Phase};
use arc_swap::ArcSwap;
use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};

pub enum WorkerCmd {
    Add {
        slot: Arc<ArcSwap<ListenerConfig>>,
        socket: std::net::TcpListener,
        stop: watch::Receiver<bool>,
    },
    /// A UDP listener's socket, served by its UDP proxy.
    AddUdp {
        slot: Arc<ArcSwap<ListenerConfig>>,
        socket: std::net::UdpSocket,
        stop: watch::Receiver<bool>,
    },
}

struct Active {
    slot: Arc<ArcSwap<ListenerConfig>>,
    stop: watch::Sender<bool>,
    /// From xDS (with its version), or static.
    version: Option<String>,
    last_updated: chrono::DateTime<chrono::Utc>,
    /// The listening sockets the workers accept on (duplicates), for a hot
    /// restart child to take over.
    sockets: Vec<TcpListener>,
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
    /// Sockets passed by a hot restart parent, by address, not yet used.
    inherited: Mutex<HashMap<SocketAddr, Vec<TcpListener>>>,
    /// Sockets bound for warming listeners, by listener name.
    reserved: Mutex<HashMap<String, (SocketAddr, Vec<TcpListener>)>>,
}

impl ListenerManager {
    /// A manager for `n` workers, with each worker's command receiver.
    pub fn new(n: usize) -> (Arc<Self>, Vec<mpsc::UnboundedReceiver<WorkerCmd>>) {
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..n).map(|_| mpsc::unbounded_channel()).unzip();
        let reserved = Mutex::default();
        (
            Arc::new(Self { workers: txs, active: Mutex::new(BTreeMap::new()), inherited: Mutex::default(), reserved }),
            rxs,
        )
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
            if old.address == config.address && old.udp.is_some() == config.udp.is_some() {
                a.slot.store(config);
                a.version = version;
                a.last_updated = chrono::Utc::now();
                old.drain();
                return Ok(());
            }
        }
        if config.udp.is_some() {
            return self.apply_udp(&mut active, config, version);
        }
        // New address (or new listener): bind first (or take what `reserve`
        // bound), then retire the old one.
        let reserved = self.reserved().remove(&config.name).filter(|(addr, _)| *addr == config.address);
        let sockets = match reserved {
            Some((_, sockets)) => sockets,
            None => self.sockets_for(config.address)?,
        };
        let kept = sockets.iter().map(TcpListener::try_clone).collect::<Result<Vec<_>, _>>();
        let kept = kept.map_err(|e| format!("cannot duplicate the socket of '{}': {e}", config.address))?;
        if let Some(old) = active.remove(&config.name) {
            retire(old);
        }
        let slot = Arc::new(ArcSwap::from(config.clone()));
        let (stop, stop_rx) = watch::channel(false);
        // Inherited sockets may outnumber the workers (the parent ran more):
        // each is accepted on by some worker, as the kernel keeps queueing
        // connections on every socket of the SO_REUSEPORT group.
        for (i, socket) in sockets.into_iter().enumerate() {
            let w = &self.workers[i % self.workers.len()];
            let _ = w.send(WorkerCmd::Add { slot: slot.clone(), socket, stop: stop_rx.clone() });
        }
        let last_updated = chrono::Utc::now();
        active.insert(config.name.clone(), Active { slot, stop, version, last_updated, sockets: kept });
        Ok(())
    }

    /// A new UDP listener: one socket per worker (SO_REUSEPORT: the kernel
    /// keeps each peer on one socket, so its session stays on one worker).
    /// Not passed on a hot restart: the new process binds its own beside.
    fn apply_udp(
        &self,
        active: &mut BTreeMap<String, Active>,
        config: Arc<ListenerConfig>,
        version: Option<String>,
    ) -> Result<(), String> {
        let addr = config.address;
        let sockets = (0..self.workers.len())
            .map(|_| bind_udp(addr).map_err(|e| bind_error(addr, &e)))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(old) = active.remove(&config.name) {
            retire(old);
        }
        let slot = Arc::new(ArcSwap::from(config.clone()));
        let (stop, stop_rx) = watch::channel(false);
        for (w, socket) in self.workers.iter().zip(sockets) {
            let _ = w.send(WorkerCmd::AddUdp { slot: slot.clone(), socket, stop: stop_rx.clone() });
        }
        let last_updated = chrono::Utc::now();
        active.insert(config.name.clone(), Active { slot, stop, version, last_updated, sockets: Vec::new() });
        Ok(())
    }

    fn reserved(&self) -> std::sync::MutexGuard<'_, HashMap<String, (SocketAddr, Vec<TcpListener>)>> {
        self.reserved.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Binds the sockets listener `name` will need on `addr` now (it warms
    /// before [`apply`](Self::apply) puts it into service): nothing when it
    /// already listens or has reserved there. `Ok(true)` when it bound.
    pub fn reserve(&self, name: &str, addr: SocketAddr) -> Result<bool, String> {
        if self.lock().get(name).is_some_and(|a| a.slot.load().address == addr) {
            return Ok(false);
        }
        if self.reserved().get(name).is_some_and(|(a, _)| *a == addr) {
            return Ok(false);
        }
        let sockets = self.sockets_for(addr)?;
        self.reserved().insert(name.to_string(), (addr, sockets));
        Ok(true)
    }

    /// Closes what listener `name` reserved (it will not be put into service).
    pub fn release(&self, name: &str) {
        self.reserved().remove(name);
    }

    /// One socket per worker: the parent's (hot restart) first, then new ones.
    fn sockets_for(&self, addr: SocketAddr) -> Result<Vec<TcpListener>, String> {
        let mut sockets = self.inherited.lock().unwrap_or_else(|e| e.into_inner()).remove(&addr).unwrap_or_default();
        if !sockets.is_empty() {
            tracing::info!("listener {addr}: took over {} socket(s) from the parent process", sockets.len());
        }
        while sockets.len() < self.workers.len() {
            sockets.push(bind(addr).map_err(|e| bind_error(addr, &e))?);
        }
        Ok(sockets)
    }

    /// Sockets a hot restart parent passed, for listeners to take by address.
    pub fn inherit(&self, sockets: HashMap<SocketAddr, Vec<TcpListener>>) {
        self.inherited.lock().unwrap_or_else(|e| e.into_inner()).extend(sockets);
    }

    /// Closes the parent's sockets no listener took (the parent has exited:
    /// nobody would accept the connections queued on them). Returns how many.
    pub fn close_unclaimed(&self) -> usize {
        let mut inherited = self.inherited.lock().unwrap_or_else(|e| e.into_inner());
        let n = inherited.values().map(Vec::len).sum();
        inherited.clear();
        n
    }

    /// The addresses listened on, for a hot restart child.
    pub fn listen_addresses(&self) -> Vec<SocketAddr> {
        let mut v: Vec<SocketAddr> = self.lock().values().map(|a| a.slot.load().address).collect();
        v.sort();
        v.dedup();
        v
    }

    /// Duplicates of every socket listening on `addr` (one per worker).
    pub fn sockets_of(&self, addr: SocketAddr) -> std::io::Result<Vec<TcpListener>> {
        let active = self.lock();
        let of_addr = active.values().filter(|a| a.slot.load().address == addr);
        of_addr.flat_map(|a| a.sockets.iter().map(TcpListener::try_clone)).collect()
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

/// Envoy's words for a failed bind: `cannot bind '<addr>': <strerror>`.
fn bind_error(addr: SocketAddr, e: &std::io::Error) -> String {
    let text = e.to_string();
    let reason = text.split(" (os error").next().unwrap_or(&text);
    format!("cannot bind '{addr}': {reason}")
}

/// One worker's UDP socket on `addr`, with SO_REUSEPORT.
fn bind_udp(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    Ok(crate::listener::bound_reuse_port(addr, socket2::Type::DGRAM, socket2::Protocol::UDP)?.into())
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
                Some(WorkerCmd::AddUdp { slot, socket, stop }) => {
                    tokio::spawn(crate::listener::udp_proxy::serve(move || slot.load().udp.clone(), socket, stop));
                }
                None => break,
            },
            changed = phase_rx.changed() => {
                // A hot restart parent keeps its workers (and their
                // connections) until the child asks it to exit.
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
