//! The connection manager's request header limits, each run through Envoy
//! 1.40 and Legate side by side: `max_request_headers_kb`,
//! `common_http_protocol_options.max_headers_count` and
//! `headers_with_underscores_action`, over HTTP/1.1 raw requests (both
//! proxies must give the same status, body, headers, closing and stats)
//! and over HTTP/2 (the same stream reset, its code, and stats).

mod harness;

use harness::raw::raw_exchange;
use harness::template::{bootstrap, echo_bootstrap, echo_cluster, one_vhost};
use harness::*;
use std::time::Duration;

/// The stats each request may move, compared after every request.
const STATS: &[&str] = &[
    "http.ingress_http.downstream_cx_protocol_error",
    "http.ingress_http.downstream_rq_total",
    "http.ingress_http.downstream_rq_http1_total",
    "http.ingress_http.downstream_rq_completed",
    "http.ingress_http.downstream_rq_active",
    "http.ingress_http.downstream_rq_2xx",
    "http.ingress_http.downstream_rq_4xx",
    "http1.requests_rejected_with_underscores_in_headers",
    "http1.dropped_headers_with_underscores",
];

/// What a response shows: status line, the headers that matter here, the
/// local reply's body (an echo's body is JSON, reduced to whether the
/// upstream saw `seen`), and whether the proxy closed.
type View = (String, [Option<String>; 3], String, bool, Vec<(String, i64)>);

fn view(port: u16, admin: u16, raw: &[u8], seen: &str) -> View {
    // Past Envoy's delayed close (1 s) after a local reply.
    let r = raw_exchange(port, raw, &[], Duration::from_millis(1500));
    let body = match serde_json::from_str::<serde_json::Value>(&r.rest) {
        Ok(v) => format!("upstream saw {seen}: {}", !v["headers"][seen].is_null()),
        Err(_) => r.rest.clone(),
    };
    let stats = STATS.iter().map(|s| (s.to_string(), stat_text(admin, s).unwrap_or(0))).collect();
    (
        r.status.clone(),
        ["connection", "content-length", "content-type"].map(|h| r.headers.get(h).cloned()),
        body,
        r.closed,
        stats,
    )
}

/// A GET with `headers` (name, value) after `host`, asking to close.
fn request(headers: &[(String, String)]) -> Vec<u8> {
    let mut s = String::from("GET /limits HTTP/1.1\r\nhost: example.com\r\nconnection: close\r\n");
    for (k, v) in headers {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    s.push_str("\r\n");
    s.into_bytes()
}

/// Sends each request to both proxies and compares what each shows;
/// returns Envoy's views so the test can check they are what it meant.
fn compare(p: &Pair, cases: &[(&str, Vec<u8>)], seen: &str) -> Vec<View> {
    let mut out = Vec::new();
    for (name, raw) in cases {
        let e = view(p.envoy, p.envoy_admin, raw, seen);
        let l = view(p.legate, p.legate_admin, raw, seen);
        harness::diff::assert_same(name, &e, &l);
        out.push(e);
    }
    out
}

/// One header of `n` bytes of value.
fn big(n: usize) -> Vec<(String, String)> {
    vec![("x-big".into(), "a".repeat(n))]
}

#[test]
fn max_request_headers_kb_over_http1() {
    // The default, 60 KiB, and a small limit under the parser's minimum
    // buffer; far over it, the head outgrows the parser's buffer too.
    let small = "          max_request_headers_kb: 4\n";
    for (extra, under, over) in [("", 50 * 1024, 70 * 1024), (small, 3500, 4200), (small, 3500, 80 * 1024)] {
        let p = start_pair("headers-kb", &echo_bootstrap(extra), &["a"]);
        let cases = [("under the limit", request(&big(under))), ("over the limit", request(&big(over)))];
        let views = compare(&p, &cases, "x-big");
        assert!(views[0].0.contains(" 200"), "Envoy under {extra:?}: {:?}", views[0]);
        assert!(views[1].0.contains(" 431"), "Envoy over {extra:?} by {over}: {:?}", views[1]);
    }
}

#[test]
fn max_headers_count_over_http1() {
    let headers = |n: usize| -> Vec<(String, String)> { (0..n).map(|i| (format!("x-h{i}"), "v".into())).collect() };
    let count = "          common_http_protocol_options: { max_headers_count: 5 }\n";
    // With host and connection: 5 headers, then 6; 100, then 101 by default.
    // Answered by the proxy itself: the echo upstream has a header limit of its own.
    let direct =
        "              - { match: { prefix: \"/\" }, direct_response: { status: 200, body: { inline_string: ok } } }\n";
    for (extra, fits) in [(count, 3), ("", 98)] {
        let template = bootstrap(extra, "", &one_vhost(direct), &echo_cluster());
        let p = start_pair("headers-count", &template, &["a"]);
        let cases = [("at the count", request(&headers(fits))), ("one over", request(&headers(fits + 1)))];
        let views = compare(&p, &cases, "x-h0");
        assert!(views[0].0.contains(" 200"), "Envoy at the count {extra:?}: {:?}", views[0]);
        assert!(views[1].0.contains(" 431"), "Envoy one over {extra:?}: {:?}", views[1]);
    }
}

#[test]
fn headers_with_underscores_action_over_http1() {
    let under = vec![("x_under".to_string(), "1".to_string()), ("x-plain".to_string(), "2".to_string())];
    let plain = vec![("x-plain".to_string(), "2".to_string())];
    for (action, status, kept) in
        [("ALLOW", " 200", true), ("REJECT_REQUEST", " 400", false), ("DROP_HEADER", " 200", false)]
    {
        let extra =
            format!("          common_http_protocol_options: {{ headers_with_underscores_action: {action} }}\n");
        let p = start_pair("headers-underscores", &echo_bootstrap(&extra), &["a"]);
        let cases = [("an underscore", request(&under)), ("none", request(&plain))];
        let views = compare(&p, &cases, "x_under");
        assert!(views[0].0.contains(status), "Envoy {action}: {:?}", views[0]);
        if status == " 200" {
            assert_eq!(views[0].2, format!("upstream saw x_under: {kept}"), "Envoy {action}");
        }
        assert!(views[1].0.contains(" 200"), "Envoy {action} without underscores: {:?}", views[1]);
    }
}

/// One HTTP/2 (prior knowledge) GET with `headers` through curl: its exit
/// code (92 when the stream was reset), the status line it printed and its
/// error (with the reset's code).
fn h2_get(port: u16, headers: &[(String, String)]) -> (Option<i32>, String, String) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sS", "-i", "--http2-prior-knowledge", "--max-time", "10"]);
    for (k, v) in headers {
        cmd.args(["-H", &format!("{k}: {v}")]);
    }
    let out = cmd.arg(format!("http://127.0.0.1:{port}/limits")).output().expect("curl is needed for HTTP/2");
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    (out.status.code(), text.lines().next().unwrap_or_default().trim().to_string(), err)
}

#[test]
fn header_limits_over_http2_reset_the_stream() {
    let extra = "          max_request_headers_kb: 4\n          common_http_protocol_options: { headers_with_underscores_action: REJECT_REQUEST }\n";
    let p = start_pair("headers-h2", &echo_bootstrap(extra), &["a"]);
    let stats = [
        "http.ingress_http.downstream_rq_total",
        "http.ingress_http.downstream_rq_4xx",
        "http.ingress_http.downstream_rq_rx_reset",
        "http.ingress_http.downstream_cx_protocol_error",
        "http2.requests_rejected_with_underscores_in_headers",
        "http2.header_overflow",
    ];
    let cases = [
        ("under the limit", big(3500)),
        ("over the limit", big(4200)),
        ("an underscore", vec![("x_under".to_string(), "1".to_string())]),
    ];
    for (name, headers) in &cases {
        let mut seen = Vec::new();
        for (port, admin) in [(p.envoy, p.envoy_admin), (p.legate, p.legate_admin)] {
            let r = h2_get(port, headers);
            let s: Vec<(&str, i64)> = stats.iter().map(|s| (*s, stat_text(admin, s).unwrap_or(0))).collect();
            seen.push((r, s));
        }
        harness::diff::assert_same(name, &seen[0], &seen[1]);
        let expected = if *name == "under the limit" { Some(0) } else { Some(92) };
        assert_eq!(seen[0].0 .0, expected, "Envoy {name}: {:?}", seen[0]);
    }
}

/// The HTTP/2 cases of a pair: each request's curl result (exit code,
/// status line, error with the reset's code) and `stats` on both proxies,
/// compared; returns Envoy's results.
fn compare_h2(p: &Pair, cases: &[(&str, Vec<(String, String)>)], stats: &[&str]) -> Vec<(Option<i32>, String, String)> {
    let mut out = Vec::new();
    for (name, headers) in cases {
        let mut seen = Vec::new();
        for (port, admin) in [(p.envoy, p.envoy_admin), (p.legate, p.legate_admin)] {
            let r = h2_get(port, headers);
            let s: Vec<(&str, i64)> = stats.iter().map(|s| (*s, stat_text(admin, s).unwrap_or(0))).collect();
            seen.push((r, s));
        }
        harness::diff::assert_same(name, &seen[0], &seen[1]);
        out.push(seen.swap_remove(0).0);
    }
    out
}

#[test]
fn max_headers_count_over_http2_resets_the_stream() {
    // Envoy's HTTP/2 codec counts the pseudo-headers: curl sends four and
    // `user-agent` and `accept`, so 2 more make 8, 3 more one over.
    let headers = |n: usize| -> Vec<(String, String)> { (0..n).map(|i| (format!("x-h{i}"), "v".into())).collect() };
    let direct =
        "              - { match: { prefix: \"/\" }, direct_response: { status: 200, body: { inline_string: ok } } }\n";
    let stats = [
        "http.ingress_http.downstream_rq_total",
        "http.ingress_http.downstream_rq_2xx",
        "http.ingress_http.downstream_rq_4xx",
        "http.ingress_http.downstream_rq_rx_reset",
        "http.ingress_http.downstream_cx_protocol_error",
        "http2.header_overflow",
        "http2.rx_reset",
        "http2.tx_reset",
    ];
    let count = "          common_http_protocol_options: { max_headers_count: 8 }\n";
    for (extra, fits) in [(count, 2), ("", 94)] {
        let template = bootstrap(extra, "", &one_vhost(direct), &echo_cluster());
        let p = start_pair("headers-count-h2", &template, &["a"]);
        let cases = [("at the count", headers(fits)), ("one over", headers(fits + 1))];
        let seen = compare_h2(&p, &cases, &stats);
        assert_eq!(seen[0].0, Some(0), "Envoy at the count {extra:?}: {:?}", seen[0]);
        assert_eq!(seen[1].0, Some(92), "Envoy one over {extra:?}: {:?}", seen[1]);
    }
}

/// Host rewrites from a request header and from the path, with
/// `append_x_forwarded_host`; `cluster_not_found_response_code`; a
/// `total_weight` the weights do not add up to (not read by Envoy 1.40); the
/// connection manager's `via` and `strip_any_host_port`: compared on
/// status, `via` and every header the upstream received.
#[test]
fn host_rewrites_via_and_port_stripping() {
    let routes = r#"              - { match: { prefix: "/hdr" }, route: { cluster: echo, host_rewrite_header: x-new-host, append_x_forwarded_host: true } }
              - { match: { prefix: "/rx" }, route: { cluster: echo, host_rewrite_path_regex: { pattern: { regex: "^/rx/([^/]+)/.*$" }, substitution: "\\1.example" } } }
              - { match: { prefix: "/lit" }, route: { cluster: echo, host_rewrite_literal: lit.example, append_x_forwarded_host: true } }
              - { match: { prefix: "/nf404" }, route: { cluster_header: x-cluster, cluster_not_found_response_code: NOT_FOUND } }
              - { match: { prefix: "/nf500" }, route: { cluster_header: x-cluster, cluster_not_found_response_code: INTERNAL_SERVER_ERROR } }
              - { match: { prefix: "/nf" }, route: { cluster_header: x-cluster } }
              - { match: { prefix: "/w" }, route: { weighted_clusters: { total_weight: 99, clusters: [{ name: echo, weight: 3 }, { name: echo, weight: 3 }] } } }
              - { match: { prefix: "/" }, route: { cluster: echo } }
"#;
    let hcm = "          via: legate-test\n          strip_any_host_port: true\n";
    let template = bootstrap(hcm, "", &one_vhost(routes), &echo_cluster());
    let requests = [
        get("/hdr").host("orig.example:8080").header("x-new-host", "new.example"),
        get("/hdr").host("orig.example").header("x-new-host", "new.example").header("x-forwarded-host", "first"),
        get("/hdr").host("orig.example"),
        get("/hdr").header("x-new-host", "new.example").h2(),
        get("/rx/foo/bar?q=1"),
        get("/rx/nomatch"),
        get("/lit").host("[::1]:80"),
        get("/plain").host("plain.example:443").header("via", "1.1 earlier"),
        get("/nf404").header("x-cluster", "nope"),
        get("/nf404").header("x-cluster", "echo"),
        get("/nf500").header("x-cluster", "nope"),
        get("/nf").header("x-cluster", "nope"),
        get("/nf"),
        get("/w"),
    ];
    let p = harness::diff::compare("headers-host-rewrites", &template, &["a"], &requests);
    p.same_stats(&[
        "cluster_manager.cluster_not_found",
        "http.ingress_http.downstream_rq_4xx",
        "http.ingress_http.downstream_rq_5xx",
    ]);
    // What the comparison saw is what Envoy does: the rewrite, the kept
    // host, the stripped port, `via` both ways, the chosen status.
    let r = harness::diff::send(p.envoy, &requests[0]);
    assert!(r.body.contains("\"new.example\"") && r.body.contains("\"orig.example\""), "{}", r.body);
    assert_eq!(r.header("via"), Some("legate-test"), "{r:?}");
    assert_eq!(harness::diff::send(p.envoy, &requests[8]).status, 404);
    assert_eq!(harness::diff::send(p.envoy, &requests[10]).status, 500);
}

/// `strip_matching_host_port`: the listener's own port is taken off the
/// host, another port kept (each proxy is asked with its own port).
#[test]
fn strip_matching_host_port_as_envoy() {
    let template = bootstrap(
        "          strip_matching_host_port: true\n",
        "",
        &one_vhost(harness::template::ALL_TO_ECHO),
        &echo_cluster(),
    );
    let p = harness::sides::start_pair("headers-strip-matching", &template, &["a"]);
    let seen = |port: u16, host: String| {
        let r = http_request(addr(port), "GET", "/", &host, &[], "").expect("request");
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body));
        v["headers"]["host"].as_str().unwrap_or_default().to_string()
    };
    for (name, port) in [("envoy", p.envoy), ("legate", p.legate)] {
        assert_eq!(seen(port, format!("a.example:{port}")), "a.example", "{name}: its own port is stripped");
        assert_eq!(seen(port, "a.example:1".to_string()), "a.example:1", "{name}: another port is kept");
    }
}
