//! Global rate limiting (`envoy.filters.http.ratelimit`), Envoy 1.40 beside
//! `legate proxy`: the same bootstrap on both, each side with its own rate
//! limit service of the test's (tonic) whose answer depends on the
//! descriptors it is sent. Compared for every request: what the client got
//! (status, headers, body), what the upstream got (the service's request
//! headers), the exact `RateLimitRequest`s each proxy sent (domain,
//! descriptors, hits_addend), and the `cluster.<route cluster>.ratelimit.*`
//! stats with the over-limit answers charged to the cluster. Covered:
//! route and virtual host `rate_limits` (an override, `vh_rate_limits`
//! INCLUDE and IGNORE per route, a per-route `domain`, `override_option`
//! without effect as in Envoy 1.40), a descriptor an
//! action cannot make (no call), another stage's (ignored), OK with the
//! service's request and response headers and `x-ratelimit-*` (draft 03),
//! OVER_LIMIT with `x-envoy-ratelimited` and the service's body and
//! headers, `rate_limited_status` with `disable_x_envoy_ratelimited_header`,
//! a service that fails with and without `failure_mode_deny`
//! (`status_on_error`), and `request_type: external` against an internal
//! request.
//!
//! Then the control plane's own rate limit service (on its xDS address,
//! from `RateLimit` resources) behind both proxies: each side on a domain
//! of its own with the same limits answers the same (statuses and
//! `x-ratelimit-*` headers, the reset aside), and a domain both use is one
//! limit for the two.

mod harness;

use harness::grpc_server::{self, GrpcServer};

use harness::config::{bootstrap, cluster, hcm_vhost, listener};
use harness::*;
use legate_api::pb::envoy::config::core::v3::HeaderValue;
use legate_api::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    rate_limit, Code, DescriptorStatus, RateLimit,
};
use legate_api::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use legate_api::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

const H2: &str = ", typed_extension_protocol_options: {envoy.extensions.upstreams.http.v3.HttpProtocolOptions: {\"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, explicit_http_config: {http2_protocol_options: {}}}}";

/// What one side's service was asked, in order: one line per call.
type Seen = Arc<Mutex<Vec<String>>>;

/// One side's rate limit service, on a thread of the test until dropped.
struct Rls {
    server: GrpcServer,
    seen: Seen,
}

fn describe(r: &RateLimitRequest) -> String {
    let descriptors: Vec<String> = r
        .descriptors
        .iter()
        .map(|d| {
            let entries: Vec<String> = d.entries.iter().map(|e| format!("{}={}", e.key, e.value)).collect();
            format!("[{}] limit={:?} hits={:?}", entries.join(", "), d.limit, d.hits_addend)
        })
        .collect();
    format!("domain={} hits_addend={} descriptors={descriptors:?}", r.domain, r.hits_addend)
}

fn header(k: &str, v: &str) -> HeaderValue {
    HeaderValue { key: k.into(), value: v.into(), ..Default::default() }
}

fn status(rpu: u32, unit: rate_limit::Unit, name: &str, remaining: u32, reset: i64) -> DescriptorStatus {
    DescriptorStatus {
        code: Code::Ok as i32,
        current_limit: Some(RateLimit { requests_per_unit: rpu, unit: unit as i32, name: name.into() }),
        limit_remaining: remaining,
        duration_until_reset: Some(legate_api::pb::google::protobuf::Duration { seconds: reset, nanos: 0 }),
        ..Default::default()
    }
}

struct Service(Seen);

#[tonic::async_trait]
impl RateLimitService for Service {
    async fn should_rate_limit(
        &self,
        req: tonic::Request<RateLimitRequest>,
    ) -> Result<tonic::Response<RateLimitResponse>, tonic::Status> {
        let r = req.into_inner();
        self.0.lock().expect("seen").push(describe(&r));
        let has = |v: &str| r.descriptors.iter().any(|d| d.entries.iter().any(|e| e.value == v));
        if has("fail") {
            return Err(tonic::Status::unavailable("down for the test"));
        }
        let over = has("over");
        let statuses = vec![
            status(10, rate_limit::Unit::Minute, "per-user", if over { 0 } else { 7 }, 42),
            status(100, rate_limit::Unit::Hour, "", 50, 1800),
        ];
        let response = RateLimitResponse {
            overall_code: if over { Code::OverLimit } else { Code::Ok } as i32,
            statuses,
            response_headers_to_add: vec![header("x-rl-resp", "from-service")],
            request_headers_to_add: vec![header("x-rl-req", "added")],
            raw_body: if over && has("body") { b"slow down".to_vec() } else { Vec::new() },
            ..Default::default()
        };
        Ok(tonic::Response::new(response))
    }
}

fn start_rls() -> Rls {
    let seen: Seen = Default::default();
    let served = seen.clone();
    let server = grpc_server::serve("the rate limit service", move || {
        tonic::transport::Server::builder().add_service(RateLimitServiceServer::new(Service(served)))
    });
    Rls { server, seen }
}

const RATELIMIT: &str = "envoy.filters.http.ratelimit";

fn filter(cluster: &str, fields: &str) -> String {
    format!("{{name: {RATELIMIT}, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit, rate_limit_service: {{grpc_service: {{envoy_grpc: {{cluster_name: {cluster}}}}}, transport_api_version: V3}}, timeout: 2s, {fields}}}}}, ")
}

fn per_route(fields: &str) -> String {
    format!("typed_per_filter_config: {{{RATELIMIT}: {{\"@type\": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute, {fields}}}}}")
}

fn generic(value: &str) -> String {
    format!("{{actions: [{{generic_key: {{descriptor_value: {value}}}}}]}}")
}

/// The routes: the virtual host's own limit (`vh`), routes with their own
/// (which override it), INCLUDE and IGNORE per route, a header action, a
/// stage-1 limit, and values the service answers over limit or fails on.
fn vhost() -> String {
    let user = "{actions: [{request_headers: {header_name: x-user, descriptor_key: user}}, {generic_key: {descriptor_value: api, descriptor_key: tier}}]}";
    let route = |prefix: &str, limits: &str, extra: &str| {
        format!("{{match: {{prefix: \"{prefix}\"}}, route: {{cluster: echo, rate_limits: [{limits}]}}{extra}}}")
    };
    let routes = [
        route("/user", user, ""),
        route("/include", &generic("inc"), &format!(", {}", per_route("vh_rate_limits: INCLUDE, domain: other"))),
        route("/ignore", "", &format!(", {}", per_route("vh_rate_limits: IGNORE"))),
        route("/override-option", "", &format!(", {}", per_route("override_option: IGNORE_POLICY"))),
        route("/stage1", "{stage: 1, actions: [{generic_key: {descriptor_value: s1}}]}", ""),
        route("/over-body", &format!("{}, {}", generic("over"), generic("body")), ""),
        route("/over", &generic("over"), ""),
        route("/fail", &generic("fail"), ""),
        route("/", "", ""),
    ];
    format!("rate_limits: [{}], routes: [{}]", generic("vh"), routes.join(", "))
}

const LISTENERS: &[&str] = &["main", "quiet", "down_allow", "down_deny", "external"];

fn config(admin: u16, ports: &Ports, rls: u16, echo: u16, closed: u16) -> String {
    let chains = [
        ("main", filter("rls", "domain: test, enable_x_ratelimit_headers: DRAFT_VERSION_03")),
        ("quiet", filter("rls", "domain: quiet, disable_x_envoy_ratelimited_header: true, rate_limited_status: {code: 503}, stat_prefix: quiet")),
        ("down_allow", filter("rls_down", "domain: test")),
        ("down_deny", filter("rls_down", "domain: test, failure_mode_deny: true, status_on_error: {code: 503}")),
        ("external", filter("rls", "domain: ext, request_type: external")),
    ];
    let listeners: Vec<String> = chains
        .iter()
        .map(|(name, f)| listener(name, ports[name], &format!("{{filters: [{}]}}", hcm_vhost(name, &vhost(), f, ""))))
        .collect();
    bootstrap(admin, &listeners, &[cluster("echo", echo, ""), cluster("rls", rls, H2), cluster("rls_down", closed, H2)])
}

/// What the client and the upstream got for one request.
fn exchange(port: u16, path: &str, headers: &[(&str, &str)]) -> String {
    let resp = match http_request(addr(port), "GET", path, "example.com", headers, "") {
        Ok(r) => r,
        Err(e) => return format!("no response: {:?}", e.kind()),
    };
    let echoed: Value = serde_json::from_str(&resp.body).unwrap_or(Value::Null);
    let upstream: BTreeMap<String, String> = echoed["headers"]
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, _)| k.starts_with("x-rl"))
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    let mut client: Vec<(String, String)> = resp
        .headers
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "date" | "x-envoy-upstream-service-time" | "server"))
        .cloned()
        .collect();
    client.sort();
    let body = if echoed.is_null() { resp.body.clone() } else { "(echo)".into() };
    format!("status={} headers={client:?} body={body:?} upstream={upstream:?}", resp.status)
}

/// (listener, path, request headers).
type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

const CASES: &[Case] = &[
    ("main", "/", &[]),
    ("main", "/user", &[("x-user", "alice")]),
    ("main", "/user", &[]),
    ("main", "/include", &[]),
    ("main", "/ignore", &[]),
    ("main", "/override-option", &[]),
    ("main", "/stage1", &[]),
    ("main", "/over", &[]),
    ("main", "/over-body", &[]),
    ("main", "/fail", &[]),
    ("quiet", "/over", &[]),
    ("quiet", "/", &[]),
    ("down_allow", "/", &[]),
    ("down_deny", "/", &[]),
    ("external", "/", &[]),
    ("external", "/", &[("x-envoy-internal", "true")]),
];

const STATS: &[&str] = &[
    "cluster.echo.ratelimit.",
    "cluster.echo.upstream_rq_2",
    "cluster.echo.upstream_rq_4",
    "cluster.echo.upstream_rq_5",
    "cluster.echo.upstream_rq_completed",
    "cluster.echo.internal.",
];

#[test]
fn ratelimit_filter_matches_envoy() {
    let dir = TempDir::new("diff-ratelimit");
    let (_echo, echo) = echo("rl-echo", dir.path());
    let closed = free_port();
    let services = [start_rls(), start_rls()];
    let sides = [
        Side::start("envoy", Bin::Envoy, &[], dir.path(), LISTENERS, |_, admin, ports| {
            config(admin, ports, services[0].server.port, echo, closed)
        }),
        Side::start("legate", Bin::Legate, &[], dir.path(), LISTENERS, |_, admin, ports| {
            config(admin, ports, services[1].server.port, echo, closed)
        }),
    ];
    let mut mismatches = Vec::new();
    for (listener, path, headers) in CASES {
        let got: Vec<String> = sides.iter().map(|s| exchange(s.port(listener), path, headers)).collect();
        let calls: Vec<Vec<String>> =
            services.iter().map(|s| std::mem::take(&mut *s.seen.lock().expect("seen"))).collect();
        println!("{listener} {path} {headers:?}\n  envoy:  {}\n  legate: {}\n  asked: {:?}", got[0], got[1], calls[0]);
        if got[0] != got[1] {
            mismatches.push(format!("{listener} {path}: response\n  envoy:  {}\n  legate: {}", got[0], got[1]));
        }
        if calls[0] != calls[1] {
            mismatches.push(format!("{listener} {path}: calls\n  envoy:  {:?}\n  legate: {:?}", calls[0], calls[1]));
        }
    }
    for prefix in STATS {
        let stats: Vec<_> = sides.iter().map(|s| s.stats(prefix)).collect();
        println!("{prefix}\n  envoy:  {:?}\n  legate: {:?}", stats[0], stats[1]);
        if stats[0] != stats[1] {
            mismatches.push(format!("stats {prefix}\n  envoy:  {:?}\n  legate: {:?}", stats[0], stats[1]));
        }
    }
    assert!(sides[0].stat("cluster.echo.ratelimit.over_limit") > 0, "Envoy was limited");
    assert!(sides[0].stat("cluster.echo.ratelimit.ok") > 0, "Envoy was let through");
    assert!(mismatches.is_empty(), "{} differences:\n{}", mismatches.len(), mismatches.join("\n"));
}

/// A `RateLimit` resource: `domain` with 3 an hour for any user, 5 an hour
/// for `alice`, nothing for `tier` alone.
fn rate_limit_resource(domain: &str) -> String {
    format!(
        "kind: RateLimit\nmetadata: {{name: {domain}}}\nspec:\n  domain: {domain}\n  descriptors:\n    - key: user\n      rate_limit: {{unit: hour, requests_per_unit: 3, name: per-user}}\n    - key: user\n      value: alice\n      rate_limit: {{unit: hour, requests_per_unit: 5}}\n    - key: tier\n"
    )
}

fn cp_config(admin: u16, ports: &Ports, xds: u16, echo: u16, own_domain: &str) -> String {
    let vhost = "rate_limits: [{actions: [{request_headers: {header_name: x-user, descriptor_key: user, skip_if_absent: true}}]}, {actions: [{generic_key: {descriptor_value: gold, descriptor_key: tier}}]}], routes: [{match: {prefix: \"/\"}, route: {cluster: echo}}]";
    let listeners: Vec<String> = [("own", own_domain), ("shared", "shared")]
        .iter()
        .map(|(name, domain)| {
            let f = filter("cp_rls", &format!("domain: {domain}, enable_x_ratelimit_headers: DRAFT_VERSION_03"));
            listener(name, ports[name], &format!("{{filters: [{}]}}", hcm_vhost(name, vhost, &f, "")))
        })
        .collect();
    bootstrap(admin, &listeners, &[cluster("echo", echo, ""), cluster("cp_rls", xds, H2)])
}

/// The answer with the window's reset masked (each proxy asks at its own
/// moment); the reset is checked to be within the hour.
fn masked(port: u16, headers: &[(&str, &str)]) -> String {
    let got = exchange(port, "/", headers);
    let Some(at) = got.find("(\"x-ratelimit-reset\", \"") else { return got };
    let rest = &got[at + 23..];
    let end = rest.find('"').unwrap_or(0);
    let reset: u64 = rest[..end].parse().unwrap_or(u64::MAX);
    assert!(reset <= 3600, "reset within the hour: {got}");
    format!("{}(masked){}", &got[..at + 23], &rest[end..])
}

#[test]
fn control_plane_rate_limit_service_matches_and_is_shared() {
    let dir = TempDir::new("diff-ratelimit-cp");
    let (_echo, echo) = echo("rl-cp-echo", dir.path());
    let cp = ControlPlane::start(dir.path());
    let docs: Vec<String> = ["envoy-side", "legate-side", "shared"].iter().map(|d| rate_limit_resource(d)).collect();
    cp.apply(dir.path(), &docs.join("---\n"));
    let xds = cp.xds;
    let sides = [
        Side::start("envoy", Bin::Envoy, &[], dir.path(), &["own", "shared"], |_, admin, ports| {
            cp_config(admin, ports, xds, echo, "envoy-side")
        }),
        Side::start("legate", Bin::Legate, &[], dir.path(), &["own", "shared"], |_, admin, ports| {
            cp_config(admin, ports, xds, echo, "legate-side")
        }),
    ];
    let mut mismatches = Vec::new();
    let mut limited = 0;
    // Each on its own domain: bob's 3, alice's 5, a request with no user
    // (only `tier`, which has no limit).
    for (user, times) in [("bob", 5), ("alice", 6), ("", 1)] {
        let headers: &[(&str, &str)] = if user.is_empty() { &[] } else { &[("x-user", user)] };
        for i in 0..times {
            let got: Vec<String> = sides.iter().map(|s| masked(s.port("own"), headers)).collect();
            println!("own {user} #{i}\n  envoy:  {}\n  legate: {}", got[0], got[1]);
            limited += usize::from(got[0].starts_with("status=429"));
            if got[0] != got[1] {
                mismatches.push(format!("own {user} #{i}\n  envoy:  {}\n  legate: {}", got[0], got[1]));
            }
        }
    }
    assert_eq!(limited, 3, "bob limited after 3, alice after 5");
    // One domain for both: carol's 3 an hour, counted over the two proxies.
    let carol: &[(&str, &str)] = &[("x-user", "carol")];
    let statuses: Vec<u16> = [0, 1, 0, 1, 0]
        .iter()
        .map(|&i| {
            let r = http_request(addr(sides[i].port("shared")), "GET", "/", "example.com", carol, "");
            r.map(|r| r.status).unwrap_or(0)
        })
        .collect();
    println!("shared: {statuses:?}");
    assert_eq!(statuses, [200, 200, 200, 429, 429], "one limit over both proxies");
    let stats: Vec<_> = sides.iter().map(|s| s.stats("cluster.echo.ratelimit.")).collect();
    println!("cluster.echo.ratelimit.\n  envoy:  {:?}\n  legate: {:?}", stats[0], stats[1]);
    // The same on their own domains; of carol's, Envoy let 2 on and
    // limited 1, Legate let 1 on and limited 1.
    assert_eq!(stats[0].get("over_limit"), stats[1].get("over_limit"), "over-limit answers");
    assert_eq!(stats[0].get("ok").map(|n| n - 1), stats[1].get("ok").copied(), "ok answers");
    assert!(mismatches.is_empty(), "{} differences:\n{}", mismatches.len(), mismatches.join("\n"));
}
