//! A descriptor-guided pass over the JSON form of a config, before it is decoded.
//!
//! Envoy parses JSON with protobuf's legacy leniencies turned on; prost-reflect is
//! strict. This pass makes the JSON what a strict proto3 JSON parser accepts, in
//! the four ways Envoy is lenient: case-insensitive enum names, a single value
//! where a list is expected, strings for bools, and `{seconds, nanos}` objects for
//! Durations. It also reports unknown fields and unknown `@type`s with their
//! field paths, which the decoder itself cannot do.

use crate::error::FieldError;
use crate::pool::message_in;
use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value};

/// Rewrites `value` (the JSON form of a `desc` message) in place; problems are
/// appended to `errors`.
pub fn normalize(value: &mut Value, desc: &MessageDescriptor, path: &str, errors: &mut Vec<FieldError>) {
    match desc.full_name() {
        "google.protobuf.Duration" => return normalize_duration(value),
        "google.protobuf.Struct"
        | "google.protobuf.Value"
        | "google.protobuf.ListValue"
        | "google.protobuf.Timestamp"
        | "google.protobuf.FieldMask"
        | "google.protobuf.Empty" => return,
        "google.protobuf.Any" => return normalize_any(value, desc, path, errors),
        name if is_wrapper(name) => {
            if let Some(inner) = desc.get_field_by_name("value") {
                normalize_scalar(value, &inner.kind());
            }
            return;
        }
        _ => {}
    }
    let Value::Object(obj) = value else { return };
    normalize_object(obj, desc, path, errors);
}

fn normalize_object(obj: &mut Map<String, Value>, desc: &MessageDescriptor, path: &str, errors: &mut Vec<FieldError>) {
    let mut unknown = Vec::new();
    for (key, v) in obj.iter_mut() {
        let Some(field) = find_field(desc, key) else {
            unknown.push(key.clone());
            continue;
        };
        let field_path = join(path, field.name());
        normalize_field(v, &field, &field_path, errors);
    }
    for key in unknown {
        errors.push(FieldError::new(join(path, &key), format!("unknown field in {}", desc.full_name())));
        obj.remove(&key);
    }
}

fn find_field(desc: &MessageDescriptor, key: &str) -> Option<FieldDescriptor> {
    desc.get_field_by_name(key).or_else(|| desc.get_field_by_json_name(key))
}

fn normalize_field(v: &mut Value, field: &FieldDescriptor, path: &str, errors: &mut Vec<FieldError>) {
    if v.is_null() {
        return;
    }
    if field.is_map() {
        let Kind::Message(entry) = field.kind() else { return };
        let Some(value_field) = entry.get_field_by_name("value") else { return };
        if let Value::Object(m) = v {
            for (k, item) in m.iter_mut() {
                normalize_single(item, &value_field.kind(), &format!("{path}[\"{k}\"]"), errors);
            }
        }
        return;
    }
    if field.is_list() {
        if !v.is_array() {
            // Envoy accepts `domains: "*"` for `domains: ["*"]`.
            *v = Value::Array(vec![v.take()]);
        }
        if let Value::Array(items) = v {
            for (i, item) in items.iter_mut().enumerate() {
                normalize_single(item, &field.kind(), &format!("{path}[{i}]"), errors);
            }
        }
        return;
    }
    normalize_single(v, &field.kind(), path, errors);
}

fn normalize_single(v: &mut Value, kind: &Kind, path: &str, errors: &mut Vec<FieldError>) {
    match kind {
        Kind::Message(m) => normalize(v, m, path, errors),
        other => normalize_scalar(v, other),
    }
}

fn normalize_scalar(v: &mut Value, kind: &Kind) {
    match kind {
        Kind::Enum(e) => {
            if let Value::String(s) = v {
                if e.get_value_by_name(s).is_none() {
                    if let Some(found) = e.values().find(|ev| ev.name().eq_ignore_ascii_case(s)) {
                        *s = found.name().to_string();
                    }
                }
            }
        }
        Kind::Bool => {
            if let Value::String(s) = v {
                match s.as_str() {
                    "true" | "True" | "TRUE" => *v = Value::Bool(true),
                    "false" | "False" | "FALSE" => *v = Value::Bool(false),
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

fn normalize_duration(v: &mut Value) {
    let Value::Object(obj) = v else { return };
    let seconds = obj.get("seconds").and_then(as_i64).unwrap_or(0);
    let nanos = obj.get("nanos").and_then(as_i64).unwrap_or(0);
    *v = Value::String(if nanos == 0 { format!("{seconds}s") } else { format!("{seconds}.{nanos:09}s") });
}

fn as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn normalize_any(v: &mut Value, any: &MessageDescriptor, path: &str, errors: &mut Vec<FieldError>) {
    let Value::Object(obj) = v else { return };
    let Some(type_url) = obj.get("@type").and_then(Value::as_str).map(str::to_owned) else {
        if !obj.is_empty() {
            errors.push(FieldError::new(path, "Any without @type"));
        }
        return;
    };
    let Some(desc) = message_in(any.parent_pool(), &type_url) else {
        errors.push(FieldError::new(path, format!("could not find @type '{type_url}'")));
        // Leave an empty Any so that decoding can go on and find other problems.
        obj.retain(|k, _| k == "@type");
        obj.insert("@type".into(), Value::String("type.googleapis.com/google.protobuf.Empty".into()));
        return;
    };
    let mut fields: Map<String, Value> = std::mem::take(obj).into_iter().filter(|(k, _)| k != "@type").collect();
    let inner_path = path.to_string();
    if is_wkt_with_special_json(desc.full_name()) {
        // The payload of such an Any is under "value".
        if let Some(inner) = fields.get_mut("value") {
            normalize(inner, &desc, &inner_path, errors);
        }
    } else {
        normalize_object(&mut fields, &desc, &inner_path, errors);
    }
    *obj = fields;
    obj.insert("@type".into(), Value::String(type_url));
}

fn is_wrapper(name: &str) -> bool {
    matches!(
        name,
        "google.protobuf.BoolValue"
            | "google.protobuf.UInt32Value"
            | "google.protobuf.UInt64Value"
            | "google.protobuf.Int32Value"
            | "google.protobuf.Int64Value"
            | "google.protobuf.DoubleValue"
            | "google.protobuf.FloatValue"
            | "google.protobuf.StringValue"
            | "google.protobuf.BytesValue"
    )
}

fn is_wkt_with_special_json(name: &str) -> bool {
    is_wrapper(name)
        || matches!(
            name,
            "google.protobuf.Duration"
                | "google.protobuf.Timestamp"
                | "google.protobuf.Struct"
                | "google.protobuf.Value"
                | "google.protobuf.ListValue"
                | "google.protobuf.FieldMask"
        )
}

/// `a` + `.b`, or `b` at the root.
pub(crate) fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}
