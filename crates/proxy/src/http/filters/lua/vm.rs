//! Scripts and the VMs that run them: as Envoy keeps one `lua_State` per
//! script on each worker, each worker thread loads a script into a VM of its
//! own the first time a request needs it, and keeps it while the script's
//! config lives. A VM never leaves its thread's table; requests on that
//! worker share it, each in a coroutine of its own. The Lua cluster
//! specifier (`http/route/cluster_specifier`) runs its scripts in these VMs
//! too.

use mlua::{Function, Lua};
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};

/// One script of a filter config: inline, a named source code, or a route's own.
pub struct Script {
    id: u64,
    code: String,
    /// It defines `envoy_on_response`.
    pub has_response: bool,
    /// It defines `envoy_on_route` (a cluster specifier's script).
    pub has_route: bool,
}

/// A script loaded into this thread's VM: its functions.
#[derive(Clone)]
pub struct Loaded {
    pub lua: Lua,
    pub on_request: Option<Function>,
    pub on_response: Option<Function>,
    /// `envoy_on_route(route_handle)`: the Lua cluster specifier's function.
    pub on_route: Option<Function>,
}

struct Slot {
    id: u64,
    owner: Weak<Script>,
    loaded: Loaded,
}

thread_local! {
    /// This thread's VMs, one per live script.
    static VMS: RefCell<Vec<Slot>> = const { RefCell::new(Vec::new()) };
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Script {
    /// Checks a script by running it once in a VM of its own, as Envoy does
    /// when it loads the config: a syntax error or a failing top level is a
    /// config error.
    pub fn compile(code: &str) -> Result<Arc<Self>, String> {
        let loaded = load(code).map_err(|e| message(&e))?;
        Ok(Arc::new(Self {
            id: NEXT_ID.fetch_add(1, Relaxed),
            code: code.to_string(),
            has_response: loaded.on_response.is_some(),
            has_route: loaded.on_route.is_some(),
        }))
    }

    /// The script in this thread's VM, loaded on first use. VMs of scripts
    /// whose config is gone are dropped then.
    pub fn loaded(self: &Arc<Self>) -> Result<Loaded, String> {
        VMS.with(|vms| {
            let mut vms = vms.borrow_mut();
            if let Some(s) = vms.iter().find(|s| s.id == self.id) {
                return Ok(s.loaded.clone());
            }
            vms.retain(|s| s.owner.strong_count() > 0);
            let loaded = load(&self.code).map_err(|e| message(&e))?;
            vms.push(Slot { id: self.id, owner: Arc::downgrade(self), loaded: loaded.clone() });
            Ok(loaded)
        })
    }
}

/// A fresh VM with the script run in it. The chunk is named by its text, so
/// error messages read `[string "<first line>..."]:N:` as Envoy's do.
fn load(code: &str) -> mlua::Result<Loaded> {
    let lua = Lua::new();
    lua.load(code).set_name(code).exec()?;
    let g = lua.globals();
    let on_request = g.get::<Option<Function>>("envoy_on_request")?;
    let on_response = g.get::<Option<Function>>("envoy_on_response")?;
    let on_route = g.get::<Option<Function>>("envoy_on_route")?;
    Ok(Loaded { lua, on_request, on_response, on_route })
}

/// A Lua error's message as Envoy logs it: the script's own text, without
/// mlua's wrapping of callback errors and contexts.
pub fn message(e: &mlua::Error) -> String {
    match e {
        mlua::Error::CallbackError { cause, .. } => message(cause),
        mlua::Error::RuntimeError(m) | mlua::Error::SyntaxError { message: m, .. } => m.clone(),
        mlua::Error::WithContext { cause, .. } => message(cause),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_script_is_refused_with_its_line() {
        let e = Script::compile("function envoy_on_request(h)\n  x = = 1\nend").err().unwrap_or_default();
        assert!(e.contains(":2:"), "{e}");
        let e = Script::compile("error('at load')").err().unwrap_or_default();
        assert!(e.contains("at load"), "{e}");
    }

    #[test]
    fn one_vm_per_script_per_thread() {
        let s =
            Script::compile("function envoy_on_request(h) end\nfunction envoy_on_response(h) end").expect("compiles");
        assert!(s.has_response);
        let a = s.loaded().expect("loads");
        a.lua.globals().set("mark", 1).expect("sets");
        let b = s.loaded().expect("loads");
        assert_eq!(b.lua.globals().get::<i64>("mark").ok(), Some(1));
        let other = std::thread::spawn({
            let s = s.clone();
            move || s.loaded().map(|l| l.lua.globals().get::<Option<i64>>("mark").ok().flatten())
        });
        assert_eq!(other.join().ok().and_then(|r| r.ok()), Some(None));
    }
}
