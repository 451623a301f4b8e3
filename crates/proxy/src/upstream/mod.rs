//! Upstreams: clusters and their hosts, load balancing, connection pools,
//! health checking, outlier detection and circuit breakers.

pub mod breakers;
pub mod cluster;
pub mod dns;
pub mod health;
pub mod lb;
pub mod outlier;
pub mod pool;
