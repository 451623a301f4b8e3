//! `envoy.filters.http.header_to_metadata` through Envoy 1.40 and `legate
//! proxy` side by side: request and response rules (present and missing
//! headers, STRING, NUMBER and PROTOBUF_VALUE values, BASE64, a regex
//! rewrite, a fixed value, `remove`, the default namespace, a route's own
//! rules) write the same dynamic metadata, seen in `%DYNAMIC_METADATA%` in
//! text and JSON access logs and by a Lua script after the filter; the same
//! headers reach the upstream and the client, and the filter's stats agree.

mod harness;

use harness::admin::admin_page;
use harness::diff::*;
use harness::template::*;
use harness::*;
use std::collections::BTreeMap;

const FILTERS: &str = r#"          - name: envoy.filters.http.header_to_metadata
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.header_to_metadata.v3.Config
              stat_prefix: h2m
              request_rules:
              - header: x-tenant
                on_header_present: { metadata_namespace: acme, key: tenant, type: STRING }
                on_header_missing: { metadata_namespace: acme, key: tenant, value: nobody }
                remove: true
              - header: x-count
                on_header_present: { metadata_namespace: acme, key: count, type: NUMBER }
              - header: x-b64
                on_header_present: { metadata_namespace: acme, key: decoded, encode: BASE64 }
              - header: x-version
                on_header_present: { key: major, regex_value_rewrite: { pattern: { regex: "^v(\\d+)\\..*$" }, substitution: "\\1" } }
              - header: x-pb
                on_header_present: { metadata_namespace: acme, key: pb, type: PROTOBUF_VALUE, encode: BASE64 }
              - header: x-flag
                on_header_present: { metadata_namespace: acme, key: flag, value: "on" }
              response_rules:
              - header: x-upstream
                on_header_present: { metadata_namespace: resp, key: upstream }
              - header: x-resp-num
                on_header_present: { metadata_namespace: resp, key: num, type: NUMBER }
                remove: true
              - header: x-never
                on_header_missing: { metadata_namespace: resp, key: never, value: missing }
          - name: envoy.filters.http.lua
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
              default_source_code:
                inline_string: |
                  function envoy_on_request(handle)
                    local acme = handle:streamInfo():dynamicMetadata():get("acme")
                    if acme ~= nil and acme.tenant ~= nil then
                      handle:headers():add("x-seen-tenant", tostring(acme.tenant))
                    end
                  end
"#;

const ROUTES: &str = r#"              - match: { prefix: "/route" }
                route: { cluster: echo }
                typed_per_filter_config:
                  envoy.filters.http.header_to_metadata:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.header_to_metadata.v3.Config
                    request_rules:
                    - header: x-tenant
                      on_header_present: { metadata_namespace: acme, key: route_tenant }
              - match: { prefix: "/" }
                route: { cluster: echo }
                response_headers_to_add: [{ header: { key: x-resp-num, value: "42" } }]
"#;

const TEXT: &str = "%REQ(:PATH)% tenant=%DYNAMIC_METADATA(acme:tenant)% route=%DYNAMIC_METADATA(acme:route_tenant)% count=%DYNAMIC_METADATA(acme:count)% decoded=%DYNAMIC_METADATA(acme:decoded)% major=%DYNAMIC_METADATA(envoy.filters.http.header_to_metadata:major)% pb=%DYNAMIC_METADATA(acme:pb)% flag=%DYNAMIC_METADATA(acme:flag)% resp=%DYNAMIC_METADATA(resp)% cut=%DYNAMIC_METADATA(acme:tenant):3%\\n";

fn loggers(dir: &str) -> String {
    let json = "{ path: \"%REQ(:PATH)%\", acme: \"%DYNAMIC_METADATA(acme)%\", count: \"%DYNAMIC_METADATA(acme:count)%\", tenant: \"%DYNAMIC_METADATA(acme:tenant)%\", resp: \"%DYNAMIC_METADATA(resp)%\", none: \"%DYNAMIC_METADATA(nothing:here)%\" }";
    format!(
        "          access_log:\n          - name: envoy.access_loggers.file\n            typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog, path: \"{dir}/{{ADMIN}}-text.log\", log_format: {{ text_format: \"{TEXT}\" }} }}\n          - name: envoy.access_loggers.file\n            typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog, path: \"{dir}/{{ADMIN}}-json.log\", log_format: {{ json_format: {json} }} }}\n"
    )
}

/// The filter's counters, by name.
fn h2m_stats(admin: u16) -> BTreeMap<String, String> {
    admin_page(admin, "/stats")
        .lines()
        .filter(|l| l.starts_with("http_filter_name."))
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn header_to_metadata_matches_envoys() {
    let dir = TempDir::new("diff-h2m-logs");
    let d = dir.path().display().to_string();
    let t = bootstrap(&loggers(&d), "", &one_vhost(ROUTES), &echo_cluster());
    let t = with_filters(t, &format!("          http_filters:\n{FILTERS}{ROUTER}"));
    // A google.protobuf.Value with string_value "hi", base64.
    let pb = "GgJoaQ==";
    let requests = [
        get("/all")
            .header("x-tenant", "t-1")
            .header("x-count", " 12.5 ")
            .header("x-b64", "aGVsbG8")
            .header("x-version", "v3.1.4")
            .header("x-pb", pb)
            .header("x-flag", "ignored"),
        get("/missing"),
        get("/bad")
            .header("x-count", "twelve")
            .header("x-b64", "!!!")
            .header("x-version", "3.1")
            .header("x-pb", "AAAA"),
        get("/joined").header("x-tenant", "a").header("x-tenant", "b"),
        get("/route/x").header("x-tenant", "r-1").header("x-count", "7"),
    ];
    let pair = compare("header-to-metadata", &t, &["a"], &requests);
    // `remove` on the response: the header is gone for the client.
    for port in [pair.envoy, pair.legate] {
        let r = send(port, &get("/again"));
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-resp-num"), None, "port {port}: {r:?}");
    }
    let expected_lines = requests.len() + 1;
    for log in ["text", "json"] {
        let file = |admin: u16| dir.path().join(format!("{admin}-{log}.log"));
        let l = marked_lines(&file(pair.legate_admin), "/", expected_lines);
        let e = marked_lines(&file(pair.envoy_admin), "/", expected_lines);
        for line in &e {
            eprintln!("envoy {log}: {line}");
        }
        assert_eq!(e.len(), expected_lines, "{log}: {e:?}");
        assert_eq!(e, l, "{log} access log: Envoy (left), Legate (right)");
    }
    let (e, l) = (h2m_stats(pair.envoy_admin), h2m_stats(pair.legate_admin));
    eprintln!("stats (Envoy): {e:?}");
    assert!(e.values().any(|v| v != "0"), "Envoy counted nothing: {e:?}");
    assert_same("header_to_metadata stats", &e, &l);
}
