//! The objects a handle gives out: headers (and trailers), the buffered
//! body and body chunks, route metadata, stream info with its dynamic
//! metadata, the connection and its TLS facts. Each reads or changes the
//! stream's state through the handle's shared state.

use super::state::{lock, Body, Shared};
use super::Facts;
use bytes::Bytes;
use mlua::{Lua, MetaMethod, UserData, UserDataMethods, Value};
use serde_json::Value as Json;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

/// `handle:headers()` (or `trailers()`).
pub struct HeadersUd {
    state: Shared,
    trailers: bool,
    generation: u64,
}

/// An object used after the script yielded: Envoy's wrappers die then.
fn alive(state: &Shared, generation: u64) -> mlua::Result<()> {
    if lock(state).generation != generation {
        return Err(mlua::Error::runtime("object used outside of proper scope"));
    }
    Ok(())
}

/// A header name as a script writes it; `host` is `:authority`, as in Envoy's map.
fn key(name: &mlua::LuaString, trailers: bool) -> String {
    let k = name.to_string_lossy().to_ascii_lowercase();
    if k == "host" && !trailers {
        ":authority".into()
    } else {
        k
    }
}

fn check(name: &str, value: &[u8]) -> mlua::Result<()> {
    let name_ok = name.starts_with(':') || http::HeaderName::from_bytes(name.as_bytes()).is_ok();
    if !name_ok || http::HeaderValue::from_bytes(value).is_err() {
        return Err(mlua::Error::runtime(format!("invalid header '{name}'")));
    }
    Ok(())
}

impl HeadersUd {
    pub fn new(state: &Shared, trailers: bool) -> Self {
        Self { state: state.clone(), trailers, generation: lock(state).generation }
    }

    /// The values under `name`, in order.
    fn values(&self, name: &str) -> mlua::Result<Vec<Vec<u8>>> {
        alive(&self.state, self.generation)?;
        let s = lock(&self.state);
        if self.trailers {
            let t = s.trailers.as_ref();
            return Ok(t.map(|t| t.get_all(name).iter().map(|v| v.as_bytes().to_vec()).collect()).unwrap_or_default());
        }
        Ok(s.headers.iter().filter(|(k, _)| k == name).map(|(_, v)| v.clone()).collect())
    }

    fn change(&self, name: String, value: Option<Vec<u8>>, replace: bool) -> mlua::Result<()> {
        alive(&self.state, self.generation)?;
        if let Some(v) = &value {
            check(&name, v)?;
        }
        let mut s = lock(&self.state);
        s.headers_changed |= !self.trailers;
        if self.trailers {
            let Some(t) = s.trailers.as_mut() else { return Ok(()) };
            let Ok(n) = http::HeaderName::from_bytes(name.as_bytes()) else { return Ok(()) };
            match value.map(|v| http::HeaderValue::from_bytes(&v)) {
                Some(Ok(v)) if replace => drop(t.insert(n, v)),
                Some(Ok(v)) => drop(t.append(n, v)),
                _ => drop(t.remove(n)),
            }
            return Ok(());
        }
        match value {
            Some(v) if replace => match s.headers.iter().position(|(k, _)| *k == name) {
                Some(i) => {
                    s.headers[i].1 = v;
                    let mut n = 0;
                    s.headers.retain(|(k, _)| {
                        n += usize::from(*k == name);
                        *k != name || n == 1
                    });
                }
                None => s.headers.push((name, v)),
            },
            Some(v) => s.headers.push((name, v)),
            None => s.headers.retain(|(k, _)| *k != name),
        }
        Ok(())
    }

    fn snapshot(&self) -> mlua::Result<Vec<(String, Vec<u8>)>> {
        alive(&self.state, self.generation)?;
        let s = lock(&self.state);
        if self.trailers {
            let t = s.trailers.as_ref();
            return Ok(t
                .map(|t| t.iter().map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec())).collect())
                .unwrap_or_default());
        }
        Ok(s.headers.clone())
    }
}

impl UserData for HeadersUd {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("get", |lua, h, name: mlua::LuaString| {
            let vals = h.values(&key(&name, h.trailers))?;
            if vals.is_empty() {
                return Ok(None);
            }
            Some(lua.create_string(vals.join(&b","[..]))).transpose()
        });
        m.add_method("getAtIndex", |lua, h, (name, i): (mlua::LuaString, i64)| {
            let vals = h.values(&key(&name, h.trailers))?;
            let v = usize::try_from(i).ok().and_then(|i| vals.get(i));
            v.map(|v| lua.create_string(v)).transpose()
        });
        m.add_method("getNumValues", |_, h, name: mlua::LuaString| Ok(h.values(&key(&name, h.trailers))?.len()));
        m.add_method("add", |_, h, (name, v): (mlua::LuaString, mlua::LuaString)| {
            h.change(key(&name, h.trailers), Some(v.as_bytes().to_vec()), false)
        });
        m.add_method("replace", |_, h, (name, v): (mlua::LuaString, mlua::LuaString)| {
            h.change(key(&name, h.trailers), Some(v.as_bytes().to_vec()), true)
        });
        m.add_method("remove", |_, h, name: mlua::LuaString| h.change(key(&name, h.trailers), None, false));
        m.add_meta_method(MetaMethod::Pairs, |lua, h, ()| {
            let list = h.snapshot()?;
            iterator(lua, list.into_iter().map(|(k, v)| (k.into_bytes(), v)).collect())
        });
    }
}

/// A `pairs` iterator over a snapshot of (key, value) strings.
fn iterator(lua: &Lua, list: Vec<(Vec<u8>, Vec<u8>)>) -> mlua::Result<(mlua::Function, Value, Value)> {
    let at = AtomicUsize::new(0);
    let next = lua.create_function(move |lua, _: mlua::MultiValue| {
        let i = at.fetch_add(1, Relaxed);
        match list.get(i) {
            Some((k, v)) => Ok((Value::String(lua.create_string(k)?), Value::String(lua.create_string(v)?))),
            None => Ok((Value::Nil, Value::Nil)),
        }
    })?;
    Ok((next, Value::Nil, Value::Nil))
}

/// `handle:body()`: the buffered body.
pub struct BufferUd {
    state: Shared,
    generation: u64,
}

impl BufferUd {
    pub fn new(state: &Shared) -> Self {
        Self { state: state.clone(), generation: lock(state).generation }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Vec<u8>) -> mlua::Result<R>) -> mlua::Result<R> {
        alive(&self.state, self.generation)?;
        let mut s = lock(&self.state);
        match &mut s.body {
            Body::Whole(Some(b)) => f(b),
            _ => f(&mut Vec::new()),
        }
    }
}

/// `getBytes(index, length)` of a buffer, with Envoy's bounds check.
fn get_bytes(lua: &Lua, b: &[u8], index: i64, len: i64) -> mlua::Result<mlua::LuaString> {
    let (Ok(i), Ok(n)) = (usize::try_from(index), usize::try_from(len)) else {
        return Err(mlua::Error::runtime("index/length must be >= 0 and (index + length) must be <= buffer size"));
    };
    match b.get(i..i.saturating_add(n)) {
        Some(s) => lua.create_string(s),
        None => Err(mlua::Error::runtime("index/length must be >= 0 and (index + length) must be <= buffer size")),
    }
}

impl UserData for BufferUd {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("length", |_, b, ()| b.with(|v| Ok(v.len())));
        m.add_method("getBytes", |lua, b, (i, n): (i64, i64)| b.with(|v| get_bytes(lua, v, i, n)));
        m.add_method("setBytes", |_, b, data: mlua::LuaString| {
            alive(&b.state, b.generation)?;
            let mut s = lock(&b.state);
            let bytes = data.as_bytes().to_vec();
            let len = bytes.len();
            s.body = Body::Whole(Some(bytes));
            s.body_set = true;
            Ok(len)
        });
    }
}

/// One chunk from `bodyChunks()`: read only.
pub struct ChunkUd(pub Bytes);

impl UserData for ChunkUd {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("length", |_, c, ()| Ok(c.0.len()));
        m.add_method("getBytes", |lua, c, (i, n): (i64, i64)| get_bytes(lua, &c.0, i, n));
    }
}

/// `handle:metadata()`: the route's metadata under the filter's name.
pub struct MetadataUd(pub Arc<Json>);

impl UserData for MetadataUd {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("get", |lua, md, k: mlua::LuaString| match md.0.get(&*k.to_string_lossy()) {
            Some(v) => to_lua(lua, v),
            None => Ok(Value::Nil),
        });
        m.add_meta_method(MetaMethod::Pairs, |lua, md, ()| object_pairs(lua, &md.0));
    }
}

/// A `pairs` iterator over a JSON object's members.
fn object_pairs(lua: &Lua, obj: &Json) -> mlua::Result<(mlua::Function, Value, Value)> {
    let list: Vec<(String, Json)> = obj.as_object().map(|o| o.clone().into_iter().collect()).unwrap_or_default();
    let at = AtomicUsize::new(0);
    let next = lua.create_function(move |lua, _: mlua::MultiValue| {
        let i = at.fetch_add(1, Relaxed);
        match list.get(i) {
            Some((k, v)) => Ok((Value::String(lua.create_string(k)?), to_lua(lua, v)?)),
            None => Ok((Value::Nil, Value::Nil)),
        }
    })?;
    Ok((next, Value::Nil, Value::Nil))
}

/// JSON (a protobuf `Struct`'s values) as a Lua value.
pub fn to_lua(lua: &Lua, v: &Json) -> mlua::Result<Value> {
    Ok(match v {
        Json::Null => Value::Nil,
        Json::Bool(b) => Value::Boolean(*b),
        Json::Number(n) => Value::Number(n.as_f64().unwrap_or_default()),
        Json::String(s) => Value::String(lua.create_string(s)?),
        Json::Array(a) => {
            let t = lua.create_table()?;
            for (i, x) in a.iter().enumerate() {
                t.raw_set(i + 1, to_lua(lua, x)?)?;
            }
            Value::Table(t)
        }
        Json::Object(o) => {
            let t = lua.create_table()?;
            for (k, x) in o {
                t.raw_set(k.as_str(), to_lua(lua, x)?)?;
            }
            Value::Table(t)
        }
    })
}

/// A Lua value as JSON: a table with only the keys 1..n is a list.
pub fn from_lua(v: &Value, depth: usize) -> mlua::Result<Json> {
    if depth > 32 {
        return Err(mlua::Error::runtime("metadata nested too deeply"));
    }
    Ok(match v {
        Value::Nil => Json::Null,
        Value::Boolean(b) => Json::Bool(*b),
        Value::Integer(i) => Json::from(*i),
        Value::Number(n) => serde_json::Number::from_f64(*n).map_or(Json::Null, Json::Number),
        Value::String(s) => Json::String(s.to_string_lossy()),
        Value::Table(t) => {
            let n = t.raw_len();
            let pairs: Vec<(Value, Value)> = t.pairs::<Value, Value>().collect::<mlua::Result<_>>()?;
            if n > 0 && pairs.len() == n {
                let list = (1..=n).map(|i| t.raw_get::<Value>(i).and_then(|x| from_lua(&x, depth + 1)));
                Json::Array(list.collect::<mlua::Result<_>>()?)
            } else {
                let mut o = serde_json::Map::new();
                for (k, x) in pairs {
                    let k = match k {
                        Value::String(s) => s.to_string_lossy(),
                        other => other.to_string()?,
                    };
                    o.insert(k, from_lua(&x, depth + 1)?);
                }
                Json::Object(o)
            }
        }
        other => return Err(mlua::Error::runtime(format!("unsupported value type {}", other.type_name()))),
    })
}

/// `handle:streamInfo()`.
pub struct StreamInfoUd(pub Arc<Facts>);

impl UserData for StreamInfoUd {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("protocol", |_, s, ()| Ok(s.0.protocol));
        m.add_method("downstreamLocalAddress", |_, s, ()| Ok(s.0.local.to_string()));
        m.add_method("downstreamDirectRemoteAddress", |_, s, ()| Ok(s.0.peer.to_string()));
        m.add_method("downstreamRemoteAddress", |_, s, ()| Ok(s.0.client.to_string()));
        m.add_method("requestedServerName", |_, s, ()| Ok(s.0.sni.clone()));
        m.add_method("dynamicMetadata", |_, s, ()| Ok(DynamicMetadataUd(s.0.clone())));
    }
}

/// `streamInfo():dynamicMetadata()`: namespaces of values, kept from the
/// request to its response.
pub struct DynamicMetadataUd(Arc<Facts>);

impl UserData for DynamicMetadataUd {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("get", |lua, d, ns: mlua::LuaString| {
            let v = d.0.dynamic().get(&*ns.to_string_lossy()).cloned();
            v.map_or(Ok(Value::Nil), |v| to_lua(lua, &v))
        });
        m.add_method("set", |_, d, (ns, k, v): (mlua::LuaString, mlua::LuaString, Value)| {
            let v = from_lua(&v, 0)?;
            let mut all = d.0.dynamic();
            let entry = all.entry(ns.to_string_lossy()).or_insert_with(|| Json::Object(Default::default()));
            if let Json::Object(o) = entry {
                o.insert(k.to_string_lossy(), v);
            }
            Ok(())
        });
        m.add_meta_method(MetaMethod::Pairs, |lua, d, ()| {
            let all = Json::Object(d.0.dynamic().clone());
            object_pairs(lua, &all)
        });
    }
}

/// `handle:connection()`.
pub struct ConnectionUd(pub Arc<Facts>);

impl UserData for ConnectionUd {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("ssl", |_, c, ()| Ok(c.0.tls.clone().map(SslUd)));
    }
}

/// What a TLS connection tells a script.
#[derive(Clone)]
pub struct TlsFacts {
    pub peer_presented: bool,
    pub uri_sans: Vec<String>,
    pub dns_sans: Vec<String>,
    pub subject: String,
    pub sha256: String,
    pub local_uri_sans: Vec<String>,
    pub pem: String,
}

/// `connection():ssl()`, nil on a plain connection.
pub struct SslUd(TlsFacts);

impl UserData for SslUd {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("peerCertificatePresented", |_, s, ()| Ok(s.0.peer_presented));
        // A presented certificate was verified in the handshake, or the
        // handshake failed.
        m.add_method("peerCertificateValidated", |_, s, ()| Ok(s.0.peer_presented));
        m.add_method("uriSanPeerCertificate", |_, s, ()| Ok(s.0.uri_sans.clone()));
        m.add_method("dnsSansPeerCertificate", |_, s, ()| Ok(s.0.dns_sans.clone()));
        m.add_method("subjectPeerCertificate", |_, s, ()| Ok(s.0.subject.clone()));
        m.add_method("sha256PeerCertificateDigest", |_, s, ()| Ok(s.0.sha256.clone()));
        m.add_method("uriSanLocalCertificate", |_, s, ()| Ok(s.0.local_uri_sans.clone()));
        m.add_method("urlEncodedPemEncodedPeerCertificate", |_, s, ()| Ok(s.0.pem.clone()));
    }
}
