//! What a Lua script changes of one direction of a stream (headers, body,
//! trailers, a local reply), shared by the handle and the objects it hands
//! out.

use crate::body::ProxyBody;
use bytes::Bytes;
use std::sync::{Arc, Mutex, MutexGuard};

/// The most of a body a script may have buffered: Envoy's default buffer
/// limit.
pub const BODY_LIMIT: usize = crate::body::RESEND_BUFFER_LIMIT as usize;

/// Headers as a script sees them: pseudo-headers first, in order, names in
/// lower case, each value on its own.
pub type HeaderList = Vec<(String, Vec<u8>)>;

/// The body as far as the script has taken it.
pub enum Body {
    /// Not read: it goes on as it came.
    Unread(ProxyBody),
    /// Read whole (`None`: the stream had no body).
    Whole(Option<Vec<u8>>),
    /// Being read (while a chunk iterator or `body()` waits).
    Taken,
}

/// A script's local reply (`respond()`).
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Option<Bytes>,
}

/// One direction of a stream as the script changes it.
pub struct StreamState {
    pub headers: HeaderList,
    pub body: Body,
    /// The body was replaced (`setBytes`): its length changes.
    pub body_set: bool,
    pub trailers: Option<http::HeaderMap>,
    pub reply: Option<Reply>,
    /// The response path (`respond()` is for requests only).
    pub response: bool,
    /// What a chunk iterator has passed so far.
    seen: Vec<u8>,
    /// A script changed the headers (the route is found again).
    pub headers_changed: bool,
    /// The most of the body `body()` reads whole: the listener's buffer limit.
    pub limit: usize,
    /// Counts the script's yields: objects it got before a yield are dead
    /// after it, as Envoy's wrappers are.
    pub generation: u64,
}

pub type Shared = Arc<Mutex<StreamState>>;

/// The state behind a lock held only between awaits.
pub fn lock(s: &Shared) -> MutexGuard<'_, StreamState> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

impl StreamState {
    pub fn new(headers: HeaderList, body: Body, response: bool) -> Self {
        Self {
            headers,
            body,
            body_set: false,
            trailers: None,
            reply: None,
            response,
            seen: Vec::new(),
            headers_changed: false,
            limit: BODY_LIMIT,
            generation: 0,
        }
    }

    /// The chunks an iterator has passed, kept to send on.
    pub(super) fn chunks_seen(&mut self) -> &mut Vec<u8> {
        &mut self.seen
    }
}
