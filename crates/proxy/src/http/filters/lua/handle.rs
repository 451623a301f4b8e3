//! The handle a script gets (`request_handle`, `response_handle`) and the
//! stream state it works on. Its methods that wait (`body()`, `trailers()`,
//! `httpCall()`, `respond()`) are async: the script's coroutine yields and
//! the request's task drives it on (mlua's async threads on the worker's
//! runtime), as Envoy's coroutine yields to its dispatcher.

use super::call::{self, CallArgs};
use super::state::{lock, Body, Reply, Shared};
use super::wrappers::{BufferUd, ChunkUd, ConnectionUd, HeadersUd, MetadataUd, StreamInfoUd};
use super::Facts;
use bytes::Bytes;
use mlua::{AnyUserData, Lua, Table, UserData, UserDataMethods, Value};
use std::sync::Arc;

/// The handle passed to `envoy_on_request` / `envoy_on_response`.
pub struct Handle {
    pub state: Shared,
    pub facts: Arc<Facts>,
}

impl Handle {
    /// Reads the rest of the body whole (at most the state's `limit`), with its
    /// trailers. A body over the limit ends the script: the request is
    /// answered 413 as Envoy's buffer overflow is.
    async fn read_whole(state: &Shared) -> mlua::Result<()> {
        let body = match std::mem::replace(&mut lock(state).body, Body::Taken) {
            Body::Unread(b) => b,
            other => {
                lock(state).body = other;
                return Ok(());
            }
        };
        let limit = lock(state).limit;
        let collected = http_body_util::BodyExt::collect(http_body_util::Limited::new(body, limit)).await;
        let mut s = lock(state);
        s.generation += 1;
        match collected {
            Ok(c) => {
                s.trailers = c.trailers().cloned();
                s.body = Body::Whole(Some(c.to_bytes().to_vec()));
                Ok(())
            }
            Err(e) => {
                s.body = Body::Whole(Some(Vec::new()));
                let too_large = e.downcast_ref::<http_body_util::LengthLimitError>().is_some();
                if too_large && !s.response {
                    s.reply = Some(Reply { status: 413, headers: Vec::new(), body: Some("Payload Too Large".into()) });
                }
                Err(mlua::Error::runtime(if too_large { "body too large" } else { "body read failed" }))
            }
        }
    }

    /// The next chunk of a body being iterated, or `None` at its end.
    async fn next_chunk(state: &Shared) -> mlua::Result<Option<Bytes>> {
        use http_body_util::BodyExt as _;
        let mut body = match std::mem::replace(&mut lock(state).body, Body::Taken) {
            Body::Unread(b) => b,
            other => {
                lock(state).body = other;
                return Ok(None);
            }
        };
        lock(state).generation += 1;
        loop {
            let frame = body.frame().await;
            let mut s = lock(state);
            match frame {
                None => {
                    // What went by is kept: it goes on whole.
                    s.body = Body::Whole(Some(std::mem::take(s.chunks_seen())));
                    return Ok(None);
                }
                Some(Err(_)) => {
                    s.body = Body::Whole(Some(std::mem::take(s.chunks_seen())));
                    return Err(mlua::Error::runtime("body read failed"));
                }
                Some(Ok(f)) => match f.into_data() {
                    Ok(d) => {
                        s.chunks_seen().extend_from_slice(&d);
                        s.body = Body::Unread(body);
                        return Ok(Some(d));
                    }
                    Err(f) => {
                        if let Ok(t) = f.into_trailers() {
                            s.trailers = Some(t);
                        }
                    }
                },
            }
        }
    }
}

impl UserData for Handle {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("headers", |_, h, ()| Ok(HeadersUd::new(&h.state, false)));
        m.add_async_method("body", |_, h, _always: Option<bool>| async move {
            let state = h.state.clone();
            Handle::read_whole(&state).await?;
            let has = matches!(lock(&state).body, Body::Whole(Some(_)));
            Ok(has.then(|| BufferUd::new(&state)))
        });
        m.add_method("bodyChunks", |lua, h, ()| {
            let state = h.state.clone();
            lua.create_async_function(move |_, ()| {
                let state = state.clone();
                async move { Ok(Handle::next_chunk(&state).await?.map(ChunkUd)) }
            })
        });
        m.add_async_method("trailers", |_, h, ()| async move {
            let state = h.state.clone();
            Handle::read_whole(&state).await?;
            let has = lock(&state).trailers.is_some();
            Ok(has.then(|| HeadersUd::new(&state, true)))
        });
        m.add_method("metadata", |_, h, ()| Ok(MetadataUd(h.facts.metadata.clone())));
        m.add_method("streamInfo", |_, h, ()| Ok(StreamInfoUd(h.facts.clone())));
        m.add_method("connection", |_, h, ()| Ok(ConnectionUd(h.facts.clone())));
        for (name, level) in LOG_LEVELS {
            m.add_method(name, move |_, _, msg: mlua::LuaString| {
                script_log(level, &msg.to_string_lossy());
                Ok(())
            });
        }
        m.add_async_method("respond", |_, h, (headers, body): (Table, Option<mlua::LuaString>)| async move {
            respond(&h.state, &headers, body)?;
            // Nothing after respond() runs: the coroutine is never resumed.
            std::future::pending::<()>().await;
            Ok(())
        });
        m.add_async_method("httpCall", |lua, h, args: mlua::MultiValue| async move {
            let args = CallArgs::from_lua(&args)?;
            let clusters = h.facts.clusters.clone();
            let out = call::http_call(&lua, &clusters, args).await;
            lock(&h.state).generation += 1;
            out
        });
        m.add_method("base64Escape", |_, _, s: mlua::LuaString| {
            use base64::Engine as _;
            Ok(base64::engine::general_purpose::STANDARD.encode(&*s.as_bytes()))
        });
        m.add_method("timestamp", |_, _, _res: Option<Value>| Ok(now_millis()));
        m.add_method("timestampString", |_, _, res: Option<i64>| {
            // 0 (or none): milliseconds; 1: microseconds.
            let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            Ok(if res == Some(1) { d.as_micros().to_string() } else { d.as_millis().to_string() })
        });
    }
}

fn now_millis() -> i64 {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// `respond(headers, body)`: checks and keeps the reply.
fn respond(state: &Shared, headers: &Table, body: Option<mlua::LuaString>) -> mlua::Result<()> {
    let mut s = lock(state);
    if s.response {
        return Err(mlua::Error::runtime("respond not currently supported in the response path"));
    }
    let mut status = None;
    let mut out = Vec::new();
    for pair in headers.pairs::<mlua::LuaString, mlua::LuaString>() {
        let (k, v) = pair?;
        let (k, v) = (k.to_string_lossy().to_ascii_lowercase(), v.to_string_lossy());
        if k == ":status" {
            status = v.parse::<u16>().ok();
        } else {
            out.push((k, v));
        }
    }
    let Some(status) = status.filter(|s| (200..600).contains(s)) else {
        return Err(mlua::Error::runtime(":status must be between 200-599"));
    };
    s.reply = Some(Reply { status, headers: out, body: body.map(|b| Bytes::copy_from_slice(&b.as_bytes())) });
    Ok(())
}

const LOG_LEVELS: [(&str, tracing::Level); 6] = [
    ("logTrace", tracing::Level::TRACE),
    ("logDebug", tracing::Level::DEBUG),
    ("logInfo", tracing::Level::INFO),
    ("logWarn", tracing::Level::WARN),
    ("logErr", tracing::Level::ERROR),
    ("logCritical", tracing::Level::ERROR),
];

/// A line of the script's, as Envoy's `script log: ...` on its `lua` logger.
pub fn script_log(level: tracing::Level, msg: &str) {
    match level {
        tracing::Level::TRACE => tracing::trace!(target: "lua", "script log: {msg}"),
        tracing::Level::DEBUG => tracing::debug!(target: "lua", "script log: {msg}"),
        tracing::Level::INFO => tracing::info!(target: "lua", "script log: {msg}"),
        tracing::Level::WARN => tracing::warn!(target: "lua", "script log: {msg}"),
        _ => tracing::error!(target: "lua", "script log: {msg}"),
    }
}

/// The script's own message in an mlua error (the innermost cause).
pub use super::vm::message;

/// Runs one of the script's functions with a new handle; returns when it
/// ends, fails, or answers the request (a coroutine that called
/// `respond()` is dropped, never resumed).
pub async fn run(lua: &Lua, f: &mlua::Function, handle: Handle) -> mlua::Result<()> {
    use std::future::Future as _;
    use std::task::Poll;
    let state = handle.state.clone();
    let ud: AnyUserData = lua.create_userdata(handle)?;
    let mut fut = Box::pin(f.call_async::<()>(ud));
    std::future::poll_fn(|cx| match fut.as_mut().poll(cx) {
        Poll::Ready(r) => Poll::Ready(r),
        Poll::Pending if lock(&state).reply.is_some() => Poll::Ready(Ok(())),
        Poll::Pending => Poll::Pending,
    })
    .await
}
