//! A route's or virtual host's `rate_limits`: the actions that make a
//! request's rate limit descriptors (generic key, request header, remote
//! address, source and destination cluster, header value match), by stage,
//! and which of a virtual host's
//! join a route's. The local rate limit filter matches the descriptors
//! against its buckets; the rate limit filter sends them to its service.

use crate::common::matcher::{HeaderMatch, Pseudo};
use legate_api::pb::envoy::config::route::v3::rate_limit::action::ActionSpecifier;
use legate_api::pb::envoy::config::route::v3::RateLimit as PbRateLimit;
use std::net::IpAddr;

/// One descriptor: (key, value) entries in order.
pub type Entries = Vec<(String, String)>;

/// A route's `rate_limits` entry, compiled: its stage and the actions
/// whose entries make one descriptor.
#[derive(Debug)]
pub struct DescriptorPolicy {
    stage: u32,
    actions: Vec<Action>,
}

#[derive(Debug)]
enum Action {
    GenericKey {
        key: String,
        value: String,
    },
    RequestHeader {
        header: http::HeaderName,
        key: String,
        skip_if_absent: bool,
    },
    RemoteAddress,
    /// `source_cluster`: this proxy's cluster (the node's `cluster`).
    SourceCluster,
    /// `destination_cluster`: the cluster the route sends to.
    DestinationCluster,
    HeaderValueMatch {
        key: String,
        value: String,
        expect_match: bool,
        headers: Vec<HeaderMatch>,
    },
}

impl DescriptorPolicy {
    pub fn compile(r: &PbRateLimit) -> Result<Self, String> {
        let mut actions = Vec::with_capacity(r.actions.len());
        for (i, a) in r.actions.iter().enumerate() {
            let err = |m: &str| format!("actions[{i}]: {m}");
            actions.push(match &a.action_specifier {
                Some(ActionSpecifier::GenericKey(g)) => Action::GenericKey {
                    key: if g.descriptor_key.is_empty() { "generic_key".into() } else { g.descriptor_key.clone() },
                    value: g.descriptor_value.clone(),
                },
                Some(ActionSpecifier::RequestHeaders(h)) => Action::RequestHeader {
                    header: http::HeaderName::from_bytes(h.header_name.to_ascii_lowercase().as_bytes())
                        .map_err(|_| err("request_headers.header_name: invalid header name"))?,
                    key: h.descriptor_key.clone(),
                    skip_if_absent: h.skip_if_absent,
                },
                Some(ActionSpecifier::RemoteAddress(_)) => Action::RemoteAddress,
                Some(ActionSpecifier::SourceCluster(_)) => Action::SourceCluster,
                Some(ActionSpecifier::DestinationCluster(_)) => Action::DestinationCluster,
                Some(ActionSpecifier::HeaderValueMatch(h)) => Action::HeaderValueMatch {
                    key: if h.descriptor_key.is_empty() { "header_match".into() } else { h.descriptor_key.clone() },
                    value: h.descriptor_value.clone(),
                    expect_match: h.expect_match.is_none_or(|b| b.value),
                    headers: h.headers.iter().map(HeaderMatch::new).collect::<Result<_, _>>()?,
                },
                _ => return Err(err(
                    "only generic_key, request_headers, remote_address, source_cluster, destination_cluster and header_value_match actions are supported",
                )),
            });
        }
        Ok(Self { stage: r.stage.map_or(0, |v| v.value), actions })
    }

    /// The rate limit stage this entry belongs to (`stage`).
    pub fn stage(&self) -> u32 {
        self.stage
    }

    /// The descriptor for a request (`remote` is the client after
    /// x-forwarded-for), or none when an action has nothing to say (a
    /// missing header without `skip_if_absent`, a header match that did not
    /// come out as expected, a destination cluster the route does not name
    /// by itself: `weighted_clusters` or `cluster_header`). `clusters` are
    /// this proxy's cluster and the route's.
    pub fn descriptor(
        &self,
        request_headers: &http::HeaderMap,
        pseudo: &Pseudo<'_>,
        remote: IpAddr,
        clusters: (&str, Option<&str>),
    ) -> Option<Entries> {
        let mut entries = Vec::with_capacity(self.actions.len());
        for a in &self.actions {
            match a {
                Action::GenericKey { key, value } => entries.push((key.clone(), value.clone())),
                Action::RequestHeader { header, key, skip_if_absent } => {
                    match request_headers.get(header).and_then(|v| v.to_str().ok()) {
                        Some(v) => entries.push((key.clone(), v.to_string())),
                        None if *skip_if_absent => {}
                        None => return None,
                    }
                }
                Action::RemoteAddress => entries.push(("remote_address".into(), remote.to_string())),
                Action::SourceCluster => entries.push(("source_cluster".into(), clusters.0.to_string())),
                Action::DestinationCluster => entries.push(("destination_cluster".into(), clusters.1?.to_string())),
                Action::HeaderValueMatch { key, value, expect_match, headers } => {
                    let all = headers.iter().all(|m| m.matches(request_headers, pseudo));
                    if all != *expect_match {
                        return None;
                    }
                    entries.push((key.clone(), value.clone()));
                }
            }
        }
        (!entries.is_empty()).then_some(entries)
    }
}

/// How a virtual host's `rate_limits` join a route's (`vh_rate_limits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VhRateLimits {
    /// The virtual host's only when the route has none.
    #[default]
    Override,
    /// Both.
    Include,
    /// The route's only.
    Ignore,
}

/// A request's descriptors from the route's `rate_limits`, then the
/// virtual host's as `vh` says, those of `stage` only; `clusters` are this
/// proxy's cluster and the route's (see [`DescriptorPolicy::descriptor`]).
pub fn request_descriptors(
    route: &[DescriptorPolicy],
    vhost: &[DescriptorPolicy],
    vh: VhRateLimits,
    stage: u32,
    (headers, pseudo, remote, clusters): (&http::HeaderMap, &Pseudo<'_>, IpAddr, (&str, Option<&str>)),
) -> Vec<Entries> {
    let vhost = match vh {
        VhRateLimits::Include => vhost,
        VhRateLimits::Override if route.is_empty() => vhost,
        _ => &[][..],
    };
    route
        .iter()
        .chain(vhost)
        .filter(|p| p.stage() == stage)
        .filter_map(|p| p.descriptor(headers, pseudo, remote, clusters))
        .collect()
}
