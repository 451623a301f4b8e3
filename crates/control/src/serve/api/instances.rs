//! The service registry over HTTP: instances register, send heartbeats,
//! deregister (editors, or an instance token for that one service); viewers
//! may list them.

use crate::discovery::registry::Registration;
use crate::serve::api::access::{authorize, authorize_registry};
use crate::serve::api::auth::Role;
use crate::serve::api::reply::{bad_request, not_found, store_error};
use crate::state::controller::Controller;
use crate::state::instances::RegistryOpError;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use std::sync::Arc;

pub async fn register_instance(
    State(ctrl): State<Arc<Controller>>,
    headers: HeaderMap,
    Path(svc): Path<String>,
    Json(body): Json<Registration>,
) -> Response {
    let actor = authorize_registry!(ctrl, headers, "register", &svc);
    match ctrl.register(&svc, body) {
        Ok(inst) => {
            let _ = ctrl.store().audit(&actor.name, "register", &format!("{svc}/{}", inst.id), true, "");
            Json(inst).into_response()
        }
        Err(RegistryOpError::Invalid(e)) => bad_request("invalid", e.to_string()),
        Err(RegistryOpError::Store(e)) => store_error(e),
    }
}

pub async fn heartbeat(
    State(ctrl): State<Arc<Controller>>,
    headers: HeaderMap,
    Path((svc, id)): Path<(String, String)>,
) -> Response {
    authorize_registry!(ctrl, headers, "heartbeat", &svc);
    match ctrl.heartbeat(&svc, &id) {
        Ok(true) => Json(json!({"service": svc, "id": id})).into_response(),
        Ok(false) => not_found(format!("instance {svc}/{id} is not registered (expired?)")),
        Err(e) => store_error(e),
    }
}

pub async fn deregister_instance(
    State(ctrl): State<Arc<Controller>>,
    headers: HeaderMap,
    Path((svc, id)): Path<(String, String)>,
) -> Response {
    let actor = authorize_registry!(ctrl, headers, "deregister", &svc);
    match ctrl.deregister(&svc, &id) {
        Ok(true) => {}
        Ok(false) => return not_found(format!("instance {svc}/{id} not found")),
        Err(e) => return store_error(e),
    }
    let _ = ctrl.store().audit(&actor.name, "deregister", &format!("{svc}/{id}"), true, "");
    Json(json!({"deregistered": format!("{svc}/{id}")})).into_response()
}

pub async fn list_instances(State(ctrl): State<Arc<Controller>>, headers: HeaderMap) -> Response {
    authorize!(ctrl, headers, Role::Viewer, "read", "instances");
    let list = ctrl.instances();
    Json(json!({ "instances": list })).into_response()
}
