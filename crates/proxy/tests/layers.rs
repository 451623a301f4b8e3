//! The proxy's layering, as `docs/ARCHITECTURE.md` draws it, checked on the
//! source: each top-level module may import only the layers below it, and no
//! two files import each other, directly or around a circle.
//!
//! Imports are read as text (`crate::a::b` and `super::a`), which is enough
//! for this crate's style: every cross-module reference is a path from
//! `crate::` or a sibling through `super::`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules, each with the modules it may import. A module not
/// listed here fails the test until it is given its place.
const LAYERS: &[(&str, &[&str])] = &[
    ("common", &[]),
    ("stats", &[]),
    ("io", &[]),
    ("body", &["stats"]),
    ("access_log", &["common"]),
    ("tls", &["common", "stats", "io"]),
    ("upstream", &["common", "stats", "io", "body", "tls"]),
    ("trace", &["common", "stats", "io", "body", "tls", "upstream"]),
    ("http", &["common", "stats", "io", "body", "tls", "upstream", "access_log", "trace"]),
    ("listener", &["common", "stats", "io", "body", "tls", "upstream", "access_log", "trace", "http"]),
    ("server", &["common", "stats", "io", "body", "tls", "upstream", "access_log", "trace", "http", "listener"]),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// A file's path under `src/`, as messages show it.
fn rel(file: &Path) -> String {
    file.strip_prefix(src()).unwrap_or(file).display().to_string()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).expect("read src").flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a file: `http/router/mod.rs` -> ["http", "router"].
fn module_of(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src()).expect("under src");
    let mut parts: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap_or_default();
    if last != "mod.rs" && last != "lib.rs" {
        parts.push(last.trim_end_matches(".rs").to_string());
    }
    parts
}

/// The file that defines the longest prefix of `path` that is a module.
fn file_for(path: &[String], files: &BTreeMap<Vec<String>, PathBuf>) -> Option<PathBuf> {
    (1..=path.len()).rev().find_map(|n| files.get(&path[..n]).cloned())
}

/// Code without comments and string literals, so neither is read as an import.
fn code_of(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let line = line.split("//").next().unwrap_or("");
        let mut in_str = false;
        let mut prev = ' ';
        for c in line.chars() {
            if c == '"' && prev != '\\' {
                in_str = !in_str;
            } else if !in_str {
                out.push(c);
            }
            prev = c;
        }
        out.push('\n');
    }
    out
}

/// Every module path a file names: `crate::a::b::{c, d::e}` gives a::b::c and
/// a::b::d::e; `super::x` is resolved against the file's own module.
fn imports(file: &Path) -> Vec<Vec<String>> {
    let text = code_of(&std::fs::read_to_string(file).expect("read source"));
    let own = module_of(file);
    let is_mod_file = file.file_name().is_some_and(|n| n == "mod.rs" || n == "lib.rs");
    let mut out = Vec::new();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    for (root, base) in [
        ("crate::", Vec::new()),
        ("super::", {
            let mut b = own.clone();
            if !is_mod_file {
                b.pop();
            }
            b.pop();
            b
        }),
    ] {
        let mut rest = text.as_str();
        while let Some(i) = rest.find(root) {
            let preceded = rest[..i].chars().last().is_some_and(|c| ident(c) || c == ':');
            rest = &rest[i + root.len()..];
            if preceded {
                continue;
            }
            let mut path = base.clone();
            let mut seg = String::new();
            for c in rest.chars() {
                if ident(c) {
                    seg.push(c);
                } else if c == ':' {
                    if !seg.is_empty() {
                        path.push(std::mem::take(&mut seg));
                    }
                } else {
                    break;
                }
            }
            if !seg.is_empty() {
                path.push(seg);
            }
            if path.len() > base.len() {
                out.push(path);
            }
        }
    }
    out
}

fn graph() -> BTreeMap<PathBuf, BTreeSet<PathBuf>> {
    let mut all = Vec::new();
    rust_files(&src(), &mut all);
    let files: BTreeMap<Vec<String>, PathBuf> = all.iter().map(|f| (module_of(f), f.clone())).collect();
    let mut g = BTreeMap::new();
    for f in &all {
        let targets: BTreeSet<PathBuf> =
            imports(f).iter().filter_map(|p| file_for(p, &files)).filter(|t| t != f).collect();
        g.insert(f.clone(), targets);
    }
    g
}

#[test]
fn each_module_imports_only_the_layers_below_it() {
    let wrong = breaches(&graph());
    assert!(wrong.is_empty(), "imports against the layering:\n{}", wrong.join("\n"));
}

/// Every import of a module above the importer's layer, and every module
/// that has no place in `LAYERS`.
fn breaches(g: &BTreeMap<PathBuf, BTreeSet<PathBuf>>) -> Vec<String> {
    let allowed: BTreeMap<&str, &[&str]> = LAYERS.iter().copied().collect();
    let mut wrong = Vec::new();
    for (file, targets) in g {
        let Some(layer) = module_of(file).first().cloned() else { continue };
        let Some(may) = allowed.get(layer.as_str()) else {
            wrong.push(format!("{}: module `{layer}` has no place in LAYERS", rel(file)));
            continue;
        };
        for t in targets {
            let to = module_of(t).first().cloned().unwrap_or_default();
            if to != layer && !may.contains(&to.as_str()) {
                wrong.push(format!("{} imports {} (`{layer}` may not use `{to}`)", rel(file), rel(t)));
            }
        }
    }
    wrong
}

#[test]
fn no_file_imports_around_a_circle() {
    let loops = loops(&graph());
    assert!(loops.is_empty(), "files that import each other around a circle: {loops:?}");
}

/// Tarjan's strongly connected components: any component with more than one
/// file is a loop.
fn loops(g: &BTreeMap<PathBuf, BTreeSet<PathBuf>>) -> Vec<Vec<String>> {
    struct State<'a> {
        g: &'a BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        index: BTreeMap<&'a PathBuf, usize>,
        low: BTreeMap<&'a PathBuf, usize>,
        stack: Vec<&'a PathBuf>,
        on_stack: BTreeSet<&'a PathBuf>,
        next: usize,
        loops: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a PathBuf) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.g.get(v).into_iter().flatten() {
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(rel(w));
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.loops.push(component);
            }
        }
    }
    let mut s = State {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        loops: Vec::new(),
    };
    for v in g.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.loops
}

#[test]
fn the_checker_sees_a_loop_and_a_layer_breach() {
    // The reader must find what the two tests above forbid: `upstream`
    // files are read, and `http` is above them.
    let a = src().join("a.rs");
    let b = src().join("b.rs");
    let c = src().join("c.rs");
    let circle = BTreeMap::from([
        (a.clone(), BTreeSet::from([b.clone()])),
        (b.clone(), BTreeSet::from([c.clone()])),
        (c.clone(), BTreeSet::from([a.clone()])),
    ]);
    assert_eq!(loops(&circle), vec![vec!["a.rs".to_string(), "b.rs".into(), "c.rs".into()]]);
    let line = BTreeMap::from([(a.clone(), BTreeSet::from([b.clone()])), (b, BTreeSet::from([c]))]);
    assert!(loops(&line).is_empty());
    let pool = src().join("upstream/pool.rs");
    let router = src().join("http/router/mod.rs");
    let upward = BTreeMap::from([(pool.clone(), BTreeSet::from([router.clone()]))]);
    assert_eq!(
        breaches(&upward),
        vec!["upstream/pool.rs imports http/router/mod.rs (`upstream` may not use `http`)".to_string()]
    );
    assert!(breaches(&BTreeMap::from([(router, BTreeSet::from([pool]))])).is_empty());
    let g = graph();
    let upstream_files = g.keys().filter(|f| module_of(f).first().is_some_and(|m| m == "upstream")).count();
    assert!(upstream_files > 3, "the source tree was not read");
    let some_http_file_uses_upstream =
        g.iter().any(|(f, t)| module_of(f)[0] == "http" && t.iter().any(|t| module_of(t)[0] == "upstream"));
    assert!(some_http_file_uses_upstream, "imports were not read: http uses upstream");
}
