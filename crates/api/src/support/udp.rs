//! UDP listeners and the UDP proxy: the messages, fields and extensions
//! Legate honours (they join the main table's). A listener's
//! `udp_listener_config` is in the main table.

pub(super) const EXTENSIONS: &[&str] =
    &["envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig", "envoy.extensions.filters.udp.udp_proxy.v3.Route"];

pub(super) const FIELDS: &[(&str, &[&str])] = &[
    ("envoy.config.listener.v3.UdpListenerConfig", &[]),
    (
        "envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig",
        &["stat_prefix", "cluster", "matcher", "idle_timeout", "hash_policies"],
    ),
    ("envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig.HashPolicy", &["source_ip", "key"]),
    ("envoy.extensions.filters.udp.udp_proxy.v3.Route", &["cluster"]),
];
