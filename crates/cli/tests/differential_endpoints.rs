//! An endpoint's `hostname` and `metadata` through Envoy 1.40 and `legate
//! proxy` side by side: the host `auto_host_rewrite` sends (an endpoint's
//! name, a DNS name, or none), `/clusters`' `hostname`,
//! `%UPSTREAM_HOST_NAME%` and `%UPSTREAM_METADATA(...)%` in text and JSON
//! access logs, and a ring hash keyed by the endpoints' `envoy.lb`
//! `hash_key` sending the same keys to the same upstreams.

mod harness;

use harness::admin::{admin_json, admin_page};
use harness::diff::*;
use harness::template::*;
use harness::*;

const METADATA: &str = "metadata: { filter_metadata: { app: { version: v1, shard: 3, weight: 0.25, tags: { tier: gold, n: 2 } }, envoy.lb: { canary: true } } }";

fn clusters() -> String {
    let ep = |address: &str, port: &str, extra: &str| {
        format!(
            "{{ endpoint: {{ address: {{ socket_address: {{ address: {address}, port_value: {port} }} }}{extra} }} }}"
        )
    };
    let named = format!(
        "{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{UP_a}} }} }}, hostname: named.example }}, {METADATA} }}"
    );
    let la = |name: &str, eps: &str| {
        format!("load_assignment: {{ cluster_name: {name}, endpoints: [{{ lb_endpoints: [{eps}] }}] }}")
    };
    let hashed: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|u| {
            format!(
                "{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{UP_{u}}} }} }} }}, metadata: {{ filter_metadata: {{ envoy.lb: {{ hash_key: key-{u} }} }} }} }}"
            )
        })
        .collect();
    [
        format!("  - {{ name: named, connect_timeout: 1s, {} }}\n", la("named", &named)),
        format!("  - {{ name: plain, connect_timeout: 1s, {} }}\n", la("plain", &ep("127.0.0.1", "{UP_a}", ""))),
        format!(
            "  - {{ name: dns_ip, type: STRICT_DNS, dns_lookup_family: V4_ONLY, connect_timeout: 1s, {} }}\n",
            la("dns_ip", &ep("127.0.0.1", "{UP_b}", ""))
        ),
        format!(
            "  - {{ name: dns_named, type: STRICT_DNS, dns_lookup_family: V4_ONLY, connect_timeout: 1s, {} }}\n",
            la("dns_named", &ep("localhost", "{UP_b}", ", hostname: dns-named.example"))
        ),
        format!(
            "  - {{ name: hashed, connect_timeout: 1s, lb_policy: RING_HASH, {} }}\n",
            la("hashed", &hashed.join(", "))
        ),
    ]
    .concat()
}

const ROUTES: &str = r#"              - { match: { prefix: "/named" }, route: { cluster: named, auto_host_rewrite: true } }
              - { match: { prefix: "/plain" }, route: { cluster: plain, auto_host_rewrite: true } }
              - { match: { prefix: "/dns_ip" }, route: { cluster: dns_ip, auto_host_rewrite: true } }
              - { match: { prefix: "/dns_named" }, route: { cluster: dns_named, auto_host_rewrite: true } }
              - { match: { prefix: "/hashed" }, route: { cluster: hashed, hash_policy: [{ header: { header_name: x-key } }] } }
"#;

const TEXT_FORMAT: &str = "%REQ(:PATH)% name=%UPSTREAM_HOST_NAME% v=%UPSTREAM_METADATA(app:version)% shard=%UPSTREAM_METADATA(app:shard)% w=%UPSTREAM_METADATA(app:weight)% tags=%UPSTREAM_METADATA(app:tags)% tier=%UPSTREAM_METADATA(app:tags:tier)% lb=%UPSTREAM_METADATA(envoy.lb)% none=%UPSTREAM_METADATA(app:missing)%\\n";

fn loggers(dir: &str) -> String {
    let json = "{ path: \"%REQ(:PATH)%\", name: \"%UPSTREAM_HOST_NAME%\", v: \"%UPSTREAM_METADATA(app:version)%\", shard: \"%UPSTREAM_METADATA(app:shard)%\", tags: \"%UPSTREAM_METADATA(app:tags)%\", lb: \"%UPSTREAM_METADATA(envoy.lb:canary)%\", none: \"%UPSTREAM_METADATA(app:missing)%\", mixed: \"v=%UPSTREAM_METADATA(app:version)%\" }";
    format!(
        "          access_log:\n          - name: envoy.access_loggers.file\n            typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog, path: \"{dir}/{{ADMIN}}-text.log\", log_format: {{ text_format: \"{TEXT_FORMAT}\" }} }}\n          - name: envoy.access_loggers.file\n            typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog, path: \"{dir}/{{ADMIN}}-json.log\", log_format: {{ json_format: {json} }} }}\n"
    )
}

/// `/clusters`' `hostname` lines, and the JSON page's hostnames by cluster.
fn hostnames(admin: u16) -> (Vec<String>, Vec<String>) {
    let mut text: Vec<String> =
        admin_page(admin, "/clusters").lines().filter(|l| l.contains("::hostname::")).map(str::to_string).collect();
    text.sort();
    let json = admin_json(admin, "/clusters?format=json");
    let mut names: Vec<String> =
        json["cluster_statuses"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| {
                let name = c["name"].as_str().unwrap_or_default().to_string();
                c["host_statuses"].as_array().cloned().unwrap_or_default().into_iter().map(move |h| {
                    format!("{name}: {}", h.get("hostname").map_or("(none)".to_string(), |v| v.to_string()))
                })
            })
            .collect();
    names.sort();
    (text, names)
}

#[test]
fn endpoint_hostname_and_metadata_match_envoys() {
    let dir = TempDir::new("diff-endpoints-logs");
    let d = dir.path().display().to_string();
    let t = bootstrap(&loggers(&d), "", &one_vhost(ROUTES), &clusters());
    let requests = [get("/named/x"), get("/plain/x"), get("/dns_ip/x"), get("/dns_named/x")];
    let pair = compare("endpoints", &t, &["a", "b", "c"], &requests);
    // The host auto_host_rewrite sent, as the upstream saw it.
    let host = |port: u16, path: &str| {
        let r = send(port, &get(path));
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
        v["headers"]["host"].as_str().unwrap_or_default().to_string()
    };
    let expected = [
        ("/named/x", "named.example"),
        ("/plain/x", "example.com"),
        ("/dns_ip/x", "127.0.0.1"),
        ("/dns_named/x", "dns-named.example"),
    ];
    for (path, want) in expected {
        let (e, l) = (host(pair.envoy, path), host(pair.legate, path));
        eprintln!("{path}: host {e:?} behind Envoy, {l:?} behind Legate");
        assert_eq!(e, want, "{path}: the host Envoy sent upstream");
        assert_eq!(e, l, "{path}: the host sent upstream");
    }
    // The same keys land on the same upstreams, hashed by `hash_key`.
    let mut spread = std::collections::BTreeMap::new();
    for k in 0..24 {
        let r = get("/hashed").header("x-key", format!("user-{k}"));
        let (e, l) = (send(pair.envoy, &r), send(pair.legate, &r));
        assert_eq!(e.header("x-upstream"), l.header("x-upstream"), "key user-{k}");
        *spread.entry(e.header("x-upstream").unwrap_or("-").to_string()).or_insert(0) += 1;
    }
    eprintln!("ring hash by hash_key, 24 keys: {spread:?}");
    assert!(spread.len() > 1, "every key on one host: {spread:?}");
    let (e, l) = (hostnames(pair.envoy_admin), hostnames(pair.legate_admin));
    eprintln!("/clusters hostnames (Envoy): {:?}\n{:?}", e.0, e.1);
    assert!(e.0.iter().any(|l| l.ends_with("::hostname::named.example")), "{e:?}");
    assert_same("/clusters hostname lines", &e.0, &l.0);
    assert_same("/clusters?format=json hostnames", &e.1, &l.1);
    // Access logs: each request twice (compare, then the host check).
    for log in ["text", "json"] {
        let file = |admin: u16| dir.path().join(format!("{admin}-{log}.log"));
        let l = marked_lines(&file(pair.legate_admin), "/", 32);
        let e = marked_lines(&file(pair.envoy_admin), "/", l.len().max(32));
        let e: Vec<&String> = e.iter().filter(|x| !x.contains("hashed")).collect();
        let l: Vec<&String> = l.iter().filter(|x| !x.contains("hashed")).collect();
        for line in &e {
            eprintln!("envoy {log}: {line}");
        }
        assert_eq!(e.len(), 8, "{log}: {e:?}");
        assert_eq!(e, l, "{log} access log: Envoy (left), Legate (right)");
    }
}
