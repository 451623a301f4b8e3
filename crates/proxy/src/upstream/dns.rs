//! DNS for STRICT_DNS and LOGICAL_DNS clusters, on the main thread: what a
//! cluster resolves, and one resolution of it into the cluster's hosts.
//! Names go to the system's resolver (getaddrinfo), or, with the cluster's
//! own name servers (`typed_dns_resolver_config` with c-ares `resolvers`,
//! or the deprecated `dns_resolvers`) or `respect_dns_ttl`, to Legate's DNS
//! client (`/etc/resolv.conf`'s servers unless the cluster names some),
//! which also gives the answers' TTL.

use crate::upstream::dns_client;
use crate::upstream::endpoints::{Endpoint, HostEntry};
use crate::upstream::membership::Membership;
use legate_api::pb::envoy::config::cluster::v3::{cluster::DnsLookupFamily, Cluster as PbCluster};
use legate_api::pb::envoy::config::core::v3::{address::Address as AddressKind, socket_address, Address};
use legate_api::pb::envoy::extensions::network::dns_resolver::cares::v3::CaresDnsResolverConfig;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// A cluster's DNS settings.
pub struct Dns {
    /// The endpoints to resolve (hostnames, or addresses).
    pub targets: Vec<Endpoint>,
    /// `dns_refresh_rate`: how often the targets are resolved again.
    pub refresh: Duration,
    /// `dns_lookup_family`.
    pub family: i32,
    /// LOGICAL_DNS: only the first address of each name is used.
    pub first_address_only: bool,
    /// The cluster's own name servers (none: the system's).
    pub resolvers: Vec<SocketAddr>,
    /// `respect_dns_ttl`: the next resolution comes after the answers'
    /// smallest TTL instead of `dns_refresh_rate` (a zero TTL, or no
    /// answer, keeps the refresh rate), as Envoy does.
    pub respect_ttl: bool,
}

impl Dns {
    // Envoy still reads the deprecated cluster-level `dns_refresh_rate`.
    #[allow(deprecated)]
    pub fn compile(c: &PbCluster, targets: Vec<Endpoint>, first_address_only: bool) -> Result<Self, String> {
        Ok(Self {
            targets,
            refresh: legate_api::duration::or(c.dns_refresh_rate.as_ref(), Duration::from_secs(5)),
            family: c.dns_lookup_family,
            first_address_only,
            resolvers: resolvers(c)?,
            respect_ttl: c.respect_dns_ttl,
        })
    }

    /// How long until the next resolution, after one that found `ttl`.
    pub fn next_wait(&self, ttl: Option<Duration>) -> Duration {
        match ttl {
            Some(t) if self.respect_ttl && !t.is_zero() => t,
            _ => self.refresh,
        }
    }

    /// Resolves every target once and installs the result in `hosts`; the
    /// smallest TTL of the answers, when the resolver told it.
    pub async fn resolve_once(&self, cluster: &str, hosts: &Membership) -> Option<Duration> {
        let family = DnsLookupFamily::try_from(self.family).unwrap_or(DnsLookupFamily::Auto);
        let mut resolved: Vec<HostEntry> = Vec::new();
        let mut min_ttl: Option<Duration> = None;
        for (name, port, weight, placement, named) in &self.targets {
            let addrs: Vec<SocketAddr> = match self.lookup(name, *port, family).await {
                Ok((a, ttl)) => {
                    if let Some(t) = ttl {
                        min_ttl = Some(min_ttl.map_or(t, |m| m.min(t)));
                    }
                    a
                }
                Err(e) => {
                    tracing::warn!(cluster = %cluster, host = %name, "DNS resolution failed: {e}");
                    continue;
                }
            };
            let picked = pick_family(addrs, family);
            let picked = if self.first_address_only { picked.into_iter().take(1).collect() } else { picked };
            for a in picked {
                if !resolved.iter().any(|(h, ..)| *h == a) {
                    // Envoy names a resolved host by its `Endpoint.hostname`,
                    // else by the name it resolved.
                    let hostname = if named.hostname.is_empty() { name } else { &named.hostname };
                    resolved.push((a, hostname.clone(), *weight, *placement, named.extra.clone()));
                }
            }
        }
        hosts.update(resolved);
        min_ttl
    }

    /// One name's addresses, and their TTL when Legate's client asked.
    async fn lookup(
        &self,
        name: &str,
        port: u16,
        family: DnsLookupFamily,
    ) -> Result<(Vec<SocketAddr>, Option<Duration>), String> {
        if let Ok(ip) = name.parse::<IpAddr>() {
            return Ok((vec![SocketAddr::new(ip, port)], None));
        }
        let system = || async {
            tokio::net::lookup_host((name, port)).await.map(|a| (a.collect(), None)).map_err(|e| e.to_string())
        };
        if self.resolvers.is_empty() && !self.respect_ttl {
            return system().await;
        }
        let servers = if self.resolvers.is_empty() { dns_client::system_servers() } else { self.resolvers.clone() };
        match ask(&servers, name, family).await {
            Ok(a) if !a.addrs.is_empty() || !self.resolvers.is_empty() => {
                Ok((a.addrs.into_iter().map(|ip| SocketAddr::new(ip, port)).collect(), a.ttl))
            }
            // The system's servers do not know it: `/etc/hosts` may (no TTL).
            Ok(_) | Err(_) if self.resolvers.is_empty() => system().await,
            Ok(_) => Ok((vec![], None)),
            Err(e) => Err(e),
        }
    }
}

/// Asks for the family's records: AUTO and V4_PREFERRED ask for the
/// preferred type and fall back to the other when it has none; ALL asks
/// for both.
async fn ask(servers: &[SocketAddr], name: &str, family: DnsLookupFamily) -> Result<dns_client::Answer, String> {
    let (first, fallback) = match family {
        DnsLookupFamily::V4Only => (false, None),
        DnsLookupFamily::V6Only => (true, None),
        DnsLookupFamily::Auto => (true, Some(false)),
        DnsLookupFamily::V4Preferred => (false, Some(true)),
        DnsLookupFamily::All => {
            let mut a = dns_client::query(servers, name, false).await?;
            let b = dns_client::query(servers, name, true).await?;
            a.addrs.extend(b.addrs);
            a.ttl = match (a.ttl, b.ttl) {
                (Some(x), Some(y)) => Some(x.min(y)),
                (x, y) => x.or(y),
            };
            return Ok(a);
        }
    };
    let a = dns_client::query(servers, name, first).await?;
    match fallback {
        Some(ipv6) if a.addrs.is_empty() => dns_client::query(servers, name, ipv6).await,
        _ => Ok(a),
    }
}

/// The cluster's own name servers: c-ares `resolvers` in
/// `typed_dns_resolver_config`, else the deprecated `dns_resolvers`.
// Envoy still reads the deprecated `dns_resolvers`.
#[allow(deprecated)]
fn resolvers(c: &PbCluster) -> Result<Vec<SocketAddr>, String> {
    let listed: Vec<Address> = match c.typed_dns_resolver_config.as_ref().and_then(|t| t.typed_config.as_ref()) {
        Some(any) => {
            let cares: CaresDnsResolverConfig = legate_api::any::unpack(any)
                .map_err(|e| format!("typed_dns_resolver_config: only the c-ares resolver is implemented: {e}"))?;
            cares.resolvers
        }
        None => c.dns_resolvers.clone(),
    };
    listed
        .iter()
        .enumerate()
        .map(|(i, a)| match &a.address {
            Some(AddressKind::SocketAddress(sa)) => {
                let ip: IpAddr =
                    sa.address.parse().map_err(|_| format!("resolvers[{i}]: '{}' is not an IP address", sa.address))?;
                let port = match sa.port_specifier {
                    Some(socket_address::PortSpecifier::PortValue(p)) if p > 0 => {
                        u16::try_from(p).map_err(|_| format!("resolvers[{i}]: port {p} is out of range"))?
                    }
                    _ => 53,
                };
                Ok(SocketAddr::new(ip, port))
            }
            _ => Err(format!("resolvers[{i}]: a socket address is required")),
        })
        .collect()
}

/// Envoy's lookup families: AUTO prefers IPv6 and falls back to IPv4.
pub(crate) fn pick_family(addrs: Vec<SocketAddr>, family: DnsLookupFamily) -> Vec<SocketAddr> {
    let (v4, v6): (Vec<_>, Vec<_>) = addrs.into_iter().partition(|a| a.is_ipv4());
    match family {
        DnsLookupFamily::V4Only => v4,
        DnsLookupFamily::V6Only => v6,
        DnsLookupFamily::Auto => {
            if v6.is_empty() {
                v4
            } else {
                v6
            }
        }
        DnsLookupFamily::V4Preferred => {
            if v4.is_empty() {
                v6
            } else {
                v4
            }
        }
        DnsLookupFamily::All => v4.into_iter().chain(v6).collect(),
    }
}
