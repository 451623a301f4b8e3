//! The overload manager's global downstream connection limit
//! (`envoy.resource_monitors.global_downstream_max_connections`) beside
//! Envoy 1.40: at the limit a new connection is closed at once and counted
//! in `listener.<address>.downstream_global_cx_overflow`; a listener with
//! `ignore_global_conn_limit` neither counts nor is refused; a closed
//! connection gives its place back.

mod harness;

use harness::config::{hcm_answer, listener, listener_chains};
use harness::raw::{answered_keep_alive, closed_unanswered};
use harness::sides::{both, Side};
use harness::*;
use std::net::TcpStream;
use std::time::Duration;

const MAX: usize = 2;

fn config(admin: u16, main: u16, free: u16) -> String {
    let chain = format!("{{filters: [{}]}}", hcm_answer("ingress", "ok"));
    let listeners = [
        listener("main", main, &chain),
        listener_chains("free", free, std::slice::from_ref(&chain), ", ignore_global_conn_limit: true"),
    ];
    format!(
        "admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}\n\
         overload_manager:\n  refresh_interval: 0.25s\n  resource_monitors:\n  \
         - name: envoy.resource_monitors.global_downstream_max_connections\n    typed_config:\n      \
         \"@type\": type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig\n      \
         max_active_downstream_connections: {MAX}\n\
         static_resources:\n  listeners: [{}]\n",
        listeners.join(", ")
    )
}

fn overflow(side: &Side) -> u64 {
    side.stat(&format!("listener.127.0.0.1_{}.downstream_global_cx_overflow", side.port("main")))
}

#[test]
fn global_downstream_max_connections_closes_what_is_over_the_limit() {
    let dir = TempDir::new("overload-global-cx");
    let sides = both(dir.path(), &[], &["main", "free"], |_, admin, p| config(admin, p["main"], p["free"]));
    let mut figures = Vec::new();
    for side in &sides {
        let main = side.port("main");
        let held: Vec<TcpStream> = (0..MAX).filter_map(|_| answered_keep_alive(main)).collect();
        assert_eq!(held.len(), MAX, "{}: the first {MAX} connections are served", side.who);
        assert!(closed_unanswered(main), "{}: a connection over the limit is closed unanswered", side.who);
        // The ignoring listener is not limited, and does not take a place.
        let free = answered_keep_alive(side.port("free"));
        assert!(free.is_some(), "{}: ignore_global_conn_limit", side.who);
        assert!(closed_unanswered(main), "{}: still full with the free listener's connection open", side.who);
        drop(held);
        // Once the proxy has seen them close, their places are free again.
        let active = format!("listener.127.0.0.1_{main}.downstream_cx_active");
        wait_for(&format!("{}: the closed connections to go", side.who), Duration::from_secs(5), || {
            (side.stat(&active) == 0).then_some(())
        });
        let back = answered_keep_alive(main);
        assert!(back.is_some(), "{}: a closed connection gives its place back", side.who);
        figures.push(overflow(side));
        drop(back);
    }
    let (envoy, legate) = (figures[0], figures[1]);
    eprintln!("downstream_global_cx_overflow: Envoy {envoy}, Legate {legate}");
    assert_eq!(envoy, 2, "Envoy counted both refusals");
    assert_eq!(legate, envoy, "Legate counts as Envoy does");
}
