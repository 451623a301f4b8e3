//! `legate agent`: a node agent. It fetches the node's bootstrap from the
//! control plane, starts the proxy (`legate proxy` or Envoy) with a
//! `--base-id` of its own, keeps it running (restarts with backoff, stops
//! at a crash loop), reports the process to the control plane every few
//! seconds and carries out the commands it gets in the answer (hot restart,
//! drain).
//!
//! - `config`: the command line;
//! - `launch`: the proxy's command line per hot restart epoch, its version;
//! - `backoff`: restart delays and the crash-loop limit;
//! - `admin`: the proxy's admin (`/ready`, `/healthcheck/fail`);
//! - `adopt`: a proxy left running by an agent that died, taken over;
//! - `supervisor`: the process, its state, restarts;
//! - `report`: the bootstrap fetch and the state reports;
//! - `commands`: what the control plane asks;
//! - `signals`: SIGTERM and SIGINT.

mod admin;
mod adopt;
mod backoff;
mod commands;
mod config;
mod launch;
mod report;
mod signals;
mod supervisor;

pub use config::AgentArgs;

use std::sync::atomic::Ordering;
use std::time::Duration;

/// How often the supervisor looks at its process.
const TICK: Duration = Duration::from_millis(100);

/// Runs the agent until SIGTERM or SIGINT; then stops the proxy.
pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    let settings = config::Settings::from_args(args)?;
    let stop = signals::on_terminate()?;
    let (reporter, commands) = report::Reporter::start(&settings)?;
    let mut sup = supervisor::Supervisor::new(settings, reporter.clone());
    sup.start_first();
    while !stop.load(Ordering::Relaxed) {
        sup.tick();
        while let Ok(cmd) = commands.try_recv() {
            commands::apply(&mut sup, &cmd);
        }
        std::thread::sleep(TICK);
    }
    tracing::info!("agent: stopping the proxy");
    sup.stop_all();
    reporter.send_now();
    Ok(())
}
