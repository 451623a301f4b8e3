//! External authorization (`envoy.filters.http.ext_authz`), Envoy 1.40
//! beside `legate proxy`: the same bootstrap on both, each side with its own
//! authorization servers of the test's — a gRPC `Authorization` service
//! (tonic) and a plain HTTP one — whose decisions depend on the request's
//! path and headers. Compared for every request: what the client got
//! (status, body, headers), what the upstream got (headers the service
//! added, set, appended or removed), what the service saw (the
//! `CheckRequest`'s attributes or the HTTP check request, ids and ports
//! aside) and the `ext_authz` stats of both proxies. Covered: allow with
//! header mutations, deny with a custom status, body and headers, a service
//! that is down with `failure_mode_allow` true (and its header) and false
//! (`status_on_error`), `with_request_body` (partial and whole, as bytes),
//! per-route `disabled`, `context_extensions` merged from the virtual host
//! and the route, and `disable_request_body_buffering`; and the network
//! filter (`envoy.filters.network.ext_authz` in front of tcp_proxy): a
//! connection allowed, closed when the service is down, served when down
//! with `failure_mode_allow`. The same service is also called as a
//! `google_grpc` target (no cluster: `target_uri`, `stat_prefix`,
//! `initial_metadata` the service must see), in plain text, over TLS with
//! `ssl_credentials` (roots and a client certificate the service requires),
//! at a closed port, and from the network filter; the client's
//! `grpc.<stat_prefix>.streams_total/streams_closed_<code>` are compared.

mod harness;

use harness::config::{bootstrap, cluster, hcm_vhost, listener};
use harness::*;
use legate_api::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption, QueryParameter};
use legate_api::pb::envoy::r#type::v3::HttpStatus;
use legate_api::pb::envoy::service::auth::v3::authorization_server::{Authorization, AuthorizationServer};
use legate_api::pb::envoy::service::auth::v3::check_response::HttpResponse;
use legate_api::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const H2: &str = ", typed_extension_protocol_options: {envoy.extensions.upstreams.http.v3.HttpProtocolOptions: {\"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, explicit_http_config: {http2_protocol_options: {}}}}";

/// What one side's authorization servers saw, in order: one line per check.
type Seen = Arc<Mutex<Vec<String>>>;

/// One side's authorization servers, each on a thread of the test until dropped.
struct AuthzServers {
    grpc: u16,
    http: u16,
    /// The gRPC service over TLS, requiring a client certificate.
    grpc_tls: u16,
    seen: Seen,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for AuthzServers {
    fn drop(&mut self) {
        for s in self.stops.drain(..) {
            let _ = s.send(());
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn header(k: &str, v: &str, append: Option<bool>) -> HeaderValueOption {
    #[allow(deprecated)]
    HeaderValueOption {
        header: Some(HeaderValue { key: k.into(), value: v.into(), ..Default::default() }),
        append: append.map(|value| legate_api::pb::google::protobuf::BoolValue { value }),
        ..Default::default()
    }
}

/// The check as the test compares it: every attribute but ids, times and
/// ports (each side has its own), the headers sorted.
fn describe(r: &CheckRequest) -> String {
    let a = r.attributes.clone().unwrap_or_default();
    let ip = |p: &Option<legate_api::pb::envoy::service::auth::v3::attribute_context::Peer>| {
        let p = p.clone().unwrap_or_default();
        let addr = match p.address.and_then(|a| a.address) {
            Some(legate_api::pb::envoy::config::core::v3::address::Address::SocketAddress(s)) => s.address,
            _ => String::new(),
        };
        format!("{addr} service={} principal={}", p.service, p.principal)
    };
    let http = a.request.clone().and_then(|r| r.http).unwrap_or_default();
    let mut headers: BTreeMap<String, String> = http.headers.clone().into_iter().collect();
    for masked in ["x-request-id", "x-forwarded-for"] {
        if let Some(v) = headers.get_mut(masked) {
            *v = "(masked)".into();
        }
    }
    let ext: BTreeMap<_, _> = a.context_extensions.iter().collect();
    format!(
        "src={} dst={} method={} path={} host={} scheme={} protocol={} size={} body={:?} raw_body={:?} query={:?} headers={headers:?} ext={ext:?} metadata={:?} route_metadata={:?} tls={:?} time={}",
        ip(&a.source),
        ip(&a.destination),
        http.method,
        http.path,
        http.host,
        http.scheme,
        http.protocol,
        http.size,
        http.body,
        String::from_utf8_lossy(&http.raw_body),
        http.query,
        a.metadata_context.is_some(),
        a.route_metadata_context.is_some(),
        a.tls_session.is_some(),
        a.request.as_ref().is_some_and(|r| r.time.is_some()),
    )
}

struct Grpc(Seen);

#[tonic::async_trait]
impl Authorization for Grpc {
    async fn check(&self, req: tonic::Request<CheckRequest>) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let tenant = req.metadata().get("x-tenant").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let r = req.into_inner();
        self.0.lock().expect("seen").push(format!("{} tenant={tenant:?}", describe(&r)));
        let http = r.attributes.and_then(|a| a.request).and_then(|r| r.http).unwrap_or_default();
        let status = |code| Some(legate_api::pb::google::rpc::Status { code, ..Default::default() });
        if http.path.starts_with("/grpc-error") {
            return Err(tonic::Status::unavailable("down for the test"));
        }
        if http.path.starts_with("/deny") || http.headers.contains_key("x-deny") {
            let denied = DeniedHttpResponse {
                status: Some(HttpStatus { code: 401 }),
                headers: vec![header("x-deny-reason", "bad", None), header("content-type", "text/custom", None)],
                body: "custom deny".into(),
            };
            return Ok(tonic::Response::new(CheckResponse {
                status: status(7),
                http_response: Some(HttpResponse::DeniedResponse(denied)),
                ..Default::default()
            }));
        }
        if http.path.starts_with("/plain-deny") {
            return Ok(tonic::Response::new(CheckResponse { status: status(7), ..Default::default() }));
        }
        let ok = OkHttpResponse {
            headers: vec![
                header("x-added", "a", None),
                header("x-set", "set", Some(false)),
                header("x-appended", "more", Some(true)),
                header("x-appended-absent", "more", Some(true)),
            ],
            headers_to_remove: vec!["x-remove-me".into()],
            response_headers_to_add: vec![header("x-resp-added", "yes", None)],
            query_parameters_to_set: if http.path.contains("q=") {
                vec![
                    QueryParameter { key: "set".into(), value: "1".into() },
                    QueryParameter { key: "q".into(), value: "2".into() },
                ]
            } else {
                Vec::new()
            },
            query_parameters_to_remove: vec!["drop".into()],
            ..Default::default()
        };
        Ok(tonic::Response::new(CheckResponse {
            status: status(0),
            http_response: Some(HttpResponse::OkResponse(ok)),
            ..Default::default()
        }))
    }
}

/// The HTTP authorization server: 200 (with headers to pass on) for
/// `/authz/allow...`, 403 with a body for `/authz/deny...`, 503 otherwise.
async fn http_check(
    req: hyper::Request<hyper::body::Incoming>,
    seen: Seen,
) -> Result<hyper::Response<String>, std::convert::Infallible> {
    let mut headers: BTreeMap<String, String> =
        req.headers().iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string())).collect();
    // Each proxy's own client headers and addresses.
    for own in
        ["x-request-id", "x-forwarded-for", "x-envoy-expected-rq-timeout-ms", "x-envoy-internal", "x-forwarded-proto"]
    {
        headers.remove(own);
    }
    seen.lock().expect("seen").push(format!("{} {} {headers:?}", req.method(), req.uri().path()));
    let path = req.uri().path().to_string();
    let builder = hyper::Response::builder();
    let resp = if path.starts_with("/authz/allow") {
        builder
            .status(200)
            .header("x-auth-user", "alice")
            .header("x-envoy-auth-headers-to-remove", "x-remove-me")
            .header("x-client-ok", "yes")
            .header("x-not-allowed", "no")
            .body(String::new())
    } else if path.starts_with("/authz/deny") {
        builder
            .status(403)
            .header("x-deny-reason", "http")
            .header("www-authenticate", "Basic")
            .header("x-not-allowed", "no")
            .body("http denied".to_string())
    } else {
        builder.status(503).body(String::new())
    };
    Ok(resp.unwrap_or_default())
}

/// The TLS identity of the gRPC service (an IP SAN for 127.0.0.1) and the
/// CA it trusts client certificates of, in `dir`; the proxies' client
/// certificate too.
fn write_certs(dir: &std::path::Path) {
    let ca = harness::certs::Ca::new("Authz Test CA");
    ca.write(dir, "ca.pem");
    ca.issue(&harness::certs::server(&["authz.example.com"]).ip("127.0.0.1").cn("authz")).write(dir, "authz");
    ca.issue(&harness::certs::client(&["proxy.example.com"]).cn("proxy")).write(dir, "proxy");
}

fn tls_config(dir: &std::path::Path) -> tonic::transport::ServerTlsConfig {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).expect("read cert");
    tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(read("authz.pem"), read("authz.key")))
        .client_ca_root(tonic::transport::Certificate::from_pem(read("ca.pem")))
}

fn start_servers(dir: &std::path::Path) -> AuthzServers {
    let seen: Seen = Default::default();
    let (grpc, http, grpc_tls) = (free_port(), free_port(), free_port());
    let mut stops = Vec::new();
    let mut threads = Vec::new();
    for kind in ["grpc", "http", "grpc_tls"] {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let seen = seen.clone();
        let port = match kind {
            "grpc" => grpc,
            "http" => http,
            _ => grpc_tls,
        };
        let tls = (kind == "grpc_tls").then(|| tls_config(dir));
        threads.push(std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind authz");
                let _ = ready_tx.send(());
                if kind != "http" {
                    let mut builder = tonic::transport::Server::builder();
                    if let Some(tls) = tls {
                        builder = builder.tls_config(tls).expect("tls config");
                    }
                    let serve = builder.add_service(AuthorizationServer::new(Grpc(seen))).serve_with_incoming_shutdown(
                        tokio_stream::wrappers::TcpListenerStream::new(listener),
                        async {
                            let _ = stopped.await;
                        },
                    );
                    let _ = serve.await;
                    return;
                }
                let mut stopped = stopped;
                loop {
                    let accepted = tokio::select! {
                        a = listener.accept() => a,
                        _ = &mut stopped => return,
                    };
                    let Ok((io, _)) = accepted else { continue };
                    let seen = seen.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req| http_check(req, seen.clone()));
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
                            .await;
                    });
                }
            });
        }));
        ready_rx.recv_timeout(Duration::from_secs(10)).expect("authz server started");
        stops.push(stop);
    }
    AuthzServers { grpc, http, grpc_tls, seen, stops, threads }
}

/// (listener, method, path, headers, body).
type Case<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);

const EXT_AUTHZ: &str = "envoy.filters.http.ext_authz";

fn filter(fields: &str) -> String {
    format!("{{name: {EXT_AUTHZ}, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz, transport_api_version: V3, {fields}}}}}, ")
}

fn per_route(fields: &str) -> String {
    format!("typed_per_filter_config: {{{EXT_AUTHZ}: {{\"@type\": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute, {fields}}}}}")
}

/// The routes of the gRPC-checked listener: `/public` unchecked, `/ctx`
/// with context extensions over the virtual host's, `/nobody` without
/// body buffering, the rest to the echo upstream.
fn grpc_vhost() -> String {
    format!(
        "{vh}, routes: [{{match: {{prefix: \"/public\"}}, route: {{cluster: echo}}, {public}}}, {{match: {{prefix: \"/ctx\"}}, route: {{cluster: echo}}, {ctx}}}, {{match: {{prefix: \"/nobody\"}}, route: {{cluster: echo}}, {nobody}}}, {{match: {{prefix: \"/\"}}, route: {{cluster: echo}}}}]",
        vh = per_route("check_settings: {context_extensions: {k0: vhost, k1: vhost}}"),
        public = per_route("disabled: true"),
        ctx = per_route("check_settings: {context_extensions: {k1: route, k2: route}}"),
        nobody = per_route("check_settings: {disable_request_body_buffering: true}"),
    )
}

const LISTENERS: &[&str] = &[
    "grpc",
    "whole",
    "down_allow",
    "down_deny",
    "http",
    "tcp",
    "tcp_down",
    "tcp_down_allow",
    "google",
    "google_tls",
    "google_down",
    "tcp_google",
];

/// `envoy.filters.network.ext_authz` (`fields`) in front of tcp_proxy to the echo upstream.
fn tcp_chain(stat: &str, fields: &str) -> String {
    format!(
        "{{filters: [{{name: envoy.filters.network.ext_authz, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.network.ext_authz.v3.ExtAuthz, stat_prefix: {stat}, transport_api_version: V3, {fields}}}}}, {}]}}",
        harness::config::tcp_proxy(stat, "cluster: echo", "")
    )
}

fn config(admin: u16, ports: &Ports, authz: &AuthzServers, echo: u16, closed: u16, dir: &std::path::Path) -> String {
    let echo_routes = "routes: [{match: {prefix: \"/\"}, route: {cluster: echo}}]";
    let grpc = |cluster: &str| format!("grpc_service: {{envoy_grpc: {{cluster_name: {cluster}}}, timeout: 2s}}");
    let file = |f: &str| format!("{{filename: \"{}\"}}", dir.join(f).display());
    let google = |port: u16, stat: &str, extra: &str| {
        format!("grpc_service: {{google_grpc: {{target_uri: \"127.0.0.1:{port}\", stat_prefix: {stat}{extra}}}, timeout: 2s, initial_metadata: [{{key: X-Tenant, value: acme}}]}}")
    };
    let ssl = format!(
        ", channel_credentials: {{ssl_credentials: {{root_certs: {}, cert_chain: {}, private_key: {}}}}}",
        file("ca.pem"),
        file("proxy.pem"),
        file("proxy.key")
    );
    let chains = [
        ("grpc", grpc_vhost(), format!("{}, with_request_body: {{max_request_bytes: 16, allow_partial_message: true}}", grpc("authz_grpc"))),
        ("whole", echo_routes.to_string(), format!("{}, with_request_body: {{max_request_bytes: 8, pack_as_bytes: true}}, stat_prefix: whole", grpc("authz_grpc"))),
        ("down_allow", echo_routes.to_string(), format!("{}, failure_mode_allow: true, failure_mode_allow_header_add: true, stat_prefix: downa", grpc("authz_down"))),
        ("down_deny", echo_routes.to_string(), format!("{}, status_on_error: {{code: 503}}, stat_prefix: downd", grpc("authz_down"))),
        ("google", echo_routes.to_string(), format!("{}, stat_prefix: google", google(authz.grpc, "gauthz", ""))),
        ("google_tls", echo_routes.to_string(), format!("{}, stat_prefix: gtls", google(authz.grpc_tls, "gtls", &ssl))),
        ("google_down", echo_routes.to_string(), format!("{}, stat_prefix: gdown", google(closed, "gdown", ""))),
        ("http", echo_routes.to_string(), "http_service: {server_uri: {uri: \"http://authz.local\", cluster: authz_http, timeout: 2s}, path_prefix: /authz, authorization_request: {headers_to_add: [{key: x-from-proxy, value: \"yes\"}]}, authorization_response: {allowed_upstream_headers: {patterns: [{exact: x-auth-user}]}, allowed_client_headers: {patterns: [{exact: x-deny-reason}]}, allowed_client_headers_on_success: {patterns: [{exact: x-client-ok}]}}}, allowed_headers: {patterns: [{exact: x-user}]}".to_string()),
    ];
    let mut listeners: Vec<String> = chains
        .iter()
        .map(|(name, vhost, fields)| {
            listener(name, ports[name], &format!("{{filters: [{}]}}", hcm_vhost(name, vhost, &filter(fields), "")))
        })
        .collect();
    for (name, fields) in [
        ("tcp", grpc("authz_grpc")),
        ("tcp_down", grpc("authz_down")),
        ("tcp_down_allow", format!("{}, failure_mode_allow: true", grpc("authz_down"))),
        ("tcp_google", google(authz.grpc, "gtcp", "")),
    ] {
        listeners.push(listener(name, ports[name], &tcp_chain(name, &fields)));
    }
    bootstrap(
        admin,
        &listeners,
        &[
            cluster("echo", echo, ""),
            cluster("authz_grpc", authz.grpc, H2),
            cluster("authz_down", closed, H2),
            cluster("authz_http", authz.http, ""),
        ],
    )
}

/// What the client and the upstream got for one request.
fn exchange(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> String {
    let resp = match http_request(addr(port), method, path, "example.com", headers, body) {
        Ok(r) => r,
        // A connection closed unanswered (network ext_authz).
        Err(e) => return format!("no response: {:?}", e.kind()),
    };
    let echoed: Value = serde_json::from_str(&resp.body).unwrap_or(Value::Null);
    let upstream: BTreeMap<String, String> = echoed["headers"]
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, _)| {
                    k.starts_with("x-")
                        && !matches!(
                            k.as_str(),
                            "x-request-id" | "x-forwarded-proto" | "x-envoy-expected-rq-timeout-ms"
                        )
                })
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    let client_headers: Vec<(String, String)> = resp
        .headers
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "date" | "x-envoy-upstream-service-time" | "server"))
        .cloned()
        .collect();
    let body =
        if echoed.is_null() { resp.body.clone() } else { format!("(echo of {} at {})", echoed["body"], echoed["uri"]) };
    format!("status={} headers={client_headers:?} body={body} upstream={upstream:?}", resp.status)
}

#[test]
fn ext_authz_matches_envoy() {
    let dir = TempDir::new("diff-ext-authz");
    let (_echo, echo) = echo("authz-echo", dir.path());
    let closed = free_port();
    write_certs(dir.path());
    let servers = [start_servers(dir.path()), start_servers(dir.path())];
    let sides = [
        Side::start("envoy", Bin::Envoy, &[], dir.path(), LISTENERS, |_, admin, ports| {
            config(admin, ports, &servers[0], echo, closed, dir.path())
        }),
        Side::start("legate", Bin::Legate, &[], dir.path(), LISTENERS, |_, admin, ports| {
            config(admin, ports, &servers[1], echo, closed, dir.path())
        }),
    ];
    let cases: &[Case] = &[
        (
            "grpc",
            "GET",
            "/allow?q=1&z=3&drop=x&a=0",
            &[("x-remove-me", "gone"), ("x-appended", "first"), ("x-set", "old"), ("x-user", "bob")],
            "",
        ),
        ("grpc", "POST", "/allow/body", &[("content-type", "text/plain")], "0123456789abcdefghijklmnop"),
        ("grpc", "POST", "/allow/short", &[], "tiny"),
        ("grpc", "GET", "/deny", &[], ""),
        ("grpc", "GET", "/other", &[("x-deny", "1")], ""),
        ("grpc", "GET", "/plain-deny", &[], ""),
        ("grpc", "GET", "/grpc-error", &[], ""),
        ("grpc", "GET", "/public/deny", &[], ""),
        ("grpc", "GET", "/ctx/allow", &[], ""),
        ("grpc", "POST", "/nobody/allow", &[], "not buffered"),
        ("whole", "POST", "/allow", &[], "1234567"),
        ("whole", "POST", "/allow", &[], "123456789012"),
        ("down_allow", "GET", "/allow", &[], ""),
        ("down_deny", "GET", "/allow", &[], ""),
        (
            "http",
            "GET",
            "/allow/x?y=1",
            &[("x-user", "bob"), ("x-remove-me", "gone"), ("authorization", "Bearer t"), ("x-other", "o")],
            "",
        ),
        ("http", "POST", "/deny/x", &[("x-user", "eve")], "payload"),
        ("http", "GET", "/error", &[], ""),
        ("tcp", "GET", "/over-tcp", &[], ""),
        ("tcp_down", "GET", "/over-tcp", &[], ""),
        ("tcp_down_allow", "GET", "/over-tcp", &[], ""),
        ("google", "GET", "/allow?q=1&drop=x", &[("x-remove-me", "gone"), ("x-set", "old")], ""),
        ("google", "GET", "/deny", &[], ""),
        ("google", "GET", "/grpc-error", &[], ""),
        ("google_tls", "GET", "/allow", &[], ""),
        ("google_tls", "GET", "/plain-deny", &[], ""),
        ("google_down", "GET", "/allow", &[], ""),
        ("tcp_google", "GET", "/over-tcp", &[], ""),
    ];
    let mut mismatches = Vec::new();
    for (listener, method, path, headers, body) in cases {
        let got: Vec<String> = sides.iter().map(|s| exchange(s.port(listener), method, path, headers, body)).collect();
        let checks: Vec<Vec<String>> =
            servers.iter().map(|s| std::mem::take(&mut *s.seen.lock().expect("seen"))).collect();
        println!("{listener} {method} {path}\n  envoy:  {}\n  legate: {}\n  checked: {:?}", got[0], got[1], checks[0]);
        if got[0] != got[1] {
            mismatches
                .push(format!("{listener} {method} {path}: response\n  envoy:  {}\n  legate: {}", got[0], got[1]));
        }
        if checks[0] != checks[1] {
            mismatches.push(format!(
                "{listener} {method} {path}: check\n  envoy:  {:?}\n  legate: {:?}",
                checks[0], checks[1]
            ));
        }
    }
    for prefix in [
        "http.grpc.ext_authz.",
        "http.whole.ext_authz.",
        "http.down_allow.ext_authz.",
        "http.down_deny.ext_authz.",
        "http.http.ext_authz.",
        "cluster.echo.ext_authz.",
        "ext_authz.tcp.",
        "ext_authz.tcp_down.",
        "ext_authz.tcp_down_allow.",
        "cluster.echo.upstream_rq_4",
        "cluster.echo.upstream_rq_completed",
        "cluster.echo.internal.",
        "http.google.ext_authz.",
        "http.google_tls.ext_authz.",
        "http.google_down.ext_authz.",
        "ext_authz.tcp_google.",
        "grpc.gauthz.",
        "grpc.gtls.",
        "grpc.gdown.",
        // Envoy 1.40 shows none for the network filter's client.
        "grpc.gtcp.",
    ] {
        let stats: Vec<_> = sides.iter().map(|s| s.stats(prefix)).collect();
        println!("{prefix}\n  envoy:  {:?}\n  legate: {:?}", stats[0], stats[1]);
        if stats[0] != stats[1] {
            mismatches.push(format!("stats {prefix}\n  envoy:  {:?}\n  legate: {:?}", stats[0], stats[1]));
        }
    }
    assert!(sides[0].stat("http.grpc.ext_authz.ok") > 0, "the gRPC service allowed requests behind Envoy");
    assert!(sides[0].stat("ext_authz.tcp.ok") > 0, "the gRPC service allowed a connection behind Envoy");
    assert!(sides[0].stat("http.google_tls.ext_authz.gtls.ok") > 0, "the TLS google_grpc service allowed behind Envoy");
    assert!(mismatches.is_empty(), "{} differences:\n{}", mismatches.len(), mismatches.join("\n"));
}
