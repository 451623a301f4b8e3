//! A sticky canary whose cookie the proxy sets itself
//! (`stickiness: {cookie: NAME, ttl: 1h}`, compiled to a cookie
//! `hash_policy` with a `ttl` and `weighted_clusters.use_hash_policy`),
//! behind Envoy 1.40 and `legate proxy` side by side: a new user's first
//! response carries the cookie, made as Envoy makes it (the hex of the
//! xxHash64 of the connection's remote and local addresses), and every
//! later request with it lands on one version — the same version through
//! either proxy. As in Envoy, the cookie is made by the version cluster's
//! hashing balancer (the control plane gives those clusters RING_HASH), not
//! by the weighted pick, so the first request itself is placed at random.

mod harness;

use harness::*;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::Duration;

fn mesh(p1: u16, p2: u16, gateways: &[(&str, u16)]) -> String {
    let mut y = format!(
        "kind: Service\nmetadata: {{ name: checkout }}\nspec:\n  endpoints:\n  - {{ address: 127.0.0.1, port: {p1}, labels: {{ version: v1 }} }}\n  - {{ address: 127.0.0.1, port: {p2}, labels: {{ version: v2 }} }}\n"
    );
    for (i, (node, port)) in gateways.iter().enumerate() {
        y.push_str(&format!(
            "---\nkind: Gateway\nmetadata: {{ name: edge-{i}, nodes: {{ ids: [{node}] }} }}\nspec:\n  address: 127.0.0.1\n  port: {port}\n  routes:\n  - match: {{ prefix: / }}\n    to: [{{ service: checkout }}]\n"
        ));
    }
    y
}

const RELEASE: &str = "kind: Release
metadata: {name: checkout-v2}
spec:
  service: checkout
  stable: {version: v1}
  candidate: {version: v2}
  strategy:
    canary: {steps: [50, 100], hold: 10m, stickiness: {cookie: sticky, ttl: 1h}}
  analysis: {window: 5s, minRequests: 0}
";

/// A GET on a new connection from this side: (client address, the
/// version that answered, the `set-cookie` header if any).
fn first_visit(port: u16) -> (String, String, Option<String>) {
    let mut s = std::net::TcpStream::connect(addr(port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let client = s.local_addr().expect("local").to_string();
    s.write_all(b"GET / HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n").expect("write");
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    let header = |name: &str| {
        raw.lines().take_while(|l| !l.is_empty()).find_map(|l| {
            l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim().to_string())
        })
    };
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    (client, header("x-upstream").unwrap_or_default(), header("set-cookie"))
}

/// The version answering a request with `cookie`.
fn with_cookie(port: u16, cookie: &str) -> String {
    let r = http_request(addr(port), "GET", "/", "app", &[("cookie", cookie)], "").expect("request");
    assert_eq!(r.status, 200);
    assert!(r.header("set-cookie").is_none(), "a returning user gets no new cookie");
    r.header("x-upstream").unwrap_or_default().to_string()
}

#[test]
fn a_new_user_gets_the_cookie_and_then_stays_on_one_version_through_envoy_and_legate() {
    let dir = TempDir::new("release-cookie");
    let (_v1, p1) = echo("v1", dir.path());
    let (_v2, p2) = echo("v2", dir.path());
    let cp = ControlPlane::start(dir.path());
    let (pe, pl) = (free_port(), free_port());
    cp.apply(dir.path(), &mesh(p1, p2, &[("ck-envoy", pe), ("ck-legate", pl)]));
    let _envoy = attach(Bin::Envoy, &cp, "ck-envoy", false, dir.path());
    let _legate = attach(Bin::Legate, &cp, "ck-legate", false, dir.path());
    for port in [pe, pl] {
        wait_for("the gateways", Duration::from_secs(20), || upstream_of(port));
    }
    let file = dir.path().join("release.yaml");
    std::fs::write(&file, RELEASE).expect("write");
    let (ok, out) = cp.ctl(&["release", "start", "-f", &file.to_string_lossy()]);
    assert!(ok, "{out}");
    wait_for("the first step", Duration::from_secs(20), || {
        let (_, s) = cp.ctl(&["release", "status", "checkout-v2", "-o", "json"]);
        serde_json::from_str::<serde_json::Value>(&s).ok().filter(|v| v["weight"] == 50)
    });
    std::thread::sleep(Duration::from_secs(1));
    let mut placed: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (side, port) in [("envoy", pe), ("legate", pl)] {
        for user in 0..30 {
            let (client, _first, cookie) = first_visit(port);
            let cookie = cookie.unwrap_or_else(|| panic!("{side}: user {user}'s first response sets the cookie"));
            let proxy = format!("127.0.0.1:{port}");
            let value = format!("{:016x}", xxhash_rust::xxh64::xxh64(format!("{client}{proxy}").as_bytes(), 0));
            assert_eq!(
                cookie,
                format!("sticky=\"{value}\"; Max-Age=3600; Path=/; HttpOnly"),
                "{side}: as Envoy makes it"
            );
            let sent = format!("other=1; sticky=\"{value}\"");
            let version = with_cookie(port, &sent);
            for _ in 0..4 {
                assert_eq!(with_cookie(port, &sent), version, "{side}: user {user} stays on {version}");
            }
            // The other proxy puts the same cookie on the same version.
            let other = if port == pe { pl } else { pe };
            assert_eq!(with_cookie(other, &sent), version, "{side}'s cookie on the other proxy");
            placed.entry(side).or_default().push(version);
        }
    }
    eprintln!("versions (30 new users per proxy): {placed:?}");
    for (side, versions) in &placed {
        let on_candidate = versions.iter().filter(|v| *v == "v2").count();
        assert!((5..=25).contains(&on_candidate), "{side}: new users spread over both versions: {on_candidate} of 30");
    }
}
