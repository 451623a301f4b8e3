//! `envoy.filters.http.csrf` in Envoy 1.40 and in Legate on the same
//! bootstrap: state-changing requests from their own origin, from another,
//! from none, from an additional origin; the referer when there is no
//! origin; policies per route (disabled, shadow mode); and the counters.

mod harness;

use harness::*;

#[test]
fn csrf_matches_envoy() {
    let filters = r#"          - name: envoy.filters.http.csrf
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.csrf.v3.CsrfPolicy
              filter_enabled: { default_value: { numerator: 100, denominator: HUNDRED }, runtime_key: csrf.enabled }
              additional_origins: [{ exact: "friend.example" }, { suffix: ".trusted.example" }]
"#;
    let off = r#"{ "@type": type.googleapis.com/envoy.extensions.filters.http.csrf.v3.CsrfPolicy, filter_enabled: { default_value: { numerator: 0 } } }"#;
    let shadow = r#"{ "@type": type.googleapis.com/envoy.extensions.filters.http.csrf.v3.CsrfPolicy, filter_enabled: { default_value: { numerator: 0 } }, shadow_enabled: { default_value: { numerator: 100 } } }"#;
    let vhosts = format!(
        r#"            - name: all
              domains: ["*"]
              routes:
              - {{ match: {{ prefix: "/disabled" }}, route: {{ cluster: echo }}, typed_per_filter_config: {{ envoy.filters.http.csrf: {off} }} }}
              - {{ match: {{ prefix: "/shadow" }}, route: {{ cluster: echo }}, typed_per_filter_config: {{ envoy.filters.http.csrf: {shadow} }} }}
              - {{ match: {{ prefix: "/" }}, route: {{ cluster: echo }} }}
"#
    );
    let t = harness::template::filtered(filters, &vhosts);
    let post = |path: &str| get(path).post("x");
    let from = |path: &str, origin: &'static str| post(path).header("origin", origin);
    let requests = [
        get("/read").header("origin", "http://evil.example"),
        post("/none"),
        from("/same", "http://example.com"),
        from("/same-https", "https://example.com"),
        from("/other", "http://evil.example"),
        from("/port", "http://example.com:8080"),
        from("/port", "http://example.com:8080").host("example.com:8080"),
        from("/null", "null"),
        from("/null-referer", "null").header("referer", "http://example.com/p"),
        post("/referer-null").header("referer", "null"),
        from("/no-scheme", "example.com"),
        from("/ftp", "ftp://example.com"),
        from("/case", "http://EXAMPLE.com"),
        from("/default-port", "http://example.com:80"),
        from("/friend", "https://friend.example"),
        from("/trusted", "https://api.trusted.example"),
        post("/referer").header("referer", "http://example.com/page"),
        post("/referer-other").header("referer", "http://evil.example/page"),
        from("/put", "http://evil.example").method("PUT"),
        from("/delete", "http://evil.example").method("DELETE"),
        from("/patch", "http://evil.example").method("PATCH"),
        from("/options", "http://evil.example").method("OPTIONS"),
        from("/disabled", "http://evil.example"),
        from("/shadow", "http://evil.example"),
        post("/shadow-none"),
    ];
    let pair = harness::diff::compare("csrf", &t, &["a"], &requests);
    for port in [pair.envoy, pair.legate] {
        let r = harness::diff::send(port, &from("/other", "http://evil.example"));
        assert_eq!(r.status, 403, "another origin is refused: {r:?}");
        assert_eq!(harness::diff::send(port, &from("/same", "http://example.com")).status, 200);
    }
    let names: Vec<String> = ["missing_source_origin", "request_invalid", "request_valid"]
        .iter()
        .map(|n| format!("http.ingress_http.csrf.{n}"))
        .collect();
    assert!(stat(pair.envoy_admin, &names[1]).is_some_and(|n| n > 0), "Envoy counted no invalid request");
    pair.same_stats(&names.iter().map(String::as_str).collect::<Vec<_>>());
}
