//! External processing (`envoy.filters.http.ext_proc`), Envoy 1.40 beside
//! `legate proxy`: the same bootstrap on both, each side with its own
//! external processor of the test's (a tonic `ExternalProcessor` server)
//! whose answers depend on the request's path. Compared for every request:
//! what the client got (status, headers, body), what the upstream got
//! (headers, body), every message the processor saw, and the `ext_proc`
//! stats of both proxies. Covered: header mutations (set, append, remove,
//! `:path`, and the ones the default rules refuse), whole request and
//! response bodies replaced (BUFFERED), an immediate response, a
//! `CONTINUE_AND_REPLACE` in the headers' answer, `mode_override`, a
//! spurious answer, the processor closing the stream, `clear_route_cache`
//! (with and without a header mutation), bodies replaced without a new
//! `content-length`, a request body STREAMED, `forward_rules`,
//! `mutation_rules`, per-route
//! `disabled` and `overrides.processing_mode`, a processor that is down
//! (with and without `failure_mode_allow`) and one slower than
//! `message_timeout` (with and without `failure_mode_allow`), and
//! `metadata_options` (namespaces forwarded and received, a route's
//! override; the access log's `%DYNAMIC_METADATA%` compared too); and on
//! the `modes` listener a request body BUFFERED_PARTIAL (within the buffer
//! limit, and past it in two pieces), a response body STREAMED (whole, and
//! in two chunks), trailers sent both ways (HTTP/2 with trailers to a gRPC
//! upstream), and `allowed_override_modes` (one override taken, one not).

mod harness;

use harness::grpc_server::{self, GrpcServer};

use harness::config::{bootstrap, cluster, hcm_vhost, listener};
use harness::*;
use legate_api::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use legate_api::pb::envoy::extensions::filters::http::ext_proc::v3::{processing_mode, ProcessingMode};
use legate_api::pb::envoy::r#type::v3::HttpStatus;
use legate_api::pb::envoy::service::ext_proc::v3::external_processor_server::{
    ExternalProcessor, ExternalProcessorServer,
};
use legate_api::pb::envoy::service::ext_proc::v3::processing_request::Request as Rq;
use legate_api::pb::envoy::service::ext_proc::v3::processing_response::Response as Rs;
use legate_api::pb::envoy::service::ext_proc::v3::{
    body_mutation, common_response::ResponseStatus, BodyMutation, BodyResponse, CommonResponse, HeaderMutation,
    HeadersResponse, ImmediateResponse, ProcessingRequest, ProcessingResponse, TrailersResponse,
};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const H2: &str = ", typed_extension_protocol_options: {envoy.extensions.upstreams.http.v3.HttpProtocolOptions: {\"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, explicit_http_config: {http2_protocol_options: {}}}}";

/// What one side's processor saw, in order: one line per message.
type Seen = Arc<Mutex<Vec<String>>>;

/// One side's processor, on a thread of the test until dropped.
struct Processor {
    server: GrpcServer,
    seen: Seen,
}

fn set(k: &str, v: &str, append: Option<bool>) -> HeaderValueOption {
    #[allow(deprecated)]
    HeaderValueOption {
        header: Some(HeaderValue { key: k.into(), raw_value: v.as_bytes().to_vec(), ..Default::default() }),
        append: append.map(|value| legate_api::pb::google::protobuf::BoolValue { value }),
        ..Default::default()
    }
}

/// A message as the test compares it: its kind, headers sorted (each
/// proxy's own ids and addresses masked), body, end of stream.
fn describe(r: &ProcessingRequest) -> String {
    let headers = |h: &Option<legate_api::pb::envoy::config::core::v3::HeaderMap>| {
        let mut v: Vec<(String, String)> = h
            .as_ref()
            .map(|m| {
                m.headers
                    .iter()
                    // A direct response reaches Legate's processor with the
                    // `server` header the connection manager already added
                    // (a known difference).
                    // Nor does Legate keep an HTTP/1 upstream's
                    // `transfer-encoding` in the headers it sends (another).
                    .filter(|h| h.key != "server" && h.key != "transfer-encoding")
                    .map(|h| {
                        let value = match h.key.as_str() {
                            "x-request-id" | "x-forwarded-for" | "date" | "x-envoy-upstream-service-time" => {
                                "(masked)".to_string()
                            }
                            _ => format!("{}{}", h.value, String::from_utf8_lossy(&h.raw_value)),
                        };
                        (h.key.clone(), value)
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    let what = match &r.request {
        Some(Rq::RequestHeaders(h)) => format!("request_headers eos={} {:?}", h.end_of_stream, headers(&h.headers)),
        Some(Rq::ResponseHeaders(h)) => {
            format!("response_headers eos={} {:?}", h.end_of_stream, headers(&h.headers))
        }
        Some(Rq::RequestBody(b)) => {
            format!("request_body eos={} {:?}", b.end_of_stream, String::from_utf8_lossy(&b.body))
        }
        Some(Rq::ResponseBody(b)) => {
            // The echo's answer names each side's own ports.
            format!("response_body eos={} len={}", b.end_of_stream, b.body.len())
        }
        Some(Rq::RequestTrailers(t)) => format!("request_trailers {:?}", headers(&t.trailers)),
        Some(Rq::ResponseTrailers(t)) => format!("response_trailers {:?}", headers(&t.trailers)),
        other => format!("other {other:?}"),
    };
    format!(
        "{what} metadata={:?} attributes={} observability={} protocol_config={:?}",
        r.metadata_context.as_ref().map(metadata_context),
        r.attributes.len(),
        r.observability_mode,
        r.protocol_config
    )
}

/// A `metadata_context` as the test compares it: each namespace (typed
/// ones by name) with its fields, sorted.
fn metadata_context(m: &legate_api::pb::envoy::config::core::v3::Metadata) -> Vec<String> {
    let mut out: Vec<String> = m
        .filter_metadata
        .iter()
        .map(|(ns, s)| {
            let fields: BTreeMap<&String, String> =
                s.fields.iter().map(|(k, v)| (k, format!("{:?}", v.kind))).collect();
            format!("{ns}={fields:?}")
        })
        .collect();
    out.extend(m.typed_filter_metadata.keys().map(|ns| format!("typed {ns}")));
    out.sort();
    out
}

/// The `dynamic_metadata` the processor sends for a `/meta` request: some
/// in a namespace the filter receives, some in one only a route receives.
fn meta_answer(r: &ProcessingRequest) -> Option<legate_api::pb::google::protobuf::Struct> {
    use legate_api::pb::google::protobuf::{value::Kind, Struct, Value as Pb};
    let s = |v: &str| Pb { kind: Some(Kind::StringValue(v.into())) };
    let ns = |fields: Vec<(&str, Pb)>| Pb {
        kind: Some(Kind::StructValue(Struct { fields: fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect() })),
    };
    let fields = match &r.request {
        Some(Rq::RequestHeaders(_)) => vec![
            ("recv", ns(vec![("k", s("v")), ("n", Pb { kind: Some(Kind::NumberValue(2.0)) })])),
            ("other", ns(vec![("x", s("early"))])),
        ],
        Some(Rq::ResponseHeaders(_)) => {
            vec![("recv", ns(vec![("resp", s("r"))])), ("other", ns(vec![("x", s("late"))])), ("flat", s("str"))]
        }
        _ => return None,
    };
    Some(Struct { fields: fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect() })
}

fn trailers_answer(r: Rs) -> ProcessingResponse {
    ProcessingResponse { response: Some(r), ..Default::default() }
}

fn headers_answer(m: HeaderMutation) -> CommonResponse {
    CommonResponse { header_mutation: Some(m), ..Default::default() }
}

/// The processor's answer to a message of a request whose path is `path`;
/// None closes the stream.
async fn answer(path: &str, r: &ProcessingRequest) -> Option<ProcessingResponse> {
    let response = match &r.request {
        Some(Rq::RequestHeaders(_)) => {
            if path.starts_with("/slow") {
                tokio::time::sleep(Duration::from_millis(600)).await;
            }
            if path.starts_with("/close") {
                return None;
            }
            if path.starts_with("/immediate") {
                let i = ImmediateResponse {
                    status: Some(HttpStatus { code: 403 }),
                    headers: Some(HeaderMutation {
                        set_headers: vec![set("x-immediate", "yes", None), set("content-type", "text/custom", None)],
                        remove_headers: vec![],
                    }),
                    body: "blocked by the processor".into(),
                    ..Default::default()
                };
                return Some(ProcessingResponse { response: Some(Rs::ImmediateResponse(i)), ..Default::default() });
            }
            if path.starts_with("/spurious") {
                return Some(ProcessingResponse {
                    response: Some(Rs::ResponseHeaders(HeadersResponse::default())),
                    ..Default::default()
                });
            }
            let mut m = HeaderMutation {
                set_headers: vec![
                    set("x-extproc-added", "yes", None),
                    set("x-set", "new", None),
                    set("x-appended", "more", Some(true)),
                    set("x-envoy-refused", "no", None),
                    set("host", "elsewhere", None),
                ],
                remove_headers: vec!["x-remove-me".into(), ":path".into()],
            };
            if path.starts_with("/rewrite") {
                m.set_headers.push(set(":path", "/rewritten?by=processor", None));
            }
            if path.starts_with("/reroute") || path.starts_with("/noclear") {
                m.set_headers.push(set("x-route", "b", None));
            }
            let mut common = headers_answer(m);
            common.clear_route_cache = path.starts_with("/reroute") || path.starts_with("/clearonly");
            if path.starts_with("/clearonly") {
                common.header_mutation = None;
            }
            if path.starts_with("/replace") {
                common.status = ResponseStatus::ContinueAndReplace as i32;
                common.body_mutation = Some(BodyMutation {
                    mutation: Some(body_mutation::Mutation::Body(b"replaced-in-headers".to_vec())),
                });
            }
            let mut resp = ProcessingResponse {
                response: Some(Rs::RequestHeaders(HeadersResponse { response: Some(common) })),
                ..Default::default()
            };
            if path.starts_with("/override-denied") {
                // Not among the modes listener's `allowed_override_modes`.
                resp.mode_override = Some(ProcessingMode {
                    response_header_mode: processing_mode::HeaderSendMode::Skip as i32,
                    response_body_mode: processing_mode::BodySendMode::Buffered as i32,
                    ..Default::default()
                });
            } else if path.starts_with("/override") {
                resp.mode_override = Some(ProcessingMode {
                    response_header_mode: processing_mode::HeaderSendMode::Skip as i32,
                    response_body_mode: processing_mode::BodySendMode::None as i32,
                    ..Default::default()
                });
            }
            return Some(resp);
        }
        Some(Rq::RequestBody(b)) => {
            let new = format!("processed({})", String::from_utf8_lossy(&b.body));
            let mut m = HeaderMutation { set_headers: vec![set("x-body-seen", "1", None)], remove_headers: vec![] };
            if !path.starts_with("/nolength") {
                m.set_headers.push(set("content-length", &new.len().to_string(), None));
            }
            let common = CommonResponse {
                header_mutation: Some(m),
                body_mutation: Some(BodyMutation { mutation: Some(body_mutation::Mutation::Body(new.into_bytes())) }),
                ..Default::default()
            };
            ProcessingResponse {
                response: Some(Rs::RequestBody(BodyResponse { response: Some(common) })),
                ..Default::default()
            }
        }
        Some(Rq::ResponseHeaders(_)) => {
            let mut m = HeaderMutation {
                set_headers: vec![set("x-resp-added", "yes", None)],
                remove_headers: vec!["x-echo-drop".into()],
            };
            if path.starts_with("/status") {
                m.set_headers.push(set(":status", "201", None));
            }
            ProcessingResponse {
                response: Some(Rs::ResponseHeaders(HeadersResponse { response: Some(headers_answer(m)) })),
                ..Default::default()
            }
        }
        Some(Rq::ResponseBody(b)) => {
            let new = format!("processed:{}", String::from_utf8_lossy(&b.body));
            let mut m = HeaderMutation::default();
            if !path.starts_with("/nolength") {
                m.set_headers.push(set("content-length", &new.len().to_string(), None));
            }
            let common = CommonResponse {
                header_mutation: Some(m),
                body_mutation: Some(BodyMutation { mutation: Some(body_mutation::Mutation::Body(new.into_bytes())) }),
                ..Default::default()
            };
            ProcessingResponse {
                response: Some(Rs::ResponseBody(BodyResponse { response: Some(common) })),
                ..Default::default()
            }
        }
        Some(Rq::RequestTrailers(_)) => trailers_answer(Rs::RequestTrailers(TrailersResponse {
            header_mutation: Some(HeaderMutation {
                set_headers: vec![set("x-trailer-seen", "1", None)],
                remove_headers: vec!["x-client-drop".into()],
            }),
        })),
        Some(Rq::ResponseTrailers(_)) => trailers_answer(Rs::ResponseTrailers(TrailersResponse {
            header_mutation: Some(HeaderMutation {
                set_headers: vec![set("x-resp-trailer", "yes", None)],
                remove_headers: vec!["grpc-message".into()],
            }),
        })),
        _ => return None,
    };
    Some(response)
}

struct Grpc(Seen);

type Answers = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<ProcessingResponse, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl ExternalProcessor for Grpc {
    type ProcessStream = Answers;

    async fn process(
        &self,
        req: tonic::Request<tonic::Streaming<ProcessingRequest>>,
    ) -> Result<tonic::Response<Answers>, tonic::Status> {
        let mut inbound = req.into_inner();
        let seen = self.0.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tokio::spawn(async move {
            let mut path = String::new();
            while let Ok(Some(r)) = inbound.message().await {
                if let Some(Rq::RequestHeaders(h)) = &r.request {
                    let p = h.headers.as_ref().and_then(|m| m.headers.iter().find(|h| h.key == ":path"));
                    path = p.map(|h| String::from_utf8_lossy(&h.raw_value).into_owned()).unwrap_or_default();
                }
                seen.lock().expect("seen").push(describe(&r));
                match answer(&path, &r).await {
                    Some(mut a) => {
                        if path.starts_with("/meta") {
                            a.dynamic_metadata = meta_answer(&r);
                        }
                        if tx.send(Ok(a)).await.is_err() {
                            return;
                        }
                    }
                    None => return,
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

fn start_processor() -> Processor {
    let seen: Seen = Default::default();
    let served = seen.clone();
    let server = grpc_server::serve("the processor", move || {
        tonic::transport::Server::builder().add_service(ExternalProcessorServer::new(Grpc(served)))
    });
    Processor { server, seen }
}

const EXT_PROC: &str = "envoy.filters.http.ext_proc";

fn filter(fields: &str) -> String {
    format!("{{name: {EXT_PROC}, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor, {fields}}}}}, ")
}

fn per_route(fields: &str) -> String {
    format!("typed_per_filter_config: {{{EXT_PROC}: {{\"@type\": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute, {fields}}}}}")
}

const BUFFERED: &str = "processing_mode: {request_header_mode: SEND, response_header_mode: SEND, request_body_mode: BUFFERED, response_body_mode: BUFFERED, request_trailer_mode: SKIP, response_trailer_mode: SKIP}";

/// The routes of the main listener: `x-route: b` answered by the proxy
/// (a processor's header, when the route is found again), `/off` without
/// processing, `/hdrs` with request headers only, the rest to the echo
/// upstream.
fn main_vhost() -> String {
    format!(
        "routes: [{{match: {{prefix: \"/\", headers: [{{name: x-route, string_match: {{exact: b}}}}]}}, direct_response: {{status: 200, body: {{inline_string: rerouted}}}}}}, {{match: {{prefix: \"/off\"}}, route: {{cluster: echo}}, {off}}}, {{match: {{prefix: \"/hdrs\"}}, route: {{cluster: echo}}, {hdrs}}}, {{match: {{prefix: \"/\"}}, route: {{cluster: echo}}}}]",
        off = per_route("disabled: true"),
        hdrs = per_route("overrides: {processing_mode: {response_header_mode: SKIP}}"),
    )
}

const LISTENERS: &[&str] = &["main", "streamed", "down", "down_allow", "slow", "slow_allow", "meta", "modes"];

/// The `modes` listener: a request body BUFFERED_PARTIAL (its listener's
/// buffer limit 32 bytes), a response body STREAMED, trailers sent both
/// ways, and only one `mode_override` allowed. `/grpc.` goes to the echo
/// over HTTP/2, whose gRPC health answer ends with trailers.
const MODES: &str = "processing_mode: {request_header_mode: SEND, response_header_mode: SEND, request_body_mode: BUFFERED_PARTIAL, response_body_mode: STREAMED, request_trailer_mode: SEND, response_trailer_mode: SEND}, allow_mode_override: true, allowed_override_modes: [{request_header_mode: SKIP, response_header_mode: SKIP, response_body_mode: NONE, request_trailer_mode: SEND, response_trailer_mode: SEND}], message_timeout: 2s";

fn modes_listener(port: u16, processor: &str) -> String {
    let vhost = "routes: [{match: {prefix: \"/grpc.\"}, route: {cluster: echo_h2}}, {match: {prefix: \"/\"}, route: {cluster: echo}}]";
    let chain = format!("{{filters: [{}]}}", hcm_vhost("modes", vhost, &filter(&format!("{processor}, {MODES}")), ""));
    harness::config::listener_chains("modes", port, &[chain], ", per_connection_buffer_limit_bytes: 32")
}

/// The `meta` listener: header_to_metadata writes `fwd` before ext_proc,
/// whose `metadata_options` forward `fwd` (and an absent namespace) and
/// receive `recv`; `/meta-route` overrides them (nothing forwarded, `recv`
/// and `other` received, `flat` not a struct). The access log shows what
/// the stream's dynamic metadata ended with.
fn meta_chain(logs: &str) -> (String, String) {
    let h2m = "{name: envoy.filters.http.header_to_metadata, typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.http.header_to_metadata.v3.Config, request_rules: [{header: x-tenant, on_header_present: {metadata_namespace: fwd, key: tenant, type: STRING}}]}}, ";
    let ext_proc = filter("grpc_service: {envoy_grpc: {cluster_name: processor}}, message_timeout: 2s, metadata_options: {forwarding_namespaces: {untyped: [fwd, absent], typed: [fwd]}, receiving_namespaces: {untyped: [recv]}}");
    let vhost = format!(
        "routes: [{{match: {{prefix: \"/meta-route\"}}, route: {{cluster: echo}}, {}}}, {{match: {{prefix: \"/\"}}, route: {{cluster: echo}}}}]",
        per_route("overrides: {metadata_options: {forwarding_namespaces: {untyped: []}, receiving_namespaces: {untyped: [recv, other, flat]}}}")
    );
    let format = "%REQ(:PATH)% fwd=%DYNAMIC_METADATA(fwd)% recv=%DYNAMIC_METADATA(recv)% k=%DYNAMIC_METADATA(recv:k)% other=%DYNAMIC_METADATA(other)% flat=%DYNAMIC_METADATA(flat)%\\n";
    let log = format!(", access_log: [{{name: envoy.access_loggers.file, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog, path: \"{logs}\", log_format: {{text_format: \"{format}\"}}}}}}]");
    (vhost, format!("{h2m}{ext_proc}|{log}"))
}

/// A request body STREAMED (as semantic-router's configs run it), the
/// response's BUFFERED.
/// Only some headers go to its processor (`forward_rules`), and its
/// mutations go by `mutation_rules`.
const STREAMED: &str = "processing_mode: {request_header_mode: SEND, response_header_mode: SEND, request_body_mode: STREAMED, response_body_mode: BUFFERED}, failure_mode_allow: true, allow_mode_override: true, forward_rules: {allowed_headers: {patterns: [{prefix: \":\"}, {prefix: x-}, {exact: content-type}]}, disallowed_headers: {patterns: [{exact: x-request-id}, {exact: x-set}]}}, mutation_rules: {allow_envoy: true, disallow_expression: {regex: \"x-set|x-appended\"}}";

fn config(admin: u16, ports: &Ports, processor: u16, echo: u16, closed: u16, logs: &str) -> String {
    let echo_routes = "routes: [{match: {prefix: \"/\"}, route: {cluster: echo}}]";
    let grpc = |cluster: &str| format!("grpc_service: {{envoy_grpc: {{cluster_name: {cluster}}}}}");
    let chains = [
        (
            "main",
            main_vhost(),
            format!("{}, {BUFFERED}, allow_mode_override: true, message_timeout: 2s", grpc("processor")),
        ),
        ("streamed", echo_routes.to_string(), format!("{}, {STREAMED}", grpc("processor"))),
        ("down", echo_routes.to_string(), format!("{}, stat_prefix: down", grpc("processor_down"))),
        ("down_allow", echo_routes.to_string(), format!("{}, failure_mode_allow: true", grpc("processor_down"))),
        ("slow", echo_routes.to_string(), format!("{}, message_timeout: 0.2s", grpc("processor"))),
        (
            "slow_allow",
            echo_routes.to_string(),
            format!("{}, message_timeout: 0.2s, failure_mode_allow: true", grpc("processor")),
        ),
    ];
    let mut listeners: Vec<String> = chains
        .iter()
        .map(|(name, vhost, fields)| {
            listener(name, ports[name], &format!("{{filters: [{}]}}", hcm_vhost(name, vhost, &filter(fields), "")))
        })
        .collect();
    let (vhost, filters) = meta_chain(&format!("{logs}/{admin}-meta.log"));
    let (filters, log) = filters.split_once('|').unwrap_or((&filters, ""));
    listeners.push(listener(
        "meta",
        ports["meta"],
        &format!("{{filters: [{}]}}", hcm_vhost("meta", &vhost, filters, log)),
    ));
    listeners.push(modes_listener(ports["modes"], &grpc("processor")));
    bootstrap(
        admin,
        &listeners,
        &[
            cluster("echo", echo, ""),
            cluster("echo_h2", echo, H2),
            cluster("processor", processor, H2),
            cluster("processor_down", closed, H2),
        ],
    )
}

/// What the client and the upstream got for one request.
fn exchange(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> String {
    let resp = match http_request(addr(port), method, path, "example.com", headers, body) {
        Ok(r) => r,
        Err(e) => return format!("no response: {:?}", e.kind()),
    };
    let raw = resp.body.strip_prefix("processed:").unwrap_or(&resp.body);
    let echoed: Value = serde_json::from_str(raw).unwrap_or(Value::Null);
    let upstream: BTreeMap<String, String> = echoed["headers"]
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, _)| {
                    !matches!(
                        k.as_str(),
                        "x-request-id" | "x-forwarded-proto" | "x-envoy-expected-rq-timeout-ms" | "x-forwarded-for"
                    )
                })
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    // Sorted: an immediate response's headers come in another order (the
    // connection manager's local reply puts its own first).
    let mut client_headers: Vec<(String, String)> = resp
        .headers
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "date" | "x-envoy-upstream-service-time" | "server"))
        .map(|(k, v)| (k.clone(), if k == "content-length" && !echoed.is_null() { "(echo)".into() } else { v.clone() }))
        .collect();
    client_headers.sort();
    let body = if echoed.is_null() {
        resp.body.clone()
    } else {
        let processed = resp.body.starts_with("processed:");
        format!("(processed={processed} echo of {} at {})", echoed["body"], echoed["uri"])
    };
    format!("status={} headers={client_headers:?} body={body} upstream={upstream:?}", resp.status)
}

/// A request body in two pieces 300 ms apart (its length given), so that
/// the second arrives after the first went through the processor: what the
/// client got (status, whether the body was processed) and the upstream's
/// headers.
fn in_pieces(port: u16, path: &str, first: &str, second: &str) -> String {
    use std::io::Write;
    let mut s = harness::raw::connect(port, Duration::from_secs(5));
    let length = first.len() + second.len();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: example.com\r\ncontent-length: {length}\r\nconnection: close\r\n\r\n{first}"
    );
    s.write_all(head.as_bytes()).expect("write");
    std::thread::sleep(Duration::from_millis(300));
    s.write_all(second.as_bytes()).expect("write");
    let raw = String::from_utf8_lossy(&harness::raw::read_until_closed(&mut s)).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.lines().next().unwrap_or_default().to_string();
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_string() };
    let body = body.as_str();
    let echoed: Value = serde_json::from_str(body.strip_prefix("processed:").unwrap_or(body)).unwrap_or(Value::Null);
    let upstream: BTreeMap<String, String> = echoed["headers"]
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, _)| {
                    matches!(k.as_str(), "content-length" | "transfer-encoding" | "x-extproc-added" | "x-body-seen")
                })
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    format!(
        "{status} processed={} upstream={upstream:?} upstream body bytes={}",
        body.starts_with("processed:"),
        echoed["body_bytes"]
    )
}

/// A chunked body's data.
fn dechunk(mut raw: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = raw.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        raw = rest[size..].strip_prefix("\r\n").unwrap_or(&rest[size..]);
    }
    out
}

/// An HTTP/2 request with a body and trailers to the echo's gRPC health
/// check (which answers with trailers): what the client got, trailers
/// included.
fn with_trailers(port: u16) -> String {
    harness::http_client::block_on(async move {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
        let (mut client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
        tokio::spawn(conn);
        let req = http::Request::post("http://example.com/grpc.health.v1.Health/Check").body(()).expect("request");
        let (resp, mut stream) = client.send_request(req, false).expect("send");
        stream.send_data(bytes::Bytes::from_static(b"abc"), false).expect("data");
        let mut t = http::HeaderMap::new();
        t.insert("x-client-trailer", http::HeaderValue::from_static("t"));
        t.insert("x-client-drop", http::HeaderValue::from_static("d"));
        stream.send_trailers(t).expect("trailers");
        let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_secs(5), resp).await else {
            return "no response".to_string();
        };
        let (parts, mut body) = resp.into_parts();
        let mut data = Vec::new();
        while let Some(Ok(chunk)) = body.data().await {
            let _ = body.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
        }
        let trailers = body.trailers().await.ok().flatten().unwrap_or_default();
        let mut headers: Vec<(String, String)> = parts
            .headers
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "date" | "server" | "x-envoy-upstream-service-time"))
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        headers.sort();
        let mut trailers: Vec<(String, String)> =
            trailers.iter().map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect();
        trailers.sort();
        format!("status={} headers={headers:?} body={data:?} trailers={trailers:?}", parts.status)
    })
}

/// (listener, method, path, headers, body).
type Case<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);

#[test]
fn ext_proc_matches_envoy() {
    let dir = TempDir::new("diff-ext-proc");
    let (_echo, echo) = echo("extproc-echo", dir.path());
    let closed = free_port();
    let processors = [start_processor(), start_processor()];
    let logs = dir.path().display().to_string();
    let sides = [
        Side::start("envoy", Bin::Envoy, &[], dir.path(), LISTENERS, |_, admin, ports| {
            config(admin, ports, processors[0].server.port, echo, closed, &logs)
        }),
        Side::start("legate", Bin::Legate, &[], dir.path(), LISTENERS, |_, admin, ports| {
            config(admin, ports, processors[1].server.port, echo, closed, &logs)
        }),
    ];
    let mutate: &[(&str, &str)] = &[("x-remove-me", "gone"), ("x-set", "old"), ("x-appended", "first")];
    let cases: &[Case] = &[
        ("main", "GET", "/plain", mutate, ""),
        ("main", "POST", "/body", &[("content-type", "text/plain")], "hello body"),
        ("main", "GET", "/rewrite/x", &[], ""),
        ("main", "GET", "/status", &[], ""),
        ("main", "POST", "/immediate", &[], "never sent"),
        ("main", "POST", "/replace", &[], "original"),
        ("main", "POST", "/override", &[], "kept"),
        ("main", "GET", "/spurious", mutate, ""),
        ("main", "GET", "/reroute", &[], ""),
        ("main", "GET", "/noclear", &[], ""),
        ("main", "GET", "/clearonly", &[], ""),
        ("main", "POST", "/nolength", &[], "no length"),
        ("main", "GET", "/close", mutate, ""),
        ("main", "POST", "/off", mutate, "untouched"),
        ("main", "POST", "/hdrs", mutate, "request body"),
        ("streamed", "POST", "/stream", &[("x-set", "old")], "streamed body"),
        ("streamed", "GET", "/stream-nobody", &[], ""),
        ("streamed", "POST", "/pieces", &[], ""),
        ("streamed", "POST", "/nolength", &[], "chunk"),
        ("down", "GET", "/down", &[], ""),
        ("down_allow", "GET", "/down", &[], ""),
        ("slow", "GET", "/slow", &[], ""),
        ("slow_allow", "GET", "/slow", mutate, ""),
        ("meta", "GET", "/meta", &[("x-tenant", "t-1")], ""),
        ("meta", "GET", "/meta-route", &[("x-tenant", "t-2")], ""),
        ("meta", "GET", "/meta-none", &[], ""),
        ("modes", "POST", "/small", &[], "tiny"),
        ("modes", "POST", "/partial", &[], ""),
        ("modes", "GET", "/slow-body/200", &[], ""),
        ("modes", "POST", "/override", &[], "kept"),
        ("modes", "POST", "/override-denied", &[], "kept"),
        ("modes", "POST", "/grpc.health.v1.Health/Check", &[], ""),
    ];
    let mut mismatches = Vec::new();
    for (listener, method, path, headers, body) in cases {
        let got: Vec<String> = sides
            .iter()
            .map(|s| match *path {
                "/pieces" => in_pieces(s.port(listener), path, "first", "-half"),
                "/partial" => in_pieces(s.port(listener), path, &"a".repeat(40), "-tail"),
                "/grpc.health.v1.Health/Check" => with_trailers(s.port(listener)),
                _ => exchange(s.port(listener), method, path, headers, body),
            })
            .collect();
        // A slow processor's late answer, and closes, land after the reply.
        std::thread::sleep(Duration::from_millis(if path.starts_with("/slow") { 700 } else { 50 }));
        let seen: Vec<Vec<String>> =
            processors.iter().map(|p| std::mem::take(&mut *p.seen.lock().expect("seen"))).collect();
        println!(
            "{listener} {method} {path}\n  envoy:  {}\n  legate: {}\n  processor saw: {:#?}",
            got[0], got[1], seen[0]
        );
        if got[0] != got[1] {
            mismatches
                .push(format!("{listener} {method} {path}: response\n  envoy:  {}\n  legate: {}", got[0], got[1]));
        }
        if seen[0] != seen[1] {
            mismatches.push(format!(
                "{listener} {method} {path}: processor saw\n  envoy:  {:#?}\n  legate: {:#?}",
                seen[0], seen[1]
            ));
        }
    }
    for l in LISTENERS {
        let prefix = format!("http.{l}.ext_proc.");
        let stats: Vec<_> = sides.iter().map(|s| s.stats(&prefix)).collect();
        println!("{prefix}\n  envoy:  {:?}\n  legate: {:?}", stats[0], stats[1]);
        if stats[0] != stats[1] {
            mismatches.push(format!("stats {prefix}\n  envoy:  {:?}\n  legate: {:?}", stats[0], stats[1]));
        }
    }
    let log = |s: &Side| harness::diff::marked_lines(&dir.path().join(format!("{}-meta.log", s.admin)), "/meta", 3);
    let (e, l) = (log(&sides[0]), log(&sides[1]));
    println!("meta access log\n  envoy:  {e:#?}\n  legate: {l:#?}");
    assert!(e.iter().any(|l| l.contains("k=v")), "Envoy wrote the processor's metadata: {e:?}");
    if e != l {
        mismatches.push(format!("meta access log\n  envoy:  {e:#?}\n  legate: {l:#?}"));
    }
    assert!(sides[0].stat("http.main.ext_proc.stream_msgs_received") > 10, "the processor answered Envoy");
    assert!(sides[0].stat("http.slow.ext_proc.message_timeouts") > 0, "Envoy timed the slow processor out");
    assert!(mismatches.is_empty(), "{} differences:\n{}", mismatches.len(), mismatches.join("\n"));
}
