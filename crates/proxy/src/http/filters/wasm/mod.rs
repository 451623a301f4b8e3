//! `envoy.filters.http.wasm`: proxy-wasm plugins (ABI 0.2.1), built with the
//! proxy-wasm SDKs, run in wasmi, an interpreter (whichever runtime the
//! config names: v8, wamr or wasmtime; `null`, Envoy's native plugins, is
//! refused). One VM per plugin per worker with its root context, an HTTP
//! context per request: request headers before the router, response
//! headers on every response (local replies too), then `proxy_on_log`,
//! `proxy_on_done` and `proxy_on_delete` when the stream ends. Bodies,
//! trailers, timers, `http_call` and shared data are not built: a plugin
//! calling one of those host functions fails its VM.
//!
//! `vm`: plugins and per-worker VMs; `abi`: the host functions;
//! `context`: the VM's and a stream's state.

mod abi;
mod context;
mod vm;

use crate::body::ProxyBody;
use crate::http::filters::api::{
    FilterContext, FilterStatus, HttpFilter, Registration, RequestCtx, ResponseHooks, ResponseState, Verdict,
};
use context::{Facts, HeaderList, PluginInfo, Stream};
use legate_api::pb::envoy::config::core::v3::async_data_source::Specifier;
use legate_api::pb::envoy::extensions::filters::http::wasm::v3::Wasm as PbWasm;
use legate_api::pb::envoy::extensions::wasm::v3::{plugin_config::Vm as PbVm, FailurePolicy};
use legate_api::pb::google::protobuf::Any;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use vm::{Plugin, Policy};

pub const TYPE: &str = "envoy.extensions.filters.http.wasm.v3.Wasm";

pub const REGISTRATION: Registration =
    Registration { type_url: TYPE, compile: WasmFilter::compile, per_route: None, one_per_chain: None };

/// The runtimes Legate accepts; it runs each with its interpreter.
const RUNTIMES: &[&str] = &["envoy.wasm.runtime.v8", "envoy.wasm.runtime.wamr", "envoy.wasm.runtime.wasmtime"];

/// A compiled Wasm filter.
pub struct WasmFilter {
    id: u64,
    plugin: Arc<Plugin>,
}

/// A request's HTTP context, carried to its response and ended when the
/// stream's state is dropped.
struct Carried {
    filter: u64,
    plugin: Arc<Plugin>,
    instance: u64,
    context: i32,
    stream: Mutex<Stream>,
}

impl Drop for Carried {
    fn drop(&mut self) {
        let stream = self.stream.get_mut().unwrap_or_else(|p| p.into_inner());
        let ctx = self.context;
        self.plugin.with_instance(self.instance, |vm| vm.finish(ctx, stream));
    }
}

static NEXT_FILTER: AtomicU64 = AtomicU64::new(1);

/// A plugin's `configuration` as it sees it: a string's or bytes' value, a
/// `Struct` as JSON, any other message serialized.
fn config_bytes(any: Option<&Any>) -> Result<Vec<u8>, String> {
    use legate_api::pb::google::protobuf::{BytesValue, StringValue, Struct};
    let Some(any) = any else { return Ok(Vec::new()) };
    Ok(match legate_api::any::type_name(any) {
        "google.protobuf.StringValue" => legate_api::any::unpack::<StringValue>(any)?.value.into_bytes(),
        "google.protobuf.BytesValue" => legate_api::any::unpack::<BytesValue>(any)?.value,
        "google.protobuf.Struct" => {
            let s = legate_api::any::unpack::<Struct>(any)?;
            crate::common::metadata::struct_json(&s).to_string().into_bytes()
        }
        _ => any.value.clone(),
    })
}

impl WasmFilter {
    fn compile(any: &Any, ctx: &FilterContext<'_>) -> Result<Box<dyn HttpFilter>, String> {
        let c: PbWasm = legate_api::any::unpack(any)?;
        let at = |field: &str| format!("http_filters[{}].typed_config.config.{field}", ctx.index);
        let pc = c.config.ok_or_else(|| format!("http_filters[{}].typed_config.config: required", ctx.index))?;
        let Some(PbVm::VmConfig(vc)) = &pc.vm else { return Err(format!("{}: required", at("vm_config"))) };
        match vc.runtime.as_str() {
            r if RUNTIMES.contains(&r) => {}
            "envoy.wasm.runtime.null" => {
                return Err(format!(
                    "{}: the null runtime (plugins compiled into Envoy) is not supported",
                    at("vm_config.runtime")
                ))
            }
            r => return Err(format!("{}: unknown Wasm runtime {r:?}", at("vm_config.runtime"))),
        }
        let code = match vc.code.as_ref().and_then(|c| c.specifier.as_ref()) {
            Some(Specifier::Local(ds)) => {
                crate::common::datasource::read(ds).map_err(|e| format!("{}: {e}", at("vm_config.code.local")))?
            }
            Some(Specifier::Remote(_)) => {
                return Err(format!("{}: remote code is not supported", at("vm_config.code.remote")))
            }
            None => return Err(format!("{}: required", at("vm_config.code"))),
        };
        #[allow(deprecated)]
        let policy = match pc.failure_policy() {
            FailurePolicy::FailOpen => Policy::Open,
            FailurePolicy::FailReload => Policy::Reload,
            FailurePolicy::FailClosed => Policy::Closed,
            FailurePolicy::Unspecified if pc.fail_open => Policy::Open,
            FailurePolicy::Unspecified => Policy::Closed,
        };
        let info = PluginInfo {
            name: pc.name.clone(),
            root_id: pc.root_id.clone(),
            vm_id: vc.vm_id.clone(),
            plugin_config: config_bytes(pc.configuration.as_ref())
                .map_err(|e| format!("{}: {e}", at("configuration")))?,
            vm_config: config_bytes(vc.configuration.as_ref())
                .map_err(|e| format!("{}: {e}", at("vm_config.configuration")))?,
            store: ctx.server.store.clone(),
        };
        let plugin = Plugin::compile(&code, info, policy).map_err(|e| format!("{}: {e}", at("vm_config.code")))?;
        Ok(Box::new(Self { id: NEXT_FILTER.fetch_add(1, Relaxed), plugin }))
    }

    /// The stream's state as the plugin sees it.
    fn stream(rq: &RequestCtx<'_>) -> Stream {
        let p = &rq.pseudo;
        let request: HeaderList = rq.header_list();
        let id = rq.headers.get("x-request-id").map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let facts = Facts {
            path: p.path.to_string(),
            method: p.method.to_string(),
            host: p.authority.to_string(),
            scheme: p.scheme.to_string(),
            protocol: rq.protocol.to_string(),
            id: id.unwrap_or_default(),
            source: rq.peer.to_string(),
            destination: rq.local.to_string(),
        };
        Stream { request, facts, ..Stream::default() }
    }

    /// What the plugin's failure means for the request.
    fn failed(&self) -> FilterStatus<'static> {
        match self.plugin.policy {
            Policy::Open => FilterStatus::Continue,
            Policy::Closed | Policy::Reload => FilterStatus::Done(Verdict::Reply {
                status: 503,
                body: "",
                details: "wasm_fail_stream",
                flag: "",
                headers: Vec::new(),
            }),
        }
    }
}

/// The plugin's headers back into the request.
fn write_request(list: HeaderList, rq: &mut RequestCtx<'_>) {
    let mut map = http::HeaderMap::new();
    for (k, v) in list {
        match k.as_str() {
            ":path" => {
                let v = String::from_utf8_lossy(&v);
                if v != rq.pseudo.path {
                    rq.new_path = Some(v.into_owned());
                }
            }
            ":authority" => {
                if let Ok(v) = http::HeaderValue::from_bytes(&v) {
                    map.insert(http::header::HOST, v);
                }
            }
            k if k.starts_with(':') => {}
            _ => append(&mut map, &k, &v),
        }
    }
    if map != *rq.headers {
        rq.clear_route_cache = true;
    }
    *rq.headers = map;
}

fn append(map: &mut http::HeaderMap, k: &str, v: &[u8]) {
    if let (Ok(k), Ok(v)) = (http::HeaderName::from_bytes(k.as_bytes()), http::HeaderValue::from_bytes(v)) {
        map.append(k, v);
    }
}

fn header_map(list: &[(String, Vec<u8>)]) -> Vec<(http::HeaderName, http::HeaderValue)> {
    let mut map = http::HeaderMap::new();
    for (k, v) in list.iter().filter(|(k, _)| !k.starts_with(':')) {
        append(&mut map, k, v);
    }
    map.into_iter().filter_map(|(k, v)| Some((k?, v))).collect()
}

impl HttpFilter for WasmFilter {
    fn on_request<'r>(&'r self, rq: &'r mut RequestCtx<'_>, state: &'r mut ResponseState) -> FilterStatus<'r> {
        let mut stream = Self::stream(rq);
        let end = http_body::Body::is_end_stream(&*rq.body);
        let ran = self.plugin.with_vm(|vm| {
            let ctx = vm.create_context()?;
            let carried = (vm.instance, ctx);
            let action = vm.on_headers(false, ctx, &mut stream, end);
            action.map(|a| (carried, a))
        });
        let Ok(((instance, context), action)) = ran else { return self.failed() };
        let reply = stream.reply.take();
        if reply.is_none() {
            if action != 0 {
                // Nothing can resume a paused stream (no timers or calls): go on.
                tracing::debug!(target: "wasm", "{}: the plugin paused the request; it goes on", self.plugin.info.log_prefix());
            }
            write_request(std::mem::take(&mut stream.request), rq);
        }
        let carried =
            Carried { filter: self.id, plugin: self.plugin.clone(), instance, context, stream: Mutex::new(stream) };
        state.carried.push(Arc::new(carried));
        match reply {
            Some(r) => FilterStatus::Done(Verdict::Local {
                status: r.status,
                headers: header_map(&r.headers),
                body: (!r.body.is_empty()).then(|| r.body.into()),
                details: "wasm_local_reply",
            }),
            None => FilterStatus::Continue,
        }
    }

    fn response_hooks(&self) -> ResponseHooks {
        ResponseHooks { on_response: true, ..ResponseHooks::default() }
    }

    fn on_response(&self, state: &ResponseState, resp: &mut http::Response<ProxyBody>) {
        let carried =
            state.carried.iter().find_map(|c| (**c).downcast_ref::<Carried>().filter(|c| c.filter == self.id));
        let Some(c) = carried else { return };
        let mut stream = c.stream.lock().unwrap_or_else(|p| p.into_inner());
        stream.status = resp.status().as_u16();
        let mut list: HeaderList = vec![(":status".into(), resp.status().as_str().as_bytes().to_vec())];
        list.extend(resp.headers().iter().map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec())));
        stream.response = list;
        let end = http_body::Body::is_end_stream(resp.body());
        let ctx = c.context;
        let mut ok = false;
        c.plugin.with_instance(c.instance, |vm| {
            vm.on_headers(true, ctx, &mut stream, end)?;
            ok = true;
            Ok(())
        });
        if !ok {
            return;
        }
        if let Some(r) = stream.reply.take() {
            if let Ok(s) = http::StatusCode::from_u16(r.status) {
                *resp.status_mut() = s;
            }
            *resp.headers_mut() = header_map(&r.headers).into_iter().collect();
            resp.headers_mut().insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(r.body.len()));
            *resp.body_mut() = ProxyBody::full(bytes::Bytes::from(r.body));
            return;
        }
        let mut map = http::HeaderMap::new();
        for (k, v) in &stream.response {
            if k == ":status" {
                let s = std::str::from_utf8(v).ok().and_then(|v| v.parse::<u16>().ok());
                if let Some(s) = s.and_then(|s| http::StatusCode::from_u16(s).ok()) {
                    *resp.status_mut() = s;
                }
            } else {
                append(&mut map, k, v);
            }
        }
        *resp.headers_mut() = map;
    }
}
