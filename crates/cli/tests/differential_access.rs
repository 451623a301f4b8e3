//! Differential tests for access control on connections and requests: the
//! network RBAC filter, RBAC's `authenticated` principal, the HCM's
//! `x-forwarded-client-cert`, jwt_authn with remote JWKS and the TLS
//! handshake stats — the same bootstrap and the same clients through real
//! Envoy 1.40 and through `legate proxy`.
//!
//! Certificates are made at run time with rcgen: a test CA; the proxies'
//! certificate (DNS proxy.example.com, URI spiffe://legate.test/proxy, for
//! XFCC's `By=`); client1 (URI and DNS SANs), client2 (a DNS SAN only) and
//! client3 (no SAN; rcgen writes its subject CN, C, O, which RFC 2253
//! prints last to first: `O=Legate Tests,C=NL,CN=client3`).

mod harness;

use harness::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

// ---------------------------------------------------------------------------
// Certificates

fn write_certs(dir: &Path) {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose, SanType,
    };
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, "Legate Access CA");
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().expect("key")).expect("CA");
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write");
    let leaf = |file: &str, dns: &[&str], uri: Option<&str>, dn: &[(DnType, &str)], client: bool| {
        let mut p = CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("params");
        if let Some(u) = uri {
            p.subject_alt_names.push(SanType::URI(u.try_into().expect("uri")));
        }
        for (t, v) in dn {
            p.distinguished_name.push(t.clone(), *v);
        }
        p.extended_key_usages =
            vec![if client { ExtendedKeyUsagePurpose::ClientAuth } else { ExtendedKeyUsagePurpose::ServerAuth }];
        let key = KeyPair::generate().expect("key");
        let cert = p.signed_by(&key, &ca).expect("sign");
        std::fs::write(dir.join(format!("{file}.pem")), cert.pem()).expect("write");
        std::fs::write(dir.join(format!("{file}.key")), key.serialize_pem()).expect("write");
    };
    leaf(
        "proxy",
        &["proxy.example.com"],
        Some("spiffe://legate.test/proxy"),
        &[(DnType::CommonName, "proxy.example.com")],
        false,
    );
    leaf(
        "client1",
        &["client1.example.com"],
        Some("spiffe://legate.test/client1"),
        &[(DnType::OrganizationName, "Legate Tests"), (DnType::CommonName, "client1")],
        true,
    );
    leaf("client2", &["client2.example.com"], None, &[(DnType::CommonName, "client2")], true);
    leaf(
        "client3",
        &[],
        None,
        &[(DnType::CountryName, "NL"), (DnType::OrganizationName, "Legate Tests"), (DnType::CommonName, "client3")],
        true,
    );
}

// ---------------------------------------------------------------------------
// Bootstrap pieces (YAML flow style)

fn p(dir: &Path, f: &str) -> String {
    dir.join(f).display().to_string()
}

/// A filter chain's TLS with the proxy certificate; client certificates are
/// asked for and verified against the CA, and required when `require`.
fn down_tls(dir: &Path, require: bool) -> String {
    format!(
        "{{name: envoy.transport_sockets.tls, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext, require_client_certificate: {require}, common_tls_context: {{tls_certificates: [{{certificate_chain: {{filename: \"{}\"}}, private_key: {{filename: \"{}\"}}}}], validation_context: {{trusted_ca: {{filename: \"{}\"}}}}, alpn_protocols: [http/1.1]}}}}}}",
        p(dir, "proxy.pem"),
        p(dir, "proxy.key"),
        p(dir, "ca.pem")
    )
}

const ROUTER: &str = "{name: envoy.filters.http.router, typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}";

/// An HTTP connection manager routing everything to `cluster`, with `extra`
/// HCM fields and `filters` before the router.
fn hcm(stat: &str, cluster: &str, extra: &str, filters: &str) -> String {
    format!(
        "{{name: envoy.filters.network.http_connection_manager, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager, stat_prefix: {stat}, route_config: {{virtual_hosts: [{{name: all, domains: [\"*\"], routes: [{{match: {{prefix: \"/\"}}, route: {{cluster: {cluster}}}}}]}}]}}, http_filters: [{filters}{ROUTER}]{extra}}}}}"
    )
}

fn tcp_proxy(stat: &str, cluster: &str) -> String {
    format!(
        "{{name: envoy.filters.network.tcp_proxy, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: {stat}, cluster: {cluster}}}}}"
    )
}

/// `envoy.filters.network.rbac` with `body` (rules, shadow_rules, ...).
fn net_rbac(body: &str) -> String {
    format!(
        "{{name: envoy.filters.network.rbac, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC, {body}}}}}"
    )
}

fn listener(name: &str, port: u16, chain: &str) -> String {
    format!(
        "{{name: {name}, address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}, filter_chains: [{chain}]}}"
    )
}

/// A listener with the TLS inspector (which gives the requested server name).
fn inspected_listener(name: &str, port: u16, chain: &str) -> String {
    format!(
        "{{name: {name}, address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}, listener_filters: [{{name: envoy.filters.listener.tls_inspector, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector}}}}], filter_chains: [{chain}]}}"
    )
}

fn cluster(name: &str, port: u16, extra: &str) -> String {
    format!(
        "{{name: {name}, connect_timeout: 1s, type: STATIC, load_assignment: {{cluster_name: {name}, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]}}{extra}}}"
    )
}

fn bootstrap(admin: u16, listeners: &[String], clusters: &[String]) -> String {
    let mut s = format!(
        "admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}\nstatic_resources:\n  listeners:\n"
    );
    for l in listeners {
        s.push_str(&format!("  - {l}\n"));
    }
    s.push_str("  clusters:\n");
    for c in clusters {
        s.push_str(&format!("  - {c}\n"));
    }
    s
}

// ---------------------------------------------------------------------------
// Processes

#[derive(Clone, Copy, PartialEq)]
enum Bin {
    Envoy,
    Legate,
}

/// One proxy with its own admin and listener ports.
struct Side {
    admin: u16,
    ports: BTreeMap<&'static str, u16>,
    _proc: Proc,
}

impl Side {
    fn port(&self, name: &str) -> u16 {
        self.ports[name]
    }

    fn start(
        who: &'static str,
        bin: Bin,
        dir: &Path,
        names: &[&'static str],
        yaml: impl Fn(u16, &BTreeMap<&'static str, u16>) -> String,
    ) -> Side {
        let admin = free_port();
        let ports: BTreeMap<_, _> = names.iter().map(|n| (*n, free_port())).collect();
        let f = dir.join(format!("{who}.yaml"));
        std::fs::write(&f, yaml(admin, &ports)).expect("write config");
        let mut proc_ = match bin {
            Bin::Envoy => spawn_envoy(who, &f, "error", &[], dir),
            Bin::Legate => Proc::spawn(
                who,
                Command::new(LEGATE).args(["proxy", "--concurrency", "1", "-l", "warn", "-c"]).arg(&f),
                dir,
            ),
        };
        wait_ready(admin, &mut proc_);
        Side { admin, ports, _proc: proc_ }
    }

    /// Every counter and gauge from `/stats` whose name starts with `prefix`,
    /// the prefix taken off.
    fn stats(&self, prefix: &str) -> BTreeMap<String, u64> {
        let r = http_get(addr(self.admin), "/stats", "admin").expect("stats");
        r.body
            .lines()
            .filter_map(|l| l.split_once(": "))
            .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.to_string(), v.trim().parse().ok()?)))
            .collect()
    }
}

/// The same config on Envoy and on Legate.
fn both(
    dir: &Path,
    names: &[&'static str],
    yaml: impl Fn(u16, &BTreeMap<&'static str, u16>) -> String,
) -> (Side, Side) {
    let e = Side::start("envoy", Bin::Envoy, dir, names, &yaml);
    let l = Side::start("legate", Bin::Legate, dir, names, &yaml);
    (e, l)
}

// ---------------------------------------------------------------------------
// Clients

/// One HTTPS request with curl to `port` (as proxy.example.com), with the
/// client certificate `client` and extra request headers. What it gives:
/// whether the exchange worked, the status, the body when it is not the
/// echo's JSON, and the request headers named in `seen` as the echo
/// upstream received them.
fn curl(dir: &Path, port: u16, client: Option<&str>, headers: &[&str], seen: &[&str]) -> BTreeMap<String, String> {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-i", "--http1.1", "--max-time", "10", "--cacert"]).arg(dir.join("ca.pem"));
    cmd.args(["--resolve", &format!("proxy.example.com:{port}:127.0.0.1")]);
    if let Some(c) = client {
        cmd.arg("--cert").arg(dir.join(format!("{c}.pem"))).arg("--key").arg(dir.join(format!("{c}.key")));
    }
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd.arg(format!("https://proxy.example.com:{port}/path")).output().expect("curl");
    let mut m = BTreeMap::new();
    m.insert("ok".to_string(), out.status.success().to_string());
    if !out.status.success() {
        return m;
    }
    let text = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let status = head.lines().next().and_then(|l| l.split_whitespace().nth(1)).unwrap_or("");
    m.insert("status".into(), status.to_string());
    match serde_json::from_str::<Value>(body) {
        Ok(v) => {
            for h in seen {
                m.insert(format!("upstream:{h}"), v["headers"][h].as_str().unwrap_or("<absent>").to_string());
            }
        }
        Err(_) => {
            m.insert("body".into(), body.trim().to_string());
        }
    }
    m
}

fn compare(what: &str, e: &BTreeMap<String, String>, l: &BTreeMap<String, String>) {
    assert_eq!(e, l, "{what}: Envoy (left) and Legate (right) differ");
}

/// Sends an HTTP/1.1 request over plain TCP and reads until the proxy
/// closes: the status line, or "closed" when nothing came back.
fn tcp_request(port: u16) -> String {
    let Ok(mut s) = std::net::TcpStream::connect(addr(port)) else { return "refused".into() };
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let _ = s.write_all(b"GET /x HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    match text.lines().next() {
        Some(l) if !l.is_empty() => l.trim().to_string(),
        _ => "closed".into(),
    }
}

/// Sends a request in three pieces 200 ms apart (three reads at the proxy),
/// then reads the answer.
fn tcp_in_pieces(port: u16) {
    let Ok(mut s) = std::net::TcpStream::connect(addr(port)) else { return };
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    for piece in [&b"GET /x HTTP/1.1\r\n"[..], b"host: t\r\n", b"connection: close\r\n\r\n"] {
        let _ = s.write_all(piece);
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
}

/// Opens a connection and closes it without sending anything.
fn tcp_silent(port: u16) {
    if let Ok(s) = std::net::TcpStream::connect(addr(port)) {
        std::thread::sleep(Duration::from_millis(100));
        drop(s);
    }
}

// ---------------------------------------------------------------------------
// Scenarios

/// Network RBAC in front of tcp_proxy: an ALLOW policy on the destination
/// port and the peer address lets one listener's connections through and
/// closes the other's unanswered; shadow rules (DENY for loopback peers)
/// only count; a connection closed without data is checked at its end;
/// `CONTINUOUS` checks every read. Then network
/// RBAC in front of an HCM over mutual TLS with an `authenticated`
/// principal. The `rbac.*` stats of both proxies must be the same.
#[test]
fn network_rbac_allow_deny_and_stats() {
    let dir = TempDir::new("net-rbac");
    let d = dir.path();
    write_certs(d);
    let (_echo, up) = echo("up", d);
    let (e, l) = both(d, &["allow", "deny", "mtls", "cont"], |admin, ports| {
        let rules = format!(
            "rules: {{action: ALLOW, policies: {{by-port: {{permissions: [{{destination_port: {}}}], principals: [{{direct_remote_ip: {{address_prefix: 127.0.0.0, prefix_len: 8}}}}]}}}}}}, shadow_rules: {{action: DENY, policies: {{loopback: {{permissions: [{{any: true}}], principals: [{{source_ip: {{address_prefix: 127.0.0.1, prefix_len: 32}}}}]}}}}}}",
            ports["allow"]
        );
        let mtls_rules = "rules: {action: ALLOW, policies: {client1: {permissions: [{requested_server_name: {exact: proxy.example.com}}], principals: [{authenticated: {principal_name: {exact: \"spiffe://legate.test/client1\"}}}]}}}";
        bootstrap(
            admin,
            &[
                listener(
                    "allow",
                    ports["allow"],
                    &format!(
                        "{{filters: [{}, {}]}}",
                        net_rbac(&format!("stat_prefix: net_allow, {rules}")),
                        tcp_proxy("tcp_allow", "up")
                    ),
                ),
                listener(
                    "deny",
                    ports["deny"],
                    &format!(
                        "{{filters: [{}, {}]}}",
                        net_rbac(&format!("stat_prefix: net_deny., {rules}")),
                        tcp_proxy("tcp_deny", "up")
                    ),
                ),
                listener(
                    "cont",
                    ports["cont"],
                    &format!(
                        "{{filters: [{}, {}]}}",
                        net_rbac("stat_prefix: net_cont, enforcement_type: CONTINUOUS, rules: {action: ALLOW, policies: {any: {permissions: [{any: true}], principals: [{any: true}]}}}"),
                        tcp_proxy("tcp_cont", "up")
                    ),
                ),
                inspected_listener(
                    "mtls",
                    ports["mtls"],
                    &format!(
                        "{{transport_socket: {}, filters: [{}, {}]}}",
                        down_tls(d, false),
                        net_rbac(&format!("stat_prefix: net_mtls, {mtls_rules}")),
                        hcm("mtls", "up", "", "")
                    ),
                ),
            ],
            &[cluster("up", up, "")],
        )
    });
    for (what, port) in [("allowed", "allow"), ("denied", "deny")] {
        let (a, b) = (tcp_request(e.port(port)), tcp_request(l.port(port)));
        assert_eq!(a, b, "{what}: Envoy (left) and Legate (right) differ");
        assert_eq!(a, if what == "allowed" { "HTTP/1.1 200 OK" } else { "closed" }, "{what}");
    }
    tcp_silent(e.port("deny"));
    tcp_silent(l.port("deny"));
    for side in [&e, &l] {
        tcp_in_pieces(side.port("cont"));
    }
    for client in [Some("client1"), Some("client2"), Some("client3"), None] {
        let a = curl(d, e.port("mtls"), client, &[], &[]);
        let b = curl(d, l.port("mtls"), client, &[], &[]);
        compare(&format!("mtls {client:?}"), &a, &b);
        let want = if client == Some("client1") { "true" } else { "false" };
        assert_eq!(a.get("ok").map(String::as_str), Some(want), "mtls {client:?}: {a:?}");
    }
    for prefix in ["net_allow.rbac.", "net_deny.rbac.", "net_mtls.rbac.", "net_cont.rbac."] {
        let (a, b) = (e.stats(prefix), l.stats(prefix));
        assert_eq!(a, b, "stats {prefix}: Envoy (left) and Legate (right) differ");
    }
    assert_eq!(e.stats("net_allow.rbac.").get("allowed"), Some(&1));
    // CONTINUOUS: checked on each of the three reads and at the end of the
    // stream (the client closes after the half-closed answer).
    assert_eq!(e.stats("net_cont.rbac.").get("allowed"), Some(&4));
    // The silent connection is checked too, when it ends.
    assert_eq!(e.stats("net_deny.rbac.").get("denied"), Some(&2));
    assert_eq!(e.stats("net_mtls.rbac.").get("denied"), Some(&3));
}

/// HTTP RBAC on the client certificate: `authenticated` principals by URI
/// SAN, by DNS SAN and (for a certificate without SANs) by the RFC 2253
/// subject; a client without a certificate and one matching no policy get
/// 403. Statuses, bodies and `http.<prefix>.rbac.*` must be the same.
#[test]
fn http_rbac_on_client_certificate() {
    let dir = TempDir::new("http-rbac");
    let d = dir.path();
    write_certs(d);
    let (_echo, up) = echo("up", d);
    let (e, l) = both(d, &["https"], |admin, ports| {
        let rbac = "{name: envoy.filters.http.rbac, typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC, rules: {action: ALLOW, policies: {by-uri: {permissions: [{any: true}], principals: [{authenticated: {principal_name: {exact: \"spiffe://legate.test/client1\"}}}]}, by-subject: {permissions: [{any: true}], principals: [{authenticated: {principal_name: {exact: \"O=Legate Tests,C=NL,CN=client3\"}}}]}}}, shadow_rules: {action: ALLOW, policies: {by-dns: {permissions: [{any: true}], principals: [{authenticated: {principal_name: {suffix: \".example.com\"}}}]}}}}}, ";
        bootstrap(
            admin,
            &[listener(
                "https",
                ports["https"],
                &format!(
                    "{{transport_socket: {}, filters: [{}]}}",
                    down_tls(d, false),
                    hcm("rbac_https", "up", "", rbac)
                ),
            )],
            &[cluster("up", up, "")],
        )
    });
    for client in [Some("client1"), Some("client2"), Some("client3"), None] {
        let a = curl(d, e.port("https"), client, &[], &[]);
        let b = curl(d, l.port("https"), client, &[], &[]);
        compare(&format!("https {client:?}"), &a, &b);
        let want = if matches!(client, Some("client1") | Some("client3")) { "200" } else { "403" };
        assert_eq!(a.get("status").map(String::as_str), Some(want), "{client:?}: {a:?}");
    }
    let (a, b) = (e.stats("http.rbac_https.rbac."), l.stats("http.rbac_https.rbac."));
    assert_eq!(a, b, "http rbac stats: Envoy (left) and Legate (right) differ");
    assert_eq!(a.get("allowed"), Some(&2));
}

/// `x-forwarded-client-cert` in each forward mode, with every
/// `set_current_client_cert_details` field, for a client with a certificate,
/// one without, and a downstream XFCC value sent along: the header the
/// upstream receives must be byte for byte Envoy's.
#[test]
fn xfcc_forward_modes() {
    let dir = TempDir::new("xfcc");
    let d = dir.path();
    write_certs(d);
    let (_echo, up) = echo("up", d);
    let modes: [(&'static str, &str); 6] = [
        ("sanitize", ""),
        ("forward_only", ", forward_client_cert_details: FORWARD_ONLY"),
        ("append", ", forward_client_cert_details: APPEND_FORWARD, set_current_client_cert_details: {subject: true, uri: true, dns: true}"),
        ("set", ", forward_client_cert_details: SANITIZE_SET, set_current_client_cert_details: {subject: true, cert: true, chain: true, dns: true, uri: true}"),
        ("set_bare", ", forward_client_cert_details: SANITIZE_SET"),
        ("always", ", forward_client_cert_details: ALWAYS_FORWARD_ONLY"),
    ];
    let names: Vec<&'static str> = modes.iter().map(|(n, _)| *n).collect();
    let (e, l) = both(d, &names, |admin, ports| {
        let listeners: Vec<String> = modes
            .iter()
            .map(|(n, extra)| {
                listener(
                    n,
                    ports[n],
                    &format!("{{transport_socket: {}, filters: [{}]}}", down_tls(d, false), hcm(n, "up", extra, "")),
                )
            })
            .collect();
        bootstrap(admin, &listeners, &[cluster("up", up, "")])
    });
    let sent = "x-forwarded-client-cert: By=spiffe://earlier;Hash=00ff;URI=spiffe://first";
    for (mode, _) in &modes {
        for client in [Some("client1"), Some("client3"), None] {
            for headers in [&[][..], &[sent][..]] {
                let a = curl(d, e.port(mode), client, headers, &["x-forwarded-client-cert"]);
                let b = curl(d, l.port(mode), client, headers, &["x-forwarded-client-cert"]);
                compare(&format!("{mode} {client:?} {headers:?}"), &a, &b);
            }
        }
    }
    // The value is really there (not absent on both sides).
    let a = curl(d, e.port("set"), Some("client1"), &[], &["x-forwarded-client-cert"]);
    assert!(a["upstream:x-forwarded-client-cert"].starts_with("By=spiffe://legate.test/proxy;Hash="), "{a:?}");
}

/// The handshake stats: `ssl.handshake`, `ssl.no_certificate`,
/// `ssl.versions.*`, `ssl.ciphers.*`, `ssl.curves.*` and `ssl.sigalgs.*`
/// (the peer's signature: the client certificate's, the server's) of a listener
/// (TLS 1.3 and 1.2 clients, with and without a client certificate) and of a
/// cluster whose upstream is a TLS listener of the proxy itself.
#[test]
fn tls_handshake_stats() {
    let dir = TempDir::new("ssl-stats");
    let d = dir.path();
    write_certs(d);
    let (_echo, up) = echo("up", d);
    let (e, l) = both(d, &["https", "front"], |admin, ports| {
        let up_tls = format!(
            ", transport_socket: {{name: envoy.transport_sockets.tls, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext, sni: proxy.example.com, common_tls_context: {{validation_context: {{trusted_ca: {{filename: \"{}\"}}}}}}}}}}",
            p(d, "ca.pem")
        );
        bootstrap(
            admin,
            &[
                listener(
                    "https",
                    ports["https"],
                    &format!("{{transport_socket: {}, filters: [{}]}}", down_tls(d, false), hcm("https", "up", "", "")),
                ),
                listener("front", ports["front"], &format!("{{filters: [{}]}}", hcm("front", "self_tls", "", ""))),
            ],
            &[cluster("up", up, ""), cluster("self_tls", ports["https"], &up_tls)],
        )
    });
    let tls12 = |side: &Side| {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "--http1.1", "--tls-max", "1.2", "--max-time", "10", "--cacert"])
            .arg(d.join("ca.pem"))
            .args(["--resolve", &format!("proxy.example.com:{}:127.0.0.1", side.port("https"))])
            .arg(format!("https://proxy.example.com:{}/", side.port("https")))
            .status()
            .expect("curl");
        assert!(out.success());
    };
    for side in [&e, &l] {
        curl(d, side.port("https"), Some("client1"), &[], &[]);
        curl(d, side.port("https"), None, &[], &[]);
        tls12(side);
        let r = http_get(addr(side.port("front")), "/", "front").expect("front");
        assert_eq!(r.status, 200);
    }
    let keep = |m: BTreeMap<String, u64>| -> BTreeMap<String, u64> {
        m.into_iter()
            .filter(|(k, _)| {
                ["handshake", "no_certificate", "connection_error"].contains(&k.as_str())
                    || k.starts_with("versions.")
                    || k.starts_with("ciphers.")
                    || k.starts_with("curves.")
                    || k.starts_with("sigalgs.")
            })
            .collect()
    };
    let listener_prefix = |s: &Side| format!("listener.127.0.0.1_{}.ssl.", s.port("https"));
    let (a, b) = (keep(e.stats(&listener_prefix(&e))), keep(l.stats(&listener_prefix(&l))));
    assert_eq!(a, b, "listener ssl.*: Envoy (left) and Legate (right) differ");
    assert_eq!(a.get("handshake"), Some(&4), "{a:?}");
    assert_eq!(a.get("sigalgs.ecdsa_secp256r1_sha256"), Some(&1), "{a:?}");
    // Upstream, a client stops at TLS 1.2 by default and offers no TLS 1.3
    // suite; the server picks from Envoy's TLS 1.2 order.
    let (a, b) = (keep(e.stats("cluster.self_tls.ssl.")), keep(l.stats("cluster.self_tls.ssl.")));
    assert_eq!(a, b, "cluster ssl.*: Envoy (left) and Legate (right) differ");
    assert_eq!(a.get("handshake"), Some(&1), "{a:?}");
    assert_eq!(a.get("sigalgs.ecdsa_secp256r1_sha256"), Some(&1), "{a:?}");
}

/// A third process serving `jwks.json` at `/keys.json`: Envoy answering
/// directly, 200 with the file on listener `ok`, 500 on `bad`.
fn jwks_server(d: &Path) -> Side {
    Side::start("jwks", Bin::Envoy, d, &["ok", "bad"], |admin, ports| {
        let direct = |status: u16, body: &str| {
            format!(
                "{{filters: [{{name: envoy.filters.network.http_connection_manager, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager, stat_prefix: jwks, route_config: {{virtual_hosts: [{{name: all, domains: [\"*\"], routes: [{{match: {{path: \"/keys.json\"}}, direct_response: {{status: {status}, body: {body}}}}}]}}]}}, http_filters: [{ROUTER}]}}}}]}}"
            )
        };
        let file = format!("{{filename: \"{}\"}}", p(d, "jwks.json"));
        bootstrap(
            admin,
            &[
                listener("ok", ports["ok"], &direct(200, &file)),
                listener("bad", ports["bad"], &direct(500, "{inline_string: nope}")),
            ],
            &[],
        )
    })
}

/// A P-256 key as a JWK (its public point) and as the signer of tokens.
fn ec_key(kid: &str) -> (Value, jsonwebtoken::EncodingKey) {
    use base64::Engine as _;
    let key = rcgen::KeyPair::generate().expect("key");
    let point = key.public_key_raw();
    assert_eq!(point.len(), 65, "an uncompressed P-256 point");
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwk = serde_json::json!({ "kty": "EC", "kid": kid, "crv": "P-256", "alg": "ES256", "x": b64(&point[1..33]), "y": b64(&point[33..]) });
    let enc = jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).expect("EC key");
    (jwk, enc)
}

fn token(key: &jsonwebtoken::EncodingKey, kid: &str, iss: &str) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(kid.into());
    let claims = serde_json::json!({ "iss": iss, "sub": "someone", "exp": 4_000_000_000u64 });
    jsonwebtoken::encode(&header, &claims, key).expect("sign")
}

/// jwt_authn with `remote_jwks`: the keys are served by a third process
/// (Envoy answering with the JWKS file) over a cluster and cached; a valid
/// token passes (the second one without a new fetch), a token signed by
/// another key and a missing token are refused, and a provider whose JWKS
/// cluster answers 500 refuses with "Jwks remote fetch is failed" (after
/// the retries its `retry_policy` allows), trying again on the next request. Statuses, bodies, `www-authenticate` and the
/// `jwt_authn.*` counters (with `jwks_fetch_success/failed`) must match.
#[test]
fn jwt_authn_with_remote_jwks() {
    let dir = TempDir::new("remote-jwks");
    let d = dir.path();
    let (jwk, signer) = ec_key("k1");
    let (_, stranger) = ec_key("k1");
    std::fs::write(d.join("jwks.json"), serde_json::json!({ "keys": [jwk] }).to_string()).expect("write");
    let jwks_server = jwks_server(d);
    let (_echo, up) = echo("up", d);
    let (ok_port, bad_port) = (jwks_server.port("ok"), jwks_server.port("bad"));
    let (e, l) = both(d, &["main"], |admin, ports| {
        let remote = |cluster: &str, extra: &str| {
            format!("remote_jwks: {{http_uri: {{uri: \"http://jwks.test/keys.json\", cluster: {cluster}, timeout: 2s}}, cache_duration: 300s{extra}}}")
        };
        let jwt = format!(
            "{{name: envoy.filters.http.jwt_authn, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication, providers: {{good: {{issuer: \"https://good.test\", {}}}, broken: {{issuer: \"https://broken.test\", {}}}}}, rules: [{{match: {{prefix: \"/broken\"}}, requires: {{provider_name: broken}}}}, {{match: {{prefix: \"/\"}}, requires: {{provider_name: good}}}}]}}}}, ",
            remote("jwks_ok", ""),
            remote("jwks_bad", ", retry_policy: {num_retries: 2, retry_back_off: {base_interval: 0.01s}}")
        );
        bootstrap(
            admin,
            &[listener("main", ports["main"], &format!("{{filters: [{}]}}", hcm("jwt", "up", "", &jwt)))],
            &[cluster("up", up, ""), cluster("jwks_ok", ok_port, ""), cluster("jwks_bad", bad_port, "")],
        )
    });
    let good = token(&signer, "k1", "https://good.test");
    let forged = token(&stranger, "k1", "https://good.test");
    let broken = token(&signer, "k1", "https://broken.test");
    let cases: Vec<(&str, &str, Option<&String>)> = vec![
        ("valid", "/a", Some(&good)),
        ("valid again (cached keys)", "/b", Some(&good)),
        ("another key", "/c", Some(&forged)),
        ("missing", "/d", None),
        ("jwks answers 500", "/broken/1", Some(&broken)),
        ("jwks answers 500 again", "/broken/2", Some(&broken)),
    ];
    for (what, path, tok) in &cases {
        let auth = tok.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let view = |side: &Side| {
            let r = http_request(addr(side.port("main")), "GET", path, "jwt.test", &headers, "").expect("request");
            let mut m = BTreeMap::new();
            m.insert("status".to_string(), r.status.to_string());
            m.insert("www-authenticate".into(), r.header("www-authenticate").unwrap_or("").to_string());
            if r.status != 200 {
                m.insert("body".into(), r.body.clone());
            }
            m
        };
        let (a, b) = (view(&e), view(&l));
        compare(what, &a, &b);
        let want = if what.starts_with("valid") { "200" } else { "401" };
        assert_eq!(a["status"], want, "{what}: {a:?}");
    }
    let (a, b) = (e.stats("http.jwt.jwt_authn."), l.stats("http.jwt.jwt_authn."));
    let pick = |m: &BTreeMap<String, u64>| -> BTreeMap<String, u64> {
        ["allowed", "denied", "jwks_fetch_success", "jwks_fetch_failed"]
            .iter()
            .map(|k| (k.to_string(), m.get(*k).copied().unwrap_or(0)))
            .collect()
    };
    assert_eq!(pick(&a), pick(&b), "jwt_authn stats: Envoy (left) and Legate (right) differ");
    assert_eq!(pick(&a)["jwks_fetch_success"], 1, "{a:?}");
    assert_eq!(pick(&a)["jwks_fetch_failed"], 2, "{a:?}");
    // Each failed fetch was tried three times (retry_policy: 2 retries on 5xx).
    let retries = |s: &Side| s.stats("cluster.jwks_bad.").get("upstream_rq_retry").copied();
    assert_eq!(retries(&e), retries(&l), "upstream_rq_retry: Envoy (left) and Legate (right) differ");
    assert_eq!(retries(&e), Some(4));
}

/// `remote_jwks` with `async_fetch`: the keys are fetched before the proxy
/// is ready (one fetch counted before any request), a request then needs no
/// fetch; a provider whose JWKS answers 500 is fetched again every
/// `failed_refetch_duration`, and its tokens are refused.
#[test]
fn jwt_authn_remote_jwks_async_fetch() {
    let dir = TempDir::new("async-jwks");
    let d = dir.path();
    let (jwk, signer) = ec_key("k1");
    std::fs::write(d.join("jwks.json"), serde_json::json!({ "keys": [jwk] }).to_string()).expect("write");
    let jwks_server = jwks_server(d);
    let (_echo, up) = echo("up", d);
    let (ok_port, bad_port) = (jwks_server.port("ok"), jwks_server.port("bad"));
    let (e, l) = both(d, &["main"], |admin, ports| {
        let remote = |cluster: &str| {
            format!("remote_jwks: {{http_uri: {{uri: \"http://jwks.test/keys.json\", cluster: {cluster}, timeout: 2s}}, cache_duration: 300s, async_fetch: {{failed_refetch_duration: 0.3s}}}}")
        };
        let jwt = format!(
            "{{name: envoy.filters.http.jwt_authn, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication, providers: {{good: {{issuer: \"https://good.test\", {}}}, broken: {{issuer: \"https://broken.test\", {}}}}}, rules: [{{match: {{prefix: \"/broken\"}}, requires: {{provider_name: broken}}}}, {{match: {{prefix: \"/\"}}, requires: {{provider_name: good}}}}]}}}}, ",
            remote("jwks_ok"),
            remote("jwks_bad")
        );
        bootstrap(
            admin,
            &[listener("main", ports["main"], &format!("{{filters: [{}]}}", hcm("jwt", "up", "", &jwt)))],
            &[cluster("up", up, ""), cluster("jwks_ok", ok_port, ""), cluster("jwks_bad", bad_port, "")],
        )
    });
    let fetched = |s: &Side, k: &str| s.stats("http.jwt.jwt_authn.").get(k).copied().unwrap_or(0);
    // Fetched before ready, before any request.
    assert_eq!(fetched(&e, "jwks_fetch_success"), 1, "Envoy");
    assert_eq!(fetched(&l, "jwks_fetch_success"), 1, "Legate");
    let good = token(&signer, "k1", "https://good.test");
    let broken = token(&signer, "k1", "https://broken.test");
    for (path, tok, want) in [("/a", &good, 200), ("/broken/a", &broken, 401)] {
        let auth = format!("Bearer {tok}");
        let view = |side: &Side| {
            let r = http_request(addr(side.port("main")), "GET", path, "jwt.test", &[("authorization", &auth)], "")
                .expect("request");
            (r.status, if r.status == 200 { String::new() } else { r.body })
        };
        let (a, b) = (view(&e), view(&l));
        assert_eq!(a, b, "{path}: Envoy (left) and Legate (right) differ");
        assert_eq!(a.0, want, "{path}");
    }
    assert_eq!(fetched(&e, "jwks_fetch_success"), 1, "Envoy fetched again");
    assert_eq!(fetched(&l, "jwks_fetch_success"), 1, "Legate fetched again");
    // The failing JWKS is retried on its own every 0.3 s.
    for side in [&e, &l] {
        let before = fetched(side, "jwks_fetch_failed");
        wait_for("failed JWKS fetches retried", Duration::from_secs(5), || {
            (fetched(side, "jwks_fetch_failed") >= before + 2).then_some(())
        });
    }
}
