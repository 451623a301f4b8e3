//! Differential tests for TLS secrets: the same bootstrap through real Envoy
//! 1.40 and `legate proxy` with certificates from `static_resources.secrets`
//! and from SDS files, a file rotated while a connection is open, and the
//! admin `/certs` of both.
//!
//! Certificates are made at run time with rcgen. The TLS client is rustls
//! (it records the certificate each server presents, and keeps a connection
//! open across a rotation); curl is the client where only the outcome matters.

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

// ---------------------------------------------------------------------------
// Certificates

/// A CA with server leaves `a1` and `a2` (both a.example.com, so a rotation
/// is only visible in the certificate itself) and a client leaf. Returns the
/// DER of each leaf by name.
fn write_certs(dir: &Path) -> BTreeMap<&'static str, Vec<u8>> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose, SanType,
    };
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, "Legate SDS Test CA");
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().expect("key")).expect("CA");
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write");
    let mut ders = BTreeMap::new();
    for (file, client, days) in [("a1", false, 30), ("a2", false, 90), ("client", true, 60)] {
        let san = if client { "client.example.com" } else { "a.example.com" };
        let mut p = CertificateParams::new(vec![san.to_string()]).expect("params");
        p.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
        p.distinguished_name.push(DnType::CommonName, san);
        p.extended_key_usages =
            vec![if client { ExtendedKeyUsagePurpose::ClientAuth } else { ExtendedKeyUsagePurpose::ServerAuth }];
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::hours(1);
        p.not_after = now + time::Duration::days(days);
        let key = KeyPair::generate().expect("key");
        let cert = p.signed_by(&key, &ca).expect("sign");
        std::fs::write(dir.join(format!("{file}.pem")), cert.pem()).expect("write");
        std::fs::write(dir.join(format!("{file}.key")), key.serialize_pem()).expect("write");
        ders.insert(file, cert.der().to_vec());
    }
    ders
}

fn p(dir: &Path, f: &str) -> String {
    dir.join(f).display().to_string()
}

/// A YAML double-quoted string holding `text`.
fn quoted(text: &str) -> String {
    serde_json::to_string(text).expect("json string")
}

/// An SDS file: a DiscoveryResponse with one tls_certificate secret `name`
/// made of the leaf `leaf`, inline (so one rename swaps everything).
fn sds_file(dir: &Path, name: &str, leaf: &str) -> String {
    let cert = std::fs::read_to_string(dir.join(format!("{leaf}.pem"))).expect("read");
    let key = std::fs::read_to_string(dir.join(format!("{leaf}.key"))).expect("read");
    format!(
        "resources:\n- \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret\n  name: {name}\n  tls_certificate:\n    certificate_chain: {{inline_string: {}}}\n    private_key: {{inline_string: {}}}\n",
        quoted(&cert),
        quoted(&key)
    )
}

/// Writes `text` next to `path` and moves it into place, as Envoy expects
/// SDS files to change.
fn move_into_place(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

// ---------------------------------------------------------------------------
// Bootstrap pieces

const ROUTER: &str = "{name: envoy.filters.http.router, typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}";

/// An HCM answering 200 `hello-<name>` directly.
fn hcm_direct(name: &str) -> String {
    format!(
        "{{name: envoy.filters.network.http_connection_manager, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager, stat_prefix: {name}, route_config: {{virtual_hosts: [{{name: all, domains: [\"*\"], routes: [{{match: {{prefix: \"/\"}}, direct_response: {{status: 200, body: {{inline_string: \"hello-{name}\"}}}}}}]}}]}}, http_filters: [{ROUTER}]}}}}"
    )
}

/// An HCM routing everything to `cluster`.
fn hcm_to(name: &str, cluster: &str) -> String {
    format!(
        "{{name: envoy.filters.network.http_connection_manager, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager, stat_prefix: {name}, route_config: {{virtual_hosts: [{{name: all, domains: [\"*\"], routes: [{{match: {{prefix: \"/\"}}, route: {{cluster: {cluster}}}}}]}}]}}, http_filters: [{ROUTER}]}}}}"
    )
}

fn down_tls(common: &str, extra: &str) -> String {
    format!(
        "{{name: envoy.transport_sockets.tls, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext, common_tls_context: {{{common}}}{extra}}}}}"
    )
}

fn listener(name: &str, port: u16, chain: &str) -> String {
    format!("{{name: {name}, address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}, filter_chains: [{chain}]}}")
}

fn cluster(name: &str, port: u16, extra: &str) -> String {
    format!(
        "{{name: {name}, connect_timeout: 1s, type: STATIC, load_assignment: {{cluster_name: {name}, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]}}{extra}}}"
    )
}

fn bootstrap(admin: u16, secrets: &[String], listeners: &[String], clusters: &[String]) -> String {
    let mut s = format!(
        "node: {{id: sds-test, cluster: sds-test}}\nadmin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}\nstatic_resources:\n"
    );
    for (key, items) in [("secrets", secrets), ("listeners", listeners), ("clusters", clusters)] {
        if items.is_empty() {
            continue;
        }
        s.push_str(&format!("  {key}:\n"));
        for i in items {
            s.push_str(&format!("  - {i}\n"));
        }
    }
    s
}

// ---------------------------------------------------------------------------
// Processes

struct Side {
    who: &'static str,
    admin: u16,
    ports: BTreeMap<&'static str, u16>,
    _proc: Proc,
}

impl Side {
    fn port(&self, name: &str) -> u16 {
        self.ports[name]
    }

    fn stat(&self, name: &str) -> u64 {
        let r = http_get(addr(self.admin), "/stats", "admin").expect("stats");
        r.body
            .lines()
            .filter_map(|l| l.split_once(": "))
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The `SecretsConfigDump` of `/config_dump`, update times removed.
    fn secrets_dump(&self) -> Value {
        let r = http_get(addr(self.admin), "/config_dump", "admin").expect("config_dump");
        let v: Value = serde_json::from_str(&r.body).expect("config_dump json");
        let mut d = v["configs"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["@type"] == "type.googleapis.com/envoy.admin.v3.SecretsConfigDump"))
            .cloned()
            .unwrap_or_else(|| panic!("{}: no SecretsConfigDump", self.who));
        if let Some(list) = d.get_mut("dynamic_active_secrets").and_then(Value::as_array_mut) {
            for s in list {
                assert!(s["last_updated"].is_string(), "{}: {s}", self.who);
                s["last_updated"] = Value::Null;
            }
        }
        // Envoy lists static secrets in no particular order.
        if let Some(list) = d.get_mut("static_secrets").and_then(Value::as_array_mut) {
            list.sort_by_key(|s| s["name"].as_str().unwrap_or("").to_string());
        }
        d
    }

    fn certs(&self) -> Value {
        let r = http_get(addr(self.admin), "/certs", "admin").expect("certs");
        assert_eq!(r.status, 200, "{} /certs: {}", self.who, r.body);
        serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{} /certs is not JSON ({e}): {}", self.who, r.body))
    }
}

/// The same config (from `yaml(admin, ports)`) on Envoy and on Legate.
fn both(dir: &Path, names: &[&'static str], yaml: impl Fn(u16, &BTreeMap<&'static str, u16>) -> String) -> [Side; 2] {
    ["envoy", "legate"].map(|who| {
        let admin = free_port();
        let ports: BTreeMap<_, _> = names.iter().map(|n| (*n, free_port())).collect();
        let f = dir.join(format!("{who}.yaml"));
        std::fs::write(&f, yaml(admin, &ports)).expect("write config");
        let mut proc_ = if who == "envoy" {
            spawn_envoy(who, &f, "error", &[], dir)
        } else {
            Proc::spawn(
                who,
                Command::new(LEGATE).args(["proxy", "--concurrency", "1", "-l", "warn", "-c"]).arg(&f),
                dir,
            )
        };
        wait_ready(admin, &mut proc_);
        Side { who, admin, ports, _proc: proc_ }
    })
}

// ---------------------------------------------------------------------------
// Clients

/// Accepts any server certificate and records the leaf it was shown.
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

/// A kept-alive HTTPS/1.1 connection and the certificate its server showed.
struct Conn {
    tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    cert: Vec<u8>,
}

impl Conn {
    fn open(port: u16) -> Conn {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let seen = Arc::new(Mutex::new(None));
        let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Recorder { seen: seen.clone(), provider }))
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("a.example.com").expect("name");
        let conn = rustls::ClientConnection::new(Arc::new(cfg), name).expect("client");
        let tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock).expect("handshake");
        }
        let cert = seen.lock().expect("lock").clone().expect("a server certificate");
        Conn { tls, cert }
    }

    /// One request on this connection: (status, body).
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

/// curl over TLS trusting the test CA, optionally with the client
/// certificate: (succeeded, status, body).
fn curl(dir: &Path, port: u16, client: bool) -> (bool, String, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--max-time", "10", "-w", "\n%{http_code}", "--cacert"]).arg(dir.join("ca.pem"));
    cmd.args(["--resolve", &format!("a.example.com:{port}:127.0.0.1")]);
    if client {
        cmd.arg("--cert").arg(dir.join("client.pem")).arg("--key").arg(dir.join("client.key"));
    }
    let out = cmd.arg(format!("https://a.example.com:{port}/")).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (out.status.success(), code.to_string(), body.to_string())
}

/// `/certs` reduced to what is deterministic, in an order-free form: per
/// context, its CA and chain entries with every field.
fn certs_view(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v["certificates"]
        .as_array()
        .unwrap_or_else(|| panic!("no certificates[] in {v}"))
        .iter()
        .map(|c| {
            for k in ["ca_cert", "cert_chain"] {
                assert!(c[k].is_array(), "{k} missing in {c}");
            }
            serde_json::to_string(c).expect("json")
        })
        .collect();
    out.sort();
    out
}

// ---------------------------------------------------------------------------
// Scenarios

/// Certificates and a client CA from `static_resources.secrets`, referenced
/// by name by listeners (mutual TLS; the CA alone, or combined with a
/// default validation context that checks client names) and by a cluster
/// (its CA and client certificate); both proxies accept and refuse the same
/// clients, carry requests through the cluster, and show the same `/certs`
/// and secrets config dump.
#[test]
fn static_secrets_served_like_envoy() {
    let tmp = TempDir::new("sds-static");
    let dir = tmp.path();
    write_certs(dir);
    let secret = |name: &str, leaf: &str| {
        format!(
            "{{name: {name}, tls_certificate: {{certificate_chain: {{filename: \"{}\"}}, private_key: {{filename: \"{}\"}}}}}}",
            p(dir, &format!("{leaf}.pem")),
            p(dir, &format!("{leaf}.key"))
        )
    };
    let secrets = vec![
        secret("server", "a1"),
        secret("client", "client"),
        format!("{{name: ca, validation_context: {{trusted_ca: {{filename: \"{}\"}}}}}}", p(dir, "ca.pem")),
    ];
    let sides = both(dir, &["mtls", "plain", "combined", "wrong-san"], |admin, ports| {
        let mtls = down_tls(
            "tls_certificate_sds_secret_configs: [{name: server}], validation_context_sds_secret_config: {name: ca}",
            ", require_client_certificate: true",
        );
        // A default validation context (client names) combined with the CA secret.
        let combined = |san: &str| {
            down_tls(
                &format!("tls_certificate_sds_secret_configs: [{{name: server}}], combined_validation_context: {{default_validation_context: {{match_typed_subject_alt_names: [{{san_type: DNS, matcher: {{exact: {san}}}}}]}}, validation_context_sds_secret_config: {{name: ca}}}}"),
                ", require_client_certificate: true",
            )
        };
        let up = "{name: envoy.transport_sockets.tls, typed_config: {\"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext, sni: a.example.com, common_tls_context: {tls_certificate_sds_secret_configs: [{name: client}], validation_context_sds_secret_config: {name: ca}}}}";
        bootstrap(
            admin,
            &secrets,
            &[
                listener(
                    "mtls",
                    ports["mtls"],
                    &format!("{{transport_socket: {mtls}, filters: [{}]}}", hcm_direct("m")),
                ),
                listener("plain", ports["plain"], &format!("{{filters: [{}]}}", hcm_to("p", "loop"))),
                listener(
                    "combined",
                    ports["combined"],
                    &format!(
                        "{{transport_socket: {}, filters: [{}]}}",
                        combined("client.example.com"),
                        hcm_direct("c")
                    ),
                ),
                listener(
                    "wrong-san",
                    ports["wrong-san"],
                    &format!("{{transport_socket: {}, filters: [{}]}}", combined("other.example.com"), hcm_direct("w")),
                ),
            ],
            &[cluster("loop", ports["mtls"], &format!(", transport_socket: {up}"))],
        )
    });
    let mut seen = Vec::new();
    for s in &sides {
        let with = curl(dir, s.port("mtls"), true);
        let without = curl(dir, s.port("mtls"), false);
        let through = http_get(addr(s.port("plain")), "/", "x").expect("plain");
        let combined = curl(dir, s.port("combined"), true);
        let wrong_san = curl(dir, s.port("wrong-san"), true);
        assert_eq!(combined, (true, "200".into(), "hello-c".into()), "{}: combined validation context", s.who);
        assert!(!wrong_san.0, "{}: a client whose name the default context refuses", s.who);
        seen.push((with.clone(), without.0, through.status, through.body.clone(), combined, wrong_san.0));
        assert_eq!(with, (true, "200".into(), "hello-m".into()), "{} with a client certificate", s.who);
        assert!(!without.0, "{}: a client without a certificate must be refused", s.who);
        assert_eq!((through.status, through.body.as_str()), (200, "hello-m"), "{} through the TLS cluster", s.who);
    }
    assert_eq!(seen[0], seen[1], "Envoy vs Legate");
    for stat in ["listener.127.0.0.1_{mtls}.ssl.fail_verify_no_cert", "cluster.loop.ssl.handshake"] {
        let v: Vec<u64> = sides.iter().map(|s| s.stat(&stat.replace("{mtls}", &s.port("mtls").to_string()))).collect();
        assert_eq!(v[0], v[1], "{stat}: Envoy vs Legate");
        assert!(v[0] >= 1, "{stat} = {}", v[0]);
    }
    let views: Vec<Vec<String>> = sides.iter().map(|s| certs_view(&s.certs())).collect();
    assert_eq!(views[0], views[1], "/certs: Envoy vs Legate");
    // The listener's context: the CA file and the server leaf by file name.
    let joined = views[1].join("\n");
    assert!(joined.contains(&p(dir, "ca.pem")) && joined.contains(&p(dir, "a1.pem")), "{joined}");
    // The config dump lists the static secrets, private keys redacted.
    let dumps: Vec<Value> = sides.iter().map(Side::secrets_dump).collect();
    assert_eq!(dumps[0], dumps[1], "SecretsConfigDump: Envoy vs Legate");
    assert!(dumps[1].to_string().contains("[redacted]"), "{}", dumps[1]);
    // No private key, nor where one is, anywhere in either config dump; the
    // bootstrap's secrets read the same.
    let boots: Vec<Value> = sides
        .iter()
        .map(|s| {
            let body = http_get(addr(s.admin), "/config_dump", "admin").expect("config_dump").body;
            for leak in ["PRIVATE KEY", "a1.key", "client.key"] {
                assert!(!body.contains(leak), "{}: /config_dump shows {leak}", s.who);
            }
            let v: Value = serde_json::from_str(&body).expect("json");
            v["configs"][0]["bootstrap"]["static_resources"]["secrets"].clone()
        })
        .collect();
    assert_eq!(boots[0], boots[1], "bootstrap secrets in /config_dump: Envoy vs Legate");
}

/// A certificate from an SDS file, replaced by moving a new file into place:
/// new connections get the new certificate without a restart, a connection
/// opened before keeps working, and `/certs` follows — on both proxies.
#[test]
fn file_sds_rotation_like_envoy() {
    let tmp = TempDir::new("sds-file");
    let dir = tmp.path();
    let ders = write_certs(dir);
    let sds = dir.join("sds.yaml");
    move_into_place(&sds, &sds_file(dir, "server", "a1"));
    // The second listener takes a secret through `watched_directory`.
    std::fs::create_dir_all(dir.join("watched")).expect("dir");
    let watched = dir.join("watched/sds.yaml");
    move_into_place(&watched, &sds_file(dir, "server", "a1"));
    let sides = both(dir, &["file", "dir"], |admin, ports| {
        let file = down_tls(
            &format!(
                "tls_certificate_sds_secret_configs: [{{name: server, sds_config: {{path_config_source: {{path: \"{}\"}}, resource_api_version: V3}}}}]",
                sds.display()
            ),
            "",
        );
        let in_dir = down_tls(
            &format!(
                "tls_certificate_sds_secret_configs: [{{name: server, sds_config: {{path_config_source: {{path: \"{}\", watched_directory: {{path: \"{}\"}}}}, resource_api_version: V3}}}}]",
                watched.display(),
                dir.join("watched").display()
            ),
            "",
        );
        bootstrap(
            admin,
            &[],
            &[
                listener(
                    "file",
                    ports["file"],
                    &format!("{{transport_socket: {file}, filters: [{}]}}", hcm_direct("f")),
                ),
                listener(
                    "dir",
                    ports["dir"],
                    &format!("{{transport_socket: {in_dir}, filters: [{}]}}", hcm_direct("d")),
                ),
            ],
            &[],
        )
    });
    // Before: a1 everywhere, and a connection held open on each listener.
    let mut held = Vec::new();
    for s in &sides {
        for l in ["file", "dir"] {
            let mut c = Conn::open(s.port(l));
            assert!(c.cert == ders["a1"], "{} {l}: the first certificate is not a1", s.who);
            assert_eq!(c.get().0, 200, "{} {l}", s.who);
            held.push((s.who, l, c));
        }
    }
    let before: Vec<Vec<String>> = sides.iter().map(|s| certs_view(&s.certs())).collect();
    assert_eq!(before[0], before[1], "/certs before the rotation: Envoy vs Legate");
    assert!(before[1].join("").contains("<inline>"), "SDS certificates are shown as inline: {:?}", before[1]);

    move_into_place(&sds, &sds_file(dir, "server", "a2"));
    move_into_place(&watched, &sds_file(dir, "server", "a2"));

    for s in &sides {
        for l in ["file", "dir"] {
            wait_for(&format!("{} {l} to serve a2", s.who), Duration::from_secs(15), || {
                let c = Conn::open(s.port(l));
                (c.cert == ders["a2"]).then_some(())
            });
            let mut fresh = Conn::open(s.port(l));
            assert_eq!(fresh.get(), (200, format!("hello-{}", &l[..1])), "{} {l} after the rotation", s.who);
        }
    }
    // The connections opened before the rotation still work.
    for (who, l, c) in &mut held {
        assert_eq!(c.get(), (200, format!("hello-{}", &l[..1])), "{who} {l}: a connection opened before");
        assert!(c.cert == ders["a1"]);
    }
    let dumps: Vec<Value> = sides.iter().map(Side::secrets_dump).collect();
    assert_eq!(dumps[0], dumps[1], "SecretsConfigDump after the rotation: Envoy vs Legate");
    let after: Vec<Vec<String>> = sides.iter().map(|s| certs_view(&s.certs())).collect();
    assert_eq!(after[0], after[1], "/certs after the rotation: Envoy vs Legate");
    assert_ne!(before[1], after[1], "/certs must show the new certificate");
    // a2 expires 90 days after it was made (to the second): 89 whole days
    // are left, or 90 within the second it was made.
    let joined = after[1].join("");
    assert!(
        joined.contains("\"days_until_expiration\":\"89\"") || joined.contains("\"days_until_expiration\":\"90\""),
        "{joined}"
    );
}

/// A listener naming a static secret that does not exist is refused by both,
/// at start and by the validators.
#[test]
fn unknown_static_secret_refused_like_envoy() {
    let tmp = TempDir::new("sds-unknown");
    let dir = tmp.path();
    write_certs(dir);
    let port = free_port();
    let yaml = bootstrap(
        free_port(),
        &[],
        &[listener(
            "l",
            port,
            &format!(
                "{{transport_socket: {}, filters: [{}]}}",
                down_tls("tls_certificate_sds_secret_configs: [{name: nope}]", ""),
                hcm_direct("x")
            ),
        )],
        &[],
    );
    let f = dir.join("bad.yaml");
    std::fs::write(&f, yaml).expect("write");
    let envoy = Command::new(envoy_bin())
        .arg("-c")
        .arg(&f)
        .args(["--mode", "init_only", "--base-id", &base_id(), "-l", "critical"])
        .output()
        .expect("envoy");
    let legate = Command::new(LEGATE).args(["proxy", "-l", "error", "-c"]).arg(&f).output().expect("legate");
    let (e, l) = (String::from_utf8_lossy(&envoy.stderr), String::from_utf8_lossy(&legate.stderr));
    assert!(!envoy.status.success() && e.contains("Unknown static secret: nope"), "envoy: {e}");
    assert!(!legate.status.success() && l.contains("Unknown static secret: nope"), "legate: {l}");
    // The validators agree too (exit 1, invalid).
    let envoy = Command::new(envoy_bin())
        .arg("-c")
        .arg(&f)
        .args(["--mode", "validate", "--base-id", &base_id(), "-l", "critical"])
        .output()
        .expect("envoy");
    let legate = Command::new(LEGATE).args(["validate", "-c"]).arg(&f).output().expect("legate");
    let out = String::from_utf8_lossy(&legate.stdout).to_string() + &String::from_utf8_lossy(&legate.stderr);
    assert_eq!(envoy.status.code(), Some(1));
    assert_eq!(legate.status.code(), Some(1), "{out}");
    assert!(out.contains("tls_certificate_sds_secret_configs[0]: Unknown static secret: nope"), "{out}");
}
