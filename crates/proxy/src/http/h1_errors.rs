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
//! Other answers of Envoy's need to know what the client sent, which hyper
//! does not tell: the read side follows every request head of the
//! connection as it passes ([`Framing`]) and keeps the first that Envoy's
//! codec would refuse. When hyper refuses that request itself (400), its
//! answer takes the refusal's status (a version `HTTP/d.d` other than 1.1
//! gets `426 Upgrade Required`, a transfer coding other than `chunked`
//! `501 Not Implemented`); when hyper serves it, the connection manager
//! answers it. hyper's `414 URI Too Long` is Envoy's 431: Envoy counts the
//! request line in the header limit.
//! hyper also writes an `HTTP/1.0` status line to an HTTP/1.0 client, whose
//! only answer from us is Envoy's 426 unless the connection manager accepts
//! HTTP/1.0; Envoy writes that 426 as `HTTP/1.1`, so that status line's
//! version is rewritten in place (an accepted HTTP/1.0 request's response
//! keeps `HTTP/1.0`, as Envoy's does).

use crate::http::h1_framing::{Framing, Refusal};
use bytes::Bytes;
use std::future::Future;
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
        framing: Framing,
        // Its `refused` holds the first request Envoy's codec refuses.
        conn: Arc<crate::http::conn_manager::ConnInfo>,
        // The connection manager serves HTTP/1.0 (`accept_http_10`): its
        // responses keep hyper's `HTTP/1.0` status line, as Envoy's do.
        http_10: bool,
        // `request_headers_timeout`, and when the head being read times out.
        head_timeout: Option<(std::time::Duration, Arc<crate::stats::Counter>)>,
        head_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
        // Envoy's 408 for a head that timed out, and how much of it is out.
        timed_out: Option<(Bytes, usize)>,
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
            framing: Framing::default(),
            conn,
            http_10: false,
            head_timeout: None,
            head_deadline: None,
            timed_out: None,
        }
    }

    /// `request_headers_timeout`: a request head begun and not finished
    /// in time is answered 408 and the connection closed, as Envoy does;
    /// `counter` counts it (`downstream_rq_header_timeout`), and, as Envoy's
    /// stream had begun, the counters of a refused head count it as a
    /// request completed with a 4xx.
    pub fn head_timeout(mut self, timeout: Option<std::time::Duration>, counter: Arc<crate::stats::Counter>) -> Self {
        self.head_timeout = timeout.map(|t| (t, counter));
        self
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

/// Envoy's response for hyper's error head, or `None` when `buf` is not one.
/// `refusal` is what Envoy's codec says of the request hyper refuses: its
/// status replaces hyper's 400.
fn envoy_form(buf: &[u8], server: &[u8], refusal: Option<Refusal>) -> Option<Vec<u8>> {
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
    let (_, code, reason) = (parts.next()?, parts.next()?, parts.next().unwrap_or(""));
    let (code, reason) = match (code, refusal) {
        ("400", Some(r)) => (r.status().to_string(), r.reason()),
        ("414", _) => ("431".to_string(), "Request Header Fields Too Large"),
        _ => (code.to_string(), reason),
    };
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

/// Envoy's answer to a request head that took longer than
/// `request_headers_timeout`.
fn head_timeout_reply(server: &[u8]) -> Bytes {
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    let mut out = format!(
        "HTTP/1.1 408 Request Timeout\r\ncontent-length: 15\r\ncontent-type: text/plain\r\ndate: {date}\r\nserver: "
    )
    .into_bytes();
    out.extend_from_slice(server);
    out.extend_from_slice(b"\r\nconnection: close\r\n\r\nrequest timeout");
    Bytes::from(out)
}

impl<T: AsyncRead + AsyncWrite> AsyncRead for EnvoyErrors<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let mut this = self.project();
        // A head that timed out: Envoy's 408 goes out, then hyper reads
        // the end of the connection.
        if this.head_deadline.as_mut().is_some_and(|d| d.as_mut().poll(cx).is_ready()) {
            *this.head_deadline = None;
            *this.timed_out = Some((head_timeout_reply(this.server), 0));
            if let Some((_, counter)) = this.head_timeout.as_ref() {
                counter.inc();
                this.refused_head.iter().for_each(|c| c.inc());
            }
        }
        if let Some((reply, done)) = this.timed_out.as_mut() {
            while *done < reply.len() {
                match this.inner.as_mut().poll_write(cx, &reply[*done..]) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                    Poll::Ready(Ok(n)) => *done += n,
                    Poll::Pending => return Poll::Pending,
                }
            }
            let _ = this.inner.as_mut().poll_flush(cx);
            return Poll::Ready(Ok(()));
        }
        let r = read_framed(this.inner.as_mut(), this.framing, &this.conn.refused, cx, buf);
        // The timer runs from a head's first byte to its last.
        match (this.framing.in_head(), this.head_timeout, this.head_deadline.is_some()) {
            (true, Some((t, _)), false) => {
                let mut d = Box::pin(tokio::time::sleep(*t));
                // Registered now, so the deadline wakes the connection.
                let _ = d.as_mut().poll(cx);
                *this.head_deadline = Some(d);
            }
            (false, _, true) => *this.head_deadline = None,
            _ => {}
        }
        r
    }
}

/// One read from `inner`, through `framing` (see [`Framing::feed`]).
fn read_framed<T: AsyncRead>(
    mut inner: Pin<&mut T>,
    framing: &mut Framing,
    refused: &crate::http::h1_framing::Refused,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    loop {
        let before = buf.filled().len();
        // What the last read held back goes first.
        let held = framing.take_held();
        if !held.is_empty() && buf.remaining() <= held.len() {
            // No room to read more (hyper always leaves some).
            if buf.remaining() == held.len() {
                buf.put_slice(held);
                return Poll::Ready(Ok(()));
            }
            framing.restore_held(held);
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        buf.put_slice(held);
        match inner.as_mut().poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let eof = buf.filled().len() == before + held.len();
                let n = framing.feed(&mut buf.filled_mut()[before..], refused, eof);
                buf.set_filled(before + n);
                // All of it held back: read on rather than report an end.
                if n > 0 || eof {
                    return Poll::Ready(Ok(()));
                }
            }
            other => {
                buf.set_filled(before);
                framing.restore_held(held);
                return other;
            }
        }
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
            // The request hyper refuses is the one after those it served.
            let served = this.conn.requests.load(Ordering::Relaxed);
            let refusal = this.conn.refused.of(served + 1);
            match envoy_form(buf, this.server, refusal) {
                Some(form) => {
                    this.protocol_errors.inc();
                    if buf.starts_with(b"HTTP/1.1 431 ") || buf.starts_with(b"HTTP/1.1 414 ") {
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
    use super::envoy_form;
    use crate::http::h1_framing::Refusal;

    #[test]
    fn refusals_replace_hypers_400() {
        let hyper = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        let out = String::from_utf8(envoy_form(hyper, b"envoy", Some(Refusal::Version)).unwrap()).unwrap();
        assert!(out.starts_with("HTTP/1.1 426 Upgrade Required\r\ncontent-length: 16\r\n"), "{out}");
        assert!(out.ends_with("\r\n\r\nUpgrade Required"), "{out}");
        let out = String::from_utf8(envoy_form(hyper, b"envoy", Some(Refusal::TransferEncoding)).unwrap()).unwrap();
        assert!(out.starts_with("HTTP/1.1 501 Not Implemented\r\n"), "{out}");
        let uri = b"HTTP/1.1 414 URI Too Long\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        let out = String::from_utf8(envoy_form(uri, b"envoy", None).unwrap()).unwrap();
        assert!(out.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"), "{out}");
    }

    #[test]
    fn rewrites_only_hypers_bare_error_head() {
        let hyper = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: Mon, 23 Nov 2026 06:00:00 GMT\r\n\r\n";
        let out = String::from_utf8(envoy_form(hyper, b"envoy", None).unwrap()).unwrap();
        assert_eq!(
            out,
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 11\r\ncontent-type: text/plain\r\ndate: Mon, 23 Nov 2026 06:00:00 GMT\r\nserver: envoy\r\nconnection: close\r\n\r\nBad Request"
        );
        // Our own 400 (with server) and anything with a body pass through.
        assert!(envoy_form(
            b"HTTP/1.1 400 Bad Request\r\nserver: envoy\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            b"envoy",
            None
        )
        .is_none());
        assert!(envoy_form(
            b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\nx",
            b"envoy",
            None
        )
        .is_none());
        assert!(envoy_form(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", b"envoy", Some(Refusal::Version)).is_none());
    }
}
