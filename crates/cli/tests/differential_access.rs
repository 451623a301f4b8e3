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

use harness::config::*;
use harness::diff::assert_same;
use harness::jwt::{ec_key, token};
use harness::raw::{tcp_in_pieces, tcp_request, tcp_silent};
use harness::tls::{curl_head_body, curl_tls, https, Https};
use harness::*;
use rcgen::DnType;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// The CA (`ca.pem`), the proxies' certificate and the three clients.
fn write_certs(dir: &Path) {
    let ca = harness::certs::Ca::new("Legate Access CA");
    ca.write(dir, "ca.pem");
    let proxy = harness::certs::server(&["proxy.example.com"]).uri("spiffe://legate.test/proxy");
    ca.issue(&proxy.cn("proxy.example.com")).write(dir, "proxy");
    let client1 = harness::certs::client(&["client1.example.com"]).uri("spiffe://legate.test/client1");
    ca.issue(&client1.subject(DnType::OrganizationName, "Legate Tests").cn("client1")).write(dir, "client1");
    ca.issue(&harness::certs::client(&["client2.example.com"]).cn("client2")).write(dir, "client2");
    let client3 = harness::certs::client(&[]).subject(DnType::CountryName, "NL");
    ca.issue(&client3.subject(DnType::OrganizationName, "Legate Tests").cn("client3")).write(dir, "client3");
}

/// A filter chain's TLS with the proxy certificate; client certificates are
/// asked for and verified against the CA, not required.
fn proxy_tls(dir: &Path) -> String {
    terminate_tls(
        dir,
        &["proxy"],
        "http/1.1",
        &format!(", {}", trusted_ca(dir, "ca.pem", "")),
        ", require_client_certificate: false",
    )
}

/// One HTTPS request with curl to `port` (as proxy.example.com), with the
/// client certificate `client` and extra request headers. What it gives:
/// whether the exchange worked, the status, the body when it is not the
/// echo's JSON, and the request headers named in `seen` as the echo
/// upstream received them.
fn curl(dir: &Path, port: u16, client: Option<&str>, headers: &[&str], seen: &[&str]) -> BTreeMap<String, String> {
    let out = Https { client, ..https("proxy.example.com") }.send(dir, port, "/path", headers);
    let mut m = BTreeMap::new();
    m.insert("ok".to_string(), out.status.success().to_string());
    if !out.status.success() {
        return m;
    }
    let (head, body) = curl_head_body(&out);
    let status = head.lines().next().and_then(|l| l.split_whitespace().nth(1)).unwrap_or("");
    m.insert("status".into(), status.to_string());
    match serde_json::from_str::<Value>(&body) {
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
    let [e, l] = both(d, &[], &["allow", "deny", "mtls", "cont"], |_, admin, ports| {
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
                        tcp_proxy("tcp_allow", "cluster: up", "")
                    ),
                ),
                listener(
                    "deny",
                    ports["deny"],
                    &format!(
                        "{{filters: [{}, {}]}}",
                        net_rbac(&format!("stat_prefix: net_deny., {rules}")),
                        tcp_proxy("tcp_deny", "cluster: up", "")
                    ),
                ),
                listener(
                    "cont",
                    ports["cont"],
                    &format!(
                        "{{filters: [{}, {}]}}",
                        net_rbac("stat_prefix: net_cont, enforcement_type: CONTINUOUS, rules: {action: ALLOW, policies: {any: {permissions: [{any: true}], principals: [{any: true}]}}}"),
                        tcp_proxy("tcp_cont", "cluster: up", "")
                    ),
                ),
                inspected_listener(
                    "mtls",
                    ports["mtls"],
                    &format!(
                        "{{transport_socket: {}, filters: [{}, {}]}}",
                        proxy_tls(d),
                        net_rbac(&format!("stat_prefix: net_mtls, {mtls_rules}")),
                        hcm("mtls", "up")
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
        assert_same(&format!("mtls {client:?}"), &a, &b);
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
    let [e, l] = both(d, &[], &["https"], |_, admin, ports| {
        let rbac = "{name: envoy.filters.http.rbac, typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC, rules: {action: ALLOW, policies: {by-uri: {permissions: [{any: true}], principals: [{authenticated: {principal_name: {exact: \"spiffe://legate.test/client1\"}}}]}, by-subject: {permissions: [{any: true}], principals: [{authenticated: {principal_name: {exact: \"O=Legate Tests,C=NL,CN=client3\"}}}]}}}, shadow_rules: {action: ALLOW, policies: {by-dns: {permissions: [{any: true}], principals: [{authenticated: {principal_name: {suffix: \".example.com\"}}}]}}}}}, ";
        bootstrap(
            admin,
            &[listener(
                "https",
                ports["https"],
                &format!(
                    "{{transport_socket: {}, filters: [{}]}}",
                    proxy_tls(d),
                    hcm_with("rbac_https", "up", "", rbac)
                ),
            )],
            &[cluster("up", up, "")],
        )
    });
    for client in [Some("client1"), Some("client2"), Some("client3"), None] {
        let a = curl(d, e.port("https"), client, &[], &[]);
        let b = curl(d, l.port("https"), client, &[], &[]);
        assert_same(&format!("https {client:?}"), &a, &b);
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
    let [e, l] = both(d, &[], &names, |_, admin, ports| {
        let listeners: Vec<String> = modes
            .iter()
            .map(|(n, extra)| {
                listener(
                    n,
                    ports[n],
                    &format!("{{transport_socket: {}, filters: [{}]}}", proxy_tls(d), hcm_with(n, "up", extra, "")),
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
                assert_same(&format!("{mode} {client:?} {headers:?}"), &a, &b);
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
    let [e, l] = both(d, &[], &["https", "front"], |_, admin, ports| {
        let up_tls = format!(", transport_socket: {}", up_tls("proxy.example.com", &trusted_ca(d, "ca.pem", "")));
        bootstrap(
            admin,
            &[
                listener(
                    "https",
                    ports["https"],
                    &format!("{{transport_socket: {}, filters: [{}]}}", proxy_tls(d), hcm("https", "up")),
                ),
                listener("front", ports["front"], &format!("{{filters: [{}]}}", hcm("front", "self_tls"))),
            ],
            &[cluster("up", up, ""), cluster("self_tls", ports["https"], &up_tls)],
        )
    });
    let tls12 = |side: &Side| {
        let args = ["-o", "/dev/null", "--http1.1", "--tls-max", "1.2"];
        let out = curl_tls(d, "proxy.example.com", side.port("https"), "/", None, &args);
        assert!(out.status.success());
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
    let [e, l] = both(d, &[], &["main"], |_, admin, ports| {
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
            &[listener("main", ports["main"], &format!("{{filters: [{}]}}", hcm_with("jwt", "up", "", &jwt)))],
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
        assert_same(what, &a, &b);
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
    let [e, l] = both(d, &[], &["main"], |_, admin, ports| {
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
            &[listener("main", ports["main"], &format!("{{filters: [{}]}}", hcm_with("jwt", "up", "", &jwt)))],
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
