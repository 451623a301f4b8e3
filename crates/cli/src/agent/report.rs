//! The agent's side of the control plane: the node's bootstrap, and the
//! state reports, sent from their own thread every interval (and at once
//! after a change), whose answers carry the commands queued for the agent.

use super::config::Settings;
use crate::ctl::client::{urlencode, Api};
use legate_control::discovery::agents::{AgentCommand, AgentReport};
use serde_json::Value;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// The latest report, and a wake-up for the reporting thread.
#[derive(Clone)]
pub struct Reporter {
    shared: Arc<(Mutex<(AgentReport, bool)>, Condvar)>,
    api: Arc<Api>,
    url: String,
}

fn api(s: &Settings) -> Api {
    Api { tls: s.tls.clone(), token: s.token.clone(), base: s.server.clone(), timeout: Some(Duration::from_secs(3)) }
}

impl Reporter {
    /// Starts the reporting thread: the reporter, and the commands it receives.
    pub fn start(s: &Settings) -> anyhow::Result<(Reporter, Receiver<AgentCommand>)> {
        let url = format!("{}/v1/agents/{}", s.server, urlencode(&s.node));
        let report = AgentReport { state: "starting".into(), cluster: s.cluster.clone(), ..Default::default() };
        let shared = Arc::new((Mutex::new((report, false)), Condvar::new()));
        let me = Reporter { shared, api: Arc::new(api(s)), url };
        let (tx, rx) = channel();
        let (r, every) = (me.clone(), s.report_interval);
        std::thread::Builder::new().name("agent-report".into()).spawn(move || r.run(every, &tx))?;
        Ok((me, rx))
    }

    /// Changes the report; `now` sends it at once.
    pub fn update(&self, now: bool, f: impl FnOnce(&mut AgentReport)) {
        let (lock, wake) = &*self.shared;
        let mut g = lock.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g.0);
        if now {
            g.1 = true;
            wake.notify_one();
        }
    }

    /// Sends the report from this thread (the last one, when stopping).
    pub fn send_now(&self) {
        let report = self.current();
        if let Err(e) = self.send(&report) {
            tracing::warn!("agent: cannot report to the control plane: {e:#}");
        }
    }

    fn current(&self) -> AgentReport {
        self.shared.0.lock().unwrap_or_else(|e| e.into_inner()).0.clone()
    }

    fn send(&self, report: &AgentReport) -> anyhow::Result<Vec<AgentCommand>> {
        let v = self.api.call("PUT", &self.url, Some(serde_json::to_value(report)?))?;
        Ok(serde_json::from_value(v.get("commands").cloned().unwrap_or(Value::Null)).unwrap_or_default())
    }

    fn run(&self, every: Duration, commands: &Sender<AgentCommand>) {
        let (lock, wake) = &*self.shared;
        loop {
            let report = {
                let g = lock.lock().unwrap_or_else(|e| e.into_inner());
                let (mut g, _) = wake.wait_timeout_while(g, every, |g| !g.1).unwrap_or_else(|e| e.into_inner());
                g.1 = false;
                g.0.clone()
            };
            match self.send(&report) {
                Ok(list) => {
                    for c in list {
                        if commands.send(c).is_err() {
                            return;
                        }
                    }
                }
                Err(e) => tracing::warn!("agent: cannot report to the control plane: {e:#}"),
            }
        }
    }
}

/// With `--ca-file`, the proxy reaches the control plane's xDS over TLS as
/// the agent reaches its API: the same CA, client certificate and name.
fn with_tls(s: &Settings, yaml: String) -> String {
    let Some(ca) = &s.tls.cacert else { return yaml };
    let path = |p: &std::path::Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()).display().to_string();
    let client = s.tls.cert.as_ref().map(|(c, k)| (path(c), path(k)));
    legate_control::discovery::bootstrap::with_xds_tls(&yaml, &path(ca), client, &s.server_name)
}

/// The node's bootstrap from the control plane, written to the work dir;
/// when the control plane cannot be reached, the one written before stays.
pub fn fetch_bootstrap(s: &Settings) -> anyhow::Result<()> {
    let mut url = format!(
        "{}/v1/bootstrap?node={}&cluster={}&admin_port={}",
        s.server,
        urlencode(&s.node),
        urlencode(&s.cluster),
        s.admin_port
    );
    if let Some(l) = &s.locality {
        url.push_str(&format!("&locality={}", urlencode(l)));
    }
    match api(s).text(&url) {
        Ok(yaml) => {
            std::fs::write(&s.bootstrap, with_tls(s, yaml))?;
            Ok(())
        }
        Err(e) if s.bootstrap.exists() => {
            tracing::warn!("agent: {e:#}; starting on the bootstrap fetched before");
            Ok(())
        }
        Err(e) => Err(e),
    }
}
