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

use bytes::Bytes;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pin_project_lite::pin_project! {
    pub struct EnvoyErrors<T> {
        #[pin]
        inner: T,
        server: Bytes,
        protocol_errors: Arc<crate::stats::Counter>,
        // A replacement being written, how much of it is out, and the length
        // of the original write it stands for.
        pending: Option<(Bytes, usize, usize)>,
    }
}

impl<T> EnvoyErrors<T> {
    pub fn new(inner: T, server: &str, protocol_errors: Arc<crate::stats::Counter>) -> Self {
        Self { inner, server: Bytes::copy_from_slice(server.as_bytes()), protocol_errors, pending: None }
    }
}

/// Envoy's response for hyper's error head, or `None` when `buf` is not one.
fn envoy_form(buf: &[u8], server: &[u8]) -> Option<Vec<u8>> {
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
        self.project().inner.poll_read(cx, buf)
    }
}

impl<T: AsyncWrite> AsyncWrite for EnvoyErrors<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let mut this = self.project();
        if this.pending.is_none() {
            match envoy_form(buf, this.server) {
                Some(form) => {
                    this.protocol_errors.inc();
                    *this.pending = Some((Bytes::from(form), 0, buf.len()));
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

    #[test]
    fn rewrites_only_hypers_bare_error_head() {
        let hyper = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: Mon, 23 Nov 2026 06:00:00 GMT\r\n\r\n";
        let out = String::from_utf8(envoy_form(hyper, b"envoy").unwrap()).unwrap();
        assert_eq!(
            out,
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 11\r\ncontent-type: text/plain\r\ndate: Mon, 23 Nov 2026 06:00:00 GMT\r\nserver: envoy\r\nconnection: close\r\n\r\nBad Request"
        );
        // Our own 400 (with server) and anything with a body pass through.
        assert!(envoy_form(
            b"HTTP/1.1 400 Bad Request\r\nserver: envoy\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            b"envoy"
        )
        .is_none());
        assert!(envoy_form(b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\nx", b"envoy")
            .is_none());
        assert!(envoy_form(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", b"envoy").is_none());
    }
}
