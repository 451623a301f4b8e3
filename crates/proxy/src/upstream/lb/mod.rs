//! Load balancing. A cluster's policy comes from either of Envoy's two
//! forms: the `lb_policy` enum with its `*_lb_config`, or
//! `load_balancing_policy` with typed extension configs (the first policy
//! Legate supports is used, as Envoy uses the first it knows). Each policy
//! is one file implementing `policy::LoadBalancer`; adding one takes its
//! file and one line in `POLICIES`.

pub mod balancer;
pub mod edf;
pub mod hash_table;
pub mod hashing;
pub mod least_request;
pub mod least_response_time;
pub mod peak_ewma;
pub mod policy;
pub mod random;
pub mod round_robin;
pub mod worker;

use legate_api::pb::envoy::config::cluster::v3::{cluster, Cluster as PbCluster, LoadBalancingPolicy};
use policy::{LoadBalancer, Policy};

/// Every policy Legate supports.
const POLICIES: &[Policy] = &[
    round_robin::POLICY,
    least_request::POLICY,
    random::POLICY,
    hashing::RING_HASH,
    hashing::MAGLEV,
    least_response_time::POLICY,
];

/// The cluster's policy, from `load_balancing_policy` when it has one, else
/// from `lb_policy`.
pub fn compile(c: &PbCluster) -> Result<Box<dyn LoadBalancer>, String> {
    if let Some(lbp) = &c.load_balancing_policy {
        return from_policies(lbp);
    }
    let named = cluster::LbPolicy::try_from(c.lb_policy).ok();
    match POLICIES.iter().find(|p| named.is_some() && p.lb_policy == named) {
        Some(p) => (p.from_cluster)(c),
        None => Err("lb_policy: only ROUND_ROBIN, LEAST_REQUEST, RANDOM, RING_HASH and MAGLEV are supported".into()),
    }
}

fn from_policies(lbp: &LoadBalancingPolicy) -> Result<Box<dyn LoadBalancer>, String> {
    for p in &lbp.policies {
        let Some(any) = p.typed_extension_config.as_ref().and_then(|t| t.typed_config.as_ref()) else { continue };
        let ty = legate_api::any::type_name(any);
        if let Some(policy) = POLICIES.iter().find(|p| p.type_name == ty) {
            return (policy.from_typed)(any);
        }
    }
    Err("load_balancing_policy: none of the policies is one Legate supports (round_robin, least_request, random, ring_hash, maglev, legate.lb.v1.LeastResponseTime)".into())
}
