//! The differential tests' common part: one request sent identically to
//! real Envoy 1.40 and to `legate proxy`, what of a response is compared,
//! and bootstrap templates. A template names its ports as `{LISTEN}`,
//! `{ADMIN}` (different for each proxy: both use SO_REUSEPORT and would
//! otherwise share traffic), `{UP_<name>}` (shared echo upstreams) and
//! `{CLOSED}`, `{CLOSED2}`... (ports nobody listens on).

use super::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

/// One request, sent identically to both proxies.
#[derive(Clone, Debug)]
pub struct Req {
    pub method: &'static str,
    pub path: String,
    pub host: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    pub h2: bool,
    /// HTTP/1.1 without `connection: close`: whether the proxy closes the
    /// connection after its response is then compared too.
    pub keep_alive: bool,
}

pub fn get(path: &str) -> Req {
    Req {
        method: "GET",
        path: path.into(),
        host: "example.com",
        headers: vec![],
        body: String::new(),
        h2: false,
        keep_alive: false,
    }
}

impl Req {
    pub fn host(mut self, h: &'static str) -> Self {
        self.host = h;
        self
    }
    pub fn header(mut self, k: &'static str, v: impl Into<String>) -> Self {
        self.headers.push((k, v.into()));
        self
    }
    /// A POST carrying `body` (HTTP/1.1 with content-length).
    pub fn post(mut self, body: impl Into<String>) -> Self {
        self.method = "POST";
        self.body = body.into();
        self
    }
    pub fn method(mut self, m: &'static str) -> Self {
        self.method = m;
        self
    }
    pub fn h2(mut self) -> Self {
        self.h2 = true;
        self
    }
    pub fn keep_alive(mut self) -> Self {
        self.keep_alive = true;
        self
    }
}

/// Response headers compared by value (others differ legitimately or are
/// checked by presence).
pub const COMPARED_HEADERS: &[&str] = &[
    "content-type",
    "location",
    "x-upstream",
    "server",
    "content-length",
    "connection",
    "x-route",
    "x-vhost",
    "x-global",
    "x-resp",
    "x-multi",
    "x-envoy-immediate-health-check-fail",
    "x-envoy-upstream-healthchecked-cluster",
    "x-envoy-ratelimited",
    "x-rl",
    "x-test-closed",
    "x-envoy-attempt-count",
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

/// Upstream-received headers whose value differs by nature: the generated
/// request id (checked for UUID format instead).
pub const VOLATILE_UPSTREAM_HEADERS: &[&str] = &["x-request-id"];

pub struct Pair {
    pub envoy: u16,
    pub legate: u16,
    pub envoy_admin: u16,
    pub legate_admin: u16,
    pub _procs: Vec<Proc>,
    pub _dir: TempDir,
}

pub fn start_pair(name: &str, template: &str, upstreams: &[&str]) -> Pair {
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
    let mut e = spawn_envoy("envoy", &ef, "error", &[], dir.path());
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

pub fn send(port: u16, r: &Req) -> Resp {
    if r.h2 {
        return curl_h2(port, r);
    }
    if r.keep_alive {
        return keep_alive_exchange(port, r);
    }
    let headers: Vec<(&str, &str)> = r.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    http_request(addr(port), r.method, &r.path, r.host, &headers, &r.body)
        .unwrap_or_else(|e| panic!("{r:?} to {port}: {e}"))
}

/// One HTTP/1.1 request on a connection left open by the client: the
/// response is read by its content-length, then the connection is watched for
/// for 1.5 s more; `x-test-closed` in the result says whether the proxy closed it.
pub fn keep_alive_exchange(port: u16, r: &Req) -> Resp {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr(port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(500))).expect("timeout");
    let mut req = format!("{} {} HTTP/1.1\r\nhost: {}\r\n", r.method, r.path, r.host);
    if !r.body.is_empty() {
        req.push_str(&format!("content-length: {}\r\n", r.body.len()));
    }
    for (k, v) in &r.headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(&r.body);
    s.write_all(req.as_bytes()).expect("write");
    let (mut raw, mut buf, mut closed) = (Vec::new(), [0u8; 8192], false);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            // Quiet for a while after a whole response: left open. Envoy
            // closes after its delayed-close wait (up to 1 s), so wait longer.
            Err(_) if response_complete(&raw) => {
                s.set_read_timeout(Some(Duration::from_millis(1500))).expect("timeout");
                closed = matches!(s.read(&mut buf), Ok(0));
                break;
            }
            Err(_) => {}
        }
    }
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|c| c.parse().ok()).unwrap_or(0);
    let mut headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    headers.push(("x-test-closed".into(), closed.to_string()));
    Resp { status, headers, body: body.to_string() }
}

pub fn response_complete(raw: &[u8]) -> bool {
    let text = String::from_utf8_lossy(raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else { return false };
    let len = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    body.len() >= len
}

/// HTTP/2 with prior knowledge, through curl.
pub fn curl_h2(port: u16, r: &Req) -> Resp {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-i", "--http2-prior-knowledge", "-X", r.method, "-H", &format!("host: {}", r.host)]);
    for (k, v) in &r.headers {
        cmd.args(["-H", &format!("{k}: {v}")]);
    }
    let out =
        cmd.arg(format!("http://127.0.0.1:{port}{}", r.path)).output().expect("curl is needed for the h2c scenarios");
    let text = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Resp { status, headers, body: body.to_string() }
}

/// What is compared of one response.
pub fn view(r: &Resp) -> BTreeMap<String, String> {
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
                    if k == "x-envoy-expected-rq-timeout-ms" {
                        // On a retried attempt this is the time left, which
                        // differs by a few milliseconds: compared to 100 ms.
                        let ms = val.parse::<u64>().map_or(val.to_string(), |v| v.div_ceil(100).to_string());
                        m.insert(format!("upstream-header:{k}(100ms)"), ms);
                    } else if VOLATILE_UPSTREAM_HEADERS.contains(&k.as_str()) {
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

pub fn diff(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> Vec<String> {
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| format!("  {k}: envoy={:?} legate={:?}", a.get(k), b.get(k)))
        .collect()
}

/// Sends every request to both and requires equal views.
pub fn compare(name: &str, template: &str, upstreams: &[&str], requests: &[Req]) -> Pair {
    let pair = start_pair(name, template, upstreams);
    let mut problems = Vec::new();
    for r in requests {
        let e = view(&send(pair.envoy, r));
        let l = view(&send(pair.legate, r));
        let d = diff(&e, &l);
        if !d.is_empty() {
            problems.push(format!("{} {} (host {}, h2 {}):\n{}", r.method, r.path, r.host, r.h2, d.join("\n")));
        }
    }
    assert!(problems.is_empty(), "scenario {name}: Legate differs from Envoy:\n{}", problems.join("\n"));
    pair
}

/// A bootstrap with one listener and HCM around `routes` (a virtual_hosts list),
/// plus `extra_hcm` fields and `clusters`.
pub fn bootstrap(extra_hcm: &str, route_config_extra: &str, virtual_hosts: &str, clusters: &str) -> String {
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
pub fn with_filters(template: String, filters: &str) -> String {
    let router_only = "          http_filters: [{ name: envoy.filters.http.router, typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router } }]\n";
    assert!(template.contains(router_only), "the bootstrap template changed");
    template.replace(router_only, filters)
}

/// A counter or gauge from an admin's `/stats?format=json`.
pub fn stat(admin: u16, name: &str) -> Option<i64> {
    let v: Value = serde_json::from_str(&http_get(addr(admin), "/stats?format=json", "admin").ok()?.body).ok()?;
    v["stats"].as_array()?.iter().find(|s| s["name"] == name)?["value"].as_i64()
}

pub fn cluster(name: &str, ports: &[&str]) -> String {
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

pub fn one_vhost(routes: &str) -> String {
    format!("            - name: all\n              domains: [\"*\"]\n              routes:\n{routes}")
}

pub fn echo_cluster() -> String {
    cluster("echo", &["{UP_a}"])
}
