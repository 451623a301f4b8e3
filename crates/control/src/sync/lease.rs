//! An etcd lease this replica keeps alive (the leader key, a replica's
//! report, its API address), and the time limit every etcd call of the sync
//! tasks runs under.

use crate::store::etcd::{etcd_err, EtcdClient};
use crate::store::StoreError;
use etcdv3client::pb;
use std::time::Duration;
use tokio_stream::{Stream, StreamExt};

/// An etcd call that takes longer is treated as a lost connection.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// Runs an etcd call under [`CALL_TIMEOUT`].
pub async fn timed<T, E: std::fmt::Display>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(r) => r.map_err(etcd_err),
        Err(_) => Err(etcd_err(format!("{what}: no answer within {CALL_TIMEOUT:?}"))),
    }
}

/// Grants a lease of `ttl` seconds: its id (not yet kept alive).
pub async fn grant(client: &mut EtcdClient, ttl: i64) -> Result<i64, StoreError> {
    Ok(timed("lease grant", client.lease.lease_grant(pb::LeaseGrantRequest { ttl, id: 0 })).await?.id)
}

/// A granted lease's keep-alive stream: one request out, one answer back,
/// per renewal.
pub struct KeepAlive {
    renewal: pb::LeaseKeepAliveRequest,
    renew: tokio::sync::mpsc::Sender<pb::LeaseKeepAliveRequest>,
    /// etcd's answers (boxed: the etcd client's own gRPC version names
    /// the stream's type).
    answers: Answers,
}

type Answers = std::pin::Pin<Box<dyn Stream<Item = Result<pb::LeaseKeepAliveResponse, String>> + Send>>;

impl KeepAlive {
    /// Opens the stream for lease `id` and renews it once.
    pub async fn open(client: &mut EtcdClient, id: i64) -> Result<Self, StoreError> {
        let (renew, requests) = tokio::sync::mpsc::channel(1);
        let renewal = pb::LeaseKeepAliveRequest { id };
        // The first renewal goes before the stream opens (etcd answers the
        // stream's headers with its first message).
        renew.send(renewal).await.map_err(etcd_err)?;
        let answers = timed(
            "lease keep-alive",
            client.lease.lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(requests)),
        )
        .await?;
        let answers: Answers = Box::pin(answers.map(|r| r.map_err(|e| e.to_string())));
        let mut keep = KeepAlive { renewal, renew, answers };
        keep.answer().await?;
        Ok(keep)
    }

    /// Renews the lease; an error once it is gone.
    pub async fn renew(&mut self) -> Result<(), StoreError> {
        self.renew.send(self.renewal).await.map_err(etcd_err)?;
        self.answer().await
    }

    async fn answer(&mut self) -> Result<(), StoreError> {
        let resp = timed("lease keep-alive", async { self.answers.next().await.transpose() }).await?;
        if resp.is_none_or(|r| r.ttl <= 0) {
            return Err(etcd_err("lease lost"));
        }
        Ok(())
    }
}
