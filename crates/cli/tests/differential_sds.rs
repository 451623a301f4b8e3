//! Differential tests for TLS secrets: the same bootstrap through real Envoy
//! 1.40 and `legate proxy` with certificates from `static_resources.secrets`
//! and from SDS files, a file rotated while a connection is open, and the
//! admin `/certs` of both.
//!
//! Certificates are made at run time with rcgen. The TLS client is rustls
//! (it records the certificate each server presents, and keeps a connection
//! open across a rotation); curl is the client where only the outcome matters.

mod harness;

use harness::config::*;
use harness::tls::{curl_tls, Conn};
use harness::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A CA with server leaves `a1` and `a2` (both a.example.com, so a rotation
/// is only visible in the certificate itself) and a client leaf. Returns the
/// DER of each leaf by name.
fn write_certs(dir: &Path) -> BTreeMap<&'static str, Vec<u8>> {
    let ca = harness::certs::Ca::new("Legate SDS Test CA");
    ca.write(dir, "ca.pem");
    let mut ders = BTreeMap::new();
    for (file, client, days) in [("a1", false, 30), ("a2", false, 90), ("client", true, 60)] {
        let san = if client { "client.example.com" } else { "a.example.com" };
        let leaf = if client { harness::certs::client(&[san]) } else { harness::certs::server(&[san]) };
        let cert = ca.issue(&leaf.ip("127.0.0.1").cn(san).valid_days(days));
        cert.write(dir, file);
        ders.insert(file, cert.der);
    }
    ders
}

/// The `SecretsConfigDump` of a side's `/config_dump`, update times removed.
fn secrets_dump(side: &Side) -> Value {
    let v = admin_json(side.admin, "/config_dump");
    let mut d = v["configs"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["@type"] == "type.googleapis.com/envoy.admin.v3.SecretsConfigDump"))
        .cloned()
        .unwrap_or_else(|| panic!("{}: no SecretsConfigDump", side.who));
    if let Some(list) = d.get_mut("dynamic_active_secrets").and_then(Value::as_array_mut) {
        for s in list {
            assert!(s["last_updated"].is_string(), "{}: {s}", side.who);
            s["last_updated"] = Value::Null;
        }
    }
    // Envoy lists static secrets in no particular order.
    if let Some(list) = d.get_mut("static_secrets").and_then(Value::as_array_mut) {
        list.sort_by_key(|s| s["name"].as_str().unwrap_or("").to_string());
    }
    d
}

/// curl over TLS trusting the test CA, optionally with the client
/// certificate: (succeeded, status, body).
fn curl(dir: &Path, port: u16, client: bool) -> (bool, String, String) {
    let out = curl_tls(dir, "a.example.com", port, "/", client.then_some("client"), &["-w", "\n%{http_code}"]);
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
    let secret = |name: &str, leaf: &str| format!("{{name: {name}, tls_certificate: {}}}", cert_files(dir, leaf));
    let secrets = vec![
        secret("server", "a1"),
        secret("client", "client"),
        format!("{{name: ca, {}}}", trusted_ca(dir, "ca.pem", "")),
    ];
    let sides = both(dir, &[], &["mtls", "plain", "combined", "wrong-san"], |_, admin, ports| {
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
        let up = up_tls(
            "a.example.com",
            "tls_certificate_sds_secret_configs: [{name: client}], validation_context_sds_secret_config: {name: ca}",
        );
        bootstrap_with_secrets(
            admin,
            &secrets,
            &[
                listener(
                    "mtls",
                    ports["mtls"],
                    &format!("{{transport_socket: {mtls}, filters: [{}]}}", hcm_answer("m", "hello-m")),
                ),
                listener("plain", ports["plain"], &format!("{{filters: [{}]}}", hcm("p", "loop"))),
                listener(
                    "combined",
                    ports["combined"],
                    &format!(
                        "{{transport_socket: {}, filters: [{}]}}",
                        combined("client.example.com"),
                        hcm_answer("c", "hello-c")
                    ),
                ),
                listener(
                    "wrong-san",
                    ports["wrong-san"],
                    &format!(
                        "{{transport_socket: {}, filters: [{}]}}",
                        combined("other.example.com"),
                        hcm_answer("w", "hello-w")
                    ),
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
    let views: Vec<Vec<String>> = sides.iter().map(|s| certs_view(&admin_json(s.admin, "/certs"))).collect();
    assert_eq!(views[0], views[1], "/certs: Envoy vs Legate");
    // The listener's context: the CA file and the server leaf by file name.
    let joined = views[1].join("\n");
    assert!(joined.contains(&path(dir, "ca.pem")) && joined.contains(&path(dir, "a1.pem")), "{joined}");
    // The config dump lists the static secrets, private keys redacted.
    let dumps: Vec<Value> = sides.iter().map(secrets_dump).collect();
    assert_eq!(dumps[0], dumps[1], "SecretsConfigDump: Envoy vs Legate");
    assert!(dumps[1].to_string().contains("[redacted]"), "{}", dumps[1]);
    // No private key, nor where one is, anywhere in either config dump; the
    // bootstrap's secrets read the same.
    let boots: Vec<Value> = sides
        .iter()
        .map(|s| {
            let body = admin_page(s.admin, "/config_dump");
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
    replace_file(&sds, &sds_file(dir, "server", "a1"));
    // The second listener takes a secret through `watched_directory`.
    std::fs::create_dir_all(dir.join("watched")).expect("dir");
    let watched = dir.join("watched/sds.yaml");
    replace_file(&watched, &sds_file(dir, "server", "a1"));
    let sides = both(dir, &[], &["file", "dir"], |_, admin, ports| {
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
        bootstrap_with_secrets(
            admin,
            &[],
            &[
                listener(
                    "file",
                    ports["file"],
                    &format!("{{transport_socket: {file}, filters: [{}]}}", hcm_answer("f", "hello-f")),
                ),
                listener(
                    "dir",
                    ports["dir"],
                    &format!("{{transport_socket: {in_dir}, filters: [{}]}}", hcm_answer("d", "hello-d")),
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
    let before: Vec<Vec<String>> = sides.iter().map(|s| certs_view(&admin_json(s.admin, "/certs"))).collect();
    assert_eq!(before[0], before[1], "/certs before the rotation: Envoy vs Legate");
    assert!(before[1].join("").contains("<inline>"), "SDS certificates are shown as inline: {:?}", before[1]);

    replace_file(&sds, &sds_file(dir, "server", "a2"));
    replace_file(&watched, &sds_file(dir, "server", "a2"));

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
    let dumps: Vec<Value> = sides.iter().map(secrets_dump).collect();
    assert_eq!(dumps[0], dumps[1], "SecretsConfigDump after the rotation: Envoy vs Legate");
    let after: Vec<Vec<String>> = sides.iter().map(|s| certs_view(&admin_json(s.admin, "/certs"))).collect();
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
    let yaml = bootstrap_with_secrets(
        free_port(),
        &[],
        &[listener(
            "l",
            port,
            &format!(
                "{{transport_socket: {}, filters: [{}]}}",
                down_tls("tls_certificate_sds_secret_configs: [{name: nope}]", ""),
                hcm_answer("x", "hello-x")
            ),
        )],
        &[],
    );
    let f = dir.join("bad.yaml");
    std::fs::write(&f, yaml).expect("write");
    let envoy = envoy_command(&f, "init_only").output().expect("envoy");
    let legate = Command::new(LEGATE)
        .args(["proxy", "--disable-hot-restart", "-l", "error", "-c"])
        .arg(&f)
        .output()
        .expect("legate");
    let (e, l) = (String::from_utf8_lossy(&envoy.stderr), String::from_utf8_lossy(&legate.stderr));
    assert!(!envoy.status.success() && e.contains("Unknown static secret: nope"), "envoy: {e}");
    assert!(!legate.status.success() && l.contains("Unknown static secret: nope"), "legate: {l}");
    // The validators agree too (exit 1, invalid).
    let envoy = envoy_command(&f, "validate").output().expect("envoy");
    let legate = Command::new(LEGATE).args(["validate", "-c"]).arg(&f).output().expect("legate");
    let out = String::from_utf8_lossy(&legate.stdout).to_string() + &String::from_utf8_lossy(&legate.stderr);
    assert_eq!(envoy.status.code(), Some(1));
    assert_eq!(legate.status.code(), Some(1), "{out}");
    assert!(out.contains("tls_certificate_sds_secret_configs[0]: Unknown static secret: nope"), "{out}");
}

/// An SDS server of the test's own on a Unix socket, as SPIRE's agent
/// serves workloads: state of the world, each stream answered with the
/// secrets it names (once per change of names).
mod uds_sds {
    use legate_api::pb::envoy::service::discovery::v3::{
        DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    };
    use legate_api::pb::envoy::service::secret::v3::secret_discovery_service_server::{
        SecretDiscoveryService, SecretDiscoveryServiceServer,
    };
    use legate_api::pb::google::protobuf::Any;
    use prost::Message;
    use std::collections::{BTreeMap, BTreeSet};
    use std::pin::Pin;
    use tonic::{Request, Response, Status, Streaming};

    const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

    type Out<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

    pub struct Sds(pub BTreeMap<String, Vec<u8>>);

    #[tonic::async_trait]
    impl SecretDiscoveryService for Sds {
        type StreamSecretsStream = Out<DiscoveryResponse>;
        type DeltaSecretsStream = Out<DeltaDiscoveryResponse>;

        async fn stream_secrets(
            &self,
            req: Request<Streaming<DiscoveryRequest>>,
        ) -> Result<Response<Self::StreamSecretsStream>, Status> {
            let mut inbound = req.into_inner();
            let secrets = self.0.clone();
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(async move {
                let mut sent = BTreeSet::new();
                while let Ok(Some(r)) = inbound.message().await {
                    let want: BTreeSet<String> = r.resource_names.into_iter().collect();
                    if want == sent {
                        continue;
                    }
                    sent = want;
                    let resources = sent
                        .iter()
                        .filter_map(|n| secrets.get(n))
                        .map(|v| Any { type_url: SECRET.into(), value: v.clone() })
                        .collect();
                    let resp = DiscoveryResponse {
                        version_info: "1".into(),
                        resources,
                        type_url: SECRET.into(),
                        nonce: sent.len().to_string(),
                        ..Default::default()
                    };
                    if tx.send(Ok(resp)).is_err() {
                        return;
                    }
                }
            });
            Ok(Response::new(Box::pin(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))))
        }

        async fn delta_secrets(
            &self,
            _: Request<Streaming<DeltaDiscoveryRequest>>,
        ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
            Err(Status::unimplemented("state of the world only"))
        }

        async fn fetch_secrets(&self, _: Request<DiscoveryRequest>) -> Result<Response<DiscoveryResponse>, Status> {
            Err(Status::unimplemented("streams only"))
        }
    }

    /// Serves `secrets` (name, encoded `Secret`) on the Unix socket `path`
    /// from a thread of its own, for the rest of the test process.
    pub fn serve(path: &std::path::Path, secrets: BTreeMap<String, Vec<u8>>) {
        let listener = std::os::unix::net::UnixListener::bind(path).expect("bind the SDS socket");
        listener.set_nonblocking(true).expect("nonblocking");
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let l = tokio::net::UnixListener::from_std(listener).expect("tokio listener");
                let incoming = tokio_stream::wrappers::UnixListenerStream::new(l);
                let _ = tonic::transport::Server::builder()
                    .add_service(SecretDiscoveryServiceServer::new(Sds(secrets)))
                    .serve_with_incoming(incoming)
                    .await;
            });
        });
    }

    /// A `Secret` named `name` with the certificate and key files `leaf`.
    pub fn tls_secret(dir: &std::path::Path, name: &str, leaf: &str) -> Vec<u8> {
        use legate_api::pb::envoy::config::core::v3::{data_source::Specifier, DataSource};
        use legate_api::pb::envoy::extensions::transport_sockets::tls::v3::{secret, Secret, TlsCertificate};
        let inline = |f: String| DataSource {
            specifier: Some(Specifier::InlineString(std::fs::read_to_string(dir.join(f)).expect("read"))),
            ..Default::default()
        };
        Secret {
            name: name.into(),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: Some(inline(format!("{leaf}.pem"))),
                private_key: Some(inline(format!("{leaf}.key"))),
                ..Default::default()
            })),
        }
        .encode_to_vec()
    }
}

/// SDS from a server that is not ADS (`api_config_source`, GRPC, to a
/// STATIC cluster whose endpoint is a Unix socket, SPIRE's way): both
/// proxies fetch the certificate and serve it; `sds.<name>.update_success`
/// counts it the same.
#[test]
fn sds_from_an_api_config_source_over_a_unix_socket() {
    let tmp = TempDir::new("sds-grpc");
    let dir = tmp.path();
    let ders = write_certs(dir);
    let socket = dir.join("agent.sock");
    let secrets = BTreeMap::from([("server".to_string(), uds_sds::tls_secret(dir, "server", "a2"))]);
    uds_sds::serve(&socket, secrets);
    let sides = both(dir, &[], &["grpc"], |_, admin, ports| {
        let source = "{resource_api_version: V3, api_config_source: {api_type: GRPC, transport_api_version: V3, grpc_services: [{envoy_grpc: {cluster_name: agent}}]}}";
        let tls =
            down_tls(&format!("tls_certificate_sds_secret_configs: [{{name: server, sds_config: {source}}}]"), "");
        let agent = format!(
            "{{name: agent, connect_timeout: 1s, http2_protocol_options: {{}}, load_assignment: {{cluster_name: agent, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{pipe: {{path: \"{}\"}}}}}}}}]}}]}}}}",
            socket.display()
        );
        bootstrap_with_secrets(
            admin,
            &[],
            &[listener(
                "grpc",
                ports["grpc"],
                &format!("{{transport_socket: {tls}, filters: [{}]}}", hcm_answer("g", "hello-g")),
            )],
            &[agent],
        )
    });
    for s in &sides {
        let mut c = wait_for(&format!("{} to serve the SDS certificate", s.who), Duration::from_secs(10), || {
            std::panic::catch_unwind(|| Conn::open(s.port("grpc"))).ok()
        });
        assert!(c.cert == ders["a2"], "{}: the certificate served is not the SDS one", s.who);
        assert_eq!(c.get().0, 200, "{}", s.who);
    }
    // The subscription's counters (Envoy also keeps its stream's
    // `control_plane.*`, `version`, `update_time`, `init_fetch_timeout` and
    // `key_rotation_failed` under the same prefix; Legate does not yet).
    let counts: Vec<BTreeMap<String, u64>> = sides
        .iter()
        .map(|s| {
            s.stats("sds.server.").into_iter().filter(|(k, _)| k.starts_with("update_") && k != "update_time").collect()
        })
        .collect();
    eprintln!("sds.server.update_* (Envoy): {:?}", counts[0]);
    assert_eq!(counts[0].get("update_success"), Some(&1), "{:?}", counts[0]);
    assert_eq!(counts[0], counts[1], "sds.server.update_*: Envoy (left), Legate (right)");
}
