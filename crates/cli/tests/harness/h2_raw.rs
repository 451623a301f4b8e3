//! An HTTP/2 (h2c) upstream written frame by frame, to see what a proxy's
//! HTTP/2 client sends that a library server hides: its SETTINGS, the
//! connection window it opens, and its keepalive PINGs (answered or, to
//! test the keepalive timeout, left unanswered). It answers every request
//! `200` without a body and serves connections one after another on a
//! thread of the test, until the test drops it.

use super::process::free_port;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the upstream saw, over all its connections.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// The client's SETTINGS (identifier to value), from its first connection.
    pub settings: BTreeMap<u16, u32>,
    /// The connection-level WINDOW_UPDATE increments, added up.
    pub connection_window: u64,
    /// When each PING (not an ACK) arrived.
    pub pings: Vec<Instant>,
    /// When connections were opened and when the client closed them.
    pub opened: Vec<Instant>,
    pub closed: Vec<Instant>,
}

pub struct H2Upstream {
    pub port: u16,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
}

impl H2Upstream {
    /// Listens on a fresh port; `ack_pings` says whether PINGs are answered.
    pub fn start(ack_pings: bool) -> H2Upstream {
        let port = free_port();
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind h2 upstream");
        listener.set_nonblocking(true).expect("nonblocking");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (s, st) = (s.clone(), st.clone());
                        std::thread::spawn(move || serve(conn, ack_pings, &s, &st));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        H2Upstream { port, seen, stop }
    }

    pub fn seen(&self) -> Seen {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for H2Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// One connection: the preface, then frames until the client closes (or
/// the test ends, or 60 s pass).
fn serve(mut conn: TcpStream, ack_pings: bool, seen: &Mutex<Seen>, stop: &AtomicBool) {
    let started = Instant::now();
    if let Ok(mut s) = seen.lock() {
        s.opened.push(started);
    }
    let _ = conn.set_read_timeout(Some(Duration::from_millis(100)));
    let _ = conn.write_all(&frame(4, 0, 0, &[]));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let mut preface_done = false;
    let first_connection = seen.lock().map(|s| s.opened.len() == 1).unwrap_or(false);
    while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
        match conn.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(_) => break,
        }
        if !preface_done {
            if buf.len() < 24 {
                continue;
            }
            buf.drain(..24);
            preface_done = true;
        }
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            let (kind, flags) = (buf[3], buf[4]);
            let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
            let payload: Vec<u8> = buf[9..9 + len].to_vec();
            buf.drain(..9 + len);
            let mut s = match seen.lock() {
                Ok(s) => s,
                Err(_) => return,
            };
            match kind {
                // SETTINGS (not an ACK): recorded from the first connection, acknowledged.
                4 if flags & 1 == 0 => {
                    if first_connection {
                        for p in payload.chunks_exact(6) {
                            s.settings
                                .insert(u16::from_be_bytes([p[0], p[1]]), u32::from_be_bytes([p[2], p[3], p[4], p[5]]));
                        }
                    }
                    let _ = conn.write_all(&frame(4, 1, 0, &[]));
                }
                8 if stream == 0 && payload.len() == 4 && first_connection => {
                    s.connection_window +=
                        u64::from(u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff);
                }
                // HEADERS: `:status 200` (static table index 8), the stream ended.
                1 => {
                    let _ = conn.write_all(&frame(1, 0x5, stream, &[0x88]));
                }
                6 if flags & 1 == 0 => {
                    s.pings.push(Instant::now());
                    if ack_pings {
                        let _ = conn.write_all(&frame(6, 1, 0, &payload));
                    }
                }
                _ => {}
            }
        }
    }
    if let Ok(mut s) = seen.lock() {
        s.closed.push(Instant::now());
    }
}
