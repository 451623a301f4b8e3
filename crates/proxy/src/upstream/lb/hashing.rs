//! RING_HASH and MAGLEV: the request's hash (from the route's
//! `hash_policy`, or a random one) looked up in the level's ring or table
//! (`hash_table`), built with the host set.

use crate::upstream::host::Host;
use crate::upstream::lb::hash_table::Hashing;
use crate::upstream::lb::policy::{LoadBalancer, PickContext, Policy};
use legate_api::pb::envoy::config::cluster::v3::{cluster, Cluster as PbCluster};
use legate_api::pb::envoy::extensions::load_balancing_policies::{maglev, ring_hash};
use legate_api::pb::google::protobuf::Any;
use std::sync::Arc;

pub const RING_HASH: Policy = Policy {
    lb_policy: Some(cluster::LbPolicy::RingHash),
    type_name: "envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash",
    from_cluster: ring_from_cluster,
    from_typed: ring_from_typed,
};

pub const MAGLEV: Policy = Policy {
    lb_policy: Some(cluster::LbPolicy::Maglev),
    type_name: "envoy.extensions.load_balancing_policies.maglev.v3.Maglev",
    from_cluster: maglev_from_cluster,
    from_typed: maglev_from_typed,
};

const RING_MIN: u64 = 1024;
const RING_MAX: u64 = 8 << 20;
const MAGLEV_SIZE: u64 = 65537;

pub struct ConsistentHash {
    hashing: Hashing,
}

fn boxed(hashing: Hashing) -> Result<Box<dyn LoadBalancer>, String> {
    Ok(Box::new(ConsistentHash { hashing }))
}

fn ring_from_cluster(c: &PbCluster) -> Result<Box<dyn LoadBalancer>, String> {
    let cfg = match &c.lb_config {
        Some(cluster::LbConfig::RingHashLbConfig(r)) => Some(r),
        _ => None,
    };
    if cfg.is_some_and(|r| r.hash_function != 0) {
        return Err("ring_hash_lb_config.hash_function: only XX_HASH is supported".into());
    }
    boxed(Hashing::Ring {
        min_size: cfg.and_then(|r| r.minimum_ring_size.map(|v| v.value)).unwrap_or(RING_MIN),
        max_size: cfg.and_then(|r| r.maximum_ring_size.map(|v| v.value)).unwrap_or(RING_MAX),
    })
}

fn ring_from_typed(any: &Any) -> Result<Box<dyn LoadBalancer>, String> {
    let r: ring_hash::v3::RingHash = legate_api::any::unpack(any)?;
    if r.hash_function != 0 {
        return Err("load_balancing_policy: RingHash hash_function: only XX_HASH is supported".into());
    }
    boxed(Hashing::Ring {
        min_size: r.minimum_ring_size.map_or(RING_MIN, |v| v.value),
        max_size: r.maximum_ring_size.map_or(RING_MAX, |v| v.value),
    })
}

fn maglev_from_cluster(c: &PbCluster) -> Result<Box<dyn LoadBalancer>, String> {
    maglev_of_size(match &c.lb_config {
        Some(cluster::LbConfig::MaglevLbConfig(m)) => m.table_size.map_or(MAGLEV_SIZE, |v| v.value),
        _ => MAGLEV_SIZE,
    })
}

fn maglev_from_typed(any: &Any) -> Result<Box<dyn LoadBalancer>, String> {
    let m: maglev::v3::Maglev = legate_api::any::unpack(any)?;
    maglev_of_size(m.table_size.map_or(MAGLEV_SIZE, |v| v.value))
}

/// Maglev's permutation only covers the table when its size is prime, so
/// Envoy refuses any other size; so does Legate (a size of 0 or 1 would
/// also divide by zero while building the table).
fn maglev_of_size(table_size: u64) -> Result<Box<dyn LoadBalancer>, String> {
    if !is_prime(table_size) {
        return Err("The table size of maglev must be prime number".into());
    }
    boxed(Hashing::Maglev { table_size })
}

/// Trial division; table sizes are at most 5,000,011 (Envoy's bound).
fn is_prime(n: u64) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d))
}

impl LoadBalancer for ConsistentHash {
    /// A request without a hash gets a random one, as in Envoy.
    fn pick(&self, at: &PickContext<'_>) -> Option<Arc<Host>> {
        let h = at.hash.unwrap_or_else(rand::random);
        at.level.table.as_ref()?.lookup(h).and_then(|i| at.level.hosts.get(i)).cloned()
    }

    fn hashing(&self) -> Option<Hashing> {
        Some(self.hashing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maglev_table_sizes_must_be_prime() {
        assert!(maglev_of_size(65537).is_ok());
        assert!(maglev_of_size(5_000_011).is_ok());
        for bad in [0, 1, 8, 100, 65536] {
            assert_eq!(maglev_of_size(bad).err().as_deref(), Some("The table size of maglev must be prime number"));
        }
    }
}
