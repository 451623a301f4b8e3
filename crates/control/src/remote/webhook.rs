//! One HTTP/1.1 POST of JSON to a webhook — an alert's receiver or
//! Alertmanager, a release's gate —, `http://` or `https://`. Over TLS the
//! receiver is verified by its host name against the CA certificates of
//! the control plane's `--webhook-ca` file, or without it the Mozilla root
//! certificates built into the binary (`webpki-roots`); the system's store
//! is not read.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// The TLS client of https webhooks, set once at start (`configure`).
static TLS: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();

/// Sets the CA certificates https webhooks are verified against: every
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
            let text = std::fs::read(path).map_err(|e| format!("--webhook-ca {}: {e}", path.display()))?;
            for cert in CertificateDer::pem_slice_iter(&text) {
                let cert = cert.map_err(|e| format!("--webhook-ca {}: {e}", path.display()))?;
                roots.add(cert).map_err(|e| format!("--webhook-ca {}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("--webhook-ca {}: no PEM certificate in it", path.display()));
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

/// Where a webhook URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path and query.
    pub path: String,
}

/// An `http://` or `https://` URL, split for the client.
pub fn parse_url(u: &str) -> Result<Target, String> {
    let uri: http::Uri = u.parse().map_err(|e| format!("not a URL: {e}"))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err("must start with http:// or https://".into()),
    };
    let host = uri.host().filter(|h| !h.is_empty()).ok_or("has no host")?;
    let path = uri.path_and_query().map_or("/".to_string(), |p| p.as_str().to_string());
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    Ok(Target { tls, host, port, path: if path.is_empty() { "/".into() } else { path } })
}

/// One POST of `body` to `url`; the status it answered.
pub async fn post(url: &str, body: Bytes, agent: &str) -> Result<u16, String> {
    let t = parse_url(url)?;
    let tcp = tokio::net::TcpStream::connect((t.host.as_str(), t.port)).await.map_err(|e| e.to_string())?;
    let default_port = if t.tls { 443 } else { 80 };
    let authority = if t.port == default_port { t.host.clone() } else { format!("{}:{}", t.host, t.port) };
    if !t.tls {
        return post_over(tcp, &authority, &t.path, body, agent).await;
    }
    let config = match TLS.get() {
        Some(c) => c.clone(),
        None => client_config(None)?,
    };
    let name = ServerName::try_from(t.host.clone()).map_err(|e| format!("{}: {e}", t.host))?;
    let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.map_err(|e| format!("TLS: {e}"))?;
    post_over(tls, &authority, &t.path, body, agent).await
}

async fn post_over<IO>(io: IO, authority: &str, path: &str, body: Bytes, agent: &str) -> Result<u16, String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = hyper_util::rt::TokioIo::new(io);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = hyper::Request::post(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::USER_AGENT, agent)
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    // Read the answer so the connection ends cleanly.
    let _ = resp.into_body().collect().await;
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_with_their_default_ports() {
        let t = parse_url("https://am.example/api/v2/alerts").expect("https");
        assert_eq!((t.tls, t.host.as_str(), t.port, t.path.as_str()), (true, "am.example", 443, "/api/v2/alerts"));
        let t = parse_url("http://127.0.0.1:9099/hook?x=1").expect("http");
        assert_eq!((t.tls, t.port, t.path.as_str()), (false, 9099, "/hook?x=1"));
        assert!(parse_url("ftp://x/").is_err());
        assert!(parse_url("http:///nohost").is_err());
    }
}
