//! A real Prometheus on loopback scraping given targets every second, and
//! its HTTP query API.

use super::http_client::http_get;
use super::install::prometheus_bin;
use super::process::{addr, free_port, wait_http, Proc};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

pub struct Prometheus {
    pub proc_: Proc,
    pub port: u16,
}

/// Percent-encoding for a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Prometheus {
    /// Scrapes `http://127.0.0.1:<port>/metrics` for each of `targets`,
    /// every second; its data in `dir`; once ready.
    pub fn start(dir: &Path, targets: &[u16]) -> Prometheus {
        let port = free_port();
        let list: Vec<String> = targets.iter().map(|t| format!("'127.0.0.1:{t}'")).collect();
        let config = format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\n\
             scrape_configs:\n- job_name: legate\n  static_configs:\n  - targets: [{}]\n",
            list.join(", ")
        );
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, config).expect("prometheus config");
        let mut p = Proc::spawn(
            "prometheus",
            Command::new(prometheus_bin())
                .arg(format!("--config.file={}", file.display()))
                .arg(format!("--storage.tsdb.path={}", dir.join("prometheus-data").display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}")),
            dir,
        );
        wait_http("prometheus", &mut p, port, "/-/ready", "prometheus", Duration::from_secs(30), |r| r.status == 200);
        Prometheus { proc_: p, port }
    }

    /// The value of an instant query's first series, if any.
    pub fn query(&self, q: &str) -> Option<f64> {
        let r = http_get(addr(self.port), &format!("/api/v1/query?query={}", encode(q)), "prometheus").ok()?;
        let v: Value = serde_json::from_str(&r.body).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}
