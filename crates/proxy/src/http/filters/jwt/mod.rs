//! `envoy.filters.http.jwt_authn` with local or remote JWKS: rules pick a
//! requirement by path (and headers); a requirement names providers; a
//! provider says where the token is, who must have issued it and for whom,
//! and the keys that sign it. Failures are answered as Envoy does: 401 (403
//! for an audience not allowed) with the reason as body and
//! `www-authenticate`.
//!
//! Cost per request under a rule: the token is split and base64url-decoded,
//! its header and payload parsed as JSON, and its signature checked (one RSA
//! or ECDSA verification); only remote keys are cached between requests.

mod failure;
mod keys;
mod provider;
pub mod remote_jwks;
mod rules;

pub use remote_jwks::{start_async_fetches, RemoteJwks};

use crate::common::matcher::Pseudo;
use crate::http::filters::api::{
    FilterContext, FilterStatus, HttpFilter, Registration, RequestCtx, ResponseState, Verdict,
};
use crate::stats::Counter;
use failure::{www_authenticate, Failure};
use http::{HeaderMap, HeaderName, HeaderValue};
use keys::Keys;
use legate_api::pb::envoy::extensions::filters::http::jwt_authn::v3::JwtAuthentication;
use legate_api::pb::google::protobuf::Any;
use provider::{token_issuer, Jwks, Provider, TokenSource};
use remote_jwks::FetchContext;
use rules::{compile_rules, Requirement, Rule};
use std::collections::HashMap;
use std::sync::Arc;

pub const TYPE: &str = "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication";

pub const REGISTRATION: Registration =
    Registration { type_url: TYPE, compile: JwtAuthn::compile_any, per_route: None, one_per_chain: None };

pub struct JwtAuthn {
    providers: Vec<Provider>,
    /// Some provider has `remote_jwks`.
    has_remote: bool,
    rules: Vec<Rule>,
    allowed: Arc<Counter>,
    denied: Arc<Counter>,
}

/// What a verified request gets: headers to set and to remove.
#[derive(Default)]
struct Outcome {
    remove: Vec<HeaderName>,
    /// The token came in this query parameter and is not forwarded.
    strip_query: Option<String>,
    set: Vec<(HeaderName, HeaderValue)>,
}

fn claim_value(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

impl JwtAuthn {
    fn compile_any(any: &Any, ctx: &FilterContext<'_>) -> Result<Box<dyn HttpFilter>, String> {
        let c: JwtAuthentication = legate_api::any::unpack(any)?;
        let j = Self::compile(&c, ctx).map_err(|e| format!("http_filters[{}].typed_config.{e}", ctx.index))?;
        Ok(Box::new(j))
    }

    pub fn compile(c: &JwtAuthentication, ctx: &FilterContext<'_>) -> Result<Self, String> {
        let store = ctx.server.store;
        let p = format!("http.{}.jwt_authn.", ctx.stat_prefix);
        let fetch = FetchContext {
            clusters: ctx.server.clusters,
            jwks_async: ctx.server.jwks_async,
            fetch_success: store.counter(&format!("{p}jwks_fetch_success")),
            fetch_failed: store.counter(&format!("{p}jwks_fetch_failed")),
        };
        let mut names: Vec<&String> = c.providers.keys().collect();
        names.sort();
        let mut index = HashMap::new();
        let mut providers = Vec::new();
        for n in names {
            let p = Provider::new(&c.providers[n], &fetch).map_err(|e| format!("providers[\"{n}\"].{e}"))?;
            index.insert(n.clone(), providers.len());
            providers.push(p);
        }
        let rules = compile_rules(c, &index)?;
        Ok(Self {
            has_remote: providers.iter().any(|p| matches!(p.jwks, Jwks::Remote(_))),
            providers,
            rules,
            allowed: store.counter(&format!("{p}allowed")),
            denied: store.counter(&format!("{p}denied")),
        })
    }

    /// Provider `i` finds and verifies a token; what it forwards goes into `out`.
    fn check_provider(
        &self,
        i: usize,
        headers: &HeaderMap,
        path: &str,
        remote: &[Option<Arc<Keys>>],
        out: &mut Outcome,
    ) -> Result<(), Failure> {
        let p = &self.providers[i];
        let (token, from) = p.extract(headers, path).ok_or(Failure::Missing)?;
        let payload = p.verify(token, remote.get(i).and_then(|k| k.as_deref()))?;
        if !p.forward {
            match from {
                TokenSource::Header(h) => out.remove.push(h.clone()),
                TokenSource::Query(name) => out.strip_query = Some(name.to_string()),
            }
        }
        if let Some(h) = &p.payload_header {
            // The payload exactly as the token carries it (base64url).
            let seg = token.split('.').nth(1).unwrap_or("");
            if let Ok(v) = HeaderValue::from_str(seg) {
                out.set.push((h.clone(), v));
            }
        }
        for (h, path) in &p.claim_headers {
            let v = path.iter().try_fold(&payload, |v, k| v.get(k));
            if let Some(s) = v.and_then(claim_value) {
                if let Ok(v) = HeaderValue::from_str(&s) {
                    out.set.push((h.clone(), v));
                }
            }
        }
        Ok(())
    }

    /// `remote`: per provider, the remote keys fetched for this request.
    fn check(
        &self,
        r: &Requirement,
        headers: &HeaderMap,
        path: &str,
        remote: &[Option<Arc<Keys>>],
        out: &mut Outcome,
    ) -> Result<(), Failure> {
        match r {
            Requirement::Provider(i) => self.check_provider(*i, headers, path, remote, out),
            Requirement::Any(list) => {
                let mut first_error = None;
                for r in list {
                    let mut o = Outcome::default();
                    match self.check(r, headers, path, remote, &mut o) {
                        Ok(()) => {
                            out.remove.extend(o.remove);
                            out.set.extend(o.set);
                            if o.strip_query.is_some() {
                                out.strip_query = o.strip_query;
                            }
                            return Ok(());
                        }
                        Err(Failure::Missing) => {}
                        Err(e) => {
                            first_error.get_or_insert(e);
                        }
                    }
                }
                Err(first_error.unwrap_or(Failure::Missing))
            }
            Requirement::All(list) => list.iter().try_for_each(|r| self.check(r, headers, path, remote, out)),
            Requirement::AllowMissing | Requirement::AllowMissingOrFailed => {
                // The first provider that finds a token verifies it.
                // As Envoy: a token found in any provider's locations is
                // verified by the provider of its issuer.
                let found: Vec<(usize, &str)> = (0..self.providers.len())
                    .filter_map(|i| self.providers[i].extract(headers, path).map(|(t, _)| (i, t)))
                    .collect();
                let by_issuer = found.iter().find(|(i, t)| {
                    let issuer = &self.providers[*i].issuer;
                    issuer.is_empty() || token_issuer(t).as_deref() == Some(issuer.as_str())
                });
                let result = match by_issuer.or(found.first()) {
                    Some((i, _)) => self.check(&Requirement::Provider(*i), headers, path, remote, out),
                    None => Ok(()),
                };
                match r {
                    Requirement::AllowMissingOrFailed => Ok(()),
                    _ => result,
                }
            }
        }
    }

    /// The requirement of the first rule that matches the request; none
    /// when no rule matches or the rule asks for nothing.
    fn requirement(&self, headers: &HeaderMap, pseudo: &Pseudo<'_>) -> Option<&Requirement> {
        self.rules.iter().find(|r| r.matches(headers, pseudo)).and_then(|r: &Rule| r.requires.as_ref())
    }

    /// Provider `i`'s remote keys are needed: it has `remote_jwks` and the
    /// request holds its token, which passes the checks that need no key.
    fn needs_remote_keys(&self, i: usize, headers: &HeaderMap, path: &str) -> Option<&RemoteJwks> {
        let p = &self.providers[i];
        let Jwks::Remote(r) = &p.jwks else { return None };
        let (token, _) = p.extract(headers, path)?;
        p.precheck(token).is_ok().then_some(&**r)
    }

    /// Fills `remote` with the cached keys of the providers that need them,
    /// in order, up to the first provider whose keys must be fetched: that
    /// one is returned.
    fn cached_remote_keys(&self, rq: &RequestCtx<'_>, remote: &mut [Option<Arc<Keys>>]) -> Option<usize> {
        for (i, slot) in remote.iter_mut().enumerate() {
            if let Some(r) = self.needs_remote_keys(i, rq.headers, rq.pseudo.path) {
                match r.fresh() {
                    Some(keys) => *slot = Some(keys),
                    None => return Some(i),
                }
            }
        }
        None
    }

    /// Gets the remote keys from provider `from` on, fetching those not
    /// cached (the request waits, as Envoy's do without `async_fetch`).
    async fn fetch_remote_keys(&self, rq: &RequestCtx<'_>, remote: &mut [Option<Arc<Keys>>], from: usize) {
        for (i, slot) in remote.iter_mut().enumerate().skip(from) {
            if let Some(r) = self.needs_remote_keys(i, rq.headers, rq.pseudo.path) {
                *slot = r.keys().await;
            }
        }
    }

    /// Evaluates the requirement with the keys at hand: a verified request
    /// gets the headers its providers forward (and loses the token if not
    /// forwarded); a refused one is answered.
    fn decide(&self, requires: &Requirement, rq: &mut RequestCtx<'_>, remote: &[Option<Arc<Keys>>]) -> Verdict {
        let mut out = Outcome::default();
        match self.check(requires, rq.headers, rq.pseudo.path, remote, &mut out) {
            Ok(()) => {
                self.allowed.inc();
                for h in out.remove {
                    rq.headers.remove(h);
                }
                for (k, v) in out.set {
                    rq.headers.insert(k, v);
                }
                if let Some(name) = out.strip_query {
                    rq.new_path = Some(without_param(rq.pseudo.path, &name));
                }
                Verdict::Continue
            }
            Err(e) => {
                self.denied.inc();
                let headers = www_authenticate(e, rq.pseudo.authority, rq.pseudo.path)
                    .map(|v| (http::header::WWW_AUTHENTICATE, v))
                    .into_iter()
                    .collect();
                Verdict::Reply { status: e.status(), body: e.message(), details: e.details(), flag: "", headers }
            }
        }
    }
}

impl HttpFilter for JwtAuthn {
    /// Runs the first rule that matches the request. Remote keys are read
    /// from the cache (or fetched, the only case that waits) for the
    /// providers holding a token, before the requirement is evaluated.
    /// Nothing is allocated without remote JWKS.
    fn on_request<'r>(&'r self, rq: &'r mut RequestCtx<'_>, _: &'r mut ResponseState) -> FilterStatus<'r> {
        let Some(requires) = self.requirement(rq.headers, &rq.pseudo) else {
            // Envoy counts a request no rule asks anything of as allowed.
            self.allowed.inc();
            return FilterStatus::Continue;
        };
        let mut remote: Vec<Option<Arc<Keys>>> = Vec::new();
        if self.has_remote {
            remote.resize(self.providers.len(), None);
            if let Some(first) = self.cached_remote_keys(rq, &mut remote) {
                return FilterStatus::Wait(Box::pin(async move {
                    self.fetch_remote_keys(rq, &mut remote, first).await;
                    self.decide(requires, rq, &remote)
                }));
            }
        }
        FilterStatus::Done(self.decide(requires, rq, &remote))
    }
}

/// The path with the query parameter `name` taken out.
fn without_param(path: &str, name: &str) -> String {
    let Some((p, q)) = path.split_once('?') else { return path.to_string() };
    let kept: Vec<&str> = q.split('&').filter(|kv| kv.strip_prefix(name).is_none_or(|r| !r.starts_with('='))).collect();
    if kept.is_empty() {
        p.to_string()
    } else {
        format!("{p}?{}", kept.join("&"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_parameter_is_taken_out_of_the_query() {
        assert_eq!(without_param("/a?access_token=x", "access_token"), "/a");
        assert_eq!(without_param("/a?b=1&access_token=x&c=2", "access_token"), "/a?b=1&c=2");
        assert_eq!(without_param("/a", "access_token"), "/a");
    }
}
