//! The differential tests' comparison: one request sent identically to
//! Envoy 1.40 and to `legate proxy`, what of a response is compared (and
//! what differs by nature), and the checks that both proxies agree on
//! responses, stats and how traffic spreads.

use super::admin::stat;
use super::http_client::{curl_h2, get, http_request, keep_alive_exchange, Req, Resp};
use super::process::addr;
use super::sides::{start_pair, Pair};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

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
    "via",
];

/// Upstream-received headers whose value differs by nature: the generated
/// request id (checked for UUID format instead).
pub const VOLATILE_UPSTREAM_HEADERS: &[&str] = &["x-request-id"];

pub fn send(port: u16, r: &Req) -> Resp {
    if r.h2 {
        return curl_h2(port, r);
    }
    if r.keep_alive {
        return keep_alive_exchange(port, r);
    }
    http_request(addr(port), r.method, &r.path, r.host, &r.header_pairs(), &r.body)
        .unwrap_or_else(|e| panic!("{r:?} to {port}: {e}"))
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

impl Pair {
    /// Each named stat has the same value behind Envoy and Legate (or is
    /// absent from both).
    pub fn same_stats(&self, names: &[&str]) {
        for name in names {
            assert_eq!(stat(self.envoy_admin, name), stat(self.legate_admin, name), "{name}");
        }
    }

    /// Waits (up to 5 s) until a stat has the value `want` on both
    /// proxies; returns both (Envoy's, Legate's) as they then are.
    pub fn stats_settle(&self, name: &str, want: i64) -> (Option<i64>, Option<i64>) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let both = (stat(self.envoy_admin, name), stat(self.legate_admin, name));
            if (both.0 == Some(want) && both.1 == Some(want)) || Instant::now() > deadline {
                return both;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Each stat reaches its value behind Envoy (waiting up to 5 s each),
    /// and Legate's is the same.
    pub fn stats_reach(&self, expected: &[(&str, i64)]) {
        for (name, want) in expected {
            let (ev, lv) = self.stats_settle(name, *want);
            assert_eq!(lv, ev, "{name}");
            assert_eq!(ev, Some(*want), "{name} (Envoy)");
        }
    }
}

/// How `n` requests to `path` ended: count per answering upstream (or status).
pub fn spread(port: u16, path: &str, n: usize) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for _ in 0..n {
        let r = send(port, &get(path));
        let key = r.header("x-upstream").map_or_else(|| format!("status {}", r.status), str::to_string);
        *m.entry(key).or_insert(0) += 1;
    }
    m
}

/// Sends `paths` one after another, 100 ms apart, each on its own connection
/// and thread, and returns the responses in the order they were sent.
pub fn staggered(port: u16, paths: &[&str]) -> Vec<Resp> {
    let handles: Vec<_> = paths
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let p = p.to_string();
            std::thread::sleep(Duration::from_millis(if i == 0 { 0 } else { 100 }));
            std::thread::spawn(move || send(port, &get(&p)))
        })
        .collect();
    handles.into_iter().map(|h| h.join().expect("request thread")).collect()
}

/// Two views of the same exchange must be equal.
pub fn assert_same<T: PartialEq + std::fmt::Debug>(what: &str, envoy: &T, legate: &T) {
    assert_eq!(envoy, legate, "{what}: Envoy (left) and Legate (right) differ");
}

/// The lines of the log at `path` that contain `marker`, once there are `n`
/// of them (polled for up to 10 s; what is there then, however many).
pub fn marked_lines(path: &std::path::Path, marker: &str, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().filter(|l| l.contains(marker)).map(str::to_string).collect();
        if lines.len() >= n || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
