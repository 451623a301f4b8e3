//! A route's `request_mirror_policies`: where each copy of a request goes
//! and how often.

use legate_api::pb::envoy::config::route::v3::route_action::RequestMirrorPolicy;

/// Where a mirror sends its copy.
pub enum MirrorTarget {
    /// `cluster`.
    Named(String),
    /// `cluster_header`: the cluster the request names in this header (no
    /// copy when the header is absent or names no cluster, as in Envoy).
    Header(http::HeaderName),
}

/// One `request_mirror_policies` entry.
pub struct Mirror {
    pub cluster: MirrorTarget,
    /// `runtime_fraction`: the share mirrored (none: every request).
    pub chance: Option<crate::common::runtime::RuntimeFraction>,
    /// Leave the host as it is instead of appending `-shadow`.
    pub keep_host: bool,
}

/// The route's mirror policies, in order.
pub fn compile(policies: &[RequestMirrorPolicy]) -> Result<Vec<Mirror>, String> {
    policies
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let cluster = match (m.cluster.is_empty(), m.cluster_header.is_empty()) {
                (false, _) => MirrorTarget::Named(m.cluster.clone()),
                (true, false) => MirrorTarget::Header(
                    http::HeaderName::from_bytes(m.cluster_header.to_ascii_lowercase().as_bytes())
                        .map_err(|_| format!("request_mirror_policies[{i}].cluster_header: invalid header name"))?,
                ),
                (true, true) => {
                    return Err(format!("request_mirror_policies[{i}]: cluster or cluster_header is required"))
                }
            };
            Ok(Mirror {
                cluster,
                chance: m.runtime_fraction.as_ref().map(crate::common::runtime::RuntimeFraction::new),
                keep_host: m.disable_shadow_host_suffix_append,
            })
        })
        .collect()
}
