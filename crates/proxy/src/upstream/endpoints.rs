//! A `ClusterLoadAssignment` read into endpoint lists: every endpoint with
//! its port, weight and placement (priority, locality), and for EDS the
//! hosts with their socket addresses.

use crate::common::metadata::metadata_json;
use crate::io::unix::UnixAddr;
use crate::upstream::host::{Extra, HealthCheckTarget, Placement};
use legate_api::pb::envoy::config::core::v3::{address, socket_address};
use legate_api::pb::envoy::config::endpoint::v3::{lb_endpoint::HostIdentifier, ClusterLoadAssignment};
use std::net::SocketAddr;
use std::sync::Arc;

/// An endpoint as configured: address or hostname, port, weight,
/// placement, and what it is known by.
pub type Endpoint = (String, u16, u32, Placement, Named);

/// A host with its socket address: address, its host name (see `Named`),
/// weight, placement, and what else it carries.
pub type HostEntry = (SocketAddr, String, u32, Placement, Extra);

/// What an endpoint is known by besides its address: `Endpoint.hostname`
/// (empty when unset), and what else it carries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Named {
    pub hostname: String,
    pub extra: Extra,
}

/// `Endpoint.health_check_config`, `None` when absent.
fn health_check_target(
    c: Option<&legate_api::pb::envoy::config::endpoint::v3::endpoint::HealthCheckConfig>,
) -> Result<Option<Arc<HealthCheckTarget>>, String> {
    let Some(c) = c else { return Ok(None) };
    let address = match c.address.as_ref().and_then(|a| a.address.as_ref()) {
        None => None,
        Some(address::Address::SocketAddress(sa)) => {
            let ip: std::net::IpAddr = sa
                .address
                .parse()
                .map_err(|_| format!("health_check_config.address: malformed IP address: {}", sa.address))?;
            let port = match sa.port_specifier {
                Some(socket_address::PortSpecifier::PortValue(p)) => p,
                _ => 0,
            };
            Some(SocketAddr::new(
                ip,
                u16::try_from(port).map_err(|_| "health_check_config.address: port out of range")?,
            ))
        }
        Some(_) => return Err("health_check_config.address: only socket addresses are supported".into()),
    };
    Ok(Some(Arc::new(HealthCheckTarget {
        address,
        port: u16::try_from(c.port_value).map_err(|_| "health_check_config.port_value: out of range")?,
        hostname: c.hostname.clone(),
        disabled: c.disable_active_health_check,
    })))
}

/// Every endpoint of the assignment.
pub fn endpoints(la: &ClusterLoadAssignment) -> Result<Vec<Endpoint>, String> {
    let mut out = Vec::new();
    for (li, l) in la.endpoints.iter().enumerate() {
        let placement = Placement {
            priority: l.priority,
            locality: li as u32,
            locality_weight: l.load_balancing_weight.map_or(0, |w| w.value),
        };
        for e in &l.lb_endpoints {
            let weight = e.load_balancing_weight.map(|w| w.value).unwrap_or(1);
            let Some(HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
                return Err("load_assignment: only endpoint hosts are supported".into());
            };
            let mut extra = Extra {
                metadata: metadata_json(e.metadata.as_ref()),
                health_check: health_check_target(ep.health_check_config.as_ref())?,
                pipe: None,
            };
            let (addr, port) = match ep.address.as_ref().and_then(|a| a.address.as_ref()) {
                Some(address::Address::SocketAddress(sa)) => {
                    let Some(socket_address::PortSpecifier::PortValue(port)) = sa.port_specifier else {
                        return Err("load_assignment: port_value is required".into());
                    };
                    (sa.address.clone(), u16::try_from(port).map_err(|_| "port out of range")?)
                }
                Some(address::Address::Pipe(p)) => {
                    let pipe = UnixAddr::parse(&p.path, p.mode).map_err(|e| format!("load_assignment: {e}"))?;
                    extra.pipe = Some(Arc::new(pipe));
                    (String::new(), 0)
                }
                _ => return Err("load_assignment: only socket and pipe addresses are supported".into()),
            };
            let named = Named { hostname: ep.hostname.clone(), extra };
            out.push((addr, port, weight, placement, named));
        }
    }
    Ok(out)
}

/// Hosts of an EDS assignment, or of a STATIC cluster's: addresses must be
/// IPs or Unix sockets (`pipe`), as in Envoy; a host's name is its
/// `Endpoint.hostname` (none by default, as Envoy's). A Unix socket host
/// stands at the unspecified address `0.0.0.0:0` for what keys hosts by
/// socket address (the pools), so an assignment holds at most one.
pub fn eds_hosts(la: &ClusterLoadAssignment) -> Result<Vec<HostEntry>, String> {
    let all = endpoints(la)?;
    if all.iter().filter(|e| e.4.extra.pipe.is_some()).count() > 1 {
        return Err("load_assignment: more than one pipe endpoint in a cluster is not implemented by Legate".into());
    }
    all.into_iter()
        .map(|(addr, port, w, p, named)| {
            if named.extra.pipe.is_some() {
                return Ok((PIPE_STAND_IN, named.hostname, w, p, named.extra));
            }
            let ip: std::net::IpAddr = addr.parse().map_err(|_| format!("malformed IP address: {addr}"))?;
            Ok((SocketAddr::new(ip, port), named.hostname, w, p, named.extra))
        })
        .collect()
}

/// The socket address a Unix socket host stands at.
pub const PIPE_STAND_IN: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);
