//! A cluster's load-balancing choice, from either of Envoy's two forms: the
//! `lb_policy` enum with its `*_lb_config`, or `load_balancing_policy` with
//! typed extension configs (the first policy Legate supports is used, as
//! Envoy uses the first it knows).

pub mod hash_table;

use crate::upstream::cluster::LbPolicy;
use crate::upstream::lb::hash_table::Hashing;
use legate_api::pb::envoy::config::cluster::v3::{cluster, Cluster as PbCluster};
use legate_api::pb::envoy::extensions::load_balancing_policies as policies;

/// What the balancer needs besides the hosts.
pub struct LbChoice {
    pub policy: LbPolicy,
    pub hashing: Option<Hashing>,
    pub choice_count: u32,
    pub active_request_bias: f64,
    pub slow_start: Option<crate::upstream::host::SlowStart>,
}

const RING_MIN: u64 = 1024;
const RING_MAX: u64 = 8 << 20;
const MAGLEV_SIZE: u64 = 65537;

impl LbChoice {
    fn simple(policy: LbPolicy) -> Self {
        Self { policy, hashing: None, choice_count: 2, active_request_bias: 1.0, slow_start: None }
    }

    pub fn compile(c: &PbCluster) -> Result<Self, String> {
        if let Some(lbp) = &c.load_balancing_policy {
            return Self::from_policies(lbp);
        }
        Ok(match cluster::LbPolicy::try_from(c.lb_policy) {
            Ok(cluster::LbPolicy::RoundRobin) => Self {
                slow_start: match &c.lb_config {
                    Some(cluster::LbConfig::RoundRobinLbConfig(r)) => {
                        r.slow_start_config.as_ref().and_then(crate::upstream::host::SlowStart::compile)
                    }
                    _ => None,
                },
                ..Self::simple(LbPolicy::RoundRobin)
            },
            Ok(cluster::LbPolicy::Random) => Self::simple(LbPolicy::Random),
            Ok(cluster::LbPolicy::LeastRequest) => {
                let mut choice = Self::simple(LbPolicy::LeastRequest);
                if let Some(cluster::LbConfig::LeastRequestLbConfig(l)) = &c.lb_config {
                    choice.choice_count = l.choice_count.map_or(2, |v| v.value);
                    choice.active_request_bias = l.active_request_bias.as_ref().map_or(1.0, |b| b.default_value);
                    choice.slow_start =
                        l.slow_start_config.as_ref().and_then(crate::upstream::host::SlowStart::compile);
                }
                choice
            }
            Ok(cluster::LbPolicy::RingHash) => {
                let cfg = match &c.lb_config {
                    Some(cluster::LbConfig::RingHashLbConfig(r)) => Some(r),
                    _ => None,
                };
                if cfg.is_some_and(|r| r.hash_function != 0) {
                    return Err("ring_hash_lb_config.hash_function: only XX_HASH is supported".into());
                }
                Self::hashing(Hashing::Ring {
                    min_size: cfg.and_then(|r| r.minimum_ring_size.map(|v| v.value)).unwrap_or(RING_MIN),
                    max_size: cfg.and_then(|r| r.maximum_ring_size.map(|v| v.value)).unwrap_or(RING_MAX),
                })
            }
            Ok(cluster::LbPolicy::Maglev) => Self::hashing(Hashing::Maglev {
                table_size: match &c.lb_config {
                    Some(cluster::LbConfig::MaglevLbConfig(m)) => m.table_size.map_or(MAGLEV_SIZE, |v| v.value),
                    _ => MAGLEV_SIZE,
                },
            }),
            _ => {
                return Err(
                    "lb_policy: only ROUND_ROBIN, LEAST_REQUEST, RANDOM, RING_HASH and MAGLEV are supported".into()
                )
            }
        })
    }

    fn hashing(h: Hashing) -> Self {
        Self { hashing: Some(h), ..Self::simple(LbPolicy::Hashing) }
    }

    fn from_policies(lbp: &legate_api::pb::envoy::config::cluster::v3::LoadBalancingPolicy) -> Result<Self, String> {
        use legate_api::any::unpack;
        for p in &lbp.policies {
            let Some(any) = p.typed_extension_config.as_ref().and_then(|t| t.typed_config.as_ref()) else { continue };
            let ty = legate_api::any::type_name(any);
            let choice = match ty {
                "envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin" => {
                    let r: policies::round_robin::v3::RoundRobin = unpack(any)?;
                    Self {
                        slow_start: r
                            .slow_start_config
                            .as_ref()
                            .and_then(crate::upstream::host::SlowStart::compile_typed),
                        ..Self::simple(LbPolicy::RoundRobin)
                    }
                }
                "envoy.extensions.load_balancing_policies.random.v3.Random" => {
                    let _: policies::random::v3::Random = unpack(any)?;
                    Self::simple(LbPolicy::Random)
                }
                "envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest" => {
                    let l: policies::least_request::v3::LeastRequest = unpack(any)?;
                    Self {
                        choice_count: l.choice_count.map_or(2, |v| v.value),
                        active_request_bias: l.active_request_bias.as_ref().map_or(1.0, |b| b.default_value),
                        slow_start: l
                            .slow_start_config
                            .as_ref()
                            .and_then(crate::upstream::host::SlowStart::compile_typed),
                        ..Self::simple(LbPolicy::LeastRequest)
                    }
                }
                "envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash" => {
                    let r: policies::ring_hash::v3::RingHash = unpack(any)?;
                    if r.hash_function != 0 {
                        return Err("load_balancing_policy: RingHash hash_function: only XX_HASH is supported".into());
                    }
                    Self::hashing(Hashing::Ring {
                        min_size: r.minimum_ring_size.map_or(RING_MIN, |v| v.value),
                        max_size: r.maximum_ring_size.map_or(RING_MAX, |v| v.value),
                    })
                }
                "envoy.extensions.load_balancing_policies.maglev.v3.Maglev" => {
                    let m: policies::maglev::v3::Maglev = unpack(any)?;
                    Self::hashing(Hashing::Maglev { table_size: m.table_size.map_or(MAGLEV_SIZE, |v| v.value) })
                }
                _ => continue,
            };
            return Ok(choice);
        }
        Err("load_balancing_policy: none of the policies is one Legate supports (round_robin, least_request, random, ring_hash, maglev)".into())
    }
}
