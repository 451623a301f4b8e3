//! Who is calling, and whether their role allows what they ask: a bearer
//! token checked against the store (open until the first token exists).
//! Every denial is audited.

use crate::serve::api::auth::{self, Actor, Role};
use crate::serve::api::reply::{error, store_error};
use crate::state::controller::Controller;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::json;

/// Who is calling, if allowed `need`. Denials are audited.
pub fn check(
    ctrl: &Controller,
    headers: &HeaderMap,
    need: Role,
    action: &str,
    target: &str,
) -> Result<Actor, Box<Response>> {
    let store = ctrl.store();
    let open = store.token_count().map_err(|e| Box::new(store_error(e)))? == 0;
    if open {
        return Ok(Actor { name: "anonymous".into(), role: Role::Admin, service: None });
    }
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    // Every denial is audited, reads too (the API's lockout bounds how many
    // one client can cause).
    let deny = |status: StatusCode, code: &str, msg: &str, who: &str| {
        let _ = store.audit(who, action, target, false, msg);
        Box::new(error(status, code, msg, json!([])))
    };
    let Some(token) = presented else {
        return Err(deny(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "a token is required (Authorization: Bearer ...)",
            "-",
        ));
    };
    let Some((id, secret)) = auth::parse_token(token) else {
        return Err(deny(StatusCode::UNAUTHORIZED, "unauthenticated", "malformed token", "-"));
    };
    let found = store.token(id).map_err(|e| Box::new(store_error(e)))?;
    let Some((name, stored_role, _)) = found.filter(|(_, _, h)| auth::same_digest(h, &auth::hash_secret(secret)))
    else {
        return Err(deny(StatusCode::UNAUTHORIZED, "unauthenticated", "unknown or revoked token", "-"));
    };
    let role = Role::parse(&stored_role).unwrap_or(Role::Viewer);
    let service = auth::scope(&stored_role).map(str::to_owned);
    if role < need {
        return Err(deny(StatusCode::FORBIDDEN, "forbidden", &format!("role {} may not {action}", role.name()), &name));
    }
    Ok(Actor { name, role, service })
}

/// Who is calling, if they may change the registry entries of `service`:
/// an editor (or admin), or an instance token for that service.
pub fn check_registry(
    ctrl: &Controller,
    headers: &HeaderMap,
    action: &str,
    service: &str,
) -> Result<Actor, Box<Response>> {
    let actor = check(ctrl, headers, Role::Instance, action, service)?;
    let allowed = match actor.role {
        Role::Instance => actor.service.as_deref() == Some(service),
        Role::Viewer => false,
        Role::Editor | Role::Admin => true,
    };
    if allowed {
        return Ok(actor);
    }
    let msg = match &actor.service {
        Some(own) => format!("an instance token of '{own}' may not {action} for '{service}'"),
        None => format!("role {} may not {action}", actor.role.name()),
    };
    let _ = ctrl.store().audit(&actor.name, action, service, false, &msg);
    Err(Box::new(error(StatusCode::FORBIDDEN, "forbidden", &msg, json!([]))))
}

macro_rules! authorize {
    ($ctrl:expr, $headers:expr, $need:expr, $action:expr, $target:expr) => {
        match $crate::serve::api::access::check(&$ctrl, &$headers, $need, $action, $target) {
            Ok(a) => a,
            Err(r) => return *r,
        }
    };
}
pub(crate) use authorize;

macro_rules! authorize_registry {
    ($ctrl:expr, $headers:expr, $action:expr, $service:expr) => {
        match $crate::serve::api::access::check_registry(&$ctrl, &$headers, $action, $service) {
            Ok(a) => a,
            Err(r) => return *r,
        }
    };
}
pub(crate) use authorize_registry;
