//! The REST API under `/v1`: JSON in and out, errors as `{code, message, errors}`.
//! Every call is authorized by role (see `auth`); every change, and every
//! denied call, lands in the audit log with who made it.

use crate::resources::certinfo;
use crate::resources::document::{parse_documents, Document};
use crate::resources::kind::Kind;
use crate::serve::auth::{self, Actor, Role};
use crate::state::apply::ApplyError;
use crate::state::controller::Controller;
use crate::state::instances::RegistryOpError;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

pub fn router(ctrl: Arc<Controller>) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/ui", get(dashboard))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/apply", post(apply))
        .route("/v1/resources", get(list))
        .route("/v1/resources/{kind}", get(list_kind))
        .route("/v1/resources/{kind}/{name}", get(get_one))
        .route("/v1/resources/{kind}/{name}", delete(delete_one))
        .route("/v1/proxies", get(proxies))
        .route("/v1/revisions", get(revisions))
        .route("/v1/diff", get(diff))
        .route("/v1/rollback", post(rollback))
        .route("/v1/tokens", get(list_tokens).post(create_token))
        .route("/v1/tokens/{id}", delete(revoke_token))
        .route("/v1/audit", get(audit_log))
        .route("/v1/instances", get(list_instances))
        .route("/v1/replica", get(replica))
        .route("/v1/envoy/{kind}", get(envoy_resources))
        .route("/v1/services/{svc}/instances", post(register_instance))
        .route("/v1/services/{svc}/instances/{id}", delete(deregister_instance))
        .route("/v1/services/{svc}/instances/{id}/heartbeat", axum::routing::put(heartbeat))
        .with_state(ctrl)
}

/// The dashboard: one page that reads the API below.
async fn dashboard() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("ui/index.html"))
}

async fn openapi() -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], include_str!("openapi.json")).into_response()
}

fn error(status: StatusCode, code: &str, message: impl Into<String>, errors: serde_json::Value) -> Response {
    (status, Json(json!({"code": code, "message": message.into(), "errors": errors}))).into_response()
}

impl IntoResponse for ApplyError {
    fn into_response(self) -> Response {
        match self {
            ApplyError::Invalid(errs) => {
                error(StatusCode::BAD_REQUEST, "invalid", "the resources are invalid; nothing was applied", json!(errs))
            }
            ApplyError::NotFound(what) => {
                error(StatusCode::NOT_FOUND, "not_found", format!("{what} not found"), json!([]))
            }
            ApplyError::Store(crate::store::StoreError::NoRevision(r)) => {
                error(StatusCode::NOT_FOUND, "not_found", format!("revision {r} does not exist"), json!([]))
            }
            ApplyError::Store(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string(), json!([])),
        }
    }
}

/// Who is calling, if allowed `need`. Denials of changes are audited.
fn authorize(
    ctrl: &Controller,
    headers: &HeaderMap,
    need: Role,
    action: &str,
    target: &str,
) -> Result<Actor, Box<Response>> {
    let store = ctrl.store();
    let open = store
        .token_count()
        .map_err(|e| Box::new(error(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string(), json!([]))))?
        == 0;
    if open {
        return Ok(Actor { name: "anonymous".into(), role: Role::Admin });
    }
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let deny = |status: StatusCode, code: &str, msg: &str, who: &str| {
        if need > Role::Viewer {
            let _ = store.audit(who, action, target, false, msg);
        }
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
    let found = store
        .token(id)
        .map_err(|e| Box::new(error(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string(), json!([]))))?;
    let Some((name, role, hash)) = found.filter(|(_, _, h)| auth::same_digest(h, &auth::hash_secret(secret))) else {
        return Err(deny(StatusCode::UNAUTHORIZED, "unauthenticated", "unknown or revoked token", "-"));
    };
    let role = Role::parse(&role).unwrap_or(Role::Viewer);
    let _ = hash;
    if role < need {
        return Err(deny(StatusCode::FORBIDDEN, "forbidden", &format!("role {} may not {action}", role.name()), &name));
    }
    Ok(Actor { name, role })
}

macro_rules! authorize {
    ($ctrl:expr, $headers:expr, $need:expr, $action:expr, $target:expr) => {
        match authorize(&$ctrl, &$headers, $need, $action, $target) {
            Ok(a) => a,
            Err(r) => return *r,
        }
    };
}

#[derive(Deserialize)]
struct ApplyBody {
    /// Documents as objects, or `text`: a YAML/JSON stream.
    #[serde(default)]
    documents: Vec<Document>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    message: String,
    #[serde(default)]
    dry_run: bool,
}

async fn apply(State(ctrl): State<Arc<Controller>>, headers: HeaderMap, Json(body): Json<ApplyBody>) -> Response {
    let need = if body.dry_run { Role::Viewer } else { Role::Editor };
    let actor = authorize!(ctrl, headers, need, "apply", "resources");
    let mut docs = body.documents;
    if let Some(text) = &body.text {
        match parse_documents(text) {
            Ok(more) => docs.extend(more),
            Err(e) => return error(StatusCode::BAD_REQUEST, "parse", e, json!([])),
        }
    }
    match ctrl.apply(&docs, &actor.name, &body.message, body.dry_run) {
        Ok(outcome) => {
            if let Some(rev) = outcome.revision {
                let changed: Vec<String> = outcome.created.iter().chain(&outcome.updated).cloned().collect();
                let _ = ctrl.store().audit(&actor.name, "apply", &changed.join(","), true, &format!("revision {rev}"));
            }
            Json(outcome).into_response()
        }
        Err(e) => e.into_response(),
    }
}

fn docs_json(ctrl: &Controller, kind: Option<Kind>, name: Option<&str>) -> Vec<serde_json::Value> {
    let state = ctrl.stored();
    state
        .resources
        .iter()
        .filter(|((k, n), _)| kind.is_none_or(|want| *k == want) && name.is_none_or(|want| n == want))
        .map(|(_, r)| {
            let mut v =
                json!({"kind": r.kind.name(), "metadata": r.doc.metadata, "spec": r.doc.spec, "version": r.version});
            if r.kind == Kind::Secret {
                // Each certificate's validity, read from the secret itself.
                let certs = certinfo::certificates(&r.any);
                v["status"] = json!({
                    "expiration_time": certinfo::earliest_expiry(&certs),
                    "certificates": certs,
                });
            }
            v
        })
        .collect()
}

async fn list(State(ctrl): State<Arc<Controller>>, headers: HeaderMap) -> Response {
    authorize!(ctrl, headers, Role::Viewer, "read", "resources");
    Json(json!({"revision": ctrl.current().revision, "items": docs_json(&ctrl, None, None)})).into_response()
}

fn parse_kind(kind: &str) -> Result<Kind, Box<Response>> {
    Kind::parse(kind)
        .ok_or_else(|| Box::new(error(StatusCode::BAD_REQUEST, "kind", format!("unknown kind '{kind}'"), json!([]))))
}

async fn list_kind(State(ctrl): State<Arc<Controller>>, headers: HeaderMap, Path(kind): Path<String>) -> Response {
    authorize!(ctrl, headers, Role::Viewer, "read", "resources");
    match parse_kind(&kind) {
        Ok(k) => {
            Json(json!({"revision": ctrl.current().revision, "items": docs_json(&ctrl, Some(k), None)})).into_response()
        }
        Err(r) => *r,
    }
}

async fn get_one(
    State(ctrl): State<Arc<Controller>>,
    headers: HeaderMap,
    Path((kind, name)): Path<(String, String)>,
) -> Response {
    authorize!(ctrl, headers, Role::Viewer, "read", "resources");
    let k = match parse_kind(&kind) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    match docs_json(&ctrl, Some(k), Some(&name)).pop() {
        Some(d) => Json(d).into_response(),
        None => error(StatusCode::NOT_FOUND, "not_found", format!("{}/{name} not found", k.name()), json!([])),
    }
}

#[derive(Deserialize)]
struct MessageQuery {
    #[serde(default)]
    message: String,
}

async fn delete_one(
    State(ctrl): State<Arc<Controller>>,
    headers: HeaderMap,
    Path((kind, name)): Path<(String, String)>,
    Query(q): Query<MessageQuery>,
) -> Response {
    let target = format!("{kind}/{name}");
    let actor = authorize!(ctrl, headers, Role::Editor, "delete", &target);
    let k = match parse_kind(&kind) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    match ctrl.delete(k, &name, &actor.name, &q.message) {
        Ok(o) => {
            let _ = ctrl.store().audit(&actor.name, "delete", &target, true, &format!("revision {:?}", o.revision));
            Json(o).into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn proxies(State(ctrl): State<Arc<Controller>>, headers: HeaderMap) -> Response {
    authorize!(ctrl, headers, Role::Viewer, "read", "proxies");
    Json(json!({"proxies": ctrl.fleet.list()})).into_response()
}

#[derive(Deserialize)]
struct DiffQuery {
    from: u64,
    to: Option<u64>,
}

async fn diff(State(ctrl): State<Arc<Controller>>, headers: HeaderMap, Query(q): Query<DiffQuery>) -> Response {
    authorize!(ctrl, headers, Role::Viewer, "read", "revisions");
    match ctrl.diff(q.from, q.to) {
        Ok(d) => Json(json!({"from": q.from, "to": q.to, "changes": d})).into_response(),
        Err(e) => ApplyError::Store(e).into_response(),
    }
}

#[derive(Deserialize)]
struct RollbackBody {
    revision: u64,
    #[serde(default)]
    message: String,
}

async fn rollback(State(ctrl): State<Arc<Controller>>, headers: HeaderMap, Json(body): Json<RollbackBody>) -> Response {
    let target = format!("revision {}", body.revision);
    let actor = authorize!(ctrl, headers, Role::Admin, "rollback", &target);
    match ctrl.rollback(body.revision, &actor.name, &body.message) {
        Ok(o) => {
            let _ =
                ctrl.store().audit(&actor.name, "rollback", &target, true, &format!("new revision {:?}", o.revision));
            Json(o).into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn revisions(State(ctrl): State<Arc<Controller>>, headers: HeaderMap) -> Response {
    authorize!(ctrl, headers, Role::Viewer, "read", "revisions");
    match ctrl.history(100) {
        Ok(h) => Json(json!({"revisions": h})).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string(), json!([])),
    }
}

#[derive(Deserialize)]
struct TokenBody {
    role: String,
    #[serde(default)]
    name: String,
}

async fn create_token(
    State(ctrl): State<Arc<Controller>>,
    headers: HeaderMap,
    Json(body): Json<TokenBody>,
) -> Response {
    let actor = authorize!(ctrl, headers, Role::Admin, "create token", &body.name);
    let Some(role) = Role::parse(&body.role) else {
        return error(
            StatusCode::BAD_REQUEST,
            "role",
            format!("role must be viewer, editor or admin, not '{}'", body.role),
            json!([]),
        );
    };
    let (id, secret, token) = auth::new_token();
    let name = if body.name.is_empty() { format!("{}-{id}", role.name()) } else { body.name.clone() };
    if let Err(e) = ctrl.store().add_token(&id, &name, role.name(), &auth::hash_secret(&secret)) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string(), json!([]));
    }
    let _ = ctrl.store().audit(&actor.name, "create token", &name, true, role.name());
    // The only time the secret is shown.
    Json(json!({"id": id, "name": name, "role": role.name(), "token": token})).into_response()
}

async fn list_tokens(State(ctrl): State<Arc<Controller>>, headers: HeaderMap) -> Response {
    authorize!(ctrl, headers, Role::Admin, "list tokens", "tokens");
    match ctrl.store().tokens() {
        Ok(t) => Json(json!({"tokens": t.into_iter().map(|(id, name, role, created_at)| json!({"id": id, "name": name, "role": role, "created_at": created_at})).collect::<Vec<_>>()})).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string(), json!([])),
    }
}

async fn revoke_token(State(ctrl): State<Arc<Controller>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let actor = authorize!(ctrl, headers, Role::Admin, "revoke token", &id);
    match ctrl.store().revoke_token(&id) {
        Ok(true) => {
            let _ = ctrl.store().audit(&actor.name, "revoke token", &id, true, "");
            Json(json!({"revoked": id})).into_response()
        }
        Ok(false) => error(StatusCode::NOT_FOUND, "not_found", format!("token {id} not found"), json!([])),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string(), json!([])),
    }
}

async fn audit_log(State(ctrl): State<Arc<Controller>>, headers: HeaderMap) -> Response {
    authorize!(ctrl, headers, Role::Admin, "read audit", "audit");
    match ctrl.store().audit_log(500) {
        Ok(rows) => Json(json!({ "entries": rows })).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string(), json!([])),
    }
}

async fn register_instance(
    State(ctrl): State<Arc<Controller>>,
    headers: HeaderMap,
    Path(svc): Path<String>,
    Json(body): Json<crate::discovery::registry::Registration>,
) -> Response {
    let actor = authorize!(ctrl, headers, Role::Editor, "register", &svc);
    match ctrl.register(&svc, body) {
        Ok(inst) => {
            let _ = ctrl.store().audit(&actor.name, "register", &format!("{svc}/{}", inst.id), true, "");
            Json(inst).into_response()
        }
        Err(RegistryOpError::Invalid(e)) => error(StatusCode::BAD_REQUEST, "invalid", e.to_string(), json!([])),
        Err(RegistryOpError::Store(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string(), json!([])),
    }
}

async fn heartbeat(
    State(ctrl): State<Arc<Controller>>,
    headers: HeaderMap,
    Path((svc, id)): Path<(String, String)>,
) -> Response {
    authorize!(ctrl, headers, Role::Editor, "heartbeat", &svc);
    match ctrl.heartbeat(&svc, &id) {
        Ok(true) => Json(json!({"service": svc, "id": id})).into_response(),
        Ok(false) => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("instance {svc}/{id} is not registered (expired?)"),
            json!([]),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string(), json!([])),
    }
}

async fn deregister_instance(
    State(ctrl): State<Arc<Controller>>,
    headers: HeaderMap,
    Path((svc, id)): Path<(String, String)>,
) -> Response {
    let actor = authorize!(ctrl, headers, Role::Editor, "deregister", &svc);
    match ctrl.deregister(&svc, &id) {
        Ok(true) => {}
        Ok(false) => {
            return error(StatusCode::NOT_FOUND, "not_found", format!("instance {svc}/{id} not found"), json!([]))
        }
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string(), json!([])),
    }
    let _ = ctrl.store().audit(&actor.name, "deregister", &format!("{svc}/{id}"), true, "");
    Json(json!({"deregistered": format!("{svc}/{id}")})).into_response()
}

async fn list_instances(State(ctrl): State<Arc<Controller>>, headers: HeaderMap) -> Response {
    authorize!(ctrl, headers, Role::Viewer, "read", "instances");
    let list = ctrl.instances();
    Json(json!({ "instances": list })).into_response()
}

/// Which store this replica uses, its name, and whether it leads (expires
/// registry instances).
async fn replica(State(ctrl): State<Arc<Controller>>, headers: HeaderMap) -> Response {
    authorize!(ctrl, headers, Role::Viewer, "read", "replica");
    Json(json!({
        "replica": ctrl.replica_id(),
        "store": ctrl.store().kind(),
        "leader": ctrl.is_leader(),
        "revision": ctrl.stored().revision,
    }))
    .into_response()
}

#[derive(Deserialize)]
struct EnvoyQuery {
    /// Show what this node id receives (with `cluster`, its node cluster).
    #[serde(default)]
    node: Option<String>,
    #[serde(default)]
    cluster: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

/// The Envoy resources a proxy receives, compiled ones included: nothing hidden.
async fn envoy_resources(
    State(ctrl): State<Arc<Controller>>,
    headers: HeaderMap,
    Path(kind): Path<String>,
    Query(q): Query<EnvoyQuery>,
) -> Response {
    authorize!(ctrl, headers, Role::Viewer, "read", "envoy resources");
    let k = match parse_kind(&kind) {
        Ok(k) if k.is_envoy() => k,
        Ok(_) => return error(StatusCode::BAD_REQUEST, "kind", "an Envoy kind is needed here", json!([])),
        Err(r) => return *r,
    };
    let node = crate::discovery::node::NodeInfo {
        id: q.node.clone().unwrap_or_default(),
        cluster: q.cluster.clone().unwrap_or_default(),
        ..Default::default()
    };
    let state = ctrl.current();
    let items: Vec<serde_json::Value> = state
        .for_node(k, &node)
        .filter(|r| q.node.is_some() || r.nodes.is_empty())
        .filter(|r| q.name.as_ref().is_none_or(|n| *n == r.name))
        .map(|r| json!({"kind": r.kind.name(), "name": r.name, "version": r.version, "resource": r.doc.spec}))
        .collect();
    Json(json!({ "items": items })).into_response()
}
