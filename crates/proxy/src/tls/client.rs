//! Upstream TLS (`UpstreamTlsContext`): the client config a cluster connects
//! with, its SNI and verification.

use super::certs::{certs_from_pem, err, provider, read_ds, TlsError};
use super::context::{alpn, unpack_socket, validation_context, versions, Dynamic};
use super::verify::{compile_sans, roots, EnvoyServerVerifier};
use crate::tls::sds::SecretManager;
use legate_api::pb::envoy::config::core::v3::TransportSocket;
use legate_api::pb::envoy::extensions::transport_sockets::tls::v3::{CommonTlsContext, UpstreamTlsContext};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivateKeyDer, ServerName};
use std::sync::Arc;

pub(super) const UPSTREAM: &str = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";

/// A cluster's TLS: how its upstream connections are wrapped.
pub struct UpstreamTls {
    config: Arc<Dynamic<rustls::ClientConfig>>,
    /// `sni`, when set; otherwise no SNI is sent (as Envoy without auto_sni).
    pub sni: Option<ServerName<'static>>,
    /// `auto_host_sni`: the host's name, when it has one, is the SNI.
    auto_host_sni: bool,
}

impl UpstreamTls {
    /// The name handed to rustls for a connection to `ip`, a host known as
    /// `hostname` (`Endpoint.hostname`, or a DNS cluster's name): with
    /// `auto_host_sni` that name, else the SNI, else the address (rustls
    /// sends no SNI for an address). As Envoy, a name that cannot be an SNI
    /// falls back to the configured one.
    pub fn server_name(&self, ip: std::net::IpAddr, hostname: &str) -> ServerName<'static> {
        if self.auto_host_sni && !hostname.is_empty() {
            if let Ok(name) = ServerName::try_from(hostname.to_string()) {
                if matches!(name, ServerName::DnsName(_)) {
                    return name;
                }
            }
        }
        self.sni.clone().unwrap_or(ServerName::IpAddress(ip.into()))
    }

    /// The connector for a new connection; `None` while a secret is awaited.
    pub fn connector(&self) -> Option<tokio_rustls::TlsConnector> {
        self.config.current().map(tokio_rustls::TlsConnector::from)
    }

    /// Every secret it names is there.
    pub fn ready(&self) -> bool {
        self.config.ready()
    }

    /// Every secret it names arrived or timed out.
    pub fn settled(&self) -> bool {
        self.config.settled()
    }
}

/// A cluster's `transport_socket`. `http2` picks the ALPN offered when the
/// context names none (Envoy offers the cluster's protocol).
pub fn upstream(ts: &TransportSocket, http2: bool, secrets: &Arc<SecretManager>) -> Result<UpstreamTls, TlsError> {
    let ctx: UpstreamTlsContext = unpack_socket(ts, UPSTREAM)?;
    let path = "transport_socket.typed_config.common_tls_context";
    let common = ctx.common_tls_context.clone().unwrap_or_default();
    let sni = if ctx.sni.is_empty() {
        None
    } else {
        Some(
            ServerName::try_from(ctx.sni.clone())
                .map_err(|_| err("transport_socket.typed_config.sni", "not a valid name"))?,
        )
    };
    let no_sni = sni.is_none() && !ctx.auto_host_sni;
    let auto_san = ctx.auto_sni_san_validation;
    let config = Dynamic::new(
        common,
        secrets,
        path,
        Box::new(move |c| client_config(c, ClientOptions { http2, no_sni, auto_san })),
    )?;
    Ok(UpstreamTls { config, sni, auto_host_sni: ctx.auto_host_sni })
}

/// What a cluster's context adds to its `common_tls_context`.
#[derive(Clone, Copy)]
pub(super) struct ClientOptions {
    /// The ALPN offered when the context names none.
    pub http2: bool,
    /// No SNI is ever sent.
    pub no_sni: bool,
    /// `auto_sni_san_validation`: the certificate must have a DNS SAN for
    /// the SNI sent, in place of `match_typed_subject_alt_names`.
    pub auto_san: bool,
}

/// A client config from a context whose secrets are in place.
pub(super) fn client_config(common: &CommonTlsContext, opts: ClientOptions) -> Result<rustls::ClientConfig, TlsError> {
    let ClientOptions { http2, no_sni, auto_san } = opts;
    let path = "transport_socket.typed_config.common_tls_context";
    let versions = versions(common.tls_params.as_ref(), path, 2)?;
    // A client limited to TLS 1.2 offers no TLS 1.3 suite (as BoringSSL).
    let client_provider = if versions.iter().any(|v| v.version == rustls::ProtocolVersion::TLSv1_3) {
        provider()
    } else {
        let mut p = rustls::crypto::ring::default_provider();
        p.cipher_suites.retain(|s| s.version().version == rustls::ProtocolVersion::TLSv1_2);
        Arc::new(p)
    };
    let client_provider =
        super::kx::with_groups(client_provider, &super::kx::groups(common.tls_params.as_ref(), path)?);
    let validation = validation_context(common, path)?;
    let sans = validation.map(|v| compile_sans(v, path)).transpose()?.unwrap_or_default();
    let roots = validation.map(|v| roots(v, path)).transpose()?.flatten();
    if auto_san && roots.is_none() {
        // Envoy refuses it: with no CA, any certificate could name the host.
        return Err(err(
            "transport_socket.typed_config.auto_sni_san_validation",
            "'auto_sni_san_validation' was configured without configuring a trusted CA",
        ));
    }
    let chain = match roots {
        Some(roots) => Some(
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(|e| err(&format!("{path}.validation_context"), e.to_string()))?,
        ),
        None => None,
    };
    let builder = rustls::ClientConfig::builder_with_provider(client_provider)
        .with_protocol_versions(&versions)
        .map_err(|e| err(path, e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(EnvoyServerVerifier {
            chain,
            sans,
            auto_san,
            provider: provider(),
        }));
    let mut cfg = match common.tls_certificates.as_slice() {
        [] => builder.with_no_client_auth(),
        [c] => {
            let p = format!("{path}.tls_certificates[0]");
            let chain = certs_from_pem(&read_ds(&c.certificate_chain, &format!("{p}.certificate_chain"))?, &p)?;
            let key = PrivateKeyDer::from_pem_slice(&read_ds(&c.private_key, &format!("{p}.private_key"))?)
                .map_err(|e| err(&format!("{p}.private_key"), format!("cannot read PEM private key: {e}")))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| err(&p, e.to_string()))?
        }
        _ => return Err(err(&format!("{path}.tls_certificates"), "a client context takes one certificate")),
    };
    cfg.alpn_protocols = if common.alpn_protocols.is_empty() {
        vec![if http2 { b"h2".to_vec() } else { b"http/1.1".to_vec() }]
    } else {
        alpn(common)
    };
    if no_sni {
        cfg.enable_sni = false;
    }
    Ok(cfg)
}
