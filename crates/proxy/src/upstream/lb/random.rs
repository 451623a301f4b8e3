//! RANDOM: a uniform draw among the level's (or the locality's) hosts.

use crate::upstream::host::Host;
use crate::upstream::lb::policy::{LoadBalancer, PickContext, Policy};
use legate_api::pb::envoy::config::cluster::v3::{cluster, Cluster as PbCluster};
use legate_api::pb::envoy::extensions::load_balancing_policies::random::v3 as typed;
use legate_api::pb::google::protobuf::Any;
use std::sync::Arc;

pub const POLICY: Policy = Policy {
    lb_policy: Some(cluster::LbPolicy::Random),
    type_name: "envoy.extensions.load_balancing_policies.random.v3.Random",
    from_cluster,
    from_typed,
};

pub struct Random;

fn from_cluster(_: &PbCluster) -> Result<Box<dyn LoadBalancer>, String> {
    Ok(Box::new(Random))
}

fn from_typed(any: &Any) -> Result<Box<dyn LoadBalancer>, String> {
    let _: typed::Random = legate_api::any::unpack(any)?;
    Ok(Box::new(Random))
}

impl LoadBalancer for Random {
    fn pick(&self, at: &PickContext<'_>) -> Option<Arc<Host>> {
        let hosts = &at.level.hosts;
        Some(hosts[rand::random_range(0..hosts.len())].clone())
    }
}
