//! Consistent hashing: Envoy's `RING_HASH` (ketama ring) and `MAGLEV`
//! (lookup table) load balancers. The request's hash comes from the route's
//! `hash_policy` (`crate::http::route::hash_policy`).
//!
//! Both are built exactly as Envoy builds them (xxHash64 of each host's
//! `address:port`, or its `envoy.lb` `hash_key` metadata, the same ring sizing and table filling), so a given
//! request key lands on the same host behind Legate as behind Envoy. A table
//! is built when a host set changes (not per request); a lookup is a binary
//! search on the ring or one index into the Maglev table.

use crate::upstream::host::Host;
use std::sync::Arc;
use xxhash_rust::xxh64::xxh64;

/// How a cluster hashes: ring sizes, or the Maglev table size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Hashing {
    Ring { min_size: u64, max_size: u64 },
    Maglev { table_size: u64 },
}

/// A built ring or table for one priority level's hosts.
pub enum HashTable {
    /// (hash, host index), sorted by hash.
    Ring(Vec<(u64, u32)>),
    /// Host index per slot.
    Maglev(Vec<u32>),
}

/// What a host is hashed by: its `envoy.lb` metadata's `hash_key` when it
/// is a non-empty string, as in Envoy, else its `address:port`.
fn key(h: &Host) -> String {
    let hash_key = h.metadata.as_ref().and_then(|m| m.get("envoy.lb")?.get("hash_key")?.as_str());
    match hash_key {
        Some(k) if !k.is_empty() => k.to_string(),
        _ => h.addr.to_string(),
    }
}

/// Each host's weight over the total, in the hosts' order.
fn normalized(hosts: &[Arc<Host>]) -> Vec<f64> {
    let total: f64 = hosts.iter().map(|h| h.weight as f64).sum();
    hosts.iter().map(|h| h.weight as f64 / total).collect()
}

impl HashTable {
    pub fn build(hashing: Hashing, hosts: &[Arc<Host>]) -> Option<Self> {
        if hosts.is_empty() {
            return None;
        }
        let weights = normalized(hosts);
        Some(match hashing {
            Hashing::Ring { min_size, max_size } => ring(hosts, &weights, min_size, max_size),
            Hashing::Maglev { table_size } => maglev(hosts, &weights, table_size),
        })
    }

    /// The host index for `hash`.
    pub fn lookup(&self, hash: u64) -> Option<usize> {
        match self {
            // The first entry at or after the hash, wrapping to the start
            // (Envoy's ketama search).
            HashTable::Ring(ring) => {
                let i = ring.partition_point(|(h, _)| *h < hash);
                ring.get(if i == ring.len() { 0 } else { i }).map(|(_, host)| *host as usize)
            }
            HashTable::Maglev(t) => t.get((hash % t.len() as u64) as usize).map(|h| *h as usize),
        }
    }
}

/// Envoy's ketama ring: each host hashed `address_n` for n up to its share
/// of the ring size, sorted by hash.
fn ring(hosts: &[Arc<Host>], weights: &[f64], min_size: u64, max_size: u64) -> HashTable {
    let min_w = weights.iter().copied().fold(f64::INFINITY, f64::min);
    // Enough hashes that the lightest host gets a whole number.
    let scale = ((min_w * min_size as f64).ceil() / min_w).min(max_size as f64);
    let mut ring = Vec::with_capacity(scale.ceil() as usize);
    let (mut current, mut target) = (0.0f64, 0.0f64);
    for (i, (h, w)) in hosts.iter().zip(weights).enumerate() {
        let base = key(h);
        target += scale * w;
        let mut n = 0u64;
        while current < target {
            ring.push((xxh64(format!("{base}_{n}").as_bytes(), 0), i as u32));
            n += 1;
            current += 1.0;
        }
    }
    ring.sort_by_key(|(hash, _)| *hash);
    HashTable::Ring(ring)
}

/// Envoy's Maglev table: hosts take slots in turn along their own
/// permutation of the table, as often as their weight allows.
fn maglev(hosts: &[Arc<Host>], weights: &[f64], table_size: u64) -> HashTable {
    let max_w = weights.iter().copied().fold(0.0, f64::max);
    struct Entry {
        offset: u64,
        skip: u64,
        weight: f64,
        target: f64,
        next: u64,
    }
    let mut entries: Vec<Entry> = hosts
        .iter()
        .zip(weights)
        .map(|(h, w)| {
            let k = key(h);
            Entry {
                offset: xxh64(k.as_bytes(), 0) % table_size,
                skip: xxh64(k.as_bytes(), 1) % (table_size - 1) + 1,
                weight: *w,
                target: 0.0,
                next: 0,
            }
        })
        .collect();
    let mut table = vec![u32::MAX; table_size as usize];
    let mut filled = 0u64;
    let mut iteration = 1u64;
    while filled < table_size {
        for (i, e) in entries.iter_mut().enumerate() {
            if filled >= table_size {
                break;
            }
            // A host of the largest weight takes a slot every
            // round; one of a third of it, every third round.
            if (iteration as f64) * e.weight < e.target {
                continue;
            }
            e.target += max_w;
            let mut c = (e.offset + e.skip * e.next) % table_size;
            while table[c as usize] != u32::MAX {
                e.next += 1;
                c = (e.offset + e.skip * e.next) % table_size;
            }
            table[c as usize] = i as u32;
            e.next += 1;
            filled += 1;
        }
        iteration += 1;
    }
    HashTable::Maglev(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(n: usize, weights: Option<&[u32]>) -> Vec<Arc<Host>> {
        (0..n)
            .map(|i| {
                let w = weights.map_or(1, |w| w[i]);
                Arc::new(Host::new(std::net::SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16)), String::new(), w, 0))
            })
            .collect()
    }

    fn spread(t: &HashTable, n: usize) -> Vec<usize> {
        let mut counts = vec![0; n];
        for k in 0..20_000u64 {
            counts[t.lookup(xxh64(&k.to_le_bytes(), 0)).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn ring_and_maglev_spread_keys_by_weight() {
        for hashing in [Hashing::Ring { min_size: 1024, max_size: 8 << 20 }, Hashing::Maglev { table_size: 65537 }] {
            let t = HashTable::build(hashing, &hosts(4, None)).unwrap();
            for c in spread(&t, 4) {
                assert!((4000..6000).contains(&c), "{hashing:?}: {c} of 20000 not near 5000");
            }
            let t = HashTable::build(hashing, &hosts(2, Some(&[1, 3]))).unwrap();
            let c = spread(&t, 2);
            let share = c[1] as f64 / 20_000.0;
            assert!((0.70..0.80).contains(&share), "{hashing:?}: weight 3 of 4 took {share}");
        }
    }

    #[test]
    fn maglev_table_is_full_and_ring_sized_like_envoys() {
        let Some(HashTable::Maglev(t)) = HashTable::build(Hashing::Maglev { table_size: 65537 }, &hosts(3, None))
        else {
            panic!("maglev")
        };
        assert!(t.iter().all(|h| *h < 3));
        let Some(HashTable::Ring(r)) =
            HashTable::build(Hashing::Ring { min_size: 1024, max_size: 8 << 20 }, &hosts(3, None))
        else {
            panic!("ring")
        };
        // 1024 × 3 rounded up to whole hashes for the lightest host: 1026.
        assert_eq!(r.len(), 1026);
    }
}
