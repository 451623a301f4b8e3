//! The parent's side: answers its child on a thread of its own (blocking
//! socket I/O, off the main thread's runtime), one child at a time.

use crate::listener::Phase;
use crate::server::hot_restart::channel::{Link, LinkError, MAX_FDS};
use crate::server::hot_restart::messages::{Reply, Request};
use crate::server::Shared;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Serves children on `listener` for the life of the process.
pub fn spawn(listener: UnixListener, shared: Arc<Shared>, epoch: u32) -> std::io::Result<()> {
    std::thread::Builder::new().name("hot-restart".into()).spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let mut link = Link::new(conn);
            match serve(&mut link, &shared, epoch) {
                Ok(true) => return,
                Ok(false) => tracing::info!("hot restart: the child went away"),
                Err(e) => tracing::warn!("hot restart: talking to a child: {e}"),
            }
        }
    })?;
    Ok(())
}

/// Answers one child until it asks this process to exit (true) or leaves.
fn serve(link: &mut Link, shared: &Shared, epoch: u32) -> Result<bool, LinkError> {
    loop {
        let req: Request = match link.recv() {
            Ok((req, _)) => req,
            Err(LinkError::Closed) => return Ok(false),
            Err(e) => return Err(e),
        };
        match req {
            Request::Hello { epoch: theirs } if theirs != epoch + 1 => {
                let reason = format!("this process is epoch {epoch}; its child must be epoch {}", epoch + 1);
                link.send(&Reply::Refused { reason }, &[])?;
                return Ok(false);
            }
            Request::Hello { .. } => link.send(&Reply::Hello { epoch }, &[])?,
            Request::ListenAddresses => {
                let addresses = shared.listeners.listen_addresses().iter().map(ToString::to_string).collect();
                link.send(&Reply::Addresses { addresses }, &[])?;
            }
            Request::PassSockets { address } => pass_sockets(link, shared, address)?,
            Request::ShutdownAdmin => {
                shut_admin(shared);
                let original_start_time = shared.original_start_time();
                link.send(&Reply::AdminShutDown { original_start_time }, &[])?;
            }
            Request::DrainListeners => {
                tracing::info!("hot restart: the child took over; draining for {:?}", shared.options.drain_time);
                shared.store.gauge("server.state").set(2);
                let gradual = shared.options.drain_strategy_gradual;
                let _ = shared.phase.send(Phase::HotRestartDrain { gradual });
                link.send(&Reply::Draining, &[])?;
            }
            Request::Stats => {
                let (counters, gauges) = crate::server::hot_restart::stats::snapshot(&shared.store);
                link.send(&Reply::Stats { counters, gauges }, &[])?;
            }
            Request::Terminate => {
                tracing::info!("hot restart: the child asked this process to exit");
                link.send(&Reply::Terminating, &[])?;
                shared.quit.notify_one();
                return Ok(true);
            }
        }
    }
}

fn pass_sockets(link: &mut Link, shared: &Shared, address: String) -> Result<(), LinkError> {
    let sockets = match address.parse::<SocketAddr>() {
        Ok(addr) => shared.listeners.sockets_of(addr)?,
        Err(_) => Vec::new(),
    };
    // Never more than one message carries; a parent with more workers than
    // that is refused rather than half passed.
    if sockets.len() > MAX_FDS {
        let reason = format!("{} sockets on {address}: more than one message carries", sockets.len());
        return link.send(&Reply::Refused { reason }, &[]);
    }
    let fds: Vec<_> = sockets.iter().map(AsFd::as_fd).collect();
    link.send(&Reply::Sockets { address, count: fds.len() }, &fds)
}

/// Stops the admin listener and waits (briefly) until it is closed, so the
/// child can bind its address.
fn shut_admin(shared: &Shared) {
    shared.admin_stop.send_replace(true);
    let deadline = Instant::now() + Duration::from_secs(2);
    while !shared.admin_closed.load(std::sync::atomic::Ordering::Acquire) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    tracing::info!("hot restart: admin shut down for the child");
}
