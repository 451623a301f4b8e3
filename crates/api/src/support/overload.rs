//! The bootstrap's `overload_manager`: the messages and fields Legate
//! honours (they join the main table's).

pub(super) const FIELDS: &[(&str, &[&str])] = &[
    // The overload manager: the global downstream connection limit, the
    // fixed heap and injected resource monitors, threshold and scaled
    // triggers; the actions it takes and its load shed points are checked
    // by name when the proxy reads them, and so are `reduce_timeouts`'
    // timers (the connection idle timer only).
    (
        "envoy.config.overload.v3.OverloadManager",
        &["refresh_interval", "resource_monitors", "actions", "loadshed_points"],
    ),
    ("envoy.config.overload.v3.LoadShedPoint", &["name", "triggers"]),
    ("envoy.config.overload.v3.ResourceMonitor", &["name", "typed_config"]),
    ("envoy.config.overload.v3.OverloadAction", &["name", "triggers", "typed_config"]),
    ("envoy.config.overload.v3.ScaleTimersOverloadActionConfig", &["timer_scale_factors"]),
    ("envoy.config.overload.v3.ScaleTimersOverloadActionConfig.ScaleTimer", &["timer", "min_timeout", "min_scale"]),
    ("envoy.config.overload.v3.Trigger", &["name", "threshold", "scaled"]),
    ("envoy.config.overload.v3.ThresholdTrigger", &["value"]),
    ("envoy.config.overload.v3.ScaledTrigger", &["scaling_threshold", "saturation_threshold"]),
    ("envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig", &["max_heap_size_bytes"]),
    ("envoy.extensions.resource_monitors.injected_resource.v3.InjectedResourceConfig", &["filename"]),
    (
        "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
        &["max_active_downstream_connections"],
    ),
];
