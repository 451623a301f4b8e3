//! Replicas knowing each other: each one puts its API address under
//! `/legate/apis/<id>` with its own lease (renewed every second, lapsing
//! 3 s after the replica dies) and reads the prefix every second into
//! `Controller::replicas`. A query of the fleet's figures asks the replicas
//! read there (`serve::peers`).

use crate::discovery::replicas::Replica;
use crate::state::controller::Controller;
use crate::store::etcd::{self, etcd_err, EtcdClient, API_ADDRESS_PREFIX};
use crate::store::StoreError;
use crate::sync::lease::{self, timed, KeepAlive};
use etcdv3client::pb;
use std::sync::Arc;
use std::time::Duration;

/// A dead replica's key lapses within this.
const TTL_SECS: i64 = 3;
/// How often the lease is renewed and the replicas read.
const EVERY: Duration = Duration::from_secs(1);
/// Announces this replica and follows the others until a call fails.
pub async fn announce(ctrl: Arc<Controller>, mut client: EtcdClient) -> Result<(), StoreError> {
    let Some(me) = ctrl.replicas.me().cloned() else { return Ok(()) };
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
