//! The bootstrap's `layered_runtime` beside Envoy 1.40: a static layer, a
//! disk layer whose symlink is swapped while serving, and an admin layer
//! changed through `/runtime_modify`. What the proxies show (`/runtime`,
//! `runtime.*` stats) and what the runtime changes in serving (the fault
//! filter's keys, a route's `runtime_fraction`, a listener's connection
//! limit, the global connection limit's runtime key) must agree.

mod harness;

use harness::config::{hcm_answer, hcm_vhost, listener};
use harness::raw::{answered_keep_alive, closed_unanswered};
use harness::sides::{both, Side};
use harness::*;
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

const FAULT: &str = "{name: envoy.filters.http.fault, typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault, abort: {http_status: 503, percentage: {numerator: 0, denominator: HUNDRED}}}}, ";

/// A disk layer's tree: `fault/http/abort/{abort_percent,http_status}`.
fn write_tree(root: &Path, version: &str, percent: &str, status: &str) {
    let d = root.join(version).join("envoy/fault/http/abort");
    std::fs::create_dir_all(&d).expect("runtime dir");
    std::fs::write(d.join("abort_percent"), format!("# the share of aborted requests\n{percent}\n")).expect("write");
    std::fs::write(d.join("http_status"), status).expect("write");
}

/// Points `root/current` at `root/version` by an atomic rename, as the
/// runtime docs prescribe.
fn swap(root: &Path, version: &str) {
    let tmp = root.join("current.tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(root.join(version), &tmp).expect("symlink");
    std::fs::rename(&tmp, root.join("current")).expect("rename");
}

fn config(admin: u16, main: u16, limited: u16, root: &Path) -> String {
    let routes = "routes: [\
        {match: {prefix: \"/a\", runtime_fraction: {default_value: {numerator: 100}, runtime_key: routes.a}}, \
         direct_response: {status: 200, body: {inline_string: a}}}, \
        {match: {prefix: \"/\"}, direct_response: {status: 200, body: {inline_string: b}}}]";
    let main_chain = format!("{{filters: [{}]}}", hcm_vhost("ingress", routes, FAULT, ""));
    let limited_chain = format!("{{filters: [{}]}}", hcm_answer("limited", "ok"));
    format!(
        "admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}\n\
         layered_runtime:\n  layers:\n\
         \x20 - name: static_layer_0\n    static_layer:\n      routes: {{a: 0}}\n      \
         envoy: {{resource_limits: {{listener: {{limited: {{connection_limit: 1}}}}}}}}\n      \
         flag: true\n      ratio: 1.5\n      text: plain words\n\
         \x20 - name: disk\n    disk_layer: {{symlink_root: {}, subdirectory: envoy}}\n\
         \x20 - name: admin\n    admin_layer: {{}}\n\
         static_resources:\n  listeners: [{}, {}]\n",
        root.join("current").display(),
        listener("main", main, &main_chain),
        listener("limited", limited, &limited_chain),
    )
}

fn get(port: u16, path: &str) -> (u16, String) {
    let r = http_get(addr(port), path, "example.com").unwrap_or_else(|e| panic!("GET {path} on {port}: {e}"));
    (r.status, r.body)
}

fn modify(side: &Side, method: &str, query: &str) -> u16 {
    http_request(addr(side.admin), method, &format!("/runtime_modify{query}"), "admin", &[], "")
        .unwrap_or_else(|e| panic!("{}: runtime_modify: {e}", side.who))
        .status
}

fn runtime_stats(side: &Side) -> Vec<(String, u64)> {
    ["num_layers", "num_keys", "admin_overrides_active", "load_success", "load_error", "override_dir_not_exists"]
        .iter()
        .map(|n| (n.to_string(), side.stat(&format!("runtime.{n}"))))
        .collect()
}

#[test]
fn static_disk_and_admin_layers_change_what_is_served_as_in_envoy() {
    let dir = TempDir::new("runtime-layers");
    let root = dir.path().join("rt");
    write_tree(&root, "v1", "0", "503");
    write_tree(&root, "v2", "100", "418");
    swap(&root, "v1");
    let sides =
        both(dir.path(), &[], &["main", "limited"], |_, admin, p| config(admin, p["main"], p["limited"], &root));

    // As started: the static layer turns the /a route off; the disk
    // layer's abort share is 0.
    for side in &sides {
        assert_eq!(get(side.port("main"), "/a"), (200, "b".into()), "{}: routes.a is 0", side.who);
    }
    let shown: Vec<_> = sides.iter().map(|s| admin_json(s.admin, "/runtime")).collect();
    eprintln!("/runtime: {}", shown[0]);
    assert_eq!(shown[1], shown[0], "/runtime as Envoy shows it");
    assert_eq!(shown[0]["entries"]["fault.http.abort.abort_percent"]["final_value"], "0");

    // A new tree swapped in: every request aborted with its status.
    swap(&root, "v2");
    for side in &sides {
        wait_for(&format!("{}: the swapped disk layer", side.who), Duration::from_secs(5), || {
            (get(side.port("main"), "/").0 == 418).then_some(())
        });
    }

    // The admin layer overrides both, and removing an override restores
    // the layer below.
    for side in &sides {
        assert_eq!(modify(side, "POST", "?routes.a=100&fault.http.abort.abort_percent=0"), 200, "{}", side.who);
        assert_eq!(get(side.port("main"), "/a"), (200, "a".into()), "{}: routes.a is 100", side.who);
        assert_eq!(modify(side, "POST", "?fault.http.abort.abort_percent="), 200, "{}", side.who);
        assert_eq!(get(side.port("main"), "/a").0, 418, "{}: the disk layer's abort again", side.who);
        assert_eq!(modify(side, "GET", "?x=1"), 405, "{}: GET", side.who);
        assert_eq!(modify(side, "POST", ""), 400, "{}: no parameters", side.who);
    }
    let shown: Vec<_> = sides.iter().map(|s| admin_json(s.admin, "/runtime")).collect();
    assert_eq!(shown[1], shown[0], "/runtime after the changes");

    // The static layer's listener limit: one connection.
    let mut overflow = Vec::new();
    for side in &sides {
        let held = answered_keep_alive(side.port("limited"));
        assert!(held.is_some(), "{}: the first connection", side.who);
        assert!(closed_unanswered(side.port("limited")), "{}: the second is over the listener's limit", side.who);
        // Envoy closes the socket before it counts the overflow.
        let name = format!("listener.127.0.0.1_{}.downstream_cx_overflow", side.port("limited"));
        wait_for(&format!("{}: the overflow counted", side.who), Duration::from_secs(2), || {
            (side.stat(&name) > 0).then_some(())
        });
        overflow.push(side.stat(&name));
    }
    assert_eq!(overflow, vec![1, 1], "downstream_cx_overflow (Envoy, Legate)");

    let stats: Vec<_> = sides.iter().map(runtime_stats).collect();
    eprintln!("runtime stats: Envoy {:?}\n               Legate {:?}", stats[0], stats[1]);
    assert_eq!(stats[1], stats[0], "runtime.* as Envoy counts them");
}

#[test]
fn the_global_connection_limit_runtime_key_closes_what_is_over_it() {
    let dir = TempDir::new("runtime-global-cx");
    let sides = both(dir.path(), &[], &["main"], |_, admin, p| {
        format!(
            "admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}\n\
             layered_runtime:\n  layers:\n  - name: static\n    static_layer:\n      \
             overload: {{global_downstream_max_connections: 2}}\n\
             static_resources:\n  listeners: [{}]\n",
            listener("main", p["main"], &format!("{{filters: [{}]}}", hcm_answer("ingress", "ok")))
        )
    });
    let mut figures = Vec::new();
    for side in &sides {
        let main = side.port("main");
        let held: Vec<TcpStream> = (0..2).filter_map(|_| answered_keep_alive(main)).collect();
        assert_eq!(held.len(), 2, "{}: two connections are served", side.who);
        assert!(closed_unanswered(main), "{}: a third is over the runtime's limit", side.who);
        // Under this limit (not the resource monitor's) the admin listener
        // takes a place too.
        assert!(closed_unanswered(side.admin), "{}: the admin listener is full too", side.who);
        drop(held);
        let name = format!("listener.127.0.0.1_{main}.downstream_global_cx_overflow");
        let main_overflow =
            wait_for(&format!("{}: the admin back", side.who), Duration::from_secs(5), || stat(side.admin, &name));
        figures.push((main_overflow, side.stat("listener.admin.downstream_global_cx_overflow")));
    }
    eprintln!("downstream_global_cx_overflow (listener, admin): Envoy {:?}, Legate {:?}", figures[0], figures[1]);
    // The listener's figure is exact; the admin's counts every refused try
    // of the stats read, which depends on how soon the closes are seen.
    for (who, (listener, admin)) in ["Envoy", "Legate"].iter().zip(&figures) {
        assert_eq!(*listener, 1, "{who}: one connection refused on the listener");
        assert!(*admin >= 1, "{who}: the admin connection refused");
    }
}

/// A `Runtime` resource for every proxy: the RTDS layer `name`'s abort share.
fn runtime_doc(name: &str, percent: u32) -> String {
    format!(
        "kind: Runtime\nmetadata: {{ name: {name} }}\nspec:\n  name: {name}\n  layer:\n    \
         fault: {{ http: {{ abort: {{ abort_percent: {percent} }} }} }}\n    feature: {{ on: true }}\n"
    )
}

/// Envoy 1.40 and `legate proxy` on one control plane, each with a static
/// layer aborting every request and an RTDS layer above it: what an apply
/// of the `Runtime` resource says is what both serve and show. The
/// listeners come only after the RTDS layer's first resource (CDS and LDS
/// wait for it), so no request ever sees the static layer alone.
#[test]
fn rtds_layers_from_the_control_plane_as_in_envoy() {
    let dir = TempDir::new("runtime-rtds");
    let (_up, upstream) = echo("up", dir.path());
    let cp = ControlPlane::start(dir.path());
    cp.apply(dir.path(), &runtime_doc("rt", 0));
    let fault = "http_filters: [".to_string() + FAULT;
    let mut sides = Vec::new();
    for (bin, node, delta) in
        [(Bin::Envoy, "envoy-rt", false), (Bin::Legate, "legate-rt", false), (Bin::Legate, "legate-rt-delta", true)]
    {
        let listen = free_port();
        let docs = harness::xds::web_resources(listen, upstream, &[node], node).replace("http_filters: [", &fault);
        cp.apply(dir.path(), &docs);
        let admin = free_port();
        let server = format!("http://127.0.0.1:{}", cp.api);
        let flags: &[&str] = if delta { &["--delta"] } else { &[] };
        let boot = harness::control::ctl_bootstrap(&server, node, cp.xds, admin, flags)
            + "layered_runtime:\n  layers:\n  - name: base\n    static_layer: { fault.http.abort.abort_percent: 100 }\n  \
               - name: rtds\n    rtds_layer: { name: rt, rtds_config: { ads: {}, resource_api_version: V3 } }\n";
        let proxy = harness::control::start_on(bin, &boot, node, admin, dir.path());
        // From its first answer on, the RTDS layer's 0 holds.
        let first =
            wait_for(&format!("{node}: traffic"), Duration::from_secs(20), || http_get(addr(listen), "/", "app").ok());
        assert_eq!(first.status, 200, "{node}: the first request sees the RTDS layer");
        sides.push((node, proxy, listen));
    }
    let shown: Vec<_> = sides.iter().map(|(_, p, _)| admin_json(p.admin, "/runtime")).collect();
    eprintln!("/runtime: {}", shown[0]);
    assert_eq!(shown[0]["layers"], serde_json::json!(["base", "rtds"]), "Envoy's layer order");
    assert_eq!(shown[0]["entries"]["fault.http.abort.abort_percent"]["final_value"], "0");
    for s in &shown[1..] {
        assert_eq!(*s, shown[0], "/runtime as Envoy shows it");
    }

    // An apply changes the layer: every request aborted, on every proxy.
    cp.apply(dir.path(), &runtime_doc("rt", 100));
    for (node, _, listen) in &sides {
        wait_for(&format!("{node}: the new RTDS layer"), Duration::from_secs(10), || {
            (http_get(addr(*listen), "/", "app").ok()?.status == 503).then_some(())
        });
    }
    let shown: Vec<_> = sides.iter().map(|(_, p, _)| admin_json(p.admin, "/runtime")).collect();
    for s in &shown[1..] {
        assert_eq!(*s, shown[0], "/runtime after the apply");
    }
    assert_eq!(
        shown[0]["entries"]["fault.http.abort.abort_percent"]["layer_values"],
        serde_json::json!(["100", "100"])
    );
    let stats: Vec<_> = sides
        .iter()
        .map(|(_, p, _)| {
            ["runtime.update_success", "runtime.update_rejected", "runtime.num_layers"].map(|n| (n, stat(p.admin, n)))
        })
        .collect();
    eprintln!("RTDS stats: {stats:?}");
    assert_eq!(stats[1], stats[0], "runtime stats as Envoy counts them");
    // A layer whose resource does not exist yet: the proxies start after
    // its initial fetch timeout, on the layers below, and take the
    // resource when an apply brings it.
    let mut late = Vec::new();
    for (bin, node) in [(Bin::Envoy, "envoy-late"), (Bin::Legate, "legate-late")] {
        let listen = free_port();
        let docs = harness::xds::web_resources(listen, upstream, &[node], node).replace("http_filters: [", &fault);
        cp.apply(dir.path(), &docs);
        let admin = free_port();
        let server = format!("http://127.0.0.1:{}", cp.api);
        let boot = harness::control::ctl_bootstrap(&server, node, cp.xds, admin, &[])
            + "layered_runtime:\n  layers:\n  - name: base\n    static_layer: { fault.http.abort.abort_percent: 100 }\n  \
               - name: later\n    rtds_layer: { name: rt-late, rtds_config: { ads: {}, initial_fetch_timeout: 1s } }\n";
        let proxy = harness::control::start_on(bin, &boot, node, admin, dir.path());
        let first =
            wait_for(&format!("{node}: traffic"), Duration::from_secs(20), || http_get(addr(listen), "/", "app").ok());
        assert_eq!(first.status, 503, "{node}: the static layer alone");
        late.push((node, proxy, listen));
    }
    cp.apply(dir.path(), &runtime_doc("rt-late", 0));
    for (node, _, listen) in &late {
        wait_for(&format!("{node}: the late RTDS layer"), Duration::from_secs(10), || {
            (http_get(addr(*listen), "/", "app").ok()?.status == 200).then_some(())
        });
    }
    let shown: Vec<_> = late.iter().map(|(_, p, _)| admin_json(p.admin, "/runtime")).collect();
    assert_eq!(shown[1], shown[0], "/runtime with the late layer");
    let stats: Vec<_> = late
        .iter()
        .map(|(_, p, _)| ["runtime.init_fetch_timeout", "runtime.update_success"].map(|n| (n, stat(p.admin, n))))
        .collect();
    eprintln!("late RTDS stats: {stats:?}");
    assert_eq!(stats[1], stats[0], "runtime stats as Envoy counts them");

    // Every proxy ACKed the Runtime resource (CSDS).
    for (node, _, _) in &sides {
        wait_for(&format!("{node}: Runtime ACKed"), Duration::from_secs(10), || {
            csds(cp.xds, node)
                .into_iter()
                .find(|(ty, name, status)| ty.ends_with("Runtime") && name == "rt" && *status == 3)
        });
    }
}
