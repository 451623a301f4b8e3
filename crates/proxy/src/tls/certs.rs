//! Certificate material: reading PEM certificates and keys from data sources,
//! checking that a key matches its certificate, and the certificate details
//! that `/certs` shows. A leaf: the secret manager and the contexts both use it.

use legate_api::pb::envoy::config::core::v3::{data_source, DataSource};
use legate_api::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context::ValidationContextType, CommonTlsContext, TlsCertificate,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    Config { path: String, reason: String },
}

pub(super) fn err(path: &str, reason: impl Into<String>) -> TlsError {
    TlsError::Config { path: path.to_string(), reason: reason.into() }
}

pub(super) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(super) fn read_ds(
    ds: &Option<legate_api::pb::envoy::config::core::v3::DataSource>,
    path: &str,
) -> Result<Vec<u8>, TlsError> {
    let Some(ds) = ds else { return Err(err(path, "is required")) };
    crate::common::datasource::read(ds).map(|b| b.to_vec()).map_err(|e| err(path, e))
}

pub(super) fn certs_from_pem(pem: &[u8], path: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| err(path, format!("cannot read PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(err(path, "no certificate found in PEM data"));
    }
    Ok(certs)
}

pub(super) fn certified_key(c: &TlsCertificate, path: &str) -> Result<CertifiedKey, TlsError> {
    let chain = certs_from_pem(&read_ds(&c.certificate_chain, &format!("{path}.certificate_chain"))?, path)?;
    let key_pem = read_ds(&c.private_key, &format!("{path}.private_key"))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| err(&format!("{path}.private_key"), format!("cannot read PEM private key: {e}")))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| err(&format!("{path}.private_key"), format!("unsupported private key: {e}")))?;
    let ck = CertifiedKey::new(chain, signer);
    // A key that is not the certificate's is refused, as Envoy refuses it
    // (a rotation that moved only one of the two files in place waits).
    if let Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) = ck.keys_match() {
        return Err(err(&format!("{path}.private_key"), "the private key does not match the certificate"));
    }
    Ok(ck)
}

/// One certificate as `/certs` shows it.
#[derive(Debug, Clone, Default)]
pub struct CertDetail {
    /// The file it came from, or `<inline>`.
    pub path: String,
    /// Lowercase hex, as Envoy prints it.
    pub serial_number: String,
    /// ("dns" | "uri" | "ip_address", value).
    pub subject_alt_names: Vec<(&'static str, String)>,
    /// Seconds since the epoch.
    pub valid_from: i64,
    pub expiration_time: i64,
}

/// The certificates of one TLS context: its CA and its own chains' leaves.
#[derive(Debug, Clone, Default)]
pub struct CertsInfo {
    pub ca_cert: Vec<CertDetail>,
    pub cert_chain: Vec<CertDetail>,
}

pub(super) fn ds_path(ds: &Option<DataSource>) -> String {
    match ds.as_ref().and_then(|d| d.specifier.as_ref()) {
        Some(data_source::Specifier::Filename(f)) => f.clone(),
        _ => "<inline>".into(),
    }
}

pub(super) fn detail(der: &CertificateDer<'_>, path: String) -> Option<CertDetail> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for g in &ext.value.general_names {
            use x509_parser::extensions::GeneralName;
            match g {
                GeneralName::DNSName(s) => sans.push(("dns", s.to_string())),
                GeneralName::URI(s) => sans.push(("uri", s.to_string())),
                GeneralName::IPAddress(b) if b.len() == 4 => {
                    sans.push(("ip_address", std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string()))
                }
                GeneralName::IPAddress(b) if b.len() == 16 => {
                    let mut a = [0u8; 16];
                    a.copy_from_slice(b);
                    sans.push(("ip_address", std::net::Ipv6Addr::from(a).to_string()))
                }
                _ => {}
            }
        }
    }
    // Envoy prints the serial as BoringSSL's BN_bn2hex does (whole bytes,
    // leading zero bytes dropped), lowercased.
    let raw = cert.raw_serial();
    let first = raw.iter().position(|b| *b != 0).unwrap_or(raw.len().saturating_sub(1));
    let serial_number = raw[first..].iter().map(|b| format!("{b:02x}")).collect();
    Some(CertDetail {
        path,
        serial_number,
        subject_alt_names: sans,
        valid_from: cert.validity().not_before.timestamp(),
        expiration_time: cert.validity().not_after.timestamp(),
    })
}

/// What `/certs` shows of a (flattened) context: the first CA of
/// `trusted_ca`, and the leaf of each certificate chain.
pub(super) fn certs_info(c: &CommonTlsContext) -> CertsInfo {
    let mut info = CertsInfo::default();
    if let Some(ValidationContextType::ValidationContext(v)) = &c.validation_context_type {
        if let Some(ds) = &v.trusted_ca {
            if let Ok(pem) = crate::common::datasource::read(ds) {
                if let Some(Ok(der)) = CertificateDer::pem_slice_iter(&pem).next() {
                    info.ca_cert.extend(detail(&der, ds_path(&v.trusted_ca)));
                }
            }
        }
    }
    for t in &c.tls_certificates {
        if let Some(ds) = &t.certificate_chain {
            if let Ok(pem) = crate::common::datasource::read(ds) {
                if let Some(Ok(der)) = CertificateDer::pem_slice_iter(&pem).next() {
                    info.cert_chain.extend(detail(&der, ds_path(&t.certificate_chain)));
                }
            }
        }
    }
    info
}

/// The DNS names a certificate serves: its DNS SANs, or its common name when
/// it has none (as Envoy reads them), lowercased.
pub(super) fn cert_names(der: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else { return Vec::new() };
    let mut names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(ext)) => ext
            .value
            .general_names
            .iter()
            .filter_map(|g| match g {
                x509_parser::extensions::GeneralName::DNSName(s) => Some(s.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        names.extend(cert.subject().iter_common_name().filter_map(|cn| cn.as_str().ok()).map(str::to_ascii_lowercase));
    }
    names
}
