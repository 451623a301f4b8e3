//! etcd over TLS (`--store etcds://host:port`): the server verified against
//! `--etcd-ca` (else the built-in Mozilla roots), a client certificate
//! (`--etcd-cert`, `--etcd-key`) presented when given, as etcd's
//! `--client-cert-auth` asks.
//!
//! The etcd client's gRPC channel is given a connector of ours: TCP, then a
//! rustls handshake (ALPN `h2`) with the same rustls and ring the rest of the
//! control plane uses. Several endpoints are tried in turn at each
//! (re)connect, starting after the last one that worked.

use crate::store::records::StoreError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// The files `--etcd-ca`, `--etcd-cert` and `--etcd-key` name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EtcdTlsFiles {
    /// CA certificates (PEM) etcd's server certificate must chain to.
    pub ca: Option<PathBuf>,
    /// The client certificate chain (PEM) ...
    pub cert: Option<PathBuf>,
    /// ... and its private key (PEM).
    pub key: Option<PathBuf>,
}

fn tls_err(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Etcd(format!("TLS: {what}: {e}"))
}

fn read(flag: &str, path: &Path) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path).map_err(|e| tls_err(&format!("{flag} {}", path.display()), e))
}

/// The rustls client configuration the files describe.
pub fn client_config(files: &EtcdTlsFiles) -> Result<Arc<rustls::ClientConfig>, StoreError> {
    let mut roots = rustls::RootCertStore::empty();
    match &files.ca {
        Some(path) => {
            let pem = read("--etcd-ca", path)?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| tls_err(&format!("--etcd-ca {}", path.display()), e))?;
                roots.add(cert).map_err(|e| tls_err(&format!("--etcd-ca {}", path.display()), e))?;
            }
            if roots.is_empty() {
                return Err(tls_err(&format!("--etcd-ca {}", path.display()), "no certificate in it"));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err("protocol versions", e))?
        .with_root_certificates(roots);
    let mut config = match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read("--etcd-cert", cert)?)
                .collect::<Result<_, _>>()
                .map_err(|e| tls_err(&format!("--etcd-cert {}", cert.display()), e))?;
            if chain.is_empty() {
                return Err(tls_err(&format!("--etcd-cert {}", cert.display()), "no certificate in it"));
            }
            let key = PrivateKeyDer::from_pem_slice(&read("--etcd-key", key)?)
                .map_err(|e| tls_err(&format!("--etcd-key {}", key.display()), e))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| tls_err("--etcd-cert/--etcd-key", e))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(tls_err("--etcd-cert and --etcd-key", "give both or neither")),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// TCP then TLS to one of `endpoints`, for the etcd client's channel.
#[derive(Clone)]
pub struct Connector {
    endpoints: Arc<Vec<String>>,
    tls: tokio_rustls::TlsConnector,
    next: Arc<AtomicUsize>,
}

type Io = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Connector {
    pub fn new(endpoints: &[String], config: Arc<rustls::ClientConfig>) -> Connector {
        Connector {
            endpoints: Arc::new(endpoints.to_vec()),
            tls: tokio_rustls::TlsConnector::from(config),
            next: Arc::new(AtomicUsize::new(0)),
        }
    }
}

/// The name etcd's certificate is checked against: the endpoint's host (an
/// IP address as an IP SAN).
fn server_name(endpoint: &str) -> Result<ServerName<'static>, BoxError> {
    let host = endpoint.rsplit_once(':').map_or(endpoint, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok(ServerName::try_from(host.to_string())?)
}

async fn connect_one(tls: &tokio_rustls::TlsConnector, endpoint: &str) -> Result<Io, BoxError> {
    let tcp = tokio::net::TcpStream::connect(endpoint).await?;
    tcp.set_nodelay(true)?;
    let stream = tls.connect(server_name(endpoint)?, tcp).await?;
    Ok(hyper_util::rt::TokioIo::new(stream))
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = Io;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Io, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let n = this.endpoints.len();
            let start = this.next.load(Ordering::Relaxed);
            let mut errors = Vec::with_capacity(n);
            for i in 0..n {
                let at = (start + i) % n;
                let endpoint = &this.endpoints[at];
                match connect_one(&this.tls, endpoint).await {
                    Ok(io) => {
                        this.next.store(at, Ordering::Relaxed);
                        return Ok(io);
                    }
                    Err(e) => errors.push(format!("etcds://{endpoint}: {}", chain(e.as_ref()))),
                }
            }
            Err(errors.join("; ").into())
        })
    }
}

/// An error and its sources, joined (a TLS failure is a few levels down).
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = s.source();
    }
    out
}

/// One TLS connection to `endpoint` that must get etcd's HTTP/2 SETTINGS
/// back: with TLS 1.3 a server refuses a client certificate (or its
/// absence) only after the handshake, with an alert this read receives.
async fn probe(tls: &tokio_rustls::TlsConnector, endpoint: &str) -> Result<(), StoreError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let failed = |e: &dyn std::fmt::Display| {
        StoreError::Etcd(format!(
            "TLS with {endpoint}: {e} (etcd checks the client certificate, --etcd-cert/--etcd-key, against its --trusted-ca-file)"
        ))
    };
    let attempt = async {
        let mut io = connect_one(tls, endpoint)
            .await
            .map_err(|e| StoreError::Etcd(format!("TLS with {endpoint}: {}", chain(e.as_ref()))))?
            .into_inner();
        // The client preface and an empty SETTINGS frame.
        io.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await.map_err(|e| failed(&e))?;
        let mut head = [0u8; 9];
        io.read_exact(&mut head).await.map_err(|e| failed(&e))?;
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .map_err(|_| StoreError::Etcd(format!("TLS with {endpoint}: no answer within 5s")))?
}

/// An etcd client over TLS to `endpoints`, connected (so a bad certificate
/// or an unreachable etcd fails here, at start).
pub async fn client(endpoints: &[String], files: &EtcdTlsFiles) -> Result<etcdv3client::EtcdClient, StoreError> {
    let config = client_config(files)?;
    // At least one endpoint must take our certificate; the others are tried
    // (and reported) when the channel reconnects.
    let tls = tokio_rustls::TlsConnector::from(config.clone());
    let mut last = None;
    for endpoint in endpoints {
        match probe(&tls, endpoint).await {
            Ok(()) => {
                last = None;
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    if let Some(e) = last {
        return Err(e);
    }
    let first = endpoints.first().ok_or_else(|| StoreError::Spec("etcds:// needs at least one host:port".into()))?;
    let endpoint = tonic012::transport::Endpoint::from_shared(format!("http://{first}"))
        .map_err(|e| StoreError::Spec(format!("etcds://{first}: {e}")))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    let channel = endpoint
        .connect_with_connector(Connector::new(endpoints, config))
        .await
        .map_err(|e| StoreError::Etcd(format!("connect: {}", chain(&e))))?;
    let service = etcdv3client::grpc::CredentialInterceptor::new(
        None,
        None::<tonic012::metadata::AsciiMetadataValue>,
        etcdv3client::grpc::TonicClient::new(channel),
    );
    Ok(etcdv3client::Client::with_service(service))
}
