//! gRPC over HTTP/1.1 by hand, and a real gRPC server behind it: `start`
//! serves service `test.Echo` (tonic, messages as raw bytes, over HTTP/2 on
//! a loopback port, from a thread of the test) with unary and
//! server-streaming methods that answer OK, fail with trailers, or fail
//! trailers-only, and one that answers an HTTP error page; `send` writes a request framed by hand (in pieces when
//! asked) and reads the raw answer.

use base64::Engine as _;
use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::time::Duration;

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
        // Not gRPC at all: an HTTP error page.
        "/test.Echo/Teapot" => {
            let text = Bytes::from("short and stout\n100%");
            let mut r = http::Response::new(tonic::body::Body::new(http_body_util::Full::new(text)));
            *r.status_mut() = http::StatusCode::IM_A_TEAPOT;
            r.headers_mut().insert("content-type", http::HeaderValue::from_static("text/plain"));
            r
        }
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

/// One gRPC message as a frame: flag 0, length, bytes.
pub fn frame(msg: &[u8]) -> Vec<u8> {
    let mut f = vec![0];
    f.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    f.extend_from_slice(msg);
    f
}

pub fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// A hand-written HTTP/1.1 request: its head's lines and its body, sent in
/// these pieces (more than one: chunked, a pause between pieces).
pub struct WebReq {
    pub head: Vec<(String, String)>,
    pub method: &'static str,
    pub path: String,
    pub pieces: Vec<Vec<u8>>,
}

pub fn web(path: &str, content_type: &str, accept: &str, body: Vec<u8>) -> WebReq {
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
    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.head.push((k.to_string(), v.to_string()));
        self
    }
    /// The body sent in pieces of these sizes (the rest last).
    pub fn split(mut self, sizes: &[usize]) -> Self {
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
pub struct WebResp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
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
    pub fn compared_body(&self) -> Vec<u8> {
        if self.header("x-upstream").is_none() {
            return self.body.clone();
        }
        let mut v: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.remove("peer");
            if let Some(h) = o.get_mut("headers").and_then(|h| h.as_object_mut()) {
                for k in super::diff::VOLATILE_UPSTREAM_HEADERS {
                    h.remove(*k);
                }
            }
        }
        v.to_string().into_bytes()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
    /// Headers that differ between two proxies by design left out.
    pub fn compared(&self) -> BTreeMap<String, String> {
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

pub fn send(port: u16, r: &WebReq) -> WebResp {
    let mut s = super::raw::connect(port, Duration::from_secs(10));
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
    let (status, headers) = super::http_client::parse_head(&String::from_utf8_lossy(&raw[..end]));
    let headers: Vec<(String, String)> = headers.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect();
    let body = raw.get(end + 4..).unwrap_or_default();
    let is_chunked = headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if is_chunked { dechunk(body) } else { body.to_vec() };
    WebResp { status, headers, body }
}
