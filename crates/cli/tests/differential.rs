//! Differential tests: the same bootstrap and the same requests through real
//! Envoy 1.40 and through `legate proxy`; status, the upstream that answered,
//! the headers that matter and the bodies must agree.
//!
//! Each scenario is one #[test], its bootstrap a template (`harness::template`).
//! Legitimate differences are named where they are ignored.

mod harness;

use harness::diff::*;
use harness::template::*;
use harness::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

#[test]
fn basic_prefix_route_http1() {
    let t = echo_bootstrap("");
    compare("basic", &t, &["a"], &[get("/"), get("/some/path?x=1"), get("/x").header("user-agent", "diff-test")]);
}

#[test]
fn h2c_downstream() {
    let t = echo_bootstrap("");
    compare("h2c", &t, &["a"], &[get("/h2").h2(), get("/nothing-special?q=2").h2()]);
}

#[test]
fn path_matchers() {
    let routes = r#"              - { match: { path: "/exact" }, direct_response: { status: 201, body: { inline_string: "exact" } } }
              - { match: { safe_regex: { regex: "/re/[0-9]+" } }, direct_response: { status: 202, body: { inline_string: "regex" } } }
              - { match: { path_separated_prefix: "/sep" }, direct_response: { status: 203, body: { inline_string: "sep" } } }
              - { match: { prefix: "/CI", case_sensitive: false }, direct_response: { status: 204 } }
              - { match: { prefix: "/" }, direct_response: { status: 200, body: { inline_string: "fallback" } } }
"#;
    let t = bootstrap("", "", &one_vhost(routes), &echo_cluster());
    let reqs: Vec<Req> = [
        "/exact",
        "/exact?q=1",
        "/exact/x",
        "/re/123",
        "/re/123/x",
        "/re/abc",
        "/sep",
        "/sep/a",
        "/separate",
        "/ci/x",
        "/CI",
    ]
    .iter()
    .map(|p| get(p))
    .collect();
    compare("paths", &t, &["a"], &reqs);
}

#[test]
fn virtual_host_selection() {
    let vhosts = r#"            - { name: exact, domains: ["api.example.com"], routes: [{ match: { prefix: "/" }, direct_response: { status: 200, body: { inline_string: "exact" } } }] }
            - { name: suffix, domains: ["*.example.com"], routes: [{ match: { prefix: "/" }, direct_response: { status: 200, body: { inline_string: "suffix" } } }] }
            - { name: longer, domains: ["*.b.example.com"], routes: [{ match: { prefix: "/" }, direct_response: { status: 200, body: { inline_string: "longer" } } }] }
            - { name: prefix, domains: ["internal.*"], routes: [{ match: { prefix: "/" }, direct_response: { status: 200, body: { inline_string: "prefix" } } }] }
"#;
    let t = bootstrap("", "", vhosts, &echo_cluster());
    compare(
        "vhosts",
        &t,
        &["a"],
        &[
            get("/").host("api.example.com"),
            get("/").host("API.Example.com"),
            get("/").host("x.example.com"),
            get("/").host("x.b.example.com"),
            get("/").host("internal.corp"),
            get("/").host("nomatch.org"),
        ],
    );
}

#[test]
fn header_matchers() {
    let routes = r#"              - { match: { prefix: "/", headers: [{ name: x-exact, string_match: { exact: "yes" } }] }, direct_response: { status: 200, body: { inline_string: "exact" } } }
              - { match: { prefix: "/", headers: [{ name: x-pre, string_match: { prefix: "ab" } }] }, direct_response: { status: 200, body: { inline_string: "prefix" } } }
              - { match: { prefix: "/", headers: [{ name: x-suf, string_match: { suffix: "yz" } }] }, direct_response: { status: 200, body: { inline_string: "suffix" } } }
              - { match: { prefix: "/", headers: [{ name: x-con, string_match: { contains: "mid" } }] }, direct_response: { status: 200, body: { inline_string: "contains" } } }
              - { match: { prefix: "/", headers: [{ name: x-re, string_match: { safe_regex: { regex: "[0-9]{3}" } } }] }, direct_response: { status: 200, body: { inline_string: "regex" } } }
              - { match: { prefix: "/", headers: [{ name: x-ic, string_match: { exact: "MiXeD", ignore_case: true } }] }, direct_response: { status: 200, body: { inline_string: "ignore-case" } } }
              - { match: { prefix: "/", headers: [{ name: x-present, present_match: true }] }, direct_response: { status: 200, body: { inline_string: "present" } } }
              - { match: { prefix: "/inv", headers: [{ name: x-inv, string_match: { exact: "no" }, invert_match: true }] }, direct_response: { status: 200, body: { inline_string: "inverted" } } }
              - { match: { prefix: "/" }, direct_response: { status: 404, body: { inline_string: "none" } } }
"#;
    let t = bootstrap("", "", &one_vhost(routes), &echo_cluster());
    compare(
        "headers",
        &t,
        &["a"],
        &[
            get("/").header("x-exact", "yes"),
            get("/").header("x-exact", "yess"),
            get("/").header("x-pre", "abc"),
            get("/").header("x-suf", "xyz"),
            get("/").header("x-con", "amidb"),
            get("/").header("x-re", "123"),
            get("/").header("x-re", "1234"),
            get("/").header("x-ic", "mixed"),
            get("/").header("x-present", ""),
            get("/inv").header("x-inv", "yes"),
            get("/inv").header("x-inv", "no"),
            get("/inv"),
            get("/"),
        ],
    );
}

#[test]
fn query_parameter_matchers() {
    let routes = r#"              - { match: { prefix: "/", query_parameters: [{ name: debug, present_match: true }] }, direct_response: { status: 200, body: { inline_string: "debug" } } }
              - { match: { prefix: "/", query_parameters: [{ name: v, string_match: { exact: "2" } }] }, direct_response: { status: 200, body: { inline_string: "v2" } } }
              - { match: { prefix: "/" }, direct_response: { status: 200, body: { inline_string: "plain" } } }
"#;
    let t = bootstrap("", "", &one_vhost(routes), &echo_cluster());
    compare(
        "query",
        &t,
        &["a"],
        &[get("/?debug"), get("/?debug=1"), get("/?v=2"), get("/?v=3"), get("/?a=1&v=2"), get("/")],
    );
}

#[test]
fn weighted_and_header_clusters() {
    let routes = r#"              - match: { prefix: "/w" }
                route: { weighted_clusters: { clusters: [{ name: one, weight: 100 }, { name: two, weight: 0 }] } }
              - { match: { prefix: "/h" }, route: { cluster_header: x-cluster } }
"#;
    let clusters = cluster("one", &["{UP_a}"]) + &cluster("two", &["{UP_b}"]);
    let t = bootstrap("", "", &one_vhost(routes), &clusters);
    let pair = compare(
        "clusters",
        &t,
        &["a", "b"],
        &[get("/w"), get("/w"), get("/h").header("x-cluster", "two"), get("/h").header("x-cluster", "nope"), get("/h")],
    );
    drop(pair);
    // 50/50: both spread within a loose band over 200 requests.
    let routes = "              - match: { prefix: \"/\" }\n                route: { weighted_clusters: { clusters: [{ name: one, weight: 50 }, { name: two, weight: 50 }] } }\n";
    let t = bootstrap("", "", &one_vhost(routes), &clusters);
    let pair = start_pair("weighted-5050", &t, &["a", "b"]);
    for port in [pair.envoy, pair.legate] {
        let a = (0..200).filter(|_| send(port, &get("/")).header("x-upstream") == Some("a")).count();
        assert!((60..=140).contains(&a), "50/50 split sent {a} of 200 to one side (port {port})");
    }
}

#[test]
fn path_and_host_rewrites() {
    let routes = r#"              - { match: { prefix: "/api/" }, route: { cluster: echo, prefix_rewrite: "/v2/" } }
              - { match: { prefix: "/strip" }, route: { cluster: echo, prefix_rewrite: "/" } }
              - match: { prefix: "/re/" }
                route: { cluster: echo, regex_rewrite: { pattern: { regex: "^/re/([a-z]+)/([0-9]+)" }, substitution: "/\\2/\\1" } }
              - { match: { prefix: "/lit" }, route: { cluster: echo, host_rewrite_literal: rewritten.example } }
              - { match: { prefix: "/auto" }, route: { cluster: dns, auto_host_rewrite: true } }
"#;
    let clusters = echo_cluster()
        + "  - { name: dns, type: STRICT_DNS, dns_lookup_family: V4_ONLY, connect_timeout: 1s, load_assignment: { cluster_name: dns, endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: localhost, port_value: {UP_a} } } } }] }] } }\n";
    let t = bootstrap("", "", &one_vhost(routes), &clusters);
    compare(
        "rewrites",
        &t,
        &["a"],
        &[
            get("/api/users?id=1"),
            get("/strip"),
            get("/stripped/x"),
            get("/re/abc/123?q"),
            get("/lit/x"),
            get("/auto/x"),
        ],
    );
}

#[test]
fn redirects() {
    let routes = r#"              - { match: { prefix: "/https" }, redirect: { https_redirect: true } }
              - { match: { prefix: "/host" }, redirect: { host_redirect: other.example } }
              - { match: { prefix: "/port" }, redirect: { port_redirect: 8443 } }
              - { match: { prefix: "/path" }, redirect: { path_redirect: "/new/place" } }
              - { match: { prefix: "/prefix" }, redirect: { prefix_rewrite: "/moved", response_code: FOUND } }
              - { match: { prefix: "/see" }, redirect: { path_redirect: "/x", response_code: SEE_OTHER } }
              - { match: { prefix: "/temp" }, redirect: { host_redirect: t.example, response_code: TEMPORARY_REDIRECT } }
              - { match: { prefix: "/perm" }, redirect: { scheme_redirect: https, host_redirect: p.example, response_code: PERMANENT_REDIRECT } }
              - { match: { prefix: "/strip" }, redirect: { prefix_rewrite: "/s", strip_query: true } }
"#;
    let t = bootstrap("", "", &one_vhost(routes), &echo_cluster());
    let reqs: Vec<Req> = [
        "/https/a?b=1",
        "/host/x",
        "/port/y",
        "/path/z?q=1",
        "/prefix/p?k",
        "/see",
        "/temp/a",
        "/perm/b",
        "/strip/c?d=e",
    ]
    .iter()
    .map(|p| get(p).host("example.com:8080"))
    .collect();
    // Over HTTP/2 a bodiless redirect carries no content-length at all.
    let reqs: Vec<Req> = reqs.iter().cloned().chain(reqs.iter().map(|r| r.clone().h2())).collect();
    compare("redirects", &t, &["a"], &reqs);
}

#[test]
fn direct_responses() {
    let routes = r#"              - { match: { prefix: "/body" }, direct_response: { status: 418, body: { inline_string: "teapot" } } }
              - { match: { prefix: "/empty" }, direct_response: { status: 204 } }
              - { match: { prefix: "/unavailable" }, direct_response: { status: 503 } }
"#;
    let t = bootstrap("", "", &one_vhost(routes), &echo_cluster());
    compare(
        "direct",
        &t,
        &["a"],
        &[
            get("/body"),
            get("/empty"),
            get("/unavailable"),
            // HTTP/2: no content-length on a bodiless reply.
            get("/body").h2(),
            get("/empty").h2(),
            get("/unavailable").h2(),
            // A reply sent before the request body was read closes an
            // HTTP/1.1 connection; one to a bodiless request keeps it.
            get("/body").keep_alive(),
            get("/body").post("unread body").keep_alive(),
        ],
    );
}

#[test]
fn request_header_mutations_at_three_levels() {
    let route_config_extra = r#"            request_headers_to_add: [{ header: { key: x-global, value: g }, append_action: OVERWRITE_IF_EXISTS_OR_ADD }]
            request_headers_to_remove: [x-drop-global]
"#;
    let vhosts = r#"            - name: all
              domains: ["*"]
              request_headers_to_add:
              - { header: { key: x-vhost, value: v }, append_action: ADD_IF_ABSENT }
              - { header: { key: x-multi, value: vhost } }
              request_headers_to_remove: [x-drop-vhost]
              routes:
              - match: { prefix: "/" }
                route: { cluster: echo }
                request_headers_to_add:
                - { header: { key: x-route, value: r } }
                - { header: { key: x-multi, value: route } }
                - { header: { key: x-client, value: replaced }, append_action: OVERWRITE_IF_EXISTS }
                - { header: { key: x-absent, value: never }, append_action: OVERWRITE_IF_EXISTS }
                - { header: { key: x-client-addr, value: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%" } }
                - { header: { key: x-copied, value: "%REQ(x-foo)%" } }
                - { header: { key: x-upstream-addr, value: "%UPSTREAM_REMOTE_ADDRESS%" } }
                - { header: { key: x-host, value: "%HOSTNAME%" } }
                request_headers_to_remove: [x-drop-route]
"#;
    let t = bootstrap("", route_config_extra, vhosts, &echo_cluster());
    compare(
        "request-headers",
        &t,
        &["a"],
        &[
            get("/"),
            get("/")
                .header("x-route", "client")
                .header("x-vhost", "client")
                .header("x-global", "client")
                .header("x-client", "orig")
                .header("x-foo", "bar")
                .header("x-drop-route", "1")
                .header("x-drop-vhost", "1")
                .header("x-drop-global", "1"),
        ],
    );
}

#[test]
fn response_header_mutations_at_three_levels() {
    let route_config_extra = r#"            response_headers_to_add: [{ header: { key: x-global, value: g } }]
            response_headers_to_remove: [x-upstream-removed]
"#;
    let vhosts = r#"            - name: all
              domains: ["*"]
              response_headers_to_add: [{ header: { key: x-vhost, value: v } }, { header: { key: x-multi, value: vhost } }]
              routes:
              - match: { prefix: "/" }
                route: { cluster: echo }
                response_headers_to_add:
                - { header: { key: x-route, value: r } }
                - { header: { key: x-multi, value: route } }
                - { header: { key: x-upstream, value: overwritten }, append_action: OVERWRITE_IF_EXISTS_OR_ADD }
                - { header: { key: x-resp, value: "%UPSTREAM_REMOTE_ADDRESS% %RESPONSE_CODE% %REQ(x-foo)%" } }
              - match: { prefix: "/direct" }
                direct_response: { status: 200, body: { inline_string: "d" } }
"#;
    let t = bootstrap("", route_config_extra, vhosts, &echo_cluster());
    compare("response-headers", &t, &["a"], &[get("/"), get("/direct")]);
}

#[test]
fn forwarded_headers_edge_proxy() {
    let hcm = "          use_remote_address: true\n";
    let t = echo_bootstrap(hcm);
    compare(
        "xff-edge",
        &t,
        &["a"],
        &[
            get("/"),
            get("/").header("x-forwarded-for", "1.2.3.4"),
            get("/").header("x-forwarded-proto", "https"),
            get("/").header("x-request-id", "keep-me"),
            // Headers a client may not set on an edge request.
            get("/")
                .header("x-envoy-original-path", "/spoofed")
                .header("x-envoy-decorator-operation", "op")
                .header("x-envoy-downstream-service-cluster", "c")
                .header("x-envoy-downstream-service-node", "n")
                .header("x-envoy-internal", "true"),
        ],
    );
}

#[test]
fn forwarded_headers_trusted_hops() {
    let hcm = "          use_remote_address: true\n          xff_num_trusted_hops: 1\n";
    let t = echo_bootstrap(hcm);
    compare(
        "xff-hops",
        &t,
        &["a"],
        &[
            get("/").header("x-forwarded-for", "9.9.9.9, 10.0.0.1"),
            get("/"),
            // A trusted hop's x-forwarded-proto is kept, whatever its value.
            get("/").header("x-forwarded-for", "192.168.1.1").header("x-forwarded-proto", "https"),
            get("/").header("x-forwarded-for", "192.168.1.1").header("x-forwarded-proto", "gopher"),
        ],
    );
}

#[test]
fn forwarded_headers_internal_proxy() {
    let t = echo_bootstrap("");
    compare(
        "xff-internal",
        &t,
        &["a"],
        &[
            get("/").header("x-forwarded-for", "1.2.3.4").header("x-forwarded-proto", "https"),
            get("/").header("x-request-id", "given"),
            // Not an edge request: these pass (x-envoy-internal never does).
            get("/")
                .header("x-envoy-original-path", "/from-a-hop")
                .header("x-envoy-decorator-operation", "op")
                .header("x-envoy-downstream-service-cluster", "c")
                .header("x-envoy-internal", "true"),
        ],
    );
}

#[test]
fn local_replies() {
    let routes = r#"              - { match: { prefix: "/empty" }, route: { cluster: empty } }
              - { match: { prefix: "/dead" }, route: { cluster: dead } }
              - { match: { prefix: "/delay" }, route: { cluster: echo, timeout: 0.3s } }
              - { match: { prefix: "/idle" }, route: { cluster: echo, idle_timeout: 0.3s } }
              - { match: { prefix: "/ok" }, route: { cluster: echo } }
"#;
    let clusters = echo_cluster() + "  - { name: empty, connect_timeout: 1s }\n" + &cluster("dead", &["{CLOSED}"]);
    let t = bootstrap("", "", &one_vhost(routes), &clusters);
    compare(
        "local-replies",
        &t,
        &["a"],
        &[
            get("/empty"),
            get("/dead"),
            get("/delay/2000"),
            get("/nothing-here"),
            get("/ok/status/503"),
            // A route's idle_timeout replaces the stream idle timeout: 408.
            get("/idle/delay/2000"),
        ],
    );
}

#[test]
fn router_local_replies_carry_response_header_mutations() {
    let route_config_extra = "            response_headers_to_add: [{ header: { key: x-global, value: g } }]\n";
    let vhosts = r#"            - name: all
              domains: ["*"]
              response_headers_to_add: [{ header: { key: x-vhost, value: v } }]
              routes:
              - { match: { prefix: "/empty" }, route: { cluster: empty }, response_headers_to_add: [{ header: { key: x-route, value: r } }] }
              - { match: { prefix: "/dead" }, route: { cluster: dead }, response_headers_to_add: [{ header: { key: x-route, value: r } }] }
              - { match: { prefix: "/delay" }, route: { cluster: echo, timeout: 0.3s }, response_headers_to_add: [{ header: { key: x-route, value: r } }] }
              - { match: { prefix: "/nocluster" }, route: { cluster_header: x-cluster }, response_headers_to_add: [{ header: { key: x-route, value: r } }] }
"#;
    let clusters = echo_cluster() + "  - { name: empty, connect_timeout: 1s }\n" + &cluster("dead", &["{CLOSED}"]);
    let t = bootstrap("", route_config_extra, vhosts, &clusters);
    compare(
        "router-local-replies",
        &t,
        &["a"],
        &[
            get("/empty"),
            get("/dead"),
            get("/delay/2000"),
            get("/nocluster").header("x-cluster", "unknown"),
            // The connection manager's own 404 has no route to take headers from.
            get("/unrouted"),
            get("/empty").h2(),
            get("/delay/2000").h2(),
            // Answered before the request body was read: the connection closes.
            get("/empty").post("pending").keep_alive(),
            get("/empty").keep_alive(),
        ],
    );
}

#[test]
fn no_virtual_host_match_is_404() {
    let vhosts = "            - { name: only, domains: [\"only.example\"], routes: [{ match: { prefix: \"/\" }, route: { cluster: echo } }] }\n";
    let t = bootstrap("", "", vhosts, &echo_cluster());
    compare("no-vhost", &t, &["a"], &[get("/").host("other.example"), get("/").host("only.example")]);
}

#[test]
fn round_robin_and_weights_and_priorities() {
    let clusters = cluster("rr", &["{UP_a}", "{UP_b}", "{UP_c}"])
        + "  - { name: weighted, connect_timeout: 1s, load_assignment: { cluster_name: weighted, endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: {UP_a} } } }, load_balancing_weight: 1 }, { endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: {UP_b} } } }, load_balancing_weight: 3 }] }] } }\n"
        + "  - { name: prio, connect_timeout: 1s, load_assignment: { cluster_name: prio, endpoints: [{ priority: 0, lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: {UP_c} } } } }] }, { priority: 1, lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: {UP_a} } } } }] }] } }\n";
    let routes = r#"              - { match: { prefix: "/rr" }, route: { cluster: rr } }
              - { match: { prefix: "/weighted" }, route: { cluster: weighted } }
              - { match: { prefix: "/prio" }, route: { cluster: prio } }
"#;
    let t = bootstrap("", "", &one_vhost(routes), &clusters);
    let pair = start_pair("lb", &t, &["a", "b", "c"]);
    let counts = |port: u16, path: &str, n: usize| {
        let mut m = BTreeMap::new();
        for _ in 0..n {
            *m.entry(send(port, &get(path)).header("x-upstream").unwrap_or("-").to_string()).or_insert(0) += 1;
        }
        m
    };
    for (path, n) in [("/rr", 300), ("/weighted", 400), ("/prio", 50)] {
        let e = counts(pair.envoy, path, n);
        let l = counts(pair.legate, path, n);
        assert_eq!(e, l, "{path}: distribution over upstreams differs (envoy {e:?}, legate {l:?})");
    }
}

#[test]
fn least_request_and_random_spread() {
    let clusters = "  - { name: lr, lb_policy: LEAST_REQUEST, connect_timeout: 1s, load_assignment: { cluster_name: lr, endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: {UP_a} } } } }, { endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: {UP_b} } } } }] }] } }\n  - { name: rnd, lb_policy: RANDOM, connect_timeout: 1s, load_assignment: { cluster_name: rnd, endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: {UP_a} } } } }, { endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: {UP_b} } } } }] }] } }\n";
    let routes = "              - { match: { prefix: \"/lr\" }, route: { cluster: lr } }\n              - { match: { prefix: \"/rnd\" }, route: { cluster: rnd } }\n";
    let t = bootstrap("", "", &one_vhost(routes), clusters);
    let pair = start_pair("lr-random", &t, &["a", "b"]);
    for port in [pair.envoy, pair.legate] {
        for path in ["/lr", "/rnd"] {
            let a = (0..200).filter(|_| send(port, &get(path)).header("x-upstream") == Some("a")).count();
            assert!((70..=130).contains(&a), "{path} on port {port}: {a} of 200 to one of two hosts");
        }
    }
}

#[test]
fn upstream_http2() {
    let clusters = format!(
        "  - name: h2\n    connect_timeout: 1s\n{H2_BLOCK}    load_assignment: {{ cluster_name: h2, endpoints: [{{ lb_endpoints: [{}] }}] }}\n",
        endpoint("{UP_a}")
    );
    let t = bootstrap(
        "",
        "",
        &one_vhost("              - { match: { prefix: \"/\" }, route: { cluster: h2 } }\n"),
        &clusters,
    );
    compare("upstream-h2", &t, &["a"], &[get("/grpc-like"), get("/x").h2()]);
}

#[test]
fn server_header_options() {
    let t = echo_bootstrap("          server_name: my-proxy\n");
    compare("server-name", &t, &["a"], &[get("/")]);
    let t = bootstrap(
        "          server_header_transformation: PASS_THROUGH\n",
        "",
        &one_vhost("              - { match: { prefix: \"/\" }, direct_response: { status: 200 } }\n"),
        &echo_cluster(),
    );
    compare("server-pass-through", &t, &["a"], &[get("/")]);
}

#[test]
fn protocol_errors() {
    let t = echo_bootstrap("");
    let pair = start_pair("protocol-errors", &t, &["a"]);
    for (name, raw) in [
        ("no host", "GET / HTTP/1.1\r\n\r\n"),
        ("HTTP/1.0", "GET / HTTP/1.0\r\n\r\n"),
        ("header without colon", "GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n"),
        ("bad method", "G@T / HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("garbage request line", "FOO BAR\r\n\r\n"),
        ("HTTP/1.7", "GET / HTTP/1.7\r\nHost: a\r\n\r\n"),
        ("HTTP/2.0 request line", "GET / HTTP/2.0\r\nHost: a\r\n\r\n"),
        ("HTTP/1.12", "GET / HTTP/1.12\r\nHost: a\r\n\r\n"),
        (
            "content-length and transfer-encoding",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        ),
        (
            "transfer-encoding and content-length",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        ),
    ] {
        let status = |port: u16| {
            let text = harness::raw::first_read(port, raw);
            let first = text.lines().next().unwrap_or_default().to_string();
            let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
            let close = text.to_ascii_lowercase().contains("connection: close");
            (first, body, close)
        };
        assert_eq!(status(pair.envoy), status(pair.legate), "{name}");
    }
}

#[test]
fn access_log_lines() {
    let hcm = r#"          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {LOG}
              log_format:
                text_format_source:
                  inline_string: "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL% %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %UPSTREAM_CLUSTER% %REQ(X-TEST):4%\n"
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {JSONLOG}
              log_format:
                json_format: { method: "%REQ(:METHOD)%", code: "%RESPONSE_CODE%", flags: "%RESPONSE_FLAGS%", cluster: "%UPSTREAM_CLUSTER%", path: "%REQ(:PATH)%" }
"#;
    let routes = r#"              - { match: { prefix: "/api" }, route: { cluster: echo, prefix_rewrite: "/" } }
              - { match: { prefix: "/empty" }, route: { cluster: empty } }
"#;
    let clusters = echo_cluster() + "  - { name: empty, connect_timeout: 1s }\n";
    let logs = TempDir::new("diff-logs");
    let elog = logs.path().join("envoy.log");
    let llog = logs.path().join("legate.log");
    let base = bootstrap(hcm, "", &one_vhost(routes), &clusters);
    // One template, but each proxy writes its own files: render LOG per proxy
    // through the ADMIN port, which differs.
    let t = base
        .replace("{LOG}", &format!("{}/access-{{ADMIN}}.log", logs.path().display()))
        .replace("{JSONLOG}", &format!("{}/json-{{ADMIN}}.log", logs.path().display()));
    let pair = start_pair("access-log", &t, &["a"]);
    let reqs =
        [get("/api/x").header("x-test", "abcdefgh"), get("/api/y").post("hello world"), get("/empty"), get("/nothing")];
    for r in &reqs {
        send(pair.envoy, r);
        send(pair.legate, r);
    }
    let read = |kind: &str, admin: u16| wait_log(&logs.path().join(format!("{kind}-{admin}.log")), reqs.len());
    assert_eq!(read("access", pair.envoy_admin), read("access", pair.legate_admin), "text access log lines");
    let json = |admin| -> Vec<Value> {
        read("json", admin).lines().map(|l| serde_json::from_str(l).expect("json log line")).collect()
    };
    assert_eq!(json(pair.envoy_admin), json(pair.legate_admin), "JSON access log lines");
    drop((elog, llog));
}

#[test]
fn stats_agree() {
    let routes = r#"              - { match: { prefix: "/ok" }, route: { cluster: echo } }
              - { match: { prefix: "/empty" }, route: { cluster: empty } }
              - { match: { prefix: "/dead" }, route: { cluster: dead } }
              - { match: { prefix: "/redir" }, redirect: { host_redirect: elsewhere.example } }
              - { match: { prefix: "/direct" }, direct_response: { status: 200 } }
"#;
    let clusters = echo_cluster() + "  - { name: empty, connect_timeout: 1s }\n" + &cluster("dead", &["{CLOSED}"]);
    let t = bootstrap("", "", &one_vhost(routes), &clusters);
    let pair = start_pair("stats", &t, &["a"]);
    let reqs = [
        get("/ok"),
        get("/ok/status/404"),
        get("/ok/status/503"),
        get("/empty"),
        get("/none"),
        get("/ok"),
        get("/dead"),
        get("/dead"),
        get("/redir"),
        get("/direct"),
    ];
    for r in &reqs {
        send(pair.envoy, r);
        send(pair.legate, r);
    }
    let names = [
        "http.ingress_http.downstream_rq_total",
        "http.ingress_http.downstream_rq_2xx",
        "http.ingress_http.downstream_rq_4xx",
        "http.ingress_http.downstream_rq_5xx",
        "http.ingress_http.no_route",
        "cluster.echo.upstream_rq_total",
        "cluster.echo.upstream_rq_200",
        "cluster.echo.upstream_rq_2xx",
        // Created on first use: present only once such a response was seen.
        "cluster.echo.upstream_rq_3xx",
        "cluster.echo.upstream_rq_4xx",
        "cluster.empty.upstream_rq_2xx",
        "cluster.dead.upstream_rq_2xx",
        "http.ingress_http.downstream_rq_1xx",
        "http.ingress_http.downstream_rq_3xx",
        "cluster.echo.upstream_rq_404",
        "cluster.echo.upstream_rq_503",
        "cluster.echo.upstream_cx_total",
        "cluster.echo.membership_total",
        "cluster.echo.membership_healthy",
        "cluster.empty.membership_total",
        "cluster.empty.upstream_cx_none_healthy",
        "cluster.empty.upstream_rq_503",
        "cluster.dead.upstream_rq_total",
        "cluster.dead.upstream_rq_503",
        "cluster.dead.upstream_cx_connect_fail",
        "cluster.dead.upstream_rq_pending_failure_eject",
        "cluster.dead.upstream_rq_completed",
        "cluster.echo.upstream_rq_completed",
        "cluster.echo.external.upstream_rq_200",
        "cluster.echo.external.upstream_rq_2xx",
        "cluster.echo.external.upstream_rq_404",
        "cluster.echo.external.upstream_rq_5xx",
        "cluster.echo.external.upstream_rq_completed",
        "cluster.empty.external.upstream_rq_503",
        "cluster.dead.external.upstream_rq_503",
        "cluster.dead.external.upstream_rq_completed",
        "http.ingress_http.rq_direct_response",
        "http.ingress_http.rq_redirect",
        "http.ingress_http.rq_total",
    ];
    let stats = |admin: u16| -> BTreeMap<String, i64> {
        // Counters settle once responses are done.
        std::thread::sleep(Duration::from_millis(200));
        json_stats(admin).into_iter().filter(|(n, _)| names.contains(&n.as_str())).collect()
    };
    assert_eq!(stats(pair.envoy_admin), stats(pair.legate_admin), "stat values");
    for admin in [pair.envoy_admin, pair.legate_admin] {
        let prom = admin_page(admin, "/stats/prometheus");
        assert!(prom.contains("envoy_cluster_upstream_rq_total{envoy_cluster_name=\"echo\"}"), "prometheus on {admin}");
    }
}

#[test]
fn health_check_filter_and_healthcheck_fail() {
    let hcm = r#"          http_filters:
          - name: envoy.filters.http.health_check
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck
              pass_through_mode: false
              headers: [{ name: ":path", string_match: { exact: "/healthz" } }]
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
"#;
    let routes = "              - { match: { prefix: \"/\", headers: [{ name: \":method\", string_match: { exact: \"POST\" } }] }, direct_response: { status: 201 } }\n              - { match: { prefix: \"/\" }, route: { cluster: echo } }\n";
    // The bootstrap helper writes a router-only filter list; this scenario
    // replaces it with the health check in front of the router.
    let t = bootstrap("", "", &one_vhost(routes), &echo_cluster());
    let t = with_filters(t, hcm);
    assert!(t.contains("health_check"), "template replacement failed");
    let pair = compare("health-check", &t, &["a"], &[get("/healthz"), get("/healthz?x=1"), get("/app")]);
    let post = |port: u16, path: &str| http_request(addr(port), "POST", path, "admin", &[], "").expect("admin post");
    for admin in [pair.envoy_admin, pair.legate_admin] {
        assert_eq!(post(admin, "/healthcheck/fail").status, 200);
    }
    for r in [get("/healthz"), get("/app")] {
        let (e, l) = (view(&send(pair.envoy, &r)), view(&send(pair.legate, &r)));
        assert!(diff(&e, &l).is_empty(), "after /healthcheck/fail, {}:\n{}", r.path, diff(&e, &l).join("\n"));
    }
    for admin in [pair.envoy_admin, pair.legate_admin] {
        assert_eq!(post(admin, "/healthcheck/ok").status, 200);
    }
    let (e, l) = (view(&send(pair.envoy, &get("/healthz"))), view(&send(pair.legate, &get("/healthz"))));
    assert!(diff(&e, &l).is_empty() && e.get("status").map(String::as_str) == Some("200"), "{e:?} {l:?}");
    // A route matching the :method pseudo-header.
    let p = get("/x").post("");
    let (e, l) = (view(&send(pair.envoy, &p)), view(&send(pair.legate, &p)));
    assert!(diff(&e, &l).is_empty() && e.get("status").map(String::as_str) == Some("201"), "{e:?} {l:?}");
}

#[test]
fn fault_injection_by_header() {
    let filters = r#"          http_filters:
          - name: envoy.filters.http.fault
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
              abort: { header_abort: {}, percentage: { numerator: 100 } }
              delay: { header_delay: {}, percentage: { numerator: 100 } }
          - name: envoy.filters.http.fault
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
              abort: { http_status: 503, percentage: { numerator: 0 } }
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
"#;
    let t = echo_bootstrap("");
    let t = with_filters(t, filters);
    assert!(t.contains("HTTPFault"), "template replacement failed");
    let pair = compare(
        "fault",
        &t,
        &["a"],
        &[
            get("/plain"),
            get("/abort").header("x-envoy-fault-abort-request", "418"),
            get("/bad").header("x-envoy-fault-abort-request", "99"),
        ],
    );
    for port in [pair.envoy, pair.legate] {
        let started = std::time::Instant::now();
        let r = send(port, &get("/slow").header("x-envoy-fault-delay-request", "300"));
        assert_eq!(r.status, 200);
        assert!(
            started.elapsed() >= Duration::from_millis(290),
            "delay not applied on port {port}: {:?}",
            started.elapsed()
        );
    }
    pair.same_stats(&["http.ingress_http.fault.aborts_injected", "http.ingress_http.fault.delays_injected"]);
}

#[test]
fn local_rate_limit() {
    let filters = r#"          http_filters:
          - name: envoy.filters.http.local_ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
              stat_prefix: rl
              token_bucket: { max_tokens: 3, tokens_per_fill: 3, fill_interval: 60s }
              filter_enabled: { runtime_key: rl_enabled, default_value: { numerator: 100, denominator: HUNDRED } }
              filter_enforced: { runtime_key: rl_enforced, default_value: { numerator: 100, denominator: HUNDRED } }
              response_headers_to_add: [{ append_action: OVERWRITE_IF_EXISTS_OR_ADD, header: { key: x-rl, value: limited } }]
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
"#;
    let t = echo_bootstrap("");
    let t = with_filters(t, filters);
    assert!(t.contains("LocalRateLimit"), "template replacement failed");
    // Three tokens for the minute: the fourth and fifth requests are limited.
    compare("local-ratelimit", &t, &["a"], &[get("/1"), get("/2"), get("/3"), get("/4"), get("/5")]);
}

#[test]
fn retries() {
    let routes = r#"              - match: { prefix: "/mixed" }
                route:
                  cluster: mixed
                  retry_policy:
                    retry_on: connect-failure
                    num_retries: 3
                    retry_host_predicate: [{ name: envoy.retry_host_predicates.previous_hosts, typed_config: { "@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate } }]
              - match: { prefix: "/always" }
                route: { cluster: echo, retry_policy: { retry_on: 5xx, num_retries: 2, retry_back_off: { base_interval: 0.01s } } }
              - match: { prefix: "/codes" }
                route: { cluster: echo, retry_policy: { retry_on: retriable-status-codes, retriable_status_codes: [418], num_retries: 1 } }
              - match: { prefix: "/pertry" }
                route: { cluster: echo, timeout: 5s, retry_policy: { retry_on: 5xx, num_retries: 1, per_try_timeout: 0.2s } }
"#;
    let clusters = echo_cluster() + &cluster("mixed", &["{CLOSED}", "{UP_a}"]);
    let t = bootstrap("", "", &one_vhost(routes), &clusters);
    let pair = compare(
        "retries",
        &t,
        &["a"],
        &[
            get("/always/status/503"),
            get("/always/status/200"),
            get("/codes/status/418"),
            get("/codes/status/404"),
            // x-envoy-expected-rq-timeout-ms is the shorter per-try timeout,
            // on the first attempt and on the retry.
            get("/pertry/status/200"),
            get("/pertry/status/503"),
        ],
    );
    // A dead endpoint beside a live one: every request succeeds through retries.
    for port in [pair.envoy, pair.legate] {
        for i in 0..20 {
            let r = send(port, &get("/mixed/x"));
            assert_eq!((r.status, r.header("x-upstream")), (200, Some("a")), "request {i} on port {port}");
        }
    }
    pair.same_stats(&[
        "cluster.echo.upstream_rq_retry",
        "cluster.echo.upstream_rq_503",
        "cluster.echo.upstream_rq_418",
        "cluster.echo.upstream_rq_total",
    ]);
}

#[test]
fn active_health_checks() {
    let hc = "    health_checks: [{ timeout: 0.5s, interval: 0.2s, unhealthy_threshold: 1, healthy_threshold: 1, http_health_check: { path: /health } }]\n";
    let clusters = format!(
        "  - name: checked\n    connect_timeout: 0.5s\n{hc}    load_assignment: {{ cluster_name: checked, endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{CLOSED}} }} }} }} }}, {{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{UP_a}} }} }} }} }}] }}] }}\n"
    );
    let t = bootstrap(
        "",
        "",
        &one_vhost("              - { match: { prefix: \"/\" }, route: { cluster: checked } }\n"),
        &clusters,
    );
    let pair = start_pair("health", &t, &["a"]);
    // The closed endpoint fails its checks; every request goes to the live one.
    for port in [pair.envoy, pair.legate] {
        wait_for("the dead host to be ejected", Duration::from_secs(10), || {
            (0..6).all(|_| send(port, &get("/x")).header("x-upstream") == Some("a")).then_some(())
        });
    }
    for admin in [pair.envoy_admin, pair.legate_admin] {
        let body = admin_page(admin, "/clusters");
        assert!(body.contains("health_flags::/failed_active_hc"), "port {admin}:\n{body}");
        assert!(body.contains("health_flags::healthy"), "port {admin}:\n{body}");
    }
}

#[test]
fn outlier_detection_consecutive_5xx() {
    let dir = TempDir::new("outlier-bad");
    let (_bad, bad_port) = echo_with("bad", dir.path(), &["--status", "503"]);
    let clusters = format!(
        "  - name: od\n    connect_timeout: 1s\n    outlier_detection: {{ consecutive_5xx: 3, interval: 10s, base_ejection_time: 30s, max_ejection_percent: 50 }}\n    load_assignment: {{ cluster_name: od, endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{UP_a}} }} }} }} }}, {{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {bad_port} }} }} }} }}] }}] }}\n"
    );
    let t = bootstrap(
        "",
        "",
        &one_vhost("              - { match: { prefix: \"/\" }, route: { cluster: od } }\n"),
        &clusters,
    );
    let pair = start_pair("outlier", &t, &["a"]);
    // Envoy ejects on its main thread after a worker reports the third 5xx:
    // a short pause between requests lets that land before the next pick
    // even on a busy machine (without it Envoy was seen to send 6 requests
    // to the bad host under a loaded CI run).
    let sequence = |port: u16| -> Vec<String> {
        (0..14)
            .map(|_| {
                let upstream = send(port, &get("/x")).header("x-upstream").unwrap_or("-").to_string();
                std::thread::sleep(Duration::from_millis(50));
                upstream
            })
            .collect()
    };
    let (e, l) = (sequence(pair.envoy), sequence(pair.legate));
    let bad = |s: &[String]| s.iter().filter(|u| *u == "bad").count();
    assert_eq!(bad(&e), 3, "Envoy: {e:?}");
    assert_eq!(bad(&l), 3, "Legate (Envoy saw {e:?}): {l:?}");
    assert!(l[8..].iter().all(|u| u == "a"), "after the ejection everything goes to the good host: {l:?}");
    pair.same_stats(&[
        "cluster.od.outlier_detection.ejections_enforced_total",
        "cluster.od.outlier_detection.ejections_active",
    ]);
    for admin in [pair.envoy_admin, pair.legate_admin] {
        let body = admin_page(admin, "/clusters");
        assert!(body.contains("health_flags::/failed_outlier_check"), "port {admin}:\n{body}");
    }
}

#[test]
fn circuit_breakers() {
    let routes = r#"              - { match: { prefix: "/rq" }, route: { cluster: rq_limited } }
              - { match: { prefix: "/cx" }, route: { cluster: cx_limited } }
"#;
    let limited = |name: &str, thresholds: &str| {
        cluster_with(name, &["{UP_a}"], &format!("circuit_breakers: {{ thresholds: [{thresholds}] }}, "))
    };
    let clusters = limited("rq_limited", "{ max_requests: 1, track_remaining: true }")
        + &limited("cx_limited", "{ max_connections: 1, max_pending_requests: 1 }");
    let t = bootstrap("", "", &one_vhost(routes), &clusters);
    let pair = start_pair("circuit-breakers", &t, &["a"]);
    let outcome = |port: u16, paths: &[&str]| -> Vec<BTreeMap<String, String>> {
        staggered(port, paths).iter().map(view).collect()
    };
    // max_requests 1: the second request while the first is in flight
    // overflows (503 UO, x-envoy-overloaded).
    let rq = ["/rq/delay/600", "/rq/delay/10"];
    let e = outcome(pair.envoy, &rq);
    let l = outcome(pair.legate, &rq);
    assert_eq!(e[1].get("status").map(String::as_str), Some("503"), "Envoy's overflow: {e:?}");
    for (i, (a, b)) in e.iter().zip(&l).enumerate() {
        let d = diff(a, b);
        assert!(d.is_empty(), "max_requests, request {i}: Legate differs from Envoy:\n{}", d.join("\n"));
    }
    // One connection, one pending request: the second waits for the first's
    // connection, the third overflows.
    let cx = ["/cx/delay/600", "/cx/delay/10", "/cx/delay/10"];
    let e = outcome(pair.envoy, &cx);
    let l = outcome(pair.legate, &cx);
    let statuses = |v: &[BTreeMap<String, String>]| v.iter().map(|m| m["status"].clone()).collect::<Vec<_>>();
    assert_eq!(statuses(&e), ["200", "200", "503"], "Envoy: {e:?}");
    for (i, (a, b)) in e.iter().zip(&l).enumerate() {
        let d = diff(a, b);
        assert!(d.is_empty(), "max_connections, request {i}: Legate differs from Envoy:\n{}", d.join("\n"));
    }
    std::thread::sleep(Duration::from_millis(300));
    pair.same_stats(&[
        "cluster.rq_limited.upstream_rq_active_overflow",
        "cluster.rq_limited.upstream_rq_pending_overflow",
        "cluster.rq_limited.upstream_cx_total",
        "cluster.rq_limited.upstream_rq_total",
        "cluster.rq_limited.upstream_rq_503",
        "cluster.rq_limited.circuit_breakers.default.rq_open",
        "cluster.rq_limited.circuit_breakers.default.remaining_rq",
        "cluster.rq_limited.circuit_breakers.default.remaining_pending",
        "cluster.cx_limited.upstream_cx_overflow",
        "cluster.cx_limited.upstream_rq_pending_overflow",
        "cluster.cx_limited.upstream_rq_pending_total",
        "cluster.cx_limited.upstream_cx_total",
        "cluster.cx_limited.upstream_rq_total",
        "cluster.cx_limited.circuit_breakers.default.cx_open",
        "cluster.cx_limited.circuit_breakers.default.remaining_cx",
    ]);
    let limits = |admin: u16| {
        let body = admin_page(admin, "/clusters");
        body.lines().filter(|l| l.contains("_priority::")).map(str::to_string).collect::<Vec<_>>()
    };
    assert_eq!(limits(pair.envoy_admin), limits(pair.legate_admin), "/clusters thresholds");
}

#[test]
fn priority_failover_and_panic() {
    let routes = r#"              - { match: { prefix: "/spill" }, route: { cluster: spill } }
              - { match: { prefix: "/panic" }, route: { cluster: panic } }
              - { match: { prefix: "/nopanic" }, route: { cluster: nopanic } }
"#;
    // spill: P0 has one live host of two (availability 1.4 × 50 % = 70 %),
    // so 30 % of requests spill to P1.
    // panic: P0 one live of four, P1 all dead: total availability 35 % and
    // both levels under the 50 % threshold: total panic, load by host count
    // (4/5 to P0's four hosts, 1/5 to P1's dead one).
    // nopanic: the same with healthy_panic_threshold 0: only the live host.
    let clusters = prioritized("spill", &[&["{UP_a}", "{CLOSED}"], &["{UP_b}"]], "")
        + &prioritized("panic", &[&["{UP_a}", "{CLOSED2}", "{CLOSED3}", "{CLOSED4}"], &["{CLOSED5}"]], "")
        + &prioritized(
            "nopanic",
            &[&["{UP_a}", "{CLOSED2}", "{CLOSED3}", "{CLOSED4}"], &["{CLOSED5}"]],
            "    common_lb_config: { healthy_panic_threshold: { value: 0 } }\n",
        );
    let t = bootstrap("", "", &one_vhost(routes), &clusters);
    let pair = start_pair("priorities", &t, &["a", "b"]);
    // Let the first health checks mark the dead endpoints.
    for admin in [pair.envoy_admin, pair.legate_admin] {
        wait_for("health checks to fail the dead endpoints", Duration::from_secs(10), || {
            let body = http_get(addr(admin), "/clusters", "admin").ok()?.body;
            (body.matches("health_flags::/failed_active_hc").count() >= 9).then_some(())
        });
    }
    let n = 300;
    for path in ["/spill", "/panic", "/nopanic"] {
        let e = spread(pair.envoy, path, n);
        let l = spread(pair.legate, path, n);
        println!("{path}: Envoy {e:?}, Legate {l:?}");
        assert_shares_agree(path, &e, &l, n);
    }
    let panics = |admin: u16, c: &str| stat(admin, &format!("cluster.{c}.lb_healthy_panic")).unwrap_or(0);
    for c in ["spill", "nopanic"] {
        assert_eq!((panics(pair.envoy_admin, c), panics(pair.legate_admin, c)), (0, 0), "{c}");
    }
    assert!(panics(pair.envoy_admin, "panic") >= n as i64 && panics(pair.legate_admin, "panic") >= n as i64);
}

#[test]
fn consistent_hashing_ring_hash_and_maglev() {
    let hashed = |name: &str, policy: &str| {
        cluster_with(name, &["{UP_a}", "{UP_b}", "{UP_c}", "{UP_d}"], &format!("lb_policy: {policy}, "))
    };
    let routes = r#"              - match: { prefix: "/ring" }
                route: { cluster: ring, hash_policy: [{ header: { header_name: x-user } }] }
              - match: { prefix: "/maglev" }
                route: { cluster: maglev, hash_policy: [{ query_parameter: { name: id }, terminal: true }, { header: { header_name: x-user } }] }
              - match: { prefix: "/cookie" }
                route: { cluster: maglev, hash_policy: [{ cookie: { name: session } }] }
"#;
    let clusters = hashed("ring", "RING_HASH") + &hashed("maglev", "MAGLEV");
    let t = bootstrap("", "", &one_vhost(routes), &clusters);
    let pair = start_pair("hashing", &t, &["a", "b", "c", "d"]);
    const USERS: [&str; 24] = [
        "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory", "niaj",
        "olivia", "peggy", "rupert", "sybil", "trent", "victor", "walter", "xena", "yara", "zoe", "u1", "u2",
    ];
    let mut used = std::collections::BTreeSet::new();
    for user in USERS {
        for (path, header) in [
            ("/ring/x".to_string(), ("x-user", user)),
            ("/maglev/x".to_string(), ("x-user", user)),
            (format!("/maglev/x?id={user}"), ("x-user", "same-for-all")),
            ("/cookie/x".to_string(), ("cookie", &*format!("a=1; session={user}").leak())),
        ] {
            let r = Req { path: path.clone(), ..get("/") }.header(header.0, header.1);
            let e = send(pair.envoy, &r);
            let l = send(pair.legate, &r);
            let (eu, lu) = (e.header("x-upstream").unwrap_or("-"), l.header("x-upstream").unwrap_or("-"));
            // The same key lands on the same host behind both proxies:
            // Legate builds Envoy's ring and Maglev table.
            assert_eq!(eu, lu, "{path} with {header:?}");
            // And again on the same host.
            assert_eq!(send(pair.legate, &r).header("x-upstream"), l.header("x-upstream"), "{path} {header:?} sticky");
            used.insert(lu.to_string());
        }
    }
    assert!(used.len() >= 3, "keys spread over the hosts: {used:?}");
}

/// Each host's share of `n` requests behind Envoy and behind Legate agree.
/// Both shares are samples, so the allowance is 4.5 standard deviations of
/// the difference of two binomial proportions (at least 0.03): a fixed 0.10
/// failed about one run in thirty on three equally likely hosts.
fn assert_shares_agree(label: &str, e: &BTreeMap<String, usize>, l: &BTreeMap<String, usize>, n: usize) {
    let keys: std::collections::BTreeSet<&String> = e.keys().chain(l.keys()).collect();
    for k in keys {
        let (a, b) = (*e.get(k).unwrap_or(&0) as f64 / n as f64, *l.get(k).unwrap_or(&0) as f64 / n as f64);
        let p = (a + b) / 2.0;
        let allowed = (4.5 * (2.0 * p * (1.0 - p) / n as f64).sqrt()).max(0.03);
        assert!(
            (a - b).abs() <= allowed,
            "{label} {k}: Envoy {a:.2}, Legate {b:.2}, allowed {allowed:.2} (Envoy {e:?}, Legate {l:?})"
        );
    }
}

#[test]
fn weighted_least_request_and_choice_count() {
    let weighted = "  - { name: wlr, connect_timeout: 1s, lb_policy: LEAST_REQUEST, load_assignment: { cluster_name: wlr, endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: {UP_a} } } }, load_balancing_weight: 1 }, { endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: {UP_b} } } }, load_balancing_weight: 3 }] }] } }\n";
    let choices = cluster_with(
        "choices",
        &["{UP_a}", "{UP_b}", "{UP_c}"],
        "lb_policy: LEAST_REQUEST, least_request_lb_config: { choice_count: 3 }, ",
    );
    let routes = r#"              - { match: { prefix: "/wlr" }, route: { cluster: wlr } }
              - { match: { prefix: "/choices" }, route: { cluster: choices } }
"#;
    let t = bootstrap("", "", &one_vhost(routes), &(weighted.to_string() + &choices));
    let pair = start_pair("least-request", &t, &["a", "b", "c"]);
    let n = 300;
    for path in ["/wlr", "/choices"] {
        let e = spread(pair.envoy, path, n);
        let l = spread(pair.legate, path, n);
        println!("{path}: Envoy {e:?}, Legate {l:?}");
        assert_shares_agree(path, &e, &l, n);
    }
}

#[test]
fn attempt_count_and_retriable_headers() {
    let vhosts = r#"            - name: all
              domains: ["*"]
              include_request_attempt_count: true
              include_attempt_count_in_response: true
              routes:
              - match: { prefix: "/always" }
                route: { cluster: echo, retry_policy: { retry_on: 5xx, num_retries: 2, retry_back_off: { base_interval: 0.01s } } }
              - match: { prefix: "/headers" }
                route:
                  cluster: echo
                  retry_policy:
                    retry_on: retriable-headers
                    num_retries: 1
                    retry_back_off: { base_interval: 0.01s }
                    retriable_headers: [{ name: x-upstream, string_match: { exact: a } }]
              - match: { prefix: "/plain" }
                route: { cluster: echo }
"#;
    let t = bootstrap("", "", vhosts, &echo_cluster());
    let pair = compare(
        "attempt-count",
        &t,
        &["a"],
        &[
            get("/always/status/503"),
            get("/always/status/200"),
            get("/headers/x"),
            get("/plain/x"),
            get("/plain/x").h2(),
        ],
    );
    pair.same_stats(&[
        "cluster.echo.upstream_rq_retry",
        "cluster.echo.upstream_rq_total",
        "cluster.echo.upstream_rq_503",
    ]);
}

#[test]
fn outlier_detection_success_rate_and_failure_percentage() {
    let dir = TempDir::new("outlier-stats");
    let (_bad, bad_port) = echo_with("bad", dir.path(), &["--status", "503"]);
    let od = |name: &str, detection: &str| {
        format!(
            "  - name: {name}\n    connect_timeout: 1s\n    outlier_detection: {{ {detection}, enforcing_consecutive_5xx: 0, interval: 1s, base_ejection_time: 30s, max_ejection_percent: 50 }}\n    load_assignment: {{ cluster_name: {name}, endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{UP_a}} }} }} }} }}, {{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{UP_b}} }} }} }} }}, {{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {bad_port} }} }} }} }}] }}] }}\n"
        )
    };
    // Success rate: with 3 hosts at 100 %, 100 % and 0 %, mean 66.7 and
    // stdev 47.1, a factor of 1.0 puts the bar at 19.6 %: the bad host goes.
    let clusters = od("sr", "success_rate_minimum_hosts: 3, success_rate_request_volume: 10, success_rate_stdev_factor: 1000")
        + &od(
            "fp",
            "enforcing_success_rate: 0, failure_percentage_minimum_hosts: 3, failure_percentage_request_volume: 10, failure_percentage_threshold: 50, enforcing_failure_percentage: 100",
        );
    let routes = r#"              - { match: { prefix: "/sr" }, route: { cluster: sr } }
              - { match: { prefix: "/fp" }, route: { cluster: fp } }
"#;
    let t = bootstrap("", "", &one_vhost(routes), &clusters);
    let pair = start_pair("outlier-stats", &t, &["a", "b"]);
    for (path, cluster, kind) in [("/sr/x", "sr", "success_rate"), ("/fp/x", "fp", "failure_percentage")] {
        // 45 requests within one interval: 15 per host, over the volume.
        for port in [pair.envoy, pair.legate] {
            for _ in 0..45 {
                send(port, &get(path));
            }
        }
        for (who, admin) in [("Envoy", pair.envoy_admin), ("Legate", pair.legate_admin)] {
            let name = format!("cluster.{cluster}.outlier_detection.ejections_enforced_{kind}");
            wait_for(&format!("{who} to eject by {kind}"), Duration::from_secs(5), || {
                (stat(admin, &name) == Some(1)).then_some(())
            });
        }
        for port in [pair.envoy, pair.legate] {
            let after: Vec<String> =
                (0..10).map(|_| send(port, &get(path)).header("x-upstream").unwrap_or("-").to_string()).collect();
            assert!(after.iter().all(|u| u == "a" || u == "b"), "{path} after the ejection on {port}: {after:?}");
        }
        for stat_name in ["ejections_enforced_total", "ejections_active", &format!("ejections_detected_{kind}")] {
            let name = format!("cluster.{cluster}.outlier_detection.{stat_name}");
            assert_eq!(stat(pair.envoy_admin, &name), stat(pair.legate_admin, &name), "{name}");
        }
    }
}

#[test]
fn grpc_and_tcp_payload_health_checks() {
    let dir = TempDir::new("hc-kinds");
    let (_sick, sick_port) = echo_with("sick", dir.path(), &["--grpc-health", "NOT_SERVING", "--status", "503"]);
    let two = |name: &str, hc: &str, extra: &str| {
        format!(
            "  - name: {name}\n    connect_timeout: 0.5s\n{extra}    health_checks: [{{ timeout: 0.5s, interval: 0.2s, no_traffic_interval: 0.2s, unhealthy_threshold: 1, healthy_threshold: 1, {hc} }}]\n    load_assignment: {{ cluster_name: {name}, endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{UP_a}} }} }} }} }}, {{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {sick_port} }} }} }} }}] }}] }}\n"
        )
    };
    let h2 = &format!("    {H2_OPTIONS}\n");
    // TCP: "GET / HTTP/1.1\r\nhost: x\r\n\r\n" must be answered "HTTP/1.1 200"
    // (one payload: split ones may match pieces of the body).
    let tcp = "tcp_health_check: { send: { text: 474554202f20485454502f312e310d0a686f73743a20780d0a0d0a }, receive: [{ text: 485454502f312e3120323030 }] }";
    // Idle: the default no_traffic_interval (60 s) keeps checks to one round.
    let idle = "  - name: idle\n    connect_timeout: 0.5s\n    health_checks: [{ timeout: 0.5s, interval: 0.1s, unhealthy_threshold: 1, healthy_threshold: 1, tcp_health_check: {} }]\n    load_assignment: { cluster_name: idle, endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: {UP_a} } } } }] }] }\n";
    let clusters = two("grpc", "grpc_health_check: {}", h2) + &two("tcp", tcp, "") + idle;
    let routes = r#"              - { match: { prefix: "/grpc" }, route: { cluster: grpc } }
              - { match: { prefix: "/tcp" }, route: { cluster: tcp } }
"#;
    let t = bootstrap("", "", &one_vhost(routes), &clusters);
    let pair = start_pair("hc-kinds", &t, &["a"]);
    for (who, port) in [("Envoy", pair.envoy), ("Legate", pair.legate)] {
        for path in ["/grpc/x", "/tcp/x"] {
            wait_for(&format!("{who} to fail the sick host on {path}"), Duration::from_secs(10), || {
                (0..6).all(|_| send(port, &get(path)).header("x-upstream") == Some("a")).then_some(())
            });
        }
    }
    for admin in [pair.envoy_admin, pair.legate_admin] {
        let body = admin_page(admin, "/clusters");
        for c in ["grpc", "tcp"] {
            assert!(
                body.lines()
                    .any(|l| l.starts_with(&format!("{c}::127.0.0.1:{sick_port}::health_flags::/failed_active_hc"))),
                "{c} on {admin}:\n{body}"
            );
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let attempts = |admin: u16| stat(admin, "cluster.idle.health_check.attempt");
    assert_eq!(attempts(pair.envoy_admin), Some(1), "Envoy checks an idle cluster once a minute");
    assert_eq!(attempts(pair.legate_admin), attempts(pair.envoy_admin), "idle cluster checks");
}

#[test]
fn load_balancing_policy_typed_configs() {
    let typed = |name: &str, policy: &str| {
        cluster_with(
            name,
            &["{UP_a}", "{UP_b}", "{UP_c}", "{UP_d}"],
            &format!(
                "load_balancing_policy: {{ policies: [{{ typed_extension_config: {{ name: lb, typed_config: {policy} }} }}] }}, "
            ),
        )
    };
    let clusters = typed(
        "ring",
        "{ \"@type\": type.googleapis.com/envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash, minimum_ring_size: 2048 }",
    ) + &typed("maglev", "{ \"@type\": type.googleapis.com/envoy.extensions.load_balancing_policies.maglev.v3.Maglev }")
        + &typed("rr", "{ \"@type\": type.googleapis.com/envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin }");
    let routes = r#"              - { match: { prefix: "/ring" }, route: { cluster: ring, hash_policy: [{ header: { header_name: x-user } }] } }
              - { match: { prefix: "/maglev" }, route: { cluster: maglev, hash_policy: [{ header: { header_name: x-user } }] } }
              - { match: { prefix: "/rr" }, route: { cluster: rr } }
"#;
    let t = bootstrap("", "", &one_vhost(routes), &clusters);
    let pair = start_pair("lb-policy", &t, &["a", "b", "c", "d"]);
    for user in ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"] {
        for path in ["/ring/x", "/maglev/x"] {
            let r = get(path).header("x-user", user);
            assert_eq!(
                send(pair.envoy, &r).header("x-upstream").map(str::to_string),
                send(pair.legate, &r).header("x-upstream").map(str::to_string),
                "{path} for {user}"
            );
        }
    }
    let e = spread(pair.envoy, "/rr", 40);
    let l = spread(pair.legate, "/rr", 40);
    assert_eq!(e, l, "round robin over four hosts");
}

#[test]
fn failover_under_load() {
    let dir = TempDir::new("failover");
    let ports = [free_port(), free_port(), free_port()];
    let start = |name: &str, port: u16, extra: &[&str]| echo_at(name, port, extra, dir.path());
    let _a = start("a", ports[0], &[]);
    let mut b = start("b", ports[1], &[]);
    let mut c = start("c", ports[2], &[]);
    let clusters = format!(
        "  - name: svc\n    connect_timeout: 0.25s\n    outlier_detection: {{ consecutive_5xx: 3, interval: 0.5s, base_ejection_time: 30s, max_ejection_percent: 100 }}\n    load_assignment: {{ cluster_name: svc, endpoints: [{{ lb_endpoints: [{}] }}] }}\n",
        endpoints(&ports)
    );
    let routes = r#"              - match: { prefix: "/" }
                route:
                  cluster: svc
                  retry_policy:
                    retry_on: 5xx,connect-failure,reset
                    num_retries: 2
                    retry_back_off: { base_interval: 0.005s, max_interval: 0.02s }
                    retry_host_predicate: [{ name: envoy.retry_host_predicates.previous_hosts, typed_config: { "@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate } }]
                    host_selection_retry_max_attempts: 5
"#;
    let t = bootstrap("", "", &one_vhost(routes), &clusters);
    let pair = start_pair("failover", &t, &[]);
    let t0 = std::time::Instant::now();
    let run = Duration::from_secs(4);
    let loads: Vec<_> = [pair.envoy, pair.legate]
        .into_iter()
        .map(|port| std::thread::spawn(move || harness::load::load_for(port, "/work", t0, run, 40_000)))
        .collect();
    // At 1 s endpoint c starts failing (503 to everything); at 2 s b dies.
    std::thread::sleep(Duration::from_secs(1));
    c.kill();
    let _c_failing = start("c", ports[2], &["--status", "503"]);
    std::thread::sleep(Duration::from_secs(1));
    b.kill();
    let results: Vec<_> = loads.into_iter().map(|h| h.join().expect("load thread")).collect();
    let window = |f: Option<Duration>, l: Option<Duration>| match (f, l) {
        (Some(f), Some(l)) => format!("{:.3}–{:.3} s", f.as_secs_f64(), l.as_secs_f64()),
        _ => "none".into(),
    };
    for (who, (sent, failed, f, l)) in ["Envoy", "Legate"].iter().zip(&results) {
        println!("failover {who}: {sent} requests, {failed} failed, failures at {}", window(*f, *l));
    }
    let ejections = |admin: u16| stat(admin, "cluster.svc.outlier_detection.ejections_enforced_total");
    println!("ejections: Envoy {:?}, Legate {:?}", ejections(pair.envoy_admin), ejections(pair.legate_admin));
    for (who, (sent, failed, _, _)) in ["Envoy", "Legate"].iter().zip(&results) {
        assert!(*sent > 200, "{who} served too few requests: {sent}");
        // Retries to another host carry every request past the failing and
        // the dead endpoint: at most one in a thousand fails.
        assert!(*failed * 1000 <= *sent, "{who}: {failed} of {sent} failed");
    }
    assert!(ejections(pair.legate_admin).unwrap_or(0) >= 1, "Legate ejected the failing endpoint");
}

#[test]
fn request_mirroring() {
    let dir = TempDir::new("mirror");
    let (mirror_proc, mirror_port) = echo_with("m", dir.path(), &["--log-requests"]);
    let clusters = echo_cluster() + &cluster("shadow", &[&mirror_port.to_string()]);
    let routes = r#"              - match: { prefix: "/by-header" }
                route: { cluster: echo, request_mirror_policies: [{ cluster_header: x-mirror-to }] }
              - match: { prefix: "/" }
                route: { cluster: echo, request_mirror_policies: [{ cluster: shadow }] }
"#;
    let t = bootstrap("", "", &one_vhost(routes), &clusters);
    let pair = start_pair("mirror", &t, &["a"]);
    for (who, port) in [("envoy", pair.envoy), ("legate", pair.legate)] {
        let r = send(port, &get("/mirrored?q=1").header("x-test-proxy", who).post("a body to copy"));
        assert_eq!((r.status, r.header("x-upstream")), (200, Some("a")), "{who}: the main request");
    }
    // What the mirror received from each proxy.
    let seen = |who: &str| -> Value {
        wait_for(&format!("the mirror copy from {who}"), Duration::from_secs(10), || {
            mirror_proc
                .output()
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|v| v["headers"]["x-test-proxy"] == who)
        })
    };
    let (e, l) = (seen("envoy"), seen("legate"));
    for k in ["method", "uri", "body_bytes"] {
        assert_eq!(e[k], l[k], "mirror {k}");
    }
    for h in ["host", "x-forwarded-proto", "content-length", "x-envoy-expected-rq-timeout-ms"] {
        assert_eq!(e["headers"][h], l["headers"][h], "mirror header {h}");
    }
    assert_eq!(l["headers"]["host"], "example.com-shadow");
    // `cluster_header`: the copy goes to the cluster the request names; none
    // when it names no cluster or has no such header.
    for (who, port) in [("envoy", pair.envoy), ("legate", pair.legate)] {
        for r in [
            get("/by-header").header("x-mirror-to", "shadow").header("x-test-proxy", format!("{who}-header")),
            get("/by-header").header("x-mirror-to", "nowhere"),
            get("/by-header"),
        ] {
            assert_eq!(send(port, &r).status, 200, "{who}: {r:?}");
        }
        seen(&format!("{who}-header"));
    }
    wait_for("both mirrors' counts", Duration::from_secs(10), || {
        [pair.envoy_admin, pair.legate_admin]
            .iter()
            .all(|a| stat(*a, "cluster.shadow.upstream_rq_total") == Some(2))
            .then_some(())
    });
    pair.same_stats(&["cluster.shadow.upstream_rq_total", "cluster.shadow.upstream_rq_200"]);
}

#[test]
fn locality_weighted_balancing() {
    let ep = endpoint;
    // Localities weighted 1 and 3 (one host each, and a second locality of
    // two hosts on the heavy side), and a locality without a weight, which takes nothing.
    let clusters = format!(
        "  - name: loc\n    connect_timeout: 1s\n    common_lb_config: {{ locality_weighted_lb_config: {{}} }}\n    load_assignment: {{ cluster_name: loc, endpoints: [{{ locality: {{ zone: z1 }}, load_balancing_weight: 1, lb_endpoints: [{}] }}, {{ locality: {{ zone: z2 }}, load_balancing_weight: 3, lb_endpoints: [{}, {}] }}, {{ locality: {{ zone: z3 }}, lb_endpoints: [{}] }}] }}\n",
        ep("{UP_a}"),
        ep("{UP_b}"),
        ep("{UP_c}"),
        ep("{UP_d}")
    );
    let t = bootstrap(
        "",
        "",
        &one_vhost("              - { match: { prefix: \"/\" }, route: { cluster: loc } }\n"),
        &clusters,
    );
    let pair = start_pair("locality", &t, &["a", "b", "c", "d"]);
    let n = 400;
    let e = spread(pair.envoy, "/x", n);
    let l = spread(pair.legate, "/x", n);
    println!("locality weighted: Envoy {e:?}, Legate {l:?}");
    assert!(!e.contains_key("d") && !l.contains_key("d"), "a locality without a weight takes nothing");
    assert_shares_agree("locality weighted", &e, &l, n);
}

#[test]
fn retry_budget() {
    let budgeted = |name: &str, budget: &str| {
        cluster_with(
            name,
            &["{UP_a}"],
            &format!("circuit_breakers: {{ thresholds: [{{ retry_budget: {budget} }}] }}, "),
        )
    };
    // No budget at all: every retry overflows. A budget with a minimum of
    // 3: retries go ahead.
    let clusters = budgeted("none", "{ budget_percent: { value: 0 }, min_retry_concurrency: 0 }")
        + &budgeted("some", "{ min_retry_concurrency: 3 }");
    let routes = r#"              - { match: { prefix: "/none" }, route: { cluster: none, retry_policy: { retry_on: 5xx, num_retries: 2, retry_back_off: { base_interval: 0.01s } } } }
              - { match: { prefix: "/some" }, route: { cluster: some, retry_policy: { retry_on: 5xx, num_retries: 2, retry_back_off: { base_interval: 0.01s } } } }
"#;
    let t = bootstrap("", "", &one_vhost(routes), &clusters);
    let pair = compare("retry-budget", &t, &["a"], &[get("/none/status/503"), get("/some/status/503")]);
    pair.same_stats(&[
        "cluster.none.upstream_rq_retry",
        "cluster.none.upstream_rq_retry_overflow",
        "cluster.none.upstream_rq_total",
        "cluster.some.upstream_rq_retry",
        "cluster.some.upstream_rq_retry_overflow",
        "cluster.some.upstream_rq_total",
    ]);
    assert_eq!(stat(pair.legate_admin, "cluster.none.upstream_rq_retry_overflow"), Some(1));
}

#[test]
fn outlier_detection_local_origin_failures() {
    let clusters = cluster_with(
        "split",
        &["{UP_a}", "{CLOSED}"],
        "outlier_detection: { split_external_local_origin_errors: true, consecutive_local_origin_failure: 2, consecutive_5xx: 100, interval: 10s, base_ejection_time: 30s, max_ejection_percent: 50 }, ",
    );
    let t = bootstrap(
        "",
        "",
        &one_vhost("              - { match: { prefix: \"/\" }, route: { cluster: split } }\n"),
        &clusters,
    );
    let pair = start_pair("outlier-local", &t, &["a"]);
    let sequence = |port: u16| -> Vec<u16> { (0..12).map(|_| send(port, &get("/x")).status).collect() };
    let (e, l) = (sequence(pair.envoy), sequence(pair.legate));
    let failed = |s: &[u16]| s.iter().filter(|c| **c == 503).count();
    assert_eq!(failed(&e), 2, "Envoy: {e:?}");
    assert_eq!(failed(&l), failed(&e), "Legate {l:?}, Envoy {e:?}");
    pair.same_stats(&[
        "cluster.split.outlier_detection.ejections_enforced_consecutive_local_origin_failure",
        "cluster.split.outlier_detection.ejections_detected_consecutive_local_origin_failure",
        "cluster.split.outlier_detection.ejections_enforced_consecutive_5xx",
        "cluster.split.outlier_detection.ejections_active",
    ]);
}

#[test]
fn network_local_rate_limit() {
    let t = echo_bootstrap("");
    let hcm_first = "    - filters:\n      - name: envoy.filters.network.http_connection_manager\n";
    assert!(t.contains(hcm_first), "the bootstrap template changed");
    // Two connections, then one a minute: the third and fourth are refused.
    let t = t.replace(
        hcm_first,
        "    - filters:\n      - name: envoy.filters.network.local_ratelimit\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit\n          stat_prefix: conns\n          token_bucket: { max_tokens: 2, tokens_per_fill: 1, fill_interval: 60s }\n      - name: envoy.filters.network.http_connection_manager\n",
    );
    let pair = start_pair("net-ratelimit", &t, &["a"]);
    let outcomes = |port: u16| -> Vec<String> {
        (0..4)
            .map(|_| match http_get(addr(port), "/x", "example.com") {
                Ok(r) => r.status.to_string(),
                Err(_) => "closed".to_string(),
            })
            .collect()
    };
    let (e, l) = (outcomes(pair.envoy), outcomes(pair.legate));
    assert_eq!(e, ["200", "200", "closed", "closed"], "Envoy");
    assert_eq!(l, e, "Legate");
    let name = "local_rate_limit.conns.rate_limited";
    assert_eq!(stat(pair.envoy_admin, name), Some(2), "Envoy's {name}");
    assert_eq!(stat(pair.legate_admin, name), stat(pair.envoy_admin, name), "{name}");
}
