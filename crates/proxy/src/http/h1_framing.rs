//! What Envoy's HTTP/1 codec refuses and hyper serves: the request heads
//! of a connection, followed as the bytes pass on their way to hyper.
//!
//! hyper parses each request and says nothing of what it tolerated. Envoy's
//! codec refuses, on every request of a keep-alive connection: both
//! `content-length` and `transfer-encoding` (400), more than one
//! `content-length` (400), a `transfer-encoding` other than one `chunked`
//! (501 `Not Implemented`), a method outside its parser's list (400, so a
//! lower-case `get` too), the asterisk target but for `OPTIONS` (400), a
//! version `HTTP/d.d` other than 1.1 and 1.0 (426), and a chunk size that
//! is not hex or overflows (400). [`Framing`] reads each head (a few bytes
//! of each line, no copy) and skips each body by its length or its chunks,
//! so that it knows where the next request begins; the first refusal is
//! kept in the connection's [`Refused`] with the request's number, and
//! the connection manager (or, for a head hyper refuses itself, the error
//! rewriter) answers that request as Envoy does. After a refusal, an
//! upgrade or a CONNECT nothing more is read: the connection is closed or
//! carries another protocol.

use std::sync::atomic::{AtomicU64, Ordering};

/// Why Envoy's codec refuses a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    LengthConflict = 1,
    MultipleLengths = 2,
    TransferEncoding = 3,
    Method = 4,
    Target = 5,
    Version = 6,
    ChunkSize = 7,
}

impl Refusal {
    const ALL: [Refusal; 7] = [
        Refusal::LengthConflict,
        Refusal::MultipleLengths,
        Refusal::TransferEncoding,
        Refusal::Method,
        Refusal::Target,
        Refusal::Version,
        Refusal::ChunkSize,
    ];

    pub fn status(self) -> u16 {
        match self {
            Refusal::TransferEncoding => 501,
            Refusal::Version => 426,
            _ => 400,
        }
    }

    /// The reason phrase, which is also the body of Envoy's answer.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::TransferEncoding => "Not Implemented",
            Refusal::Version => "Upgrade Required",
            _ => "Bad Request",
        }
    }

    /// Envoy's response code details.
    pub fn details(self) -> &'static str {
        match self {
            Refusal::LengthConflict => "http1.content_length_and_chunked_not_allowed",
            Refusal::MultipleLengths => "http1.content_length_not_allowed",
            Refusal::TransferEncoding => "http1.invalid_transfer_encoding",
            Refusal::Version => "low_version",
            Refusal::Method | Refusal::Target | Refusal::ChunkSize => "http1.codec_error",
        }
    }

    /// Refused at the head: the connection manager answers before routing.
    /// A bad chunk is found after the head has gone on.
    pub fn at_head(self) -> bool {
        self != Refusal::ChunkSize
    }
}

/// A connection's first refusal and the number of its request (1 for the
/// first), packed in one word the read side writes and the request path reads.
#[derive(Default)]
pub struct Refused(AtomicU64);

impl Refused {
    fn set(&self, request: u64, why: Refusal) {
        let _ = self.0.compare_exchange(0, request << 8 | why as u64, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// The refusal and the number of the request it concerns.
    pub fn get(&self) -> Option<(u64, Refusal)> {
        let v = self.0.load(Ordering::Relaxed);
        let why = Refusal::ALL.into_iter().find(|r| *r as u64 == v & 0xff)?;
        Some((v >> 8, why))
    }

    /// The refusal of request number `request`, if it is the refused one.
    pub fn of(&self, request: u64) -> Option<Refusal> {
        self.get().filter(|(n, _)| *n == request).map(|(_, r)| r)
    }
}

/// Envoy's parser's methods (its list, upper case only).
const METHODS: [&[u8]; 34] = [
    b"ACL",
    b"BIND",
    b"CHECKOUT",
    b"CONNECT",
    b"COPY",
    b"DELETE",
    b"GET",
    b"HEAD",
    b"LINK",
    b"LOCK",
    b"MERGE",
    b"MKACTIVITY",
    b"MKCALENDAR",
    b"MKCOL",
    b"MOVE",
    b"MSEARCH",
    b"NOTIFY",
    b"OPTIONS",
    b"PATCH",
    b"POST",
    b"PROPFIND",
    b"PROPPATCH",
    b"PURGE",
    b"PUT",
    b"REBIND",
    b"REPORT",
    b"SEARCH",
    b"SOURCE",
    b"SUBSCRIBE",
    b"TRACE",
    b"UNBIND",
    b"UNLINK",
    b"UNLOCK",
    b"UNSUBSCRIBE",
];

/// The bytes of a line kept: enough for a method and the start of a
/// target, or a framing header's name and value.
const KEEP: usize = 48;

/// What becomes of one byte on its way to hyper.
enum Edit {
    Keep,
    Drop,
    /// An obs-fold's LF: it and its CR are taken out.
    Fold,
    /// Held back until the next byte is known.
    Hold,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum State {
    /// Before a request line (empty lines are skipped).
    Idle,
    RequestLine,
    Headers,
    /// Body bytes left of a `content-length` body.
    Body(u64),
    ChunkSize {
        value: u64,
        digits: bool,
    },
    /// The rest of a chunk-size line (an extension, or its LF).
    ChunkLine {
        value: u64,
    },
    ChunkData(u64),
    /// After a chunk's data, up to its LF.
    ChunkEnd,
    /// Trailer lines; `empty` while the current one has no byte yet.
    Trailers {
        empty: bool,
    },
    Done,
}

/// What a head said about its framing.
#[derive(Default)]
struct Head {
    lengths: u8,
    length: Option<u64>,
    encodings: u8,
    chunked: bool,
    upgrade: bool,
    connect: bool,
}

/// The reader of a connection's request framing; see the module's text.
pub struct Framing {
    state: State,
    requests: u64,
    line: [u8; KEEP],
    line_len: usize,
    // The request line's last 8 bytes, for its version.
    tail: [u8; 8],
    head: Head,
    // Bytes held back at the end of the last read (1 or 2), and whether a
    // single one is an LF.
    held: u8,
    line_ended: bool,
}

impl Default for Framing {
    fn default() -> Self {
        Self {
            state: State::Idle,
            requests: 0,
            line: [0; KEEP],
            line_len: 0,
            tail: [0; 8],
            head: Head::default(),
            held: 0,
            line_ended: false,
        }
    }
}

impl Framing {
    /// Reads the bytes just received, recording a refusal in `refused`, and
    /// edits them as Envoy's parser reads them before hyper sees them: an
    /// obs-fold (a header line's CRLF before a space or tab) and a bare CR
    /// in a header are taken out, as are stray bytes between a chunk's data
    /// and its CRLF. Bytes are only removed, never added: the kept ones are
    /// moved to the front; their count is returned. A line end or CR at the
    /// very end (whose meaning the next byte decides) is held back for the
    /// next read, unless `eof`.
    pub fn feed(&mut self, bytes: &mut [u8], refused: &Refused, eof: bool) -> usize {
        let (mut r, mut w) = (0, 0);
        let keep = |bytes: &mut [u8], from: usize, n: usize, w: &mut usize| {
            bytes.copy_within(from..from + n, *w);
            *w += n;
        };
        while r < bytes.len() {
            let left = bytes.len() - r;
            match self.state {
                State::Done => {
                    keep(bytes, r, left, &mut w);
                    break;
                }
                State::Body(n) | State::ChunkData(n) => {
                    let n = n.min(left as u64) as usize;
                    keep(bytes, r, n, &mut w);
                    r += n;
                    self.after_data(n as u64);
                    continue;
                }
                _ => {}
            }
            let (b, next) = (bytes[r], bytes.get(r + 1).copied());
            match self.edit(b, next, eof) {
                Edit::Keep => {
                    if let Err(why) = self.byte(b) {
                        refused.set(self.requests, why);
                        self.state = State::Done;
                    }
                    keep(bytes, r, 1, &mut w);
                }
                Edit::Drop => {}
                Edit::Fold => {
                    // The CR kept before this LF goes too; the line goes on.
                    if w > 0 && bytes[w - 1] == b'\r' {
                        w -= 1;
                    }
                }
                Edit::Hold => {
                    self.held = if b == b'\n' && w > 0 && bytes[w - 1] == b'\r' {
                        w -= 1;
                        2
                    } else {
                        1
                    };
                    break;
                }
            }
            r += 1;
        }
        w
    }

    /// A request head has begun and not ended.
    pub fn in_head(&self) -> bool {
        matches!(self.state, State::RequestLine | State::Headers)
    }

    /// The bytes held back from the last read (see [`Framing::feed`]).
    pub fn take_held(&mut self) -> &'static [u8] {
        let held: &'static [u8] = match self.held {
            2 => b"\r\n",
            1 if self.state == State::ChunkEnd || !self.line_ended => b"\r",
            1 => b"\n",
            _ => b"",
        };
        self.held = 0;
        held
    }

    /// Gives back what [`Framing::take_held`] took, the read having waited.
    pub fn restore_held(&mut self, held: &[u8]) {
        self.held = held.len() as u8;
    }

    fn after_data(&mut self, n: u64) {
        self.state = match self.state {
            State::Body(left) if left == n => State::Idle,
            State::Body(left) => State::Body(left - n),
            State::ChunkData(left) if left == n => State::ChunkEnd,
            State::ChunkData(left) => State::ChunkData(left - n),
            s => s,
        };
    }

    /// What to do with byte `b` of a head's header lines or a chunk's end.
    fn edit(&mut self, b: u8, next: Option<u8>, eof: bool) -> Edit {
        let unknown = next.is_none() && !eof;
        match self.state {
            State::Headers if b == b'\r' => match next {
                Some(b'\n') => Edit::Keep,
                _ if unknown => {
                    self.line_ended = false;
                    Edit::Hold
                }
                _ => Edit::Drop,
            },
            // The LF of a header line that is not empty: a space or tab
            // after it folds the next line into this one.
            State::Headers if b == b'\n' && self.line_len > 0 => match next {
                Some(b' ' | b'\t') => Edit::Fold,
                _ if unknown => {
                    self.line_ended = true;
                    Edit::Hold
                }
                _ => Edit::Keep,
            },
            State::ChunkEnd => match (b, next) {
                (b'\r', Some(b'\n')) | (b'\n', _) => Edit::Keep,
                (b'\r', None) if unknown => Edit::Hold,
                (b'\r', None) => Edit::Keep,
                _ => Edit::Drop,
            },
            _ => Edit::Keep,
        }
    }

    fn byte(&mut self, b: u8) -> Result<(), Refusal> {
        match self.state {
            State::Idle if b == b'\r' || b == b'\n' => {}
            State::Idle => {
                self.requests += 1;
                self.head = Head::default();
                self.line_len = 0;
                self.tail = [0; 8];
                self.state = State::RequestLine;
                self.keep(b);
            }
            State::RequestLine | State::Headers => match b {
                b'\r' => {}
                b'\n' => self.end_line()?,
                _ => self.keep(b),
            },
            State::ChunkSize { value, digits } => match (b as char).to_digit(16) {
                Some(d) => {
                    let value =
                        value.checked_mul(16).and_then(|v| v.checked_add(d as u64)).ok_or(Refusal::ChunkSize)?;
                    self.state = State::ChunkSize { value, digits: true };
                }
                None if !digits => return Err(Refusal::ChunkSize),
                None if b == b'\n' => self.end_chunk_size(value),
                None if matches!(b, b'\r' | b';' | b' ' | b'\t') => self.state = State::ChunkLine { value },
                None => return Err(Refusal::ChunkSize),
            },
            State::ChunkLine { value } if b == b'\n' => self.end_chunk_size(value),
            State::ChunkLine { .. } => {}
            State::ChunkEnd if b == b'\n' => self.state = State::ChunkSize { value: 0, digits: false },
            State::ChunkEnd => {}
            State::Trailers { empty } => match b {
                b'\r' => {}
                b'\n' if empty => self.state = State::Idle,
                b'\n' => self.state = State::Trailers { empty: true },
                _ => self.state = State::Trailers { empty: false },
            },
            State::Body(_) | State::ChunkData(_) | State::Done => {}
        }
        Ok(())
    }

    fn keep(&mut self, b: u8) {
        if self.line_len < KEEP {
            self.line[self.line_len] = b;
        }
        self.line_len += 1;
        if self.state == State::RequestLine {
            self.tail.copy_within(1.., 0);
            self.tail[7] = b;
        }
    }

    fn end_chunk_size(&mut self, value: u64) {
        self.state = if value == 0 { State::Trailers { empty: true } } else { State::ChunkData(value) };
    }

    fn end_line(&mut self) -> Result<(), Refusal> {
        let line = self.line;
        let kept = &line[..self.line_len.min(KEEP)];
        let whole = self.line_len <= KEEP;
        self.line_len = 0;
        if self.state == State::RequestLine {
            self.state = State::Headers;
            return self.request_line(kept);
        }
        if kept.is_empty() {
            return self.head_done();
        }
        let Some(colon) = kept.iter().position(|&c| c == b':') else { return Ok(()) };
        let name = &kept[..colon];
        let value = kept[colon + 1..].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") {
            self.head.lengths = self.head.lengths.saturating_add(1);
            self.head.length = std::str::from_utf8(value).ok().filter(|_| whole).and_then(|v| v.parse().ok());
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.head.encodings = self.head.encodings.saturating_add(1);
            self.head.chunked = whole && value.eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            self.head.upgrade = true;
        }
        Ok(())
    }

    fn request_line(&mut self, kept: &[u8]) -> Result<(), Refusal> {
        let mut parts = kept.split(|&c| c == b' ');
        let method = parts.next().unwrap_or_default();
        let target = parts.next().unwrap_or_default();
        // HTTP/2's preface: the connection is HTTP/2's, not ours to read.
        if method == b"PRI" && target == b"*" {
            self.state = State::Done;
            return Ok(());
        }
        if !METHODS.contains(&method) {
            return Err(Refusal::Method);
        }
        self.head.connect = method == b"CONNECT";
        if target == b"*" && method != b"OPTIONS" {
            return Err(Refusal::Target);
        }
        // Envoy's parser reads any single-digit HTTP/d.d; all but 1.1
        // and 1.0 are 426.
        if let [b'H', b'T', b'T', b'P', b'/', major, b'.', minor] = self.tail {
            let known = major == b'1' && (minor == b'1' || minor == b'0');
            if major.is_ascii_digit() && minor.is_ascii_digit() && !known {
                return Err(Refusal::Version);
            }
        }
        Ok(())
    }

    fn head_done(&mut self) -> Result<(), Refusal> {
        let h = &self.head;
        if h.encodings > 0 && !(h.encodings == 1 && h.chunked) {
            return Err(Refusal::TransferEncoding);
        }
        if h.encodings > 0 && h.lengths > 0 {
            return Err(Refusal::LengthConflict);
        }
        if h.lengths > 1 {
            return Err(Refusal::MultipleLengths);
        }
        self.state = match (h.upgrade || h.connect, h.chunked, h.length) {
            (true, _, _) => State::Done,
            (false, true, _) => State::ChunkSize { value: 0, digits: false },
            (false, false, Some(n)) if n > 0 => State::Body(n),
            // No body; an unreadable length is hyper's to refuse.
            (false, false, None) if h.lengths > 0 => State::Done,
            _ => State::Idle,
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `pieces` as reads (held bytes first, as the connection's
    /// reader does): what hyper would see, and the refusal.
    fn run(pieces: &[&[u8]]) -> (Vec<u8>, Option<(u64, Refusal)>) {
        let (mut f, r) = (Framing::default(), Refused::default());
        let mut out = Vec::new();
        for (i, p) in pieces.iter().enumerate() {
            let mut read = f.take_held().to_vec();
            read.extend_from_slice(p);
            let n = f.feed(&mut read, &r, i + 1 == pieces.len());
            out.extend_from_slice(&read[..n]);
        }
        (out, r.get())
    }

    fn refusal(pieces: &[&[u8]]) -> Option<(u64, Refusal)> {
        run(pieces).1
    }

    #[test]
    fn edits_folds_bare_crs_and_chunk_ends_as_envoy_reads_them() {
        let (out, _) = run(&[b"GET / HTTP/1.1\r\nx-a: 1\r\n 2\r\nx-b: 3\r\n\t4\r\nx-c: 5\r6\r\n\r\n"]);
        assert_eq!(out, b"GET / HTTP/1.1\r\nx-a: 1 2\r\nx-b: 3\t4\r\nx-c: 56\r\n\r\n");
        // Split anywhere, the same.
        let whole = b"GET / HTTP/1.1\r\nx-a: 1\r\n 2\r\nx-c: 5\r6\r\n\r\n";
        for cut in 1..whole.len() {
            let (out, _) = run(&[&whole[..cut], &whole[cut..]]);
            assert_eq!(out, b"GET / HTTP/1.1\r\nx-a: 1 2\r\nx-c: 56\r\n\r\n", "cut at {cut}");
        }
        let chunked = b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n";
        let (out, refused) = run(&[chunked]);
        assert_eq!(out, b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
        assert_eq!(refused, None);
        // Bodies are never edited.
        let body = b"POST / HTTP/1.1\r\ncontent-length: 6\r\n\r\na\r\n b\rGET / HTTP/1.1\r\n\r\n";
        assert_eq!(run(&[body]).0, body);
    }

    #[test]
    fn finds_refusals_on_later_requests_across_reads() {
        let ok = b"GET / HTTP/1.1\r\nhost: a\r\n\r\nPOST / HTTP/1.1\r\ncontent-length: 5\r\n\r\nhelloGET /";
        assert_eq!(refusal(&[ok]), None);
        let later = [&ok[..], b" HTTP/1.1\r\ncontent-le", b"ngth: 1\r\ntransfer-encoding: chunked\r\n\r\n"];
        assert_eq!(refusal(&later), Some((3, Refusal::LengthConflict)));
        // A body that looks like a head is skipped, by length or by chunks.
        let body = b"POST / HTTP/1.1\r\ncontent-length: 23\r\n\r\nget / HTTP/1.1\r\nx: 1\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        assert_eq!(refusal(&[body]), None);
        let chunks = b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n5;x=y\r\nget /\r\n0\r\nt: 1\r\n\r\nget / HTTP/1.1\r\n\r\n";
        assert_eq!(refusal(&[chunks]), Some((2, Refusal::Method)));
    }

    #[test]
    fn refuses_as_envoys_codec() {
        let post = |h: &str, body: &str| format!("POST / HTTP/1.1\r\nhost: a\r\n{h}\r\n\r\n{body}").into_bytes();
        let cases = [
            (post("content-length: 3\r\ncontent-length: 3", "abc"), Some(Refusal::MultipleLengths)),
            (post("transfer-encoding: gzip, chunked", ""), Some(Refusal::TransferEncoding)),
            (post("transfer-encoding: chunked\r\ntransfer-encoding: chunked", ""), Some(Refusal::TransferEncoding)),
            (post("transfer-encoding: CHUNKED", "3\r\nabc\r\n0\r\n\r\n"), None),
            (post("transfer-encoding: chunked", "zz\r\n"), Some(Refusal::ChunkSize)),
            (post("transfer-encoding: chunked", "-3\r\n"), Some(Refusal::ChunkSize)),
            (post("transfer-encoding: chunked", "fffffffffffffffff3\r\n"), Some(Refusal::ChunkSize)),
            (b"GET * HTTP/1.1\r\n\r\n".to_vec(), Some(Refusal::Target)),
            (b"OPTIONS * HTTP/1.1\r\n\r\n".to_vec(), None),
            (b"GET / HTTP/1.7\r\n\r\n".to_vec(), Some(Refusal::Version)),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(), None),
        ];
        for (raw, want) in cases {
            assert_eq!(refusal(&[&raw]).map(|(_, r)| r), want, "{}", String::from_utf8_lossy(&raw));
        }
        let r = Refused::default();
        r.set(7, Refusal::TransferEncoding);
        r.set(9, Refusal::Method);
        assert_eq!((r.of(7), r.of(9)), (Some(Refusal::TransferEncoding), None));
    }
}
