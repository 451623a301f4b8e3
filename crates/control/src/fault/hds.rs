//! Which proxy checks which endpoint (Envoy's Health Discovery Service):
//! every endpoint of a service with `health_check.hds: true` is checked by
//! exactly one of the proxies that offered (their HDS streams), chosen by
//! rendezvous hashing of the endpoint and the proxy's node id, so one
//! failure is detected once, and a proxy that comes or goes moves only its
//! own share of endpoints.

use crate::discovery::node::NodeInfo;
use crate::resources::mesh::service::HdsTarget;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

/// Endpoints as (address, port).
pub type Endpoints = Vec<(String, u16)>;

/// One stream's share: per service, its health check and the endpoints.
pub type Share = Vec<(HdsTarget, Endpoints)>;

/// Each stream's share of `targets`, by stream id.
pub fn assign(targets: &[HdsTarget], checkers: &BTreeMap<u64, NodeInfo>) -> BTreeMap<u64, Share> {
    let mut out: BTreeMap<u64, BTreeMap<String, (HdsTarget, Endpoints)>> = BTreeMap::new();
    for t in targets {
        for (address, port) in &t.endpoints {
            let key = format!("{}/{address}:{port}", t.service);
            let Some((id, _)) = checkers.iter().max_by_key(|(id, n)| (weight(&key, &n.id), std::cmp::Reverse(**id)))
            else {
                continue;
            };
            let share = out.entry(*id).or_default();
            let entry = share.entry(t.service.clone()).or_insert_with(|| (t.clone(), Vec::new()));
            entry.1.push((address.clone(), *port));
        }
    }
    out.into_iter().map(|(id, s)| (id, s.into_values().collect())).collect()
}

/// The rendezvous weight of `key` on checker `node`.
fn weight(key: &str, node: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (key, node).hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(service: &str, ports: &[u16]) -> HdsTarget {
        HdsTarget {
            service: service.into(),
            health_check: serde_json::json!({}),
            endpoints: ports.iter().map(|p| ("127.0.0.1".to_string(), *p)).collect(),
        }
    }

    fn node(id: &str) -> NodeInfo {
        NodeInfo { id: id.into(), ..Default::default() }
    }

    #[test]
    fn each_endpoint_is_checked_once_and_only_a_leaving_checkers_share_moves() {
        let targets = vec![target("web", &(8000..8040).collect::<Vec<_>>()), target("api", &[9000, 9001])];
        let three: BTreeMap<u64, NodeInfo> = [(1, node("a")), (2, node("b")), (3, node("c"))].into_iter().collect();
        let before = assign(&targets, &three);
        let count = |a: &BTreeMap<u64, Share>| a.values().flatten().map(|(_, eps)| eps.len()).sum::<usize>();
        assert_eq!(count(&before), 42, "every endpoint once");
        assert_eq!(before.len(), 3, "spread over the three: {:?}", before.keys());
        let two: BTreeMap<u64, NodeInfo> = [(1, node("a")), (2, node("b"))].into_iter().collect();
        let after = assign(&targets, &two);
        assert_eq!(count(&after), 42);
        for id in [1, 2] {
            for (t, eps) in &before[&id] {
                let kept = &after[&id].iter().find(|(a, _)| a.service == t.service).expect("service kept").1;
                assert!(eps.iter().all(|e| kept.contains(e)), "checker {id} kept its endpoints of {}", t.service);
            }
        }
        assert!(assign(&targets, &BTreeMap::new()).is_empty());
    }
}
