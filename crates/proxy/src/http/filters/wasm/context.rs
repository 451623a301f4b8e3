//! What the host keeps for a plugin's VM (the store's data) and for one
//! HTTP stream: header maps as the plugin sees them, a local reply it asked
//! for, the stream facts `proxy_get_property` answers from, and the
//! plugin's metrics.

use crate::stats::{Counter, Gauge, Histogram, Store};
use std::sync::Arc;

/// Headers as a plugin sees them: pseudo-headers first, names in lower
/// case, each value on its own.
pub type HeaderList = Vec<(String, Vec<u8>)>;

/// A local reply a plugin asked for (`proxy_send_local_response`).
pub struct Reply {
    pub status: u16,
    pub headers: HeaderList,
    pub body: Vec<u8>,
}

/// What a plugin's properties read of a stream.
#[derive(Default, Clone)]
pub struct Facts {
    pub path: String,
    pub method: String,
    pub host: String,
    pub scheme: String,
    pub protocol: String,
    pub id: String,
    pub source: String,
    pub destination: String,
}

/// One HTTP stream's state, lent to the VM while a callback runs.
#[derive(Default)]
pub struct Stream {
    pub request: HeaderList,
    pub response: HeaderList,
    pub reply: Option<Reply>,
    pub facts: Facts,
    pub status: u16,
}

/// What a plugin config gives every VM of it.
pub struct PluginInfo {
    pub name: String,
    pub root_id: String,
    pub vm_id: String,
    pub plugin_config: Vec<u8>,
    pub vm_config: Vec<u8>,
    pub store: Arc<Store>,
}

impl PluginInfo {
    /// Envoy's prefix for a stream's log lines: `wasm log <name> <root_id> <vm_id>: `.
    pub fn log_prefix(&self) -> String {
        let mut p = String::from("wasm log");
        for part in [&self.name, &self.root_id, &self.vm_id] {
            if !part.is_empty() {
                p.push(' ');
                p.push_str(part);
            }
        }
        p
    }
}

/// A metric a plugin defined; its id is its index in `Host::metrics`.
pub enum Metric {
    Counter(Arc<Counter>),
    Gauge(Arc<Gauge>),
    Histogram(Arc<Histogram>),
}

/// The store's data of one VM.
pub struct Host {
    pub info: Arc<PluginInfo>,
    pub prefix: String,
    pub memory: Option<wasmi::Memory>,
    pub malloc: Option<wasmi::TypedFunc<i32, i32>>,
    /// The stream of the callback running now (none in root callbacks).
    pub stream: Option<Stream>,
    pub metrics: Vec<Metric>,
    /// The first host function the plugin called that Legate does not
    /// implement: the callback fails.
    pub unimplemented: Option<String>,
}

impl Host {
    pub fn new(info: Arc<PluginInfo>) -> Self {
        let prefix = info.log_prefix();
        Self { info, prefix, memory: None, malloc: None, stream: None, metrics: Vec::new(), unimplemented: None }
    }

    /// Defines a metric as Envoy names it: `wasmcustom.<name>`.
    pub fn define_metric(&mut self, kind: i32, name: &str) -> Option<u32> {
        let full = format!("wasmcustom.{name}");
        let metric = match kind {
            0 => Metric::Counter(self.info.store.counter(&full)),
            1 => Metric::Gauge(self.info.store.gauge(&full)),
            2 => Metric::Histogram(self.info.store.histogram(&full)),
            _ => return None,
        };
        self.metrics.push(metric);
        u32::try_from(self.metrics.len() - 1).ok()
    }

    /// The header map of this type (0 request headers, 2 response headers).
    pub fn map(&mut self, map_type: i32) -> Option<&mut HeaderList> {
        let s = self.stream.as_mut()?;
        match map_type {
            0 => Some(&mut s.request),
            2 => Some(&mut s.response),
            _ => None,
        }
    }

    /// A property by its path (segments joined by NUL): the value's bytes.
    pub fn property(&self, path: &[u8]) -> Option<Vec<u8>> {
        let path = String::from_utf8_lossy(path).replace('\0', ".");
        let info = &self.info;
        let plugin = match path.as_str() {
            "plugin_name" => Some(info.name.clone()),
            "plugin_root_id" => Some(info.root_id.clone()),
            "plugin_vm_id" => Some(info.vm_id.clone()),
            _ => None,
        };
        if let Some(p) = plugin {
            return Some(p.into_bytes());
        }
        let s = self.stream.as_ref()?;
        let f = &s.facts;
        let v = match path.as_str() {
            "request.path" => f.path.clone(),
            "request.url_path" => f.path.split('?').next().unwrap_or_default().to_string(),
            "request.method" => f.method.clone(),
            "request.host" => f.host.clone(),
            "request.scheme" => f.scheme.clone(),
            "request.protocol" => f.protocol.clone(),
            "request.id" => f.id.clone(),
            "source.address" => f.source.clone(),
            "destination.address" => f.destination.clone(),
            "response.code" if s.status != 0 => return Some(i64::from(s.status).to_le_bytes().to_vec()),
            _ => return None,
        };
        Some(v.into_bytes())
    }
}

/// A header map in the ABI's form: the count, each name's and value's
/// length, then each name and value followed by a NUL (numbers little-endian u32).
pub fn serialize_map(map: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(map.len() as u32).to_le_bytes());
    for (k, v) in map {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in map {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// The ABI's map form back into pairs; None when it is malformed.
pub fn deserialize_map(bytes: &[u8]) -> Option<HeaderList> {
    let word = |at: usize| -> Option<usize> {
        let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(b)).ok()
    };
    let n = word(0)?;
    let mut data = 4usize.checked_add(n.checked_mul(8)?)?;
    let mut out = Vec::with_capacity(n.min(256));
    for i in 0..n {
        let (kl, vl) = (word(4 + i * 8)?, word(8 + i * 8)?);
        let k = bytes.get(data..data.checked_add(kl)?)?;
        data = data.checked_add(kl + 1)?;
        let v = bytes.get(data..data.checked_add(vl)?)?;
        data = data.checked_add(vl + 1)?;
        out.push((String::from_utf8_lossy(k).to_ascii_lowercase(), v.to_vec()));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_goes_through_the_abi_form() {
        let map = vec![(":path".to_string(), b"/a".to_vec()), ("x".to_string(), b"".to_vec())];
        let bytes = serialize_map(&map);
        assert_eq!(&bytes[..4], &2u32.to_le_bytes());
        assert_eq!(deserialize_map(&bytes), Some(map));
        assert_eq!(deserialize_map(&bytes[..bytes.len() - 2]), None);
        assert_eq!(deserialize_map(&[255, 255, 255, 255]), None);
    }
}
