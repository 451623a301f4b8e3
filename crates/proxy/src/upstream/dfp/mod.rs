//! The dynamic forward proxy's shared DNS cache (Envoy's
//! `envoy.extensions.common.dynamic_forward_proxy.v3.DnsCacheConfig`): the
//! settings compiled from a `dns_cache_config`, and the caches by name, so
//! the HTTP filter and the `envoy.clusters.dynamic_forward_proxy` cluster
//! naming the same cache share its hosts, as Envoy's cache manager does.

pub mod cache;
pub mod cluster;

use crate::stats::Store;
use legate_api::pb::envoy::config::cluster::v3::cluster::DnsLookupFamily;
use legate_api::pb::envoy::extensions::common::dynamic_forward_proxy::v3::DnsCacheConfig;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

pub use cache::{DnsCache, Load};

/// The getaddrinfo resolver, the one Legate resolves names with.
const GETADDRINFO: &str = "envoy.extensions.network.dns_resolver.getaddrinfo.v3.GetAddrInfoDnsResolverConfig";

/// A cache's settings, with Envoy's defaults.
#[derive(Debug, Clone)]
pub struct Settings {
    pub family: DnsLookupFamily,
    /// `dns_refresh_rate` (60 s): how often a resolved name is resolved
    /// again, at least `dns_min_refresh_rate` (5 s).
    pub refresh: Duration,
    /// `dns_failure_refresh_rate` (else `dns_refresh_rate` and ten times
    /// it): the backoff after a failed resolution.
    pub failure_base: Duration,
    pub failure_max: Duration,
    /// `disable_dns_refresh_on_failure`.
    pub no_refresh_on_failure: bool,
    /// `host_ttl` (5 min): a host unused this long is dropped at its next refresh.
    pub host_ttl: Duration,
    /// `max_hosts` (1024).
    pub max_hosts: usize,
    /// `dns_cache_circuit_breaker.max_pending_requests` (1024).
    pub max_pending: u64,
    /// `dns_query_timeout` (5 s; 0 for none).
    pub query_timeout: Option<Duration>,
}

impl Settings {
    /// Compiles a `dns_cache_config`; `path` is its field path.
    pub fn compile(c: &DnsCacheConfig, path: &str) -> Result<Self, String> {
        if let Some(r) = &c.typed_dns_resolver_config {
            let ty = r.typed_config.as_ref().map(legate_api::any::type_name).unwrap_or_default();
            if ty != GETADDRINFO {
                return Err(format!(
                    "{path}.typed_dns_resolver_config: only the getaddrinfo resolver ({GETADDRINFO}) is supported"
                ));
            }
        }
        let d = |v: Option<&legate_api::pb::google::protobuf::Duration>, default: Duration| {
            legate_api::duration::or(v, default)
        };
        let rate = d(c.dns_refresh_rate.as_ref(), Duration::from_secs(60));
        let min = d(c.dns_min_refresh_rate.as_ref(), Duration::from_secs(5));
        let (failure_base, failure_max) = match &c.dns_failure_refresh_rate {
            Some(f) => {
                let base = d(f.base_interval.as_ref(), rate);
                let max = d(f.max_interval.as_ref(), base * 10);
                if max < base {
                    return Err(format!(
                        "{path}.dns_failure_refresh_rate: max_interval must be greater than or equal to the base_interval"
                    ));
                }
                (base, max)
            }
            None => (rate, rate * 10),
        };
        let timeout = d(c.dns_query_timeout.as_ref(), Duration::from_secs(5));
        Ok(Self {
            family: DnsLookupFamily::try_from(c.dns_lookup_family).unwrap_or(DnsLookupFamily::Auto),
            refresh: rate.max(min),
            failure_base: failure_base.max(Duration::from_millis(1)),
            failure_max,
            no_refresh_on_failure: c.disable_dns_refresh_on_failure,
            host_ttl: d(c.host_ttl.as_ref(), Duration::from_secs(300)),
            max_hosts: c.max_hosts.map_or(1024, |v| v.value as usize),
            max_pending: c
                .dns_cache_circuit_breaker
                .and_then(|b| b.max_pending_requests)
                .map_or(1024, |v| u64::from(v.value)),
            query_timeout: (!timeout.is_zero()).then_some(timeout),
        })
    }
}

/// The caches alive, by stats store and name.
type Registry = HashMap<(usize, String), Weak<DnsCache>>;

static CACHES: Mutex<Option<Registry>> = Mutex::new(None);

/// The cache this config names: the one alive under its name, or a new
/// one. Two configs naming one cache with different settings are refused,
/// as Envoy refuses them.
pub fn cache_for(c: &DnsCacheConfig, store: &Arc<Store>, path: &str) -> Result<Arc<DnsCache>, String> {
    let settings = Settings::compile(c, path)?;
    let key = (Arc::as_ptr(store) as usize, c.name.clone());
    let mut guard = CACHES.lock().unwrap_or_else(|e| e.into_inner());
    let caches = guard.get_or_insert_with(HashMap::new);
    caches.retain(|_, w| w.strong_count() > 0);
    if let Some(existing) = caches.get(&key).and_then(Weak::upgrade) {
        if existing.config != *c {
            return Err(format!("{path}: config specified DNS cache '{}' with different settings", c.name));
        }
        return Ok(existing);
    }
    let cache = Arc::new(DnsCache::new(c.clone(), settings, store));
    caches.insert(key, Arc::downgrade(&cache));
    Ok(cache)
}
