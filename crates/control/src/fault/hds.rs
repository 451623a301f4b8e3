//! Which proxy checks which endpoint (Envoy's Health Discovery Service):
//! every endpoint of a service with `health_check.hds: true` is checked by
//! exactly one of the proxies that offered (their HDS streams): one of
//! those nearest to it (the same sub-zone, else zone, else region, else
//! any: the node's `locality` against the endpoint's labels `region`,
//! `zone`, `sub_zone`), and among those by rendezvous hashing of the
//! endpoint and the proxy's node id, so one failure is detected once, and
//! a proxy that comes or goes moves only its own share of endpoints.

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
        for (address, port, locality) in &t.endpoints {
            let key = format!("{}/{address}:{port}", t.service);
            let nearest = checkers
                .iter()
                .max_by_key(|(id, n)| (n.locality.closeness(locality), weight(&key, &n.id), std::cmp::Reverse(**id)));
            let Some((id, _)) = nearest else { continue };
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
    use crate::discovery::node::Locality;

    fn target(service: &str, ports: &[u16]) -> HdsTarget {
        HdsTarget {
            service: service.into(),
            health_check: serde_json::json!({}),
            endpoints: ports.iter().map(|p| ("127.0.0.1".to_string(), *p, Locality::default())).collect(),
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

    fn at(region: &str, zone: &str, sub_zone: &str) -> Locality {
        Locality { region: region.into(), zone: zone.into(), sub_zone: sub_zone.into() }
    }

    fn located(id: &str, l: Locality) -> NodeInfo {
        NodeInfo { id: id.into(), locality: l, ..Default::default() }
    }

    #[test]
    fn the_nearest_checker_checks_an_endpoint() {
        let eps = [
            (8001, at("eu", "a", "1")),
            (8002, at("eu", "a", "2")),
            (8003, at("eu", "b", "")),
            (8004, at("us", "c", "")),
            (8005, Locality::default()),
        ];
        let t = HdsTarget {
            service: "web".into(),
            health_check: serde_json::json!({}),
            endpoints: eps.iter().map(|(p, l)| ("127.0.0.1".to_string(), *p, l.clone())).collect(),
        };
        let checkers: BTreeMap<u64, NodeInfo> = [
            (1, located("a1", at("eu", "a", "1"))),
            (2, located("a2", at("eu", "a", "2"))),
            (3, located("b", at("eu", "b", "9"))),
            (4, located("far", at("ap", "x", ""))),
        ]
        .into_iter()
        .collect();
        let shares = assign(&[t], &checkers);
        let by = |port: u16| {
            shares.iter().find(|(_, s)| s[0].1.iter().any(|(_, p)| *p == port)).map(|(id, _)| *id).expect("assigned")
        };
        assert_eq!(by(8001), 1, "the same sub-zone");
        assert_eq!(by(8002), 2, "the same sub-zone");
        assert_eq!(by(8003), 3, "the same zone");
        // No checker in region `us`, none for an endpoint without a
        // locality: any of them, by hashing.
        assert!((1..=4).contains(&by(8004)) && (1..=4).contains(&by(8005)));
        let only_zone_a: BTreeMap<u64, NodeInfo> =
            [(1, located("a1", at("eu", "a", "1"))), (4, located("far", at("ap", "x", "")))].into_iter().collect();
        let t = HdsTarget {
            service: "web".into(),
            health_check: serde_json::json!({}),
            endpoints: vec![("127.0.0.1".into(), 8003, at("eu", "b", ""))],
        };
        assert_eq!(assign(&[t], &only_zone_a).keys().copied().collect::<Vec<_>>(), vec![1], "the same region");
    }
}
