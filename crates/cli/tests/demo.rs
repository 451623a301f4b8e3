//! The README's first command: `legate demo` starts the control plane, sample
//! upstreams and a proxy configured over ADS, and they answer on the printed
//! addresses.

mod harness;

use harness::*;
use std::process::Command;
use std::time::Duration;

#[test]
fn demo_serves_what_it_prints() {
    let dir = TempDir::new("demo");
    let mut demo = Proc::spawn(
        "demo",
        Command::new(LEGATE).args(["demo", "--seconds", "60", "--data-dir"]).arg(dir.path().join("data")),
        dir.path(),
    );
    let hello =
        wait_http("the demo proxy", &mut demo, 10000, "/hello", "demo", Duration::from_secs(40), |r| r.status == 200);
    assert_eq!(hello.body, "hello from legate\n");
    let r = http_get(addr(10000), "/v2/x", "demo").expect("v2");
    assert_eq!(r.header("x-upstream"), Some("service-v2"));
    let upstreams: std::collections::BTreeSet<String> = (0..4)
        .filter_map(|_| http_get(addr(10000), "/anything", "demo").ok()?.header("x-upstream").map(str::to_owned))
        .collect();
    assert_eq!(upstreams.len(), 2, "round robin over service_v1: {upstreams:?}");
    let console = http_get(addr(9900), "/", "demo").expect("console");
    assert!(console.status == 200 && console.body.contains("Legate console"), "{}", console.body);
    let proxies = http_get(addr(9900), "/v1/proxies", "demo").expect("proxies");
    assert!(proxies.body.contains("demo-proxy"), "{}", proxies.body);
    // The demo prints once it has seen the proxy serve; give it that moment.
    let wanted = ["curl -s http://127.0.0.1:10000/hello", "legate ctl proxies", "Dashboard: http://127.0.0.1:9900/"];
    wait_for("the demo's instructions", Duration::from_secs(10), || {
        let out = demo.output();
        wanted.iter().all(|w| out.contains(w)).then_some(())
    });
}
