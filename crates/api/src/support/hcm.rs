//! The HTTP connection manager's own messages: the fields Legate honours
//! (they join the main table's; the manager's protocol options and the
//! rest of its older fields are in `compat`).

pub(super) const FIELDS: &[(&str, &[&str])] = &[
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        &[
            "codec_type",
            "stat_prefix",
            "route_config",
            "http_filters",
            "access_log",
            "use_remote_address",
            "xff_num_trusted_hops",
            "skip_xff_append",
            "generate_request_id",
            "preserve_external_request_id",
            "always_set_request_id_in_response",
            "server_name",
            "server_header_transformation",
            "request_timeout",
            "forward_client_cert_details",
            "set_current_client_cert_details",
            "stream_idle_timeout",
            "request_headers_timeout",
            "common_http_protocol_options",
            "max_request_headers_kb",
            "rds",
            "internal_address_config",
            "upgrade_configs",
            "http2_protocol_options",
            "normalize_path",
            "merge_slashes",
            "path_with_escaped_slashes_action",
            "via",
            "strip_any_host_port",
            "strip_matching_host_port",
        ],
    ),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.InternalAddressConfig",
        &["cidr_ranges"],
    ),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.UpgradeConfig",
        &["upgrade_type", "enabled"],
    ),
    ("envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter", &["name", "typed_config"]),
];
