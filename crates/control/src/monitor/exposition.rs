//! The fleet's series in Prometheus' text format (`GET /metrics`): per
//! service, counters summed over every proxy since this control plane
//! started and the upstream latency histogram merged across proxies; per
//! proxy, its downstream counters and when it last reported.

use super::buckets::Buckets;
use super::ingest::State;
use std::fmt::Write as _;

/// A label value with `\`, `"` and newlines escaped.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn histogram(out: &mut String, name: &str, labels: &str, b: &Buckets) {
    let mut cum = 0u64;
    for (i, bound) in b.bounds.iter().enumerate() {
        cum += b.counts.get(i).copied().unwrap_or(0);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cum}");
    }
    let count = b.count();
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", b.sum);
    let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
}

pub fn render(st: &State) -> String {
    let mut out = String::new();
    let services: Vec<(String, &super::series::Agg)> = st
        .totals
        .iter()
        .filter(|(n, _)| !n.starts_with(super::stat::ROUTE_PREFIX))
        .map(|(n, a)| (format!("service=\"{}\"", esc(n)), a))
        .collect();
    type Field = fn(&super::series::Agg) -> u64;
    let counters: [(&str, &str, Field); 5] = [
        ("legate_service_requests_total", "Requests completed by the service's upstreams", |a| a.requests),
        ("legate_service_errors_total", "5xx answers", |a| a.errors),
        ("legate_service_retries_total", "Retries", |a| a.retries),
        ("legate_service_timeouts_total", "Upstream timeouts", |a| a.timeouts),
        ("legate_service_responses_4xx_total", "4xx answers", |a| a.rq_4xx),
    ];
    for (name, help, f) in counters {
        family(&mut out, name, "counter", help);
        for (labels, a) in &services {
            let _ = writeln!(out, "{name}{{{labels}}} {}", f(a));
        }
    }
    let name = "legate_service_request_duration_ms";
    family(&mut out, name, "histogram", "Upstream request time in milliseconds, merged across proxies");
    for (labels, a) in services.iter().filter(|(_, a)| !a.latency.bounds.is_empty()) {
        histogram(&mut out, name, labels, &a.latency);
    }
    let proxies: [(&str, &str, Field); 2] = [
        ("legate_proxy_requests_total", "Downstream requests the proxy completed", |a| a.requests),
        ("legate_proxy_errors_total", "Downstream 5xx answers", |a| a.errors),
    ];
    for (name, help, f) in proxies {
        family(&mut out, name, "counter", help);
        for (node, a) in &st.proxy_totals {
            let _ = writeln!(out, "{name}{{node=\"{}\"}} {}", esc(node), f(a));
        }
    }
    family(&mut out, "legate_proxy_last_report_seconds", "gauge", "Unix time of the proxy's last report");
    family(&mut out, "legate_proxy_resets_total", "counter", "Proxy restarts seen (a counter that went down)");
    for (node, l) in &st.latest {
        let labels = format!("node=\"{}\",source=\"{}\"", esc(node), esc(&l.source));
        let _ = writeln!(out, "legate_proxy_last_report_seconds{{{labels}}} {}", l.at_ms as f64 / 1000.0);
        let _ = writeln!(out, "legate_proxy_resets_total{{{labels}}} {}", l.resets);
    }
    out
}
