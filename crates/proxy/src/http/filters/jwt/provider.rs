//! A JWT provider: where its token is (headers, query parameters), who
//! must have issued it and for whom, its keys, and what a verified token
//! forwards (payload and claims as headers).

use super::failure::Failure;
use super::keys::{family, parse_jwks, Keys};
use super::remote_jwks::{FetchContext, RemoteJwks};
use base64::Engine as _;
use http::{HeaderMap, HeaderName};
use jsonwebtoken::Algorithm;
use legate_api::pb::envoy::extensions::filters::http::jwt_authn::v3::{jwt_provider::JwksSourceSpecifier, JwtProvider};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Where a provider looks for its token.
struct Location {
    header: HeaderName,
    prefix: String,
}

/// Where a provider's keys come from.
pub(super) enum Jwks {
    Local(Keys),
    Remote(Arc<RemoteJwks>),
}

pub(super) struct Provider {
    pub(super) issuer: String,
    audiences: Vec<String>,
    pub(super) jwks: Jwks,
    locations: Vec<Location>,
    /// Query parameters that may carry the token (`access_token` by default).
    query_params: Vec<String>,
    pub(super) forward: bool,
    pub(super) payload_header: Option<HeaderName>,
    pub(super) claim_headers: Vec<(HeaderName, Vec<String>)>,
    clock_skew: u64,
}

impl Provider {
    pub(super) fn new(p: &JwtProvider, ctx: &FetchContext<'_>) -> Result<Self, String> {
        let jwks = match &p.jwks_source_specifier {
            Some(JwksSourceSpecifier::LocalJwks(ds)) => {
                Jwks::Local(parse_jwks(&crate::common::datasource::read(ds)?).map_err(|e| format!("local_jwks: {e}"))?)
            }
            Some(JwksSourceSpecifier::RemoteJwks(r)) => {
                let r = Arc::new(RemoteJwks::new(r, ctx)?);
                if r.async_fetch.is_some() {
                    ctx.jwks_async.lock().unwrap_or_else(|e| e.into_inner()).push(Arc::downgrade(&r));
                }
                Jwks::Remote(r)
            }
            None => return Err("local_jwks or remote_jwks is required".into()),
        };
        if !p.from_cookies.is_empty() {
            return Err("from_cookies is not supported".into());
        }
        let default = p.from_headers.is_empty() && p.from_params.is_empty();
        let locations = if default {
            vec![Location { header: http::header::AUTHORIZATION, prefix: "Bearer ".into() }]
        } else {
            p.from_headers
                .iter()
                .map(|h| {
                    Ok(Location {
                        header: HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes())
                            .map_err(|_| format!("from_headers: invalid header name '{}'", h.name))?,
                        prefix: h.value_prefix.clone(),
                    })
                })
                .collect::<Result<_, String>>()?
        };
        let header = |s: &str| {
            HeaderName::from_bytes(s.to_ascii_lowercase().as_bytes()).map_err(|_| format!("invalid header name '{s}'"))
        };
        Ok(Self {
            issuer: p.issuer.clone(),
            audiences: p.audiences.clone(),
            jwks,
            locations,
            query_params: if default { vec!["access_token".into()] } else { p.from_params.clone() },
            forward: p.forward,
            payload_header: (!p.forward_payload_header.is_empty())
                .then(|| header(&p.forward_payload_header))
                .transpose()?,
            claim_headers: p
                .claim_to_headers
                .iter()
                .map(|c| Ok((header(&c.header_name)?, c.claim_name.split('.').map(str::to_string).collect())))
                .collect::<Result<_, String>>()?,
            clock_skew: if p.clock_skew_seconds == 0 { 60 } else { u64::from(p.clock_skew_seconds) },
        })
    }

    /// The token and where it came from.
    pub(super) fn extract<'h>(&'h self, headers: &'h HeaderMap, path: &'h str) -> Option<(&'h str, TokenSource<'h>)> {
        for loc in &self.locations {
            for v in headers.get_all(&loc.header) {
                let Ok(v) = v.to_str() else { continue };
                let rest = if loc.prefix.is_empty() {
                    Some(v)
                } else if v.len() >= loc.prefix.len() && v[..loc.prefix.len()].eq_ignore_ascii_case(&loc.prefix) {
                    Some(&v[loc.prefix.len()..])
                } else {
                    None
                };
                if let Some(t) = rest.map(str::trim).filter(|t| !t.is_empty()) {
                    return Some((t, TokenSource::Header(&loc.header)));
                }
            }
        }
        let query = path.split_once('?').map(|(_, q)| q)?;
        for name in &self.query_params {
            for pair in query.split('&') {
                let value = pair.strip_prefix(name.as_str()).and_then(|r| r.strip_prefix('='));
                if let Some(t) = value.filter(|t| !t.is_empty()) {
                    return Some((t, TokenSource::Query(name)));
                }
            }
        }
        None
    }

    /// Checks a token in Envoy's order: form, issuer, time, audience, then
    /// (with the keys, which may have been fetched) key and signature.
    pub(super) fn verify(&self, token: &str, remote_keys: Option<&Keys>) -> Result<serde_json::Value, Failure> {
        let pre = self.precheck(token)?;
        let keys = match &self.jwks {
            Jwks::Local(k) => k,
            Jwks::Remote(_) => remote_keys.ok_or(Failure::JwksFetchFail)?,
        };
        let (alg, kid, payload, message_len, sig) = pre;
        let fam = family(alg);
        let candidates = keys
            .iter()
            .filter(|(k, _, f)| *f == fam && (kid.is_none() || k.is_none() || k.as_deref() == kid.as_deref()));
        let message = &token[..message_len];
        let mut any = false;
        for (_, key, _) in candidates {
            any = true;
            if jsonwebtoken::crypto::verify(sig, message.as_bytes(), key, alg).unwrap_or(false) {
                return Ok(payload);
            }
        }
        Err(if any { Failure::VerificationFails } else { Failure::NoKey })
    }

    /// Everything that needs no key: form, issuer, time, audience. Gives the
    /// algorithm, key id, payload, signed length and signature.
    #[allow(clippy::type_complexity)]
    pub(super) fn precheck<'t>(
        &self,
        token: &'t str,
    ) -> Result<(Algorithm, Option<String>, serde_json::Value, usize, &'t str), Failure> {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(sig), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(Failure::BadFormat);
        };
        let header: serde_json::Value = b64
            .decode(h.trim_end_matches('='))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(Failure::HeaderParse)?;
        let payload: serde_json::Value = b64
            .decode(p.trim_end_matches('='))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .filter(serde_json::Value::is_object)
            .ok_or(Failure::PayloadParse)?;
        let alg: Algorithm = header["alg"].as_str().and_then(|a| a.parse().ok()).ok_or(Failure::BadAlg)?;
        if !self.issuer.is_empty() && payload["iss"].as_str() != Some(self.issuer.as_str()) {
            return Err(Failure::UnknownIssuer);
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if let Some(nbf) = payload["nbf"].as_u64() {
            if nbf > now + self.clock_skew {
                return Err(Failure::NotYetValid);
            }
        }
        if let Some(exp) = payload["exp"].as_u64() {
            if exp + self.clock_skew < now {
                return Err(Failure::Expired);
            }
        }
        if !self.audiences.is_empty() {
            let aud = &payload["aud"];
            let ok = match aud {
                serde_json::Value::String(s) => self.audiences.contains(s),
                serde_json::Value::Array(a) => {
                    a.iter().filter_map(|v| v.as_str()).any(|s| self.audiences.iter().any(|x| x == s))
                }
                _ => false,
            };
            if !ok {
                return Err(Failure::AudienceNotAllowed);
            }
        }
        let kid = header["kid"].as_str().map(str::to_string);
        Ok((alg, kid, payload, h.len() + 1 + p.len(), sig))
    }
}

/// Where a token was found.
pub(super) enum TokenSource<'a> {
    Header(&'a HeaderName),
    Query(&'a str),
}

/// The `iss` claim of a token, read without verifying it.
pub(super) fn token_issuer(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v["iss"].as_str().map(str::to_string)
}
