//! The shared store: revisions, resources, tokens, the audit log and registry
//! instances as keys in etcd, so several control-plane replicas serve one state.
//!
//! Client: `etcdv3client`. The better-known `etcd-client` crate generates its
//! protobuf code in a build script that needs `protoc` on every build machine;
//! `etcdv3client` ships its generated code and builds with cargo alone.
//!
//! Layout under `/legate/`:
//! - `rev`: the latest revision number; every commit is one transaction that
//!   only lands if `rev` still holds the number the writer read, so two
//!   replicas committing at once never lose one (the loser gets `Conflict`).
//! - `revisions/<rev, 20 digits>`: the revision record with its changes (the
//!   history, replayed for diff and rollback).
//! - `resources/<kind>/<name>`: the current documents.
//! - `tokens/<id>`, `audit/<time>-<random>`, `registry/<service>/<id>`,
//!   `leader` (held under a lease by the replica that expires instances).
//! - `rollout`: the last staged rollout's record, committed with the
//!   revision that staged it and replaced by the one that ended it, so every
//!   replica serves the same two revisions and any leader can end it.
//! - `replicas/<id>`: each replica's connected proxies and its part of a
//!   staged rollout, under that replica's lease.
//! - `apis/<replica id>`: each live replica's API address, under its own
//!   lease, so a query of the fleet's figures can ask every replica.
//! - `ratelimit/<replica id>`: each replica's rate limit counts of the
//!   windows in progress, under its own lease (`ratelimit::shared`).
//!
//! The control plane's calls are synchronous (as SQLite's are); each one runs
//! on this store's own small runtime and the caller waits for the answer, so a
//! caller on any runtime (or none) cannot starve the etcd I/O it waits for.

use crate::clock::{self, unix_ms};
use crate::discovery::registry::InstanceRecord;
use crate::resources::document::Document;
use crate::resources::kind::Kind;
use crate::store::records::{AuditEntry, Change, Commit, RevisionInfo, StoreError};
use etcdv3client::pb;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::time::Duration;

pub use etcdv3client::EtcdClient;

pub const PREFIX: &str = "/legate/";
/// How long one call may take before it is reported as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

pub fn key(rest: &str) -> String {
    format!("{PREFIX}{rest}")
}

pub const REV_KEY: &str = "/legate/rev";
pub const LEADER_KEY: &str = "/legate/leader";
pub const REGISTRY_PREFIX: &str = "/legate/registry/";
/// Fault state shared by replicas: `slices/<replica>` (what each sees of
/// its own proxies) and `board` (what the leader decided).
pub const FAULT_PREFIX: &str = "/legate/fault/";
/// The last staged rollout's record (staged, or how it ended), written in
/// the transaction of the revision that staged or ended it.
pub const ROLLOUT_KEY: &str = "/legate/rollout";
/// `replicas/<id>`: what each replica reports to the others, under its lease.
pub const REPLICAS_PREFIX: &str = "/legate/replicas/";
/// Each live replica's API address, under its own lease.
pub const API_ADDRESS_PREFIX: &str = "/legate/apis/";

fn revision_key(rev: u64) -> String {
    key(&format!("revisions/{rev:020}"))
}

fn resource_key(kind: &str, name: &str) -> String {
    key(&format!("resources/{kind}/{name}"))
}

pub fn instance_key(service: &str, id: &str) -> String {
    format!("{REGISTRY_PREFIX}{service}/{id}")
}

/// The end of the key range that holds every key starting with `prefix`.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[derive(Serialize, Deserialize)]
struct ChangeRecord {
    op: String,
    kind: String,
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    doc: Option<Document>,
}

#[derive(Serialize, Deserialize)]
struct RevisionRecord {
    revision: u64,
    created_at: String,
    author: String,
    message: String,
    changes: Vec<ChangeRecord>,
}

#[derive(Serialize, Deserialize)]
struct TokenRecord {
    name: String,
    role: String,
    secret_sha256: String,
    created_at: String,
}

pub fn etcd_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Etcd(e.to_string())
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt { kind: "etcd".into(), name: what.into(), reason: e.to_string() }
}

pub struct EtcdStore {
    rt: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    client: EtcdClient,
    pub endpoints: Vec<String>,
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        // Dropping a runtime inside another one's context panics; let it go in
        // the background instead.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Runs `fut` on `handle` and waits for it from any thread.
fn block_on<T: Send + 'static>(
    handle: &tokio::runtime::Handle,
    fut: impl Future<Output = Result<T, StoreError>> + Send + 'static,
) -> Result<T, StoreError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    handle.spawn(async move {
        let r = match tokio::time::timeout(CALL_TIMEOUT, fut).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Etcd(format!("no answer within {CALL_TIMEOUT:?}"))),
        };
        let _ = tx.send(r);
    });
    rx.recv().map_err(|_| StoreError::Etcd("the etcd runtime stopped".into()))?
}

fn range(key: impl Into<Vec<u8>>, range_end: Vec<u8>) -> pb::RangeRequest {
    pb::RangeRequest { key: key.into(), range_end, ..Default::default() }
}

fn range_op(r: pb::RangeRequest) -> pb::RequestOp {
    pb::RequestOp { request: Some(pb::request_op::Request::RequestRange(r)) }
}

fn put_op(key: String, value: Vec<u8>) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
            key: key.into_bytes(),
            value,
            ..Default::default()
        })),
    }
}

fn delete_op(key: String) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestDeleteRange(pb::DeleteRangeRequest {
            key: key.into_bytes(),
            ..Default::default()
        })),
    }
}

/// `key`'s mod revision equals `rev` (0: the key does not exist).
pub fn mod_revision_is(key: &str, rev: i64) -> pb::Compare {
    pb::Compare {
        result: pb::compare::CompareResult::Equal as i32,
        target: pb::compare::CompareTarget::Mod as i32,
        key: key.as_bytes().to_vec(),
        range_end: vec![],
        target_union: Some(pb::compare::TargetUnion::ModRevision(rev)),
    }
}

/// `key` does not exist.
pub fn absent(key: &str) -> pb::Compare {
    pb::Compare {
        result: pb::compare::CompareResult::Equal as i32,
        target: pb::compare::CompareTarget::Create as i32,
        key: key.as_bytes().to_vec(),
        range_end: vec![],
        target_union: Some(pb::compare::TargetUnion::CreateRevision(0)),
    }
}

fn ranges(resp: pb::TxnResponse) -> Vec<pb::RangeResponse> {
    resp.responses
        .into_iter()
        .filter_map(|r| match r.response {
            Some(pb::response_op::Response::ResponseRange(r)) => Some(r),
            _ => None,
        })
        .collect()
}

fn parse_rev(kvs: &[pb::KeyValue]) -> Result<u64, StoreError> {
    match kvs.first() {
        None => Ok(0),
        Some(kv) => std::str::from_utf8(&kv.value)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| corrupt("rev", "not a number")),
    }
}

impl EtcdStore {
    /// Connects (lazily when several endpoints are given in plaintext; over
    /// TLS when `tls` is given) and checks that etcd answers.
    pub fn connect(endpoints: &[String], tls: Option<&super::etcd_tls::EtcdTlsFiles>) -> Result<Self, StoreError> {
        let rt =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).thread_name("etcd").enable_all().build()?;
        let handle = rt.handle().clone();
        let client = match tls {
            Some(files) => {
                let (endpoints, files) = (endpoints.to_vec(), files.clone());
                block_on(&handle, async move { super::etcd_tls::client(&endpoints, &files).await })
            }
            None => {
                let urls: Vec<String> = endpoints.iter().map(|e| format!("http://{e}")).collect();
                block_on(&handle, async move {
                    EtcdClient::new(urls, None).await.map_err(|e| etcd_err(format!("connect: {e}")))
                })
            }
        };
        let client = match client {
            Ok(c) => c,
            Err(e) => {
                // Dropping a runtime inside another one's context panics.
                rt.shutdown_background();
                return Err(e);
            }
        };
        let store = EtcdStore { rt: Some(rt), handle, client, endpoints: endpoints.to_vec() };
        // A first read, so a wrong address (or certificate) fails at start
        // rather than at the first apply.
        store.run(|mut c| async move {
            c.kv.range(range(REV_KEY, vec![]))
                .await
                .map_err(|e| etcd_err(format!("first read: {}", super::etcd_tls::chain(&e))))
        })?;
        Ok(store)
    }

    /// The runtime the etcd I/O runs on (replication tasks run there too).
    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    pub fn client(&self) -> EtcdClient {
        self.client.clone()
    }

    fn run<T: Send + 'static, F>(&self, f: impl FnOnce(EtcdClient) -> F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        block_on(&self.handle, f(self.client.clone()))
    }

    pub fn latest_revision(&self) -> Result<u64, StoreError> {
        self.run(|mut c| async move {
            let resp = c.kv.range(range(REV_KEY, vec![])).await.map_err(etcd_err)?;
            parse_rev(&resp.kvs)
        })
    }

    /// The latest revision and its documents, read in one transaction so the
    /// two agree.
    pub fn load_current(&self) -> Result<(u64, Vec<Document>, Option<String>), StoreError> {
        self.run(|mut c| async move {
            let res = key("resources/");
            let txn = pb::TxnRequest {
                compare: vec![],
                success: vec![
                    range_op(range(REV_KEY, vec![])),
                    range_op(range(res.clone(), prefix_end(&res))),
                    range_op(range(ROLLOUT_KEY, vec![])),
                ],
                failure: vec![],
            };
            let mut rs = ranges(c.kv.txn(txn).await.map_err(etcd_err)?).into_iter();
            let (Some(rev), Some(docs), Some(rollout)) = (rs.next(), rs.next(), rs.next()) else {
                return Err(etcd_err("short transaction response"));
            };
            let rollout = rollout.kvs.first().map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
            let rev = parse_rev(&rev.kvs)?;
            let mut out = Vec::with_capacity(docs.kvs.len());
            for kv in docs.kvs {
                let d: Document =
                    serde_json::from_slice(&kv.value).map_err(|e| corrupt(&String::from_utf8_lossy(&kv.key), e))?;
                out.push(d);
            }
            Ok((rev, out, rollout))
        })
    }

    /// Commits `changes` as revision `expected + 1`, with `rollout` as the
    /// rollout record when given.
    pub fn commit(&self, c: &Commit<'_>) -> Result<u64, StoreError> {
        let Commit { expected, author, message, changes, rollout } = *c;
        let rev = expected + 1;
        let mut ops = Vec::with_capacity(changes.len() + 2);
        let mut records = Vec::with_capacity(changes.len());
        for change in changes {
            match change {
                Change::Apply(doc) => {
                    let kind = Kind::parse(&doc.kind).map_or(doc.kind.clone(), |k| k.name().to_string());
                    let text = serde_json::to_vec(doc).map_err(|e| corrupt(&doc.metadata.name, e))?;
                    ops.push(put_op(resource_key(&kind, &doc.metadata.name), text));
                    records.push(ChangeRecord {
                        op: "apply".into(),
                        kind,
                        name: doc.metadata.name.clone(),
                        doc: Some(doc.clone()),
                    });
                }
                Change::Delete { kind, name } => {
                    ops.push(delete_op(resource_key(kind.name(), name)));
                    records.push(ChangeRecord {
                        op: "delete".into(),
                        kind: kind.name().into(),
                        name: name.clone(),
                        doc: None,
                    });
                }
            }
        }
        let record = RevisionRecord {
            revision: rev,
            created_at: clock::now(),
            author: author.into(),
            message: message.into(),
            changes: records,
        };
        let record = serde_json::to_vec(&record).map_err(|e| corrupt("revision", e))?;
        ops.push(put_op(revision_key(rev), record));
        ops.push(put_op(REV_KEY.into(), rev.to_string().into_bytes()));
        if let Some(r) = rollout {
            ops.push(put_op(ROLLOUT_KEY.into(), r.as_bytes().to_vec()));
        }
        let guard = if expected == 0 {
            absent(REV_KEY)
        } else {
            pb::Compare {
                result: pb::compare::CompareResult::Equal as i32,
                target: pb::compare::CompareTarget::Value as i32,
                key: REV_KEY.as_bytes().to_vec(),
                range_end: vec![],
                target_union: Some(pb::compare::TargetUnion::Value(expected.to_string().into_bytes())),
            }
        };
        self.run(move |mut c| async move {
            let txn =
                pb::TxnRequest { compare: vec![guard], success: ops, failure: vec![range_op(range(REV_KEY, vec![]))] };
            let resp = c.kv.txn(txn).await.map_err(etcd_err)?;
            if resp.succeeded {
                return Ok(rev);
            }
            let found = ranges(resp).first().map_or(Ok(0), |r| parse_rev(&r.kvs))?;
            Err(StoreError::Conflict { expected, found })
        })
    }

    fn revisions_between(
        &self,
        from: u64,
        to_inclusive: u64,
        desc_limit: Option<usize>,
    ) -> Result<Vec<RevisionRecord>, StoreError> {
        let (start, end) = (revision_key(from), revision_key(to_inclusive.saturating_add(1)));
        self.run(move |mut c| async move {
            let mut req = range(start, end.into_bytes());
            if let Some(limit) = desc_limit {
                req.limit = limit as i64;
                req.sort_order = pb::range_request::SortOrder::Descend as i32;
                req.sort_target = pb::range_request::SortTarget::Key as i32;
            }
            let resp = c.kv.range(req).await.map_err(etcd_err)?;
            resp.kvs
                .iter()
                .map(|kv| serde_json::from_slice(&kv.value).map_err(|e| corrupt(&String::from_utf8_lossy(&kv.key), e)))
                .collect()
        })
    }

    pub fn state_at(&self, rev: u64) -> Result<Vec<Document>, StoreError> {
        if rev == 0 {
            return Err(StoreError::NoRevision(rev));
        }
        let records = self.revisions_between(1, rev, None)?;
        if records.last().is_none_or(|r| r.revision != rev) {
            return Err(StoreError::NoRevision(rev));
        }
        let mut state: std::collections::BTreeMap<(String, String), Document> = Default::default();
        for r in records {
            for c in r.changes {
                match c.doc {
                    Some(doc) if c.op == "apply" => {
                        state.insert((c.kind, c.name), doc);
                    }
                    _ => {
                        state.remove(&(c.kind, c.name));
                    }
                }
            }
        }
        Ok(state.into_values().collect())
    }

    pub fn history(&self, limit: usize) -> Result<Vec<RevisionInfo>, StoreError> {
        if limit == 0 {
            return Ok(vec![]);
        }
        let records = self.revisions_between(1, u64::MAX - 1, Some(limit))?;
        Ok(records
            .into_iter()
            .map(|r| RevisionInfo {
                revision: r.revision,
                created_at: r.created_at,
                author: r.author,
                message: r.message,
                changes: r.changes.iter().map(|c| format!("{} {}/{}", c.op, c.kind, c.name)).collect(),
            })
            .collect())
    }

    pub fn token_count(&self) -> Result<u64, StoreError> {
        let p = key("tokens/");
        self.run(move |mut c| async move {
            let mut req = range(p.clone(), prefix_end(&p));
            req.count_only = true;
            Ok(c.kv.range(req).await.map_err(etcd_err)?.count.max(0) as u64)
        })
    }

    pub fn add_token(&self, id: &str, name: &str, role: &str, secret_sha256: &str) -> Result<(), StoreError> {
        let rec = TokenRecord {
            name: name.into(),
            role: role.into(),
            secret_sha256: secret_sha256.into(),
            created_at: clock::now(),
        };
        let value = serde_json::to_vec(&rec).map_err(|e| corrupt("token", e))?;
        let k = key(&format!("tokens/{id}"));
        self.run(move |mut c| async move {
            // Ids are unique, as SQLite's primary key makes them.
            let txn = pb::TxnRequest { compare: vec![absent(&k)], success: vec![put_op(k, value)], failure: vec![] };
            if c.kv.txn(txn).await.map_err(etcd_err)?.succeeded {
                Ok(())
            } else {
                Err(etcd_err("a token with this id exists"))
            }
        })
    }

    pub fn token(&self, id: &str) -> Result<Option<(String, String, String)>, StoreError> {
        let k = key(&format!("tokens/{id}"));
        self.run(move |mut c| async move {
            let resp = c.kv.range(range(k, vec![])).await.map_err(etcd_err)?;
            let Some(kv) = resp.kvs.first() else { return Ok(None) };
            let r: TokenRecord = serde_json::from_slice(&kv.value).map_err(|e| corrupt("token", e))?;
            Ok(Some((r.name, r.role, r.secret_sha256)))
        })
    }

    pub fn tokens(&self) -> Result<Vec<(String, String, String, String)>, StoreError> {
        let p = key("tokens/");
        self.run(move |mut c| async move {
            let resp = c.kv.range(range(p.clone(), prefix_end(&p))).await.map_err(etcd_err)?;
            let mut out = Vec::with_capacity(resp.kvs.len());
            for kv in resp.kvs {
                let id = String::from_utf8_lossy(&kv.key).trim_start_matches(p.as_str()).to_string();
                let r: TokenRecord = serde_json::from_slice(&kv.value).map_err(|e| corrupt("token", e))?;
                out.push((id, r.name, r.role, r.created_at));
            }
            out.sort_by(|a, b| a.3.cmp(&b.3));
            Ok(out)
        })
    }

    pub fn revoke_token(&self, id: &str) -> Result<bool, StoreError> {
        let k = key(&format!("tokens/{id}"));
        self.run(move |mut c| async move {
            let req = pb::DeleteRangeRequest { key: k.into_bytes(), ..Default::default() };
            Ok(c.kv.delete_range(req).await.map_err(etcd_err)?.deleted > 0)
        })
    }

    pub fn audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let value = serde_json::to_vec(entry).map_err(|e| corrupt("audit", e))?;
        // Time first so keys sort in order; the random part keeps two replicas
        // writing in the same microsecond apart.
        let micros =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
        let k = key(&format!("audit/{micros:020}-{:08x}", rand::random::<u32>()));
        self.run(move |mut c| async move {
            c.kv.put(pb::PutRequest { key: k.into_bytes(), value, ..Default::default() }).await.map_err(etcd_err)?;
            Ok(())
        })
    }

    pub fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let p = key("audit/");
        self.run(move |mut c| async move {
            let mut req = range(p.clone(), prefix_end(&p));
            req.limit = limit as i64;
            req.sort_order = pb::range_request::SortOrder::Descend as i32;
            req.sort_target = pb::range_request::SortTarget::Key as i32;
            let resp = c.kv.range(req).await.map_err(etcd_err)?;
            resp.kvs.iter().map(|kv| serde_json::from_slice(&kv.value).map_err(|e| corrupt("audit", e))).collect()
        })
    }

    /// Registers (or re-registers) an instance.
    pub fn put_instance(&self, rec: &InstanceRecord) -> Result<(), StoreError> {
        let k = instance_key(&rec.service, &rec.id);
        let value = serde_json::to_vec(rec).map_err(|e| corrupt("instance", e))?;
        self.run(move |mut c| async move {
            c.kv.put(pb::PutRequest { key: k.into_bytes(), value, ..Default::default() }).await.map_err(etcd_err)?;
            Ok(())
        })
    }

    /// Extends an instance's life; `None` when it is not (or no longer)
    /// registered. Guarded by the key's mod revision so a heartbeat never
    /// brings back an instance the leader has just expired.
    pub fn heartbeat_instance(&self, service: &str, id: &str) -> Result<Option<InstanceRecord>, StoreError> {
        let k = instance_key(service, id);
        self.run(move |mut c| async move {
            for _ in 0..5 {
                let resp = c.kv.range(range(k.clone(), vec![])).await.map_err(etcd_err)?;
                let Some(kv) = resp.kvs.into_iter().next() else { return Ok(None) };
                let mut rec: InstanceRecord = serde_json::from_slice(&kv.value).map_err(|e| corrupt("instance", e))?;
                rec.expires_at_ms = unix_ms() + rec.ttl_seconds * 1000;
                let value = serde_json::to_vec(&rec).map_err(|e| corrupt("instance", e))?;
                let txn = pb::TxnRequest {
                    compare: vec![mod_revision_is(&k, kv.mod_revision)],
                    success: vec![put_op(k.clone(), value)],
                    failure: vec![],
                };
                if c.kv.txn(txn).await.map_err(etcd_err)?.succeeded {
                    return Ok(Some(rec));
                }
            }
            Err(etcd_err("instance changed underneath five heartbeats in a row"))
        })
    }

    /// Puts `value` at `key` (no history: shared state that is overwritten).
    pub fn put_value(&self, key: String, value: Vec<u8>) -> Result<(), StoreError> {
        self.run(move |mut c| async move {
            c.kv.put(pb::PutRequest { key: key.into_bytes(), value, ..Default::default() }).await.map_err(etcd_err)?;
            Ok(())
        })
    }

    /// The value at `key`, when there is one.
    pub fn value(&self, key: String) -> Result<Option<Vec<u8>>, StoreError> {
        self.run(move |mut c| async move {
            let resp = c.kv.range(range(key, vec![])).await.map_err(etcd_err)?;
            Ok(resp.kvs.into_iter().next().map(|kv| kv.value))
        })
    }

    /// Every value under `prefix`.
    pub fn values_under(&self, prefix: String) -> Result<Vec<Vec<u8>>, StoreError> {
        self.run(move |mut c| async move {
            let end = prefix_end(&prefix);
            let resp = c.kv.range(range(prefix, end)).await.map_err(etcd_err)?;
            Ok(resp.kvs.into_iter().map(|kv| kv.value).collect())
        })
    }

    pub fn delete_instance(&self, service: &str, id: &str) -> Result<bool, StoreError> {
        let k = instance_key(service, id);
        self.run(move |mut c| async move {
            let req = pb::DeleteRangeRequest { key: k.into_bytes(), ..Default::default() };
            Ok(c.kv.delete_range(req).await.map_err(etcd_err)?.deleted > 0)
        })
    }
}

/// Every registered instance and the etcd revision they were read at (a watch
/// from the next one misses nothing).
/// Writes this replica's report under `lease`.
pub async fn put_replica_report(c: &mut EtcdClient, id: &str, report: Vec<u8>, lease: i64) -> Result<(), StoreError> {
    let put = pb::PutRequest {
        key: format!("{REPLICAS_PREFIX}{id}").into_bytes(),
        value: report,
        lease,
        ..Default::default()
    };
    c.kv.put(put).await.map_err(etcd_err)?;
    Ok(())
}

impl EtcdStore {
    /// Every live replica's report (raw JSON).
    pub fn replica_reports(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        self.run(|mut c| async move {
            let resp = c.kv.range(range(REPLICAS_PREFIX, prefix_end(REPLICAS_PREFIX))).await.map_err(etcd_err)?;
            Ok(resp.kvs.into_iter().map(|kv| kv.value).collect())
        })
    }
}

pub async fn list_instances(c: &mut EtcdClient) -> Result<(Vec<InstanceRecord>, i64), StoreError> {
    let resp = c.kv.range(range(REGISTRY_PREFIX, prefix_end(REGISTRY_PREFIX))).await.map_err(etcd_err)?;
    let at = resp.header.as_ref().map_or(0, |h| h.revision);
    let mut out = Vec::with_capacity(resp.kvs.len());
    for kv in resp.kvs {
        match serde_json::from_slice(&kv.value) {
            Ok(r) => out.push(r),
            Err(e) => tracing::warn!("skipping unreadable registry entry {}: {e}", String::from_utf8_lossy(&kv.key)),
        }
    }
    Ok((out, at))
}

/// Every live replica's announcement (see `sync::peers`).
pub async fn list_replicas(c: &mut EtcdClient) -> Result<Vec<crate::discovery::replicas::Replica>, StoreError> {
    let resp = c.kv.range(range(API_ADDRESS_PREFIX, prefix_end(API_ADDRESS_PREFIX))).await.map_err(etcd_err)?;
    let mut out = Vec::with_capacity(resp.kvs.len());
    for kv in resp.kvs {
        match serde_json::from_slice(&kv.value) {
            Ok(r) => out.push(r),
            Err(e) => tracing::warn!("skipping unreadable replica entry {}: {e}", String::from_utf8_lossy(&kv.key)),
        }
    }
    Ok(out)
}

/// Deletes the instances whose expiry has passed (the leader's job); each
/// delete only lands if the instance was not heartbeated since it was read.
/// `fence` (the leader key unchanged) keeps a deposed leader from deleting.
pub async fn expire_instances(c: &mut EtcdClient, fence: pb::Compare) -> Result<Vec<String>, StoreError> {
    let resp = c.kv.range(range(REGISTRY_PREFIX, prefix_end(REGISTRY_PREFIX))).await.map_err(etcd_err)?;
    let now = unix_ms();
    let mut gone = Vec::new();
    for kv in resp.kvs {
        let Ok(rec) = serde_json::from_slice::<InstanceRecord>(&kv.value) else { continue };
        if rec.expires_at_ms > now {
            continue;
        }
        let k = String::from_utf8_lossy(&kv.key).to_string();
        let txn = pb::TxnRequest {
            compare: vec![mod_revision_is(&k, kv.mod_revision), fence.clone()],
            success: vec![delete_op(k)],
            failure: vec![],
        };
        if c.kv.txn(txn).await.map_err(etcd_err)?.succeeded {
            gone.push(format!("{}/{}", rec.service, rec.id));
        }
    }
    Ok(gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end("/legate/registry/"), b"/legate/registry0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
    }
}
