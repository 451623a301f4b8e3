//! Envoy's checks beyond the schema: references that must resolve, files that
//! must exist, extensions that must be configured.

use crate::any::unpack;
use crate::error::FieldError;
use crate::pb::envoy::config::bootstrap::v3::Bootstrap;
use crate::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use crate::pb::envoy::config::core::v3::{address, socket_address};
use crate::pb::envoy::config::route::v3::{route, route_action, RouteConfiguration};
use crate::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, HttpConnectionManager,
};
use crate::walk::walk;
use prost_reflect::ReflectMessage;
use std::collections::HashSet;
use std::net::IpAddr;

pub const HCM_TYPE: &str = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

/// Envoy 1.40 refuses Zipkin's default (deprecated) endpoint version.
pub const ZIPKIN_DEFAULT_VERSION: &str = "collector_endpoint_version: Using the default now-deprecated value DEPRECATED_AND_UNAVAILABLE_DO_NOT_USE for enum 'envoy.config.trace.v3.ZipkinConfig.collector_endpoint_version'; a non-default value must now be explicitly set";

/// Every semantic problem in a bootstrap.
pub fn check_bootstrap(b: &Bootstrap) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let Some(dynamic) = crate::convert::to_dynamic(b) else { return errors };
    walk(&dynamic, "", &mut |m, p| check_message(m, p, &mut errors));

    check_static_secrets(b, &dynamic, &mut errors);

    let Some(sr) = &b.static_resources else { return errors };
    let mut cluster_names = HashSet::new();
    for (i, c) in sr.clusters.iter().enumerate() {
        let path = format!("static_resources.clusters[{i}]");
        if !cluster_names.insert(c.name.as_str()) {
            errors.push(FieldError::new(
                format!("{path}.name"),
                format!("cluster manager: duplicate cluster '{}'", c.name),
            ));
        }
        check_cluster_endpoints(c, &path, &mut errors);
    }
    let mut listener_names = HashSet::new();
    for (i, l) in sr.listeners.iter().enumerate() {
        let path = format!("static_resources.listeners[{i}]");
        if !l.name.is_empty() && !listener_names.insert(l.name.as_str()) {
            errors.push(FieldError::new(format!("{path}.name"), format!("duplicate listener '{}' found", l.name)));
        }
        for (ci, chain) in l.filter_chains.iter().chain(l.default_filter_chain.iter()).enumerate() {
            for (fi, f) in chain.filters.iter().enumerate() {
                let Some(crate::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(any)) = &f.config_type
                else {
                    continue;
                };
                if crate::any::type_name(any) != HCM_TYPE {
                    continue;
                }
                let Ok(hcm) = unpack::<HttpConnectionManager>(any) else { continue };
                let hcm_path = format!("{path}.filter_chains[{ci}].filters[{fi}].typed_config");
                if let Some(RouteSpecifier::RouteConfig(rc)) = &hcm.route_specifier {
                    check_route_clusters(rc, &cluster_names, &format!("{hcm_path}.route_config"), &mut errors);
                }
                check_zipkin(&hcm, &cluster_names, &hcm_path, &mut errors);
            }
        }
    }
    errors
}

/// Static secrets: names unique per type, and every reference by name alone
/// (an `SdsSecretConfig` without `sds_config`) to one that exists.
fn check_static_secrets(b: &Bootstrap, dynamic: &prost_reflect::DynamicMessage, errors: &mut Vec<FieldError>) {
    use crate::pb::envoy::extensions::transport_sockets::tls::v3::secret::Type;
    let secrets = b.static_resources.as_ref().map(|s| s.secrets.as_slice()).unwrap_or_default();
    let mut seen = HashSet::new();
    for (i, s) in secrets.iter().enumerate() {
        let kind = match &s.r#type {
            Some(Type::TlsCertificate(_)) => "TlsCertificate",
            Some(Type::ValidationContext(_)) => "CertificateValidationContext",
            Some(Type::SessionTicketKeys(_)) => "TlsSessionTicketKeys",
            Some(Type::GenericSecret(_)) => "GenericSecret",
            None => continue,
        };
        if !seen.insert((kind, s.name.as_str())) {
            errors.push(FieldError::new(
                format!("static_resources.secrets[{i}].name"),
                format!("Duplicate static {kind} secret name {}", s.name),
            ));
        }
    }
    let names: HashSet<&str> = secrets.iter().map(|s| s.name.as_str()).collect();
    walk(dynamic, "", &mut |m, p| {
        if m.descriptor().full_name() != "envoy.extensions.transport_sockets.tls.v3.SdsSecretConfig"
            || m.has_field_by_name("sds_config")
        {
            return;
        }
        let name = m.get_field_by_name("name").and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
        if !names.contains(name.as_str()) {
            errors.push(FieldError::new(p, format!("Unknown static secret: {name}")));
        }
    });
}

/// Checks that apply to a message wherever it appears.
fn check_message(m: &prost_reflect::DynamicMessage, path: &str, errors: &mut Vec<FieldError>) {
    let name = m.descriptor().full_name().to_owned();
    match name.as_str() {
        // Envoy 1.40 finds an extension's factory by the type of its typed_config:
        // a filter named but not configured is an error.
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter"
        | "envoy.config.listener.v3.Filter"
        | "envoy.config.listener.v3.ListenerFilter"
        | "envoy.config.accesslog.v3.AccessLog" => {
            let has_config = m.has_field_by_name("typed_config") || m.has_field_by_name("config_discovery");
            if !has_config {
                let fname = m.get_field_by_name("name").and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
                errors.push(FieldError::new(
                    path,
                    format!("Didn't find a registered implementation for '{fname}' with type URL: ''"),
                ));
            }
        }
        "envoy.config.core.v3.DataSource" => {
            if let Some(f) = m.get_field_by_name("filename").and_then(|v| v.as_str().map(str::to_owned)) {
                if m.has_field_by_name("filename") && !std::path::Path::new(&f).exists() {
                    errors.push(FieldError::new(format!("{path}.filename"), format!("Invalid path: {f}")));
                }
            }
        }
        "envoy.config.core.v3.PathConfigSource" | "envoy.config.core.v3.ConfigSource" => {
            let field = "path";
            if m.has_field_by_name(field) {
                if let Some(p) = m.get_field_by_name(field).and_then(|v| v.as_str().map(str::to_owned)) {
                    if !std::path::Path::new(&p).exists() {
                        errors.push(FieldError::new(
                            format!("{path}.{field}"),
                            format!("paths must refer to an existing path in the system: '{p}' does not exist"),
                        ));
                    }
                }
            }
        }
        "envoy.config.bootstrap.v3.RuntimeLayer.DiskLayer" => {
            if let Some(root) = m.get_field_by_name("symlink_root").and_then(|v| v.as_str().map(str::to_owned)) {
                if !root.is_empty() && !std::path::Path::new(&root).exists() {
                    errors.push(FieldError::new(
                        format!("{path}.symlink_root"),
                        format!("unable to add filesystem watch for file {root}: No such file or directory"),
                    ));
                }
            }
        }
        _ => {}
    }
}

fn check_cluster_endpoints(
    c: &crate::pb::envoy::config::cluster::v3::Cluster,
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    let kind = match c.cluster_discovery_type {
        Some(ClusterDiscoveryType::Type(t)) => DiscoveryType::try_from(t).unwrap_or(DiscoveryType::Static),
        Some(ClusterDiscoveryType::ClusterType(_)) => return,
        None => DiscoveryType::Static,
    };
    let Some(la) = &c.load_assignment else { return };
    let endpoints: Vec<_> = la.endpoints.iter().flat_map(|l| l.lb_endpoints.iter()).collect();
    if kind == DiscoveryType::LogicalDns && (la.endpoints.len() != 1 || endpoints.len() != 1) {
        errors.push(FieldError::new(
            format!("{path}.load_assignment"),
            "LOGICAL_DNS clusters must have a single locality_lb_endpoint and a single lb_endpoint",
        ));
    }
    if kind != DiscoveryType::Static {
        return;
    }
    for (li, l) in la.endpoints.iter().enumerate() {
        for (ei, e) in l.lb_endpoints.iter().enumerate() {
            let Some(crate::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier::Endpoint(ep)) =
                &e.host_identifier
            else {
                continue;
            };
            let Some(address::Address::SocketAddress(sa)) = ep.address.as_ref().and_then(|a| a.address.as_ref()) else {
                continue;
            };
            if sa.address.parse::<IpAddr>().is_err() {
                errors.push(FieldError::new(
                    format!("{path}.load_assignment.endpoints[{li}].lb_endpoints[{ei}].endpoint.address.socket_address.address"),
                    format!("malformed IP address: {}", sa.address),
                ));
            }
            if matches!(sa.port_specifier, Some(socket_address::PortSpecifier::NamedPort(_))) {
                errors.push(FieldError::new(
                    format!(
                        "{path}.load_assignment.endpoints[{li}].lb_endpoints[{ei}].endpoint.address.socket_address"
                    ),
                    "named ports are not supported",
                ));
            }
        }
    }
}

/// Envoy's checks when it creates a Zipkin tracer: the endpoint version is
/// set and the collector cluster exists.
fn check_zipkin(hcm: &HttpConnectionManager, clusters: &HashSet<&str>, path: &str, errors: &mut Vec<FieldError>) {
    use crate::pb::envoy::config::trace::v3::{tracing::http::ConfigType, ZipkinConfig};
    let provider = hcm.tracing.as_ref().and_then(|t| t.provider.as_ref());
    let Some(ConfigType::TypedConfig(any)) = provider.and_then(|p| p.config_type.as_ref()) else { return };
    let Ok(z) = unpack::<ZipkinConfig>(any) else { return };
    let p = format!("{path}.tracing.provider.typed_config");
    if z.collector_endpoint_version == 0 {
        let (field, reason) = ZIPKIN_DEFAULT_VERSION.split_once(": ").unwrap_or(("", ZIPKIN_DEFAULT_VERSION));
        errors.push(FieldError::new(format!("{p}.{field}"), reason));
    }
    if !clusters.contains(z.collector_cluster.as_str()) {
        errors.push(FieldError::new(
            format!("{p}.collector_cluster"),
            format!("envoy.tracers.zipkin: unknown cluster '{}'", z.collector_cluster),
        ));
    }
}

/// Envoy checks a static route table's clusters exist (`validate_clusters`
/// defaults to true for inline route configs).
fn check_route_clusters(rc: &RouteConfiguration, clusters: &HashSet<&str>, path: &str, errors: &mut Vec<FieldError>) {
    if rc.validate_clusters.is_some_and(|v| !v.value) {
        return;
    }
    for (vi, vh) in rc.virtual_hosts.iter().enumerate() {
        for (ri, r) in vh.routes.iter().enumerate() {
            let Some(route::Action::Route(action)) = &r.action else { continue };
            let rpath = format!("{path}.virtual_hosts[{vi}].routes[{ri}].route");
            match &action.cluster_specifier {
                Some(route_action::ClusterSpecifier::Cluster(name)) if !clusters.contains(name.as_str()) => {
                    errors
                        .push(FieldError::new(format!("{rpath}.cluster"), format!("route: unknown cluster '{name}'")));
                }
                Some(route_action::ClusterSpecifier::WeightedClusters(wc)) => {
                    for (wi, w) in wc.clusters.iter().enumerate() {
                        if !w.name.is_empty() && !clusters.contains(w.name.as_str()) {
                            errors.push(FieldError::new(
                                format!("{rpath}.weighted_clusters.clusters[{wi}].name"),
                                format!("route: unknown weighted cluster '{}'", w.name),
                            ));
                        }
                    }
                }
                _ => {}
            }
        }
    }
}
