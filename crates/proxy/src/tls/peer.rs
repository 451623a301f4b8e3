//! What a TLS connection knows after its handshake: the SNI, the peer's
//! certificate chain and the names in it, and the URI SANs of the
//! certificate this side presented. RBAC's `authenticated` principal and the
//! HCM's `x-forwarded-client-cert` read it.
//!
//! Cost: one allocation per TLS connection (the chain is copied out of
//! rustls only when the peer sent one). The certificate is parsed at most
//! once per connection, on first use, and only when something asks for its
//! names, hash or PEM.

use rustls::pki_types::CertificateDer;
use std::sync::{Arc, OnceLock};
use x509_parser::extensions::GeneralName;

/// A TLS connection's facts.
#[derive(Debug, Default)]
pub struct TlsConn {
    /// The peer's chain as sent, leaf first; empty when it sent none.
    chain: Vec<CertificateDer<'static>>,
    /// URI SANs of this side's certificate (XFCC `By=`).
    pub local_uri_sans: Arc<[String]>,
    parsed: OnceLock<PeerNames>,
    /// This connection's `x-forwarded-client-cert` element, once built.
    xfcc: OnceLock<http::HeaderValue>,
}

/// The peer certificate's names as Envoy reads them.
#[derive(Debug, Default)]
pub struct PeerNames {
    pub uri: Vec<String>,
    pub dns: Vec<String>,
    /// The subject in RFC 2253 form (OpenSSL's `XN_FLAG_RFC2253`).
    pub subject: String,
}

impl TlsConn {
    pub fn new(chain: Option<&[CertificateDer<'_>]>, local_uri_sans: Arc<[String]>) -> Self {
        let chain = chain.map(|c| c.iter().map(|d| d.clone().into_owned()).collect()).unwrap_or_default();
        Self { chain, local_uri_sans, parsed: OnceLock::new(), xfcc: OnceLock::new() }
    }

    /// Whether the peer presented a certificate.
    pub fn peer_presented(&self) -> bool {
        !self.chain.is_empty()
    }

    /// The peer certificate's names (empty without a certificate).
    pub fn names(&self) -> &PeerNames {
        self.parsed.get_or_init(|| self.chain.first().map(|c| parse_names(c)).unwrap_or_default())
    }

    /// The connection's XFCC element, built by `make` on first use.
    pub fn xfcc_element(&self, make: impl FnOnce() -> http::HeaderValue) -> &http::HeaderValue {
        self.xfcc.get_or_init(make)
    }

    /// Lowercase hex SHA-256 of the peer certificate's DER (`Hash=`).
    pub fn sha256(&self) -> String {
        use sha2::Digest;
        let Some(leaf) = self.chain.first() else { return String::new() };
        let d = sha2::Sha256::digest(leaf.as_ref());
        let mut s = String::with_capacity(64);
        for b in d {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// The peer certificate as URL-encoded PEM (`Cert=`).
    pub fn url_encoded_pem(&self) -> String {
        self.chain.first().map(|c| url_encode(&pem(c))).unwrap_or_default()
    }

    /// The peer's whole chain as URL-encoded PEM (`Chain=`).
    pub fn url_encoded_chain(&self) -> String {
        let mut all = String::new();
        for c in &self.chain {
            all.push_str(&pem(c));
        }
        url_encode(&all)
    }
}

/// A certificate as OpenSSL's `PEM_write_bio_X509` writes it: 64-column
/// base64 lines, each ended by a newline.
fn pem(der: &CertificateDer<'_>) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 64);
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Envoy's `PercentEncoding::urlEncode`: everything but ALPHA, DIGIT, `*`,
/// `-`, `.` and `_` becomes `%XX` (uppercase).
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3 / 2);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'*' | b'-' | b'.' | b'_') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// URI SANs of a certificate (for this side's own certificate, `By=`).
pub fn uri_sans(der: &CertificateDer<'_>) -> Vec<String> {
    parse_names(der).uri
}

fn parse_names(der: &CertificateDer<'_>) -> PeerNames {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else { return PeerNames::default() };
    let mut names = PeerNames { subject: rfc2253(cert.subject()), ..Default::default() };
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for g in &ext.value.general_names {
            match g {
                GeneralName::URI(s) => names.uri.push(s.to_string()),
                GeneralName::DNSName(s) => names.dns.push(s.to_string()),
                _ => {}
            }
        }
    }
    names
}

/// OpenSSL's short names for the attributes certificates commonly carry.
fn short_name(oid: &x509_parser::der_parser::oid::Oid<'_>) -> Option<&'static str> {
    Some(match oid.to_id_string().as_str() {
        "2.5.4.3" => "CN",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "street",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.5" => "serialNumber",
        "2.5.4.4" => "SN",
        "2.5.4.42" => "GN",
        "2.5.4.12" => "title",
        "2.5.4.43" => "initials",
        "2.5.4.46" => "dnQualifier",
        "2.5.4.65" => "pseudonym",
        "2.5.4.17" => "postalCode",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        "1.2.840.113549.1.9.1" => "emailAddress",
        _ => return None,
    })
}

/// A name in RFC 2253 form as OpenSSL prints it: RDNs last to first,
/// separated by `,`, the attributes of one RDN by `+`, values escaped.
/// Values that are not strings are dumped as `#` and their DER in hex.
fn rfc2253(name: &x509_parser::x509::X509Name<'_>) -> String {
    let mut out = String::new();
    let rdns: Vec<_> = name.iter().collect();
    for (i, rdn) in rdns.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, atv) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            let known = short_name(atv.attr_type());
            match known {
                Some(sn) => out.push_str(sn),
                None => out.push_str(&atv.attr_type().to_id_string()),
            }
            out.push('=');
            match (known, atv.as_str()) {
                (Some(_), Ok(v)) => escape_2253(v, &mut out),
                _ => {
                    out.push('#');
                    for b in atv.attr_value().data.iter() {
                        out.push_str(&format!("{b:02X}"));
                    }
                }
            }
        }
    }
    out
}

/// OpenSSL's RFC 2253 escaping (`ASN1_STRFLGS_RFC2253`): `,+"\<>;` are
/// backslash-escaped, as are a leading `#` or space and a trailing space;
/// control characters and bytes above 127 become `\XX`.
fn escape_2253(v: &str, out: &mut String) {
    let bytes = v.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        let first = i == 0;
        let last = i + 1 == bytes.len();
        match b {
            b',' | b'+' | b'"' | b'\\' | b'<' | b'>' | b';' => {
                out.push('\\');
                out.push(b as char);
            }
            b'#' if first => out.push_str("\\#"),
            b' ' if first || last => out.push_str("\\ "),
            0..=31 | 127..=255 => out.push_str(&format!("\\{b:02X}")),
            _ => out.push(b as char),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_encoding_keeps_only_unreserved() {
        assert_eq!(
            url_encode("-----BEGIN CERTIFICATE-----\na+b/c=\n"),
            "-----BEGIN%20CERTIFICATE-----%0Aa%2Bb%2Fc%3D%0A"
        );
        assert_eq!(url_encode("x_y.z*~"), "x_y.z*%7E");
    }

    #[test]
    fn rfc2253_escaping() {
        let mut s = String::new();
        escape_2253(" a,b#", &mut s);
        assert_eq!(s, "\\ a\\,b#");
        let mut s = String::new();
        escape_2253("#x ", &mut s);
        assert_eq!(s, "\\#x\\ ");
    }
}
