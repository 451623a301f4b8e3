//! `handle:httpCall(cluster, headers, body, timeout_ms[, asynchronous])`
//! (or an options table in place of the timeout): a request to a cluster
//! through the proxy's own upstream pools, the script waiting for its
//! answer (`headers`, `body`) unless asynchronous.

use crate::body::ProxyBody;
use crate::upstream::cluster::ClusterMap;
use arc_swap::ArcSwap;
use bytes::Bytes;
use mlua::{Lua, Table, Value};
use std::sync::Arc;
use std::time::Duration;

/// A call's arguments as the script gave them.
pub struct CallArgs {
    cluster: String,
    headers: Vec<(String, String)>,
    body: Option<Bytes>,
    /// None: no timeout (0 in the script).
    timeout: Option<Duration>,
    asynchronous: bool,
}

impl CallArgs {
    pub fn from_lua(args: &mlua::MultiValue) -> mlua::Result<Self> {
        let arg = |i: usize| args.get(i).cloned().unwrap_or(Value::Nil);
        let Value::String(cluster) = arg(0) else {
            return Err(mlua::Error::runtime("http call cluster must be a string"));
        };
        let Value::Table(headers) = arg(1) else {
            return Err(mlua::Error::runtime("http call headers must be a table"));
        };
        let body = match arg(2) {
            Value::String(s) => Some(Bytes::copy_from_slice(&s.as_bytes())),
            _ => None,
        };
        let (timeout_ms, asynchronous) = match arg(3) {
            Value::Table(t) => options(&t)?,
            v => (number(&v).ok_or_else(|| mlua::Error::runtime("http call timeout must be a number"))?, false),
        };
        let asynchronous = asynchronous || matches!(arg(4), Value::Boolean(true));
        if timeout_ms < 0 {
            return Err(mlua::Error::runtime("http call timeout must be >= 0"));
        }
        let mut list = Vec::new();
        for pair in headers.pairs::<mlua::LuaString, mlua::LuaString>() {
            let (k, v) = pair?;
            list.push((k.to_string_lossy().to_ascii_lowercase(), v.to_string_lossy()));
        }
        Ok(Self {
            cluster: cluster.to_string_lossy(),
            headers: list,
            body,
            timeout: (timeout_ms > 0).then(|| Duration::from_millis(timeout_ms.unsigned_abs())),
            asynchronous,
        })
    }
}

fn number(v: &Value) -> Option<i64> {
    match v {
        Value::Integer(i) => Some(*i),
        Value::Number(n) => Some(*n as i64),
        _ => None,
    }
}

/// The options table: `timeout_ms`, `asynchronous`.
fn options(t: &Table) -> mlua::Result<(i64, bool)> {
    let timeout = number(&t.get::<Value>("timeout_ms")?).unwrap_or(0);
    let asynchronous = t.get::<Option<bool>>("asynchronous")?.unwrap_or(false);
    Ok((timeout, asynchronous))
}

/// Makes the call; returns the answer's headers (`:status` among them) and
/// body (nil when empty), or nothing for an asynchronous call.
pub async fn http_call(lua: &Lua, clusters: &Arc<ArcSwap<ClusterMap>>, a: CallArgs) -> mlua::Result<mlua::MultiValue> {
    let Some(cluster) = clusters.load().get(&a.cluster).cloned() else {
        return Err(mlua::Error::runtime("http call cluster invalid. Must be configured"));
    };
    let find = |k: &str| a.headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let (Some(path), Some(method), Some(authority)) = (find(":path"), find(":method"), find(":authority")) else {
        return Err(mlua::Error::runtime("http call headers must include ':path', ':method', and ':authority'"));
    };
    let req = build(&cluster, &a, &path, &method, &authority)?;
    let timeout = a.timeout;
    if a.asynchronous {
        tokio::spawn(async move {
            let _ = send(cluster, req, timeout).await;
        });
        return Ok(mlua::MultiValue::new());
    }
    let (headers, body) = send(cluster, req, timeout).await;
    let t = lua.create_table()?;
    for (k, v) in headers {
        t.raw_set(lua.create_string(k)?, lua.create_string(v)?)?;
    }
    let body = if body.is_empty() { Value::Nil } else { Value::String(lua.create_string(&body)?) };
    Ok(mlua::MultiValue::from_iter([Value::Table(t), body]))
}

/// The request as the cluster's protocol wants it.
fn build(
    cluster: &crate::upstream::cluster::Cluster,
    a: &CallArgs,
    path: &str,
    method: &str,
    authority: &str,
) -> mlua::Result<http::Request<ProxyBody>> {
    let bad = |what: &str| mlua::Error::runtime(format!("http call: invalid {what}"));
    let uri = if cluster.http2 { format!("http://{authority}{path}") } else { path.to_string() };
    let mut req = http::Request::new(ProxyBody::full(a.body.clone().unwrap_or_default()));
    *req.uri_mut() = uri.parse().map_err(|_| bad(":path"))?;
    *req.method_mut() = http::Method::from_bytes(method.as_bytes()).map_err(|_| bad(":method"))?;
    let h = req.headers_mut();
    if !cluster.http2 {
        h.insert(http::header::HOST, http::HeaderValue::from_str(authority).map_err(|_| bad(":authority"))?);
    }
    for (k, v) in a.headers.iter().filter(|(k, _)| !k.starts_with(':')) {
        let name = http::HeaderName::from_bytes(k.as_bytes()).map_err(|_| bad("header name"))?;
        h.append(name, http::HeaderValue::from_str(v).map_err(|_| bad("header value"))?);
    }
    if let Some(b) = &a.body {
        h.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(b.len()));
    }
    Ok(req)
}

/// Sends and reads the whole answer; a failure is Envoy's made-up 503
/// with `upstream failure`.
async fn send(
    cluster: Arc<crate::upstream::cluster::Cluster>,
    req: http::Request<ProxyBody>,
    timeout: Option<Duration>,
) -> (Vec<(String, String)>, Bytes) {
    let failure = || (vec![(":status".to_string(), "503".to_string())], Bytes::from_static(b"upstream failure"));
    let Some(host) = cluster.pick() else { return failure() };
    let mut held = crate::upstream::pool::Held::default();
    cluster.stats.upstream_rq_active.inc();
    let exchange = async {
        let resp = crate::upstream::pool::send(&cluster, &host, req, &mut held).await.ok()?;
        let status = resp.status().as_u16();
        cluster.stats.record_status(status);
        let (parts, body) = resp.into_parts();
        let body = http_body_util::BodyExt::collect(body).await.ok()?.to_bytes();
        let mut headers = vec![(":status".to_string(), status.to_string())];
        for (k, v) in &parts.headers {
            headers.push((k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()));
        }
        Some((headers, body))
    };
    let out = match timeout {
        Some(t) => tokio::time::timeout(t, exchange).await.ok().flatten(),
        None => exchange.await,
    };
    cluster.stats.upstream_rq_active.dec();
    cluster.stats.upstream_rq_completed.inc();
    drop(held);
    cluster.pools.release();
    out.unwrap_or_else(failure)
}
