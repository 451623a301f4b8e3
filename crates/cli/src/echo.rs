//! A sample upstream for the demo, the tests and the benchmark. It answers
//! every request with 200 and a JSON echo of what it received, and names
//! itself in `x-upstream`. `/status/NNN` answers NNN; `/delay/MS` waits first; `/slow-body/MS`
//! sends its headers at once and the end of its body MS later (anywhere in the path).
//! `/with-body` adds the request body to the echo; `/zeros/N` answers N zero
//! bytes instead; `/encode/<gzip|br|zstd>` compresses the answer with that
//! coding and says so in `content-encoding`.
//!
//! Upgrades: a WebSocket handshake (`Upgrade: websocket`) is accepted with
//! a real 101; the upstream then sends one text message, the JSON of the
//! request it received (as the HTTP echo's body), and echoes every text and
//! binary message back until the client closes. A CONNECT is answered 200
//! and its bytes are echoed raw. `--tcp` makes a plain TCP echo instead (a
//! CONNECT target). tokio-tungstenite does the WebSocket framing: the tests
//! need a peer that speaks the protocol, not one that only copies bytes.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

#[derive(clap::Args, Clone)]
pub struct EchoArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,
    /// The name it reports in `x-upstream` and in the body.
    #[arg(long, default_value = "echo")]
    pub name: String,
    /// Answer with a fixed small body instead of the JSON echo (for benchmarks).
    #[arg(long)]
    pub plain: bool,
    /// Answer every request with this status (a failing upstream for tests).
    #[arg(long)]
    pub status: Option<u16>,
    /// Wait this long before every answer (a slow upstream for tests).
    #[arg(long)]
    pub delay_ms: Option<u64>,
    /// Print each request received as one JSON line on stdout (what it saw).
    #[arg(long)]
    pub log_requests: bool,
    /// What `grpc.health.v1.Health/Check` answers: SERVING or NOT_SERVING.
    #[arg(long, default_value = "SERVING")]
    pub grpc_health: String,
    /// Speak HTTP/2 only and refuse every stream (RST_STREAM REFUSED_STREAM):
    /// an overloaded upstream, for `retry_on: refused-stream` tests.
    #[arg(long)]
    pub refuse_h2_streams: bool,
    /// Echo raw TCP bytes instead of speaking HTTP.
    #[arg(long)]
    pub tcp: bool,
}

pub fn run(args: EchoArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen).await?;
        if args.tcp {
            serve_tcp(listener).await;
            return Ok(());
        }
        serve(listener, Arc::new(args)).await;
        Ok(())
    })
}

pub async fn serve(listener: tokio::net::TcpListener, args: Arc<EchoArgs>) {
    if args.refuse_h2_streams {
        return refuse_streams(listener).await;
    }
    loop {
        let Ok((stream, peer)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        let args = args.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: hyper::Request<Incoming>| {
                let args = args.clone();
                async move {
                    if req.uri().path() == "/grpc.health.v1.Health/Check" {
                        return Ok::<_, Infallible>(grpc_health(&args));
                    }
                    if let Some(ms) = slow_body_ms(req.uri().path()) {
                        return Ok::<_, Infallible>(slow_body(&args, ms));
                    }
                    if req.method() == http::Method::CONNECT {
                        return Ok(connect_echo(req));
                    }
                    if req.headers().get("upgrade").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket")) {
                        return Ok(websocket_echo(&args, peer, req));
                    }
                    Ok::<_, Infallible>(respond(&args, peer, req).await.map(|b| b.map_err(|e| match e {}).boxed()))
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await;
        });
    }
}

type EchoBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// Echoes the bytes of each accepted connection until it closes.
async fn serve_tcp(listener: tokio::net::TcpListener) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        tokio::spawn(async move {
            let (mut r, mut w) = stream.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
    }
}

fn empty() -> EchoBody {
    Full::new(Bytes::new()).map_err(|e| match e {}).boxed()
}

/// CONNECT: 200, then the tunnel's bytes come back as they are.
fn connect_echo(req: hyper::Request<Incoming>) -> hyper::Response<EchoBody> {
    tokio::spawn(async move {
        if let Ok(up) = hyper::upgrade::on(req).await {
            let (mut r, mut w) = tokio::io::split(TokioIo::new(up));
            let _ = tokio::io::copy(&mut r, &mut w).await;
        }
    });
    hyper::Response::new(empty())
}

/// A WebSocket handshake answered with 101, then the echo described above.
fn websocket_echo(args: &EchoArgs, peer: SocketAddr, req: hyper::Request<Incoming>) -> hyper::Response<EchoBody> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{handshake::derive_accept_key, protocol::Role, Message};
    let Some(key) = req.headers().get("sec-websocket-key") else {
        let mut r = hyper::Response::new(empty());
        *r.status_mut() = http::StatusCode::BAD_REQUEST;
        return r;
    };
    let accept = derive_accept_key(key.as_bytes());
    let headers = headers_json(req.headers());
    let seen = serde_json::json!({
        "upstream": args.name,
        "method": req.method().to_string(),
        "uri": req.uri().to_string(),
        "version": format!("{:?}", req.version()),
        "peer": peer.to_string(),
        "headers": headers,
    })
    .to_string();
    tokio::spawn(async move {
        let Ok(up) = hyper::upgrade::on(req).await else { return };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(TokioIo::new(up), Role::Server, None).await;
        if ws.send(Message::text(seen)).await.is_err() {
            return;
        }
        while let Some(Ok(msg)) = ws.next().await {
            let echo = match msg {
                Message::Text(_) | Message::Binary(_) => msg,
                Message::Close(_) => break,
                _ => continue,
            };
            if ws.send(echo).await.is_err() {
                break;
            }
        }
    });
    let mut r = hyper::Response::new(empty());
    *r.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert("upgrade", http::HeaderValue::from_static("websocket"));
    h.insert("connection", http::HeaderValue::from_static("Upgrade"));
    if let Ok(v) = http::HeaderValue::from_str(&accept) {
        h.insert("sec-websocket-accept", v);
    }
    if let Ok(v) = http::HeaderValue::from_str(&args.name) {
        h.insert("x-upstream", v);
    }
    r
}

/// A gRPC health answer: one HealthCheckResponse message (field 1, status:
/// 1 SERVING or 2 NOT_SERVING) in gRPC framing, then `grpc-status: 0`.
fn grpc_health(args: &EchoArgs) -> hyper::Response<EchoBody> {
    let status: u8 = if args.grpc_health.eq_ignore_ascii_case("SERVING") { 1 } else { 2 };
    let message = [0x08, status];
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let frames: Vec<Result<hyper::body::Frame<Bytes>, Infallible>> =
        vec![Ok(hyper::body::Frame::data(Bytes::from(framed))), Ok(hyper::body::Frame::trailers(trailers))];
    let body = http_body_util::StreamBody::new(tokio_stream::iter(frames)).boxed();
    let mut resp = hyper::Response::new(body);
    resp.headers_mut().insert("content-type", http::HeaderValue::from_static("application/grpc"));
    resp
}

/// `/slow-body/MS` anywhere in the path: the answer's headers and a first
/// chunk at once, the rest of the body MS milliseconds later.
fn slow_body_ms(path: &str) -> Option<u64> {
    let mut parts = path.split('/');
    parts.by_ref().find(|p| *p == "slow-body")?;
    parts.next()?.parse().ok()
}

fn slow_body(args: &EchoArgs, ms: u64) -> hyper::Response<EchoBody> {
    let wait = std::time::Duration::from_millis(ms.min(60_000));
    let chunks = tokio_stream::StreamExt::then(
        tokio_stream::iter([("first ", false), ("last\n", true)]),
        move |(c, late)| async move {
            if late {
                tokio::time::sleep(wait).await;
            }
            Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from_static(c.as_bytes())))
        },
    );
    let mut resp = hyper::Response::new(http_body_util::StreamBody::new(chunks).boxed());
    if let Ok(v) = http::HeaderValue::from_str(&args.name) {
        resp.headers_mut().insert("x-upstream", v);
    }
    resp
}

async fn respond(args: &EchoArgs, peer: SocketAddr, req: hyper::Request<Incoming>) -> hyper::Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    // `/status/NNN` and `/delay/MS` may sit anywhere in the path (behind a
    // route's own prefix such as `/api/status/503`).
    let segment_after = |name: &str| -> Option<u64> {
        let mut parts = path.split('/');
        parts.by_ref().find(|p| *p == name)?;
        parts.next()?.parse().ok()
    };
    let mut status = args.status.unwrap_or(200);
    if let Some(code) = segment_after("status").and_then(|c| u16::try_from(c).ok()) {
        status = code;
    }
    if let Some(ms) = segment_after("delay").or(args.delay_ms) {
        tokio::time::sleep(std::time::Duration::from_millis(ms.min(60_000))).await;
    }
    let body = if args.plain {
        Bytes::from_static(b"hello from upstream\n")
    } else {
        let headers = headers_json(req.headers());
        let method = req.method().to_string();
        let uri = req.uri().to_string();
        let version = format!("{:?}", req.version());
        let received = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let v = serde_json::json!({
            "upstream": args.name,
            "method": method,
            "uri": uri,
            "version": version,
            "peer": peer.to_string(),
            "headers": headers,
            "body_bytes": received.len(),
        });
        let mut v = v;
        if path.split('/').any(|p| p == "with-body") {
            v["body"] = serde_json::Value::String(String::from_utf8_lossy(&received).into_owned());
        }
        if args.log_requests {
            println!("{v}");
        }
        Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
    };
    let body = match segment_after("zeros") {
        Some(n) => Bytes::from(vec![0u8; n.min(64 << 20) as usize]),
        None => body,
    };
    let coding = {
        let mut parts = path.split('/');
        parts.by_ref().find(|p| *p == "encode").and(parts.next()).map(str::to_owned)
    };
    let (body, coding) = match coding.as_deref().and_then(|c| encode(c, &body).map(|b| (b, c))) {
        Some((b, c)) => (Bytes::from(b), Some(c)),
        None => (body, None),
    };
    let mut resp = hyper::Response::new(Full::new(body));
    if let Some(c) = coding.and_then(|c| http::HeaderValue::from_str(c).ok()) {
        resp.headers_mut().insert("content-encoding", c);
    }
    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    resp.headers_mut().insert("content-type", http::HeaderValue::from_static("application/json"));
    if let Ok(v) = http::HeaderValue::from_str(&args.name) {
        resp.headers_mut().insert("x-upstream", v);
    }
    resp
}

/// `body` compressed with `coding` (`gzip`, `br` or `zstd`), for
/// `/encode/<coding>`.
fn encode(coding: &str, body: &[u8]) -> Option<Vec<u8>> {
    use std::io::Write as _;
    match coding {
        "gzip" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(body).ok()?;
            e.finish().ok()
        }
        "br" => {
            let mut w = brotli::CompressorWriter::new(Vec::new(), 4096, 5, 22);
            w.write_all(body).ok()?;
            Some(w.into_inner())
        }
        "zstd" => zstd::stream::encode_all(body, 3).ok(),
        _ => None,
    }
}

/// An HTTP/2 server that refuses every stream it is sent, and counts them
/// in its `x-upstream`-less way: one line on stdout per refusal.
async fn refuse_streams(listener: tokio::net::TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        tokio::spawn(async move {
            let Ok(mut conn) = h2::server::handshake(stream).await else { return };
            while let Some(Ok((_req, mut respond))) = conn.accept().await {
                respond.send_reset(h2::Reason::REFUSED_STREAM);
                println!("refused");
            }
        });
    }
}

/// A request's headers as the JSON object the echo answers with.
fn headers_json(headers: &http::HeaderMap) -> serde_json::Map<String, serde_json::Value> {
    headers
        .iter()
        .map(|(k, v)| {
            (k.as_str().to_string(), serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()))
        })
        .collect()
}
