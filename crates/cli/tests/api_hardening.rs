//! The control plane's API against hostile or careless callers: secret
//! material is never shown (resource reads, what a node receives, diffs) yet
//! a copy read back applies again; wrong tokens lock one client address out
//! for a while and are audited, other addresses go on; oversized and
//! malformed input is refused with a 4xx and changes nothing.

mod harness;

use harness::certs::{server, Ca};
use harness::http_client::block_on;
use harness::*;
use serde_json::{json, Value};
use std::net::IpAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP/1.1 request to the API from the local address `from`: status,
/// head and body.
fn request_from(
    from: &str,
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> (u16, String, String) {
    let from: IpAddr = from.parse().expect("address");
    block_on(async move {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind((from, 0).into()).expect("bind the source address");
        let mut s = socket.connect(([127, 0, 0, 1], port).into()).await.expect("connect");
        let auth = token.map(|t| format!("authorization: Bearer {t}\r\n")).unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: cp\r\n{auth}content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.expect("write head");
        // A refused large body may be cut short by the server: that is fine.
        let _ = s.write_all(body).await;
        let mut raw = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut raw)).await;
        let text = String::from_utf8_lossy(&raw).to_string();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, head.to_string(), body.to_string())
    })
}

fn api(cp: &ControlPlane, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> (u16, String, String) {
    request_from("127.0.0.1", cp.api, method, path, token, body)
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn revision(cp: &ControlPlane) -> u64 {
    cp.get("/v1/replica").and_then(|v| v["revision"].as_u64()).expect("revision")
}

fn secret_doc(name: &str, cert: &str, key: &str) -> Value {
    json!({"kind": "Secret", "metadata": {"name": name}, "spec": {"name": name, "tls_certificate": {
        "certificate_chain": {"inline_string": cert}, "private_key": {"inline_string": key}}}})
}

fn apply_docs(cp: &ControlPlane, docs: &[Value]) -> (u16, String) {
    let body = json!({"documents": docs}).to_string();
    let (status, _, body) = api(cp, "POST", "/v1/apply", None, body.as_bytes());
    (status, body)
}

/// The body of the PEM key between its armour lines, which must appear
/// nowhere in what the API says.
fn key_body(pem: &str) -> String {
    pem.lines().filter(|l| !l.starts_with("-----")).collect::<Vec<_>>().join("")
}

fn assert_no_key(what: &str, text: &str, keys: &[&str]) {
    let flat: String = text.replace("\\n", "").replace('\n', "");
    for k in keys {
        let probe = &key_body(k)[..40];
        assert!(!flat.contains(probe), "{what} shows a private key: {text}");
    }
}

#[test]
fn secrets_are_never_shown_and_a_copy_read_back_applies_again() {
    let dir = TempDir::new("api-secrets");
    let cp = ControlPlane::start(dir.path());
    let ca = Ca::new("api test CA");
    let (one, two) = (ca.issue(&server(&["a.test"])), ca.issue(&server(&["a.test"])));
    let (status, body) = apply_docs(&cp, &[secret_doc("edge", &one.pem, &one.key)]);
    assert_eq!(status, 200, "{body}");
    let first = revision(&cp);

    // Every read: the resource, what a node receives, a diff after rotation.
    let (_, _, read) = api(&cp, "GET", "/v1/resources/secret/edge", None, b"");
    assert_no_key("GET /v1/resources/secret/edge", &read, &[&one.key]);
    let item = &json_of(&read);
    let shown =
        item["spec"]["tls_certificate"]["private_key"]["inline_string"].as_str().unwrap_or_default().to_string();
    assert!(shown.starts_with("[redacted sha256:"), "{item}");
    assert!(item["spec"]["tls_certificate"]["certificate_chain"]["inline_string"]
        .as_str()
        .is_some_and(|c| c.contains("BEGIN CERTIFICATE")));
    let (_, _, envoy) = api(&cp, "GET", "/v1/envoy/secret?name=edge", None, b"");
    assert_no_key("GET /v1/envoy/secret", &envoy, &[&one.key]);
    assert!(envoy.contains(&shown), "{envoy}");
    let (status, body) = apply_docs(&cp, &[secret_doc("edge", &two.pem, &two.key)]);
    assert_eq!(status, 200, "{body}");
    let (_, _, diff) = api(&cp, "GET", &format!("/v1/diff?from={first}"), None, b"");
    assert_no_key("GET /v1/diff", &diff, &[&one.key, &two.key]);
    assert!(diff.contains("private_key"), "a rotated key shows as a change: {diff}");

    // A copy read from the API, with a new certificate, applies: the stored
    // key stays (its fingerprint is unchanged).
    let (_, _, read) = api(&cp, "GET", "/v1/resources/secret/edge", None, b"");
    let mut copy = json_of(&read);
    let before = copy["spec"]["tls_certificate"]["private_key"]["inline_string"].clone();
    copy["spec"]["tls_certificate"]["certificate_chain"]["inline_string"] = json!(two.pem.clone());
    let doc = json!({"kind": "Secret", "metadata": copy["metadata"], "spec": copy["spec"]});
    let (status, body) = apply_docs(&cp, std::slice::from_ref(&doc));
    assert_eq!(status, 200, "a redacted copy applies again: {body}");
    let (_, _, read) = api(&cp, "GET", "/v1/resources/secret/edge", None, b"");
    assert_eq!(json_of(&read)["spec"]["tls_certificate"]["private_key"]["inline_string"], before);
    // The same copy under another name has no key to stand for: refused.
    let mut other = doc;
    other["metadata"]["name"] = json!("other");
    other["spec"]["name"] = json!("other");
    let (status, body) = apply_docs(&cp, &[other]);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("documents[0].spec.tls_certificate.private_key.inline_string"), "{body}");
}

#[test]
fn wrong_tokens_lock_out_one_address_for_a_while_and_are_audited() {
    let dir = TempDir::new("api-lockout");
    let data = dir.path().join("cp-data");
    let extra = ["--auth-failure-limit", "3", "--auth-lockout", "3s"];
    let cp = ControlPlane::start_with(dir.path(), free_port(), free_port(), data, &extra);
    let (ok, out) = cp.ctl(&["token", "create", "--role", "admin", "--name", "root"]);
    assert!(ok, "{out}");
    let admin = out.lines().find(|l| l.starts_with("lgt_")).expect("token").to_string();
    let guess = format!("{}x", &admin[..admin.len() - 1]);

    // No token is not a guess: never locked out.
    for _ in 0..5 {
        assert_eq!(request_from("127.0.0.3", cp.api, "GET", "/v1/resources", None, b"").0, 401);
    }
    for i in 0..3 {
        let (status, _, body) = request_from("127.0.0.1", cp.api, "GET", "/v1/resources", Some(&guess), b"");
        assert_eq!(status, 401, "guess {i}: {body}");
    }
    // Locked: even the right token is refused from that address, with when to retry.
    let (status, head, body) = request_from("127.0.0.1", cp.api, "GET", "/v1/resources", Some(&admin), b"");
    assert_eq!(status, 429, "{head}\n{body}");
    assert!(head.to_ascii_lowercase().contains("retry-after:"), "{head}");
    assert_eq!(json_of(&body)["code"], "too_many_failures");
    // Another address goes on.
    assert_eq!(request_from("127.0.0.2", cp.api, "GET", "/v1/resources", Some(&admin), b"").0, 200);
    std::thread::sleep(Duration::from_millis(3300));
    assert_eq!(request_from("127.0.0.1", cp.api, "GET", "/v1/resources", Some(&admin), b"").0, 200, "the lockout ends");

    // The audit log has every denied read and the lockout.
    let (_, _, log) = request_from("127.0.0.2", cp.api, "GET", "/v1/audit", Some(&admin), b"");
    let entries = json_of(&log)["entries"].as_array().cloned().unwrap_or_default();
    let denied_reads = entries.iter().filter(|e| e["allowed"] == false && e["action"] == "read").count();
    assert!(denied_reads >= 8, "5 without a token and 3 wrong ones: {entries:?}");
    let lockout =
        entries.iter().find(|e| e["action"] == "lockout").unwrap_or_else(|| panic!("no lockout in {entries:?}"));
    assert_eq!(lockout["actor"], "client 127.0.0.1", "{lockout}");
    assert!(cp.output().contains("locked out"), "the lockout is logged:\n{}", cp.output());
}

#[test]
fn oversized_and_malformed_input_is_refused_and_changes_nothing() {
    let dir = TempDir::new("api-input");
    let cp = ControlPlane::start(dir.path());
    let (status, body) = apply_docs(
        &cp,
        &[json!({"kind": "Cluster", "metadata": {"name": "a"}, "spec": {"name": "a", "connect_timeout": "1s"}})],
    );
    assert_eq!(status, 200, "{body}");
    let before = revision(&cp);

    let huge = format!("{{\"text\": \"{}\"}}", "x".repeat(3 << 20));
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let nested = format!(
        "{{\"documents\": [{{\"kind\": \"Cluster\", \"metadata\": {{\"name\": \"n\"}}, \"spec\": {nested}}}]}}"
    );
    let deep_yaml =
        json!({"text": format!("kind: Cluster\nmetadata: {{name: b}}\nspec: {}", "[".repeat(10_000))}).to_string();
    let many: Vec<Value> =
        (0..10_001).map(|i| json!({"kind": "Cluster", "metadata": {"name": format!("c{i}")}, "spec": {}})).collect();
    let many = json!({"documents": many}).to_string();
    let cases: [(&str, Vec<u8>, u16); 5] = [
        ("a 3 MiB body", huge.into_bytes(), 413),
        ("invalid UTF-8", b"{\"text\": \"\xff\xfe\"}".to_vec(), 400),
        ("JSON nested 100,000 deep", nested.into_bytes(), 400),
        ("YAML nested 10,000 deep", deep_yaml.into_bytes(), 400),
        ("10,001 documents in one apply", many.into_bytes(), 413),
    ];
    for (what, body, want) in cases {
        let (status, _, answer) = api(&cp, "POST", "/v1/apply", None, &body);
        assert_eq!(status, want, "{what}: {answer}");
        assert_eq!(revision(&cp), before, "{what} changed the configuration");
    }
    // Still serving.
    assert_eq!(api(&cp, "GET", "/v1/resources/cluster/a", None, b"").0, 200);
}

#[test]
fn an_instance_token_registers_only_its_own_service_and_reads_nothing() {
    let dir = TempDir::new("api-instance-token");
    let cp = ControlPlane::start(dir.path());
    let token_of = |out: &str| out.lines().find(|l| l.starts_with("lgt_")).map(str::to_owned);
    let (ok, out) = cp.ctl(&["token", "create", "--role", "admin", "--name", "root"]);
    assert!(ok, "{out}");
    let admin = token_of(&out).expect("admin token");
    let (ok, out) = cp.ctl(&["--token", &admin, "token", "create", "--role", "instance", "--service", "checkout"]);
    assert!(ok, "{out}");
    let inst = token_of(&out).expect("instance token");
    let (ok, out) = cp.ctl(&["--token", &admin, "token", "create", "--role", "instance"]);
    assert!(!ok && out.contains("service"), "an instance token without its service: {out}");

    let body = br#"{"id": "i1", "address": "127.0.0.1", "port": 9000}"#;
    let call = |method: &str, path: &str, body: &[u8]| api(&cp, method, path, Some(&inst), body);
    assert_eq!(call("POST", "/v1/services/checkout/instances", body).0, 200, "its own service");
    assert_eq!(call("PUT", "/v1/services/checkout/instances/i1/heartbeat", b"").0, 200);
    let (status, _, answer) = call("POST", "/v1/services/payments/instances", body);
    assert_eq!(status, 403, "another service: {answer}");
    assert!(answer.contains("may not register for 'payments'"), "{answer}");
    for path in ["/v1/resources", "/v1/instances", "/v1/proxies"] {
        assert_eq!(call("GET", path, b"").0, 403, "{path} is not an instance's to read");
    }
    assert_eq!(call("DELETE", "/v1/services/checkout/instances/i1", b"").0, 200);
    // A viewer may read but not register.
    let (_, out) = cp.ctl(&["--token", &admin, "token", "create", "--role", "viewer"]);
    let viewer = token_of(&out).expect("viewer token");
    assert_eq!(api(&cp, "POST", "/v1/services/checkout/instances", Some(&viewer), body).0, 403);
    assert_eq!(api(&cp, "GET", "/v1/instances", Some(&viewer), b"").0, 200);
}
