//! The frame checks a downstream HTTP/2 connection gets before the HTTP/2
//! codec reads it, where the codec would refuse the frame with another code
//! than RFC 9113 (and Envoy) give: a PRIORITY, RST_STREAM, PING,
//! WINDOW_UPDATE, GOAWAY or SETTINGS frame of the wrong length is a
//! FRAME_SIZE_ERROR, a SETTINGS_INITIAL_WINDOW_SIZE over 2^31 - 1 a
//! FLOW_CONTROL_ERROR, and DATA or HEADERS on a stream the client has ended
//! (END_STREAM) a STREAM_CLOSED (the codec says PROTOCOL_ERROR to all of
//! them). Which streams the client ended is kept for its last 128 streams.
//!
//! The connection's bytes are read as frames only when they start with the
//! HTTP/2 preface; anything else passes untouched. Only the 9-byte frame
//! headers (and SETTINGS payloads) are looked at. On a breach, the bytes
//! from the bad frame on are withheld from the codec, GOAWAY with the code
//! is written between two of the server's frames, and the connection ends:
//! the codec reads the end of the stream and what it writes after that is
//! dropped.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_SIZE_ERROR: u32 = 6;
const FLOW_CONTROL_ERROR: u32 = 3;
const STREAM_CLOSED: u32 = 5;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    /// Matching the preface; this many bytes matched so far.
    Preface(u8),
    /// Reading frames.
    Frames,
    /// Not HTTP/2 with prior knowledge: bytes pass untouched.
    Off,
    /// A frame broke a rule: GOAWAY is sent, the connection ends.
    Failed,
}

/// Where the reader is in the inbound frames.
#[derive(Debug)]
struct Inbound {
    mode: Mode,
    head: [u8; 9],
    head_len: usize,
    /// Payload bytes left of the current frame.
    remaining: usize,
    /// In a SETTINGS payload: the entry being read and its length so far.
    settings: Option<([u8; 6], usize)>,
    /// The highest stream a HEADERS frame opened (GOAWAY's last stream).
    last_stream: u32,
    /// Bit k: the client ended stream `last_stream - 2k` (END_STREAM).
    ended: u128,
}

/// Frame boundaries of what the server writes, so GOAWAY goes between frames.
#[derive(Debug, Default)]
struct Outbound {
    head_len: usize,
    head: [u8; 3],
    remaining: usize,
}

impl Outbound {
    fn at_boundary(&self) -> bool {
        self.head_len == 0 && self.remaining == 0
    }

    /// How many of the next `n` bytes end the current frame (all when at a boundary).
    fn to_boundary(&self, n: usize) -> usize {
        if self.at_boundary() {
            return n;
        }
        let head_left = if self.head_len > 0 { 9 - self.head_len } else { 0 };
        // Past the head, the length is known; inside it, one byte at a time.
        if head_left > 0 {
            1.min(n)
        } else {
            self.remaining.min(n)
        }
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.remaining > 0 && self.head_len == 0 {
                let k = self.remaining.min(bytes.len());
                self.remaining -= k;
                bytes = &bytes[k..];
                continue;
            }
            if self.head_len < 3 {
                self.head[self.head_len] = bytes[0];
            }
            self.head_len += 1;
            bytes = &bytes[1..];
            if self.head_len == 9 {
                self.head_len = 0;
                self.remaining = u32::from_be_bytes([0, self.head[0], self.head[1], self.head[2]]) as usize;
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A downstream connection's stream with its HTTP/2 frames checked.
    pub struct H2Frames<T> {
        #[pin]
        inner: T,
        inbound: Inbound,
        outbound: Outbound,
        // The GOAWAY to send and how much of it is sent.
        goaway: Option<([u8; 17], usize)>,
    }
}

impl<T> H2Frames<T> {
    pub fn new(inner: T) -> Self {
        let inbound = Inbound {
            mode: Mode::Preface(0),
            head: [0; 9],
            head_len: 0,
            remaining: 0,
            settings: None,
            last_stream: 0,
            ended: 0,
        };
        Self { inner, inbound, outbound: Outbound::default(), goaway: None }
    }
}

impl Inbound {
    /// Reads `bytes`; on a breach, where in them the bad frame starts
    /// (what comes before is passed on) and the GOAWAY code.
    fn feed(&mut self, bytes: &[u8]) -> Option<(usize, u32)> {
        let mut i = 0;
        while i < bytes.len() {
            match self.mode {
                Mode::Off | Mode::Failed => return None,
                Mode::Preface(n) => {
                    if bytes[i] != PREFACE[n as usize] {
                        self.mode = Mode::Off;
                        return None;
                    }
                    self.mode = if n == 23 { Mode::Frames } else { Mode::Preface(n + 1) };
                    i += 1;
                }
                Mode::Frames if self.head_len == 0 && self.remaining > 0 => {
                    let k = self.remaining.min(bytes.len() - i);
                    if let Some(code) = self.settings_bytes(&bytes[i..i + k]) {
                        // The codec has the frame's head; it gets no more.
                        return Some((i, code));
                    }
                    self.remaining -= k;
                    i += k;
                }
                Mode::Frames => {
                    self.head[self.head_len] = bytes[i];
                    self.head_len += 1;
                    i += 1;
                    if self.head_len == 9 {
                        self.head_len = 0;
                        if let Some(code) = self.frame_head() {
                            return Some((i.saturating_sub(9), code));
                        }
                    }
                }
            }
        }
        None
    }

    /// A complete frame head: its length checked for its type.
    fn frame_head(&mut self) -> Option<u32> {
        let h = self.head;
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
        let (kind, flags) = (h[3], h[4]);
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        self.remaining = len;
        self.settings = None;
        let bad_size = match kind {
            // PRIORITY, RST_STREAM, PING, GOAWAY, WINDOW_UPDATE.
            2 => len != 5,
            3 | 8 => len != 4,
            6 => len != 8,
            7 => len < 8,
            // SETTINGS: an ACK is empty, others are whole 6-byte entries.
            4 => (flags & 1 == 1 && len != 0) || !len.is_multiple_of(6),
            _ => false,
        };
        if bad_size {
            return Some(FRAME_SIZE_ERROR);
        }
        if kind == 4 && len > 0 {
            self.settings = Some(([0; 6], 0));
        }
        if (kind == 0 || kind == 1) && !stream.is_multiple_of(2) {
            return self.stream_frame(kind == 1, flags & 1 == 1, stream);
        }
        None
    }

    /// DATA or HEADERS on an odd stream: a new stream moves the window of
    /// ended streams; one the client ended gets no more of either.
    fn stream_frame(&mut self, headers: bool, end_stream: bool, stream: u32) -> Option<u32> {
        if stream > self.last_stream {
            if !headers {
                return None; // DATA on an idle stream: the codec's PROTOCOL_ERROR is right.
            }
            let shift = (stream - self.last_stream) / 2;
            self.ended = if shift >= 128 { 0 } else { self.ended << shift };
            self.last_stream = stream;
        }
        let back = (self.last_stream - stream) / 2;
        if back >= 128 {
            return None;
        }
        let bit = 1u128 << back;
        if self.ended & bit != 0 {
            return Some(STREAM_CLOSED);
        }
        if end_stream {
            self.ended |= bit;
        }
        None
    }

    /// A SETTINGS payload's bytes: SETTINGS_INITIAL_WINDOW_SIZE over 2^31 - 1
    /// is a FLOW_CONTROL_ERROR.
    fn settings_bytes(&mut self, bytes: &[u8]) -> Option<u32> {
        let (entry, n) = self.settings.as_mut()?;
        for b in bytes {
            entry[*n] = *b;
            *n += 1;
            if *n == 6 {
                *n = 0;
                let id = u16::from_be_bytes([entry[0], entry[1]]);
                let value = u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]);
                if id == 4 && value > 0x7fff_ffff {
                    return Some(FLOW_CONTROL_ERROR);
                }
            }
        }
        None
    }

    fn goaway(&self, code: u32) -> [u8; 17] {
        let mut f = [0u8; 17];
        f[2] = 8;
        f[3] = 7;
        f[9..13].copy_from_slice(&self.last_stream.to_be_bytes());
        f[13..17].copy_from_slice(&code.to_be_bytes());
        f
    }
}

impl<T: AsyncWrite> H2Frames<T> {
    /// Writes the pending GOAWAY once the server's writes are between
    /// frames: Ready when it is out (or there is none).
    fn poll_goaway(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut this = self.project();
        while let Some((frame, done)) = this.goaway.as_mut() {
            if *done == frame.len() {
                break;
            }
            match this.inner.as_mut().poll_write(cx, &frame[*done..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *done += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + AsyncWrite> AsyncRead for H2Frames<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.as_mut().project();
        match this.inbound.mode {
            Mode::Off => return this.inner.poll_read(cx, buf),
            // The connection has ended for the codec.
            Mode::Failed => return Poll::Ready(Ok(())),
            _ => {}
        }
        let before = buf.filled().len();
        let r = this.inner.poll_read(cx, buf);
        if !matches!(r, Poll::Ready(Ok(()))) {
            return r;
        }
        let Some((at, code)) = this.inbound.feed(&buf.filled()[before..]) else { return r };
        buf.set_filled(before + at);
        this.inbound.mode = Mode::Failed;
        *this.goaway = Some((this.inbound.goaway(code), 0));
        if this.outbound.at_boundary() {
            // Sent now if the socket takes it; else when the codec next writes.
            let _ = self.poll_goaway(cx);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite> AsyncWrite for H2Frames<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.as_mut().project();
        if this.inbound.mode == Mode::Off {
            return this.inner.poll_write(cx, buf);
        }
        if this.goaway.is_some() {
            // Finish the frame being written, then GOAWAY, then drop the rest.
            if !this.outbound.at_boundary() {
                let k = this.outbound.to_boundary(buf.len());
                let r = this.inner.poll_write(cx, &buf[..k]);
                if let Poll::Ready(Ok(n)) = r {
                    this.outbound.feed(&buf[..n]);
                }
                return r;
            }
            return match self.poll_goaway(cx) {
                Poll::Ready(Ok(())) => Poll::Ready(Ok(buf.len())),
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            };
        }
        let r = this.inner.poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            this.outbound.feed(&buf[..n]);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.goaway.is_some() && self.outbound.at_boundary() {
            std::task::ready!(self.as_mut().poll_goaway(cx))?;
        }
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.goaway.is_some() && self.outbound.at_boundary() {
            std::task::ready!(self.as_mut().poll_goaway(cx))?;
        }
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let n = payload.len() as u32;
        let mut f = vec![(n >> 16) as u8, (n >> 8) as u8, n as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn inbound() -> Inbound {
        H2Frames::new(()).inbound
    }

    #[test]
    fn valid_frames_pass_in_any_pieces() {
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(4, 0, 0, &[0, 4, 0, 0, 0xff, 0xff]));
        bytes.extend(frame(1, 5, 3, b"\x82\x86\x84"));
        bytes.extend(frame(6, 0, 0, &[0; 8]));
        for piece in [1, 5, 9, 100] {
            let mut i = inbound();
            for chunk in bytes.chunks(piece) {
                assert_eq!(i.feed(chunk), None);
            }
            assert_eq!((i.mode, i.last_stream), (Mode::Frames, 3));
        }
    }

    #[test]
    fn wrong_lengths_and_windows_are_caught_where_the_frame_starts() {
        let cases = [
            (frame(2, 0, 1, &[0; 4]), FRAME_SIZE_ERROR),
            (frame(3, 0, 1, &[0; 3]), FRAME_SIZE_ERROR),
            (frame(4, 1, 0, &[0; 6]), FRAME_SIZE_ERROR),
            (frame(4, 0, 0, &[0; 3]), FRAME_SIZE_ERROR),
            (frame(6, 0, 0, &[0; 6]), FRAME_SIZE_ERROR),
            (frame(7, 0, 0, &[0; 4]), FRAME_SIZE_ERROR),
            (frame(8, 0, 0, &[0; 3]), FRAME_SIZE_ERROR),
            (frame(4, 0, 0, &[0, 4, 0x80, 0, 0, 0]), FLOW_CONTROL_ERROR),
        ];
        for (bad, code) in cases {
            let mut bytes = PREFACE.to_vec();
            bytes.extend(frame(6, 0, 0, &[0; 8]));
            let start = bytes.len();
            bytes.extend(bad);
            // A bad length withholds the frame; a bad value, its payload.
            let at = if code == FRAME_SIZE_ERROR { start } else { start + 9 };
            assert_eq!(inbound().feed(&bytes), Some((at, code)));
        }
    }

    #[test]
    fn frames_on_ended_streams_are_stream_closed() {
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(1, 4, 1, b"\x82"));
        bytes.extend(frame(0, 1, 1, b"body"));
        bytes.extend(frame(1, 5, 3, b"\x82"));
        bytes.extend(frame(1, 5, 5, b"\x82"));
        let start = bytes.len();
        // DATA on stream 3, which the client ended with its HEADERS.
        bytes.extend(frame(0, 0, 3, b"x"));
        assert_eq!(inbound().feed(&bytes), Some((start, STREAM_CLOSED)));
        // Ended by DATA; and far behind the window, left to the codec.
        let mut i = inbound();
        let mut b = PREFACE.to_vec();
        b.extend(frame(1, 4, 1, b"\x82"));
        b.extend(frame(0, 1, 1, b""));
        assert_eq!(i.feed(&b), None);
        assert_eq!(i.feed(&frame(1, 5, 1, b"\x82")), Some((0, STREAM_CLOSED)));
        let mut i = inbound();
        let mut b = PREFACE.to_vec();
        b.extend(frame(1, 5, 1, b"\x82"));
        b.extend(frame(1, 5, 1001, b"\x82"));
        b.extend(frame(0, 1, 1, b"x"));
        assert_eq!(i.feed(&b), None);
    }

    #[test]
    fn other_protocols_pass_untouched() {
        let mut i = inbound();
        assert_eq!(i.feed(b"GET / HTTP/1.1\r\n\r\n"), None);
        assert_eq!(i.mode, Mode::Off);
        assert_eq!(i.feed(&frame(6, 0, 0, &[0; 3])), None);
    }

    #[test]
    fn server_frames_are_followed_to_their_boundaries() {
        let mut o = Outbound::default();
        let f = frame(0, 0, 1, &[7; 20]);
        o.feed(&f[..5]);
        assert!(!o.at_boundary());
        o.feed(&f[5..12]);
        assert_eq!(o.to_boundary(100), 17);
        o.feed(&f[12..]);
        assert!(o.at_boundary());
    }
}
