//! The simple HTTP cache's storage (`SimpleHttpCacheConfig`): responses in
//! memory, shared by the workers behind one lock held only to find, insert
//! or drop an entry, and bounded by bytes: the least recently used entries
//! go first once the total passes [`CAPACITY`].

use bytes::Bytes;
use http::HeaderMap;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// The most bytes (bodies, header names and values, keys) the cache holds.
pub const CAPACITY: usize = 64 << 20;

/// The largest body one entry may hold: an eighth of the capacity, so that
/// one response never empties the cache.
pub const MAX_ENTRY_BODY: usize = CAPACITY / 8;

/// One stored response.
#[derive(Debug)]
pub struct Entry {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When its headers arrived (or were last validated).
    pub stored: SystemTime,
}

impl Entry {
    fn size(&self, key: &str) -> usize {
        let headers: usize = self.headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 32).sum();
        key.len() + headers + self.body.len() + 64
    }
}

#[derive(Default)]
struct Inner {
    /// Entry, its size and its last use.
    entries: HashMap<String, (Arc<Entry>, usize, u64)>,
    /// Keys by last use, oldest first.
    order: BTreeMap<u64, String>,
    /// The `vary` header names of the last response stored under a base key.
    varies: HashMap<String, Vec<String>>,
    bytes: usize,
    tick: u64,
}

/// The store, one per filter config.
#[derive(Default)]
pub struct Store {
    inner: Mutex<Inner>,
}

impl Store {
    /// The header names the responses under `base` vary on (empty: none
    /// stored, or none varied).
    pub fn vary_of(&self, base: &str) -> Option<Vec<String>> {
        self.inner.lock().ok()?.varies.get(base).cloned()
    }

    /// The entry under `key`, now the most recently used.
    pub fn get(&self, key: &str) -> Option<Arc<Entry>> {
        let mut g = self.inner.lock().ok()?;
        let inner = &mut *g;
        inner.tick += 1;
        let tick = inner.tick;
        let (e, _, used) = inner.entries.get_mut(key)?;
        inner.order.remove(used);
        *used = tick;
        inner.order.insert(tick, key.to_string());
        Some(e.clone())
    }

    /// Stores `entry` under `key` (the base key and its vary identifier),
    /// dropping the least recently used entries past the capacity.
    pub fn insert(&self, base: &str, vary: Vec<String>, key: String, entry: Entry) {
        let size = entry.size(&key);
        if size > CAPACITY {
            return;
        }
        let Ok(mut g) = self.inner.lock() else { return };
        let inner = &mut *g;
        inner.remove(&key);
        inner.forget_vary(base);
        inner.tick += 1;
        let tick = inner.tick;
        inner.bytes += size;
        inner.order.insert(tick, key.clone());
        inner.entries.insert(key, (Arc::new(entry), size, tick));
        inner.bytes += base.len() + 64;
        inner.varies.insert(base.to_string(), vary);
        while inner.bytes > CAPACITY {
            let Some((_, oldest)) = inner.order.pop_first() else { break };
            inner.remove(&oldest);
        }
    }

    /// Bytes held now.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.inner.lock().map(|g| g.bytes).unwrap_or(0)
    }
}

impl Inner {
    /// Drops an entry, and the vary record of its base key: the other
    /// variants of that base wait for the next store of one of them (or
    /// age out), so the records stay bounded by the entries.
    fn remove(&mut self, key: &str) {
        if let Some((_, size, used)) = self.entries.remove(key) {
            self.order.remove(&used);
            self.bytes -= size;
            self.forget_vary(key.split('\0').next().unwrap_or(key));
        }
    }

    fn forget_vary(&mut self, base: &str) {
        if self.varies.remove(base).is_some() {
            self.bytes -= base.len() + 64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: usize) -> Entry {
        Entry { status: 200, headers: HeaderMap::new(), body: Bytes::from(vec![0u8; n]), stored: SystemTime::now() }
    }

    #[test]
    fn least_recently_used_go_first_past_the_capacity() {
        let s = Store::default();
        let quarter = CAPACITY / 4;
        for k in ["a", "b", "c"] {
            s.insert(k, vec![], format!("{k}\0"), entry(quarter));
        }
        assert!(s.get("a\0").is_some());
        s.insert("d", vec![], "d\0".into(), entry(quarter));
        s.insert("e", vec![], "e\0".into(), entry(quarter));
        assert!(s.get("b\0").is_none(), "b was the least recently used");
        assert!(s.get("a\0").is_some() && s.get("e\0").is_some());
        assert!(s.bytes() <= CAPACITY);
        assert!(s.vary_of("b").is_none() && s.vary_of("a").is_some());
        s.insert("big", vec![], "big\0".into(), entry(CAPACITY + 1));
        assert!(s.get("big\0").is_none());
    }
}
