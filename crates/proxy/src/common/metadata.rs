//! Envoy's metadata as JSON: a config's `Metadata` (an endpoint's, a
//! route's), a request's dynamic metadata that filters write and access
//! logs read, and how `%..._METADATA(ns:key)%` finds and prints a value.

use legate_api::pb::envoy::config::core::v3::Metadata;
use legate_api::pb::google::protobuf::{value::Kind, Struct, Value as PbValue};
use serde_json::Value;
use std::fmt::Write;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// Namespaces (`filter_metadata` keys) to their values.
pub type Map = serde_json::Map<String, Value>;

/// A protobuf `Struct` as JSON.
pub fn struct_json(s: &Struct) -> Value {
    Value::Object(s.fields.iter().map(|(k, v)| (k.clone(), value_json(v))).collect())
}

/// A protobuf `Value` as JSON.
pub fn value_json(v: &PbValue) -> Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n).map_or(Value::Null, Into::into),
        Some(Kind::StringValue(s)) => s.clone().into(),
        Some(Kind::BoolValue(b)) => (*b).into(),
        Some(Kind::StructValue(s)) => struct_json(s),
        Some(Kind::ListValue(l)) => l.values.iter().map(value_json).collect(),
    }
}

/// JSON as a protobuf `Value` (the inverse of `value_json`).
pub fn json_value(v: &Value) -> PbValue {
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(a) => {
            Kind::ListValue(legate_api::pb::google::protobuf::ListValue { values: a.iter().map(json_value).collect() })
        }
        Value::Object(o) => Kind::StructValue(json_struct(o)),
    };
    PbValue { kind: Some(kind) }
}

/// A JSON object as a protobuf `Struct`.
pub fn json_struct(o: &Map) -> Struct {
    Struct { fields: o.iter().map(|(k, v)| (k.clone(), json_value(v))).collect() }
}

/// A config's `filter_metadata`, by namespace; `None` when it has none.
pub fn metadata_json(m: Option<&Metadata>) -> Option<Arc<Map>> {
    let m = m.filter(|m| !m.filter_metadata.is_empty())?;
    Some(Arc::new(m.filter_metadata.iter().map(|(k, s)| (k.clone(), struct_json(s))).collect()))
}

/// A request's dynamic metadata, shared by its filters (header_to_metadata
/// writes it, Lua reads and writes it) and read by its access logs.
/// Nothing is allocated until a filter writes.
#[derive(Default)]
pub struct Dynamic(OnceLock<Arc<Mutex<Map>>>);

impl Dynamic {
    /// The shared store, made on first use.
    pub fn shared(&self) -> Arc<Mutex<Map>> {
        self.0.get_or_init(Default::default).clone()
    }

    /// The namespaces, locked; `None` when nothing was ever written.
    pub fn read(&self) -> Option<MutexGuard<'_, Map>> {
        self.0.get().map(|m| lock(m))
    }

    /// Envoy's `setDynamicMetadata(ns, fields)`: the fields are merged into
    /// the namespace, replacing keys already there.
    pub fn merge(&self, namespace: &str, fields: Map) {
        let shared = self.0.get_or_init(Default::default);
        merge_into(&mut lock(shared), namespace, fields);
    }
}

/// Merges `fields` into namespace `namespace` of `all`.
pub fn merge_into(all: &mut Map, namespace: &str, fields: Map) {
    let entry = all.entry(namespace.to_string()).or_insert_with(|| Value::Object(Map::new()));
    match entry {
        Value::Object(o) => o.extend(fields),
        other => *other = Value::Object(fields),
    }
}

/// Locks a shared store, taking it over from a panicked holder.
pub fn lock(m: &Mutex<Map>) -> MutexGuard<'_, Map> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `namespace:key:key...` as a metadata operator names it.
#[derive(Debug, Clone, PartialEq)]
pub struct Path {
    pub namespace: String,
    pub keys: Vec<String>,
}

impl Path {
    pub fn parse(arg: &str) -> Result<Self, String> {
        let mut parts = arg.split(':').map(str::to_owned);
        let namespace = parts.next().filter(|n| !n.is_empty()).ok_or("metadata operator needs a namespace")?;
        Ok(Self { namespace, keys: parts.collect() })
    }

    /// The value at this path: the namespace's whole struct without keys;
    /// `None` when a step is missing or not a struct.
    pub fn find<'a>(&self, m: &'a Map) -> Option<&'a Value> {
        let mut v = m.get(&self.namespace)?;
        for k in &self.keys {
            v = v.as_object()?.get(k)?;
        }
        Some(v)
    }
}

/// A metadata value as Envoy's text formatter prints it: a string as it is,
/// anything else as protobuf JSON; null is no value.
pub fn text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => {
            let mut s = String::new();
            write_json(other, &mut s);
            Some(s)
        }
    }
}

/// JSON as protobuf writes a `Value`: numbers are doubles, printed without
/// a fraction when they have none (`5`, not `5.0`); keys in order.
pub fn write_json(v: &Value, out: &mut String) {
    match v {
        Value::Number(n) => write_number(n.as_f64().unwrap_or_default(), out),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(x, out);
            }
            out.push(']');
        }
        Value::Object(o) => {
            out.push('{');
            for (i, (k, x)) in o.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(k).unwrap_or_default());
                out.push(':');
                write_json(x, out);
            }
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn write_number(n: f64, out: &mut String) {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        let _ = write!(out, "{}", n as i64);
    } else {
        let _ = write!(out, "{n}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_find_values_and_text_prints_them_as_envoy() {
        let mut m = Map::new();
        merge_into(&mut m, "ns", json!({"a": "x", "n": 5.0, "s": {"b": [1.5, true]}}).as_object().cloned().unwrap());
        merge_into(&mut m, "ns", json!({"a": "y"}).as_object().cloned().unwrap());
        let find = |p: &str| Path::parse(p).unwrap().find(&m).and_then(text);
        assert_eq!(find("ns:a").as_deref(), Some("y"));
        assert_eq!(find("ns:n").as_deref(), Some("5"));
        assert_eq!(find("ns:s").as_deref(), Some("{\"b\":[1.5,true]}"));
        assert_eq!(find("ns:a:deeper"), None);
        assert_eq!(find("other:a"), None);
        assert!(Path::parse(":a").is_err());
    }
}
