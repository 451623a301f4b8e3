//! Differential tests of `envoy.filters.http.lua`: the same bootstrap and
//! the same requests through real Envoy 1.40 and `legate proxy`. Scripts
//! add, replace and remove request and response headers, read and rewrite
//! bodies, answer locally, call another cluster, read route metadata,
//! stream info and dynamic metadata, fail; routes disable the filter or
//! pick named or their own scripts. What the client and the upstream see,
//! and the `lua.*` stats, must agree. A route's Lua cluster specifier
//! (`inline_cluster_specifier_plugin`) picks the cluster by a header.

mod harness;

use harness::diff::*;
use harness::http_client::Req;
use harness::template::*;
use std::collections::BTreeMap;

const MAIN_SCRIPT: &str = r#"
function envoy_on_request(h)
  local hd = h:headers()
  -- Changed headers route again: by a header, or by a new path.
  if hd:get(":path") == "/reroute" then hd:add("x-lua-route", "side") end
  if hd:get(":path") == "/repath" then hd:replace(":path", "/direct") end
  hd:add("x-lua-added", "yes")
  hd:replace("x-lua-replace", "replaced")
  hd:remove("x-lua-remove")
  local n = 0
  for k, v in pairs(hd) do
    if string.sub(k, 1, 6) == "x-lua-" then n = n + 1 end
  end
  hd:add("x-lua-count", tostring(n))
  hd:add("x-lua-multi-n", tostring(hd:getNumValues("x-multi-in")))
  hd:add("x-lua-multi", hd:get("x-multi-in") or "none")
  hd:add("x-lua-second-value", hd:getAtIndex("x-multi-in", 1) or "none")
  hd:add("x-lua-host", hd:get("host"))
  hd:add("x-lua-path", hd:get(":path"))
  hd:add("x-lua-method", hd:get(":method"))
  local si = h:streamInfo()
  hd:add("x-lua-proto", si:protocol())
  hd:add("x-lua-plain", tostring(h:connection():ssl() == nil))
  hd:add("x-lua-local-ip", string.match(si:downstreamLocalAddress(), "^[%d.]+"))
  hd:add("x-lua-peer-ip", string.match(si:downstreamDirectRemoteAddress(), "^[%d.]+"))
  si:dynamicMetadata():set("legate.test", "path", hd:get(":path"))
  local tag = h:metadata():get("tag")
  hd:add("x-lua-md", tag or "none")
  hd:add("x-lua-b64", h:base64Escape("hello lua"))
  hd:add("x-lua-ts", tostring(h:timestamp() > 1600000000000))
  if hd:get("x-lua-respond") then
    h:respond({[":status"] = "403", ["x-lua-local"] = "denied"}, "denied by lua")
    hd:add("x-lua-after-respond", "never")
  end
  if hd:get("x-lua-error") then
    error("asked to fail")
  end
  if hd:get(":method") == "POST" then
    local b = h:body()
    local s = b:getBytes(0, b:length())
    -- body() yielded: headers are asked for again (the old object is dead).
    local fresh = h:headers()
    fresh:add("x-lua-body", s)
    fresh:add("x-lua-body-len", tostring(b:length()))
    b:setBytes(string.upper(s) .. "!")
  end
  if hd:get("x-lua-call") then
    local rh, rb = h:httpCall("side", {[":method"] = "GET", [":path"] = "/side", [":authority"] = "side.example"}, nil, 2000)
    local fresh = h:headers()
    fresh:add("x-lua-call-status", rh[":status"])
    fresh:add("x-lua-call-upstream", rh["x-upstream"] or "none")
    fresh:add("x-lua-call-saw-host", tostring(string.find(rb, "side.example", 1, true) ~= nil))
    -- The headers object from before the call is dead: a script error.
    hd:add("x-lua-stale", "never")
  end
end

function envoy_on_response(h)
  local hd = h:headers()
  hd:add("x-lua-resp", "yes")
  hd:add("x-lua-status", hd:get(":status"))
  hd:remove("x-upstream")
  local dyn = h:streamInfo():dynamicMetadata():get("legate.test")
  hd:add("x-lua-dyn", dyn and dyn["path"] or "none")
  if dyn and (dyn["path"] == "/rewrite" or dyn["path"] == "/direct-rewrite") then
    local b = h:body()
    b:setBytes("rewritten " .. tostring(b:length() > 10))
  end
end
"#;

const OTHER_SCRIPT: &str = r#"
function envoy_on_request(h)
  h:headers():add("x-lua-named", "other")
end
function envoy_on_response(h)
  h:headers():add("x-lua-named-resp", "other")
end
"#;

const ROUTE_SCRIPT: &str = r#"
function envoy_on_request(h)
  h:headers():add("x-lua-own", h:metadata():get("tag") or "none")
end
"#;

const SECOND_SCRIPT: &str = r#"
function envoy_on_response(h)
  h:headers():add("x-lua-second", "ran")
end
"#;

/// `text` as a YAML block scalar's lines at `indent` spaces.
fn block(text: &str, indent: usize) -> String {
    text.trim_start_matches('\n').lines().map(|l| format!("{}{l}\n", " ".repeat(indent))).collect()
}

fn template() -> String {
    let filters = format!(
        r#"          - name: envoy.filters.http.lua
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
              default_source_code:
                inline_string: |
{main}              source_codes:
                other:
                  inline_string: |
{other}          - name: lua-second
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
              stat_prefix: second
              inline_code: |
{second}"#,
        main = block(MAIN_SCRIPT, 18),
        other = block(OTHER_SCRIPT, 20),
        second = block(SECOND_SCRIPT, 16),
    );
    let routes = format!(
        r#"              - match: {{ prefix: "/reroute", headers: [{{ name: x-lua-route, string_match: {{ exact: side }} }}] }}
                route: {{ cluster: side }}
              - match: {{ prefix: "/nohost" }}
                route: {{ cluster: empty }}
              - match: {{ prefix: "/md" }}
                route: {{ cluster: echo }}
                metadata: {{ filter_metadata: {{ envoy.filters.http.lua: {{ tag: route-tag }} }} }}
              - match: {{ prefix: "/disabled" }}
                route: {{ cluster: echo }}
                typed_per_filter_config:
                  envoy.filters.http.lua:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute
                    disabled: true
              - match: {{ prefix: "/named" }}
                route: {{ cluster: echo }}
                typed_per_filter_config:
                  envoy.filters.http.lua:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute
                    name: other
              - match: {{ prefix: "/missing-name" }}
                route: {{ cluster: echo }}
                typed_per_filter_config:
                  envoy.filters.http.lua:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute
                    name: nowhere
              - match: {{ prefix: "/own" }}
                route: {{ cluster: echo }}
                metadata: {{ filter_metadata: {{ envoy.filters.http.lua: {{ tag: own-tag }} }} }}
                typed_per_filter_config:
                  envoy.filters.http.lua:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute
                    source_code:
                      inline_string: |
{own}              - match: {{ prefix: "/direct" }}
                direct_response: {{ status: 200, body: {{ inline_string: "made here" }} }}
{all}"#,
        own = block(ROUTE_SCRIPT, 24),
        all = ALL_TO_ECHO,
    );
    let t = bootstrap("", "", &one_vhost(&routes), &format!(
            "{}{}  - {{ name: empty, connect_timeout: 1s, load_assignment: {{ cluster_name: empty, endpoints: [] }} }}\n",
            echo_cluster(),
            cluster("side", &["{UP_b}"])
        ));
    with_filters(t, &format!("          http_filters:\n{filters}{ROUTER}"))
}

/// The harness's view, the scripts' own response headers, and the size of
/// the body the upstream received.
fn lua_view(r: &harness::http_client::Resp) -> BTreeMap<String, String> {
    let mut m = view(r);
    for (k, v) in r.headers.iter().filter(|(k, _)| k.starts_with("x-lua-")) {
        m.insert(format!("resp:{k}"), v.clone());
    }
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&r.body) {
        if let Some(n) = v.get("body_bytes") {
            m.insert("upstream:body_bytes".into(), n.to_string());
        }
    }
    m
}

fn requests() -> Vec<Req> {
    use harness::http_client::get;
    vec![
        get("/plain")
            .header("x-lua-replace", "original")
            .header("x-lua-remove", "gone")
            .header("x-multi-in", "a")
            .header("x-multi-in", "b"),
        get("/md"),
        get("/disabled").header("x-lua-remove", "kept"),
        get("/named").header("x-lua-remove", "kept"),
        get("/missing-name").header("x-lua-remove", "kept"),
        get("/own"),
        get("/local").header("x-lua-respond", "1"),
        get("/fails").header("x-lua-error", "1"),
        get("/body").post("hello body"),
        get("/call").header("x-lua-call", "1"),
        get("/rewrite"),
        get("/direct"),
        get("/direct-rewrite"),
        get("/reroute"),
        get("/nohost"),
        get("/repath"),
        get("/over-h2").h2(),
    ]
}

#[test]
fn lua_scripts_on_requests_and_responses() {
    let t = template();
    let pair = harness::sides::start_pair("lua", &t, &["a", "b"]);
    let mut problems = Vec::new();
    for r in requests() {
        let (mut e, mut l) = (lua_view(&send(pair.envoy, &r)), lua_view(&send(pair.legate, &r)));
        // The scripts' runs and errors so far, after each request.
        for name in ["http.ingress_http.lua.errors", "http.ingress_http.lua.executions"] {
            let (se, sl) = pair.stats_settle(name, harness::admin::stat(pair.envoy_admin, name).unwrap_or(-1));
            e.insert(name.into(), format!("{se:?}"));
            l.insert(name.into(), format!("{sl:?}"));
        }
        // The scripts ran: the default script's header reached the upstream
        // or the client on every route that runs it.
        if !["/disabled", "/named", "/missing-name", "/own"].contains(&r.path.as_str()) {
            let ran = e.keys().any(|k| k.contains("x-lua-"));
            assert!(ran, "{} {}: Envoy ran no script: {e:?}", r.method, r.path);
        }
        let d = diff(&e, &l);
        if !d.is_empty() {
            problems.push(format!("{} {} (h2 {}):\n{}", r.method, r.path, r.h2, d.join("\n")));
        }
    }
    assert!(problems.is_empty(), "Legate differs from Envoy:\n{}", problems.join("\n"));
    let stats = [
        "http.ingress_http.lua.errors",
        "http.ingress_http.lua.executions",
        "http.ingress_http.lua.second.errors",
        "http.ingress_http.lua.second.executions",
    ];
    for name in stats {
        let e = harness::admin::stat(pair.envoy_admin, name);
        assert!(e.is_some(), "Envoy has no stat {name}");
    }
    pair.same_stats(&stats);
    // Three scripts failed: the asked-for failure, and the headers object
    // from before a yield used after it (the `x-lua-call` check after
    // `body()`, `x-lua-stale` after `httpCall`).
    assert_eq!(harness::admin::stat(pair.envoy_admin, "http.ingress_http.lua.errors"), Some(3));
}

/// Every Lua script of a YAML value: the `inline_code`, `inline_string`
/// or `source_codes` of each Lua filter config in it.
fn lua_scripts(v: &serde_yaml_ng::Value, out: &mut Vec<String>) {
    use serde_yaml_ng::Value as Y;
    match v {
        Y::Mapping(m) => {
            let is_lua = m
                .get("@type")
                .and_then(Y::as_str)
                .is_some_and(|t| t.ends_with("envoy.extensions.filters.http.lua.v3.Lua"));
            if is_lua {
                let inline = m.get("inline_code").and_then(Y::as_str);
                let default = m.get("default_source_code").and_then(|d| d.get("inline_string")).and_then(Y::as_str);
                out.extend(inline.into_iter().chain(default).map(str::to_string));
            }
            m.values().for_each(|x| lua_scripts(x, out));
        }
        Y::Sequence(s) => s.iter().for_each(|x| lua_scripts(x, out)),
        _ => {}
    }
}

/// The scripts of the real-world configs that use Lua, each run in the same
/// bootstrap behind Envoy and Legate: the same answers, errors and runs.
#[test]
fn real_world_lua_scripts_run_alike() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/real-world");
    let mut scripts = Vec::new();
    let mut entries: Vec<_> =
        std::fs::read_dir(&dir).expect("real-world configs").flatten().map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if !text.contains("lua.v3.Lua") {
            continue;
        }
        let Ok(v) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&text) else { continue };
        lua_scripts(&v, &mut scripts);
    }
    scripts.sort();
    scripts.dedup();
    assert!(scripts.len() >= 2, "real-world Lua scripts found: {}", scripts.len());
    let filters = scripts
        .iter()
        .enumerate()
        .map(|(i, code)| {
            format!(
                "          - name: lua-{i}\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua\n              stat_prefix: s{i}\n              default_source_code:\n                inline_string: |\n{}",
                block(code, 18)
            )
        })
        .collect::<String>();
    let t = with_filters(
        bootstrap("", "", &one_vhost(ALL_TO_ECHO), &echo_cluster()),
        &format!("          http_filters:\n{filters}{ROUTER}"),
    );
    let pair = harness::sides::start_pair("lua-real-world", &t, &["a"]);
    for r in [harness::http_client::get("/"), harness::http_client::get("/v1/models").post("{}")] {
        let (e, l) = (lua_view(&send(pair.envoy, &r)), lua_view(&send(pair.legate, &r)));
        let d = diff(&e, &l);
        assert!(d.is_empty(), "{} {}: Legate differs from Envoy:\n{}", r.method, r.path, d.join("\n"));
    }
    let names: Vec<String> = (0..scripts.len())
        .flat_map(|i| ["errors", "executions"].map(|s| format!("http.ingress_http.lua.s{i}.{s}")))
        .collect();
    for n in &names {
        assert!(harness::admin::stat(pair.envoy_admin, n).is_some(), "Envoy has no stat {n}");
    }
    pair.same_stats(&names.iter().map(String::as_str).collect::<Vec<_>>());
}

/// The Lua cluster specifier of Envoy's example, with a failing branch and
/// a number returned: the cluster each request reached (or the 503 of a
/// cluster that does not exist), and the clusters' and router's stats.
#[test]
fn lua_cluster_specifier_picks_the_cluster() {
    let script = r#"
function envoy_on_route(route_handle)
  local header_value = route_handle:headers():get("header_key")
  if header_value == "fake" then
    return "fake_cluster"
  end
  if header_value == "fail" then
    error("asked to fail")
  end
  if header_value == "nothing" then
    return nil
  end
  if header_value == "side" or header_value == "side,side" then
    return "side"
  end
  return "echo"
end
"#;
    let routes = format!(
        r#"              - match: {{ prefix: "/" }}
                route:
                  inline_cluster_specifier_plugin:
                    extension:
                      name: envoy.router.cluster_specifier_plugin.lua
                      typed_config:
                        "@type": type.googleapis.com/envoy.extensions.router.cluster_specifiers.lua.v3.LuaConfig
                        source_code:
                          inline_string: |
{code}                        default_cluster: side
"#,
        code = block(script, 28)
    );
    let t = bootstrap("", "", &one_vhost(&routes), &format!("{}{}", echo_cluster(), cluster("side", &["{UP_b}"])));
    use harness::http_client::get;
    let requests = [
        get("/plain"),
        get("/side").header("header_key", "side"),
        get("/twice").header("header_key", "side").header("header_key", "side"),
        get("/fake").header("header_key", "fake"),
        get("/fails").header("header_key", "fail"),
        get("/nil").header("header_key", "nothing"),
        get("/over-h2").header("header_key", "side").h2(),
    ];
    let pair = compare("lua-cluster-specifier", &t, &["a", "b"], &requests);
    pair.stats_reach(&[
        ("cluster.echo.upstream_rq_200", 1),
        ("cluster.side.upstream_rq_200", 5),
        ("http.ingress_http.no_cluster", 1),
    ]);
    pair.same_stats(&[
        "cluster.echo.upstream_rq_total",
        "cluster.side.upstream_rq_total",
        "http.ingress_http.downstream_rq_total",
    ]);
}
