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

/// Services: `web` with the figures the proxies' metrics streams gave
/// (`/v1/top/services`), and a chart per metric with the points of
/// `/v1/series`.
fn check_services(b: &mut Browser, cp: &ControlPlane, served: u64) {
    // Both proxies flush their stats every 5 s (the sink `ctl bootstrap`
    // writes); the count is exact (monitoring.rs proves it), here at least
    // what `traffic` sent, and read again after one more flush so the page
    // and the test see the same figure.
    let web_requests = || {
        let (_, top) = api_get(cp, "/v1/top/services?window=5m", "");
        top.as_array()?.iter().find(|s| s["service"] == "web")?["requests"].as_u64()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while web_requests().is_none_or(|n| n < served) {
        // What the control plane holds, to tell a late report from a lost one.
        assert!(
            std::time::Instant::now() < deadline,
            "web's requests in /v1/top/services stayed under {served}: services {}, proxies {}",
            api_get(cp, "/v1/top/services?window=5m", "").1,
            api_get(cp, "/v1/top/proxies?window=5m", "").1
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(6));
    let top = json!({"requests": web_requests().expect("web in /v1/top/services")});
    open_tab(b, cp.api, "services");
    b.wait_js(
        "web's request count",
        &format!(
            "(document.querySelector('tr[data-service=\"web\"]') || {{}}).innerText.includes('{}')",
            top["requests"]
        ),
        WAIT,
    );
    b.click("tr[data-service=\"web\"]");
    b.wait_js("web selected", "document.getElementById('charts-title').innerText.startsWith('web ')", WAIT);
    for metric in ["rps", "error_rate", "p99_ms"] {
        let q = format!("/v1/series?service=web&metric={metric}&window=15m&step=10s");
        let values = wait_for(&format!("{metric} points in /v1/series"), WAIT, || {
            let (_, series) = api_get(cp, &q, "");
            let n = series["points"].as_array()?.iter().filter(|p| p["v"].is_number()).count();
            (n > 0).then_some(n)
        });
        let chart = format!("document.querySelector('.chart[data-metric=\"{metric}\"]')");
        let drawn = b.wait_js(
            &format!("{metric} chart's points"),
            &format!("{chart}.dataset.service === 'web' && {chart}.querySelector('canvas') !== null && Number({chart}.dataset.values)"),
            WAIT,
        );
        assert!(drawn.as_u64().is_some_and(|n| n >= 1), "{metric}: the chart has {drawn} points, the API {values}");
    }
    b.screenshot("services");
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

/// Alerts: a rule that fires at once (web's rate is below a bound no test
/// reaches) shows firing on the page, and in the history.
fn check_alerts(b: &mut Browser, cp: &ControlPlane, dir: &Path) {
    let rule = "kind: AlertRule\nmetadata: {name: web-slow-traffic}\nspec:\n  service: web\n  metric: rps\n  below: 1000000\n  window: 5m\n  for: 0s\n  severity: warning\n";
    cp.apply(dir, rule);
    wait_for("the rule firing in /v1/alerts", WAIT, || {
        let (_, alerts) = api_get(cp, "/v1/alerts", "");
        alerts["rules"]
            .as_array()?
            .iter()
            .find(|r| r["name"] == "web-slow-traffic" && r["state"] == "firing")
            .map(|_| ())
    });
    open_tab(b, cp.api, "alerts");
    b.wait_js(
        "the firing rule",
        "document.querySelector('tr[data-rule=\"web-slow-traffic\"] td.firing') !== null",
        WAIT,
    );
    b.wait_js("the history", "document.getElementById('alert-history').innerText.includes('web-slow-traffic')", WAIT);
    b.screenshot("alerts");
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
    let _envoy = attach_with(Bin::Envoy, &cp, "envoy-1", &["--node-cluster", "console-fleet"], dir.path());
    let _legate = attach_with(Bin::Legate, &cp, "legate-1", &["--node-cluster", "console-fleet"], dir.path());
    traffic(envoy_port, 30);
    traffic(legate_port, 30);
    // Both proxies' requests to web (wait_for's probes included).
    // A second revision (a spare cluster) to diff and roll back from.
    let spare = format!("{}---\n{}", eds_cluster("spare", ""), endpoints("spare", "", upstream));
    cp.apply(dir.path(), &fleet_resources(upstream, &listeners, &spare));
    cp.register(
        "api",
        &json!({"id": "api-1", "address": "127.0.0.1", "port": upstream, "ttl_seconds": 300}).to_string(),
    );
    let proxies = wait_in_sync(&cp, &["envoy-1", "legate-1"], 2);

    let mut b = Browser::start(dir.path());
    check_fleet(&mut b, &cp, &proxies);
    check_services(&mut b, &cp, 60);
    check_endpoints(&mut b, &cp, upstream);
    open_tab(&mut b, cp.api, "revisions");
    b.wait_js("the diff of the newest revision", "document.getElementById('diff').innerText.includes('spare')", WAIT);
    b.screenshot("revisions");
    let newest = rollback_on_page(&mut b, &cp, "", 1);
    let (_, diff) = api_get(&cp, &format!("/v1/diff?from={}&to={newest}", newest - 1), "");
    assert!(diff.to_string().contains("spare"), "the rollback removes the spare cluster: {diff}");
    wait_in_sync(&cp, &["envoy-1", "legate-1"], 1);
    check_nack(&mut b, &cp, dir.path(), upstream, &listeners);
    check_alerts(&mut b, &cp, dir.path());
}

/// Once tokens exist: without one the page says 401 plainly; a viewer sees
/// the revisions but no rollback button; an editor and an admin get it, and
/// an editor's click rolls back.
#[test]
fn console_with_tokens_shows_what_each_role_may_do() {
    let dir = TempDir::new("console-tokens");
    let (_up, upstream) = echo("one", dir.path());
    let cp = ControlPlane::start(dir.path());
    let port = free_port();
    cp.apply(dir.path(), &fleet_resources(upstream, &[("legate-t", port)], ""));
    let spare = format!("{}---\n{}", eds_cluster("spare", ""), endpoints("spare", "", upstream));
    cp.apply(dir.path(), &fleet_resources(upstream, &[("legate-t", port)], &spare));
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

    // The editor last, so that the click below is an editor's.
    for (role, tok) in [("viewer", &viewer), ("admin", &admin), ("editor", &editor)] {
        let t = serde_json::to_string(tok).expect("token");
        b.eval(&format!(
            "document.getElementById('token').value = {t}; document.getElementById('token-save').click(); true"
        ));
        b.wait_js(&format!("signed in as {role}"), &format!("document.body.dataset.role === '{role}'"), WAIT);
        b.wait_js("the revisions", "document.querySelector('tr[data-revision=\"1\"]') !== null", WAIT);
        b.wait_js("the banner gone", "document.getElementById('problem').hidden", WAIT);
        let (_, me) = api_get(&cp, "/v1/whoami", tok);
        let may = me["may"]["rollback"] == true;
        assert_eq!(may, role != "viewer", "{me}");
        let shown = b.eval("document.querySelectorAll('button[data-rollback]').length > 0");
        assert_eq!(shown, may, "rollback button for {role}");
        b.screenshot(&format!("revisions-{role}"));
    }
    rollback_on_page(&mut b, &cp, &editor, 1);
}
