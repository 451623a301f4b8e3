//! `x-forwarded-client-cert`: what the connection manager does with the
//! header (`forward_client_cert_details`) and the element it writes for a
//! TLS client (`set_current_client_cert_details`), as Envoy's
//! `mutateXfccRequestHeader`.

use crate::tls::peer::TlsConn;
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;
use legate_api::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;

/// How `x-forwarded-client-cert` is treated (`forward_client_cert_details`).
#[derive(Debug, Clone, Copy, PartialEq)]
enum XfccMode {
    Sanitize,
    ForwardOnly,
    AppendForward,
    SanitizeSet,
    AlwaysForwardOnly,
}

/// One of `set_current_client_cert_details`, in the order Envoy writes them.
#[derive(Debug, Clone, Copy)]
enum XfccDetail {
    Cert,
    Chain,
    Subject,
    Uri,
    Dns,
}

/// The compiled `forward_client_cert_details` and `set_current_client_cert_details`.
pub(super) struct Xfcc {
    mode: XfccMode,
    details: Vec<XfccDetail>,
}

static X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

impl Xfcc {
    pub(super) fn compile(c: &HttpConnectionManager) -> Result<Self, String> {
        use legate_api::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::ForwardClientCertDetails as F;
        let mode = match F::try_from(c.forward_client_cert_details) {
            Ok(F::Sanitize) => XfccMode::Sanitize,
            Ok(F::ForwardOnly) => XfccMode::ForwardOnly,
            Ok(F::AppendForward) => XfccMode::AppendForward,
            Ok(F::SanitizeSet) => XfccMode::SanitizeSet,
            Ok(F::AlwaysForwardOnly) => XfccMode::AlwaysForwardOnly,
            Err(_) => {
                return Err(format!("forward_client_cert_details: unknown value {}", c.forward_client_cert_details))
            }
        };
        let mut details = Vec::new();
        if let Some(d) = &c.set_current_client_cert_details {
            if d.cert {
                details.push(XfccDetail::Cert);
            }
            if d.chain {
                details.push(XfccDetail::Chain);
            }
            if d.subject.as_ref().is_some_and(|b| b.value) {
                details.push(XfccDetail::Subject);
            }
            if d.uri {
                details.push(XfccDetail::Uri);
            }
            if d.dns {
                details.push(XfccDetail::Dns);
            }
        }
        Ok(Self { mode, details })
    }

    /// Envoy's `mutateXfccRequestHeader`. Cost: nothing for a plain
    /// connection beyond a header removal; with mTLS and a setting mode,
    /// the certificate is parsed once per connection and the value built
    /// per request.
    pub(super) fn apply(&self, headers: &mut HeaderMap, tls: Option<&TlsConn>) {
        if self.mode == XfccMode::AlwaysForwardOnly {
            return;
        }
        let tls = match tls {
            Some(t) if t.peer_presented() && self.mode != XfccMode::Sanitize => t,
            _ => {
                headers.remove(&X_FORWARDED_CLIENT_CERT);
                return;
            }
        };
        if self.mode == XfccMode::ForwardOnly {
            return;
        }
        // This connection's own element, built once per connection (a
        // connection is served by one HCM); per request a reference-count
        // clone, or one concatenation when appending to a forwarded value.
        let mine = tls.xfcc_element(|| self.element(tls));
        let prev = match self.mode {
            XfccMode::AppendForward => {
                headers.get(&X_FORWARDED_CLIENT_CERT).and_then(|v| v.to_str().ok()).filter(|p| !p.is_empty())
            }
            _ => None,
        };
        let value = match prev {
            Some(prev) => HeaderValue::from_str(&format!("{prev},{}", mine.to_str().unwrap_or_default())).ok(),
            None => Some(mine.clone()),
        };
        headers.remove(&X_FORWARDED_CLIENT_CERT);
        if let Some(v) = value {
            headers.insert(X_FORWARDED_CLIENT_CERT.clone(), v);
        }
    }

    /// `By=...;Hash=...;` and the configured details of this connection.
    fn element(&self, tls: &TlsConn) -> HeaderValue {
        let mut parts: Vec<String> = Vec::new();
        for uri in tls.local_uri_sans.iter() {
            parts.push(format!("By={uri}"));
        }
        let hash = tls.sha256();
        if !hash.is_empty() {
            parts.push(format!("Hash={hash}"));
        }
        for d in &self.details {
            match d {
                XfccDetail::Cert => {
                    let pem = tls.url_encoded_pem();
                    if !pem.is_empty() {
                        parts.push(format!("Cert=\"{pem}\""));
                    }
                }
                XfccDetail::Chain => {
                    let chain = tls.url_encoded_chain();
                    if !chain.is_empty() {
                        parts.push(format!("Chain=\"{chain}\""));
                    }
                }
                // Subject and URI are written even when empty.
                XfccDetail::Subject => parts.push(format!("Subject=\"{}\"", tls.names().subject)),
                XfccDetail::Uri => {
                    let uris = &tls.names().uri;
                    if uris.is_empty() {
                        parts.push("URI=".into());
                    }
                    for u in uris {
                        parts.push(format!("URI={u}"));
                    }
                }
                XfccDetail::Dns => {
                    for d in &tls.names().dns {
                        parts.push(format!("DNS={d}"));
                    }
                }
            }
        }
        HeaderValue::from_str(&parts.join(";")).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}
