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
    Json(json!({"proxies": ctrl.fleet.list()})).into_response()
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
