//! Asking the other replicas for their part of the fleet's figures: `GET
//! /v1/internal/monitor?window=W` on each live replica (`discovery::replicas`)
//! at once, with the caller's own `Authorization` (tokens are shared through
//! the store, so the peer checks the same role). Each answers a
//! [`Shard`] of raw slots; the caller merges them.

use crate::discovery::replicas::Replica;
use crate::monitor::Shard;
use crate::state::controller::Controller;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use std::time::Duration;

/// A replica that has not answered within this is left out (and named).
const TIMEOUT: Duration = Duration::from_secs(3);
/// Largest answer read from a replica.
const MAX_BODY: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
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
    #[error("answer larger than {MAX_BODY} bytes")]
    TooLarge,
    #[error("answer: {0}")]
    Decode(#[from] serde_json::Error),
}

/// The shards of every other live replica over `window`, and the ids of
/// those that did not answer.
pub async fn shards(ctrl: &Controller, auth: Option<&str>, window: Duration) -> (Vec<Shard>, Vec<String>) {
    let mut set = tokio::task::JoinSet::new();
    for peer in ctrl.replicas.peers() {
        let auth = auth.map(str::to_string);
        set.spawn(async move {
            let got = tokio::time::timeout(TIMEOUT, fetch(&peer, auth.as_deref(), window)).await;
            (peer, got.unwrap_or(Err(PeerError::Timeout)))
        });
    }
    let (mut shards, mut missing) = (Vec::new(), Vec::new());
    while let Some(done) = set.join_next().await {
        match done {
            Ok((_, Ok(s))) => shards.push(s),
            Ok((peer, Err(e))) => {
                tracing::warn!(replica = %peer.id, api = %peer.api, "fleet query: replica left out: {e}");
                missing.push(peer.id);
            }
            Err(e) => tracing::warn!("fleet query task: {e}"),
        }
    }
    missing.sort();
    (shards, missing)
}

async fn fetch(peer: &Replica, auth: Option<&str>, window: Duration) -> Result<Shard, PeerError> {
    let tcp = tokio::net::TcpStream::connect(&peer.api).await.map_err(PeerError::Connect)?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let path = format!("/v1/internal/monitor?window={}ms", window.as_millis());
    let mut req = hyper::Request::get(path).header(hyper::header::HOST, &peer.api);
    if let Some(a) = auth {
        req = req.header(hyper::header::AUTHORIZATION, a);
    }
    let resp = send.send_request(req.body(Empty::<Bytes>::new())?).await?;
    if !resp.status().is_success() {
        return Err(PeerError::Status(resp.status().as_u16()));
    }
    let body = http_body_util::Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|_| PeerError::TooLarge)?
        .to_bytes();
    Ok(serde_json::from_slice(&body)?)
}
