//! What Envoy 1.40 and `legate proxy` send on their own, compared: the
//! metrics service sink's `StreamMetrics` messages and the load reports
//! (LRS), both to one collector of the test's, after the same requests
//! through the same bootstrap.

mod harness;

use harness::config::{bootstrap, cluster, hcm, listener};
use harness::metrics_receiver::Receiver;
use harness::*;
use legate_api::pb::envoy::config::core::v3::{address, socket_address};
use legate_api::pb::envoy::service::load_stats::v3::{LoadStatsRequest, LoadStatsResponse};
use legate_api::pb::envoy::service::metrics::v3::StreamMetricsMessage;
use legate_api::pb::io::prometheus::client::{MetricFamily, MetricType};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const H2: &str = ", typed_extension_protocol_options: {envoy.extensions.upstreams.http.v3.HttpProtocolOptions: {\"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, explicit_http_config: {http2_protocol_options: {}}}}";

/// Requests per endpoint: successes and upstream 503s. They go in pairs,
/// so that round robin over the two endpoints gives each one of every pair
/// whichever endpoint it starts with.
const OK_PAIRS: u64 = 10;
const ERR_PAIRS: u64 = 3;
const TOTAL: u64 = 2 * (OK_PAIRS + ERR_PAIRS);

/// The bootstrap both proxies run: node `who`, stats flushed every second
/// to the collector, load reports to it, and `echo` over two localities.
fn config(who: &str, admin: u16, listen: u16, ups: [u16; 2], collector: u16) -> String {
    config_with(who, admin, listen, ups, collector, "")
}

/// The same with `sink` fields added to the `MetricsServiceConfig`.
fn config_with(who: &str, admin: u16, listen: u16, ups: [u16; 2], collector: u16, sink: &str) -> String {
    let locality = |zone: &str, port: u16| {
        format!("{{locality: {{region: r1, zone: {zone}}}, lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}")
    };
    let echo = format!(
        "{{name: echo, connect_timeout: 1s, type: STATIC, load_assignment: {{cluster_name: echo, endpoints: [{}, {}]}}}}",
        locality("za", ups[0]),
        locality("zb", ups[1])
    );
    let sinks = format!("stats_flush_interval: 1s\nstats_sinks: [{{name: envoy.stat_sinks.metrics_service, typed_config: {{\"@type\": type.googleapis.com/envoy.config.metrics.v3.MetricsServiceConfig, transport_api_version: V3{sink}, grpc_service: {{envoy_grpc: {{cluster_name: collector}}}}}}}}]\ncluster_manager: {{load_stats_config: {{api_type: GRPC, transport_api_version: V3, grpc_services: [{{envoy_grpc: {{cluster_name: collector}}}}]}}}}\n");
    format!(
        "node: {{id: {who}, cluster: sinks-test}}\n{sinks}{}",
        bootstrap(
            admin,
            &[listener("in", listen, &format!("{{filters: [{}]}}", hcm("ingress", "echo")))],
            &[echo, cluster("collector", collector, H2)],
        )
    )
}

/// The families of one message by (name, type).
fn families(m: &StreamMetricsMessage) -> BTreeMap<(String, i32), &MetricFamily> {
    m.envoy_metrics.iter().map(|f| ((f.name.clone().unwrap_or_default(), f.r#type.unwrap_or(-1)), f)).collect()
}

fn counter(m: &StreamMetricsMessage, name: &str) -> Option<f64> {
    families(m).get(&(name.to_string(), MetricType::Counter as i32))?.metric.first()?.counter.as_ref()?.value
}

/// Over every message: the histogram's samples, its count at the last
/// bound, and its bounds.
fn histogram_totals(msgs: &[(usize, StreamMetricsMessage)], name: &str) -> (u64, u64, Vec<f64>) {
    let (mut count, mut last, mut bounds) = (0, 0, Vec::new());
    for (_, m) in msgs {
        let fams = families(m);
        let Some(h) = fams
            .get(&(name.to_string(), MetricType::Histogram as i32))
            .and_then(|f| f.metric.first())
            .and_then(|m| m.histogram.as_ref())
        else {
            continue;
        };
        count += h.sample_count.unwrap_or(0);
        last += h.bucket.last().and_then(|b| b.cumulative_count).unwrap_or(0);
        bounds = h.bucket.iter().filter_map(|b| b.upper_bound).collect();
    }
    (count, last, bounds)
}

/// Load reported for `echo` per (zone, endpoint port): successes, errors,
/// issued, summed over `reports`; and what the last one has in progress.
type Loads = BTreeMap<(String, u32), [u64; 3]>;
fn echo_loads(reports: &[LoadStatsRequest]) -> (Loads, u64) {
    let mut out = Loads::new();
    let mut in_progress = 0;
    for r in reports {
        in_progress = 0;
        for c in r.cluster_stats.iter().filter(|c| c.cluster_name == "echo") {
            for l in &c.upstream_locality_stats {
                let zone = l.locality.as_ref().map(|l| l.zone.clone()).unwrap_or_default();
                in_progress += l.total_requests_in_progress;
                for e in &l.upstream_endpoint_stats {
                    let Some(address::Address::SocketAddress(sa)) = e.address.as_ref().and_then(|a| a.address.as_ref())
                    else {
                        panic!("endpoint stats without a socket address: {e:?}");
                    };
                    let Some(socket_address::PortSpecifier::PortValue(port)) = sa.port_specifier else {
                        panic!("endpoint stats without a port: {sa:?}");
                    };
                    let slot = out.entry((zone.clone(), port)).or_default();
                    slot[0] += e.total_successful_requests;
                    slot[1] += e.total_error_requests;
                    slot[2] += e.total_issued_requests;
                }
            }
        }
    }
    (out, in_progress)
}

fn reports_echo(r: &LoadStatsRequest) -> bool {
    r.cluster_stats.iter().any(|c| c.cluster_name == "echo")
}

/// The collector's answer to a load-report stream: `echo` every second, by endpoint.
fn answer() -> LoadStatsResponse {
    LoadStatsResponse {
        clusters: vec!["echo".into()],
        load_reporting_interval: Some(legate_api::pb::google::protobuf::Duration { seconds: 1, nanos: 0 }),
        report_endpoint_granularity: true,
        ..Default::default()
    }
}

#[test]
fn metrics_service_and_load_reports_match_envoy() {
    let collector = Receiver::start(answer());
    let dir = TempDir::new("diff-sinks");
    let (ea, a) = echo("a", dir.path());
    let (eb, b) = echo("b", dir.path());
    let sides = both(dir.path(), &[], &["listen"], |who, admin, ports| {
        config(who, admin, ports["listen"], [a, b], collector.port)
    });

    // Traffic starts once each proxy reports `echo` (it has the server's
    // answer): what follows is counted in full.
    let mut baseline = BTreeMap::new();
    for s in &sides {
        let n = wait_for(&format!("{}'s first load report", s.who), Duration::from_secs(20), || {
            let r = collector.loads_of(s.who);
            r.iter().position(reports_echo).map(|_| r.len())
        });
        baseline.insert(s.who, n);
    }
    for s in &sides {
        for (path, status, pairs) in [("/ok", 200, OK_PAIRS), ("/status/503", 503, ERR_PAIRS)] {
            for _ in 0..2 * pairs {
                let r = http_get(addr(s.port("listen")), path, "app").expect("request");
                assert_eq!(r.status, status, "{} {path}", s.who);
            }
        }
    }

    // Metrics: until the cumulative request count and every histogram
    // sample have arrived.
    let mut metrics = BTreeMap::new();
    for s in &sides {
        let msgs = wait_for(&format!("{}'s metrics", s.who), Duration::from_secs(20), || {
            let msgs = collector.metrics_of(s.who);
            let last = msgs.last().map(|(_, m)| m)?;
            let done = counter(last, "cluster.echo.upstream_rq_total") == Some(TOTAL as f64)
                && histogram_totals(&msgs, "cluster.echo.upstream_rq_time").0 == TOTAL;
            done.then_some(msgs)
        });
        metrics.insert(s.who, msgs);
    }
    let (e, l) = (&metrics["envoy"], &metrics["legate"]);
    for (who, msgs) in [("envoy", e), ("legate", l)] {
        let node =
            msgs[0].1.identifier.as_ref().and_then(|i| i.node.as_ref()).expect("identifier on the first message");
        assert_eq!((node.id.as_str(), node.cluster.as_str()), (who, "sinks-test"));
        assert!(msgs.iter().skip(1).filter(|(s, _)| *s == msgs[0].0).all(|(_, m)| m.identifier.is_none()), "{who}");
        assert!(
            msgs.iter().all(|(_, m)| m
                .envoy_metrics
                .iter()
                .all(|f| f.metric.len() == 1 && f.metric[0].timestamp_ms.is_some())),
            "{who}: one metric with a timestamp per family"
        );
    }
    let (el, ll) = (families(&e[e.len() - 1].1), families(&l[l.len() - 1].1));
    let ours = |k: &(String, i32)| k.0.starts_with("cluster.echo.") || k.0.starts_with("http.ingress.");
    let names = |f: &BTreeMap<(String, i32), &MetricFamily>| f.keys().map(|k| k.0.clone()).collect::<BTreeSet<_>>();
    let shared: BTreeSet<String> = names(&el).intersection(&names(&ll)).cloned().collect();
    let types = |f: &BTreeMap<(String, i32), &MetricFamily>| {
        f.keys().filter(|k| ours(k) && shared.contains(&k.0)).cloned().collect::<BTreeSet<_>>()
    };
    assert_eq!(types(&el), types(&ll), "the same stats with the same types");
    // Only used stats: nothing of the cluster's or the connection manager's
    // that Envoy leaves out as never touched.
    let unused: Vec<_> = ll.keys().filter(|k| ours(k) && !el.contains_key(*k)).collect();
    assert!(unused.is_empty(), "legate sends what envoy does not: {unused:?}");
    let want = [
        ("cluster.echo.upstream_rq_total", TOTAL),
        ("cluster.echo.upstream_rq_completed", TOTAL),
        ("cluster.echo.upstream_rq_2xx", 2 * OK_PAIRS),
        ("cluster.echo.upstream_rq_5xx", 2 * ERR_PAIRS),
        ("cluster.echo.upstream_rq_503", 2 * ERR_PAIRS),
        ("http.ingress.downstream_rq_total", TOTAL),
        ("http.ingress.downstream_rq_5xx", 2 * ERR_PAIRS),
    ];
    for (name, n) in want {
        let (ev, lv) = (counter(&e[e.len() - 1].1, name), counter(&l[l.len() - 1].1, name));
        assert_eq!((ev, lv), (Some(n as f64), Some(n as f64)), "{name}: envoy, legate");
    }
    for name in ["cluster.echo.upstream_rq_time", "http.ingress.downstream_rq_time"] {
        let (et, lt) = (histogram_totals(e, name), histogram_totals(l, name));
        assert_eq!(et, lt, "{name}: samples, count at the last bound, bounds");
        assert_eq!(et.0, TOTAL, "{name}");
        for (who, last) in [("envoy", &el), ("legate", &ll)] {
            assert!(last.contains_key(&(name.to_string(), MetricType::Summary as i32)), "{who}: {name} summary");
        }
    }

    // Load reports: until every request is reported and none is in progress.
    let mut loads = BTreeMap::new();
    for s in &sides {
        let got = wait_for(&format!("{}'s load reports", s.who), Duration::from_secs(20), || {
            let all = collector.loads_of(s.who);
            let (loads, in_progress) = echo_loads(&all[baseline[s.who]..]);
            let issued: u64 = loads.values().map(|v| v[2]).sum();
            (issued == TOTAL && in_progress == 0).then_some((loads, all))
        });
        loads.insert(s.who, got);
    }
    let ((el, ereports), (ll, lreports)) = (&loads["envoy"], &loads["legate"]);
    assert_eq!(el, ll, "load per locality and endpoint: envoy, legate");
    let per_endpoint = [OK_PAIRS, ERR_PAIRS, OK_PAIRS + ERR_PAIRS];
    assert_eq!(el.get(&("za".to_string(), a as u32)), Some(&per_endpoint), "{el:?}");
    assert_eq!(el.get(&("zb".to_string(), b as u32)), Some(&per_endpoint), "{el:?}");
    for (who, reports) in [("envoy", ereports), ("legate", lreports)] {
        let node = reports[0].node.as_ref().expect("node");
        assert!(node.client_features.iter().any(|f| f == "envoy.lrs.supports_send_all_clusters"), "{who}");
        let c = reports.iter().rev().find(|r| reports_echo(r)).map(|r| &r.cluster_stats[0]);
        assert!(c.and_then(|c| c.load_report_interval.as_ref()).is_some(), "{who}: load_report_interval");
    }
    drop(sides);
    drop((ea, eb));
}

/// The collector goes away and comes back on the same port: both proxies
/// open their streams again, the node on the first message of each.
#[test]
fn streams_reopen_after_the_collector_returns() {
    let first = Receiver::start(answer());
    let port = first.port;
    let dir = TempDir::new("diff-sinks-reopen");
    let (ea, a) = echo("a", dir.path());
    let (eb, b) = echo("b", dir.path());
    let sides =
        both(dir.path(), &[], &["listen"], |who, admin, ports| config(who, admin, ports["listen"], [a, b], port));
    for s in &sides {
        wait_for(&format!("{}'s metrics", s.who), Duration::from_secs(20), || {
            (!first.metrics_of(s.who).is_empty()).then_some(())
        });
        wait_for(&format!("{}'s load reports", s.who), Duration::from_secs(20), || {
            (!first.loads_of(s.who).is_empty()).then_some(())
        });
    }
    drop(first);
    // A few flushes find no collector.
    std::thread::sleep(Duration::from_millis(2_500));
    let second = Receiver::start_on(port, answer());
    for s in &sides {
        // Envoy waits 5 s before it opens a load-report stream again; Legate's backoff is shorter.
        let msgs = wait_for(&format!("{}'s metrics again", s.who), Duration::from_secs(30), || {
            let m = second.metrics_of(s.who);
            (!m.is_empty()).then_some(m)
        });
        let node = msgs[0].1.identifier.as_ref().and_then(|i| i.node.as_ref());
        assert_eq!(node.map(|n| n.id.as_str()), Some(s.who), "the identifier on the new stream's first message");
        wait_for(&format!("{}'s load reports again", s.who), Duration::from_secs(30), || {
            (!second.loads_of(s.who).is_empty()).then_some(())
        });
    }
    drop(sides);
    drop((ea, eb));
}

/// Counters as deltas, histograms only as histograms: the deltas add up to
/// the same totals, and no summary is sent.
#[test]
fn counter_deltas_and_histogram_mode_match_envoy() {
    let collector = Receiver::start(answer());
    let dir = TempDir::new("diff-sinks-deltas");
    let (ea, a) = echo("a", dir.path());
    let (eb, b) = echo("b", dir.path());
    let sink = ", report_counters_as_deltas: true, histogram_emit_mode: HISTOGRAM";
    let sides = both(dir.path(), &[], &["listen"], |who, admin, ports| {
        config_with(who, admin, ports["listen"], [a, b], collector.port, sink)
    });
    for s in &sides {
        for (path, status, pairs) in [("/ok", 200, OK_PAIRS), ("/status/503", 503, ERR_PAIRS)] {
            for _ in 0..2 * pairs {
                let r = http_get(addr(s.port("listen")), path, "app").expect("request");
                assert_eq!(r.status, status, "{} {path}", s.who);
            }
        }
    }
    let sum = |msgs: &[(usize, StreamMetricsMessage)], name: &str| -> f64 {
        msgs.iter().filter_map(|(_, m)| counter(m, name)).sum()
    };
    for s in &sides {
        let msgs = wait_for(&format!("{}'s metrics", s.who), Duration::from_secs(20), || {
            let msgs = collector.metrics_of(s.who);
            let done = sum(&msgs, "cluster.echo.upstream_rq_total") == TOTAL as f64
                && histogram_totals(&msgs, "cluster.echo.upstream_rq_time").0 == TOTAL;
            done.then_some(msgs)
        });
        assert_eq!(sum(&msgs, "cluster.echo.upstream_rq_5xx"), (2 * ERR_PAIRS) as f64, "{}", s.who);
        assert_eq!(sum(&msgs, "http.ingress.downstream_rq_total"), TOTAL as f64, "{}", s.who);
        let summaries = msgs
            .iter()
            .flat_map(|(_, m)| m.envoy_metrics.iter())
            .filter(|f| f.r#type == Some(MetricType::Summary as i32))
            .count();
        assert_eq!(summaries, 0, "{}: histograms only", s.who);
    }
    drop(sides);
    drop((ea, eb));
}

/// Load counts from the server's first `LoadStatsResponse`, not from when
/// the stream opened: requests served while the collector holds its answer
/// are in no report, of Envoy's (its `startLoadReportPeriod` latches the
/// hosts' counters when the answer arrives) or Legate's; those after it are
/// reported exactly.
#[test]
fn load_counts_from_the_first_response_as_envoy() {
    const BEFORE: u64 = 6;
    const AFTER: u64 = 4;
    let collector = Receiver::start_held(answer());
    let dir = TempDir::new("diff-sinks-lrs-start");
    let (ea, a) = echo("a", dir.path());
    let (eb, b) = echo("b", dir.path());
    let sides = both(dir.path(), &[], &["listen"], |who, admin, ports| {
        config(who, admin, ports["listen"], [a, b], collector.port)
    });
    // Each stream is open (its first request, the node, arrived) and waits.
    for s in &sides {
        wait_for(&format!("{}'s load-report stream", s.who), Duration::from_secs(20), || {
            (!collector.loads_of(s.who).is_empty()).then_some(())
        });
    }
    let serve = |n: u64| {
        for s in &sides {
            for _ in 0..n {
                let r = http_get(addr(s.port("listen")), "/ok", "app").expect("request");
                assert_eq!(r.status, 200, "{}", s.who);
            }
        }
    };
    serve(BEFORE);
    collector.release();
    // The answer has arrived once a report names `echo`.
    for s in &sides {
        wait_for(&format!("{}'s first report of echo", s.who), Duration::from_secs(20), || {
            collector.loads_of(s.who).iter().any(reports_echo).then_some(())
        });
    }
    serve(AFTER);
    let mut issued = BTreeMap::new();
    for s in &sides {
        let got = wait_for(&format!("{}'s reports of the later requests", s.who), Duration::from_secs(20), || {
            let (loads, in_progress) = echo_loads(&collector.loads_of(s.who));
            let n: u64 = loads.values().map(|v| v[2]).sum();
            (n >= AFTER && in_progress == 0).then_some(n)
        });
        // Two more report intervals: nothing more arrives.
        std::thread::sleep(Duration::from_millis(2_500));
        let (loads, _) = echo_loads(&collector.loads_of(s.who));
        let n: u64 = loads.values().map(|v| v[2]).sum();
        assert_eq!(n, got, "{}", s.who);
        issued.insert(s.who, n);
    }
    eprintln!("issued requests reported: {issued:?} ({BEFORE} served before the answer, {AFTER} after)");
    assert_eq!(issued["envoy"], AFTER, "Envoy counts from the answer");
    assert_eq!(issued["legate"], AFTER, "Legate counts from the answer, as Envoy");
    drop(sides);
    drop((ea, eb));
}

/// `batch_size`: each flush goes as several messages of at most that many
/// metric families, the node only on the stream's first; all of them
/// together carry the same counts as without batching.
#[test]
fn batch_size_splits_a_flush_as_envoy() {
    const BATCH: usize = 7;
    let collector = Receiver::start(answer());
    let dir = TempDir::new("diff-sinks-batch");
    let (ea, a) = echo("a", dir.path());
    let (eb, b) = echo("b", dir.path());
    let sink = format!(", batch_size: {BATCH}");
    let sides = both(dir.path(), &[], &["listen"], |who, admin, ports| {
        config_with(who, admin, ports["listen"], [a, b], collector.port, &sink)
    });
    for s in &sides {
        for (path, status, pairs) in [("/ok", 200, OK_PAIRS), ("/status/503", 503, ERR_PAIRS)] {
            for _ in 0..2 * pairs {
                let r = http_get(addr(s.port("listen")), path, "app").expect("request");
                assert_eq!(r.status, status, "{} {path}", s.who);
            }
        }
    }
    // The latest value of a counter over every message (cumulative counters).
    let latest = |msgs: &[(usize, StreamMetricsMessage)], name: &str| -> Option<f64> {
        msgs.iter().rev().find_map(|(_, m)| counter(m, name))
    };
    for s in &sides {
        let msgs = wait_for(&format!("{}'s metrics", s.who), Duration::from_secs(20), || {
            let msgs = collector.metrics_of(s.who);
            let done = latest(&msgs, "cluster.echo.upstream_rq_total") == Some(TOTAL as f64)
                && latest(&msgs, "http.ingress.downstream_rq_5xx") == Some((2 * ERR_PAIRS) as f64);
            done.then_some(msgs)
        });
        let sizes: Vec<usize> = msgs.iter().map(|(_, m)| m.envoy_metrics.len()).collect();
        assert!(sizes.iter().all(|n| (1..=BATCH).contains(n)), "{}: message sizes {sizes:?}", s.who);
        assert!(msgs.len() > 3, "{}: a flush is several messages: {sizes:?}", s.who);
        assert!(msgs[0].1.identifier.is_some(), "{}: the node on the first message", s.who);
        let identified = msgs.iter().filter(|(_, m)| m.identifier.is_some()).count();
        assert_eq!(identified, 1, "{}: the node on the stream's first message only", s.who);
        assert_eq!(latest(&msgs, "cluster.echo.upstream_rq_5xx"), Some((2 * ERR_PAIRS) as f64), "{}", s.who);
        // Per flush (its metrics share the snapshot's timestamp): full
        // messages, then one with the rest.
        let mut flushes: Vec<(i64, Vec<usize>)> = Vec::new();
        for (_, m) in &msgs {
            let t = m.envoy_metrics.first().and_then(|f| f.metric.first()).and_then(|m| m.timestamp_ms).unwrap_or(0);
            match flushes.last_mut() {
                Some((last, sizes)) if *last == t => sizes.push(m.envoy_metrics.len()),
                _ => flushes.push((t, vec![m.envoy_metrics.len()])),
            }
        }
        for (t, sizes) in &flushes {
            let (last, full) = sizes.split_last().expect("a message");
            assert!(full.iter().all(|n| *n == BATCH) && *last <= BATCH, "{} flush at {t}: {sizes:?}", s.who);
        }
        eprintln!("{}: {} messages in {} flushes, e.g. {:?}", s.who, msgs.len(), flushes.len(), flushes[0].1);
    }
    drop(sides);
    drop((ea, eb));
}

/// A family's name, type and labels: what `emit_tags_as_labels` decides.
type Labelled = (String, i32, Vec<(String, String)>);

fn labelled(f: &MetricFamily) -> Labelled {
    let labels = f.metric.first().map_or_else(Vec::new, |m| {
        m.label.iter().map(|l| (l.name.clone().unwrap_or_default(), l.value.clone().unwrap_or_default())).collect()
    });
    (f.name.clone().unwrap_or_default(), f.r#type.unwrap_or(-1), labels)
}

/// `emit_tags_as_labels`: families named by Envoy's tag-extracted names with
/// the tags as labels in Envoy's order (`cluster.upstream_rq` with
/// `envoy.response_code=503, envoy.cluster_name=echo`); every family of the
/// cluster's and the connection manager's that both send has the same name,
/// type and labels, and the counters the same values.
#[test]
fn tags_as_labels_match_envoy() {
    let collector = Receiver::start(answer());
    let dir = TempDir::new("diff-sinks-labels");
    let (ea, a) = echo("a", dir.path());
    let (eb, b) = echo("b", dir.path());
    let sides = both(dir.path(), &[], &["listen"], |who, admin, ports| {
        config_with(who, admin, ports["listen"], [a, b], collector.port, ", emit_tags_as_labels: true")
    });
    for s in &sides {
        for (path, status, pairs) in [("/ok", 200, OK_PAIRS), ("/status/503", 503, ERR_PAIRS)] {
            for _ in 0..2 * pairs {
                let r = http_get(addr(s.port("listen")), path, "app").expect("request");
                assert_eq!(r.status, status, "{} {path}", s.who);
            }
        }
    }
    let echo_503 = || {
        let l = vec![
            ("envoy.response_code".to_string(), "503".to_string()),
            ("envoy.cluster_name".to_string(), "echo".to_string()),
        ];
        ("cluster.upstream_rq".to_string(), MetricType::Counter as i32, l)
    };
    let value = |m: &StreamMetricsMessage, key: &Labelled| -> Option<f64> {
        m.envoy_metrics.iter().find(|f| labelled(f) == *key)?.metric.first()?.counter.as_ref()?.value
    };
    let total = || {
        let l = vec![("envoy.cluster_name".to_string(), "echo".to_string())];
        ("cluster.upstream_rq_total".to_string(), MetricType::Counter as i32, l)
    };
    let mut last = BTreeMap::new();
    for s in &sides {
        let m = wait_for(&format!("{}'s metrics", s.who), Duration::from_secs(20), || {
            let msgs = collector.metrics_of(s.who);
            let (_, m) = msgs.last()?;
            (value(m, &total()) == Some(TOTAL as f64)).then(|| m.clone())
        });
        assert_eq!(value(&m, &echo_503()), Some((2 * ERR_PAIRS) as f64), "{}: {:?}", s.who, echo_503());
        last.insert(s.who, m);
    }
    let keyed = |m: &StreamMetricsMessage| -> BTreeMap<Labelled, Option<f64>> {
        m.envoy_metrics
            .iter()
            .filter(|f| {
                f.metric.first().is_some_and(|m| {
                    m.label.iter().any(|l| {
                        let (k, v) = (l.name.as_deref(), l.value.as_deref());
                        (k == Some("envoy.cluster_name") && v == Some("echo"))
                            || (k == Some("envoy.http_conn_manager_prefix") && v == Some("ingress"))
                    })
                })
            })
            .map(|f| (labelled(f), f.metric.first().and_then(|m| m.counter.as_ref()).and_then(|c| c.value)))
            .collect()
    };
    let (e, l) = (keyed(&last["envoy"]), keyed(&last["legate"]));
    let shared: Vec<&Labelled> = e.keys().filter(|k| l.contains_key(*k)).collect();
    eprintln!(
        "{} families of echo and ingress from both, e.g. {:?}",
        shared.len(),
        shared.iter().take(6).collect::<Vec<_>>()
    );
    assert!(shared.len() >= 8, "families both send: {shared:?}");
    let only_legate: Vec<&Labelled> = l.keys().filter(|k| !e.contains_key(*k)).collect();
    assert!(only_legate.is_empty(), "Legate's names or labels that Envoy does not send: {only_legate:?}");
    for k in &shared {
        if k.1 == MetricType::Counter as i32 {
            assert_eq!(e[*k], l[*k], "{k:?}: envoy, legate");
        }
    }
    drop(sides);
    drop((ea, eb));
}
