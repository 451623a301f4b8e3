//! HTTP clients as the tests use them: a request ([`Req`], built from
//! [`get`]), a plain HTTP/1.1 exchange per connection (with or without
//! `connection: close`, the body decoded or decompressed), HTTP/2 with prior
//! knowledge through curl, and the parsing of a response they share.

use super::process::addr;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// One request as the tests send it (built from [`get`]).
#[derive(Clone, Debug)]
pub struct Req {
    pub method: &'static str,
    pub path: String,
    pub host: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    pub h2: bool,
    /// HTTP/1.1 without `connection: close`: whether the proxy closes the
    /// connection after its response is then compared too.
    pub keep_alive: bool,
}

pub fn get(path: &str) -> Req {
    Req {
        method: "GET",
        path: path.into(),
        host: "example.com",
        headers: vec![],
        body: String::new(),
        h2: false,
        keep_alive: false,
    }
}

impl Req {
    pub fn host(mut self, h: &'static str) -> Self {
        self.host = h;
        self
    }
    pub fn header(mut self, k: &'static str, v: impl Into<String>) -> Self {
        self.headers.push((k, v.into()));
        self
    }
    /// A POST carrying `body` (HTTP/1.1 with content-length).
    pub fn post(mut self, body: impl Into<String>) -> Self {
        self.method = "POST";
        self.body = body.into();
        self
    }
    pub fn method(mut self, m: &'static str) -> Self {
        self.method = m;
        self
    }
    pub fn h2(mut self) -> Self {
        self.h2 = true;
        self
    }
    pub fn keep_alive(mut self) -> Self {
        self.keep_alive = true;
        self
    }
    /// The headers as `http_request` takes them.
    pub fn header_pairs(&self) -> Vec<(&str, &str)> {
        self.headers.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }
}

/// A response as the tests look at it.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// The status of a status line (`HTTP/1.1 200 OK`), if it has one.
pub fn status_of(line: &str) -> Option<u16> {
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `name: value` lines as (lower-cased name, value) pairs.
pub fn header_lines<'a>(lines: impl Iterator<Item = &'a str>) -> Vec<(String, String)> {
    lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect()
}

/// A response head: its status (0 when unreadable) and headers.
pub fn parse_head(head: &str) -> (u16, Vec<(String, String)>) {
    let mut lines = head.lines();
    let status = lines.next().and_then(status_of).unwrap_or(0);
    (status, header_lines(lines))
}

/// Runs an async client to completion on a runtime of its own.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(f)
}

/// A plain HTTP/1.1 GET (connection: close), enough for admin and data-plane checks.
pub fn http_get(addr: SocketAddr, path: &str, host: &str) -> std::io::Result<Resp> {
    http_request(addr, "GET", path, host, &[], "")
}

pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\ncontent-length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&raw)
        .ok_or_else(|| std::io::Error::other(format!("unparsable response: {:?}", String::from_utf8_lossy(&raw))))
}

fn parse_response(raw: &[u8]) -> Option<Resp> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let status = status_of(lines.next()?)?;
    let headers = header_lines(lines);
    let chunked = headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked { dechunk(body) } else { body.to_string() };
    Some(Resp { status, headers, body })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn dechunk_bytes(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = b.windows(2).position(|w| w == b"\r\n") {
        let size = String::from_utf8_lossy(&b[..i]);
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        let rest = &b[i + 2..];
        if n == 0 || rest.len() < n {
            break;
        }
        out.extend_from_slice(&rest[..n]);
        b = rest.get(n + 2..).unwrap_or(&[]);
    }
    out
}

/// The content-length a response head gives (0 when it gives none).
pub fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0)
}

/// Whether `raw` holds a whole response: a head and as much body as its
/// content-length says.
pub fn response_complete(raw: &[u8]) -> bool {
    let text = String::from_utf8_lossy(raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else { return false };
    body.len() >= content_length(head)
}

/// One HTTP/1.1 request on a connection left open by the client: the
/// response is read by its content-length, then the connection is watched for
/// for 1.5 s more; `x-test-closed` in the result says whether the proxy closed it.
pub fn keep_alive_exchange(port: u16, r: &Req) -> Resp {
    let (method, path, host, body) = (r.method, &r.path, r.host, &r.body);
    let mut s = TcpStream::connect(addr(port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(500))).expect("timeout");
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\n");
    if !body.is_empty() {
        req.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    for (k, v) in &r.headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).expect("write");
    let (mut raw, mut buf, mut closed) = (Vec::new(), [0u8; 8192], false);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            // Quiet for a while after a whole response: left open. Envoy
            // closes after its delayed-close wait (up to 1 s), so wait longer.
            Err(_) if response_complete(&raw) => {
                s.set_read_timeout(Some(Duration::from_millis(1500))).expect("timeout");
                closed = matches!(s.read(&mut buf), Ok(0));
                break;
            }
            Err(_) => {}
        }
    }
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let (status, mut headers) = parse_head(head);
    headers.push(("x-test-closed".into(), closed.to_string()));
    Resp { status, headers, body: body.to_string() }
}

/// HTTP/2 with prior knowledge, through curl.
pub fn curl_h2(port: u16, r: &Req) -> Resp {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-s", "-i", "--http2-prior-knowledge", "-X", r.method, "-H", &format!("host: {}", r.host)]);
    for (k, v) in &r.headers {
        cmd.args(["-H", &format!("{k}: {v}")]);
    }
    let out =
        cmd.arg(format!("http://127.0.0.1:{port}{}", r.path)).output().expect("curl is needed for the h2c scenarios");
    let text = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let (status, headers) = parse_head(head);
    Resp { status, headers, body: body.to_string() }
}

/// One HTTP/1.1 request (connection: close) whose response body is read as
/// bytes and, when it says `content-encoding: gzip`, `br` or `zstd`,
/// decompressed (`x-test-decoded: true` then).
pub fn get_decoded(port: u16, r: &Req) -> Resp {
    send_bytes_decoded(port, r, &[])
}

/// As [`get_decoded`], with `body` (any bytes, with its `content-length`)
/// sent after the head when it is not empty.
pub fn send_bytes_decoded(port: u16, r: &Req, body: &[u8]) -> Resp {
    let (status, mut headers, mut body) = send_bytes(port, r, body);
    let encoding = headers.iter().find(|(k, _)| k == "content-encoding").map(|(_, v)| v.clone());
    let mut out = Vec::new();
    match encoding.as_deref() {
        Some("gzip") => {
            flate2::read::GzDecoder::new(body.as_slice()).read_to_end(&mut out).expect("a valid gzip body");
        }
        Some("br") => {
            brotli::Decompressor::new(body.as_slice(), 4096).read_to_end(&mut out).expect("a valid brotli body");
        }
        Some("zstd") => {
            out = zstd::stream::decode_all(body.as_slice()).expect("a valid zstd body");
        }
        _ => {}
    }
    if !out.is_empty() {
        body = out;
        headers.push(("x-test-decoded".into(), "true".into()));
    }
    Resp { status, headers, body: String::from_utf8_lossy(&body).to_string() }
}

/// One HTTP/1.1 request (connection: close): the status, headers and the
/// body's bytes as sent (de-chunked, not decompressed).
pub fn get_bytes(port: u16, r: &Req) -> (u16, Vec<(String, String)>, Vec<u8>) {
    send_bytes(port, r, &[])
}

/// As [`get_bytes`], with `body` (any bytes, with its `content-length`)
/// sent after the head when it is not empty.
pub fn send_bytes(port: u16, r: &Req, body: &[u8]) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut s = TcpStream::connect(addr(port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut req = format!("{} {} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n", r.method, r.path, r.host);
    if !body.is_empty() {
        req.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    for (k, v) in &r.headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    s.write_all(&bytes).expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
    let (status, headers) = parse_head(&String::from_utf8_lossy(&raw[..split]));
    let mut body = raw[split + 4..].to_vec();
    if headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked")) {
        body = dechunk_bytes(&body);
    }
    (status, headers, body)
}
