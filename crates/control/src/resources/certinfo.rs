//! What the control plane tells about the certificates in `Secret`
//! resources: each inline certificate's serial, names and validity, so an
//! operator sees when a secret it publishes expires.

use legate_api::pb::envoy::config::core::v3::{data_source::Specifier, DataSource};
use legate_api::pb::envoy::extensions::transport_sockets::tls::v3::{secret, Secret};
use legate_api::pb::google::protobuf::Any;
use prost::Message;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde_json::{json, Value};

fn rfc3339(secs: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp(secs, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// One certificate (the first of `ds`), or where it lives when it is a file
/// the control plane does not read (it is on the proxy's machine).
fn describe(field: &str, ds: &DataSource, now: i64) -> Option<Value> {
    let pem: &[u8] = match ds.specifier.as_ref()? {
        Specifier::InlineString(s) => s.as_bytes(),
        Specifier::InlineBytes(b) => b,
        Specifier::Filename(f) => return Some(json!({"field": field, "path": f})),
        Specifier::EnvironmentVariable(v) => return Some(json!({"field": field, "environment_variable": v})),
    };
    let der = CertificateDer::pem_slice_iter(pem).next()?.ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let not_after = cert.validity().not_after.timestamp();
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for g in &ext.value.general_names {
            use x509_parser::extensions::GeneralName;
            match g {
                GeneralName::DNSName(s) => sans.push(json!({"dns": s})),
                GeneralName::URI(s) => sans.push(json!({"uri": s})),
                GeneralName::IPAddress(b) if b.len() == 4 => {
                    sans.push(json!({"ip_address": std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string()}))
                }
                _ => {}
            }
        }
    }
    let raw = cert.raw_serial();
    let first = raw.iter().position(|b| *b != 0).unwrap_or(raw.len().saturating_sub(1));
    Some(json!({
        "field": field,
        "subject": cert.subject().to_string(),
        "serial_number": raw[first..].iter().map(|b| format!("{b:02x}")).collect::<String>(),
        "subject_alt_names": sans,
        "valid_from": rfc3339(cert.validity().not_before.timestamp()),
        "expiration_time": rfc3339(not_after),
        "days_until_expiration": ((not_after - now).max(0) / 86_400),
        "expired": not_after <= now,
    }))
}

/// The certificates of a `Secret` resource (empty for other resources).
pub fn certificates(any: &Any) -> Vec<Value> {
    let Ok(s) = Secret::decode(any.value.as_slice()) else { return Vec::new() };
    let now = chrono::Utc::now().timestamp();
    match &s.r#type {
        Some(secret::Type::TlsCertificate(t)) => {
            t.certificate_chain.iter().filter_map(|d| describe("tls_certificate.certificate_chain", d, now)).collect()
        }
        Some(secret::Type::ValidationContext(v)) => {
            v.trusted_ca.iter().filter_map(|d| describe("validation_context.trusted_ca", d, now)).collect()
        }
        _ => Vec::new(),
    }
}

/// The first problem with the inline PEM of a `Secret`: (field path, reason).
/// Files are not checked: they live where the proxies run.
pub fn check(any: &Any) -> Option<(String, String)> {
    use rustls::pki_types::PrivateKeyDer;
    let s = Secret::decode(any.value.as_slice()).ok()?;
    let inline = |ds: &Option<DataSource>| -> Option<Vec<u8>> {
        match ds.as_ref()?.specifier.as_ref()? {
            Specifier::InlineString(s) => Some(s.clone().into_bytes()),
            Specifier::InlineBytes(b) => Some(b.clone()),
            _ => None,
        }
    };
    let certs_ok = |pem: &[u8]| {
        let ders: Vec<_> = CertificateDer::pem_slice_iter(pem).collect();
        !ders.is_empty()
            && ders.iter().all(|d| d.as_ref().is_ok_and(|d| x509_parser::parse_x509_certificate(d.as_ref()).is_ok()))
    };
    let bad = |field: &str, what: &str| Some((format!("spec.{field}"), format!("{what} cannot be read from its PEM")));
    match &s.r#type {
        Some(secret::Type::TlsCertificate(t)) => {
            if inline(&t.certificate_chain).is_some_and(|pem| !certs_ok(&pem)) {
                return bad("tls_certificate.certificate_chain", "the certificate chain");
            }
            if inline(&t.private_key).is_some_and(|pem| PrivateKeyDer::from_pem_slice(&pem).is_err()) {
                return bad("tls_certificate.private_key", "the private key");
            }
            None
        }
        Some(secret::Type::ValidationContext(v)) => {
            if inline(&v.trusted_ca).is_some_and(|pem| !certs_ok(&pem)) {
                return bad("validation_context.trusted_ca", "the CA certificate");
            }
            None
        }
        _ => None,
    }
}

/// The earliest expiry among a secret's certificates (RFC 3339), if any.
pub fn earliest_expiry(certs: &[Value]) -> Option<String> {
    certs.iter().filter_map(|c| c["expiration_time"].as_str()).min().map(str::to_string)
}
