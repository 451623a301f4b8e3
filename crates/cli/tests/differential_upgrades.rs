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
use harness::raw::{raw_exchange, upgrade_request, Raw};
use harness::template::*;
use harness::ws::*;
use harness::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// WebSocket

const ACCESS_LOG: &str = r#"          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: "{LOG}-{ADMIN}.log"
              log_format: { text_format_source: { inline_string: "%REQ(:METHOD)% %REQ(:PATH)% %PROTOCOL% %RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_CLUSTER% %BYTES_RECEIVED% %BYTES_SENT%\n" } }
"#;

#[test]
fn websocket_echo_through_both() {
    let logs = TempDir::new("ws-logs");
    let log = logs.path().join("access").display().to_string();
    let template = echo_bootstrap(&format!(
        "          upgrade_configs: [{{ upgrade_type: websocket }}]\n{}",
        ACCESS_LOG.replace("{LOG}", &log)
    ));
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
    pair.stats_reach(&[
        ("http.ingress_http.downstream_cx_upgrades_total", 1),
        ("http.ingress_http.downstream_cx_upgrades_active", 0),
        ("http.ingress_http.downstream_rq_active", 0),
        ("cluster.echo.upstream_rq_101", 1),
    ]);
    // The upgraded stream's access log line, written when the tunnel ends.
    let el = log_lines_within(format!("{log}-{}.log", pair.envoy_admin), 1);
    let ll = log_lines_within(format!("{log}-{}.log", pair.legate_admin), 1);
    assert_eq!(ll, el, "access log lines differ");
}

/// A WebSocket that stays open counts as an active upgrade until it closes.
#[test]
fn upgrade_active_while_open() {
    let template = echo_bootstrap("          upgrade_configs: [{ upgrade_type: websocket }]\n");
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
        let (ev, lv) = pair.stats_settle(name, 1);
        assert_eq!((ev, lv), (Some(1), Some(1)), "{name} while open");
    }
    drop(open);
    for name in [
        "http.ingress_http.downstream_cx_upgrades_active",
        "http.ingress_http.downstream_cx_active",
        "cluster.echo.upstream_cx_active",
    ] {
        let (ev, lv) = pair.stats_settle(name, 0);
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
    pair.stats_reach(&[
        ("http.ingress_http.downstream_rq_ws_on_non_ws_route", 4),
        ("http.ingress_http.downstream_rq_4xx", 4),
    ]);
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
    let el = log_lines_within(format!("{log}-{}.log", pair.envoy_admin), cases.len());
    let ll = log_lines_within(format!("{log}-{}.log", pair.legate_admin), cases.len());
    assert_eq!(ll, el, "access log lines differ");
    pair.stats_reach(&[
        ("http.ingress_http.downstream_cx_upgrades_total", 3),
        ("http.ingress_http.downstream_cx_upgrades_active", 0),
        ("http.ingress_http.downstream_rq_ws_on_non_ws_route", 1),
    ]);
}

// ---------------------------------------------------------------------------
// HTTP inspector

#[test]
fn http_inspector_selects_the_chain() {
    let dir = TempDir::new("inspector-tcp");
    let (_tcp, tcp_port) = echo_with("tcp", dir.path(), &["--tcp"]);
    let hcm = |prefix: &str, body: &str| {
        let routing = format!(
            r#"route_config:
          virtual_hosts: [{{ name: all, domains: ["*"], routes: [{{ match: {{ prefix: "/" }}, direct_response: {{ status: 200, body: {{ inline_string: "{body}" }} }} }}] }}]"#
        );
        indented(&harness::xds::hcm_filter(prefix, &routing), 2)
    };
    let template = format!(
        r#"{MAIN_LISTENER}    listener_filters:
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
    pair.stats_reach(&[
        ("http_inspector.http11_found", 1),
        ("http_inspector.http2_found", 1),
        ("http_inspector.http10_found", 1),
        ("http_inspector.http_not_found", 2),
        ("http.h1.downstream_rq_total", 1),
        ("http.h2.downstream_rq_total", 1),
        ("tcp.raw.downstream_cx_total", 2),
    ]);
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

#[test]
fn websocket_over_http2_extended_connect() {
    let template = echo_bootstrap("          upgrade_configs: [{ upgrade_type: websocket }]\n          http2_protocol_options: { allow_connect: true }\n");
    let pair = start_pair("h2-websocket", &template, &["a"]);
    let e = h2_websocket(pair.envoy, "/chat", &["one", "two"]);
    let l = h2_websocket(pair.legate, "/chat", &["one", "two"]);
    assert_eq!(e.0, 200, "Envoy");
    assert_eq!(l, e);
    let (ev, lv) = pair.stats_settle("http.ingress_http.downstream_cx_upgrades_total", 1);
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
    let el = log_lines_within(format!("{log}-{}.log", pair.envoy_admin), 1);
    let ll = log_lines_within(format!("{log}-{}.log", pair.legate_admin), 1);
    assert_eq!(ll, el, "access log lines differ");
}
