//! Node agents over HTTP: the bootstrap a node starts from, the agent's
//! state reports (answered with the commands waiting for it), and the
//! commands people queue for it (`ctl restart`, `ctl drain`).

use crate::discovery::agents::{Action, AgentReport};
use crate::discovery::bootstrap::{bootstrap_yaml, with_hds, with_locality};
use crate::serve::api::access::authorize;
use crate::serve::api::auth::Role;
use crate::serve::api::reply::{bad_request, not_found};
use crate::state::controller::Controller;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

#[derive(Deserialize)]
pub struct BootstrapQuery {
    node: String,
    #[serde(default = "default_cluster")]
    cluster: String,
    #[serde(default = "default_admin_port")]
    admin_port: u16,
    #[serde(default)]
    delta: bool,
    /// With `hds_config`: the proxy checks endpoints for the control plane.
    #[serde(default)]
    hds: bool,
    /// The xDS address the proxy dials; default: where this control plane serves it.
    xds: Option<String>,
    /// `REGION[/ZONE[/SUB_ZONE]]`: the node's `locality`.
    locality: Option<String>,
}

fn default_cluster() -> String {
    "legate".into()
}

fn default_admin_port() -> u16 {
    9901
}

/// `GET /v1/bootstrap?node=..`: the bootstrap `legate ctl bootstrap` prints,
/// as YAML text.
pub async fn bootstrap(
    State(ctrl): State<Arc<Controller>>,
    headers: HeaderMap,
    Query(q): Query<BootstrapQuery>,
) -> Response {
    authorize!(ctrl, headers, Role::Viewer, "read", "bootstrap");
    if q.node.is_empty() {
        return bad_request("invalid", "node must not be empty");
    }
    let xds = match q.xds {
        Some(x) => x,
        None => match ctrl.xds_addr.get() {
            // An unspecified address is reached on loopback from this host.
            Some(a) if a.ip().is_unspecified() => format!("127.0.0.1:{}", a.port()),
            Some(a) => a.to_string(),
            None => return bad_request("invalid", "this control plane serves no xDS; give xds=HOST:PORT"),
        },
    };
    let Some((host, port)) = xds.rsplit_once(':') else {
        return bad_request("invalid", "xds must be HOST:PORT");
    };
    let mut yaml = bootstrap_yaml(&q.node, &q.cluster, host.trim_matches(['[', ']']), port, q.delta, q.admin_port);
    if q.hds {
        yaml = with_hds(&yaml);
    }
    if let Some(l) = &q.locality {
        yaml = match with_locality(&yaml, l) {
            Ok(y) => y,
            Err(e) => return bad_request("invalid", e),
        };
    }
    ([(axum::http::header::CONTENT_TYPE, "application/yaml")], yaml).into_response()
}

/// `PUT /v1/agents/{node}`: an agent's report; the answer carries the
/// commands queued for it since its last report.
pub async fn agent_report(
    State(ctrl): State<Arc<Controller>>,
    headers: HeaderMap,
    Path(node): Path<String>,
    Json(report): Json<AgentReport>,
) -> Response {
    authorize!(ctrl, headers, Role::Editor, "report", &node);
    let commands = ctrl.agents.report(&node, report);
    Json(json!({"node": node, "commands": commands})).into_response()
}

#[derive(Deserialize)]
pub struct CommandBody {
    action: String,
}

/// `POST /v1/agents/{node}/commands` `{"action": "restart"|"drain"}`: queued
/// for the node's agent, which takes it with its next report.
pub async fn agent_command(
    State(ctrl): State<Arc<Controller>>,
    headers: HeaderMap,
    Path(node): Path<String>,
    Json(body): Json<CommandBody>,
) -> Response {
    let actor = authorize!(ctrl, headers, Role::Editor, &body.action, &node);
    let Some(action) = Action::parse(&body.action) else {
        return bad_request("invalid", format!("unknown action {:?} (restart or drain)", body.action));
    };
    let Some(id) = ctrl.agents.command(&node, action, &actor.name) else {
        return not_found(format!("no agent has reported for node {node}"));
    };
    let _ = ctrl.store().audit(&actor.name, &body.action, &node, true, &format!("command {id}"));
    Json(json!({"node": node, "action": body.action, "command": id})).into_response()
}
