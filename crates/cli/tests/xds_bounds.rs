//! A hostile xDS client cannot exhaust the control plane's memory: garbage
//! gRPC frames, a request of 100,000 resource names, one over the message
//! size, a delta stream subscribing name after name, many streams on one
//! connection, and hundreds of streams holding as many names as they may
//! and never ACKing — each refused with a gRPC status naming its bound,
//! while the control plane's RSS (read from /proc) stays under a stated
//! figure and it goes on serving a well-behaved stream.

mod harness;

use harness::*;
use legate_api::pb::envoy::config::core::v3::Node;
use legate_api::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DeltaDiscoveryRequest, DiscoveryRequest,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/// The control plane's RSS must stay under this through every flood.
const RSS_BOUND_MIB: u64 = 256;
/// `--xds-max-connections-per-address` for this test.
const PER_ADDRESS: usize = 20;

fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
    kib.unwrap_or(0) / 1024
}

async fn channel(port: u16) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("uri")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connect")
}

fn node(id: &str) -> Option<Node> {
    Some(Node { id: id.into(), cluster: "flood".into(), ..Default::default() })
}

fn names(n: usize, len: usize, tag: &str) -> Vec<String> {
    (0..n).map(|i| format!("{tag}-{i:0>width$}", width = len.saturating_sub(tag.len() + 1))).collect()
}

/// Opens a SotW stream sending `reqs` and never ACKing: the first status it
/// ends with, or None while it stays open (after `wait`).
async fn sotw_status(ch: Channel, reqs: Vec<DiscoveryRequest>, wait: Duration) -> Option<tonic::Status> {
    let mut client = AggregatedDiscoveryServiceClient::new(ch).max_decoding_message_size(64 << 20);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    for r in reqs {
        let _ = tx.try_send(r);
    }
    let call = client.stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx));
    let outcome = tokio::time::timeout(wait, async {
        let mut stream = match call.await {
            Ok(s) => s.into_inner(),
            Err(status) => return Some(status),
        };
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    })
    .await;
    drop(tx);
    outcome.ok().flatten()
}

fn exhausted(status: &Option<tonic::Status>, bound: &str, what: &str) {
    refused_with(status, tonic::Code::ResourceExhausted, bound, what);
}

fn refused_with(status: &Option<tonic::Status>, code: tonic::Code, bound: &str, what: &str) {
    let s = status.as_ref().unwrap_or_else(|| panic!("{what}: the stream was not refused"));
    assert_eq!(s.code(), code, "{what}: {s:?}");
    assert!(s.message().contains(bound), "{what}: the status must name the bound '{bound}': {}", s.message());
    println!("{what}: {:?}: {}", s.code(), s.message());
}

/// Garbage on the connection and in gRPC frames: refused, nothing kept.
async fn garbage(port: u16) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    raw.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\xff\xff\xff\xff\xff\xff garbage")
        .await
        .expect("write");
    let mut buf = vec![0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match raw.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert_eq!(closed, Ok(true), "a connection of garbage frames must be closed");

    // A gRPC message announcing 2 GiB, and one that is not a protobuf.
    for (what, body) in [
        ("a 2 GiB length prefix", vec![0, 0x7f, 0xff, 0xff, 0xff, 1, 2, 3]),
        ("bytes that are not a DiscoveryRequest", vec![0, 0, 0, 0, 6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
    ] {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
        let (mut h2, conn) = h2::client::handshake(tcp).await.expect("h2");
        tokio::spawn(conn);
        let req = http::Request::post(format!(
            "http://127.0.0.1:{port}/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
        let (resp, mut send) = h2.send_request(req, false).expect("send");
        send.send_data(body.into(), true).expect("data");
        let resp = tokio::time::timeout(Duration::from_secs(5), resp).await.expect("an answer").expect("response");
        let mut body = resp.into_body();
        let status = tokio::time::timeout(Duration::from_secs(5), async {
            while body.data().await.is_some() {}
            body.trailers().await.ok().flatten()
        })
        .await
        .expect("trailers");
        let code = status.as_ref().and_then(|t| t.get("grpc-status")).and_then(|v| v.to_str().ok()).map(String::from);
        assert!(code.as_deref().is_some_and(|c| c != "0"), "{what}: expected a gRPC error, got {status:?}");
        println!("garbage gRPC frame ({what}): grpc-status {}", code.unwrap_or_default());
    }
}

/// 30 connections at once from one address: those over the bound are
/// closed as they are accepted; the others wait for HTTP/2.
async fn connections(port: u16) {
    use tokio::io::AsyncReadExt;
    let mut conns = Vec::new();
    for _ in 0..30 {
        conns.push(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect"));
    }
    let mut closed = 0;
    for c in &mut conns {
        let mut b = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(Duration::from_millis(500), c.read(&mut b)).await {
            closed += 1;
        }
    }
    println!("30 connections from one address (bound {PER_ADDRESS}): {closed} closed at accept");
    assert_eq!(closed, 30 - PER_ADDRESS, "connections over the per-address bound");
}

/// One request of 100,000 names, one over 4 MiB, and a delta stream
/// subscribing 2,000 names at a time: each refused.
async fn request_floods(port: u16) {
    let ch = channel(port).await;
    let flood = DiscoveryRequest {
        node: node("names-100k"),
        type_url: EDS.into(),
        resource_names: names(100_000, 8, "n"),
        ..Default::default()
    };
    let status = sotw_status(ch.clone(), vec![flood], Duration::from_secs(20)).await;
    exhausted(&status, "at most 10000", "100,000 names in one request");
    let big = DiscoveryRequest {
        node: node("names-5mib"),
        type_url: EDS.into(),
        resource_names: names(200_000, 24, "n"),
        ..Default::default()
    };
    let status = sotw_status(ch.clone(), vec![big], Duration::from_secs(20)).await;
    refused_with(&status, tonic::Code::OutOfRange, "the limit is: 4194304 bytes", "a 5 MiB request");

    let mut client = AggregatedDiscoveryServiceClient::new(ch);
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let mut stream = client
        .delta_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("delta stream")
        .into_inner();
    let (mut sent, mut refused) = (0, None);
    for chunk in 0..20 {
        let req = DeltaDiscoveryRequest {
            node: if chunk == 0 { node("delta-flood") } else { None },
            type_url: EDS.into(),
            resource_names_subscribe: names(2_000, 12, &format!("d{chunk}")),
            ..Default::default()
        };
        if tx.send(req).await.is_err() {
            break;
        }
        sent += 2_000;
        match tokio::time::timeout(Duration::from_secs(5), stream.message()).await {
            Ok(Err(status)) => {
                refused = Some(status);
                break;
            }
            Ok(Ok(Some(_))) | Err(_) => {}
            Ok(Ok(None)) => break,
        }
    }
    exhausted(&refused, "at most 10000", &format!("delta subscriptions ({sent} names sent)"));
}

/// 300 streams over 3 connections, each holding 9,000 names of 40 bytes and
/// a wildcard CDS subscription, never ACKing: the server-wide budget holds
/// some and refuses the rest.
async fn held_streams(port: u16) {
    let mut tasks = Vec::new();
    for c in 0..3 {
        let ch = channel(port).await;
        for s in 0..100 {
            let req = DiscoveryRequest {
                node: node(&format!("hold-{c}-{s}")),
                type_url: EDS.into(),
                resource_names: names(9_000, 40, &format!("h{c}-{s}")),
                ..Default::default()
            };
            let wildcard = DiscoveryRequest { type_url: CDS.into(), ..Default::default() };
            tasks.push(tokio::spawn(sotw_status(ch.clone(), vec![req, wildcard], Duration::from_secs(20))));
        }
    }
    let (mut held, mut refused) = (0, Vec::new());
    for t in tasks {
        match t.await.expect("task") {
            None => held += 1,
            Some(s) => refused.push(s),
        }
    }
    println!("300 streams of 9,000 names each: {held} held (never ACKing), {} refused", refused.len());
    assert!(held > 0 && !refused.is_empty(), "the budget must hold some and refuse the rest");
    exhausted(&refused.first().cloned(), "bytes of subscribed resource names", "the server-wide name budget");
}

/// 300 streams started on one connection: how many the control plane
/// counts open at once.
fn streams_on_one_connection(rt: &tokio::runtime::Runtime, cp: &ControlPlane) -> usize {
    rt.block_on(async {
        let ch = channel(cp.xds).await;
        for s in 0..300 {
            let req =
                DiscoveryRequest { node: node(&format!("one-conn-{s}")), type_url: CDS.into(), ..Default::default() };
            tokio::spawn(sotw_status(ch.clone(), vec![req], Duration::from_secs(20)));
        }
    });
    let count = || cp.proxy_ids().iter().filter(|id| id.starts_with("one-conn-")).count();
    let open = wait_for("streams on one connection", Duration::from_secs(15), || {
        let n = count();
        (n >= 100).then_some(n)
    });
    std::thread::sleep(Duration::from_secs(1));
    open.max(count())
}

/// A well-behaved stream: how many clusters its first response carries.
async fn clusters_served(port: u16) -> Option<usize> {
    let mut client = AggregatedDiscoveryServiceClient::new(channel(port).await);
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(DiscoveryRequest { node: node("after"), type_url: CDS.into(), ..Default::default() }).await.ok()?;
    let mut s =
        client.stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx)).await.ok()?.into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), s.message()).await.ok()?.ok()??;
    Some(first.resources.len())
}

/// Samples `pid`'s RSS every 50 ms until `stop`: the highest seen.
fn sample_rss(pid: u32, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let (start, mut peak) = (Instant::now(), 0);
        while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(300) {
            peak = peak.max(rss_mib(pid));
            std::thread::sleep(Duration::from_millis(50));
        }
        peak
    })
}

#[test]
fn a_hostile_xds_client_cannot_exhaust_the_control_plane() {
    let tmp = TempDir::new("xds-bounds");
    let dir = tmp.path();
    let limit = PER_ADDRESS.to_string();
    let cp = ControlPlane::start_with(
        dir,
        free_port(),
        free_port(),
        dir.join("cp-data"),
        &["--xds-max-connections-per-address", &limit],
    );
    let clusters: Vec<String> = (0..10)
        .map(|c| format!("kind: Cluster\nmetadata: {{ name: c{c} }}\nspec: {{ name: c{c}, connect_timeout: 1s, type: EDS, eds_cluster_config: {{ eds_config: {{ ads: {{}} }} }} }}\n"))
        .collect();
    // EDS clusters with no endpoints anywhere: forced.
    cp.apply_forced(dir, &clusters.join("---\n"));
    let baseline = rss_mib(cp.proc_.pid());
    println!("control plane RSS at start: {baseline} MiB");
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_rss(cp.proc_.pid(), stop.clone());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");

    rt.block_on(async {
        connections(cp.xds).await;
        garbage(cp.xds).await;
        request_floods(cp.xds).await;
        held_streams(cp.xds).await;
    });
    let open = streams_on_one_connection(&rt, &cp);
    println!("300 streams started on one connection: {open} open at once");
    assert_eq!(open, 100, "streams open at once on one connection");

    stop.store(true, Ordering::Relaxed);
    let peak = sampler.join().expect("sampler").max(baseline);
    println!(
        "control plane RSS: {baseline} MiB at start, {peak} MiB at the peak of the floods (bound {RSS_BOUND_MIB} MiB)"
    );
    assert!(peak < RSS_BOUND_MIB, "RSS reached {peak} MiB");

    let served = rt.block_on(clusters_served(cp.xds));
    assert_eq!(served, Some(10), "a well-behaved stream after the floods gets the 10 clusters");
    println!("after the floods: a new stream got its 10 clusters");
}
