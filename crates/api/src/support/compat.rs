//! Fields Legate learnt for the configs people run (see the breadth test in
//! the CLI's end-to-end tests), by message. They join the main table's
//! fields for the same message; a message whose place narrows it (see
//! `NARROWED` in the main table) honours only what is listed there.

/// Extension types learnt for real-world configs.
pub(super) const EXTENSIONS: &[&str] = &[
    "envoy.extensions.router.cluster_specifiers.lua.v3.LuaConfig",
    "envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig",
];

const FIELDS: &[(&str, &[&str])] = &[
    // A DNS cluster's own name servers (c-ares `resolvers`; see the
    // cluster's entry below) and `respect_dns_ttl`.
    ("envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig", &["resolvers"]),
    // A route's `inline_cluster_specifier_plugin` with the Lua cluster specifier.
    ("envoy.config.route.v3.ClusterSpecifierPlugin", &["extension"]),
    ("envoy.extensions.router.cluster_specifiers.lua.v3.LuaConfig", &["source_code", "default_cluster"]),
    // REST sources (`api_type: REST`): polled every `refresh_delay` on the
    // one cluster of `cluster_names`, each poll given `request_timeout`.
    // Envoy reads `refresh_delay` for REST sources only, so on a gRPC source
    // it changes nothing, in Envoy as in Legate.
    ("envoy.config.core.v3.ApiConfigSource", &["refresh_delay", "cluster_names", "request_timeout"]),
    // A gRPC service called straight at its target (reached only where a
    // `GrpcService` is narrowed to allow it: ext_authz). No call credentials,
    // channel args or plugins; `google_default` credentials are refused.
    ("envoy.config.core.v3.GrpcService.GoogleGrpc", &["target_uri", "stat_prefix", "channel_credentials"]),
    ("envoy.config.core.v3.GrpcService.GoogleGrpc.ChannelCredentials", &["ssl_credentials", "local_credentials"]),
    ("envoy.config.core.v3.GrpcService.GoogleGrpc.SslCredentials", &["root_certs", "private_key", "cert_chain"]),
    // Unix sockets: an endpoint's `pipe` (see `NARROWED`).
    ("envoy.config.core.v3.Pipe", &["path", "mode"]),
    // External authorization of connections, over gRPC.
    (
        "envoy.extensions.filters.network.ext_authz.v3.ExtAuthz",
        &["stat_prefix", "grpc_service", "failure_mode_allow", "transport_api_version"],
    ),
    // External authorization (HTTP filter), over gRPC or HTTP.
    (
        "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
        &[
            "grpc_service",
            "http_service",
            "transport_api_version",
            "failure_mode_allow",
            "failure_mode_allow_header_add",
            "with_request_body",
            "status_on_error",
            "stat_prefix",
            "allowed_headers",
            "disallowed_headers",
            "charge_cluster_response_stats",
        ],
    ),
    (
        "envoy.extensions.filters.http.ext_authz.v3.BufferSettings",
        &["max_request_bytes", "allow_partial_message", "pack_as_bytes"],
    ),
    (
        "envoy.extensions.filters.http.ext_authz.v3.HttpService",
        &["server_uri", "path_prefix", "authorization_request", "authorization_response"],
    ),
    ("envoy.extensions.filters.http.ext_authz.v3.AuthorizationRequest", &["allowed_headers", "headers_to_add"]),
    (
        "envoy.extensions.filters.http.ext_authz.v3.AuthorizationResponse",
        &[
            "allowed_upstream_headers",
            "allowed_upstream_headers_to_append",
            "allowed_client_headers",
            "allowed_client_headers_on_success",
        ],
    ),
    ("envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute", &["disabled", "check_settings"]),
    (
        "envoy.extensions.filters.http.ext_authz.v3.CheckSettings",
        &["context_extensions", "disable_request_body_buffering", "with_request_body"],
    ),
    // External processing over gRPC: headers, bodies (BUFFERED, STREAMED,
    // BUFFERED_PARTIAL) and trailers.
    (
        "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
        &[
            "grpc_service",
            "failure_mode_allow",
            "processing_mode",
            "message_timeout",
            "stat_prefix",
            "allow_mode_override",
            "disable_immediate_response",
            "status_on_error",
            "route_cache_action",
            "disable_clear_route_cache",
            "forward_rules",
            "mutation_rules",
            "metadata_options",
            "allowed_override_modes",
        ],
    ),
    // The dynamic metadata sent to the processor and written from its
    // answers (cluster metadata is not forwarded).
    ("envoy.extensions.filters.http.ext_proc.v3.MetadataOptions", &["forwarding_namespaces", "receiving_namespaces"]),
    ("envoy.extensions.filters.http.ext_proc.v3.MetadataOptions.MetadataNamespaces", &["untyped", "typed"]),
    (
        "envoy.config.common.mutation_rules.v3.HeaderMutationRules",
        &[
            "allow_all_routing",
            "allow_envoy",
            "disallow_system",
            "disallow_all",
            "allow_expression",
            "disallow_expression",
            "disallow_is_error",
        ],
    ),
    ("envoy.extensions.filters.http.ext_proc.v3.HeaderForwardingRules", &["allowed_headers", "disallowed_headers"]),
    (
        "envoy.extensions.filters.http.ext_proc.v3.ProcessingMode",
        &[
            "request_header_mode",
            "response_header_mode",
            "request_body_mode",
            "response_body_mode",
            "request_trailer_mode",
            "response_trailer_mode",
        ],
    ),
    ("envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute", &["disabled", "overrides"]),
    ("envoy.extensions.filters.http.ext_proc.v3.ExtProcOverrides", &["processing_mode", "metadata_options"]),
    // A route's stream duration, and the deprecated gRPC timeouts it replaces.
    ("envoy.config.route.v3.RouteAction", &["max_stream_duration", "max_grpc_timeout", "grpc_timeout_offset"]),
    (
        "envoy.config.route.v3.RouteAction.MaxStreamDuration",
        &["max_stream_duration", "grpc_timeout_header_max", "grpc_timeout_header_offset"],
    ),
    // A cluster's HTTP/2 connections: PINGs and flow-control windows (a
    // connection manager's are narrowed in the main table).
    (
        "envoy.config.core.v3.Http2ProtocolOptions",
        &["connection_keepalive", "initial_stream_window_size", "initial_connection_window_size"],
    ),
    ("envoy.config.core.v3.KeepaliveSettings", &["interval", "timeout", "interval_jitter"]),
    // TCP keepalive on upstream connections.
    // Per-connection buffer limits: what a stream holds whole (listener),
    // what an upstream connection buffers (cluster).
    // A DNS cluster's own name servers (c-ares `resolvers` in
    // `typed_dns_resolver_config`, or the deprecated `dns_resolvers`) and
    // `respect_dns_ttl`: Legate's DNS client asks them (or
    // `/etc/resolv.conf`'s) and reads the answers' TTL.
    (
        "envoy.config.cluster.v3.Cluster",
        &[
            "upstream_connection_options",
            "per_connection_buffer_limit_bytes",
            "respect_dns_ttl",
            "typed_dns_resolver_config",
            "dns_resolvers",
        ],
    ),
    ("envoy.config.listener.v3.Listener", &["per_connection_buffer_limit_bytes"]),
    ("envoy.config.cluster.v3.UpstreamConnectionOptions", &["tcp_keepalive"]),
    ("envoy.config.core.v3.TcpKeepalive", &["keepalive_probes", "keepalive_time", "keepalive_interval"]),
    // Which stats exist.
    ("envoy.config.bootstrap.v3.Bootstrap", &["stats_config", "layered_runtime"]),
    ("envoy.config.metrics.v3.StatsConfig", &["stats_matcher"]),
    ("envoy.config.metrics.v3.StatsMatcher", &["reject_all", "exclusion_list", "inclusion_list"]),
    ("envoy.type.matcher.v3.ListStringMatcher", &["patterns"]),
    // The runtime: static, disk, admin and RTDS layers.
    ("envoy.config.bootstrap.v3.LayeredRuntime", &["layers"]),
    ("envoy.config.bootstrap.v3.RuntimeLayer", &["name", "static_layer", "disk_layer", "admin_layer", "rtds_layer"]),
    ("envoy.config.bootstrap.v3.RuntimeLayer.RtdsLayer", &["name", "rtds_config"]),
    ("envoy.service.runtime.v3.Runtime", &["name", "layer"]),
    ("envoy.config.bootstrap.v3.RuntimeLayer.DiskLayer", &["symlink_root", "subdirectory", "append_service_cluster"]),
    ("envoy.config.bootstrap.v3.RuntimeLayer.AdminLayer", &[]),
    // xDS without ADS: a gRPC stream per type to the management server.
    ("envoy.config.core.v3.ConfigSource", &["api_config_source"]),
    // HTTP/1.0 clients of a connection manager; the downstream service's
    // headers it adds.
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        &["http_protocol_options", "add_user_agent"],
    ),
    // Which streams an access logger writes (runtime keys have no runtime
    // to read in Legate: their defaults hold).
    ("envoy.config.accesslog.v3.AccessLog", &["filter"]),
    (
        "envoy.config.accesslog.v3.AccessLogFilter",
        &["status_code_filter", "duration_filter", "response_flag_filter", "header_filter", "and_filter", "or_filter"],
    ),
    ("envoy.config.accesslog.v3.StatusCodeFilter", &["comparison"]),
    ("envoy.config.accesslog.v3.DurationFilter", &["comparison"]),
    ("envoy.config.accesslog.v3.ComparisonFilter", &["op", "value"]),
    ("envoy.config.core.v3.RuntimeUInt32", &["default_value", "runtime_key"]),
    ("envoy.config.accesslog.v3.ResponseFlagFilter", &["flags"]),
    ("envoy.config.accesslog.v3.HeaderFilter", &["header"]),
    ("envoy.config.accesslog.v3.AndFilter", &["filters"]),
    ("envoy.config.accesslog.v3.OrFilter", &["filters"]),
    // Virtual hosts that redirect plain HTTP to https; the retry policy of
    // the routes without their own.
    ("envoy.config.route.v3.VirtualHost", &["require_tls", "retry_policy"]),
    // Routes for gRPC requests only.
    ("envoy.config.route.v3.RouteMatch", &["grpc", "runtime_fraction"]),
    ("envoy.config.route.v3.RouteMatch.GrpcRouteMatchOptions", &[]),
    // An endpoint's name (auto_host_rewrite, /clusters, `%UPSTREAM_HOST_NAME%`)
    // and metadata (`%UPSTREAM_METADATA%`, the hashing balancers' `envoy.lb`
    // `hash_key`).
    ("envoy.config.endpoint.v3.Endpoint", &["hostname"]),
    ("envoy.config.endpoint.v3.LbEndpoint", &["metadata"]),
    // The host's name as the SNI, and the certificate checked against the
    // SNI sent.
    ("envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext", &["auto_host_sni", "auto_sni_san_validation"]),
];

/// Enum values refused in a field learnt here: (message, field, values, reason).
pub(super) const UNSUPPORTED_VALUES: &[(&str, &str, &[i32], &str)] = &[
    (
        "envoy.extensions.filters.http.ext_proc.v3.ProcessingMode",
        "request_body_mode",
        &[4],
        "the ext_proc body mode FULL_DUPLEX_STREAMED is not implemented by Legate",
    ),
    (
        "envoy.extensions.filters.http.ext_proc.v3.ProcessingMode",
        "request_body_mode",
        &[5],
        "the ext_proc body mode GRPC is not implemented by Legate",
    ),
    (
        "envoy.extensions.filters.http.ext_proc.v3.ProcessingMode",
        "response_body_mode",
        &[4],
        "the ext_proc body mode FULL_DUPLEX_STREAMED is not implemented by Legate",
    ),
    (
        "envoy.extensions.filters.http.ext_proc.v3.ProcessingMode",
        "response_body_mode",
        &[5],
        "the ext_proc body mode GRPC is not implemented by Legate",
    ),
];

/// A `GrpcService` whose filter can call a `google_grpc` target (and send
/// `initial_metadata`); other users of the message keep `envoy_grpc` alone.
const GRPC_SERVICE_EXT_AUTHZ: &[&str] = &["envoy_grpc", "google_grpc", "timeout", "initial_metadata"];

/// Shared messages honoured only in part where they are: (parent message,
/// its field, the fields honoured there).
/// A Unix socket (`pipe`) is an address an endpoint of a STATIC cluster
/// (or an EDS assignment) may have; listeners and the admin take socket
/// addresses only.
const NARROWED: &[(&str, &str, &[&str])] = &[
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "http_protocol_options",
        &["accept_http_10", "default_host_for_http_10"],
    ),
    ("envoy.extensions.filters.http.ext_authz.v3.ExtAuthz", "grpc_service", GRPC_SERVICE_EXT_AUTHZ),
    ("envoy.extensions.filters.network.ext_authz.v3.ExtAuthz", "grpc_service", GRPC_SERVICE_EXT_AUTHZ),
    ("envoy.config.endpoint.v3.Endpoint", "address", &["socket_address", "pipe"]),
];

/// The fields honoured in `parent.field` when this table narrows it.
pub(super) fn narrowed(parent: &str, field: &str) -> Option<&'static [&'static str]> {
    NARROWED.iter().find(|(m, f, _)| *m == parent && *f == field).map(|(_, _, fields)| *fields)
}

/// The fields of `message` learnt here (none when it is not listed).
pub(super) fn fields(message: &str) -> &'static [&'static str] {
    FIELDS.iter().find(|(m, _)| *m == message).map_or(&[], |(_, f)| f)
}
