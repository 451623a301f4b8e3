//! Envoy's admin API on the bootstrap's `admin.address`.

use crate::listener::Phase;
use crate::server::admin_log::AdminLogs;
use crate::server::instance::Shared;
use crate::stats::{Stat, BUCKETS};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use legate_api::pb::envoy::config::core::v3::{address, socket_address};
use serde_json::json;
use std::convert::Infallible;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;

const HELP: &[(&str, &str)] = &[
    ("/", "Admin home page"),
    ("/certs", "print certs on machine"),
    ("/clusters", "upstream cluster status"),
    ("/config_dump", "dump current Envoy configs"),
    ("/drain_listeners", "drain listeners"),
    ("/healthcheck/fail", "cause the server to fail health checks"),
    ("/healthcheck/ok", "cause the server to pass health checks"),
    ("/help", "print out list of admin commands"),
    ("/listeners", "print listener info"),
    ("/quitquitquit", "exit the server"),
    ("/ready", "print server state, return 200 if LIVE, otherwise return 503"),
    ("/runtime", "print runtime values"),
    ("/runtime_modify", "Adds or modifies existing runtime values."),
    ("/server_info", "print server version/status information"),
    ("/stats", "print server stats"),
    ("/stats/prometheus", "print server stats in prometheus format"),
];

/// Binds the admin listener (when the bootstrap has one) and serves it on the
/// main thread's runtime.
pub async fn start(shared: Arc<Shared>) -> std::io::Result<()> {
    let none = || {
        shared.admin_closed.store(true, Ordering::Release);
        Ok(())
    };
    let Some(admin) = &shared.bootstrap.admin else { return none() };
    let Some(address::Address::SocketAddress(sa)) = admin.address.as_ref().and_then(|a| a.address.as_ref()) else {
        return none();
    };
    let port = match sa.port_specifier {
        Some(socket_address::PortSpecifier::PortValue(p)) => p as u16,
        _ => 0,
    };
    let ip: std::net::IpAddr = sa
        .address
        .parse()
        .map_err(|_| std::io::Error::other(format!("admin address: malformed IP address: {}", sa.address)))?;
    let listener = tokio::net::TcpListener::bind((ip, port)).await?;
    let bound = listener.local_addr()?;
    let _ = shared.admin_addr.set(bound);
    if !admin.address_path_for_tests().is_empty() {
        let _ = std::fs::write(admin.address_path_for_tests(), bound.to_string());
    }
    tracing::info!("admin address: {bound}");
    let logs = AdminLogs::compile(admin).map_err(std::io::Error::other)?.map(Arc::new);
    let mut stop = shared.admin_stop.subscribe();
    let limit = (!admin.ignore_global_conn_limit && shared.ctx.conn_limit.limits_admin())
        .then(|| shared.ctx.conn_limit.clone());
    let overflow = limit.as_ref().map(|_| shared.store.counter("listener.admin.downstream_global_cx_overflow"));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                // A hot restart child takes the address over.
                _ = stop.wait_for(|s| *s) => break,
            };
            let Ok((stream, remote)) = accepted else { continue };
            // Under the runtime key's global limit the admin listener takes
            // a place too, unless it says otherwise (as Envoy: the resource
            // monitor's limit leaves it alone).
            let Ok(place) = crate::common::conn_limit::ConnLimit::admit(limit.as_ref()) else {
                if let Some(c) = &overflow {
                    c.inc();
                }
                continue;
            };
            let shared = shared.clone();
            let logs = logs.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let shared = shared.clone();
                    let logs = logs.clone();
                    async move {
                        let seen = logs.as_ref().map(|_| AdminLogs::seen(&req));
                        let resp = handle(&shared, req);
                        if let (Some(logs), Some(seen)) = (&logs, &seen) {
                            logs.log(seen, &resp, remote, bound);
                        }
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                drop(place);
            });
        }
        drop(listener);
        shared.admin_closed.store(true, Ordering::Release);
    });
    Ok(())
}

trait AdminPath {
    fn address_path_for_tests(&self) -> &str;
}

impl AdminPath for legate_api::pb::envoy::config::bootstrap::v3::Admin {
    /// Envoy writes the admin address to `--admin-address-path`; we honour the
    /// bootstrap's `access_log_path`-free form: nothing, unless set by the CLI.
    fn address_path_for_tests(&self) -> &str {
        ""
    }
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r.headers_mut().insert("cache-control", http::HeaderValue::from_static("no-cache, max-age=0"));
    r.headers_mut().insert("x-content-type-options", http::HeaderValue::from_static("nosniff"));
    r
}

fn text(body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    reply(StatusCode::OK, "text/plain; charset=UTF-8", body)
}

fn json_reply(v: serde_json::Value) -> Response<Full<Bytes>> {
    reply(StatusCode::OK, "application/json", serde_json::to_string_pretty(&v).unwrap_or_default() + "\n")
}

fn query_param<'a>(q: Option<&'a str>, name: &str) -> Option<&'a str> {
    q?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let query = req.uri().query();
    let mutating = matches!(
        path,
        "/healthcheck/fail" | "/healthcheck/ok" | "/drain_listeners" | "/quitquitquit" | "/runtime_modify"
    );
    if mutating && req.method() != Method::POST {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=UTF-8",
            format!("Method {} not allowed, POST required.", req.method()),
        );
    }
    match path {
        "/ready" => {
            let state = server_state(shared);
            let status = if state == "LIVE" { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            reply(status, "text/plain; charset=UTF-8", format!("{state}\n"))
        }
        "/server_info" => json_reply(server_info(shared)),
        "/runtime" => json_reply(crate::server::runtime::admin_json()),
        "/runtime_modify" => {
            let params: Vec<(String, String)> = query
                .map(|q| form_urlencoded::parse(q.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect())
                .unwrap_or_default();
            match shared.runtime.modify(&params) {
                Ok(()) => text("OK\n"),
                Err((status, msg)) => reply(
                    StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
                    "text/plain; charset=UTF-8",
                    msg,
                ),
            }
        }
        "/stats" => stats(shared, query),
        "/stats/prometheus" => reply(StatusCode::OK, "text/plain; charset=UTF-8", prometheus(shared)),
        "/certs" => json_reply(certs(shared)),
        "/clusters" => clusters(shared, query),
        "/listeners" => listeners(shared, query),
        "/config_dump" => json_reply(redacted(config_dump(shared))),
        "/healthcheck/fail" => {
            shared.healthy.store(false, Ordering::Relaxed);
            shared.store.gauge("server.state").set(1);
            text("OK\n")
        }
        "/healthcheck/ok" => {
            shared.healthy.store(true, Ordering::Relaxed);
            if server_state(shared) == "LIVE" {
                shared.store.gauge("server.state").set(0);
            }
            text("OK\n")
        }
        "/drain_listeners" => {
            let graceful = query_param(query, "graceful").is_some();
            let _ = shared.phase.send(if graceful { Phase::Drain } else { Phase::StopAccepting });
            text("OK\n")
        }
        "/quitquitquit" => {
            shared.quit.notify_one();
            text("OK\n")
        }
        "/help" | "/" => {
            let mut s = String::from("admin commands are:\n");
            for (p, d) in HELP {
                let _ = writeln!(s, "  {p}: {d}");
            }
            text(s)
        }
        _ => {
            let mut s = String::from("invalid path. admin commands are:\n");
            for (p, d) in HELP {
                let _ = writeln!(s, "  {p}: {d}");
            }
            reply(StatusCode::NOT_FOUND, "text/plain; charset=UTF-8", s)
        }
    }
}

use crate::common::version::version;

/// Envoy's server state: DRAINING while the listeners drain or after
/// `/healthcheck/fail` (until `/healthcheck/ok`), else LIVE.
fn server_state(shared: &Shared) -> &'static str {
    match *shared.phase.borrow() {
        Phase::Drain | Phase::HotRestartDrain { .. } => "DRAINING",
        _ if !shared.healthy.load(Ordering::Relaxed) => "DRAINING",
        _ => "LIVE",
    }
}

fn server_info(shared: &Shared) -> serde_json::Value {
    let uptime = shared.started_instant.elapsed().as_secs();
    let node = shared.bootstrap.node.as_ref();
    let state = server_state(shared);
    json!({
        "version": version(),
        "state": state,
        "hot_restart_version": "disabled",
        "command_line_options": {
            "base_id": shared.options.base_id.to_string(),
            "concurrency": shared.options.concurrency,
            "config_path": shared.options.config_path.clone().unwrap_or_default(),
            "log_level": shared.options.log_level,
            "service_cluster": shared.options.service_cluster.clone().unwrap_or_default(),
            "service_node": shared.options.service_node.clone().unwrap_or_default(),
            "drain_time": format!("{}s", shared.options.drain_time.as_secs()),
            "restart_epoch": shared.options.restart_epoch,
            "parent_shutdown_time": format!("{}s", shared.options.parent_shutdown_time.as_secs()),
            "drain_strategy": if shared.options.drain_strategy_gradual { "Gradual" } else { "Immediate" },
            "mode": "Serve",
        },
        "node": {
            "id": node.map(|n| n.id.clone()).unwrap_or_default(),
            "cluster": node.map(|n| n.cluster.clone()).unwrap_or_default(),
            "user_agent_name": "legate",
        },
        "uptime_current_epoch": format!("{uptime}s"),
        "uptime_all_epochs": format!("{}s", all_epochs(shared).max(uptime)),
    })
}

/// Seconds since epoch 0 started (hot restarts carry its start time).
fn all_epochs(shared: &Shared) -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    now.saturating_sub(shared.original_start_time())
}

fn filtered(shared: &Shared, query: Option<&str>) -> Vec<(String, Stat)> {
    let mut all = shared.store.all();
    let uptime = shared.started_instant.elapsed().as_secs() as i64;
    shared.store.gauge("server.uptime").set(uptime);
    if let Some(re) = query_param(query, "filter").filter(|f| !f.is_empty()) {
        let decoded = percent_decode(re);
        if let Ok(re) = regex::Regex::new(&decoded) {
            all.retain(|(n, _)| re.is_match(n));
        }
    }
    if query_param(query, "usedonly").is_some() {
        all.retain(|(_, s)| match s {
            Stat::Counter(c) => c.value() > 0,
            Stat::Gauge(g) => g.value() != 0,
            Stat::Histogram(h) => h.snapshot().count > 0,
        });
    }
    all
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn histogram_text(h: &crate::stats::Histogram) -> String {
    let snap = h.snapshot();
    if snap.count == 0 {
        return "No recorded values".into();
    }
    let qs = [0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 1.0];
    qs.iter()
        .map(|q| {
            let v = snap.quantile(*q).unwrap_or(0.0);
            format!("P{}(nan,{v})", q * 100.0)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn stats(shared: &Shared, query: Option<&str>) -> Response<Full<Bytes>> {
    let all = filtered(shared, query);
    if query_param(query, "format") == Some("json") {
        let stats: Vec<serde_json::Value> = all
            .iter()
            .filter_map(|(n, s)| match s {
                Stat::Counter(c) => Some(json!({"name": n, "value": c.value()})),
                Stat::Gauge(g) => Some(json!({"name": n, "value": g.value()})),
                Stat::Histogram(_) => None,
            })
            .collect();
        return json_reply(json!({ "stats": stats }));
    }
    if query_param(query, "format") == Some("prometheus") {
        return reply(StatusCode::OK, "text/plain; charset=UTF-8", prometheus(shared));
    }
    let mut s = String::new();
    for (n, st) in &all {
        match st {
            Stat::Counter(c) => {
                let _ = writeln!(s, "{n}: {}", c.value());
            }
            Stat::Gauge(g) => {
                let _ = writeln!(s, "{n}: {}", g.value());
            }
            Stat::Histogram(_) => {}
        }
    }
    for (n, st) in &all {
        if let Stat::Histogram(h) = st {
            let _ = writeln!(s, "{n}: {}", histogram_text(h));
        }
    }
    text(s)
}

/// Envoy's tag extraction for the names we emit: the variable part of a stat
/// name becomes a Prometheus label.
fn prometheus_name(name: &str) -> (String, Vec<(&'static str, String)>) {
    let mut labels = Vec::new();
    let mut rest = name.to_string();
    for (prefix, label) in [
        ("cluster.", "envoy_cluster_name"),
        ("http.", "envoy_http_conn_manager_prefix"),
        ("listener.", "envoy_listener_address"),
    ] {
        if let Some(tail) = name.strip_prefix(prefix) {
            if let Some((value, stat)) = tail.rsplit_once('.') {
                // Listener addresses contain dots; cluster and prefix names may too.
                labels.push((label, value.to_string()));
                rest = format!("{prefix}{stat}");
            }
            break;
        }
    }
    if let Some((head, code)) = rest.rsplit_once("_rq_") {
        if code.len() == 3 && code.ends_with("xx") {
            labels.insert(0, ("envoy_response_code_class", code[..1].to_string()));
            rest = format!("{head}_rq_xx");
        } else if code.len() == 3 && code.chars().all(|c| c.is_ascii_digit()) {
            labels.insert(0, ("envoy_response_code", code.to_string()));
            rest = format!("{head}_rq");
        }
    }
    let sanitized: String = rest.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    (format!("envoy_{sanitized}"), labels)
}

fn prometheus(shared: &Shared) -> String {
    use std::collections::BTreeMap;
    // Envoy's order: every counter family, then gauges, then histograms.
    let mut families: [BTreeMap<String, Vec<String>>; 3] = Default::default();
    for (n, st) in filtered(shared, None) {
        let (name, labels) = prometheus_name(&n);
        let label_text = |extra: Option<(&str, String)>| {
            let mut parts: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            if let Some((k, v)) = extra {
                parts.push(format!("{k}=\"{v}\""));
            }
            format!("{{{}}}", parts.join(","))
        };
        match st {
            Stat::Counter(c) => {
                families[0].entry(name.clone()).or_default().push(format!("{name}{} {}", label_text(None), c.value()))
            }
            Stat::Gauge(g) => {
                families[1].entry(name.clone()).or_default().push(format!("{name}{} {}", label_text(None), g.value()))
            }
            Stat::Histogram(h) => {
                let snap = h.snapshot();
                let lines = families[2].entry(name.clone()).or_default();
                let mut cum = 0;
                for (i, b) in BUCKETS.iter().enumerate() {
                    cum += snap.buckets[i];
                    lines.push(format!("{name}_bucket{} {cum}", label_text(Some(("le", format!("{b}"))))));
                }
                lines.push(format!("{name}_bucket{} {}", label_text(Some(("le", "+Inf".into()))), snap.count));
                lines.push(format!("{name}_sum{} {}", label_text(None), snap.sum));
                lines.push(format!("{name}_count{} {}", label_text(None), snap.count));
            }
        }
    }
    let mut s = String::new();
    for (kind, fams) in ["counter", "gauge", "histogram"].iter().zip(families) {
        for (name, lines) in fams {
            let _ = writeln!(s, "# TYPE {name} {kind}");
            for l in lines {
                let _ = writeln!(s, "{l}");
            }
        }
    }
    s
}

fn clusters(shared: &Shared, query: Option<&str>) -> Response<Full<Bytes>> {
    let map = shared.clusters.load();
    let mut names: Vec<_> = map.keys().cloned().collect();
    names.sort();
    if query_param(query, "format") == Some("json") {
        let statuses: Vec<_> = names
            .iter()
            .map(|n| {
                let c = &map[n];
                let hosts: Vec<_> = c
                    .hosts
                    .load()
                    .all
                    .iter()
                    .map(|h| {
                        let address = match &h.pipe {
                            Some(p) => json!({"pipe": {"path": p.as_str()}}),
                            None => {
                                json!({"socket_address": {"address": h.addr.ip().to_string(), "port_value": h.addr.port()}})
                            }
                        };
                        let mut status = json!({
                            "address": address,
                            "stats": [
                                {"name": "cx_total", "value": h.cx_total.load(Ordering::Relaxed).to_string(), "type": "COUNTER"},
                                {"name": "rq_total", "value": h.rq_total.load(Ordering::Relaxed).to_string(), "type": "COUNTER"},
                                {"name": "rq_active", "value": h.rq_active.load(Ordering::Relaxed).to_string(), "type": "GAUGE"},
                            ],
                            "health_status": if h.hc_healthy.load(Ordering::Relaxed) {
                                json!({"eds_health_status": "HEALTHY"})
                            } else {
                                json!({"eds_health_status": "HEALTHY", "failed_active_health_check": true})
                            },
                            "weight": h.weight,
                            "priority": h.priority,
                        });
                        // Envoy's JSON leaves an empty name out.
                        if !h.hostname.is_empty() {
                            status["hostname"] = json!(h.hostname);
                        }
                        status
                    })
                    .collect();
                json!({"name": n, "added_via_api": false, "host_statuses": hosts})
            })
            .collect();
        return json_reply(json!({ "cluster_statuses": statuses }));
    }
    let mut s = String::new();
    for n in &names {
        let c = &map[n];
        let _ = writeln!(s, "{n}::observability_name::{n}");
        for (priority, t) in [("default_priority", &c.breakers.default), ("high_priority", &c.breakers.high)] {
            for (k, r) in [
                ("max_connections", &t.connections),
                ("max_pending_requests", &t.pending),
                ("max_requests", &t.requests),
                ("max_retries", &t.retries),
            ] {
                let _ = writeln!(s, "{n}::{priority}::{k}::{}", r.max());
            }
        }
        let _ = writeln!(s, "{n}::added_via_api::false");
        for h in c.hosts.load().all.iter() {
            let a = h.address_string();
            let l = |k: &str, v: String| format!("{n}::{a}::{k}::{v}\n");
            s.push_str(&l("cx_active", h.cx_active.load(Ordering::Relaxed).to_string()));
            s.push_str(&l("cx_connect_fail", h.cx_connect_fail.load(Ordering::Relaxed).to_string()));
            s.push_str(&l("cx_total", h.cx_total.load(Ordering::Relaxed).to_string()));
            s.push_str(&l("rq_active", h.rq_active.load(Ordering::Relaxed).to_string()));
            s.push_str(&l("rq_error", h.rq_error.load(Ordering::Relaxed).to_string()));
            s.push_str(&l("rq_success", h.rq_success.load(Ordering::Relaxed).to_string()));
            s.push_str(&l("rq_timeout", "0".into()));
            s.push_str(&l("rq_total", h.rq_total.load(Ordering::Relaxed).to_string()));
            s.push_str(&l("hostname", h.hostname.clone()));
            let flags = match (h.hc_healthy.load(Ordering::Relaxed), h.ejected.load(Ordering::Relaxed)) {
                (true, false) => "healthy",
                (false, false) => "/failed_active_hc",
                (true, true) => "/failed_outlier_check",
                (false, true) => "/failed_active_hc/failed_outlier_check",
            };
            s.push_str(&l("health_flags", flags.into()));
            s.push_str(&l("weight", h.weight.to_string()));
            s.push_str(&l("region", String::new()));
            s.push_str(&l("zone", String::new()));
            s.push_str(&l("sub_zone", String::new()));
            s.push_str(&l("canary", "false".into()));
            s.push_str(&l("priority", h.priority.to_string()));
            s.push_str(&l("success_rate", "-1".into()));
            s.push_str(&l("local_origin_success_rate", "-1".into()));
        }
    }
    text(s)
}

fn listeners(shared: &Shared, query: Option<&str>) -> Response<Full<Bytes>> {
    if query_param(query, "format") == Some("json") {
        let list: Vec<_> = shared
            .listeners
            .list()
            .iter()
            .map(|v| &v.config)
            .map(|l| json!({"name": l.name, "local_address": {"socket_address": {"address": l.address.ip().to_string(), "port_value": l.address.port()}}}))
            .collect();
        return json_reply(json!({ "listener_statuses": list }));
    }
    let mut s = String::new();
    for v in shared.listeners.list() {
        let _ = writeln!(s, "{}::{}", v.config.name, v.config.address);
    }
    text(s)
}

/// Envoy's `/certs`: per TLS context, its CA and its certificates' leaves
/// with their expiry (days left computed now).
fn certs(shared: &Shared) -> serde_json::Value {
    let now = chrono::Utc::now().timestamp();
    let ts = |secs: i64| {
        chrono::DateTime::<chrono::Utc>::from_timestamp(secs, 0)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default()
    };
    let detail = |d: &crate::tls::CertDetail| {
        let sans: Vec<_> = d.subject_alt_names.iter().map(|(k, v)| json!({ *k: v })).collect();
        let mut o = serde_json::Map::new();
        o.insert("path".into(), json!(d.path));
        o.insert("serial_number".into(), json!(d.serial_number));
        o.insert("subject_alt_names".into(), json!(sans));
        // A uint64 in proto JSON: a string; 0 once expired.
        o.insert("days_until_expiration".into(), json!(((d.expiration_time - now).max(0) / 86_400).to_string()));
        o.insert("valid_from".into(), json!(ts(d.valid_from)));
        o.insert("expiration_time".into(), json!(ts(d.expiration_time)));
        serde_json::Value::Object(o)
    };
    let certificates: Vec<_> = shared
        .ctx
        .secrets
        .contexts()
        .iter()
        .map(|c| {
            let info = c.certs();
            json!({
                "ca_cert": info.ca_cert.iter().map(detail).collect::<Vec<_>>(),
                "cert_chain": info.cert_chain.iter().map(detail).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "certificates": certificates })
}

fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn typed_json<T: prost::Message + prost::Name>(msg: &T) -> serde_json::Value {
    let v = legate_api::load::to_dynamic(msg).map(|d| legate_api::load::to_json(&d)).unwrap_or(serde_json::Value::Null);
    with_type(v, &T::type_url())
}

/// Envoy's config dump: the bootstrap, then clusters, listeners and route
/// configurations, static and dynamic (with version and update time).
fn config_dump(shared: &Shared) -> serde_json::Value {
    let ts = rfc3339(chrono::DateTime::<chrono::Utc>::from(shared.started));
    let bootstrap = legate_api::load::to_dynamic(&shared.bootstrap)
        .map(|d| legate_api::load::to_json(&d))
        .unwrap_or(serde_json::Value::Null);
    let statics = shared.bootstrap.static_resources.clone().unwrap_or_default();
    let static_clusters: Vec<_> =
        statics.clusters.iter().map(|c| json!({"cluster": typed_json(c), "last_updated": ts})).collect();
    let dynamic_clusters: Vec<_> = shared
        .dynamic_clusters
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .map(|(v, t, c)| json!({"version_info": v, "cluster": typed_json(c), "last_updated": rfc3339(*t)}))
        .collect();
    let mut static_listeners = Vec::new();
    let mut dynamic_listeners = Vec::new();
    for l in shared.listeners.list() {
        match &l.version {
            None => static_listeners
                .push(json!({"listener": typed_json(&l.config.config), "last_updated": rfc3339(l.last_updated)})),
            Some(v) => dynamic_listeners.push(json!({
                "name": l.config.name,
                "active_state": {"version_info": v, "listener": typed_json(&l.config.config), "last_updated": rfc3339(l.last_updated)},
            })),
        }
    }
    let dynamic_routes: Vec<_> = shared
        .ctx
        .rds
        .list()
        .into_iter()
        .filter_map(|r| {
            let cfg = r.config?;
            Some(json!({
                "version_info": r.version.unwrap_or_default(),
                "route_config": typed_json(&cfg),
                "last_updated": r.last_updated.map(rfc3339),
            }))
        })
        .collect();
    json!({
        "configs": [
            {"@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump", "bootstrap": bootstrap, "last_updated": ts},
            {"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump", "static_clusters": static_clusters, "dynamic_active_clusters": dynamic_clusters},
            {"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump", "static_listeners": static_listeners, "dynamic_listeners": dynamic_listeners},
            {"@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump", "dynamic_route_configs": dynamic_routes},
            secrets_dump(shared),
        ]
    })
}

/// Hides what Envoy's API marks sensitive (a TLS certificate's `private_key`
/// and `password`) wherever it appears, as Envoy's dumps do: the value's
/// string becomes `[redacted]` (base64 of it for bytes).
fn redacted(mut v: serde_json::Value) -> serde_json::Value {
    fn walk(v: &mut serde_json::Value, depth: usize) {
        if depth > 64 {
            return;
        }
        match v {
            serde_json::Value::Object(o) => {
                for (k, child) in o.iter_mut() {
                    if k == "private_key" || k == "password" {
                        if let Some(ds) = child.as_object_mut() {
                            for (kind, val) in ds.iter_mut() {
                                *val = match kind.as_str() {
                                    "inline_bytes" => json!("W3JlZGFjdGVkXQ=="),
                                    "filename" | "inline_string" | "environment_variable" => json!("[redacted]"),
                                    _ => continue,
                                };
                            }
                        }
                        continue;
                    }
                    walk(child, depth + 1);
                }
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(|c| walk(c, depth + 1)),
            _ => {}
        }
    }
    walk(&mut v, 0);
    v
}

/// Envoy's `SecretsConfigDump`: static secrets as configured, secrets from
/// files and ADS as taken (files they name read in), waiting ones by name;
/// private keys redacted.
fn secrets_dump(shared: &Shared) -> serde_json::Value {
    use legate_api::pb::envoy::config::core::v3::data_source::Specifier;
    use legate_api::pb::envoy::extensions::transport_sockets::tls::v3::secret;
    let shown = |s: &legate_api::pb::envoy::extensions::transport_sockets::tls::v3::Secret, inline: bool| {
        let mut s = s.clone();
        if let Some(secret::Type::TlsCertificate(t)) = &mut s.r#type {
            if inline {
                for ds in t.certificate_chain.iter_mut() {
                    if let Some(Specifier::Filename(f)) = &ds.specifier {
                        ds.specifier = Some(Specifier::InlineBytes(std::fs::read(f).unwrap_or_default()));
                    }
                }
            }
            if let Some(ds) = &mut t.private_key {
                let redacted = "[redacted]".to_string();
                ds.specifier = match &ds.specifier {
                    Some(Specifier::Filename(_)) if !inline => Some(Specifier::Filename(redacted)),
                    Some(Specifier::InlineString(_)) => Some(Specifier::InlineString(redacted)),
                    Some(Specifier::EnvironmentVariable(_)) => Some(Specifier::EnvironmentVariable(redacted)),
                    Some(_) => Some(Specifier::InlineBytes(redacted.into_bytes())),
                    None => None,
                };
            }
        }
        if let (true, Some(secret::Type::ValidationContext(v))) = (inline, &mut s.r#type) {
            for ds in v.trusted_ca.iter_mut() {
                if let Some(Specifier::Filename(f)) = &ds.specifier {
                    ds.specifier = Some(Specifier::InlineBytes(std::fs::read(f).unwrap_or_default()));
                }
            }
        }
        typed_json(&s)
    };
    let (statics, dynamic) = shared.ctx.secrets.all();
    let static_secrets: Vec<_> = statics
        .iter()
        .filter_map(|slot| slot.get().map(|s| json!({"name": slot.name, "secret": shown(&s, false)})))
        .collect();
    let mut active = Vec::new();
    let mut warming = Vec::new();
    for slot in dynamic {
        let (version, at) = slot.updated();
        match slot.get() {
            Some(s) => {
                let mut o = serde_json::Map::new();
                o.insert("name".into(), json!(slot.name));
                if !version.is_empty() {
                    o.insert("version_info".into(), json!(version));
                }
                o.insert("last_updated".into(), json!(rfc3339(at)));
                o.insert("secret".into(), shown(&s, true));
                active.push(serde_json::Value::Object(o));
            }
            None => warming.push(json!({"name": slot.name})),
        }
    }
    let mut o = serde_json::Map::new();
    o.insert("@type".into(), json!("type.googleapis.com/envoy.admin.v3.SecretsConfigDump"));
    for (k, v) in
        [("static_secrets", static_secrets), ("dynamic_active_secrets", active), ("dynamic_warming_secrets", warming)]
    {
        if !v.is_empty() {
            o.insert(k.into(), json!(v));
        }
    }
    serde_json::Value::Object(o)
}

fn with_type(mut v: serde_json::Value, ty: &str) -> serde_json::Value {
    if let Some(o) = v.as_object_mut() {
        let mut m = serde_json::Map::new();
        m.insert("@type".into(), json!(ty));
        m.extend(std::mem::take(o));
        *o = m;
    }
    v
}
