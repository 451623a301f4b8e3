//! SIGTERM and SIGINT: a flag the agent's loop reads.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A flag set when the agent is asked to stop.
pub fn on_terminate() -> anyhow::Result<Arc<AtomicBool>> {
    use tokio::signal::unix::{signal, SignalKind};
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // Registered here, before the proxy starts, so no signal is missed.
    let (mut term, mut int) = rt.block_on(async {
        Ok::<_, std::io::Error>((signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?))
    })?;
    std::thread::Builder::new().name("agent-signals".into()).spawn(move || {
        rt.block_on(async {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        });
        flag.store(true, Ordering::Relaxed);
    })?;
    Ok(stop)
}
