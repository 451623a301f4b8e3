//! The operator's console (`/` of `legate control-plane`) in a real headless
//! Chromium, against a control plane driving real Envoy 1.40 and
//! `legate proxy` over ADS with traffic through both. Screenshots of each
//! page land in `<target dir>/console-screenshots/`.

mod harness;

use harness::browser::Browser;
use harness::xds::{eds_cluster, endpoints, nodes, rds_listener, route_to};
use harness::*;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

/// Cluster `web` and its endpoints for every node; a listener per node
/// (`ingress-<node>` on its own port) routing to it; `extra` appended.
fn fleet_resources(upstream: u16, listeners: &[(&str, u16)], extra: &str) -> String {
    let mut docs = vec![eds_cluster("web", ""), endpoints("web", "", upstream), route_to("main", "", "web")];
    for (node, port) in listeners {
        docs.push(rds_listener(&format!("ingress-{node}"), &nodes(&[node]), *port, "main"));
    }
    if !extra.is_empty() {
        docs.push(extra.to_string());
    }
    docs.join("---\n")
}

/// A GET of the API with `token`: (status, JSON body).
fn api_get(cp: &ControlPlane, path: &str, token: &str) -> (u16, Value) {
    let auth = format!("Bearer {token}");
    let headers: Vec<(&str, &str)> = if token.is_empty() { vec![] } else { vec![("authorization", auth.as_str())] };
    let r = http_request(addr(cp.api), "GET", path, "cp", &headers, "").expect("API");
    (r.status, serde_json::from_str(&r.body).unwrap_or(Value::Null))
}

/// A POST of JSON to the API with `token`: its JSON answer (200 required).
fn api_post(cp: &ControlPlane, path: &str, token: &str, body: &Value) -> Value {
    let auth = format!("Bearer {token}");
    let mut headers = vec![("content-type", "application/json")];
    if !token.is_empty() {
        headers.push(("authorization", auth.as_str()));
    }
    let r = http_request(addr(cp.api), "POST", path, "cp", &headers, &body.to_string()).expect("API");
    assert_eq!(r.status, 200, "POST {path}: {}", r.body);
    serde_json::from_str(&r.body).expect("JSON answer")
}

fn revision_numbers(cp: &ControlPlane, token: &str) -> Vec<u64> {
    let (_, v) = api_get(cp, "/v1/revisions", token);
    v["revisions"].as_array().into_iter().flatten().filter_map(|r| r["revision"].as_u64()).collect()
}

/// Waits until every proxy in `ids` holds `clusters` clusters and has ACKed
/// everything it was sent.
fn wait_in_sync(cp: &ControlPlane, ids: &[&str], clusters: u64) -> Vec<Value> {
    wait_for("the fleet to ACK its config", WAIT, || {
        let proxies = cp.get("/v1/proxies")?["proxies"].as_array()?.clone();
        let synced = |p: &Value| {
            let types = p["types"].as_object();
            p["types"]["Cluster"]["resources"] == clusters
                && types.is_some_and(|t| t.len() >= 4 && t.values().all(|t| t["sent_version"] == t["acked_version"]))
        };
        let all = ids.iter().all(|id| proxies.iter().any(|p| p["node"]["id"] == *id && synced(p)));
        all.then_some(proxies)
    })
}

/// Sends `n` requests through the proxy listening on `port`; all must pass.
fn traffic(port: u16, n: usize) {
    wait_for("traffic through the proxy", WAIT, || upstream_of(port));
    for _ in 0..n {
        let r = http_get(addr(port), "/", "app").expect("request through the proxy");
        assert_eq!(r.status, 200);
    }
}

fn open_tab(b: &mut Browser, api: u16, tab: &str) {
    b.navigate(&format!("http://127.0.0.1:{api}/#{tab}"));
    b.wait_js(&format!("the {tab} tab"), &format!("document.body && document.body.dataset.tab === '{tab}'"), WAIT);
}

/// Fleet: both proxies with their cluster and the version each ACKed.
fn check_fleet(b: &mut Browser, cp: &ControlPlane, proxies: &[Value]) {
    open_tab(b, cp.api, "fleet");
    for p in proxies {
        let id = p["node"]["id"].as_str().expect("node id");
        let acked = p["types"]["Cluster"]["acked_version"].as_str().expect("acked version");
        let sel = format!("tr[data-node=\"{id}\"]");
        let text = b.wait_js(
            &format!("proxy {id} in the fleet"),
            &format!("(document.querySelector('{sel}') || {{}}).innerText"),
            WAIT,
        );
        let text = text.as_str().unwrap_or("");
        assert!(text.contains(&acked[..10]), "the ACKed Cluster version {acked} of {id} is not shown: {text}");
        assert!(text.contains("in sync") && text.contains("console-fleet"), "{text}");
        let held = p["types"]["Cluster"]["acked_revision"].as_u64().expect("acked revision");
        assert_eq!(Some(held), cp.get("/v1/replica").and_then(|r| r["revision"].as_u64()), "{p}");
        assert!(text.contains(&format!("holds r{held}")), "{text}");
    }
    let summary = b.eval("document.getElementById('summary').innerText");
    assert!(summary.as_str().is_some_and(|s| s.contains(&format!("{} proxies", proxies.len()))), "{summary}");
    b.screenshot("fleet");
}

/// Services: `web` with its figures, or "no data yet" while the monitoring
/// API is absent; a chart per metric with the points `/v1/series` returns.
fn check_services(b: &mut Browser, cp: &ControlPlane) {
    open_tab(b, cp.api, "services");
    let row = b.wait_js("service web", "(document.querySelector('tr[data-service=\"web\"]') || {}).innerText", WAIT);
    b.click("tr[data-service=\"web\"]");
    b.wait_js("web selected", "document.getElementById('charts-title').innerText.startsWith('web ')", WAIT);
    let (status, top) = api_get(cp, "/v1/top/services?window=5m", "");
    if status == 200 && top.as_array().is_some_and(|a| !a.is_empty()) {
        let web =
            top.as_array().into_iter().flatten().find(|s| s["service"] == "web").expect("web in /v1/top/services");
        let requests = web["requests"].as_u64().unwrap_or(0).to_string();
        b.wait_js(
            "web's request count",
            &format!("document.querySelector('tr[data-service=\"web\"]').innerText.includes('{requests}')"),
            WAIT,
        );
    } else {
        assert!(row.as_str().is_some_and(|r| r.contains("no data yet")), "{row}");
    }
    for metric in ["rps", "error_rate", "p99_ms"] {
        let q = format!("/v1/series?service=web&metric={metric}&window=15m&step=10s");
        let (status, series) = api_get(cp, &q, "");
        let chart = format!("document.querySelector('.chart[data-metric=\"{metric}\"]')");
        b.wait_js("the chart to be drawn", &format!("{chart}.dataset.service === 'web'"), WAIT);
        let values = series["points"].as_array().map(|p| p.iter().filter(|p| p["v"].is_number()).count()).unwrap_or(0);
        if status == 200 && values > 0 {
            b.wait_js(
                &format!("{metric} chart's points"),
                &format!("Number({chart}.dataset.values) > 0 && {chart}.querySelector('canvas') !== null"),
                WAIT,
            );
        } else {
            b.wait_js(
                &format!("{metric} chart's empty state"),
                &format!("{chart}.innerText.includes('no data yet')"),
                WAIT,
            );
        }
    }
    b.screenshot("services");
    if api_get(cp, "/v1/series?service=web&metric=rps&window=15m&step=10s", "").0 == 404 {
        check_charts_on_stand_in_series(b);
    }
}

/// Until `/v1/series` exists: the page's own code path (fetch, parse, draw,
/// redraw on refresh) on series of the documented shape, answered inside the
/// page in place of the missing endpoint; the screenshot is named for it.
fn check_charts_on_stand_in_series(b: &mut Browser) {
    b.eval(
        r#"(() => {
        const real = window.fetch;
        window.fetch = (path, opts) => {
          const url = String(path);
          if (!url.startsWith("/v1/series?")) return real(path, opts);
          const metric = new URLSearchParams(url.split("?")[1]).get("metric");
          const scale = { rps: 40, error_rate: 0.02, p99_ms: 25 }[metric] || 1;
          const now = Math.floor(Date.now() / 10000) * 10000;
          const points = Array.from({ length: 90 }, (_, i) => ({
            t: now - (89 - i) * 10000,
            v: i === 30 ? null : scale * (1 + 0.4 * Math.sin(i / 7) + 0.1 * Math.cos(i * 1.3)),
          }));
          const body = JSON.stringify({ service: "web", metric, points });
          return Promise.resolve(new Response(body, { status: 200, headers: { "content-type": "application/json" } }));
        };
        return window.consoleRefresh().then(() => true);
      })()"#,
    );
    for metric in ["rps", "error_rate", "p99_ms"] {
        let chart = format!("document.querySelector('.chart[data-metric=\"{metric}\"]')");
        let values = b.wait_js(
            &format!("the {metric} chart drawn"),
            &format!("{chart}.querySelector('canvas') && Number({chart}.dataset.values)"),
            WAIT,
        );
        assert_eq!(values, 89, "{metric}: 90 points, one of them empty");
    }
    b.screenshot("services-stand-in-series");
}

/// Endpoints: web's endpoint, healthy, and a registered instance.
fn check_endpoints(b: &mut Browser, cp: &ControlPlane, upstream: u16) {
    open_tab(b, cp.api, "endpoints");
    let text =
        b.wait_js("web's endpoint", "(document.querySelector('tr[data-cluster=\"web\"]') || {}).innerText", WAIT);
    let text = text.as_str().unwrap_or("");
    assert!(text.contains(&format!("127.0.0.1:{upstream}")) && text.contains("healthy"), "{text}");
    b.wait_js("the registered instance", "document.getElementById('instances').innerText.includes('api-1')", WAIT);
    b.screenshot("endpoints");
}

/// A listener for `legate-1` on a port something else holds: valid config
/// the proxy refuses at bind time. The page shows the NACK with its error,
/// and that proxy one revision behind; Envoy stays in sync.
fn check_nack(b: &mut Browser, cp: &ControlPlane, dir: &Path, upstream: u16, listeners: &[(&str, u16)]) {
    let blocker = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = blocker.local_addr().expect("addr").port();
    let bad = rds_listener("ingress-bad", &nodes(&["legate-1"]), taken, "main");
    cp.apply(dir, &fleet_resources(upstream, listeners, &bad));
    let error = wait_for("legate-1's NACK", WAIT, || {
        let proxies = cp.get("/v1/proxies")?["proxies"].as_array()?.clone();
        let p = proxies.iter().find(|p| p["node"]["id"] == "legate-1")?;
        p["types"]["Listener"]["last_nack"]["error"].as_str().map(String::from)
    });
    open_tab(b, cp.api, "fleet");
    let row = b.wait_js(
        "the NACK on the page",
        "(() => { const t = (document.querySelector('tr[data-node=\"legate-1\"]') || {}).innerText || ''; return t.includes('1 revision behind') && t.includes('NACK') && t; })()",
        WAIT,
    );
    let row = row.as_str().unwrap_or("");
    assert!(row.contains(&error[..error.len().min(40)]), "the NACK's error {error:?} is not shown: {row}");
    let envoy = b.eval("document.querySelector('tr[data-node=\"envoy-1\"]').innerText");
    assert!(envoy.as_str().is_some_and(|t| t.contains("in sync") && !t.contains("behind")), "{envoy}");
    b.screenshot("fleet-nack");
    drop(blocker);
}

/// Alerts: the rules `/v1/alerts` returns, or "no data yet" without it.
fn check_alerts(b: &mut Browser, cp: &ControlPlane) {
    open_tab(b, cp.api, "alerts");
    let (status, alerts) = api_get(cp, "/v1/alerts", "");
    let first = alerts["rules"].as_array().and_then(|r| r.first()).and_then(|r| r["name"].as_str()).map(String::from);
    match (status, first) {
        (200, Some(rule)) => b.wait_js(
            "an alert rule",
            &format!("document.getElementById('alert-rules').innerText.includes('{rule}')"),
            WAIT,
        ),
        (200, None) => b.wait_js(
            "no alert rule",
            "document.getElementById('alert-rules').innerText.includes('no alert rule')",
            WAIT,
        ),
        _ => b.wait_js(
            "alerts' empty state",
            "document.getElementById('alert-rules').innerText.includes('no data yet')",
            WAIT,
        ),
    };
    b.screenshot("alerts");
    if status == 404 {
        let rules = json!({
            "rules": [
                {"name": "web-errors", "service": "web", "metric": "error_rate", "severity": "critical", "state": "firing", "value": 0.12, "threshold": 0.05, "since": "2026-01-01T00:00:00Z"},
                {"name": "web-latency", "service": "web", "metric": "p99_ms", "severity": "warning", "state": "inactive", "value": 12.5, "threshold": 250.0, "since": null}
            ],
            "history": [{"rule": "web-errors", "status": "firing", "at": "2026-01-01T00:00:00Z", "value": 0.12, "severity": "critical"}]
        });
        answer_in_page(b, "/v1/alerts", &rules);
        b.wait_js(
            "the stand-in rules",
            "document.getElementById('alert-rules').innerText.includes('web-errors')",
            WAIT,
        );
        let firing = b.eval("document.querySelector('tr[data-rule=\"web-errors\"] td.firing') !== null");
        assert_eq!(firing, true, "a firing rule is marked");
        b.screenshot("alerts-stand-in");
    }
}

/// Until an endpoint exists: the page's own code path on an answer of the
/// documented shape, given inside the page for GETs starting with `prefix`.
fn answer_in_page(b: &mut Browser, prefix: &str, body: &Value) {
    let (prefix, body) = (serde_json::to_string(prefix).expect("prefix"), body.to_string());
    b.eval(&format!(
        r#"(() => {{
        const real = window.fetch;
        window.fetch = (path, opts) => String(path).startsWith({prefix})
          ? Promise.resolve(new Response(JSON.stringify({body}), {{ status: 200, headers: {{ "content-type": "application/json" }} }}))
          : real(path, opts);
        return window.consoleRefresh().then(() => true);
      }})()"#
    ));
}

/// Clicks "roll back to `to`" and its confirmation; the new revision, read
/// back from the API.
fn rollback_on_page(b: &mut Browser, cp: &ControlPlane, token: &str, to: u64) -> u64 {
    let before = revision_numbers(cp, token);
    let button = format!("button[data-rollback=\"{to}\"]");
    b.wait_js("the rollback button", &format!("document.querySelector('{button}') !== null"), WAIT);
    b.click(&button);
    b.wait_js(
        "the confirmation",
        &format!("(document.querySelector('{button}') || {{}}).innerText === 'confirm roll back to {to}'"),
        WAIT,
    );
    b.click(&button);
    let newest = wait_for("the rollback's revision", WAIT, || {
        revision_numbers(cp, token).first().copied().filter(|n| !before.contains(n))
    });
    let (_, revs) = api_get(cp, "/v1/revisions", token);
    let msg = revs["revisions"][0]["message"].as_str().unwrap_or("").to_string();
    assert!(msg.contains(&format!("rollback to {to}")), "the new revision's message: {msg}");
    b.wait_js(
        "the new revision on the page",
        &format!("document.querySelector('tr[data-revision=\"{newest}\"]') !== null"),
        WAIT,
    );
    newest
}

/// The page with a fleet of Envoy 1.40 and `legate proxy` behind one control
/// plane (open API: no token yet): fleet, services, endpoints, revisions
/// with their diff and a rollback clicked on the page, alerts.
#[test]
fn console_shows_the_fleet_and_rolls_back() {
    let dir = TempDir::new("console-fleet");
    let (_up, upstream) = echo("one", dir.path());
    let cp = ControlPlane::start(dir.path());
    let (envoy_port, legate_port) = (free_port(), free_port());
    let listeners = [("envoy-1", envoy_port), ("legate-1", legate_port)];
    cp.apply(dir.path(), &fleet_resources(upstream, &listeners, ""));
    let _envoy = attach_in(Bin::Envoy, &cp, "envoy-1", dir.path());
    let _legate = attach_in(Bin::Legate, &cp, "legate-1", dir.path());
    traffic(envoy_port, 30);
    traffic(legate_port, 30);
    // A second revision (a spare cluster) to diff and roll back from.
    cp.apply(dir.path(), &fleet_resources(upstream, &listeners, &eds_cluster("spare", "")));
    cp.register(
        "api",
        &json!({"id": "api-1", "address": "127.0.0.1", "port": upstream, "ttl_seconds": 300}).to_string(),
    );
    let proxies = wait_in_sync(&cp, &["envoy-1", "legate-1"], 2);

    let mut b = Browser::start(dir.path());
    check_fleet(&mut b, &cp, &proxies);
    check_services(&mut b, &cp);
    check_endpoints(&mut b, &cp, upstream);
    open_tab(&mut b, cp.api, "revisions");
    b.wait_js("the diff of the newest revision", "document.getElementById('diff').innerText.includes('spare')", WAIT);
    b.screenshot("revisions");
    let newest = rollback_on_page(&mut b, &cp, "", 1);
    let (_, diff) = api_get(&cp, &format!("/v1/diff?from={}&to={newest}", newest - 1), "");
    assert!(diff.to_string().contains("spare"), "the rollback removes the spare cluster: {diff}");
    wait_in_sync(&cp, &["envoy-1", "legate-1"], 1);
    check_nack(&mut b, &cp, dir.path(), upstream, &listeners);
    check_alerts(&mut b, &cp);
}

/// Envoy or Legate as node `node` of cluster `console-fleet`, on a bootstrap
/// `legate ctl bootstrap` wrote, once ready.
fn attach_in(bin: Bin, cp: &ControlPlane, node: &str, dir: &Path) -> Attached {
    let admin = free_port();
    let server = format!("http://127.0.0.1:{}", cp.api);
    let boot = ctl_bootstrap(&server, node, cp.xds, admin, &["--node-cluster", "console-fleet"]);
    let file = dir.join(format!("bootstrap-{node}.yaml"));
    std::fs::write(&file, boot).expect("bootstrap");
    let mut p = match bin {
        Bin::Envoy => spawn_envoy(node, &file, "warning", &[], dir),
        Bin::Legate => spawn_legate(node, &file, &["-l", "info"], dir),
    };
    wait_ready(admin, &mut p);
    Attached { proc_: p, admin }
}

/// Once tokens exist: without one the page says 401 plainly; a viewer sees
/// the revisions but no rollback button; an admin gets it and it works.
#[test]
fn console_with_tokens_shows_what_each_role_may_do() {
    let dir = TempDir::new("console-tokens");
    let (_up, upstream) = echo("one", dir.path());
    let cp = ControlPlane::start(dir.path());
    let port = free_port();
    cp.apply(dir.path(), &fleet_resources(upstream, &[("legate-t", port)], ""));
    cp.apply(dir.path(), &fleet_resources(upstream, &[("legate-t", port)], &eds_cluster("spare", "")));
    let _legate = attach(Bin::Legate, &cp, "legate-t", false, dir.path());
    traffic(port, 10);
    let admin =
        api_post(&cp, "/v1/tokens", "", &json!({"role": "admin", "name": "ops"}))["token"].as_str().map(String::from);
    let admin = admin.expect("admin token");
    let token =
        |role: &str| api_post(&cp, "/v1/tokens", &admin, &json!({"role": role}))["token"].as_str().map(String::from);
    let (viewer, editor) = (token("viewer").expect("viewer token"), token("editor").expect("editor token"));

    let mut b = Browser::start(dir.path());
    open_tab(&mut b, cp.api, "revisions");
    b.wait_js(
        "the 401 banner",
        "!document.getElementById('problem').hidden && document.getElementById('problem').innerText.includes('401')",
        WAIT,
    );
    b.screenshot("unauthenticated");

    for (role, tok) in [("viewer", &viewer), ("editor", &editor), ("admin", &admin)] {
        let t = serde_json::to_string(tok).expect("token");
        b.eval(&format!(
            "document.getElementById('token').value = {t}; document.getElementById('token-save').click(); true"
        ));
        b.wait_js(&format!("signed in as {role}"), &format!("document.body.dataset.role === '{role}'"), WAIT);
        b.wait_js("the revisions", "document.querySelector('tr[data-revision=\"1\"]') !== null", WAIT);
        b.wait_js("the banner gone", "document.getElementById('problem').hidden", WAIT);
        let (_, me) = api_get(&cp, "/v1/whoami", tok);
        let may = me["may"]["rollback"] == true;
        assert_eq!(may, role == "admin", "{me}");
        let shown = b.eval("document.querySelectorAll('button[data-rollback]').length > 0");
        assert_eq!(shown, may, "rollback button for {role}");
        b.screenshot(&format!("revisions-{role}"));
    }
    rollback_on_page(&mut b, &cp, &admin, 1);
}
