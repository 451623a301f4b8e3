//! A `GrpcService.google_grpc` target. Envoy calls such a service through
//! the Google C++ gRPC library, straight to `target_uri`, with no cluster of
//! the bootstrap. Legate compiles the target into a private HTTP/2 cluster
//! of one endpoint (the target's address, or its DNS name resolved as a
//! STRICT_DNS cluster resolves it) with `channel_credentials` as its TLS, so
//! the calls go over the same per-worker HTTP/2 pools, connection code and
//! TLS as every other upstream request. The cluster is nobody's: it is not in
//! the cluster map and its `cluster.*` stats go to a store of its own (Envoy
//! has none for it); what Envoy counts is the client's
//! `grpc.<stat_prefix>.google_grpc_client_creation`, `streams_total` and
//! `streams_closed_<grpc-status>`.

use crate::stats::{Counter, Store};
use crate::upstream::cluster::Cluster;
use legate_api::pb::envoy::config::cluster::v3::{cluster, Cluster as PbCluster};
use legate_api::pb::envoy::config::core::v3::grpc_service::google_grpc::channel_credentials::CredentialSpecifier;
use legate_api::pb::envoy::config::core::v3::grpc_service::google_grpc::SslCredentials;
use legate_api::pb::envoy::config::core::v3::grpc_service::GoogleGrpc as PbGoogleGrpc;
use legate_api::pb::envoy::config::core::v3::{
    address, socket_address, transport_socket, Address, Http2ProtocolOptions, SocketAddress, TransportSocket,
};
use legate_api::pb::envoy::config::endpoint::v3::LocalityLbEndpoints;
use legate_api::pb::envoy::config::endpoint::v3::{lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint};
use legate_api::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use legate_api::pb::envoy::r#type::matcher::v3::{string_matcher::MatchPattern, StringMatcher};
use std::net::IpAddr;
use std::sync::Arc;

/// gRPC's status codes run from 0 (OK) to 16 (UNAUTHENTICATED).
const STATUS_CODES: u32 = 17;
/// The status a call that got no answer in time closes with.
pub const DEADLINE_EXCEEDED: u32 = 4;
/// The status a call that reached no server closes with: Envoy's Google gRPC
/// client closes a stream whose operations failed with INTERNAL.
pub const INTERNAL: u32 = 13;

/// A compiled `google_grpc` target.
pub struct GoogleGrpc {
    /// The private cluster calls go over.
    pub cluster: Arc<Cluster>,
    /// Each call's `:authority`: the target's `host:port`, as gRPC sends it.
    pub authority: String,
    streams_total: Arc<Counter>,
    closed: Vec<Arc<Counter>>,
}

impl GoogleGrpc {
    /// Compiles `g` (errors name fields under `google_grpc`); `store` takes
    /// the client's stats. A DNS name is resolved in the background when a
    /// runtime runs; until then calls find no host.
    pub fn compile(g: &PbGoogleGrpc, store: &Store, workers: usize) -> Result<Arc<Self>, String> {
        let (host, port) = target(&g.target_uri).map_err(|e| format!("target_uri: {e}"))?;
        let ip = host.parse::<IpAddr>().ok();
        let transport_socket = match g.channel_credentials.as_ref().and_then(|c| c.credential_specifier.as_ref()) {
            None => None,
            Some(CredentialSpecifier::SslCredentials(ssl)) => Some(tls_socket(ssl, &host, ip)?),
            // gRPC's local credentials: no TLS, only to this machine.
            Some(CredentialSpecifier::LocalCredentials(_)) => match ip {
                Some(ip) if ip.is_loopback() => None,
                _ if host == "localhost" => None,
                _ => return Err("channel_credentials.local_credentials: the target must be a loopback address".into()),
            },
            Some(CredentialSpecifier::GoogleDefault(_)) => {
                return Err("channel_credentials.google_default is not implemented by Legate".into())
            }
        };
        let discovery = if ip.is_some() { cluster::DiscoveryType::Static } else { cluster::DiscoveryType::StrictDns };
        let endpoint = Endpoint {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: host.clone(),
                    port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        };
        let name = format!("google_grpc.{}", g.stat_prefix);
        #[allow(deprecated)]
        let pb = PbCluster {
            name: name.clone(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(discovery as i32)),
            http2_protocol_options: Some(Http2ProtocolOptions::default()),
            transport_socket,
            load_assignment: Some(ClusterLoadAssignment {
                cluster_name: name,
                endpoints: vec![LocalityLbEndpoints {
                    lb_endpoints: vec![LbEndpoint {
                        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(endpoint)),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let private = Arc::new(Store::default());
        let cluster = Cluster::compile(&pb, &private, workers, &Default::default())
            .map_err(|e| format!("channel_credentials: {e}"))?;
        if ip.is_none() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let _entered = rt.enter();
                crate::upstream::tasks::start(&cluster);
            }
        }
        let p = format!("grpc.{}.", g.stat_prefix);
        store.counter(&format!("{p}google_grpc_client_creation")).inc();
        let closed = (0..STATUS_CODES).map(|c| store.counter(&format!("{p}streams_closed_{c}"))).collect();
        let authority = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        Ok(Arc::new(Self { cluster, authority, streams_total: store.counter(&format!("{p}streams_total")), closed }))
    }

    /// A call started.
    pub fn started(&self) {
        self.streams_total.inc();
    }

    /// A call ended with gRPC status `code`.
    pub fn closed(&self, code: u32) {
        if let Some(c) = self.closed.get(code as usize) {
            c.inc();
        }
    }
}

/// The host and port of a gRPC target (gRPC's naming: `host[:port]`,
/// `dns:[//authority/]host[:port]`, `ipv4:addr[:port]`,
/// `ipv6:[addr][:port]`); the port is 443 when none is given.
fn target(uri: &str) -> Result<(String, u16), String> {
    let rest = if let Some(r) = uri.strip_prefix("dns:") {
        match r.strip_prefix("//") {
            Some(with_authority) => with_authority.split_once('/').map(|(_, h)| h).ok_or("no host after dns://")?,
            None => r,
        }
    } else if let Some(r) = uri.strip_prefix("ipv4:").or_else(|| uri.strip_prefix("ipv6:")) {
        if r.contains(',') {
            return Err("several addresses are not implemented by Legate".into());
        }
        r
    } else if let Some((scheme, _)) = uri.split_once(':').filter(|(s, _)| s.chars().all(|c| c.is_ascii_lowercase())) {
        if uri[scheme.len() + 1..].starts_with('/') || ["unix", "unix-abstract", "vsock", "xds"].contains(&scheme) {
            return Err(format!("the {scheme}: scheme is not implemented by Legate"));
        }
        uri
    } else {
        uri
    };
    split_host_port(rest)
}

fn split_host_port(s: &str) -> Result<(String, u16), String> {
    let port = |p: &str| p.parse::<u16>().map_err(|_| format!("{p:?} is not a port"));
    if let Some(v6) = s.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or("an IPv6 address without its closing ]")?;
        let p = match after.strip_prefix(':') {
            Some(p) => port(p)?,
            None if after.is_empty() => 443,
            None => return Err(format!("{s:?} is not host:port")),
        };
        return Ok((host.to_string(), p));
    }
    if s.parse::<std::net::Ipv6Addr>().is_ok() {
        return Ok((s.to_string(), 443));
    }
    let (host, p) = match s.rsplit_once(':') {
        Some((h, p)) => (h, port(p)?),
        None => (s, 443),
    };
    if host.is_empty() {
        return Err(format!("{s:?} has no host"));
    }
    Ok((host.to_string(), p))
}

/// `ssl_credentials` as an upstream TLS context: the roots verify the
/// server's chain and, as gRPC does, its name (a DNS SAN for a DNS target,
/// also sent as SNI; an IP SAN for an address); a client certificate when
/// both its chain and key are given; ALPN `h2`; TLS 1.2 and 1.3.
fn tls_socket(ssl: &SslCredentials, host: &str, ip: Option<IpAddr>) -> Result<TransportSocket, String> {
    let roots = ssl.root_certs.clone().ok_or(
        "channel_credentials.ssl_credentials.root_certs is required by Legate (gRPC's default roots are not read)",
    )?;
    let (san_type, sni) = match ip {
        Some(_) => (tls::subject_alt_name_matcher::SanType::IpAddress, String::new()),
        None => (tls::subject_alt_name_matcher::SanType::Dns, host.to_string()),
    };
    let validation = tls::CertificateValidationContext {
        trusted_ca: Some(roots),
        match_typed_subject_alt_names: vec![tls::SubjectAltNameMatcher {
            san_type: san_type as i32,
            matcher: Some(StringMatcher {
                match_pattern: Some(MatchPattern::Exact(host.to_string())),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let certs = match (&ssl.cert_chain, &ssl.private_key) {
        (Some(chain), Some(key)) => vec![tls::TlsCertificate {
            certificate_chain: Some(chain.clone()),
            private_key: Some(key.clone()),
            ..Default::default()
        }],
        (None, None) => Vec::new(),
        _ => return Err("channel_credentials.ssl_credentials: cert_chain and private_key go together".into()),
    };
    let ctx = tls::UpstreamTlsContext {
        common_tls_context: Some(tls::CommonTlsContext {
            tls_params: Some(tls::TlsParameters {
                tls_minimum_protocol_version: tls::tls_parameters::TlsProtocol::TlSv12 as i32,
                tls_maximum_protocol_version: tls::tls_parameters::TlsProtocol::TlSv13 as i32,
                ..Default::default()
            }),
            tls_certificates: certs,
            validation_context_type: Some(tls::common_tls_context::ValidationContextType::ValidationContext(
                validation,
            )),
            alpn_protocols: vec!["h2".into()],
            ..Default::default()
        }),
        sni,
        ..Default::default()
    };
    Ok(TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(legate_api::any::pack(&ctx))),
    })
}

#[cfg(test)]
mod tests {
    use super::target;

    #[test]
    fn targets() {
        let ok = |u: &str| target(u).expect(u);
        assert_eq!(ok("127.0.0.1:9191"), ("127.0.0.1".into(), 9191));
        assert_eq!(ok("dns:///authz.local:50051"), ("authz.local".into(), 50051));
        assert_eq!(ok("dns:authz.local"), ("authz.local".into(), 443));
        assert_eq!(ok("ipv4:10.0.0.1:80"), ("10.0.0.1".into(), 80));
        assert_eq!(ok("ipv6:[::1]:80"), ("::1".into(), 80));
        assert_eq!(ok("[::1]:80"), ("::1".into(), 80));
        assert_eq!(ok("localhost"), ("localhost".into(), 443));
        for bad in ["unix:/tmp/s", "127.0.0.1:x", "ipv4:1.1.1.1:1,2.2.2.2:2", ":80"] {
            assert!(target(bad).is_err(), "{bad}");
        }
    }
}
