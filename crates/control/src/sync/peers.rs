//! Replicas knowing each other: each one puts its API address under
//! `/legate/apis/<id>` with its own lease (renewed every second, lapsing
//! 3 s after the replica dies) and reads the prefix every second into
//! `Controller::replicas`. A query of the fleet's figures asks the replicas
//! read there (`serve::peers`).

use crate::discovery::replicas::Replica;
use crate::state::controller::Controller;
use crate::store::etcd::{self, etcd_err, EtcdClient, API_ADDRESS_PREFIX};
use crate::store::StoreError;
use etcdv3client::pb;
use std::sync::Arc;
use std::time::Duration;

/// A dead replica's key lapses within this.
const TTL_SECS: i64 = 3;
/// How often the lease is renewed and the replicas read.
const EVERY: Duration = Duration::from_secs(1);
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

async fn timed<T, E: std::fmt::Display>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(r) => r.map_err(etcd_err),
        Err(_) => Err(etcd_err(format!("{what}: no answer within {CALL_TIMEOUT:?}"))),
    }
}

/// Announces this replica and follows the others until a call fails.
pub async fn announce(ctrl: Arc<Controller>, mut client: EtcdClient) -> Result<(), StoreError> {
    let Some(me) = ctrl.replicas.me().cloned() else { return Ok(()) };
    let grant = timed("lease grant", client.lease.lease_grant(pb::LeaseGrantRequest { ttl: TTL_SECS, id: 0 })).await?;
    let lease = grant.id;
    let value = serde_json::to_vec(&me).map_err(etcd_err)?;
    let put = pb::PutRequest {
        key: format!("{API_ADDRESS_PREFIX}{}", me.id).into_bytes(),
        value,
        lease,
        ..Default::default()
    };
    timed("announce replica", client.kv.put(put)).await?;
    let (renew, requests) = tokio::sync::mpsc::channel(1);
    let renewal = pb::LeaseKeepAliveRequest { id: lease };
    // The first renewal goes before the stream opens (etcd answers the
    // stream's headers with its first message).
    renew.send(renewal).await.map_err(etcd_err)?;
    let mut keep =
        timed("lease keep-alive", client.lease.lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(requests)))
            .await?;
    let mut first = true;
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tick.tick().await;
        if !std::mem::take(&mut first) {
            renew.send(renewal).await.map_err(etcd_err)?;
        }
        let resp = timed("lease keep-alive", keep.message()).await?;
        if resp.is_none_or(|r| r.ttl <= 0) {
            return Err(etcd_err("replica lease lost"));
        }
        let live: Vec<Replica> = timed("list replicas", etcd::list_replicas(&mut client)).await?;
        ctrl.replicas.set_live(live);
    }
}
