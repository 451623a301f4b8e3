//! The proxy's command line for one hot restart epoch (Envoy's flags, which
//! `legate proxy` shares), and its version.

use super::config::{ProxyKind, Settings};
use std::process::{Command, Stdio};

/// The proxy at `epoch` of the agent's restart family. Its output goes to
/// the agent's own.
pub fn command(s: &Settings, epoch: u32) -> Command {
    let mut cmd = Command::new(&s.bin);
    if s.kind == ProxyKind::Legate {
        cmd.arg("proxy");
    }
    cmd.arg("-c").arg(&s.bootstrap);
    cmd.args(["--base-id", &s.base_id.to_string(), "--restart-epoch", &epoch.to_string()]);
    cmd.args(["--drain-time-s", &s.drain_time_s.to_string()]);
    cmd.args(["--parent-shutdown-time-s", &s.parent_shutdown_time_s.to_string()]);
    cmd.args(["--service-node", &s.node, "--service-cluster", &s.cluster, "-l", &s.log_level]);
    if let Some(n) = s.concurrency {
        cmd.args(["--concurrency", &n.to_string()]);
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// The proxy's version: this build's for `legate proxy`; what `envoy
/// --version` says for Envoy (`unknown` when it says nothing usable).
pub fn version(s: &Settings) -> String {
    match s.kind {
        ProxyKind::Legate => env!("CARGO_PKG_VERSION").to_string(),
        ProxyKind::Envoy => Command::new(&s.bin)
            .arg("--version")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()
            .and_then(|o| envoy_version(&String::from_utf8_lossy(&o.stdout)))
            .unwrap_or_else(|| "unknown".into()),
    }
}

/// `envoy  version: 8c2.../1.40.0/Clean/RELEASE/BoringSSL` -> `1.40.0`.
fn envoy_version(out: &str) -> Option<String> {
    let line = out.lines().find(|l| l.contains("version:"))?;
    let full = line.split("version:").nth(1)?.trim();
    Some(full.split('/').nth(1).unwrap_or(full).to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn envoy_version_is_read_from_its_banner() {
        let out = "\nenvoy  version: 5a2bc1b/1.40.0/Clean/RELEASE/BoringSSL\n\n";
        assert_eq!(super::envoy_version(out).as_deref(), Some("1.40.0"));
        assert_eq!(super::envoy_version(""), None);
    }
}
