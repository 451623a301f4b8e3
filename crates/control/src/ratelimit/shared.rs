//! Rate limit counts shared by the replicas on one etcd. Each replica counts
//! its own hits in memory (`counters`) and, every [`SYNC_EVERY`] when it
//! has counted since, writes its counts of the windows in progress (a
//! `counters::Batch`) to `/legate/ratelimit/<replica id>` under a lease of
//! its own, so a dead replica's counts go within [`TTL_SECS`]. Each replica
//! watches the prefix and keeps every other replica's latest batch; a hit's
//! count is its own plus the others' for the same window.
//!
//! A transaction per hit would make each answer wait for etcd; here an
//! answer waits for nothing, at the cost of accuracy: a hit on another
//! replica is seen after at most `SYNC_EVERY` plus a write and a watch
//! event, so the fleet may admit, past the limit, what the other replicas
//! admit in that time (sync period x their rate). When etcd cannot be
//! reached the replicas go on counting, each what it sees.

use super::counters::Batch;
use crate::state::controller::Controller;
use crate::store::etcd::{self, etcd_err, EtcdClient};
use crate::store::StoreError;
use crate::sync::lease::{self, timed, KeepAlive};
use etcdv3client::pb;
use std::collections::HashMap;
use std::future::IntoFuture;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Each replica's batch: `<PREFIX><replica id>`.
pub const PREFIX: &str = "/legate/ratelimit/";
/// How often a replica writes its counts (when they changed).
pub const SYNC_EVERY: Duration = Duration::from_millis(100);
/// A dead replica's counts stop counting within this.
pub const TTL_SECS: i64 = 10;
/// How often the lease is renewed.
const RENEW_EVERY: Duration = Duration::from_secs(1);

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Writes this replica's counts every [`SYNC_EVERY`] while they change,
/// under its lease, until a call fails.
pub async fn publish(ctrl: Arc<Controller>, mut client: EtcdClient) -> Result<(), StoreError> {
    let lease = lease::grant(&mut client, TTL_SECS).await?;
    let mut keep = KeepAlive::open(&mut client, lease).await?;
    let key = format!("{PREFIX}{}", ctrl.replica_id()).into_bytes();
    let mut renewed = Instant::now();
    // A new lease holds nothing yet: the first tick writes.
    let mut written = None;
    let mut tick = tokio::time::interval(SYNC_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if renewed.elapsed() >= RENEW_EVERY {
            keep.renew().await?;
            renewed = Instant::now();
        }
        let (generation, batch) = ctrl.rate_counters.snapshot(now_secs());
        if written == Some(generation) {
            continue;
        }
        let value = serde_json::to_vec(&batch).map_err(etcd_err)?;
        let put = pb::PutRequest { key: key.clone(), value, lease, ..Default::default() };
        timed("write rate limit counts", client.kv.put(put)).await?;
        written = Some(generation);
    }
}

/// The replica a key under [`PREFIX`] belongs to.
fn replica_of(key: &[u8]) -> String {
    String::from_utf8_lossy(key).trim_start_matches(PREFIX).to_string()
}

/// A replica's batch as written; an unreadable one counts as empty.
fn read_batch(key: &[u8], value: &[u8]) -> Batch {
    serde_json::from_slice(value).unwrap_or_else(|e| {
        tracing::warn!("unreadable rate limit counts at {}: {e}", String::from_utf8_lossy(key));
        Batch::default()
    })
}

/// Follows the other replicas' counts (a prefix read, then a watch from
/// the revision after it) until the watch ends or fails.
pub async fn follow(ctrl: Arc<Controller>, mut client: EtcdClient) -> Result<(), StoreError> {
    let me = ctrl.replica_id().to_string();
    let end = etcd::prefix_end(PREFIX);
    let range = pb::RangeRequest { key: PREFIX.into(), range_end: end.clone(), ..Default::default() };
    let resp = timed("read rate limit counts", client.kv.range(range)).await?;
    let at = resp.header.as_ref().map_or(0, |h| h.revision);
    let mut batches: HashMap<String, Batch> = resp
        .kvs
        .iter()
        .map(|kv| (replica_of(&kv.key), read_batch(&kv.key, &kv.value)))
        .filter(|(id, _)| *id != me)
        .collect();
    ctrl.rate_counters.set_others(batches.values(), now_secs());
    let mut req = client.watch.do_watch(PREFIX);
    req.request.range_end = end;
    req.request.start_revision = at + 1;
    let mut watcher = timed("watch rate limit counts", req.into_future()).await?;
    while let Some(msg) = watcher.message().await.map_err(etcd_err)? {
        if msg.canceled {
            return Err(etcd_err(format!("rate limit counts watch canceled: {}", msg.cancel_reason)));
        }
        let mut changed = false;
        for (kind, kv) in msg.events.iter().filter_map(|ev| ev.kv.as_ref().map(|kv| (ev.r#type, kv))) {
            let id = replica_of(&kv.key);
            if id == me {
                continue;
            }
            changed = true;
            if kind == pb::event::EventType::Delete as i32 {
                batches.remove(&id);
            } else {
                batches.insert(id, read_batch(&kv.key, &kv.value));
            }
        }
        if changed {
            ctrl.rate_counters.set_others(batches.values(), now_secs());
        }
    }
    Ok(())
}
