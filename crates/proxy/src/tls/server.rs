//! Downstream TLS (`DownstreamTlsContext`): the server configs a listener's
//! filter chain terminates TLS with, the certificate chosen per ClientHello,
//! and the handshake.

use super::certs::{cert_names, certified_key, err, provider, TlsError};
use super::context::{alpn, unpack_socket, validation_context, versions, Dynamic};
use super::stats::with_sigalg;
use super::verify::{compile_sans, dns_wildcard_covers, roots, SanClientVerifier};
use crate::tls::sds::SecretManager;
use legate_api::pb::envoy::config::core::v3::TransportSocket;
use legate_api::pb::envoy::extensions::transport_sockets::tls::v3::{CommonTlsContext, DownstreamTlsContext};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

pub(super) const DOWNSTREAM: &str = "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";

/// A listener filter chain's TLS.
pub type ServerTls = Dynamic<DownstreamTls>;

/// Picks the certificate for a handshake as Envoy does: one with the SNI as
/// an exact name, else one whose `*.` name covers it, else the first (the
/// default). Names are read once at config time; a handshake compares
/// strings over the (few) certificates.
#[derive(Debug)]
pub(super) struct CertSet(Vec<ServerCert>);

#[derive(Debug)]
pub(super) struct ServerCert {
    key: Arc<CertifiedKey>,
    /// DNS names it serves, for the choice by SNI.
    names: Vec<String>,
    /// Its URI SANs (XFCC `By=`).
    uri_sans: Arc<[String]>,
}

impl CertSet {
    fn pick(&self, sni: Option<&str>) -> Option<&ServerCert> {
        if let (true, Some(sni)) = (self.0.len() > 1, sni) {
            let sni = sni.to_ascii_lowercase();
            let exact = self.0.iter().find(|c| c.names.contains(&sni));
            let wildcard = || self.0.iter().find(|c| c.names.iter().any(|n| dns_wildcard_covers(n, &sni)));
            if let Some(c) = exact.or_else(wildcard) {
                return Some(c);
            }
        }
        self.0.first()
    }
}

impl ResolvesServerCert for CertSet {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name()).map(|c| c.key.clone())
    }
}

/// A filter chain's TLS termination. Three configs, built once, so the
/// suite is chosen as Envoy (BoringSSL) chooses it: by the client's order
/// for TLS 1.3, by Envoy's server order for TLS 1.2 (whose equal-preference
/// groups follow the client's order between AES-128-GCM and ChaCha20).
pub struct DownstreamTls {
    client_order: Arc<rustls::ServerConfig>,
    /// TLS 1.3 is allowed (`tls_params`).
    tls13: bool,
    /// The TLS 1.2 configs (AES-128 first, ChaCha20 first), when 1.2 is allowed.
    tls12: Option<[Arc<rustls::ServerConfig>; 2]>,
    certs: Arc<CertSet>,
}

impl DownstreamTls {
    /// Reads the ClientHello, picks the config, and completes the handshake.
    /// Cost over a plain accept: a scan of the client's suite list.
    pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: S,
    ) -> (std::io::Result<tokio_rustls::server::TlsStream<S>>, Option<SignatureScheme>) {
        let start = match tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await {
            Ok(s) => s,
            Err(e) => return (Err(e), None),
        };
        let cfg = {
            let hello = start.client_hello();
            let suites = hello.cipher_suites();
            let offers_tls13 = suites.iter().any(|s| {
                matches!(
                    s,
                    rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
                        | rustls::CipherSuite::TLS13_AES_256_GCM_SHA384
                        | rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
                )
            });
            if let (false, Some([aes_first, chacha_first])) = (offers_tls13 && self.tls13, &self.tls12) {
                // The pair that counts is the one of the certificate's key type.
                use rustls::CipherSuite as C;
                let rsa = self
                    .certs
                    .pick(hello.server_name())
                    .is_some_and(|c| c.key.key.algorithm() == rustls::SignatureAlgorithm::RSA);
                let (chacha_suite, aes_suite) = if rsa {
                    (C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256, C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)
                } else {
                    (C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256)
                };
                let chacha = suites.iter().position(|s| *s == chacha_suite);
                let aes = suites.iter().position(|s| *s == aes_suite);
                match (chacha, aes) {
                    (Some(c), Some(a)) if c < a => chacha_first,
                    (Some(_), None) => chacha_first,
                    _ => aes_first,
                }
            } else {
                &self.client_order
            }
        };
        with_sigalg(start.into_stream(cfg.clone())).await
    }

    /// What a finished handshake tells the filters: the peer's chain and
    /// the URI SANs of the certificate served (picked again by the SNI, as
    /// the resolver picked it).
    pub fn conn_facts(&self, conn: &rustls::ServerConnection) -> crate::tls::peer::TlsConn {
        let local = self.certs.pick(conn.server_name()).map(|c| c.uri_sans.clone()).unwrap_or_else(|| Arc::from([]));
        crate::tls::peer::TlsConn::new(conn.peer_certificates(), local)
    }
}

/// A listener filter chain's TLS: the acceptor for its connections, which
/// follows the secrets it names.
pub fn downstream(ts: &TransportSocket, secrets: &Arc<SecretManager>) -> Result<Arc<ServerTls>, TlsError> {
    let ctx: DownstreamTlsContext = unpack_socket(ts, DOWNSTREAM)?;
    let path = "transport_socket.typed_config.common_tls_context";
    let Some(common) = ctx.common_tls_context.clone() else {
        return Err(err(path, "a server TLS context needs tls_certificates"));
    };
    if common.tls_certificates.is_empty() && common.tls_certificate_sds_secret_configs.is_empty() {
        return Err(err(&format!("{path}.tls_certificates"), "a server TLS context needs at least one certificate"));
    }
    Dynamic::new(common, secrets, path, Box::new(move |c| server_config(&ctx, c)))
}

/// The server configs of a context whose secrets are in place.
pub(super) fn server_config(ctx: &DownstreamTlsContext, common: &CommonTlsContext) -> Result<DownstreamTls, TlsError> {
    let path = "transport_socket.typed_config.common_tls_context";
    if common.tls_certificates.is_empty() {
        return Err(err(&format!("{path}.tls_certificates"), "a server TLS context needs at least one certificate"));
    }
    let keys = common
        .tls_certificates
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let ck = certified_key(c, &format!("{path}.tls_certificates[{i}]"))?;
            let names = ck.end_entity_cert().map(cert_names).unwrap_or_default();
            let uri_sans = ck.end_entity_cert().map(crate::tls::peer::uri_sans).unwrap_or_default().into();
            Ok(ServerCert { key: Arc::new(ck), names, uri_sans })
        })
        .collect::<Result<Vec<_>, TlsError>>()?;
    let versions = versions(common.tls_params.as_ref(), path, 3)?;
    let groups = super::kx::groups(common.tls_params.as_ref(), path)?;
    let require = ctx.require_client_certificate.is_some_and(|b| b.value);
    let validation = validation_context(common, path)?;
    let client_roots = validation.map(|v| roots(v, path)).transpose()?.flatten();
    let sans = validation.map(|v| compile_sans(v, path)).transpose()?.unwrap_or_default();
    if !sans.is_empty() && client_roots.is_none() {
        return Err(err(
            &format!("{path}.validation_context.match_typed_subject_alt_names"),
            "Legate checks client certificate names only together with trusted_ca",
        ));
    }
    let verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>> = match client_roots {
        Some(roots) => {
            let mut v = WebPkiClientVerifier::builder_with_provider(roots, provider());
            // Without require_client_certificate Envoy asks for a certificate
            // and verifies one that is sent, but lets clients without one in.
            if !require {
                v = v.allow_unauthenticated();
            }
            let v = v.build().map_err(|e| err(&format!("{path}.validation_context"), e.to_string()))?;
            // Wrapped even without SAN matchers: the wrapper notes the
            // client's signature scheme for `ssl.sigalgs.*`.
            Some(Arc::new(SanClientVerifier { inner: v, sans }))
        }
        None if require => {
            return Err(err(
                "transport_socket.typed_config.require_client_certificate",
                "needs common_tls_context.validation_context.trusted_ca",
            ))
        }
        None => None,
    };
    let certs = Arc::new(CertSet(keys));
    let build = |provider: Arc<CryptoProvider>, server_order: bool| -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let builder = rustls::ServerConfig::builder_with_provider(super::kx::with_groups(provider, &groups))
            .with_protocol_versions(&versions)
            .map_err(|e| err(path, e.to_string()))?;
        let builder = match &verifier {
            Some(v) => builder.with_client_cert_verifier(v.clone()),
            None => builder.with_no_client_auth(),
        };
        let mut cfg = builder.with_cert_resolver(certs.clone());
        cfg.alpn_protocols = alpn(common);
        cfg.ignore_client_order = server_order;
        Ok(Arc::new(cfg))
    };
    let tls12 = if versions.iter().any(|v| v.version == rustls::ProtocolVersion::TLSv1_2) {
        Some([build(tls12_server_provider(false), true)?, build(tls12_server_provider(true), true)?])
    } else {
        None
    };
    let tls13 = versions.iter().any(|v| v.version == rustls::ProtocolVersion::TLSv1_3);
    Ok(DownstreamTls { client_order: build(provider(), false)?, tls13, tls12, certs })
}

/// A provider whose TLS 1.2 suites are in Envoy's default server order:
/// `[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-ECDSA-CHACHA20-POLY1305]`,
/// `[ECDHE-RSA-AES128-GCM-SHA256|ECDHE-RSA-CHACHA20-POLY1305]`,
/// `ECDHE-ECDSA-AES256-GCM-SHA384`, `ECDHE-RSA-AES256-GCM-SHA384`. Inside a
/// bracketed group BoringSSL follows the client's order; `chacha_first`
/// says which member that puts first.
pub(super) fn tls12_server_provider(chacha_first: bool) -> Arc<CryptoProvider> {
    use rustls::CipherSuite as C;
    let (g1, g2) = if chacha_first {
        (
            [C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256],
            [C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256, C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256],
        )
    } else {
        (
            [C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256],
            [C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256],
        )
    };
    let order: Vec<C> = g1
        .into_iter()
        .chain(g2)
        .chain([C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384])
        .collect();
    let mut p = rustls::crypto::ring::default_provider();
    let all = std::mem::take(&mut p.cipher_suites);
    // TLS 1.2 only: these configs serve clients that offer no TLS 1.3 suite.
    p.cipher_suites = order.iter().filter_map(|c| all.iter().find(|s| s.suite() == *c).copied()).collect();
    Arc::new(p)
}
