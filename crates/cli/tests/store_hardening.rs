//! The control plane's store, hardened: etcd over TLS with client
//! certificates (`--store etcds://`, `--etcd-ca`, `--etcd-cert`,
//! `--etcd-key`) against a real etcd started with `--client-cert-auth`, and
//! secret material encrypted at rest (`--secret-key-file`) in SQLite and in
//! etcd: the bytes on disk hold no private key, the API shows only a
//! fingerprint, proxies still get the key over SDS (a TLS handshake with it),
//! a restart with the same key serves it again, a wrong key or none stops
//! the start with an error naming the field.

mod harness;

use harness::certs::{client, server, Ca, Issued};
use harness::tls::Conn;
use harness::xds::{ads_tls_listener, tls_secret};
use harness::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Every file under `dir`, concatenated: what the store wrote to disk.
fn raw_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.extend(bytes);
            }
        }
    }
    out
}

fn holds(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// A base64 line from the middle of a PEM block.
fn middle_line(pem: &str) -> String {
    let lines: Vec<&str> = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    lines[lines.len() / 2].to_string()
}

/// `legate control-plane` with `flags` that must refuse to start: what it
/// printed.
fn refused_start(name: &str, dir: &Path, data: &Path, flags: &[String]) -> String {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut p = spawn_control_plane(name, dir, free_port(), free_port(), data, &flags);
    let status = p.wait_exit(Duration::from_secs(30));
    let out = p.output();
    assert!(status.is_some_and(|s| !s.success()), "{name}: expected a failed start, got {status:?}: {out}");
    let line = out.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default().to_string();
    println!("{name}: refused: {line}");
    out
}

/// Where the store keeps its bytes, and the flags that open it.
struct StoreUnderTest {
    label: &'static str,
    flags: Vec<String>,
    data: PathBuf,
    on_disk: PathBuf,
}

/// Applies a TLS secret and two listeners using it, checks what is on disk,
/// what the API shows and what a proxy serves, restarts the control plane
/// with the same key (a second proxy is served the key), then with a wrong
/// key and with none (both refused).
fn sealed_secret_round_trip(dir: &Path, s: &StoreUnderTest) {
    let ca = Ca::new("Legate Secrets CA");
    let leaf = ca.issue(&server(&["a.example.com"]).cn("a.example.com"));
    let key_file = dir.join(format!("{}-secret.key", s.label));
    std::fs::write(&key_file, [0x5a_u8; 32]).expect("key");
    let mut flags = s.flags.clone();
    flags.extend(["--secret-key-file".to_string(), key_file.to_string_lossy().into_owned()]);
    let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    let (xds, api) = (free_port(), free_port());
    let mut cp = ControlPlane::start_named(s.label, dir, xds, api, s.data.clone(), &refs);
    let (one, two) = (free_port(), free_port());
    let node_one = format!("{}-one", s.label);
    let node_two = format!("{}-two", s.label);
    cp.apply(
        dir,
        &[
            tls_secret("server", &leaf.pem, &leaf.key),
            ads_tls_listener("tls-one", &node_one, one, "server"),
            ads_tls_listener("tls-two", &node_two, two, "server"),
        ]
        .join("---\n"),
    );
    let _first = attach(Bin::Legate, &cp, &node_one, false, dir);
    served(&leaf, one, "before the restart");

    // On disk: ciphertext where the key was; the public certificate readable.
    let raw = raw_bytes(&s.on_disk);
    let (key_line, cert_line) = (middle_line(&leaf.key), middle_line(&leaf.pem));
    assert!(holds(&raw, &cert_line), "{}: the scan must find the certificate (public) in the store's files", s.label);
    assert!(!holds(&raw, "PRIVATE KEY") && !holds(&raw, &key_line), "{}: the private key is on disk", s.label);
    assert!(holds(&raw, "legate:enc:v1:"), "{}: no sealed value on disk", s.label);
    println!("{}: {} bytes on disk, no private key in them, sealed values present", s.label, raw.len());

    // The API shows a fingerprint, never the key.
    let (ok, out) = cp.ctl(&["get", "secret", "server", "-o", "json"]);
    assert!(
        ok && out.contains("[redacted sha256:") && !out.contains(&key_line) && !out.contains("legate:enc"),
        "{out}"
    );

    // Restarted with the same key: the key is read back and served.
    cp.proc_.kill();
    let cp = ControlPlane::start_named(&format!("{}-again", s.label), dir, xds, api, s.data.clone(), &refs);
    let _second = attach(Bin::Legate, &cp, &node_two, false, dir);
    served(&leaf, two, "after a restart with the same key");
    drop(cp);

    // A wrong key, or none: refused at start, naming the field.
    let wrong = dir.join(format!("{}-wrong.key", s.label));
    std::fs::write(&wrong, "ab".repeat(32)).expect("key");
    let mut with_wrong = s.flags.clone();
    with_wrong.extend(["--secret-key-file".to_string(), wrong.to_string_lossy().into_owned()]);
    let out = refused_start(&format!("{}-wrong-key", s.label), dir, &s.data, &with_wrong);
    assert!(
        out.contains("Secret/server: spec.tls_certificate.private_key.inline_string") && out.contains("key"),
        "{out}"
    );
    let out = refused_start(&format!("{}-no-key", s.label), dir, &s.data, &s.flags);
    assert!(out.contains("--secret-key-file"), "{out}");
}

/// The listener on `port` answers a TLS handshake with `leaf` and a 200.
fn served(leaf: &Issued, port: u16, when: &str) {
    let mut c = wait_for(&format!("the secret served {when}"), Duration::from_secs(15), || {
        Conn::try_open(port).filter(|c| c.cert == leaf.der)
    });
    assert_eq!(c.get().0, 200, "{when}");
    println!("served over SDS {when}: handshake with the stored key, 200");
}

#[test]
fn secrets_are_encrypted_at_rest_in_sqlite() {
    let tmp = TempDir::new("sealed-sqlite");
    let dir = tmp.path();
    let data = dir.join("cp-data");
    let s = StoreUnderTest { label: "sqlite", flags: vec![], data: data.clone(), on_disk: data };
    sealed_secret_round_trip(dir, &s);
}

#[test]
fn etcd_over_tls_with_client_certificates_and_sealed_secrets() {
    let tmp = TempDir::new("etcd-tls");
    let dir = tmp.path();
    let path = |f: &str| dir.join(f).to_string_lossy().into_owned();
    let ca = Ca::new("Legate etcd CA");
    ca.write(dir, "ca.pem");
    ca.issue(&server(&["localhost"]).ip("127.0.0.1").cn("etcd")).write(dir, "etcd");
    ca.issue(&client(&["legate-control"]).cn("legate-control")).write(dir, "client");
    let other = Ca::new("Another CA");
    other.write(dir, "other-ca.pem");
    other.issue(&client(&["intruder"]).cn("intruder")).write(dir, "intruder");
    let etcd = Etcd::start_tls(dir, &dir.join("ca.pem"), &dir.join("etcd.pem"), &dir.join("etcd.key"));
    let store = etcd.store_url_tls();
    let flags = |ca: &str, cert: Option<&str>| {
        let mut f = vec!["--store".to_string(), store.clone(), "--etcd-ca".into(), path(ca)];
        if let Some(c) = cert {
            f.extend(["--etcd-cert".into(), path(&format!("{c}.pem")), "--etcd-key".into(), path(&format!("{c}.key"))]);
        }
        f
    };

    // Refused, each with an error naming the store: no client certificate,
    // one etcd does not trust, and a CA that did not sign etcd's certificate.
    for (name, f) in [
        ("no-client-cert", flags("ca.pem", None)),
        ("untrusted-client-cert", flags("ca.pem", Some("intruder"))),
        ("wrong-ca", flags("other-ca.pem", Some("client"))),
    ] {
        let out = refused_start(name, dir, &dir.join(format!("{name}-data")), &f);
        assert!(out.contains(&store), "{name}: the error must name the store {store}: {out}");
    }
    // Plain etcd:// against a TLS-only etcd is refused too.
    let plain = vec!["--store".to_string(), store.replace("etcds://", "etcd://")];
    let out = refused_start("plaintext", dir, &dir.join("plaintext-data"), &plain);
    assert!(out.contains(&store.replace("etcds://", "etcd://")), "{out}");

    // With the client certificate: applies, serves, and keeps secrets sealed
    // in etcd's own files.
    let s = StoreUnderTest {
        label: "etcds",
        flags: flags("ca.pem", Some("client")),
        data: dir.join("etcds-data"),
        on_disk: dir.join("etcd-data"),
    };
    sealed_secret_round_trip(dir, &s);
}
