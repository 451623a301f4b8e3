//! One HTTP/1.1 `GET` to a peer (a proxy's admin page, another replica's
//! API): one connection, plain or TLS, a time limit, a bounded body. The
//! control plane's scrape fallback and its fleet queries share it.

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use rustls::pki_types::ServerName;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

#[derive(Debug, thiserror::Error)]
pub enum GetError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
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

/// One GET: to `addr` (`HOST:PORT`), over TLS with `tls` (the host is the
/// name the server's certificate must carry), with `headers`.
pub struct Get<'a> {
    pub addr: &'a str,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub path: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
}

impl Get<'_> {
    /// The body when the answer is 2xx within `timeout` and at most
    /// `max_body` bytes.
    pub async fn send(&self, max_body: usize, timeout: Duration) -> Result<Bytes, GetError> {
        let go = async {
            let tcp = tokio::net::TcpStream::connect(self.addr).await.map_err(GetError::Connect)?;
            match &self.tls {
                None => self.over(tcp, max_body).await,
                Some(config) => {
                    let host = host_of(self.addr);
                    let name =
                        ServerName::try_from(host.to_string()).map_err(|e| GetError::Tls(format!("{host}: {e}")))?;
                    let tls = tokio_rustls::TlsConnector::from(config.clone())
                        .connect(name, tcp)
                        .await
                        .map_err(|e| GetError::Tls(e.to_string()))?;
                    self.over(tls, max_body).await
                }
            }
        };
        tokio::time::timeout(timeout, go).await.map_err(|_| GetError::Timeout)?
    }

    async fn over<S>(&self, io: S, max_body: usize) -> Result<Bytes, GetError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io)).await?;
        tokio::spawn(conn);
        let mut req = hyper::Request::get(self.path).header(hyper::header::HOST, self.addr);
        for (name, value) in self.headers {
            req = req.header(*name, *value);
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
    }
}

/// `HOST` of `HOST:PORT` (`[::1]:80` gives `::1`).
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// `GET http://{addr}{path}`, with `authorization` when given.
pub async fn get(
    addr: &str,
    path: &str,
    authorization: Option<&str>,
    max_body: usize,
    timeout: Duration,
) -> Result<Bytes, GetError> {
    let auth = authorization.map(|a| ("authorization", a));
    let headers: Vec<(&str, &str)> = auth.into_iter().collect();
    Get { addr, tls: None, path, headers: &headers }.send(max_body, timeout).await
}

#[cfg(test)]
mod tests {
    #[test]
    fn hosts_of_addresses() {
        assert_eq!(super::host_of("127.0.0.1:9900"), "127.0.0.1");
        assert_eq!(super::host_of("[::1]:9900"), "::1");
        assert_eq!(super::host_of("cp-1.example:443"), "cp-1.example");
    }
}
