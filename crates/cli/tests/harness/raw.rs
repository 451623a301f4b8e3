//! Raw connections: bytes written exactly as a test gives them, and what
//! comes back read as bytes, for what an HTTP client would not send (broken
//! requests, upgrades, CONNECT tunnels, plain TCP) or would hide (when the
//! proxy closes, a reset).

use super::process::addr;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A connection to 127.0.0.1:`port` whose reads give up after `timeout`.
pub fn connect(port: u16, timeout: Duration) -> TcpStream {
    let s = TcpStream::connect(addr(port)).expect("connect");
    s.set_read_timeout(Some(timeout)).expect("timeout");
    s
}

/// Everything read until the peer closes, resets or stays quiet past the
/// read timeout (none of which is an error here).
pub fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// Writes `raw` and reads once (up to 4 KiB, 5 s at most): the text.
pub fn first_read(port: u16, raw: &str) -> String {
    let mut s = connect(port, Duration::from_secs(5));
    s.write_all(raw.as_bytes()).expect("write");
    let mut buf = vec![0; 4096];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).to_string()
}

/// One HTTP/1.1 GET (connection: close) on its own connection; everything
/// read until the proxy closes or resets it (a reset is not an error here).
pub fn get_until_closed(port: u16, path: &str) -> String {
    let mut s = connect(port, Duration::from_secs(5));
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: example.com\r\nconnection: close\r\n\r\n").as_bytes())
        .expect("write");
    String::from_utf8_lossy(&read_until_closed(&mut s)).into_owned()
}

/// Sends an HTTP/1.1 request over plain TCP and reads until the proxy
/// closes: the status line, "closed" when nothing came back, "refused" when
/// the connection was.
pub fn tcp_request(port: u16) -> String {
    let Ok(mut s) = TcpStream::connect(addr(port)) else { return "refused".into() };
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let _ = s.write_all(b"GET /x HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n");
    let out = read_until_closed(&mut s);
    let text = String::from_utf8_lossy(&out);
    match text.lines().next() {
        Some(l) if !l.is_empty() => l.trim().to_string(),
        _ => "closed".into(),
    }
}

/// Sends a request in three pieces 200 ms apart (three reads at the proxy),
/// then reads the answer.
pub fn tcp_in_pieces(port: u16) {
    let Ok(mut s) = TcpStream::connect(addr(port)) else { return };
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    for piece in [&b"GET /x HTTP/1.1\r\n"[..], b"host: t\r\n", b"connection: close\r\n\r\n"] {
        let _ = s.write_all(piece);
        std::thread::sleep(Duration::from_millis(200));
    }
    read_until_closed(&mut s);
}

/// Opens a connection and closes it without sending anything.
pub fn tcp_silent(port: u16) {
    if let Ok(s) = TcpStream::connect(addr(port)) {
        std::thread::sleep(Duration::from_millis(100));
        drop(s);
    }
}

/// Sends `msg`, ends the write side, and reads until the proxy closes.
pub fn tcp_exchange(port: u16, msg: &[u8]) -> Vec<u8> {
    let mut s = connect(port, Duration::from_secs(5));
    // The proxy may already have closed (no upstream): then nothing comes back.
    let _ = s.write_all(msg);
    let _ = s.shutdown(std::net::Shutdown::Write);
    read_until_closed(&mut s)
}

/// Sends `msg` and reads as many bytes back, the connection left open.
pub fn tcp_exchange_open(port: u16, msg: &[u8]) -> Vec<u8> {
    let mut s = connect(port, Duration::from_secs(5));
    s.write_all(msg).expect("write");
    let mut out = vec![0u8; msg.len()];
    match s.read_exact(&mut out) {
        Ok(()) => out,
        Err(_) => Vec::new(),
    }
}

/// An HTTP/1.1 GET asking to upgrade to `upgrade`, with `connection`.
pub fn upgrade_request(path: &str, upgrade: &str, connection: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: example.com\r\nconnection: {connection}\r\nupgrade: {upgrade}\r\n\r\n")
        .into_bytes()
}

/// What came back on a raw connection: the response head (status line and
/// lower-cased headers, `date` left out), what followed it, and whether the
/// proxy closed the connection.
#[derive(Debug, Clone, PartialEq)]
pub struct Raw {
    pub status: String,
    pub headers: BTreeMap<String, String>,
    pub rest: String,
    pub closed: bool,
}

/// Writes `first`, reads the response head, then writes each of `then`
/// (100 ms apart) and reads what is left for up to `linger`.
pub fn raw_exchange(port: u16, first: &[u8], then: &[&[u8]], linger: Duration) -> Raw {
    let mut s = connect(port, Duration::from_millis(200));
    s.write_all(first).expect("write");
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let mut closed = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    // The head first (or, from a byte echo, whatever comes back before a
    // second of quiet).
    let mut quiet = 0;
    while !raw.windows(4).any(|w| w == b"\r\n\r\n") && Instant::now() < deadline && quiet < 5 {
        match s.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(_) if !raw.is_empty() => quiet += 1,
            Err(_) => {}
        }
    }
    for chunk in then {
        if closed {
            break;
        }
        let _ = s.write_all(chunk);
        std::thread::sleep(Duration::from_millis(100));
    }
    let end = Instant::now() + linger;
    while !closed && Instant::now() < end {
        match s.read(&mut buf) {
            Ok(0) => closed = true,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines.next().unwrap_or_default().to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .filter(|(k, _)| k != "date")
        .map(|(k, v)| if k == "x-envoy-upstream-service-time" { (k, "(present)".to_string()) } else { (k, v) })
        .collect();
    Raw { status, headers, rest: rest.to_string(), closed }
}

/// A keep-alive connection answered 200 once, so the proxy holds it open
/// (and counts it against its connection limits); None otherwise.
pub fn answered_keep_alive(port: u16) -> Option<TcpStream> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").ok()?;
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).ok()?;
    String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200").then_some(s)
}

/// Whether a new connection is closed without an answer (what a proxy does
/// to a connection over a limit).
pub fn closed_unanswered(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return true };
    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
    let _ = s.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n");
    let mut buf = [0u8; 512];
    matches!(s.read(&mut buf), Ok(0) | Err(_))
}
