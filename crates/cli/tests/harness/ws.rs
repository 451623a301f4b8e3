//! Clients for upgraded streams: a WebSocket session over HTTP/1.1 and over
//! an HTTP/2 stream (extended CONNECT), HTTP/2 CONNECT tunnels, and what of
//! the request the echo upstream saw is compared.

use super::http_client::block_on;
use super::process::addr;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// An HTTP/2 connection (prior knowledge) to `port`, driven on the runtime.
async fn h2_handshake(
    port: u16,
) -> Result<hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>, String> {
    let tcp = tokio::net::TcpStream::connect(addr(port)).await.map_err(|e| e.to_string())?;
    let (sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tcp))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(sender)
}

/// A WebSocket session: the handshake's answer, the upstream's first
/// message (the request it saw) and the echoes of `messages`.
pub struct WsOutcome {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub seen: Value,
    pub echoes: Vec<String>,
}

pub fn ws_session(port: u16, path: &str, messages: &[&str]) -> WsOutcome {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr(port)).await.expect("connect");
        // A fixed key, so that both proxies see the same request.
        let req = http::Request::builder()
            .uri(format!("ws://example.com{path}"))
            .header("host", "example.com")
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .body(())
            .expect("request");
        let (mut ws, resp) = tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::client_async(req, tcp))
            .await
            .expect("handshake in time")
            .unwrap_or_else(|e| panic!("WebSocket handshake through {port}: {e}"));
        let headers = resp
            .headers()
            .iter()
            .filter(|(k, _)| k.as_str() != "date")
            .map(|(k, v)| {
                let v = if k == "x-envoy-upstream-service-time" {
                    "(present)".to_string()
                } else {
                    v.to_str().unwrap_or_default().to_ascii_lowercase()
                };
                (k.as_str().to_string(), v)
            })
            .collect();
        let seen: Value =
            serde_json::from_str(&next_message(&mut ws, true).await).expect("the upstream's first message is JSON");
        let mut echoes = Vec::new();
        for m in messages {
            let msg = match m.strip_prefix("binary:") {
                Some(b) => Message::binary(b.as_bytes().to_vec()),
                None => Message::text(m.to_string()),
            };
            ws.send(msg).await.expect("send");
            echoes.push(next_message(&mut ws, true).await);
        }
        let _ = ws.close(None).await;
        // The close handshake's answer, then the end of the stream.
        let _ = tokio::time::timeout(Duration::from_secs(2), async { while ws.next().await.is_some() {} }).await;
        WsOutcome { status: resp.status().as_u16(), headers, seen, echoes }
    })
}

/// The next text message (or, when `binary` is set, binary message as
/// `binary:...`), within 5 s.
async fn next_message<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    ws: &mut tokio_tungstenite::WebSocketStream<S>,
    binary: bool,
) -> String {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => t.to_string(),
        Ok(Some(Ok(Message::Binary(b)))) if binary => format!("binary:{}", String::from_utf8_lossy(&b)),
        other if binary => panic!("expected a message, got {other:?}"),
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// What of the request the upstream saw is compared: every header, with
/// the request id by form only.
pub fn upstream_view(seen: &Value) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for k in ["method", "uri", "version"] {
        m.insert(k.to_string(), seen[k].to_string());
    }
    if let Some(h) = seen["headers"].as_object() {
        for (k, v) in h {
            let v = v.as_str().unwrap_or_default();
            if k == "x-request-id" {
                m.insert(format!("header:{k}(uuid)"), (v.len() == 36).to_string());
            } else {
                m.insert(format!("header:{k}"), v.to_string());
            }
        }
    }
    m
}

/// HTTP/2 CONNECT (prior knowledge): the status, and the bytes the tunnel
/// echoes back (or the error).
pub fn h2_connect(port: u16, target: &str, payload: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    block_on(async {
        let work = async {
            let mut sender = h2_handshake(port).await?;
            let req = http::Request::builder()
                .method("CONNECT")
                .uri(target)
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .map_err(|e| e.to_string())?;
            let mut resp = sender.send_request(req).await.map_err(|e| format!("request: {e}"))?;
            let status = resp.status().as_u16();
            if status != 200 {
                return Ok(format!("status {status}"));
            }
            let up = hyper::upgrade::on(&mut resp).await.map_err(|e| format!("upgrade: {e}"))?;
            let mut io = hyper_util::rt::TokioIo::new(up);
            io.write_all(payload).await.map_err(|e| e.to_string())?;
            let mut got = vec![0u8; payload.len()];
            io.read_exact(&mut got).await.map_err(|e| format!("read: {e}"))?;
            Ok::<_, String>(format!("status {status}, echoed {:?}", String::from_utf8_lossy(&got)))
        };
        match tokio::time::timeout(Duration::from_secs(10), work).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => format!("error: {e}"),
            Err(_) => "timed out".into(),
        }
    })
}

/// WebSocket over an HTTP/2 stream (extended CONNECT, RFC 8441): the
/// status, the upstream's view of the request and the echoes.
pub fn h2_websocket(port: u16, path: &str, messages: &[&str]) -> (u16, BTreeMap<String, String>, Vec<String>) {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::{protocol::Role, Message};
    block_on(async {
        let mut sender = h2_handshake(port).await.unwrap_or_else(|e| panic!("h2 to {port}: {e}"));
        let mut req = http::Request::builder()
            .method("CONNECT")
            .uri(format!("http://example.com{path}"))
            .header("sec-websocket-version", "13")
            // RFC 8441 has no key, but the HTTP/1.1 upstream needs one.
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .expect("request");
        req.extensions_mut().insert(hyper::ext::Protocol::from_static("websocket"));
        let mut resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
            .await
            .expect("in time")
            .unwrap_or_else(|e| panic!("extended CONNECT through {port}: {e}"));
        let status = resp.status().as_u16();
        if status != 200 {
            return (status, BTreeMap::new(), Vec::new());
        }
        let up = hyper::upgrade::on(&mut resp).await.expect("upgrade");
        let mut ws =
            tokio_tungstenite::WebSocketStream::from_raw_socket(hyper_util::rt::TokioIo::new(up), Role::Client, None)
                .await;
        let seen: Value = serde_json::from_str(&next_message(&mut ws, false).await).expect("JSON first message");
        let mut echoes = Vec::new();
        for m in messages {
            ws.send(Message::text(m.to_string())).await.expect("send");
            echoes.push(next_message(&mut ws, false).await);
        }
        let _ = ws.close(None).await;
        (status, upstream_view(&seen), echoes)
    })
}
