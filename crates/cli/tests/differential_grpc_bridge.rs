//! `envoy.filters.http.grpc_http1_bridge` in Envoy 1.40 and in Legate on
//! the same bootstrap, in front of a real gRPC server (tonic, over HTTP/2):
//! gRPC requests over HTTP/1.1 get their response whole, with the trailers'
//! status and message in the headers and 503 for a failure; trailers-only
//! answers and other content types pass; a local reply to a gRPC request
//! is a trailers-only gRPC answer; no per-method stats.

mod harness;

use harness::grpc_echo::{frame, send, WebReq, WebResp};
use harness::*;

fn template(grpc_port: u16) -> String {
    let filters = r#"          - name: envoy.filters.http.grpc_http1_bridge
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.grpc_http1_bridge.v3.Config }
"#;
    let vhosts = r#"            - name: all
              domains: ["*"]
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

fn grpc(path: &str, content_type: &str, body: Vec<u8>) -> WebReq {
    WebReq {
        head: vec![("content-type".into(), content_type.into()), ("te".into(), "trailers".into())],
        method: "POST",
        path: path.into(),
        pieces: vec![body],
    }
}

fn same(p: &Pair, what: &str, r: &WebReq) -> WebResp {
    let e = send(p.envoy, r);
    let l = send(p.legate, r);
    assert_eq!(e.status, l.status, "{what}: status\nenvoy:  {e:?}\nlegate: {l:?}");
    assert_eq!(e.compared(), l.compared(), "{what}: headers\nenvoy:  {e:?}\nlegate: {l:?}");
    assert_eq!(e.compared_body(), l.compared_body(), "{what}: body\nenvoy:  {e:?}\nlegate: {l:?}");
    e
}

#[test]
fn grpc_http1_bridge_matches_envoy() {
    let port = harness::grpc_echo::start();
    let p = start_pair("grpc-bridge", &template(port), &["a"]);
    let hello = frame(b"hello");
    let ct = "application/grpc";

    let r = same(&p, "unary", &grpc("/test.Echo/Unary", ct, hello.clone()));
    assert_eq!((r.status, r.header("grpc-status")), (200, Some("0")), "{r:?}");
    assert_eq!(r.header("content-length"), Some(frame(b"echo:hello").len().to_string().as_str()), "{r:?}");
    same(&p, "unary +proto", &grpc("/test.Echo/Unary", "application/grpc+proto", hello.clone()));
    let r = same(&p, "streamed, then failed", &grpc("/test.Echo/Broken", ct, hello.clone()));
    assert_eq!(
        (r.status, r.header("grpc-status"), r.header("grpc-message")),
        (503, Some("8"), Some("enough")),
        "{r:?}"
    );
    same(&p, "streamed", &grpc("/test.Echo/Count", ct, hello.clone()));
    let r = same(&p, "trailers-only", &grpc("/test.Echo/Fail", ct, hello.clone()));
    assert_eq!(r.header("grpc-status"), Some("5"), "{r:?}");
    same(&p, "unimplemented", &grpc("/test.Echo/Nope", ct, hello.clone()));
    same(&p, "big", &grpc("/test.Echo/Big", ct, hello.clone()));
    same(&p, "not gRPC", &grpc("/test.Echo/Teapot", ct, hello.clone()));
    same(&p, "dead upstream", &grpc("/dead.Svc/M", ct, hello.clone()));
    for other in ["application/json", "application/grpc-web", "application/grpcx"] {
        let r = same(&p, other, &grpc("/plain/x", other, b"{}".to_vec()));
        assert_eq!(r.status, 200, "{other}: {r:?}");
    }

    let prefix = "cluster.grpc.grpc.";
    let stats = |admin: u16| text_stats_prefixed(&admin_page(admin, "/stats"), prefix);
    let (e, l) = (stats(p.envoy_admin), stats(p.legate_admin));
    // Envoy 1.40's bridge charges no per-method stats (grpc_web does).
    assert_eq!(e, l, "{prefix}*");
}
