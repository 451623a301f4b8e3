//! What the control plane asks of the agent: a hot restart, or a drain.
//!
//! Drain is Envoy's `/healthcheck/fail`, as Envoy operators take a node out
//! of service: its health checks fail, so load balancers in front move new
//! traffic away, connections are asked to close as they finish (Envoy's
//! drain-close), and the listeners keep answering what still arrives.
//! `/drain_listeners` would close the listeners after the drain time, which
//! only a restart undoes; a failed health check is undone by `ctl restart`.

use super::admin;
use super::supervisor::{State, Supervisor};
use legate_control::discovery::agents::{Action, AgentCommand};

pub fn apply(sup: &mut Supervisor, cmd: &AgentCommand) {
    tracing::info!("agent: command {} ({:?}) from {}", cmd.id, cmd.action, cmd.requested_by);
    sup.last_command = Some(cmd.id);
    match cmd.action {
        Action::Restart => sup.hot_restart(),
        Action::Drain => match sup.admin_port() {
            Some(port) => match admin::post(port, "/healthcheck/fail") {
                Ok(()) => sup.set_state(State::Draining),
                Err(e) => tracing::warn!("agent: drain failed: {e}"),
            },
            None => tracing::warn!("agent: no proxy runs; nothing to drain"),
        },
    }
}
