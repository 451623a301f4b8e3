//! The support table's part for distributed tracing: the connection
//! manager's `tracing`, the tracers Legate drives (Zipkin, OpenTelemetry, SkyWalking,
//! Datadog),
//! route decorators and a listener's traffic direction. `support` reads
//! these beside its own lists.

/// Fields tracing adds to messages of the main table: (message, field).
pub const TRACING_ADDED: &[(&str, &str)] = &[
    ("envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager", "tracing"),
    ("envoy.config.listener.v3.Listener", "traffic_direction"),
    ("envoy.config.route.v3.Route", "decorator"),
    // Deprecated for `spawn_upstream_span`; Envoy 1.40 still honours it.
    ("envoy.extensions.filters.http.router.v3.Router", "start_child_span"),
];

/// Tracer configs (`tracing.provider.typed_config`) the proxy drives.
pub const TRACING_EXTENSIONS: &[&str] = &[
    "envoy.config.trace.v3.ZipkinConfig",
    "envoy.config.trace.v3.OpenTelemetryConfig",
    "envoy.config.trace.v3.SkyWalkingConfig",
    "envoy.config.trace.v3.DatadogConfig",
];

pub const TRACING_FIELDS: &[(&str, &[&str])] = &[
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.Tracing",
        &[
            "provider",
            "client_sampling",
            "random_sampling",
            "overall_sampling",
            "max_path_tag_length",
            "custom_tags",
            "spawn_upstream_span",
        ],
    ),
    ("envoy.config.trace.v3.Tracing.Http", &["name", "typed_config"]),
    // `collector_service`, `split_spans_for_request` and the W3C
    // propagation option are not built.
    (
        "envoy.config.trace.v3.ZipkinConfig",
        &[
            "collector_cluster",
            "collector_endpoint",
            "trace_id_128bit",
            "shared_span_context",
            "collector_endpoint_version",
            "collector_hostname",
        ],
    ),
    // OTLP over gRPC; the HTTP exporter, samplers and resource detectors
    // are not built.
    ("envoy.config.trace.v3.OpenTelemetryConfig", &["grpc_service", "service_name"]),
    ("envoy.config.trace.v3.SkyWalkingConfig", &["grpc_service", "client_config"]),
    // `remote_config` (the agent polled for sampling rules) is not built.
    ("envoy.config.trace.v3.DatadogConfig", &["collector_cluster", "service_name", "collector_hostname"]),
    ("envoy.config.trace.v3.ClientConfig", &["service_name", "instance_name", "backend_token", "max_cache_size"]),
    // `metadata` tags are not built.
    ("envoy.type.tracing.v3.CustomTag", &["tag", "literal", "environment", "request_header"]),
    ("envoy.type.tracing.v3.CustomTag.Literal", &["value"]),
    ("envoy.type.tracing.v3.CustomTag.Environment", &["name", "default_value"]),
    ("envoy.type.tracing.v3.CustomTag.Header", &["name", "default_value"]),
    ("envoy.config.route.v3.Decorator", &["operation", "propagate"]),
];

/// Tracing enum values Legate refuses: (message, field, values, reason).
pub const TRACING_UNSUPPORTED_VALUES: &[(&str, &str, &[i32], &str)] = &[(
    "envoy.config.trace.v3.ZipkinConfig",
    "collector_endpoint_version",
    &[2, 3],
    "Zipkin's HTTP_PROTO and GRPC collector formats are not implemented by Legate (HTTP_JSON is)",
)];
