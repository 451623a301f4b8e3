//! What a proxy shows of itself, read the same way from Envoy and Legate:
//! its admin endpoint (pages, stats as JSON or as text) and the access log
//! files it writes.

use super::http_client::http_get;
use super::process::{addr, wait_for};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// The body of an admin page (`/clusters`, `/certs`, `/config_dump`...).
pub fn admin_page(admin: u16, path: &str) -> String {
    http_get(addr(admin), path, "admin").unwrap_or_else(|e| panic!("admin {path} on {admin}: {e}")).body
}

/// An admin page that must answer 200 with JSON (`/certs`, `/config_dump`).
pub fn admin_json(admin: u16, path: &str) -> Value {
    let r = http_get(addr(admin), path, "admin").unwrap_or_else(|e| panic!("admin {path} on {admin}: {e}"));
    assert_eq!(r.status, 200, "{path} on {admin}: {}", r.body);
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{path} on {admin} is not JSON ({e}): {}", r.body))
}

/// Whether `/clusters` shows the host 127.0.0.1:`port` healthy.
pub fn host_healthy(admin: u16, port: u16) -> bool {
    let Ok(r) = http_get(addr(admin), "/clusters", "admin") else { return false };
    r.body.lines().any(|l| l.contains(&format!("127.0.0.1:{port}::health_flags::healthy")))
}

/// The ports of `cluster`'s hosts on 127.0.0.1 in an admin's `/clusters`
/// (what EDS gave the proxy), sorted; empty when the admin does not answer.
pub fn cluster_ports(admin: u16, cluster: &str) -> Vec<u16> {
    let Ok(r) = http_get(addr(admin), "/clusters", "admin") else { return Vec::new() };
    let prefix = format!("{cluster}::127.0.0.1:");
    let mut ports: Vec<u16> = r
        .body
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| rest.split("::").next()?.parse().ok())
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// A counter or gauge from an admin's `/stats?format=json`.
pub fn stat(admin: u16, name: &str) -> Option<i64> {
    let v: Value = serde_json::from_str(&http_get(addr(admin), "/stats?format=json", "admin").ok()?.body).ok()?;
    v["stats"].as_array()?.iter().find(|s| s["name"] == name)?["value"].as_i64()
}

/// Every counter and gauge from `/stats?format=json`, by name.
pub fn json_stats(admin: u16) -> BTreeMap<String, i64> {
    let v: Value = serde_json::from_str(&admin_page(admin, "/stats?format=json")).expect("stats json");
    v["stats"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| Some((s["name"].as_str()?.to_string(), s["value"].as_i64()?)))
        .collect()
}

/// A counter or gauge from an admin's text `/stats` (None when it is absent
/// or the admin does not answer).
pub fn stat_text(admin: u16, name: &str) -> Option<i64> {
    text_stat(&http_get(addr(admin), "/stats", "admin").ok()?.body, name)
}

/// One value from the text `/stats` page (`name: value` lines).
pub fn text_stat<T: FromStr>(page: &str, name: &str) -> Option<T> {
    page.lines().filter_map(|l| l.split_once(": ")).find(|(k, _)| *k == name).and_then(|(_, v)| v.trim().parse().ok())
}

/// Every value of the text `/stats` page whose name starts with `prefix`,
/// the prefix taken off.
pub fn text_stats_prefixed(page: &str, prefix: &str) -> BTreeMap<String, u64> {
    page.lines()
        .filter_map(|l| l.split_once(": "))
        .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.to_string(), v.trim().parse().ok()?)))
        .collect()
}

/// The text of an access log once it has `n` lines (within 10 s, or panics).
pub fn wait_log(path: &Path, n: usize) -> String {
    wait_for(&format!("{n} lines in {}", path.display()), Duration::from_secs(10), || {
        let s = std::fs::read_to_string(path).ok()?;
        (s.lines().count() >= n).then_some(s)
    })
}

/// The lines of an access log, polled for up to 5 s until it has `n` of
/// them; what is there then, however many.
pub fn log_lines_within(path: impl AsRef<Path>, n: usize) -> Vec<String> {
    let path = path.as_ref();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() >= n || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
