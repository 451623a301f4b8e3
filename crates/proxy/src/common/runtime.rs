//! Envoy's runtime: a snapshot of key/value overrides merged from the
//! bootstrap's `layered_runtime` layers (static, disk, admin), read by the
//! config fields that name a `runtime_key` and by the keys Envoy reads on its
//! own (the fault filter's, the listeners' connection limits).
//!
//! One snapshot serves the whole process, as Envoy's runtime loader is a
//! server-wide singleton: the loader (`server::runtime`) swaps in a new one
//! after a disk change or an admin override, and readers take whichever is
//! current without a lock. Without `layered_runtime` the snapshot is empty
//! and every reader gets its default.

use crate::common::fraction::{per_million, roll};
use arc_swap::ArcSwap;
use legate_api::pb::envoy::r#type::v3::{fractional_percent::DenominatorType, FractionalPercent};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};

/// One value as a layer holds it: the text, and what it parses as.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Entry {
    pub raw: String,
    uint: Option<u64>,
    double: Option<f64>,
    boolean: Option<bool>,
    /// A `FractionalPercent` written as a map, in parts per million.
    fraction: Option<u32>,
}

impl Entry {
    /// A number, as Envoy's `setNumberValue`: a double; a boolean when
    /// integral (non-zero is true); an integer (its floor) when not negative.
    pub fn number(raw: String, n: f64) -> Self {
        Entry {
            raw,
            double: Some(n),
            boolean: (n.fract() == 0.0 && n.abs() < f64::from(i32::MAX)).then_some(n != 0.0),
            uint: (n >= 0.0 && n <= u64::MAX as f64).then_some(n as u64),
            fraction: None,
        }
    }

    pub fn boolean(raw: String, b: bool) -> Self {
        Entry { raw, boolean: Some(b), ..Entry::default() }
    }

    /// A string: a number when it reads as one, else only text (Envoy
    /// 1.40 no longer reads booleans or fractions out of strings).
    pub fn string(raw: &str) -> Self {
        match raw.trim().parse::<f64>() {
            Ok(n) if n.is_finite() => Entry::number(raw.to_string(), n),
            _ => Entry { raw: raw.to_string(), ..Entry::default() },
        }
    }

    /// A map with `numerator` (and `denominator`): a fractional percent.
    pub fn fraction(raw: String, numerator: u32, denominator: DenominatorType) -> Self {
        let p = FractionalPercent { numerator, denominator: denominator as i32 };
        Entry { raw, fraction: Some(per_million(Some(&p))), ..Entry::default() }
    }
}

/// A layer's name and its values.
#[derive(Debug, Clone, Default)]
pub struct Layer {
    pub name: String,
    pub values: HashMap<String, Entry>,
}

/// The layers in order, and the value of each key in the last layer that
/// sets it.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub layers: Vec<Layer>,
    merged: HashMap<String, usize>,
}

impl Snapshot {
    pub fn new(layers: Vec<Layer>) -> Self {
        let mut merged = HashMap::new();
        for (i, l) in layers.iter().enumerate() {
            for k in l.values.keys() {
                merged.insert(k.clone(), i);
            }
        }
        Snapshot { layers, merged }
    }

    fn entry(&self, key: &str) -> Option<&Entry> {
        // Without runtime layers (the common case) no key is hashed.
        if self.merged.is_empty() {
            return None;
        }
        let layer = self.merged.get(key)?;
        self.layers.get(*layer)?.values.get(key)
    }

    /// The keys set by any layer.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.merged.keys().map(String::as_str)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.entry(key).map(|e| e.raw.as_str())
    }

    pub fn integer(&self, key: &str, default: u64) -> u64 {
        self.entry(key).and_then(|e| e.uint).unwrap_or(default)
    }

    pub fn double(&self, key: &str, default: f64) -> f64 {
        self.entry(key).and_then(|e| e.double).unwrap_or(default)
    }

    pub fn boolean(&self, key: &str, default: bool) -> bool {
        self.entry(key).and_then(|e| e.boolean).unwrap_or(default)
    }

    /// The chance, in parts per million, that Envoy's `featureEnabled(key,
    /// FractionalPercent)` gives: a fractional percent set for the key; else
    /// an integer read as a percentage (over 100: always); else the default.
    pub fn fraction_per_million(&self, key: &str, default_per_million: u32) -> u32 {
        let Some(e) = self.entry(key) else { return default_per_million };
        if let Some(f) = e.fraction {
            return f;
        }
        match e.uint {
            Some(n) if n > 100 => 1_000_000,
            Some(n) => n as u32 * 10_000,
            None => default_per_million,
        }
    }

    /// Envoy's `featureEnabled(key, percent)`: an integer percentage (the
    /// default when unset), capped at 100.
    pub fn percent_enabled(&self, key: &str, default_percent: u64) -> bool {
        roll(self.integer(key, default_percent).min(100) as u32 * 10_000)
    }

    pub fn is_empty(&self) -> bool {
        self.merged.is_empty()
    }
}

static CURRENT: LazyLock<ArcSwap<Snapshot>> = LazyLock::new(|| ArcSwap::from_pointee(Snapshot::default()));

/// Whether the bootstrap has runtime layers: without any, no key can ever
/// be set, and what only a runtime key limits need not be counted.
static CONFIGURED: AtomicBool = AtomicBool::new(false);

pub fn set_configured(on: bool) {
    CONFIGURED.store(on, Ordering::Relaxed);
}

pub fn configured() -> bool {
    CONFIGURED.load(Ordering::Relaxed)
}

/// The current snapshot.
pub fn snapshot() -> arc_swap::Guard<Arc<Snapshot>> {
    CURRENT.load()
}

/// Makes `s` the current snapshot (the loader, after a change).
pub fn install(s: Snapshot) {
    CURRENT.store(Arc::new(s));
}

/// A `RuntimeFractionalPercent` field: a chance, overridden by its key.
#[derive(Debug, Clone)]
pub struct RuntimeFraction {
    key: Option<Box<str>>,
    default_per_million: u32,
}

impl RuntimeFraction {
    pub fn new(f: &legate_api::pb::envoy::config::core::v3::RuntimeFractionalPercent) -> Self {
        Self::keyed(&f.runtime_key, per_million(f.default_value.as_ref()))
    }

    /// A chance under `key` (none when empty), `default_per_million` unless
    /// the runtime says otherwise.
    pub fn keyed(key: &str, default_per_million: u32) -> Self {
        RuntimeFraction { key: (!key.is_empty()).then(|| key.into()), default_per_million }
    }

    pub fn per_million(&self) -> u32 {
        match &self.key {
            Some(k) => snapshot().fraction_per_million(k, self.default_per_million),
            None => self.default_per_million,
        }
    }

    /// Draws: true with the current chance.
    pub fn roll(&self) -> bool {
        roll(self.per_million())
    }
}

/// What a typed runtime field reads from a snapshot under its key.
pub trait RuntimeRead: Copy {
    fn read(s: &Snapshot, key: &str, default: Self) -> Self;
}

impl RuntimeRead for bool {
    fn read(s: &Snapshot, key: &str, default: bool) -> bool {
        s.boolean(key, default)
    }
}

impl RuntimeRead for f64 {
    fn read(s: &Snapshot, key: &str, default: f64) -> f64 {
        s.double(key, default)
    }
}

impl RuntimeRead for u32 {
    fn read(s: &Snapshot, key: &str, default: u32) -> u32 {
        u32::try_from(s.integer(key, u64::from(default))).unwrap_or(u32::MAX)
    }
}

/// A config value overridden by its runtime key (`RuntimeFeatureFlag`,
/// `RuntimeDouble`, `RuntimeUInt32`).
#[derive(Debug, Clone)]
pub struct Keyed<T> {
    key: Option<Box<str>>,
    default: T,
}

impl<T: RuntimeRead> Keyed<T> {
    /// `default` under `key` (none when empty).
    pub fn new(key: &str, default: T) -> Self {
        Keyed { key: (!key.is_empty()).then(|| key.into()), default }
    }

    /// A value no key overrides.
    pub fn fixed(default: T) -> Self {
        Keyed { key: None, default }
    }

    pub fn value(&self) -> T {
        match &self.key {
            Some(k) => T::read(&snapshot(), k, self.default),
            None => self.default,
        }
    }
}

/// A `RuntimeFeatureFlag`.
pub type RuntimeFlag = Keyed<bool>;
/// A `RuntimeDouble`.
pub type RuntimeDouble = Keyed<f64>;
/// A `RuntimeUInt32`.
pub type RuntimeU32 = Keyed<u32>;

impl RuntimeFlag {
    /// `default` when the field (or its `default_value`) is unset.
    pub fn flag(f: Option<&legate_api::pb::envoy::config::core::v3::RuntimeFeatureFlag>, default: bool) -> Self {
        f.map_or(Keyed::fixed(default), |f| {
            Keyed::new(&f.runtime_key, f.default_value.as_ref().map_or(default, |v| v.value))
        })
    }
}

impl RuntimeDouble {
    pub fn double(f: Option<&legate_api::pb::envoy::config::core::v3::RuntimeDouble>, default: f64) -> Self {
        f.map_or(Keyed::fixed(default), |f| Keyed::new(&f.runtime_key, f.default_value))
    }
}

impl RuntimeU32 {
    pub fn uint(f: Option<&legate_api::pb::envoy::config::core::v3::RuntimeUInt32>) -> Self {
        f.map_or(Keyed::fixed(0), |f| Keyed::new(&f.runtime_key, f.default_value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(name: &str, kv: &[(&str, &str)]) -> Layer {
        Layer { name: name.into(), values: kv.iter().map(|(k, v)| (k.to_string(), Entry::string(v))).collect() }
    }

    #[test]
    fn the_last_layer_that_sets_a_key_wins_and_values_parse_as_envoy_parses_them() {
        let s = Snapshot::new(vec![
            Layer {
                name: "static".into(),
                values: HashMap::from([
                    ("a".to_string(), Entry::string("10")),
                    ("b".to_string(), Entry::boolean("true".into(), true)),
                    ("c".to_string(), Entry::string("1.5")),
                    ("d".to_string(), Entry::string("x")),
                ]),
            },
            layer("admin", &[("a", "20"), ("p", "150")]),
        ]);
        assert_eq!(s.integer("a", 0), 20);
        assert!(s.boolean("a", false), "a non-zero integer is true");
        assert!(s.boolean("b", false));
        assert_eq!(s.integer("b", 7), 7, "a boolean is not an integer");
        assert_eq!(s.double("c", 0.0), 1.5);
        assert_eq!(s.integer("c", 3), 1, "a double's floor is its integer");
        assert!(!s.boolean("d", false) && s.integer("d", 4) == 4, "text is neither");
        assert_eq!(s.get("d"), Some("x"));
        assert_eq!(s.fraction_per_million("a", 0), 200_000, "an integer is a percentage");
        assert_eq!(s.fraction_per_million("p", 0), 1_000_000, "over 100 is always");
        assert_eq!(s.fraction_per_million("unset", 5), 5);
    }

    #[test]
    fn a_fraction_entry_gives_its_own_chance() {
        let mut l = Layer { name: "s".into(), values: HashMap::new() };
        l.values.insert("f".into(), Entry::fraction("{}".into(), 5, DenominatorType::TenThousand));
        let s = Snapshot::new(vec![l]);
        assert_eq!(s.fraction_per_million("f", 0), 500);
    }
}
