//! One plain HTTP/1.1 `GET` to a peer (a proxy's admin page, another
//! replica's API): one connection, a time limit, a bounded body. The
//! control plane's scrape fallback and its fleet queries share it.

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum GetError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    #[error("request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("status {0}")]
    Status(u16),
    #[error("timed out")]
    Timeout,
    #[error("body larger than {0} bytes")]
    TooLarge(usize),
}

/// `GET http://{addr}{path}` with `authorization` when given; the body when
/// the answer is 2xx within `timeout` and at most `max_body` bytes.
pub async fn get(
    addr: &str,
    path: &str,
    authorization: Option<&str>,
    max_body: usize,
    timeout: Duration,
) -> Result<Bytes, GetError> {
    let go = async {
        let tcp = tokio::net::TcpStream::connect(addr).await.map_err(GetError::Connect)?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let mut req = hyper::Request::get(path).header(hyper::header::HOST, addr);
        if let Some(a) = authorization {
            req = req.header(hyper::header::AUTHORIZATION, a);
        }
        let resp = send.send_request(req.body(Empty::<Bytes>::new())?).await?;
        if !resp.status().is_success() {
            return Err(GetError::Status(resp.status().as_u16()));
        }
        let body = http_body_util::Limited::new(resp.into_body(), max_body)
            .collect()
            .await
            .map_err(|_| GetError::TooLarge(max_body))?;
        Ok(body.to_bytes())
    };
    tokio::time::timeout(timeout, go).await.map_err(|_| GetError::Timeout)?
}
