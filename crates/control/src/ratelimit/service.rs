//! `RateLimitService/ShouldRateLimit` on the xDS address: each descriptor
//! of a request looked up in the committed revision's `RateLimit`
//! resources (`limits`) and counted (`counters`); the answer is OVER_LIMIT
//! when one descriptor is over its limit, with a status per descriptor
//! (its limit, what remains of it, seconds to the window's end) that
//! Envoy's `x-ratelimit-*` headers are made from. A limit in `shadow_mode`
//! is counted but never makes an answer OVER_LIMIT.

use super::counters::Counters;
use super::limits::Domains;
use crate::resources::kind::Kind;
use crate::resources::resource::of_kind;
use crate::state::controller::Controller;
use legate_api::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit as PbLimit,
};
use legate_api::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use legate_api::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use std::sync::{Arc, Mutex};
use tonic::{Request, Response, Status};

/// The `RateLimit` resources' names and versions, and their domains.
type Compiled = (Vec<(String, String)>, Arc<Domains>);

#[derive(Clone)]
pub struct RlsServer {
    ctrl: Arc<Controller>,
    counters: Arc<Counters>,
    /// The domains compiled from the `RateLimit` resources whose names and
    /// versions are the key: compiled again only when they change.
    compiled: Arc<Mutex<Compiled>>,
}

impl RlsServer {
    pub fn new(ctrl: Arc<Controller>) -> Self {
        Self { counters: ctrl.rate_counters.clone(), ctrl, compiled: Arc::default() }
    }

    fn domains(&self) -> Arc<Domains> {
        let state = self.ctrl.stored();
        let key: Vec<(String, String)> =
            of_kind(&state.resources, Kind::RateLimit).map(|(n, r)| (n.clone(), r.version.clone())).collect();
        let mut compiled = self.compiled.lock().unwrap_or_else(|e| e.into_inner());
        if compiled.0 != key || key.is_empty() {
            let specs = of_kind(&state.resources, Kind::RateLimit).filter_map(|(_, r)| super::spec::check(&r.doc).ok());
            *compiled = (key, Arc::new(Domains::new(specs)));
        }
        compiled.1.clone()
    }

    /// The answer to one request at `now` (seconds since the epoch).
    pub fn answer(&self, r: &RateLimitRequest, now: u64) -> RateLimitResponse {
        let domains = self.domains();
        let mut over = false;
        let statuses = r
            .descriptors
            .iter()
            .map(|d| {
                let entries: Vec<(&str, &str)> = d.entries.iter().map(|e| (e.key.as_str(), e.value.as_str())).collect();
                let Some((limit, shadow)) = domains.limit(&r.domain, &entries).filter(|l| !l.0.unlimited) else {
                    return DescriptorStatus { code: Code::Ok as i32, ..Default::default() };
                };
                let hits = d.hits_addend.as_ref().map_or(u64::from(r.hits_addend), |h| h.value).max(1);
                let key = format!(
                    "{}\u{1f}{}",
                    r.domain,
                    entries.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("\u{1f}")
                );
                let counted = self.counters.hit(&key, limit.unit.seconds(), now, hits);
                let rpu = u64::from(limit.requests_per_unit);
                // In shadow mode the count goes on and what remains is
                // told, but the answer is OK (as the reference service's).
                let is_over = counted.total > rpu && !shadow;
                over |= is_over;
                DescriptorStatus {
                    code: if is_over { Code::OverLimit } else { Code::Ok } as i32,
                    current_limit: Some(PbLimit {
                        name: limit.name.clone(),
                        requests_per_unit: limit.requests_per_unit,
                        unit: limit.unit.proto(),
                    }),
                    limit_remaining: u32::try_from(rpu.saturating_sub(counted.total)).unwrap_or(u32::MAX),
                    duration_until_reset: Some(legate_api::pb::google::protobuf::Duration {
                        seconds: i64::try_from(counted.reset).unwrap_or(i64::MAX),
                        nanos: 0,
                    }),
                    ..Default::default()
                }
            })
            .collect();
        RateLimitResponse {
            overall_code: if over { Code::OverLimit } else { Code::Ok } as i32,
            statuses,
            ..Default::default()
        }
    }
}

#[tonic::async_trait]
impl RateLimitService for RlsServer {
    async fn should_rate_limit(&self, req: Request<RateLimitRequest>) -> Result<Response<RateLimitResponse>, Status> {
        let r = req.into_inner();
        if r.domain.is_empty() {
            return Err(Status::invalid_argument("rate limit domain must not be empty"));
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Ok(Response::new(self.answer(&r, now)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::counters::{Batch, Window};
    use crate::resources::document::parse_documents;
    use crate::store::Store;
    use legate_api::pb::envoy::extensions::common::ratelimit::v3::{rate_limit_descriptor::Entry, RateLimitDescriptor};

    const LIMITS: &str = "kind: RateLimit\nmetadata: {name: api}\nspec:\n  domain: api\n  descriptors:\n  - key: user\n    rate_limit: {unit: minute, requests_per_unit: 2}\n  - key: trial\n    shadow_mode: true\n    rate_limit: {unit: minute, requests_per_unit: 1}\n";

    fn server() -> (RlsServer, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("legate-rls-{}-{}", std::process::id(), rand::random::<u32>()));
        let ctrl = Controller::open(Store::open(&dir).expect("store")).expect("controller");
        let docs = parse_documents(LIMITS).expect("yaml");
        ctrl.apply(&docs, "test", "limits", false).expect("applied");
        (RlsServer::new(ctrl), dir)
    }

    fn request(key: &str, value: &str) -> RateLimitRequest {
        let entry = Entry { key: key.into(), value: value.into() };
        RateLimitRequest {
            domain: "api".into(),
            descriptors: vec![RateLimitDescriptor { entries: vec![entry], ..Default::default() }],
            ..Default::default()
        }
    }

    /// (overall code, remaining) of each answer.
    fn answers(s: &RlsServer, r: &RateLimitRequest, times: usize, now: u64) -> Vec<(i32, u32)> {
        (0..times)
            .map(|_| {
                let a = s.answer(r, now);
                (a.overall_code, a.statuses.first().map_or(u32::MAX, |s| s.limit_remaining))
            })
            .collect()
    }

    #[test]
    fn shadow_mode_counts_but_never_limits() {
        let (s, dir) = server();
        let (ok, over) = (Code::Ok as i32, Code::OverLimit as i32);
        assert_eq!(answers(&s, &request("user", "bob"), 3, 600), [(ok, 1), (ok, 0), (over, 0)]);
        assert_eq!(answers(&s, &request("trial", "bob"), 3, 600), [(ok, 0), (ok, 0), (ok, 0)]);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn the_other_replicas_counts_join_the_decision() {
        let (s, dir) = server();
        let key = "api\u{1f}user=carol".to_string();
        let other = Batch { windows: vec![Window { key, start: 600, end: 660, count: 1 }] };
        s.ctrl.rate_counters.set_others([&other], 610);
        let (ok, over) = (Code::Ok as i32, Code::OverLimit as i32);
        assert_eq!(answers(&s, &request("user", "carol"), 2, 610), [(ok, 0), (over, 0)]);
        // The next window is this replica's alone.
        assert_eq!(answers(&s, &request("user", "carol"), 1, 660), [(ok, 1)]);
        let _ = std::fs::remove_dir_all(dir);
    }
}
