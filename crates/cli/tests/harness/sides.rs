//! Envoy and `legate proxy` started side by side on the same config, each
//! on its own ports, stopped (by PID) when the test lets go of them: a
//! [`Pair`] renders one template for both (see `template`); a [`Side`] is one
//! proxy whose config a closure builds from the ports it was given, and
//! [`both`] starts one of each.

use super::admin::{admin_page, text_stat, text_stats_prefixed};
use super::process::{free_port, spawn_envoy, spawn_legate, wait_ready, Proc, TempDir};
use super::upstream::echo;
use std::collections::BTreeMap;
use std::path::Path;

/// Envoy and Legate on one template, with their ports.
pub struct Pair {
    pub envoy: u16,
    pub legate: u16,
    pub envoy_admin: u16,
    pub legate_admin: u16,
    pub _procs: Vec<Proc>,
    pub _dir: TempDir,
}

/// Starts the echo `upstreams`, then Envoy and Legate on `template` (its
/// placeholders filled in for each), and waits until both are ready.
pub fn start_pair(name: &str, template: &str, upstreams: &[&str]) -> Pair {
    let dir = TempDir::new(&format!("diff-{name}"));
    let mut procs = Vec::new();
    let mut ups = BTreeMap::new();
    for u in upstreams {
        let (p, port) = echo(u, dir.path());
        procs.push(p);
        ups.insert(*u, port);
    }
    let render = |listen: u16, admin: u16| {
        let mut s = template.replace("{LISTEN}", &listen.to_string()).replace("{ADMIN}", &admin.to_string());
        for (u, port) in &ups {
            s = s.replace(&format!("{{UP_{u}}}"), &port.to_string());
        }
        // Dead endpoints: {CLOSED}, and distinct ones as {CLOSED2}, {CLOSED3}...
        for i in 2..6 {
            s = s.replace(&format!("{{CLOSED{i}}}"), &free_port().to_string());
        }
        s.replace("{CLOSED}", &free_port().to_string())
    };
    let (envoy, envoy_admin, legate, legate_admin) = (free_port(), free_port(), free_port(), free_port());
    let ef = dir.path().join("envoy.yaml");
    let lf = dir.path().join("legate.yaml");
    std::fs::write(&ef, render(envoy, envoy_admin)).expect("write");
    std::fs::write(&lf, render(legate, legate_admin)).expect("write");
    let mut e = spawn_envoy("envoy", &ef, "error", &[], dir.path());
    let mut l = spawn_legate("legate", &lf, &["-l", "warn"], dir.path());
    wait_ready(envoy_admin, &mut e);
    wait_ready(legate_admin, &mut l);
    procs.push(e);
    procs.push(l);
    Pair { envoy, legate, envoy_admin, legate_admin, _procs: procs, _dir: dir }
}

/// Which proxy a [`Side`] runs.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Bin {
    Envoy,
    Legate,
}

/// A side's listener ports, by the names the test gave them.
pub type Ports = BTreeMap<&'static str, u16>;

/// One proxy with its own admin and listener ports.
pub struct Side {
    pub who: &'static str,
    pub admin: u16,
    pub ports: Ports,
    _proc: Proc,
}

impl Side {
    /// Starts `bin` (Envoy with `envoy_flags`) as `who` on the config
    /// `yaml(who, admin, ports)` (written to `<who>.yaml` in `dir`), a
    /// fresh port for each of `names`, and waits until it is ready.
    pub fn start(
        who: &'static str,
        bin: Bin,
        envoy_flags: &[&str],
        dir: &Path,
        names: &[&'static str],
        yaml: impl Fn(&'static str, u16, &Ports) -> String,
    ) -> Side {
        let admin = free_port();
        let ports: Ports = names.iter().map(|n| (*n, free_port())).collect();
        let f = dir.join(format!("{who}.yaml"));
        std::fs::write(&f, yaml(who, admin, &ports)).expect("write config");
        let mut proc_ = match bin {
            Bin::Envoy => spawn_envoy(who, &f, "error", envoy_flags, dir),
            Bin::Legate => spawn_legate(who, &f, &["-l", "warn"], dir),
        };
        wait_ready(admin, &mut proc_);
        Side { who, admin, ports, _proc: proc_ }
    }

    pub fn port(&self, name: &str) -> u16 {
        self.ports[name]
    }

    /// A counter or gauge from the text `/stats`, 0 when absent.
    pub fn stat(&self, name: &str) -> u64 {
        text_stat(&admin_page(self.admin, "/stats"), name).unwrap_or(0)
    }

    /// Every counter and gauge from `/stats` whose name starts with `prefix`,
    /// the prefix taken off.
    pub fn stats(&self, prefix: &str) -> BTreeMap<String, u64> {
        text_stats_prefixed(&admin_page(self.admin, "/stats"), prefix)
    }
}

/// The same config on Envoy (`envoy`) and on Legate (`legate`), in that
/// order; Envoy runs with `envoy_flags`.
pub fn both(
    dir: &Path,
    envoy_flags: &[&str],
    names: &[&'static str],
    yaml: impl Fn(&'static str, u16, &Ports) -> String,
) -> [Side; 2] {
    let e = Side::start("envoy", Bin::Envoy, envoy_flags, dir, names, &yaml);
    let l = Side::start("legate", Bin::Legate, envoy_flags, dir, names, &yaml);
    [e, l]
}
