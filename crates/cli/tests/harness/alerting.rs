//! The receiving end of alerts: a webhook receiver (plain or TLS) that
//! records what it is posted, and a real Alertmanager on loopback.

use super::http_client::http_get;
use super::install::alertmanager_bin;
use super::process::{addr, free_port, wait_http, Proc};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An HTTP server on loopback that answers 200 (or the status set with
/// `answer`) to every POST and keeps the JSON bodies, in order, until
/// dropped; over TLS when started with `start_tls`.
pub struct WebhookReceiver {
    pub port: u16,
    got: Arc<Mutex<Vec<Value>>>,
    status: Arc<AtomicU16>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The TLS server's certificate and key (PEM), replaceable.
    tls: Arc<Mutex<Option<Arc<rustls::ServerConfig>>>>,
}

/// A rustls server config presenting `cert` (PEM chain) with `key` (PEM).
fn tls_config(cert: &str, key: &str) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<_, _>>().expect("certificate");
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
    Arc::new(cfg)
}

impl WebhookReceiver {
    /// Over TLS, presenting `cert` with `key` (PEM).
    pub fn start_tls(cert: &str, key: &str) -> WebhookReceiver {
        let r = WebhookReceiver::start();
        r.present(cert, key);
        r
    }

    /// Presents `cert` with `key` (PEM) from the next connection on.
    pub fn present(&self, cert: &str, key: &str) {
        *self.tls.lock().unwrap_or_else(|e| e.into_inner()) = Some(tls_config(cert, key));
    }

    pub fn start() -> WebhookReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the webhook receiver");
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let (got, stop) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicBool::new(false)));
        let status = Arc::new(AtomicU16::new(200));
        let tls: Arc<Mutex<Option<Arc<rustls::ServerConfig>>>> = Arc::default();
        let (g, s, st, t) = (got.clone(), stop.clone(), status.clone(), tls.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let status = st.load(Ordering::Relaxed);
                        let tls = t.lock().unwrap_or_else(|e| e.into_inner()).clone();
                        let got = match tls {
                            Some(cfg) => serve_tls(conn, cfg, status),
                            None => serve_one(conn, status),
                        };
                        if let Some(v) = got {
                            g.lock().unwrap_or_else(|e| e.into_inner()).push(v);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        WebhookReceiver { port, got, status, stop, thread: Some(thread), tls }
    }

    /// Answer `status` from now on.
    pub fn answer(&self, status: u16) {
        self.status.store(status, Ordering::Relaxed);
    }

    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls.lock().unwrap_or_else(|e| e.into_inner()).is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}{path}", self.port)
    }

    /// Every body received so far.
    pub fn received(&self) -> Vec<Value> {
        self.got.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `serve_one` inside a TLS session presenting `cfg`'s certificate.
fn serve_tls(conn: TcpStream, cfg: Arc<rustls::ServerConfig>, status: u16) -> Option<Value> {
    conn.set_nonblocking(false).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let session = rustls::ServerConnection::new(cfg).ok()?;
    let mut stream = rustls::StreamOwned::new(session, conn);
    let v = read_and_answer(&mut stream, status);
    stream.conn.send_close_notify();
    let _ = stream.flush();
    v
}

/// Reads one request (head, then `content-length` bytes, within 5 s),
/// answers `status` and closes; the body as JSON.
fn serve_one(conn: TcpStream, status: u16) -> Option<Value> {
    conn.set_nonblocking(false).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut conn = conn;
    read_and_answer(&mut conn, status)
}

fn read_and_answer(conn: &mut (impl Read + Write), status: u16) -> Option<Value> {
    let started = Instant::now();
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let body_start = loop {
        if started.elapsed() > Duration::from_secs(5) || raw.len() > 1 << 20 {
            return None;
        }
        let n = conn.read(&mut buf).ok().filter(|n| *n > 0)?;
        raw.extend_from_slice(&buf[..n]);
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&raw[..body_start]).to_string();
    let len = super::http_client::content_length(&head);
    while raw.len() < body_start + len && started.elapsed() < Duration::from_secs(5) {
        let n = conn.read(&mut buf).ok().filter(|n| *n > 0)?;
        raw.extend_from_slice(&buf[..n]);
    }
    let head = format!("HTTP/1.1 {status} Status\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    let _ = conn.write_all(head.as_bytes());
    serde_json::from_slice(raw.get(body_start..body_start + len)?).ok()
}

/// A real Alertmanager on loopback (no clustering, a receiver that sends
/// nowhere), stopped by its PID when dropped.
pub struct Alertmanager {
    pub proc_: Proc,
    pub port: u16,
}

impl Alertmanager {
    pub fn start(dir: &Path) -> Alertmanager {
        let bin = alertmanager_bin();
        let port = free_port();
        let config = dir.join("alertmanager.yml");
        std::fs::write(&config, "route:\n  receiver: none\nreceivers:\n  - name: none\n").expect("config");
        let mut p = Proc::spawn(
            "alertmanager",
            Command::new(bin)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.path={}", dir.join("am-data").display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--cluster.listen-address="),
            dir,
        );
        wait_http("Alertmanager to be ready", &mut p, port, "/-/ready", "am", Duration::from_secs(30), |r| {
            r.status == 200
        });
        Alertmanager { proc_: p, port }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The alerts it holds (`GET /api/v2/alerts`: active ones).
    pub fn alerts(&self) -> Vec<Value> {
        http_get(addr(self.port), "/api/v2/alerts", "am")
            .ok()
            .filter(|r| r.status == 200)
            .and_then(|r| serde_json::from_str::<Value>(&r.body).ok())
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    }
}
