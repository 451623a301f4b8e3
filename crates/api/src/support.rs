//! What Legate implements, field by field, so that a config using anything else
//! is refused with a list rather than half-served.
//!
//! The table names, per message, the fields the proxy honours. A set field not
//! in its message's list is reported; a message absent from the table has no
//! supported fields; an `Any` whose type is not a supported extension is
//! reported once at its path. Well-known types (`google.protobuf.*`) are leaves.
//! When the proxy learns a feature, its fields join this table in the same change.

mod compat;
mod dfp;
mod hcm;
mod overload;
mod udp;
mod wasm;

use crate::error::FieldError;
use crate::lenient::join;
use crate::walk::decode_any;
use prost_reflect::{DynamicMessage, ReflectMessage, Value};

/// Extension types (`typed_config` payloads) the proxy implements.
pub const SUPPORTED_EXTENSIONS: &[&str] = &[
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
    "envoy.extensions.filters.http.router.v3.Router",
    "envoy.extensions.filters.http.health_check.v3.HealthCheck",
    "envoy.extensions.filters.http.fault.v3.HTTPFault",
    "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
    "envoy.extensions.filters.http.ratelimit.v3.RateLimit",
    "envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute",
    "envoy.extensions.filters.http.rbac.v3.RBAC",
    "envoy.extensions.filters.http.rbac.v3.RBACPerRoute",
    "envoy.extensions.filters.http.cors.v3.Cors",
    "envoy.extensions.filters.http.cors.v3.CorsPolicy",
    "envoy.extensions.filters.http.buffer.v3.Buffer",
    "envoy.extensions.filters.http.cache.v3.CacheConfig",
    "envoy.extensions.http.cache.simple_http_cache.v3.SimpleHttpCacheConfig",
    "envoy.extensions.filters.http.header_to_metadata.v3.Config",
    "envoy.extensions.filters.http.grpc_web.v3.GrpcWeb",
    "envoy.extensions.filters.http.csrf.v3.CsrfPolicy",
    "envoy.extensions.filters.http.grpc_http1_bridge.v3.Config",
    "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
    "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
    "envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
    "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
    "envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute",
    "envoy.extensions.filters.http.lua.v3.Lua",
    "envoy.extensions.filters.http.lua.v3.LuaPerRoute",
    "envoy.extensions.filters.http.wasm.v3.Wasm",
    "envoy.extensions.filters.http.compressor.v3.Compressor",
    "envoy.extensions.compression.gzip.compressor.v3.Gzip",
    "envoy.extensions.compression.brotli.compressor.v3.Brotli",
    "envoy.extensions.compression.zstd.compressor.v3.Zstd",
    "envoy.extensions.filters.http.decompressor.v3.Decompressor",
    // The dynamic forward proxy's filter (its cluster type and cache: `dfp`).
    "envoy.extensions.filters.http.dynamic_forward_proxy.v3.FilterConfig",
    "envoy.extensions.filters.http.dynamic_forward_proxy.v3.PerRouteConfig",
    // RBAC's `matcher`: its actions and inputs.
    "envoy.config.rbac.v3.Action",
    "envoy.type.matcher.v3.HttpRequestHeaderMatchInput",
    "envoy.extensions.matching.common_inputs.network.v3.SourceIPInput",
    "envoy.extensions.matching.common_inputs.network.v3.SourcePortInput",
    "envoy.extensions.matching.common_inputs.network.v3.DirectSourceIPInput",
    "envoy.extensions.matching.common_inputs.network.v3.DestinationIPInput",
    "envoy.extensions.matching.common_inputs.network.v3.DestinationPortInput",
    "envoy.extensions.matching.common_inputs.network.v3.ServerNameInput",
    "envoy.extensions.compression.gzip.decompressor.v3.Gzip",
    "envoy.extensions.compression.brotli.decompressor.v3.Brotli",
    "envoy.extensions.compression.zstd.decompressor.v3.Zstd",
    "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate",
    "envoy.extensions.access_loggers.file.v3.FileAccessLog",
    "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
    "envoy.extensions.access_loggers.stream.v3.StderrAccessLog",
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin",
    "envoy.extensions.load_balancing_policies.random.v3.Random",
    "envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest",
    "envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash",
    "envoy.extensions.load_balancing_policies.maglev.v3.Maglev",
    "legate.lb.v1.LeastResponseTime",
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
    "envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit",
    "envoy.extensions.filters.network.rbac.v3.RBAC",
    "envoy.extensions.filters.network.ext_authz.v3.ExtAuthz",
    "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector",
    "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector",
    "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
    "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
    "envoy.config.metrics.v3.MetricsServiceConfig",
    "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
    "envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig",
    "envoy.extensions.resource_monitors.injected_resource.v3.InjectedResourceConfig",
    "envoy.config.overload.v3.ScaleTimersOverloadActionConfig",
];

use crate::support_tracing::{TRACING_ADDED, TRACING_EXTENSIONS, TRACING_FIELDS, TRACING_UNSUPPORTED_VALUES};

const SUPPORTED_FIELDS: &[(&str, &[&str])] = &[
    (
        "envoy.config.bootstrap.v3.Bootstrap",
        &[
            "node",
            "static_resources",
            "dynamic_resources",
            "admin",
            "stats_sinks",
            "stats_flush_interval",
            "cluster_manager",
            // Health checks delegated by the management server (HDS): a GRPC `ApiConfigSource`.
            "hds_config",
            "overload_manager",
        ],
    ),
    // Load reports: `load_stats_config` (a GRPC `ApiConfigSource`).
    ("envoy.config.bootstrap.v3.ClusterManager", &["load_stats_config"]),
    ("envoy.config.metrics.v3.StatsSink", &["name", "typed_config"]),
    (
        "envoy.config.metrics.v3.MetricsServiceConfig",
        &[
            "grpc_service",
            "transport_api_version",
            "report_counters_as_deltas",
            "emit_tags_as_labels",
            "histogram_emit_mode",
            "batch_size",
        ],
    ),
    ("envoy.config.bootstrap.v3.Bootstrap.DynamicResources", &["ads_config", "cds_config", "lds_config"]),
    (
        "envoy.config.core.v3.ApiConfigSource",
        &["api_type", "transport_api_version", "grpc_services", "set_node_on_first_message_only"],
    ),
    ("envoy.config.core.v3.GrpcService", &["envoy_grpc", "timeout"]),
    ("envoy.config.core.v3.GrpcService.EnvoyGrpc", &["cluster_name"]),
    ("envoy.config.core.v3.ConfigSource", &["ads", "resource_api_version", "initial_fetch_timeout"]),
    ("envoy.config.core.v3.AggregatedConfigSource", &[]),
    ("envoy.extensions.filters.network.http_connection_manager.v3.Rds", &["config_source", "route_config_name"]),
    ("envoy.config.cluster.v3.Cluster.EdsClusterConfig", &["eds_config", "service_name"]),
    ("envoy.config.bootstrap.v3.Bootstrap.StaticResources", &["listeners", "clusters", "secrets"]),
    ("envoy.extensions.transport_sockets.tls.v3.Secret", &["name", "tls_certificate", "validation_context"]),
    ("envoy.extensions.transport_sockets.tls.v3.SdsSecretConfig", &["name", "sds_config"]),
    ("envoy.config.core.v3.PathConfigSource", &["path", "watched_directory"]),
    ("envoy.config.core.v3.WatchedDirectory", &["path"]),
    (
        "envoy.extensions.transport_sockets.tls.v3.CommonTlsContext.CombinedCertificateValidationContext",
        &["default_validation_context", "validation_context_sds_secret_config"],
    ),
    ("envoy.config.bootstrap.v3.Admin", &["address", "access_log_path", "access_log", "ignore_global_conn_limit"]),
    ("envoy.config.core.v3.Node", &["id", "cluster", "metadata", "locality", "user_agent_name"]),
    ("envoy.config.core.v3.Locality", &["region", "zone", "sub_zone"]),
    ("envoy.config.core.v3.Address", &["socket_address"]),
    ("envoy.config.core.v3.SocketAddress", &["address", "port_value", "protocol"]),
    (
        "envoy.config.listener.v3.Listener",
        &[
            "name",
            "address",
            "filter_chains",
            "default_filter_chain",
            "listener_filters",
            "ignore_global_conn_limit",
            "udp_listener_config",
        ],
    ),
    ("envoy.config.listener.v3.FilterChain", &["filters", "name", "filter_chain_match", "transport_socket"]),
    (
        "envoy.config.listener.v3.FilterChainMatch",
        &[
            "destination_port",
            "prefix_ranges",
            "server_names",
            "transport_protocol",
            "application_protocols",
            "source_prefix_ranges",
            "source_ports",
        ],
    ),
    ("envoy.config.core.v3.CidrRange", &["address_prefix", "prefix_len"]),
    ("envoy.config.listener.v3.ListenerFilter", &["name", "typed_config"]),
    ("envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector", &[]),
    ("envoy.extensions.filters.listener.http_inspector.v3.HttpInspector", &[]),
    ("envoy.config.core.v3.TransportSocket", &["name", "typed_config"]),
    (
        "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        &["common_tls_context", "require_client_certificate"],
    ),
    ("envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext", &["common_tls_context", "sni"]),
    (
        "envoy.extensions.transport_sockets.tls.v3.CommonTlsContext",
        &[
            "tls_params",
            "tls_certificates",
            "alpn_protocols",
            "validation_context",
            "tls_certificate_sds_secret_configs",
            "validation_context_sds_secret_config",
            "combined_validation_context",
        ],
    ),
    ("envoy.extensions.transport_sockets.tls.v3.TlsCertificate", &["certificate_chain", "private_key"]),
    (
        "envoy.extensions.transport_sockets.tls.v3.TlsParameters",
        &["tls_minimum_protocol_version", "tls_maximum_protocol_version", "ecdh_curves"],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.CertificateValidationContext",
        &["trusted_ca", "match_typed_subject_alt_names", "match_subject_alt_names"],
    ),
    ("envoy.extensions.transport_sockets.tls.v3.SubjectAltNameMatcher", &["san_type", "matcher"]),
    (
        "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        &["stat_prefix", "cluster", "weighted_clusters", "idle_timeout", "max_connect_attempts", "access_log"],
    ),
    ("envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster", &["clusters"]),
    ("envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster.ClusterWeight", &["name", "weight"]),
    ("envoy.config.listener.v3.Filter", &["name", "typed_config"]),
    (
        "envoy.config.route.v3.RouteConfiguration",
        &[
            "name",
            "virtual_hosts",
            "request_headers_to_add",
            "request_headers_to_remove",
            "response_headers_to_add",
            "response_headers_to_remove",
            "most_specific_header_mutations_wins",
            "validate_clusters",
        ],
    ),
    (
        "envoy.config.route.v3.VirtualHost",
        &[
            "name",
            "domains",
            "routes",
            "request_headers_to_add",
            "request_headers_to_remove",
            "response_headers_to_add",
            "response_headers_to_remove",
            "include_request_attempt_count",
            "include_attempt_count_in_response",
            "typed_per_filter_config",
            "rate_limits",
            "cors",
            "virtual_clusters",
        ],
    ),
    ("envoy.config.route.v3.VirtualCluster", &["name", "headers"]),
    (
        "envoy.config.route.v3.Route",
        &[
            "name",
            "match",
            "route",
            "redirect",
            "direct_response",
            "request_headers_to_add",
            "request_headers_to_remove",
            "response_headers_to_add",
            "response_headers_to_remove",
            "typed_per_filter_config",
            // `filter_metadata`, read by the Lua filter's `metadata()`.
            "metadata",
            // `vhost.<vh>.route.<stat_prefix>.*`, the virtual clusters' stats.
            "stat_prefix",
        ],
    ),
    (
        "envoy.config.route.v3.RouteMatch",
        &[
            "prefix",
            "path",
            "safe_regex",
            "path_separated_prefix",
            "connect_matcher",
            "case_sensitive",
            "headers",
            "query_parameters",
        ],
    ),
    ("envoy.config.route.v3.RouteMatch.ConnectMatcher", &[]),
    ("envoy.type.matcher.v3.RegexMatcher", &["regex", "google_re2"]),
    ("envoy.type.matcher.v3.RegexMatcher.GoogleRE2", &[]),
    (
        "envoy.config.route.v3.HeaderMatcher",
        &[
            "name",
            "exact_match",
            "safe_regex_match",
            "range_match",
            "present_match",
            "prefix_match",
            "suffix_match",
            "contains_match",
            "string_match",
            "invert_match",
            "treat_missing_header_as_empty",
        ],
    ),
    ("envoy.type.matcher.v3.StringMatcher", &["exact", "prefix", "suffix", "safe_regex", "contains", "ignore_case"]),
    ("envoy.type.v3.Int64Range", &["start", "end"]),
    ("envoy.config.route.v3.QueryParameterMatcher", &["name", "string_match", "present_match"]),
    (
        "envoy.config.route.v3.RouteAction",
        &[
            "cluster",
            "cluster_header",
            "weighted_clusters",
            "prefix_rewrite",
            "regex_rewrite",
            "path_rewrite",
            "host_rewrite_literal",
            "auto_host_rewrite",
            "host_rewrite_header",
            "host_rewrite_path_regex",
            "append_x_forwarded_host",
            "cluster_not_found_response_code",
            "timeout",
            "retry_policy",
            "hash_policy",
            "request_mirror_policies",
            "idle_timeout",
            "rate_limits",
            "upgrade_configs",
            "cors",
            "inline_cluster_specifier_plugin",
        ],
    ),
    ("envoy.config.route.v3.RouteAction.UpgradeConfig", &["upgrade_type", "enabled", "connect_config"]),
    ("envoy.config.route.v3.RouteAction.UpgradeConfig.ConnectConfig", &[]),
    // `total_weight` is deprecated and not read by Envoy 1.40 (the weights'
    // sum is the total, whatever it says): accepted and not read here either.
    ("envoy.config.route.v3.WeightedCluster", &["clusters", "header_name", "use_hash_policy", "total_weight"]),
    (
        "envoy.config.route.v3.RouteAction.RequestMirrorPolicy",
        &["cluster", "cluster_header", "runtime_fraction", "disable_shadow_host_suffix_append"],
    ),
    ("envoy.config.route.v3.WeightedCluster.ClusterWeight", &["name", "weight"]),
    ("envoy.type.matcher.v3.RegexMatchAndSubstitute", &["pattern", "substitution"]),
    (
        "envoy.config.route.v3.RedirectAction",
        &[
            "https_redirect",
            "scheme_redirect",
            "host_redirect",
            "port_redirect",
            "path_redirect",
            "prefix_rewrite",
            "regex_rewrite",
            "response_code",
            "strip_query",
        ],
    ),
    ("envoy.config.route.v3.DirectResponseAction", &["status", "body"]),
    ("envoy.config.core.v3.DataSource", &["filename", "inline_bytes", "inline_string", "environment_variable"]),
    ("envoy.config.core.v3.HeaderValueOption", &["header", "append", "append_action", "keep_empty_value"]),
    ("envoy.config.core.v3.HeaderValue", &["key", "value", "raw_value"]),
    (
        "envoy.config.cluster.v3.Cluster",
        &[
            "name",
            "type",
            "cluster_type",
            "connect_timeout",
            "lb_policy",
            "load_assignment",
            "http2_protocol_options",
            "typed_extension_protocol_options",
            "dns_lookup_family",
            "dns_refresh_rate",
            "eds_cluster_config",
            "health_checks",
            "outlier_detection",
            "circuit_breakers",
            "common_lb_config",
            "ring_hash_lb_config",
            "maglev_lb_config",
            "least_request_lb_config",
            "round_robin_lb_config",
            "load_balancing_policy",
            "transport_socket",
            "common_http_protocol_options",
            "max_requests_per_connection",
        ],
    ),
    ("envoy.config.cluster.v3.LoadBalancingPolicy", &["policies"]),
    ("envoy.config.core.v3.TypedExtensionConfig", &["name", "typed_config"]),
    ("envoy.config.cluster.v3.LoadBalancingPolicy.Policy", &["typed_extension_config"]),
    ("envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin", &["slow_start_config"]),
    (
        "envoy.extensions.load_balancing_policies.common.v3.SlowStartConfig",
        &["slow_start_window", "aggression", "min_weight_percent"],
    ),
    ("envoy.config.cluster.v3.Cluster.RoundRobinLbConfig", &["slow_start_config"]),
    ("envoy.config.cluster.v3.Cluster.SlowStartConfig", &["slow_start_window", "aggression", "min_weight_percent"]),
    ("envoy.extensions.load_balancing_policies.random.v3.Random", &[]),
    (
        "envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest",
        &["choice_count", "active_request_bias", "slow_start_config"],
    ),
    (
        "envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash",
        &["hash_function", "minimum_ring_size", "maximum_ring_size"],
    ),
    ("envoy.extensions.load_balancing_policies.maglev.v3.Maglev", &["table_size"]),
    ("legate.lb.v1.LeastResponseTime", &["decay", "default_rtt"]),
    (
        "envoy.config.cluster.v3.Cluster.LeastRequestLbConfig",
        &["choice_count", "active_request_bias", "slow_start_config"],
    ),
    ("envoy.config.core.v3.RuntimeDouble", &["default_value", "runtime_key"]),
    ("envoy.config.cluster.v3.Cluster.RingHashLbConfig", &["minimum_ring_size", "maximum_ring_size", "hash_function"]),
    ("envoy.config.cluster.v3.Cluster.MaglevLbConfig", &["table_size"]),
    (
        "envoy.config.route.v3.RouteAction.HashPolicy",
        &["header", "cookie", "connection_properties", "query_parameter", "terminal"],
    ),
    ("envoy.config.route.v3.RouteAction.HashPolicy.Header", &["header_name"]),
    ("envoy.config.route.v3.RouteAction.HashPolicy.Cookie", &["name", "ttl", "path"]),
    ("envoy.config.route.v3.RouteAction.HashPolicy.ConnectionProperties", &["source_ip"]),
    ("envoy.config.route.v3.RouteAction.HashPolicy.QueryParameter", &["name"]),
    ("envoy.config.cluster.v3.Cluster.CommonLbConfig", &["healthy_panic_threshold", "locality_weighted_lb_config"]),
    ("envoy.config.cluster.v3.Cluster.CommonLbConfig.LocalityWeightedLbConfig", &[]),
    ("envoy.type.v3.Percent", &["value"]),
    ("envoy.config.cluster.v3.CircuitBreakers", &["thresholds"]),
    (
        "envoy.config.cluster.v3.CircuitBreakers.Thresholds",
        &[
            "priority",
            "max_connections",
            "max_pending_requests",
            "max_requests",
            "max_retries",
            "track_remaining",
            "retry_budget",
            "max_connection_pools",
        ],
    ),
    ("envoy.config.cluster.v3.CircuitBreakers.Thresholds.RetryBudget", &["budget_percent", "min_retry_concurrency"]),
    ("envoy.config.endpoint.v3.ClusterLoadAssignment", &["cluster_name", "endpoints", "policy"]),
    ("envoy.config.endpoint.v3.ClusterLoadAssignment.Policy", &["overprovisioning_factor"]),
    (
        "envoy.config.endpoint.v3.LocalityLbEndpoints",
        &["lb_endpoints", "priority", "locality", "load_balancing_weight"],
    ),
    ("envoy.config.endpoint.v3.LbEndpoint", &["endpoint", "load_balancing_weight"]),
    ("envoy.config.endpoint.v3.Endpoint", &["address", "health_check_config"]),
    (
        "envoy.config.endpoint.v3.Endpoint.HealthCheckConfig",
        &["port_value", "hostname", "address", "disable_active_health_check"],
    ),
    (
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        &["explicit_http_config", "common_http_protocol_options"],
    ),
    (
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions.ExplicitHttpConfig",
        &["http_protocol_options", "http2_protocol_options"],
    ),
    ("envoy.config.core.v3.Http1ProtocolOptions", &[]),
    (
        "envoy.config.core.v3.HttpProtocolOptions",
        &["idle_timeout", "max_requests_per_connection", "max_stream_duration"],
    ),
    // `allow_connect` only on a connection manager (see `NARROWED`).
    ("envoy.config.core.v3.Http2ProtocolOptions", &[]),
    ("envoy.extensions.filters.http.router.v3.Router", &["suppress_envoy_headers", "dynamic_stats"]),
    ("envoy.extensions.filters.http.health_check.v3.HealthCheck", &["pass_through_mode", "headers"]),
    (
        "envoy.extensions.filters.http.fault.v3.HTTPFault",
        &[
            "delay",
            "abort",
            "headers",
            "abort_percent_runtime",
            "delay_percent_runtime",
            "abort_http_status_runtime",
            "delay_duration_runtime",
        ],
    ),
    ("envoy.extensions.filters.common.fault.v3.FaultDelay", &["fixed_delay", "header_delay", "percentage"]),
    ("envoy.extensions.filters.common.fault.v3.FaultDelay.HeaderDelay", &[]),
    ("envoy.extensions.filters.http.fault.v3.FaultAbort", &["http_status", "header_abort", "percentage"]),
    ("envoy.extensions.filters.http.fault.v3.FaultAbort.HeaderAbort", &[]),
    ("envoy.type.v3.FractionalPercent", &["numerator", "denominator"]),
    (
        "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        &[
            "stat_prefix",
            "status",
            "token_bucket",
            "filter_enabled",
            "filter_enforced",
            "response_headers_to_add",
            "descriptors",
            "stage",
            "always_consume_default_token_bucket",
            "vh_rate_limits",
            "max_dynamic_descriptors",
        ],
    ),
    (
        "envoy.extensions.filters.http.ratelimit.v3.RateLimit",
        &[
            "domain",
            "stage",
            "request_type",
            "timeout",
            "failure_mode_deny",
            "rate_limit_service",
            "enable_x_ratelimit_headers",
            "disable_x_envoy_ratelimited_header",
            "rate_limited_status",
            "status_on_error",
            "stat_prefix",
        ],
    ),
    ("envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute", &["vh_rate_limits", "override_option", "domain"]),
    ("envoy.config.ratelimit.v3.RateLimitServiceConfig", &["grpc_service", "transport_api_version"]),
    ("envoy.extensions.common.ratelimit.v3.LocalRateLimitDescriptor", &["entries", "token_bucket"]),
    ("envoy.extensions.common.ratelimit.v3.RateLimitDescriptor.Entry", &["key", "value"]),
    ("envoy.config.route.v3.RateLimit", &["stage", "actions"]),
    (
        "envoy.config.route.v3.RateLimit.Action",
        &[
            "generic_key",
            "request_headers",
            "remote_address",
            "source_cluster",
            "destination_cluster",
            "header_value_match",
        ],
    ),
    ("envoy.config.route.v3.RateLimit.Action.SourceCluster", &[]),
    ("envoy.config.route.v3.RateLimit.Action.DestinationCluster", &[]),
    ("envoy.config.route.v3.RateLimit.Action.GenericKey", &["descriptor_value", "descriptor_key"]),
    ("envoy.config.route.v3.RateLimit.Action.RequestHeaders", &["header_name", "descriptor_key", "skip_if_absent"]),
    ("envoy.config.route.v3.RateLimit.Action.RemoteAddress", &[]),
    (
        "envoy.config.route.v3.RateLimit.Action.HeaderValueMatch",
        &["descriptor_key", "descriptor_value", "expect_match", "headers"],
    ),
    (
        "envoy.config.route.v3.RetryPolicy",
        &[
            "retry_on",
            "num_retries",
            "per_try_timeout",
            "retriable_status_codes",
            "retry_back_off",
            "retry_host_predicate",
            "host_selection_retry_max_attempts",
            "retriable_headers",
        ],
    ),
    ("envoy.config.route.v3.RetryPolicy.RetryBackOff", &["base_interval", "max_interval"]),
    ("envoy.config.route.v3.RetryPolicy.RetryHostPredicate", &["name", "typed_config"]),
    ("envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate", &[]),
    (
        "envoy.config.core.v3.HealthCheck",
        &[
            "timeout",
            "interval",
            "interval_jitter",
            "unhealthy_threshold",
            "healthy_threshold",
            "http_health_check",
            "tcp_health_check",
            "grpc_health_check",
            "no_traffic_interval",
            "no_traffic_healthy_interval",
            "unhealthy_interval",
            "unhealthy_edge_interval",
            "healthy_edge_interval",
        ],
    ),
    ("envoy.config.core.v3.HealthCheck.HttpHealthCheck", &["path", "host", "expected_statuses"]),
    ("envoy.config.core.v3.HealthCheck.TcpHealthCheck", &["send", "receive"]),
    ("envoy.config.core.v3.HealthCheck.Payload", &["text", "binary"]),
    ("envoy.config.core.v3.HealthCheck.GrpcHealthCheck", &["service_name", "authority"]),
    (
        "envoy.config.cluster.v3.OutlierDetection",
        &[
            "consecutive_5xx",
            "interval",
            "base_ejection_time",
            "max_ejection_percent",
            "enforcing_consecutive_5xx",
            "consecutive_gateway_failure",
            "enforcing_consecutive_gateway_failure",
            "max_ejection_time",
            "success_rate_minimum_hosts",
            "success_rate_request_volume",
            "success_rate_stdev_factor",
            "enforcing_success_rate",
            "failure_percentage_threshold",
            "enforcing_failure_percentage",
            "failure_percentage_minimum_hosts",
            "failure_percentage_request_volume",
            "split_external_local_origin_errors",
            "consecutive_local_origin_failure",
            "enforcing_consecutive_local_origin_failure",
        ],
    ),
    ("envoy.extensions.filters.http.rbac.v3.RBAC", &["rules", "shadow_rules", "matcher", "shadow_matcher"]),
    // The generic matching API, as RBAC's `matcher` reads it.
    ("xds.type.matcher.v3.Matcher", &["matcher_list", "matcher_tree", "on_no_match"]),
    ("xds.core.v3.TypedExtensionConfig", &["name", "typed_config"]),
    ("xds.type.matcher.v3.Matcher.OnMatch", &["matcher", "action"]),
    ("xds.type.matcher.v3.Matcher.MatcherList", &["matchers"]),
    ("xds.type.matcher.v3.Matcher.MatcherList.FieldMatcher", &["predicate", "on_match"]),
    (
        "xds.type.matcher.v3.Matcher.MatcherList.Predicate",
        &["single_predicate", "or_matcher", "and_matcher", "not_matcher"],
    ),
    ("xds.type.matcher.v3.Matcher.MatcherList.Predicate.SinglePredicate", &["input", "value_match", "custom_match"]),
    ("xds.type.matcher.v3.Matcher.MatcherList.Predicate.PredicateList", &["predicate"]),
    ("xds.type.matcher.v3.Matcher.MatcherTree", &["input", "exact_match_map", "prefix_match_map"]),
    ("xds.type.matcher.v3.Matcher.MatcherTree.MatchMap", &["map"]),
    ("xds.type.matcher.v3.StringMatcher", &["exact", "prefix", "suffix", "safe_regex", "contains", "ignore_case"]),
    ("xds.type.matcher.v3.RegexMatcher", &["google_re2", "regex"]),
    ("xds.type.matcher.v3.RegexMatcher.GoogleRE2", &[]),
    ("envoy.config.rbac.v3.Action", &["name", "action"]),
    ("envoy.type.matcher.v3.HttpRequestHeaderMatchInput", &["header_name"]),
    ("envoy.extensions.matching.common_inputs.network.v3.SourceIPInput", &[]),
    ("envoy.extensions.matching.common_inputs.network.v3.SourcePortInput", &[]),
    ("envoy.extensions.matching.common_inputs.network.v3.DirectSourceIPInput", &[]),
    ("envoy.extensions.matching.common_inputs.network.v3.DestinationIPInput", &[]),
    ("envoy.extensions.matching.common_inputs.network.v3.DestinationPortInput", &[]),
    ("envoy.extensions.matching.common_inputs.network.v3.ServerNameInput", &[]),
    ("envoy.extensions.filters.http.rbac.v3.RBACPerRoute", &["rbac"]),
    ("envoy.config.rbac.v3.RBAC", &["action", "policies"]),
    ("envoy.config.rbac.v3.Policy", &["permissions", "principals"]),
    (
        "envoy.config.rbac.v3.Permission",
        &[
            "and_rules",
            "or_rules",
            "any",
            "header",
            "url_path",
            "destination_ip",
            "destination_port",
            "not_rule",
            "requested_server_name",
        ],
    ),
    ("envoy.config.rbac.v3.Permission.Set", &["rules"]),
    (
        "envoy.config.rbac.v3.Principal",
        &[
            "and_ids",
            "or_ids",
            "any",
            "source_ip",
            "direct_remote_ip",
            "remote_ip",
            "header",
            "url_path",
            "not_id",
            "authenticated",
        ],
    ),
    ("envoy.config.rbac.v3.Principal.Set", &["ids"]),
    ("envoy.config.rbac.v3.Principal.Authenticated", &["principal_name"]),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.SetCurrentClientCertDetails",
        &["subject", "cert", "chain", "dns", "uri"],
    ),
    (
        "envoy.extensions.filters.network.rbac.v3.RBAC",
        &["rules", "shadow_rules", "stat_prefix", "shadow_rules_stat_prefix", "enforcement_type"],
    ),
    ("envoy.config.core.v3.CidrRange", &["address_prefix", "prefix_len"]),
    ("envoy.type.matcher.v3.PathMatcher", &["path"]),
    ("envoy.extensions.filters.http.cors.v3.Cors", &[]),
    (
        "envoy.config.route.v3.CorsPolicy",
        &[
            "allow_origin_string_match",
            "allow_methods",
            "allow_headers",
            "expose_headers",
            "max_age",
            "allow_credentials",
            "filter_enabled",
            "shadow_enabled",
            "allow_private_network_access",
            "forward_not_matching_preflights",
        ],
    ),
    (
        "envoy.extensions.filters.http.cors.v3.CorsPolicy",
        &[
            "allow_origin_string_match",
            "allow_methods",
            "allow_headers",
            "expose_headers",
            "max_age",
            "allow_credentials",
            "filter_enabled",
            "shadow_enabled",
            "allow_private_network_access",
            "forward_not_matching_preflights",
        ],
    ),
    ("envoy.extensions.filters.http.buffer.v3.Buffer", &["max_request_bytes"]),
    // cache: the simple in-memory cache; the key's query parameter
    // matchers are refused.
    (
        "envoy.extensions.filters.http.cache.v3.CacheConfig",
        &[
            "typed_config",
            "disabled",
            "allowed_vary_headers",
            "key_creator_params",
            "max_body_bytes",
            "ignore_request_cache_control_header",
        ],
    ),
    ("envoy.extensions.filters.http.cache.v3.CacheConfig.KeyCreatorParams", &["exclude_scheme", "exclude_host"]),
    ("envoy.extensions.http.cache.simple_http_cache.v3.SimpleHttpCacheConfig", &[]),
    // header_to_metadata: rules on headers (not cookies).
    ("envoy.extensions.filters.http.header_to_metadata.v3.Config", &["request_rules", "response_rules", "stat_prefix"]),
    (
        "envoy.extensions.filters.http.header_to_metadata.v3.Config.Rule",
        &["header", "on_header_present", "on_header_missing", "remove"],
    ),
    (
        "envoy.extensions.filters.http.header_to_metadata.v3.Config.KeyValuePair",
        &["metadata_namespace", "key", "value", "regex_value_rewrite", "type", "encode"],
    ),
    // Lua: no `filter_context` or package paths.
    (
        "envoy.extensions.filters.http.lua.v3.Lua",
        &["inline_code", "default_source_code", "source_codes", "stat_prefix", "clear_route_cache"],
    ),
    ("envoy.extensions.filters.http.lua.v3.LuaPerRoute", &["disabled", "name", "source_code"]),
    ("envoy.config.core.v3.Metadata", &["filter_metadata"]),
    ("envoy.extensions.filters.http.grpc_web.v3.GrpcWeb", &[]),
    ("envoy.extensions.filters.http.grpc_http1_bridge.v3.Config", &[]),
    ("envoy.extensions.filters.http.csrf.v3.CsrfPolicy", &["filter_enabled", "shadow_enabled", "additional_origins"]),
    ("envoy.extensions.filters.http.compressor.v3.Compressor", &["compressor_library", "response_direction_config"]),
    (
        "envoy.extensions.filters.http.compressor.v3.Compressor.ResponseDirectionConfig",
        &[
            "common_config",
            "disable_on_etag_header",
            "weaken_etag_on_compress",
            "remove_accept_encoding_header",
            "uncompressible_response_codes",
        ],
    ),
    (
        "envoy.extensions.filters.http.compressor.v3.Compressor.CommonDirectionConfig",
        &["enabled", "min_content_length", "content_type"],
    ),
    ("envoy.config.core.v3.RuntimeFeatureFlag", &["default_value", "runtime_key"]),
    ("envoy.config.core.v3.TypedExtensionConfig", &["name", "typed_config"]),
    (
        "envoy.extensions.compression.gzip.compressor.v3.Gzip",
        &["compression_level", "compression_strategy", "memory_level", "window_bits", "chunk_size"],
    ),
    ("envoy.extensions.compression.zstd.compressor.v3.Zstd", &["compression_level", "enable_checksum", "strategy"]),
    ("envoy.extensions.compression.brotli.compressor.v3.Brotli", &["quality", "window_bits"]),
    (
        "envoy.extensions.filters.http.decompressor.v3.Decompressor",
        &["decompressor_library", "request_direction_config", "response_direction_config"],
    ),
    (
        "envoy.extensions.filters.http.decompressor.v3.Decompressor.RequestDirectionConfig",
        &["common_config", "advertise_accept_encoding"],
    ),
    ("envoy.extensions.filters.http.decompressor.v3.Decompressor.ResponseDirectionConfig", &["common_config"]),
    (
        "envoy.extensions.filters.http.decompressor.v3.Decompressor.CommonDirectionConfig",
        &["enabled", "ignore_no_transform_header"],
    ),
    ("envoy.extensions.compression.gzip.decompressor.v3.Gzip", &["window_bits", "chunk_size", "max_inflate_ratio"]),
    ("envoy.extensions.compression.brotli.decompressor.v3.Brotli", &["disable_ring_buffer_reallocation", "chunk_size"]),
    // Zstd dictionaries are not built.
    ("envoy.extensions.compression.zstd.decompressor.v3.Zstd", &["chunk_size"]),
    ("envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication", &["providers", "rules"]),
    (
        "envoy.extensions.filters.http.jwt_authn.v3.JwtProvider",
        &[
            "issuer",
            "audiences",
            "local_jwks",
            "remote_jwks",
            "forward",
            "from_headers",
            "forward_payload_header",
            "claim_to_headers",
            "clock_skew_seconds",
            "from_params",
        ],
    ),
    ("envoy.extensions.filters.http.jwt_authn.v3.JwtHeader", &["name", "value_prefix"]),
    (
        "envoy.extensions.filters.http.jwt_authn.v3.RemoteJwks",
        &["http_uri", "cache_duration", "async_fetch", "retry_policy"],
    ),
    ("envoy.config.core.v3.RetryPolicy", &["retry_back_off", "num_retries", "retry_on"]),
    ("envoy.config.core.v3.BackoffStrategy", &["base_interval", "max_interval"]),
    ("envoy.extensions.filters.http.jwt_authn.v3.JwksAsyncFetch", &["fast_listener", "failed_refetch_duration"]),
    ("envoy.config.core.v3.HttpUri", &["uri", "cluster", "timeout"]),
    ("envoy.extensions.filters.http.jwt_authn.v3.JwtClaimToHeader", &["header_name", "claim_name"]),
    ("envoy.extensions.filters.http.jwt_authn.v3.RequirementRule", &["match", "requires"]),
    (
        "envoy.extensions.filters.http.jwt_authn.v3.JwtRequirement",
        &["provider_name", "requires_any", "requires_all", "allow_missing", "allow_missing_or_failed"],
    ),
    ("envoy.extensions.filters.http.jwt_authn.v3.JwtRequirementOrList", &["requirements"]),
    ("envoy.extensions.filters.http.jwt_authn.v3.JwtRequirementAndList", &["requirements"]),
    ("envoy.type.v3.TokenBucket", &["max_tokens", "tokens_per_fill", "fill_interval"]),
    (
        "envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit",
        &["stat_prefix", "token_bucket", "runtime_enabled"],
    ),
    ("envoy.type.v3.HttpStatus", &["code"]),
    ("envoy.config.core.v3.RuntimeFractionalPercent", &["default_value", "runtime_key"]),
    ("envoy.config.accesslog.v3.AccessLog", &["name", "typed_config"]),
    ("envoy.extensions.access_loggers.file.v3.FileAccessLog", &["path", "log_format", "format", "json_format"]),
    ("envoy.extensions.access_loggers.stream.v3.StdoutAccessLog", &["log_format"]),
    ("envoy.extensions.access_loggers.stream.v3.StderrAccessLog", &["log_format"]),
    ("envoy.config.core.v3.SubstitutionFormatString", &["text_format", "text_format_source", "json_format"]),
];

/// Enum values Legate refuses in a field it otherwise implements:
/// (message, field, values, reason).
const UNSUPPORTED_VALUES: &[(&str, &str, &[i32], &str)] = &[
    (
        "envoy.extensions.transport_sockets.tls.v3.SubjectAltNameMatcher",
        "san_type",
        &[5],
        "OTHER_NAME subject alt names are not implemented by Legate",
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.TlsParameters",
        "tls_minimum_protocol_version",
        &[1, 2],
        "TLSv1_0 and TLSv1_1 are not implemented by Legate (rustls speaks TLSv1_2 and TLSv1_3)",
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.TlsParameters",
        "tls_maximum_protocol_version",
        &[1, 2],
        "TLSv1_0 and TLSv1_1 are not implemented by Legate (rustls speaks TLSv1_2 and TLSv1_3)",
    ),
];

/// Shared messages whose honoured fields depend on where they are: (parent
/// message, its field holding the shared message, the fields honoured
/// there). The HTTP connection manager's `common_http_protocol_options` is
/// the cluster's message, whose stream duration Legate applies upstream
/// only, and whose header count and underscore action only downstream. A
/// config source may be a file (`path`,
/// `path_config_source`) for secrets only, and secrets may come from a gRPC `api_config_source`. Extended CONNECT (`allow_connect`)
/// is offered to downstream clients by a connection manager; Legate never
/// sends it upstream. A connection manager's HTTP/2 stream limit and windows
/// are its server's; a cluster's are not honoured yet.
const NARROWED: &[(&str, &str, &[&str])] = &[
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "common_http_protocol_options",
        &["idle_timeout", "max_requests_per_connection", "max_headers_count", "headers_with_underscores_action"],
    ),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "http2_protocol_options",
        &["allow_connect", "max_concurrent_streams", "initial_stream_window_size", "initial_connection_window_size"],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.SdsSecretConfig",
        "sds_config",
        &["ads", "resource_api_version", "initial_fetch_timeout", "path", "path_config_source", "api_config_source"],
    ),
];

fn supported_fields(message: &str) -> &'static [&'static str] {
    SUPPORTED_FIELDS
        .iter()
        .chain(hcm::FIELDS)
        .chain(TRACING_FIELDS)
        .chain(overload::FIELDS)
        .chain(udp::FIELDS)
        .chain(dfp::FIELDS)
        .chain(wasm::FIELDS)
        .find(|(m, _)| *m == message)
        .map_or(&[], |(_, f)| f)
}

fn supported_extension(ty: &str) -> bool {
    SUPPORTED_EXTENSIONS.contains(&ty)
        || TRACING_EXTENSIONS.contains(&ty)
        || udp::EXTENSIONS.contains(&ty)
        || dfp::EXTENSIONS.contains(&ty)
        || wasm::EXTENSIONS.contains(&ty)
}

/// A field of `message` is honoured: in `only` when its place narrows the
/// message, else in the main table or the one of fields learnt for
/// real-world configs (`compat`).
fn honoured(message: &str, field: &str, only: Option<&[&str]>) -> bool {
    match only {
        Some(fields) => fields.contains(&field),
        None => supported_fields(message).contains(&field) || compat::fields(message).contains(&field),
    }
}

/// Every set field and extension in `msg` that Legate does not implement.
pub fn unsupported(msg: &DynamicMessage) -> Vec<FieldError> {
    let mut out = Vec::new();
    check(msg, "", None, &mut out);
    out
}

fn check(msg: &DynamicMessage, path: &str, only: Option<&[&str]>, out: &mut Vec<FieldError>) {
    let desc = msg.descriptor();
    let name = desc.full_name();
    if name == "google.protobuf.Any" {
        let Some(inner) = decode_any(msg) else { return };
        let ty = inner.descriptor().full_name().to_string();
        if !supported_extension(&ty) && !compat::EXTENSIONS.contains(&ty.as_str()) {
            out.push(FieldError::new(path, format!("extension {ty} is not implemented by Legate")));
            return;
        }
        return check(&inner, path, None, out);
    }
    if name.starts_with("google.protobuf.") {
        return;
    }
    for (field, value) in msg.fields() {
        let p = join(path, field.name());
        let narrowed = NARROWED
            .iter()
            .find(|(m, f, _)| *m == name && *f == field.name())
            .map(|(_, _, fields)| *fields)
            .or_else(|| compat::narrowed(name, field.name()));
        let added = only.is_none() && TRACING_ADDED.contains(&(name, field.name()));
        if !honoured(name, field.name(), only) && !added {
            out.push(FieldError::new(p, format!("{}.{} is not implemented by Legate", name, field.name())));
            continue;
        }
        if let Value::EnumNumber(n) = value {
            let refused = UNSUPPORTED_VALUES
                .iter()
                .chain(TRACING_UNSUPPORTED_VALUES)
                .chain(compat::UNSUPPORTED_VALUES)
                .find(|(m, f, values, _)| *m == name && *f == field.name() && values.contains(n));
            if let Some((_, _, _, reason)) = refused {
                out.push(FieldError::new(p, *reason));
                continue;
            }
        }
        match value {
            Value::Message(m) => check(m, &p, narrowed, out),
            Value::List(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let Value::Message(m) = item {
                        check(m, &format!("{p}[{i}]"), None, out);
                    }
                }
            }
            Value::Map(entries) => {
                for (k, v) in entries {
                    if let Value::Message(m) = v {
                        let key = match k {
                            prost_reflect::MapKey::String(s) => s.clone(),
                            other => format!("{other:?}"),
                        };
                        check(m, &format!("{p}[\"{key}\"]"), None, out);
                    }
                }
            }
            _ => {}
        }
    }
}
