//! Processes the tests start and how they wait for them: a child killed by
//! its PID when dropped, Envoy and `legate proxy` started on a config file,
//! free ports, polling until something is ready, scratch directories.

use super::http_client::{http_get, Resp};
use super::install::envoy_bin;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const LEGATE: &str = env!("CARGO_BIN_EXE_legate");

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

    /// Waits up to `limit` for the process to exit on its own: its status,
    /// or None if it still runs.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if start.elapsed() >= limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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

/// 127.0.0.1:`port`.
pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
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

/// Polls `GET path` (as `host`) on `port` until `ok` accepts the answer, or
/// panics after `limit`, or as soon as `proc_` has exited.
pub fn wait_http(
    what: &str,
    proc_: &mut Proc,
    port: u16,
    path: &str,
    host: &str,
    limit: Duration,
    ok: impl Fn(&Resp) -> bool,
) -> Resp {
    wait_for(what, limit, || {
        if !proc_.is_running() {
            panic!("{} exited:\n{}", proc_.name, proc_.output());
        }
        http_get(addr(port), path, host).ok().filter(&ok)
    })
}

/// Waits until an admin endpoint answers `/ready` with 200.
pub fn wait_ready(admin_port: u16, proc_: &mut Proc) {
    let what = format!("{} to be ready", proc_.name);
    wait_http(&what, proc_, admin_port, "/ready", "admin", Duration::from_secs(30), |r| r.status == 200);
}

/// Waits until something accepts TCP connections on `port`, or panics after
/// `limit`, or as soon as `proc_` has exited.
pub fn wait_listening(what: &str, proc_: &mut Proc, port: u16, limit: Duration) {
    wait_for(what, limit, || {
        if !proc_.is_running() {
            panic!("{} exited:\n{}", proc_.name, proc_.output());
        }
        TcpStream::connect(addr(port)).ok()
    });
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

/// Envoy 1.40 checking `config` in `mode` (`validate`, `init_only`), its
/// own `--base-id`, logging only critical messages; to run.
pub fn envoy_command(config: &Path, mode: &str) -> Command {
    let mut cmd = Command::new(envoy_bin());
    cmd.arg("-c").arg(config).args(["--mode", mode, "--base-id", &base_id(), "-l", "critical"]);
    cmd
}

/// A unique `--base-id` per Envoy or Legate so several can run at once.
pub fn base_id() -> String {
    (free_port() as u32 + std::process::id() % 1000 * 100).to_string()
}

/// `legate proxy` on `config` with one worker and `flags` (e.g. `-l warn`);
/// its output goes to `<name>.log` in `dir`.
pub fn spawn_legate(name: &str, config: &Path, flags: &[&str], dir: &Path) -> Proc {
    let base = ["proxy", "--concurrency", "1", "--base-id", &base_id()];
    Proc::spawn(name, Command::new(LEGATE).args(base).args(flags).arg("-c").arg(config), dir)
}
