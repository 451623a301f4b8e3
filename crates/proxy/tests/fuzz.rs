//! Fuzz targets for what reads bytes and text a peer or user controls: the
//! TLS and HTTP inspectors' peek parsers, the HTTP/1.1 request framing
//! checks, route tables (mutated route configurations compiled, then
//! matched against hostile requests), `%FORMAT%` strings and header mutations
//! fed with hostile request headers, bootstrap loading and validation, and
//! the xDS resource decode path.
//!
//! Each target mutates real seeds (a ClientHello from rustls, request heads,
//! Envoy's default log format, the real-world configs kept in the repository,
//! resources encoded from them) with bolero's generator: under `cargo test` it
//! runs a bounded random search (`LEGATE_FUZZ_SECS`, default 2 s per target);
//! `cargo bolero test fuzz_... --engine libfuzzer` runs the same target
//! coverage-guided. Besides not panicking, the parsers must decide the same
//! way whatever more bytes follow what they decided on.

use bolero::check;
use legate_api::pb::envoy::config::core::v3::{HeaderValue as PbHeader, HeaderValueOption};
use legate_api::pb::envoy::config::listener::v3::Listener;
use legate_proxy::common::format::{Context, Format, DEFAULT_ACCESS_LOG_FORMAT};
use legate_proxy::http::h1_framing::{Framing, Refusal, Refused};
use legate_proxy::http::header_mutation::HeaderMutations;
use legate_proxy::listener::inspectors::{http, tls};
use prost::Message;
use std::sync::Arc;
use std::time::Duration;

/// How long each target searches.
fn budget() -> Duration {
    let secs = std::env::var("LEGATE_FUZZ_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    Duration::from_secs(secs)
}

/// `seed` with byte edits: (position, value) pairs, and a cut.
fn mutate(seed: &[u8], edits: &[(u16, u8)], cut: u16) -> Vec<u8> {
    let mut out = seed.to_vec();
    for &(at, v) in edits {
        if out.is_empty() {
            out.push(v);
            continue;
        }
        let i = usize::from(at) % (out.len() + 1);
        match v % 4 {
            0 => out.insert(i, v),
            1 if i < out.len() => {
                out.remove(i);
            }
            _ if i < out.len() => out[i] = v,
            _ => out.push(v),
        }
    }
    if cut > 0 && !out.is_empty() {
        out.truncate(usize::from(cut) % (out.len() + 1));
    }
    out
}

/// A real ClientHello (SNI `fuzz.example`, ALPN h2 and http/1.1), as rustls
/// writes it.
fn client_hello() -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let name = rustls::pki_types::ServerName::try_from("fuzz.example").expect("name");
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).expect("client");
    let mut out = Vec::new();
    conn.write_tls(&mut out).expect("hello");
    out
}

#[test]
fn the_seeds_are_what_they_claim() {
    match tls::parse(&client_hello()) {
        tls::Parse::Done(h) => {
            assert!(h.tls);
            assert_eq!(h.sni.as_deref(), Some("fuzz.example"));
            assert_eq!(h.alpn, ["h2", "http/1.1"]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(http::sniff(b"GET / HTTP/1.1\r\n"), http::Sniff::Found("http/1.1"));
}

#[test]
fn fuzz_tls_inspector() {
    let seed = client_hello();
    check!().with_test_time(budget()).with_type::<(Vec<(u16, u8)>, u16, u16)>().for_each(|(edits, cut, split)| {
        let bytes = mutate(&seed, edits, *cut);
        let whole = tls::parse(&bytes);
        if let tls::Parse::NeedMore(n) = whole {
            assert!(n > bytes.len(), "asks for {n} bytes with {} in hand", bytes.len());
        }
        // Decided on a prefix: the same answer with the rest there too.
        let at = usize::from(*split) % (bytes.len() + 1);
        if let tls::Parse::Done(h) = tls::parse(&bytes[..at]) {
            assert_eq!(whole, tls::Parse::Done(h), "decided on {at} bytes, then changed its mind");
        }
    });
}

#[test]
fn fuzz_http_inspector() {
    let seeds: [&[u8]; 4] = [
        b"GET /a?b=c HTTP/1.1\r\nhost: x\r\n\r\n",
        b"POST / HTTP/1.0\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"\x16\x03\x01\x00\x05hello",
    ];
    check!().with_test_time(budget()).with_type::<(u8, Vec<(u16, u8)>, u16, u16)>().for_each(
        |(which, edits, cut, split)| {
            let bytes = mutate(seeds[usize::from(*which) % seeds.len()], edits, *cut);
            let whole = http::sniff(&bytes);
            let at = usize::from(*split) % (bytes.len() + 1);
            let early = http::sniff(&bytes[..at]);
            if early != http::Sniff::NeedMore {
                assert_eq!(whole, early, "decided on {at} bytes of {bytes:?}, then changed its mind");
            }
        },
    );
}

/// `bytes` through the HTTP/1.1 framing checks as reads cut at `cuts`
/// (the bytes held back by one read go first in the next, as the
/// connection's reader does): what hyper would see, and the refusal.
fn framed(bytes: &[u8], cuts: &[usize]) -> (Vec<u8>, Option<(u64, Refusal)>) {
    let (mut framing, refused) = (Framing::default(), Refused::default());
    let mut out = Vec::new();
    let mut from = 0;
    for (i, &to) in cuts.iter().chain([&bytes.len()]).enumerate() {
        let mut read = framing.take_held().to_vec();
        read.extend_from_slice(&bytes[from..to]);
        let n = framing.feed(&mut read, &refused, i == cuts.len());
        out.extend_from_slice(&read[..n]);
        from = to;
    }
    (out, refused.get())
}

/// `part` keeps the order of `whole`'s bytes with some taken out.
fn is_subsequence(part: &[u8], whole: &[u8]) -> bool {
    let mut rest = whole.iter();
    part.iter().all(|b| rest.any(|w| w == b))
}

#[test]
fn fuzz_http1_request_framing() {
    let seeds: [&[u8]; 5] = [
        b"GET /a HTTP/1.1\r\nhost: x\r\nx-fold: a\r\n b\r\n\r\nGET /b HTTP/1.1\r\nhost: x\r\n\r\n",
        b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\nt: 1\r\n\r\n",
        b"POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\nhelloGET / HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n",
        b"PUT /x HTTP/1.0\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\nab",
        b"CONNECT a:443 HTTP/1.1\r\nhost: a:443\r\n\r\n\x16\x03\x01",
    ];
    check!().with_test_time(budget()).with_type::<(u8, Vec<(u16, u8)>, u16, Vec<u16>)>().for_each(
        |(which, edits, cut, cuts)| {
            let bytes = mutate(seeds[usize::from(*which) % seeds.len()], edits, *cut);
            let (whole, refusal) = framed(&bytes, &[]);
            // Bytes are only ever taken out, never added or reordered.
            assert!(is_subsequence(&whole, &bytes), "{bytes:?} became {whole:?}");
            // However the bytes arrive, hyper sees the same and the same
            // request is refused for the same reason.
            let mut cuts: Vec<usize> = cuts.iter().take(4).map(|c| usize::from(*c) % (bytes.len() + 1)).collect();
            cuts.sort_unstable();
            assert_eq!(framed(&bytes, &cuts), (whole, refusal), "{bytes:?} read in pieces at {cuts:?}");
        },
    );
}

fn context<'a>(request: &'a ::http::HeaderMap) -> Context<'a> {
    Context {
        request: Some(request),
        method: "GET",
        path: "/p",
        authority: "a",
        protocol: "HTTP/1.1",
        response: None,
        status: Some(200),
        response_flags: "-",
        response_code_details: "via_upstream",
        bytes_received: 1,
        bytes_sent: 2,
        duration: Some(Duration::from_millis(3)),
        start_time: Some(std::time::SystemTime::UNIX_EPOCH),
        upstream_host: None,
        upstream_cluster: "c",
        route_name: "r",
        downstream_remote: None,
        downstream_local: None,
        upstream_hostname: "",
        upstream_pipe: "",
        upstream_metadata: None,
        dynamic_metadata: None,
    }
}

/// Request headers with the fuzzer's bytes as values (whatever `HeaderValue`
/// lets through: obs-text included).
fn hostile_request(values: &[Vec<u8>]) -> ::http::HeaderMap {
    let mut h = ::http::HeaderMap::new();
    for (i, v) in values.iter().enumerate() {
        if let Ok(v) = ::http::HeaderValue::from_bytes(v) {
            let name = ["x-in", "user-agent", "x-forwarded-for", "x-request-id"][i % 4];
            h.append(name, v);
        }
    }
    h
}

#[test]
fn fuzz_format_strings() {
    let seeds = [
        DEFAULT_ACCESS_LOG_FORMAT,
        "%REQ(X-IN?USER-AGENT):5% %RESP(A)% %START_TIME(%s.%3f)% %DURATION%",
        "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %UPSTREAM_HOST% %%",
        "plain",
    ];
    check!().with_test_time(budget()).with_type::<(u8, Vec<(u16, u8)>, u16, Vec<Vec<u8>>)>().for_each(
        |(which, edits, cut, values)| {
            let text = mutate(seeds[usize::from(*which) % seeds.len()].as_bytes(), edits, *cut);
            let text = String::from_utf8_lossy(&text);
            let request = hostile_request(values);
            if let Ok(f) = Format::parse(&text) {
                let _ = f.render_string(&context(&request));
                let _ = f.clone().for_header().render_string(&context(&request));
                if !text.contains('%') {
                    assert_eq!(f.literal(), Some(&*text), "no operator, yet not a literal");
                }
            }
        },
    );
}

#[test]
fn fuzz_header_mutations() {
    check!().with_test_time(budget()).with_type::<(Vec<(String, String)>, Vec<String>, Vec<Vec<u8>>)>().for_each(
        |(adds, removes, values)| {
            let add: Vec<HeaderValueOption> = adds
                .iter()
                .map(|(k, v)| HeaderValueOption {
                    header: Some(PbHeader { key: k.clone(), value: format!("{v}%REQ(X-IN)%"), ..Default::default() }),
                    ..Default::default()
                })
                .collect();
            let request = hostile_request(values);
            if let Ok(m) = HeaderMutations::new(&add, removes) {
                let mut headers = request.clone();
                m.apply(&mut headers, &context(&request));
                for r in removes {
                    let added = adds.iter().any(|(k, _)| k.eq_ignore_ascii_case(r));
                    if !added {
                        assert!(!headers.contains_key(r.to_ascii_lowercase().as_str()), "{r} removed, yet there");
                    }
                }
            }
        },
    );
}

/// The real-world configs kept in the repository (the breadth collection).
fn real_world_configs() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../cli/tests/data/real-world");
    let mut files: Vec<_> =
        std::fs::read_dir(&dir).expect("the real-world collection").flatten().map(|e| e.path()).collect();
    files.retain(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml" || e == "json"));
    files.sort();
    files.iter().map(|p| std::fs::read(p).expect("read")).collect()
}

#[test]
fn fuzz_bootstrap_loading() {
    let seeds = real_world_configs();
    assert!(seeds.len() > 40, "the collection is there: {}", seeds.len());
    check!().with_test_time(budget()).with_type::<(u16, Vec<(u16, u8)>, u16)>().for_each(|(which, edits, cut)| {
        let text = mutate(&seeds[usize::from(*which) % seeds.len()], edits, *cut);
        let text = String::from_utf8_lossy(&text);
        let report = legate_api::load::check_bootstrap(&text);
        // A refusal always says where and why.
        for e in report.errors.iter().chain(&report.unsupported) {
            assert!(!e.to_string().trim().is_empty(), "an empty reason for {text}");
        }
    });
}

#[test]
fn fuzz_xds_listener_decode() {
    let seeds: Vec<Vec<u8>> = real_world_configs()
        .iter()
        .filter_map(|c| legate_api::load::load_bootstrap(&String::from_utf8_lossy(c)).ok())
        .flat_map(|b| b.bootstrap.static_resources.map(|s| s.listeners).unwrap_or_default())
        .map(|l| l.encode_to_vec())
        .collect();
    assert!(!seeds.is_empty(), "listeners to start from");
    check!().with_test_time(budget()).with_type::<(u16, Vec<(u16, u8)>, u16)>().for_each(|(which, edits, cut)| {
        let bytes = mutate(&seeds[usize::from(*which) % seeds.len()], edits, *cut);
        // What the xDS client does with a resource: decode, then validate and
        // check support on the same code as a bootstrap.
        if let Ok(l) = Listener::decode(bytes.as_slice()) {
            if let Some(d) = legate_api::load::to_dynamic(&l) {
                let _ = legate_api::validate::validate(&d, "");
                let _ = legate_api::support::unsupported(&d);
            }
        }
    });
}

/// The inline route configurations of the real-world configs' connection
/// managers, encoded.
fn real_world_route_configs() -> Vec<Vec<u8>> {
    use legate_api::pb::envoy::config::listener::v3::filter::ConfigType;
    use legate_api::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
        http_connection_manager::RouteSpecifier, HttpConnectionManager,
    };
    let listeners: Vec<Listener> = real_world_configs()
        .iter()
        .filter_map(|c| legate_api::load::load_bootstrap(&String::from_utf8_lossy(c)).ok())
        .flat_map(|b| b.bootstrap.static_resources.map(|s| s.listeners).unwrap_or_default())
        .collect();
    let filters = listeners.iter().flat_map(|l| l.filter_chains.iter()).flat_map(|c| c.filters.iter());
    filters
        .filter_map(|f| match &f.config_type {
            Some(ConfigType::TypedConfig(any)) => legate_api::any::unpack::<HttpConnectionManager>(any).ok(),
            _ => None,
        })
        .filter_map(|hcm| match hcm.route_specifier {
            Some(RouteSpecifier::RouteConfig(rc)) => Some(rc.encode_to_vec()),
            _ => None,
        })
        .collect()
}

#[test]
fn fuzz_route_matching() {
    use legate_api::pb::envoy::config::route::v3::RouteConfiguration;
    use legate_proxy::http::route::RouteTable;
    let seeds = real_world_route_configs();
    assert!(seeds.len() > 20, "route configurations to start from: {}", seeds.len());
    let paths: [&[u8]; 4] = [b"/", b"/api/v1/items?id=1&x=%2F", b"/grpc.health.v1.Health/Check", b"//a/../b/./c"];
    let hosts: [&[u8]; 3] = [b"example.com", b"localhost:8080", b"*.a"];
    type Input = (u16, Vec<(u16, u8)>, u16, (u8, Vec<(u16, u8)>), (u8, Vec<(u16, u8)>), Vec<u8>);
    check!().with_test_time(budget()).with_type::<Input>().for_each(|(which, edits, cut, path, host, header)| {
        let bytes = mutate(&seeds[usize::from(*which) % seeds.len()], edits, *cut);
        let Ok(rc) = RouteConfiguration::decode(bytes.as_slice()) else { return };
        // A configuration that compiles must route any request without
        // panicking, whatever its path, host and headers.
        let store = Arc::new(legate_proxy::stats::Store::default());
        let Ok(table) = RouteTable::compile(&rc, &store) else { return };
        let path = String::from_utf8_lossy(&mutate(paths[usize::from(path.0) % paths.len()], &path.1, 0)).into_owned();
        let host = String::from_utf8_lossy(&mutate(hosts[usize::from(host.0) % hosts.len()], &host.1, 0)).into_owned();
        let mut headers = ::http::HeaderMap::new();
        if let Ok(v) = ::http::HeaderValue::from_bytes(header) {
            headers.insert("x-fuzz", v.clone());
            headers.insert("content-type", v);
        }
        let routed =
            table.route(&host, &path, &headers, "GET", "http").map(|(vh, r)| (vh.name.clone(), r.name.clone()));
        // Virtual hosts are chosen by the host without regard to case.
        let upper = table.route(&host.to_ascii_uppercase(), &path, &headers, "GET", "http");
        assert_eq!(routed.as_ref().map(|(vh, _)| vh), upper.map(|(vh, _)| &vh.name), "host {host:?} by case");
    });
}
