//! Replicas knowing each other: each one puts its API address under
//! `/legate/apis/<id>` with its own lease (renewed every second, lapsing
//! 3 s after the replica dies) and reads the prefix every second into
//! `Controller::replicas`. A query of the fleet's figures asks the replicas
//! read there (`remote::shards`).

use crate::discovery::replicas::Replica;
use crate::state::controller::Controller;
use crate::store::etcd::{self, etcd_err, EtcdClient, API_ADDRESS_PREFIX};
use crate::store::StoreError;
use crate::sync::lease::{self, timed, KeepAlive};
use etcdv3client::pb;
use std::sync::Arc;
use std::time::Duration;

/// The secret replicas show each other on their own internal calls.
const PEER_SECRET_KEY: &str = "/legate/internal/peer-secret";

/// A dead replica's key lapses within this.
const TTL_SECS: i64 = 3;
/// How often the lease is renewed and the replicas read.
const EVERY: Duration = Duration::from_secs(1);
/// Announces this replica and follows the others until a call fails.
pub async fn announce(ctrl: Arc<Controller>, mut client: EtcdClient) -> Result<(), StoreError> {
    let Some(me) = ctrl.replicas.me().cloned() else { return Ok(()) };
    if ctrl.replicas.secret().is_none() {
        ctrl.replicas.set_secret(peer_secret(&mut client).await?);
    }
    let lease = lease::grant(&mut client, TTL_SECS).await?;
    let value = serde_json::to_vec(&me).map_err(etcd_err)?;
    let put = pb::PutRequest {
        key: format!("{API_ADDRESS_PREFIX}{}", me.id).into_bytes(),
        value,
        lease,
        ..Default::default()
    };
    timed("announce replica", client.kv.put(put)).await?;
    let mut keep = KeepAlive::open(&mut client, lease).await?;
    let mut first = true;
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tick.tick().await;
        // Opening the stream renewed it once already.
        if !std::mem::take(&mut first) {
            keep.renew().await?;
        }
        let live: Vec<Replica> = timed("list replicas", etcd::list_replicas(&mut client)).await?;
        ctrl.replicas.set_live(live);
    }
}

/// The peer secret in the store: the one there, or a new one put there by
/// whichever replica comes first.
async fn peer_secret(client: &mut EtcdClient) -> Result<String, StoreError> {
    let fresh: String = (0..32).map(|_| format!("{:02x}", rand::random::<u8>())).collect();
    let key = PEER_SECRET_KEY.as_bytes().to_vec();
    let put = pb::PutRequest { key: key.clone(), value: fresh.clone().into_bytes(), ..Default::default() };
    let get = pb::RangeRequest { key, ..Default::default() };
    let txn = pb::TxnRequest {
        compare: vec![etcd::absent(PEER_SECRET_KEY)],
        success: vec![pb::RequestOp { request: Some(pb::request_op::Request::RequestPut(put)) }],
        failure: vec![pb::RequestOp { request: Some(pb::request_op::Request::RequestRange(get)) }],
    };
    let resp = timed("peer secret", client.kv.txn(txn)).await?;
    if resp.succeeded {
        return Ok(fresh);
    }
    resp.responses
        .into_iter()
        .find_map(|r| match r.response {
            Some(pb::response_op::Response::ResponseRange(range)) => range.kvs.into_iter().next(),
            _ => None,
        })
        .and_then(|kv| String::from_utf8(kv.value).ok())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| etcd::etcd_err("the peer secret in the store is empty or not text"))
}
