//! Admin-only calls: API tokens (create, list, revoke) and the audit log.

use crate::serve::api::access::authorize;
use crate::serve::api::auth;
use crate::serve::api::auth::Role;
use crate::serve::api::reply::{bad_request, not_found, store_error};
use crate::state::controller::Controller;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

#[derive(Deserialize)]
pub struct TokenBody {
    role: String,
    #[serde(default)]
    name: String,
    /// The service an `instance` token may register.
    #[serde(default)]
    service: String,
}

pub async fn create_token(
    State(ctrl): State<Arc<Controller>>,
    headers: HeaderMap,
    Json(body): Json<TokenBody>,
) -> Response {
    let actor = authorize!(ctrl, headers, Role::Admin, "create token", &body.name);
    let stored = match (body.role.as_str(), body.service.as_str()) {
        ("instance", "") => return bad_request("service", "an instance token needs the service it registers"),
        ("instance", svc) => format!("instance:{svc}"),
        (_, "") => body.role.clone(),
        (_, _) => return bad_request("service", "only an instance token is for one service"),
    };
    let Some(role) = Role::parse(&stored) else {
        return bad_request("role", format!("role must be instance, viewer, editor or admin, not '{}'", body.role));
    };
    let (id, secret, token) = auth::new_token();
    let name = if body.name.is_empty() { format!("{}-{id}", role.name()) } else { body.name.clone() };
    if let Err(e) = ctrl.store().add_token(&id, &name, &stored, &auth::hash_secret(&secret)) {
        return store_error(e);
    }
    let _ = ctrl.store().audit(&actor.name, "create token", &name, true, &stored);
    // The only time the secret is shown.
    Json(json!({"id": id, "name": name, "role": stored, "token": token})).into_response()
}

pub async fn list_tokens(State(ctrl): State<Arc<Controller>>, headers: HeaderMap) -> Response {
    authorize!(ctrl, headers, Role::Admin, "list tokens", "tokens");
    match ctrl.store().tokens() {
        Ok(t) => Json(json!({"tokens": t.into_iter().map(|(id, name, role, created_at)| json!({"id": id, "name": name, "role": role, "created_at": created_at})).collect::<Vec<_>>()})).into_response(),
        Err(e) => store_error(e),
    }
}

pub async fn revoke_token(State(ctrl): State<Arc<Controller>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let actor = authorize!(ctrl, headers, Role::Admin, "revoke token", &id);
    match ctrl.store().revoke_token(&id) {
        Ok(true) => {
            let _ = ctrl.store().audit(&actor.name, "revoke token", &id, true, "");
            Json(json!({"revoked": id})).into_response()
        }
        Ok(false) => not_found(format!("token {id} not found")),
        Err(e) => store_error(e),
    }
}

pub async fn audit_log(State(ctrl): State<Arc<Controller>>, headers: HeaderMap) -> Response {
    authorize!(ctrl, headers, Role::Admin, "read audit", "audit");
    match ctrl.store().audit_log(500) {
        Ok(rows) => Json(json!({ "entries": rows })).into_response(),
        Err(e) => store_error(e),
    }
}
