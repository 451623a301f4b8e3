//! Differential tests for the router's resilience settings beyond the basic
//! ones in `differential.rs`: internal callers' `x-envoy-*` retry and
//! timeout headers, `refused-stream` retries, upstream connection limits
//! (`max_requests_per_connection`, idle timeout, max stream duration,
//! `max_connection_pools`) and slow start. Each runs the same bootstrap and
//! requests through real Envoy 1.40 and `legate proxy`.

mod harness;

use harness::diff::*;
use harness::template::*;
use harness::*;

#[test]
fn internal_requests_shape_retries_and_timeouts() {
    let routes = r#"              - match: { prefix: "/" }
                route: { cluster: echo }
"#;
    let hcm = "          use_remote_address: true\n          internal_address_config: { cidr_ranges: [{ address_prefix: 127.0.0.0, prefix_len: 8 }] }\n";
    let t = bootstrap(hcm, "", &one_vhost(routes), &echo_cluster());
    let pair = compare(
        "internal-headers",
        &t,
        &["a"],
        &[
            // From loopback with no x-forwarded-for: internal, marked
            // x-envoy-internal, and its retry headers are honoured.
            get("/x"),
            get("/status/503").header("x-envoy-retry-on", "5xx").header("x-envoy-max-retries", "2"),
            get("/status/418")
                .header("x-envoy-retry-on", "retriable-status-codes")
                .header("x-envoy-retriable-status-codes", "418"),
            get("/x").header("x-envoy-upstream-rq-timeout-ms", "2500"),
            get("/x").header("x-envoy-upstream-rq-per-try-timeout-ms", "200"),
            get("/delay/400").header("x-envoy-upstream-rq-timeout-ms", "100"),
            get("/x").header("x-envoy-retry-grpc-on", "unavailable").header("x-envoy-max-retries", "0"),
            // With an x-forwarded-for the trusted address is not the only
            // one: external, and the headers are dropped unread.
            get("/status/503").header("x-forwarded-for", "10.1.2.3").header("x-envoy-retry-on", "5xx"),
            get("/x").header("x-forwarded-for", "10.1.2.3").header("x-envoy-upstream-rq-timeout-ms", "100"),
        ],
    );
    pair.same_stats(&[
        "cluster.echo.upstream_rq_retry",
        "cluster.echo.upstream_rq_retry_limit_exceeded",
        "cluster.echo.upstream_rq_timeout",
        "cluster.echo.upstream_rq_503",
        "cluster.echo.upstream_rq_418",
    ]);
}

#[test]
fn internal_address_from_x_forwarded_for() {
    // Behind a trusted proxy (use_remote_address false) the caller is the
    // single x-forwarded-for address.
    let routes = r#"              - match: { prefix: "/" }
                route: { cluster: echo }
"#;
    let hcm = "          internal_address_config: { cidr_ranges: [{ address_prefix: 10.0.0.0, prefix_len: 8 }] }\n";
    let t = bootstrap(hcm, "", &one_vhost(routes), &echo_cluster());
    let pair = compare(
        "internal-xff",
        &t,
        &["a"],
        &[
            get("/status/503").header("x-forwarded-for", "10.1.2.3").header("x-envoy-retry-on", "5xx"),
            get("/status/503").header("x-forwarded-for", "192.168.1.1").header("x-envoy-retry-on", "5xx"),
            get("/status/503").header("x-forwarded-for", "10.0.0.1, 10.0.0.2").header("x-envoy-retry-on", "5xx"),
            get("/x").header("x-envoy-retry-on", "5xx"),
        ],
    );
    pair.same_stats(&["cluster.echo.upstream_rq_retry", "cluster.echo.upstream_rq_503"]);
}

#[test]
fn refused_streams_are_retried() {
    let dir = TempDir::new("refuser");
    let (_refuser, refuser_port) = echo_with("refuser", dir.path(), &["--refuse-h2-streams"]);
    let routes = r#"              - match: { prefix: "/refused" }
                route: { cluster: refusing, retry_policy: { retry_on: refused-stream, num_retries: 2, retry_back_off: { base_interval: 0.01s } } }
              - match: { prefix: "/other" }
                route: { cluster: refusing, retry_policy: { retry_on: retriable-4xx, num_retries: 2 } }
              - match: { prefix: "/reset" }
                route: { cluster: refusing, retry_policy: { retry_on: reset, num_retries: 1, retry_back_off: { base_interval: 0.01s } } }
"#;
    let clusters = format!(
        "  - {{ name: refusing, connect_timeout: 1s, {H2_OPTIONS}, load_assignment: {{ cluster_name: refusing, endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {refuser_port} }} }} }} }}] }}] }} }}\n"
    );
    let t = bootstrap("", "", &one_vhost(routes), &clusters);
    let pair =
        compare("refused-stream", &t, &[], &[get("/refused"), get("/other"), get("/reset"), get("/refused").h2()]);
    pair.same_stats(&[
        "cluster.refusing.upstream_rq_retry",
        "cluster.refusing.upstream_rq_retry_limit_exceeded",
        "cluster.refusing.upstream_rq_total",
    ]);
}

#[test]
fn upstream_connection_limits() {
    let routes = r#"              - match: { prefix: "/limited" }
                route: { cluster: limited }
              - match: { prefix: "/idle" }
                route: { cluster: idle }
              - match: { prefix: "/slow" }
                route: { cluster: slow }
              - match: { prefix: "/pools" }
                route: { cluster: pools }
"#;
    let clusters = cluster_with("limited", &["{UP_a}"], &http1_options("max_requests_per_connection: 2"))
        + &cluster_with("idle", &["{UP_a}"], &http1_options("idle_timeout: 0.4s"))
        + &cluster_with("slow", &["{UP_a}"], &http1_options("max_stream_duration: 0.2s"))
        + &cluster_with(
            "pools",
            &["{UP_a}", "{UP_b}"],
            "circuit_breakers: { thresholds: [{ max_connection_pools: 1 }] }, ",
        );
    let t = bootstrap("", "", &one_vhost(routes), &clusters);
    // A stream over its duration: the same 504 and body from both.
    let pair = compare("connection-limits", &t, &["a", "b"], &[get("/slow/delay/600"), get("/slow/x")]);
    for port in [pair.envoy, pair.legate] {
        // A response still streaming at the limit is cut off: its headers
        // and first chunk arrived, its end never does.
        let raw = harness::raw::get_until_closed(port, "/slow/slow-body/900");
        assert!(raw.starts_with("HTTP/1.1 200"), "port {port}: {raw}");
        assert!(raw.contains("first") && !raw.contains("last"), "port {port}: {raw}");
        assert!(!raw.ends_with("0\r\n\r\n"), "port {port}: the chunked body was ended: {raw}");
        // Six requests, two per connection: three connections.
        for i in 0..6 {
            assert_eq!(send(port, &get("/limited/x")).status, 200, "limited request {i} on {port}");
        }
        assert_eq!(send(port, &get("/idle/x")).status, 200);
    }
    // One pool at a time: with one worker, the first host's pool holds the
    // only slot while its connection stays open; the other host's requests
    // get 503 no healthy upstream.
    let pools = |port: u16| {
        let mut seen: Vec<(u16, String)> = (0..4)
            .map(|_| {
                let r = send(port, &get("/pools/x"));
                (r.status, if r.status == 200 { "upstream".into() } else { r.body })
            })
            .collect();
        seen.sort();
        seen
    };
    assert_eq!(pools(pair.envoy), pools(pair.legate));
    std::thread::sleep(std::time::Duration::from_millis(1200));
    pair.same_stats(&[
        "cluster.limited.upstream_cx_total",
        "cluster.limited.upstream_cx_max_requests",
        "cluster.limited.upstream_rq_total",
        "cluster.idle.upstream_cx_total",
        "cluster.idle.upstream_cx_idle_timeout",
        "cluster.idle.upstream_cx_active",
        "cluster.idle.upstream_cx_destroy",
        "cluster.slow.upstream_rq_max_duration_reached",
        "cluster.pools.upstream_cx_pool_overflow",
        "cluster.pools.upstream_cx_total",
    ]);
    assert_eq!(stat(pair.legate_admin, "cluster.limited.upstream_cx_total"), Some(3));
    assert_eq!(stat(pair.legate_admin, "cluster.idle.upstream_cx_idle_timeout"), Some(1));
    assert_eq!(stat(pair.legate_admin, "cluster.pools.upstream_cx_pool_overflow"), Some(2));
}

fn share_of_b(r: &[&str]) -> f64 {
    r.iter().filter(|u| **u == "b").count() as f64 / r.len().max(1) as f64
}

#[test]
fn slow_start_ramps_a_host_that_became_healthy() {
    // Host b is down at start; both proxies check it every 0.2 s. When it
    // comes up it enters a 3 s slow-start window starting at 10 % weight.
    let late_port = free_port();
    let routes = r#"              - match: { prefix: "/" }
                route: { cluster: ramp }
"#;
    let clusters = format!(
        r#"  - name: ramp
    connect_timeout: 1s
    common_lb_config: {{ healthy_panic_threshold: {{ value: 0 }} }}
    round_robin_lb_config: {{ slow_start_config: {{ slow_start_window: 3s, min_weight_percent: {{ value: 10 }} }} }}
    health_checks: [{{ timeout: 0.5s, interval: 0.2s, no_traffic_interval: 0.2s, unhealthy_threshold: 1, healthy_threshold: 1, http_health_check: {{ path: /health }} }}]
    load_assignment: {{ cluster_name: ramp, endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{UP_a}} }} }} }} }}, {{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {late_port} }} }} }} }}] }}] }}
"#
    );
    let t = bootstrap("", "", &one_vhost(routes), &clusters);
    let pair = start_pair("slow-start", &t, &["a"]);
    // Host a's own window (it became healthy at start) passes first.
    std::thread::sleep(std::time::Duration::from_millis(3300));
    let dir = TempDir::new("slow-start-b");
    let _b = spawn_echo("b", late_port, &[], dir.path());
    wait_for("b healthy behind both proxies", std::time::Duration::from_secs(10), || {
        (host_healthy(pair.envoy_admin, late_port) && host_healthy(pair.legate_admin, late_port)).then_some(())
    });
    // The first 1.5 s of b's window, then well after it; the two proxies
    // are asked in turn so they see the same moments.
    let mut early: (Vec<&str>, Vec<&str>) = (vec![], vec![]);
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_millis(1500) {
        for (port, seen) in [(pair.envoy, &mut early.0), (pair.legate, &mut early.1)] {
            let r = send(port, &get("/x"));
            seen.push(if r.header("x-upstream") == Some("b") { "b" } else { "a" });
        }
        std::thread::sleep(std::time::Duration::from_millis(15));
    }
    std::thread::sleep(std::time::Duration::from_millis(1800));
    let mut late: (Vec<&str>, Vec<&str>) = (vec![], vec![]);
    for _ in 0..40 {
        for (port, seen) in [(pair.envoy, &mut late.0), (pair.legate, &mut late.1)] {
            let r = send(port, &get("/x"));
            seen.push(if r.header("x-upstream") == Some("b") { "b" } else { "a" });
        }
    }
    let (e_early, l_early) = (share_of_b(&early.0), share_of_b(&early.1));
    let (e_late, l_late) = (share_of_b(&late.0), share_of_b(&late.1));
    println!(
        "slow start: b's share in its first 1.5 s: Envoy {e_early:.2} ({} requests), Legate {l_early:.2} ({}); after the window: Envoy {e_late:.2}, Legate {l_late:.2}",
        early.0.len(),
        early.1.len()
    );
    // Round robin without slow start would give b half at once.
    assert!(e_early < 0.35 && l_early < 0.35, "early shares: Envoy {e_early}, Legate {l_early}");
    assert!((e_early - l_early).abs() <= 0.12, "early shares differ: Envoy {e_early}, Legate {l_early}");
    assert!(e_early > 0.0 && l_early > 0.0, "b got no traffic early: Envoy {e_early}, Legate {l_early}");
    assert!((0.4..=0.6).contains(&e_late) && (0.4..=0.6).contains(&l_late), "late: Envoy {e_late}, Legate {l_late}");
}

#[test]
fn local_rate_limit_per_route_and_by_descriptor() {
    // The filter itself limits nothing (no bucket); one route has its own
    // bucket; another limits by descriptors built from its rate_limits
    // actions: per-client header value (a wildcard: a bucket per value),
    // an exact header value with a tighter bucket, and a generic key.
    let filters = r#"          http_filters:
          - name: envoy.filters.http.local_ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
              stat_prefix: global
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
"#;
    let enabled = "filter_enabled: { runtime_key: e, default_value: { numerator: 100, denominator: HUNDRED } }\n                    filter_enforced: { runtime_key: f, default_value: { numerator: 100, denominator: HUNDRED } }";
    let routes = format!(
        r#"              - match: {{ prefix: "/own" }}
                route: {{ cluster: echo }}
                typed_per_filter_config:
                  envoy.filters.http.local_ratelimit:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
                    stat_prefix: own
                    token_bucket: {{ max_tokens: 2, tokens_per_fill: 2, fill_interval: 60s }}
                    {enabled}
                    response_headers_to_add: [{{ header: {{ key: x-limited-by, value: own }} }}]
              - match: {{ prefix: "/by-client" }}
                route:
                  cluster: echo
                  rate_limits:
                  - actions: [{{ request_headers: {{ header_name: x-client, descriptor_key: client }} }}]
                  - actions: [{{ generic_key: {{ descriptor_value: everyone }} }}]
                typed_per_filter_config:
                  envoy.filters.http.local_ratelimit:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
                    stat_prefix: clients
                    token_bucket: {{ max_tokens: 100, tokens_per_fill: 100, fill_interval: 60s }}
                    {enabled}
                    descriptors:
                    - entries: [{{ key: client, value: vip }}]
                      token_bucket: {{ max_tokens: 5, tokens_per_fill: 5, fill_interval: 60s }}
                    - entries: [{{ key: client, value: "" }}]
                      token_bucket: {{ max_tokens: 2, tokens_per_fill: 2, fill_interval: 60s }}
                    - entries: [{{ key: generic_key, value: everyone }}]
                      token_bucket: {{ max_tokens: 8, tokens_per_fill: 8, fill_interval: 60s }}
              - match: {{ prefix: "/free" }}
                route: {{ cluster: echo }}
"#
    );
    let t = with_filters(bootstrap("", "", &one_vhost(&routes), &echo_cluster()), filters);
    let mut requests = vec![];
    for _ in 0..3 {
        requests.push(get("/own/x"));
        requests.push(get("/free/x"));
    }
    // Clients a and b get two each (a bucket per value), vip five, and all
    // of them together eight (the generic key); no x-client: only the
    // generic key applies.
    for client in ["a", "a", "a", "b", "b", "b", "vip", "vip", "vip", "vip", "vip", "vip"] {
        requests.push(get("/by-client/x").header("x-client", client));
    }
    requests.push(get("/by-client/x"));
    let pair = compare("local-ratelimit-routes", &t, &["a"], &requests);
    pair.same_stats(&[
        "own.http_local_rate_limit.enabled",
        "own.http_local_rate_limit.rate_limited",
        "clients.http_local_rate_limit.ok",
        "clients.http_local_rate_limit.rate_limited",
        "global.http_local_rate_limit.enabled",
    ]);
    assert_eq!(stat(pair.legate_admin, "own.http_local_rate_limit.rate_limited"), Some(1));
}

#[test]
fn virtual_host_retry_policy_for_routes_without_their_own() {
    // The virtual host's policy retries 5xx twice; a route with its own
    // policy (retriable-4xx once) keeps it whole, as Envoy does: the two
    // are not merged field by field.
    let vhost = r#"            - name: all
              domains: ["*"]
              include_attempt_count_in_response: true
              retry_policy: { retry_on: 5xx, num_retries: 2, retry_back_off: { base_interval: 0.01s } }
              routes:
              - match: { prefix: "/", headers: [{ name: x-own, present_match: true }] }
                route: { cluster: echo, retry_policy: { retry_on: retriable-4xx, num_retries: 1, retry_back_off: { base_interval: 0.01s } } }
              - match: { prefix: "/" }
                route: { cluster: echo }
"#;
    let t = bootstrap("", "", vhost, &echo_cluster());
    let pair = compare(
        "vhost-retry-policy",
        &t,
        &["a"],
        &[
            get("/status/503"),
            get("/status/409"),
            get("/status/503").header("x-own", "1"),
            get("/status/409").header("x-own", "1"),
        ],
    );
    // 2 + 1 retries, on both.
    pair.stats_reach(&[("cluster.echo.upstream_rq_retry", 3)]);
    let inherited = harness::diff::send(pair.legate, &get("/status/503"));
    assert_eq!(inherited.header("x-envoy-attempt-count"), Some("3"), "the virtual host's policy retried twice");
}

#[test]
fn local_rate_limit_by_source_and_destination_cluster() {
    // Descriptors from the node's cluster (`edge`) and the route's cluster.
    let filters = r#"          http_filters:
          - name: envoy.filters.http.local_ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
              stat_prefix: clusters
              token_bucket: { max_tokens: 100, tokens_per_fill: 100, fill_interval: 60s }
              filter_enabled: { runtime_key: e, default_value: { numerator: 100, denominator: HUNDRED } }
              filter_enforced: { runtime_key: f, default_value: { numerator: 100, denominator: HUNDRED } }
              descriptors:
              - entries: [{ key: destination_cluster, value: echo }]
                token_bucket: { max_tokens: 2, tokens_per_fill: 2, fill_interval: 60s }
              - entries: [{ key: source_cluster, value: edge }]
                token_bucket: { max_tokens: 3, tokens_per_fill: 3, fill_interval: 60s }
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
"#;
    let routes = r#"              - match: { prefix: "/dest" }
                route: { cluster: echo, rate_limits: [{ actions: [{ destination_cluster: {} }] }] }
              - match: { prefix: "/src" }
                route: { cluster: echo, rate_limits: [{ actions: [{ source_cluster: {} }] }] }
"#;
    let t = with_filters(bootstrap("", "", &one_vhost(routes), &echo_cluster()), filters);
    let t = format!("node: {{ id: n1, cluster: edge }}\n{t}");
    let mut requests = vec![];
    for _ in 0..4 {
        requests.push(get("/dest/x"));
        requests.push(get("/src/x"));
    }
    let pair = compare("local-ratelimit-clusters", &t, &["a"], &requests);
    pair.same_stats(&["clusters.http_local_rate_limit.ok", "clusters.http_local_rate_limit.rate_limited"]);
    // Two over the destination's bucket, one over the source's.
    assert_eq!(stat(pair.legate_admin, "clusters.http_local_rate_limit.rate_limited"), Some(3));
}

/// Legate's `legate.lb.v1.LeastResponseTime`, as a cluster names it; a
/// short `decay` so that a fast host's one slow answer (a busy machine) is
/// soon forgotten.
const LEAST_RESPONSE_TIME: &str = "load_balancing_policy: { policies: [{ typed_extension_config: { name: legate.lb.least_response_time, typed_config: { \"@type\": type.googleapis.com/legate.lb.v1.LeastResponseTime, decay: 1s } } }] }, ";

#[test]
fn least_response_time_keeps_away_from_a_slow_host() {
    // Three upstreams, one 50 ms slower. Legate balances them by round
    // robin (`/rr`) and by least response time (`/lrt`); Envoy, which has no
    // such policy, by least request on the same upstreams (what the control
    // plane gives it for `lb: least_response_time`).
    let dir = TempDir::new("least-response-time");
    let (_a, a) = echo("a", dir.path());
    let (_b, b) = echo("b", dir.path());
    let (_s, slow) = echo_with("slow", dir.path(), &["--delay-ms", "50"]);
    let eps = ["{UP_a}", "{UP_b}", "{UP_s}"];
    let routes = "              - { match: { prefix: \"/rr\" }, route: { cluster: rr } }\n              - { match: { prefix: \"/lrt\" }, route: { cluster: lrt } }\n";
    let config = |lrt: &str, admin: u16, ports: &Ports| {
        let clusters = cluster_with("rr", &eps, "") + &cluster_with("lrt", &eps, lrt);
        bootstrap("", "", &one_vhost(routes), &clusters)
            .replace("{LISTEN}", &ports["main"].to_string())
            .replace("{ADMIN}", &admin.to_string())
            .replace("{UP_a}", &a.to_string())
            .replace("{UP_b}", &b.to_string())
            .replace("{UP_s}", &slow.to_string())
    };
    let legate = Side::start("legate", Bin::Legate, &[], dir.path(), &["main"], |_, admin, p| {
        config(LEAST_RESPONSE_TIME, admin, p)
    });
    let envoy = Side::start("envoy", Bin::Envoy, &[], dir.path(), &["main"], |_, admin, p| {
        config("lb_policy: LEAST_REQUEST, ", admin, p)
    });
    const N: usize = 60;
    let slow_share = |port: u16, path: &str| {
        let seen = spread(port, path, N);
        assert_eq!(seen.values().sum::<usize>(), N, "{path}: {seen:?}");
        assert!(seen.keys().all(|k| ["a", "b", "slow"].contains(&k.as_str())), "{path}: {seen:?}");
        seen.get("slow").copied().unwrap_or(0) as f64 / N as f64
    };
    let rr = slow_share(legate.port("main"), "/rr");
    let lrt = slow_share(legate.port("main"), "/lrt");
    let envoy_lr = slow_share(envoy.port("main"), "/lrt");
    println!(
        "slow host's share of {N} requests: Legate round robin {rr:.2}, Legate least response time {lrt:.2}, Envoy least request {envoy_lr:.2}"
    );
    assert!((0.3..=0.37).contains(&rr), "round robin gives the slow host a third: {rr}");
    assert!(lrt < 0.10, "least response time keeps away from the slow host: {lrt}");
}
