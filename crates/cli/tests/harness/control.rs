//! The control plane side: `legate control-plane` on fresh ports (alone or as
//! one of several replicas on etcd), `legate ctl` against it, what its CSDS
//! reports, proxies attached to it through a bootstrap it writes, registry
//! instances kept alive by heartbeats, and a single-member etcd.

use super::http_client::{http_get, http_request};
use super::install::etcd_bin;
use super::process::{addr, free_port, spawn_envoy, spawn_legate, wait_http, wait_ready, Proc, LEGATE};
use super::sides::Bin;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// `legate ctl --server <server> <args>`: whether it succeeded, and what it
/// printed (stdout, then stderr).
pub fn ctl(server: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(LEGATE).args(["ctl", "--server", server]).args(args).output().expect("run ctl");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// `legate ctl bootstrap` for `node` on the xDS port `xds`, with an admin
/// on `admin` and `extra` flags: the bootstrap it printed.
pub fn ctl_bootstrap(server: &str, node: &str, xds: u16, admin: u16, extra: &[&str]) -> String {
    let (xds, admin) = (format!("127.0.0.1:{xds}"), admin.to_string());
    let mut args = vec!["bootstrap", "--node-id", node, "--xds", &xds, "--admin-port", &admin];
    args.extend(extra);
    let (ok, boot) = ctl(server, &args);
    assert!(ok, "{boot}");
    boot
}

/// `legate control-plane` on `xds` and `api` with its store in `data` and
/// `extra` flags, not waited for (`<name>.log` in `dir`).
pub fn spawn_control_plane(name: &str, dir: &Path, xds: u16, api: u16, data: &Path, extra: &[&str]) -> Proc {
    Proc::spawn(
        name,
        Command::new(LEGATE)
            .args([
                "control-plane",
                "--xds-addr",
                &format!("127.0.0.1:{xds}"),
                "--api-addr",
                &format!("127.0.0.1:{api}"),
            ])
            .arg("--data-dir")
            .arg(data)
            .args(extra),
        dir,
    )
}

/// A `legate control-plane` on fresh ports with its own store, killed by its
/// PID on drop.
pub struct ControlPlane {
    pub proc_: Proc,
    pub xds: u16,
    pub api: u16,
    pub data: PathBuf,
}

impl ControlPlane {
    pub fn start(dir: &Path) -> ControlPlane {
        Self::start_at(dir, free_port(), free_port(), dir.join("cp-data"))
    }

    pub fn start_at(dir: &Path, xds: u16, api: u16, data: PathBuf) -> ControlPlane {
        Self::start_with(dir, xds, api, data, &[])
    }

    pub fn start_with(dir: &Path, xds: u16, api: u16, data: PathBuf, extra: &[&str]) -> ControlPlane {
        Self::start_named("control-plane", dir, xds, api, data, extra)
    }

    /// Started as `name` (its log `<name>.log` in `dir`), once its API answers.
    pub fn start_named(name: &str, dir: &Path, xds: u16, api: u16, data: PathBuf, extra: &[&str]) -> ControlPlane {
        let mut p = spawn_control_plane(name, dir, xds, api, &data, extra);
        let what = format!("{name} API");
        wait_http(&what, &mut p, api, "/healthz", "cp", Duration::from_secs(20), |r| r.status == 200);
        ControlPlane { proc_: p, xds, api, data }
    }

    /// What the control plane has logged.
    pub fn output(&self) -> String {
        self.proc_.output()
    }

    /// What the control plane has logged, once it holds `line` or after
    /// 5 s. A replica logs a decision after the store has it, so another
    /// replica's API (or its own) can show the decision a moment before
    /// the line is written.
    pub fn logged(&self, line: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let out = self.output();
            if out.contains(line) || std::time::Instant::now() > deadline {
                return out;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn ctl(&self, args: &[&str]) -> (bool, String) {
        ctl(&format!("http://127.0.0.1:{}", self.api), args)
    }

    pub fn apply(&self, dir: &Path, yaml: &str) {
        let f = dir.join(format!("apply-{}.yaml", free_port()));
        std::fs::write(&f, yaml).expect("write resources");
        let (ok, out) = self.ctl(&["apply", "-f", f.to_str().expect("path")]);
        assert!(ok, "apply on {} failed: {out}", self.proc_.name);
    }

    /// [`apply`](Self::apply) with `--force`: references no applied
    /// resource defines are accepted (a listener before its secret).
    pub fn apply_forced(&self, dir: &Path, yaml: &str) {
        let f = dir.join(format!("apply-{}.yaml", free_port()));
        std::fs::write(&f, yaml).expect("write resources");
        let (ok, out) = self.ctl(&["apply", "--force", "-f", f.to_str().expect("path")]);
        assert!(ok, "forced apply on {} failed: {out}", self.proc_.name);
    }

    /// `ctl proxies`: every proxy streaming from this control plane.
    pub fn proxies(&self) -> Vec<Value> {
        let (ok, out) = self.ctl(&["proxies", "-o", "json"]);
        assert!(ok, "{out}");
        let v: Value = serde_json::from_str(&out).expect("proxies json");
        v["proxies"].as_array().cloned().unwrap_or_default()
    }

    /// A JSON answer (200) of the REST API.
    pub fn get(&self, path: &str) -> Option<Value> {
        let r = http_get(addr(self.api), path, "cp").ok().filter(|r| r.status == 200)?;
        serde_json::from_str(&r.body).ok()
    }

    /// Whether this replica leads (the registry's expiry runs there).
    pub fn is_leader(&self) -> bool {
        self.get("/v1/replica").is_some_and(|v| v["leader"] == true)
    }

    /// Node ids of the proxies streaming from this replica.
    pub fn proxy_ids(&self) -> Vec<String> {
        self.get("/v1/proxies")
            .and_then(|v| v["proxies"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|p| p["node"]["id"].as_str().map(String::from))
            .collect()
    }

    /// `service/id` of every registered instance this replica sees.
    pub fn instances(&self) -> Vec<String> {
        self.get("/v1/instances")
            .and_then(|v| v["instances"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(|i| format!("{}/{}", i["service"].as_str().unwrap_or(""), i["id"].as_str().unwrap_or("")))
            .collect()
    }

    /// Registers an instance of `service` (`body`: its JSON) over the API.
    pub fn register(&self, service: &str, body: &str) {
        let r = http_request(
            addr(self.api),
            "POST",
            &format!("/v1/services/{service}/instances"),
            "cp",
            &[("content-type", "application/json")],
            body,
        )
        .expect("register");
        assert_eq!(r.status, 200, "{}", r.body);
    }
}

/// A registry instance's heartbeats, every 300 ms from a thread, until
/// stopped (or `max` of them).
pub struct Heartbeats {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Heartbeats {
    pub fn start(api: u16, service: &str, id: &str, max: usize) -> Heartbeats {
        let stop = Arc::new(AtomicBool::new(false));
        let (s, path) = (stop.clone(), format!("/v1/services/{service}/instances/{id}/heartbeat"));
        let thread = std::thread::spawn(move || {
            for _ in 0..max {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let _ = http_request(addr(api), "PUT", &path, "cp", &[], "");
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        Heartbeats { stop, thread }
    }

    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("heartbeats");
    }
}

/// (type URL, name, client status) of every resource CSDS reports for `node`.
pub fn csds(xds_port: u16, node: &str) -> Vec<(String, String, i32)> {
    use legate_api::pb::envoy::service::status::v3::{
        client_status_discovery_service_client::ClientStatusDiscoveryServiceClient, ClientStatusRequest,
    };
    super::http_client::block_on(async {
        let Ok(mut client) = ClientStatusDiscoveryServiceClient::connect(format!("http://127.0.0.1:{xds_port}")).await
        else {
            return vec![];
        };
        let Ok(resp) = client.fetch_client_status(ClientStatusRequest::default()).await else { return vec![] };
        resp.into_inner()
            .config
            .into_iter()
            .filter(|c| c.node.as_ref().is_some_and(|n| n.id == node))
            .flat_map(|c| c.generic_xds_configs)
            .map(|g| (g.type_url, g.name, g.client_status))
            .collect()
    })
}

/// A proxy attached to a control plane, with its admin port.
pub struct Attached {
    pub proc_: Proc,
    pub admin: u16,
}

/// Envoy or Legate as node `node` on a bootstrap `legate ctl bootstrap`
/// wrote for `cp` (delta xDS when `delta`), once ready.
pub fn attach(bin: Bin, cp: &ControlPlane, node: &str, delta: bool, dir: &Path) -> Attached {
    attach_with(bin, cp, node, if delta { &["--delta"] } else { &[] }, dir)
}

/// [`attach`] with `ctl bootstrap` flags of the caller's (`--node-cluster`, ...).
pub fn attach_with(bin: Bin, cp: &ControlPlane, node: &str, flags: &[&str], dir: &Path) -> Attached {
    let admin = free_port();
    let server = format!("http://127.0.0.1:{}", cp.api);
    start_on(bin, &ctl_bootstrap(&server, node, cp.xds, admin, flags), node, admin, dir)
}

/// Envoy or Legate as node `node` on the bootstrap text `boot` (its admin
/// on `admin`), once ready.
pub fn start_on(bin: Bin, boot: &str, node: &str, admin: u16, dir: &Path) -> Attached {
    let file = dir.join(format!("bootstrap-{node}.yaml"));
    std::fs::write(&file, boot).expect("bootstrap");
    let mut p = match bin {
        Bin::Envoy => spawn_envoy(node, &file, "warning", &[], dir),
        Bin::Legate => spawn_legate(node, &file, &["-l", "info"], dir),
    };
    wait_ready(admin, &mut p);
    Attached { proc_: p, admin }
}

/// A single-member etcd on loopback, its data in `dir`, stopped on drop.
pub struct Etcd {
    _proc: Proc,
    pub client_port: u16,
}

impl Etcd {
    pub fn start(dir: &Path) -> Etcd {
        Self::spawn("etcd", dir, "http", |_| {})
    }

    /// The `--store` value for control planes on this etcd.
    pub fn store_url(&self) -> String {
        format!("etcd://127.0.0.1:{}", self.client_port)
    }

    /// A single-member etcd serving clients over TLS only, with `cert` and
    /// `key` (PEM), asking for client certificates issued by `ca`
    /// (`--client-cert-auth`); its health is read on a plain metrics port.
    pub fn start_tls(dir: &Path, ca: &Path, cert: &Path, key: &Path) -> Etcd {
        Self::spawn("etcd-tls", dir, "https", |cmd| {
            cmd.arg("--client-cert-auth").arg("--trusted-ca-file").arg(ca);
            cmd.arg("--cert-file").arg(cert).arg("--key-file").arg(key);
        })
    }

    /// One member on loopback, clients at `scheme`, health on a plain
    /// metrics port, with `more` flags.
    fn spawn(name: &str, dir: &Path, scheme: &str, more: impl FnOnce(&mut Command)) -> Etcd {
        let (client_port, peer_port, metrics_port) = (free_port(), free_port(), free_port());
        let client = format!("{scheme}://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let mut cmd = Command::new(etcd_bin());
        cmd.args(["--name", "legate-test", "--data-dir"])
            .arg(dir.join("etcd-data"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("legate-test={peer}")])
            .args(["--listen-metrics-urls", &format!("http://127.0.0.1:{metrics_port}")])
            .args(["--log-level", "warn"]);
        more(&mut cmd);
        let mut p = Proc::spawn(name, &mut cmd, dir);
        wait_http("etcd to be healthy", &mut p, metrics_port, "/health", "etcd", Duration::from_secs(20), |r| {
            r.status == 200 && r.body.contains("true")
        });
        Etcd { _proc: p, client_port }
    }

    /// The `--store` value for control planes on this etcd over TLS.
    pub fn store_url_tls(&self) -> String {
        format!("etcds://127.0.0.1:{}", self.client_port)
    }
}
