//! Upstreams for the proxies under test: the echo server (`legate echo`,
//! which names itself in `x-upstream` and returns what it received), plain
//! TCP servers on a thread of the test, and Envoy as a TLS backend or as a
//! JWKS server (so that what the proxies talk to is the reference).

use super::config::{bootstrap, hcm_vhost, listener_chains, path, terminate_tls, trusted_ca, TLS_INSPECTOR};
use super::http_client::http_get;
use super::process::{addr, free_port, wait_listening, Proc, LEGATE};
use super::sides::{Bin, Side};
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The echo upstream (`legate echo`) on a fresh port.
pub fn echo(name: &str, dir: &Path) -> (Proc, u16) {
    echo_with(name, dir, &[])
}

/// The echo upstream with extra flags (e.g. `--status 503`).
pub fn echo_with(name: &str, dir: &Path, extra: &[&str]) -> (Proc, u16) {
    let port = free_port();
    (echo_at(name, port, extra, dir), port)
}

/// The echo upstream on `port`, once it accepts connections.
pub fn echo_at(name: &str, port: u16, extra: &[&str], dir: &Path) -> Proc {
    let mut p = spawn_echo(name, port, extra, dir);
    wait_listening("echo upstream", &mut p, port, Duration::from_secs(10));
    p
}

/// The echo upstream started on `port`, not waited for (`echo-<name>.log`).
pub fn spawn_echo(name: &str, port: u16, extra: &[&str], dir: &Path) -> Proc {
    Proc::spawn(
        &format!("echo-{name}"),
        Command::new(LEGATE).args(["echo", "--listen", &format!("127.0.0.1:{port}"), "--name", name]).args(extra),
        dir,
    )
}

/// The upstream that answered a GET / (host `app`) on `port` with 200, by
/// its `x-upstream`.
pub fn upstream_of(port: u16) -> Option<String> {
    http_get(addr(port), "/", "app")
        .ok()
        .filter(|r| r.status == 200)
        .and_then(|r| r.header("x-upstream").map(str::to_owned))
}

/// Polls every 10 ms until `port` is served by `upstream` (see
/// [`upstream_of`]); the time it took since `since`. Panics past `limit`.
pub fn time_until_served(port: u16, upstream: &str, limit: Duration, since: Instant) -> Duration {
    for _ in 0..2_000 {
        if upstream_of(port).as_deref() == Some(upstream) {
            return since.elapsed();
        }
        assert!(since.elapsed() < limit, "port {port} not served by {upstream} within {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("port {port} not served by {upstream} after 2000 polls");
}

/// A TCP server on a thread that answers every connection with `greeting`,
/// then echoes until EOF, and ends its side when `close_after` is set.
fn tcp_server(greeting: Vec<u8>, close_after: bool) -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let greeting = greeting.clone();
            std::thread::spawn(move || {
                let mut s = s;
                if !greeting.is_empty() {
                    let _ = s.write_all(&greeting);
                }
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                if close_after {
                    let _ = s.shutdown(std::net::Shutdown::Write);
                }
            });
        }
    });
    port
}

/// A TCP echo server on a thread (each connection echoes until EOF).
pub fn tcp_echo() -> u16 {
    tcp_server(Vec::new(), true)
}

/// A TCP server that answers every connection with `name:` and then echoes.
pub fn tcp_named(name: &'static str) -> u16 {
    tcp_server(format!("{name}:").into_bytes(), false)
}

/// Envoy answering directly, naming itself (`backend-<name>`, `x-backend`)
/// and echoing what it saw of the connection in response headers.
fn backend_hcm(stat: &str, name: &str) -> String {
    hcm_vhost(
        stat,
        &format!(
            "routes: [{{match: {{prefix: \"/\"}}, direct_response: {{status: 200, body: {{inline_string: \"backend-{name}\"}}}}}}], response_headers_to_add: [{{header: {{key: x-backend, value: {name}}}}}, {{header: {{key: x-backend-proto, value: \"%PROTOCOL%\"}}}}, {{header: {{key: x-backend-sni, value: \"%REQUESTED_SERVER_NAME%\"}}}}]"
        ),
        "",
        "",
    )
}

/// The TLS backend: Envoy terminating TLS on three listeners and answering
/// directly: `a` (certificate a.example.com), `b` (b.example.com) and `mtls`
/// (a.example.com, client certificate required), with the certificates
/// `a`, `b` and the CA `ca.pem` in `dir`.
pub fn tls_backend(dir: &Path) -> Side {
    let flags = ["--file-flush-interval-msec", "200"];
    Side::start("backend", Bin::Envoy, &flags, dir, &["a", "b", "mtls"], |_, admin, ports| {
        let mtls = terminate_tls(
            dir,
            &["a"],
            "h2, http/1.1",
            &format!(", {}", trusted_ca(dir, "ca.pem", "")),
            ", require_client_certificate: true",
        );
        // The inspector gives %REQUESTED_SERVER_NAME% its value.
        let inspector = format!(", listener_filters: {TLS_INSPECTOR}");
        let chain = |tls: &str, hcm: String| vec![format!("{{transport_socket: {tls}, filters: [{hcm}]}}")];
        bootstrap(
            admin,
            &[
                listener_chains(
                    "a",
                    ports["a"],
                    &chain(&terminate_tls(dir, &["a"], "h2, http/1.1", "", ""), backend_hcm("a", "a")),
                    &inspector,
                ),
                listener_chains(
                    "b",
                    ports["b"],
                    &chain(&terminate_tls(dir, &["b"], "h2, http/1.1", "", ""), backend_hcm("b", "b")),
                    &inspector,
                ),
                listener_chains("mtls", ports["mtls"], &chain(&mtls, backend_hcm("m", "mtls")), &inspector),
            ],
            &[],
        )
    })
}

/// A JWKS server: Envoy answering `/keys.json` directly, 200 with the file
/// `dir/jwks.json` on listener `ok`, 500 on `bad`.
pub fn jwks_server(dir: &Path) -> Side {
    Side::start("jwks", Bin::Envoy, &[], dir, &["ok", "bad"], |_, admin, ports| {
        let direct = |status: u16, body: &str| {
            let vhost = format!(
                "routes: [{{match: {{path: \"/keys.json\"}}, direct_response: {{status: {status}, body: {body}}}}}]"
            );
            vec![format!("{{filters: [{}]}}", hcm_vhost("jwks", &vhost, "", ""))]
        };
        let file = format!("{{filename: \"{}\"}}", path(dir, "jwks.json"));
        bootstrap(
            admin,
            &[
                listener_chains("ok", ports["ok"], &direct(200, &file), ""),
                listener_chains("bad", ports["bad"], &direct(500, "{inline_string: nope}"), ""),
            ],
            &[],
        )
    })
}

/// An HTTP/1.1 server on a thread of the test, on a Unix socket: `path`, or
/// with a leading `@` a name in the abstract namespace (as Envoy's `pipe`
/// reads it). Every request (heads only, keep-alive) is answered 200 with
/// `x-upstream: <name>` and the request line as its body. Ends with the
/// test process.
pub fn unix_http(path: &str, name: &'static str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixListener};
    let l = match path.strip_prefix('@') {
        Some(n) => UnixListener::bind_addr(&SocketAddr::from_abstract_name(n.as_bytes()).expect("abstract name")),
        None => UnixListener::bind(path),
    }
    .expect("bind a Unix socket");
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while let Ok(n) = s.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_string();
                        buf.drain(..end + 4);
                        let line = head.lines().next().unwrap_or_default().to_string();
                        let reply = format!(
                            "HTTP/1.1 200 OK\r\nx-upstream: {name}\r\ncontent-length: {}\r\n\r\n{line}",
                            line.len()
                        );
                        if s.write_all(reply.as_bytes()).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
}
