//! `envoy.filters.http.grpc_web` in Envoy 1.40 and in Legate on the same
//! bootstrap, in front of a real gRPC server (tonic, over HTTP/2): gRPC-Web
//! and gRPC-Web-text requests framed by hand over HTTP/1.1, unary and
//! server-streaming, OK, failing with trailers and trailers-only; base64
//! split across body chunks; bad base64; local replies; a content type the
//! filter leaves alone; the CORS preflight a browser sends first; and the
//! `grpc-web` stats.

mod harness;

use base64::Engine as _;
use harness::grpc_echo::{b64, frame, send, web, WebReq, WebResp};
use harness::*;

/// The body's frames: (flag, payload), base64 decoded first for text.
fn frames(r: &WebResp, text: bool) -> Vec<(u8, Vec<u8>)> {
    let bytes = if text { decode_text(&r.body) } else { r.body.clone() };
    let mut out = Vec::new();
    let mut rest = &bytes[..];
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        out.push((rest[0], rest[5..(5 + len).min(rest.len())].to_vec()));
        rest = &rest[(5 + len).min(rest.len())..];
    }
    out
}

/// Concatenated base64 pieces, each padded on its own.
fn decode_text(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < text.len() {
        // A group of four that ends in padding closes a piece.
        if (i - start) % 4 == 3 && (text[i] == b'=') {
            let piece = &text[start..=i];
            out.extend(base64::engine::general_purpose::STANDARD.decode(piece).unwrap_or_default());
            start = i + 1;
        }
        i += 1;
    }
    if start < text.len() {
        out.extend(base64::engine::general_purpose::STANDARD.decode(&text[start..]).unwrap_or_default());
    }
    out
}

fn template(grpc_port: u16) -> String {
    let filters = r#"          - name: envoy.filters.http.cors
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors }
          - name: envoy.filters.http.grpc_web
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.grpc_web.v3.GrpcWeb }
"#;
    let vhosts = r#"            - name: all
              domains: ["*"]
              typed_per_filter_config:
                envoy.filters.http.cors:
                  "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
                  allow_origin_string_match: [{ prefix: "https://web." }]
                  allow_methods: "GET, PUT, DELETE, POST, OPTIONS"
                  allow_headers: "keep-alive,user-agent,cache-control,content-type,content-transfer-encoding,x-accept-content-transfer-encoding,x-accept-response-streaming,x-user-agent,x-grpc-web,grpc-timeout"
                  expose_headers: "grpc-status,grpc-message"
                  max_age: "1728000"
              routes:
              - { match: { prefix: "/plain" }, route: { cluster: echo } }
              - { match: { prefix: "/dead." }, route: { cluster: dead } }
              - { match: { prefix: "/" }, route: { cluster: grpc, timeout: 5s } }
"#;
    let clusters = format!(
        "{}{}{}",
        harness::template::echo_cluster(),
        harness::template::cluster("dead", &["{CLOSED}"]),
        harness::template::cluster_with(
            "grpc",
            &[&grpc_port.to_string()],
            &format!("{}, ", harness::template::H2_OPTIONS)
        ),
    );
    let t = harness::template::bootstrap("", "", vhosts, &clusters);
    harness::template::with_filters(t, &format!("          http_filters:\n{filters}{}", harness::template::ROUTER))
}

const WEB: &str = "application/grpc-web";
const WEB_PROTO: &str = "application/grpc-web+proto";
const TEXT: &str = "application/grpc-web-text";
const TEXT_PROTO: &str = "application/grpc-web-text+proto";

/// Sends `r` to both and compares status, headers and the exact body bytes.
fn same(p: &Pair, what: &str, r: &WebReq) -> WebResp {
    let e = send(p.envoy, r);
    let l = send(p.legate, r);
    assert_eq!(e.status, l.status, "{what}: status\nenvoy:  {e:?}\nlegate: {l:?}");
    assert_eq!(e.compared(), l.compared(), "{what}: headers\nenvoy:  {e:?}\nlegate: {l:?}");
    assert_eq!(e.compared_body(), l.compared_body(), "{what}: body\nenvoy:  {e:?}\nlegate: {l:?}");
    e
}

#[test]
fn grpc_web_matches_envoy() {
    let grpc = harness::grpc_echo::start();
    let p = start_pair("grpc-web", &template(grpc), &["a"]);
    let hello = frame(b"hello");

    // Binary unary OK: the trailers become the last frame.
    let r = same(&p, "binary unary", &web("/test.Echo/Unary", WEB, "", hello.clone()));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some(WEB_PROTO), "{r:?}");
    assert_eq!(r.header("x-up"), Some("1"), "{r:?}");
    let f = frames(&r, false);
    assert_eq!(f.first(), Some(&(0u8, b"echo:hello".to_vec())), "{r:?}");
    let trailer = f.last().map(|(flag, t)| (*flag, String::from_utf8_lossy(t).to_string()));
    assert!(trailer.as_ref().is_some_and(|(flag, t)| *flag == 0x80 && t.contains("grpc-status:0\r\n")), "{r:?}");
    same(&p, "binary+proto unary", &web("/test.Echo/Unary", WEB_PROTO, "", hello.clone()));

    // Trailers-only failure: grpc-status in the headers, no body.
    let r = same(&p, "trailers-only", &web("/test.Echo/Fail", WEB, "", hello.clone()));
    assert_eq!(r.header("grpc-status"), Some("5"), "{r:?}");
    assert_eq!(r.header("x-why"), Some("missing"), "{r:?}");
    assert!(r.body.is_empty(), "{r:?}");
    same(&p, "trailers-only text", &web("/test.Echo/Fail", TEXT, TEXT, b64(&hello).into_bytes()));

    // Server streaming, OK and failing after messages with trailers.
    let r = same(&p, "stream", &web("/test.Echo/Count", WEB, "", hello.clone()));
    assert_eq!(frames(&r, false).len(), 4, "{r:?}");
    let r = same(&p, "stream broken", &web("/test.Echo/Broken", WEB, "", hello.clone()));
    let t = frames(&r, false).last().map(|(_, t)| String::from_utf8_lossy(t).to_string()).unwrap_or_default();
    assert!(t.contains("grpc-status:8\r\n") && t.contains("x-detail:d\r\n"), "{t:?}");

    // Text: the request decoded, the response in base64 frame by frame.
    let text = b64(&hello).into_bytes();
    for (ct, accept) in [(TEXT, TEXT), (TEXT_PROTO, TEXT_PROTO), (TEXT, ""), (WEB, TEXT)] {
        let body = if ct == WEB { hello.clone() } else { text.clone() };
        let what = format!("text {ct} accept {accept}");
        let r = same(&p, &what, &web("/test.Echo/Broken", ct, accept, body.clone()));
        let text_out = !accept.is_empty();
        assert_eq!(r.header("content-type"), Some(if text_out { TEXT_PROTO } else { WEB_PROTO }), "{what}: {r:?}");
        let f = frames(&r, text_out);
        assert_eq!(f.first().map(|(_, m)| m.as_slice()), Some(&b"0:hello"[..]), "{what}: {r:?}");
        same(&p, &what, &web("/test.Echo/Unary", ct, accept, body));
    }
    // A large message arrives upstream in several DATA frames: each whole
    // frame is encoded once it is complete.
    let r = same(&p, "big text", &web("/test.Echo/Big", TEXT, TEXT, text.clone()));
    assert_eq!(frames(&r, true).first().map(|(_, m)| m.len()), Some(100 * 1024), "{:?}", r.status);

    // Base64 split across body chunks, off the four-character groups; two
    // messages in one request body.
    let two = b64(&[frame(b"first"), frame(b"second")].concat()).into_bytes();
    for sizes in [&[1usize, 2, 3][..], &[5, 1], &[7, 4, 9]] {
        let r = web("/test.Echo/Unary", TEXT, TEXT, text.clone()).split(sizes);
        same(&p, &format!("split {sizes:?}"), &r);
        let r = web("/test.Echo/Count", TEXT, "", two.clone()).split(sizes);
        same(&p, &format!("split two {sizes:?}"), &r);
    }
    // Bad base64, by size and by data: Envoy's local reply, as gRPC.
    for (what, body) in [("bad size", &b"AAAAAAVoZWxsbw="[..]), ("bad data", &b"AAAA!AVoZWxsbw=="[..])] {
        let r = same(&p, what, &web("/test.Echo/Unary", TEXT, TEXT, body.to_vec()));
        assert_eq!(r.header("grpc-status"), Some("13"), "{what}: {r:?}");
    }
    // Local replies: no upstream, no such route method.
    let r = same(&p, "dead upstream", &web("/dead.Svc/M", WEB, "", hello.clone()));
    assert_eq!(r.header("grpc-status"), Some("14"), "{r:?}");
    same(&p, "dead upstream text", &web("/dead.Svc/M", TEXT, TEXT, text.clone()));
    same(&p, "unimplemented", &web("/test.Echo/Nope", WEB, "", hello.clone()));
    // An upstream answer that is not gRPC: read whole, its text the message.
    let r = same(&p, "not gRPC", &web("/test.Echo/Teapot", TEXT, TEXT, text.clone()));
    assert_eq!((r.status, r.header("grpc-status")), (418, Some("2")), "{r:?}");
    assert_eq!(r.header("grpc-message"), Some("short and stout%0A100%25"), "{r:?}");

    // Content types the filter leaves alone go through as they are.
    for ct in ["application/json", "application/grpc-web; charset=utf-8", "application/grpc-web-json"] {
        let r = same(&p, ct, &web("/plain/x", ct, "", b"{}".to_vec()));
        assert_eq!(r.status, 200, "{ct}: {r:?}");
    }

    // CORS: the browser's preflight, then the call from that origin.
    let preflight = WebReq {
        head: vec![
            ("origin".into(), "https://web.example".into()),
            ("access-control-request-method".into(), "POST".into()),
            ("access-control-request-headers".into(), "content-type,x-grpc-web,x-user-agent".into()),
        ],
        method: "OPTIONS",
        path: "/test.Echo/Unary".into(),
        pieces: vec![Vec::new()],
    };
    let r = same(&p, "preflight", &preflight);
    assert_eq!(r.header("access-control-allow-origin"), Some("https://web.example"), "{r:?}");
    let call = web("/test.Echo/Unary", TEXT, TEXT, text.clone()).header("origin", "https://web.example");
    let r = same(&p, "cors call", &call);
    assert_eq!(r.header("access-control-expose-headers"), Some("grpc-status,grpc-message"), "{r:?}");

    // The grpc-web stats of the cluster, per service and method.
    let prefix = "cluster.grpc.grpc-web.";
    let stats = |admin: u16| text_stats_prefixed(&admin_page(admin, "/stats"), prefix);
    let (e, l) = (stats(p.envoy_admin), stats(p.legate_admin));
    assert!(e.get("test.Echo.Broken.failure").is_some_and(|n| *n > 0), "{e:?}");
    assert_eq!(e, l, "{prefix}*");
}
