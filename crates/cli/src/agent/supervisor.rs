//! The supervised proxy process: starting it, noticing when it exits or
//! stops answering `/ready`, restarting it with backoff (or stopping at a
//! crash loop), hot restarts, and stopping everything on the way out.

use super::backoff::{Backoff, Next};
use super::config::Settings;
use super::report::{fetch_bootstrap, Reporter};
use super::{admin, adopt, launch};
use std::os::unix::process::ExitStatusExt as _;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// How long a new process may take to answer `/ready` before failed probes count.
const STARTUP_GRACE: Duration = Duration::from_secs(30);
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The process state the agent reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Starting,
    Running,
    Restarting,
    CrashLoop,
    Draining,
    Stopped,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Restarting => "restarting",
            Self::CrashLoop => "crash-loop",
            Self::Draining => "draining",
            Self::Stopped => "stopped",
        }
    }
}

/// The process serving now.
struct Current {
    child: Child,
    started: Instant,
    epoch: u32,
    ready_once: bool,
    failures: u32,
    last_probe: Instant,
}

pub struct Supervisor {
    pub s: Settings,
    reporter: Reporter,
    backoff: Backoff,
    current: Option<Current>,
    /// Hot restart parents, draining until they exit.
    retiring: Vec<Child>,
    /// A parent a previous agent left running (not our child: watched by pid).
    adopted: Vec<u32>,
    pub state: State,
    restarts: u64,
    started_once: bool,
    last_exit: Option<String>,
    next_start: Option<Instant>,
    crash_until: Option<Instant>,
    version: String,
    pub last_command: Option<u64>,
}

impl Supervisor {
    pub fn new(s: Settings, reporter: Reporter) -> Self {
        let version = launch::version(&s);
        let backoff = Backoff::new(s.crash_restarts, s.crash_window);
        Self {
            s,
            reporter,
            backoff,
            current: None,
            retiring: Vec::new(),
            adopted: Vec::new(),
            state: State::Starting,
            restarts: 0,
            started_once: false,
            last_exit: None,
            next_start: None,
            crash_until: None,
            version,
            last_command: None,
        }
    }

    /// The first start: a hot restart from a proxy a previous agent left
    /// running, else epoch 0.
    pub fn start_first(&mut self) {
        match adopt::left_running(&self.s) {
            Some((pid, epoch)) => {
                tracing::info!("agent: pid {pid} (epoch {epoch}) was left running; taking over from it");
                self.adopted.push(pid);
                self.start(epoch + 1);
            }
            None => self.start(0),
        }
    }

    /// No parent (ours or adopted) is still draining.
    fn no_parents(&self) -> bool {
        self.retiring.is_empty() && self.adopted.is_empty()
    }

    /// Starts the process at `epoch` (0 unless it takes over from a running one).
    fn start(&mut self, epoch: u32) {
        self.next_start = None;
        if let Err(e) = fetch_bootstrap(&self.s) {
            return self.exited(format!("no bootstrap: {e:#}"));
        }
        match launch::command(&self.s, epoch).spawn() {
            Ok(child) => {
                tracing::info!("agent: started {} pid {} at epoch {epoch}", self.s.kind.name(), child.id());
                if std::mem::replace(&mut self.started_once, true) {
                    self.restarts += 1;
                }
                adopt::record(&self.s, child.id(), epoch);
                let now = Instant::now();
                let cur = Current { child, started: now, epoch, ready_once: false, failures: 0, last_probe: now };
                if let Some(old) = self.current.replace(cur) {
                    self.retiring.push(old.child);
                }
                self.set_state(if epoch > 0 { State::Restarting } else { State::Starting });
            }
            Err(e) => self.exited(format!("cannot start {}: {e}", self.s.bin.display())),
        }
    }

    /// Looks at the processes once: exits, `/ready`, a start that is due.
    pub fn tick(&mut self) {
        self.retiring.retain_mut(|c| matches!(c.try_wait(), Ok(None)));
        self.adopted.retain(|p| adopt::alive(*p));
        let exited = match self.current.as_mut().map(|c| c.child.try_wait()) {
            Some(Ok(Some(status))) => Some(describe(status)),
            Some(Err(e)) => Some(format!("cannot wait for it: {e}")),
            _ => None,
        };
        match exited {
            Some(reason) => {
                self.current = None;
                self.exited(reason);
            }
            None => self.probe(),
        }
        let now = Instant::now();
        if self.current.is_none() && self.crash_until.is_some_and(|t| now >= t) {
            tracing::info!("agent: crash-loop pause over; starting again");
            self.crash_until = None;
            self.backoff.reset();
            self.next_start = Some(now);
        }
        if self.current.is_none() && self.next_start.is_some_and(|t| now >= t) {
            self.start(0);
        }
        self.publish(false);
    }

    /// One `/ready` probe when due; too many failures in a row restart the process.
    fn probe(&mut self) {
        let (port, limit, draining) = (self.s.admin_port, self.s.ready_failures, self.state == State::Draining);
        let Some(cur) = self.current.as_mut() else { return };
        if draining || cur.last_probe.elapsed() < PROBE_EVERY && cur.ready_once {
            return;
        }
        cur.last_probe = Instant::now();
        if admin::ready(port) {
            cur.failures = 0;
            cur.ready_once = true;
            if matches!(self.state, State::Starting | State::Restarting) && self.no_parents() {
                self.set_state(State::Running);
            }
            return;
        }
        if !cur.ready_once && cur.started.elapsed() < STARTUP_GRACE {
            return;
        }
        cur.failures += 1;
        if cur.failures >= limit {
            let failures = cur.failures;
            let _ = cur.child.kill();
            let _ = cur.child.wait();
            self.current = None;
            self.exited(format!("admin /ready failed {failures} times; killed"));
        }
    }

    /// The serving process is gone: restart it after the backoff, or stop at a crash loop.
    fn exited(&mut self, reason: String) {
        tracing::warn!("agent: the proxy stopped: {reason}");
        self.last_exit = Some(reason);
        // A parent left draining would hold the restart family's epoch.
        for mut c in self.retiring.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        for pid in self.adopted.drain(..) {
            adopt::signal(pid, "KILL");
        }
        adopt::clear(&self.s);
        match self.backoff.stopped(Instant::now()) {
            Next::RestartAfter(d) => {
                self.next_start = Some(Instant::now() + d);
                self.set_state(State::Restarting);
            }
            Next::CrashLoop => {
                let (n, w, p) = (self.s.crash_restarts, self.s.crash_window, self.s.crash_pause);
                tracing::error!("agent: crash loop ({n} restarts within {w:?}); not restarting for {p:?}");
                self.crash_until = Some(Instant::now() + p);
                self.next_start = None;
                self.set_state(State::CrashLoop);
            }
        }
    }

    /// A hot restart: epoch N+1 takes over from the running process (or a
    /// plain start when none runs, ending a crash-loop pause).
    pub fn hot_restart(&mut self) {
        match self.current.as_ref().map(|c| c.epoch) {
            Some(epoch) if self.no_parents() => self.start(epoch + 1),
            Some(_) => tracing::warn!("agent: a hot restart is still draining its parent; restart ignored"),
            None => {
                self.crash_until = None;
                self.backoff.reset();
                self.start(0);
            }
        }
    }

    /// The serving process's admin port, when one runs.
    pub fn admin_port(&self) -> Option<u16> {
        self.current.as_ref().map(|_| self.s.admin_port)
    }

    pub fn set_state(&mut self, state: State) {
        if self.state != state {
            tracing::info!("agent: {} -> {}", self.state.name(), state.name());
        }
        self.state = state;
        self.publish(true);
    }

    fn publish(&self, now: bool) {
        let cur = self.current.as_ref();
        self.reporter.update(now, |r| {
            r.state = self.state.name().into();
            r.pid = cur.map(|c| c.child.id());
            r.restarts = self.restarts;
            r.epoch = cur.map_or(0, |c| c.epoch);
            r.base_id = self.s.base_id;
            r.last_exit.clone_from(&self.last_exit);
            r.uptime_s = cur.map_or(0, |c| c.started.elapsed().as_secs());
            r.proxy = self.s.kind.name().into();
            r.version.clone_from(&self.version);
            r.cluster.clone_from(&self.s.cluster);
            r.last_command = self.last_command;
            r.interval_ms = u64::try_from(self.s.report_interval.as_millis()).unwrap_or(u64::MAX);
        });
    }

    /// SIGTERM to every process (the proxy drains, as on any SIGTERM), then
    /// SIGKILL to what still runs after the drain time and 5 s.
    pub fn stop_all(&mut self) {
        let mut all: Vec<Child> = self.retiring.drain(..).collect();
        all.extend(self.current.take().map(|c| c.child));
        // Not reaped yet, so each pid is still its own.
        for pid in all.iter().map(Child::id).chain(self.adopted.iter().copied()) {
            adopt::signal(pid, "TERM");
        }
        let limit = Instant::now() + Duration::from_secs(self.s.drain_time_s + 5);
        let running = |all: &mut Vec<Child>, adopted: &[u32]| {
            all.iter_mut().any(|c| matches!(c.try_wait(), Ok(None))) || adopted.iter().any(|p| adopt::alive(*p))
        };
        while Instant::now() < limit && running(&mut all, &self.adopted) {
            std::thread::sleep(Duration::from_millis(50));
        }
        for mut c in all {
            let _ = c.kill();
            let _ = c.wait();
        }
        for pid in self.adopted.drain(..).filter(|p| adopt::alive(*p)) {
            adopt::signal(pid, "KILL");
        }
        adopt::clear(&self.s);
        self.set_state(State::Stopped);
    }
}

/// How a process ended: `exit code N` or `signal N`.
fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => status.to_string(),
    }
}
