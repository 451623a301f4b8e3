//! Webhook gates: before a release starts a step (the first included), each
//! of its `analysis.gates` URLs gets a POST of the release's name, service,
//! step and weight, and must answer 2xx; until all do, the step waits.
//! `https://` gates are verified against the CA certificates of the control
//! plane's `--gate-ca` file, or without it the Mozilla root certificates
//! built into the binary (`webpki-roots`); the system's store is not read.

use crate::releases::spec::{Release, Status};
use hyper::body::Bytes;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The TLS client of https gates, set once at start (`configure`).
static TLS: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();

/// Sets the CA certificates https gates are verified against: every
/// certificate of the PEM file `ca`, or the built-in roots without one.
pub fn configure(ca: Option<&Path>) -> Result<(), String> {
    let config = client_config(ca)?;
    let _ = TLS.set(config);
    Ok(())
}

fn client_config(ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let text = std::fs::read(path).map_err(|e| format!("--gate-ca {}: {e}", path.display()))?;
            for cert in CertificateDer::pem_slice_iter(&text) {
                let cert = cert.map_err(|e| format!("--gate-ca {}: {e}", path.display()))?;
                roots.add(cert).map_err(|e| format!("--gate-ca {}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("--gate-ca {}: no PEM certificate in it", path.display()));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// One POST to an https gate: TLS to its host (verified by name), then HTTP/1.1.
async fn post_https(url: &str, body: Bytes) -> Result<u16, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    let host = uri.host().filter(|h| !h.is_empty()).ok_or("has no host")?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    let port = uri.port_u16().unwrap_or(443);
    let path = uri.path_and_query().map_or("/".to_string(), |p| p.as_str().to_string());
    let config = match TLS.get() {
        Some(c) => c.clone(),
        None => client_config(None)?,
    };
    let name = ServerName::try_from(host.clone()).map_err(|e| format!("{host}: {e}"))?;
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.map_err(|e| format!("TLS: {e}"))?;
    let authority = if port == 443 { host } else { format!("{host}:{port}") };
    crate::alerts::notify::post_over(tls, &authority, &path, body).await
}

/// One POST to a gate, by its scheme.
async fn post(url: &str, body: Bytes) -> Result<u16, String> {
    if url.starts_with("https://") {
        post_https(url, body).await
    } else {
        crate::alerts::notify::post(url, body).await
    }
}

/// How long one gate may take to answer.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Asks every gate of `release` about the step `next` starts: Ok when all
/// answered 2xx, otherwise the first refusal (URL and answer). Called on a
/// blocking thread of the runtime.
pub fn ask(release: &Release, next: &Status) -> Result<(), String> {
    let body = serde_json::json!({
        "release": release.name,
        "service": release.service,
        "step": next.step + 1,
        "steps": release.steps.len(),
        "weight": next.weight,
    });
    let handle = tokio::runtime::Handle::try_current().map_err(|_| "no runtime to call the gates from".to_string())?;
    for url in &release.gates {
        let bytes = Bytes::from(body.to_string());
        let answer = handle.block_on(async { tokio::time::timeout(TIMEOUT, post(url, bytes)).await });
        match answer {
            Ok(Ok(status)) if (200..300).contains(&status) => {}
            Ok(Ok(status)) => return Err(format!("gate {url} answered {status}")),
            Ok(Err(e)) => return Err(format!("gate {url}: {e}")),
            Err(_) => return Err(format!("gate {url} did not answer within {TIMEOUT:?}")),
        }
    }
    Ok(())
}
