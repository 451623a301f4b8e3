//! An endpoint's `hostname` and `metadata` through Envoy 1.40 and `legate
//! proxy` side by side: the host `auto_host_rewrite` sends (an endpoint's
//! name, a DNS name, or none), `/clusters`' `hostname`,
//! `%UPSTREAM_HOST_NAME%` and `%UPSTREAM_METADATA(...)%` in text and JSON
//! access logs, and a ring hash keyed by the endpoints' `envoy.lb`
//! `hash_key` sending the same keys to the same upstreams; and DNS clusters
//! asking a name server of their own (c-ares `resolvers`) again after the
//! answer's TTL with `respect_dns_ttl`, after `dns_refresh_rate` without.

mod harness;

use harness::admin::{admin_json, admin_page};
use harness::diff::*;
use harness::template::*;
use harness::*;
use std::time::Duration;

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

/// The `/clusters` `health_flags` of each host of `cluster`, in the order
/// of its endpoints.
fn health_flags(admin: u16, cluster: &str) -> Vec<String> {
    admin_page(admin, "/clusters")
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{cluster}::127.0.0.1:")))
        .filter_map(|l| l.split_once("::health_flags::"))
        .map(|(_, flags)| flags.to_string())
        .collect()
}

/// An endpoint's `health_check_config` through Envoy and Legate: checks sent
/// to another port (each proxy's own listener, whose virtual hosts answer
/// `/health` 200 for the host `hc.example` and 503 for any other) or
/// another address, with another host header, or none at all
/// (`disable_active_health_check`: healthy though nothing listens). And the
/// health checker's intervals: without traffic a healthy host waits
/// `no_traffic_healthy_interval` while a failing one is checked every
/// `no_traffic_interval`; once the cluster has carried traffic a failing
/// host waits `unhealthy_interval`.
#[test]
fn endpoint_health_check_config_and_intervals_match_envoys() {
    let hc = |host: &str, extra: &str| {
        format!("health_checks: [{{ timeout: 0.5s, interval: 0.1s, no_traffic_interval: 0.1s, unhealthy_threshold: 1, healthy_threshold: 1{extra}, http_health_check: {{ path: /health, host: {host} }} }}]")
    };
    let ep = |port: &str, cfg: &str| {
        format!("{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}, health_check_config: {{ {cfg} }} }} }}")
    };
    let checked = [
        ep("{UP_a}", "port_value: {LISTEN}"),
        ep("{UP_b}", "port_value: {LISTEN}, hostname: other.example"),
        ep("{UP_c}", "address: { socket_address: { address: 127.0.0.1, port_value: {CLOSED2} } }"),
        ep("{CLOSED}", "disable_active_health_check: true"),
    ];
    let plain = |port: &str| {
        format!("{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }} }}")
    };
    let cluster = |name: &str, hc: String, eps: &[String]| {
        format!(
            "  - {{ name: {name}, connect_timeout: 0.5s, {hc}, load_assignment: {{ cluster_name: {name}, endpoints: [{{ lb_endpoints: [{}] }}] }} }}\n",
            eps.join(", ")
        )
    };
    let quiet = ", no_traffic_healthy_interval: 20s, unhealthy_interval: 20s";
    let clusters = [
        cluster("checked", hc("hc.example", ""), &checked),
        // Healthy and idle: one check, then 20 s.
        cluster("idle", hc("x", quiet), &[plain("{UP_a}")]),
        // A live and a dead host: the dead one is checked every 0.1 s until
        // a request has gone through, then every 20 s.
        cluster("busy", hc("x", quiet), &[plain("{UP_a}"), plain("{CLOSED3}")]),
    ]
    .concat();
    let vhosts = r#"            - name: hc
              domains: ["hc.example"]
              routes:
              - { match: { path: "/health" }, direct_response: { status: 200 } }
            - name: all
              domains: ["*"]
              routes:
              - { match: { path: "/health" }, direct_response: { status: 503 } }
              - { match: { prefix: "/busy" }, route: { cluster: busy } }
"#;
    let t = bootstrap("", "", vhosts, &clusters);
    let pair = start_pair("endpoint-hc", &t, &["a", "b", "c"]);
    // a: checked on the listener as hc.example; b: as other.example; c: at
    // a closed address; the last: not checked.
    let want = ["healthy", "/failed_active_hc", "/failed_active_hc", "healthy"];
    for (who, admin) in [("Envoy", pair.envoy_admin), ("Legate", pair.legate_admin)] {
        wait_for(&format!("{who}'s verdicts"), Duration::from_secs(10), || {
            let got = health_flags(admin, "checked");
            if got != want {
                eprintln!("{who}: {got:?}");
            }
            (got == want).then_some(())
        });
    }
    let attempts = |admin: u16, c: &str| stat(admin, &format!("cluster.{c}.health_check.attempt")).unwrap_or(-1);
    // Without traffic: the idle cluster's one host was checked once; the
    // busy cluster's dead host keeps being checked.
    for (who, admin) in [("Envoy", pair.envoy_admin), ("Legate", pair.legate_admin)] {
        wait_for(&format!("{who} to check the dead host again"), Duration::from_secs(10), || {
            (attempts(admin, "busy") >= 6).then_some(())
        });
        assert_eq!(attempts(admin, "idle"), 1, "{who}: a healthy idle host waits no_traffic_healthy_interval");
    }
    // Traffic: the dead host's next wait is unhealthy_interval.
    for port in [pair.envoy, pair.legate] {
        assert_eq!(send(port, &get("/busy/x")).status, 200);
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = [attempts(pair.envoy_admin, "busy"), attempts(pair.legate_admin, "busy")];
    std::thread::sleep(Duration::from_millis(700));
    let after = [attempts(pair.envoy_admin, "busy"), attempts(pair.legate_admin, "busy")];
    eprintln!("busy cluster checks after traffic (Envoy, Legate): {before:?} then {after:?}");
    assert_eq!(before, after, "after traffic, a failing host waits unhealthy_interval");
    for admin in [pair.envoy_admin, pair.legate_admin] {
        assert_eq!(attempts(admin, "idle"), 1);
    }
    let healthy = |admin: u16| stat(admin, "cluster.checked.membership_healthy");
    assert_eq!(healthy(pair.envoy_admin), Some(2));
    assert_eq!(healthy(pair.legate_admin), healthy(pair.envoy_admin));
}

/// Endpoints on Unix sockets (`pipe`), a path and an abstract name (`@`),
/// through Envoy 1.40 and Legate: the same answers from the socket's
/// server, the same `/clusters` lines (the socket's path where an IP host
/// has `ip:port`) and JSON address, and `%UPSTREAM_HOST%` and
/// `%UPSTREAM_HOST_NAME%` (the socket's path too) in response headers.
#[test]
fn pipe_endpoints_match_envoys() {
    let dir = TempDir::new("diff-pipe-endpoints");
    let path = dir.path().join("up.sock").display().to_string();
    let abstract_ = format!("@legate-diff-pipe-{}", std::process::id());
    harness::upstream::unix_http(&path, "file");
    harness::upstream::unix_http(&abstract_, "abstract");
    let cluster = |name: &str, pipe: &str| {
        format!("  - {{ name: {name}, connect_timeout: 1s, load_assignment: {{ cluster_name: {name}, endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ pipe: {{ path: \"{pipe}\" }} }} }} }}] }}] }} }}\n")
    };
    let clusters = [cluster("file", &path), cluster("abstract", &abstract_)].concat();
    let routes = "              - { match: { prefix: \"/file\" }, route: { cluster: file } }\n              - { match: { prefix: \"/abstract\" }, route: { cluster: abstract } }\n";
    let headers = "            response_headers_to_add: [{ header: { key: x-up, value: \"%UPSTREAM_HOST%\" } }, { header: { key: x-up-name, value: \"%UPSTREAM_HOST_NAME%\" } }]\n";
    let t = bootstrap("", headers, &one_vhost(routes), &clusters);
    let pair = compare("pipe", &t, &[], &[get("/file/a"), get("/abstract/b"), get("/file/c")]);
    for p in [pair.envoy, pair.legate] {
        let r = send(p, &get("/abstract/x"));
        assert_eq!((r.status, r.header("x-upstream")), (200, Some("abstract")));
        assert_eq!(r.body, "GET /abstract/x HTTP/1.1");
        assert_eq!((r.header("x-up"), r.header("x-up-name")), (Some(abstract_.as_str()), Some(abstract_.as_str())));
        assert_eq!(send(p, &get("/file/y")).header("x-up"), Some(path.as_str()));
    }
    let lines = |admin: u16| {
        let mut v: Vec<String> = admin_page(admin, "/clusters")
            .lines()
            .filter(|l| l.starts_with("file::") || l.starts_with("abstract::"))
            .filter(|l| !l.contains("_priority::") && !l.contains("::observability_name::"))
            // Envoy 1.40 lists a host's `rq_pending_active` gauge, which
            // Legate keeps per cluster only (for any host, not the pipe's).
            .filter(|l| !l.contains("::rq_pending_active::"))
            .map(str::to_string)
            .collect();
        v.sort();
        v
    };
    let (e, l) = (lines(pair.envoy_admin), lines(pair.legate_admin));
    eprintln!("Envoy's /clusters for the pipe hosts:\n{}", e.join("\n"));
    assert!(e.contains(&format!("file::{path}::rq_total::3")), "{e:?}");
    assert!(e.contains(&format!("abstract::{abstract_}::rq_total::2")), "{e:?}");
    assert_same("/clusters lines of the pipe hosts", &e, &l);
    let addresses = |admin: u16| {
        let json = admin_json(admin, "/clusters?format=json");
        let mut v: Vec<String> = json["cluster_statuses"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| format!("{}: {}", c["name"], c["host_statuses"][0]["address"]))
            .collect();
        v.sort();
        v
    };
    let (e, l) = (addresses(pair.envoy_admin), addresses(pair.legate_admin));
    eprintln!("/clusters?format=json addresses (Envoy): {e:?}");
    assert_same("/clusters?format=json addresses", &e, &l);
}

/// A name server on loopback: every A query for a name under `dns.test`
/// gets 127.0.0.1 with `ttl`, other names NXDOMAIN; A queries counted per
/// name. Stops when dropped.
struct NameServer {
    port: u16,
    seen: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, usize>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl NameServer {
    fn start(ttl: u32) -> NameServer {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind DNS");
        socket.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
        let port = socket.local_addr().expect("addr").port();
        let server = NameServer { port, seen: Default::default(), stop: Default::default() };
        let (seen, stop) = (server.seen.clone(), server.stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
                if let Some((name, answer)) = Self::answer(&buf[..n], ttl) {
                    if let Some(name) = name {
                        *seen.lock().unwrap().entry(name).or_default() += 1;
                    }
                    let _ = socket.send_to(&answer, from);
                }
            }
        });
        server
    }

    /// The answer to a query, and the name when it was an A query answered.
    fn answer(q: &[u8], ttl: u32) -> Option<(Option<String>, Vec<u8>)> {
        let mut at = 12;
        let mut labels = Vec::new();
        while *q.get(at)? != 0 {
            let len = q[at] as usize;
            labels.push(String::from_utf8_lossy(q.get(at + 1..at + 1 + len)?).to_lowercase());
            at += 1 + len;
        }
        let end = at + 5;
        let qtype = u16::from_be_bytes([*q.get(at + 1)?, *q.get(at + 2)?]);
        let name = labels.join(".");
        let known = name.ends_with(".dns.test");
        let a = known && qtype == 1;
        let mut r = q[..2].to_vec();
        r.extend_from_slice(&[0x81, if known { 0x80 } else { 0x83 }, 0, 1, 0, u8::from(a), 0, 0, 0, 0]);
        r.extend_from_slice(q.get(12..end)?);
        if a {
            r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
            r.extend_from_slice(&ttl.to_be_bytes());
            r.extend_from_slice(&[0, 4, 127, 0, 0, 1]);
        }
        Some((a.then_some(name), r))
    }

    fn count(&self, name: &str) -> usize {
        self.seen.lock().unwrap().get(name).copied().unwrap_or(0)
    }
}

impl Drop for NameServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Two STRICT_DNS clusters asking the test's name server (TTL 1 s) with a
/// refresh rate of 60 s: with `respect_dns_ttl` both proxies ask again about
/// every second, without it not once more in the same four seconds.
#[test]
fn respect_dns_ttl_resolves_again_after_the_ttl_as_envoy_does() {
    let dir = TempDir::new("diff-dns-ttl");
    let (_up, up) = harness::upstream::echo("up", dir.path());
    let dns = NameServer::start(1);
    let resolver = format!("typed_dns_resolver_config: {{name: envoy.network.dns_resolver.cares, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig, resolvers: [{{socket_address: {{address: 127.0.0.1, port_value: {}}}}}]}}}}", dns.port);
    let yaml = |who: &'static str, admin: u16, ports: &Ports| {
        let cluster = |name: &str, respect: bool| {
            format!("{{name: {name}, connect_timeout: 1s, type: STRICT_DNS, dns_lookup_family: V4_ONLY, dns_refresh_rate: 60s, respect_dns_ttl: {respect}, {resolver}, load_assignment: {{cluster_name: {name}, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {who}-{name}.dns.test, port_value: {up}}}}}}}}}]}}]}}}}")
        };
        let hcm = harness::config::hcm_routes("in", &[("/ttl", "ttl"), ("/rate", "rate")]);
        harness::config::bootstrap(
            admin,
            &[harness::config::listener("in", ports["in"], &format!("{{filters: [{hcm}]}}"))],
            &[cluster("ttl", true), cluster("rate", false)],
        )
    };
    let [envoy, legate] = both(dir.path(), &[], &["in"], yaml);
    // Both reach the upstream at the address the test's server gave.
    for side in [&envoy, &legate] {
        for path in ["/ttl/x", "/rate/x"] {
            let r = http_get(addr(side.port("in")), path, "example.com").expect("request");
            assert_eq!(r.status, 200, "{} {path}: {}", side.who, r.body);
        }
    }
    let counts = |who: &str| (dns.count(&format!("{who}-ttl.dns.test")), dns.count(&format!("{who}-rate.dns.test")));
    let before = [counts("envoy"), counts("legate")];
    std::thread::sleep(Duration::from_secs(4));
    let after = [counts("envoy"), counts("legate")];
    let asked: Vec<(usize, usize)> = (0..2).map(|i| (after[i].0 - before[i].0, after[i].1 - before[i].1)).collect();
    eprintln!("queries in 4 s (respecting the TTL, not): Envoy {:?}, Legate {:?}", asked[0], asked[1]);
    assert!(before.iter().all(|c| c.0 >= 1 && c.1 >= 1), "each name resolved first: {before:?}");
    assert!((3..=5).contains(&asked[0].0), "Envoy asked again after the TTL: {asked:?}");
    assert_eq!(asked[0].1, 0, "Envoy waited for the refresh rate: {asked:?}");
    assert!(asked[1].0.abs_diff(asked[0].0) <= 1, "Legate asks as often as Envoy: {asked:?}");
    assert_eq!(asked[1].1, 0, "Legate waits for the refresh rate: {asked:?}");
}
