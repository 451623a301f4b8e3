//! `legate ctl apply --canary 10% --hold 30s`: the apply is staged on a
//! canary share (or `--canary-nodes`) of the proxies that would receive it;
//! ctl waits for the control plane to promote it to every proxy or roll it
//! back, and prints the outcome with its evidence (exit status 1 when
//! rolled back).

use crate::ctl::client::Api;
use crate::ctl::render::print;
use anyhow::bail;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// The flags of a staged apply.
#[derive(clap::Args, Default)]
#[command(group(clap::ArgGroup::new("canary_target").args(["canary", "canary_nodes"])))]
pub struct StageArgs {
    /// Stage the change: this share of the proxies that would receive it
    /// (`10%`) gets it first; the rest after the hold, if those did no worse.
    #[arg(long)]
    pub canary: Option<String>,
    /// Stage the change on these proxies (node ids, comma-separated) instead of a share.
    #[arg(long, value_delimiter = ',', conflicts_with = "canary")]
    pub canary_nodes: Vec<String>,
    /// How long the canary runs the change before it is judged (default 30s).
    #[arg(long, requires = "canary_target")]
    pub hold: Option<String>,
    /// Print the staged state and return without waiting for the outcome.
    #[arg(long)]
    pub no_wait: bool,
    /// Apply to every proxy at once even when a `Rollout` policy would stage it.
    #[arg(long, conflicts_with_all = ["canary", "canary_nodes"])]
    pub no_canary: bool,
}

impl StageArgs {
    /// The `rollout` of the apply's body, when staged.
    pub fn body(&self) -> Option<Value> {
        if self.no_canary {
            return Some(json!(false));
        }
        if self.canary.is_none() && self.canary_nodes.is_empty() {
            return None;
        }
        let mut r = json!({});
        if let Some(c) = &self.canary {
            r["canary"] = json!(c);
        }
        if !self.canary_nodes.is_empty() {
            r["nodes"] = json!(self.canary_nodes);
        }
        if let Some(h) = &self.hold {
            r["hold"] = json!(h);
        }
        Some(r)
    }
}

/// After a staged apply answered `applied`: waits (unless `no_wait`) for
/// the outcome and prints it; an error when it was rolled back.
pub fn follow(api: &Api, out: &str, applied: &Value, no_wait: bool) -> anyhow::Result<()> {
    let mut r = applied["rollout"].clone();
    if r["state"] == "staged" && !no_wait {
        eprint!("{}", staged(&r));
        let policy = &r["policy"];
        let limit =
            Duration::from_millis(policy["holdMs"].as_u64().unwrap_or(0) + policy["maxWaitMs"].as_u64().unwrap_or(0))
                + Duration::from_secs(60);
        let url = format!("{}/v1/rollouts/{}", api.base, r["revision"]);
        let start = Instant::now();
        while r["state"] == "staged" && start.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(250));
            r = api.call("GET", &url, None)?;
        }
    }
    print(out, &r, outcome)?;
    if r["state"] == "rolled_back" {
        bail!("revision {} was rolled back", r["revision"]);
    }
    Ok(())
}

fn staged(r: &Value) -> String {
    let list = |v: &Value| v.as_array().into_iter().flatten().filter_map(Value::as_str).collect::<Vec<_>>().join(", ");
    format!(
        "revision {} staged on {} (the others keep revision {}: {}); hold {} ms\n",
        r["revision"],
        list(&r["canary"]),
        r["previous"],
        if r["others"].as_array().is_some_and(|a| !a.is_empty()) { list(&r["others"]) } else { "none".into() },
        r["policy"]["holdMs"]
    )
}

/// A rollout's state and evidence, for people.
pub fn outcome(r: &Value) -> String {
    let mut s = staged(r);
    let state = r["state"].as_str().unwrap_or("?");
    s.push_str(&format!("{state}: {}\n", r["reason"].as_str().unwrap_or("")));
    if let Some(rev) = r["finalRevision"].as_u64() {
        s.push_str(&format!("final revision {rev}\n"));
    }
    let e = &r["evidence"];
    if !e.is_null() {
        for (who, g) in [("canary", &e["canary"]), ("others", &e["others"])] {
            s.push_str(&format!(
                "  {who}: {} proxies, {} requests, {} errors, error rate {:.4}, p99 {}\n",
                g["proxies"],
                g["requests"],
                g["errors"],
                g["errorRate"].as_f64().unwrap_or(0.0),
                g["p99Ms"].as_f64().map_or("-".to_string(), |p| format!("{p:.1} ms"))
            ));
        }
        for a in e["acks"].as_array().into_iter().flatten() {
            let nack = a["nack"].as_str().map(|n| format!(" ({n})")).unwrap_or_default();
            s.push_str(&format!(
                "  {}: {}{nack}\n",
                a["node"].as_str().unwrap_or(""),
                if a["acked"] == true { "ACKed" } else { "not ACKed" }
            ));
        }
    }
    s
}
