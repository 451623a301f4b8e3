//! SDS over ADS end to end: `legate control-plane` serves `Secret`
//! resources to a real Envoy 1.40 and to `legate proxy` (state of the world
//! and delta). A listener naming a secret warms until the secret arrives; a
//! secret replaced with `legate ctl apply` reaches new connections while a
//! connection opened before keeps working; the REST API and `ctl get` show
//! each secret's certificate expiry.

mod harness;

use harness::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Server leaves `a1` (valid 30 days) and `a2` (90 days) for a.example.com
/// from one CA (`ca`): (PEM cert, PEM key, DER) by name.
fn make_certs() -> BTreeMap<&'static str, (String, String, Vec<u8>)> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, "Legate ADS Test CA");
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().expect("key")).expect("CA");
    let mut out = BTreeMap::new();
    out.insert("ca", (ca.pem(), String::new(), ca.der().to_vec()));
    for (name, days) in [("a1", 30), ("a2", 90)] {
        let mut p = CertificateParams::new(vec!["a.example.com".to_string()]).expect("params");
        p.distinguished_name.push(DnType::CommonName, "a.example.com");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::hours(1);
        p.not_after = now + time::Duration::days(days);
        let key = KeyPair::generate().expect("key");
        let cert = p.signed_by(&key, &ca).expect("sign");
        out.insert(name, (cert.pem(), key.serialize_pem(), cert.der().to_vec()));
    }
    out
}

fn quoted(text: &str) -> String {
    serde_json::to_string(text).expect("json string")
}

fn secret_doc(name: &str, pem: &(String, String, Vec<u8>)) -> String {
    format!(
        "kind: Secret\nmetadata: {{ name: {name} }}\nspec:\n  name: {name}\n  tls_certificate:\n    certificate_chain: {{ inline_string: {} }}\n    private_key: {{ inline_string: {} }}\n",
        quoted(&pem.0),
        quoted(&pem.1)
    )
}

/// A listener for one node on `port` terminating TLS with the ADS secret
/// `secret` and answering 200 `hello-<name>`.
fn listener_doc(name: &str, node: &str, port: u16, secret: &str) -> String {
    format!(
        r#"kind: Listener
metadata: {{ name: {name}, nodes: {{ ids: [{node}] }} }}
spec:
  name: {name}
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
  filter_chains:
  - transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
        common_tls_context:
          tls_certificate_sds_secret_configs:
          - {{ name: {secret}, sds_config: {{ ads: {{}}, resource_api_version: V3 }} }}
    filters:
    - name: envoy.filters.network.http_connection_manager
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
        stat_prefix: {name}
        http_filters: [{{ name: envoy.filters.http.router, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }} }}]
        route_config:
          virtual_hosts: [{{ name: all, domains: ["*"], routes: [{{ match: {{ prefix: "/" }}, direct_response: {{ status: 200, body: {{ inline_string: "hello-{name}" }} }} }}] }}]
"#
    )
}

// ---------------------------------------------------------------------------
// A TLS client that records the certificate it is shown.

#[derive(Debug)]
struct Recorder {
    seen: Arc<Mutex<Option<Vec<u8>>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        *self.seen.lock().expect("lock") = Some(end_entity.to_vec());
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.provider.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.provider.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

struct Conn {
    tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    cert: Vec<u8>,
}

impl Conn {
    /// A TLS connection to `port`, or None when nothing listens or the
    /// handshake fails.
    fn try_open(port: u16) -> Option<Conn> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let seen = Arc::new(Mutex::new(None));
        let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .ok()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Recorder { seen: seen.clone(), provider }))
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("a.example.com").ok()?;
        let conn = rustls::ClientConnection::new(Arc::new(cfg), name).ok()?;
        let tcp = TcpStream::connect(("127.0.0.1", port)).ok()?;
        tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock).ok()?;
        }
        let cert = seen.lock().expect("lock").clone()?;
        Some(Conn { tls, cert })
    }

    fn get(&mut self) -> (u16, String) {
        self.tls.write_all(b"GET / HTTP/1.1\r\nhost: a.example.com\r\n\r\n").expect("write");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let n = self.tls.read(&mut chunk).expect("read");
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(0);
                if body.len() >= len {
                    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                    return (status, body[..len].to_string());
                }
            }
        }
        panic!("no complete response: {}", String::from_utf8_lossy(&buf));
    }
}

// ---------------------------------------------------------------------------

struct Attached {
    who: &'static str,
    node: &'static str,
    admin: u16,
    /// The TLS listener's port.
    port: u16,
    /// A plain HTTP listener's port, in front of a TLS cluster.
    plain: u16,
    _proc: Proc,
}

fn attach(who: &'static str, node: &'static str, cp: &ControlPlane, delta: bool, dir: &Path) -> Attached {
    let admin = free_port();
    let mut args = vec![
        "bootstrap".to_string(),
        "--node-id".into(),
        node.into(),
        "--xds".into(),
        format!("127.0.0.1:{}", cp.xds),
        "--admin-port".into(),
        admin.to_string(),
    ];
    if delta {
        args.push("--delta".into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, boot) = cp.ctl(&args);
    assert!(ok, "{boot}");
    let file = dir.join(format!("bootstrap-{node}.yaml"));
    std::fs::write(&file, boot).expect("bootstrap");
    let mut p = if who == "envoy" {
        spawn_envoy(node, &file, "warning", &[], dir)
    } else {
        Proc::spawn(
            node,
            Command::new(LEGATE).args(["proxy", "--concurrency", "1", "-l", "info", "-c"]).arg(&file),
            dir,
        )
    };
    wait_ready(admin, &mut p);
    Attached { who, node, admin, port: free_port(), plain: free_port(), _proc: p }
}

/// A cluster to `port` verifying its server with the ADS secret `ca`, and a
/// plain listener on `plain` routing to it, for one node.
fn upstream_docs(who: &str, node: &str, port: u16, plain: u16, ca: &str) -> String {
    format!(
        r#"kind: Cluster
metadata: {{ name: up-{who}, nodes: {{ ids: [{node}] }} }}
spec:
  name: up-{who}
  connect_timeout: 1s
  type: STATIC
  load_assignment: {{ cluster_name: up-{who}, endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }} }}] }}] }}
  transport_socket:
    name: envoy.transport_sockets.tls
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
      sni: a.example.com
      common_tls_context:
        validation_context_sds_secret_config: {{ name: {ca}, sds_config: {{ ads: {{}}, resource_api_version: V3 }} }}
---
kind: Listener
metadata: {{ name: plain-{who}, nodes: {{ ids: [{node}] }} }}
spec:
  name: plain-{who}
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {plain} }} }}
  filter_chains:
  - filters:
    - name: envoy.filters.network.http_connection_manager
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
        stat_prefix: plain
        http_filters: [{{ name: envoy.filters.http.router, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }} }}]
        route_config:
          virtual_hosts: [{{ name: all, domains: ["*"], routes: [{{ match: {{ prefix: "/" }}, route: {{ cluster: up-{who} }} }}] }}]
"#
    )
}

fn stat(admin: u16, name: &str) -> Option<i64> {
    let r = http_get(addr(admin), "/stats", "admin").ok()?;
    r.body.lines().filter_map(|l| l.split_once(": ")).find(|(k, _)| *k == name).and_then(|(_, v)| v.trim().parse().ok())
}

#[test]
fn sds_over_ads_to_envoy_and_legate() {
    let tmp = TempDir::new("xds-secrets");
    let dir = tmp.path();
    let certs = make_certs();
    let cp = ControlPlane::start(dir);
    let proxies = [
        attach("envoy", "sds-envoy", &cp, false, dir),
        attach("legate", "sds-legate", &cp, false, dir),
        attach("legate-delta", "sds-legate-delta", &cp, true, dir),
    ];

    // Listeners first, their secret later: they warm, serving nothing.
    let mut docs: Vec<String> =
        proxies.iter().map(|p| listener_doc(&format!("tls-{}", p.who), p.node, p.port, "server")).collect();
    cp.apply(dir, &docs.join("---\n"));
    for p in &proxies {
        wait_for(&format!("{}: a listener warming", p.who), Duration::from_secs(10), || {
            (stat(p.admin, "listener_manager.total_listeners_warming") == Some(1)).then_some(())
        });
        assert!(Conn::try_open(p.port).is_none(), "{}: a warming listener must not serve", p.who);
    }

    // A secret whose PEM does not read is refused at apply, with its field.
    let bad = dir.join("bad-secret.yaml");
    std::fs::write(&bad, secret_doc("server", &("not a certificate".into(), certs["a1"].1.clone(), vec![])))
        .expect("write");
    let (ok, out) = cp.ctl(&["apply", "-f", bad.to_str().expect("path")]);
    assert!(!ok && out.contains("spec.tls_certificate.certificate_chain"), "{out}");

    // The secret arrives: every listener serves a1.
    cp.apply(dir, &secret_doc("server", &certs["a1"]));
    let mut held = Vec::new();
    for p in &proxies {
        let c = wait_for(&format!("{} to serve a1", p.who), Duration::from_secs(10), || Conn::try_open(p.port));
        assert!(c.cert == certs["a1"].2, "{}: the first certificate is not a1", p.who);
        held.push(c);
        assert_eq!(stat(p.admin, "listener_manager.total_listeners_warming"), Some(0), "{}", p.who);
    }
    for (p, c) in proxies.iter().zip(&mut held) {
        assert_eq!(c.get(), (200, format!("hello-tls-{}", p.who)), "{}", p.who);
    }

    // The REST API and ctl show the secret's expiry.
    let (ok, out) = cp.ctl(&["get", "secret", "server", "-o", "json"]);
    assert!(ok, "{out}");
    let v: Value = serde_json::from_str(&out).expect("json");
    let exp1 = v["status"]["expiration_time"].as_str().expect("expiration_time").to_string();
    // 30 days to the second: 29 whole days left, or 30 within that second.
    let days = v["status"]["certificates"][0]["days_until_expiration"].as_i64();
    assert!(matches!(days, Some(29 | 30)), "{v}");
    assert_eq!(v["status"]["certificates"][0]["subject_alt_names"][0]["dns"], "a.example.com", "{v}");

    // Rotation pushed with ctl apply: new connections get a2, held ones work.
    docs.push(secret_doc("server", &certs["a2"]));
    cp.apply(dir, &secret_doc("server", &certs["a2"]));
    for p in &proxies {
        wait_for(&format!("{} to serve a2", p.who), Duration::from_secs(10), || {
            Conn::try_open(p.port).filter(|c| c.cert == certs["a2"].2)
        });
        let mut fresh = Conn::try_open(p.port).expect("connect");
        assert_eq!(fresh.get(), (200, format!("hello-tls-{}", p.who)), "{} after the rotation", p.who);
    }
    for (p, c) in proxies.iter().zip(&mut held) {
        assert_eq!(c.get(), (200, format!("hello-tls-{}", p.who)), "{}: a connection opened before", p.who);
        assert!(c.cert == certs["a1"].2);
    }
    let (ok, out) = cp.ctl(&["get", "secret", "server", "-o", "json"]);
    assert!(ok, "{out}");
    let v: Value = serde_json::from_str(&out).expect("json");
    let exp2 = v["status"]["expiration_time"].as_str().expect("expiration_time").to_string();
    assert!(exp2 > exp1, "the new certificate expires later: {exp1} -> {exp2}");
    let days = v["status"]["certificates"][0]["days_until_expiration"].as_i64();
    assert!(matches!(days, Some(89 | 90)), "{v}");
    let (ok, table) = cp.ctl(&["get", "secret"]);
    assert!(ok && table.contains("EXPIRES") && table.contains(&exp2), "{table}");

    // /certs of each proxy shows the rotated certificate the same way.
    let views: Vec<Value> = proxies
        .iter()
        .map(|p| {
            let body = http_get(addr(p.admin), "/certs", "admin").expect("certs").body;
            let v: Value = serde_json::from_str(&body).expect("certs json");
            v["certificates"].clone()
        })
        .collect();
    for (p, v) in proxies.iter().zip(&views) {
        assert_eq!(v, &views[0], "/certs of {} vs Envoy", p.who);
    }
    let days = views[0][0]["cert_chain"][0]["days_until_expiration"].as_str();
    assert!(matches!(days, Some("89" | "90")), "{}", views[0]);
    assert_eq!(views[0][0]["cert_chain"][0]["path"], "<inline>", "{}", views[0]);

    // Each proxy took both versions of the secret, and counts them as Envoy does.
    let counts: Vec<(Option<i64>, Option<i64>)> = proxies
        .iter()
        .map(|p| (stat(p.admin, "sds.server.update_success"), stat(p.admin, "sds.server.update_rejected")))
        .collect();
    for (p, c) in proxies.iter().zip(&counts) {
        assert_eq!(c, &counts[0], "sds.server.update_success/_rejected of {} vs Envoy", p.who);
    }
    assert_eq!(counts[0], (Some(2), Some(0)), "Envoy's sds.server.* counts");

    // A cluster whose CA comes over ADS warms until it arrives (requests to
    // it meanwhile: 503, as to a cluster that does not exist), then carries
    // requests to the TLS listener, verified with that CA.
    let docs: Vec<String> = proxies.iter().map(|p| upstream_docs(p.who, p.node, p.port, p.plain, "ca")).collect();
    cp.apply(dir, &docs.join("---\n"));
    let mut waiting = Vec::new();
    for p in &proxies {
        wait_for(&format!("{}: a cluster warming", p.who), Duration::from_secs(10), || {
            (stat(p.admin, "cluster_manager.warming_clusters") == Some(1)).then_some(())
        });
        let r = wait_for(&format!("{}: the plain listener", p.who), Duration::from_secs(10), || {
            http_get(addr(p.plain), "/", "x").ok()
        });
        waiting.push(r.status);
    }
    assert_eq!(waiting, vec![503; 3], "requests to a warming cluster (Envoy, Legate, Legate delta)");
    let ca = &certs["ca"].0;
    let ca_doc = |name: &str| {
        format!(
            "kind: Secret\nmetadata: {{ name: {name} }}\nspec:\n  name: {name}\n  validation_context:\n    trusted_ca: {{ inline_string: {} }}\n",
            quoted(ca)
        )
    };
    cp.apply(dir, &ca_doc("ca"));
    for p in &proxies {
        let r = wait_for(&format!("{}: the TLS cluster in service", p.who), Duration::from_secs(10), || {
            http_get(addr(p.plain), "/", "x").ok().filter(|r| r.status == 200)
        });
        assert_eq!(r.body, format!("hello-tls-{}", p.who), "{}", p.who);
        assert_eq!(stat(p.admin, "cluster_manager.warming_clusters"), Some(0), "{}", p.who);
        assert!(stat(p.admin, &format!("cluster.up-{}.ssl.handshake", p.who)).unwrap_or(0) >= 1, "{}", p.who);
    }

    // The cluster changed to a CA secret not published yet: the new version
    // warms while the old one keeps serving; then the new one takes over.
    let docs: Vec<String> = proxies.iter().map(|p| upstream_docs(p.who, p.node, p.port, p.plain, "ca2")).collect();
    cp.apply(dir, &docs.join("---\n"));
    for p in &proxies {
        wait_for(&format!("{}: the new cluster version warming", p.who), Duration::from_secs(10), || {
            (stat(p.admin, "cluster_manager.warming_clusters") == Some(1)).then_some(())
        });
        let r = http_get(addr(p.plain), "/", "x").expect("plain");
        assert_eq!(r.status, 200, "{}: the old cluster serves while the new one warms", p.who);
    }
    cp.apply(dir, &ca_doc("ca2"));
    for p in &proxies {
        wait_for(&format!("{}: the new cluster version in service", p.who), Duration::from_secs(10), || {
            (stat(p.admin, "cluster_manager.warming_clusters") == Some(0)).then_some(())
        });
        let r = http_get(addr(p.plain), "/", "x").expect("plain");
        assert_eq!((r.status, r.body.as_str()), (200, format!("hello-tls-{}", p.who).as_str()), "{}", p.who);
    }

    // A secret that never comes, with a 1 s initial_fetch_timeout: the
    // listener stops warming after it and refuses TLS connections.
    let ports: Vec<u16> = proxies.iter().map(|_| free_port()).collect();
    let docs: Vec<String> = proxies
        .iter()
        .zip(&ports)
        .map(|(p, port)| {
            listener_doc(&format!("never-{}", p.who), p.node, *port, "never")
                .replace("resource_api_version: V3 }", "resource_api_version: V3, initial_fetch_timeout: 1s }")
        })
        .collect();
    assert!(docs[0].contains("initial_fetch_timeout: 1s"), "{}", docs[0]);
    cp.apply(dir, &docs.join("---\n"));
    for (p, port) in proxies.iter().zip(&ports) {
        wait_for(&format!("{}: the listener done warming without its secret", p.who), Duration::from_secs(10), || {
            (stat(p.admin, "listener_manager.total_listeners_active") == Some(3)
                && stat(p.admin, "listener_manager.total_listeners_warming") == Some(0))
            .then_some(())
        });
        wait_for(&format!("{}: the listener bound", p.who), Duration::from_secs(5), || {
            TcpStream::connect(("127.0.0.1", *port)).ok()
        });
        assert!(Conn::try_open(*port).is_none(), "{}: no certificate, no handshake", p.who);
    }
}
