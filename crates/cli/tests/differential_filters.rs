//! Differential tests of the HTTP filters (rbac, cors, compressor, buffer,
//! jwt_authn): the same bootstrap and the same requests through real Envoy
//! 1.40 and through `legate proxy`; status, the upstream that answered, the
//! headers that matter, bodies and the filters' stats must agree.
//!
//! A bootstrap template names its ports as `{LISTEN}`, `{ADMIN}` (different
//! for each proxy) and `{UP_<name>}` (shared echo upstreams). The helpers are
//! a small copy of `differential.rs`'s.

mod harness;

use harness::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::Command;

/// One request, sent identically to both proxies.
#[derive(Clone, Debug)]
struct Req {
    method: &'static str,
    path: String,
    host: &'static str,
    headers: Vec<(&'static str, String)>,
    body: String,
}

fn get(path: &str) -> Req {
    Req { method: "GET", path: path.into(), host: "example.com", headers: vec![], body: String::new() }
}

impl Req {
    fn method(mut self, m: &'static str) -> Self {
        self.method = m;
        self
    }
    fn header(mut self, k: &'static str, v: impl Into<String>) -> Self {
        self.headers.push((k, v.into()));
        self
    }
    fn post(mut self, body: impl Into<String>) -> Self {
        self.method = "POST";
        self.body = body.into();
        self
    }
}

/// Response headers compared by value.
const COMPARED_HEADERS: &[&str] = &[
    "content-type",
    "x-upstream",
    "server",
    "content-length",
    "content-encoding",
    "vary",
    "etag",
    "www-authenticate",
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-expose-headers",
    "access-control-max-age",
];

/// Upstream-received headers whose value differs by nature.
const VOLATILE_UPSTREAM_HEADERS: &[&str] = &["x-request-id"];

struct Pair {
    envoy: u16,
    legate: u16,
    envoy_admin: u16,
    legate_admin: u16,
    _procs: Vec<Proc>,
    _dir: TempDir,
}

fn start_pair(name: &str, template: &str, upstreams: &[&str]) -> Pair {
    let dir = TempDir::new(&format!("diff-{name}"));
    let mut procs = Vec::new();
    let mut ups = BTreeMap::new();
    for u in upstreams {
        let (p, port) = echo(u, dir.path());
        procs.push(p);
        ups.insert(*u, port);
    }
    let render = |listen: u16, admin: u16| {
        let mut s = template.replace("{LISTEN}", &listen.to_string()).replace("{ADMIN}", &admin.to_string());
        for (u, port) in &ups {
            s = s.replace(&format!("{{UP_{u}}}"), &port.to_string());
        }
        // Dead endpoints: {CLOSED}, and distinct ones as {CLOSED2}, {CLOSED3}...
        for i in 2..6 {
            s = s.replace(&format!("{{CLOSED{i}}}"), &free_port().to_string());
        }
        s.replace("{CLOSED}", &free_port().to_string())
    };
    let (envoy, envoy_admin, legate, legate_admin) = (free_port(), free_port(), free_port(), free_port());
    let ef = dir.path().join("envoy.yaml");
    let lf = dir.path().join("legate.yaml");
    std::fs::write(&ef, render(envoy, envoy_admin)).expect("write");
    std::fs::write(&lf, render(legate, legate_admin)).expect("write");
    let mut e = Proc::spawn(
        "envoy",
        Command::new(envoy_bin()).arg("-c").arg(&ef).args([
            "--concurrency",
            "1",
            "-l",
            "error",
            "--base-id",
            &base_id(),
        ]),
        dir.path(),
    );
    let mut l = Proc::spawn(
        "legate",
        Command::new(LEGATE).args(["proxy", "--concurrency", "1", "-l", "warn", "-c"]).arg(&lf),
        dir.path(),
    );
    wait_ready(envoy_admin, &mut e);
    wait_ready(legate_admin, &mut l);
    procs.push(e);
    procs.push(l);
    Pair { envoy, legate, envoy_admin, legate_admin, _procs: procs, _dir: dir }
}

fn send(port: u16, r: &Req) -> Resp {
    let headers: Vec<(&str, &str)> = r.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    http_request(addr(port), r.method, &r.path, r.host, &headers, &r.body)
        .unwrap_or_else(|e| panic!("{r:?} to {port}: {e}"))
}

fn view(r: &Resp) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("status".into(), r.status.to_string());
    for h in COMPARED_HEADERS {
        let all: Vec<&str> = r.headers.iter().filter(|(k, _)| k == h).map(|(_, v)| v.as_str()).collect();
        if !all.is_empty() {
            m.insert(format!("resp:{h}"), all.join(" | "));
        }
    }
    m.insert(
        "resp:x-envoy-upstream-service-time(present)".into(),
        r.header("x-envoy-upstream-service-time").is_some().to_string(),
    );
    match serde_json::from_str::<Value>(&r.body) {
        Ok(v) if v.get("upstream").is_some() => {
            for k in ["upstream", "method", "uri", "version"] {
                m.insert(format!("upstream:{k}"), v[k].to_string());
            }
            // The echo joins repeated headers; compare what it saw.
            if let Some(h) = v["headers"].as_object() {
                for (k, val) in h {
                    let val = val.as_str().unwrap_or_default();
                    if VOLATILE_UPSTREAM_HEADERS.contains(&k.as_str()) {
                        let uuid = val.len() == 36 && val.chars().filter(|c| *c == '-').count() == 4;
                        m.insert(format!("upstream-header:{k}(uuid)"), uuid.to_string());
                    } else {
                        m.insert(format!("upstream-header:{k}"), val.to_string());
                    }
                }
            }
        }
        _ => {
            m.insert("body".into(), r.body.clone());
        }
    }
    m
}

fn diff(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> Vec<String> {
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| format!("  {k}: envoy={:?} legate={:?}", a.get(k), b.get(k)))
        .collect()
}

/// Sends every request to both and requires equal views.
fn compare(name: &str, template: &str, upstreams: &[&str], requests: &[Req]) -> Pair {
    let pair = start_pair(name, template, upstreams);
    let mut problems = Vec::new();
    for r in requests {
        let e = view(&send(pair.envoy, r));
        let l = view(&send(pair.legate, r));
        let d = diff(&e, &l);
        if !d.is_empty() {
            problems.push(format!("{} {} {:?}:\n{}", r.method, r.path, r.headers, d.join("\n")));
        }
    }
    assert!(problems.is_empty(), "scenario {name}: Legate differs from Envoy:\n{}", problems.join("\n"));
    pair
}

/// A bootstrap with one listener and HCM around `routes` (a virtual_hosts list),
fn bootstrap(extra_hcm: &str, route_config_extra: &str, virtual_hosts: &str, clusters: &str) -> String {
    format!(
        r#"admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{ADMIN}} }} }} }}
static_resources:
  listeners:
  - name: main
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{LISTEN}} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
{extra_hcm}          http_filters: [{{ name: envoy.filters.http.router, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }} }}]
          route_config:
            name: local
{route_config_extra}            virtual_hosts:
{virtual_hosts}
  clusters:
{clusters}"#
    )
}

/// The bootstrap's router-only filter list replaced by `filters` (which must
/// end with the router).
fn with_filters(template: String, filters: &str) -> String {
    let router_only = "          http_filters: [{ name: envoy.filters.http.router, typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router } }]\n";
    assert!(template.contains(router_only), "the bootstrap template changed");
    template.replace(router_only, filters)
}

/// A counter or gauge from an admin's `/stats?format=json`.
fn stat(admin: u16, name: &str) -> Option<i64> {
    let v: Value = serde_json::from_str(&http_get(addr(admin), "/stats?format=json", "admin").ok()?.body).ok()?;
    v["stats"].as_array()?.iter().find(|s| s["name"] == name)?["value"].as_i64()
}

fn cluster(name: &str, ports: &[&str]) -> String {
    let eps: Vec<String> = ports
        .iter()
        .map(|p| {
            format!("{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {p} }} }} }} }}")
        })
        .collect();
    format!(
        "  - {{ name: {name}, connect_timeout: 1s, load_assignment: {{ cluster_name: {name}, endpoints: [{{ lb_endpoints: [{}] }}] }} }}\n",
        eps.join(", ")
    )
}

fn one_vhost(routes: &str) -> String {
    format!("            - name: all\n              domains: [\"*\"]\n              routes:\n{routes}")
}

fn echo_cluster() -> String {
    cluster("echo", &["{UP_a}"])
}

const ROUTER: &str = "          - name: envoy.filters.http.router\n            typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }\n";

/// A bootstrap whose HCM runs `filters` (YAML list items, without the router)
/// in front of the router, with `virtual_hosts` and the echo cluster.
fn filtered(filters: &str, virtual_hosts: &str) -> String {
    let t = bootstrap("", "", virtual_hosts, &echo_cluster());
    let t = with_filters(t, &format!("          http_filters:\n{filters}{ROUTER}"));
    assert!(!t.contains("http_filters: [{ name: envoy.filters.http.router"), "template replacement failed");
    t
}

/// The named stats must have the same values behind Envoy and Legate.
fn same_stats(pair: &Pair, names: &[&str]) {
    for name in names {
        let (e, l) = (stat(pair.envoy_admin, name), stat(pair.legate_admin, name));
        assert!(e.is_some(), "Envoy has no stat {name}");
        assert_eq!(e, l, "stat {name}: envoy={e:?} legate={l:?}");
    }
}

#[test]
fn rbac_rules_shadow_rules_and_per_route_override() {
    let filters = r#"          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: ALLOW
                policies:
                  public:
                    permissions: [{ or_rules: { rules: [{ url_path: { path: { prefix: /public } } }, { url_path: { path: { exact: /health } } }] } }]
                    principals: [{ any: true }]
                  admin:
                    permissions: [{ and_rules: { rules: [{ header: { name: x-role, string_match: { exact: admin } } }, { destination_port: {LISTEN} }] } }]
                    principals: [{ direct_remote_ip: { address_prefix: 127.0.0.0, prefix_len: 8 } }]
                  forwarded:
                    permissions: [{ url_path: { path: { prefix: /xff } } }]
                    principals: [{ remote_ip: { address_prefix: 192.0.2.0, prefix_len: 24 } }]
                  open:
                    permissions: [{ not_rule: { url_path: { path: { prefix: /closed } } } }]
                    principals: [{ and_ids: { ids: [{ source_ip: { address_prefix: 127.0.0.1, prefix_len: 32 } }, { not_id: { header: { name: x-banned, present_match: true } } }, { or_ids: { ids: [{ header: { name: x-open, string_match: { exact: "yes" } } }, { url_path: { path: { exact: /open } } }] } }] } }]
              shadow_rules:
                action: DENY
                policies:
                  shadow:
                    permissions: [{ header: { name: x-shadow, present_match: true } }]
                    principals: [{ any: true }]
"#;
    let routes = r#"              - match: { prefix: "/perroute" }
                route: { cluster: echo }
                typed_per_filter_config:
                  envoy.filters.http.rbac:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute
                    rbac:
                      rules:
                        action: DENY
                        policies:
                          deny-flagged:
                            permissions: [{ header: { name: x-deny, present_match: true } }]
                            principals: [{ any: true }]
              - { match: { prefix: "/" }, route: { cluster: echo } }
"#;
    let t = filtered(filters, &one_vhost(routes));
    let pair = compare(
        "rbac",
        &t,
        &["a"],
        &[
            get("/public/a"),
            get("/health"),
            get("/private"),
            get("/private").header("x-role", "admin"),
            get("/private").header("x-role", "user"),
            get("/xff").header("x-forwarded-for", "192.0.2.5"),
            get("/xff").header("x-forwarded-for", "10.0.0.1"),
            get("/open"),
            get("/open").header("x-banned", "1"),
            get("/closed").header("x-open", "yes"),
            get("/somewhere").header("x-open", "yes"),
            get("/perroute"),
            get("/perroute").header("x-deny", "1"),
            get("/public/b").header("x-shadow", "1"),
            get("/private").header("x-shadow", "1"),
        ],
    );
    same_stats(
        &pair,
        &[
            "http.ingress_http.rbac.allowed",
            "http.ingress_http.rbac.denied",
            "http.ingress_http.rbac.shadow_allowed",
            "http.ingress_http.rbac.shadow_denied",
        ],
    );
}

#[test]
fn cors_preflight_and_actual_requests() {
    let filters = "          - name: envoy.filters.http.cors\n            typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors }\n";
    let vhosts = r#"            - name: all
              domains: ["*"]
              typed_per_filter_config:
                envoy.filters.http.cors:
                  "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
                  allow_origin_string_match: [{ exact: "https://a.example" }, { suffix: ".b.example" }]
                  allow_methods: "GET, POST"
                  allow_headers: "x-h, content-type"
                  expose_headers: "x-e"
                  max_age: "600"
              routes:
              - match: { prefix: "/cred" }
                route: { cluster: echo }
                typed_per_filter_config:
                  envoy.filters.http.cors:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
                    allow_methods: "PUT"
                    allow_credentials: true
              - match: { prefix: "/any" }
                route: { cluster: echo }
                typed_per_filter_config:
                  envoy.filters.http.cors:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
                    allow_origin_string_match: [{ exact: "*" }]
              - { match: { prefix: "/" }, route: { cluster: echo } }
"#;
    let t = filtered(filters, vhosts);
    let preflight = |path: &str, origin: &'static str| {
        get(path).method("OPTIONS").header("origin", origin).header("access-control-request-method", "POST")
    };
    let pair = compare(
        "cors",
        &t,
        &["a"],
        &[
            get("/plain"),
            get("/plain").header("origin", "https://a.example"),
            get("/plain").header("origin", "https://x.b.example"),
            get("/plain").header("origin", "https://evil.example"),
            preflight("/plain", "https://a.example"),
            preflight("/plain", "https://evil.example"),
            get("/plain").method("OPTIONS").header("origin", "https://a.example"),
            get("/cred").header("origin", "https://a.example"),
            preflight("/cred", "https://a.example"),
            preflight("/any", "https://anything.example"),
            get("/any").header("origin", "https://anything.example"),
        ],
    );
    same_stats(&pair, &["http.ingress_http.cors.origin_valid", "http.ingress_http.cors.origin_invalid"]);
}

#[test]
fn buffer_limits_request_bodies() {
    let filters = r#"          - name: envoy.filters.http.buffer
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer
              max_request_bytes: 1024
"#;
    let t = filtered(filters, &one_vhost("              - { match: { prefix: \"/\" }, route: { cluster: echo } }\n"));
    compare(
        "buffer",
        &t,
        &["a"],
        &[
            get("/empty"),
            get("/small").post("x".repeat(100)),
            get("/edge").post("y".repeat(1024)),
            get("/big").post("z".repeat(5000)),
        ],
    );
}
