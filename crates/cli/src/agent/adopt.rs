//! A proxy left running by an agent that died (SIGKILL, OOM): the agent
//! writes the serving process's pid and epoch to `proxy.pid` in its work
//! dir; the next agent finds it there and takes over from it by a hot
//! restart (epoch N+1), so restarting the agent drops no traffic. A pid is
//! only believed when that process runs on this agent's bootstrap file.

use super::config::Settings;
use std::path::PathBuf;

fn pid_file(s: &Settings) -> PathBuf {
    s.bootstrap.with_file_name("proxy.pid")
}

/// Notes the serving process.
pub fn record(s: &Settings, pid: u32, epoch: u32) {
    if let Err(e) = std::fs::write(pid_file(s), format!("{pid} {epoch}\n")) {
        tracing::warn!("agent: cannot write {}: {e}", pid_file(s).display());
    }
}

/// No process serves any more.
pub fn clear(s: &Settings) {
    let _ = std::fs::remove_file(pid_file(s));
}

/// The pid and epoch of a proxy a previous agent left running.
pub fn left_running(s: &Settings) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string(pid_file(s)).ok()?;
    let mut it = text.split_whitespace();
    let (pid, epoch) = (it.next()?.parse().ok()?, it.next()?.parse().ok()?);
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let bootstrap = s.bootstrap.to_string_lossy();
    let ours = cmdline.split(|b| *b == 0).any(|arg| arg == bootstrap.as_bytes());
    (ours && alive(pid)).then_some((pid, epoch))
}

/// Whether `pid` runs (a zombie does not).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
}

/// Sends `signal` (`TERM`, `KILL`) to `pid`.
pub fn signal(pid: u32, signal: &str) {
    let pid = pid.to_string();
    if let Err(e) = std::process::Command::new("kill").args([&format!("-{signal}"), &pid]).status() {
        tracing::warn!("agent: cannot signal pid {pid}: {e}");
    }
}
