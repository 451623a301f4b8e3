//! HTTP/2 conformance, Envoy 1.40 and Legate side by side: the cases of
//! `data/h2_conformance.py`, on the frame-level client `data/h2_client.py`
//! (h2spec's server cases: frame sizes,
//! stream states, flow control, SETTINGS, PING, GOAWAY, CONTINUATION,
//! HTTP messages, HPACK; the connection manager's header limits; and the
//! attacks: rapid reset, CONTINUATION flood, SETTINGS and PING floods,
//! zero-window stalls) runs against each proxy's h2c listener and its TLS
//! (ALPN h2) listener, same config. The test prints every case and the pass
//! counts side by side, and asserts that Legate passes every case Envoy
//! passes, but for the cases named in `KNOWN_GAPS`, each with its reason;
//! a gap that closes fails the test too, so the list stays true.

mod harness;

use harness::certs::{server, Ca};
use harness::config::{bootstrap, cluster, hcm_vhost, listener, terminate_tls};
use harness::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// Cases Envoy passes and Legate does not yet: the HTTP/2 codec Legate
/// serves with (the `h2` crate) answers an HPACK decoding error with
/// GOAWAY PROTOCOL_ERROR, where RFC 9113 and Envoy say COMPRESSION_ERROR
/// (telling those apart in front of the codec would take a second HPACK
/// decoder; see `http/h2_frames.rs` for the codes it does put right).
const KNOWN_GAPS: &[(&str, &str)] = &[
    ("4.3/1", "an HPACK decoding error is a GOAWAY PROTOCOL_ERROR from the codec, not COMPRESSION_ERROR"),
    ("hpack/2.3.3/1", "HPACK decoding error: PROTOCOL_ERROR, not COMPRESSION_ERROR"),
    ("hpack/4.2/1", "HPACK decoding error: PROTOCOL_ERROR, not COMPRESSION_ERROR"),
    ("hpack/5.2/1", "HPACK decoding error: PROTOCOL_ERROR, not COMPRESSION_ERROR"),
    ("hpack/5.2/2", "HPACK decoding error: PROTOCOL_ERROR, not COMPRESSION_ERROR"),
    ("hpack/6.1/1", "HPACK decoding error: PROTOCOL_ERROR, not COMPRESSION_ERROR"),
    ("hpack/6.3/1", "HPACK decoding error: PROTOCOL_ERROR, not COMPRESSION_ERROR"),
];

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/h2_conformance.py");

/// One run of the client: each case's id, whether it passed, what it saw.
type Run = BTreeMap<String, (bool, String)>;

fn run_client(port: u16, tls: bool) -> Run {
    let mut cmd = Command::new("python3");
    cmd.arg(SCRIPT).arg("127.0.0.1").arg(port.to_string());
    if tls {
        cmd.arg("--tls");
    }
    let out = cmd.output().expect("python3 is needed to run the HTTP/2 conformance client");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the client failed: {text}\n{}", String::from_utf8_lossy(&out.stderr));
    let mut run = Run::new();
    for line in text.lines().filter(|l| !l.starts_with("TOTAL ")) {
        let mut parts = line.splitn(3, ' ');
        let (Some(id), Some(verdict), Some(rest)) = (parts.next(), parts.next(), parts.next()) else {
            panic!("a line the client should not print: {line}");
        };
        run.insert(id.to_string(), (verdict == "PASS", rest.to_string()));
    }
    assert!(run.len() >= 90, "the client ran {} cases:\n{text}", run.len());
    run
}

/// Both proxies' config: an h2c listener and a TLS one (ALPN h2), each
/// answering every request 200 with a short body; 100 concurrent streams.
fn config(dir: &Path, admin: u16, ports: &Ports) -> String {
    let answer =
        "routes: [{match: {prefix: \"/\"}, direct_response: {status: 200, body: {inline_string: okokokokok}}}]";
    let extra = ", http2_protocol_options: {max_concurrent_streams: 100}";
    let h2c = hcm_vhost("h2c", answer, "", extra);
    let tls = hcm_vhost("tls", answer, "", extra);
    let listeners = [
        listener("h2c", ports["h2c"], &format!("{{filters: [{h2c}]}}")),
        listener(
            "tls",
            ports["tls"],
            &format!("{{transport_socket: {}, filters: [{tls}]}}", terminate_tls(dir, &["srv"], "h2", "", "")),
        ),
    ];
    bootstrap(admin, &listeners, &[cluster("unused", free_port(), "")])
}

#[test]
fn h2spec_cases_and_attacks_pass_where_envoy_passes() {
    let dir = TempDir::new("h2-conformance");
    let d = dir.path();
    let ca = Ca::new("h2 conformance CA");
    ca.issue(&server(&["example.com"])).write(d, "srv");
    let [e, l] = both(d, &[], &["h2c", "tls"], |_, admin, ports| config(d, admin, ports));
    let mut failures = Vec::new();
    let mut gaps_seen = Vec::new();
    // The four runs at once: the client mostly waits on answers and time limits.
    let runs: Vec<std::thread::JoinHandle<Run>> = [("h2c", false), ("tls", true)]
        .iter()
        .flat_map(|(listener, tls)| [(e.port(listener), *tls), (l.port(listener), *tls)])
        .map(|(port, tls)| std::thread::spawn(move || run_client(port, tls)))
        .collect();
    let mut runs = runs.into_iter().map(|h| h.join().expect("a client run"));
    for (listener, _) in [("h2c", false), ("tls", true)] {
        let (envoy, legate) = (runs.next().expect("Envoy's run"), runs.next().expect("Legate's run"));
        assert_eq!(envoy.keys().collect::<Vec<_>>(), legate.keys().collect::<Vec<_>>(), "the same cases");
        println!("== {listener}: case, Envoy, Legate");
        for (id, (ep, eseen)) in &envoy {
            let (lp, lseen) = &legate[id];
            let mark = |p: bool| if p { "pass" } else { "FAIL" };
            println!("{id:28} envoy {} legate {}  | {eseen} | {lseen}", mark(*ep), mark(*lp));
            if *ep && !*lp {
                match KNOWN_GAPS.iter().find(|(g, _)| g == id) {
                    Some((_, why)) => gaps_seen.push(format!("{listener} {id}: {why}")),
                    None => failures.push(format!("{listener} {id}: Envoy passes ({eseen}), Legate fails ({lseen})")),
                }
            }
        }
        let count = |r: &Run| r.values().filter(|(p, _)| *p).count();
        println!(
            "{listener}: Legate {}/{n}, Envoy {}/{n} (known gaps: {})",
            count(&legate),
            count(&envoy),
            KNOWN_GAPS.len(),
            n = envoy.len()
        );
    }
    for g in &gaps_seen {
        println!("known gap: {g}");
    }
    assert!(failures.is_empty(), "Legate fails where Envoy passes:\n{}", failures.join("\n"));
    // Each known gap is seen on both listeners; one that closed leaves the list.
    for (id, _) in KNOWN_GAPS {
        let n = gaps_seen.iter().filter(|g| g.split(' ').nth(1) == Some(&format!("{id}:"))).count();
        assert_eq!(n, 2, "known gap {id} was not seen on both listeners: remove it from KNOWN_GAPS if it closed");
    }
}

/// The SETTINGS a server sends first on an h2c connection, by identifier.
fn server_settings(port: u16) -> BTreeMap<u16, u32> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(5))).expect("timeout");
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").expect("preface");
    let mut head = [0u8; 9];
    s.read_exact(&mut head).expect("the server's first frame");
    assert_eq!(head[3], 4, "the server's first frame is SETTINGS: {head:?}");
    let mut payload = vec![0u8; u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize];
    s.read_exact(&mut payload).expect("SETTINGS payload");
    payload
        .chunks_exact(6)
        .map(|c| (u16::from_be_bytes([c[0], c[1]]), u32::from_be_bytes([c[2], c[3], c[4], c[5]])))
        .collect()
}

#[test]
fn default_max_concurrent_streams_is_envoys() {
    // No http2_protocol_options: Envoy 1.40 allows 1024 streams a connection.
    let dir = TempDir::new("h2-defaults");
    let answer = "routes: [{match: {prefix: \"/\"}, direct_response: {status: 200}}]";
    let [e, l] = both(dir.path(), &[], &["h2c"], |_, admin, ports| {
        let h2c = hcm_vhost("h2c", answer, "", "");
        bootstrap(
            admin,
            &[listener("h2c", ports["h2c"], &format!("{{filters: [{h2c}]}}"))],
            &[cluster("unused", free_port(), "")],
        )
    });
    let (envoy, legate) = (server_settings(e.port("h2c")), server_settings(l.port("h2c")));
    println!("SETTINGS: Envoy {envoy:?}, Legate {legate:?}");
    assert_eq!(envoy.get(&3), Some(&1024), "Envoy's default");
    assert_eq!(legate.get(&3), envoy.get(&3), "SETTINGS_MAX_CONCURRENT_STREAMS");
}
