//! Differential tests of the HTTP filters (rbac, cors, compressor, buffer,
//! jwt_authn): the same bootstrap and the same requests through real Envoy
//! 1.40 and through `legate proxy`; status, the upstream that answered, the
//! headers that matter, bodies and the filters' stats must agree.
//!
//! A bootstrap is a template (`harness::template`); the comparison is the
//! harness's (`harness::diff`).

mod harness;

use harness::diff::*;
use harness::jwt::{ec_jwk, key_file, openssl_key, rsa_jwk, sign};
use harness::template::*;
use harness::*;
use serde_json::Value;
use std::collections::BTreeMap;

/// The named stats must have the same values behind Envoy and Legate.
fn same_stats(pair: &Pair, names: &[&str]) {
    for name in names {
        let (e, l) = (stat(pair.envoy_admin, name), stat(pair.legate_admin, name));
        assert!(e.is_some(), "Envoy has no stat {name}");
        assert_eq!(e, l, "stat {name}: envoy={e:?} legate={l:?}");
    }
}

#[test]
fn rbac_rules_shadow_rules_and_per_route_override() {
    let filters = r#"          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: ALLOW
                policies:
                  public:
                    permissions: [{ or_rules: { rules: [{ url_path: { path: { prefix: /public } } }, { url_path: { path: { exact: /health } } }] } }]
                    principals: [{ any: true }]
                  admin:
                    permissions: [{ and_rules: { rules: [{ header: { name: x-role, string_match: { exact: admin } } }, { destination_port: {LISTEN} }] } }]
                    principals: [{ direct_remote_ip: { address_prefix: 127.0.0.0, prefix_len: 8 } }]
                  forwarded:
                    permissions: [{ url_path: { path: { prefix: /xff } } }]
                    principals: [{ remote_ip: { address_prefix: 192.0.2.0, prefix_len: 24 } }]
                  open:
                    permissions: [{ not_rule: { url_path: { path: { prefix: /closed } } } }]
                    principals: [{ and_ids: { ids: [{ source_ip: { address_prefix: 127.0.0.1, prefix_len: 32 } }, { not_id: { header: { name: x-banned, present_match: true } } }, { or_ids: { ids: [{ header: { name: x-open, string_match: { exact: "yes" } } }, { url_path: { path: { exact: /open } } }] } }] } }]
              shadow_rules:
                action: DENY
                policies:
                  shadow:
                    permissions: [{ header: { name: x-shadow, present_match: true } }]
                    principals: [{ any: true }]
"#;
    let routes = r#"              - match: { prefix: "/perroute" }
                route: { cluster: echo }
                typed_per_filter_config:
                  envoy.filters.http.rbac:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute
                    rbac:
                      rules:
                        action: DENY
                        policies:
                          deny-flagged:
                            permissions: [{ header: { name: x-deny, present_match: true } }]
                            principals: [{ any: true }]
              - { match: { prefix: "/" }, route: { cluster: echo } }
"#;
    let t = filtered(filters, &one_vhost(routes));
    let pair = compare(
        "rbac",
        &t,
        &["a"],
        &[
            get("/public/a"),
            get("/health"),
            get("/private"),
            get("/private").header("x-role", "admin"),
            get("/private").header("x-role", "user"),
            get("/xff").header("x-forwarded-for", "192.0.2.5"),
            get("/xff").header("x-forwarded-for", "10.0.0.1"),
            get("/open"),
            get("/open").header("x-banned", "1"),
            get("/closed").header("x-open", "yes"),
            get("/somewhere").header("x-open", "yes"),
            get("/perroute"),
            get("/perroute").header("x-deny", "1"),
            get("/public/b").header("x-shadow", "1"),
            get("/private").header("x-shadow", "1"),
        ],
    );
    same_stats(
        &pair,
        &[
            "http.ingress_http.rbac.allowed",
            "http.ingress_http.rbac.denied",
            "http.ingress_http.rbac.shadow_allowed",
            "http.ingress_http.rbac.shadow_denied",
        ],
    );
}

#[test]
fn cors_preflight_and_actual_requests() {
    let filters = "          - name: envoy.filters.http.cors\n            typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors }\n";
    let vhosts = r#"            - name: all
              domains: ["*"]
              typed_per_filter_config:
                envoy.filters.http.cors:
                  "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
                  allow_origin_string_match: [{ exact: "https://a.example" }, { suffix: ".b.example" }]
                  allow_methods: "GET, POST"
                  allow_headers: "x-h, content-type"
                  expose_headers: "x-e"
                  max_age: "600"
              routes:
              - match: { prefix: "/cred" }
                route: { cluster: echo }
                typed_per_filter_config:
                  envoy.filters.http.cors:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
                    allow_methods: "PUT"
                    allow_credentials: true
              - match: { prefix: "/any" }
                route: { cluster: echo }
                typed_per_filter_config:
                  envoy.filters.http.cors:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
                    allow_origin_string_match: [{ exact: "*" }]
              - match: { prefix: "/strict" }
                route: { cluster: echo }
                typed_per_filter_config:
                  envoy.filters.http.cors:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
                    forward_not_matching_preflights: false
                    allow_private_network_access: true
              - match: { prefix: "/shadow" }
                route: { cluster: echo }
                typed_per_filter_config:
                  envoy.filters.http.cors:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
                    allow_origin_string_match: [{ exact: "https://a.example" }]
                    filter_enabled: { default_value: { numerator: 0 } }
                    shadow_enabled: { default_value: { numerator: 100 } }
              - match: { prefix: "/off" }
                route: { cluster: echo }
                typed_per_filter_config:
                  envoy.filters.http.cors:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
                    allow_origin_string_match: [{ exact: "https://a.example" }]
                    filter_enabled: { default_value: { numerator: 0 } }
              - { match: { prefix: "/" }, route: { cluster: echo } }
"#;
    let t = filtered(filters, vhosts);
    let preflight = |path: &str, origin: &'static str| {
        get(path).method("OPTIONS").header("origin", origin).header("access-control-request-method", "POST")
    };
    let pair = compare(
        "cors",
        &t,
        &["a"],
        &[
            get("/plain"),
            get("/plain").header("origin", "https://a.example"),
            get("/plain").header("origin", "https://x.b.example"),
            get("/plain").header("origin", "https://evil.example"),
            preflight("/plain", "https://a.example"),
            preflight("/plain", "https://evil.example"),
            get("/plain").method("OPTIONS").header("origin", "https://a.example"),
            get("/cred").header("origin", "https://a.example"),
            preflight("/cred", "https://a.example"),
            preflight("/any", "https://anything.example"),
            get("/any").header("origin", "https://anything.example"),
            preflight("/strict", "https://evil.example"),
            preflight("/strict", "https://a.example"),
            preflight("/strict", "https://a.example").header("access-control-request-private-network", "true"),
            preflight("/plain", "https://a.example").header("access-control-request-private-network", "true"),
            get("/strict").header("origin", "https://evil.example"),
            // Shadow: counted, not enforced; disabled: neither.
            get("/shadow").header("origin", "https://a.example"),
            get("/shadow").header("origin", "https://evil.example"),
            preflight("/shadow", "https://a.example"),
            get("/off").header("origin", "https://a.example"),
            preflight("/off", "https://evil.example"),
        ],
    );
    same_stats(&pair, &["http.ingress_http.cors.origin_valid", "http.ingress_http.cors.origin_invalid"]);
}

#[test]
fn buffer_limits_request_bodies() {
    let filters = r#"          - name: envoy.filters.http.buffer
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer
              max_request_bytes: 1024
"#;
    let t = filtered(filters, &one_vhost(ALL_TO_ECHO));
    let pair = compare(
        "buffer",
        &t,
        &["a"],
        &[
            get("/empty"),
            get("/small").post("x".repeat(100)),
            get("/edge").post("y".repeat(1024)),
            get("/big").post("z".repeat(5000)),
        ],
    );
    same_stats(&pair, &["http.ingress_http.downstream_rq_too_large"]);
}

/// Every stat whose name contains `needle`, from `/stats?format=json`.
fn stats_matching(admin: u16, needle: &str) -> BTreeMap<String, i64> {
    json_stats(admin).into_iter().filter(|(n, _)| n.contains(needle)).collect()
}

/// Sends every request to both proxies and compares what they answered, the
/// bodies decompressed; Legate's compressed echo bodies must decode to JSON.
fn compare_decoded(pair: &Pair, requests: &[Req]) {
    let mut problems = Vec::new();
    for r in requests {
        let (e, l) = (get_decoded(pair.envoy, r), get_decoded(pair.legate, r));
        let (mut ev, mut lv) = (view(&e), view(&l));
        for (v, resp) in [(&mut ev, &e), (&mut lv, &l)] {
            v.insert("decoded".into(), resp.header("x-test-decoded").is_some().to_string());
        }
        let d = diff(&ev, &lv);
        if !d.is_empty() {
            problems.push(format!("{} {} {:?}:\n{}", r.method, r.path, r.headers, d.join("\n")));
        }
        // What Legate compressed decompresses to what the upstream sent.
        if l.header("x-test-decoded").is_some() && r.path == "/json" {
            let v: Value = serde_json::from_str(&l.body).expect("the echo's JSON after decompression");
            assert_eq!(v["upstream"], "a");
        }
    }
    assert!(problems.is_empty(), "Legate differs from Envoy:\n{}", problems.join("\n"));
}

/// Every compressor counter but the compressed byte count, which depends on
/// the deflate/brotli implementation, must agree.
fn same_compressor_stats(pair: &Pair) {
    let mut e = stats_matching(pair.envoy_admin, ".compressor.");
    let mut l = stats_matching(pair.legate_admin, ".compressor.");
    e.retain(|k, _| !k.ends_with("total_compressed_bytes"));
    l.retain(|k, v| !k.ends_with("total_compressed_bytes") && (e.contains_key(k) || *v != 0));
    let e: BTreeMap<_, _> = e.into_iter().filter(|(k, v)| *v != 0 || l.contains_key(k)).collect();
    assert_eq!(e, l, "compressor stats differ");
}

/// Both proxies with the compressor `filters` answer `requests` alike
/// (compared decompressed), count alike, and Legate compresses with `encoding`.
fn compressor_agrees(name: &str, filters: &str, requests: &[Req], encoding: &'static str) {
    let t = filtered(filters, &one_vhost(ALL_TO_ECHO));
    let pair = start_pair(name, &t, &["a"]);
    compare_decoded(&pair, requests);
    same_compressor_stats(&pair);
    let r = get_decoded(pair.legate, &get("/json").header("accept-encoding", encoding));
    assert_eq!(r.header("content-encoding"), Some(encoding));
    assert!(r.header("x-test-decoded").is_some(), "Legate compressed nothing");
}

#[test]
fn gzip_compressor() {
    let filters = r#"          - name: envoy.filters.http.compressor
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor
              response_direction_config:
                common_config:
                  min_content_length: 100
                  content_type: [application/json, text/plain]
              compressor_library:
                name: text_optimized
                typed_config:
                  "@type": type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip
                  compression_level: BEST_SPEED
"#;
    let long = "compress me please ".repeat(20);
    let routes = format!(
        r#"              - {{ match: {{ prefix: "/small" }}, direct_response: {{ status: 200, body: {{ inline_string: "tiny" }} }} }}
              - {{ match: {{ prefix: "/direct" }}, direct_response: {{ status: 200, body: {{ inline_string: "{long}" }} }} }}
              - match: {{ prefix: "/etag" }}
                route: {{ cluster: echo }}
                response_headers_to_add: [{{ header: {{ key: etag, value: '"abc"' }} }}]
              - match: {{ prefix: "/weak" }}
                route: {{ cluster: echo }}
                response_headers_to_add: [{{ header: {{ key: etag, value: 'W/"abc"' }} }}]
              - match: {{ prefix: "/notransform" }}
                route: {{ cluster: echo }}
                response_headers_to_add: [{{ header: {{ key: cache-control, value: no-transform }} }}]
              - match: {{ prefix: "/encoded" }}
                route: {{ cluster: echo }}
                response_headers_to_add: [{{ header: {{ key: content-encoding, value: identity }} }}]
              - match: {{ prefix: "/vary" }}
                route: {{ cluster: echo }}
                response_headers_to_add: [{{ header: {{ key: vary, value: Origin }} }}]
              - match: {{ prefix: "/html" }}
                route: {{ cluster: echo }}
                response_headers_to_add: [{{ header: {{ key: content-type, value: text/html }}, append_action: OVERWRITE_IF_EXISTS_OR_ADD }}]
              - {{ match: {{ prefix: "/" }}, route: {{ cluster: echo }} }}
"#
    );
    let t = filtered(filters, &one_vhost(&routes));
    let pair = start_pair("gzip", &t, &["a"]);
    let gz = |p: &str| get(p).header("accept-encoding", "gzip");
    let requests = [
        gz("/json"),
        get("/json"),
        get("/json").header("accept-encoding", "identity"),
        get("/json").header("accept-encoding", "*"),
        get("/json").header("accept-encoding", "gzip;q=0"),
        get("/json").header("accept-encoding", "gzip;q=0, *"),
        get("/json").header("accept-encoding", "br"),
        get("/json").header("accept-encoding", "gzip;q=0.5, identity;q=0.8"),
        get("/json").header("accept-encoding", "deflate, gzip;q=0.9"),
        gz("/small"),
        gz("/direct"),
        gz("/etag"),
        gz("/weak"),
        gz("/notransform"),
        gz("/encoded"),
        gz("/vary"),
        gz("/html"),
    ];
    compare_decoded(&pair, &requests);
    same_compressor_stats(&pair);
    assert!(get_decoded(pair.legate, &gz("/json")).header("x-test-decoded").is_some(), "Legate compressed nothing");
}

#[test]
fn jwt_authn_with_local_jwks() {
    let keys = TempDir::new("jwt-keys");
    let rsa = openssl_key(keys.path(), "rsa.pem", &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]);
    let other = openssl_key(keys.path(), "other.pem", &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]);
    let ec = openssl_key(keys.path(), "ec.pem", &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]);
    let rsa_jwks = serde_json::json!({ "keys": [rsa_jwk(&rsa, "r1")] }).to_string();
    let ec_jwks = serde_json::json!({ "keys": [ec_jwk(&ec, "e1")] }).to_string();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let claims = |iss: &str, aud: &str, exp: u64| serde_json::json!({ "iss": iss, "aud": aud, "sub": "user-1", "exp": exp, "iat": now, "plan": { "tier": "gold" } });
    let rs = jsonwebtoken::Algorithm::RS256;
    let (rsa, other) = (key_file(&rsa, rs), key_file(&other, rs));
    let ec = key_file(&ec, jsonwebtoken::Algorithm::ES256);
    let good = sign(&rsa, rs, "r1", &claims("https://issuer.example", "api", now + 3600));
    let expired = sign(&rsa, rs, "r1", &claims("https://issuer.example", "api", now - 3600));
    let wrong_iss = sign(&rsa, rs, "r1", &claims("https://other.example", "api", now + 3600));
    let wrong_aud = sign(&rsa, rs, "r1", &claims("https://issuer.example", "web", now + 3600));
    let forged = sign(&other, rs, "r1", &claims("https://issuer.example", "api", now + 3600));
    let param_good = sign(&rsa, rs, "r1", &claims("https://param.example", "api", now + 3600));
    let ec_good = sign(&ec, jsonwebtoken::Algorithm::ES256, "e1", &claims("https://ec.example", "api", now + 3600));
    let filters = format!(
        r#"          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                rsa:
                  issuer: https://issuer.example
                  audiences: [api]
                  local_jwks: {{ inline_string: '{rsa_jwks}' }}
                  forward_payload_header: x-jwt-payload
                  claim_to_headers: [{{ header_name: x-sub, claim_name: sub }}, {{ header_name: x-tier, claim_name: plan.tier }}]
                ec:
                  issuer: https://ec.example
                  local_jwks: {{ inline_string: '{ec_jwks}' }}
                  from_headers: [{{ name: x-token }}]
                  forward: true
                rsa_param:
                  issuer: https://param.example
                  local_jwks: {{ inline_string: '{rsa_jwks}' }}
                  from_params: [tok]
              rules:
              - match: {{ prefix: /rsa }}
                requires: {{ provider_name: rsa }}
              - match: {{ prefix: /any }}
                requires: {{ requires_any: {{ requirements: [{{ provider_name: rsa }}, {{ provider_name: ec }}] }} }}
              - match: {{ prefix: /open }}
              - match: {{ prefix: /param }}
                requires: {{ provider_name: rsa_param }}
              - match: {{ prefix: /maybe }}
                requires: {{ allow_missing: {{}} }}
              - match: {{ prefix: /whatever }}
                requires: {{ allow_missing_or_failed: {{}} }}
              - match: {{ prefix: /rsa-or-none }}
                requires: {{ requires_any: {{ requirements: [{{ provider_name: rsa }}, {{ allow_missing: {{}} }}] }} }}
"#
    );
    let t = filtered(&filters, &one_vhost(ALL_TO_ECHO));
    let bearer = |t: &str| format!("Bearer {t}");
    let pair = compare(
        "jwt",
        &t,
        &["a"],
        &[
            get("/rsa"),
            get("/rsa?q=1"),
            get("/rsa").header("authorization", bearer(&good)),
            get("/rsa").header("authorization", bearer(&expired)),
            get("/rsa").header("authorization", bearer(&wrong_iss)),
            get("/rsa").header("authorization", bearer(&wrong_aud)),
            get("/rsa").header("authorization", bearer(&forged)),
            get("/rsa").header("authorization", "Bearer abc"),
            get(&format!("/rsa?access_token={good}")),
            get("/any").header("x-token", ec_good.clone()),
            get("/any").header("authorization", bearer(&good)),
            get("/any").header("x-token", good.clone()),
            get("/any"),
            get("/open"),
            get("/elsewhere"),
            get(&format!("/param?a=1&tok={param_good}&b=2")),
            get(&format!("/maybe?tok={param_good}")),
            get("/param?a=1"),
            get("/maybe"),
            get("/maybe").header("authorization", bearer(&good)),
            get("/maybe").header("authorization", bearer(&expired)),
            get("/whatever").header("authorization", bearer(&expired)),
            get("/whatever").header("authorization", bearer(&good)),
            get("/rsa-or-none"),
            get("/rsa-or-none").header("authorization", bearer(&forged)),
            get("/rsa-or-none").header("authorization", bearer(&good)),
        ],
    );
    same_stats(&pair, &["http.ingress_http.jwt_authn.allowed", "http.ingress_http.jwt_authn.denied"]);
}

#[test]
fn brotli_compressor() {
    let filters = r#"          - name: envoy.filters.http.compressor
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor
              compressor_library:
                name: br
                typed_config:
                  "@type": type.googleapis.com/envoy.extensions.compression.brotli.compressor.v3.Brotli
                  quality: 5
                  window_bits: 16
"#;
    let requests = [
        get("/json").header("accept-encoding", "br"),
        get("/json").header("accept-encoding", "gzip"),
        get("/json").header("accept-encoding", "gzip, br;q=0.5"),
        get("/json").header("accept-encoding", "br;q=0.5, identity"),
        get("/json").header("accept-encoding", "*"),
        get("/json"),
    ];
    compressor_agrees("brotli", filters, &requests, "br");
}

#[test]
fn zstd_compressor() {
    let filters = r#"          - name: envoy.filters.http.compressor
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor
              compressor_library:
                name: zs
                typed_config:
                  "@type": type.googleapis.com/envoy.extensions.compression.zstd.compressor.v3.Zstd
                  compression_level: 5
                  enable_checksum: true
                  strategy: lazy2
"#;
    let requests = [
        get("/json").header("accept-encoding", "zstd"),
        get("/json").header("accept-encoding", "gzip, br"),
        get("/json").header("accept-encoding", "gzip, zstd;q=0.5"),
        get("/json").header("accept-encoding", "zstd;q=0.5, identity"),
        get("/json").header("accept-encoding", "*"),
        get("/json"),
    ];
    compressor_agrees("zstd", filters, &requests, "zstd");
}

/// Inflates a gzip body with zlib (Python's) and a window of `window_bits`,
/// taking 64 bytes of output at a time so that back references reach into
/// the window, not the output: zlib refuses a stream that refers further
/// back than its window.
fn inflate_with_window(body: &[u8], window_bits: u32) -> Result<Vec<u8>, String> {
    use std::io::Write as _;
    const SCRIPT: &str = "import sys, zlib\n\
        d = zlib.decompressobj(16 + int(sys.argv[1])); out = b''; buf = sys.stdin.buffer.read()\n\
        try:\n\
        \x20   while not d.eof:\n\
        \x20       r = d.decompress(buf, 64); out += r; buf = d.unconsumed_tail\n\
        \x20       if not r and not buf: break\n\
        except zlib.error as e:\n\
        \x20   print(e); sys.exit(3)\n\
        if not d.eof: print('truncated'); sys.exit(3)\n\
        sys.stdout.buffer.write(out)\n";
    let mut child = std::process::Command::new("python3")
        .args(["-c", SCRIPT, &window_bits.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 (the harness installs Envoy with it)");
    child.stdin.take().expect("stdin").write_all(body).expect("write");
    let out = child.wait_with_output().expect("python3");
    match out.status.code() {
        Some(0) => Ok(out.stdout),
        _ => Err(String::from_utf8_lossy(&out.stdout).trim().to_string()),
    }
}

#[test]
fn gzip_window_bits_and_memory_level() {
    // A 1000-byte block seen three times: with a 512-byte window (9 bits)
    // no copy can reach the block before.
    let mut x = 12345u32;
    let block: String = (0..1000)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[(x >> 16) as usize % 36])
        })
        .collect();
    let body = block.repeat(3);
    let filters = r#"          - name: envoy.filters.http.compressor
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor
              response_direction_config: { common_config: { content_type: [text/plain] } }
              compressor_library:
                name: small_window
                typed_config:
                  "@type": type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip
                  compression_level: BEST_COMPRESSION
                  memory_level: 1
                  window_bits: 9
                  chunk_size: 8192
"#;
    let routes = format!(
        "              - {{ match: {{ prefix: \"/\" }}, direct_response: {{ status: 200, body: {{ inline_string: \"{body}\" }} }} }}\n"
    );
    let pair = start_pair("gzip-window", &filtered(filters, &one_vhost(&routes)), &["a"]);
    let req = get("/").header("accept-encoding", "gzip");
    let (envoy, legate) = (get_bytes(pair.envoy, &req), get_bytes(pair.legate, &req));
    for (side, (status, headers, gz)) in [("Envoy", &envoy), ("Legate", &legate)] {
        assert_eq!(*status, 200, "{side}");
        assert!(headers.iter().any(|(k, v)| k == "content-encoding" && v == "gzip"), "{side} compressed nothing");
        let plain = inflate_with_window(gz, 9).unwrap_or_else(|e| panic!("{side}'s body in a 9-bit window: {e}"));
        assert_eq!(plain, body.as_bytes(), "{side}");
        println!("{side}: {} bytes gzip, header {:02x?}", gz.len(), &gz[..10]);
    }
    // The gzip headers agree (flags, extra flags for the level, OS).
    assert_eq!(envoy.2[..10], legate.2[..10], "gzip header");
    // The check has teeth: a 32 KiB-window stream of the same body is refused.
    let mut wide = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut wide, body.as_bytes()).expect("gzip");
    let wide = wide.finish().expect("gzip");
    assert!(inflate_with_window(&wide, 9).is_err(), "a 15-bit window stream passed a 9-bit window");
    assert_eq!(inflate_with_window(&wide, 15).expect("15-bit window"), body.as_bytes());
    same_compressor_stats(&pair);
}

/// `data` compressed with `coding` (gzip, br or zstd).
fn packed(coding: &str, data: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    match coding {
        "gzip" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(data).expect("gzip");
            e.finish().expect("gzip")
        }
        "br" => {
            let mut w = brotli::CompressorWriter::new(Vec::new(), 4096, 5, 22);
            w.write_all(data).expect("brotli");
            w.into_inner()
        }
        _ => zstd::stream::encode_all(data, 3).expect("zstd"),
    }
}

/// Three decompressors (gzip, brotli, zstd) in one chain, each with other
/// settings: request bodies and responses decompressed in both directions,
/// only the first coding taken, `no-transform` honoured or ignored,
/// `accept-encoding` advertised upstream (or not), stats alike, and a
/// decompression bomb cut at the inflate ratio by both.
#[test]
fn decompressor_both_directions_three_libraries() {
    let filters = r#"          - name: envoy.filters.http.decompressor
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.decompressor.v3.Decompressor
              decompressor_library:
                name: gz
                typed_config: { "@type": type.googleapis.com/envoy.extensions.compression.gzip.decompressor.v3.Gzip, chunk_size: 8192, max_inflate_ratio: 100 }
          - name: decompress-br
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.decompressor.v3.Decompressor
              decompressor_library:
                name: brl
                typed_config: { "@type": type.googleapis.com/envoy.extensions.compression.brotli.decompressor.v3.Brotli, disable_ring_buffer_reallocation: true }
              request_direction_config: { advertise_accept_encoding: false }
          - name: decompress-zstd
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.decompressor.v3.Decompressor
              decompressor_library:
                name: zs
                typed_config: { "@type": type.googleapis.com/envoy.extensions.compression.zstd.decompressor.v3.Zstd, chunk_size: 4096 }
              request_direction_config: { common_config: { ignore_no_transform_header: true } }
              response_direction_config: { common_config: { enabled: { default_value: false, runtime_key: zstd_responses } } }
"#;
    let t = filtered(filters, &one_vhost(ALL_TO_ECHO));
    let pair = start_pair("decompressor", &t, &["a"]);
    let text: String = (0..400).map(|i| format!("line {i} of an uploaded body\n")).collect();
    let post = |ce: &str| get("/up/with-body").method("POST").header("content-encoding", ce.to_string());
    let gz_br = packed("gzip", &packed("br", text.as_bytes()));
    let cases: Vec<(Req, Vec<u8>)> = vec![
        (post("gzip"), packed("gzip", text.as_bytes())),
        (post("br"), packed("br", text.as_bytes())),
        (post("zstd"), packed("zstd", text.as_bytes())),
        (post("gzip, br"), gz_br.clone()),
        (post("br, gzip"), gz_br),
        (post("deflate"), text.as_bytes().to_vec()),
        (post("gzip").header("cache-control", "no-transform"), packed("gzip", text.as_bytes())),
        (post("zstd").header("cache-control", "no-transform"), packed("zstd", text.as_bytes())),
        (get("/down/encode/gzip"), vec![]),
        (get("/down/encode/br").header("accept-encoding", "br;q=0.5, gzip;q=0.2"), vec![]),
        (get("/down/encode/zstd").header("accept-encoding", "zstd"), vec![]),
        (get("/down/status/204"), vec![]),
    ];
    let mut problems = Vec::new();
    for (r, body) in &cases {
        let (e, l) = (send_bytes_decoded(pair.envoy, r, body), send_bytes_decoded(pair.legate, r, body));
        let (mut ev, mut lv) = (view(&e), view(&l));
        for (v, resp) in [(&mut ev, &e), (&mut lv, &l)] {
            let echo: Option<Value> = serde_json::from_str(&resp.body).ok();
            let received = echo.as_ref().and_then(|j| j["body"].as_str()).map(|b| (b == text).to_string());
            v.insert("upstream received the text".into(), format!("{received:?}"));
            v.insert("decoded by the client".into(), resp.header("x-test-decoded").is_some().to_string());
            // A body that stays compressed holds the random x-request-id:
            // its length varies.
            if resp.header("x-test-decoded").is_some() {
                v.remove("resp:content-length");
            }
        }
        let d = diff(&ev, &lv);
        if !d.is_empty() {
            problems.push(format!("{} {} {:?}:\n{}", r.method, r.path, r.headers, d.join("\n")));
        }
    }
    assert!(problems.is_empty(), "Legate differs from Envoy:\n{}", problems.join("\n"));
    // Every decompressor counter alike (the bytes too: they are the same
    // bodies, decompressed).
    // Not the compressed bytes of responses: those hold the random request id.
    let stats = |admin| {
        let mut m = stats_matching(admin, ".decompressor.");
        m.retain(|k, _| !k.ends_with("response.total_compressed_bytes"));
        m
    };
    let (e, l) = (stats(pair.envoy_admin), stats(pair.legate_admin));
    let e: BTreeMap<_, _> = e.into_iter().filter(|(k, v)| *v != 0 || l.contains_key(k)).collect();
    let l: BTreeMap<_, _> = l.into_iter().filter(|(k, v)| *v != 0 || e.contains_key(k)).collect();
    assert_eq!(e, l, "decompressor stats differ");
    assert!(e.get("http.ingress_http.decompressor.gz.gzip.request.decompressed").is_some_and(|v| *v >= 2), "{e:?}");

    // A bomb: 16 MiB of zeros in about 16 KiB of gzip. Both stop near 100
    // times what arrived; the zlib error counts it.
    let bomb = get("/down/zeros/16777216/encode/gzip");
    let (e, l) = (send_bytes_decoded(pair.envoy, &bomb, &[]), send_bytes_decoded(pair.legate, &bomb, &[]));
    assert_eq!((e.status, l.status), (200, 200));
    let compressed = packed("gzip", &vec![0u8; 16 << 20]).len();
    for (who, r) in [("envoy", &e), ("legate", &l)] {
        assert!(r.body.len() < 16 << 20, "{who} inflated the whole bomb");
        assert!(r.body.len() <= 100 * compressed + 8192, "{who} gave {} bytes for {compressed}", r.body.len());
        assert!(r.body.bytes().all(|b| b == 0), "{who} gave other bytes");
    }
    let err = "http.ingress_http.decompressor.gz.gzip.decompressor_library.zlib_data_error";
    let (ee, le) = (stat(pair.envoy_admin, err), stat(pair.legate_admin, err));
    assert!(ee.is_some_and(|v| v >= 1) && le.is_some_and(|v| v >= 1), "{err}: envoy={ee:?} legate={le:?}");
    println!("bomb of {compressed} bytes: envoy gave {} bytes, legate {}", e.body.len(), l.body.len());
}

/// A request header input, in the matcher's YAML.
fn header_input(name: &str) -> String {
    format!(
        r#"{{ name: h, typed_config: {{ "@type": type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput, header_name: "{name}" }} }}"#
    )
}

/// An RBAC action, in the matcher's YAML.
fn rbac_action(name: &str, action: &str) -> String {
    format!(
        r#"{{ action: {{ name: a, typed_config: {{ "@type": type.googleapis.com/envoy.config.rbac.v3.Action, name: {name}, action: {action} }} }} }}"#
    )
}

/// RBAC's `matcher` (a list of and/or/not/single predicates over headers,
/// pseudo-headers, addresses and ports, a nested tree, `on_no_match`)
/// and `shadow_matcher` (an exact map), through both proxies.
#[test]
fn rbac_matcher_and_shadow_matcher() {
    let net = "type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3";
    let filters = format!(
        r#"          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules: {{ action: DENY }}
              matcher:
                matcher_list:
                  matchers:
                  - predicate:
                      and_matcher:
                        predicate:
                        - single_predicate: {{ input: {role}, value_match: {{ exact: admin }} }}
                        - single_predicate: {{ input: {{ name: ip, typed_config: {{ "@type": {net}.SourceIPInput }} }}, value_match: {{ exact: 127.0.0.1 }} }}
                    on_match:
                      matcher:
                        matcher_tree:
                          input: {{ name: m, typed_config: {{ "@type": type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput, header_name: ":method" }} }}
                          exact_match_map: {{ map: {{ GET: {allow_admin}, DELETE: {deny_delete} }} }}
                  - predicate:
                      or_matcher:
                        predicate:
                        - single_predicate: {{ input: {forbidden}, value_match: {{ safe_regex: {{ google_re2: {{}}, regex: ".*" }} }} }}
                        - single_predicate: {{ input: {{ name: p, typed_config: {{ "@type": {net}.DestinationPortInput }} }}, value_match: {{ exact: "1" }} }}
                        - single_predicate: {{ input: {path}, value_match: {{ prefix: /private, ignore_case: true }} }}
                    on_match: {forbid}
                  - predicate:
                      not_matcher:
                        single_predicate:
                          input: {referer}
                          value_match: {{ safe_regex: {{ google_re2: {{}}, regex: "https?://(www\\.)?example\\.com/.*" }} }}
                    on_match: {illegal}
                on_no_match: {pass}
              shadow_matcher:
                matcher_tree:
                  input: {tenant}
                  prefix_match_map: {{ map: {{ "a": {allow_a}, "ab": {deny_ab} }} }}
                on_no_match: {deny_rest}
"#,
        role = header_input("x-role"),
        forbidden = header_input("x-forbidden"),
        path = header_input(":path"),
        referer = header_input("referer"),
        tenant = header_input("x-tenant"),
        allow_admin = rbac_action("admin", "ALLOW"),
        deny_delete = rbac_action("no-delete", "DENY"),
        forbid = rbac_action("forbidden", "DENY"),
        illegal = rbac_action("illegal-referer", "DENY"),
        pass = rbac_action("all-pass", "ALLOW"),
        allow_a = rbac_action("tenant-a", "ALLOW"),
        deny_ab = rbac_action("tenant-ab", "DENY"),
        deny_rest = rbac_action("others", "DENY"),
    );
    let ok = |p: &str| get(p).header("referer", "https://example.com/docs");
    let pair = compare(
        "rbac-matcher",
        &filtered(&filters, &one_vhost(ALL_TO_ECHO)),
        &["a"],
        &[
            ok("/"),
            get("/"),
            get("/").header("referer", "https://evil.example/"),
            get("/").header("x-role", "admin"),
            get("/").method("DELETE").header("x-role", "admin"),
            get("/").method("POST").header("x-role", "admin"),
            get("/").header("x-role", "admin").header("x-role", "other"),
            get("/").header("x-role", "admin").header("x-forwarded-for", "192.0.2.7"),
            ok("/?deny=1"),
            ok("/a").header("x-forbidden", "yes"),
            ok("/PRIVATE/x"),
            ok("/t").header("x-tenant", "a1"),
            ok("/t").header("x-tenant", "abc"),
            ok("/t").header("x-tenant", "b"),
        ],
    );
    same_stats(
        &pair,
        &[
            "http.ingress_http.rbac.allowed",
            "http.ingress_http.rbac.denied",
            "http.ingress_http.rbac.shadow_allowed",
            "http.ingress_http.rbac.shadow_denied",
        ],
    );
}

/// `envoy.filters.http.cache` with the simple cache, the same requests in
/// the same order to Envoy 1.40 and to Legate, each with its own origin:
/// a miss, hits (GET, HEAD, a byte range, an origin's `age`), a stale entry
/// revalidated (the origin's 304 answered from the cache with its new
/// headers), a `vary` on a header not allowed, `no-store`, `private`, an
/// `authorization`; what the client saw and what reached each origin.
#[test]
fn cache_matches_envoy() {
    let filters = r#"          - name: envoy.filters.http.cache
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.cache.v3.CacheConfig
              typed_config: { "@type": type.googleapis.com/envoy.extensions.http.cache.simple_http_cache.v3.SimpleHttpCacheConfig }
              allowed_vary_headers: [{ exact: accept-language }]
"#;
    let origins = [cache_origin::CacheOrigin::start(), cache_origin::CacheOrigin::start()];
    let t = filtered(filters, &one_vhost(ALL_TO_ECHO)).replace("{UP_a}", "{ORIGIN}");
    let dir = TempDir::new("diff-cache");
    let [envoy, legate] = harness::sides::both(dir.path(), &[], &["main"], |who, admin, ports| {
        let origin = if who == "envoy" { &origins[0] } else { &origins[1] };
        t.replace("{ADMIN}", &admin.to_string())
            .replace("{LISTEN}", &ports["main"].to_string())
            .replace("{ORIGIN}", &origin.port.to_string())
    });
    let ports = [envoy.port("main"), legate.port("main")];
    // Envoy keeps a connection open after a range answered from its cache,
    // whatever the request's `connection: close`: asked on a kept one.
    let range = get("/fresh").header("range", "bytes=0-3").keep_alive();
    let first = [
        get("/fresh"),
        get("/fresh"),
        get("/fresh").method("HEAD"),
        range,
        get("/age"),
        get("/age"),
        get("/stale"),
        get("/vary").header("x-b", "1"),
        get("/vary").header("x-b", "1"),
        get("/nostore"),
        get("/nostore"),
        get("/private"),
        get("/private"),
        get("/fresh").header("authorization", "Bearer x"),
    ];
    let mut problems = Vec::new();
    let mut exchange = |requests: &[Req]| {
        for r in requests {
            let [e, l] = ports.map(|p| cache_view(&send(p, r)));
            problems.extend(diff(&e, &l).into_iter().map(|d| format!("{} {}: {d}", r.method, r.path)));
        }
    };
    exchange(&first);
    // `/stale` is stale after its max-age of 1 s counted in whole seconds.
    std::thread::sleep(std::time::Duration::from_millis(2_200));
    exchange(&[get("/stale"), get("/stale")]);
    assert!(problems.is_empty(), "Legate's cache differs from Envoy's:\n{}", problems.join("\n"));
    let [e, l] = origins.each_ref().map(cache_origin::CacheOrigin::seen);
    assert_same("requests that reached the origin", &e, &l);
    let count = |p: &str| e.iter().filter(|s| s.ends_with(&format!(" {p}"))).count();
    let counts: Vec<usize> = ["/fresh", "/age", "/stale", "/vary", "/nostore", "/private"].map(count).to_vec();
    assert_eq!(counts, vec![2, 1, 2, 2, 2, 2], "origin requests per path (Envoy): {e:?}");
    // A vary on an allowed header: Envoy 1.40 crashes on storing such a
    // response (a segfault in its simple cache), so only Legate is asked.
    let al = |v: &'static str| get("/vary-ok").header("accept-language", v);
    let bodies: Vec<String> = [al("en"), al("fr"), al("en"), al("fr")].iter().map(|r| send(ports[1], r).body).collect();
    assert_eq!(bodies, ["/vary-ok answer 1", "/vary-ok answer 2", "/vary-ok answer 1", "/vary-ok answer 2"]);
}

/// What the client saw of a cached exchange: status, body, every header
/// but `date` (and the upstream time, by presence); an `age` is compared
/// exactly from the origin's 10 s up, below it as under 10 s: the seconds
/// an entry spent in each cache depend on when each proxy was asked.
fn cache_view(r: &Resp) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("status".into(), r.status.to_string());
    m.insert("body".into(), r.body.clone());
    for (k, v) in &r.headers {
        let v = match k.as_str() {
            "date" => continue,
            "x-envoy-upstream-service-time" => "present".to_string(),
            "age" if v.parse::<u64>().is_ok_and(|a| a < 10) => "under 10".to_string(),
            _ => v.clone(),
        };
        m.entry(format!("resp:{k}")).and_modify(|o: &mut String| o.push_str(&format!(" | {v}"))).or_insert(v);
    }
    m
}
