//! The bootstrap's `layered_runtime`: builds the runtime snapshot from its
//! static, disk, admin and RTDS layers, rebuilds it when the disk layer's
//! symlink is swapped, `/runtime_modify` changes the admin layer or the xDS
//! client (`server/xds`) brings an RTDS layer's `Runtime` resource, and
//! answers the admin endpoints `/runtime` and `/runtime_modify` with Envoy's
//! shapes. An RTDS layer holds its place in the layer order from the start,
//! empty until its first resource arrives, as Envoy's does.
//!
//! Envoy watches a disk layer's `symlink_root` for a rename onto it (the
//! atomic swap the docs prescribe); Legate checks where the link points once
//! a second, which sees the same swap without a platform file watcher.

use crate::common::runtime::{self, Entry, Layer, Snapshot};
use crate::stats::{Counter, Gauge, Store};
use legate_api::pb::envoy::config::bootstrap::v3::{runtime_layer::LayerSpecifier, LayeredRuntime};
use legate_api::pb::envoy::config::core::v3::ConfigSource;
use legate_api::pb::envoy::r#type::v3::fractional_percent::DenominatorType;
use legate_api::pb::google::protobuf::{value::Kind, Struct, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How deep a disk layer's folders may nest (Envoy's `MaxWalkDepth`).
const MAX_DEPTH: u32 = 16;

/// Envoy's `runtime.*` stats.
struct Stats {
    load_success: Arc<Counter>,
    load_error: Arc<Counter>,
    override_dir_exists: Arc<Counter>,
    override_dir_not_exists: Arc<Counter>,
    num_keys: Arc<Gauge>,
    num_layers: Arc<Gauge>,
    admin_overrides_active: Arc<Gauge>,
}

enum Source {
    Static(Layer),
    Disk {
        root: PathBuf,
        path: PathBuf,
    },
    Admin,
    /// An RTDS layer: the `Runtime` resource of this name, from `config`.
    Rtds {
        resource: String,
        config: ConfigSource,
    },
}

/// The configured layers, the admin layer's overrides and what each RTDS
/// layer last received (by resource name).
pub struct Loader {
    layers: Vec<(String, Source)>,
    admin: Mutex<BTreeMap<String, String>>,
    rtds: Mutex<HashMap<String, HashMap<String, Entry>>>,
    stats: Stats,
}

impl Loader {
    /// Checks the layers as Envoy does (unique names, one admin layer at
    /// most), loads them and installs the first snapshot. `service_cluster`
    /// is the local cluster a disk layer may append to its path.
    pub fn start(cfg: Option<&LayeredRuntime>, store: &Store, service_cluster: &str) -> Result<Arc<Self>, String> {
        let mut names = HashSet::new();
        let mut layers = Vec::new();
        let mut admin_layers = 0;
        for (i, l) in cfg.map(|c| c.layers.as_slice()).unwrap_or_default().iter().enumerate() {
            let path = format!("layered_runtime.layers[{i}]");
            if !names.insert(l.name.clone()) {
                return Err(format!("{path}.name: duplicate layer name: {}", l.name));
            }
            let source = match &l.layer_specifier {
                Some(LayerSpecifier::StaticLayer(s)) => {
                    Source::Static(static_layer(&l.name, s, &format!("{path}.static_layer"))?)
                }
                Some(LayerSpecifier::DiskLayer(d)) => {
                    let mut p = Path::new(&d.symlink_root).join(&d.subdirectory);
                    if d.append_service_cluster {
                        p = p.join(service_cluster);
                    }
                    Source::Disk { root: PathBuf::from(&d.symlink_root), path: p }
                }
                Some(LayerSpecifier::AdminLayer(_)) => {
                    admin_layers += 1;
                    if admin_layers > 1 {
                        return Err(format!(
                            "{path}: too many admin layers specified in LayeredRuntime, at most one may be specified"
                        ));
                    }
                    Source::Admin
                }
                Some(LayerSpecifier::RtdsLayer(r)) => Source::Rtds {
                    resource: r.name.clone(),
                    config: r
                        .rtds_config
                        .clone()
                        .ok_or_else(|| format!("{path}.rtds_layer.rtds_config: value is required"))?,
                },
                None => return Err(format!("{path}: layer specifier not set")),
            };
            layers.push((l.name.clone(), source));
        }
        let c = |n: &str| store.counter(&format!("runtime.{n}"));
        let g = |n: &str| store.gauge(&format!("runtime.{n}"));
        let stats = Stats {
            load_success: c("load_success"),
            load_error: c("load_error"),
            override_dir_exists: c("override_dir_exists"),
            override_dir_not_exists: c("override_dir_not_exists"),
            num_keys: g("num_keys"),
            num_layers: g("num_layers"),
            admin_overrides_active: g("admin_overrides_active"),
        };
        // Envoy's counters as it shows them.
        let _ = (c("deprecated_feature_use"), g("deprecated_feature_seen_since_process_start"));
        if layers.iter().any(|(_, s)| matches!(s, Source::Rtds { .. })) {
            // The RTDS subscription's stats, as Envoy makes them when it starts.
            for n in ["update_attempt", "update_success", "update_rejected", "update_failure", "init_fetch_timeout"] {
                let _ = c(n);
            }
        }
        runtime::set_configured(!layers.is_empty());
        let loader =
            Arc::new(Loader { layers, admin: Mutex::new(BTreeMap::new()), rtds: Mutex::new(HashMap::new()), stats });
        // Envoy builds its snapshot twice while starting (at creation and
        // when the workers start), and counts both loads.
        loader.reload();
        loader.reload();
        Ok(loader)
    }

    /// Builds the snapshot from the layers as they are now and installs it.
    pub fn reload(&self) {
        let mut layers = Vec::with_capacity(self.layers.len());
        let (mut disk_layers, mut errors) = (0, 0);
        for (name, source) in &self.layers {
            match source {
                Source::Static(l) => layers.push(l.clone()),
                Source::Disk { path, .. } if path.is_dir() => {
                    let mut values = HashMap::new();
                    match walk(path, "", 1, &mut values) {
                        Ok(()) => {
                            disk_layers += 1;
                            layers.push(Layer { name: name.clone(), values });
                        }
                        Err(e) => {
                            errors += 1;
                            tracing::debug!("runtime layer {name}: {e}");
                        }
                    }
                }
                Source::Disk { .. } => {}
                Source::Admin => {
                    let admin = self.admin.lock().unwrap_or_else(|e| e.into_inner());
                    let values = admin.iter().map(|(k, v)| (k.clone(), from_yaml_text(v))).collect();
                    layers.push(Layer { name: name.clone(), values });
                }
                Source::Rtds { resource, .. } => {
                    let rtds = self.rtds.lock().unwrap_or_else(|e| e.into_inner());
                    let values = rtds.get(resource).cloned().unwrap_or_default();
                    layers.push(Layer { name: name.clone(), values });
                }
            }
        }
        self.stats.num_layers.set(layers.len() as i64);
        if errors == 0 { &self.stats.load_success } else { &self.stats.load_error }.inc();
        if disk_layers > 1 { &self.stats.override_dir_exists } else { &self.stats.override_dir_not_exists }.inc();
        let snapshot = Snapshot::new(layers);
        self.stats.num_keys.set(snapshot.keys().count() as i64);
        runtime::install(snapshot);
    }

    /// The RTDS layers: each one's resource name and config source, in
    /// layer order.
    pub fn rtds_layers(&self) -> impl Iterator<Item = (&str, &ConfigSource)> {
        self.layers.iter().filter_map(|(_, s)| match s {
            Source::Rtds { resource, config } => Some((resource.as_str(), config)),
            _ => None,
        })
    }

    /// The `Runtime` resource names the RTDS layers subscribe to.
    pub fn rtds_names(&self) -> std::collections::BTreeSet<String> {
        self.rtds_layers().map(|(n, _)| n.to_string()).collect()
    }

    /// Reads the RTDS resources `resources` (name, layer) as Envoy reads
    /// a layer's `Struct`; all or nothing: a value that cannot be read
    /// refuses the whole update and the layers keep what they had.
    pub fn set_rtds(&self, resources: &[(String, Struct)]) -> Result<(), String> {
        let mut read = Vec::with_capacity(resources.len());
        for (name, s) in resources {
            let layer = static_layer(name, s, &format!("Runtime '{name}'"))?;
            read.push((name.clone(), layer.values));
        }
        self.rtds.lock().unwrap_or_else(|e| e.into_inner()).extend(read);
        self.reload();
        Ok(())
    }

    /// Whether the RTDS layer of resource `name` has received one.
    pub fn rtds_received(&self, name: &str) -> bool {
        self.rtds.lock().unwrap_or_else(|e| e.into_inner()).contains_key(name)
    }

    /// An RTDS resource removed (delta xDS): its layer is empty again.
    pub fn clear_rtds(&self, name: &str) {
        let removed = self.rtds.lock().unwrap_or_else(|e| e.into_inner()).remove(name).is_some();
        if removed {
            self.reload();
        }
    }

    /// `/runtime_modify`: sets (or, with an empty value, removes) admin
    /// overrides. Err is (status, text) as Envoy answers.
    pub fn modify(&self, params: &[(String, String)]) -> Result<(), (u16, &'static str)> {
        if params.is_empty() {
            return Err((
                400,
                "usage: /runtime_modify?key1=value1&key2=value2&keyN=valueN\n       or send the parameters as form values\nuse an empty value to remove a previously added override",
            ));
        }
        if !self.layers.iter().any(|(_, s)| matches!(s, Source::Admin)) {
            return Err((503, "No admin layer specified"));
        }
        {
            let mut admin = self.admin.lock().unwrap_or_else(|e| e.into_inner());
            for (k, v) in params {
                if v.is_empty() {
                    admin.remove(k);
                } else {
                    admin.insert(k.clone(), v.clone());
                }
            }
            self.stats.admin_overrides_active.set(i64::from(!admin.is_empty()));
        }
        self.reload();
        Ok(())
    }

    /// Reloads whenever a disk layer's symlink is pointed elsewhere.
    pub async fn watch_disk(self: Arc<Self>) {
        let roots: Vec<PathBuf> = self
            .layers
            .iter()
            .filter_map(|(_, s)| match s {
                Source::Disk { root, .. } => Some(root.clone()),
                _ => None,
            })
            .collect();
        if roots.is_empty() {
            return;
        }
        let target = |r: &PathBuf| std::fs::read_link(r).ok();
        let mut seen: Vec<_> = roots.iter().map(target).collect();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let now: Vec<_> = roots.iter().map(target).collect();
            if now != seen {
                seen = now;
                self.reload();
            }
        }
    }
}

/// `/runtime`: the layers' names, and every key with its value in each
/// layer ("" where a layer does not set it) and its final value.
pub fn admin_json() -> serde_json::Value {
    let s = runtime::snapshot();
    let mut entries = serde_json::Map::new();
    let mut keys: Vec<&str> = s.keys().collect();
    keys.sort_unstable();
    for k in keys {
        let layer_values: Vec<&str> = s.layers.iter().map(|l| l.values.get(k).map_or("", |e| e.raw.as_str())).collect();
        entries.insert(
            k.to_string(),
            serde_json::json!({"final_value": s.get(k).unwrap_or(""), "layer_values": layer_values}),
        );
    }
    let layers: Vec<&str> = s.layers.iter().map(|l| l.name.as_str()).collect();
    serde_json::json!({"layers": layers, "entries": entries})
}

/// A static layer: nested maps become dotted keys; a map with `numerator`
/// or `denominator` (or an empty one) is one value, a fractional percent.
fn static_layer(name: &str, s: &Struct, path: &str) -> Result<Layer, String> {
    let mut values = HashMap::new();
    for (k, v) in &s.fields {
        walk_value(v, k, &mut values).map_err(|e| format!("{path}: {e}"))?;
    }
    Ok(Layer { name: name.to_string(), values })
}

fn walk_value(v: &Value, key: &str, out: &mut HashMap<String, Entry>) -> Result<(), String> {
    match &v.kind {
        Some(Kind::StructValue(s))
            if !(s.fields.is_empty() || s.fields.contains_key("numerator") || s.fields.contains_key("denominator")) =>
        {
            for (k, v) in &s.fields {
                walk_value(v, &format!("{key}.{k}"), out)?;
            }
            Ok(())
        }
        Some(Kind::NullValue(_) | Kind::ListValue(_)) | None => Err(format!("invalid runtime entry value for {key}")),
        Some(_) => {
            out.insert(key.to_string(), from_value(v, None));
            Ok(())
        }
    }
}

/// Envoy's `createEntry` from a typed value; `raw` is the text it was read
/// from, if any.
fn from_value(v: &Value, raw: Option<&str>) -> Entry {
    match &v.kind {
        Some(Kind::NumberValue(n)) => Entry::number(raw.map_or_else(|| six_digits(*n), str::to_string), *n),
        Some(Kind::BoolValue(b)) => Entry::boolean(raw.map_or_else(|| b.to_string(), str::to_string), *b),
        Some(Kind::StructValue(s)) => {
            let raw = raw.map_or_else(|| struct_text(s), str::to_string);
            match fraction(s) {
                Some((n, d)) => Entry::fraction(raw, n, d),
                None => Entry::string(&raw),
            }
        }
        Some(Kind::StringValue(s)) => Entry::string(raw.unwrap_or(s)),
        _ => Entry::string(raw.unwrap_or_default()),
    }
}

/// The numerator and denominator of a map, when it is a fractional percent.
fn fraction(s: &Struct) -> Option<(u32, DenominatorType)> {
    let mut n = 0;
    let mut d = DenominatorType::Hundred;
    for (k, v) in &s.fields {
        match (k.as_str(), &v.kind) {
            ("numerator", Some(Kind::NumberValue(x))) => n = *x as u32,
            ("numerator", _) => {}
            ("denominator", Some(Kind::StringValue(x))) => d = DenominatorType::from_str_name(x)?,
            _ => return None,
        }
    }
    Some((n, d))
}

/// A map's text in /runtime (Envoy shows the protobuf's debug form; Legate
/// its JSON).
fn struct_text(s: &Struct) -> String {
    let m: serde_json::Map<String, serde_json::Value> = s
        .fields
        .iter()
        .map(|(k, v)| {
            let j = match &v.kind {
                Some(Kind::NumberValue(n)) => serde_json::json!(n),
                Some(Kind::StringValue(x)) => serde_json::json!(x),
                Some(Kind::BoolValue(b)) => serde_json::json!(b),
                _ => serde_json::Value::Null,
            };
            (k.clone(), j)
        })
        .collect();
    serde_json::Value::Object(m).to_string()
}

/// A disk or admin value: its text read as YAML (a number, a boolean, a
/// map for a fractional percent, or else a string), as Envoy reads it.
fn from_yaml_text(text: &str) -> Entry {
    let Ok(y) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text) else { return Entry::string(text) };
    let kind = match y {
        serde_yaml_ng::Value::Bool(b) => Kind::BoolValue(b),
        serde_yaml_ng::Value::Number(n) => match n.as_f64() {
            Some(f) => Kind::NumberValue(f),
            None => return Entry::string(text),
        },
        serde_yaml_ng::Value::Mapping(m) => {
            let mut fields = HashMap::new();
            for (k, v) in m {
                let (Some(k), v) = (k.as_str(), v) else { return Entry::string(text) };
                let v = match v {
                    serde_yaml_ng::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
                    serde_yaml_ng::Value::String(s) => Kind::StringValue(s),
                    _ => return Entry::string(text),
                };
                fields.insert(k.to_string(), Value { kind: Some(v) });
            }
            Kind::StructValue(Struct { fields })
        }
        _ => return Entry::string(text),
    };
    from_value(&Value { kind: Some(kind) }, Some(text))
}

/// A number as Envoy prints a double (`absl::StrCat`: six significant digits).
fn six_digits(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e6 {
        return format!("{}", n as i64);
    }
    let exp = n.abs().log10().floor() as i32;
    if (-5..6).contains(&exp) {
        let decimals = (5 - exp).max(0) as usize;
        let s = format!("{n:.decimals$}");
        let s = if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.') } else { &s };
        return s.to_string();
    }
    let s = format!("{n:.5e}");
    let (mantissa, e) = s.split_once('e').unwrap_or((&s, "0"));
    let mantissa = if mantissa.contains('.') { mantissa.trim_end_matches('0').trim_end_matches('.') } else { mantissa };
    let e: i32 = e.parse().unwrap_or(0);
    format!("{mantissa}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs())
}

/// A disk layer's folder: each file a key (its path joined with dots), its
/// lines without `#` comments the value, trailing space trimmed.
fn walk(dir: &Path, prefix: &str, depth: u32, out: &mut HashMap<String, Entry>) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("walk recursion depth exceeded {MAX_DEPTH}"));
    }
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let key = if prefix.is_empty() { name } else { format!("{prefix}.{name}") };
        let path = entry.path();
        let meta = std::fs::metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if meta.is_dir() {
            walk(&path, &key, depth + 1, out)?;
        } else if meta.is_file() {
            let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let lines: Vec<&str> = text.split('\n').filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
            let value = lines.join("\n");
            let value = value.trim_end();
            out.insert(key, from_yaml_text(value));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_print_as_envoy_prints_a_double() {
        assert_eq!(six_digits(10000.0), "10000");
        assert_eq!(six_digits(1.5), "1.5");
        assert_eq!(six_digits(0.25), "0.25");
        assert_eq!(six_digits(1234567.0), "1.23457e+06");
    }

    #[test]
    fn yaml_text_reads_as_numbers_booleans_fractions_and_strings() {
        let s = Snapshot::new(vec![Layer {
            name: "admin".into(),
            values: [("n", "50"), ("b", "false"), ("f", "{numerator: 5, denominator: TEN_THOUSAND}"), ("s", "x y")]
                .iter()
                .map(|(k, v)| (k.to_string(), from_yaml_text(v)))
                .collect(),
        }]);
        assert_eq!(s.integer("n", 0), 50);
        assert!(!s.boolean("b", true));
        assert_eq!(s.fraction_per_million("f", 0), 500);
        assert_eq!(s.get("s"), Some("x y"));
        assert_eq!(s.get("n"), Some("50"), "the raw text is kept");
    }
}
