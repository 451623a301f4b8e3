//! Fields that real-world configs use most and Legate learnt for them (see
//! `breadth.rs`), each run through Envoy 1.40 and Legate side by side.

mod harness;

use harness::*;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// The lines of the log at `path` that contain `marker`, once there are `n`
/// of them (polled for up to 10 s; what is there then, however many).
fn marked_lines(path: &Path, marker: &str, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().filter(|l| l.contains(marker)).map(str::to_string).collect();
        if lines.len() >= n || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A default-format line without what differs from run to run: the start
/// time and the duration.
fn without_times(line: &str) -> String {
    let rest = line.split_once("] ").map(|(_, r)| r).unwrap_or(line);
    // `"GET /p HTTP/1.1" 200 - 0 5 0 - "..."`: the duration is the fifth
    // token after the request line.
    let Some((request, after)) = rest.split_once("\" ") else { return rest.to_string() };
    let mut tokens: Vec<&str> = after.splitn(6, ' ').collect();
    if tokens.len() == 6 {
        tokens[4] = "<ms>";
    }
    format!("{request}\" {}", tokens.join(" "))
}

#[test]
fn admin_access_log_path_and_access_log() {
    let dir = TempDir::new("compat-admin-log");
    let d = dir.path();
    let custom = "%REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE% %BYTES_SENT% %PROTOCOL% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %RESPONSE_CODE_DETAILS% %ROUTE_NAME% %UPSTREAM_CLUSTER% %REQ(X-FORWARDED-FOR)%\\n";
    let [e, l] = both(d, &[], &[], |who, admin, _| {
        format!(
            "admin:\n  access_log_path: {dir}/{who}-admin.log\n  access_log:\n  - name: envoy.access_loggers.file\n    typed_config:\n      \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n      path: {dir}/{who}-admin-custom.log\n      log_format: {{text_format: \"{custom}\"}}\n  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}\n",
            dir = d.display()
        )
    });
    for side in [&e, &l] {
        let addr: SocketAddr = ([127, 0, 0, 1], side.admin).into();
        let ready = http_request(
            addr,
            "GET",
            "/ready?probe=1",
            "admin.test",
            &[("user-agent", "compat/1"), ("x-request-id", "rid-1")],
            "",
        )
        .expect("GET /ready");
        assert_eq!(ready.status, 200, "{}: {ready:?}", side.who);
        let refused = http_request(
            addr,
            "GET",
            "/healthcheck/fail?probe=2",
            "admin.test",
            &[("user-agent", "compat/2"), ("x-forwarded-for", "10.0.0.1")],
            "",
        )
        .expect("GET /healthcheck/fail");
        assert_eq!(refused.status, 405, "{}: {refused:?}", side.who);
    }
    let default_lines = |who: &str| -> Vec<String> {
        marked_lines(&d.join(format!("{who}-admin.log")), "probe=", 2).iter().map(|l| without_times(l)).collect()
    };
    let (a, b) = (default_lines("envoy"), default_lines("legate"));
    assert_eq!(a.len(), 2, "Envoy's admin log: {a:?}");
    assert_eq!(a, b, "admin access_log_path: Envoy (left) and Legate (right) differ");
    let (a, b) = (
        marked_lines(&d.join("envoy-admin-custom.log"), "probe=", 2),
        marked_lines(&d.join("legate-admin-custom.log"), "probe=", 2),
    );
    assert_eq!(a.len(), 2, "Envoy's custom admin log: {a:?}");
    assert_eq!(a, b, "admin access_log: Envoy (left) and Legate (right) differ");
}
