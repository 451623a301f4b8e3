//! Peer certificate verification as Envoy's `CertificateValidationContext`
//! defines it: trusted CAs, subject alt name matchers, and the rustls verifiers
//! that apply them to clients (downstream) and servers (upstream).

use super::certs::{certified_key, certs_from_pem, err, read_ds, TlsError};
use super::stats::note_sigalg;
use legate_api::pb::envoy::extensions::transport_sockets::tls::v3::{secret, CertificateValidationContext, Secret};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::Arc;

/// One of `match_typed_subject_alt_names`.
#[derive(Debug)]
pub(super) struct SanMatcher {
    kind: SanKind,
    matcher: crate::common::matcher::StringMatch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SanKind {
    Email,
    Dns,
    Uri,
    Ip,
    /// The deprecated `match_subject_alt_names`: a SAN of any type.
    Any,
}

pub(super) fn compile_sans(v: &CertificateValidationContext, path: &str) -> Result<Vec<SanMatcher>, TlsError> {
    let mut out = typed_sans(v, path)?;
    // Envoy's deprecated `match_subject_alt_names`, after the typed ones:
    // each matcher tried on every DNS, URI, email and IP SAN.
    #[allow(deprecated)]
    for (i, sm) in v.match_subject_alt_names.iter().enumerate() {
        let p = format!("{path}.validation_context.match_subject_alt_names[{i}]");
        let matcher = crate::common::matcher::StringMatch::new(sm).map_err(|e| err(&p, e))?;
        out.push(SanMatcher { kind: SanKind::Any, matcher });
    }
    Ok(out)
}

fn typed_sans(v: &CertificateValidationContext, path: &str) -> Result<Vec<SanMatcher>, TlsError> {
    v.match_typed_subject_alt_names
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let p = format!("{path}.validation_context.match_typed_subject_alt_names[{i}]");
            let kind = match m.san_type {
                1 => SanKind::Email,
                2 => SanKind::Dns,
                3 => SanKind::Uri,
                4 => SanKind::Ip,
                other => return Err(err(&p, format!("san_type {other} is not supported"))),
            };
            let Some(sm) = &m.matcher else { return Err(err(&format!("{p}.matcher"), "is required")) };
            let matcher = crate::common::matcher::StringMatch::new(sm).map_err(|e| err(&format!("{p}.matcher"), e))?;
            Ok(SanMatcher { kind, matcher })
        })
        .collect()
}

/// Whether a DNS SAN (possibly `*.example.com`) covers `name`, as Envoy's
/// exact DNS matcher lets a wildcard certificate match a host under it.
pub(super) fn dns_wildcard_covers(san: &str, name: &str) -> bool {
    match (san.strip_prefix("*."), name.split_once('.')) {
        (Some(suffix), Some((label, rest))) => !label.is_empty() && rest.eq_ignore_ascii_case(suffix),
        _ => false,
    }
}

/// Whether the certificate has a SAN accepted by `matchers` (any one of
/// them, on a SAN of its type). Parses the certificate: once per handshake,
/// only when matchers are configured.
pub(super) fn sans_match(matchers: &[SanMatcher], der: &CertificateDer<'_>) -> bool {
    if matchers.is_empty() {
        return true;
    }
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else { return false };
    let Ok(Some(ext)) = cert.subject_alternative_name() else { return false };
    use x509_parser::extensions::GeneralName;
    ext.value.general_names.iter().any(|g| {
        let (kind, value) = match g {
            GeneralName::DNSName(s) => (SanKind::Dns, s.to_string()),
            GeneralName::RFC822Name(s) => (SanKind::Email, s.to_string()),
            GeneralName::URI(s) => (SanKind::Uri, s.to_string()),
            GeneralName::IPAddress(b) => match b.len() {
                4 => (SanKind::Ip, std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string()),
                16 => {
                    let mut a = [0u8; 16];
                    a.copy_from_slice(b);
                    (SanKind::Ip, std::net::Ipv6Addr::from(a).to_string())
                }
                _ => return false,
            },
            _ => return false,
        };
        matchers.iter().any(|m| {
            (m.kind == kind || m.kind == SanKind::Any)
                && (m.matcher.matches(&value)
                    || (kind == SanKind::Dns && m.matcher.exact().is_some_and(|e| dns_wildcard_covers(&value, e))))
        })
    })
}

/// A SAN mismatch, told apart from other certificate errors for the stats.
pub(super) fn san_mismatch() -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
}

/// A client-certificate verifier that also applies `match_typed_subject_alt_names`.
#[derive(Debug)]
pub(super) struct SanClientVerifier {
    pub(super) inner: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    pub(super) sans: Vec<SanMatcher>,
}

impl rustls::server::danger::ClientCertVerifier for SanClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }
    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let ok = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        if sans_match(&self.sans, end_entity) {
            Ok(ok)
        } else {
            Err(san_mismatch())
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        note_sigalg(dss.scheme);
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        note_sigalg(dss.scheme);
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

pub(super) fn roots(v: &CertificateValidationContext, path: &str) -> Result<Option<Arc<RootCertStore>>, TlsError> {
    if v.trusted_ca.is_none() {
        return Ok(None);
    }
    let p = format!("{path}.validation_context.trusted_ca");
    let mut store = RootCertStore::empty();
    for c in certs_from_pem(&read_ds(&v.trusted_ca, &p)?, &p)? {
        store.add(c).map_err(|e| err(&p, format!("bad CA certificate: {e}")))?;
    }
    Ok(Some(Arc::new(store)))
}

/// Envoy's default certificate validation checks the chain against
/// `trusted_ca`, not the host name; names are checked only by
/// `match_typed_subject_alt_names`. With neither, nothing is verified.
#[derive(Debug)]
pub(super) struct EnvoyServerVerifier {
    pub(super) chain: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    pub(super) sans: Vec<SanMatcher>,
    /// `auto_sni_san_validation`: a connection that sent an SNI needs a DNS
    /// SAN for it (a wildcard SAN covering it will do), whatever `sans` say.
    pub(super) auto_san: bool,
    pub(super) provider: Arc<CryptoProvider>,
}

/// Whether the certificate has a DNS SAN naming `sni`, exactly (any case) or
/// by a one-label wildcard, as Envoy's matcher for the SNI sent.
fn dns_san_names(der: &CertificateDer<'_>, sni: &str) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else { return false };
    let Ok(Some(ext)) = cert.subject_alternative_name() else { return false };
    ext.value.general_names.iter().any(|g| match g {
        x509_parser::extensions::GeneralName::DNSName(san) => {
            san.eq_ignore_ascii_case(sni) || dns_wildcard_covers(san, sni)
        }
        _ => false,
    })
}

impl ServerCertVerifier for EnvoyServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(v) = &self.chain {
            match v.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForName | rustls::CertificateError::NotValidForNameContext { .. },
                )) => {}
                Err(e) => return Err(e),
                Ok(_) => {}
            }
        }
        let named = match server_name {
            // A DNS name is the SNI sent; an address means none was.
            ServerName::DnsName(sni) if self.auto_san => dns_san_names(end_entity, sni.as_ref()),
            _ => sans_match(&self.sans, end_entity),
        };
        if named {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(san_mismatch())
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        note_sigalg(dss.scheme);
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        note_sigalg(dss.scheme);
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Whether a secret's certificate, key or CA can be used: a secret from xDS
/// or a file is refused (NACKed, or the file update rejected) if not.
pub fn check_secret_material(s: &Secret) -> Result<(), TlsError> {
    match &s.r#type {
        Some(secret::Type::TlsCertificate(c)) => certified_key(c, "tls_certificate").map(|_| ()),
        Some(secret::Type::ValidationContext(v)) => {
            roots(v, "validation_context")?;
            compile_sans(v, "validation_context").map(|_| ())
        }
        _ => Err(err("type", "only tls_certificate and validation_context secrets are supported")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_dns_san_covers_one_label() {
        assert!(dns_wildcard_covers("*.example.com", "a.example.com"));
        assert!(!dns_wildcard_covers("*.example.com", "a.b.example.com"));
        assert!(!dns_wildcard_covers("*.example.com", "example.com"));
        assert!(!dns_wildcard_covers("a.example.com", "a.example.com"));
    }
}
