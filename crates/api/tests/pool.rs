//! The descriptor pool is dropped when idle and decoded again on the next use.
//! One test in its own binary: nothing else uses the pool meanwhile.

use legate_api::pool::{is_kept, message_in, pool, release_if_idle};
use std::time::Duration;

fn errors(text: &str) -> Vec<String> {
    legate_api::load::check_bootstrap(text).errors.iter().map(ToString::to_string).collect()
}

#[test]
fn pool_is_dropped_when_idle_and_decoded_again() {
    assert!(!is_kept(), "nothing decoded yet");
    let first = pool();
    assert!(first.get_message_by_name("envoy.config.bootstrap.v3.Bootstrap").is_some());
    assert!(is_kept());
    // Used just now: not idle for an hour, so kept.
    assert!(!release_if_idle(Duration::from_secs(3600)));
    assert!(is_kept());
    assert!(release_if_idle(Duration::ZERO));
    assert!(!is_kept());
    // What was read through the dropped pool still works.
    assert!(first.get_message_by_name("envoy.config.cluster.v3.Cluster").is_some());
    let again = pool();
    assert!(is_kept());
    assert!(message_in(&again, "type.googleapis.com/envoy.config.cluster.v3.Cluster").is_some());
    assert_eq!(first.files().count(), again.files().count());
    assert_eq!(first.all_messages().count(), again.all_messages().count());

    // A config is judged the same by a pool decoded again.
    let bad = "static_resources:\n  clusters:\n  - name: c\n    connect_timeout: -1s\n    typed_extension_protocol_options:\n      x:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        common_http_protocol_options: { max_headers_count: 0 }\n";
    let before = errors(bad);
    assert!(release_if_idle(Duration::ZERO));
    let after = errors(bad);
    assert!(before.iter().any(|e| e.contains("connect_timeout")), "{before:?}");
    assert!(before.iter().any(|e| e.contains("max_headers_count")), "{before:?}");
    assert_eq!(before, after);
}
