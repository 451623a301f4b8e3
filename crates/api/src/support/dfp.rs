//! The dynamic forward proxy: its HTTP filter, its cluster type and the DNS
//! cache both name (they join the main table's). The cache resolves with
//! the system's resolver, so only the getaddrinfo resolver may be named.

/// The filter's config types are in the main table, where the filter
/// registry's test looks for them.
pub(super) const EXTENSIONS: &[&str] = &[
    "envoy.extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig",
    "envoy.extensions.network.dns_resolver.getaddrinfo.v3.GetAddrInfoDnsResolverConfig",
];

pub(super) const FIELDS: &[(&str, &[&str])] = &[
    ("envoy.config.cluster.v3.Cluster.CustomClusterType", &["name", "typed_config"]),
    ("envoy.extensions.filters.http.dynamic_forward_proxy.v3.FilterConfig", &["dns_cache_config"]),
    (
        "envoy.extensions.filters.http.dynamic_forward_proxy.v3.PerRouteConfig",
        &["host_rewrite_literal", "host_rewrite_header"],
    ),
    (
        "envoy.extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig",
        &["dns_cache_config", "allow_insecure_cluster_options", "allow_coalesced_connections"],
    ),
    (
        "envoy.extensions.common.dynamic_forward_proxy.v3.DnsCacheConfig",
        &[
            "name",
            "dns_lookup_family",
            "dns_refresh_rate",
            "dns_min_refresh_rate",
            "host_ttl",
            "max_hosts",
            "disable_dns_refresh_on_failure",
            "dns_failure_refresh_rate",
            "dns_cache_circuit_breaker",
            "typed_dns_resolver_config",
            "dns_query_timeout",
        ],
    ),
    ("envoy.extensions.common.dynamic_forward_proxy.v3.DnsCacheCircuitBreakers", &["max_pending_requests"]),
    ("envoy.config.cluster.v3.Cluster.RefreshRate", &["base_interval", "max_interval"]),
    ("envoy.extensions.network.dns_resolver.getaddrinfo.v3.GetAddrInfoDnsResolverConfig", &[]),
];
