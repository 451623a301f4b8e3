//! The child's side: before building its listeners it asks the parent for
//! their sockets; once its workers run it asks the parent to drain, pulls the
//! parent's stats every few seconds, and at `--parent-shutdown-time-s` takes
//! the last of them and asks the parent to exit.

use crate::server::hot_restart::channel::{self, Link};
use crate::server::hot_restart::messages::{Reply, Request};
use crate::server::hot_restart::stats::Merger;
use crate::server::hot_restart::{HotRestartError, RestartOptions, STATS_INTERVAL};
use crate::server::Shared;
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long one answer from the parent may take.
const ANSWER_TIME: Duration = Duration::from_secs(30);

/// A child's conversation with its parent.
pub struct Child {
    link: Link,
    options: RestartOptions,
    started: Instant,
}

impl Child {
    /// Connects to the parent (epoch - 1) and introduces itself; None at epoch 0.
    pub fn connect(options: RestartOptions) -> Result<Option<Child>, HotRestartError> {
        if options.epoch == 0 {
            return Ok(None);
        }
        let (base_id, epoch) = (options.base_id, options.epoch);
        let link = channel::connect(base_id, epoch - 1).map_err(|source| HotRestartError::NoParent {
            base_id,
            epoch,
            source,
        })?;
        link.set_timeout(Some(ANSWER_TIME)).map_err(channel::LinkError::Io)?;
        let mut child = Child { link, options, started: Instant::now() };
        match child.ask(Request::Hello { epoch })? {
            (Reply::Hello { .. }, _) => Ok(Some(child)),
            (other, _) => Err(unexpected("Hello", other)),
        }
    }

    fn ask(&mut self, req: Request) -> Result<(Reply, Vec<OwnedFd>), HotRestartError> {
        self.link.send(&req, &[])?;
        match self.link.recv()? {
            (Reply::Refused { reason }, _) => Err(HotRestartError::Refused(reason)),
            answer => Ok(answer),
        }
    }

    /// Every socket the parent listens on, by address.
    pub fn take_sockets(&mut self) -> Result<HashMap<SocketAddr, Vec<TcpListener>>, HotRestartError> {
        let addresses = match self.ask(Request::ListenAddresses)? {
            (Reply::Addresses { addresses }, _) => addresses,
            (other, _) => return Err(unexpected("ListenAddresses", other)),
        };
        let mut out = HashMap::new();
        for address in addresses {
            let addr: SocketAddr = address.parse().map_err(|_| HotRestartError::BadAddress(address.clone()))?;
            let (count, fds) = match self.ask(Request::PassSockets { address })? {
                (Reply::Sockets { count, .. }, fds) => (count, fds),
                (other, _) => return Err(unexpected("PassSockets", other)),
            };
            if fds.len() != count {
                return Err(unexpected("PassSockets", format!("{} descriptors for {count} sockets", fds.len())));
            }
            out.insert(addr, fds.into_iter().map(TcpListener::from).collect());
        }
        Ok(out)
    }

    /// Asks the parent to close its admin listener; returns when epoch 0 started.
    pub fn shutdown_parent_admin(&mut self) -> Result<u64, HotRestartError> {
        match self.ask(Request::ShutdownAdmin)? {
            (Reply::AdminShutDown { original_start_time }, _) => Ok(original_start_time),
            (other, _) => Err(unexpected("ShutdownAdmin", other)),
        }
    }

    /// The rest of the restart, on its own thread, once the workers run.
    pub fn spawn(self, shared: Arc<Shared>) -> std::io::Result<()> {
        std::thread::Builder::new().name("hot-restart".into()).spawn(move || self.take_over(&shared))?;
        Ok(())
    }

    fn take_over(mut self, shared: &Shared) {
        let mut merger = Merger::default();
        if let Err(e) = self.drain_and_wait(shared, &mut merger) {
            tracing::warn!("hot restart: {e}; the parent's stats are no longer merged");
        }
        merger.finish(&shared.store);
        // As Envoy's parent closes the sockets no child asked for when it exits.
        let closed = shared.listeners.close_unclaimed();
        if closed > 0 {
            tracing::info!("hot restart: closed {closed} socket(s) of the parent that no listener took");
        }
    }

    fn drain_and_wait(&mut self, shared: &Shared, merger: &mut Merger) -> Result<(), HotRestartError> {
        match self.ask(Request::DrainListeners)? {
            (Reply::Draining, _) => tracing::info!("hot restart: the parent is draining"),
            (other, _) => return Err(unexpected("DrainListeners", other)),
        }
        let deadline = self.started + self.options.parent_shutdown_time;
        loop {
            self.merge_stats(shared, merger)?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(STATS_INTERVAL));
        }
        match self.ask(Request::Terminate)? {
            (Reply::Terminating, _) => tracing::info!("hot restart: the parent is exiting"),
            (other, _) => return Err(unexpected("Terminate", other)),
        }
        Ok(())
    }

    fn merge_stats(&mut self, shared: &Shared, merger: &mut Merger) -> Result<(), HotRestartError> {
        match self.ask(Request::Stats)? {
            (Reply::Stats { counters, gauges }, _) => {
                merger.merge(&shared.store, &counters, &gauges);
                Ok(())
            }
            (other, _) => Err(unexpected("Stats", other)),
        }
    }
}

fn unexpected(request: &'static str, answer: impl std::fmt::Debug) -> HotRestartError {
    let mut answer = format!("{answer:?}");
    answer.truncate(200);
    HotRestartError::Unexpected { request, answer }
}
