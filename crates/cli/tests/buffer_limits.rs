//! `per_connection_buffer_limit_bytes` on a listener and a cluster, through
//! Envoy 1.40 and `legate proxy` side by side.
//!
//! A slow reader: a client downloads a 256 MiB body from an upstream that
//! writes as fast as it may, reading 16 KiB every 20 ms for 4 s. Neither
//! proxy may buffer what the client has not read: each one's resident
//! memory is sampled throughout and its growth printed beside the other's
//! (Legate's must stay under 24 MiB), and the upstream's pushed bytes show
//! how far ahead of the reader the path ran.
//!
//! The listener's limit is the most of a body a stream holds whole: a
//! request body under it is buffered for a retry and retried, one over it
//! goes once without retries; a Lua script reading a body over it gets 413.

mod harness;

use harness::template::*;
use harness::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BODY: u64 = 256 << 20;
const LIMIT: u64 = 32 << 10;

/// An upstream answering every request with a `BODY`-byte body, written as
/// fast as the connection takes it; `pushed` counts what it wrote.
struct BigUpstream {
    port: u16,
    pushed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl BigUpstream {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let (pushed, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        let (p, s) = (pushed.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (p, s) = (p.clone(), s.clone());
                        std::thread::spawn(move || serve(conn, &p, &s));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Self { port, pushed, stop }
    }
}

impl Drop for BigUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
    }
}

fn serve(mut conn: TcpStream, pushed: &AtomicU64, stop: &AtomicBool) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_write_timeout(Some(Duration::from_secs(30)));
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 65536 {
        match conn.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let start = format!("HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {BODY}\r\n\r\n");
    if conn.write_all(start.as_bytes()).is_err() {
        return;
    }
    let chunk = vec![b'x'; 64 << 10];
    let mut sent = 0;
    while sent < BODY && !stop.load(Relaxed) {
        let n = (BODY - sent).min(chunk.len() as u64) as usize;
        if conn.write_all(&chunk[..n]).is_err() {
            return;
        }
        sent += n as u64;
        pushed.fetch_add(n as u64, Relaxed);
    }
}

/// `/proc/PID/status` `VmRSS`, in kB.
fn rss_kb(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Reads 16 KiB every 20 ms for `for_how_long` through `port`, sampling
/// `pid`'s resident memory; returns (bytes read, peak growth in kB).
fn slow_download(port: u16, pid: u32, for_how_long: Duration) -> (u64, u64) {
    let base = rss_kb(pid);
    let mut s = TcpStream::connect(addr(port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    s.write_all(b"GET /big HTTP/1.1\r\nhost: example.com\r\n\r\n").expect("send");
    let mut buf = vec![0u8; 16 << 10];
    let (mut read, mut peak) = (0u64, 0u64);
    let end = Instant::now() + for_how_long;
    while Instant::now() < end {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => read += n as u64,
            Err(e) => panic!("reading through port {port}: {e}"),
        }
        peak = peak.max(rss_kb(pid).saturating_sub(base));
        std::thread::sleep(Duration::from_millis(20));
    }
    (read, peak)
}

fn template(upstream: u16) -> String {
    let routes = r#"              - { match: { prefix: "/big" }, route: { cluster: big } }
              - match: { prefix: "/retry" }
                route: { cluster: echo, retry_policy: { retry_on: "5xx", num_retries: 1 } }
              - { match: { prefix: "/" }, route: { cluster: echo } }
"#;
    let clusters = echo_cluster()
        + &cluster_with("big", &[&upstream.to_string()], &format!("per_connection_buffer_limit_bytes: {LIMIT}, "));
    let lua = r#"          - name: envoy.filters.http.lua
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
              default_source_code:
                inline_string: |
                  function envoy_on_request(handle)
                    if handle:headers():get("x-read-body") ~= nil then
                      local n = handle:body():length()
                      handle:headers():add("x-body-length", tostring(n))
                    end
                  end
"#;
    let t = bootstrap("", "", &one_vhost(routes), &clusters);
    let t = with_filters(t, &format!("          http_filters:\n{lua}{ROUTER}"));
    let listener = "    address: { socket_address: { address: 127.0.0.1, port_value: {LISTEN} } }\n";
    assert!(t.contains(listener), "the template changed");
    t.replace(listener, &format!("{listener}    per_connection_buffer_limit_bytes: {LIMIT}\n"))
}

#[test]
fn a_slow_reader_keeps_both_proxies_bounded() {
    let up = BigUpstream::start();
    let pair = start_pair("buffer-limits-slow", &template(up.port), &["a"]);
    let n = pair._procs.len();
    let (envoy_pid, legate_pid) = (pair._procs[n - 2].pid(), pair._procs[n - 1].pid());
    let mut figures = Vec::new();
    for (who, port, pid) in [("Envoy", pair.envoy, envoy_pid), ("Legate", pair.legate, legate_pid)] {
        let before = up.pushed.load(Relaxed);
        let (read, peak) = slow_download(port, pid, Duration::from_secs(4));
        let pushed = up.pushed.load(Relaxed) - before;
        println!(
            "{who}: client read {} KiB in 4 s; upstream pushed {} KiB ({} KiB ahead of the reader, in socket buffers and the proxy); proxy RSS grew by at most {peak} kB",
            read >> 10,
            pushed >> 10,
            pushed.saturating_sub(read) >> 10
        );
        assert!(read > 1 << 20, "{who}: the client read only {read} bytes");
        assert!(pushed < BODY / 4, "{who}: the upstream pushed {pushed} of {BODY} bytes to a slow reader");
        figures.push((who, peak));
    }
    println!(
        "slow reader, 256 MiB body, limit {} KiB: RSS growth Envoy {} kB, Legate {} kB",
        LIMIT >> 10,
        figures[0].1,
        figures[1].1
    );
    assert!(figures[1].1 < 24 << 10, "Legate's memory grew by {} kB for a slow reader", figures[1].1);
}

/// One POST of `body` on its own connection; a proxy may answer before the
/// body is all sent and close: the write error is then ignored. Returns the
/// status and the `x-body-length` the upstream saw ("-" without one).
fn post(port: u16, path: &str, body: usize, read_body: bool) -> (u16, String) {
    let mut s = TcpStream::connect(addr(port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let extra = if read_body { "x-read-body: 1\r\n" } else { "" };
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: example.com\r\nconnection: close\r\n{extra}content-length: {body}\r\n\r\n"
    );
    let _ = s.write_all(head.as_bytes()).and_then(|()| s.write_all(&vec![b'b'; body]));
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let seen = text
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(b).ok())
        .and_then(|v| v["headers"]["x-body-length"].as_str().map(str::to_string))
        .unwrap_or_else(|| "-".into());
    (status, seen)
}

#[test]
fn bodies_over_the_listener_limit_as_envoy() {
    let up = BigUpstream::start();
    let pair = start_pair("buffer-limits-bodies", &template(up.port), &["a"]);
    let (small, large) = (8 << 10, 64 << 10);
    let cases = [
        ("/lua", small, true, (200, "8192")),
        ("/lua", large, true, (413, "-")),
        ("/lua", large, false, (200, "-")),
        ("/retry/status/503", small, false, (503, "-")),
        ("/retry/status/503", large, false, (503, "-")),
    ];
    for (path, size, read_body, (status, seen)) in cases {
        let (e, l) = (post(pair.envoy, path, size, read_body), post(pair.legate, path, size, read_body));
        println!("POST {path}, {size} B, Lua reads it: {read_body}: Envoy {e:?}, Legate {l:?}");
        assert_eq!(e, (status, seen.to_string()), "Envoy, {path} {size} B");
        assert_eq!(e, l, "{path} {size} B: Envoy (left), Legate (right)");
    }
    // The small body was retried once, the large one went once.
    pair.stats_reach(&[("cluster.echo.upstream_rq_retry", 1)]);
    pair.same_stats(&[
        "cluster.echo.upstream_rq_retry",
        "cluster.echo.upstream_rq_503",
        "cluster.echo.upstream_rq_total",
    ]);
}
