//! How much of the Envoy configs people actually run Legate runs unchanged.
//!
//! Two sets: real-world bootstraps from public repositories
//! (`tests/data/real-world`, sources and licences in its `SOURCES.md`) and
//! Envoy's own examples (`tests/data/envoy-examples`). Each file goes through
//! `envoy --mode validate` (1.40) and `legate validate`; the report says how
//! many Envoy accepts, how many of those Legate runs unchanged (exit 0), and
//! which fields and extensions block the rest, most frequent first (a config
//! counts under every blocker it has), with the configs that one field alone
//! blocks. The test fails when a figure falls below its floor, when Legate
//! calls invalid (exit 1) a config Envoy accepts, or when a real-world config
//! stops being valid for Envoy.

mod harness;

use harness::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");

/// Configs Legate runs unchanged today, per set: the figure may only rise.
const FLOORS: &[(&str, usize)] = &[("real-world", 68), ("envoy-examples", 46)];

/// Validator threads: the validators mostly wait on their own start-up.
const THREADS: usize = 4;

struct Verdict {
    file: PathBuf,
    envoy: i32,
    legate: i32,
    /// What `legate validate` says it does not implement: the message and
    /// field (`pkg.Message.field`) or `extension <type>`, once per config.
    blockers: Vec<String>,
    output: String,
}

fn configs(set: &str) -> Vec<PathBuf> {
    let dir = format!("{DATA}/{set}");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    files
}

fn run(cmd: &mut Command) -> (i32, String) {
    let out = cmd.output().expect("run validator");
    (
        out.status.code().unwrap_or(-1),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

/// `  <path>: <what> is not implemented by Legate` lines, as `<what>`.
fn blockers(output: &str) -> Vec<String> {
    let mut found: Vec<String> = output
        .lines()
        .filter_map(|l| l.trim().strip_suffix(" is not implemented by Legate"))
        .filter_map(|l| l.rsplit_once(": ").map(|(_, what)| what.to_string()))
        .collect();
    found.sort();
    found.dedup();
    found
}

fn verdict(file: &Path, dir: &Path) -> Verdict {
    let (envoy, _) = run(envoy_command(file, "validate").current_dir(dir));
    let (legate, output) = run(Command::new(LEGATE).current_dir(dir).args(["validate", "-c"]).arg(file));
    Verdict { file: file.to_path_buf(), envoy, legate, blockers: blockers(&output), output }
}

fn verdicts(files: &[PathBuf], dir: &Path) -> Vec<Verdict> {
    let chunk = files.len().div_ceil(THREADS).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(|f| verdict(f, dir)).collect::<Vec<_>>()))
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("validator thread")).collect()
    })
}

fn name(v: &Verdict) -> String {
    v.file.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string()
}

/// Prints the set's figures and blockers; returns how many Legate runs unchanged.
fn report(set: &str, results: &[Verdict]) -> usize {
    let accepted: Vec<&Verdict> = results.iter().filter(|v| v.envoy == 0).collect();
    let unchanged = accepted.iter().filter(|v| v.legate == 0).count();
    println!(
        "\n== {set}: {} configs, {} valid for Envoy 1.40, {unchanged} run by Legate unchanged",
        results.len(),
        accepted.len()
    );
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut alone: BTreeMap<&str, usize> = BTreeMap::new();
    for v in accepted.iter().filter(|v| v.legate == 3) {
        for b in &v.blockers {
            *counts.entry(b).or_default() += 1;
        }
        if let [only] = v.blockers.as_slice() {
            *alone.entry(only).or_default() += 1;
        }
    }
    let blocked = accepted.iter().filter(|v| v.legate == 3).count();
    println!("blocked: {blocked}; by exactly one field or extension: {}", alone.values().sum::<usize>());
    let mut ranked: Vec<(&str, usize)> = counts.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    for (what, n) in ranked {
        let only = alone.get(what).map(|k| format!(" ({k} alone)")).unwrap_or_default();
        println!("{n:>4}  {what}{only}");
    }
    unchanged
}

#[test]
fn breadth_of_real_world_configs() {
    // Installed (if need be) once, before the validator threads use it.
    envoy_bin();
    // From an empty directory, as the configs' relative paths are not ours.
    let dir = TempDir::new("breadth");
    let mut problems = Vec::new();
    for (set, floor) in FLOORS {
        let files = configs(set);
        assert!(files.len() >= 45, "{set}: only {} configs", files.len());
        let results = verdicts(&files, dir.path());
        for v in &results {
            if v.envoy == 0 && v.legate == 1 {
                problems.push(format!("{}: Envoy accepts it, Legate calls it invalid:\n{}", name(v), v.output.trim()));
            }
            if v.envoy == 0 && v.legate == 3 && v.blockers.is_empty() {
                problems.push(format!("{}: exit 3 without a listed field:\n{}", name(v), v.output.trim()));
            }
            if *set == "real-world" && v.envoy != 0 {
                problems.push(format!("{}: Envoy 1.40 no longer accepts it (exit {})", name(v), v.envoy));
            }
        }
        let unchanged = report(set, &results);
        if unchanged < *floor {
            problems.push(format!("{set}: Legate runs {unchanged} configs unchanged, below the floor of {floor}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
