//! The kinds of resource: the Envoy kinds sent over xDS as they are, and the
//! higher-level kinds compiled into them; their names and xDS type URLs.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    Cluster,
    ClusterLoadAssignment,
    Listener,
    RouteConfiguration,
    Secret,
    /// An RTDS layer's values (`envoy.service.runtime.v3.Runtime`).
    Runtime,
    /// Higher-level kinds, compiled into the Envoy kinds above (see `mesh`).
    Service,
    Gateway,
    Route,
    /// Evaluated by the control plane (`alerts/`); compiles to nothing.
    AlertRule,
    /// Driven by the control plane (`releases/`); splits its Service's clusters.
    Release,
    /// The default policy of staged config rollouts (`rollouts/`); compiles to nothing.
    Rollout,
    /// A domain's global rate limits, served by the control plane's own
    /// rate limit service (`ratelimit/`); compiles to nothing.
    RateLimit,
}

pub const ALL_KINDS: [Kind; 6] =
    [Kind::Cluster, Kind::ClusterLoadAssignment, Kind::Listener, Kind::RouteConfiguration, Kind::Secret, Kind::Runtime];

impl Kind {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "cluster" | "clusters" | "cds" => Self::Cluster,
            "clusterloadassignment" | "clusterloadassignments" | "endpoints" | "eds" => Self::ClusterLoadAssignment,
            "listener" | "listeners" | "lds" => Self::Listener,
            "routeconfiguration" | "routeconfigurations" | "routes" | "rds" => Self::RouteConfiguration,
            "secret" | "secrets" | "sds" => Self::Secret,
            "runtime" | "runtimes" | "rtds" => Self::Runtime,
            "service" | "services" | "svc" => Self::Service,
            "gateway" | "gateways" | "gw" => Self::Gateway,
            "route" | "httproute" => Self::Route,
            "alertrule" | "alertrules" | "alert" | "alerts" => Self::AlertRule,
            "release" | "releases" => Self::Release,
            "rollout" | "rollouts" => Self::Rollout,
            "ratelimit" | "ratelimits" => Self::RateLimit,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Cluster => "Cluster",
            Self::ClusterLoadAssignment => "ClusterLoadAssignment",
            Self::Listener => "Listener",
            Self::RouteConfiguration => "RouteConfiguration",
            Self::Secret => "Secret",
            Self::Runtime => "Runtime",
            Self::Service => "Service",
            Self::Gateway => "Gateway",
            Self::Route => "Route",
            Self::AlertRule => "AlertRule",
            Self::Release => "Release",
            Self::Rollout => "Rollout",
            Self::RateLimit => "RateLimit",
        }
    }

    /// True for the kinds that are sent over xDS as they are.
    pub fn is_envoy(self) -> bool {
        !self.type_url().is_empty()
    }

    /// The xDS type URL; empty for the kinds the control plane compiles
    /// into others or keeps for itself.
    pub fn type_url(self) -> &'static str {
        match self {
            Self::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            Self::ClusterLoadAssignment => "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            Self::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            Self::RouteConfiguration => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            Self::Secret => "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
            Self::Runtime => "type.googleapis.com/envoy.service.runtime.v3.Runtime",
            Self::Service
            | Self::Gateway
            | Self::Route
            | Self::AlertRule
            | Self::Release
            | Self::Rollout
            | Self::RateLimit => "",
        }
    }

    pub fn from_type_url(url: &str) -> Option<Self> {
        ALL_KINDS.into_iter().find(|k| k.type_url() == url)
    }

    /// Listener and Cluster are wildcard types in xDS; the others are named.
    pub fn is_wildcard(self) -> bool {
        matches!(self, Self::Cluster | Self::Listener)
    }
}
