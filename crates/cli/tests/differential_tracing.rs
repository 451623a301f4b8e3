//! Distributed tracing, Envoy 1.40 beside `legate proxy`: the same
//! bootstrap and the same requests through both, each proxy's spans sent
//! to a collector of the test's that decodes the real wire format (Zipkin
//! JSON v2 over HTTP, OTLP over gRPC, SkyWalking segments over gRPC,
//! Datadog's MessagePack over HTTP). Compared: span names (route
//! decorators, `x-envoy-decorator-operation`), kinds (from the listener's
//! `traffic_direction`), parent and child links and ids taken from the
//! propagated context (B3 multi and single header, W3C `traceparent`), the
//! tags, the context each proxy sends upstream, and the sampling decisions
//! (random, client-forced, service-forced, overall) with their stats.

mod harness;

use harness::config::{bootstrap, cluster, listener_chains};
use harness::trace_collector::{Collector, Recorded};
use harness::trace_datadog;
use harness::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

const H2: &str = ", typed_extension_protocol_options: {envoy.extensions.upstreams.http.v3.HttpProtocolOptions: {\"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, explicit_http_config: {http2_protocol_options: {}}}}";
/// How long spans may take to arrive (both proxies flush every 5 s).
const ARRIVAL: Duration = Duration::from_secs(20);

/// A connection manager with `tracing` (`provider` and other fields), its
/// routes: `/dec` decorated as `myOp`, `/fail` to a closed port, the rest
/// to the echo upstream.
fn traced_hcm(stat: &str, tracing: &str, extra: &str, router: &str) -> String {
    let routes = "[{match: {prefix: \"/dec\"}, route: {cluster: echo}, decorator: {operation: myOp}}, {match: {prefix: \"/fail\"}, route: {cluster: closed}}, {match: {prefix: \"/\"}, route: {cluster: echo}}]";
    format!(
        "{{filters: [{{name: envoy.filters.network.http_connection_manager, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager, stat_prefix: {stat}, tracing: {{{tracing}}}, route_config: {{virtual_hosts: [{{name: all, domains: [\"*\"], routes: {routes}}}]}}, http_filters: [{{name: envoy.filters.http.router, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router{router}}}}}]{extra}}}}}]}}"
    )
}

fn zipkin_provider() -> String {
    "provider: {name: envoy.tracers.zipkin, typed_config: {\"@type\": type.googleapis.com/envoy.config.trace.v3.ZipkinConfig, collector_cluster: collector, collector_endpoint: /api/v2/spans, collector_endpoint_version: HTTP_JSON}}".into()
}

fn otel_provider() -> String {
    "provider: {name: envoy.tracers.opentelemetry, typed_config: {\"@type\": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig, grpc_service: {envoy_grpc: {cluster_name: collector}, timeout: 1s}, service_name: svc-t}}".into()
}

/// The proxies' setup: the echo upstream, the collector of each side.
struct Setup {
    echo: u16,
    envoy_collector: u16,
    legate_collector: u16,
    grpc: bool,
    /// A port nobody listens on (the `closed` cluster), the same for both.
    closed: u16,
    /// Router fields (`, start_child_span: true`).
    router: &'static str,
}

/// Node `trace-node` of cluster `trace-test`: an OUTBOUND listener `out`
/// and an INBOUND listener `in`, traced with `out` and `inb` (tracing
/// fields) and `extra` connection manager fields.
fn config(who: &str, admin: u16, ports: &Ports, setup: &Setup, out: &str, inb: &str, extra: &str) -> String {
    let collector = if who == "envoy" { setup.envoy_collector } else { setup.legate_collector };
    let (echo, grpc) = (setup.echo, setup.grpc);
    let out = listener_chains(
        "out",
        ports["out"],
        &[traced_hcm("out", out, extra, setup.router)],
        ", traffic_direction: OUTBOUND",
    );
    let inb = listener_chains(
        "in",
        ports["in"],
        &[traced_hcm("in", inb, extra, setup.router)],
        ", traffic_direction: INBOUND",
    );
    let closed = setup.closed;
    format!(
        "node: {{id: trace-node, cluster: trace-test}}\n{}",
        bootstrap(
            admin,
            &[out, inb],
            &[
                cluster("echo", echo, ""),
                cluster("closed", closed, ""),
                cluster("collector", collector, if grpc { H2 } else { "" })
            ]
        )
    )
}

/// One request and what came back: the response and the request headers
/// the upstream saw (from the echo's body).
struct Exchange {
    resp: Resp,
    upstream: BTreeMap<String, String>,
}

fn send(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Exchange {
    let resp = http_request(addr(port), method, path, "example.com", headers, body).expect("request");
    let echoed: Value = serde_json::from_str(&resp.body).unwrap_or(Value::Null);
    let upstream = echoed["headers"]
        .as_object()
        .map(|o| o.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
        .unwrap_or_default();
    Exchange { resp, upstream }
}

/// The spans of one side by the path in their `http.url`.
fn by_path(spans: &[Recorded]) -> BTreeMap<String, Recorded> {
    spans
        .iter()
        .map(|s| {
            let url = s.tag("http.url").unwrap_or_default();
            let path = url.splitn(4, '/').nth(3).map(|p| format!("/{p}")).unwrap_or_default();
            (path, s.clone())
        })
        .collect()
}

/// What must agree between the two proxies' spans for one request: all
/// but the random ids, times and request id (checked against the
/// request instead).
fn comparable(s: &Recorded) -> String {
    let mut tags = s.tags.clone();
    tags.remove("guid:x-request-id");
    // Each proxy names its own SDK in the OTLP resource.
    let mut resource = s.resource.clone();
    for k in ["telemetry.sdk.language", "telemetry.sdk.name", "telemetry.sdk.version"] {
        if let Some(v) = resource.get_mut(k) {
            *v = "(own)".into();
        }
    }
    format!(
        "name={} kind={} shared={} parent={} annotations={:?} service={} resource={:?} tags={tags:?}",
        s.name,
        s.kind,
        s.shared,
        s.parent_id.is_some(),
        s.annotations,
        s.service,
        resource
    )
}

/// The requests both proxies get, by listener: (listener, method, path,
/// headers, body). Every path is distinct: spans are matched by it.
type Request = (&'static str, &'static str, &'static str, Vec<(&'static str, &'static str)>, &'static str);

fn exchange_all(side: &Side, requests: &[Request]) -> BTreeMap<String, Exchange> {
    requests.iter().map(|(l, m, p, h, b)| (p.to_string(), send(side.port(l), m, p, h, b))).collect()
}

/// The 15th character of the request id the upstream saw (Envoy's trace
/// reason: 9 sampled, a forced, b client, 4 not traced).
fn reason_of(x: &Exchange) -> char {
    x.upstream.get("x-request-id").and_then(|id| id.chars().nth(14)).unwrap_or('?')
}

/// Both sides' spans, by path, once `n` have come to each; the spans of
/// the two sides are compared request by request.
fn compare_spans(envoy: &Collector, legate: &Collector, n: usize) -> [BTreeMap<String, Recorded>; 2] {
    let e = by_path(&envoy.wait_spans(n, ARRIVAL));
    let l = by_path(&legate.wait_spans(n, ARRIVAL));
    // A little longer: a span too many would come now.
    std::thread::sleep(Duration::from_secs(6));
    let (e_all, l_all) = (envoy.spans(), legate.spans());
    println!("spans: envoy {}, legate {}", e_all.len(), l_all.len());
    assert_eq!(e_all.len(), n, "Envoy's span count: {e_all:#?}");
    assert_eq!(l_all.len(), n, "Legate's span count: {l_all:#?}");
    assert_eq!(e.keys().collect::<Vec<_>>(), l.keys().collect::<Vec<_>>(), "the requests traced");
    for (path, es) in &e {
        let ls = &l[path];
        assert_eq!(comparable(es), comparable(ls), "span of {path}:\nEnvoy  {es:#?}\nLegate {ls:#?}");
    }
    [e, l]
}

/// Every side's tracing stats for `prefixes`, compared.
fn compare_stats(sides: &[Side; 2], names: &[&str]) {
    for name in names {
        let (e, l) = (sides[0].stat(name), sides[1].stat(name));
        println!("{name}: envoy {e}, legate {l}");
        assert_eq!(e, l, "{name}");
    }
}

fn tracing_stats(listener: &str) -> Vec<String> {
    ["client_enabled", "not_traceable", "random_sampling", "service_forced", "health_check"]
        .iter()
        .map(|s| format!("http.{listener}.tracing.{s}"))
        .collect()
}

/// The running pieces of a scenario: scratch dir, Envoy's and Legate's
/// collectors, the two proxies, the echo upstream.
type Running = (TempDir, Collector, Collector, [Side; 2], Proc);

fn start(name: &str, grpc: bool, out: &str, inb: &str, extra: &str) -> Running {
    start_with(name, grpc, out, inb, extra, "")
}

fn start_with(name: &str, grpc: bool, out: &str, inb: &str, extra: &str, router: &'static str) -> Running {
    let make = || if grpc { Collector::otlp() } else { Collector::zipkin() };
    start_collecting(name, grpc, out, inb, extra, router, make)
}

fn start_collecting(
    name: &str,
    grpc: bool,
    out: &str,
    inb: &str,
    extra: &str,
    router: &'static str,
    make: impl Fn() -> Collector,
) -> Running {
    let dir = TempDir::new(name);
    let (echo_proc, echo) = echo("a", dir.path());
    let (ec, lc) = (make(), make());
    let setup = Setup { echo, envoy_collector: ec.port, legate_collector: lc.port, grpc, closed: free_port(), router };
    let sides =
        both(dir.path(), &[], &["out", "in"], |who, admin, ports| config(who, admin, ports, &setup, out, inb, extra));
    (dir, ec, lc, sides, echo_proc)
}

const TRACE_128: &str = "80f198ee56343ba864fe8b2a57d3eff7";

#[test]
fn zipkin_spans_and_b3_propagation_match_envoy() {
    let z = zipkin_provider();
    let (_dir, ec, lc, sides, _echo) = start("trace-zipkin", false, &z, &z, "");
    let b3 = "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90";
    let parent = vec![("x-b3-traceid", "0000000000000001"), ("x-b3-spanid", "0000000000000002"), ("x-b3-sampled", "1")];
    let requests: Vec<Request> = vec![
        ("out", "GET", "/dec/1?q=1", vec![("user-agent", "ua1")], ""),
        ("out", "GET", "/plain/2", vec![], ""),
        ("in", "GET", "/dec/3", vec![], ""),
        ("in", "GET", "/plain/4", [parent, vec![("x-envoy-decorator-operation", "fromHdr")]].concat(), ""),
        ("in", "POST", "/plain/5", vec![("x-client-trace-id", "abc")], "hello"),
        ("in", "GET", "/plain/6", vec![("b3", b3)], ""),
        ("in", "GET", "/fail/7", vec![], ""),
        ("out", "GET", "/plain/8", vec![("x-b3-traceid", "00000000000000aa"), ("x-b3-spanid", "00000000000000bb")], ""),
    ];
    let seen: Vec<BTreeMap<String, Exchange>> = sides.iter().map(|s| exchange_all(s, &requests)).collect();
    let spans = compare_spans(&ec, &lc, requests.len());
    for (i, who) in ["envoy", "legate"].iter().enumerate() {
        let (x, s) = (&seen[i], &spans[i]);
        for (path, ex) in x.iter().filter(|(p, _)| !p.starts_with("/fail")) {
            let span = &s[path];
            let up = &ex.upstream;
            assert_eq!(span.tag("guid:x-request-id"), up.get("x-request-id").map(String::as_str), "{who} {path}");
            if path == "/plain/6" {
                // Single-header B3 in, single-header B3 out (the shared span's own).
                let want = format!("{}-{}-1-{}", span.trace_id, span.id, span.parent_id.clone().unwrap_or_default());
                assert_eq!(up.get("b3"), Some(&want), "{who} {path}");
                assert!(!up.contains_key("x-b3-traceid"), "{who} {path}");
                continue;
            }
            assert_eq!(up.get("x-b3-traceid"), Some(&span.trace_id), "{who} {path}");
            assert_eq!(up.get("x-b3-spanid"), Some(&span.id), "{who} {path}");
            assert_eq!(up.get("x-b3-sampled").map(String::as_str), Some("1"), "{who} {path}");
            assert_eq!(up.get("x-b3-parentspanid"), span.parent_id.as_ref(), "{who} {path}");
        }
        assert_eq!(reason_of(&x["/plain/2"]), '9', "{who}: sampled");
        assert_eq!(reason_of(&x["/plain/5"]), 'b', "{who}: client-forced");
        assert_eq!(x["/dec/1?q=1"].upstream.get("x-envoy-decorator-operation").map(String::as_str), Some("myOp"));
        assert!(!x["/plain/4"].upstream.contains_key("x-envoy-decorator-operation"), "{who}: taken off ingress");
        assert_eq!(x["/dec/3"].resp.header("x-envoy-decorator-operation"), Some("myOp"), "{who}: ingress response");
        // Ids from the propagated context.
        assert_eq!(
            (s["/plain/4"].trace_id.as_str(), s["/plain/4"].id.as_str()),
            ("0000000000000001", "0000000000000002")
        );
        assert_eq!((s["/plain/6"].trace_id.as_str(), s["/plain/6"].id.as_str()), (TRACE_128, "e457b5a2e4d86bd1"));
        assert_eq!(s["/plain/8"].parent_id.as_deref(), Some("00000000000000bb"), "{who}: egress child of the caller");
        assert_eq!(s["/plain/4"].name, "fromHdr");
        assert_eq!(s["/dec/1?q=1"].name, "myOp");
    }
    let mut names = tracing_stats("out");
    names.extend(tracing_stats("in"));
    names.push("tracing.zipkin.spans_sent".into());
    compare_stats(&sides, &names.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(sides[1].stat("tracing.zipkin.reports_sent") >= 1);
    for (path, ct) in lc.requests() {
        assert_eq!((path.as_str(), ct.as_str()), ("/api/v2/spans", "application/json"));
    }
}

#[test]
fn opentelemetry_spans_and_traceparent_match_envoy() {
    let o = otel_provider();
    let (_dir, ec, lc, sides, _echo) = start("trace-otel", true, &o, &o, "");
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let requests: Vec<Request> = vec![
        ("out", "GET", "/dec/1", vec![], ""),
        ("out", "GET", "/plain/2", vec![], ""),
        ("in", "GET", "/dec/3", vec![], ""),
        (
            "in",
            "GET",
            "/plain/4",
            vec![("traceparent", tp), ("tracestate", "k=v"), ("x-envoy-decorator-operation", "fromHdr")],
            "",
        ),
        ("in", "POST", "/plain/5", vec![("x-client-trace-id", "abc")], "hello"),
        ("in", "GET", "/plain/6", vec![("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00")], ""),
        ("in", "GET", "/fail/7", vec![], ""),
        ("out", "GET", "/plain/8", vec![("traceparent", tp)], ""),
    ];
    let seen: Vec<BTreeMap<String, Exchange>> = sides.iter().map(|s| exchange_all(s, &requests)).collect();
    // The unsampled parent of /plain/6 leaves its span unreported.
    let spans = compare_spans(&ec, &lc, requests.len() - 1);
    for (i, who) in ["envoy", "legate"].iter().enumerate() {
        let (x, s) = (&seen[i], &spans[i]);
        for (path, span) in s.iter().filter(|(p, _)| !p.starts_with("/fail")) {
            let up = &x[path].upstream;
            let want = format!("00-{}-{}-01", span.trace_id, span.id);
            assert_eq!(up.get("traceparent"), Some(&want), "{who} {path}");
            assert_eq!(span.tag("guid:x-request-id"), up.get("x-request-id").map(String::as_str), "{who} {path}");
        }
        let unsampled = x["/plain/6"].upstream.get("traceparent").cloned().unwrap_or_default();
        assert!(
            unsampled.starts_with("00-0af7651916cd43dd8448eb211c80319c-") && unsampled.ends_with("-00"),
            "{who}: {unsampled}"
        );
        assert_eq!(x["/plain/4"].upstream.get("tracestate").map(String::as_str), Some("k=v"), "{who}");
        for p in ["/plain/4", "/plain/8"] {
            assert_eq!(s[p].trace_id, "0af7651916cd43dd8448eb211c80319c", "{who} {p}");
            assert_eq!(s[p].parent_id.as_deref(), Some("b7ad6b7169203331"), "{who} {p}");
        }
        assert_eq!(s["/plain/2"].name, "egress example.com");
        assert_eq!(s["/plain/4"].name, "fromHdr");
        assert_eq!((s["/dec/3"].name.as_str(), s["/dec/3"].kind.as_str()), ("myOp", "SERVER"));
        assert_eq!(s["/plain/2"].kind, "CLIENT");
        assert_eq!(s["/plain/2"].service, "svc-t");
    }
    let mut names = tracing_stats("out");
    names.extend(tracing_stats("in"));
    names.push("tracing.opentelemetry.spans_sent".into());
    compare_stats(&sides, &names.iter().map(String::as_str).collect::<Vec<_>>());
}

#[test]
fn sampling_decisions_match_envoy() {
    let z = zipkin_provider();
    let none = format!("{z}, random_sampling: {{value: 0}}");
    let off = format!("{z}, overall_sampling: {{value: 0}}");
    // Internal callers (loopback) may force a trace with x-envoy-force-trace.
    let internal = ", use_remote_address: true, internal_address_config: {cidr_ranges: [{address_prefix: 127.0.0.1, prefix_len: 32}]}";
    let (_dir, ec, lc, sides, _echo) = start("trace-sampling", false, &none, &off, internal);
    let requests: Vec<Request> = vec![
        ("out", "GET", "/s/1", vec![], ""),
        ("out", "GET", "/s/2", vec![("x-client-trace-id", "c1")], ""),
        ("out", "GET", "/s/3", vec![("x-envoy-force-trace", "1")], ""),
        ("out", "GET", "/s/4", vec![("x-b3-sampled", "1")], ""),
        ("in", "GET", "/o/5", vec![("x-client-trace-id", "c2")], ""),
        ("in", "GET", "/o/6", vec![], ""),
    ];
    let seen: Vec<BTreeMap<String, Exchange>> = sides.iter().map(|s| exchange_all(s, &requests)).collect();
    let spans = compare_spans(&ec, &lc, 3);
    for (i, who) in ["envoy", "legate"].iter().enumerate() {
        let x = &seen[i];
        let reasons: Vec<char> =
            ["/s/1", "/s/2", "/s/3", "/s/4", "/o/5", "/o/6"].iter().map(|p| reason_of(&x[*p])).collect();
        assert_eq!(reasons, ['4', 'b', 'a', '4', '4', '4'], "{who}: trace reasons in x-request-id");
        let sampled: Vec<&str> = ["/s/1", "/s/2", "/s/4", "/o/5"]
            .iter()
            .map(|p| x[*p].upstream.get("x-b3-sampled").map_or("", String::as_str))
            .collect();
        assert_eq!(sampled, ["0", "1", "1", "0"], "{who}: x-b3-sampled upstream");
        // A forced trace's request id comes back with the response.
        let forced = &x["/s/3"];
        assert_eq!(
            forced.resp.header("x-request-id"),
            forced.upstream.get("x-request-id").map(String::as_str),
            "{who}"
        );
        assert_eq!(x["/s/1"].resp.header("x-request-id"), None, "{who}");
        assert_eq!(spans[i].keys().collect::<Vec<_>>(), ["/s/2", "/s/3", "/s/4"], "{who}: spans");
    }
    let mut names = tracing_stats("out");
    names.extend(tracing_stats("in"));
    compare_stats(&sides, &names.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(sides[1].stat("http.out.tracing.not_traceable"), 2);
    assert_eq!(sides[1].stat("http.in.tracing.not_traceable"), 2);
}

/// The spans of one side, the upstream spans keyed by their parent's path.
fn split_children(spans: &[Recorded]) -> (BTreeMap<String, Recorded>, BTreeMap<String, Recorded>) {
    let (children, parents): (Vec<Recorded>, Vec<Recorded>) =
        spans.iter().cloned().partition(|s| s.name.starts_with("router "));
    let parents = by_path(&parents);
    let children = children
        .into_iter()
        .filter_map(|c| {
            // Same trace: on an ingress listener Envoy's Zipkin child shares
            // its parent's id rather than naming it as parent.
            let path = parents.iter().find(|(_, p)| p.trace_id == c.trace_id)?.0.clone();
            Some((path, c))
        })
        .collect();
    (parents, children)
}

/// With upstream spans (`router_fields` or `tracing_fields`), custom tags
/// and a short `max_path_tag_length`: both proxies' spans, parents and
/// children, compared; the upstream request carries the child's context.
fn child_spans_match(name: &str, grpc: bool, tracing_fields: &str, router_fields: &'static str) {
    let provider = if grpc { otel_provider() } else { zipkin_provider() };
    let tags = "custom_tags: [{tag: ltag, literal: {value: lv}}, {tag: htag, request_header: {name: x-tag, default_value: none}}, {tag: etag, environment: {name: LEGATE_TRACE_TEST_UNSET, default_value: d}}]";
    let tracing = format!("{provider}, max_path_tag_length: 6, {tags}{tracing_fields}");
    let (_dir, ec, lc, sides, _echo) = start_with(name, grpc, &tracing, &tracing, "", router_fields);
    let requests: Vec<Request> = vec![
        ("out", "GET", "/plain/1?long=query", vec![], ""),
        ("in", "GET", "/dec/2", vec![("x-tag", "hv")], ""),
        ("in", "GET", "/fail/3", vec![], ""),
    ];
    let seen: Vec<BTreeMap<String, Exchange>> = sides.iter().map(|s| exchange_all(s, &requests)).collect();
    let n = 2 * requests.len();
    let (e, l) = (ec.wait_spans(n, ARRIVAL), lc.wait_spans(n, ARRIVAL));
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!((ec.spans().len(), lc.spans().len()), (n, n), "span counts:\nEnvoy {e:#?}\nLegate {l:#?}");
    let (ep, ech) = split_children(&e);
    let (lp, lch) = split_children(&l);
    assert_eq!(ep.keys().collect::<Vec<_>>(), ["/dec/2", "/fail/", "/plain"], "Envoy's truncated paths");
    assert_eq!(ech.len(), requests.len(), "Envoy's children: {e:#?}");
    for (side, parents, children) in [("envoy", &ep, &ech), ("legate", &lp, &lch)] {
        assert_eq!(parents.keys().collect::<Vec<_>>(), ep.keys().collect::<Vec<_>>(), "{side}");
        assert_eq!(children.keys().collect::<Vec<_>>(), ech.keys().collect::<Vec<_>>(), "{side}");
    }
    for path in ep.keys() {
        assert_eq!(
            comparable(&ep[path]),
            comparable(&lp[path]),
            "span of {path}:\nEnvoy  {:#?}\nLegate {:#?}",
            ep[path],
            lp[path]
        );
        let (a, b) = (&ech[path], &lch[path]);
        assert_eq!(comparable(a), comparable(b), "upstream span of {path}:\nEnvoy  {a:#?}\nLegate {b:#?}");
        assert_eq!(a.trace_id.len(), ep[path].trace_id.len());
    }
    for (i, (parents, children)) in [(&ep, &ech), (&lp, &lch)].into_iter().enumerate() {
        for (path, full) in [("/plain", "/plain/1?long=query"), ("/dec/2", "/dec/2")] {
            let (up, child) = (&seen[i][full].upstream, &children[path]);
            if grpc {
                assert_eq!(up.get("traceparent"), Some(&format!("00-{}-{}-01", child.trace_id, child.id)), "{path}");
            } else {
                assert_eq!(up.get("x-b3-spanid"), Some(&child.id), "{path}");
                assert_eq!(up.get("x-b3-parentspanid"), child.parent_id.as_ref(), "{path}");
            }
            assert_eq!(child.trace_id, parents[path].trace_id);
        }
        assert_eq!(parents["/dec/2"].tag("htag"), Some("hv"));
        assert_eq!(parents["/plain"].tag("htag"), Some("none"));
        assert_eq!((parents["/plain"].tag("ltag"), parents["/plain"].tag("etag")), (Some("lv"), Some("d")));
    }
}

#[test]
fn zipkin_router_child_spans_and_custom_tags_match_envoy() {
    child_spans_match("trace-child-zipkin", false, "", ", start_child_span: true");
}

#[test]
fn opentelemetry_upstream_spans_match_envoy() {
    child_spans_match("trace-child-otel", true, ", spawn_upstream_span: true", "");
}

/// A collector that refuses every batch (503), and one that is not there:
/// requests are served as ever, and the spans sent and the reports dropped
/// or failed are counted as Envoy counts them.
#[test]
fn collector_failures_are_counted_as_envoy_counts_them() {
    let z = zipkin_provider();
    let always = ", always_set_request_id_in_response: true";
    let (_dir, ec, lc, sides, _echo) =
        start_collecting("trace-refused", false, &z, &z, always, "", || Collector::zipkin_answering(503));
    let requests: Vec<Request> = (0..5).map(|_| ("in", "GET", "/plain/refused", vec![], "")).collect();
    for side in &sides {
        for (l, m, p, h, b) in &requests {
            let x = send(side.port(l), m, p, h, b);
            assert_eq!(x.resp.status, 200);
            // always_set_request_id_in_response: the id the upstream saw, traced.
            let id = x.resp.header("x-request-id").unwrap_or_default();
            assert_eq!(Some(id), x.upstream.get("x-request-id").map(String::as_str), "{}", side.who);
            assert_eq!(id.chars().nth(14), Some('9'), "{}", side.who);
        }
    }
    for (side, c) in sides.iter().zip([&ec, &lc]) {
        c.wait_spans(5, ARRIVAL);
        wait_for("the batch's answer counted", ARRIVAL, || {
            (side.stat("tracing.zipkin.reports_dropped") >= 1).then_some(())
        });
    }
    for side in &sides {
        let (sent, dropped, ok) = (
            side.stat("tracing.zipkin.spans_sent"),
            side.stat("tracing.zipkin.reports_dropped"),
            side.stat("tracing.zipkin.reports_sent"),
        );
        println!("{}: spans_sent {sent}, reports_dropped {dropped}, reports_sent {ok}", side.who);
        assert_eq!((sent, ok), (5, 0), "{}", side.who);
    }
    drop((ec, lc));
    // No collector at all: the same requests; Envoy's async client answers
    // the refused connection itself (503), so the report counts as dropped.
    let (_dir2, _ec2, _lc2, sides2, _echo2) = start_collecting("trace-down", false, &z, &z, "", "", Collector::absent);
    for side in &sides2 {
        for (l, m, p, h, b) in &requests {
            assert_eq!(send(side.port(l), m, p, h, b).resp.status, 200);
        }
        wait_for("the unanswered report counted", ARRIVAL, || {
            (side.stat("tracing.zipkin.reports_dropped") >= 1).then_some(())
        });
    }
    let names = ["tracing.zipkin.spans_sent", "tracing.zipkin.reports_sent", "tracing.zipkin.reports_failed"];
    compare_stats(&sides2, &names);
    assert_eq!(sides2[1].stat("tracing.zipkin.spans_sent"), 5);
}

fn skywalking_provider(client: &str) -> String {
    format!("provider: {{name: envoy.tracers.skywalking, typed_config: {{\"@type\": type.googleapis.com/envoy.config.trace.v3.SkyWalkingConfig, grpc_service: {{envoy_grpc: {{cluster_name: collector}}, timeout: 0.250s}}{client}}}}}")
}

/// An `sw8` value's eight fields, the text ones decoded.
fn sw8_fields(v: &str) -> Vec<String> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    v.split('-')
        .enumerate()
        .map(|(i, f)| match i {
            0 | 3 => f.to_string(),
            _ => String::from_utf8(b64.decode(f).unwrap_or_default()).unwrap_or_default(),
        })
        .collect()
}

/// One side's SkyWalking spans keyed `<path> ENTRY` / `<path> EXIT`, the
/// path from the entry span's operation (its exit span's parent).
fn sw_by_path(spans: &[Recorded]) -> BTreeMap<String, Recorded> {
    let entries: BTreeMap<&str, &Recorded> =
        spans.iter().filter(|s| s.kind == "ENTRY").map(|s| (s.id.as_str(), s)).collect();
    spans
        .iter()
        .map(|s| {
            let entry =
                if s.kind == "ENTRY" { Some(s) } else { s.parent_id.as_deref().and_then(|p| entries.get(p).copied()) };
            (format!("{} {}", entry.map_or("?", |e| e.name.as_str()), s.kind), s.clone())
        })
        .collect()
}

/// SkyWalking, Envoy 1.40 beside Legate: the segments each proxy reports
/// (an entry span named after the path whatever the decorator, the
/// router's exit span renamed to the upstream path with the upstream as
/// its peer), the references to a caller's `sw8`, a bad `sw8` starting a
/// new trace, the `sw8` each sends upstream (from the exit span), the
/// service and instance names (given, and from the node), the backend
/// token and `tracing.skywalking.segments_sent`.
#[test]
fn skywalking_segments_and_sw8_match_envoy() {
    let given =
        skywalking_provider(", client_config: {service_name: sw-svc, instance_name: sw-inst, backend_token: tok}");
    let node = skywalking_provider("");
    let (_dir, ec, lc, sides, _echo) = start_collecting(
        "trace-skywalking",
        true,
        &given,
        &node,
        "",
        ", start_child_span: true",
        Collector::skywalking,
    );
    let caller = "1-dHJhY2UtMQ==-c2VnLTE=-3-Y2FsbGVyLXN2Yw==-Y2FsbGVyLWluc3Q=-L2NhbGxlci9lcA==-ZXhhbXBsZS5jb206ODA=";
    let requests: Vec<Request> = vec![
        ("out", "GET", "/dec/1?q=1", vec![("user-agent", "ua1")], ""),
        ("in", "GET", "/plain/2", vec![("sw8", caller), ("x-envoy-decorator-operation", "fromHdr")], ""),
        ("in", "POST", "/plain/3", vec![("sw8", "not-a-context")], "hello"),
        ("in", "GET", "/fail/4", vec![], ""),
    ];
    let seen: Vec<BTreeMap<String, Exchange>> = sides.iter().map(|s| exchange_all(s, &requests)).collect();
    let n = 2 * requests.len();
    let (e, l) = (ec.wait_spans(n, ARRIVAL), lc.wait_spans(n, ARRIVAL));
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!((ec.spans().len(), lc.spans().len()), (n, n), "span counts:\nEnvoy {e:#?}\nLegate {l:#?}");
    let (es, ls) = (sw_by_path(&e), sw_by_path(&l));
    assert_eq!(es.keys().collect::<Vec<_>>(), ls.keys().collect::<Vec<_>>(), "Envoy {e:#?}\nLegate {l:#?}");
    for (key, a) in &es {
        let b = &ls[key];
        assert_eq!(comparable(a), comparable(b), "span {key}:\nEnvoy  {a:#?}\nLegate {b:#?}");
    }
    for (i, spans) in [&es, &ls].into_iter().enumerate() {
        let who = ["envoy", "legate"][i];
        for (path, x) in seen[i].iter().filter(|(p, _)| !p.starts_with("/fail")) {
            let (entry, exit) = (&spans[&format!("{path} ENTRY")], &spans[&format!("{path} EXIT")]);
            let segment = exit.id.split('/').next().unwrap_or_default();
            let sw8 = sw8_fields(x.upstream.get("sw8").map_or("", String::as_str));
            let want = [
                "1",
                &exit.trace_id,
                segment,
                "1",
                &exit.service,
                &exit.resource["instance"],
                &entry.name,
                &exit.resource["peer"],
            ];
            assert_eq!(sw8, want, "{who} {path}: sw8 upstream");
            assert_eq!(exit.parent_id.as_deref(), Some(entry.id.as_str()), "{who} {path}");
        }
        assert_eq!(spans["/plain/2 ENTRY"].trace_id, "trace-1", "{who}: the caller's trace");
        assert_eq!(spans["/plain/2 ENTRY"].parent_id.as_deref(), Some("seg-1/3"), "{who}");
        assert_ne!(spans["/plain/3 ENTRY"].trace_id, "trace-1", "{who}: a new trace");
        assert_eq!(
            (spans["/dec/1?q=1 ENTRY"].service.as_str(), spans["/plain/2 ENTRY"].service.as_str()),
            ("sw-svc", "trace-test")
        );
    }
    assert_eq!(ec.tokens().first().map(String::as_str), Some("tok"));
    assert_eq!(lc.tokens().first().map(String::as_str), Some("tok"));
    let (e_sent, l_sent) =
        (sides[0].stat("tracing.skywalking.segments_sent"), sides[1].stat("tracing.skywalking.segments_sent"));
    println!("segments_sent: envoy {e_sent}, legate {l_sent}");
    assert_eq!((e_sent, l_sent), (4, 4));
}

fn datadog_provider(service: &str, extra: &str) -> String {
    format!("provider: {{name: envoy.tracers.datadog, typed_config: {{\"@type\": type.googleapis.com/envoy.config.trace.v3.DatadogConfig, collector_cluster: collector, service_name: {service}{extra}}}}}")
}

/// One side's Datadog spans: the connection manager's by the path of its
/// `http.url`, the router's as `<path> child` (by its parent's id).
fn dd_by_path(spans: &[Recorded]) -> BTreeMap<String, Recorded> {
    let (roots, children): (Vec<Recorded>, Vec<Recorded>) =
        spans.iter().cloned().partition(|s| s.tag("http.url").is_some());
    let mut out = by_path(&roots);
    for c in children {
        let parent = out.iter().find(|(_, r)| Some(&r.id) == c.parent_id.as_ref()).map(|(p, _)| format!("{p} child"));
        out.insert(parent.unwrap_or_else(|| format!("? {}", c.id)), c);
    }
    out
}

/// Datadog, Envoy 1.40 beside Legate: the spans each sends its agent
/// (MessagePack on `/v0.4/traces`: resource from the operation, the
/// router's child span, service, error, the tags, the trace's tags and
/// sampling priority on its first span), a caller's context from the
/// `x-datadog-*` headers and from W3C headers, a bad one starting a new
/// trace, Envoy's "not traced" as priority -1, the headers each sends
/// upstream (both styles) and to the agent, and the agent's sampling
/// rate, once it has answered with one, deciding later traces.
#[test]
fn datadog_spans_and_propagation_match_envoy() {
    let out = format!("{}, random_sampling: {{value: 0}}", datadog_provider("dd-svc", ", collector_hostname: dd-host"));
    let inb = datadog_provider("dd-in", "");
    let (_dir, ec, lc, sides, _echo) =
        start_collecting("trace-datadog", false, &out, &inb, "", ", start_child_span: true", Collector::datadog);
    let dd = vec![
        ("x-datadog-trace-id", "1234"),
        ("x-datadog-parent-id", "5678"),
        ("x-datadog-sampling-priority", "2"),
        ("x-datadog-origin", "synthetics"),
        ("x-datadog-tags", "_dd.p.dm=-4,_dd.p.usr=x"),
    ];
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let requests: Vec<Request> = vec![
        ("out", "GET", "/dec/1?q=1", vec![("user-agent", "ua1")], ""),
        ("out", "GET", "/plain/2", vec![("x-client-trace-id", "c1")], ""),
        ("in", "GET", "/plain/3", [dd, vec![("x-envoy-decorator-operation", "fromHdr")]].concat(), ""),
        ("in", "GET", "/plain/4", vec![("traceparent", tp), ("tracestate", "dd=s:1;o:rum,k=v")], ""),
        ("in", "GET", "/fail/5", vec![], ""),
        ("in", "GET", "/plain/6", vec![("x-datadog-trace-id", "abc")], ""),
        ("in", "POST", "/plain/7", vec![("x-datadog-trace-id", "99"), ("x-datadog-parent-id", "77")], "hi"),
    ];
    let seen: Vec<BTreeMap<String, Exchange>> = sides.iter().map(|s| exchange_all(s, &requests)).collect();
    let n = 2 * requests.len();
    let (e, l) = (ec.wait_spans(n, ARRIVAL), lc.wait_spans(n, ARRIVAL));
    // A span too many would show in the counts after the rates' flushes.
    let (es, ls) = (dd_by_path(&e), dd_by_path(&l));
    assert_eq!(es.keys().collect::<Vec<_>>(), ls.keys().collect::<Vec<_>>(), "Envoy {e:#?}\nLegate {l:#?}");
    for (key, a) in &es {
        let b = &ls[key];
        assert_eq!(
            trace_datadog::comparable(a),
            trace_datadog::comparable(b),
            "span {key}:\nEnvoy  {a:#?}\nLegate {b:#?}"
        );
    }
    for (i, spans) in [&es, &ls].into_iter().enumerate() {
        let who = ["envoy", "legate"][i];
        for (path, x) in &seen[i] {
            let (root, child) = (&spans[path], &spans[&format!("{path} child")]);
            assert_eq!(child.trace_id, root.trace_id, "{who} {path}");
            if path.starts_with("/fail") {
                continue;
            }
            let up = &x.upstream;
            assert_eq!(
                trace_datadog::upstream_context(up),
                trace_datadog::upstream_context(&seen[0][path].upstream),
                "{who} {path}: upstream headers"
            );
            assert_eq!(up.get("x-datadog-trace-id"), Some(&root.trace_id), "{who} {path}");
            assert_eq!(up.get("x-datadog-parent-id"), Some(&child.id), "{who} {path}: the router's span");
            let priority =
                root.resource.get("metric:_sampling_priority_v1").map(|p| p.trim_end_matches(".0").to_string());
            assert_eq!(up.get("x-datadog-sampling-priority"), priority.as_ref(), "{who} {path}");
            let high = root.tag("_dd.p.tid").unwrap_or("0000000000000000");
            let (low, id) = (root.trace_id.parse::<u64>().unwrap_or(0), child.id.parse::<u64>().unwrap_or(0));
            let flag =
                if priority.as_deref().and_then(|p| p.parse::<i32>().ok()).unwrap_or(0) > 0 { "01" } else { "00" };
            assert_eq!(up.get("traceparent"), Some(&format!("00-{high}{low:016x}-{id:016x}-{flag}")), "{who} {path}");
            assert_eq!(root.tag("guid:x-request-id"), up.get("x-request-id").map(String::as_str), "{who} {path}");
        }
        assert_eq!(
            (spans["/plain/3"].trace_id.as_str(), spans["/plain/3"].parent_id.as_deref()),
            ("1234", Some("5678"))
        );
        assert_eq!(spans["/plain/3"].name, "fromHdr");
        assert_eq!(spans["/plain/4"].trace_id, "9532127138774266268", "{who}: the W3C caller's trace");
        assert_eq!(spans["/plain/4"].tag("_dd.p.tid"), Some("0af7651916cd43dd"), "{who}");
        assert!(seen[i]["/plain/4"].upstream.get("tracestate").is_some_and(|s| s.ends_with(",k=v")), "{who}");
        assert_ne!(spans["/plain/6"].trace_id, "abc", "{who}");
        assert_eq!(spans["/dec/1?q=1"].resource.get("metric:_sampling_priority_v1").map(String::as_str), Some("-1"));
        assert_eq!((spans["/dec/1?q=1"].name.as_str(), spans["/dec/1?q=1"].service.as_str()), ("myOp", "dd-svc"));
        assert_eq!(spans["/fail/5"].resource["error"], "1", "{who}");
    }
    // The agent's requests: path, format, the tracer's headers, one trace
    // per request (out's and in's tracers name their hosts).
    for (who, c) in [("envoy", &ec), ("legate", &lc)] {
        let headers = c.headers();
        let count: usize = headers.iter().filter_map(|h| h.get("x-datadog-trace-count")?.parse::<usize>().ok()).sum();
        assert_eq!(count, requests.len(), "{who}: {headers:#?}");
        let mut hosts: Vec<&str> = headers.iter().filter_map(|h| h.get("host").map(String::as_str)).collect();
        hosts.sort_unstable();
        hosts.dedup();
        assert_eq!(hosts, ["collector", "dd-host"], "{who}");
        for h in &headers {
            assert_eq!(h.get("datadog-meta-lang").map(String::as_str), Some("cpp"), "{who}");
        }
        for (path, ct) in c.requests() {
            assert_eq!((path.as_str(), ct.as_str()), ("/v0.4/traces", "application/msgpack"), "{who}");
        }
    }
    let mut names = tracing_stats("out");
    names.extend(tracing_stats("in"));
    names.push("tracing.datadog.reports_dropped".into());
    compare_stats(&sides, &names.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(sides[1].stat("tracing.datadog.reports_sent") >= 2);
    datadog_agent_rates_match_envoy(&sides, [&ec, &lc], n);
}

/// Once the agent has answered with a rate for the service, a trace the
/// caller did not decide is kept by it (decision maker -1, `_dd.p.ksr`).
/// `n` spans came before; no more than the four of these come after.
fn datadog_agent_rates_match_envoy(sides: &[Side; 2], collectors: [&Collector; 2], mut n: usize) {
    let rates = r#"{"rate_by_service":{"service:,env:":1}}"#;
    let mut roots: Vec<Vec<Recorded>> = vec![Vec::new(), Vec::new()];
    for path in ["/rate/1", "/rate/2"] {
        n += 2;
        for (side, c) in sides.iter().zip(collectors) {
            c.set_answer(rates);
            assert_eq!(send(side.port("in"), "GET", path, &[], "").resp.status, 200);
        }
        for (i, (side, c)) in sides.iter().zip(collectors).enumerate() {
            let spans = dd_by_path(&c.wait_spans(n, ARRIVAL));
            roots[i].push(spans.get(path).cloned().unwrap_or_else(|| panic!("{}: no span of {path}", side.who)));
        }
        // The answer is read just after the collector recorded the batch.
        std::thread::sleep(Duration::from_millis(300));
    }
    for (i, r) in roots.iter().enumerate() {
        let who = sides[i].who;
        assert_eq!(collectors[i].spans().len(), n, "{who}: span count");
        assert_eq!(
            trace_datadog::comparable(&r[0]),
            trace_datadog::comparable(&roots[0][0]),
            "{who}: before the rates"
        );
        assert_eq!(
            trace_datadog::comparable(&r[1]),
            trace_datadog::comparable(&roots[0][1]),
            "{who}: by the agent's rate"
        );
        assert_eq!(r[0].tag("_dd.p.dm"), Some("-0"), "{who}");
        assert_eq!((r[1].tag("_dd.p.dm"), r[1].tag("_dd.p.ksr")), (Some("-1"), Some("1")), "{who}");
    }
}
