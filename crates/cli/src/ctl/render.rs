//! How `legate ctl` shows what the API answered: `-o json`, `-o yaml`, or a
//! text view per command (tables, diffs).

use serde_json::Value;

/// Prints `v` as JSON, YAML, or the command's own text (`-o`).
pub fn print(output: &str, v: &Value, table: impl FnOnce(&Value) -> String) -> anyhow::Result<()> {
    match output {
        "json" => println!("{}", serde_json::to_string_pretty(v)?),
        "yaml" => print!("{}", serde_yaml_ng::to_string(v)?),
        _ => print!("{}", table(v)),
    }
    Ok(())
}

/// Comment lines for `ctl get envoy`: each cluster whose balancing policy
/// list starts with a policy only Legate has (`legate.*`), and what Envoy
/// proxies, which skip it, take instead.
pub fn legate_only_notes(items: &Value) -> String {
    let mut out = String::new();
    for item in items.as_array().into_iter().flatten() {
        let policies = item["resource"]["load_balancing_policy"]["policies"].as_array();
        let ty = |p: &Value| p["typed_extension_config"]["typed_config"]["@type"].as_str().unwrap_or("").to_string();
        let types: Vec<String> = policies.into_iter().flatten().map(ty).collect();
        let name = |t: &str| t.rsplit('/').next().unwrap_or(t).to_string();
        let Some(first) = types.first().filter(|t| name(t).starts_with("legate.")) else { continue };
        let envoy = types.iter().find(|t| !name(t).starts_with("legate.")).map_or("none: refused".into(), |t| name(t));
        out.push_str(&format!(
            "# cluster {}: Legate proxies balance with {}; Envoy proxies skip it and use {envoy}\n",
            item["name"].as_str().unwrap_or("?"),
            name(first)
        ));
    }
    out
}

/// Columns padded to their widest cell.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
            + "\n"
    };
    let mut s = line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        s.push_str(&line(r));
    }
    s
}

/// A readable field-level diff.
pub fn diff_text(changes: &Value) -> String {
    let mut s = String::new();
    for c in changes.as_array().into_iter().flatten() {
        let mark = match c["change"].as_str() {
            Some("added") => "+",
            Some("removed") => "-",
            _ => "~",
        };
        s.push_str(&format!("{mark} {}\n", c["resource"].as_str().unwrap_or("")));
        for f in c["fields"].as_array().into_iter().flatten() {
            let show = |v: &Value| if v.is_null() { "(none)".to_string() } else { v.to_string() };
            s.push_str(&format!(
                "    {}: {} -> {}\n",
                f["path"].as_str().unwrap_or(""),
                show(&f["from"]),
                show(&f["to"])
            ));
        }
    }
    if s.is_empty() {
        s.push_str("no changes\n");
    }
    s
}

fn short(v: &str) -> &str {
    &v[..v.len().min(12)]
}

/// What `apply` created, updated or left, and for a dry run the diff and
/// the proxies that would receive it.
pub fn applied(v: &Value, dry_run: bool) -> String {
    let mut s = String::new();
    for (what, key) in [("created", "created"), ("updated", "updated"), ("unchanged", "unchanged")] {
        for r in v[key].as_array().into_iter().flatten() {
            s.push_str(&format!("{} {what}{}\n", r.as_str().unwrap_or(""), if dry_run { " (dry run)" } else { "" }));
        }
    }
    if dry_run {
        s.push_str(&diff_text(&v["diff"]));
        let proxies: Vec<&str> = v["proxies"].as_array().into_iter().flatten().filter_map(|p| p.as_str()).collect();
        s.push_str(&format!(
            "proxies that would receive it: {}\n",
            if proxies.is_empty() { "none connected".to_string() } else { proxies.join(", ") }
        ));
    }
    if let Some(rev) = v["revision"].as_u64() {
        s.push_str(&format!("revision {rev}\n"));
    }
    s
}

/// Resources as a table; Secrets get a column with their certificates'
/// earliest expiry.
pub fn resources(v: &Value) -> String {
    let items: Vec<Value> = match v["items"].as_array() {
        Some(a) => a.clone(),
        None => vec![v.clone()],
    };
    let expiry = items.iter().any(|i| i["kind"] == "Secret");
    let rows = items
        .iter()
        .map(|i| {
            let mut row = vec![
                i["kind"].as_str().unwrap_or("").to_string(),
                i["metadata"]["name"].as_str().unwrap_or("").to_string(),
                i["version"].as_str().unwrap_or("").to_string(),
                if i["metadata"]["nodes"].is_null() { "all".into() } else { i["metadata"]["nodes"].to_string() },
            ];
            if expiry {
                row.push(i["status"]["expiration_time"].as_str().unwrap_or("-").to_string());
            }
            row
        })
        .collect();
    if expiry {
        table(&["KIND", "NAME", "VERSION", "NODES", "EXPIRES"], rows)
    } else {
        table(&["KIND", "NAME", "VERSION", "NODES"], rows)
    }
}

/// Connected proxies with what each ACKed and its last NACK.
pub fn proxies(v: &Value) -> String {
    let mut rows = Vec::new();
    for p in v["proxies"].as_array().into_iter().flatten() {
        let types = p["types"].as_object().cloned().unwrap_or_default();
        let acked: Vec<String> =
            types.iter().map(|(k, t)| format!("{k}={}", short(t["acked_version"].as_str().unwrap_or("-")))).collect();
        let nack: Vec<String> =
            types.iter().filter_map(|(k, t)| t["last_nack"]["error"].as_str().map(|e| format!("{k}: {e}"))).collect();
        // The revision it runs: the oldest any of its types holds, and the
        // newest sent when it has not ACKed that yet.
        let held = types.values().filter_map(|t| t["acked_revision"].as_u64()).min();
        let sent = types.values().filter_map(|t| t["sent_revision"].as_u64()).max();
        let revision = match (held, sent) {
            (Some(h), Some(s)) if s > h => format!("{h} ({s} sent)"),
            (Some(h), _) => h.to_string(),
            _ => "-".into(),
        };
        let revision = match p["rollout"]["canary"].as_bool() {
            Some(true) => format!("{revision} canary of {}", p["rollout"]["revision"]),
            Some(false) => format!("{revision} kept (staged {})", p["rollout"]["revision"]),
            None => revision,
        };
        let agent = &p["agent"];
        let process = if agent.is_null() {
            "-".to_string()
        } else {
            format!(
                "{}{} pid={} restarts={} epoch={}",
                agent["state"].as_str().unwrap_or("?"),
                if agent["stale"] == true { " (stale)" } else { "" },
                agent["pid"].as_u64().map_or("-".to_string(), |p| p.to_string()),
                agent["restarts"],
                agent["epoch"]
            )
        };
        rows.push(vec![
            p["node"]["id"].as_str().unwrap_or("").to_string(),
            p["node"]["cluster"].as_str().unwrap_or("").to_string(),
            p["node"]["user_agent"].as_str().unwrap_or("").to_string(),
            p["mode"].as_str().unwrap_or("").to_string(),
            p["connected_since"].as_str().unwrap_or("").to_string(),
            revision,
            acked.join(" "),
            if nack.is_empty() { "-".into() } else { nack.join("; ") },
            process,
        ]);
    }
    table(&["NODE", "CLUSTER", "BUILD", "MODE", "CONNECTED SINCE", "REVISION", "ACKED", "LAST NACK", "PROCESS"], rows)
}

/// The revisions, newest first as the API lists them.
pub fn history(v: &Value) -> String {
    let rows = v["revisions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            vec![
                r["revision"].to_string(),
                r["created_at"].as_str().unwrap_or("").to_string(),
                r["author"].as_str().unwrap_or("").to_string(),
                r["message"].as_str().unwrap_or("").to_string(),
                r["changes"]
                    .as_array()
                    .map(|c| c.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(", "))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    table(&["REVISION", "TIME", "AUTHOR", "MESSAGE", "CHANGES"], rows)
}

/// A rollback's diff and the revision that restores the old state.
pub fn rolled_back(v: &Value, rev: u64) -> String {
    let mut s = diff_text(&v["diff"]);
    match v["revision"].as_u64() {
        Some(r) => s.push_str(&format!("revision {r} restores revision {rev}\n")),
        None => s.push_str(&format!("already at revision {rev}'s state; nothing to do\n")),
    }
    s
}

/// A new token, shown once.
pub fn token_created(v: &Value) -> String {
    format!(
        "token {} ({}, role {}):\n{}\nIt is shown only now; keep it (LEGATE_TOKEN or --token).\n",
        v["id"].as_str().unwrap_or(""),
        v["name"].as_str().unwrap_or(""),
        v["role"].as_str().unwrap_or(""),
        v["token"].as_str().unwrap_or("")
    )
}

pub fn tokens(v: &Value) -> String {
    let rows = v["tokens"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            ["id", "name", "role", "created_at"].iter().map(|k| t[*k].as_str().unwrap_or("").to_string()).collect()
        })
        .collect();
    table(&["ID", "NAME", "ROLE", "CREATED"], rows)
}

/// Registry instances with their labels and time left.
pub fn instances(v: &Value) -> String {
    let rows = v["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            vec![
                i["service"].as_str().unwrap_or("").to_string(),
                i["id"].as_str().unwrap_or("").to_string(),
                format!("{}:{}", i["address"].as_str().unwrap_or(""), i["port"]),
                i["labels"]
                    .as_object()
                    .map(|l| {
                        l.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect::<Vec<_>>().join(",")
                    })
                    .unwrap_or_default(),
                format!("{:.0}s", i["expires_in"].as_f64().unwrap_or(0.0)),
            ]
        })
        .collect();
    table(&["SERVICE", "ID", "ADDRESS", "LABELS", "EXPIRES IN"], rows)
}

/// The audit log.
pub fn audit(v: &Value) -> String {
    let rows = v["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            vec![
                e["at"].as_str().unwrap_or("").to_string(),
                e["actor"].as_str().unwrap_or("").to_string(),
                e["action"].as_str().unwrap_or("").to_string(),
                e["target"].as_str().unwrap_or("").to_string(),
                if e["allowed"].as_bool() == Some(true) { "allowed".into() } else { "DENIED".into() },
                e["detail"].as_str().unwrap_or("").to_string(),
            ]
        })
        .collect();
    table(&["TIME", "ACTOR", "ACTION", "TARGET", "RESULT", "DETAIL"], rows)
}

/// A number as alerts show it (up to four decimals), `-` without data.
fn number(v: &Value) -> String {
    v.as_f64().map_or("-".to_string(), |x| {
        let s = format!("{x:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    })
}

/// Alert rules with their state, then the latest history (newest first).
pub fn alerts(v: &Value) -> String {
    let s = |x: &Value| x.as_str().unwrap_or("-").to_string();
    let rows = v["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            vec![
                s(&r["name"]),
                s(&r["metric"]),
                s(&r["service"]),
                s(&r["severity"]),
                s(&r["state"]).to_uppercase(),
                number(&r["value"]),
                format!("{} {}", s(&r["comparison"]), number(&r["threshold"])),
                s(&r["since"]),
            ]
        })
        .collect();
    let mut out = table(&["RULE", "METRIC", "SERVICE", "SEVERITY", "STATE", "VALUE", "CONDITION", "SINCE"], rows);
    let history: Vec<&Value> = v["history"].as_array().into_iter().flatten().rev().take(20).collect();
    if !history.is_empty() {
        let rows = history
            .into_iter()
            .map(|h| vec![s(&h["at"]), s(&h["rule"]), s(&h["status"]), number(&h["value"]), s(&h["severity"])])
            .collect();
        out.push('\n');
        out.push_str(&table(&["AT", "RULE", "STATUS", "VALUE", "SEVERITY"], rows));
    }
    out
}

/// Abnormal nodes: one row per cause with its evidence, then where each
/// node is isolated and its repair; then the endpoints checked over HDS.
pub fn abnormal(v: &Value) -> String {
    let s = |x: &Value| x.as_str().unwrap_or("-").to_string();
    let nodes: Vec<&Value> = v["nodes"].as_array().into_iter().flatten().collect();
    let mut out = if nodes.is_empty() { "no abnormal node\n".to_string() } else { abnormal_nodes(&nodes) };
    let c = &v["repairs"];
    out.push_str(&format!("repairs: {} started, {} repaired, {} failed\n", c["started"], c["repaired"], c["failed"]));
    let checks: Vec<Vec<String>> = v["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let health = if c["healthy"] == true { "healthy".to_string() } else { s(&c["status"]).to_lowercase() };
            vec![s(&c["service"]), s(&c["endpoint"]), health, s(&c["checked_by"]), s(&c["since"])]
        })
        .collect();
    if !checks.is_empty() {
        out.push('\n');
        out.push_str(&table(&["SERVICE", "ENDPOINT", "HEALTH (HDS)", "CHECKED BY", "SINCE"], checks));
    }
    out
}

fn abnormal_nodes(nodes: &[&Value]) -> String {
    let s = |x: &Value| x.as_str().unwrap_or("-").to_string();
    let mut rows = Vec::new();
    for n in nodes {
        for c in n["causes"].as_array().into_iter().flatten() {
            rows.push(vec![s(&n["node"]), s(&c["cause"]).to_uppercase(), s(&c["since"]), s(&c["evidence"])]);
        }
    }
    let mut out = table(&["NODE", "CAUSE", "SINCE", "EVIDENCE"], rows);
    let list = |x: &Value| {
        let items: Vec<String> =
            x.as_array().into_iter().flatten().filter_map(|i| i.as_str().map(String::from)).collect();
        if items.is_empty() {
            "-".to_string()
        } else {
            items.join(", ")
        }
    };
    let rows = nodes
        .iter()
        .map(|n| {
            let r = &n["repair"];
            let repair = match r["reason"].as_str() {
                Some(why) => format!("{}: {why}", s(&r["state"])),
                None => s(&r["state"]),
            };
            vec![s(&n["node"]), list(&n["isolated"]), list(&n["held"]), repair]
        })
        .collect();
    out.push('\n');
    out.push_str(&table(&["NODE", "ISOLATED FROM", "HELD IN (CAP)", "REPAIR"], rows));
    out.push('\n');
    out
}

/// A number with two decimals, `-` without a value.
fn num(v: &Value) -> String {
    v.as_f64().map_or_else(|| "-".to_string(), |f| format!("{f:.2}"))
}

/// `top services`: busiest first, as the API sorts them.
pub fn top_services(v: &Value) -> String {
    let rows = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            vec![
                s["service"].as_str().unwrap_or("").to_string(),
                s["requests"].to_string(),
                s["errors"].to_string(),
                num(&s["rps"]),
                format!("{:.2}%", s["error_rate"].as_f64().unwrap_or(0.0) * 100.0),
                num(&s["p50_ms"]),
                num(&s["p99_ms"]),
                s["proxies"].to_string(),
            ]
        })
        .collect();
    table(&["SERVICE", "REQUESTS", "ERRORS", "RPS", "ERROR%", "P50 MS", "P99 MS", "PROXIES"], rows)
}

/// `top routes`: per virtual host and virtual cluster, or route (`stat_prefix`).
pub fn top_routes(v: &Value) -> String {
    let rows = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            vec![
                r["virtual_host"].as_str().unwrap_or("").to_string(),
                r["virtual_cluster"].as_str().unwrap_or("").to_string(),
                r["route"].as_str().unwrap_or("").to_string(),
                r["requests"].to_string(),
                r["errors"].to_string(),
                num(&r["rps"]),
                format!("{:.2}%", r["error_rate"].as_f64().unwrap_or(0.0) * 100.0),
                num(&r["p50_ms"]),
                num(&r["p99_ms"]),
            ]
        })
        .collect();
    let head = ["VIRTUAL HOST", "VIRTUAL CLUSTER", "ROUTE", "REQUESTS", "ERRORS", "RPS", "ERROR%", "P50 MS", "P99 MS"];
    table(&head, rows)
}

/// `top proxies`.
pub fn top_proxies(v: &Value) -> String {
    let rows = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            vec![
                p["node"].as_str().unwrap_or("").to_string(),
                p["node_cluster"].as_str().unwrap_or("").to_string(),
                p["requests"].to_string(),
                p["errors"].to_string(),
                num(&p["rps"]),
                num(&p["p99_ms"]),
                p["source"].as_str().unwrap_or("").to_string(),
                p["resets"].to_string(),
            ]
        })
        .collect();
    table(&["NODE", "CLUSTER", "REQUESTS", "ERRORS", "RPS", "P99 MS", "SOURCE", "RESETS"], rows)
}
