//! Walks a decoded config tree with field paths, into `Any` payloads too.

use crate::lenient::join;
use crate::pool::message_in;
use prost_reflect::{DynamicMessage, MapKey, ReflectMessage, Value};

/// Calls `f(message, path)` for `msg` and for every message below it. `Any`s are
/// decoded by their type URL and walked as what they hold, under the same path.
pub(crate) fn walk(msg: &DynamicMessage, path: &str, f: &mut dyn FnMut(&DynamicMessage, &str)) {
    if msg.descriptor().full_name() == "google.protobuf.Any" {
        if let Some(inner) = decode_any(msg) {
            walk(&inner, path, f);
        }
        return;
    }
    f(msg, path);
    for (field, value) in msg.fields() {
        let p = join(path, field.name());
        match value {
            Value::Message(m) => walk(m, &p, f),
            Value::List(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let Value::Message(m) = item {
                        walk(m, &format!("{p}[{i}]"), f);
                    }
                }
            }
            Value::Map(entries) => {
                for (k, v) in entries {
                    if let Value::Message(m) = v {
                        walk(m, &format!("{p}[{}]", key_text(k)), f);
                    }
                }
            }
            _ => {}
        }
    }
}

/// The message an `Any` holds, when its type is in the pool.
pub(crate) fn decode_any(any: &DynamicMessage) -> Option<DynamicMessage> {
    let type_url = any.get_field_by_name("type_url")?;
    let desc = message_in(any.descriptor().parent_pool(), type_url.as_str()?)?;
    let bytes = any.get_field_by_name("value")?;
    DynamicMessage::decode(desc, bytes.as_bytes()?.clone()).ok()
}

fn key_text(k: &MapKey) -> String {
    match k {
        MapKey::String(s) => format!("\"{s}\""),
        other => format!("{other:?}"),
    }
}

/// The management servers' clusters that the `ApiConfigSource`s in `msg`
/// name (`grpc_services[].envoy_grpc.cluster_name`), with their paths.
pub fn api_config_clusters(msg: &DynamicMessage) -> Vec<(String, String)> {
    let mut out = Vec::new();
    walk(msg, "", &mut |m, path| {
        if m.descriptor().full_name() != "envoy.config.core.v3.ApiConfigSource" {
            return;
        }
        let Some(services) = m.get_field_by_name("grpc_services") else { return };
        let Some(list) = services.as_list() else { return };
        for (i, s) in list.iter().enumerate() {
            let Some(service) = s.as_message() else { continue };
            if !service.has_field_by_name("envoy_grpc") {
                continue;
            }
            let Some(envoy_grpc) = service.get_field_by_name("envoy_grpc") else { continue };
            let cluster = envoy_grpc
                .as_message()
                .and_then(|e| e.get_field_by_name("cluster_name").and_then(|c| c.as_str().map(str::to_string)));
            if let Some(c) = cluster.filter(|c| !c.is_empty()) {
                out.push((format!("{path}.grpc_services[{i}]"), c));
            }
        }
    });
    out
}
