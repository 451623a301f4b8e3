//! `envoy.filters.http.lua`: Lua scripts (LuaJIT, in Lua 5.2 compatibility
//! mode as Envoy builds it) on the request and the response:
//! `envoy_on_request(handle)` before the router, `envoy_on_response(handle)`
//! on the proxied response before its headers go downstream. The script is
//! `inline_code` or `default_source_code`, or per route (`LuaPerRoute`) one
//! of `source_codes` by name, a route's own `source_code`, or none
//! (`disabled`). A script's error is logged and counted
//! (`http.<prefix>.lua[.<stat_prefix>].errors`) and the stream goes on;
//! each run counts in `executions`.
//!
//! `vm`: one VM per script per worker thread; `handle`: the handle and the
//! stream state it changes; `wrappers`: headers, body, metadata, stream
//! info, connection; `call`: `httpCall`.

mod call;
mod handle;
mod state;
pub(crate) mod vm;
mod wrappers;

use crate::body::ProxyBody;
use crate::http::filters::api::{
    FilterContext, FilterStatus, HttpFilter, PerRouteRegistration, Registration, RequestCtx, ResponseHooks,
    ResponseState, Verdict,
};
use crate::http::route::per_filter::PerRouteConfig;
use crate::stats::Counter;
use crate::upstream::cluster::ClusterMap;
use arc_swap::ArcSwap;
use handle::Handle;
use legate_api::pb::envoy::extensions::filters::http::lua::v3::{lua_per_route::Override, Lua as PbLua, LuaPerRoute};
use legate_api::pb::google::protobuf::Any;
use state::{lock, Body, HeaderList, StreamState};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use vm::Script;

pub const TYPE: &str = "envoy.extensions.filters.http.lua.v3.Lua";
pub const PER_ROUTE_TYPE: &str = "envoy.extensions.filters.http.lua.v3.LuaPerRoute";

pub const REGISTRATION: Registration = Registration {
    type_url: TYPE,
    compile: LuaFilter::compile,
    per_route: Some(PerRouteRegistration { type_url: PER_ROUTE_TYPE, compile: compile_per_route }),
    one_per_chain: None,
};

/// A compiled Lua filter.
pub struct LuaFilter {
    /// Tells this filter's carried state from another Lua filter's.
    id: u64,
    /// The filter's name: route metadata is read under it.
    name: String,
    default: Option<Arc<Script>>,
    named: HashMap<String, Arc<Script>>,
    errors: Arc<Counter>,
    executions: Arc<Counter>,
    clusters: Arc<ArcSwap<ClusterMap>>,
    any_response: bool,
    /// `clear_route_cache` (default true): changed request headers route again.
    clear_route_cache: bool,
}

/// `LuaPerRoute`, compiled, with the filter name it was given under.
struct PerRouteLua {
    filter: String,
    choice: PerRoute,
}

enum PerRoute {
    Disabled,
    Name(String),
    Code(Arc<Script>),
}

/// What a script sees of its stream besides headers and body.
pub struct Facts {
    protocol: &'static str,
    local: SocketAddr,
    peer: SocketAddr,
    client: SocketAddr,
    sni: String,
    tls: Option<wrappers::TlsFacts>,
    /// The route's metadata under the filter's name (an empty object without).
    metadata: Arc<serde_json::Value>,
    clusters: Arc<ArcSwap<ClusterMap>>,
    /// The stream's dynamic metadata, shared with the other filters and
    /// the access log.
    dynamic: Arc<Mutex<serde_json::Map<String, serde_json::Value>>>,
    /// The listener's buffer limit: the most of a body `body()` reads.
    buffer_limit: usize,
}

impl Facts {
    fn dynamic(&self) -> MutexGuard<'_, serde_json::Map<String, serde_json::Value>> {
        self.dynamic.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What a request leaves for its response's script.
struct Carried {
    filter: u64,
    script: Arc<Script>,
    facts: Arc<Facts>,
}

static NEXT_FILTER: AtomicU64 = AtomicU64::new(1);

impl LuaFilter {
    fn compile(any: &Any, ctx: &FilterContext<'_>) -> Result<Box<dyn HttpFilter>, String> {
        let c: PbLua = legate_api::any::unpack(any)?;
        let at = |field: &str| format!("http_filters[{}].typed_config.{field}", ctx.index);
        let script = |field: String, code: &[u8]| {
            Script::compile(&String::from_utf8_lossy(code)).map_err(|e| format!("{field}: script error: {e}"))
        };
        #[allow(deprecated)]
        let inline = c.inline_code.clone();
        let default = if !inline.is_empty() {
            Some(script(at("inline_code"), inline.as_bytes())?)
        } else if let Some(ds) = &c.default_source_code {
            let code =
                crate::common::datasource::read(ds).map_err(|e| format!("{}: {e}", at("default_source_code")))?;
            Some(script(at("default_source_code"), &code)?)
        } else {
            None
        };
        let mut named = HashMap::new();
        for (name, ds) in &c.source_codes {
            let field = at(&format!("source_codes[\"{name}\"]"));
            let code = crate::common::datasource::read(ds).map_err(|e| format!("{field}: {e}"))?;
            named.insert(name.clone(), script(field, &code)?);
        }
        let prefix = match c.stat_prefix.as_str() {
            "" => format!("http.{}.lua.", ctx.stat_prefix),
            p => format!("http.{}.lua.{p}.", ctx.stat_prefix),
        };
        let store = ctx.server.store;
        // A route's own script may define `envoy_on_response`: the response
        // hook is always asked, and does nothing without a carried script.
        Ok(Box::new(Self {
            id: NEXT_FILTER.fetch_add(1, Relaxed),
            name: ctx.name.to_string(),
            any_response: true,
            clear_route_cache: c.clear_route_cache.as_ref().is_none_or(|b| b.value),
            default,
            named,
            errors: store.counter(&format!("{prefix}errors")),
            executions: store.counter(&format!("{prefix}executions")),
            clusters: ctx.server.clusters.clone(),
        }))
    }

    /// The script for this request: the route's choice, else the default.
    fn script_for(&self, rq: &RequestCtx<'_>) -> Option<Arc<Script>> {
        // A per-route config given under another Lua filter's name is not this one's.
        match rq.per_route::<PerRouteLua>().filter(|p| p.filter == self.name).map(|p| &p.choice) {
            Some(PerRoute::Disabled) => None,
            Some(PerRoute::Name(n)) => self.named.get(n).cloned(),
            Some(PerRoute::Code(s)) => Some(s.clone()),
            None => self.default.clone(),
        }
    }

    fn facts(&self, rq: &RequestCtx<'_>, dynamic: Arc<Mutex<crate::common::metadata::Map>>) -> Facts {
        let metadata = rq.route[0]
            .and_then(|p| p.filter_metadata.as_ref())
            .and_then(|m| m.get(&self.name))
            .cloned()
            .unwrap_or_else(|| serde_json::Value::Object(Default::default()));
        let tls = rq.tls.map(|t| {
            let names = t.names();
            wrappers::TlsFacts {
                peer_presented: t.peer_presented(),
                uri_sans: names.uri.clone(),
                dns_sans: names.dns.clone(),
                subject: names.subject.clone(),
                sha256: if t.peer_presented() { t.sha256() } else { String::new() },
                local_uri_sans: t.local_uri_sans.to_vec(),
                pem: t.url_encoded_pem(),
            }
        });
        Facts {
            protocol: rq.protocol,
            local: rq.local,
            peer: rq.peer,
            client: rq.client,
            sni: rq.sni.to_string(),
            tls,
            metadata: Arc::new(metadata),
            clusters: self.clusters.clone(),
            dynamic,
            buffer_limit: usize::try_from(rq.buffer_limit).unwrap_or(usize::MAX),
        }
    }

    /// Runs a script function; an error is logged and counted, and the
    /// stream goes on.
    async fn execute(&self, lua: &mlua::Lua, f: &mlua::Function, state: &state::Shared, facts: &Arc<Facts>) {
        self.executions.inc();
        let h = Handle { state: state.clone(), facts: facts.clone() };
        if let Err(e) = handle::run(lua, f, h).await {
            self.errors.inc();
            handle::script_log(tracing::Level::ERROR, &handle::message(&e));
        }
    }

    async fn request(&self, script: Arc<Script>, rq: &mut RequestCtx<'_>, state: &mut ResponseState) -> Verdict {
        let loaded = match script.loaded() {
            Ok(l) => l,
            Err(e) => {
                self.errors.inc();
                handle::script_log(tracing::Level::ERROR, &e);
                return Verdict::Continue;
            }
        };
        let facts = Arc::new(self.facts(rq, state.dynamic_metadata.shared()));
        if script.has_response {
            state.carried.push(Arc::new(Carried { filter: self.id, script: script.clone(), facts: facts.clone() }));
        }
        let Some(f) = loaded.on_request.as_ref() else { return Verdict::Continue };
        let body = if http_body::Body::is_end_stream(&*rq.body) {
            Body::Whole(None)
        } else {
            Body::Unread(std::mem::replace(rq.body, ProxyBody::Empty))
        };
        let mut st = StreamState::new(request_headers(rq), body, false);
        st.limit = facts.buffer_limit;
        let shared = Arc::new(Mutex::new(st));
        self.execute(&loaded.lua, f, &shared, &facts).await;
        let mut s = lock(&shared);
        if let Some(r) = s.reply.take() {
            return local_reply(r);
        }
        rq.clear_route_cache |= self.clear_route_cache && s.headers_changed;
        write_request(&mut s, rq);
        Verdict::Continue
    }

    async fn response(&self, state: &mut ResponseState, resp: &mut http::Response<ProxyBody>) {
        let carried =
            state.carried.iter().find_map(|c| (**c).downcast_ref::<Carried>().filter(|c| c.filter == self.id));
        let Some(carried) = carried else { return };
        let loaded = match carried.script.loaded() {
            Ok(l) => l,
            Err(_) => return,
        };
        let Some(f) = loaded.on_response.as_ref() else { return };
        let mut headers: HeaderList = vec![(":status".into(), resp.status().as_str().as_bytes().to_vec())];
        headers.extend(resp.headers().iter().map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec())));
        let body = if http_body::Body::is_end_stream(resp.body()) {
            Body::Whole(None)
        } else {
            Body::Unread(std::mem::replace(resp.body_mut(), ProxyBody::Empty))
        };
        let mut st = StreamState::new(headers, body, true);
        st.limit = carried.facts.buffer_limit;
        let shared = Arc::new(Mutex::new(st));
        self.execute(&loaded.lua, f, &shared, &carried.facts).await;
        let mut s = lock(&shared);
        let mut map = http::HeaderMap::new();
        for (k, v) in std::mem::take(&mut s.headers) {
            if k == ":status" {
                let status = std::str::from_utf8(&v).ok().and_then(|v| v.parse::<u16>().ok());
                if let Some(st) = status.and_then(|s| http::StatusCode::from_u16(s).ok()) {
                    *resp.status_mut() = st;
                }
            } else if let (Ok(k), Ok(v)) =
                (http::HeaderName::from_bytes(k.as_bytes()), http::HeaderValue::from_bytes(&v))
            {
                map.append(k, v);
            }
        }
        *resp.headers_mut() = map;
        if let Some(b) = take_body(&mut s, resp.headers_mut()) {
            *resp.body_mut() = b;
        }
    }
}

/// The request's headers as a script sees them (`RequestCtx::header_list`).
fn request_headers(rq: &RequestCtx<'_>) -> HeaderList {
    rq.header_list()
}

/// The script's changes back into the request: headers, a new path or
/// authority, the body.
fn write_request(s: &mut StreamState, rq: &mut RequestCtx<'_>) {
    let had_host = rq.headers.contains_key(http::header::HOST);
    let mut map = http::HeaderMap::new();
    for (k, v) in std::mem::take(&mut s.headers) {
        match k.as_str() {
            ":path" => {
                let v = String::from_utf8_lossy(&v);
                if v != rq.pseudo.path {
                    rq.new_path = Some(v.into_owned());
                }
            }
            ":authority" => {
                let changed = v != rq.pseudo.authority.as_bytes();
                if let (true, Ok(v)) = (had_host || changed, http::HeaderValue::from_bytes(&v)) {
                    map.insert(http::header::HOST, v);
                }
            }
            k if k.starts_with(':') => {}
            _ => {
                if let (Ok(k), Ok(v)) = (http::HeaderName::from_bytes(k.as_bytes()), http::HeaderValue::from_bytes(&v))
                {
                    map.append(k, v);
                }
            }
        }
    }
    *rq.headers = map;
    if let Some(b) = take_body(s, rq.headers) {
        *rq.body = b;
    }
}

/// The body to send on, when the script read it; a replaced body gets its
/// new `content-length`.
fn take_body(s: &mut StreamState, headers: &mut http::HeaderMap) -> Option<ProxyBody> {
    match std::mem::replace(&mut s.body, Body::Taken) {
        Body::Unread(b) => Some(b),
        Body::Whole(Some(bytes)) => {
            if s.body_set {
                headers.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(bytes.len()));
                headers.remove(http::header::TRANSFER_ENCODING);
            }
            Some(with_trailers(bytes.into(), s.trailers.take()))
        }
        Body::Whole(None) | Body::Taken => None,
    }
}

/// A buffered body, with the trailers that followed it.
fn with_trailers(data: bytes::Bytes, trailers: Option<http::HeaderMap>) -> ProxyBody {
    let Some(t) = trailers else { return ProxyBody::full(data) };
    let frames: Vec<Result<http_body::Frame<bytes::Bytes>, crate::body::BodyError>> =
        vec![Ok(http_body::Frame::data(data)), Ok(http_body::Frame::trailers(t))];
    ProxyBody::Rewritten { body: Box::new(http_body_util::StreamBody::new(tokio_stream::iter(frames))) }
}

fn local_reply(r: state::Reply) -> Verdict {
    let headers = r
        .headers
        .into_iter()
        .filter_map(|(k, v)| {
            Some((http::HeaderName::from_bytes(k.as_bytes()).ok()?, http::HeaderValue::from_str(&v).ok()?))
        })
        .collect();
    Verdict::Local { status: r.status, headers, body: r.body, details: "lua_response" }
}

impl HttpFilter for LuaFilter {
    fn on_request<'r>(&'r self, rq: &'r mut RequestCtx<'_>, state: &'r mut ResponseState) -> FilterStatus<'r> {
        match self.script_for(rq) {
            Some(script) => FilterStatus::Wait(Box::pin(self.request(script, rq, state))),
            None => FilterStatus::Continue,
        }
    }

    fn on_request_skipped(&self, rq: &RequestCtx<'_>, state: &mut ResponseState) {
        if let Some(script) = self.script_for(rq).filter(|s| s.has_response) {
            let facts = Arc::new(self.facts(rq, state.dynamic_metadata.shared()));
            state.carried.push(Arc::new(Carried { filter: self.id, script, facts }));
        }
    }

    fn response_hooks(&self) -> ResponseHooks {
        ResponseHooks { wait: self.any_response, ..ResponseHooks::default() }
    }

    fn on_response_wait<'r>(
        &'r self,
        state: &'r mut ResponseState,
        resp: &'r mut http::Response<ProxyBody>,
    ) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'r>>> {
        if state.carried.is_empty() {
            return None;
        }
        Some(Box::pin(self.response(state, resp)))
    }
}

fn compile_per_route(any: &Any, path: &str) -> Result<PerRouteConfig, String> {
    let c: LuaPerRoute = legate_api::any::unpack(any).map_err(|e| format!("{path}: {e}"))?;
    let p = match c.r#override {
        Some(Override::Disabled(true)) => PerRoute::Disabled,
        Some(Override::Name(n)) => PerRoute::Name(n),
        Some(Override::SourceCode(ds)) => {
            let code = crate::common::datasource::read(&ds).map_err(|e| format!("{path}.source_code: {e}"))?;
            let s = Script::compile(&String::from_utf8_lossy(&code))
                .map_err(|e| format!("{path}.source_code: script error: {e}"))?;
            PerRoute::Code(s)
        }
        _ => return Err(format!("{path}: one of disabled, name or source_code is required")),
    };
    // The registry names the entry `typed_per_filter_config["<name>"]`.
    let filter = path.split_once("[\"").and_then(|(_, r)| r.strip_suffix("\"]")).unwrap_or_default().to_string();
    Ok(Arc::new(PerRouteLua { filter, choice: p }))
}
