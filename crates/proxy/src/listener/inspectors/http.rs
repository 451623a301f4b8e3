//! `envoy.filters.listener.http_inspector`: peeks at the first bytes of a
//! cleartext connection, without consuming them, to tell HTTP/1.x from
//! HTTP/2 (prior knowledge) so that filter chains can match on
//! `application_protocols`. As Envoy does: the HTTP/2 connection preface
//! gives `h2c`; a well-formed HTTP/1 request line gives `http/1.1` for
//! version 1.1 and `http/1.0` for any other; anything else is not HTTP and
//! sets nothing. A connection already found to be TLS is not inspected.
//!
//! Hand-written because it is a few dozen lines of request-line grammar;
//! hyper's and httparse's parsers want the whole head, while Envoy decides
//! on the request line alone.

use crate::stats::{Counter, Store};
use std::sync::Arc;
use std::time::Duration;

/// Envoy's `Config::MAX_INSPECT_SIZE`: a request line longer than this
/// closes the connection (`read_error`).
pub const MAX_INSPECT_SIZE: usize = 64 * 1024;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the first bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniff {
    /// Undecided: more bytes are needed.
    NeedMore,
    /// An application protocol: `http/1.0`, `http/1.1` or `h2c`.
    Found(&'static str),
    /// Not HTTP.
    NotHttp,
}

/// Envoy's `http_inspector.*` counters (one set for the server, as Envoy's
/// are named without a listener prefix).
pub struct Stats {
    pub http10_found: Arc<Counter>,
    pub http11_found: Arc<Counter>,
    pub http2_found: Arc<Counter>,
    pub http_not_found: Arc<Counter>,
    pub read_error: Arc<Counter>,
}

impl Stats {
    pub fn new(store: &Store) -> Self {
        let c = |n: &str| store.counter(&format!("http_inspector.{n}"));
        Self {
            http10_found: c("http10_found"),
            http11_found: c("http11_found"),
            http2_found: c("http2_found"),
            http_not_found: c("http_not_found"),
            read_error: c("read_error"),
        }
    }
}

/// RFC 9110 `tchar`, what a method is made of.
fn tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Decides from the bytes seen so far. Invalid bytes are refused as soon as
/// they appear, as a streaming HTTP/1 parser refuses them.
pub fn sniff(buf: &[u8]) -> Sniff {
    if buf.is_empty() {
        return Sniff::NeedMore;
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if buf.len() >= H2_PREFACE.len() { Sniff::Found("h2c") } else { Sniff::NeedMore };
    }
    if buf[0] == b'\r' || buf[0] == b'\n' {
        return Sniff::NotHttp;
    }
    // The request line: METHOD SP TARGET SP HTTP/d.d CRLF (or LF).
    let line_end = buf.iter().position(|&b| b == b'\n');
    let line = match line_end {
        Some(i) => &buf[..i],
        None => buf,
    };
    let complete = line_end.is_some();
    // The CR of a CRLF, whether or not its LF has arrived yet.
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.splitn(3, |&b| b == b' ');
    let method = parts.next().unwrap_or_default();
    if !method.iter().all(|&b| tchar(b)) {
        return Sniff::NotHttp;
    }
    let Some(target) = parts.next() else {
        return if complete { Sniff::NotHttp } else { Sniff::NeedMore };
    };
    if method.is_empty() || !target.iter().all(|&b| b > b' ' && b != 0x7f) {
        return Sniff::NotHttp;
    }
    let Some(version) = parts.next() else {
        return if complete { Sniff::NotHttp } else { Sniff::NeedMore };
    };
    if target.is_empty() {
        return Sniff::NotHttp;
    }
    // A prefix of `HTTP/d.d` while the line is still arriving.
    let shape = b"HTTP/0.0";
    let fits = version.len() <= shape.len()
        && version.iter().zip(shape.iter()).all(|(&v, &s)| if s == b'0' { v.is_ascii_digit() } else { v == s });
    if !fits {
        return Sniff::NotHttp;
    }
    if !complete {
        return Sniff::NeedMore;
    }
    if version.len() != shape.len() {
        return Sniff::NotHttp;
    }
    if version == b"HTTP/1.1" {
        Sniff::Found("http/1.1")
    } else {
        Sniff::Found("http/1.0")
    }
}

/// Peeks until the bytes decide, within `timeout`. `Ok(Some(protocol))`
/// or `Ok(None)` (not HTTP) let the connection go on; `Err(())` closes it
/// (the peer closed first, the request line passed the limit, or the
/// listener filter timeout ran out). Counts Envoy's stats.
pub async fn inspect(
    stream: &tokio::net::TcpStream,
    timeout: Duration,
    stats: &Stats,
) -> Result<Option<&'static str>, ()> {
    let work = async {
        let mut buf = vec![0u8; 1024];
        let mut seen = 0;
        // Bounded by the timeout around it; polls every 2 ms only while a
        // peer sends a line slower than it arrives in one segment.
        loop {
            let n = stream.peek(&mut buf).await.map_err(|_| ())?;
            if n == 0 {
                return Err(());
            }
            match sniff(&buf[..n]) {
                Sniff::Found(p) => {
                    match p {
                        "h2c" => stats.http2_found.inc(),
                        "http/1.1" => stats.http11_found.inc(),
                        _ => stats.http10_found.inc(),
                    }
                    return Ok(Some(p));
                }
                Sniff::NotHttp => {
                    stats.http_not_found.inc();
                    return Ok(None);
                }
                Sniff::NeedMore if n >= MAX_INSPECT_SIZE => {
                    stats.read_error.inc();
                    return Err(());
                }
                Sniff::NeedMore if n == buf.len() => buf.resize((buf.len() * 2).min(MAX_INSPECT_SIZE), 0),
                Sniff::NeedMore => {
                    if stream.ready(tokio::io::Interest::READABLE).await.map_err(|_| ())?.is_read_closed() {
                        return Err(());
                    }
                    if n == seen {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    seen = n;
                }
            }
        }
    };
    tokio::time::timeout(timeout, work).await.unwrap_or(Err(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http11_and_http10_request_lines() {
        assert_eq!(sniff(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"), Sniff::Found("http/1.1"));
        assert_eq!(sniff(b"POST /a?b=c HTTP/1.0\r\n"), Sniff::Found("http/1.0"));
        // A bare LF ends the line too; any other version counts as 1.0.
        assert_eq!(sniff(b"GET / HTTP/1.1\n"), Sniff::Found("http/1.1"));
        assert_eq!(sniff(b"GET / HTTP/2.0\r\n"), Sniff::Found("http/1.0"));
        // Custom methods are tokens too.
        assert_eq!(sniff(b"PURGE /x HTTP/1.1\r\n"), Sniff::Found("http/1.1"));
        assert_eq!(sniff(b"CONNECT example.com:443 HTTP/1.1\r\n"), Sniff::Found("http/1.1"));
    }

    #[test]
    fn partial_lines_wait_for_more() {
        for partial in [
            &b"G"[..],
            b"GET",
            b"GET ",
            b"GET /inde",
            b"GET / ",
            b"GET / HTT",
            b"GET / HTTP/1.",
            b"GET / HTTP/1.1",
            b"GET / HTTP/1.1\r",
        ] {
            assert_eq!(sniff(partial), Sniff::NeedMore, "{:?}", String::from_utf8_lossy(partial));
        }
    }

    #[test]
    fn the_h2_preface_is_h2c() {
        assert_eq!(sniff(H2_PREFACE), Sniff::Found("h2c"));
        let mut more = H2_PREFACE.to_vec();
        more.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        assert_eq!(sniff(&more), Sniff::Found("h2c"));
        assert_eq!(sniff(b"PRI * HTTP/2.0\r\n"), Sniff::NeedMore);
        assert_eq!(sniff(b"PRI"), Sniff::NeedMore);
    }

    #[test]
    fn other_bytes_are_not_http() {
        assert_eq!(sniff(b"\r\nGET / HTTP/1.1\r\n"), Sniff::NotHttp);
        assert_eq!(sniff(b"\x16\x03\x01\x02\x00\x01"), Sniff::NotHttp);
        assert_eq!(sniff(b"SSH-2.0-OpenSSH_9.6\r\n"), Sniff::NotHttp);
        assert_eq!(sniff(b"hello world\r\n"), Sniff::NotHttp);
        assert_eq!(sniff(b"GET / FTP/1.1\r\n"), Sniff::NotHttp);
        assert_eq!(sniff(b"GET /\r\n"), Sniff::NotHttp);
        assert_eq!(sniff(b"GET  / HTTP/1.1\r\n"), Sniff::NotHttp);
        assert_eq!(sniff(b"GET / HTTP/1.1x\r\n"), Sniff::NotHttp);
        assert_eq!(sniff(b"GE\x00T / HTTP/1.1\r\n"), Sniff::NotHttp);
    }
}
