//! `envoy.filters.http.grpc_web` in Envoy 1.40 and in Legate on the same
//! bootstrap, in front of a real gRPC server (tonic, over HTTP/2): gRPC-Web
//! and gRPC-Web-text requests framed by hand over HTTP/1.1, unary and
//! server-streaming, OK, failing with trailers and trailers-only; base64
//! split across body chunks; bad base64; local replies; a content type the
//! filter leaves alone; the CORS preflight a browser sends first; and the
//! `grpc-web` stats.

mod harness;

use base64::Engine as _;
use harness::*;
use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::time::Duration;

mod upstream {
    //! The gRPC server: service `test.Echo` with messages as raw bytes.
    use bytes::{Buf as _, BufMut as _, Bytes};
    use std::future::Future;
    use std::pin::Pin;
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
    use tonic::metadata::MetadataValue;
    use tonic::{Code, Request, Response, Status};

    #[derive(Default, Clone, Copy)]
    struct Raw;
    impl Codec for Raw {
        type Encode = Bytes;
        type Decode = Bytes;
        type Encoder = Raw;
        type Decoder = Raw;
        fn encoder(&mut self) -> Raw {
            Raw
        }
        fn decoder(&mut self) -> Raw {
            Raw
        }
    }
    impl Encoder for Raw {
        type Item = Bytes;
        type Error = Status;
        fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
            dst.put_slice(&item);
            Ok(())
        }
    }
    impl Decoder for Raw {
        type Item = Bytes;
        type Error = Status;
        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
            Ok(Some(src.copy_to_bytes(src.remaining())))
        }
    }

    type Reply<T> = Pin<Box<dyn Future<Output = Result<Response<T>, Status>> + Send>>;
    type Messages = Pin<Box<dyn tokio_stream::Stream<Item = Result<Bytes, Status>> + Send>>;

    /// `Unary` echoes the message (with a response header); `Fail` answers
    /// trailers-only NOT_FOUND with metadata; `Big` answers a 100 KiB message.
    struct Unary(&'static str);
    impl tonic::server::UnaryService<Bytes> for Unary {
        type Response = Bytes;
        type Future = Reply<Bytes>;
        fn call(&mut self, req: Request<Bytes>) -> Self::Future {
            let which = self.0;
            Box::pin(async move {
                let msg = req.into_inner();
                match which {
                    "Fail" => {
                        let mut s = Status::new(Code::NotFound, "no such thing: é");
                        s.metadata_mut().insert("x-why", MetadataValue::from_static("missing"));
                        Err(s)
                    }
                    "Big" => Ok(Response::new(Bytes::from(vec![b'z'; 100 * 1024]))),
                    _ => {
                        let mut out = b"echo:".to_vec();
                        out.extend_from_slice(&msg);
                        let mut r = Response::new(Bytes::from(out));
                        r.metadata_mut().insert("x-up", MetadataValue::from_static("1"));
                        Ok(r)
                    }
                }
            })
        }
    }

    /// `Count` streams three messages then ends OK; `Broken` streams two
    /// and ends RESOURCE_EXHAUSTED with metadata in the trailers.
    struct Streaming(&'static str);
    impl tonic::server::ServerStreamingService<Bytes> for Streaming {
        type Response = Bytes;
        type ResponseStream = Messages;
        type Future = Reply<Messages>;
        fn call(&mut self, req: Request<Bytes>) -> Self::Future {
            let broken = self.0 == "Broken";
            Box::pin(async move {
                let msg = req.into_inner();
                let n = if broken { 2 } else { 3 };
                let mut items: Vec<Result<Bytes, Status>> =
                    (0..n).map(|i| Ok(Bytes::from(format!("{i}:{}", String::from_utf8_lossy(&msg))))).collect();
                if broken {
                    let mut s = Status::new(Code::ResourceExhausted, "enough");
                    s.metadata_mut().insert("x-detail", MetadataValue::from_static("d"));
                    items.push(Err(s));
                }
                let stream: Messages = Box::pin(tokio_stream::iter(items));
                Ok(Response::new(stream))
            })
        }
    }

    async fn dispatch(req: http::Request<hyper::body::Incoming>) -> http::Response<tonic::body::Body> {
        let mut grpc = tonic::server::Grpc::new(Raw);
        match req.uri().path() {
            "/test.Echo/Unary" => grpc.unary(Unary("Unary"), req).await,
            "/test.Echo/Fail" => grpc.unary(Unary("Fail"), req).await,
            "/test.Echo/Big" => grpc.unary(Unary("Big"), req).await,
            "/test.Echo/Count" => grpc.server_streaming(Streaming("Count"), req).await,
            "/test.Echo/Broken" => grpc.server_streaming(Streaming("Broken"), req).await,
            _ => Status::unimplemented("no method").into_http(),
        }
    }

    /// Serves on a free loopback port from a thread of the test, for the
    /// test's whole run; returns the port.
    pub fn start() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                while let Ok((io, _)) = listener.accept().await {
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(|req| async {
                            Ok::<_, std::convert::Infallible>(dispatch(req).await)
                        });
                        let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                            .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
                            .await;
                    });
                }
            });
        });
        port
    }
}

/// One gRPC message as a frame: flag 0, length, bytes.
fn frame(msg: &[u8]) -> Vec<u8> {
    let mut f = vec![0];
    f.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    f.extend_from_slice(msg);
    f
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// A hand-written HTTP/1.1 request: its head's lines and its body, sent in
/// these pieces (more than one: chunked, a pause between pieces).
struct WebReq {
    head: Vec<(String, String)>,
    method: &'static str,
    path: String,
    pieces: Vec<Vec<u8>>,
}

fn web(path: &str, content_type: &str, accept: &str, body: Vec<u8>) -> WebReq {
    let mut head = vec![
        ("content-type".to_string(), content_type.to_string()),
        ("x-grpc-web".to_string(), "1".to_string()),
        ("x-user-agent".to_string(), "grpc-web-javascript/0.1".to_string()),
    ];
    if !accept.is_empty() {
        head.push(("accept".to_string(), accept.to_string()));
    }
    WebReq { head, method: "POST", path: path.to_string(), pieces: vec![body] }
}

impl WebReq {
    fn header(mut self, k: &str, v: &str) -> Self {
        self.head.push((k.to_string(), v.to_string()));
        self
    }
    /// The body sent in pieces of these sizes (the rest last).
    fn split(mut self, sizes: &[usize]) -> Self {
        let mut body = self.pieces.concat();
        let mut pieces = Vec::new();
        for &n in sizes {
            let rest = body.split_off(n.min(body.len()));
            pieces.push(body);
            body = rest;
        }
        pieces.push(body);
        self.pieces = pieces;
        self
    }
}

/// What came back: status, headers (lower-cased names, in order), the body
/// with its chunked encoding taken off.
#[derive(PartialEq)]
struct WebResp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl std::fmt::Debug for WebResp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let body = String::from_utf8_lossy(&self.body);
        write!(f, "{} {:?} body {body:?}", self.status, self.headers)
    }
}

impl WebResp {
    /// The body, the echo upstream's JSON without what differs per request
    /// (its id, the proxy's source port).
    fn compared_body(&self) -> Vec<u8> {
        if self.header("x-upstream").is_none() {
            return self.body.clone();
        }
        let mut v: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.remove("peer");
            if let Some(h) = o.get_mut("headers").and_then(|h| h.as_object_mut()) {
                for k in harness::diff::VOLATILE_UPSTREAM_HEADERS {
                    h.remove(*k);
                }
            }
        }
        v.to_string().into_bytes()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
    /// Headers that differ between two proxies by design left out.
    fn compared(&self) -> BTreeMap<String, String> {
        let skip = ["date", "server", "x-envoy-upstream-service-time"];
        self.headers.iter().filter(|(k, _)| !skip.contains(&k.as_str())).cloned().collect()
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") else { return out };
        let size = usize::from_str_radix(String::from_utf8_lossy(&raw[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        let start = eol + 2;
        out.extend_from_slice(&raw[start..(start + size).min(raw.len())]);
        raw = &raw[(start + size + 2).min(raw.len())..];
    }
}

fn send(port: u16, r: &WebReq) -> WebResp {
    let mut s = harness::raw::connect(port, Duration::from_secs(10));
    let chunked = r.pieces.len() > 1;
    let mut head = format!("{} {} HTTP/1.1\r\nhost: web.example\r\nconnection: close\r\n", r.method, r.path);
    for (k, v) in &r.head {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if chunked {
        head.push_str("transfer-encoding: chunked\r\n\r\n");
    } else if r.method == "POST" {
        head.push_str(&format!("content-length: {}\r\n\r\n", r.pieces[0].len()));
    } else {
        head.push_str("\r\n");
    }
    s.write_all(head.as_bytes()).expect("write head");
    for p in &r.pieces {
        if chunked {
            let mut c = format!("{:x}\r\n", p.len()).into_bytes();
            c.extend_from_slice(p);
            c.extend_from_slice(b"\r\n");
            s.write_all(&c).expect("write chunk");
            s.flush().expect("flush");
            std::thread::sleep(Duration::from_millis(50));
        } else {
            s.write_all(p).expect("write body");
        }
    }
    if chunked {
        s.write_all(b"0\r\n\r\n").expect("write end");
    }
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(raw.len());
    let (status, headers) = harness::http_client::parse_head(&String::from_utf8_lossy(&raw[..end]));
    let headers: Vec<(String, String)> = headers.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect();
    let body = raw.get(end + 4..).unwrap_or_default();
    let is_chunked = headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if is_chunked { dechunk(body) } else { body.to_vec() };
    WebResp { status, headers, body }
}

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
    let grpc = upstream::start();
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
