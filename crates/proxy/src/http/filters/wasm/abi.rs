//! The host functions Envoy exports to proxy-wasm plugins (module `env`,
//! ABI 0.2.1), over the VM's `Host`. A host function the plugin imports and
//! Legate does not implement is linked as one that fails the callback
//! calling it, so a plugin loads and fails only if it uses it.

use super::context::{deserialize_map, serialize_map, Host, Metric, Reply};
use wasmi::{Caller, Error, Linker, Module};

type C<'a> = Caller<'a, Host>;
type R = Result<i32, Error>;

const OK: i32 = 0;
const NOT_FOUND: i32 = 1;
const BAD_ARGUMENT: i32 = 2;
const EMPTY: i32 = 7;

/// The plugin's memory, `len` bytes at `ptr`.
fn read(c: &C<'_>, ptr: i32, len: i32) -> Result<Vec<u8>, Error> {
    let mem = c.data().memory.ok_or_else(|| Error::new("the plugin exports no memory"))?;
    let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
    let mut buf = vec![0; len];
    mem.read(c, ptr, &mut buf).map_err(|e| Error::new(format!("reading plugin memory: {e}")))?;
    Ok(buf)
}

fn read_str(c: &C<'_>, ptr: i32, len: i32) -> Result<String, Error> {
    Ok(String::from_utf8_lossy(&read(c, ptr, len)?).into_owned())
}

fn write(c: &mut C<'_>, ptr: i32, bytes: &[u8]) -> Result<(), Error> {
    let mem = c.data().memory.ok_or_else(|| Error::new("the plugin exports no memory"))?;
    mem.write(c, ptr as u32 as usize, bytes).map_err(|e| Error::new(format!("writing plugin memory: {e}")))
}

/// Hands bytes to the plugin: memory from its allocator, the address and
/// length written where it asked.
fn give(c: &mut C<'_>, bytes: &[u8], ret_ptr: i32, ret_len: i32) -> R {
    let malloc = c.data().malloc.ok_or_else(|| Error::new("the plugin exports no allocator"))?;
    let len = i32::try_from(bytes.len()).map_err(|_| Error::new("value too large"))?;
    let at = if bytes.is_empty() { 0 } else { malloc.call(&mut *c, len)? };
    if !bytes.is_empty() {
        write(c, at, bytes)?;
    }
    write(c, ret_ptr, &at.to_le_bytes())?;
    write(c, ret_len, &len.to_le_bytes())?;
    Ok(OK)
}

fn log(c: C<'_>, level: i32, ptr: i32, len: i32) -> R {
    let msg = read_str(&c, ptr, len)?;
    let p = &c.data().prefix;
    match level {
        0 => tracing::trace!(target: "wasm", "{p}: {msg}"),
        1 => tracing::debug!(target: "wasm", "{p}: {msg}"),
        2 => tracing::info!(target: "wasm", "{p}: {msg}"),
        3 => tracing::warn!(target: "wasm", "{p}: {msg}"),
        _ => tracing::error!(target: "wasm", "{p}: {msg}"),
    }
    Ok(OK)
}

fn get_buffer_bytes(mut c: C<'_>, kind: i32, start: i32, max: i32, ret_ptr: i32, ret_len: i32) -> R {
    let data = match kind {
        6 => c.data().info.vm_config.clone(),
        7 => c.data().info.plugin_config.clone(),
        // No body is buffered for the plugin (body callbacks are not run).
        0 | 1 => return Ok(EMPTY),
        _ => return Ok(BAD_ARGUMENT),
    };
    let start = (start as u32 as usize).min(data.len());
    let end = start.saturating_add(max as u32 as usize).min(data.len());
    if start == end {
        return Ok(EMPTY);
    }
    give(&mut c, &data[start..end], ret_ptr, ret_len)
}

fn get_buffer_status(mut c: C<'_>, kind: i32, ret_len: i32, ret_flags: i32) -> R {
    let len = match kind {
        6 => c.data().info.vm_config.len(),
        7 => c.data().info.plugin_config.len(),
        0 | 1 => 0,
        _ => return Ok(BAD_ARGUMENT),
    };
    write(&mut c, ret_len, &(len as u32).to_le_bytes())?;
    write(&mut c, ret_flags, &0u32.to_le_bytes())?;
    Ok(OK)
}

fn get_pairs(mut c: C<'_>, map: i32, ret_ptr: i32, ret_len: i32) -> R {
    let Some(m) = c.data_mut().map(map) else { return Ok(BAD_ARGUMENT) };
    let bytes = serialize_map(m);
    give(&mut c, &bytes, ret_ptr, ret_len)
}

fn set_pairs(mut c: C<'_>, map: i32, ptr: i32, len: i32) -> R {
    let bytes = read(&c, ptr, len)?;
    let Some(pairs) = deserialize_map(&bytes) else { return Ok(BAD_ARGUMENT) };
    let Some(m) = c.data_mut().map(map) else { return Ok(BAD_ARGUMENT) };
    *m = pairs;
    Ok(OK)
}

fn get_value(mut c: C<'_>, map: i32, kp: i32, kl: i32, ret_ptr: i32, ret_len: i32) -> R {
    let key = read_str(&c, kp, kl)?.to_ascii_lowercase();
    let Some(m) = c.data_mut().map(map) else { return Ok(BAD_ARGUMENT) };
    // Envoy joins the values of a repeated header with commas.
    let values: Vec<&[u8]> = m.iter().filter(|(k, _)| *k == key).map(|(_, v)| v.as_slice()).collect();
    if values.is_empty() {
        return Ok(NOT_FOUND);
    }
    let joined = values.join(&b","[..]);
    give(&mut c, &joined, ret_ptr, ret_len)
}

fn add_value(mut c: C<'_>, map: i32, kp: i32, kl: i32, vp: i32, vl: i32) -> R {
    let (key, value) = (read_str(&c, kp, kl)?.to_ascii_lowercase(), read(&c, vp, vl)?);
    let Some(m) = c.data_mut().map(map) else { return Ok(BAD_ARGUMENT) };
    m.push((key, value));
    Ok(OK)
}

fn replace_value(mut c: C<'_>, map: i32, kp: i32, kl: i32, vp: i32, vl: i32) -> R {
    let (key, value) = (read_str(&c, kp, kl)?.to_ascii_lowercase(), read(&c, vp, vl)?);
    let Some(m) = c.data_mut().map(map) else { return Ok(BAD_ARGUMENT) };
    match m.iter().position(|(k, _)| *k == key) {
        Some(i) => {
            m[i].1 = value;
            let mut n = 0;
            m.retain(|(k, _)| {
                n += usize::from(*k == key);
                *k != key || n == 1
            });
        }
        None => m.push((key, value)),
    }
    Ok(OK)
}

fn remove_value(mut c: C<'_>, map: i32, kp: i32, kl: i32) -> R {
    let key = read_str(&c, kp, kl)?.to_ascii_lowercase();
    let Some(m) = c.data_mut().map(map) else { return Ok(BAD_ARGUMENT) };
    m.retain(|(k, _)| *k != key);
    Ok(OK)
}

#[allow(clippy::too_many_arguments)]
fn send_local_response(
    mut c: C<'_>,
    status: i32,
    _dp: i32,
    _dl: i32,
    bp: i32,
    bl: i32,
    hp: i32,
    hl: i32,
    _g: i32,
) -> R {
    let body = read(&c, bp, bl)?;
    let headers = if hl > 0 { deserialize_map(&read(&c, hp, hl)?) } else { Some(Vec::new()) };
    let (Some(headers), Ok(status)) = (headers, u16::try_from(status)) else { return Ok(BAD_ARGUMENT) };
    let Some(s) = c.data_mut().stream.as_mut() else { return Ok(BAD_ARGUMENT) };
    s.reply = Some(Reply { status, headers, body });
    Ok(OK)
}

fn get_property(mut c: C<'_>, pp: i32, pl: i32, ret_ptr: i32, ret_len: i32) -> R {
    let path = read(&c, pp, pl)?;
    match c.data().property(&path) {
        Some(v) => give(&mut c, &v, ret_ptr, ret_len),
        None => Ok(NOT_FOUND),
    }
}

fn define_metric(mut c: C<'_>, kind: i32, np: i32, nl: i32, ret_id: i32) -> R {
    let name = read_str(&c, np, nl)?;
    let Some(id) = c.data_mut().define_metric(kind, &name) else { return Ok(BAD_ARGUMENT) };
    write(&mut c, ret_id, &id.to_le_bytes())?;
    Ok(OK)
}

fn metric(c: &C<'_>, id: i32) -> Option<usize> {
    usize::try_from(id).ok().filter(|&i| i < c.data().metrics.len())
}

fn increment_metric(c: C<'_>, id: i32, by: i64) -> R {
    let Some(i) = metric(&c, id) else { return Ok(NOT_FOUND) };
    match &c.data().metrics[i] {
        Metric::Counter(m) if by >= 0 => m.add(by as u64),
        Metric::Gauge(g) => g.add(by),
        _ => return Ok(BAD_ARGUMENT),
    }
    Ok(OK)
}

fn record_metric(c: C<'_>, id: i32, value: i64) -> R {
    let Some(i) = metric(&c, id) else { return Ok(NOT_FOUND) };
    match &c.data().metrics[i] {
        Metric::Counter(m) => m.add((value as u64).saturating_sub(m.value())),
        Metric::Gauge(g) => g.set(value),
        Metric::Histogram(h) => h.record(value as u64 as f64),
    }
    Ok(OK)
}

fn get_metric(mut c: C<'_>, id: i32, ret: i32) -> R {
    let Some(i) = metric(&c, id) else { return Ok(NOT_FOUND) };
    let v = match &c.data().metrics[i] {
        Metric::Counter(m) => m.value(),
        Metric::Gauge(g) => g.value() as u64,
        Metric::Histogram(_) => return Ok(BAD_ARGUMENT),
    };
    write(&mut c, ret, &v.to_le_bytes())?;
    Ok(OK)
}

fn now(mut c: C<'_>, ret: i32) -> R {
    let ns = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    write(&mut c, ret, &ns.to_le_bytes())?;
    Ok(OK)
}

/// The host functions, then every other function the module imports
/// linked as a failure naming it.
pub fn linker(engine: &wasmi::Engine, module: &Module) -> Result<Linker<Host>, String> {
    let mut l = Linker::<Host>::new(engine);
    let e = |e: wasmi::errors::LinkerError| e.to_string();
    l.func_wrap("env", "proxy_log", log).map_err(e)?;
    l.func_wrap("env", "proxy_get_log_level", |mut c: C<'_>, ret: i32| -> R {
        // Trace: the plugin's own level decides.
        write(&mut c, ret, &0u32.to_le_bytes())?;
        Ok(OK)
    })
    .map_err(e)?;
    l.func_wrap("env", "proxy_get_current_time_nanoseconds", now).map_err(e)?;
    l.func_wrap("env", "proxy_get_buffer_bytes", get_buffer_bytes).map_err(e)?;
    l.func_wrap("env", "proxy_get_buffer_status", get_buffer_status).map_err(e)?;
    l.func_wrap("env", "proxy_get_header_map_pairs", get_pairs).map_err(e)?;
    l.func_wrap("env", "proxy_set_header_map_pairs", set_pairs).map_err(e)?;
    l.func_wrap("env", "proxy_get_header_map_value", get_value).map_err(e)?;
    l.func_wrap("env", "proxy_add_header_map_value", add_value).map_err(e)?;
    l.func_wrap("env", "proxy_replace_header_map_value", replace_value).map_err(e)?;
    l.func_wrap("env", "proxy_remove_header_map_value", remove_value).map_err(e)?;
    l.func_wrap("env", "proxy_send_local_response", send_local_response).map_err(e)?;
    l.func_wrap("env", "proxy_get_property", get_property).map_err(e)?;
    l.func_wrap("env", "proxy_define_metric", define_metric).map_err(e)?;
    l.func_wrap("env", "proxy_increment_metric", increment_metric).map_err(e)?;
    l.func_wrap("env", "proxy_record_metric", record_metric).map_err(e)?;
    l.func_wrap("env", "proxy_get_metric", get_metric).map_err(e)?;
    // One stream per callback, resumed by the host itself: these change nothing.
    l.func_wrap("env", "proxy_set_effective_context", |_: C<'_>, _: i32| -> R { Ok(OK) }).map_err(e)?;
    l.func_wrap("env", "proxy_continue_stream", |_: C<'_>, _: i32| -> R { Ok(OK) }).map_err(e)?;
    l.func_wrap("env", "proxy_done", |_: C<'_>| -> R { Ok(OK) }).map_err(e)?;
    // Timers are not built: only turning them off is accepted.
    l.func_wrap("env", "proxy_set_tick_period_milliseconds", |mut c: C<'_>, ms: i32| -> R {
        if ms == 0 {
            return Ok(OK);
        }
        c.data_mut().unimplemented = Some("proxy_set_tick_period_milliseconds".into());
        Err(Error::new("proxy_set_tick_period_milliseconds is not implemented"))
    })
    .map_err(e)?;
    for import in module.imports() {
        let (Some(ty), m, n) = (import.ty().func(), import.module(), import.name()) else { continue };
        if defined(m, n) {
            continue;
        }
        let name = format!("{m}.{n}");
        l.func_new(m, n, ty.clone(), move |mut c: C<'_>, _, _| {
            c.data_mut().unimplemented = Some(name.clone());
            Err(Error::new(format!("{name} is not implemented")))
        })
        .map_err(e)?;
    }
    Ok(l)
}

/// The host functions `linker` defines.
fn defined(module: &str, name: &str) -> bool {
    module == "env" && HOST_FUNCTIONS.contains(&name)
}

const HOST_FUNCTIONS: &[&str] = &[
    "proxy_log",
    "proxy_get_log_level",
    "proxy_get_current_time_nanoseconds",
    "proxy_get_buffer_bytes",
    "proxy_get_buffer_status",
    "proxy_get_header_map_pairs",
    "proxy_set_header_map_pairs",
    "proxy_get_header_map_value",
    "proxy_add_header_map_value",
    "proxy_replace_header_map_value",
    "proxy_remove_header_map_value",
    "proxy_send_local_response",
    "proxy_get_property",
    "proxy_define_metric",
    "proxy_increment_metric",
    "proxy_record_metric",
    "proxy_get_metric",
    "proxy_set_effective_context",
    "proxy_continue_stream",
    "proxy_done",
    "proxy_set_tick_period_milliseconds",
];
