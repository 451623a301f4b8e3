//! Plugins and the VMs that run them (wasmi, an interpreter). As Envoy
//! keeps one VM per plugin per worker, each worker thread instantiates a
//! plugin's module the first time a request needs it, starts it
//! (`proxy_on_vm_start`, `proxy_on_configure` on the root context) and keeps
//! it while the plugin's config lives. A VM that fails (a trap, an
//! unimplemented host function) is dropped; what happens next is the
//! plugin's failure policy.

use super::abi;
use super::context::{Host, PluginInfo, Stream};
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use wasmi::{Engine, Error, Instance, Module, Store, TypedFunc};

/// What a failed VM leaves for the requests after it (`failure_policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// 503 for every request (the default).
    Closed,
    /// The filter is skipped.
    Open,
    /// 503 for the failing request, a new VM for the next.
    Reload,
}

/// One plugin config: its module, compiled once, and what its VMs get.
pub struct Plugin {
    id: u64,
    pub info: Arc<PluginInfo>,
    engine: Engine,
    module: Module,
    pub policy: Policy,
}

/// The plugin's exports the host calls on streams.
struct Exports {
    on_context_create: TypedFunc<(i32, i32), ()>,
    on_request_headers: Option<TypedFunc<(i32, i32, i32), i32>>,
    on_response_headers: Option<TypedFunc<(i32, i32, i32), i32>>,
    on_log: Option<TypedFunc<i32, ()>>,
    on_done: Option<TypedFunc<i32, i32>>,
    on_delete: Option<TypedFunc<i32, ()>>,
}

/// A started VM on this thread.
pub struct Vm {
    /// Tells this VM from the one a reload made: a stream's context lives in one.
    pub instance: u64,
    store: Store<Host>,
    exports: Exports,
    next_context: i32,
}

const ROOT_CONTEXT: i32 = 1;

enum State {
    Ready(Box<Vm>),
    Failed,
}

struct Slot {
    id: u64,
    owner: Weak<Plugin>,
    state: State,
}

thread_local! {
    static VMS: RefCell<Vec<Slot>> = const { RefCell::new(Vec::new()) };
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Why a stream gets no VM.
pub enum NoVm {
    /// The VM failed before (fail closed).
    Failed,
}

impl Plugin {
    /// Compiles the module and starts it once, as Envoy does when it loads
    /// the config: a module that does not load, start or configure is a
    /// config error.
    pub fn compile(code: &[u8], info: PluginInfo, policy: Policy) -> Result<Arc<Self>, String> {
        let engine = Engine::default();
        let module = Module::new(&engine, code).map_err(|e| format!("the module does not load: {e}"))?;
        let abi = ["proxy_abi_version_0_2_1", "proxy_abi_version_0_2_0"];
        if !abi.iter().any(|n| module.get_export(n).is_some()) {
            return Err("the module is not a proxy-wasm 0.2 plugin (no proxy_abi_version_0_2_* export)".into());
        }
        let plugin = Self { id: NEXT_ID.fetch_add(1, Relaxed), info: Arc::new(info), engine, module, policy };
        plugin.start().map_err(|e| format!("the plugin failed to start: {e}"))?;
        Ok(Arc::new(plugin))
    }

    /// A new VM, started and configured.
    fn start(&self) -> Result<Vm, String> {
        let linker = abi::linker(&self.engine, &self.module)?;
        let mut store = Store::new(&self.engine, Host::new(self.info.clone()));
        let instance = linker.instantiate_and_start(&mut store, &self.module).map_err(|e| e.to_string())?;
        let memory = instance.get_memory(&store, "memory");
        let malloc = typed::<i32, i32>(&instance, &store, "malloc")
            .or_else(|| typed::<i32, i32>(&instance, &store, "proxy_on_memory_allocate"));
        let host = store.data_mut();
        host.memory = memory;
        host.malloc = malloc;
        // The VM's own log lines name only the VM, as Envoy's do.
        host.prefix = match self.info.vm_id.as_str() {
            "" => "wasm log".into(),
            id => format!("wasm log {id}"),
        };
        let on_context_create = typed(&instance, &store, "proxy_on_context_create")
            .ok_or("the module exports no proxy_on_context_create")?;
        for init in ["_initialize", "_start"] {
            if let Some(f) = typed::<(), ()>(&instance, &store, init) {
                f.call(&mut store, ()).map_err(|e| failure(&store, init, &e))?;
                break;
            }
        }
        on_context_create
            .call(&mut store, (ROOT_CONTEXT, 0))
            .map_err(|e| failure(&store, "proxy_on_context_create", &e))?;
        let sizes =
            [("proxy_on_vm_start", self.info.vm_config.len()), ("proxy_on_configure", self.info.plugin_config.len())];
        for (name, size) in sizes {
            let Some(f) = typed::<(i32, i32), i32>(&instance, &store, name) else { continue };
            let ok = f.call(&mut store, (ROOT_CONTEXT, size as i32)).map_err(|e| failure(&store, name, &e))?;
            if ok == 0 {
                return Err(format!("{name} returned false"));
            }
        }
        store.data_mut().prefix = self.info.log_prefix();
        let exports = Exports {
            on_context_create,
            on_request_headers: typed(&instance, &store, "proxy_on_request_headers"),
            on_response_headers: typed(&instance, &store, "proxy_on_response_headers"),
            on_log: typed(&instance, &store, "proxy_on_log"),
            on_done: typed(&instance, &store, "proxy_on_done"),
            on_delete: typed(&instance, &store, "proxy_on_delete"),
        };
        Ok(Vm { instance: NEXT_ID.fetch_add(1, Relaxed), store, exports, next_context: ROOT_CONTEXT + 1 })
    }

    /// Runs `f` on this thread's VM of the plugin, started on first use.
    /// A failure drops the VM and is logged; `Err` says the stream is not
    /// served by the plugin.
    pub fn with_vm<R>(self: &Arc<Self>, f: impl FnOnce(&mut Vm) -> Result<R, String>) -> Result<R, NoVm> {
        VMS.with(|vms| {
            let Ok(mut vms) = vms.try_borrow_mut() else { return Err(NoVm::Failed) };
            vms.retain(|s| s.owner.strong_count() > 0);
            let at = match vms.iter().position(|s| s.id == self.id) {
                Some(i) => i,
                None => {
                    let state = match self.start() {
                        Ok(vm) => State::Ready(Box::new(vm)),
                        Err(e) => {
                            tracing::error!(target: "wasm", "wasm: plugin {} failed to start: {e}", self.info.name);
                            State::Failed
                        }
                    };
                    vms.push(Slot { id: self.id, owner: Arc::downgrade(self), state });
                    vms.len() - 1
                }
            };
            let State::Ready(vm) = &mut vms[at].state else { return Err(NoVm::Failed) };
            match f(vm) {
                Ok(r) => Ok(r),
                Err(e) => {
                    tracing::error!(target: "wasm", "{}: {e}", self.info.log_prefix());
                    if self.policy == Policy::Reload {
                        vms.remove(at);
                    } else {
                        vms[at].state = State::Failed;
                    }
                    Err(NoVm::Failed)
                }
            }
        })
    }

    /// The same as `with_vm` for a stream's context in the VM `instance`:
    /// nothing runs when that VM is gone.
    pub fn with_instance(self: &Arc<Self>, instance: u64, f: impl FnOnce(&mut Vm) -> Result<(), String>) {
        let _ = self.with_vm(|vm| if vm.instance == instance { f(vm) } else { Ok(()) });
    }
}

impl Vm {
    /// A new HTTP context under the root context.
    pub fn create_context(&mut self) -> Result<i32, String> {
        let id = self.next_context;
        self.next_context = self.next_context.wrapping_add(1).max(ROOT_CONTEXT + 1);
        let f = self.exports.on_context_create;
        f.call(&mut self.store, (id, ROOT_CONTEXT)).map_err(|e| failure(&self.store, "proxy_on_context_create", &e))?;
        Ok(id)
    }

    /// Runs a headers callback on the stream: its action (0 continue, 1 pause).
    pub fn on_headers(&mut self, response: bool, ctx: i32, stream: &mut Stream, end: bool) -> Result<i32, String> {
        let (name, f) = match response {
            false => ("proxy_on_request_headers", self.exports.on_request_headers),
            true => ("proxy_on_response_headers", self.exports.on_response_headers),
        };
        let Some(f) = f else { return Ok(0) };
        let n = if response { stream.response.len() } else { stream.request.len() };
        self.lend(stream, |store| {
            f.call(&mut *store, (ctx, n as i32, i32::from(end))).map_err(|e| failure(store, name, &e))
        })
    }

    /// The stream's end: `proxy_on_log`, `proxy_on_done`, `proxy_on_delete`.
    pub fn finish(&mut self, ctx: i32, stream: &mut Stream) -> Result<(), String> {
        let (log, done, delete) = (self.exports.on_log, self.exports.on_done, self.exports.on_delete);
        self.lend(stream, |store| {
            if let Some(f) = log {
                f.call(&mut *store, ctx).map_err(|e| failure(store, "proxy_on_log", &e))?;
            }
            if let Some(f) = done {
                f.call(&mut *store, ctx).map_err(|e| failure(store, "proxy_on_done", &e))?;
            }
            if let Some(f) = delete {
                f.call(&mut *store, ctx).map_err(|e| failure(store, "proxy_on_delete", &e))?;
            }
            Ok(())
        })
    }

    /// Lends the stream to the host functions while `f` runs.
    fn lend<R>(
        &mut self,
        stream: &mut Stream,
        f: impl FnOnce(&mut Store<Host>) -> Result<R, String>,
    ) -> Result<R, String> {
        self.store.data_mut().stream = Some(std::mem::take(stream));
        let r = f(&mut self.store);
        if let Some(s) = self.store.data_mut().stream.take() {
            *stream = s;
        }
        r
    }
}

fn typed<P: wasmi::WasmParams, R: wasmi::WasmResults>(
    instance: &Instance,
    store: &Store<Host>,
    name: &str,
) -> Option<TypedFunc<P, R>> {
    instance.get_typed_func::<P, R>(store, name).ok()
}

/// A failed call as Envoy logs it: the function and why.
fn failure(store: &Store<Host>, function: &str, e: &Error) -> String {
    match &store.data().unimplemented {
        Some(name) => format!("Function: {function} failed: host function {name} is not implemented in Legate"),
        None => format!("Function: {function} failed: {e}"),
    }
}
