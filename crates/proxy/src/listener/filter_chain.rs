//! Filter-chain matching as Envoy does it.
//!
//! Envoy narrows the candidate chains criterion by criterion, in a fixed
//! order: destination port, destination IP (`prefix_ranges`), server name
//! (SNI), transport protocol, application protocols (ALPN), source IP
//! (`source_prefix_ranges`), source port. At each step only the chains with
//! the most specific match survive (a chain that leaves the criterion unset
//! matches anything, least specifically). There is no backtracking: if the
//! most specific chains at one step all fail a later step, the connection
//! has no match (and gets the default chain, if any).
//!
//! Cost per connection: a few passes over the chain list (configs have a
//! handful of chains), no allocation beyond one small index vector.

use crate::common::cidr::Cidr;
use legate_api::pb::envoy::config::core::v3::CidrRange;
use legate_api::pb::envoy::config::listener::v3::FilterChainMatch;
use std::net::{IpAddr, SocketAddr};

/// A chain's `filter_chain_match`, compiled. Lists are sorted so that two
/// chains with the same rules compare equal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainMatch {
    destination_port: Option<u16>,
    prefixes: Vec<Cidr>,
    server_names: Vec<String>,
    transport_protocol: Option<String>,
    application_protocols: Vec<String>,
    sources: Vec<Cidr>,
    source_ports: Vec<u16>,
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v.dedup();
    v
}

impl ChainMatch {
    pub fn compile(m: Option<&FilterChainMatch>) -> Result<Self, String> {
        let Some(m) = m else { return Ok(Self::default()) };
        let cidrs = |rs: &[CidrRange], field: &str| -> Result<Vec<Cidr>, String> {
            let mut v =
                rs.iter().map(Cidr::parse).collect::<Result<Vec<_>, _>>().map_err(|e| format!("{field}: {e}"))?;
            v.sort();
            Ok(v)
        };
        let port = |p: u32, field: &str| u16::try_from(p).map_err(|_| format!("{field}: port {p} out of range"));
        for n in &m.server_names {
            let rest = n.strip_prefix("*.").unwrap_or(n);
            if rest.contains('*') {
                return Err(format!("server_names: '{n}': only a leading '*.' wildcard is supported"));
            }
        }
        Ok(Self {
            destination_port: m.destination_port.map(|p| port(p.value, "destination_port")).transpose()?,
            prefixes: cidrs(&m.prefix_ranges, "prefix_ranges")?,
            server_names: sorted(m.server_names.iter().map(|s| s.to_ascii_lowercase()).collect()),
            transport_protocol: Some(m.transport_protocol.clone()).filter(|t| !t.is_empty()),
            application_protocols: sorted(m.application_protocols.clone()),
            sources: cidrs(&m.source_prefix_ranges, "source_prefix_ranges")?,
            source_ports: sorted(
                m.source_ports.iter().map(|p| port(*p, "source_ports")).collect::<Result<Vec<_>, _>>()?,
            ),
        })
    }

    /// Whether the listener needs to know SNI/ALPN/transport to match (that is,
    /// a `tls_inspector`).
    pub fn uses_tls_facts(&self) -> bool {
        !self.server_names.is_empty() || self.transport_protocol.is_some() || !self.application_protocols.is_empty()
    }
}

/// What a connection tells about itself before any filter runs.
#[derive(Debug, Clone)]
pub struct ConnFacts<'a> {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// From the ClientHello, when the TLS inspector saw one.
    pub sni: Option<&'a str>,
    /// `tls` or `raw_buffer`.
    pub transport: &'a str,
    pub alpn: &'a [String],
}

/// Specificity of the best range holding `ip`: unset = 0, a /n match = n + 1.
fn cidr_score(ranges: &[Cidr], ip: IpAddr) -> Option<u32> {
    if ranges.is_empty() {
        return Some(0);
    }
    ranges.iter().filter(|c| c.contains(ip)).map(|c| u32::from(c.prefix_len()) + 1).max()
}

/// Exact name beats any wildcard; a longer wildcard suffix beats a shorter.
fn sni_score(names: &[String], sni: Option<&str>) -> Option<u32> {
    if names.is_empty() {
        return Some(0);
    }
    let sni = sni?.to_ascii_lowercase();
    names
        .iter()
        .filter_map(|n| {
            if *n == sni {
                Some(u32::MAX)
            } else if let Some(suffix) = n.strip_prefix('*') {
                // `*.example.com` covers any name ending in `.example.com`.
                (sni.len() > suffix.len() && sni.ends_with(suffix)).then_some(suffix.len() as u32)
            } else {
                None
            }
        })
        .max()
}

type Criterion = fn(&ChainMatch, &ConnFacts<'_>) -> Option<u32>;

const CRITERIA: &[Criterion] = &[
    |m, c| match m.destination_port {
        None => Some(0),
        Some(p) => (p == c.local.port()).then_some(1),
    },
    |m, c| cidr_score(&m.prefixes, c.local.ip()),
    |m, c| sni_score(&m.server_names, c.sni),
    |m, c| match &m.transport_protocol {
        None => Some(0),
        Some(t) => (t == c.transport).then_some(1),
    },
    |m, c| {
        if m.application_protocols.is_empty() {
            Some(0)
        } else {
            m.application_protocols.iter().any(|p| c.alpn.contains(p)).then_some(1)
        }
    },
    |m, c| cidr_score(&m.sources, c.remote.ip()),
    |m, c| {
        if m.source_ports.is_empty() {
            Some(0)
        } else {
            m.source_ports.contains(&c.remote.port()).then_some(1)
        }
    },
];

/// The chains of one listener, matched in Envoy's order.
#[derive(Debug, Default)]
pub struct Selector {
    matches: Vec<ChainMatch>,
}

impl Selector {
    /// Refuses two chains with the same rules, as Envoy does.
    pub fn new(matches: Vec<ChainMatch>) -> Result<Self, String> {
        for (i, m) in matches.iter().enumerate() {
            if let Some(j) = matches[..i].iter().position(|o| o == m) {
                return Err(format!(
                    "filter_chains[{i}]: multiple filter chains with the same matching rules are defined (also filter_chains[{j}])"
                ));
            }
        }
        Ok(Self { matches })
    }

    /// The index of the chain for a connection, or `None`.
    pub fn select(&self, facts: &ConnFacts<'_>) -> Option<usize> {
        let mut candidates: Vec<usize> = (0..self.matches.len()).collect();
        for criterion in CRITERIA {
            let scores: Vec<Option<u32>> = candidates.iter().map(|&i| criterion(&self.matches[i], facts)).collect();
            let best = scores.iter().flatten().max().copied()?;
            candidates = candidates.into_iter().zip(scores).filter(|(_, s)| *s == Some(best)).map(|(i, _)| i).collect();
        }
        candidates.first().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use legate_api::pb::google::protobuf::UInt32Value;

    fn m(f: impl FnOnce(&mut FilterChainMatch)) -> ChainMatch {
        let mut x = FilterChainMatch::default();
        f(&mut x);
        ChainMatch::compile(Some(&x)).expect("compiles")
    }

    fn cidr(p: &str, len: u32) -> CidrRange {
        CidrRange { address_prefix: p.into(), prefix_len: Some(UInt32Value { value: len }) }
    }

    fn facts<'a>(sni: Option<&'a str>, transport: &'a str, alpn: &'a [String]) -> ConnFacts<'a> {
        ConnFacts {
            local: "127.0.0.1:10000".parse().expect("addr"),
            remote: "10.1.2.3:5555".parse().expect("addr"),
            sni,
            transport,
            alpn,
        }
    }

    #[test]
    fn exact_server_name_beats_wildcard_beats_unset() {
        let s = Selector::new(vec![
            m(|_| {}),
            m(|x| x.server_names = vec!["*.example.com".into()]),
            m(|x| x.server_names = vec!["*.b.example.com".into()]),
            m(|x| x.server_names = vec!["a.b.example.com".into()]),
        ])
        .expect("selector");
        assert_eq!(s.select(&facts(Some("a.b.example.com"), "tls", &[])), Some(3));
        assert_eq!(s.select(&facts(Some("c.b.example.com"), "tls", &[])), Some(2));
        assert_eq!(s.select(&facts(Some("x.example.com"), "tls", &[])), Some(1));
        assert_eq!(s.select(&facts(Some("EXAMPLE.org"), "tls", &[])), Some(0));
        assert_eq!(s.select(&facts(None, "raw_buffer", &[])), Some(0));
        // The bare suffix is not covered by its wildcard.
        assert_eq!(s.select(&facts(Some("example.com"), "tls", &[])), Some(0));
    }

    #[test]
    fn no_backtracking_after_a_more_specific_step() {
        // SNI picks chain 1, whose transport does not match: no chain, even
        // though chain 0 would have matched everything.
        let s = Selector::new(vec![
            m(|x| x.transport_protocol = "raw_buffer".into()),
            m(|x| {
                x.server_names = vec!["a.com".into()];
                x.transport_protocol = "tls".into()
            }),
        ])
        .expect("selector");
        assert_eq!(s.select(&facts(Some("a.com"), "raw_buffer", &[])), None);
        assert_eq!(s.select(&facts(Some("a.com"), "tls", &[])), Some(1));
        assert_eq!(s.select(&facts(None, "raw_buffer", &[])), Some(0));
        assert_eq!(s.select(&facts(None, "tls", &[])), None);
    }

    #[test]
    fn destination_port_comes_before_server_name() {
        let s = Selector::new(vec![
            m(|x| x.server_names = vec!["a.com".into()]),
            m(|x| x.destination_port = Some(UInt32Value { value: 10000 })),
        ])
        .expect("selector");
        assert_eq!(s.select(&facts(Some("a.com"), "tls", &[])), Some(1));
    }

    #[test]
    fn transport_then_alpn_then_source() {
        let h2 = ["h2".to_string()];
        let s = Selector::new(vec![
            m(|x| x.transport_protocol = "tls".into()),
            m(|x| {
                x.transport_protocol = "tls".into();
                x.application_protocols = vec!["h2".into()]
            }),
            m(|x| {
                x.transport_protocol = "raw_buffer".into();
                x.source_prefix_ranges = vec![cidr("10.0.0.0", 8)]
            }),
            m(|x| {
                x.transport_protocol = "raw_buffer".into();
                x.source_prefix_ranges = vec![cidr("10.1.0.0", 16)]
            }),
        ])
        .expect("selector");
        assert_eq!(s.select(&facts(None, "tls", &h2)), Some(1));
        assert_eq!(s.select(&facts(None, "tls", &[])), Some(0));
        assert_eq!(s.select(&facts(None, "raw_buffer", &[])), Some(3));
    }

    #[test]
    fn prefix_ranges_longest_wins_and_mismatch_is_no_match() {
        let s = Selector::new(vec![
            m(|x| x.prefix_ranges = vec![cidr("127.0.0.0", 8)]),
            m(|x| x.prefix_ranges = vec![cidr("127.0.0.1", 32)]),
        ])
        .expect("selector");
        assert_eq!(s.select(&facts(None, "raw_buffer", &[])), Some(1));
        let s = Selector::new(vec![m(|x| x.prefix_ranges = vec![cidr("192.168.0.0", 16)])]).expect("selector");
        assert_eq!(s.select(&facts(None, "raw_buffer", &[])), None);
    }

    #[test]
    fn duplicate_rules_are_refused() {
        let e = Selector::new(vec![
            m(|x| x.server_names = vec!["a.com".into(), "b.com".into()]),
            m(|x| x.server_names = vec!["b.com".into(), "a.com".into()]),
        ])
        .expect_err("duplicate");
        assert!(e.contains("same matching rules"), "{e}");
    }
}
