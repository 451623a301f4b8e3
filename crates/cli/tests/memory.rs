//! The memory an idle `legate proxy` keeps, beside Envoy 1.40 on the same
//! config (the benchmark's: one listener, one cluster).
//!
//! The API's descriptor pool (about 26 MiB of heap) is needed only to read
//! and validate config; once started, the proxy drops it and keeps less than
//! half of Envoy's anonymous memory. A config dump afterwards decodes the
//! pool again and still shows the bootstrap.
//!
//! Idle HTTP/1.1 keep-alive connections give their buffers back (Legate
//! parks them after a second without a request) and are served on as
//! Envoy serves its own.

mod harness;

use harness::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const TEMPLATE: &str = r#"
admin:
  address: { socket_address: { address: 127.0.0.1, port_value: {ADMIN} } }
static_resources:
  listeners:
  - name: bench
    address: { socket_address: { address: 127.0.0.1, port_value: {LISTEN} } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          codec_type: AUTO
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          route_config:
            name: bench
            virtual_hosts:
            - name: bench
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: upstream }
  clusters:
  - name: upstream
    connect_timeout: 1s
    type: STATIC
    lb_policy: ROUND_ROBIN
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: {UP_up} } } }
"#;

/// A field of `/proc/PID/status`, in kB.
fn status_kb(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

#[test]
fn idle_proxy_keeps_less_than_half_of_envoys_heap() {
    let pair = start_pair("memory", TEMPLATE, &["up"]);
    let n = pair._procs.len();
    let (envoy_pid, legate_pid) = (pair._procs[n - 2].pid(), pair._procs[n - 1].pid());
    for port in [pair.envoy, pair.legate] {
        let r = http_get(addr(port), "/", "bench").expect("GET through the proxy");
        assert_eq!(r.status, 200, "{}", r.body);
    }
    // The proxy drops the pool 300 ms after startup; both settle.
    std::thread::sleep(Duration::from_secs(2));
    let envoy_anon = status_kb(envoy_pid, "RssAnon");
    let legate_anon = status_kb(legate_pid, "RssAnon");
    let ratio = legate_anon as f64 / envoy_anon as f64;
    println!(
        "idle anonymous memory: Envoy {envoy_anon} kB, Legate {legate_anon} kB, Legate / Envoy {ratio:.2} (bar <= 0.50)"
    );
    assert!(ratio <= 0.5, "Legate keeps {legate_anon} kB of anonymous memory idle, Envoy {envoy_anon} kB");

    // What needs the pool decodes it again.
    let dump = admin_json(pair.legate_admin, "/config_dump");
    let bootstrap = &dump["configs"][0];
    assert_eq!(bootstrap["@type"], "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump", "{dump}");
    let cluster = &bootstrap["bootstrap"]["static_resources"]["clusters"][0];
    assert_eq!(cluster["name"], "upstream", "{dump}");
    assert_eq!(cluster["connect_timeout"], "1s", "{dump}");
}

/// Writes `bytes`, then reads `n` responses (content-length or chunked
/// bodies): their statuses.
fn exchange(s: &mut TcpStream, bytes: &[u8], n: usize) -> Vec<u16> {
    s.write_all(bytes).expect("write");
    let mut buf = Vec::new();
    let mut statuses = Vec::new();
    while statuses.len() < n {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            read_more(s, &mut buf);
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let body_at = end + 4;
        let total = if head.contains("transfer-encoding: chunked") {
            match buf[body_at..].windows(5).position(|w| w == b"0\r\n\r\n") {
                Some(p) => body_at + p + 5,
                None => {
                    read_more(s, &mut buf);
                    continue;
                }
            }
        } else {
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            body_at + len
        };
        if buf.len() < total {
            read_more(s, &mut buf);
            continue;
        }
        statuses.push(http_client::status_of(head.lines().next().unwrap_or("")).unwrap_or(0));
        buf.drain(..total);
    }
    statuses
}

fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 4096];
    let n = s.read(&mut chunk).expect("read a response");
    assert!(n > 0, "the proxy closed the connection: {}", String::from_utf8_lossy(buf));
    buf.extend_from_slice(&chunk[..n]);
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: bench\r\n\r\n";

#[test]
fn idle_http1_connections_give_their_buffers_back_and_serve_on() {
    const N: usize = 400;
    let pair = start_pair("memory-park", TEMPLATE, &["up"]);
    let legate_pid = pair._procs[pair._procs.len() - 1].pid();
    // On each proxy, connections answered once: one then left with half a
    // head, one to get two pipelined requests, one a POST, after idling.
    let mut specials = Vec::new();
    for port in [pair.envoy, pair.legate] {
        let mut three: Vec<TcpStream> = (0..3).map(|_| raw::connect(port, Duration::from_secs(10))).collect();
        for s in &mut three {
            assert_eq!(exchange(s, GET, 1), [200]);
        }
        three[0].write_all(b"GET / HTTP/1.1\r\nho").expect("write");
        specials.push(three);
    }
    let mut many: Vec<TcpStream> = (0..N).map(|_| raw::connect(pair.legate, Duration::from_secs(10))).collect();
    for s in &mut many {
        assert_eq!(exchange(s, GET, 1), [200]);
    }
    let open = status_kb(legate_pid, "VmRSS");
    // Parked a second after their request; the freed heap goes back to the
    // kernel within a second more.
    let bar = (N * 4) as u64;
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut now = open;
    while open.saturating_sub(now) < bar && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        now = status_kb(legate_pid, "VmRSS");
    }
    println!("Legate with {N} idle HTTP/1.1 connections: {open} kB resident, then {now} kB once they idled");
    assert!(
        open.saturating_sub(now) >= bar,
        "{N} idle connections gave back {} kB, less than 4 kB each",
        open.saturating_sub(now)
    );
    // Every parked connection is served on.
    for s in &mut many {
        assert_eq!(exchange(s, GET, 1), [200]);
    }
    for (three, who) in specials.iter_mut().zip(["Envoy", "Legate"]) {
        assert_eq!(exchange(&mut three[0], b"st: bench\r\n\r\n", 1), [200], "{who}: a head begun before idling");
        assert_eq!(exchange(&mut three[1], &[GET, GET].concat(), 2), [200, 200], "{who}: two pipelined requests");
        let post = b"POST / HTTP/1.1\r\nhost: bench\r\ncontent-length: 5\r\n\r\nhello";
        assert_eq!(exchange(&mut three[2], post, 1), [200], "{who}: a POST");
    }
}
