//! What a load-balancing policy is: the `LoadBalancer` trait every policy of
//! this folder implements, what a pick sees, and a policy's registry entry.

use crate::upstream::host::{Host, SlowStart};
use crate::upstream::host_set::{HostSet, Level};
use crate::upstream::lb::hash_table::Hashing;
use crate::upstream::lb::worker::WorkerStates;
use legate_api::pb::envoy::config::cluster::v3::{cluster, Cluster as PbCluster};
use legate_api::pb::google::protobuf::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a policy's pick sees: the host set, the priority level the request
/// goes to (with at least two hosts), the request's hash, and the
/// per-worker state it may lock.
pub struct PickContext<'a> {
    pub set: &'a Arc<HostSet>,
    pub level: &'a Level,
    pub level_index: usize,
    pub hash: Option<u64>,
    pub workers: &'a WorkerStates,
}

/// A load-balancing policy. A pick must not allocate; state kept between
/// picks lives in the per-worker `WorkerLb`, locked only when needed.
pub trait LoadBalancer: Send + Sync {
    /// One of `at.level.hosts` for a request.
    fn pick(&self, at: &PickContext<'_>) -> Option<Arc<Host>>;

    /// The index of one of a locality's `hosts` (locality-weighted clusters,
    /// once the locality is chosen); `next` is this worker's round-robin
    /// position in the locality. By default, a random draw.
    fn pick_in_locality(&self, hosts: &[Arc<Host>], next: &mut usize) -> usize {
        let _ = next;
        rand::random_range(0..hosts.len())
    }

    /// The consistent-hash table each level needs (RING_HASH, MAGLEV).
    fn hashing(&self) -> Option<Hashing> {
        None
    }

    /// Whether the policy learns from response times (`observe`): only
    /// then are upstream requests timed for it.
    fn times_responses(&self) -> bool {
        false
    }

    /// An upstream request to `host` got its response head (or failed)
    /// `rtt` after it was sent.
    fn observe(&self, host: &Host, rtt: Duration, now: Instant) {
        let _ = (host, rtt, now);
    }

    /// `slow_start_config`, which the host set tracks windows for.
    fn slow_start(&self) -> Option<SlowStart> {
        None
    }
}

/// A policy's entry in the registry (`lb::POLICIES`): how a cluster names it
/// in each of Envoy's two forms, and how it reads each form's config.
pub struct Policy {
    /// Its `lb_policy` enum value (with `*_lb_config`); none for Legate's
    /// own policies, named only in `load_balancing_policy`.
    pub lb_policy: Option<cluster::LbPolicy>,
    /// Its `load_balancing_policy` typed extension config's message name.
    pub type_name: &'static str,
    pub from_cluster: fn(&PbCluster) -> Result<Box<dyn LoadBalancer>, String>,
    pub from_typed: fn(&Any) -> Result<Box<dyn LoadBalancer>, String>,
}
