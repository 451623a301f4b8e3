//! TLS clients: a rustls connection that records the certificate the server
//! showed and can stay open across a certificate rotation ([`Conn`]), and
//! curl over TLS trusting a test CA ([`curl_tls`], [`Https`]).

use super::http_client::{content_length, status_of};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Accepts any server certificate and records the leaf it was shown.
#[derive(Debug)]
struct Recorder {
    seen: Arc<Mutex<Option<Vec<u8>>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        *self.seen.lock().expect("lock") = Some(end_entity.to_vec());
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.provider.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.provider.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A kept-alive HTTPS/1.1 connection (SNI a.example.com) and the
/// certificate its server showed.
pub struct Conn {
    tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    pub cert: Vec<u8>,
}

impl Conn {
    /// A TLS connection to `port`; panics when nothing listens or the
    /// handshake fails.
    pub fn open(port: u16) -> Conn {
        Conn::connect(port).unwrap_or_else(|e| panic!("TLS connection to {port}: {e}"))
    }

    /// A TLS connection to `port`, or None when nothing listens or the
    /// handshake fails.
    pub fn try_open(port: u16) -> Option<Conn> {
        Conn::connect(port).ok()
    }

    fn connect(port: u16) -> Result<Conn, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let seen = Arc::new(Mutex::new(None));
        let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("versions: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Recorder { seen: seen.clone(), provider }))
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("a.example.com").map_err(|e| format!("name: {e}"))?;
        let conn = rustls::ClientConnection::new(Arc::new(cfg), name).map_err(|e| format!("client: {e}"))?;
        let tcp = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
        tcp.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| format!("timeout: {e}"))?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock).map_err(|e| format!("handshake: {e}"))?;
        }
        let cert = seen.lock().expect("lock").clone().ok_or("no server certificate")?;
        Ok(Conn { tls, cert })
    }

    /// One request on this connection: (status, body).
    pub fn get(&mut self) -> (u16, String) {
        self.tls.write_all(b"GET / HTTP/1.1\r\nhost: a.example.com\r\n\r\n").expect("write");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let n = self.tls.read(&mut chunk).expect("read");
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = content_length(head);
                if body.len() >= len {
                    return (status_of(head).unwrap_or(0), body[..len].to_string());
                }
            }
        }
        panic!("no complete response: {}", String::from_utf8_lossy(&buf));
    }
}

/// curl over TLS to `https://<host>:<port><path>` (resolved to 127.0.0.1),
/// trusting `dir/ca.pem`, showing the client certificate `dir/<client>.pem`
/// when given, with `args` (a 10 s limit for the whole exchange).
pub fn curl_tls(dir: &Path, host: &str, port: u16, path: &str, client: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--max-time", "10", "--cacert"]).arg(dir.join("ca.pem"));
    cmd.args(["--resolve", &format!("{host}:{port}:127.0.0.1")]);
    if let Some(c) = client {
        cmd.arg("--cert").arg(dir.join(format!("{c}.pem"))).arg("--key").arg(dir.join(format!("{c}.key")));
    }
    cmd.args(args).arg(format!("https://{host}:{port}{path}")).output().expect("curl")
}

/// The head and the body of what `curl -i` printed.
pub fn curl_head_body(out: &Output) -> (String, String) {
    let text = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    (head.to_string(), body.to_string())
}

/// One HTTPS request with curl, as `host` (SNI and Host).
#[derive(Clone, Copy)]
pub struct Https<'a> {
    pub host: &'a str,
    pub h2: bool,
    pub client: Option<&'a str>,
    pub tls_max_12: bool,
}

pub fn https(host: &str) -> Https<'_> {
    Https { host, h2: false, client: None, tls_max_12: false }
}

impl Https<'_> {
    /// `GET path` with curl -i (and `headers`) to `port`.
    pub fn send(&self, dir: &Path, port: u16, path: &str, headers: &[&str]) -> Output {
        let mut args = vec!["-i", if self.h2 { "--http2" } else { "--http1.1" }];
        if self.tls_max_12 {
            args.extend(["--tls-max", "1.2"]);
        }
        for h in headers {
            args.extend(["-H", h]);
        }
        curl_tls(dir, self.host, port, path, self.client, &args)
    }
}
