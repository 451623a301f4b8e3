//! A route's `inline_cluster_specifier_plugin`: code that names the
//! request's cluster. Legate builds Envoy's Lua plugin
//! (`envoy.router.cluster_specifier_plugin.lua`, `LuaConfig`):
//! `envoy_on_route(route_handle)` returns the cluster's name;
//! `route_handle:headers():get(name)` gives a request header (all its values
//! joined by `,`, or nil). A script that fails, or returns something that is
//! not a string or a number, sends the request to `default_cluster`, as
//! Envoy does. The script runs in the Lua filter's VMs, one per worker
//! thread (`http/filters/lua/vm`), synchronously: Envoy's route handle has
//! nothing that waits.

use crate::http::filters::lua::vm::{message, Script};
use legate_api::pb::envoy::config::route::v3 as rpb;
use legate_api::pb::envoy::extensions::router::cluster_specifiers::lua::v3::LuaConfig;
use mlua::{AnyUserData, UserData, UserDataMethods};
use std::sync::Arc;

pub const LUA_TYPE: &str = "envoy.extensions.router.cluster_specifiers.lua.v3.LuaConfig";

/// A compiled cluster specifier plugin.
pub struct ClusterSpecifier {
    script: Arc<Script>,
    default_cluster: String,
}

impl ClusterSpecifier {
    /// Compiles `inline_cluster_specifier_plugin`; the error names the field
    /// below it.
    pub fn compile(p: &rpb::ClusterSpecifierPlugin) -> Result<Self, String> {
        let ext = p.extension.as_ref().ok_or("extension: is required")?;
        let any = ext.typed_config.as_ref().ok_or("extension.typed_config: is required")?;
        let ty = any.type_url.rsplit('/').next().unwrap_or_default();
        if ty != LUA_TYPE {
            return Err(format!("extension.typed_config: cluster specifier plugin {ty} is not implemented by Legate"));
        }
        let c: LuaConfig = legate_api::any::unpack(any).map_err(|e| format!("extension.typed_config: {e}"))?;
        let at = "extension.typed_config.source_code";
        let code = crate::common::datasource::read(c.source_code.as_ref().ok_or(format!("{at}: is required"))?)
            .map_err(|e| format!("{at}: {e}"))?;
        let script =
            Script::compile(&String::from_utf8_lossy(&code)).map_err(|e| format!("{at}: script error: {e}"))?;
        if !script.has_route {
            return Err(format!("{at}: envoy_on_route() function not found. Lua will not hook cluster specifier."));
        }
        Ok(Self { script, default_cluster: c.default_cluster })
    }

    /// The cluster the script names for these request headers, or the
    /// default cluster.
    pub fn cluster(&self, headers: &http::HeaderMap) -> String {
        match self.run(headers) {
            Ok(Some(name)) => name,
            Ok(None) => {
                tracing::error!(target: "lua", "script log: return value is not string, use default cluster");
                self.default_cluster.clone()
            }
            Err(e) => {
                tracing::error!(target: "lua", "script log: {}, use default cluster", message(&e));
                self.default_cluster.clone()
            }
        }
    }

    fn run(&self, headers: &http::HeaderMap) -> mlua::Result<Option<String>> {
        let loaded = self.script.loaded().map_err(mlua::Error::runtime)?;
        let f = loaded.on_route.ok_or_else(|| mlua::Error::runtime("envoy_on_route() function not found"))?;
        let lua = &loaded.lua;
        lua.scope(|scope| {
            let headers = scope.create_userdata(Headers { headers })?;
            let handle = scope.create_userdata(RouteHandle { headers })?;
            let value: mlua::Value = f.call(handle)?;
            Ok(lua.coerce_string(value)?.map(|s| s.to_string_lossy()))
        })
    }
}

/// `route_handle`: what the script is given.
struct RouteHandle {
    headers: AnyUserData,
}

impl UserData for RouteHandle {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("headers", |_, this, ()| Ok(this.headers.clone()));
    }
}

/// `route_handle:headers()`: the request's headers, read only.
struct Headers<'a> {
    headers: &'a http::HeaderMap,
}

impl UserData for Headers<'_> {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("get", |lua, this, key: mlua::LuaString| {
            let key = key.to_str()?.to_ascii_lowercase();
            let mut values = this.headers.get_all(key.as_str()).iter().peekable();
            if values.peek().is_none() {
                return Ok(None);
            }
            let mut joined = Vec::new();
            for (i, v) in values.enumerate() {
                if i > 0 {
                    joined.push(b',');
                }
                joined.extend_from_slice(v.as_bytes());
            }
            lua.create_string(&joined).map(Some)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use legate_api::pb::envoy::config::core::v3::{data_source::Specifier, DataSource, TypedExtensionConfig};

    fn plugin(code: &str) -> Result<ClusterSpecifier, String> {
        let c = LuaConfig {
            source_code: Some(DataSource {
                specifier: Some(Specifier::InlineString(code.into())),
                ..Default::default()
            }),
            default_cluster: "fallback".into(),
        };
        let any = legate_api::pb::google::protobuf::Any {
            type_url: format!("type.googleapis.com/{LUA_TYPE}"),
            value: prost::Message::encode_to_vec(&c),
        };
        ClusterSpecifier::compile(&rpb::ClusterSpecifierPlugin {
            extension: Some(TypedExtensionConfig { name: "lua".into(), typed_config: Some(any) }),
            is_optional: false,
        })
    }

    #[test]
    fn the_script_names_the_cluster_or_the_default_is_used() {
        let p = plugin(
            "function envoy_on_route(h)\n local v = h:headers():get('X-Pick')\n if v == 'err' then error('boom') end\n \
             if v == 'none' then return nil end\n if v == 'n' then return 7 end\n return v or 'plain'\nend",
        )
        .expect("compiles");
        let mut headers = http::HeaderMap::new();
        assert_eq!(p.cluster(&headers), "plain");
        headers.append("x-pick", http::HeaderValue::from_static("a"));
        assert_eq!(p.cluster(&headers), "a");
        headers.append("x-pick", http::HeaderValue::from_static("b"));
        assert_eq!(p.cluster(&headers), "a,b");
        for (v, want) in [("err", "fallback"), ("none", "fallback"), ("n", "7")] {
            headers.insert("x-pick", http::HeaderValue::from_static(v));
            assert_eq!(p.cluster(&headers), want);
        }
    }

    #[test]
    fn a_script_without_envoy_on_route_is_refused() {
        let e = plugin("function envoy_on_request(h) end").err().unwrap_or_default();
        assert!(e.contains("envoy_on_route() function not found"), "{e}");
    }
}
