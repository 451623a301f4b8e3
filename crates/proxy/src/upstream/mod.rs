//! Upstreams: clusters and their hosts, load balancing, connection pools,
//! health checking, outlier detection and circuit breakers.

pub mod breakers;
pub mod clock;
pub mod cluster;
pub mod cluster_stats;
pub mod connection;
pub mod dns;
pub mod endpoints;
pub mod error;
pub mod health;
pub mod host;
pub mod host_set;
pub mod lb;
pub mod membership;
pub mod outlier;
pub mod pool;
pub mod protocol;
pub mod tasks;
pub mod worker_pools;
