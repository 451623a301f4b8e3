//! What this control plane sees of itself and its proxies: the connected
//! proxies with what each was sent, ACKed and NACKed, and this replica.

use crate::serve::api::access::authorize;
use crate::serve::api::auth::Role;
use crate::state::controller::Controller;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use std::sync::Arc;

pub async fn proxies(State(ctrl): State<Arc<Controller>>, headers: HeaderMap) -> Response {
    authorize!(ctrl, headers, Role::Viewer, "read", "proxies");
    Json(json!({"proxies": proxies_with_agents(&ctrl)})).into_response()
}

/// The connected proxies, each with its node agent's report (`agent`) when
/// it has one; then the supervised nodes whose proxy is not connected (down,
/// restarting, crash-looping), with `connected: false`.
fn proxies_with_agents(ctrl: &Controller) -> Vec<serde_json::Value> {
    let mut agents = ctrl.agents.list();
    let staged = ctrl.staged_rollout();
    let mut out: Vec<serde_json::Value> = ctrl
        .fleet
        .list()
        .into_iter()
        .map(|p| {
            let agent = agents.get(&p.node.id).cloned();
            let mut v = serde_json::to_value(&p).unwrap_or_default();
            v["connected"] = json!(true);
            if let Some(r) = &staged {
                // During a staged rollout: whether this proxy is served the
                // staged revision (canary) or keeps the previous one.
                let canary = r.canary.contains(&p.node.id);
                let serves = if canary { r.revision } else { r.previous };
                v["rollout"] = json!({"revision": r.revision, "canary": canary, "serves": serves});
            }
            if let Some(a) = agent {
                v["agent"] = serde_json::to_value(a).unwrap_or_default();
            }
            v
        })
        .collect();
    let connected: std::collections::BTreeSet<String> =
        out.iter().filter_map(|p| p["node"]["id"].as_str().map(String::from)).collect();
    agents.retain(|node, _| !connected.contains(node));
    for (node, a) in agents {
        let cluster = a.report.cluster.clone();
        out.push(json!({
            "node": {"id": node, "cluster": cluster},
            "mode": "-",
            "connected": false,
            "types": {},
            "agent": a,
        }));
    }
    out
}

/// Which store this replica uses, its name, and whether it leads (expires
/// registry instances).
pub async fn replica(State(ctrl): State<Arc<Controller>>, headers: HeaderMap) -> Response {
    authorize!(ctrl, headers, Role::Viewer, "read", "replica");
    Json(json!({
        "replica": ctrl.replica_id(),
        "store": ctrl.store().kind(),
        "leader": ctrl.is_leader(),
        "revision": ctrl.stored().revision,
    }))
    .into_response()
}

/// Who the caller is and what their role may do, so the console shows only
/// the actions the API would allow (`open` while no token exists).
pub async fn whoami(State(ctrl): State<Arc<Controller>>, headers: HeaderMap) -> Response {
    let actor = authorize!(ctrl, headers, Role::Viewer, "read", "whoami");
    let open = ctrl.store().token_count().map(|n| n == 0).unwrap_or(false);
    let may = |need: Role| actor.role >= need;
    Json(json!({
        "name": actor.name,
        "role": actor.role.name(),
        "open": open,
        "may": {
            "read": true,
            "apply": may(Role::Editor),
            "delete": may(Role::Editor),
            "rollback": may(super::revisions::ROLLBACK_ROLE),
            "tokens": may(Role::Admin),
            "audit": may(Role::Admin),
        },
    }))
    .into_response()
}
