//! `legate ctl release start|list|status|pause|resume|promote|abort`.

use crate::ctl::client::{read_input, urlencode, Api};
use crate::ctl::render::{applied, print};
use serde_json::{json, Value};

#[derive(clap::Subcommand)]
pub enum ReleaseCommand {
    /// Start a release from a file holding one Release document (or `-`: stdin).
    Start {
        #[arg(short = 'f', long = "filename")]
        file: String,
        #[arg(short = 'm', long, default_value = "")]
        message: String,
    },
    /// Every release with its phase and weight.
    List,
    /// One release: phase, step, the candidate's weight, each step's analysis.
    Status { name: String },
    /// Keep the current weights; the driver stops moving the release.
    Pause { name: String },
    /// Go on from a pause: the current step is held and analysed again.
    Resume { name: String },
    /// Send all traffic to the candidate now (phase Promoted).
    Promote { name: String },
    /// Send all traffic to stable now (phase Aborted).
    Abort { name: String },
}

/// Runs one `legate ctl release` command.
pub fn run(api: &Api, out: &str, command: ReleaseCommand) -> anyhow::Result<()> {
    let base = &api.base;
    let (name, action) = match command {
        ReleaseCommand::Start { file, message } => {
            let body = json!({"text": read_input(&file)?, "message": message});
            let v = api.call("POST", &format!("{base}/v1/releases"), Some(body))?;
            return print(out, &v, |v| applied(v, false));
        }
        ReleaseCommand::List => return print(out, &api.call("GET", &format!("{base}/v1/releases"), None)?, list),
        ReleaseCommand::Status { name } => {
            let v = api.call("GET", &format!("{base}/v1/releases/{}", urlencode(&name)), None)?;
            return print(out, &v, one);
        }
        ReleaseCommand::Pause { name } => (name, "pause"),
        ReleaseCommand::Resume { name } => (name, "resume"),
        ReleaseCommand::Promote { name } => (name, "promote"),
        ReleaseCommand::Abort { name } => (name, "abort"),
    };
    let v = api.call("POST", &format!("{base}/v1/releases/{}/{action}", urlencode(&name)), Some(json!({})))?;
    print(out, &v, one)
}

fn list(v: &Value) -> String {
    let mut s = format!("{:<24} {:<16} {:<12} {:>6} {:>7}\n", "NAME", "SERVICE", "PHASE", "STEP", "WEIGHT");
    for r in v["items"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "{:<24} {:<16} {:<12} {:>6} {:>6}%\n",
            r["name"].as_str().unwrap_or("-"),
            r["service"].as_str().unwrap_or("-"),
            r["phase"].as_str().unwrap_or("-"),
            format!("{}/{}", r["step"], r["steps"].as_array().map_or(0, Vec::len)),
            r["weight"],
        ));
    }
    s
}

fn one(r: &Value) -> String {
    let mut s = format!(
        "Release/{}  service {}  {} -> {}\nphase {}  step {}/{} {:?}  candidate weight {}%\n{}\n",
        r["name"].as_str().unwrap_or("-"),
        r["service"].as_str().unwrap_or("-"),
        r["stableCluster"].as_str().unwrap_or("-"),
        r["candidateCluster"].as_str().unwrap_or("-"),
        r["phase"].as_str().unwrap_or("-"),
        r["step"],
        r["steps"].as_array().map_or(0, Vec::len),
        r["steps"].as_array().map(|a| a.iter().map(|x| x.to_string()).collect::<Vec<_>>()).unwrap_or_default(),
        r["weight"],
        r["message"].as_str().unwrap_or(""),
    );
    let analyses = r["analyses"].as_array().cloned().unwrap_or_default();
    if !analyses.is_empty() {
        s.push_str(&format!(
            "{:>5} {:>7} {:>9} {:>7} {:>10} {:>9}  {}\n",
            "STEP", "WEIGHT", "REQUESTS", "ERRORS", "ERROR RATE", "P99 MS", "RESULT"
        ));
    }
    for a in analyses {
        s.push_str(&format!(
            "{:>5} {:>6}% {:>9} {:>7} {:>10.4} {:>9}  {} ({})\n",
            a["step"].as_u64().map_or(0, |x| x + 1),
            a["weight"],
            a["requests"],
            a["errors"],
            a["errorRate"].as_f64().unwrap_or(0.0),
            a["p99Ms"].as_f64().map_or("-".into(), |x| format!("{x:.1}")),
            a["result"].as_str().unwrap_or("-"),
            a["reason"].as_str().unwrap_or(""),
        ));
    }
    s
}
