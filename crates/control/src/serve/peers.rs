//! Asking the other replicas for their part of the fleet's figures: `GET
//! /v1/internal/monitor?window=W` on each live replica (`discovery::replicas`)
//! at once, with the caller's own `Authorization` (tokens are shared through
//! the store, so the peer checks the same role). Each answers a
//! [`Shard`] of raw slots; the caller merges them.

use crate::discovery::replicas::Replica;
use crate::monitor::Shard;
use crate::state::controller::Controller;
use std::time::Duration;

/// A replica that has not answered within this is left out (and named).
const TIMEOUT: Duration = Duration::from_secs(3);
/// Largest answer read from a replica.
const MAX_BODY: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("{0}")]
    Get(#[from] crate::serve::http_get::GetError),
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
            let got = fetch(&peer, auth.as_deref(), window).await;
            (peer, got)
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
    let path = format!("/v1/internal/monitor?window={}ms", window.as_millis());
    let body = crate::serve::http_get::get(&peer.api, &path, auth, MAX_BODY, TIMEOUT).await?;
    Ok(serde_json::from_slice(&body)?)
}
