//! Envoy's answers to malformed HTTP/1 requests.
//!
//! hyper answers a request it cannot parse itself, before any service sees it,
//! with a bare `400` (`connection: close`, `content-length: 0`, `date`) and
//! offers no hook to change it. Envoy answers the same requests with a
//! `text/plain` body naming the status and its `server` header. This write
//! filter recognises hyper's own error head — a 4xx whose only headers are
//! `connection: close`, `content-length: 0` and `date`, which no response of
//! ours ever is (ours always carry `server` or a body or an upstream header) —
//! and writes Envoy's form instead. Every other byte passes through untouched;
//! the check costs one prefix compare per write.
//!
//! Two more of Envoy's answers need to know what the client sent, which
//! hyper does not tell: a version token `HTTP/d.d` other than 1.1 gets `426
//! Upgrade Required` (hyper says 400), and a request with both
//! `content-length` and `transfer-encoding` gets `400` (hyper reads it as
//! chunked). The read side therefore looks at the first request head of each
//! connection as it passes ([`FirstHead`]: a few bytes of state, no copy, done
//! after the head); later requests on a keep-alive connection are not
//! inspected and keep hyper's answers (400 for a bad version; chunked wins
//! over content-length, and the connection closes after the response).
//! hyper also writes an `HTTP/1.0` status line to an HTTP/1.0 client, whose
//! only answer from us is Envoy's 426 unless the connection manager accepts
//! HTTP/1.0; Envoy writes that 426 as `HTTP/1.1`, so that status line's
//! version is rewritten in place (an accepted HTTP/1.0 request's response
//! keeps `HTTP/1.0`, as Envoy's does).

use bytes::Bytes;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pin_project_lite::pin_project! {
    pub struct EnvoyErrors<T> {
        #[pin]
        inner: T,
        server: Bytes,
        protocol_errors: Arc<crate::stats::Counter>,
        // Bumped when hyper refuses a head as too large (431): Envoy's codec
        // had begun that request's stream, so it counts as a request
        // begun and completed with a 4xx.
        refused_head: Arc<[Arc<crate::stats::Counter>]>,
        // A replacement being written, how much of it is out, and the length
        // of the original write it stands for.
        pending: Option<(Bytes, usize, usize)>,
        first_head: FirstHead,
        // Its `length_conflict` is set when the first request carries both
        // content-length and transfer-encoding; the connection manager
        // answers that request with 400.
        conn: Arc<crate::http::conn_manager::ConnInfo>,
        // The connection manager serves HTTP/1.0 (`accept_http_10`): its
        // responses keep hyper's `HTTP/1.0` status line, as Envoy's do.
        http_10: bool,
    }
}

impl<T> EnvoyErrors<T> {
    pub fn new(
        inner: T,
        server: &str,
        protocol_errors: Arc<crate::stats::Counter>,
        conn: Arc<crate::http::conn_manager::ConnInfo>,
    ) -> Self {
        Self {
            inner,
            server: Bytes::copy_from_slice(server.as_bytes()),
            protocol_errors,
            refused_head: Arc::new([]),
            pending: None,
            first_head: FirstHead::default(),
            conn,
            http_10: false,
        }
    }

    /// The counters a head refused as too large (hyper's 431) bumps.
    pub fn counting_refused_heads(mut self, counters: Arc<[Arc<crate::stats::Counter>]>) -> Self {
        self.refused_head = counters;
        self
    }

    /// Leaves `HTTP/1.0` status lines as they are: the connection manager
    /// serves HTTP/1.0 clients.
    pub fn serving_http_10(mut self, yes: bool) -> Self {
        self.http_10 = yes;
        self
    }
}

/// What the first request head of a connection says, learnt byte by byte as
/// reads pass (the head may arrive in pieces). Keeps the last bytes of the
/// request line (for its version) and the first bytes of each header line
/// (for its name); nothing else.
#[derive(Default)]
struct FirstHead {
    done: bool,
    in_request_line: bool,
    started: bool,
    // The request line's last 8 bytes, or a header line's first 18.
    window: [u8; 18],
    len: usize,
    line_empty: bool,
    content_length: bool,
    transfer_encoding: bool,
    /// The request line names a version `HTTP/d.d` that is not 1.1 or 1.0.
    unsupported_version: bool,
}

impl FirstHead {
    fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.done {
                return;
            }
            if !self.started {
                self.started = true;
                self.in_request_line = true;
                self.line_empty = true;
            }
            match b {
                b'\r' => {}
                b'\n' => self.end_line(),
                _ => {
                    self.line_empty = false;
                    if self.in_request_line {
                        // Rolling tail of the request line.
                        if self.len == 8 {
                            self.window.copy_within(1..8, 0);
                            self.len = 7;
                        }
                        self.window[self.len] = b;
                        self.len += 1;
                    } else if self.len < self.window.len() {
                        self.window[self.len] = b.to_ascii_lowercase();
                        self.len += 1;
                    }
                }
            }
        }
    }

    fn end_line(&mut self) {
        let w = &self.window[..self.len];
        if self.in_request_line {
            self.in_request_line = false;
            // Envoy's parser reads any single-digit HTTP/d.d; all but 1.1
            // (and 1.0, which the connection manager answers) are 426.
            if let [b'H', b'T', b'T', b'P', b'/', major, b'.', minor] = *w {
                self.unsupported_version = major.is_ascii_digit()
                    && minor.is_ascii_digit()
                    && !(major == b'1' && (minor == b'1' || minor == b'0'));
            }
        } else if self.line_empty {
            self.done = true;
        } else if w.starts_with(b"content-length:") {
            self.content_length = true;
        } else if w.starts_with(b"transfer-encoding:") {
            self.transfer_encoding = true;
        }
        self.len = 0;
        self.line_empty = true;
    }
}

/// Envoy's response for hyper's error head, or `None` when `buf` is not one.
/// `upgrade` turns hyper's 400 into Envoy's 426 for an unsupported version.
fn envoy_form(buf: &[u8], server: &[u8], upgrade: bool) -> Option<Vec<u8>> {
    if !(buf.starts_with(b"HTTP/1.1 4") || buf.starts_with(b"HTTP/1.0 4")) {
        return None;
    }
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    if end + 4 != buf.len() {
        return None;
    }
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let (mut close, mut empty, mut date) = (false, false, None);
    for l in lines {
        let (k, v) = l.split_once(':')?;
        match (k.trim().to_ascii_lowercase().as_str(), v.trim()) {
            ("connection", "close") => close = true,
            ("content-length", "0") => empty = true,
            ("date", d) => date = Some(d.to_string()),
            _ => return None,
        }
    }
    if !(close && empty) {
        return None;
    }
    let mut parts = status_line.splitn(3, ' ');
    let (_, mut code, mut reason) = (parts.next()?, parts.next()?, parts.next().unwrap_or(""));
    if upgrade && code == "400" {
        (code, reason) = ("426", "Upgrade Required");
    }
    let mut out =
        format!("HTTP/1.1 {code} {reason}\r\ncontent-length: {}\r\ncontent-type: text/plain\r\n", reason.len());
    if let Some(d) = date {
        out.push_str(&format!("date: {d}\r\n"));
    }
    out.push_str("server: ");
    let mut out = out.into_bytes();
    out.extend_from_slice(server);
    out.extend_from_slice(b"\r\nconnection: close\r\n\r\n");
    out.extend_from_slice(reason.as_bytes());
    Some(out)
}

impl<T: AsyncRead> AsyncRead for EnvoyErrors<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        if this.first_head.done {
            return this.inner.poll_read(cx, buf);
        }
        let before = buf.filled().len();
        let r = this.inner.poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            this.first_head.feed(&buf.filled()[before..]);
            if this.first_head.done && this.first_head.content_length && this.first_head.transfer_encoding {
                this.conn.length_conflict.store(true, Ordering::Relaxed);
            }
        }
        r
    }
}

impl<T: AsyncWrite> AsyncWrite for EnvoyErrors<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let mut this = self.project();
        // After an upgrade the bytes are another protocol's: never rewritten.
        if this.pending.is_none() && this.conn.upgraded.load(Ordering::Relaxed) {
            return this.inner.poll_write(cx, buf);
        }
        if this.pending.is_none() {
            match envoy_form(buf, this.server, this.first_head.unsupported_version) {
                Some(form) => {
                    this.protocol_errors.inc();
                    if buf.starts_with(b"HTTP/1.1 431 ") {
                        this.refused_head.iter().for_each(|c| c.inc());
                    }
                    *this.pending = Some((Bytes::from(form), 0, buf.len()));
                }
                // hyper's HTTP/1.0 status line (only ever on our 426) as Envoy's HTTP/1.1.
                None if !*this.http_10 && buf.starts_with(b"HTTP/1.0 ") => {
                    let mut v = buf.to_vec();
                    v[7] = b'1';
                    *this.pending = Some((Bytes::from(v), 0, buf.len()));
                }
                None => return this.inner.poll_write(cx, buf),
            }
        }
        // Write the replacement out whole, then report the original as written.
        loop {
            let Some((form, done, original)) = this.pending.as_mut() else { return Poll::Ready(Ok(0)) };
            if *done == form.len() {
                let n = *original;
                *this.pending = None;
                return Poll::Ready(Ok(n));
            }
            match this.inner.as_mut().poll_write(cx, &form[*done..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *done += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    // Not vectored: hyper then hands its head over in one contiguous write.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::{envoy_form, FirstHead};

    fn head(pieces: &[&[u8]]) -> FirstHead {
        let mut h = FirstHead::default();
        for p in pieces {
            h.feed(p);
        }
        h
    }

    #[test]
    fn first_head_finds_version_and_length_headers_across_reads() {
        let h = head(&[b"GET / HT", b"TP/1.7\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\n"]);
        assert!(h.done && h.unsupported_version && !h.content_length);
        for ok in ["HTTP/1.1", "HTTP/1.0", "HTTP/1.12", "HTTX/1.7"] {
            let line = format!("GET / {ok}\r\n\r\n");
            assert!(!head(&[line.as_bytes()]).unsupported_version, "{ok}");
        }
        let h = head(&[b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-", b"Encoding: chunked\r\n\r\n3\r\n"]);
        assert!(h.done && h.content_length && h.transfer_encoding);
        // Body bytes after the head are not looked at.
        let h = head(&[b"POST / HTTP/1.1\r\nContent-Length: 40\r\n\r\ntransfer-encoding: x\r\n"]);
        assert!(h.content_length && !h.transfer_encoding);
    }

    #[test]
    fn unsupported_version_becomes_426() {
        let hyper = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        let out = String::from_utf8(envoy_form(hyper, b"envoy", true).unwrap()).unwrap();
        assert!(out.starts_with("HTTP/1.1 426 Upgrade Required\r\ncontent-length: 16\r\n"), "{out}");
        assert!(out.ends_with("\r\n\r\nUpgrade Required"), "{out}");
    }

    #[test]
    fn rewrites_only_hypers_bare_error_head() {
        let hyper = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: Mon, 23 Nov 2026 06:00:00 GMT\r\n\r\n";
        let out = String::from_utf8(envoy_form(hyper, b"envoy", false).unwrap()).unwrap();
        assert_eq!(
            out,
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 11\r\ncontent-type: text/plain\r\ndate: Mon, 23 Nov 2026 06:00:00 GMT\r\nserver: envoy\r\nconnection: close\r\n\r\nBad Request"
        );
        // Our own 400 (with server) and anything with a body pass through.
        assert!(envoy_form(
            b"HTTP/1.1 400 Bad Request\r\nserver: envoy\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            b"envoy",
            false
        )
        .is_none());
        assert!(envoy_form(
            b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\nx",
            b"envoy",
            false
        )
        .is_none());
        assert!(envoy_form(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", b"envoy", true).is_none());
    }
}
