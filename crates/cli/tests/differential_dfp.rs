//! The dynamic forward proxy (`envoy.filters.http.dynamic_forward_proxy`
//! with an `envoy.clusters.dynamic_forward_proxy` cluster and their shared
//! DNS cache) in Envoy 1.40 and in Legate on the same bootstrap: requests
//! sent to the host their `host` names (a name, an IP literal), per-route
//! host rewrites (a literal, a header), a route to an ordinary cluster, a
//! name that does not resolve (503 `DNS resolution failure`, flag `DF`),
//! and the cache's `dns_cache.<name>.*` stats. Both resolve with
//! getaddrinfo, so `localhost` resolves offline and `.invalid` names fail.

mod harness;

use harness::diff::{diff, send, view};
use harness::http_client::get;
use harness::process::TempDir;
use harness::sides::start_pair;
use harness::upstream::echo;

const CACHE: &str = r#"{ name: dfp, dns_lookup_family: V4_ONLY, disable_dns_refresh_on_failure: true, typed_dns_resolver_config: { name: envoy.network.dns_resolver.getaddrinfo, typed_config: { "@type": type.googleapis.com/envoy.extensions.network.dns_resolver.getaddrinfo.v3.GetAddrInfoDnsResolverConfig } } }"#;

fn bootstrap(a: u16, b: u16, log: &str) -> String {
    let per_route = |rewrite: &str| {
        format!(
            r#"typed_per_filter_config: {{ envoy.filters.http.dynamic_forward_proxy: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_forward_proxy.v3.PerRouteConfig, {rewrite} }} }}"#
        )
    };
    let literal = per_route(&format!("host_rewrite_literal: \"localhost:{b}\""));
    let header = per_route("host_rewrite_header: x-target");
    format!(
        r#"{main}    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: "{log}"
              log_format: {{ text_format_source: {{ inline_string: "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_HOST%\n" }} }}
          http_filters:
          - name: envoy.filters.http.dynamic_forward_proxy
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_forward_proxy.v3.FilterConfig
              dns_cache_config: {CACHE}
{router}          route_config:
            name: local
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - {{ match: {{ prefix: "/literal" }}, route: {{ cluster: dfp }}, {literal} }}
              - {{ match: {{ prefix: "/header" }}, route: {{ cluster: dfp }}, {header} }}
              - {{ match: {{ prefix: "/static" }}, route: {{ cluster: echo }} }}
              - {{ match: {{ prefix: "/" }}, route: {{ cluster: dfp }} }}
  clusters:
  - name: dfp
    connect_timeout: 1s
    lb_policy: CLUSTER_PROVIDED
    cluster_type:
      name: envoy.clusters.dynamic_forward_proxy
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig
        dns_cache_config: {CACHE}
{echo}"#,
        main = harness::template::MAIN_LISTENER,
        router = harness::template::ROUTER,
        echo = harness::template::cluster("echo", &[&a.to_string()]),
    )
}

/// A host header for a request (the harness takes `'static` ones).
fn host(h: String) -> &'static str {
    Box::leak(h.into_boxed_str())
}

#[test]
fn dynamic_forward_proxy_matches_envoy() {
    let ups = TempDir::new("dfp-upstreams");
    let (pa, a) = echo("a", &ups.0);
    let (pb, b) = echo("b", &ups.0);
    let log = ups.0.join("access-{ADMIN}.log");
    let pair = start_pair("dfp", &bootstrap(a, b, &log.to_string_lossy()), &[]);
    let requests = [
        get("/first").host(host(format!("localhost:{a}"))),
        get("/again").host(host(format!("localhost:{a}"))),
        get("/ip").host(host(format!("127.0.0.1:{b}"))),
        get("/literal").host("example.com"),
        get("/header").host("example.com").header("x-target", format!("localhost:{a}")),
        get("/header-absent").host(host(format!("localhost:{b}"))),
        get("/fail").host("nowhere.invalid"),
        get("/fail-again").host("nowhere.invalid"),
        get("/static").host("nowhere.invalid"),
    ];
    let mut problems = Vec::new();
    for r in &requests {
        let (e, l) = (view(&send(pair.envoy, r)), view(&send(pair.legate, r)));
        let d = diff(&e, &l);
        if !d.is_empty() {
            problems.push(format!("{} (host {}):\n{}", r.path, r.host, d.join("\n")));
        }
    }
    assert!(problems.is_empty(), "Legate differs from Envoy:\n{}", problems.join("\n"));
    // What the requests found, the same on both sides (compared above).
    for port in [pair.envoy, pair.legate] {
        let first = send(port, &requests[0]);
        assert!(first.status == 200 && first.body.contains(&format!("localhost:{a}")), "{first:?}");
        let failed = send(port, &requests[6]);
        assert_eq!((failed.status, failed.body.as_str()), (503, "DNS resolution failure"));
    }
    let stats: Vec<String> = [
        "dns_query_attempt",
        "dns_query_success",
        "dns_query_failure",
        "host_added",
        "host_removed",
        "host_overflow",
        "host_address_changed",
        "dns_rq_pending_overflow",
        "num_hosts",
        "circuit_breakers.rq_pending_open",
        "circuit_breakers.rq_pending_remaining",
    ]
    .iter()
    .map(|s| format!("dns_cache.dfp.{s}"))
    .collect();
    pair.same_stats(&stats.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(harness::admin::stat(pair.legate_admin, "dns_cache.dfp.host_added").is_some_and(|n| n >= 3));
    let n = requests.len() + 2;
    // Envoy writes its file every 10 s, and at exit: asked to exit now.
    let quit = harness::http_client::http_request(
        harness::process::addr(pair.envoy_admin),
        "POST",
        "/quitquitquit",
        "admin",
        &[],
        "",
    );
    assert!(quit.is_ok_and(|r| r.status == 200), "Envoy's /quitquitquit");
    let envoy_log = harness::admin::log_lines_within(ups.0.join(format!("access-{}.log", pair.envoy_admin)), n);
    let legate_log = harness::admin::log_lines_within(ups.0.join(format!("access-{}.log", pair.legate_admin)), n);
    assert_eq!(legate_log, envoy_log, "access logs (path, status, flags, upstream host)");
    assert!(legate_log.iter().any(|l| l.starts_with("/fail 503 DF")), "{legate_log:?}");
    drop((pa, pb));
}
