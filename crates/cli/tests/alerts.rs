//! Alerts end to end: AlertRules applied with `legate ctl`, evaluated by the
//! control plane against real proxies, notified to a webhook receiver in
//! Alertmanager's webhook format and to a real Alertmanager.

mod harness;

use harness::alerting::{Alertmanager, WebhookReceiver};
use harness::certs::{server, Ca};
use harness::xds::{tls_secret, web_resources};
use harness::*;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// A control plane evaluating alerts every 200 ms.
fn control_plane(dir: &Path) -> ControlPlane {
    ControlPlane::start_with(dir, free_port(), free_port(), dir.join("cp-data"), &["--alert-interval", "200ms"])
}

fn rule(name: &str, spec: &str) -> String {
    format!("kind: AlertRule\nmetadata: {{name: {name}}}\nspec:\n{spec}")
}

/// The webhook payload with `status` for `rule`, once it arrives.
fn wait_payload(rx: &WebhookReceiver, rule: &str, status: &str, limit: Duration) -> Value {
    wait_for(&format!("a {status} webhook for {rule}"), limit, || {
        rx.received().into_iter().find(|v| v["status"] == status && v["groupLabels"]["alertname"] == rule)
    })
}

/// `ctl alerts -o json`'s rule `name`.
fn rule_state(cp: &ControlPlane, name: &str) -> Option<Value> {
    let (ok, out) = cp.ctl(&["alerts", "-o", "json"]);
    assert!(ok, "{out}");
    let v: Value = serde_json::from_str(&out).expect("alerts json");
    v["rules"].as_array()?.iter().find(|r| r["name"] == name).cloned()
}

/// The shape Alertmanager's receivers read.
fn check_webhook(v: &Value, rule: &str, severity: &str) {
    assert_eq!(v["version"], "4", "{v}");
    assert_eq!(v["receiver"], "legate");
    assert_eq!(v["groupKey"], format!("{{}}:{{alertname=\"{rule}\"}}"));
    assert!(v["externalURL"].as_str().is_some_and(|u| u.starts_with("http://127.0.0.1:")), "{v}");
    let a = &v["alerts"][0];
    assert_eq!(a["status"], v["status"]);
    assert_eq!(a["labels"]["alertname"], rule);
    assert_eq!(a["labels"]["severity"], severity);
    assert_eq!(v["commonLabels"], a["labels"]);
    for key in ["startsAt", "endsAt", "generatorURL", "fingerprint"] {
        assert!(a[key].as_str().is_some_and(|s| !s.is_empty()), "{key} in {a}");
    }
}

/// A real Envoy NACKs a listener on a port something else holds: the
/// `proxy_nack` rule fires (after its `for:`), and resolves once the
/// listener is deleted and Envoy ACKs again.
#[test]
fn proxy_nack_fires_and_resolves() {
    let dir = TempDir::new("alerts-nack");
    let (_up, up_port) = echo("one", dir.path());
    let cp = control_plane(dir.path());
    let listen = free_port();
    cp.apply(dir.path(), &web_resources(listen, up_port, &[], ""));
    let _envoy = attach(Bin::Envoy, &cp, "nack-envoy", false, dir.path());
    wait_for("traffic through Envoy", Duration::from_secs(20), || upstream_of(listen));
    let rx = WebhookReceiver::start();
    let spec = format!(
        "  metric: proxy_nack\n  above: 0\n  for: 1s\n  severity: critical\n  labels: {{team: edge}}\n  webhooks: [{}]\n",
        rx.url("/hook")
    );
    cp.apply(dir.path(), &rule("edge-nacks", &spec));
    let quiet = wait_for("the rule evaluated", Duration::from_secs(10), || rule_state(&cp, "edge-nacks"));
    assert_eq!((quiet["state"].as_str(), quiet["value"].as_f64()), (Some("inactive"), Some(0.0)), "{quiet}");

    let blocker = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = blocker.local_addr().expect("addr").port();
    let bad = web_resources(taken, up_port, &[], "").replace("name: ingress", "name: ingress-bad");
    let bad: String = bad.split("---").filter(|d| d.contains("kind: Listener")).collect();
    let applied = std::time::Instant::now();
    cp.apply(dir.path(), &bad);
    let firing = wait_payload(&rx, "edge-nacks", "firing", Duration::from_secs(20));
    let waited = applied.elapsed();
    assert!(waited >= Duration::from_secs(1), "fired before its for: ({waited:?})");
    check_webhook(&firing, "edge-nacks", "critical");
    assert_eq!(firing["alerts"][0]["labels"]["team"], "edge");
    assert_eq!(firing["alerts"][0]["annotations"]["subjects"], "nack-envoy");
    assert_eq!(firing["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
    let state = rule_state(&cp, "edge-nacks").expect("rule");
    assert_eq!((state["state"].as_str(), state["value"].as_f64()), (Some("firing"), Some(1.0)), "{state}");
    eprintln!("proxy_nack fired {waited:?} after the bad listener was applied (for: 1s)");

    let (ok, out) = cp.ctl(&["delete", "listener", "ingress-bad"]);
    assert!(ok, "{out}");
    let resolved = wait_payload(&rx, "edge-nacks", "resolved", Duration::from_secs(20));
    check_webhook(&resolved, "edge-nacks", "critical");
    assert_eq!(resolved["alerts"][0]["fingerprint"], firing["alerts"][0]["fingerprint"]);
    assert_ne!(resolved["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");

    // The history, as the API and `ctl alerts` show it.
    let v = cp.get("/v1/alerts").expect("/v1/alerts");
    let history: Vec<(String, String)> = v["history"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| (h["rule"].as_str().unwrap_or("").into(), h["status"].as_str().unwrap_or("").into()))
        .collect();
    assert_eq!(history, [("edge-nacks".into(), "firing".into()), ("edge-nacks".into(), "resolved".into())]);
    let (ok, table) = cp.ctl(&["alerts"]);
    assert!(ok && table.contains("edge-nacks") && table.contains("INACTIVE") && table.contains("resolved"), "{table}");
}

/// A `legate proxy` stops: the `proxy_down` rule fires; the same node
/// connects again: it resolves.
#[test]
fn proxy_down_fires_and_resolves() {
    let dir = TempDir::new("alerts-down");
    let (_up, up_port) = echo("one", dir.path());
    let cp = control_plane(dir.path());
    cp.apply(dir.path(), &web_resources(free_port(), up_port, &[], ""));
    let rx = WebhookReceiver::start();
    let spec = format!(
        "  metric: proxy_down\n  above: 0\n  for: 500ms\n  nodes: {{ids: [down-legate]}}\n  webhooks: [{}]\n",
        rx.url("/down")
    );
    cp.apply(dir.path(), &rule("fleet-down", &spec));
    let mut proxy = attach(Bin::Legate, &cp, "down-legate", false, dir.path());
    wait_for("the proxy in the fleet", Duration::from_secs(10), || {
        cp.proxy_ids().contains(&"down-legate".to_string()).then_some(())
    });
    // An unrelated node going away does not count (the rule selects by id).
    let mut other = attach(Bin::Legate, &cp, "other-legate", false, dir.path());
    wait_for("the other proxy in the fleet", Duration::from_secs(10), || {
        cp.proxy_ids().contains(&"other-legate".to_string()).then_some(())
    });
    other.proc_.kill();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(rule_state(&cp, "fleet-down").expect("rule")["state"], "inactive");

    let stopped = std::time::Instant::now();
    proxy.proc_.kill();
    let firing = wait_payload(&rx, "fleet-down", "firing", Duration::from_secs(15));
    eprintln!("proxy_down fired {:?} after the proxy was stopped (for: 500ms)", stopped.elapsed());
    check_webhook(&firing, "fleet-down", "warning");
    assert_eq!(firing["alerts"][0]["annotations"]["subjects"], "down-legate");

    let _back = attach(Bin::Legate, &cp, "down-legate", false, dir.path());
    let resolved = wait_payload(&rx, "fleet-down", "resolved", Duration::from_secs(15));
    check_webhook(&resolved, "fleet-down", "warning");
    assert_eq!(rule_state(&cp, "fleet-down").expect("rule")["state"], "inactive");

    // The history survives a restart of the control plane (same data directory).
    let data = cp.data.clone();
    drop(cp);
    let cp = ControlPlane::start_with(dir.path(), free_port(), free_port(), data, &["--alert-interval", "200ms"]);
    let v = cp.get("/v1/alerts").expect("/v1/alerts");
    let statuses: Vec<&str> =
        v["history"].as_array().into_iter().flatten().filter_map(|h| h["status"].as_str()).collect();
    assert_eq!(statuses, ["firing", "resolved"], "{v}");
}

/// A rule's alert reaches a real Alertmanager (`POST /api/v2/alerts`) and
/// leaves it when the rule is deleted (sent resolved, with its endsAt).
#[test]
fn alert_reaches_a_real_alertmanager() {
    let dir = TempDir::new("alerts-am");
    let am = Alertmanager::start(dir.path());
    let cp = control_plane(dir.path());
    let issued = Ca::new("alerts-ca").issue(&server(&["web.internal"]).valid_days(10));
    cp.apply(dir.path(), &tls_secret("web-cert", &issued.pem, &issued.key));
    let spec = format!(
        "  metric: cert_expiry_days\n  below: 14\n  severity: critical\n  summary: web certificate expires soon\n  alertmanagers: [{}]\n",
        am.url()
    );
    cp.apply(dir.path(), &rule("cert-expiry", &spec));
    let alert = wait_for("the alert in Alertmanager", Duration::from_secs(20), || {
        am.alerts().into_iter().find(|a| a["labels"]["alertname"] == "cert-expiry")
    });
    assert_eq!(alert["labels"]["severity"], "critical", "{alert}");
    assert_eq!(alert["labels"]["metric"], "cert_expiry_days");
    assert_eq!(alert["annotations"]["summary"], "web certificate expires soon");
    assert_eq!(alert["annotations"]["subjects"], "web-cert");
    assert_eq!(alert["status"]["state"], "active", "{alert}");
    let days = rule_state(&cp, "cert-expiry").and_then(|r| r["value"].as_f64()).expect("a value");
    assert!((9.0..10.1).contains(&days), "days until expiry: {days}");

    let (ok, out) = cp.ctl(&["delete", "alertrule", "cert-expiry"]);
    assert!(ok, "{out}");
    wait_for("the alert to leave Alertmanager", Duration::from_secs(20), || {
        (!am.alerts().iter().any(|a| a["labels"]["alertname"] == "cert-expiry")).then_some(())
    });
}

/// A `legate proxy` that stays connected but stops sending metrics (stopped
/// with SIGSTOP: the kernel keeps its connections open): the `proxy_silent`
/// rule fires once it has not been heard of for its window; it resolves
/// when the proxy reports again (SIGCONT).
#[test]
fn proxy_silent_fires_and_resolves() {
    let dir = TempDir::new("alerts-silent");
    let (_up, up_port) = echo("one", dir.path());
    let cp = control_plane(dir.path());
    cp.apply(dir.path(), &web_resources(free_port(), up_port, &[], ""));
    let admin = free_port();
    let boot = ctl_bootstrap(&format!("http://127.0.0.1:{}", cp.api), "quiet-legate", cp.xds, admin, &[]);
    let boot = boot.replacen("stats_flush_interval: 5s\n", "stats_flush_interval: 1s\n", 1);
    let proxy = start_on(Bin::Legate, &boot, "quiet-legate", admin, dir.path());
    let rx = WebhookReceiver::start();
    let spec = format!("  metric: proxy_silent\n  above: 0\n  window: 3s\n  webhooks: [{}]\n", rx.url("/silent"));
    cp.apply(dir.path(), &rule("silent", &spec));
    wait_for("the proxy reporting, the rule inactive", Duration::from_secs(15), || {
        let reported = cp.get("/v1/top/proxies?window=1m").is_some_and(|v| v.to_string().contains("quiet-legate"));
        let state = rule_state(&cp, "silent").filter(|r| r["state"] == "inactive" && r["value"].as_f64() == Some(0.0));
        state.filter(|_| reported)
    });
    let pid = proxy.proc_.pid().to_string();
    let stopped = std::time::Instant::now();
    assert!(std::process::Command::new("kill").args(["-STOP", &pid]).status().expect("kill").success());
    let firing = wait_payload(&rx, "silent", "firing", Duration::from_secs(15));
    let took = stopped.elapsed();
    let connected = cp.proxy_ids().contains(&"quiet-legate".to_string());
    let _ = std::process::Command::new("kill").args(["-CONT", &pid]).status();
    eprintln!("proxy_silent fired {took:?} after the proxy stopped (window 3s, flush 1s)");
    assert_eq!(firing["alerts"][0]["annotations"]["subjects"], "quiet-legate");
    assert!(connected, "still connected while silent");
    assert!(took >= Duration::from_secs(3), "not before the window: {took:?}");
    let resolved = wait_payload(&rx, "silent", "resolved", Duration::from_secs(15));
    check_webhook(&resolved, "silent", "warning");
}

/// An `https://` webhook is verified against `--webhook-ca`: while the
/// receiver presents a certificate of another CA nothing is delivered (the
/// notification is retried); once it presents one of the trusted CA, the
/// next attempt delivers the alert.
#[test]
fn an_https_webhook_is_verified_against_the_webhook_ca() {
    let dir = TempDir::new("alerts-https");
    let (ca, other) = (Ca::new("webhook test CA"), Ca::new("unknown CA"));
    ca.write(dir.path(), "webhook-ca.pem");
    let leaf = server(&["localhost"]).ip("127.0.0.1");
    let (trusted, untrusted) = (ca.issue(&leaf), other.issue(&leaf));
    let rx = WebhookReceiver::start_tls(&untrusted.pem, &untrusted.key);
    let ca_file = dir.path().join("webhook-ca.pem").to_string_lossy().to_string();
    let extra = ["--alert-interval", "200ms", "--webhook-ca", &ca_file];
    let cp = ControlPlane::start_with(dir.path(), free_port(), free_port(), dir.path().join("cp-data"), &extra);
    let issued = Ca::new("alerts-ca").issue(&server(&["web.internal"]).valid_days(10));
    cp.apply(dir.path(), &tls_secret("web-cert", &issued.pem, &issued.key));
    let url = rx.url("/hook");
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    cp.apply(
        dir.path(),
        &rule("cert-soon", &format!("  metric: cert_expiry_days\n  below: 14\n  webhooks: [{url}]\n")),
    );
    wait_for("the rule to fire", Duration::from_secs(10), || {
        rule_state(&cp, "cert-soon").filter(|r| r["state"] == "firing")
    });
    std::thread::sleep(Duration::from_millis(1000));
    assert!(rx.received().is_empty(), "nothing posted to a receiver of an untrusted CA");
    rx.present(&trusted.pem, &trusted.key);
    let got = wait_payload(&rx, "cert-soon", "firing", Duration::from_secs(15));
    eprintln!("delivered over TLS once trusted: {}", got["commonAnnotations"]);
}

/// Bad rules are refused at apply with the field and the reason.
#[test]
fn bad_rules_are_refused_with_their_fields() {
    let dir = TempDir::new("alerts-invalid");
    let cp = control_plane(dir.path());
    let f = dir.path().join("bad.yaml");
    let cases = [
        ("  metric: latency\n  above: 1\n", "spec.metric"),
        ("  metric: error_rate\n  service: checkout\n  above: 1\n  below: 2\n", "spec.below"),
        ("  metric: proxy_down\n", "spec.above"),
        ("  metric: proxy_down\n  above: 0\n  for: soon\n", "spec.for"),
        ("  metric: proxy_down\n  above: 0\n  webhooks: [ftp://x/]\n", "spec.webhooks[0]"),
    ];
    for (spec, field) in cases {
        std::fs::write(&f, rule("bad", spec)).expect("write");
        let (ok, out) = cp.ctl(&["apply", "-f", f.to_str().expect("path")]);
        assert!(!ok && out.contains(field), "{field}: {out}");
    }
    // A rule is not sent to proxies: `spec.nodes` selects what it counts.
    let placed = "kind: AlertRule\nmetadata: {name: bad, nodes: {ids: [a]}}\nspec: {metric: proxy_down, above: 0}\n";
    std::fs::write(&f, placed).expect("write");
    let (ok, out) = cp.ctl(&["apply", "-f", f.to_str().expect("path")]);
    assert!(!ok && out.contains("metadata.nodes"), "{out}");
    // The example from the documentation, as written.
    let example = "kind: AlertRule\nmetadata: {name: checkout-errors}\nspec:\n  service: checkout          # a cluster name\n  metric: error_rate\n  above: 0.05\n  window: 30s\n  for: 10s\n  severity: critical\n  webhooks: [http://127.0.0.1:9099/hook]\n";
    cp.apply(dir.path(), example);
    let (ok, out) = cp.ctl(&["get", "alertrules", "-o", "json"]);
    assert!(ok && out.contains("checkout-errors"), "{out}");
}

/// Requests to `path` on `port` every 20 ms from a thread, while `on`; at
/// most 3,000 (a minute), however long the test waits.
fn steady_load(
    port: u16,
    path: std::sync::Arc<std::sync::Mutex<&'static str>>,
    on: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for _ in 0..3_000 {
            if !on.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            let p = *path.lock().unwrap_or_else(|e| e.into_inner());
            let _ = http_get(addr(port), p, "app");
            std::thread::sleep(Duration::from_millis(20));
        }
    })
}

/// A real Envoy streams its stats (every second) to the control plane; its
/// upstream starts answering 503: the `error_rate` rule fires within its
/// `for:` plus one flush interval (and the evaluation period), and resolves
/// once the errors stop and leave the window.
#[test]
fn error_rate_fires_when_envoy_serves_5xx_and_resolves() {
    let dir = TempDir::new("alerts-error-rate");
    let (_up, up_port) = echo("one", dir.path());
    // One-second slots, so a 4 s window is 4 s.
    let extra = ["--alert-interval", "200ms", "--metrics-retention", "1s:1h,1m:1d"];
    let cp = ControlPlane::start_with(dir.path(), free_port(), free_port(), dir.path().join("cp-data"), &extra);
    let listen = free_port();
    cp.apply(dir.path(), &web_resources(listen, up_port, &[], ""));
    let admin = free_port();
    let boot = ctl_bootstrap(&format!("http://127.0.0.1:{}", cp.api), "errors-envoy", cp.xds, admin, &[]);
    let boot = boot.replacen("stats_flush_interval: 5s\n", "stats_flush_interval: 1s\n", 1);
    let _envoy = start_on(Bin::Envoy, &boot, "errors-envoy", admin, dir.path());
    wait_for("traffic through Envoy", Duration::from_secs(20), || upstream_of(listen));

    let rx = WebhookReceiver::start();
    let spec = format!(
        "  service: web\n  metric: error_rate\n  above: 0.05\n  window: 4s\n  for: 2s\n  min_requests: 5\n  severity: critical\n  webhooks: [{}]\n",
        rx.url("/hook")
    );
    cp.apply(dir.path(), &rule("web-errors", &spec));
    let path = std::sync::Arc::new(std::sync::Mutex::new("/ok"));
    let on = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let load = steady_load(listen, path.clone(), on.clone());
    let quiet = wait_for("the rule inactive on good traffic", Duration::from_secs(15), || {
        rule_state(&cp, "web-errors").filter(|r| r["state"] == "inactive" && r["value"].as_f64() == Some(0.0))
    });
    eprintln!("before the errors: {quiet}");

    *path.lock().unwrap_or_else(|e| e.into_inner()) = "/status/503";
    let errors_from = std::time::Instant::now();
    let fired = wait_payload(&rx, "web-errors", "firing", Duration::from_secs(20));
    let took = errors_from.elapsed();
    check_webhook(&fired, "web-errors", "critical");
    eprintln!("error_rate fired {took:?} after the first 5xx (for: 2s, flush 1s, evaluation 200 ms)");
    // for: + one flush + one evaluation, and a second for a loaded machine.
    assert!(took <= Duration::from_millis(2_000 + 1_000 + 200 + 1_000), "fired after {took:?}");

    *path.lock().unwrap_or_else(|e| e.into_inner()) = "/ok";
    let healthy_from = std::time::Instant::now();
    wait_payload(&rx, "web-errors", "resolved", Duration::from_secs(20));
    eprintln!("resolved {:?} after the errors stopped (window 4s)", healthy_from.elapsed());
    on.store(false, std::sync::atomic::Ordering::Relaxed);
    let _ = load.join();
    let state = rule_state(&cp, "web-errors").expect("rule");
    assert_eq!(state["state"], "inactive", "{state}");
}
