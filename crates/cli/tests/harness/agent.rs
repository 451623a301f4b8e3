//! `legate agent` (the node agent) started for a node of a control plane,
//! stopped with SIGTERM when dropped, and the proxies it ran killed by PID
//! if they outlive it.

use super::control::ControlPlane;
use super::process::{base_id, Proc, LEGATE};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A running `legate agent`, stopped with SIGTERM when dropped; a proxy it
/// left running (it must not) is then killed by its PID.
pub struct Agent {
    pub proc_: Proc,
    pub proxy_pids: Vec<u32>,
    pub base_id: String,
}

impl Agent {
    pub fn start(cp: &ControlPlane, node: &str, proxy: &str, bin: Option<&Path>, admin: u16, dir: &Path) -> Agent {
        Self::start_with(cp, node, proxy, bin, admin, dir, &[])
    }

    pub fn start_with(
        cp: &ControlPlane,
        node: &str,
        proxy: &str,
        bin: Option<&Path>,
        admin: u16,
        dir: &Path,
        extra: &[&str],
    ) -> Agent {
        let server = format!("http://127.0.0.1:{}", cp.api);
        let mut cmd = Command::new(LEGATE);
        cmd.args(["agent", "--server", &server, "--node-id", node, "--cluster", "agents", "--proxy", proxy]);
        if let Some(b) = bin {
            cmd.arg("--envoy-bin").arg(b);
        }
        let (base, extra) = split_base_id(extra);
        cmd.args(["--admin-port", &admin.to_string(), "--base-id", &base, "--concurrency", "1"]);
        cmd.args(["--drain-time-s", "2", "--parent-shutdown-time-s", "4", "--report-interval-ms", "300"]);
        if !extra.contains(&"--crash-pause-s") {
            cmd.args(["--crash-pause-s", "60"]);
        }
        cmd.args(["-l", "warning"]).arg("--work-dir").arg(dir.join(format!("work-{node}")));
        cmd.args(extra);
        Agent { proc_: Proc::spawn(&format!("agent-{node}"), &mut cmd, dir), proxy_pids: Vec::new(), base_id: base }
    }

    /// SIGTERM; the agent's exit status, within 15 s.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill").args(["-TERM", &self.proc_.pid().to_string()]).status();
        self.proc_.wait_exit(Duration::from_secs(15))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.proc_.is_running() {
            let _ = self.terminate();
        }
        for pid in &self.proxy_pids {
            if alive(*pid) {
                let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            }
        }
    }
}

/// `--base-id B` taken out of `extra` (the agent takes it once): B, or a
/// fresh one, and the other arguments.
fn split_base_id<'a>(extra: &[&'a str]) -> (String, Vec<&'a str>) {
    match extra.iter().position(|a| *a == "--base-id") {
        Some(i) => {
            let base = extra.get(i + 1).map_or_else(base_id, |b| b.to_string());
            let rest = extra.iter().enumerate().filter(|(j, _)| *j != i && *j != i + 1).map(|(_, a)| *a).collect();
            (base, rest)
        }
        None => (base_id(), extra.to_vec()),
    }
}

/// Whether a process with this pid exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
}
