//! Fields that real-world configs use most and Legate learnt for them (see
//! `breadth.rs`), each run through Envoy 1.40 and Legate side by side.

mod harness;

use harness::diff::marked_lines;

use harness::template::echo_bootstrap;
use harness::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A default-format line without what differs from run to run: the start
/// time and the duration.
fn without_times(line: &str) -> String {
    let rest = line.split_once("] ").map(|(_, r)| r).unwrap_or(line);
    // `"GET /p HTTP/1.1" 200 - 0 5 0 - "..."`: the duration is the fifth
    // token after the request line.
    let Some((request, after)) = rest.split_once("\" ") else { return rest.to_string() };
    let mut tokens: Vec<&str> = after.splitn(6, ' ').collect();
    if tokens.len() == 6 {
        tokens[4] = "<ms>";
    }
    format!("{request}\" {}", tokens.join(" "))
}

#[test]
fn admin_access_log_path_and_access_log() {
    let dir = TempDir::new("compat-admin-log");
    let d = dir.path();
    let custom = "%REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE% %BYTES_SENT% %PROTOCOL% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %RESPONSE_CODE_DETAILS% %ROUTE_NAME% %UPSTREAM_CLUSTER% %REQ(X-FORWARDED-FOR)%\\n";
    let [e, l] = both(d, &[], &[], |who, admin, _| {
        format!(
            "admin:\n  access_log_path: {dir}/{who}-admin.log\n  access_log:\n  - name: envoy.access_loggers.file\n    typed_config:\n      \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n      path: {dir}/{who}-admin-custom.log\n      log_format: {{text_format: \"{custom}\"}}\n  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}\n",
            dir = d.display()
        )
    });
    for side in [&e, &l] {
        let addr: SocketAddr = ([127, 0, 0, 1], side.admin).into();
        let ready = http_request(
            addr,
            "GET",
            "/ready?probe=1",
            "admin.test",
            &[("user-agent", "compat/1"), ("x-request-id", "rid-1")],
            "",
        )
        .expect("GET /ready");
        assert_eq!(ready.status, 200, "{}: {ready:?}", side.who);
        let refused = http_request(
            addr,
            "GET",
            "/healthcheck/fail?probe=2",
            "admin.test",
            &[("user-agent", "compat/2"), ("x-forwarded-for", "10.0.0.1")],
            "",
        )
        .expect("GET /healthcheck/fail");
        assert_eq!(refused.status, 405, "{}: {refused:?}", side.who);
    }
    let default_lines = |who: &str| -> Vec<String> {
        marked_lines(&d.join(format!("{who}-admin.log")), "probe=", 2).iter().map(|l| without_times(l)).collect()
    };
    let (a, b) = (default_lines("envoy"), default_lines("legate"));
    assert_eq!(a.len(), 2, "Envoy's admin log: {a:?}");
    assert_eq!(a, b, "admin access_log_path: Envoy (left) and Legate (right) differ");
    let (a, b) = (
        marked_lines(&d.join("envoy-admin-custom.log"), "probe=", 2),
        marked_lines(&d.join("legate-admin-custom.log"), "probe=", 2),
    );
    assert_eq!(a.len(), 2, "Envoy's custom admin log: {a:?}");
    assert_eq!(a, b, "admin access_log: Envoy (left) and Legate (right) differ");
}

/// What a proxy's HTTP/2 server says first to an h2c client: its SETTINGS
/// (identifier to value) and the connection window increments it grants.
fn h2_greeting(port: u16) -> (std::collections::BTreeMap<u16, u32>, u32) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
    // The preface and an empty SETTINGS frame.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").expect("preface");
    let mut raw = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 4096];
    // Read until the peer goes quiet for 300 ms (or 5 s pass).
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
    let (mut settings, mut window) = (std::collections::BTreeMap::new(), 0u32);
    let mut at = 0;
    while at + 9 <= raw.len() {
        let len = u32::from_be_bytes([0, raw[at], raw[at + 1], raw[at + 2]]) as usize;
        let (kind, flags) = (raw[at + 3], raw[at + 4]);
        let stream = u32::from_be_bytes([raw[at + 5], raw[at + 6], raw[at + 7], raw[at + 8]]) & 0x7fff_ffff;
        let Some(payload) = raw.get(at + 9..at + 9 + len) else { break };
        match (kind, flags & 1, stream) {
            (4, 0, 0) => {
                for p in payload.chunks_exact(6) {
                    settings.insert(u16::from_be_bytes([p[0], p[1]]), u32::from_be_bytes([p[2], p[3], p[4], p[5]]));
                }
            }
            (8, _, 0) if payload.len() == 4 => {
                window += u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff;
            }
            _ => {}
        }
        at += 9 + len;
    }
    (settings, window)
}

#[test]
fn hcm_http2_stream_limit_and_windows() {
    const MAX_CONCURRENT_STREAMS: u16 = 3;
    const INITIAL_WINDOW_SIZE: u16 = 4;
    let hcm = "          codec_type: HTTP2\n          http2_protocol_options: { max_concurrent_streams: 7, initial_stream_window_size: 131072, initial_connection_window_size: 1048576 }\n";
    let p = start_pair("compat-h2-settings", &echo_bootstrap(hcm), &["a"]);
    let (e, l) = (h2_greeting(p.envoy), h2_greeting(p.legate));
    assert_eq!(e.0.get(&MAX_CONCURRENT_STREAMS), Some(&7), "Envoy's SETTINGS: {e:?}");
    for id in [MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE] {
        assert_eq!(e.0.get(&id), l.0.get(&id), "SETTINGS {id}: Envoy {e:?}, Legate {l:?}");
    }
    assert_eq!(e.1, 1048576 - 65535, "Envoy's connection WINDOW_UPDATE: {e:?}");
    assert_eq!(e.1, l.1, "connection window: Envoy {e:?}, Legate {l:?}");
}

#[test]
fn router_suppress_envoy_headers() {
    let router = "          http_filters:\n          - name: envoy.filters.http.router\n            typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router, suppress_envoy_headers: true }\n";
    let template = harness::template::with_filters(echo_bootstrap(""), router);
    let requests = [get("/"), get("/timed").header("x-envoy-upstream-rq-timeout-ms", "2000")];
    let p = harness::diff::compare("compat-suppress-envoy-headers", &template, &["a"], &requests);
    // What the comparison saw is what Envoy does: no service time
    // downstream, no expected timeout upstream.
    for port in [p.envoy, p.legate] {
        let r = harness::diff::send(port, &get("/"));
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.header("x-envoy-upstream-service-time").is_none(), "{port}: {r:?}");
        assert!(!r.body.contains("x-envoy-expected-rq-timeout-ms"), "{port}: {}", r.body);
    }
}

#[test]
fn deprecated_cors_fields_of_virtual_hosts_and_routes() {
    let filters = "          - name: envoy.filters.http.cors\n            typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors }\n";
    // The grpc-web examples' form: the policy in the virtual host's `cors`;
    // a route action's own `cors`; and a typed policy, which wins over both.
    let vhosts = r#"            - name: all
              domains: ["*"]
              cors:
                allow_origin_string_match: [{ prefix: "https://a." }]
                allow_methods: "GET, PUT, DELETE, POST, OPTIONS"
                allow_headers: "keep-alive,user-agent,cache-control,content-type,x-grpc-web,grpc-timeout"
                expose_headers: "grpc-status,grpc-message"
                max_age: "1728000"
              routes:
              - match: { prefix: "/route" }
                route:
                  cluster: echo
                  cors: { allow_methods: "PATCH", allow_credentials: true }
              - match: { prefix: "/typed" }
                route: { cluster: echo }
                typed_per_filter_config:
                  envoy.filters.http.cors:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
                    allow_origin_string_match: [{ exact: "https://typed.example" }]
              - { match: { prefix: "/" }, route: { cluster: echo } }
"#;
    let t = harness::template::filtered(filters, vhosts);
    let preflight = |path: &str, origin: &'static str| {
        get(path).method("OPTIONS").header("origin", origin).header("access-control-request-method", "POST")
    };
    let pair = harness::diff::compare(
        "compat-legacy-cors",
        &t,
        &["a"],
        &[
            get("/plain"),
            get("/plain").header("origin", "https://a.example"),
            get("/plain").header("origin", "https://evil.example"),
            preflight("/plain", "https://a.example"),
            preflight("/plain", "https://evil.example"),
            get("/route").header("origin", "https://a.example"),
            preflight("/route", "https://a.example"),
            preflight("/typed", "https://a.example"),
            preflight("/typed", "https://typed.example"),
            get("/typed").header("origin", "https://typed.example"),
        ],
    );
    pair.same_stats(&["http.ingress_http.cors.origin_valid", "http.ingress_http.cors.origin_invalid"]);
    let r = harness::diff::send(pair.envoy, &preflight("/plain", "https://a.example"));
    assert_eq!(r.header("access-control-max-age"), Some("1728000"), "Envoy honours the virtual host's cors: {r:?}");
}

#[test]
fn router_without_dynamic_stats() {
    use harness::template::{bootstrap, cluster, echo_cluster, one_vhost, with_filters};
    let router = "          http_filters:\n          - name: envoy.filters.http.router\n            typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router, dynamic_stats: false }\n";
    let routes = "              - { match: { prefix: \"/dead\" }, route: { cluster: dead } }\n              - { match: { prefix: \"/\" }, route: { cluster: echo } }\n";
    let clusters = format!("{}{}", echo_cluster(), cluster("dead", &["{CLOSED}"]));
    let template = with_filters(bootstrap("", "", &one_vhost(routes), &clusters), router);
    let requests = [get("/"), get("/again"), get("/dead")];
    let p = harness::diff::compare("compat-no-dynamic-stats", &template, &["a"], &requests);
    p.stats_reach(&[("cluster.echo.upstream_rq_total", 2), ("cluster.dead.upstream_cx_connect_fail", 1)]);
    let mut names = Vec::new();
    for c in ["echo", "dead"] {
        for s in ["upstream_rq_completed", "upstream_rq_200", "upstream_rq_2xx", "upstream_rq_503", "upstream_rq_5xx"] {
            names.push(format!("cluster.{c}.{s}"));
            names.push(format!("cluster.{c}.external.{s}"));
        }
    }
    p.same_stats(&names.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(stat(p.envoy_admin, "cluster.echo.upstream_rq_200"), None, "Envoy charged a dynamic stat");
}

#[test]
fn route_max_stream_duration_and_grpc_timeouts() {
    use harness::template::{bootstrap, echo_cluster, one_vhost};
    let routes = r#"              - match: { prefix: "/limit" }
                route: { cluster: echo, max_stream_duration: { max_stream_duration: 0.5s } }
              - match: { prefix: "/header" }
                route: { cluster: echo, timeout: 0.3s, max_stream_duration: { grpc_timeout_header_max: 0s } }
              - match: { prefix: "/offset" }
                route: { cluster: echo, max_stream_duration: { grpc_timeout_header_max: 1s, grpc_timeout_header_offset: 0.1s } }
              - match: { prefix: "/legacy" }
                route: { cluster: echo, max_grpc_timeout: 0s, grpc_timeout_offset: 0.05s }
"#;
    let template = bootstrap("", "", &one_vhost(routes), &echo_cluster());
    let grpc = |path: &str, timeout: Option<&'static str>| {
        let r = get(path).method("POST").header("content-type", "application/grpc");
        match timeout {
            Some(t) => r.header("grpc-timeout", t),
            None => r,
        }
    };
    let requests = [
        // The stream limit ends a slow answer: 504 "downstream duration timeout".
        get("/limit/delay/1500"),
        get("/limit/fast"),
        // Under max_stream_duration the route timeout is off...
        get("/header/delay/600"),
        // ... and a grpc-timeout header sets the limit (any content type).
        get("/header/delay/1500").header("grpc-timeout", "200m"),
        // A gRPC request's grpc-timeout is rewritten to the limit upstream.
        grpc("/header/x", Some("2S")),
        grpc("/header/x", None),
        grpc("/offset/x", Some("5S")),
        grpc("/offset/x", Some("300m")),
        // The deprecated fields: the route timeout from grpc-timeout, less
        // the offset, written back as the expected timeout.
        grpc("/legacy/x", Some("3S")),
        grpc("/legacy/x", None),
        get("/legacy/x").header("grpc-timeout", "3S"),
    ];
    let p = harness::diff::compare("compat-max-stream-duration", &template, &["a"], &requests);
    p.stats_reach(&[("http.ingress_http.downstream_rq_max_duration_reached", 2)]);
    let r = harness::diff::send(p.legate, &get("/limit/delay/1500"));
    assert_eq!((r.status, r.body.as_str()), (504, "downstream duration timeout"), "{r:?}");
    let r = harness::diff::send(p.envoy, &grpc("/offset/x", Some("5S")));
    assert!(r.body.contains("\"grpc-timeout\":\"900m\""), "Envoy's upstream saw: {}", r.body);
}

#[test]
fn cluster_http2_keepalive_and_windows() {
    use harness::h2_raw::H2Upstream;
    let dir = TempDir::new("compat-h2-keepalive");
    // Per proxy: one upstream that answers PINGs and one that does not.
    let ups: std::collections::BTreeMap<&str, (H2Upstream, H2Upstream)> =
        ["envoy", "legate"].into_iter().map(|who| (who, (H2Upstream::start(true), H2Upstream::start(false)))).collect();
    let h2 = "http2_protocol_options: { initial_stream_window_size: 131072, initial_connection_window_size: 1048576, connection_keepalive: { interval: 1s, timeout: 1s, interval_jitter: { value: 0 } } }";
    let [e, l] = both(dir.path(), &[], &["http"], |who, admin, ports| {
        let (ack, silent) = &ups[who];
        let cluster = |name: &str, port: u16| {
            format!("  - {{ name: {name}, connect_timeout: 1s, {h2}, load_assignment: {{ cluster_name: {name}, endpoints: [{{ lb_endpoints: [{}] }}] }} }}\n", harness::template::endpoint(port))
        };
        let routes = "              - { match: { prefix: \"/silent\" }, route: { cluster: silent } }\n              - { match: { prefix: \"/\" }, route: { cluster: ack } }\n";
        harness::template::bootstrap(
            "",
            "",
            &harness::template::one_vhost(routes),
            &format!("{}{}", cluster("ack", ack.port), cluster("silent", silent.port)),
        )
        .replace("{ADMIN}", &admin.to_string())
        .replace("{LISTEN}", &ports["http"].to_string())
    });
    let start = Instant::now();
    for side in [&e, &l] {
        for path in ["/", "/silent"] {
            let r = http_request(([127, 0, 0, 1], side.port("http")).into(), "GET", path, "h2.test", &[], "")
                .expect("request");
            assert_eq!(r.status, 200, "{}: {path}: {r:?}", side.who);
        }
    }
    std::thread::sleep(Duration::from_millis(3600).saturating_sub(start.elapsed()));
    let (ea, es) = (ups["envoy"].0.seen(), ups["envoy"].1.seen());
    let (la, ls) = (ups["legate"].0.seen(), ups["legate"].1.seen());
    // The SETTINGS window and the connection window, as configured.
    const INITIAL_WINDOW_SIZE: u16 = 4;
    assert_eq!(ea.settings.get(&INITIAL_WINDOW_SIZE), Some(&131072), "Envoy's SETTINGS: {:?}", ea.settings);
    assert_eq!(la.settings.get(&INITIAL_WINDOW_SIZE), Some(&131072), "Legate's SETTINGS: {:?}", la.settings);
    assert_eq!(ea.connection_window, 1048576 - 65535, "Envoy's connection window");
    assert_eq!(la.connection_window, ea.connection_window, "connection window");
    // PINGs every second on a connection that answers them.
    let (en, ln) = (ea.pings.len(), la.pings.len());
    assert!((2..=4).contains(&en), "Envoy sent {en} PINGs in 3.6 s");
    assert!(en.abs_diff(ln) <= 1, "PINGs in 3.6 s: Envoy {en}, Legate {ln}");
    assert!(ea.closed.is_empty() && la.closed.is_empty(), "an answered connection closed: {ea:?} {la:?}");
    // An unanswered PING closes the connection after the timeout.
    let closed_after = |s: &harness::h2_raw::Seen| s.closed.first().zip(s.opened.first()).map(|(c, o)| *c - *o);
    let (ec, lc) = (closed_after(&es), closed_after(&ls));
    let window = Duration::from_millis(1500)..Duration::from_millis(3400);
    assert!(ec.is_some_and(|d| window.contains(&d)), "Envoy closed the silent connection after {ec:?}: {es:?}");
    assert!(lc.is_some_and(|d| window.contains(&d)), "Legate closed the silent connection after {lc:?}: {ls:?}");
}

#[test]
fn stats_matcher_lists_and_reject_all() {
    let names = [
        "cluster.echo.upstream_rq_total",
        "cluster.echo.upstream_cx_total",
        "cluster.echo.upstream_cx_active",
        "http.ingress_http.downstream_rq_total",
        "http.ingress_http.downstream_rq_active",
        "http.ingress_http.downstream_cx_total",
    ];
    let matchers = [
        "stats_matcher: { exclusion_list: { patterns: [{ prefix: \"cluster.echo.upstream_rq\" }, { suffix: \"_active\" }] } }",
        "stats_matcher: { inclusion_list: { patterns: [{ exact: \"cluster.echo.upstream_cx_total\" }, { safe_regex: { regex: \"^http\\\\.ingress_http\\\\.downstream_rq_.*\" } }] } }",
        "stats_matcher: { reject_all: true }",
    ];
    for (i, m) in matchers.iter().enumerate() {
        let template = format!("stats_config: {{ {m} }}\n{}", harness::template::echo_bootstrap(""));
        let p = harness::diff::compare(&format!("compat-stats-matcher-{i}"), &template, &["a"], &[get("/"), get("/x")]);
        let seen: Vec<(&str, Option<i64>, Option<i64>)> =
            names.iter().map(|n| (*n, stat(p.envoy_admin, n), stat(p.legate_admin, n))).collect();
        for (n, e, l) in &seen {
            assert_eq!(e, l, "matcher {i}, {n}: Envoy {e:?}, Legate {l:?}");
        }
        let shown = seen.iter().filter(|(_, e, _)| e.is_some()).count();
        let expected = [3, 3, 0][i];
        assert_eq!(shown, expected, "matcher {i}: Envoy shows {seen:?}");
    }
}

#[test]
fn hcm_accepts_http_10_with_a_default_host() {
    use harness::raw::raw_exchange;
    let hcm = "          http_protocol_options: { accept_http_10: true, default_host_for_http_10: legacy.example }\n";
    let vhosts = "            - name: legacy\n              domains: [\"legacy.example\"]\n              routes:\n              - { match: { prefix: \"/\" }, route: { cluster: echo } }\n";
    let template = harness::template::bootstrap(hcm, "", vhosts, &harness::template::echo_cluster());
    let p = start_pair("compat-http10", &template, &["a"]);
    let requests: [&[u8]; 4] = [
        b"GET /plain HTTP/1.0\r\n\r\n",
        b"GET /named HTTP/1.0\r\nHost: other.example\r\n\r\n",
        b"GET /kept HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        b"GET /eleven HTTP/1.1\r\nHost: legacy.example\r\nConnection: close\r\n\r\n",
    ];
    for raw in requests {
        // Past Envoy's delayed close (1 s) after a local reply.
        let view = |port: u16| {
            let r = raw_exchange(port, raw, &[], Duration::from_millis(1500));
            let body: serde_json::Value = serde_json::from_str(&r.rest).unwrap_or_default();
            (
                r.status.clone(),
                ["connection", "content-length", "content-type"].map(|h| r.headers.get(h).cloned()),
                r.closed,
                body["headers"]["host"].clone(),
                body["version"].clone(),
                body["uri"].clone(),
            )
        };
        let (e, l) = (view(p.envoy), view(p.legate));
        harness::diff::assert_same(&String::from_utf8_lossy(raw), &e, &l);
    }
    let first = raw_exchange(p.envoy, requests[0], &[], Duration::from_millis(500));
    assert!(first.status.contains(" 200"), "Envoy answers HTTP/1.0: {first:?}");
}

/// A bootstrap whose clusters and listeners come over one gRPC stream per
/// type (`api_config_source`, no ADS) from the control plane at `xds`.
fn per_type_bootstrap(node: &str, admin: u16, xds: u16, api_type: &str) -> String {
    let source = format!("{{ resource_api_version: V3, api_config_source: {{ api_type: {api_type}, transport_api_version: V3, grpc_services: [{{ envoy_grpc: {{ cluster_name: xds }} }}], set_node_on_first_message_only: true }} }}");
    format!(
        "node: {{ id: {node}, cluster: per-type-test }}\nadmin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }} }}\ndynamic_resources:\n  cds_config: {source}\n  lds_config: {source}\nstatic_resources:\n  clusters:\n  - name: xds\n    type: STATIC\n    connect_timeout: 1s\n{}    load_assignment: {{ cluster_name: xds, endpoints: [{{ lb_endpoints: [{}] }}] }}\n",
        harness::template::H2_BLOCK,
        harness::template::endpoint(xds)
    )
}

#[test]
fn xds_without_ads_one_stream_per_type() {
    use harness::xds::web_resources;
    let dir = TempDir::new("compat-per-type-xds");
    let d = dir.path();
    let cp = ControlPlane::start(d);
    let (_up, up) = echo("a", d);
    let source = "api_config_source: { api_type: API, transport_api_version: V3, grpc_services: [{ envoy_grpc: { cluster_name: xds } }] }";
    for (api_type, tag) in [("GRPC", "sotw"), ("DELTA_GRPC", "delta")] {
        let mut ports = Vec::new();
        let mut procs = Vec::new();
        for bin in [Bin::Envoy, Bin::Legate] {
            let node = format!("{tag}-{}", if bin == Bin::Envoy { "envoy" } else { "legate" });
            let (admin, listen) = (free_port(), free_port());
            // The resources' own config sources (EDS, RDS) say the same server.
            let resources = web_resources(listen, up, &[&node], &format!("-{node}"))
                .replace("ads: {}", &source.replace("API", api_type));
            cp.apply(d, &resources);
            procs.push(start_on(bin, &per_type_bootstrap(&node, admin, cp.xds, api_type), &node, admin, d));
            ports.push((node, listen, admin));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for (node, listen, _) in &ports {
            while upstream_of(*listen).as_deref() != Some("a") {
                assert!(Instant::now() < deadline, "{node}: not served over per-type xDS");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        for r in [get("/"), get("/path?q=1").header("x-test", "1")] {
            let (e, l) = (
                harness::diff::view(&harness::diff::send(ports[0].1, &r)),
                harness::diff::view(&harness::diff::send(ports[1].1, &r)),
            );
            let diff = harness::diff::diff(&e, &l);
            assert!(diff.is_empty(), "{tag}: {}", diff.join("\n"));
        }
        // Both hold the cluster and listener the control plane gave them.
        for (node, _, admin) in &ports {
            let clusters = admin_page(*admin, "/clusters");
            assert!(clusters.contains(&format!("web-{node}::")), "{node}: {clusters}");
        }
        drop(procs);
    }
}

#[test]
fn retries_end_in_per_try_timeouts_and_connect_failures() {
    use harness::template::{bootstrap, cluster, echo_cluster};
    let vhosts = r#"            - name: all
              domains: ["*"]
              include_attempt_count_in_response: true
              routes:
              - match: { prefix: "/pertry" }
                route: { cluster: echo, retry_policy: { retry_on: 5xx, num_retries: 1, per_try_timeout: 0.2s } }
              - match: { prefix: "/dead" }
                route: { cluster: dead, retry_policy: { retry_on: connect-failure, num_retries: 2 } }
"#;
    let clusters = format!("{}{}", echo_cluster(), cluster("dead", &["{CLOSED}"]));
    let template = bootstrap("", "", vhosts, &clusters);
    // Every try times out: 504 with the tries counted; every try is refused:
    // 503 saying how many tries there were.
    let requests = [get("/pertry/delay/1000"), get("/dead")];
    let p = harness::diff::compare("compat-retries-end", &template, &["a"], &requests);
    p.stats_reach(&[
        ("cluster.echo.upstream_rq_per_try_timeout", 2),
        ("cluster.echo.upstream_rq_retry", 1),
        ("cluster.echo.upstream_rq_504", 1),
        ("cluster.dead.upstream_cx_connect_fail", 3),
        ("cluster.dead.upstream_rq_retry", 2),
    ]);
    let r = harness::diff::send(p.legate, &get("/pertry/delay/1000"));
    assert_eq!((r.status, r.header("x-envoy-attempt-count")), (504, Some("2")), "{r:?}");
    let r = harness::diff::send(p.envoy, &get("/dead"));
    assert_eq!((r.status, r.header("x-envoy-attempt-count")), (503, Some("3")), "Envoy: {r:?}");
}

#[test]
fn outlier_ejections_overflow_at_max_ejection_percent() {
    use harness::template::{bootstrap, cluster_with, one_vhost, ALL_TO_ECHO};
    let od =
        "outlier_detection: { consecutive_5xx: 1, interval: 10s, base_ejection_time: 30s, max_ejection_percent: 50 }, ";
    let template = bootstrap("", "", &one_vhost(ALL_TO_ECHO), &cluster_with("echo", &["{UP_a}", "{UP_b}"], od));
    // The first 503 ejects its host (none ejected yet); the other host's
    // would eject half of two: the cap stops it. (Which host answers first
    // is the balancer's pick, not compared.)
    let p = start_pair("compat-outlier-overflow", &template, &["a", "b"]);
    for port in [p.envoy, p.legate] {
        assert_eq!(harness::diff::send(port, &get("/status/503")).status, 503);
    }
    p.stats_reach(&[("cluster.echo.outlier_detection.ejections_active", 1)]);
    for port in [p.envoy, p.legate] {
        assert_eq!(harness::diff::send(port, &get("/status/503")).status, 503);
    }
    p.stats_reach(&[
        ("cluster.echo.outlier_detection.ejections_overflow", 1),
        ("cluster.echo.outlier_detection.ejections_active", 1),
        ("cluster.echo.outlier_detection.ejections_enforced_total", 1),
    ]);
}

#[test]
fn tcp_proxy_to_a_dead_cluster_counts_the_attempt() {
    use harness::config::{cluster, listener, tcp_proxy};
    let dir = TempDir::new("compat-tcp-dead");
    let dead = free_port();
    let [e, l] = both(dir.path(), &[], &["tcp"], |_, admin, ports| {
        let chain = format!("{{filters: [{}]}}", tcp_proxy("dead_tcp", "cluster: dead", ""));
        format!(
            "admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }} }}\nstatic_resources:\n  listeners:\n  - {}\n  clusters:\n  - {}\n",
            listener("tcp", ports["tcp"], &chain),
            cluster("dead", dead, "")
        )
    });
    for side in [&e, &l] {
        let out = harness::raw::tcp_exchange(side.port("tcp"), b"hello");
        assert!(out.is_empty(), "{}: a dead upstream answered {out:?}", side.who);
    }
    let names = [
        "upstream_cx_total",
        "upstream_cx_connect_fail",
        "upstream_cx_destroy",
        "upstream_cx_destroy_remote",
        "upstream_cx_active",
        "upstream_cx_none_healthy",
    ];
    let deadline = Instant::now() + Duration::from_secs(5);
    while e.stat("cluster.dead.upstream_cx_connect_fail") < 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    for n in names {
        let name = format!("cluster.dead.{n}");
        assert_eq!(l.stat(&name), e.stat(&name), "{name}: Legate (left), Envoy (right)");
    }
    assert_eq!(e.stat("cluster.dead.upstream_cx_total"), 1, "Envoy counts the attempt");
    assert_eq!(l.stat("tcp.dead_tcp.downstream_cx_total"), e.stat("tcp.dead_tcp.downstream_cx_total"));
}

#[test]
fn healthcheck_fail_makes_the_server_draining() {
    let dir = TempDir::new("compat-hc-fail");
    let [e, l] = both(dir.path(), &[], &[], |_, admin, _| {
        format!("admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }} }}\n")
    });
    let view = |admin: u16| {
        let addr: SocketAddr = ([127, 0, 0, 1], admin).into();
        let ready = http_request(addr, "GET", "/ready", "admin", &[], "").expect("/ready");
        let info: serde_json::Value = serde_json::from_str(&admin_page(admin, "/server_info")).unwrap_or_default();
        (ready.status, ready.body.clone(), info["state"].clone())
    };
    for step in ["/healthcheck/fail", "/healthcheck/ok"] {
        for side in [&e, &l] {
            let addr: SocketAddr = ([127, 0, 0, 1], side.admin).into();
            let r = http_request(addr, "POST", step, "admin", &[], "").expect("healthcheck");
            assert_eq!(r.status, 200, "{}: {step}: {r:?}", side.who);
        }
        let (a, b) = (view(e.admin), view(l.admin));
        harness::diff::assert_same(step, &a, &b);
        let want = if step == "/healthcheck/fail" { 503 } else { 200 };
        assert_eq!(a.0, want, "Envoy after {step}: {a:?}");
    }
}

#[test]
fn expect_100_continue_answered_by_the_proxy() {
    use harness::raw::raw_exchange;
    let p = start_pair("compat-expect", &harness::template::echo_bootstrap(""), &["a"]);
    let head = b"POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n";
    let view = |port: u16| {
        // The head alone; the body only once the interim answer came.
        let r = raw_exchange(port, head, &[b"hello"], Duration::from_millis(1500));
        let (final_head, body) = r.rest.split_once("\r\n\r\n").unwrap_or((&r.rest, ""));
        let upstream: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        (
            r.status.clone(),
            final_head.lines().next().unwrap_or_default().to_string(),
            upstream["headers"]["expect"].clone(),
            upstream["headers"]["content-length"].clone(),
            upstream["method"].clone(),
        )
    };
    let (e, l) = (view(p.envoy), view(p.legate));
    harness::diff::assert_same("Expect: 100-continue", &e, &l);
    assert_eq!(e.0, "HTTP/1.1 100 Continue", "Envoy's interim answer: {e:?}");
    assert_eq!(e.2, serde_json::Value::Null, "Envoy forwarded Expect: {e:?}");
}

#[test]
fn grpc_route_match_and_add_user_agent() {
    use harness::template::{bootstrap, echo_cluster};
    let vhosts = r#"            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/", grpc: {} }
                route: { cluster: echo }
                request_headers_to_add: [{ header: { key: x-matched, value: grpc } }]
              - match: { prefix: "/" }
                route: { cluster: echo }
                request_headers_to_add: [{ header: { key: x-matched, value: plain } }]
"#;
    let hcm = "          add_user_agent: true\n";
    let template = format!("node: {{ id: node-7, cluster: front }}\n{}", bootstrap(hcm, "", vhosts, &echo_cluster()));
    let requests = [
        get("/svc/Method").method("POST").header("content-type", "application/grpc"),
        get("/svc/Method").method("POST").header("content-type", "application/grpc+proto"),
        get("/svc/Method").method("POST").header("content-type", "application/grpc-web"),
        get("/plain"),
        get("/agent").header("user-agent", "curl/8"),
        get("/spoofed")
            .header("x-envoy-downstream-service-cluster", "other")
            .header("x-envoy-downstream-service-node", "n"),
    ];
    let p = harness::diff::compare("compat-grpc-match-user-agent", &template, &["a"], &requests);
    let r = harness::diff::send(p.envoy, &get("/plain"));
    assert!(r.body.contains("\"x-envoy-downstream-service-cluster\":\"front\""), "Envoy's upstream saw: {}", r.body);
    let r = harness::diff::send(p.legate, &requests[0]);
    assert!(r.body.contains("\"x-matched\":\"grpc\""), "Legate's upstream saw: {}", r.body);
}

#[test]
fn access_log_filters() {
    use harness::template::{bootstrap, cluster, echo_cluster, one_vhost};
    let dir = TempDir::new("compat-log-filters");
    let d = dir.path().display().to_string();
    let format = "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS%\\n";
    let logger = |n: usize, filter: &str| {
        format!("          - name: envoy.access_loggers.file\n            filter: {filter}\n            typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog, path: \"{d}/{{ADMIN}}-{n}.log\", log_format: {{ text_format: \"{format}\" }} }}\n")
    };
    let filters = [
        "{ status_code_filter: { comparison: { op: GE, value: { default_value: 400, runtime_key: log.min_status } } } }",
        "{ or_filter: { filters: [{ status_code_filter: { comparison: { value: { default_value: 200, runtime_key: k } } } }, { header_filter: { header: { name: x-log, present_match: true } } }] } }",
        "{ and_filter: { filters: [{ response_flag_filter: { flags: [UF, NR] } }, { duration_filter: { comparison: { op: LE, value: { default_value: 10000, runtime_key: k } } } }] } }",
        "{ duration_filter: { comparison: { op: GE, value: { default_value: 300, runtime_key: k } } } }",
        "{ response_flag_filter: {} }",
    ];
    let loggers: String = filters.iter().enumerate().map(|(i, f)| logger(i, f)).collect();
    let routes = "              - { match: { prefix: \"/dead\" }, route: { cluster: dead } }\n              - { match: { prefix: \"/\" }, route: { cluster: echo } }\n";
    let clusters = format!("{}{}", echo_cluster(), cluster("dead", &["{CLOSED}"]));
    let template = bootstrap(&format!("          access_log:\n{loggers}"), "", &one_vhost(routes), &clusters);
    let requests = [
        get("/ok"),
        get("/status/404"),
        get("/status/503").header("x-log", "1"),
        get("/dead"),
        get("/delay/400"),
        get("/logged").header("x-log", "yes"),
    ];
    let p = harness::diff::compare("compat-log-filters", &template, &["a"], &requests);
    // Legate flushes its logs every second, Envoy every ten
    // (`--file-flush-interval-msec`): Envoy's are awaited, as many lines
    // as Legate's (or what is there after 10 s).
    std::thread::sleep(Duration::from_millis(2500));
    for (n, filter) in filters.iter().enumerate() {
        let file = |admin: u16| dir.path().join(format!("{admin}-{n}.log"));
        let l = marked_lines(&file(p.legate_admin), "/", 0);
        let e = marked_lines(&file(p.envoy_admin), "/", l.len().max(1));
        assert!(!e.is_empty(), "Envoy's log {n} is empty");
        assert_eq!(e, l, "logger {n} ({filter}): Envoy (left), Legate (right)");
    }
}

/// The keepalive timer of the established TCP connections to 127.0.0.1:`port`
/// as `ss` shows them (`keepalive,<left>,<probes>`), one per connection.
fn keepalive_timers(port: u16) -> Vec<String> {
    let out = std::process::Command::new("ss")
        .args(["-tnoH", "state", "established", &format!("( dport = :{port} )")])
        .output()
        .expect("run ss");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split("timer:(").nth(1).and_then(|t| t.split(')').next()).unwrap_or("none").to_string())
        .collect()
}

#[test]
fn upstream_tcp_keepalive() {
    let dir = TempDir::new("compat-tcp-keepalive");
    let d = dir.path();
    let ups: std::collections::BTreeMap<&str, (Proc, u16)> =
        ["envoy", "legate"].into_iter().map(|who| (who, echo(who, d))).collect();
    let options = "upstream_connection_options: { tcp_keepalive: { keepalive_probes: 3, keepalive_time: 30, keepalive_interval: 5 } }, ";
    let [e, l] = both(d, &[], &["http"], |who, admin, ports| {
        let clusters = harness::template::cluster_with("echo", &[&ups[who].1.to_string()], options);
        harness::template::bootstrap("", "", &harness::template::one_vhost(harness::template::ALL_TO_ECHO), &clusters)
            .replace("{ADMIN}", &admin.to_string())
            .replace("{LISTEN}", &ports["http"].to_string())
    });
    let mut timers = Vec::new();
    for side in [&e, &l] {
        // A keep-alive exchange leaves the pooled upstream connection open.
        let r = keep_alive_exchange(side.port("http"), &get("/"));
        assert_eq!(r.status, 200, "{}: {r:?}", side.who);
        let t = keepalive_timers(ups[side.who].1);
        assert_eq!(t.len(), 1, "{}: upstream connections {t:?}", side.who);
        timers.push(t[0].clone());
    }
    // `keepalive,<seconds left>sec,0`: at most the 30 s idle time on both.
    for (who, t) in ["envoy", "legate"].iter().zip(&timers) {
        let left: Option<f64> =
            t.strip_prefix("keepalive,").and_then(|r| r.split("sec").next()).and_then(|s| s.parse().ok());
        assert!(
            left.is_some_and(|s| s > 0.0 && s <= 30.0),
            "{who}'s upstream connection: timer {t:?} (both: {timers:?})"
        );
    }
}

#[test]
fn virtual_host_require_tls_redirects() {
    use harness::template::{bootstrap, echo_cluster};
    let vhosts = r#"            - name: secure
              domains: ["secure.example"]
              require_tls: ALL
              response_headers_to_add: [{ header: { key: x-vhost, value: secure } }]
              routes: [{ match: { prefix: "/" }, route: { cluster: echo } }]
            - name: external
              domains: ["ext.example"]
              require_tls: EXTERNAL_ONLY
              routes: [{ match: { prefix: "/only" }, route: { cluster: echo } }]
            - name: plain
              domains: ["*"]
              routes: [{ match: { prefix: "/" }, route: { cluster: echo } }]
"#;
    let template = bootstrap("", "", vhosts, &echo_cluster());
    let host = |h: &'static str, path: &str| {
        let mut r = get(path);
        r.host = h;
        r
    };
    let requests = [
        host("secure.example", "/a/b?q=1"),
        // A client's own x-forwarded-proto is kept without use_remote_address.
        host("secure.example", "/a").header("x-forwarded-proto", "https"),
        host("ext.example", "/only/x"),
        // No route matches, yet the virtual host redirects.
        host("ext.example", "/elsewhere"),
        host("other.example", "/plain"),
    ];
    let p = harness::diff::compare("compat-require-tls", &template, &["a"], &requests);
    p.same_stats(&["http.ingress_http.rq_direct_response", "http.ingress_http.downstream_rq_3xx"]);
    let r = harness::diff::send(p.envoy, &requests[0]);
    assert_eq!((r.status, r.header("location")), (301, Some("https://secure.example/a/b?q=1")), "Envoy: {r:?}");
}

#[test]
fn hcm_max_requests_per_connection_drains_the_connection() {
    use harness::raw::raw_exchange;
    let hcm = "          common_http_protocol_options: { max_requests_per_connection: 2 }\n";
    let p = start_pair("compat-max-requests", &echo_bootstrap(hcm), &["a"]);
    let one: &[u8] = b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n";
    let two: &[u8] = b"GET /two HTTP/1.1\r\nHost: a\r\n\r\n";
    let three: &[u8] = b"GET /three HTTP/1.1\r\nHost: a\r\n\r\n";
    // Two requests on one keep-alive connection, then a third written after
    // the second's answer: the second answer closes the connection.
    let view = |port: u16| {
        let r = raw_exchange(port, one, &[two, three], Duration::from_millis(1500));
        let answers = r.rest.matches("HTTP/1.1 200").count() + usize::from(r.status.contains(" 200"));
        (
            r.status.clone(),
            r.headers.get("connection").cloned(),
            answers,
            r.rest.contains("connection: close"),
            r.closed,
        )
    };
    let (e, l) = (view(p.envoy), view(p.legate));
    eprintln!("Envoy {e:?}\nLegate {l:?}");
    assert_eq!(e.2, 2, "Envoy answers two requests: {e:?}");
    assert!(e.3 && e.4, "Envoy's second answer closes the connection: {e:?}");
    harness::diff::assert_same("max_requests_per_connection", &e, &l);
    let reached = |admin: u16| stat(admin, "http.ingress_http.downstream_cx_max_requests_reached").unwrap_or(-1);
    assert_eq!(reached(p.legate_admin), reached(p.envoy_admin), "downstream_cx_max_requests_reached");
    assert_eq!(reached(p.envoy_admin), 1);
}

#[test]
fn route_path_rewrite_formats_the_whole_path() {
    use harness::template::{bootstrap, echo_cluster, one_vhost};
    // The route's request header is added before the path is rendered.
    let routes = r#"              - match: { prefix: "/mcp", headers: [{ name: x-backend, present_match: true }] }
                route: { cluster: echo, path_rewrite: "/to/%REQ(x-backend)%/%REQ(x-added)%" }
                request_headers_to_add: [{ header: { key: x-added, value: "added" } }]
              - { match: { prefix: "/empty" }, route: { cluster: echo, path_rewrite: "%REQ(x-none)%" } }
              - { match: { prefix: "/" }, route: { cluster: echo, path_rewrite: /mcp } }
"#;
    let template = bootstrap("", "", &one_vhost(routes), &echo_cluster());
    let requests =
        [get("/anything/here?q=1&r=2"), get("/mcp/x?keep=1").header("x-backend", "github"), get("/empty/path?z=3")];
    let p = harness::diff::compare("compat-path-rewrite", &template, &["a"], &requests);
    let r = harness::diff::send(p.legate, &requests[0]);
    assert!(r.body.contains("\"uri\":\"/mcp"), "Legate rewrote nothing: {}", r.body);
}

/// UDP upstreams on loopback, each answering a datagram with `<name>:` and
/// the datagram, and noting every peer that sent to it; until dropped.
struct UdpUpstreams {
    ports: Vec<u16>,
    peers: std::sync::Arc<std::sync::Mutex<Vec<(String, SocketAddr)>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl UdpUpstreams {
    fn start(names: &[&'static str]) -> Self {
        let peers = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut ports = Vec::new();
        for &name in names {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp upstream");
            s.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
            ports.push(s.local_addr().expect("addr").port());
            let (peers, stop) = (peers.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Ok((n, from)) = s.recv_from(&mut buf) {
                        peers.lock().expect("peers").push((name.to_string(), from));
                        let mut answer = format!("{name}:").into_bytes();
                        answer.extend_from_slice(&buf[..n]);
                        let _ = s.send_to(&answer, from);
                    }
                }
            });
        }
        Self { ports, peers, stop }
    }
}

impl Drop for UdpUpstreams {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Sends `data` from `client` to `port` and waits (up to `wait`) for one answer.
fn udp_exchange(client: &std::net::UdpSocket, port: u16, data: &str, wait: Duration) -> Option<String> {
    client.set_read_timeout(Some(wait)).expect("timeout");
    client.send_to(data.as_bytes(), ("127.0.0.1", port)).expect("send");
    let mut buf = [0u8; 2048];
    client.recv_from(&mut buf).ok().map(|(n, _)| String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// The UDP proxy of Envoy's `udp` example (a `matcher` whose `on_no_match`
/// routes to a cluster) and one routing to a cluster that does not exist:
/// per client a session with its own upstream socket, round robin over the
/// hosts, answers carried back, sessions ended by the idle timeout, and
/// the `udp.*` and `cluster.<name>.udp.*` stats, beside Envoy 1.40.
#[test]
fn udp_proxy_sessions_and_idle_timeout() {
    let ups = UdpUpstreams::start(&["u1", "u2"]);
    let listener = |name: &str, port: u16, prefix: &str, cluster: &str| {
        format!(
            r#"  - name: {name}
    address: {{ socket_address: {{ protocol: UDP, address: 127.0.0.1, port_value: {port} }} }}
    udp_listener_config: {{}}
    listener_filters:
    - name: envoy.filters.udp_listener.udp_proxy
      typed_config:
        '@type': type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig
        stat_prefix: {prefix}
        idle_timeout: 0.5s
        matcher:
          on_no_match:
            action:
              name: route
              typed_config:
                '@type': type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.Route
                cluster: {cluster}
"#
        )
    };
    let yaml = |_: &'static str, admin: u16, ports: &harness::sides::Ports| {
        format!(
            "admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }} }}\nstatic_resources:\n  listeners:\n{}{}  clusters:\n  - name: udp_up\n    lb_policy: ROUND_ROBIN\n    load_assignment: {{ cluster_name: udp_up, endpoints: [{{ lb_endpoints: [{}] }}] }}\n",
            listener("udp_main", ports["udp"], "service", "udp_up"),
            listener("udp_lost", ports["lost"], "lost", "nowhere"),
            harness::template::endpoints(&ups.ports),
        )
    };
    let dir = harness::process::TempDir::new("udp-proxy");
    let sides = harness::sides::both(dir.path(), &[], &["udp", "lost"], yaml);
    let short = Duration::from_millis(300);
    let mut seen = Vec::new();
    for side in &sides {
        ups.peers.lock().expect("peers").clear();
        let (port, lost) = (side.port("udp"), side.port("lost"));
        let a = std::net::UdpSocket::bind("127.0.0.1:0").expect("client a");
        let b = std::net::UdpSocket::bind("127.0.0.1:0").expect("client b");
        let a1 = udp_exchange(&a, port, "a1", Duration::from_secs(2)).unwrap_or_default();
        let a2 = udp_exchange(&a, port, "a2", Duration::from_secs(2)).unwrap_or_default();
        let b1 = udp_exchange(&b, port, "b1", Duration::from_secs(2)).unwrap_or_default();
        let host = |s: &str| s.split(':').next().unwrap_or_default().to_string();
        let lost_answer = udp_exchange(&a, lost, "nobody", short);
        // Both sessions end on the idle timeout; a's next datagram opens a third.
        let deadline = Instant::now() + Duration::from_secs(5);
        while side.stat("udp.service.idle_timeout") < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let a3 = udp_exchange(&a, port, "a3", Duration::from_secs(2)).unwrap_or_default();
        let peers = ups.peers.lock().expect("peers").clone();
        let sockets: std::collections::BTreeSet<SocketAddr> = peers.iter().map(|(_, p)| *p).collect();
        let mut facts = vec![
            format!(
                "answers {} {} {}",
                a1.get(3..).unwrap_or(""),
                a2.get(3..).unwrap_or(""),
                b1.get(3..).unwrap_or("")
            ),
            format!("a kept its host: {}", host(&a1) == host(&a2)),
            format!("b got the other host: {}", host(&a1) != host(&b1) && !b1.is_empty()),
            format!("a answered after the idle timeout: {}", a3.ends_with(":a3")),
            format!("upstream sockets: {} for {} datagrams", sockets.len(), peers.len()),
            format!("lost answered: {lost_answer:?}"),
        ];
        for s in [
            "udp.service.downstream_sess_total",
            "udp.service.downstream_sess_active",
            "udp.service.downstream_sess_rx_datagrams",
            "udp.service.downstream_sess_rx_bytes",
            "udp.service.downstream_sess_tx_datagrams",
            "udp.service.downstream_sess_tx_bytes",
            "udp.service.downstream_sess_no_route",
            "udp.service.idle_timeout",
            "udp.lost.downstream_sess_no_route",
            "udp.lost.downstream_sess_total",
            "udp.lost.downstream_sess_rx_datagrams",
            "cluster.udp_up.udp.sess_tx_datagrams",
            "cluster.udp_up.udp.sess_rx_datagrams",
            "cluster.udp_up.udp.sess_tx_errors",
        ] {
            facts.push(format!("{s} = {}", side.stat(s)));
        }
        let listeners = harness::admin::admin_page(side.admin, "/listeners");
        facts.push(format!("listed: {}", listeners.lines().any(|l| l.starts_with("udp_main::"))));
        seen.push(facts);
    }
    assert_eq!(seen[0], seen[1], "Envoy (left) and Legate (right) differ");
    assert!(seen[0].iter().any(|f| f == "answers a1 a2 b1"), "{:?}", seen[0]);
    assert!(seen[0].iter().any(|f| f == "upstream sockets: 3 for 4 datagrams"), "{:?}", seen[0]);
}
