//! Differential tests for HTTP upgrades, CONNECT and the HTTP inspector: the
//! same bootstrap and the same connections through real Envoy 1.40 and
//! through `legate proxy`.
//!
//! The upstream is `legate echo`: it accepts a real WebSocket handshake,
//! sends the request it received as its first text message and echoes every
//! message after it; it answers CONNECT with 200 and echoes raw bytes; with
//! `--tcp` it is a plain TCP echo (a CONNECT target). The WebSocket client is
//! tokio-tungstenite (a real handshake and masked frames); CONNECT and the
//! refused upgrades are written on plain sockets, byte for byte the same to
//! both proxies.

mod harness;

use harness::diff::*;
use harness::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// What came back on a raw connection: the response head (status line and
/// lower-cased headers, `date` left out), what followed it, and whether the
/// proxy closed the connection.
#[derive(Debug, Clone, PartialEq)]
struct Raw {
    status: String,
    headers: BTreeMap<String, String>,
    rest: String,
    closed: bool,
}

/// Writes `first`, reads the response head, then writes each of `then`
/// (waiting for its echo when `echo` is set) and reads what is left for up
/// to `linger`.
fn raw_exchange(port: u16, first: &[u8], then: &[&[u8]], linger: Duration) -> Raw {
    let mut s = std::net::TcpStream::connect(addr(port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
    s.write_all(first).expect("write");
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let mut closed = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    // The head first (or, from a byte echo, whatever comes back before a
    // second of quiet).
    let mut quiet = 0;
    while !raw.windows(4).any(|w| w == b"\r\n\r\n") && Instant::now() < deadline && quiet < 5 {
        match s.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(_) if !raw.is_empty() => quiet += 1,
            Err(_) => {}
        }
    }
    for chunk in then {
        if closed {
            break;
        }
        let _ = s.write_all(chunk);
        std::thread::sleep(Duration::from_millis(100));
    }
    let end = Instant::now() + linger;
    while !closed && Instant::now() < end {
        match s.read(&mut buf) {
            Ok(0) => closed = true,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines.next().unwrap_or_default().to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .filter(|(k, _)| k != "date")
        .map(|(k, v)| if k == "x-envoy-upstream-service-time" { (k, "(present)".to_string()) } else { (k, v) })
        .collect();
    Raw { status, headers, rest: rest.to_string(), closed }
}

fn upgrade_request(path: &str, upgrade: &str, connection: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: example.com\r\nconnection: {connection}\r\nupgrade: {upgrade}\r\n\r\n")
        .into_bytes()
}

/// Waits (up to 5 s) until a stat has a value on both proxies; returns both.
fn stats_settle(pair: &Pair, name: &str, want: i64) -> (Option<i64>, Option<i64>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let both = (stat(pair.envoy_admin, name), stat(pair.legate_admin, name));
        if (both.0 == Some(want) && both.1 == Some(want)) || Instant::now() > deadline {
            return both;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------
// WebSocket

/// A WebSocket session: the handshake's answer, the upstream's first
/// message (the request it saw) and the echoes of `messages`.
struct WsOutcome {
    status: u16,
    headers: BTreeMap<String, String>,
    seen: Value,
    echoes: Vec<String>,
}

fn ws_session(port: u16, path: &str, messages: &[&str]) -> WsOutcome {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr(port)).await.expect("connect");
        // A fixed key, so that both proxies see the same request.
        let req = http::Request::builder()
            .uri(format!("ws://example.com{path}"))
            .header("host", "example.com")
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .body(())
            .expect("request");
        let (mut ws, resp) = tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::client_async(req, tcp))
            .await
            .expect("handshake in time")
            .unwrap_or_else(|e| panic!("WebSocket handshake through {port}: {e}"));
        let headers = resp
            .headers()
            .iter()
            .filter(|(k, _)| k.as_str() != "date")
            .map(|(k, v)| {
                let v = if k == "x-envoy-upstream-service-time" {
                    "(present)".to_string()
                } else {
                    v.to_str().unwrap_or_default().to_ascii_lowercase()
                };
                (k.as_str().to_string(), v)
            })
            .collect();
        let seen: Value =
            serde_json::from_str(&next_message(&mut ws).await).expect("the upstream's first message is JSON");
        let mut echoes = Vec::new();
        for m in messages {
            let msg = match m.strip_prefix("binary:") {
                Some(b) => Message::binary(b.as_bytes().to_vec()),
                None => Message::text(m.to_string()),
            };
            ws.send(msg).await.expect("send");
            echoes.push(next_message(&mut ws).await);
        }
        let _ = ws.close(None).await;
        // The close handshake's answer, then the end of the stream.
        let _ = tokio::time::timeout(Duration::from_secs(2), async { while ws.next().await.is_some() {} }).await;
        WsOutcome { status: resp.status().as_u16(), headers, seen, echoes }
    })
}

/// The next text (or binary, as `binary:...`) message, within 5 s.
async fn next_message(ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>) -> String {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => t.to_string(),
        Ok(Some(Ok(Message::Binary(b)))) => format!("binary:{}", String::from_utf8_lossy(&b)),
        other => panic!("expected a message, got {other:?}"),
    }
}

/// What of the request the upstream saw is compared: every header, with
/// the request id by form only.
fn upstream_view(seen: &Value) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for k in ["method", "uri", "version"] {
        m.insert(k.to_string(), seen[k].to_string());
    }
    if let Some(h) = seen["headers"].as_object() {
        for (k, v) in h {
            let v = v.as_str().unwrap_or_default();
            if k == "x-request-id" {
                m.insert(format!("header:{k}(uuid)"), (v.len() == 36).to_string());
            } else {
                m.insert(format!("header:{k}"), v.to_string());
            }
        }
    }
    m
}

const ACCESS_LOG: &str = r#"          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: "{LOG}-{ADMIN}.log"
              log_format: { text_format_source: { inline_string: "%REQ(:METHOD)% %REQ(:PATH)% %PROTOCOL% %RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_CLUSTER% %BYTES_RECEIVED% %BYTES_SENT%\n" } }
"#;

/// The access log lines a proxy wrote (waits up to 5 s for `n` of them:
/// Envoy flushes its file logs every second).
fn log_lines(path: &str, admin: u16, n: usize) -> Vec<String> {
    let file = format!("{path}-{admin}.log");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() >= n || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn websocket_echo_through_both() {
    let logs = TempDir::new("ws-logs");
    let log = logs.path().join("access").display().to_string();
    let template = bootstrap(
        &format!("          upgrade_configs: [{{ upgrade_type: websocket }}]\n{}", ACCESS_LOG.replace("{LOG}", &log)),
        "",
        &one_vhost("              - { match: { prefix: \"/\" }, route: { cluster: echo } }\n"),
        &echo_cluster(),
    );
    let pair = start_pair("websocket", &template, &["a"]);
    let messages = ["hello", "binary:bytes", "a longer message with some more text in it"];
    let e = ws_session(pair.envoy, "/chat?room=1", &messages);
    let l = ws_session(pair.legate, "/chat?room=1", &messages);
    assert_eq!(e.status, 101);
    assert_eq!((l.status, &l.headers), (e.status, &e.headers), "the 101 differs");
    assert_eq!(l.echoes, e.echoes, "echoed messages differ");
    assert_eq!(e.echoes[0], "hello");
    assert_eq!(upstream_view(&l.seen), upstream_view(&e.seen), "the upstream saw different requests");
    // One upgrade each, and none open once both sides have closed.
    for (name, want) in [
        ("http.ingress_http.downstream_cx_upgrades_total", 1),
        ("http.ingress_http.downstream_cx_upgrades_active", 0),
        ("http.ingress_http.downstream_rq_active", 0),
        ("cluster.echo.upstream_rq_101", 1),
    ] {
        let (ev, lv) = stats_settle(&pair, name, want);
        assert_eq!(lv, ev, "{name}");
        assert_eq!(ev, Some(want), "{name} (Envoy)");
    }
    // The upgraded stream's access log line, written when the tunnel ends.
    let el = log_lines(&log, pair.envoy_admin, 1);
    let ll = log_lines(&log, pair.legate_admin, 1);
    assert_eq!(ll, el, "access log lines differ");
}

/// A WebSocket that stays open counts as an active upgrade until it closes.
#[test]
fn upgrade_active_while_open() {
    let template = bootstrap(
        "          upgrade_configs: [{ upgrade_type: websocket }]\n",
        "",
        &one_vhost("              - { match: { prefix: \"/\" }, route: { cluster: echo } }\n"),
        &echo_cluster(),
    );
    let pair = start_pair("ws-active", &template, &["a"]);
    // A request first: its idle upstream connection then carries the
    // upgrade, as in Envoy's pool.
    for port in [pair.envoy, pair.legate] {
        assert_eq!(send(port, &get("/").keep_alive()).status, 200);
    }
    let mut open = Vec::new();
    for port in [pair.envoy, pair.legate] {
        let mut s = std::net::TcpStream::connect(addr(port)).expect("connect");
        s.write_all(
            b"GET / HTTP/1.1\r\nhost: example.com\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .expect("write");
        s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).expect("status line");
        assert_eq!(&buf, b"HTTP/1.1 101", "port {port}");
        open.push(s);
    }
    for name in [
        "http.ingress_http.downstream_cx_upgrades_active",
        "http.ingress_http.downstream_rq_active",
        "http.ingress_http.downstream_cx_active",
        "cluster.echo.upstream_cx_total",
        "cluster.echo.upstream_cx_active",
    ] {
        let (ev, lv) = stats_settle(&pair, name, 1);
        assert_eq!((ev, lv), (Some(1), Some(1)), "{name} while open");
    }
    drop(open);
    for name in [
        "http.ingress_http.downstream_cx_upgrades_active",
        "http.ingress_http.downstream_cx_active",
        "cluster.echo.upstream_cx_active",
    ] {
        let (ev, lv) = stats_settle(&pair, name, 0);
        assert_eq!((ev, lv), (Some(0), Some(0)), "{name} after close");
    }
}

// ---------------------------------------------------------------------------
// Refused upgrades

#[test]
fn upgrades_not_enabled_are_refused_alike() {
    let template = bootstrap(
        "          upgrade_configs: [{ upgrade_type: websocket }, { upgrade_type: foo2, enabled: false }]\n",
        "",
        &one_vhost(concat!(
            "              - { match: { prefix: \"/off\" }, route: { cluster: echo, upgrade_configs: [{ upgrade_type: websocket, enabled: false }] } }\n",
            "              - { match: { prefix: \"/custom\" }, route: { cluster: echo, upgrade_configs: [{ upgrade_type: FOO2 }] } }\n",
            "              - { match: { prefix: \"/direct\" }, direct_response: { status: 200, body: { inline_string: direct } } }\n",
            "              - { match: { prefix: \"/dead\" }, route: { cluster: dead } }\n",
            "              - { match: { prefix: \"/\" }, route: { cluster: echo } }\n",
        )),
        &format!("{}{}", echo_cluster(), cluster("dead", &["{CLOSED}"])),
    );
    let pair = start_pair("ws-refused", &template, &["a"]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        // Disabled on the route although the HCM allows it.
        ("route-disabled", upgrade_request("/off", "websocket", "upgrade")),
        // A type the HCM does not list.
        ("unknown-type", upgrade_request("/", "foo", "Upgrade")),
        // Disabled on the HCM.
        ("hcm-disabled", upgrade_request("/", "foo2", "upgrade")),
        // Disabled on the HCM, enabled on the route (case-insensitive): the
        // upstream gets the upgrade and answers 200 without switching.
        ("route-enabled", upgrade_request("/custom", "foo2", "keep-alive, Upgrade")),
        // HTTP/1.1 to h2c is never an upgrade: served as HTTP/1.1.
        ("h2c", b"GET / HTTP/1.1\r\nhost: example.com\r\nconnection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAAQAAP__\r\n\r\n".to_vec()),
        // A direct response route with an allowed type: answered directly.
        ("direct", upgrade_request("/direct", "websocket", "upgrade")),
        // An allowed upgrade whose upstream cannot be reached.
        ("dead-upstream", upgrade_request("/dead", "websocket", "upgrade")),
        // Any host lands on the `*` virtual host: refused the same way.
        (
            "no-route-host",
            b"GET /x HTTP/1.1\r\nhost: nowhere.test\r\nconnection: upgrade\r\nupgrade: foo\r\n\r\n".to_vec(),
        ),
        // `Upgrade` without `connection: upgrade` is no upgrade: an ordinary request.
        (
            "not-an-upgrade",
            b"GET / HTTP/1.1\r\nhost: example.com\r\nupgrade: foo\r\nconnection: close\r\n\r\n".to_vec(),
        ),
    ];
    let mut problems = Vec::new();
    for (name, req) in &cases {
        let e = raw_exchange(pair.envoy, req, &[], Duration::from_millis(1500));
        let l = raw_exchange(pair.legate, req, &[], Duration::from_millis(1500));
        // The echo's JSON body names its peer port: compare what it saw.
        let strip = |r: &Raw| {
            let mut r = r.clone();
            if let Ok(v) = serde_json::from_str::<Value>(r.rest.trim()) {
                r.rest = serde_json::to_string(&upstream_view(&v)).unwrap_or_default();
            }
            r
        };
        if strip(&e) != strip(&l) {
            problems.push(format!("{name}:\n  envoy:  {:?}\n  legate: {:?}", strip(&e), strip(&l)));
        }
    }
    assert!(problems.is_empty(), "Legate differs from Envoy:\n{}", problems.join("\n"));
    for (name, want) in
        [("http.ingress_http.downstream_rq_ws_on_non_ws_route", 4), ("http.ingress_http.downstream_rq_4xx", 4)]
    {
        let (ev, lv) = stats_settle(&pair, name, want);
        assert_eq!(lv, ev, "{name}");
        assert_eq!(ev, Some(want), "{name} (Envoy)");
    }
}

// ---------------------------------------------------------------------------
// CONNECT

#[test]
fn connect_terminated_and_passed_on() {
    let dir = TempDir::new("connect-tcp");
    let (_tcp, tcp_port) = echo_with("tcp", dir.path(), &["--tcp"]);
    let clusters = format!(
        "{}{}{}",
        echo_cluster(),
        cluster("tcp_echo", &[&tcp_port.to_string()]),
        cluster("dead", &["{CLOSED}"])
    );
    let logs = TempDir::new("connect-logs");
    let log = logs.path().join("access").display().to_string();
    let template = bootstrap(
        &ACCESS_LOG.replace("{LOG}", &log),
        "",
        &format!(
            "{}            - name: passthrough\n              domains: [\"proxy.test:*\", \"proxy.test\"]\n              routes:\n{}            - name: dead\n              domains: [\"dead.test:*\"]\n              routes:\n{}            - name: disabled\n              domains: [\"off.test:*\"]\n              routes:\n{}",
            one_vhost(concat!(
                "              - { match: { connect_matcher: {} }, route: { cluster: tcp_echo, upgrade_configs: [{ upgrade_type: CONNECT, connect_config: {} }] } }\n",
                "              - { match: { prefix: \"/\" }, route: { cluster: echo } }\n",
            )),
            "              - { match: { connect_matcher: {} }, route: { cluster: echo, upgrade_configs: [{ upgrade_type: CONNECT }] } }\n",
            "              - { match: { connect_matcher: {} }, route: { cluster: dead, upgrade_configs: [{ upgrade_type: CONNECT, connect_config: {} }] } }\n",
            // A CONNECT route without the upgrade enabled, and a prefix route CONNECT never matches.
            "              - { match: { connect_matcher: {} }, route: { cluster: echo } }\n",
        ),
        &clusters,
    );
    // `one_vhost` has domains ["*"]: the named hosts above come after it
    // but are exact/prefix matches, which win over `*`.
    let pair = start_pair("connect", &template, &["a"]);
    let _ = &logs;
    // (name, request head, what is written after it)
    type Case<'a> = (&'a str, Vec<u8>, Vec<&'a [u8]>);
    let cases: Vec<Case<'_>> = vec![
        (
            "terminated",
            b"CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\n".to_vec(),
            // The tunnel's bytes are never taken for HTTP: an HTTP/1.0
            // status line comes back as it went.
            vec![&b"hello through the tunnel\n"[..], &b"HTTP/1.0 200 OK\r\n\r\n"[..]],
        ),
        (
            "passed-on",
            b"CONNECT proxy.test:443 HTTP/1.1\r\nhost: proxy.test:443\r\n\r\n".to_vec(),
            vec![&b"bytes for the upstream proxy\n"[..]],
        ),
        ("dead-upstream", b"CONNECT dead.test:443 HTTP/1.1\r\nhost: dead.test:443\r\n\r\n".to_vec(), vec![]),
        ("not-enabled", b"CONNECT off.test:443 HTTP/1.1\r\nhost: off.test:443\r\n\r\n".to_vec(), vec![]),
    ];
    let mut problems = Vec::new();
    for (name, req, then) in &cases {
        let e = raw_exchange(pair.envoy, req, then, Duration::from_millis(1000));
        let l = raw_exchange(pair.legate, req, then, Duration::from_millis(1000));
        if e != l {
            problems.push(format!("{name}:\n  envoy:  {e:?}\n  legate: {l:?}"));
        }
        if *name == "terminated" {
            assert_eq!(e.rest, "hello through the tunnel\nHTTP/1.0 200 OK\r\n\r\n", "Envoy's tunnel");
        }
    }
    assert!(problems.is_empty(), "Legate differs from Envoy:\n{}", problems.join("\n"));
    // One access log line per CONNECT, the tunnels' when they end.
    let el = log_lines(&log, pair.envoy_admin, cases.len());
    let ll = log_lines(&log, pair.legate_admin, cases.len());
    assert_eq!(ll, el, "access log lines differ");
    for (name, want) in [
        ("http.ingress_http.downstream_cx_upgrades_total", 3),
        ("http.ingress_http.downstream_cx_upgrades_active", 0),
        ("http.ingress_http.downstream_rq_ws_on_non_ws_route", 1),
    ] {
        let (ev, lv) = stats_settle(&pair, name, want);
        assert_eq!(lv, ev, "{name}");
        assert_eq!(ev, Some(want), "{name} (Envoy)");
    }
}

// ---------------------------------------------------------------------------
// HTTP inspector

#[test]
fn http_inspector_selects_the_chain() {
    let dir = TempDir::new("inspector-tcp");
    let (_tcp, tcp_port) = echo_with("tcp", dir.path(), &["--tcp"]);
    let hcm = |prefix: &str, body: &str| {
        format!(
            r#"      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {prefix}
          http_filters: [{{ name: envoy.filters.http.router, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }} }}]
          route_config:
            virtual_hosts: [{{ name: all, domains: ["*"], routes: [{{ match: {{ prefix: "/" }}, direct_response: {{ status: 200, body: {{ inline_string: "{body}" }} }} }}] }}]
"#
        )
    };
    let template = format!(
        r#"admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{ADMIN}} }} }} }}
static_resources:
  listeners:
  - name: main
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{LISTEN}} }} }}
    listener_filters:
    - name: envoy.filters.listener.http_inspector
      typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector }}
    # After the HTTP inspector: on plain text it leaves the protocol found.
    - name: envoy.filters.listener.tls_inspector
      typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector }}
    filter_chains:
    - filter_chain_match: {{ application_protocols: ["http/1.1"] }}
      filters:
{h1}    - filter_chain_match: {{ application_protocols: ["h2c"] }}
      filters:
{h2}    - filter_chain_match: {{ application_protocols: ["http/1.0"] }}
      filters:
{h10}    default_filter_chain:
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: raw
          cluster: tcp_echo
  clusters:
{clusters}"#,
        h1 = hcm("h1", "chain for http/1.1"),
        h2 = hcm("h2", "chain for h2c"),
        h10 = hcm("h10", "chain for http/1.0"),
        clusters = cluster("tcp_echo", &[&tcp_port.to_string()]),
    );
    let pair = start_pair("http-inspector", &template, &[]);
    let mut problems = Vec::new();
    // HTTP/1.1 and HTTP/2 (prior knowledge, through curl).
    for (name, r) in [("http/1.1", get("/")), ("h2c", get("/").h2())] {
        let e = view(&send(pair.envoy, &r));
        let l = view(&send(pair.legate, &r));
        let d = diff(&e, &l);
        if !d.is_empty() {
            problems.push(format!("{name}:\n{}", d.join("\n")));
        }
    }
    // An HTTP/1.0 request line picks the http/1.0 chain (whose HCM then
    // refuses HTTP/1.0 as Envoy does), and bytes that are not HTTP go to the
    // default chain's TCP echo.
    let raws: [(&str, &[u8]); 3] = [
        ("http/1.0", b"GET / HTTP/1.0\r\nhost: example.com\r\n\r\n"),
        ("not-http", b"hello, this is not http\r\n"),
        ("binary", b"\x00\x01\x02\x03 binary\n"),
    ];
    for (name, bytes) in raws {
        // Long enough for Envoy's delayed close (up to 1 s) after a 426.
        let e = raw_exchange(pair.envoy, bytes, &[], Duration::from_millis(1500));
        let l = raw_exchange(pair.legate, bytes, &[], Duration::from_millis(1500));
        if e != l {
            problems.push(format!("{name}:\n  envoy:  {e:?}\n  legate: {l:?}"));
        }
    }
    assert!(problems.is_empty(), "Legate differs from Envoy:\n{}", problems.join("\n"));
    for (name, want) in [
        ("http_inspector.http11_found", 1),
        ("http_inspector.http2_found", 1),
        ("http_inspector.http10_found", 1),
        ("http_inspector.http_not_found", 2),
        ("http.h1.downstream_rq_total", 1),
        ("http.h2.downstream_rq_total", 1),
        ("tcp.raw.downstream_cx_total", 2),
    ] {
        let (ev, lv) = stats_settle(&pair, name, want);
        assert_eq!(lv, ev, "{name}");
        assert_eq!(ev, Some(want), "{name} (Envoy)");
    }
}

/// HTTP/2 CONNECT (prior knowledge): the status, and the bytes the tunnel
/// echoes back (or the error).
fn h2_connect(port: u16, target: &str, payload: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let work = async {
            let tcp = tokio::net::TcpStream::connect(addr(port)).await.map_err(|e| e.to_string())?;
            let (mut sender, conn) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(tcp),
            )
            .await
            .map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(conn);
            let req = http::Request::builder()
                .method("CONNECT")
                .uri(target)
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .map_err(|e| e.to_string())?;
            let mut resp = sender.send_request(req).await.map_err(|e| format!("request: {e}"))?;
            let status = resp.status().as_u16();
            if status != 200 {
                return Ok(format!("status {status}"));
            }
            let up = hyper::upgrade::on(&mut resp).await.map_err(|e| format!("upgrade: {e}"))?;
            let mut io = hyper_util::rt::TokioIo::new(up);
            io.write_all(payload).await.map_err(|e| e.to_string())?;
            let mut got = vec![0u8; payload.len()];
            io.read_exact(&mut got).await.map_err(|e| format!("read: {e}"))?;
            Ok::<_, String>(format!("status {status}, echoed {:?}", String::from_utf8_lossy(&got)))
        };
        match tokio::time::timeout(Duration::from_secs(10), work).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => format!("error: {e}"),
            Err(_) => "timed out".into(),
        }
    })
}

#[test]
fn http2_connect_terminated() {
    let dir = TempDir::new("h2-connect-tcp");
    let (_tcp, tcp_port) = echo_with("tcp", dir.path(), &["--tcp"]);
    let template = bootstrap(
        "",
        "",
        &format!(
            "{}            - name: passthrough\n              domains: [\"proxy.test:*\"]\n              routes:\n{}",
            one_vhost("              - { match: { connect_matcher: {} }, route: { cluster: tcp_echo, upgrade_configs: [{ upgrade_type: CONNECT, connect_config: {} }] } }\n"),
            "              - { match: { connect_matcher: {} }, route: { cluster: echo, upgrade_configs: [{ upgrade_type: CONNECT }] } }\n",
        ),
        &format!("{}{}", cluster("tcp_echo", &[&tcp_port.to_string()]), echo_cluster()),
    );
    let pair = start_pair("h2-connect", &template, &["a"]);
    // Terminated here, and passed on (as HTTP/1.1) to the echo upstream.
    for target in ["example.com:443", "proxy.test:443"] {
        let e = h2_connect(pair.envoy, target, b"over an HTTP/2 stream");
        let l = h2_connect(pair.legate, target, b"over an HTTP/2 stream");
        assert_eq!(l, e, "{target}");
        assert!(e.contains("echoed"), "Envoy, {target}: {e}");
    }
}

/// WebSocket over an HTTP/2 stream (extended CONNECT, RFC 8441): the
/// status, the upstream's view of the request and the echoes.
fn h2_websocket(port: u16, path: &str, messages: &[&str]) -> (u16, BTreeMap<String, String>, Vec<String>) {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::{protocol::Role, Message};
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr(port)).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .expect("h2 handshake");
        tokio::spawn(conn);
        let mut req = http::Request::builder()
            .method("CONNECT")
            .uri(format!("http://example.com{path}"))
            .header("sec-websocket-version", "13")
            // RFC 8441 has no key, but the HTTP/1.1 upstream needs one.
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .expect("request");
        req.extensions_mut().insert(hyper::ext::Protocol::from_static("websocket"));
        let mut resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
            .await
            .expect("in time")
            .unwrap_or_else(|e| panic!("extended CONNECT through {port}: {e}"));
        let status = resp.status().as_u16();
        if status != 200 {
            return (status, BTreeMap::new(), Vec::new());
        }
        let up = hyper::upgrade::on(&mut resp).await.expect("upgrade");
        let mut ws =
            tokio_tungstenite::WebSocketStream::from_raw_socket(hyper_util::rt::TokioIo::new(up), Role::Client, None)
                .await;
        let seen: Value = serde_json::from_str(&next_message_io(&mut ws).await).expect("JSON first message");
        let mut echoes = Vec::new();
        for m in messages {
            ws.send(Message::text(m.to_string())).await.expect("send");
            echoes.push(next_message_io(&mut ws).await);
        }
        let _ = ws.close(None).await;
        (status, upstream_view(&seen), echoes)
    })
}

async fn next_message_io<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    ws: &mut tokio_tungstenite::WebSocketStream<S>,
) -> String {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => t.to_string(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

#[test]
fn websocket_over_http2_extended_connect() {
    let template = bootstrap(
        "          upgrade_configs: [{ upgrade_type: websocket }]\n          http2_protocol_options: { allow_connect: true }\n",
        "",
        &one_vhost("              - { match: { prefix: \"/\" }, route: { cluster: echo } }\n"),
        &echo_cluster(),
    );
    let pair = start_pair("h2-websocket", &template, &["a"]);
    let e = h2_websocket(pair.envoy, "/chat", &["one", "two"]);
    let l = h2_websocket(pair.legate, "/chat", &["one", "two"]);
    assert_eq!(e.0, 200, "Envoy");
    assert_eq!(l, e);
    let (ev, lv) = stats_settle(&pair, "http.ingress_http.downstream_cx_upgrades_total", 1);
    assert_eq!((ev, lv), (Some(1), Some(1)));
}

/// What is not implemented around upgrades is listed, not ignored: upgrade
/// filter chains, CONNECT's `allow_post`, and `allow_connect` on a cluster
/// (it is accepted on the connection manager).
#[test]
fn unimplemented_upgrade_settings_are_refused() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/upgrades-refused.yaml");
    let out = std::process::Command::new(LEGATE).args(["validate", "-c", config]).output().expect("legate validate");
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let listed: Vec<&str> = text.lines().filter(|l| l.starts_with("  ")).map(|l| l.trim()).collect();
    assert_eq!(listed.len(), 3, "{text}");
    for field in [
        "connect_config.allow_post:",
        "typed_config.upgrade_configs[0].filters:",
        "clusters[0].http2_protocol_options.allow_connect:",
    ] {
        assert!(listed.iter().any(|l| l.contains(field)), "{field} not listed:\n{text}");
    }
}

/// A quiet tunnel ends after the route's idle_timeout on both proxies, and
/// is logged the same way.
#[test]
fn idle_tunnel_times_out() {
    let dir = TempDir::new("idle-tcp");
    let (_tcp, tcp_port) = echo_with("tcp", dir.path(), &["--tcp"]);
    let log = dir.path().join("access").display().to_string();
    let template = bootstrap(
        &ACCESS_LOG.replace("{LOG}", &log),
        "",
        &one_vhost("              - { match: { connect_matcher: {} }, route: { cluster: tcp_echo, idle_timeout: 1s, upgrade_configs: [{ upgrade_type: CONNECT, connect_config: {} }] } }\n"),
        &cluster("tcp_echo", &[&tcp_port.to_string()]),
    );
    let pair = start_pair("idle-tunnel", &template, &[]);
    let req = b"CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\n";
    // Bytes at first, then quiet for longer than the timeout.
    let started = Instant::now();
    let e = raw_exchange(pair.envoy, req, &[b"ping\n"], Duration::from_millis(3000));
    let envoy_time = started.elapsed();
    let l = raw_exchange(pair.legate, req, &[b"ping\n"], Duration::from_millis(3000));
    assert_eq!(l, e);
    assert!(e.closed && e.rest == "ping\n", "Envoy: {e:?} after {envoy_time:?}");
    let el = log_lines(&log, pair.envoy_admin, 1);
    let ll = log_lines(&log, pair.legate_admin, 1);
    assert_eq!(ll, el, "access log lines differ");
}
