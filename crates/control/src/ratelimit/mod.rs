//! Global rate limiting served by the control plane itself:
//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit` on the
//! xDS address, from the `RateLimit` resources (`spec`: a domain and its
//! descriptors with limits, as the reference rate limit service's config
//! reads), so a fleet's proxies share one limit with no extra service.
//! `limits` finds a request descriptor's limit; `counters` counts hits in
//! fixed windows; `shared` adds the other replicas' counts on etcd.

pub mod counters;
pub mod limits;
pub mod service;
pub mod shared;
pub mod spec;
