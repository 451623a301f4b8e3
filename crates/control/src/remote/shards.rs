//! Asking the other replicas for their part of the fleet's figures: `GET
//! /v1/internal/monitor?window=W` on each live replica (`discovery::replicas`)
//! at once, over TLS when the replica's API is. An operator's query carries
//! the caller's own `Authorization` (tokens are shared through the store, so
//! the peer checks the same role); the control plane's own decisions
//! (releases, alerts) carry the peer secret every replica reads from the
//! store. Each answers a [`Shard`] of raw slots; the caller merges them.

use crate::discovery::replicas::{Replica, PEER_SECRET_HEADER};
use crate::monitor::{Monitor, Shard};
use crate::remote::http_get::{Get, GetError};
use crate::state::controller::Controller;
use std::time::Duration;

/// A replica that has not answered within this is left out (and named).
const TIMEOUT: Duration = Duration::from_secs(3);
/// Largest answer read from a replica.
const MAX_BODY: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("{0}")]
    Get(#[from] GetError),
    #[error("answer: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("its API is over TLS and this replica has no CA to verify it (--peer-ca)")]
    NoTls,
}

/// Who asks: an operator (with the `Authorization` they presented), or
/// the control plane itself.
#[derive(Clone, Copy)]
pub enum Caller<'a> {
    Operator(Option<&'a str>),
    Replica,
}

/// What to ask for: the window, and only these services (all when empty).
#[derive(Clone, Default)]
pub struct Ask {
    pub window: Duration,
    pub services: Vec<String>,
}

/// The shards of every other live replica, and the ids of those that did
/// not answer.
pub async fn shards(ctrl: &Controller, caller: Caller<'_>, ask: &Ask) -> (Vec<Shard>, Vec<String>) {
    let mut set = tokio::task::JoinSet::new();
    let headers: Vec<(&'static str, String)> = match caller {
        Caller::Operator(auth) => auth.map(|a| ("authorization", a.to_string())).into_iter().collect(),
        Caller::Replica => ctrl.replicas.secret().map(|s| (PEER_SECRET_HEADER, s.to_string())).into_iter().collect(),
    };
    for peer in ctrl.replicas.peers() {
        let (headers, ask, tls) = (headers.clone(), ask.clone(), ctrl.replicas.client_tls());
        set.spawn(async move {
            let got = fetch(&peer, tls, &headers, &ask).await;
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

/// The fleet's figures for the control plane's own decisions: this
/// replica's monitor merged with every other live replica's part; `None`
/// when this replica is alone (its own monitor is the fleet's).
pub async fn fleet_monitor(ctrl: &Controller, ask: &Ask) -> Option<Monitor> {
    if ctrl.replicas.peers().is_empty() {
        return None;
    }
    let (shards, _) = shards(ctrl, Caller::Replica, ask).await;
    Some(ctrl.monitor.merged(ask.window, &shards))
}

async fn fetch(
    peer: &Replica,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    headers: &[(&'static str, String)],
    ask: &Ask,
) -> Result<Shard, PeerError> {
    let path = path(ask);
    let tls = if peer.tls { Some(tls.ok_or(PeerError::NoTls)?) } else { None };
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let body = Get { addr: &peer.api, tls, path: &path, headers: &headers }.send(MAX_BODY, TIMEOUT).await?;
    Ok(serde_json::from_slice(&body)?)
}

fn path(ask: &Ask) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("window", &format!("{}ms", ask.window.as_millis()));
    for s in &ask.services {
        query.append_pair("service", s);
    }
    format!("/v1/internal/monitor?{}", query.finish())
}
