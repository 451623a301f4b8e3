//! Several replicas on one etcd: each follows the revision counter and the
//! registry with etcd watches (a commit on any replica reaches the proxies of
//! every replica within one push), and one leader, chosen with a lease,
//! expires registry instances whose heartbeats stopped. Each replica also
//! writes what only it knows — its proxies, its part of a staged rollout —
//! for the others (`rollouts::shared`), and its rate limit counts
//! (`ratelimit::shared`).

use crate::discovery::registry::{Instance, InstanceRecord};
use crate::state::controller::Controller;
use crate::store::etcd::{self, etcd_err, EtcdClient, LEADER_KEY, REGISTRY_PREFIX, REV_KEY};
use crate::store::StoreError;
use crate::sync::lease::{self, timed, KeepAlive};
use etcdv3client::pb;
use std::future::IntoFuture;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The leader's lease: a dead leader is replaced within this plus a retry.
const LEADER_TTL_SECS: i64 = 3;
/// How often the leader renews its lease.
const RENEW_EVERY: Duration = Duration::from_secs(1);
/// Wait before re-opening a broken watch, or a follower's next try to lead.
const RETRY: Duration = Duration::from_millis(500);

/// Starts the watches and the leader campaign on the store's runtime; does
/// nothing on the SQLite store.
pub fn start(ctrl: &Arc<Controller>) {
    let Some(store) = ctrl.store().etcd() else { return };
    let handle = store.handle();
    handle.spawn(forever("revision watch", ctrl.clone(), store.client(), follow_revisions));
    handle.spawn(forever("registry watch", ctrl.clone(), store.client(), follow_registry));
    handle.spawn(forever("leader election", ctrl.clone(), store.client(), campaign));
    handle.spawn(forever("replica report", ctrl.clone(), store.client(), share));
    handle.spawn(forever("rate limit counts", ctrl.clone(), store.client(), crate::ratelimit::shared::publish));
    handle.spawn(forever("rate limit counts watch", ctrl.clone(), store.client(), crate::ratelimit::shared::follow));
    if ctrl.replicas.me().is_some() {
        handle.spawn(forever("replica announcement", ctrl.clone(), store.client(), super::peers::announce));
    }
}

/// How often a replica writes its report (its proxies, its part of a
/// staged rollout) for the others.
const SHARE_EVERY: Duration = Duration::from_millis(250);

/// Writes this replica's report every `SHARE_EVERY` under a lease of its
/// own, so a replica that dies stops being counted within the lease's TTL.
async fn share(ctrl: Arc<Controller>, mut client: EtcdClient) -> Result<(), StoreError> {
    let lease = lease::grant(&mut client, LEADER_TTL_SECS).await?;
    let mut keep = KeepAlive::open(&mut client, lease).await?;
    let mut renewed = Instant::now();
    let mut tick = tokio::time::interval(SHARE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if renewed.elapsed() >= RENEW_EVERY {
            keep.renew().await?;
            renewed = Instant::now();
        }
        let report = crate::rollouts::shared::local_report(&ctrl);
        let text = serde_json::to_vec(&report).map_err(etcd_err)?;
        timed("replica report", etcd::put_replica_report(&mut client, ctrl.replica_id(), text, lease)).await?;
    }
}

/// Runs `task` again (after a pause) whenever it ends.
async fn forever<F, Fut>(what: &'static str, ctrl: Arc<Controller>, client: EtcdClient, task: F)
where
    F: Fn(Arc<Controller>, EtcdClient) -> Fut,
    Fut: std::future::Future<Output = Result<(), StoreError>>,
{
    loop {
        match task(ctrl.clone(), client.clone()).await {
            Ok(()) => tracing::debug!("{what}: ended; starting again"),
            Err(e) => tracing::warn!("{what}: {e}; retrying"),
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// Reloads the latest revision from the store (off this runtime's worker:
/// the store's calls block until their own task on this runtime answers).
async fn reload(ctrl: &Arc<Controller>) {
    let c = ctrl.clone();
    match tokio::task::spawn_blocking(move || c.reload()).await {
        Ok(Ok(Some(rev))) => tracing::info!("loaded revision {rev} committed by another replica"),
        Ok(Ok(None)) => {}
        Ok(Err(e)) => tracing::warn!("cannot load the latest revision: {e}"),
        Err(e) => tracing::warn!("reload task failed: {e}"),
    }
}

/// Watches the revision counter; every change makes this replica load and
/// publish the new revision.
async fn follow_revisions(ctrl: Arc<Controller>, mut client: EtcdClient) -> Result<(), StoreError> {
    let resp =
        timed("read revision", client.kv.range(pb::RangeRequest { key: REV_KEY.into(), ..Default::default() })).await?;
    let at = resp.header.map_or(0, |h| h.revision);
    // Anything committed before the watch starts is picked up here.
    reload(&ctrl).await;
    let mut req = client.watch.do_watch(REV_KEY);
    req.request.start_revision = at + 1;
    let mut watcher = timed("watch revisions", req.into_future()).await?;
    while let Some(msg) = watcher.message().await.map_err(etcd_err)? {
        if msg.canceled {
            return Err(etcd_err(format!("revision watch canceled: {}", msg.cancel_reason)));
        }
        if !msg.events.is_empty() {
            reload(&ctrl).await;
        }
    }
    Ok(())
}

/// Mirrors the registry's instances from etcd into this replica's registry.
async fn follow_registry(ctrl: Arc<Controller>, mut client: EtcdClient) -> Result<(), StoreError> {
    let (records, at) = timed("list instances", etcd::list_instances(&mut client)).await?;
    ctrl.mirror_registry(|r| r.replace_all(records.into_iter().map(Instance::from_record).collect()));
    let mut req = client.watch.do_watch(REGISTRY_PREFIX);
    req.request.range_end = etcd::prefix_end(REGISTRY_PREFIX);
    req.request.start_revision = at + 1;
    let mut watcher = timed("watch registry", req.into_future()).await?;
    while let Some(msg) = watcher.message().await.map_err(etcd_err)? {
        if msg.canceled {
            return Err(etcd_err(format!("registry watch canceled: {}", msg.cancel_reason)));
        }
        if msg.events.is_empty() {
            continue;
        }
        ctrl.mirror_registry(|reg| {
            for ev in msg.events {
                let Some(kv) = ev.kv else { continue };
                if ev.r#type == pb::event::EventType::Delete as i32 {
                    let key = String::from_utf8_lossy(&kv.key);
                    if let Some((svc, id)) = key.trim_start_matches(REGISTRY_PREFIX).split_once('/') {
                        reg.deregister(svc, id);
                    }
                    continue;
                }
                match serde_json::from_slice::<InstanceRecord>(&kv.value) {
                    Ok(rec) => reg.insert(Instance::from_record(rec)),
                    Err(e) => tracing::warn!("unreadable registry entry {}: {e}", String::from_utf8_lossy(&kv.key)),
                }
            }
        });
    }
    Ok(())
}

/// Tries to become leader; while leader, renews the lease and expires
/// instances. Returns when leadership is lost (or was not won).
async fn campaign(ctrl: Arc<Controller>, mut client: EtcdClient) -> Result<(), StoreError> {
    ctrl.set_leader(false);
    let lease = lease::grant(&mut client, LEADER_TTL_SECS).await?;
    let put = pb::RequestOp {
        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
            key: LEADER_KEY.into(),
            value: ctrl.replica_id().as_bytes().to_vec(),
            lease,
            ..Default::default()
        })),
    };
    let txn = pb::TxnRequest { compare: vec![etcd::absent(LEADER_KEY)], success: vec![put], failure: vec![] };
    let won = timed("leader txn", client.kv.txn(txn)).await?;
    if !won.succeeded {
        // Someone else leads; the unused lease lapses by itself.
        return Ok(());
    }
    // The leader key's revision fences the leader's writes: once the key
    // lapses (a new leader), this replica's expiry transactions fail.
    let fence = won.header.map_or(0, |h| h.revision);
    let mut keep = KeepAlive::open(&mut client, lease).await?;
    ctrl.set_leader(true);
    tracing::info!("this replica ({}) now expires registry instances (leader)", ctrl.replica_id());
    let mut renewed = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        if renewed.elapsed() >= RENEW_EVERY {
            if let Err(e) = keep.renew().await {
                ctrl.set_leader(false);
                return Err(e);
            }
            renewed = Instant::now();
        }
        let fenced = etcd::mod_revision_is(LEADER_KEY, fence);
        match timed("expire instances", etcd::expire_instances(&mut client, fenced)).await {
            Ok(gone) if !gone.is_empty() => tracing::info!("registry instances expired: {}", gone.join(", ")),
            Ok(_) => {}
            Err(e) => {
                ctrl.set_leader(false);
                return Err(e);
            }
        }
    }
}
